//! Measurement stage: the scan's state machine.
//!
//! Owns: when a scan starts, what it records, when it reports, and how it
//! ends. It consumes one vision [`Observation`] per frame and produces
//! [`Update`]s; the events stage turns those into WMS-style events.
//!
//! ```text
//! created ──face+skin──▶ measuring ──duration reached, SNR ok──▶ completed
//!    │                      │ ├─ ~1 Hz: intermediate result
//!    │                      │ ├─ face missing > face_lost_timeout ─▶ cancelled FACE_LOST
//!    │                      │ ├─ too dark > dark_timeout ─────────▶ cancelled TOO_DARK
//!    │                      │ ├─ too much motion > motion_timeout ─▶ cancelled TOO_MUCH_MOTION
//!    │                      │ ├─ SNR < low_snr_db for low_snr_timeout (or at the end) ─▶ cancelled LOW_SNR
//!    │                      │ └─ input ended: completed if ≥ min_duration, else cancelled INPUT_ENDED
//!    ├─ no face within face_init_timeout ─▶ cancelled NO_FACE (FAILED_INIT_BLOOD_FLOW)
//!    └─ too dark before a face was found ─▶ cancelled TOO_DARK
//! ```
//!
//! Invariants: pure — time is the frame timestamp, nothing reads a clock or
//! does I/O, so every path is tested with plain synchronous tests; exactly
//! one terminal update (`Completed` or `Cancelled`) per measurement, after
//! which input is ignored; a cancelled scan never reports a heart rate (a
//! confident wrong number is worse than none).

use crate::signal::{SignalConfig, SignalError, Traces, VitalsEstimator};
use crate::vision::Observation;
use serde::Serialize;

/// Thresholds and timing of a scan (validated by the config loader).
#[derive(Debug, Clone, PartialEq)]
pub struct MeasurementConfig {
    pub duration_s: f64,
    /// Shortest scan that still completes when the input ends early.
    pub min_duration_s: f64,
    pub face_init_timeout_s: f64,
    pub face_lost_timeout_s: f64,
    pub min_skin_pixels: u32,
    /// Mean frame luma (0..255) below which the scene is too dark.
    pub dark_luma: f64,
    pub dark_timeout_s: f64,
    /// Face speed, in face widths per second (1 s average), above which motion is too much.
    pub max_motion_face_widths_per_s: f64,
    pub motion_timeout_s: f64,
    pub low_snr_db: f64,
    pub low_snr_timeout_s: f64,
    pub intermediate_interval_s: f64,
    /// First intermediate result once this much signal is recorded.
    pub first_result_after_s: f64,
}

impl Default for MeasurementConfig {
    fn default() -> Self {
        MeasurementConfig {
            duration_s: 30.0,
            min_duration_s: 15.0,
            face_init_timeout_s: 10.0,
            face_lost_timeout_s: 2.0,
            min_skin_pixels: 200,
            dark_luma: 25.0,
            dark_timeout_s: 2.0,
            max_motion_face_widths_per_s: 0.5,
            motion_timeout_s: 2.0,
            low_snr_db: -1.0,
            low_snr_timeout_s: 8.0,
            intermediate_interval_s: 1.0,
            first_result_after_s: 5.0,
        }
    }
}

/// Why a scan ended without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CancelReason {
    LowSnr,
    FaceLost,
    NoFace,
    TooDark,
    TooMuchMotion,
    /// The input ended before `min_duration_s` of signal.
    InputEnded,
    /// Stopped from outside (user, API, shutdown).
    Requested,
    /// The input failed mid-scan (unreadable or malformed frame).
    InputError,
}

impl CancelReason {
    /// The code used in events and `--json` (`LOW_SNR`, `FACE_LOST`, ...).
    pub fn code(self) -> &'static str {
        match self {
            CancelReason::LowSnr => "LOW_SNR",
            CancelReason::FaceLost => "FACE_LOST",
            CancelReason::NoFace => "NO_FACE",
            CancelReason::TooDark => "TOO_DARK",
            CancelReason::TooMuchMotion => "TOO_MUCH_MOTION",
            CancelReason::InputEnded => "INPUT_ENDED",
            CancelReason::Requested => "REQUESTED",
            CancelReason::InputError => "INPUT_ERROR",
        }
    }
}

