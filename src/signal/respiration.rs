//! Respiratory rate from face video without a neural network.
//!
//! Owns: the four respiratory surrogates and their fusion.
//! - Intensity (RIIV): breathing changes venous return and skin perfusion,
//!   so the skin's mean brightness rises and falls with each breath.
//! - Motion: the head and shoulders rise and fall; the vision stage measures
//!   the face's vertical displacement with sub-pixel precision.
//! - Amplitude (RIAV): stroke volume changes with intrathoracic pressure, so
//!   the pulse amplitude is modulated at the breathing rate.
//! - Frequency (RIFV): respiratory sinus arrhythmia modulates the beat-to-beat
//!   interval.
//!
//! Fusion (Karlen et al. 2013 show that fusing surrogates beats any single
//! one): each surrogate is band-passed to the respiratory band and its power
//! spectrum normalised to unit band power. Its *quality* is the share of
//! band power within ±`1/T` Hz of its own peak (T = window length): ~0.9 for a
//! clean breath rhythm, ~0.2 for noise. The fused spectrum is the
//! quality²-weighted sum of the normalised spectra; the rate is its peak and
//! `rr_confidence` maps the fused spectrum's own concentration linearly from
//! 0.35 (noise) to 0.8 (clean) onto 0..1.
//!
//! Invariants: pure, plan-once; no surrogate can dominate by scale (all are
//! normalised); a surrogate with no power contributes nothing.

use super::beats::Beat;
use super::filter::Bandpass;
use super::resample::resample_linear;
use super::spectrum::{band_bins, peak_in_band, power_near, SpectrumEstimator};
use super::SignalError;
use serde::Serialize;

/// Sample rate used for beat-derived (amplitude, interval) series.
const BEAT_SERIES_HZ: f64 = 4.0;
/// Fused concentration that maps to confidence 0 (white noise gives ~0.2–0.3).
const CONCENTRATION_NOISE: f64 = 0.35;
/// Fused concentration that maps to confidence 1.
const CONCENTRATION_CLEAN: f64 = 0.8;

/// One respiratory surrogate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Surrogate {
    Intensity,
    Motion,
    Amplitude,
    Frequency,
}

/// What one surrogate said.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SurrogateEstimate {
    pub surrogate: Surrogate,
    pub rate_bpm: f64,
    pub quality: f64,
}

/// The fused respiratory rate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RespirationEstimate {
    pub rate_bpm: f64,
    pub confidence: f64,
    pub surrogates: Vec<SurrogateEstimate>,
    /// The band-passed uniform surrogate (brightness or head motion) of the
    /// best quality, at the estimator's rate: the breathing wave of reports.
    #[serde(skip)]
    pub wave: Vec<f64>,
}

/// Uniformly sampled inputs for one window.
#[derive(Debug, Clone, Copy)]
pub struct RespirationInputs<'a> {
    /// Mean skin brightness (any positive scale), uniform at the estimator's rate.
    pub intensity: &'a [f64],
    /// Vertical face displacement in pixels, same sampling, if measured.
    pub vertical_px: Option<&'a [f64]>,
    /// Beats of the pulse wave within the same window (times from its start).
    pub beats: &'a [Beat],
}

/// Plan-once respiratory rate estimator for one sample rate and band.
#[derive(Debug)]
pub struct RespirationEstimator {
    fs_hz: f64,
    lo_hz: f64,
    hi_hz: f64,
    band: Bandpass,
    band_beats: Bandpass,
    spec: SpectrumEstimator,
    spec_beats: SpectrumEstimator,
    filtered: Vec<f64>,
    fused: Vec<f64>,
}

impl RespirationEstimator {
    /// `max_len` is the longest window in samples at `fs_hz`.
    pub fn new(
        fs_hz: f64,
        lo_hz: f64,
        hi_hz: f64,
        order: usize,
        max_len: usize,
    ) -> Result<Self, SignalError> {
        let max_s = max_len as f64 / fs_hz;
        Ok(RespirationEstimator {
            fs_hz,
            lo_hz,
            hi_hz,
            band: Bandpass::new(lo_hz, hi_hz, fs_hz, order)?,
            band_beats: Bandpass::new(
                lo_hz,
                hi_hz.min(0.45 * BEAT_SERIES_HZ),
                BEAT_SERIES_HZ,
                order,
            )?,
            spec: SpectrumEstimator::new(fs_hz, 0.002, max_len),
            spec_beats: SpectrumEstimator::new(
                BEAT_SERIES_HZ,
                0.002,
                (max_s * BEAT_SERIES_HZ) as usize + 1,
            ),
            filtered: Vec::new(),
            fused: Vec::new(),
        })
    }

