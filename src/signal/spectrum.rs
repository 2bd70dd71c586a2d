//! Power spectra, spectral peaks and the band SNR.
//!
//! Owns: the FFT plan (rustfft), Hann windowing, zero padding, Welch
//! averaging, sub-bin peak interpolation and the de Haan SNR.
//!
//! Numeric contract: `periodogram(x)` removes the mean of `x`, multiplies by
//! a Hann window of `x.len()` points, zero-pads to `nfft` and returns the
//! one-sided power `|X[k]|^2 / sum(w^2)` for `k = 0..=nfft/2`, bin `k` at
//! `k * df_hz` with `df_hz = fs_hz / nfft`. Units are relative: only ratios
//! and peak positions are meaningful. `welch` is the mean of periodograms of
//! overlapping segments; `welch_balanced` the mean of the same periodograms
//! each scaled to unit power in a band.
//!
//! Plan once, process many: the FFT plan and all buffers are owned by the
//! estimator and reused, so repeated estimates do not allocate.

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use std::sync::Arc;

/// A spectral peak, located to a fraction of a bin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    pub freq_hz: f64,
    pub power: f64,
}

/// Plan-once spectrum estimator for one sample rate and resolution.
pub struct SpectrumEstimator {
    fs_hz: f64,
    nfft: usize,
    fft: Arc<dyn Fft<f64>>,
    buf: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    window: Vec<f64>,
    power: Vec<f64>,
    acc: Vec<f64>,
}

impl std::fmt::Debug for SpectrumEstimator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpectrumEstimator")
            .field("fs_hz", &self.fs_hz)
            .field("nfft", &self.nfft)
            .finish()
    }
}

impl SpectrumEstimator {
    /// Plans an FFT long enough for `max_len` samples and a bin spacing of at
    /// most `resolution_hz` (zero padding supplies the rest).
    pub fn new(fs_hz: f64, resolution_hz: f64, max_len: usize) -> Self {
        let by_resolution = (fs_hz / resolution_hz).ceil() as usize;
        let nfft = by_resolution.max(max_len).max(16).next_power_of_two();
        let fft = FftPlanner::new().plan_fft_forward(nfft);
        let scratch = vec![Complex::default(); fft.get_inplace_scratch_len()];
        SpectrumEstimator {
            fs_hz,
            nfft,
            fft,
            buf: vec![Complex::default(); nfft],
            scratch,
            window: Vec::new(),
            power: vec![0.0; nfft / 2 + 1],
            acc: vec![0.0; nfft / 2 + 1],
        }
    }

    pub fn nfft(&self) -> usize {
        self.nfft
    }

    /// Spacing of the returned bins in Hz.
    pub fn df_hz(&self) -> f64 {
        self.fs_hz / self.nfft as f64
    }

