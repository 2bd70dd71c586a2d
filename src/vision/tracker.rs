//! Face tracking between detections, box smoothing, and face identity.
//!
//! Owns: frame-to-frame face displacement by integral projections (row and
//! column mean-luma profiles of the face box, matched by least squares
//! with parabolic sub-pixel refinement), the rule that blends a new
//! detection into the tracked box, and [`same_face`], the rule that decides
//! whether a face found again is the one tracked before.
//!
//! Why: running the detector every frame costs more than the whole rest of
//! the pipeline, and raw detector boxes jitter by a few pixels, which moves
//! the ROI over skin of a different colour and becomes false "pulse". The
//! tracker follows real motion every frame at sub-pixel precision (which is
//! also the vertical breathing signal), and detections only correct its
//! drift beyond a tolerance, gliding in with time constant `tau` rather
//! than stepping.
//!
//! Scale: profiles longer than [`PROFILE_LEN`] samples are averaged in bins
//! ([`profile_bin`]), so a close-up costs the shift search what a small face
//! does; the search range is a fixed share of the profile (at most
//! [`MAX_SHIFT`] samples), so fast moves of a large face and the whole range
//! of a small one are both followed.

use super::FaceBox;

/// Largest displacement searched between two frames, in profile samples.
pub const MAX_SHIFT: i32 = 10;
/// Smallest displacement range searched, in profile samples.
pub const MIN_SHIFT: i32 = 3;
/// Profiles are binned down to about this many samples.
pub const PROFILE_LEN: usize = 96;

/// Bin size for a profile of `len` pixels: 1 up to [`PROFILE_LEN`] px.
pub fn profile_bin(len: usize) -> usize {
    (len / PROFILE_LEN).max(1)
}

/// Averages `profile` in place over consecutive bins of `bin` samples (a
/// last partial bin is dropped).
pub fn bin_profile(profile: &mut Vec<f64>, bin: usize) {
    if bin <= 1 {
        return;
    }
    let n = profile.len() / bin;
    for i in 0..n {
        profile[i] = profile[i * bin..(i + 1) * bin].iter().sum::<f64>() / bin as f64;
    }
    profile.truncate(n);
}

/// Search range for profiles of `n` samples: a sixth of the profile,
/// within [`MIN_SHIFT`]..=[`MAX_SHIFT`]. A shift found at its edge is a
/// lower bound: the content may have moved further.
pub fn max_shift(n: usize) -> i32 {
    ((n / 6) as i32).clamp(MIN_SHIFT, MAX_SHIFT)
}

/// Displacement `d` (samples) such that `cur[i] ≈ prev[i - d]`: how far the
/// content moved from `prev` to `cur`. Profiles are compared after removing
/// their means, over their common length. `None` when too short to tell.
pub fn profile_shift(prev: &[f64], cur: &[f64]) -> Option<f64> {
    let n = prev.len().min(cur.len());
    let max_shift = max_shift(n);
    if n < 4 * max_shift as usize {
        return None;
    }
    let mean = |x: &[f64]| x[..n].iter().sum::<f64>() / n as f64;
    let (mp, mc) = (mean(prev), mean(cur));
    let cost = |d: i32| -> f64 {
        let (mut s, mut k) = (0.0, 0usize);
        let lo = d.max(0) as usize;
        let hi = (n as i32 + d.min(0)) as usize;
        for i in lo..hi {
            let e = (cur[i] - mc) - (prev[(i as i32 - d) as usize] - mp);
            s += e * e;
            k += 1;
        }
        s / k as f64
    };
    // The first smallest cost, then its neighbours again for the parabola
    // (no list of costs: this runs twice a frame and allocates nothing).
    let (best, b) = (-max_shift..=max_shift)
        .map(|d| (d, cost(d)))
        .reduce(|m, x| if x.1.total_cmp(&m.1).is_lt() { x } else { m })?;
    let mut d = best as f64;
    if best > -max_shift && best < max_shift {
        let (a, c) = (cost(best - 1), cost(best + 1));
        let denom = a - 2.0 * b + c;
        if denom > 0.0 {
            d += (0.5 * (a - c) / denom).clamp(-0.5, 0.5);
        }
    }
    Some(d)
}

/// Whether `b` is plausibly the face `a` seen again (after a sudden move,
/// or after it was lost for a moment): centres within one face width and
/// widths within a factor 1.5. Without face recognition this is the only
/// evidence of identity; a different person at the same place and size
/// passes it, anyone elsewhere does not.
pub fn same_face(a: &FaceBox, b: &FaceBox) -> bool {
    let (ax, ay) = a.center();
    let (bx, by) = b.center();
    let ratio = b.w / a.w.max(1e-9);
    (ax - bx).hypot(ay - by) <= a.w.max(b.w) && (1.0 / 1.5..=1.5).contains(&ratio)
}

