//! The whole signal chain: uniform skin traces to heart rate, SNR,
//! confidence, respiratory rate and HRV.
//!
//! Owns: the order of the DSP steps and the confidence map.
//! `traces -> projection (POS/CHROM/GREEN) -> band-pass (edges 20 % / 15 %
//! outside the HR band, so the band is flat) -> [per skin region, then
//! fused by each region's SNR] -> spectrum ->
//! HR peak + SNR -> confidence`, then `beats -> RMSSD` and
//! `intensity + motion + beats -> respiration`.
//!
//! Confidence is the logistic map `1 / (1 + exp(-(snr_db - mid_db) / slope_db))`
//! of the de Haan SNR: monotone, 0.5 at `mid_db`, and configurable.
//!
//! Invariants: plan once per configuration (filters and FFT plans live in
//! the estimator); windows longer than `max_window_s` are truncated to their
//! most recent part; no I/O, no clock.

use super::beats::{detect_beats, hrv, intervals_s, timing_sigma_ms, Beat, Hrv};
use super::filter::Bandpass;
use super::projection::{project, Method};
use super::resample::resample_linear;
use super::respiration::{RespirationEstimate, RespirationEstimator, RespirationInputs};
use super::spectrum::{local_peak_in_band, snr_db, SpectrumEstimator};
use super::SignalError;
use ndarray::{Array2, ArrayView2};

/// The HR filter's low edge is the band's low edge divided by this.
const FILTER_MARGIN_LOW: f64 = 1.2;
/// The HR filter's high edge is the band's high edge times this.
const FILTER_MARGIN_HIGH: f64 = 1.15;
/// Bin spacing (at most) of the spectra that weigh the skin regions. Their
/// FFT is sized for this or for `hr_window_s`, whichever is longer: on a
/// longer window (the whole scan) the weights come from its most recent
/// part (34 s at 30 Hz).
const WEIGHT_RESOLUTION_HZ: f64 = 0.03;

/// Parameters of the signal chain (validated by the config loader).
#[derive(Debug, Clone, PartialEq)]
pub struct SignalConfig {
    pub method: Method,
    /// Uniform rate the traces are resampled to.
    pub resample_hz: f64,
    /// Window of the POS/CHROM projection (1.6 s in the papers).
    pub projection_window_s: f64,
    pub hr_band_hz: (f64, f64),
    pub rr_band_hz: (f64, f64),
    /// Order of each band edge (even).
    pub filter_order: usize,
    /// Sliding window for live HR estimates.
    pub hr_window_s: f64,
    /// Shortest window over which respiration is estimated.
    pub rr_min_window_s: f64,
    /// SNR that maps to confidence 0.5.
    pub confidence_mid_db: f64,
    /// Logistic slope of the confidence map.
    pub confidence_slope_db: f64,
    /// HR is reported only when its confidence reaches this.
    pub hr_min_confidence: f64,
    /// HRV is reported only when its own confidence ([`Hrv::confidence`]) reaches this.
    pub hrv_min_confidence: f64,
    /// RR is reported only when its own confidence reaches this.
    pub rr_min_confidence: f64,
    /// Longest window the estimator must handle (plans FFT sizes).
    pub max_window_s: f64,
}

impl Default for SignalConfig {
    fn default() -> Self {
        SignalConfig {
            method: Method::Pos,
            resample_hz: 30.0,
            projection_window_s: 1.6,
            hr_band_hz: (0.7, 4.0),
            rr_band_hz: (0.1, 0.7),
            filter_order: 4,
            hr_window_s: 10.0,
            rr_min_window_s: 20.0,
            confidence_mid_db: 0.0,
            confidence_slope_db: 1.5,
            hr_min_confidence: 0.5,
            hrv_min_confidence: 0.7,
            rr_min_confidence: 0.3,
            max_window_s: 120.0,
        }
    }
}

/// Uniformly sampled inputs for one analysis.
#[derive(Debug, Clone)]
pub struct Traces {
    pub fs_hz: f64,
    /// `n x 3` mean skin `[R, G, B]`.
    pub rgb: Array2<f64>,
    /// Vertical face displacement in pixels, one per row, when measured.
    pub vertical_px: Option<Vec<f64>>,
    /// The same skin seen region by region (`n x 3` each, same grid), when
    /// measured: the pulse is then the SNR-weighted fusion of the regions'
    /// pulses ([`VitalsEstimator`]); `rgb` still carries the pooled mean
    /// for respiration and for the first estimate of the heart rate.
    pub regions: Vec<Array2<f64>>,
}