    /// Periodogram of `x` (see the module's numeric contract). Longer inputs
    /// are truncated to their last `nfft` samples.
    pub fn periodogram(&mut self, x: &[f64]) -> &[f64] {
        let x = &x[x.len().saturating_sub(self.nfft)..];
        self.power.iter_mut().for_each(|p| *p = 0.0);
        if x.len() < 2 {
            return &self.power;
        }
        if self.window.len() != x.len() {
            let n = x.len();
            self.window = (0..n)
                .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (n - 1) as f64).cos())
                .collect();
        }
        let finite = x.iter().filter(|v| v.is_finite());
        let mean = finite.clone().sum::<f64>() / finite.count().max(1) as f64;
        for (i, slot) in self.buf.iter_mut().enumerate() {
            *slot = match x.get(i) {
                Some(v) if v.is_finite() => Complex::new((v - mean) * self.window[i], 0.0),
                _ => Complex::default(),
            };
        }
        self.fft
            .process_with_scratch(&mut self.buf, &mut self.scratch);
        let norm: f64 = self.window.iter().map(|w| w * w).sum();
        for (p, c) in self.power.iter_mut().zip(&self.buf) {
            *p = c.norm_sqr() / norm;
        }
        &self.power
    }

    /// Welch estimate: mean periodogram of segments of `seg_len` samples
    /// stepping by `hop`. Falls back to one periodogram when `x` is shorter
    /// than a segment.
    pub fn welch(&mut self, x: &[f64], seg_len: usize, hop: usize) -> &[f64] {
        self.welch_with(x, seg_len, hop, None)
    }

    /// Welch estimate in which every segment has one vote: each segment's
    /// periodogram is scaled to the same power in `lo_hz..=hi_hz` before
    /// the average (the result is then scaled back to the segments' mean
    /// band power, so units stay those of [`SpectrumEstimator::welch`]).
    ///
    /// Why: the plain mean weighs each segment by its power, so a few
    /// seconds of high-amplitude artefact (a finger pressing on the lens,
    /// a head turning) out-vote a minute of clean pulse. Normalised, the
    /// spectrum says at which frequency most *segments* have their power,
    /// and a rhythm present throughout wins over a loud burst. Segments
    /// with no power in the band (all zero or all NaN) are skipped.
    pub fn welch_balanced(
        &mut self,
        x: &[f64],
        seg_len: usize,
        hop: usize,
        lo_hz: f64,
        hi_hz: f64,
    ) -> &[f64] {
        self.welch_with(x, seg_len, hop, Some((lo_hz, hi_hz)))
    }

    fn welch_with(
        &mut self,
        x: &[f64],
        seg_len: usize,
        hop: usize,
        balance: Option<(f64, f64)>,
    ) -> &[f64] {
        let seg_len = seg_len.min(self.nfft);
        if x.len() <= seg_len || hop == 0 {
            return self.periodogram(x);
        }
        let df = self.df_hz();
        self.acc.iter_mut().for_each(|a| *a = 0.0);
        let mut segments = 0usize;
        let mut band_total = 0.0;
        let mut start = 0;
        while start + seg_len <= x.len() {
            self.periodogram(&x[start..start + seg_len]);
            let scale = match balance {
                None => 1.0,
                Some((lo, hi)) => {
                    let band: f64 = self.power[band_bins(self.power.len(), df, lo, hi)]
                        .iter()
                        .sum();
                    if !super::is_positive(band) {
                        start += hop;
                        continue;
                    }
                    band_total += band;
                    1.0 / band
                }
            };
            for (a, p) in self.acc.iter_mut().zip(&self.power) {
                *a += scale * p;
            }
            segments += 1;
            start += hop;
        }
        let back = match balance {
            Some(_) if segments > 0 => band_total / segments as f64,
            _ => 1.0,
        };
        for (p, a) in self.power.iter_mut().zip(&self.acc) {
            *p = back * a / segments.max(1) as f64;
        }
        &self.power
    }
}

/// Index range of the bins whose centre lies in `lo_hz..=hi_hz`.
pub fn band_bins(len: usize, df_hz: f64, lo_hz: f64, hi_hz: f64) -> std::ops::Range<usize> {
    let lo = ((lo_hz / df_hz).ceil().max(0.0) as usize).min(len);
    let hi = (((hi_hz / df_hz).floor() as usize) + 1).min(len);
    lo..hi.max(lo)
}

/// The highest bin in `lo_hz..=hi_hz`, refined by a parabola through it and
/// its neighbours. `None` when the band is empty or holds no power.
pub fn peak_in_band(power: &[f64], df_hz: f64, lo_hz: f64, hi_hz: f64) -> Option<Peak> {
    let range = band_bins(power.len(), df_hz, lo_hz, hi_hz);
    let k = range
        .filter(|&k| power[k].is_finite())
        .max_by(|&a, &b| power[a].total_cmp(&power[b]))?;
    refine(power, df_hz, k, lo_hz, hi_hz)
}

/// The highest *local maximum* in `lo_hz..=hi_hz`: a bin at least as high
/// as both its neighbours, the neighbours looked at beyond the band's edges
/// too. `None` when the band holds none.
///
/// Why not simply the highest bin: when power rises past a band edge (a
/// slow drift or a finger-pressure wave below 0.7 Hz leaking through the
/// window's side lobes), the edge bin is the band's highest without being a
/// rhythm inside the band, and [`peak_in_band`] reports the edge frequency
/// (42 bpm) as a heart rate.
pub fn local_peak_in_band(power: &[f64], df_hz: f64, lo_hz: f64, hi_hz: f64) -> Option<Peak> {
    let range = band_bins(power.len(), df_hz, lo_hz, hi_hz);
    let at = |k: Option<usize>| {
        k.and_then(|k| power.get(k))
            .copied()
            .filter(|v| v.is_finite())
            .unwrap_or(f64::NEG_INFINITY)
    };
    let k = range
        .filter(|&k| {
            power[k].is_finite() && power[k] >= at(k.checked_sub(1)) && power[k] >= at(Some(k + 1))
        })
        .max_by(|&a, &b| power[a].total_cmp(&power[b]))?;
    refine(power, df_hz, k, lo_hz, hi_hz)
}