/// A live estimate, about once a second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Intermediate {
    /// 0, 1, 2, ... within the measurement.
    pub index: u32,
    /// Seconds of signal so far.
    pub elapsed_s: f64,
    pub hr_bpm: Option<f64>,
    pub snr_db: f64,
    pub confidence: f64,
    pub rr_bpm: Option<f64>,
    pub rr_confidence: f64,
}

/// The final numbers of a scan (also filled, without vitals, when cancelled).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScanResult {
    pub hr_bpm: Option<f64>,
    pub confidence: f64,
    pub snr_db: Option<f64>,
    pub rr_bpm: Option<f64>,
    pub rr_confidence: f64,
    pub rmssd_ms: Option<f64>,
    /// Seconds of signal the result is based on.
    pub duration_s: f64,
    /// Frames seen by the measurement.
    pub frames: u64,
    /// The band-passed pulse wave and beat times, for reports.
    pub pulse: Vec<f64>,
    pub beat_times_s: Vec<f64>,
    /// The band-passed breathing wave (same rate as `pulse`), for reports.
    pub respiration_wave: Vec<f64>,
    /// Sample rate of `pulse` and `respiration_wave`.
    pub wave_fs_hz: f64,
}

/// What happened, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    Created,
    Started {
        t_s: f64,
    },
    Intermediate(Intermediate),
    LowSnr {
        snr_db: f64,
        threshold_db: f64,
        below_for_s: f64,
    },
    Constraint {
        reason: CancelReason,
        detail: String,
    },
    NoFace {
        waited_s: f64,
    },
    Cancelled {
        reason: CancelReason,
        result: ScanResult,
    },
    Completed(ScanResult),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Waiting,
    Measuring,
    Done,
}

/// One scan.
#[derive(Debug)]
pub struct Measurement {
    cfg: MeasurementConfig,
    estimator: VitalsEstimator,
    phase: Phase,
    frames: u64,
    first_t: Option<f64>,
    start_t: f64,
    last_face_t: f64,
    dark_since: Option<f64>,
    fast_since: Option<f64>,
    low_snr_since: Option<f64>,
    next_result_t: f64,
    results: u32,
    /// Recent `(t, speed in face widths per second)` for the 1 s motion average.
    speeds: std::collections::VecDeque<(f64, f64)>,
    t: Vec<f64>,
    rgb: Vec<[f64; 3]>,
    vertical: Vec<f64>,
}

impl Measurement {
    /// A new scan; the first update is `Created`.
    pub fn new(
        cfg: MeasurementConfig,
        signal: SignalConfig,
        out: &mut Vec<Update>,
    ) -> Result<Self, SignalError> {
        let signal = SignalConfig {
            max_window_s: signal.max_window_s.max(cfg.duration_s + 1.0),
            ..signal
        };
        out.push(Update::Created);
        Ok(Measurement {
            estimator: VitalsEstimator::new(signal)?,
            cfg,
            phase: Phase::Waiting,
            frames: 0,
            first_t: None,
            start_t: 0.0,
            last_face_t: 0.0,
            dark_since: None,
            fast_since: None,
            low_snr_since: None,
            next_result_t: 0.0,
            results: 0,
            speeds: Default::default(),
            t: Vec::new(),
            rgb: Vec::new(),
            vertical: Vec::new(),
        })
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Seconds of signal recorded so far.
    pub fn elapsed_s(&self) -> f64 {
        match (self.t.first(), self.t.last()) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        }
    }

