//! Beat detection on a band-passed pulse wave, and HRV (RMSSD).
//!
//! Owns: systolic peak picking with sub-sample (parabolic) timing, the
//! inter-beat interval cleaning rule, RMSSD, and how far an RMSSD can be
//! trusted ([`Hrv::confidence`]).
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

/// Successive differences (ms) of the pairs of intervals that both pass
/// the 25 %-from-median rule, and how many pairs there were in all.
fn clean_differences(intervals_s: &[f64]) -> (Vec<f64>, usize) {
    let Some(med) = median(intervals_s) else {
        return (Vec::new(), 0);
    };
    let ok = |x: f64| (x - med).abs() <= 0.25 * med;
    let diffs = intervals_s
        .windows(2)
        .filter(|w| ok(w[0]) && ok(w[1]))
        .map(|w| (w[1] - w[0]) * 1000.0)
        .collect();
    (diffs, intervals_s.len().saturating_sub(1))
}

/// RMSSD in milliseconds from inter-beat intervals (seconds), using only
/// successive pairs of intervals that both pass the 25 %-from-median rule.
/// `None` with fewer than `min_pairs` usable pairs.
pub fn rmssd_ms(intervals_s: &[f64], min_pairs: usize) -> Option<f64> {
    let (diffs, _) = clean_differences(intervals_s);
    if diffs.len() < min_pairs.max(1) {
        return None;
    }
    Some((diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt())
}

/// The RMSSD that timing noise alone (white, `sigma_ms` per beat) adds:
/// a successive difference of intervals is `e[k+2] - 2 e[k+1] + e[k]`,
/// whose variance is `6 σ²`.
pub fn timing_noise_rmssd_ms(sigma_ms: f64) -> f64 {
    6f64.sqrt() * sigma_ms
}

/// The timing noise (RMSSD ms, see [`timing_noise_rmssd_ms`]) at which the
/// noise term of [`Hrv::confidence`] is 0.5. At the default floor (0.7)
/// the noise may add up to 6.5 ms.
pub const HRV_NOISE_HALF_MS: f64 = 10.0;

/// An RMSSD and how far it can be trusted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hrv {
    pub rmssd_ms: f64,
    /// The weakest of three terms, each 0..1: the heart rate's own
    /// confidence (beats of a doubtful rhythm are doubtful beats); the
    /// share of clean interval pairs, `(share - 0.5) / 0.5` (every pair
    /// clean: 1; 85 %: 0.7; half or fewer: 0), since each rejected interval
    /// marks a missed or spurious beat and its neighbours are suspect; and,
    /// when the beat timing noise is known, `1 / (1 + (n / 10 ms)²)` with
    /// `n` the RMSSD that noise alone would give.
    pub confidence: f64,
    /// The beat series' own part of `confidence` (clean share and timing
    /// noise, without the heart rate's).
    pub beat_confidence: f64,
    /// Clean successive pairs / all successive pairs.
    pub clean_share: f64,
    /// Clean pairs used.
    pub pairs: usize,
    /// RMSSD that the beat timing noise alone would give, when estimated.
    pub noise_ms: Option<f64>,
}

/// RMSSD with its confidence, or `None` with fewer than `min_pairs` clean
/// pairs. `timing_sigma_ms` is the beat timing noise when it can be
/// estimated (see [`timing_sigma_ms`]).
pub fn hrv(
    intervals_s: &[f64],
    min_pairs: usize,
    hr_confidence: f64,
    timing_sigma_ms: Option<f64>,
) -> Option<Hrv> {
    let (diffs, all) = clean_differences(intervals_s);
    if diffs.len() < min_pairs.max(1) || all == 0 {
        return None;
    }
    let rmssd_ms = (diffs.iter().map(|d| d * d).sum::<f64>() / diffs.len() as f64).sqrt();
    let clean_share = diffs.len() as f64 / all as f64;
    let share_term = ((clean_share - 0.5) / 0.5).clamp(0.0, 1.0);
    let noise_ms = timing_sigma_ms.map(timing_noise_rmssd_ms);
    let noise_term = noise_ms.map_or(1.0, |n| 1.0 / (1.0 + (n / HRV_NOISE_HALF_MS).powi(2)));
    let beat_confidence = share_term.min(noise_term);
    Some(Hrv {
        rmssd_ms,
        confidence: hr_confidence.clamp(0.0, 1.0).min(beat_confidence),
        beat_confidence,
        clean_share,
        pairs: diffs.len(),
        noise_ms,
    })
}

