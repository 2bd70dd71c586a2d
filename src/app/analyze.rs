//! `analyze`: the signal stage alone on per-frame mean RGB traces.
//!
//! Owns: turning a trace file into the same result object as `scan --json`,
//! so that researchers can run dataset traces (and we can validate on real
//! recordings) without video. Irregular timestamps are resampled by the
//! signal stage, never assumed uniform.

use super::AppError;
use crate::capture::rgb_csv::{self, RgbTrace};
use crate::config::Config;
use crate::signal::{SignalConfig, Traces, VitalsEstimator};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

/// The analysis of one trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub hr_bpm: Option<f64>,
    pub snr_db: f64,
    pub confidence: f64,
    pub rr_bpm: Option<f64>,
    pub rr_confidence: f64,
    pub rmssd_ms: Option<f64>,
    pub hrv_confidence: f64,
    /// The beat series' part of `hrv_confidence` (without the heart rate's).
    pub hrv_beat_confidence: f64,
    pub duration_s: f64,
    pub rows: usize,
    /// Below `scan.low_snr_db` (`signal.contact_snr_db` for contact PPG)
    /// or `signal.hr_min_confidence`: no numbers are reported.
    pub low_snr: bool,
    pub processing_time_ms: u64,
}

impl Analysis {
    /// Same keys as `scan --json`; there is no session or measurement here.
    pub fn to_json(&self) -> Value {
        let num = |v: Option<f64>, d: i32| {
            let k = 10f64.powi(d);
            v.filter(|x| x.is_finite())
                .map_or(Value::Null, |x| json!((x * k).round() / k))
        };
        let shown = |v: Option<f64>| if self.low_snr { None } else { v };
        json!({
            "sessionId": Value::Null,
            "measurementId": Value::Null,
            "status": if self.low_snr { "cancelled" } else { "completed" },
            "reason": if self.low_snr { json!("LOW_SNR") } else { Value::Null },
            "constraint": Value::Null,
            "heart_rate_bpm": num(shown(self.hr_bpm), 1),
            "respiratory_rate_bpm": num(shown(self.rr_bpm), 1),
            "hrv_rmssd_ms": num(shown(self.rmssd_ms), 1),
            "snr_db": num(Some(self.snr_db), 2),
            "confidence": num(Some(if self.low_snr { 0.0 } else { self.confidence }), 3),
            "rr_confidence": num(Some(if self.low_snr { 0.0 } else { self.rr_confidence }), 3),
            "hrv_confidence": num(Some(if self.low_snr { 0.0 } else { self.hrv_confidence }), 3),
            "duration_s": num(Some(self.duration_s), 2),
            "frames": self.rows,
            "frames_dropped": 0,
            "processing_time_ms": self.processing_time_ms,
        })
    }
}

/// Analyses a parsed trace with the configured signal chain.
pub fn analyze_trace(trace: &RgbTrace, config: &Config) -> Result<Analysis, AppError> {
    let started = Instant::now();
    let duration = trace.t_s.last().copied().unwrap_or(0.0);
    let cfg = SignalConfig {
        max_window_s: duration + 1.0,
        ..config.signal()
    };
    let fs = cfg.resample_hz;
    let traces = Traces::from_irregular(&trace.t_s, &trace.rgb, None, fs);
    let mut estimator = VitalsEstimator::new(cfg)?;
    let v = estimator.vitals(&traces);
    Ok(Analysis {
        hr_bpm: v.heart.bpm,
        snr_db: v.heart.snr_db,
        confidence: v.heart.confidence,
        rr_bpm: estimator.trusted_rr(v.respiration.as_ref()),
        rr_confidence: v.respiration.as_ref().map_or(0.0, |r| r.confidence),
        rmssd_ms: estimator.trusted_hrv(v.hrv.as_ref()),
        hrv_confidence: v.hrv.as_ref().map_or(0.0, |h| h.confidence),
        hrv_beat_confidence: v.hrv.as_ref().map_or(0.0, |h| h.beat_confidence),
        duration_s: traces.duration_s(),
        rows: trace.rgb.len(),
        low_snr: v.heart.snr_db < config.measurement().low_snr_db
            || estimator.trusted_hr(&v.heart).is_none(),
        processing_time_ms: started.elapsed().as_millis() as u64,
    })
}

/// Reads `path` (or standard input for `-`) and analyses it.
pub fn analyze_file(path: &Path, fps: Option<f64>, config: &Config) -> Result<Analysis, AppError> {
    let name = path.display().to_string();
    let trace = if path.as_os_str() == "-" {
        rgb_csv::read(std::io::stdin().lock(), "stdin", fps)?
    } else {
        let file =
            std::fs::File::open(path).map_err(|source| crate::capture::CaptureError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        rgb_csv::read(std::io::BufReader::new(file), &name, fps)?
    };
    analyze_trace(&trace, config)
}
