//! One scan end to end: source -> vision -> measurement -> events -> sinks.
//!
//! Owns: the per-frame loop and everything in it that touches the outside
//! world — reading frames, the wall clock (event time stamps, real-time
//! pacing, processing time), id entropy, and writing events.
//!
//! Invariants: every update becomes exactly one event, stamped and written
//! to every sink before the next frame is processed; an input failure
//! mid-scan still ends the measurement (GENERAL_ERROR, then
//! MEASUREMENT_CANCELED) before the error is returned; frames are reused
//! buffers in memory and are never written anywhere.

use super::{random_u128, unix_ms, AppError};
use crate::capture::{self, Frame, SourceInfo, SourceSpec};
use crate::config::Config;
use crate::events::{ulid, Event, EventKind, EventSink, ScanContext, StampedEvent, Stamper};
use crate::measurement::guidance::Constraint;
use crate::measurement::{CancelReason, Measurement, ScanResult, Update};
use crate::vision::detector::FaceDetector;
use crate::vision::FaceRoiExtractor;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// What to scan and how.
pub struct ScanOptions {
    pub source: SourceSpec,
    pub config: Config,
    pub device_id: String,
    /// Pace frames at their timestamps (a live demo) instead of as fast as possible.
    pub realtime: bool,
    /// Who is measured (`Patient/<id>`): in every event's envelope, and in
    /// SCAN_COMPLETED's payload for FHIR.
    pub subject: Option<String>,
    /// The scan's id (`scn_` + ULID) in every event; `None`: a new one.
    pub scan_id: Option<String>,
    /// The integrator's correlation id, in every event.
    pub external_id: Option<String>,
    /// Set from outside (API, signals, shutdown) to cancel the scan.
    pub cancel: Option<std::sync::Arc<CancelRequest>>,
}

/// A request from outside to end a running scan, with its reason: the API's
/// `DELETE` (REQUESTED), a signal or the daemon's shutdown (SHUTDOWN). The
/// scan loop reads it between frames; a source never blocks longer than its
/// stall timeout, so a request is honoured within a few seconds at worst.
/// Signal handlers may set it (it is one atomic word).
#[derive(Debug, Default)]
pub struct CancelRequest(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl CancelRequest {
    /// The reasons a request can carry, by their stored value (0 = none).
    const REASONS: [CancelReason; 2] = [CancelReason::Requested, CancelReason::Shutdown];

    /// Asks the scan to end for `reason` (the first request wins).
    pub fn request(&self, reason: CancelReason) {
        let value = Self::value_of(reason);
        let _ = self.0.compare_exchange(
            0,
            value,
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// The reason asked for, if any.
    pub fn requested(&self) -> Option<CancelReason> {
        match self.0.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            v => Self::REASONS.get(v - 1).copied(),
        }
    }

    fn value_of(reason: CancelReason) -> usize {
        Self::REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(1, |i| i + 1)
    }

    /// Ends the scan with SHUTDOWN on SIGTERM, SIGINT or SIGHUP, so that a
    /// stopped `scan` still stores its MEASUREMENT_CANCELED. A second
    /// signal of the same kind ends the process at once (exit 130).
    #[cfg(unix)]
    pub fn on_termination_signals(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let once = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        for sig in [SIGTERM, SIGINT, SIGHUP] {
            signal_hook::flag::register_conditional_shutdown(sig, 130, once.clone())?;
            signal_hook::flag::register(sig, once.clone())?;
            signal_hook::flag::register_usize(
                sig,
                self.0.clone(),
                Self::value_of(CancelReason::Shutdown),
            )?;
        }
        Ok(())
    }
}

/// Live state, reported after every frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub frame_t_s: f64,
    pub face: bool,
    pub hr_bpm: Option<f64>,
    pub snr_db: Option<f64>,
}

/// How a scan ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanReport {
    pub session_id: String,
    pub measurement_id: String,
    pub source: SourceInfo,
    /// `None` when completed.
    pub cancelled: Option<CancelReason>,
    /// The condition behind a cancellation, when there is one
    /// (`FACE_TOO_SMALL` behind `NO_FACE`, `FACE_CHANGED` behind `FACE_LOST`).
    pub constraint: Option<Constraint>,
    pub result: ScanResult,
    /// Frame time (s from the first frame) at which the face was locked
    /// and the measurement started.
    pub locked_at_s: Option<f64>,
    /// Frame time of the first intermediate result with a heart rate.
    pub first_result_at_s: Option<f64>,
    pub frames_dropped: u64,
    pub processing_time_ms: u64,
    pub events: u64,
    pub device_id: String,
    /// When the scan began (Unix ms).
    pub started_unix_ms: u64,
    /// Its scan id, and the caller's external id and subject.
    pub context: ScanContext,
    /// The live heart rate as the scan went: (seconds of signal, bpm), only
    /// the estimates that were trusted.
    pub hr_trend: Vec<(f64, f64)>,
}