/// Intersection over union of two boxes.
pub fn iou(a: &FaceBox, b: &FaceBox) -> f64 {
    let x0 = a.x.max(b.x);
    let y0 = a.y.max(b.y);
    let x1 = (a.x + a.w).min(b.x + b.w);
    let y1 = (a.y + a.h).min(b.y + b.h);
    let inter = (x1 - x0).max(0.0) * (y1 - y0).max(0.0);
    let union = a.w * a.h + b.w * b.h - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// How a new detection is reconciled with the tracked box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reconcile {
    /// Within the tolerance: the tracker is right and the difference is detector jitter.
    Keep,
    /// They barely overlap (the face really moved, or it is another face): take the detection.
    Jump(FaceBox),
    /// The same face: glide towards the detection by this `[dx, dy, dw, dh]`.
    Glide([f64; 4]),
}

/// Size differences are detector jitter up to this many times the position
/// tolerance: the detector's box size jitters more than its centre (its
/// pyramid steps by 0.8), and a size change moves every ROI edge at once.
/// Measured on 24 seeds of the 320×240 synthetic video: with one tolerance
/// for edges, a size correction glided the mean red by 11 levels over a
/// second and one scan ended in LOW_SNR (lowest SNR 0.9 dB); with this,
/// every scan completed (lowest 4.2 dB).
pub const SIZE_TOLERANCE: f64 = 2.0;

/// Decides how a detection corrects the tracked box. A centre within
/// `tolerance` face widths and a size within [`SIZE_TOLERANCE`] times that
/// are detector jitter and are ignored; a moved centre alone glides the box
/// without resizing it: measured here, letting that jitter into the ROI — even smoothed —
/// raised the no-pulse SNR from about -6 dB to about +1 dB, because jitter
/// at the detection rate is low-frequency colour wander in the HR band.
pub fn reconcile(tracked: Option<FaceBox>, detected: FaceBox, tolerance: f64) -> Reconcile {
    match tracked {
        Some(t) if iou(&t, &detected) >= 0.3 => {
            // Centre and size, not edges: the detector's size jitters
            // more than its centre, and a size change moves every ROI edge.
            let (dcx, dcy) = (
                detected.center().0 - t.center().0,
                detected.center().1 - t.center().1,
            );
            let (dw, dh) = (detected.w - t.w, detected.h - t.h);
            let moved = dcx.abs().max(dcy.abs()) > tolerance * t.w;
            let resized = dw.abs().max(dh.abs()) > SIZE_TOLERANCE * tolerance * t.w;
            match (moved, resized) {
                (false, false) => Reconcile::Keep,
                (true, false) => Reconcile::Glide([dcx, dcy, 0.0, 0.0]),
                _ => Reconcile::Glide([
                    detected.x - t.x,
                    detected.y - t.y,
                    detected.w - t.w,
                    detected.h - t.h,
                ]),
            }
        }
        _ => Reconcile::Jump(detected),
    }
}

