//! Whether the scene changed: the gate that lets an empty kiosk idle.
//!
//! Owns: the scene thumbnail (a grid of mean luma cells) and the rule that
//! says when the face search, which costs most of a core while it runs
//! (19 ms a frame at 640×480 on a 2-core x86 VM, 58 % of a core at 30
//! fps), must run again over a frame in which no face is tracked.
//!
//! Why: a face cannot appear in a scene that did not change. A kiosk waits
//! for people most of the day, and a search that never rests spends the
//! device's power and heat budget on an empty room. So with no face, a
//! search cycle (the whole [`SearchPlan`](super::search::SearchPlan)) runs
//! when the scene changed since the start of the last one, and otherwise at
//! most every `vision.idle_rescan_s` (a second look at a still scene, in
//! case the detector missed a face that was already there).
//!
//! The rule ([`IdleGate::start_cycle`]):
//! - The first cycle always runs; each cycle remembers the thumbnail of
//!   the frame it started on.
//! - At the end of a cycle a new one starts at once if the scene differs
//!   from that thumbnail (someone is walking in: keep looking), or until
//!   [`QUIET_CYCLES`] cycles in a row ran over a still scene (a face the
//!   detector missed once gets a second look before the search rests).
//! - Resting, the search starts again on the first frame that differs from
//!   the last cycle's thumbnail, or `idle_rescan_s` after that cycle began.
//!
//! A change is any cell whose mean luma moved by more than
//! [`CHANGE_LEVELS`]: cells are about 40×40 px at 640×480 and average about
//! 36 samples, so sensor noise (σ 2–4 levels per pixel) moves a cell by
//! under one level, while a person walking in moves many cells by tens.
//! Lighting changes count as changes too; that costs a search, never a
//! missed face. Resting, the scene is looked at every [`CHECK_EVERY_S`]
//! (a person takes far longer than that to walk in).
//!
//! Invariants: pure (frames in, decisions out; time is the frame's
//! timestamp); the thumbnail is a fixed-size array (nothing is allocated
//! per frame).

use crate::capture::Frame;

/// Cells across and down the thumbnail.
pub const CELLS_X: usize = 16;
pub const CELLS_Y: usize = 12;
/// A cell whose mean luma moved by more than this (8-bit levels) is a change.
pub const CHANGE_LEVELS: f32 = 6.0;
/// Cycles over a still scene before the search rests.
pub const QUIET_CYCLES: u32 = 2;
/// Resting, the scene is compared this often (seconds of video).
pub const CHECK_EVERY_S: f64 = 0.1;

/// Mean luma of a `CELLS_X × CELLS_Y` grid over the frame, from about 36
/// samples a cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thumbnail([f32; CELLS_X * CELLS_Y]);

impl Thumbnail {
    pub fn of(frame: &Frame) -> Thumbnail {
        let (w, h) = (frame.width as usize, frame.height as usize);
        // About 6 samples per cell side.
        let step = (w / CELLS_X / 6).min(h / CELLS_Y / 6).max(1);
        let mut cells = [0.0f32; CELLS_X * CELLS_Y];
        for (cy, row) in cells.chunks_exact_mut(CELLS_X).enumerate() {
            let (y0, y1) = (cy * h / CELLS_Y, (cy + 1) * h / CELLS_Y);
            for (cx, cell) in row.iter_mut().enumerate() {
                let (x0, x1) = (cx * w / CELLS_X, (cx + 1) * w / CELLS_X);
                let (mut sum, mut n) = (0u32, 0u32);
                for y in (y0 + step / 2..y1).step_by(step) {
                    for x in (x0 + step / 2..x1).step_by(step) {
                        sum += u32::from(frame.luma(x as u32, y as u32));
                        n += 1;
                    }
                }
                if n > 0 {
                    *cell = sum as f32 / n as f32;
                }
            }
        }
        Thumbnail(cells)
    }

    /// Whether any cell moved by more than [`CHANGE_LEVELS`].
    pub fn differs_from(&self, other: &Thumbnail) -> bool {
        self.0
            .iter()
            .zip(&other.0)
            .any(|(a, b)| (a - b).abs() > CHANGE_LEVELS)
    }
}

/// When the search over a face-less scene may start its next cycle.
#[derive(Debug, Clone, Default)]
pub struct IdleGate {
    /// Thumbnail and time of the frame the last cycle started on.
    last_start: Option<(Thumbnail, f64)>,
    /// Cycles in a row that ended over a still scene.
    quiet: u32,
    /// A cycle started by this gate has not yet run all its jobs.
    in_cycle: bool,
    /// When the resting gate last looked at the scene.
    last_check_t: Option<f64>,
}

impl IdleGate {
    /// With no face tracked: whether the search runs on `frame`. A cycle in
    /// progress runs to its end (`cycle_done`: all its jobs have run); then
    /// [`IdleGate::start_cycle`] decides about the next.
    pub fn search(&mut self, frame: &Frame, cycle_done: bool, rescan_s: f64) -> bool {
        if !self.in_cycle || cycle_done {
            self.in_cycle = self.start_cycle(frame, rescan_s);
        }
        self.in_cycle
    }