    /// Estimates the respiratory rate over one window; `None` when no
    /// surrogate carries any power in the band.
    pub fn estimate(&mut self, inputs: RespirationInputs<'_>) -> Option<RespirationEstimate> {
        let window_s = inputs.intensity.len() as f64 / self.fs_hz;
        if window_s <= 0.0 {
            return None;
        }
        let half_width = 1.0 / window_s;
        let df = self.spec.df_hz();
        let bins = band_bins(self.spec.nfft() / 2 + 1, df, self.lo_hz, self.hi_hz);
        self.fused.clear();
        self.fused.resize(bins.len(), 0.0);
        let mut surrogates = Vec::new();

        let mut wave: (f64, Vec<f64>) = (f64::NEG_INFINITY, Vec::new());
        let mean = inputs.intensity.iter().sum::<f64>() / inputs.intensity.len() as f64;
        if mean.abs() > 1e-12 {
            let relative: Vec<f64> = inputs.intensity.iter().map(|v| v / mean - 1.0).collect();
            if let Some(e) = self.add_uniform(Surrogate::Intensity, &relative, half_width) {
                wave = (e.quality, self.filtered.clone());
                surrogates.push(e);
            }
        }
        if let Some(motion) = inputs.vertical_px {
            if let Some(e) = self.add_uniform(Surrogate::Motion, motion, half_width) {
                if e.quality > wave.0 {
                    wave = (e.quality, self.filtered.clone());
                }
                surrogates.push(e);
            }
        }
        if inputs.beats.len() >= 4 {
            let t: Vec<f64> = inputs.beats.iter().map(|b| b.t_s).collect();
            let amp: Vec<[f64; 1]> = inputs.beats.iter().map(|b| [b.amplitude]).collect();
            let ibi: Vec<[f64; 1]> = inputs
                .beats
                .windows(2)
                .map(|w| [w[1].t_s - w[0].t_s])
                .collect();
            surrogates.extend(self.add_beat_series(Surrogate::Amplitude, &t, &amp, half_width));
            surrogates.extend(self.add_beat_series(
                Surrogate::Frequency,
                &t[1..],
                &ibi,
                half_width,
            ));
        }

        let total: f64 = self.fused.iter().sum();
        if !super::is_positive(total) {
            return None;
        }
        // Peak of the fused spectrum, in the coordinates of the full spectrum.
        let mut full = vec![0.0; bins.end];
        full[bins.clone()].copy_from_slice(&self.fused);
        let peak = peak_in_band(&full, df, self.lo_hz, self.hi_hz)?;
        let concentration =
            power_near(&full, df, peak.freq_hz, half_width, self.lo_hz, self.hi_hz) / total;
        let confidence = ((concentration - CONCENTRATION_NOISE)
            / (CONCENTRATION_CLEAN - CONCENTRATION_NOISE))
            .clamp(0.0, 1.0);
        Some(RespirationEstimate {
            rate_bpm: peak.freq_hz * 60.0,
            confidence,
            surrogates,
            wave: wave.1,
        })
    }

    fn add_uniform(
        &mut self,
        which: Surrogate,
        x: &[f64],
        half_width: f64,
    ) -> Option<SurrogateEstimate> {
        self.band.filtfilt(x, &mut self.filtered);
        let df = self.spec.df_hz();
        let power = self.spec.periodogram(&self.filtered).to_vec();
        accumulate(
            which,
            &power,
            df,
            self.lo_hz,
            self.hi_hz,
            half_width,
            &mut self.fused,
            df,
        )
    }

    fn add_beat_series(
        &mut self,
        which: Surrogate,
        t_s: &[f64],
        values: &[[f64; 1]],
        half_width: f64,
    ) -> Option<SurrogateEstimate> {
        let mut uniform = Vec::new();
        resample_linear(t_s, values, BEAT_SERIES_HZ, &mut uniform);
        if uniform.len() < 8 {
            return None;
        }
        let series: Vec<f64> = uniform.iter().map(|v| v[0]).collect();
        self.band_beats.filtfilt(&series, &mut self.filtered);
        let df = self.spec_beats.df_hz();
        let power = self.spec_beats.periodogram(&self.filtered).to_vec();
        let fused_df = self.spec.df_hz();
        accumulate(
            which,
            &power,
            df,
            self.lo_hz,
            self.hi_hz,
            half_width,
            &mut self.fused,
            fused_df,
        )
    }
}