impl Traces {
    /// Resamples irregular per-frame samples onto a uniform grid at `fs_hz`.
    /// `vertical_px`, when given, has one value per timestamp.
    pub fn from_irregular(
        t_s: &[f64],
        rgb: &[[f64; 3]],
        vertical_px: Option<&[f64]>,
        fs_hz: f64,
    ) -> Traces {
        let joined: Vec<[f64; 4]> = rgb
            .iter()
            .enumerate()
            .map(|(i, c)| [c[0], c[1], c[2], vertical_px.map_or(0.0, |v| v[i])])
            .collect();
        let mut uniform = Vec::new();
        let n = resample_linear(t_s, &joined, fs_hz, &mut uniform);
        let rgb = Array2::from_shape_fn((n, 3), |(i, c)| uniform[i][c]);
        Traces {
            fs_hz,
            rgb,
            vertical_px: vertical_px.map(|_| uniform.iter().map(|v| v[3]).collect()),
            regions: Vec::new(),
        }
    }

    /// Adds per-region skin traces sampled at the same `t_s` as the pooled
    /// one (one `[R, G, B]` per timestamp each).
    pub fn with_regions(mut self, t_s: &[f64], regions: &[&[[f64; 3]]]) -> Traces {
        let mut uniform = Vec::new();
        self.regions = regions
            .iter()
            .filter_map(|r| {
                let n = resample_linear(t_s, r, self.fs_hz, &mut uniform);
                (n == self.len()).then(|| Array2::from_shape_fn((n, 3), |(i, c)| uniform[i][c]))
            })
            .collect();
        self
    }

    pub fn len(&self) -> usize {
        self.rgb.nrows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn duration_s(&self) -> f64 {
        self.len() as f64 / self.fs_hz
    }
}

/// A heart-rate estimate over one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeartRate {
    /// `None` when the window is too short or holds no pulse power.
    pub bpm: Option<f64>,
    pub snr_db: f64,
    pub confidence: f64,
}

/// Everything the signal stage can say about one scan.
#[derive(Debug, Clone, PartialEq)]
pub struct Vitals {
    pub heart: HeartRate,
    pub respiration: Option<RespirationEstimate>,
    /// RMSSD with its confidence, whether trusted or not (see
    /// [`VitalsEstimator::trusted_hrv`]).
    pub hrv: Option<Hrv>,
    /// The band-passed pulse wave (uniform at `fs_hz`), for reports.
    pub pulse: Vec<f64>,
    pub beats: Vec<Beat>,
}

/// Which spectrum an estimate uses: one periodogram of the live window, or
/// the whole scan's Welch average of `seg`-sample segments stepping by `hop`.
#[derive(Debug, Clone, Copy)]
enum SpectrumKind {
    Periodogram,
    Welch { seg: usize, hop: usize },
}

/// Plan-once estimator for one [`SignalConfig`].
///
/// With per-region traces, the pulse is their SNR-weighted fusion, after
/// DistancePPG (Kumar, Veeraraghavan & Sabharwal, Biomed. Opt. Express
/// 6(5):1565, 2015): each region's pulse is scaled to unit power and
/// weighted by `sqrt(G (1 + G))`, where `G` is its power near the heart
/// rate (fundamental and harmonic, as in [`snr_db`]) over the rest of the
/// band, at the heart rate the other regions show. For a unit-power pulse
/// `a s + n`, `G = a² / σ²`, so that weight is the maximum-ratio combining
/// weight `a / σ²`: every region adds its own evidence in proportion to how
/// clean it is, and a region that shading, hair, a beard or glasses spoil
/// (low `G`) adds almost nothing.
#[derive(Debug)]
pub struct VitalsEstimator {
    cfg: SignalConfig,
    hr_band: Bandpass,
    spec: SpectrumEstimator,
    /// A coarser spectrum (about 0.03 Hz bins) for weighing regions: a
    /// weight needs the power within ±0.1 Hz of the heart rate, not the
    /// rate to 0.3 bpm, and 2 spectra per region per estimate add up.
    weigh_spec: SpectrumEstimator,
    resp: RespirationEstimator,
    projected: Vec<f64>,
    filtered: Vec<f64>,
    /// With four or more regions: the fusion of the even and of the odd
    /// regions, two independent views of the same beats (their beat times
    /// measure the timing noise, see [`timing_sigma_ms`]).
    halves: Option<(Vec<f64>, Vec<f64>)>,
}