    /// Feeds one frame's observation.
    pub fn push(&mut self, obs: &Observation, out: &mut Vec<Update>) {
        if self.phase == Phase::Done {
            return;
        }
        self.frames += 1;
        let t = obs.t_s;
        let first_t = *self.first_t.get_or_insert(t);
        let face_ok = obs.face.is_some() && obs.skin_pixels >= self.cfg.min_skin_pixels;

        if obs.luma < self.cfg.dark_luma {
            let since = *self.dark_since.get_or_insert(t);
            if t - since >= self.cfg.dark_timeout_s {
                let detail = format!(
                    "mean brightness {:.0}/255 below {:.0} for {:.1} s",
                    obs.luma,
                    self.cfg.dark_luma,
                    t - since
                );
                return self.cancel_with(
                    out,
                    Update::Constraint {
                        reason: CancelReason::TooDark,
                        detail,
                    },
                );
            }
        } else {
            self.dark_since = None;
        }

        match self.phase {
            Phase::Waiting => {
                if face_ok && self.dark_since.is_none() {
                    self.phase = Phase::Measuring;
                    self.start_t = t;
                    self.last_face_t = t;
                    self.next_result_t = t + self.cfg.first_result_after_s;
                    out.push(Update::Started { t_s: t });
                    self.record(obs);
                } else if t - first_t >= self.cfg.face_init_timeout_s {
                    let waited_s = t - first_t;
                    self.cancel_with(out, Update::NoFace { waited_s });
                }
            }
            Phase::Measuring => self.measure(obs, face_ok, out),
            Phase::Done => {}
        }
    }

    fn record(&mut self, obs: &Observation) {
        self.t.push(obs.t_s);
        self.rgb.push(obs.mean_rgb);
        self.vertical.push(obs.vertical_px);
    }

    fn measure(&mut self, obs: &Observation, face_ok: bool, out: &mut Vec<Update>) {
        let t = obs.t_s;
        if face_ok {
            self.last_face_t = t;
            self.record(obs);
        } else if t - self.last_face_t >= self.cfg.face_lost_timeout_s {
            let detail = format!("no face for {:.1} s", t - self.last_face_t);
            return self.cancel_with(
                out,
                Update::Constraint {
                    reason: CancelReason::FaceLost,
                    detail,
                },
            );
        }

        if let Some(face) = obs.face {
            let dt = self.t.len().checked_sub(2).map_or(0.0, |i| t - self.t[i]);
            if dt > 0.0 && face.w > 0.0 {
                let speed = obs.motion_px[0].hypot(obs.motion_px[1]) / dt / face.w;
                self.speeds.push_back((t, speed));
            }
        }
        while self.speeds.front().is_some_and(|&(ts, _)| t - ts > 1.0) {
            self.speeds.pop_front();
        }
        let speed = self.speeds.iter().map(|s| s.1).sum::<f64>() / self.speeds.len().max(1) as f64;
        if speed > self.cfg.max_motion_face_widths_per_s {
            let since = *self.fast_since.get_or_insert(t);
            if t - since >= self.cfg.motion_timeout_s {
                let detail = format!(
                    "face moving {:.2} face widths/s (limit {:.2}) for {:.1} s",
                    speed,
                    self.cfg.max_motion_face_widths_per_s,
                    t - since
                );
                return self.cancel_with(
                    out,
                    Update::Constraint {
                        reason: CancelReason::TooMuchMotion,
                        detail,
                    },
                );
            }
        } else {
            self.fast_since = None;
        }

        if t - self.start_t >= self.cfg.duration_s {
            return self.complete(out);
        }
        if t >= self.next_result_t {
            self.next_result_t += self.cfg.intermediate_interval_s;
            self.intermediate(t, out);
        }
    }

    fn traces(&self) -> Traces {
        let fs = self.estimator.config().resample_hz;
        Traces::from_irregular(&self.t, &self.rgb, Some(&self.vertical), fs)
    }

