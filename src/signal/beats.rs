//! Beat detection on a band-passed pulse wave, and HRV (RMSSD).
//!
//! Owns: systolic peak picking with sub-sample (parabolic) timing, the
//! inter-beat interval cleaning rule, and RMSSD.
//!
//! Invariants: beats are strictly increasing in time and at least
//! `min_spacing` apart (a fraction of the expected period, so a dicrotic notch
//! is not a second beat); intervals further than 25 % from the median are
//! artefacts and break the successive-difference chain rather than being
//! bridged, so one missed beat cannot create a huge RMSSD.

use super::is_positive;

/// One detected beat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Beat {
    /// Time of the systolic peak, seconds from the start of the signal.
    pub t_s: f64,
    /// Peak height above the preceding trough (signal units).
    pub amplitude: f64,
}

/// Finds systolic peaks in `pulse` (uniform at `fs_hz`, zero-mean) given the
/// expected heart rate. Peaks must be positive, the highest within half an
/// expected period either side.
pub fn detect_beats(pulse: &[f64], fs_hz: f64, expected_hr_hz: f64) -> Vec<Beat> {
    let n = pulse.len();
    let mut beats = Vec::new();
    if n < 3 || !is_positive(expected_hr_hz) || !is_positive(fs_hz) {
        return beats;
    }
    let half = ((0.5 * fs_hz / expected_hr_hz).floor() as usize).max(1);
    let mut last_peak: Option<usize> = None;
    for i in 1..n - 1 {
        let v = pulse[i];
        if !(is_positive(v) && v >= pulse[i - 1] && v > pulse[i + 1]) {
            continue;
        }
        let lo = i.saturating_sub(half);
        let hi = (i + half).min(n - 1);
        if pulse[lo..=hi].iter().any(|&u| u > v) {
            continue;
        }
        if last_peak.is_some_and(|p| i - p < half) {
            continue;
        }
        let (a, b, c) = (pulse[i - 1], v, pulse[i + 1]);
        let denom = a - 2.0 * b + c;
        let offset = if denom < 0.0 {
            (0.5 * (a - c) / denom).clamp(-0.5, 0.5)
        } else {
            0.0
        };
        let trough_from = last_peak.unwrap_or(lo);
        let trough = pulse[trough_from..=i]
            .iter()
            .cloned()
            .fold(f64::INFINITY, f64::min);
        beats.push(Beat {
            t_s: (i as f64 + offset) / fs_hz,
            amplitude: v - trough,
        });
        last_peak = Some(i);
    }
    beats
}

/// Inter-beat intervals in seconds.
pub fn intervals_s(beats: &[Beat]) -> Vec<f64> {
    beats.windows(2).map(|w| w[1].t_s - w[0].t_s).collect()
}

fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    })
}

/// RMSSD in milliseconds from inter-beat intervals (seconds), using only
/// successive pairs of intervals that both pass the 25 %-from-median rule.
/// `None` with fewer than `min_pairs` usable pairs.
pub fn rmssd_ms(intervals_s: &[f64], min_pairs: usize) -> Option<f64> {
    let med = median(intervals_s)?;
    let ok = |x: f64| (x - med).abs() <= 0.25 * med;
    let diffs: Vec<f64> = intervals_s
        .windows(2)
        .filter(|w| ok(w[0]) && ok(w[1]))
        .map(|w| (w[1] - w[0]) * 1000.0)
        .collect();
    if diffs.len() < min_pairs.max(1) {
        return None;
    }
    Some((diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    #[test]
    fn beats_of_a_sine_are_one_period_apart_with_sub_sample_timing() {
        let fs = 30.0;
        let f = 1.13;
        let x: Vec<f64> = (0..600)
            .map(|i| (2.0 * PI * f * i as f64 / fs).sin())
            .collect();
        let beats = detect_beats(&x, fs, f);
        assert!(
            (beats.len() as i64 - 22).abs() <= 1,
            "{} beats",
            beats.len()
        );
        for iv in intervals_s(&beats) {
            assert!((iv - 1.0 / f).abs() < 0.004, "interval {iv}");
        }
    }

    #[test]
    fn a_dicrotic_bump_is_not_counted_as_a_beat() {
        let fs = 30.0;
        let f = 1.0;
        let x: Vec<f64> = (0..300)
            .map(|i| {
                let t = i as f64 / fs;
                (2.0 * PI * f * t).sin() + 0.4 * (2.0 * PI * 2.0 * f * t + 1.0).sin()
            })
            .collect();
        let beats = detect_beats(&x, fs, f);
        assert!(
            (beats.len() as i64 - 10).abs() <= 1,
            "{} beats",
            beats.len()
        );
    }

    #[test]
    fn rmssd_matches_the_definition_on_clean_intervals() {
        let iv = [0.80, 0.82, 0.79, 0.81, 0.80];
        // successive differences: 20, -30, 20, -10 ms
        let want = ((400.0 + 900.0 + 400.0 + 100.0) / 4.0f64).sqrt();
        assert!((rmssd_ms(&iv, 3).unwrap() - want).abs() < 1e-6);
    }

    #[test]
    fn a_missed_beat_breaks_the_chain_instead_of_inflating_rmssd() {
        let iv = [0.80, 0.82, 1.61, 0.79, 0.81, 0.80];
        let r = rmssd_ms(&iv, 2).unwrap();
        assert!(r < 40.0, "rmssd {r}");
    }

    #[test]
    fn too_few_beats_or_silence_give_no_rmssd() {
        assert!(rmssd_ms(&[0.8, 0.8], 3).is_none());
        assert!(rmssd_ms(&[], 1).is_none());
        assert!(detect_beats(&[0.0; 100], 30.0, 1.0).is_empty());
        assert!(detect_beats(&[1.0, 2.0], 30.0, 1.0).is_empty());
    }
}