impl ScanReport {
    /// The `scan --json` object (exact keys; null where not available).
    pub fn to_json(&self) -> Value {
        let r = &self.result;
        let num = |v: Option<f64>, d: i32| {
            let k = 10f64.powi(d);
            v.filter(|x| x.is_finite())
                .map_or(Value::Null, |x| json!((x * k).round() / k))
        };
        json!({
            "sessionId": self.session_id,
            "measurementId": self.measurement_id,
            "status": if self.cancelled.is_some() { "cancelled" } else { "completed" },
            "reason": self.cancelled.map(|c| c.code()),
            "constraint": self.constraint.map(|c| c.code()),
            "heart_rate_bpm": num(r.hr_bpm, 1),
            "respiratory_rate_bpm": num(r.rr_bpm, 1),
            "hrv_rmssd_ms": num(r.rmssd_ms, 1),
            "snr_db": num(r.snr_db, 2),
            "confidence": num(Some(r.confidence), 3),
            "rr_confidence": num(Some(r.rr_confidence), 3),
            "hrv_confidence": num(Some(r.hrv_confidence), 3),
            "duration_s": num(Some(r.duration_s), 2),
            "frames": r.frames,
            "frames_dropped": self.frames_dropped,
            "processing_time_ms": self.processing_time_ms,
        })
    }
}

/// Stamps and fans events out to the sinks.
///
/// A sink that fails (standard output closed by `| head`, a full disk under
/// the events file or the outbox) is set aside and remembered: the scan
/// then ends with OUTPUT_ERROR, and that terminal event still reaches every
/// other sink (the outbox keeps MEASUREMENT_CANCELED when stdout broke).
/// The first failure is returned when the scan has ended.
struct Emitter<'a, 'b> {
    stamper: Stamper,
    sinks: &'a mut [&'b mut dyn EventSink],
    /// Per sink: whether it has failed (and is no longer written).
    failed: Vec<bool>,
    broken: Option<crate::events::SinkError>,
    count: u64,
}

impl Emitter<'_, '_> {
    fn emit(&mut self, event: &Event) -> StampedEvent {
        let stamped = self.stamper.stamp(event, unix_ms(), random_u128());
        for (sink, failed) in self.sinks.iter_mut().zip(self.failed.iter_mut()) {
            if *failed {
                continue;
            }
            if let Err(e) = sink.accept(&stamped) {
                *failed = true;
                self.broken.get_or_insert(e);
            }
        }
        self.count += 1;
        stamped
    }
}

/// Loads the face detector named by the config (built-in when empty).
pub fn load_detector(config: &Config) -> Result<FaceDetector, AppError> {
    let path = &config.vision.model_path;
    if path.is_empty() {
        return Ok(FaceDetector::builtin()?);
    }
    let bytes = std::fs::read(path).map_err(|source| AppError::Model {
        path: path.clone(),
        source,
    })?;
    Ok(FaceDetector::from_bytes(&bytes, path)?)
}

