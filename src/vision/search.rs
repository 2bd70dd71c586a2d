//! The face search schedule: which part of the frame the detector looks at,
//! at which scale, on which frame, until a face is locked.
//!
//! Owns: the plan of detector jobs that covers every face size from the
//! configured minimum up to one that fills the frame, over the whole frame, and the
//! rule that spreads those jobs over frames so the per-frame cost stays
//! bounded.
//!
//! Why a plan: SeetaFace (rustface 0.1.7) always starts its image pyramid at
//! the scale it is given, with a 40 px window, so the smallest face it finds
//! reliably ([`DETECTOR_FACE_PX`] at its own scale) is set by how far the
//! frame was scaled: a 24 px face needs the frame upscaled 1.5x. Searching the whole frame at native resolution finds small faces
//! but costs 60–70 ms at 640×480 and four times that at 1280×720; scaling
//! the frame to 160 px (the old single search) is cheap but misses every
//! face narrower than about 80 px. The plan splits scale space into octave
//! **bands**: band 0 at the finest scale (`DETECTOR_FACE_PX / min_face_px`),
//! each next band at half the scale,
//! the last one the whole frame with the detector's full pyramid. A band
//! other than the last runs a limited pyramid ([`BAND_MAX_FACE_PX`]: four
//! levels, windows 40–78 px), so bands do not repeat each other's work.
//! A band too large for one job is cut into **tiles** that overlap by
//! [`TILE_OVERLAP_PX`] (more than the largest window), so every face lies
//! wholly inside some tile.
//!
//! Order: coarse to fine. Large faces (and the person at the kiosk is the
//! largest) are found on the first frames; the cost of small faces is
//! spread over the rest of the cycle. A cycle is sized to take about
//! `cycle_frames` frames; the extractor runs jobs on each frame until that
//! frame's share of the cycle's work is done.
//!
//! Invariants: pure (sizes in, jobs out); every job's region lies inside the
//! frame; the union of a band's tiles is the whole frame; bands are listed
//! coarse first and each band's jobs are contiguous.

use super::roi::PixelRect;

/// Face width (detector pixels) the detector finds reliably with its
/// smallest window: measured on the 30 public-domain portraits (skin types
/// I–VI) at the detector's own scale, 28 of 30 faces of 32 px were found
/// and 30 of 30 of 40 px; upscaled 1.5x, 29 of 30 faces of 24 px. A band
/// at scale `s` therefore starts at faces of `DETECTOR_FACE_PX / s` frame
/// pixels.
pub const DETECTOR_FACE_PX: f64 = 36.0;
/// `max_face_size` of every band but the coarsest: with the 0.8 pyramid
/// step the detector then runs four levels (windows 40, 50, 62.5, 78 px),
/// one octave of face sizes, and the next band (half the scale) takes over.
pub const BAND_MAX_FACE_PX: u32 = 80;
/// Overlap of neighbouring tiles, detector pixels: more than the largest
/// window of a band (78 px), so a face is wholly inside at least one tile.
pub const TILE_OVERLAP_PX: u32 = 80;
/// Smallest tile side, detector pixels (anything smaller is mostly overlap).
pub const MIN_TILE_PX: u32 = 2 * TILE_OVERLAP_PX;
/// Upscaling beyond this buys nothing: the image has no more detail.
pub const MAX_SCALE: f64 = 2.0;

/// One detector run: a frame region scaled by `scale` (detector pixels per
/// frame pixel), with the detector's largest face limited to `max_face_px`
/// detector pixels (`None`: the full pyramid).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchJob {
    pub band: usize,
    pub region: PixelRect,
    pub scale: f64,
    pub max_face_px: Option<u32>,
}

impl SearchJob {
    /// Size of the scaled region handed to the detector.
    pub fn out_size(&self) -> (u32, u32) {
        let w = (self.region.width() as f64 * self.scale).round().max(1.0) as u32;
        let h = (self.region.height() as f64 * self.scale).round().max(1.0) as u32;
        (w, h)
    }