impl VitalsEstimator {
    pub fn new(cfg: SignalConfig) -> Result<Self, SignalError> {
        let fs = cfg.resample_hz;
        let max_len = (cfg.max_window_s * fs).ceil() as usize + 1;
        let hr_len = (cfg.hr_window_s * fs).ceil() as usize + 1;
        // The filter's edges sit outside the search band so that the band
        // itself is flat: with edges on the band, filtfilt halves the power
        // of a 45 bpm pulse and its own harmonic out-votes it.
        let hr_band = Bandpass::new(
            cfg.hr_band_hz.0 / FILTER_MARGIN_LOW,
            (cfg.hr_band_hz.1 * FILTER_MARGIN_HIGH).min(0.45 * fs),
            fs,
            cfg.filter_order,
        )?;
        Ok(VitalsEstimator {
            hr_band,
            // 0.005 Hz bins (0.3 bpm) before parabolic refinement.
            spec: SpectrumEstimator::new(fs, 0.005, hr_len),
            weigh_spec: SpectrumEstimator::new(fs, WEIGHT_RESOLUTION_HZ, hr_len),
            resp: RespirationEstimator::new(fs, cfg.rr_band_hz.0, cfg.rr_band_hz.1, 2, max_len)?,
            projected: Vec::new(),
            filtered: Vec::new(),
            halves: None,
            cfg,
        })
    }

    pub fn config(&self) -> &SignalConfig {
        &self.cfg
    }

    /// The trust rule, one per vital: a value is reported only when its own
    /// confidence reaches its configured floor; below it the value is
    /// withheld (`None`), while the confidence stays for diagnostics.
    pub fn trusted_hr(&self, heart: &HeartRate) -> Option<f64> {
        heart
            .bpm
            .filter(|_| heart.confidence >= self.cfg.hr_min_confidence)
    }

    /// See [`VitalsEstimator::trusted_hr`]; `rr_min_confidence`.
    pub fn trusted_rr(&self, resp: Option<&RespirationEstimate>) -> Option<f64> {
        resp.filter(|r| r.confidence >= self.cfg.rr_min_confidence)
            .map(|r| r.rate_bpm)
    }

    /// See [`VitalsEstimator::trusted_hr`]; `hrv_min_confidence`.
    pub fn trusted_hrv(&self, hrv: Option<&Hrv>) -> Option<f64> {
        hrv.filter(|h| h.confidence >= self.cfg.hrv_min_confidence)
            .map(|h| h.rmssd_ms)
    }

    /// Logistic map from SNR (dB) to a 0..1 confidence.
    pub fn confidence(&self, snr_db: f64) -> f64 {
        1.0 / (1.0 + (-(snr_db - self.cfg.confidence_mid_db) / self.cfg.confidence_slope_db).exp())
    }

    fn pulse_wave(&mut self, rgb: ArrayView2<f64>) {
        project(
            self.cfg.method,
            rgb,
            self.cfg.resample_hz,
            self.cfg.projection_window_s,
            &mut self.projected,
        );
        self.hr_band.filtfilt(&self.projected, &mut self.filtered);
    }

    fn power_of(&mut self, x: &[f64], kind: SpectrumKind) -> Vec<f64> {
        match kind {
            SpectrumKind::Periodogram => self.spec.periodogram(x).to_vec(),
            // Each segment gets one vote: artefacts are loud and brief (a
            // finger that presses or slips on the lens, a head that turns),
            // and in a plain mean a few loud seconds out-vote a minute of
            // pulse (two wrong heart rates of 21 Welltory recordings).
            SpectrumKind::Welch { seg, hop } => {
                let (lo, hi) = self.cfg.hr_band_hz;
                self.spec.welch_balanced(x, seg, hop, lo, hi).to_vec()
            }
        }
    }