/// Bin `k` as a [`Peak`], its frequency refined by a parabola through it
/// and its neighbours. `None` when it holds no power.
fn refine(power: &[f64], df_hz: f64, k: usize, lo_hz: f64, hi_hz: f64) -> Option<Peak> {
    if !super::is_positive(power[k]) {
        return None;
    }
    let mut offset = 0.0;
    if k > 0 && k + 1 < power.len() {
        let (a, b, c) = (power[k - 1], power[k], power[k + 1]);
        let denom = a - 2.0 * b + c;
        if denom < 0.0 {
            offset = (0.5 * (a - c) / denom).clamp(-0.5, 0.5);
        }
    }
    let freq_hz = ((k as f64 + offset) * df_hz).clamp(lo_hz, hi_hz);
    Some(Peak {
        freq_hz,
        power: power[k],
    })
}

/// Sum of the power in bins within `half_width_hz` of `center_hz`, limited to `lo..=hi`.
pub fn power_near(
    power: &[f64],
    df_hz: f64,
    center_hz: f64,
    half_width_hz: f64,
    lo_hz: f64,
    hi_hz: f64,
) -> f64 {
    let from = (center_hz - half_width_hz).max(lo_hz);
    let to = (center_hz + half_width_hz).min(hi_hz);
    if to < from {
        return 0.0;
    }
    power[band_bins(power.len(), df_hz, from, to)].iter().sum()
}