    /// The widest face (frame pixels) this job can find.
    pub fn largest_face_px(&self) -> f64 {
        self.max_face_px
            .map_or(f64::INFINITY, |m| m as f64 / self.scale)
    }

    /// Relative cost: detector pixels, times the share of the full pyramid it runs.
    pub fn cost(&self) -> f64 {
        let (w, h) = self.out_size();
        // Pyramid levels at step 0.8: area factors 1, 0.64, 0.41, 0.26, ...
        let levels = if self.max_face_px.is_some() {
            1.0 + 0.64 + 0.64f64.powi(2) + 0.64f64.powi(3)
        } else {
            1.0 / (1.0 - 0.64)
        };
        w as f64 * h as f64 * levels
    }
}

/// The whole schedule for one frame size.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPlan {
    pub jobs: Vec<SearchJob>,
    /// Work per frame: jobs run on a frame until their cost reaches this.
    pub frame_budget: f64,
    /// Smallest face (frame pixels) the finest band can find.
    pub min_face_px: f64,
}

impl SearchPlan {
    /// Plans the search of a `width x height` frame for faces from
    /// `min_face_px` (frame pixels) up. `max_width_px`, when not 0, caps the
    /// finest band's scale (the frame is never searched wider than that:
    /// cheaper, but faces narrower than `DETECTOR_FACE_PX` at that width are
    /// missed). `cycle_frames` is how many frames one pass over every job
    /// should take.
    pub fn new(
        width: u32,
        height: u32,
        min_face_px: f64,
        max_width_px: u32,
        cycle_frames: u32,
    ) -> SearchPlan {
        let whole = PixelRect {
            x0: 0,
            y0: 0,
            x1: width,
            y1: height,
        };
        if width == 0 || height == 0 {
            return SearchPlan {
                jobs: Vec::new(),
                frame_budget: 0.0,
                min_face_px: f64::INFINITY,
            };
        }
        let mut finest = (DETECTOR_FACE_PX / min_face_px.max(1.0)).min(MAX_SCALE);
        if max_width_px > 0 {
            finest = finest.min(max_width_px as f64 / width as f64);
        }
        // Per-job area target: the finest band's area spread over the cycle,
        // but never tiles so small that they are mostly overlap.
        let cycle = cycle_frames.max(1) as f64;
        let finest_area = width as f64 * height as f64 * finest * finest;
        let tile_area = (finest_area / cycle * 1.5).max((MIN_TILE_PX * MIN_TILE_PX * 4) as f64);

        let mut bands: Vec<Vec<SearchJob>> = Vec::new();
        let mut scale = finest;
        loop {
            let band = bands.len();
            let (sw, sh) = (width as f64 * scale, height as f64 * scale);
            // The last band: small enough that the full pyramid costs no more
            // than one more octave band would.
            let last = sw.min(sh) <= 2.0 * BAND_MAX_FACE_PX as f64 || band >= 12;
            if last {
                // Never below the detector's window: a smaller image finds nothing.
                let s = scale.max(40.0 / width.min(height) as f64);
                bands.push(vec![SearchJob {
                    band,
                    region: whole,
                    scale: s,
                    max_face_px: None,
                }]);
                break;
            }
            bands.push(tiles(width, height, scale, tile_area, band));
            scale *= 0.5;
        }
        let jobs: Vec<SearchJob> = bands.into_iter().rev().flatten().collect();
        let total: f64 = jobs.iter().map(SearchJob::cost).sum();
        SearchPlan {
            frame_budget: total / cycle,
            min_face_px: DETECTOR_FACE_PX / finest,
            jobs,
        }
    }

    /// The jobs to run on a frame, given the index of the next job and the
    /// work `credit` carried over (each frame adds `frame_budget`; every
    /// job run spends its cost). At least the next job runs when there is
    /// credit, so a cycle takes `cycle_frames` frames on average even when
    /// a tile costs more than one frame's share. Returns the index range
    /// and the credit left.
    pub fn slice_from(&self, next: usize, credit: f64) -> (std::ops::Range<usize>, f64) {
        let start = next.min(self.jobs.len());
        let mut credit = (credit + self.frame_budget).min(2.0 * self.frame_budget);
        let mut end = start;
        while end < self.jobs.len() && credit > 0.0 {
            credit -= self.jobs[end].cost();
            end += 1;
        }
        (start..end, credit)
    }