    /// The pulse wave into `self.filtered`, and its power spectrum: the
    /// pooled trace's, or with at least two `regions`, their SNR-weighted
    /// fusion (see the type's doc), scaled to the pooled pulse's power.
    fn pulse_and_power(
        &mut self,
        pooled: ArrayView2<f64>,
        regions: &[ArrayView2<f64>],
        kind: SpectrumKind,
    ) -> Vec<f64> {
        self.pulse_wave(pooled);
        self.halves = None;
        if regions.len() < 2 {
            return self.power_of(&self.filtered.clone(), kind);
        }
        let pooled_pulse = std::mem::take(&mut self.filtered);
        let n = pooled_pulse.len();
        // Each region's pulse at unit power.
        let mut pulses: Vec<Vec<f64>> = Vec::with_capacity(regions.len());
        for region in regions {
            self.pulse_wave(*region);
            let r = rms(&self.filtered);
            if super::is_positive(r) && self.filtered.len() == n {
                pulses.push(self.filtered.iter().map(|v| v / r).collect());
            }
        }
        let mut sum = vec![0.0; n];
        for p in &pulses {
            sum.iter_mut().zip(p).for_each(|(s, v)| *s += v);
        }
        let (lo, hi) = self.cfg.hr_band_hz;
        let df = self.weigh_spec.df_hz();
        let mut fused = vec![0.0; n];
        let mut halves = (vec![0.0; n], vec![0.0; n]);
        let mut weight_sum = 0.0;
        let mut others = vec![0.0; n];
        for (i, p) in pulses.iter().enumerate() {
            // Each region is weighed at the heart rate the *other* regions
            // show: weighing it at a peak its own noise helped to place
            // would favour that noise (on a face without a pulse this
            // raised the best SNR of 24 scans from -1.7 to +1.0 dB).
            others
                .iter_mut()
                .zip(sum.iter().zip(p))
                .for_each(|(o, (s, v))| *o = s - v);
            let Some(peak) = local_peak_in_band(self.weigh_spec.periodogram(&others), df, lo, hi)
            else {
                continue;
            };
            let snr = snr_db(self.weigh_spec.periodogram(p), df, peak.freq_hz, lo, hi);
            let g = 10f64.powf(snr / 10.0);
            let w = (g * (1.0 + g)).sqrt();
            if w.is_finite() && w > 0.0 {
                fused.iter_mut().zip(p).for_each(|(f, v)| *f += w * v);
                let half = if i % 2 == 0 {
                    &mut halves.0
                } else {
                    &mut halves.1
                };
                half.iter_mut().zip(p).for_each(|(f, v)| *f += w * v);
                weight_sum += w;
            }
        }
        if pulses.len() >= 4 {
            self.halves = Some(halves);
        }
        if !super::is_positive(weight_sum) {
            self.filtered = pooled_pulse;
            return self.power_of(&self.filtered.clone(), kind);
        }
        let scale = rms(&pooled_pulse) / weight_sum;
        fused.iter_mut().for_each(|v| *v *= scale);
        self.filtered = fused;
        self.power_of(&self.filtered.clone(), kind)
    }

    fn heart_from_power(&self, power: &[f64]) -> HeartRate {
        let (lo, hi) = self.cfg.hr_band_hz;
        let df = self.spec.df_hz();
        match local_peak_in_band(power, df, lo, hi) {
            Some(peak) => {
                let snr = snr_db(power, df, peak.freq_hz, lo, hi);
                HeartRate {
                    bpm: Some(peak.freq_hz * 60.0),
                    snr_db: snr,
                    confidence: self.confidence(snr),
                }
            }
            None => HeartRate {
                bpm: None,
                snr_db: -100.0,
                confidence: 0.0,
            },
        }
    }

    /// Heart rate over the most recent `hr_window_s` of `traces` (a live estimate).
    pub fn heart_rate(&mut self, traces: &Traces) -> HeartRate {
        let n = traces.len();
        let len = ((self.cfg.hr_window_s * traces.fs_hz).round() as usize).min(n);
        if len < (2.0 * traces.fs_hz) as usize {
            return HeartRate {
                bpm: None,
                snr_db: -100.0,
                confidence: 0.0,
            };
        }
        let regions: Vec<_> = traces
            .regions
            .iter()
            .map(|r| r.slice(ndarray::s![n - len.., ..]))
            .collect();
        let power = self.pulse_and_power(
            traces.rgb.slice(ndarray::s![n - len.., ..]),
            &regions,
            SpectrumKind::Periodogram,
        );
        self.heart_from_power(&power)
    }