    fn intermediate(&mut self, t: f64, out: &mut Vec<Update>) {
        let traces = self.traces();
        let heart = self.estimator.heart_rate(&traces);
        let span = traces.duration_s();
        let resp = if span >= self.estimator.config().rr_min_window_s {
            self.estimator.vitals(&traces).respiration
        } else {
            None
        };
        out.push(Update::Intermediate(Intermediate {
            index: self.results,
            elapsed_s: span,
            hr_bpm: heart.bpm,
            snr_db: heart.snr_db,
            confidence: heart.confidence,
            rr_bpm: resp.as_ref().map(|r| r.rate_bpm),
            rr_confidence: resp.as_ref().map_or(0.0, |r| r.confidence),
        }));
        self.results += 1;
        // LOW_SNR is judged only on full windows: a short window's SNR is low by construction.
        if span + 1e-9 < self.estimator.config().hr_window_s {
            return;
        }
        if heart.snr_db < self.cfg.low_snr_db {
            let since = *self.low_snr_since.get_or_insert(t);
            if t - since >= self.cfg.low_snr_timeout_s {
                let low = Update::LowSnr {
                    snr_db: heart.snr_db,
                    threshold_db: self.cfg.low_snr_db,
                    below_for_s: t - since,
                };
                self.cancel_with(out, low);
            }
        } else {
            self.low_snr_since = None;
        }
    }

    /// Final vitals over everything recorded.
    fn final_result(&mut self) -> ScanResult {
        let traces = self.traces();
        let v = self.estimator.vitals(&traces);
        ScanResult {
            hr_bpm: v.heart.bpm,
            confidence: v.heart.confidence,
            snr_db: v.heart.bpm.map(|_| v.heart.snr_db),
            rr_bpm: v.respiration.as_ref().map(|r| r.rate_bpm),
            rr_confidence: v.respiration.as_ref().map_or(0.0, |r| r.confidence),
            rmssd_ms: v.rmssd_ms,
            duration_s: traces.duration_s(),
            frames: self.frames,
            beat_times_s: v.beats.iter().map(|b| b.t_s).collect(),
            respiration_wave: v.respiration.map(|r| r.wave).unwrap_or_default(),
            wave_fs_hz: traces.fs_hz,
            pulse: v.pulse,
        }
    }

    fn complete(&mut self, out: &mut Vec<Update>) {
        let result = self.final_result();
        let snr = result.snr_db.unwrap_or(-100.0);
        if snr < self.cfg.low_snr_db {
            out.push(Update::LowSnr {
                snr_db: snr,
                threshold_db: self.cfg.low_snr_db,
                below_for_s: result.duration_s,
            });
            return self.finish_cancelled(CancelReason::LowSnr, result, out);
        }
        self.phase = Phase::Done;
        out.push(Update::Completed(result));
    }

    /// Emits `cause` (a LowSnr, Constraint or NoFace update), then the cancellation.
    fn cancel_with(&mut self, out: &mut Vec<Update>, cause: Update) {
        let (reason, snr_db) = match &cause {
            Update::LowSnr { snr_db, .. } => (CancelReason::LowSnr, Some(*snr_db)),
            Update::Constraint { reason, .. } => (*reason, None),
            _ => (CancelReason::NoFace, None),
        };
        out.push(cause);
        // Mid-scan, keep the waves for reports (a bad scan is what they debug);
        // finish_cancelled drops every number.
        let mut result = if reason != CancelReason::NoFace && self.t.len() >= 64 {
            self.final_result()
        } else {
            ScanResult::default()
        };
        result.duration_s = self.elapsed_s();
        result.frames = self.frames;
        result.snr_db = snr_db;
        self.finish_cancelled(reason, result, out);
    }

    fn finish_cancelled(
        &mut self,
        reason: CancelReason,
        mut result: ScanResult,
        out: &mut Vec<Update>,
    ) {
        // Keep the diagnostics (SNR), never the numbers.
        result.hr_bpm = None;
        result.rr_bpm = None;
        result.rmssd_ms = None;
        result.confidence = 0.0;
        result.rr_confidence = 0.0;
        self.phase = Phase::Done;
        out.push(Update::Cancelled { reason, result });
    }