/// Runs one scan, writing every event to `sinks` and reporting progress.
pub fn run_scan(
    opts: ScanOptions,
    sinks: &mut [&mut dyn EventSink],
    progress: &mut dyn FnMut(&Progress, Option<&StampedEvent>),
) -> Result<ScanReport, AppError> {
    let session_id = format!("ses_{}", ulid(unix_ms(), random_u128()));
    let measurement_id = format!("msr_{}", ulid(unix_ms(), random_u128()));
    let started_unix_ms = unix_ms();
    let context = ScanContext {
        scan_id: Some(
            opts.scan_id
                .clone()
                .unwrap_or_else(|| format!("scn_{}", ulid(unix_ms(), random_u128()))),
        ),
        external_id: opts.external_id.clone(),
        subject: opts.subject.clone(),
    };
    let failed = vec![false; sinks.len()];
    let mut emitter = Emitter {
        stamper: Stamper::new(opts.device_id.clone(), session_id.clone())
            .with_context(context.clone()),
        sinks,
        failed,
        broken: None,
        count: 0,
    };
    let detector = load_detector(&opts.config)?;
    let mut source = match capture::open(&opts.source) {
        Ok(s) => s,
        Err(e) => {
            let details = match (&opts.source, e.details()) {
                (SourceSpec::Camera(_), "INPUT_ERROR") => "CAMERA_START_ERROR",
                (_, d) => d,
            };
            emitter.emit(&Event::input_failed(details, &e.to_string()));
            return Err(e.into());
        }
    };
    let info = source.info().clone();
    let e = emitter.emit(&Event::camera_started(&info));
    progress(&idle(), Some(&e));

    let mut vision = FaceRoiExtractor::new(detector, opts.config.vision());
    let planned = opts.config.scan.duration_s;
    let mut updates = Vec::new();
    let mut measurement = Measurement::new(
        opts.config.measurement(),
        opts.config.signal(),
        &mut updates,
    )?;
    let mut frame = Frame::default();
    let mut busy = Duration::ZERO;
    let started = Instant::now();
    let mut live = idle();
    let mut failure = None;
    let mut ended = None;
    let mut hr_trend = Vec::new();

    loop {
        for u in updates.drain(..) {
            if let Update::Intermediate(r) = &u {
                live.hr_bpm = r.hr_bpm;
                live.snr_db = Some(r.snr_db);
                // Live HR is already withheld below its floor.
                if let Some(hr) = r.hr_bpm {
                    hr_trend.push((r.elapsed_s, hr));
                }
            }
            match &u {
                Update::Completed(r) => ended = Some((None, None, r.clone())),
                Update::Cancelled {
                    reason,
                    constraint,
                    result,
                } => ended = Some((Some(*reason), *constraint, result.clone())),
                _ => {}
            }
            let mut event =
                Event::from_update(&u, &measurement_id, planned, busy.as_millis() as u64);
            if let (EventKind::ScanCompleted, Some(s)) = (event.kind, &opts.subject) {
                event.payload["subject"] = serde_json::Value::String(s.clone());
            }
            let stamped = emitter.emit(&event);
            progress(&live, Some(&stamped));
        }
        if ended.is_some() || failure.is_some() {
            break;
        }
        if let Some(reason) = opts.cancel.as_ref().and_then(|c| c.requested()) {
            measurement.cancel(reason, &mut updates);
            continue;
        }
        if emitter.broken.is_some() {
            measurement.cancel(CancelReason::OutputError, &mut updates);
            continue;
        }
        match source.next_frame(&mut frame) {
            Ok(true) => {}
            Ok(false) => {
                measurement.end_of_input(&mut updates);
                continue;
            }
            Err(e) => {
                emitter.emit(&Event::input_failed(e.details(), &e.to_string()));
                measurement.cancel(CancelReason::InputError, &mut updates);
                failure = Some(e);
                continue;
            }
        }
        if opts.realtime {
            let due = Duration::from_secs_f64(frame.t_s.max(0.0));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let t0 = Instant::now();
        let obs = vision.process(&frame);
        measurement.push(&obs, &mut updates);
        // While a measurement runs its face is held: no other face replaces it.
        vision.hold(measurement.is_measuring());
        busy += t0.elapsed();
        live.frame_t_s = frame.t_s;
        live.face = obs.face.is_some();
        progress(&live, None);
    }
    if let Some(e) = failure {
        return Err(e.into());
    }
    if let Some(e) = emitter.broken {
        return Err(e.into());
    }
    let (cancelled, constraint, result) = ended.expect("the loop ends only with a terminal update");
    // Known truth over the stretch the scan measured (the video may be
    // longer: room for a scan that measures on).
    let mut info = info;
    if let Some(t0) = measurement.started_at() {
        if let Some(truth) = source.truth_between(t0, t0 + result.duration_s) {
            info.truth = Some(truth);
        }
    }
    Ok(ScanReport {
        session_id,
        measurement_id,
        source: info,
        cancelled,
        constraint,
        result,
        locked_at_s: measurement.started_at(),
        first_result_at_s: measurement.first_result_at(),
        frames_dropped: source.frames_dropped(),
        processing_time_ms: busy.as_millis() as u64,
        events: emitter.count,
        device_id: opts.device_id.clone(),
        started_unix_ms,
        context,
        hr_trend,
    })
}

fn idle() -> Progress {
    Progress {
        frame_t_s: 0.0,
        face: false,
        hr_bpm: None,
        snr_db: None,
    }
}