    /// How many jobs, from the first (coarsest), it takes to look for every
    /// face at least `width_px` wide: the rest only find narrower faces.
    pub fn jobs_for_faces_from(&self, width_px: f64) -> usize {
        self.jobs
            .iter()
            .rposition(|j| j.largest_face_px() >= width_px)
            .map_or(0, |i| i + 1)
    }

    /// Whether `index` is the last job of its band (the band's candidates are complete).
    pub fn ends_band(&self, index: usize) -> bool {
        match (self.jobs.get(index), self.jobs.get(index + 1)) {
            (Some(a), Some(b)) => a.band != b.band,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

/// Tiles of band `band`: the frame at `scale`, cut into overlapping tiles of
/// about `tile_area` detector pixels.
fn tiles(width: u32, height: u32, scale: f64, tile_area: f64, band: usize) -> Vec<SearchJob> {
    let (sw, sh) = (width as f64 * scale, height as f64 * scale);
    let side = tile_area.sqrt().max(MIN_TILE_PX as f64);
    let ov = TILE_OVERLAP_PX as f64;
    let count = |len: f64| -> usize {
        if len <= side {
            1
        } else {
            ((len - ov) / (side - ov)).ceil().max(1.0) as usize
        }
    };
    let (nx, ny) = (count(sw), count(sh));
    // Even split: n tiles of length t with overlap ov cover n (t - ov) + ov.
    let span = |len: f64, n: usize| {
        if n == 1 {
            len
        } else {
            (len - ov) / n as f64 + ov
        }
    };
    let (tw, th) = (span(sw, nx), span(sh, ny));
    let mut out = Vec::with_capacity(nx * ny);
    for j in 0..ny {
        for i in 0..nx {
            let x0 = i as f64 * (tw - ov);
            let y0 = j as f64 * (th - ov);
            let to_frame = |v: f64, max: u32| ((v / scale).round().max(0.0) as u32).min(max);
            let region = PixelRect {
                x0: to_frame(x0, width),
                y0: to_frame(y0, height),
                x1: if i + 1 == nx {
                    width
                } else {
                    to_frame(x0 + tw, width)
                },
                y1: if j + 1 == ny {
                    height
                } else {
                    to_frame(y0 + th, height)
                },
            };
            out.push(SearchJob {
                band,
                region,
                scale,
                max_face_px: Some(BAND_MAX_FACE_PX),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bands(plan: &SearchPlan) -> Vec<usize> {
        let mut b: Vec<usize> = plan.jobs.iter().map(|j| j.band).collect();
        b.dedup();
        b
    }

    #[test]
    fn bands_run_coarse_to_fine_and_each_covers_the_whole_frame() {
        for (w, h) in [(320, 240), (640, 480), (1280, 720), (1920, 1080), (64, 48)] {
            let plan = SearchPlan::new(w, h, 24.0, 0, 24);
            let b = bands(&plan);
            assert!(b.windows(2).all(|p| p[0] > p[1]), "{w}x{h}: {b:?}");
            assert_eq!(*b.last().unwrap(), 0);
            for band in b {
                let tiles: Vec<&SearchJob> = plan.jobs.iter().filter(|j| j.band == band).collect();
                // Every pixel of the frame is in some tile of the band.
                for y in (0..h).step_by(7) {
                    for x in (0..w).step_by(7) {
                        assert!(
                            tiles.iter().any(|t| {
                                let r = t.region;
                                x >= r.x0 && x < r.x1 && y >= r.y0 && y < r.y1
                            }),
                            "{w}x{h} band {band}: ({x},{y}) uncovered"
                        );
                    }
                }
                for t in tiles {
                    assert!(t.region.x1 <= w && t.region.y1 <= h && !t.region.is_empty());
                }
            }
        }
    }

    #[test]
    fn looking_for_faces_of_a_given_width_needs_the_coarse_jobs_only() {
        let plan = SearchPlan::new(640, 480, 24.0, 0, 24);
        let n = plan.jobs.len();
        // Only the coarsest job (the full pyramid) finds faces wider than
        // any octave band; every job can find some face of 24 px or more.
        assert_eq!(plan.jobs_for_faces_from(1000.0), 1);
        assert_eq!(plan.jobs_for_faces_from(24.0), n);
        let mut last = 0;
        for w in [400.0, 200.0, 100.0, 50.0, 30.0] {
            let k = plan.jobs_for_faces_from(w);
            assert!(k >= last && k <= n, "{w} px: {k} jobs");
            // The jobs it leaves out all look for narrower faces only.
            assert!(plan.jobs[k..].iter().all(|j| j.largest_face_px() < w));
            last = k;
        }
        assert!(plan.jobs_for_faces_from(200.0) < n / 2);
    }

    #[test]
    fn neighbouring_tiles_overlap_by_more_than_the_largest_window() {
        let plan = SearchPlan::new(1280, 720, 24.0, 0, 24);
        let fine: Vec<&SearchJob> = plan.jobs.iter().filter(|j| j.band == 0).collect();
        assert!(fine.len() > 1, "a 1280x720 native band is tiled");
        for a in &fine {
            for b in &fine {
                if a.region.y0 == b.region.y0
                    && b.region.x0 > a.region.x0
                    && b.region.x0 < a.region.x1
                {
                    let overlap = (a.region.x1 - b.region.x0) as f64 * a.scale;
                    assert!(overlap >= 78.0, "{overlap}");
                }
            }
        }
    }

    #[test]
    fn the_finest_band_sets_the_smallest_face_and_the_last_band_has_the_full_pyramid() {
        let plan = SearchPlan::new(640, 480, 24.0, 0, 24);
        assert!((plan.min_face_px - 24.0).abs() < 1e-9);
        assert!((plan.jobs.last().unwrap().scale - 1.5).abs() < 1e-9);
        assert_eq!(plan.jobs[0].max_face_px, None);
        assert!(plan.jobs[1..].iter().all(|j| j.max_face_px.is_some()));
        // A width cap trades the smallest faces for cost.
        let capped = SearchPlan::new(640, 480, 24.0, 320, 24);
        assert!((capped.min_face_px - 72.0).abs() < 1e-9);
        assert!(
            capped.jobs.iter().map(SearchJob::cost).sum::<f64>()
                < plan.jobs.iter().map(SearchJob::cost).sum::<f64>() / 4.0
        );
        // Larger minimum faces: a coarser, cheaper plan.
        assert!(SearchPlan::new(640, 480, 60.0, 0, 24).jobs.len() < plan.jobs.len());
    }

    #[test]
    fn a_cycle_takes_about_the_requested_frames_and_a_frame_runs_at_most_its_share_and_one_job() {
        for (w, h) in [(320, 240), (640, 480), (1280, 720), (1920, 1080)] {
            let plan = SearchPlan::new(w, h, 24.0, 0, 24);
            let (mut next, mut frames, mut credit) = (0, 0, 0.0);
            let mut worst: f64 = 0.0;
            while next < plan.jobs.len() {
                let (r, left) = plan.slice_from(next, credit);
                worst = worst.max(plan.jobs[r.clone()].iter().map(SearchJob::cost).sum());
                credit = left;
                next = r.end;
                frames += 1;
            }
            assert!(
                (20..=28).contains(&frames),
                "{w}x{h}: {frames} frames per cycle"
            );
            let largest = plan.jobs.iter().map(SearchJob::cost).fold(0.0, f64::max);
            assert!(
                worst <= 2.0 * plan.frame_budget + largest,
                "{w}x{h}: a frame ran {worst}, its share is {}",
                plan.frame_budget
            );
        }
    }
}