    /// The input ended (end of file, camera closed).
    pub fn end_of_input(&mut self, out: &mut Vec<Update>) {
        match self.phase {
            Phase::Done => {}
            Phase::Waiting => {
                let waited_s = self
                    .first_t
                    .map_or(0.0, |f| self.t.last().copied().unwrap_or(f) - f);
                self.cancel_with(out, Update::NoFace { waited_s });
            }
            Phase::Measuring if self.elapsed_s() + 1e-9 >= self.cfg.min_duration_s => {
                self.complete(out)
            }
            Phase::Measuring => {
                let result = ScanResult {
                    duration_s: self.elapsed_s(),
                    frames: self.frames,
                    ..ScanResult::default()
                };
                self.finish_cancelled(CancelReason::InputEnded, result, out);
            }
        }
    }

    /// Stops the scan from outside (`Requested`) or because the input failed.
    pub fn cancel(&mut self, reason: CancelReason, out: &mut Vec<Update>) {
        if self.phase != Phase::Done {
            let result = ScanResult {
                duration_s: self.elapsed_s(),
                frames: self.frames,
                ..ScanResult::default()
            };
            self.finish_cancelled(reason, result, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::FaceBox;
    use std::f64::consts::PI;

    const FACE: FaceBox = FaceBox {
        x: 100.0,
        y: 100.0,
        w: 200.0,
        h: 200.0,
    };

    /// An observation at frame `i` (30 fps) of skin with an optional pulse.
    fn obs(i: usize, pulse: bool) -> Observation {
        let t = i as f64 / 30.0;
        let p = if pulse {
            0.004 * (2.0 * PI * 1.2 * t).sin()
        } else {
            0.0
        };
        // SplitMix64 of (frame, channel): white noise in -0.5..0.5.
        let n = |k: u64| {
            let mut z = (i as u64 * 3 + k)
                .wrapping_add(1)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as f64 / u64::MAX as f64 - 0.5
        };
        Observation {
            t_s: t,
            face: Some(FACE),
            detected: false,
            mean_rgb: [
                180.0 * (1.0 - 0.43 * p) + 0.05 * n(1),
                130.0 * (1.0 - p) + 0.05 * n(2),
                110.0 * (1.0 - 0.69 * p) + 0.05 * n(3),
            ],
            skin_pixels: 5000,
            roi_pixels: 6000,
            luma: 120.0,
            motion_px: [0.0, 0.0],
            vertical_px: 0.0,
        }
    }

    fn run(cfg: MeasurementConfig, frames: impl Iterator<Item = Observation>) -> Vec<Update> {
        let mut out = Vec::new();
        let mut m = Measurement::new(cfg, SignalConfig::default(), &mut out).unwrap();
        for o in frames {
            m.push(&o, &mut out);
            if m.is_done() {
                break;
            }
        }
        m.end_of_input(&mut out);
        out
    }

    fn short() -> MeasurementConfig {
        MeasurementConfig {
            duration_s: 20.0,
            ..Default::default()
        }
    }

    #[test]
    fn a_clean_scan_goes_created_started_intermediates_completed() {
        let out = run(short(), (0..700).map(|i| obs(i, true)));
        assert_eq!(out[0], Update::Created);
        assert!(matches!(out[1], Update::Started { t_s } if t_s == 0.0));
        let results: Vec<&Intermediate> = out
            .iter()
            .filter_map(|u| match u {
                Update::Intermediate(r) => Some(r),
                _ => None,
            })
            .collect();
        assert!(
            (14..=16).contains(&results.len()),
            "{} results",
            results.len()
        );
        assert!(results
            .iter()
            .enumerate()
            .all(|(i, r)| r.index as usize == i));
        let Some(Update::Completed(r)) = out.last() else {
            panic!("{:?}", out.last())
        };
        assert!((r.hr_bpm.unwrap() - 72.0).abs() < 1.0);
        assert!(r.confidence > 0.9);
        assert_eq!(
            out.iter()
                .filter(|u| matches!(u, Update::Completed(_)))
                .count(),
            1
        );
    }

    #[test]
    fn no_pulse_is_cancelled_with_low_snr_and_no_numbers() {
        let out = run(short(), (0..700).map(|i| obs(i, false)));
        let n = out.len();
        assert!(
            matches!(out[n - 2], Update::LowSnr { .. }),
            "{:?}",
            out[n - 2]
        );
        let Update::Cancelled { reason, result } = &out[n - 1] else {
            panic!()
        };
        assert_eq!(*reason, CancelReason::LowSnr);
        assert_eq!(result.hr_bpm, None);
        assert!(
            result.snr_db.is_some_and(|s| s < 1.0),
            "the SNR that caused it is kept"
        );
    }

    #[test]
    fn no_face_within_the_timeout_fails_init() {
        let out = run(
            MeasurementConfig::default(),
            (0..400).map(|i| Observation {
                face: None,
                skin_pixels: 0,
                ..obs(i, true)
            }),
        );
        assert!(matches!(out[1], Update::NoFace { waited_s } if (waited_s - 10.0).abs() < 0.05));
        assert!(matches!(
            out[2],
            Update::Cancelled {
                reason: CancelReason::NoFace,
                ..
            }
        ));
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn losing_the_face_for_longer_than_the_timeout_cancels() {
        let out = run(
            short(),
            (0..700).map(|i| {
                let o = obs(i, true);
                if i > 200 {
                    Observation { face: None, ..o }
                } else {
                    o
                }
            }),
        );
        let n = out.len();
        assert!(matches!(
            &out[n - 2],
            Update::Constraint {
                reason: CancelReason::FaceLost,
                ..
            }
        ));
        assert!(matches!(
            &out[n - 1],
            Update::Cancelled {
                reason: CancelReason::FaceLost,
                ..
            }
        ));
    }

    #[test]
    fn a_short_face_dropout_is_tolerated() {
        let out = run(
            short(),
            (0..700).map(|i| {
                let o = obs(i, true);
                if (200..230).contains(&i) {
                    Observation { face: None, ..o }
                } else {
                    o
                }
            }),
        );
        assert!(matches!(out.last(), Some(Update::Completed(_))));
    }

    #[test]
    fn darkness_cancels_too_dark_even_before_a_face_is_found() {
        let dark = |i| Observation {
            luma: 5.0,
            face: None,
            ..obs(i, true)
        };
        let out = run(short(), (0..200).map(dark));
        assert!(matches!(
            &out[1],
            Update::Constraint {
                reason: CancelReason::TooDark,
                ..
            }
        ));
        assert!(matches!(
            &out[2],
            Update::Cancelled {
                reason: CancelReason::TooDark,
                ..
            }
        ));
    }

    #[test]
    fn sustained_fast_motion_cancels() {
        let out = run(
            short(),
            (0..700).map(|i| Observation {
                motion_px: [10.0, 0.0],
                ..obs(i, true)
            }),
        );
        assert!(out.iter().any(|u| matches!(
            u,
            Update::Constraint {
                reason: CancelReason::TooMuchMotion,
                ..
            }
        )));
    }

    #[test]
    fn input_ending_early_completes_only_with_enough_signal() {
        let out = run(short(), (0..500).map(|i| obs(i, true)));
        assert!(
            matches!(out.last(), Some(Update::Completed(r)) if (r.duration_s - 16.6).abs() < 0.1)
        );
        let out = run(short(), (0..200).map(|i| obs(i, true)));
        assert!(matches!(
            out.last(),
            Some(Update::Cancelled {
                reason: CancelReason::InputEnded,
                ..
            })
        ));
    }

    #[test]
    fn after_the_end_nothing_more_is_emitted() {
        let mut out = Vec::new();
        let mut m = Measurement::new(short(), SignalConfig::default(), &mut out).unwrap();
        m.push(&obs(0, true), &mut out);
        m.cancel(CancelReason::Requested, &mut out);
        let n = out.len();
        m.push(&obs(1, true), &mut out);
        m.cancel(CancelReason::InputError, &mut out);
        m.end_of_input(&mut out);
        assert_eq!(out.len(), n);
        assert!(matches!(
            out.last(),
            Some(Update::Cancelled {
                reason: CancelReason::Requested,
                ..
            })
        ));
    }
}