/// Normalises one surrogate's band spectrum, scores it and adds it, weighted
/// by quality², to `fused` (whose bins are spaced `fused_df` from `lo_hz`'s bin).
#[allow(clippy::too_many_arguments)]
fn accumulate(
    which: Surrogate,
    power: &[f64],
    df: f64,
    lo_hz: f64,
    hi_hz: f64,
    half_width: f64,
    fused: &mut [f64],
    fused_df: f64,
) -> Option<SurrogateEstimate> {
    let band: f64 = power[band_bins(power.len(), df, lo_hz, hi_hz)].iter().sum();
    if !super::is_positive(band) {
        return None;
    }
    let peak = peak_in_band(power, df, lo_hz, hi_hz)?;
    let quality =
        (power_near(power, df, peak.freq_hz, half_width, lo_hz, hi_hz) / band).clamp(0.0, 1.0);
    let weight = quality * quality / band;
    let first_bin = (lo_hz / fused_df).ceil();
    for (i, slot) in fused.iter_mut().enumerate() {
        let f = (first_bin + i as f64) * fused_df;
        // Linear interpolation of this surrogate's spectrum at the fused bin.
        let pos = f / df;
        let k = pos.floor() as usize;
        let frac = pos - k as f64;
        let p = match (power.get(k), power.get(k + 1)) {
            (Some(a), Some(b)) => a + frac * (b - a),
            (Some(a), None) => *a,
            _ => 0.0,
        };
        *slot += weight * p;
    }
    Some(SurrogateEstimate {
        surrogate: which,
        rate_bpm: peak.freq_hz * 60.0,
        quality,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::test_noise::white as noise;
    use std::f64::consts::PI;

    fn estimator(n: usize) -> RespirationEstimator {
        RespirationEstimator::new(30.0, 0.1, 0.7, 2, n).unwrap()
    }

    #[test]
    fn intensity_alone_gives_the_breathing_rate_across_the_band() {
        let fs = 30.0;
        let n = 900;
        let mut est = estimator(n);
        let hiss = noise(1, n);
        for rr in [6.0, 10.0, 15.0, 24.0, 30.0] {
            let x: Vec<f64> = (0..n)
                .map(|i| {
                    100.0 * (1.0 + 0.003 * (2.0 * PI * rr / 60.0 * i as f64 / fs).sin())
                        + 0.05 * hiss[i]
                })
                .collect();
            let r = est
                .estimate(RespirationInputs {
                    intensity: &x,
                    vertical_px: None,
                    beats: &[],
                })
                .unwrap();
            assert!(
                (r.rate_bpm - rr).abs() < 1.0,
                "{rr}/min: got {}",
                r.rate_bpm
            );
            assert!(r.confidence > 0.6, "{rr}/min: confidence {}", r.confidence);
        }
    }

    #[test]
    fn a_clean_surrogate_outvotes_a_noisy_one() {
        let fs = 30.0;
        let n = 900;
        let mut est = estimator(n);
        let intensity: Vec<f64> = noise(2, n).iter().map(|v| 100.0 + v).collect();
        let motion: Vec<f64> = (0..n)
            .map(|i| 1.5 * (2.0 * PI * 0.2 * i as f64 / fs).sin())
            .collect();
        let r = est
            .estimate(RespirationInputs {
                intensity: &intensity,
                vertical_px: Some(&motion),
                beats: &[],
            })
            .unwrap();
        assert!((r.rate_bpm - 12.0).abs() < 1.0, "got {}", r.rate_bpm);
        let q = |s| {
            r.surrogates
                .iter()
                .find(|e| e.surrogate == s)
                .unwrap()
                .quality
        };
        assert!(q(Surrogate::Motion) > q(Surrogate::Intensity));
    }

    #[test]
    fn beat_interval_modulation_alone_reveals_the_rate() {
        // Respiratory sinus arrhythmia: beat intervals swing with breathing at 0.25 Hz.
        let mut beats = Vec::new();
        let mut t = 0.0;
        while t < 30.0 {
            beats.push(Beat {
                t_s: t,
                amplitude: 1.0,
            });
            t += 60.0 / (70.0 * (1.0 + 0.06 * (2.0 * PI * 0.25 * t).sin()));
        }
        let flat = vec![100.0; 900];
        let mut est = estimator(900);
        let r = est
            .estimate(RespirationInputs {
                intensity: &flat,
                vertical_px: None,
                beats: &beats,
            })
            .unwrap();
        assert!((r.rate_bpm - 15.0).abs() < 1.5, "got {}", r.rate_bpm);
    }

    #[test]
    fn pure_noise_gives_low_confidence() {
        let n = 900;
        let mut est = estimator(n);
        let mut worst: f64 = 0.0;
        for seed in 0..10 {
            let x: Vec<f64> = noise(seed + 10, n).iter().map(|v| 100.0 + v).collect();
            let m = noise(seed + 99, n);
            if let Some(r) = est.estimate(RespirationInputs {
                intensity: &x,
                vertical_px: Some(&m),
                beats: &[],
            }) {
                worst = worst.max(r.confidence);
            }
        }
        assert!(worst < 0.5, "noise reached confidence {worst}");
    }

    #[test]
    fn flat_input_has_no_estimate() {
        let mut est = estimator(300);
        let flat = vec![50.0; 300];
        assert!(est
            .estimate(RespirationInputs {
                intensity: &flat,
                vertical_px: None,
                beats: &[]
            })
            .is_none());
        assert!(est
            .estimate(RespirationInputs {
                intensity: &[],
                vertical_px: None,
                beats: &[]
            })
            .is_none());
    }
}