    /// At a cycle boundary with no face tracked: whether a new cycle starts
    /// on `frame` (then its thumbnail is remembered). `rescan_s` 0 means
    /// always.
    pub fn start_cycle(&mut self, frame: &Frame, rescan_s: f64) -> bool {
        if rescan_s <= 0.0 {
            return true;
        }
        let t = frame.t_s;
        let resting = self.last_start.is_some() && self.quiet + 1 >= QUIET_CYCLES;
        if resting
            && self
                .last_check_t
                .is_some_and(|c| (0.0..CHECK_EVERY_S).contains(&(t - c)))
        {
            return false;
        }
        self.last_check_t = Some(t);
        let now = Thumbnail::of(frame);
        let start = match self.last_start {
            None => true,
            Some((before, t0)) => {
                if now.differs_from(&before) {
                    self.quiet = 0;
                    true
                } else if self.quiet + 1 < QUIET_CYCLES {
                    self.quiet += 1;
                    true
                } else {
                    // Resting: a time running backwards (a new source) ends it.
                    t - t0 >= rescan_s || t < t0
                }
            }
        };
        if start {
            self.last_start = Some((now, t));
        }
        start
    }

    /// Forgets the scene (a face was tracked, or lost: search at once).
    pub fn reset(&mut self) {
        *self = IdleGate::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(level: u8, t_s: f64) -> Frame {
        let mut f = Frame::from_rgb(640, 480, vec![level; 640 * 480 * 3]);
        f.t_s = t_s;
        f
    }

    /// A person-sized dark block entering at `x`.
    fn with_person(mut f: Frame, x: usize) -> Frame {
        let rgb = f.rgb_mut();
        for y in 200..480 {
            for px in x..x + 60 {
                rgb[(y * 640 + px) * 3..(y * 640 + px) * 3 + 3].copy_from_slice(&[40, 30, 30]);
            }
        }
        f
    }

    #[test]
    fn a_still_room_is_searched_twice_then_only_every_rescan_interval() {
        let mut gate = IdleGate::default();
        let mut starts = Vec::new();
        for i in 0..200 {
            // A cycle boundary every 24 frames at 30 fps.
            let t = i as f64 * 0.8;
            if gate.start_cycle(&room(120, t), 60.0) {
                starts.push(t);
            }
        }
        assert_eq!(&starts[..2], &[0.0, 0.8], "{starts:?}");
        // Then resting: the next 60 s after the last start, and so on.
        assert!((starts[2] - 60.8).abs() < 1e-9, "{starts:?}");
        assert_eq!(starts.len(), 4, "{starts:?}");
        assert!(starts
            .windows(2)
            .skip(1)
            .all(|w| w[1] - w[0] >= 60.0 - 1e-9));
    }

    #[test]
    fn someone_walking_in_starts_the_search_at_once_and_keeps_it_going_while_they_move() {
        let mut gate = IdleGate::default();
        assert!(gate.start_cycle(&room(120, 0.0), 60.0));
        assert!(gate.start_cycle(&room(120, 0.8), 60.0));
        assert!(!gate.start_cycle(&room(120, 1.6), 60.0));
        assert!(
            !gate.start_cycle(&room(121, 2.4), 60.0),
            "a level of drift is not a change"
        );
        // A person appears, then moves across: every boundary starts a cycle.
        for (k, x) in [100, 160, 220, 280].into_iter().enumerate() {
            let t = 3.2 + 0.8 * k as f64;
            assert!(
                gate.start_cycle(&with_person(room(120, t), x), 60.0),
                "x={x}"
            );
        }
        // Still from 5.6 s on: the cycles started at 5.6 and 6.4 s look at
        // the still scene, then the search rests.
        assert!(gate.start_cycle(&with_person(room(120, 6.4), 280), 60.0));
        assert!(!gate.start_cycle(&with_person(room(120, 7.2), 280), 60.0));
    }

    #[test]
    fn sensor_noise_is_not_a_change_and_a_rescan_interval_of_zero_always_searches() {
        let mut rng = 1u64;
        let mut noisy = |t: f64| {
            let mut f = room(120, t);
            for v in f.rgb_mut().iter_mut() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                // ±8 levels uniform: σ ≈ 4.6.
                *v = 112 + (rng % 17) as u8;
            }
            f
        };
        let a = Thumbnail::of(&noisy(0.0));
        for i in 1..20 {
            assert!(!Thumbnail::of(&noisy(i as f64)).differs_from(&a));
        }
        let mut gate = IdleGate::default();
        assert!((0..10).all(|i| gate.start_cycle(&room(120, i as f64), 0.0)));
    }

    #[test]
    fn frames_of_every_size_give_a_full_thumbnail() {
        for (w, h) in [(16, 12), (17, 13), (320, 240), (1920, 1080), (100, 1000)] {
            let f = Frame::from_rgb(w, h, vec![90; (w * h * 3) as usize]);
            let t = Thumbnail::of(&f);
            assert!(
                t.0.iter().all(|&c| (c - 90.0).abs() < 1.0),
                "{w}x{h}: {:?}",
                t.0
            );
        }
    }
}
