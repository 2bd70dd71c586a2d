//! Resampling irregularly timed samples onto a uniform grid.
//!
//! Owns: the one place where frame timestamps become a uniform sample rate.
//! Real cameras drop frames and jitter; every spectral estimate downstream
//! assumes uniform spacing, so nothing may skip this step.
//!
//! Invariants: the grid starts at the first timestamp and steps by exactly
//! `1 / fs_hz`; values are linearly interpolated between the two bracketing
//! samples; samples whose timestamp does not increase are ignored (the first
//! one of a duplicate run wins), so the output is always well defined.

/// Linearly resamples `values` taken at times `t_s` (seconds, non-decreasing)
/// onto a uniform grid at `fs_hz`, appending to `out`. Returns the number of
/// grid points written. `N` is the number of channels per sample.
pub fn resample_linear<const N: usize>(
    t_s: &[f64],
    values: &[[f64; N]],
    fs_hz: f64,
    out: &mut Vec<[f64; N]>,
) -> usize {
    assert_eq!(t_s.len(), values.len(), "one timestamp per sample");
    out.clear();
    let Some((&t0, &t_end)) = t_s.first().zip(t_s.last()) else {
        return 0;
    };
    if !super::is_positive(fs_hz) || t0.is_nan() || t_end.is_nan() || t_end < t0 {
        return 0;
    }
    let count = ((t_end - t0) * fs_hz + 1e-9).floor() as usize + 1;
    out.reserve(count);
    // Indices of samples with strictly increasing timestamps.
    let mut kept: Vec<usize> = Vec::with_capacity(t_s.len());
    for (i, &t) in t_s.iter().enumerate() {
        if kept.last().is_none_or(|&k| t > t_s[k]) {
            kept.push(i);
        }
    }
    let mut j = 0; // position in `kept` of the left bracketing sample
    for k in 0..count {
        let t = t0 + k as f64 / fs_hz;
        while j + 1 < kept.len() && t_s[kept[j + 1]] <= t {
            j += 1;
        }
        let left = kept[j];
        let Some(&right) = kept.get(j + 1) else {
            out.push(values[left]);
            continue;
        };
        let w = (t - t_s[left]) / (t_s[right] - t_s[left]);
        let mut v = [0.0; N];
        for (c, slot) in v.iter_mut().enumerate() {
            *slot = values[left][c] + w * (values[right][c] - values[left][c]);
        }
        out.push(v);
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_input_at_the_same_rate_is_returned_unchanged() {
        let t: Vec<f64> = (0..10).map(|i| i as f64 / 30.0).collect();
        let v: Vec<[f64; 1]> = (0..10).map(|i| [i as f64]).collect();
        let mut out = Vec::new();
        assert_eq!(resample_linear(&t, &v, 30.0, &mut out), 10);
        for (a, b) in out.iter().zip(&v) {
            assert!((a[0] - b[0]).abs() < 1e-9);
        }
    }

    #[test]
    fn jittered_timestamps_of_a_linear_ramp_resample_exactly() {
        // A ramp is reproduced exactly by linear interpolation, whatever the jitter.
        let mut t = Vec::new();
        let mut x = 0.0;
        let mut seed = 7u64;
        for _ in 0..200 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x += 0.02 + 0.04 * ((seed >> 33) as f64 / (1u64 << 31) as f64);
            t.push(x);
        }
        let v: Vec<[f64; 2]> = t.iter().map(|&s| [3.0 * s + 1.0, -s]).collect();
        let mut out = Vec::new();
        let n = resample_linear(&t, &v, 25.0, &mut out);
        for (k, s) in out.iter().enumerate().take(n) {
            let tk = t[0] + k as f64 / 25.0;
            assert!((s[0] - (3.0 * tk + 1.0)).abs() < 1e-9);
            assert!((s[1] + tk).abs() < 1e-9);
        }
    }

    #[test]
    fn a_dropped_frame_gap_is_bridged_by_interpolation() {
        let t = [0.0, 0.1, 0.5, 0.6];
        let v = [[0.0], [1.0], [5.0], [6.0]];
        let mut out = Vec::new();
        resample_linear(&t, &v, 10.0, &mut out);
        let got: Vec<f64> = out.iter().map(|s| s[0]).collect();
        let want = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9);
        }
    }

    #[test]
    fn duplicate_timestamps_do_not_divide_by_zero() {
        let t = [0.0, 0.1, 0.1, 0.2];
        let v = [[0.0], [1.0], [9.0], [2.0]];
        let mut out = Vec::new();
        resample_linear(&t, &v, 20.0, &mut out);
        assert!(out.iter().all(|s| s[0].is_finite()));
        assert!((out[1][0] - 0.5).abs() < 1e-9);
        assert_eq!(out[2][0], 1.0, "the first sample of a duplicate run wins");
    }

    #[test]
    fn empty_and_single_sample_inputs_are_handled() {
        let mut out: Vec<[f64; 3]> = Vec::new();
        assert_eq!(resample_linear(&[], &[], 30.0, &mut out), 0);
        assert_eq!(
            resample_linear(&[1.0], &[[1.0, 2.0, 3.0]], 30.0, &mut out),
            1
        );
        assert_eq!(out, vec![[1.0, 2.0, 3.0]]);
    }
}