/// Signal-to-noise ratio of a pulse at `f0_hz` in the band `lo_hz..=hi_hz`,
/// in dB, after de Haan & Jeanne (2013) as computed by iphys-toolbox
/// `bvpsnr`: signal is the power within ±0.1 Hz of `f0` and ±0.2 Hz of its
/// second harmonic, noise is the rest of the band.
///
/// Returns -100 dB when the band holds no signal power and +100 dB when it
/// holds nothing else, so the value is always finite and ordered.
pub fn snr_db(power: &[f64], df_hz: f64, f0_hz: f64, lo_hz: f64, hi_hz: f64) -> f64 {
    let band: f64 = power[band_bins(power.len(), df_hz, lo_hz, hi_hz)]
        .iter()
        .sum();
    let fundamental = power_near(power, df_hz, f0_hz, 0.1, lo_hz, hi_hz);
    // Exclude any overlap between the fundamental and harmonic windows.
    let harmonic_from = (2.0 * f0_hz - 0.2).max(f0_hz + 0.1 + df_hz / 2.0);
    let harmonic = if 2.0 * f0_hz + 0.2 >= harmonic_from {
        let center = (harmonic_from + 2.0 * f0_hz + 0.2) / 2.0;
        power_near(
            power,
            df_hz,
            center,
            (2.0 * f0_hz + 0.2 - harmonic_from) / 2.0,
            lo_hz,
            hi_hz,
        )
    } else {
        0.0
    };
    let signal = fundamental + harmonic;
    let noise = band - signal;
    if !super::is_positive(signal) {
        return -100.0;
    }
    if !super::is_positive(noise) {
        return 100.0;
    }
    (10.0 * (signal / noise).log10()).clamp(-100.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::test_noise::white;
    use std::f64::consts::PI;

    /// Naive DFT oracle implementing the documented contract.
    fn naive_periodogram(x: &[f64], nfft: usize) -> Vec<f64> {
        let n = x.len();
        let mean = x.iter().sum::<f64>() / n as f64;
        let w: Vec<f64> = (0..n)
            .map(|i| 0.5 - 0.5 * (2.0 * PI * i as f64 / (n - 1) as f64).cos())
            .collect();
        let norm: f64 = w.iter().map(|v| v * v).sum();
        (0..=nfft / 2)
            .map(|k| {
                let (mut re, mut im) = (0.0, 0.0);
                for i in 0..n {
                    let a = -2.0 * PI * (k * i) as f64 / nfft as f64;
                    re += (x[i] - mean) * w[i] * a.cos();
                    im += (x[i] - mean) * w[i] * a.sin();
                }
                (re * re + im * im) / norm
            })
            .collect()
    }

    #[test]
    fn periodogram_matches_a_naive_dft() {
        let x: Vec<f64> = white(3, 100)
            .iter()
            .enumerate()
            .map(|(i, v)| v + (2.0 * PI * 1.3 * i as f64 / 30.0).sin() + 7.0)
            .collect();
        let mut est = SpectrumEstimator::new(30.0, 0.2, 100);
        assert_eq!(est.nfft(), 256);
        let fast = est.periodogram(&x).to_vec();
        let slow = naive_periodogram(&x, 256);
        for (k, (a, b)) in fast.iter().zip(&slow).enumerate() {
            assert!(
                (a - b).abs() < 1e-9 * (1.0 + b.abs()),
                "bin {k}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn peak_of_a_sine_is_found_to_well_under_a_tenth_of_a_bpm() {
        let fs = 30.0;
        let mut est = SpectrumEstimator::new(fs, 0.005, 300);
        for bpm in [45.0, 61.7, 72.0, 100.3, 150.0, 179.9] {
            let f = bpm / 60.0;
            let x: Vec<f64> = (0..300)
                .map(|i| (2.0 * PI * f * i as f64 / fs).sin())
                .collect();
            let df = est.df_hz();
            let p = peak_in_band(est.periodogram(&x), df, 0.7, 4.0).unwrap();
            assert!(
                (p.freq_hz * 60.0 - bpm).abs() < 0.1,
                "{bpm}: got {}",
                p.freq_hz * 60.0
            );
        }
    }

    #[test]
    fn peak_respects_the_band_edges() {
        let fs = 30.0;
        let x: Vec<f64> = (0..300)
            .map(|i| (2.0 * PI * 0.3 * i as f64 / fs).sin())
            .collect();
        let mut est = SpectrumEstimator::new(fs, 0.01, 300);
        let df = est.df_hz();
        let p = peak_in_band(est.periodogram(&x), df, 0.7, 4.0).unwrap();
        assert!(p.freq_hz >= 0.7 && p.freq_hz <= 4.0);
    }

    #[test]
    fn all_zero_input_has_no_peak_and_minimum_snr() {
        let mut est = SpectrumEstimator::new(30.0, 0.01, 300);
        let df = est.df_hz();
        let power = est.periodogram(&[0.0; 300]).to_vec();
        assert!(peak_in_band(&power, df, 0.7, 4.0).is_none());
        assert_eq!(snr_db(&power, df, 1.2, 0.7, 4.0), -100.0);
    }

    #[test]
    fn snr_is_high_for_a_clean_pulse_and_low_for_white_noise() {
        let fs = 30.0;
        let mut est = SpectrumEstimator::new(fs, 0.01, 300);
        let df = est.df_hz();
        let noise = white(11, 300);
        let clean: Vec<f64> = (0..300)
            .map(|i| (2.0 * PI * 1.2 * i as f64 / fs).sin() + 0.05 * noise[i])
            .collect();
        let p = est.periodogram(&clean).to_vec();
        assert!(snr_db(&p, df, 1.2, 0.7, 4.0) > 10.0);
        let p = est.periodogram(&noise).to_vec();
        let peak = peak_in_band(&p, df, 0.7, 4.0).unwrap();
        assert!(snr_db(&p, df, peak.freq_hz, 0.7, 4.0) < 0.0);
    }

    #[test]
    fn nan_samples_are_ignored_not_propagated() {
        let mut est = SpectrumEstimator::new(30.0, 0.01, 100);
        let mut x: Vec<f64> = (0..100).map(|i| (i as f64 * 0.3).sin()).collect();
        x[10] = f64::NAN;
        assert!(est.periodogram(&x).iter().all(|p| p.is_finite()));
    }

    #[test]
    fn welch_of_a_short_input_equals_its_periodogram() {
        let x = white(5, 50);
        let mut est = SpectrumEstimator::new(30.0, 0.05, 64);
        let a = est.periodogram(&x).to_vec();
        let b = est.welch(&x, 300, 30).to_vec();
        assert_eq!(a, b);
    }

    #[test]
    fn balanced_welch_gives_a_loud_brief_burst_one_vote_per_segment() {
        // A steady 1.2 Hz pulse for 60 s, and for 6 s a ten times louder
        // 0.8 Hz wave (a finger pressing on the lens): the plain mean
        // follows the burst, the balanced one the rhythm that is always there.
        let fs = 30.0;
        let x: Vec<f64> = (0..1800)
            .map(|i| {
                let t = i as f64 / fs;
                let burst = if (20.0..26.0).contains(&t) { 10.0 } else { 0.0 };
                (2.0 * PI * 1.2 * t).sin() + burst * (2.0 * PI * 0.8 * t).sin()
            })
            .collect();
        let mut est = SpectrumEstimator::new(fs, 0.005, 300);
        let df = est.df_hz();
        let plain = peak_in_band(est.welch(&x, 300, 30), df, 0.7, 4.0).unwrap();
        assert!((plain.freq_hz - 0.8).abs() < 0.05, "{}", plain.freq_hz);
        let balanced = est.welch_balanced(&x, 300, 30, 0.7, 4.0).to_vec();
        let peak = peak_in_band(&balanced, df, 0.7, 4.0).unwrap();
        assert!((peak.freq_hz - 1.2).abs() < 0.02, "{}", peak.freq_hz);
        // Units stay those of the plain estimate (its mean band power).
        let band = |p: &[f64]| p[band_bins(p.len(), df, 0.7, 4.0)].iter().sum::<f64>();
        let plain_power = est.welch(&x, 300, 30).to_vec();
        let ratio = band(&balanced) / band(&plain_power);
        assert!((ratio - 1.0).abs() < 1e-9, "{ratio}");
        // A steady signal is the same either way; silent segments are skipped.
        let steady: Vec<f64> = (0..900)
            .map(|i| (2.0 * PI * 1.5 * i as f64 / fs).sin())
            .chain(std::iter::repeat_n(0.0, 600))
            .collect();
        let a = peak_in_band(est.welch(&steady[..900], 300, 30), df, 0.7, 4.0).unwrap();
        let b = peak_in_band(est.welch_balanced(&steady, 300, 30, 0.7, 4.0), df, 0.7, 4.0).unwrap();
        assert!(
            (a.freq_hz - b.freq_hz).abs() < 0.01,
            "{} {}",
            a.freq_hz,
            b.freq_hz
        );
        assert!(est
            .welch_balanced(&[0.0; 900], 300, 30, 0.7, 4.0)
            .iter()
            .all(|p| *p == 0.0));
    }

    #[test]
    fn a_band_edge_with_power_rising_beyond_it_is_not_a_peak() {
        // A strong 0.65 Hz wave (drift, pressure) leaks over the 0.7 Hz
        // edge and makes the edge bin the band's highest; the pulse at 1.5 Hz
        // is the highest local maximum inside the band.
        let fs = 30.0;
        let x: Vec<f64> = (0..600)
            .map(|i| {
                let t = i as f64 / fs;
                5.0 * (2.0 * PI * 0.65 * t).sin() + 0.3 * (2.0 * PI * 1.5 * t).sin()
            })
            .collect();
        let mut est = SpectrumEstimator::new(fs, 0.005, 600);
        let df = est.df_hz();
        let p = est.periodogram(&x).to_vec();
        let edge = peak_in_band(&p, df, 0.7, 4.0).unwrap();
        assert!(edge.freq_hz < 0.71, "{}", edge.freq_hz);
        let local = local_peak_in_band(&p, df, 0.7, 4.0).unwrap();
        assert!((local.freq_hz - 1.5).abs() < 0.02, "{}", local.freq_hz);
        // Nothing but a slope: no local maximum, no peak.
        let slope: Vec<f64> = (0..2000).map(|k| 1.0 / (1.0 + k as f64)).collect();
        assert!(local_peak_in_band(&slope, 0.01, 0.7, 4.0).is_none());
        assert!(peak_in_band(&slope, 0.01, 0.7, 4.0).is_some());
    }
}