    /// All vitals over the whole of `traces` (the final result of a scan).
    /// The HR spectrum is a Welch average of `hr_window_s` segments stepping
    /// by 1 s, which tolerates the heart rate wandering during the scan;
    /// each segment has one vote ([`SpectrumEstimator::welch_balanced`]), and
    /// the heart rate is the highest local maximum in the band
    /// ([`super::spectrum::local_peak_in_band`]).
    pub fn vitals(&mut self, traces: &Traces) -> Vitals {
        let fs = traces.fs_hz;
        let n = traces.len();
        let max_len = (self.cfg.max_window_s * fs) as usize;
        let start = n.saturating_sub(max_len);
        let rgb = traces.rgb.slice(ndarray::s![start.., ..]);
        if rgb.nrows() < (2.0 * fs) as usize {
            return Vitals {
                heart: HeartRate {
                    bpm: None,
                    snr_db: -100.0,
                    confidence: 0.0,
                },
                respiration: None,
                hrv: None,
                pulse: Vec::new(),
                beats: Vec::new(),
            };
        }
        let seg = ((self.cfg.hr_window_s * fs).round() as usize).max(2);
        let hop = (fs.round() as usize).max(1);
        let regions: Vec<_> = traces
            .regions
            .iter()
            .map(|r| r.slice(ndarray::s![start.., ..]))
            .collect();
        let power = self.pulse_and_power(rgb, &regions, SpectrumKind::Welch { seg, hop });
        let heart = self.heart_from_power(&power);

        let beats = heart
            .bpm
            .map(|bpm| detect_beats(&self.filtered, fs, bpm / 60.0))
            .unwrap_or_default();
        let timing_sigma = match (&self.halves, heart.bpm) {
            (Some((a, b)), Some(bpm)) => timing_sigma_ms(
                &detect_beats(a, fs, bpm / 60.0),
                &detect_beats(b, fs, bpm / 60.0),
                60.0 / bpm,
            ),
            _ => None,
        };
        let hrv = hrv(&intervals_s(&beats), 10, heart.confidence, timing_sigma);

        let respiration = if rgb.nrows() as f64 / fs + 1e-9 >= self.cfg.rr_min_window_s {
            let intensity: Vec<f64> = rgb.rows().into_iter().map(|r| r.sum() / 3.0).collect();
            let vertical = traces.vertical_px.as_ref().map(|v| &v[start..]);
            self.resp.estimate(RespirationInputs {
                intensity: &intensity,
                vertical_px: vertical,
                beats: &beats,
            })
        } else {
            None
        };

        Vitals {
            heart,
            respiration,
            hrv,
            pulse: self.filtered.clone(),
            beats,
        }
    }
}