/// Share of a pending correction to apply after `dt_s` with time constant
/// `tau_s`: corrections are spread over time, so the ROI never steps
/// (a step every detection interval would be a periodic artefact in the
/// heart-rate band).
pub fn glide_fraction(dt_s: f64, tau_s: f64) -> f64 {
    if tau_s <= 0.0 {
        1.0
    } else {
        (1.0 - (-dt_s.max(0.0) / tau_s).exp()).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn textured(len: usize, offset: f64) -> Vec<f64> {
        textured_scaled(len, offset, 1.0)
    }

    /// The same face texture, `scale` times larger.
    fn textured_scaled(len: usize, offset: f64, scale: f64) -> Vec<f64> {
        (0..len)
            .map(|i| {
                let x = (i as f64 - offset) / scale;
                100.0 + 30.0 * (x / 7.0).sin() + 12.0 * (x / 2.3).cos() + 5.0 * (x / 13.0).sin()
            })
            .collect()
    }

    #[test]
    fn sub_pixel_shifts_are_recovered_in_both_directions() {
        let prev = textured(200, 0.0);
        for d in [-7.3, -1.5, -0.25, 0.0, 0.4, 2.0, 6.7] {
            let cur = textured(200, d);
            let got = profile_shift(&prev, &cur).unwrap();
            assert!((got - d).abs() < 0.15, "shift {d}: got {got}");
        }
    }

    #[test]
    fn a_brightness_change_alone_is_not_motion() {
        let prev = textured(200, 0.0);
        let cur: Vec<f64> = prev.iter().map(|v| v + 9.0).collect();
        assert!(profile_shift(&prev, &cur).unwrap().abs() < 0.01);
    }

    #[test]
    fn profiles_too_short_to_match_give_no_estimate() {
        assert!(profile_shift(&[1.0; 10], &[1.0; 10]).is_none());
    }

    #[test]
    fn a_small_face_is_tracked_within_its_shorter_range() {
        // 24 samples (a 24 px face): the range is 4, so a 3.2 px move is found.
        let prev = textured(24, 0.0);
        let cur = textured(24, 3.2);
        let got = profile_shift(&prev, &cur).unwrap();
        assert!((got - 3.2).abs() < 0.3, "{got}");
    }

    #[test]
    fn binned_profiles_keep_sub_pixel_precision_for_a_close_up() {
        // A 700 px face moving 23.4 px: binned by 7 it is 3.34 samples.
        let bin = profile_bin(700);
        assert_eq!(bin, 7);
        let mut prev = textured_scaled(700, 0.0, 7.0);
        let mut cur = textured_scaled(700, 23.4, 7.0);
        bin_profile(&mut prev, bin);
        bin_profile(&mut cur, bin);
        assert_eq!(prev.len(), 100);
        let got = profile_shift(&prev, &cur).unwrap() * bin as f64;
        assert!((got - 23.4).abs() < 1.0, "{got}");
        let mut same = vec![1.0, 3.0, 5.0, 7.0, 9.0];
        bin_profile(&mut same, 2);
        assert_eq!(same, vec![2.0, 6.0]);
    }

    #[test]
    fn the_same_face_is_near_and_of_a_similar_size_anyone_else_is_not() {
        let a = FaceBox {
            x: 100.0,
            y: 100.0,
            w: 60.0,
            h: 60.0,
        };
        assert!(same_face(&a, &FaceBox { x: 140.0, ..a }));
        assert!(same_face(
            &a,
            &FaceBox {
                w: 80.0,
                h: 80.0,
                ..a
            }
        ));
        assert!(!same_face(&a, &FaceBox { x: 200.0, ..a }), "another place");
        assert!(
            !same_face(
                &a,
                &FaceBox {
                    w: 100.0,
                    h: 100.0,
                    ..a
                }
            ),
            "another size"
        );
    }

    #[test]
    fn detector_jitter_is_ignored_drift_glides_and_jumps_are_taken() {
        let t = FaceBox {
            x: 100.0,
            y: 100.0,
            w: 100.0,
            h: 100.0,
        };
        let near = FaceBox { x: 120.0, ..t };
        assert_eq!(
            reconcile(Some(t), near, 0.1),
            Reconcile::Glide([20.0, 0.0, 0.0, 0.0])
        );
        let jitter = FaceBox {
            x: 104.0,
            w: 97.0,
            ..t
        };
        assert_eq!(reconcile(Some(t), jitter, 0.1), Reconcile::Keep);
        // A size within twice the tolerance is jitter too, even when the
        // centre moved: the box glides without being resized ...
        let moved_and_jittered = FaceBox {
            x: 111.0,
            y: 111.0,
            w: 116.0,
            h: 116.0,
        };
        assert_eq!(
            reconcile(Some(t), moved_and_jittered, 0.1),
            Reconcile::Glide([19.0, 19.0, 0.0, 0.0])
        );
        // ... and a real change of size (the person came closer) is taken.
        let closer = FaceBox {
            x: 85.0,
            y: 85.0,
            w: 130.0,
            h: 130.0,
        };
        assert_eq!(
            reconcile(Some(t), closer, 0.1),
            Reconcile::Glide([-15.0, -15.0, 30.0, 30.0])
        );
        let far = FaceBox { x: 400.0, ..t };
        assert_eq!(reconcile(Some(t), far, 0.1), Reconcile::Jump(far));
        assert_eq!(reconcile(None, near, 0.1), Reconcile::Jump(near));
        assert!((iou(&t, &t) - 1.0).abs() < 1e-12);
        assert_eq!(iou(&t, &far), 0.0);
    }

    #[test]
    fn glide_fraction_is_a_smooth_exponential() {
        assert_eq!(glide_fraction(0.1, 0.0), 1.0);
        assert_eq!(glide_fraction(0.0, 1.0), 0.0);
        let one = glide_fraction(1.0 / 30.0, 1.0);
        let two = glide_fraction(2.0 / 30.0, 1.0);
        assert!((1.0 - two - (1.0 - one).powi(2)).abs() < 1e-12);
    }
}