/// Beat timing noise (ms, one beat of the whole) from two independent
/// halves of the same pulse (e.g. two disjoint sets of skin regions): each
/// beat of `a` is matched to the nearest beat of `b` within a quarter
/// period; the spread of their time differences (median-centred, robust:
/// 1.4826 MAD) is `2 σ` when each half has half the evidence of the
/// whole (`σ_half² = 2 σ²`, and the difference of two halves has
/// `σ_a² + σ_b² = 4 σ²`). Noise the halves share (motion, light) is not
/// seen, so this is a lower bound. `None` with fewer than 8 matches.
pub fn timing_sigma_ms(a: &[Beat], b: &[Beat], period_s: f64) -> Option<f64> {
    if !is_positive(period_s) {
        return None;
    }
    let mut diffs = Vec::with_capacity(a.len());
    let mut j = 0;
    for beat in a {
        while j + 1 < b.len() && (b[j + 1].t_s - beat.t_s).abs() <= (b[j].t_s - beat.t_s).abs() {
            j += 1;
        }
        if let Some(m) = b.get(j) {
            let d = m.t_s - beat.t_s;
            if d.abs() <= 0.25 * period_s {
                diffs.push(d * 1000.0);
            }
        }
    }
    if diffs.len() < 8 {
        return None;
    }
    let centre = median(&diffs)?;
    let deviations: Vec<f64> = diffs.iter().map(|d| (d - centre).abs()).collect();
    Some(1.4826 * median(&deviations)? / 2.0)
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
    fn hrv_confidence_is_the_weakest_of_rhythm_clean_share_and_timing_noise() {
        let iv: Vec<f64> = (0..30).map(|k| 0.8 + 0.02 * ((k % 2) as f64)).collect();
        let clean = hrv(&iv, 10, 0.95, Some(0.5)).unwrap();
        assert!((clean.rmssd_ms - 20.0).abs() < 1e-6);
        assert_eq!(clean.clean_share, 1.0);
        assert!(clean.confidence > 0.9, "{clean:?}");
        // The rhythm's own doubt caps it.
        assert_eq!(hrv(&iv, 10, 0.4, Some(0.5)).unwrap().confidence, 0.4);
        // Timing noise of 4 ms per beat adds ~10 ms of RMSSD: confidence 0.5.
        let noisy = hrv(&iv, 10, 0.95, Some(4.0825)).unwrap();
        assert!((noisy.confidence - 0.5).abs() < 0.01, "{noisy:?}");
        // Every fourth interval a missed beat: half the pairs touch one.
        let gappy: Vec<f64> = (0..40)
            .map(|k| if k % 4 == 0 { 1.6 } else { 0.8 })
            .collect();
        let g = hrv(&gappy, 10, 0.95, None).unwrap();
        assert!(g.clean_share < 0.52 && g.confidence < 0.05, "{g:?}");
    }

    #[test]
    fn timing_noise_is_read_from_two_halves_of_the_same_beats() {
        let mut uniform = crate::signal::test_noise::stream(7);
        // About Gaussian, σ 1: four uniforms (each σ 1/√12) summed.
        let mut rnd = move || (0..4).map(|_| uniform()).sum::<f64>() * 3f64.sqrt();
        let beats = |jitter_ms: f64, rnd: &mut dyn FnMut() -> f64| -> Vec<Beat> {
            (0..60)
                .map(|k| Beat {
                    t_s: k as f64 * 0.8 + jitter_ms / 1000.0 * rnd(),
                    amplitude: 1.0,
                })
                .collect()
        };
        // Halves with σ 8 ms each: the whole has σ = 8 / √2 ≈ 5.7 ms.
        let a = beats(8.0, &mut rnd);
        let b = beats(8.0, &mut rnd);
        let s = timing_sigma_ms(&a, &b, 0.8).unwrap();
        assert!((4.0..7.5).contains(&s), "sigma {s}");
        assert!(timing_sigma_ms(&a[..5], &b[..5], 0.8).is_none());
        assert!(timing_sigma_ms(&a, &b, 0.0).is_none());
    }

    #[test]
    fn too_few_beats_or_silence_give_no_rmssd() {
        assert!(rmssd_ms(&[0.8, 0.8], 3).is_none());
        assert!(rmssd_ms(&[], 1).is_none());
        assert!(detect_beats(&[0.0; 100], 30.0, 1.0).is_empty());
        assert!(detect_beats(&[1.0, 2.0], 30.0, 1.0).is_empty());
    }
}