/// Root mean square of `x` (0 when empty).
fn rms(x: &[f64]) -> f64 {
    (x.iter().map(|v| v * v).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::test_noise::stream as noise;
    use std::f64::consts::PI;

    /// Skin traces with a pulse, breathing in intensity, and sensor noise.
    fn traces(hr_bpm: f64, rr_bpm: f64, pulse_pct: f64, seconds: f64, seed: u64) -> Traces {
        let fs = 30.0;
        let n = (seconds * fs) as usize;
        let mut rnd = noise(seed);
        let skin = [170.0, 120.0, 100.0];
        let pbv = [0.33, 0.77, 0.53];
        let rgb = Array2::from_shape_fn((n, 3), |(i, c)| {
            let t = i as f64 / fs;
            let breath = 1.0 + 0.002 * (2.0 * PI * rr_bpm / 60.0 * t).sin();
            let pulse = pulse_pct / 100.0 * pbv[c] / pbv[1] * (2.0 * PI * hr_bpm / 60.0 * t).sin();
            skin[c] * breath * (1.0 - pulse) + 0.05 * rnd()
        });
        Traces {
            fs_hz: fs,
            rgb,
            vertical_px: None,
            regions: Vec::new(),
        }
    }

    #[test]
    fn whole_scan_vitals_recover_heart_and_breathing_rates() {
        let mut est = VitalsEstimator::new(SignalConfig::default()).unwrap();
        for (hr, rr) in [(48.0, 8.0), (72.0, 15.0), (120.0, 22.0), (175.0, 28.0)] {
            let v = est.vitals(&traces(hr, rr, 0.3, 30.0, 1));
            let got = v.heart.bpm.unwrap();
            assert!((got - hr).abs() < 1.0, "HR {hr}: {got}");
            assert!(
                v.heart.confidence > 0.9,
                "HR {hr}: confidence {}",
                v.heart.confidence
            );
            let r = v.respiration.unwrap();
            assert!((r.rate_bpm - rr).abs() < 1.5, "RR {rr}: {}", r.rate_bpm);
        }
    }

    #[test]
    fn a_breathing_rate_below_its_confidence_floor_is_withheld() {
        let mut est = VitalsEstimator::new(SignalConfig::default()).unwrap();
        // No breathing at all: whatever peak the noise has is not a rate.
        for seed in 0..4 {
            let v = est.vitals(&traces(72.0, 0.0, 0.3, 30.0, seed));
            let r = v.respiration.as_ref();
            let seen = r.map(|r| (r.rate_bpm, r.confidence));
            assert_eq!(est.trusted_rr(r), None, "seed {seed}: {seen:?}");
        }
        let v = est.vitals(&traces(72.0, 15.0, 0.3, 30.0, 1));
        let rr = est.trusted_rr(v.respiration.as_ref()).unwrap();
        assert!((rr - 15.0).abs() < 1.5, "{rr}");
    }

    #[test]
    fn live_heart_rate_uses_only_the_recent_window() {
        let mut est = VitalsEstimator::new(SignalConfig::default()).unwrap();
        // 20 s at 60 bpm then 10 s at 90 bpm: the live estimate follows the latest 10 s.
        let a = traces(60.0, 15.0, 0.3, 20.0, 2);
        let b = traces(90.0, 15.0, 0.3, 10.0, 3);
        let rgb = ndarray::concatenate(ndarray::Axis(0), &[a.rgb.view(), b.rgb.view()]).unwrap();
        let t = Traces {
            fs_hz: 30.0,
            rgb,
            vertical_px: None,
            regions: Vec::new(),
        };
        let hr = est.heart_rate(&t).bpm.unwrap();
        assert!((hr - 90.0).abs() < 3.0, "got {hr}");
    }

    /// `k` skin regions of 30 s: `pulse_pct` of pulse at `hr_bpm` (0 for
    /// none), a red-only colour wave of `artifact_pct` at `artifact_hz`
    /// (shading or a reflection: not a pulse), and noise; with the pooled
    /// trace their mean, as vision measures it.
    fn regions(spec: &[(f64, f64, f64)], hr_bpm: f64, seed: u64) -> Traces {
        let (fs, n) = (30.0, 900);
        let skin = [170.0, 120.0, 100.0];
        let pbv = [0.33, 0.77, 0.53];
        let regions: Vec<Array2<f64>> = spec
            .iter()
            .enumerate()
            .map(|(k, &(pulse_pct, artifact_pct, artifact_hz))| {
                let mut rnd = noise(seed * 100 + k as u64);
                Array2::from_shape_fn((n, 3), |(i, c)| {
                    let t = i as f64 / fs;
                    let pulse =
                        pulse_pct / 100.0 * pbv[c] / pbv[1] * (2.0 * PI * hr_bpm / 60.0 * t).sin();
                    let artifact = if c == 0 {
                        artifact_pct / 100.0 * (2.0 * PI * artifact_hz * t).sin()
                    } else {
                        0.0
                    };
                    skin[c] * (1.0 - pulse + artifact) + 0.3 * rnd()
                })
            })
            .collect();
        let mut rgb = Array2::zeros((n, 3));
        for r in &regions {
            rgb += r;
        }
        rgb /= regions.len() as f64;
        Traces {
            fs_hz: fs,
            rgb,
            vertical_px: None,
            regions,
        }
    }

    #[test]
    fn regions_are_fused_by_their_own_snr_so_a_spoiled_minority_cannot_outvote_the_pulse() {
        // Four clean regions and two with a strong colour wave at 1.9 Hz
        // (114/min): pooled, the wave wins; fused, the pulse does.
        let spec = [
            (0.3, 0.0, 0.0),
            (0.3, 0.0, 0.0),
            (0.3, 0.0, 0.0),
            (0.3, 0.0, 0.0),
            (0.0, 1.5, 1.9),
            (0.0, 1.5, 1.9),
        ];
        let mut est = VitalsEstimator::new(SignalConfig::default()).unwrap();
        for (seed, hr) in [(1, 66.0), (2, 80.0), (3, 150.0)] {
            let fused = regions(&spec, hr, seed);
            let pooled = Traces {
                regions: Vec::new(),
                ..fused.clone()
            };
            let wrong = est.vitals(&pooled).heart.bpm.unwrap();
            assert!((wrong - 114.0).abs() < 2.0, "pooled: {wrong}");
            let v = est.vitals(&fused);
            let got = v.heart.bpm.unwrap();
            assert!((got - hr).abs() < 1.0, "fused: {got}, true {hr}");
            assert!(v.heart.confidence > 0.9, "{:?}", v.heart);
            let live = est.heart_rate(&fused).bpm.unwrap();
            assert!((live - hr).abs() < 2.0, "live: {live}, true {hr}");
        }
    }

    #[test]
    fn fusing_regions_of_noise_does_not_make_a_pulse_of_it() {
        // Eleven regions without a pulse, 60 seeds: each region is weighed
        // at the others' peak, so noise that happens to agree is hardly
        // rewarded. Measured over 200 seeds: mean SNR -4.8 dB fused, -5.1
        // pooled; highest 0.27 and 0.20 dB (the scan's threshold is 1 dB).
        let spec = [(0.0, 0.0, 0.0); 11];
        let mut est = VitalsEstimator::new(SignalConfig::default()).unwrap();
        let (mut pooled_sum, mut fused_sum) = (0.0, 0.0);
        let seeds = 60;
        for seed in 0..seeds {
            let fused = regions(&spec, 72.0, seed);
            let pooled = Traces {
                regions: Vec::new(),
                ..fused.clone()
            };
            let f = est.heart_rate(&fused).snr_db;
            pooled_sum += est.heart_rate(&pooled).snr_db;
            fused_sum += f;
            assert!(f < 1.0, "seed {seed}: fused SNR {f:.2} dB");
        }
        let (fused, pooled) = (fused_sum / seeds as f64, pooled_sum / seeds as f64);
        assert!(
            fused < pooled + 0.5,
            "mean SNR fused {fused:.2} dB, pooled {pooled:.2} dB"
        );
    }

    #[test]
    fn no_pulse_means_low_snr_and_low_confidence() {
        let mut est = VitalsEstimator::new(SignalConfig::default()).unwrap();
        for seed in 0..5 {
            let v = est.vitals(&traces(72.0, 15.0, 0.0, 30.0, seed));
            assert!(v.heart.confidence < 0.3, "seed {seed}: {:?}", v.heart);
            assert_eq!(est.trusted_hr(&v.heart), None);
            assert_eq!(est.trusted_hrv(v.hrv.as_ref()), None, "{:?}", v.hrv);
        }
    }

    #[test]
    fn too_short_input_has_no_estimate_rather_than_a_guess() {
        let mut est = VitalsEstimator::new(SignalConfig::default()).unwrap();
        let v = est.vitals(&traces(72.0, 15.0, 0.3, 1.0, 1));
        assert_eq!(v.heart.bpm, None);
        assert!(v.respiration.is_none());
        let short = traces(72.0, 15.0, 0.3, 15.0, 1);
        assert!(
            est.vitals(&short).respiration.is_none(),
            "respiration needs 20 s"
        );
    }

    #[test]
    fn confidence_is_monotone_in_snr() {
        let est = VitalsEstimator::new(SignalConfig::default()).unwrap();
        let mut last = 0.0;
        for snr in -20..20 {
            let c = est.confidence(snr as f64);
            assert!(c >= last && (0.0..=1.0).contains(&c));
            last = c;
        }
        assert!((est.confidence(0.0) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn irregular_timestamps_are_resampled_before_analysis() {
        // 72 bpm sampled with heavy jitter and a dropped-frame gap.
        let mut rnd = noise(9);
        let mut t = Vec::new();
        let mut x = 0.0;
        while x < 30.0 {
            t.push(x);
            x += 1.0 / 30.0 * (1.0 + 0.6 * rnd());
            if (10.0..10.04).contains(&x) {
                x += 0.4;
            }
        }
        let rgb: Vec<[f64; 3]> = t
            .iter()
            .map(|&s| {
                let p = 0.003 * (2.0 * PI * 1.2 * s).sin();
                [
                    170.0 * (1.0 + 0.43 * p),
                    120.0 * (1.0 + p),
                    100.0 * (1.0 + 0.69 * p),
                ]
            })
            .collect();
        let tr = Traces::from_irregular(&t, &rgb, None, 30.0);
        let mut est = VitalsEstimator::new(SignalConfig::default()).unwrap();
        let hr = est.vitals(&tr).heart.bpm.unwrap();
        assert!((hr - 72.0).abs() < 1.0, "got {hr}");
    }
}
