//! Events stage: lifecycle events in the style of the Nuralogix WMS webhook
//! set, their envelope, and the seam through which they leave the pipeline.
//!
//! Owns: event names and severities ([`EventKind`]), payloads (built from
//! measurement [`Update`]s and capture facts), the envelope and its
//! serialisation ([`Stamper`]), and the [`EventSink`] trait that the JSONL
//! writer (and, next, the durable outbox) implement.
//!
//! Envelope (`schemaVersion` 1), one JSON object:
//! `id` (`evt_` + ULID: unique, sortable by time, no dots), `schemaVersion`,
//! `timestamp` (Unix seconds, as WMS), `time` (RFC 3339, milliseconds, UTC
//! offset), `deviceId`, `sessionId`, then for a scan's events `scanId`
//! (always) and `externalId` and `subject` (when given), `sequence` (per
//! session, from 0, +1 per event), `event`, `severity`, `payload`. Bytes are
//! written by [`json::to_vec`]: compact, ASCII, numbers as JavaScript
//! spells them.
//!
//! Invariants: an event is serialised exactly once, by [`Stamper::stamp`];
//! those bytes are what gets written, stored, signed and sent, so a
//! signature always covers exactly what the receiver parses. Stamping is
//! pure: the wall-clock time and the id entropy are arguments.

pub mod circadify;
pub mod fhir;
pub mod json;
pub mod schema;

use crate::capture::SourceInfo;
use crate::measurement::{CancelReason, Intermediate, ScanResult, Update};
use serde::Serialize;
use serde_json::{json, Value};

/// Version of the envelope format.
pub const SCHEMA_VERSION: u32 = 1;

/// Severity, as in WMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Info,
    Warn,
    Error,
}

/// The event types this agent emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventKind {
    CameraStarted,
    MeasurementCreated,
    MeasurementStarted,
    IntermediateResults,
    /// A live hint for the person being measured (raised, repeated, cleared).
    ConstraintWarning,
    LowSnr,
    ConstraintViolation,
    FailedInitBloodFlow,
    MeasurementCanceled,
    ScanCompleted,
    GeneralError,
    /// The camera exists but the agent may not open it (WMS-style event of its own).
    CameraPermissionDenied,
    /// Sent on request (`rppg-agent send-test`) to check destinations end to end.
    TestEvent,
}

impl EventKind {
    pub const ALL: [EventKind; 13] = [
        EventKind::CameraStarted,
        EventKind::MeasurementCreated,
        EventKind::MeasurementStarted,
        EventKind::IntermediateResults,
        EventKind::ConstraintWarning,
        EventKind::LowSnr,
        EventKind::ConstraintViolation,
        EventKind::FailedInitBloodFlow,
        EventKind::MeasurementCanceled,
        EventKind::ScanCompleted,
        EventKind::GeneralError,
        EventKind::CameraPermissionDenied,
        EventKind::TestEvent,
    ];

    /// The wire name (`CAMERA_STARTED`, ...).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::CameraStarted => "CAMERA_STARTED",
            EventKind::MeasurementCreated => "MEASUREMENT_CREATED",
            EventKind::MeasurementStarted => "MEASUREMENT_STARTED",
            EventKind::IntermediateResults => "INTERMEDIATE_RESULTS",
            EventKind::ConstraintWarning => "CONSTRAINT_WARNING",
            EventKind::LowSnr => "LOW_SNR",
            EventKind::ConstraintViolation => "CONSTRAINT_VIOLATION",
            EventKind::FailedInitBloodFlow => "FAILED_INIT_BLOOD_FLOW",
            EventKind::MeasurementCanceled => "MEASUREMENT_CANCELED",
            EventKind::ScanCompleted => "SCAN_COMPLETED",
            EventKind::GeneralError => "GENERAL_ERROR",
            EventKind::CameraPermissionDenied => "CAMERA_PERMISSION_DENIED",
            EventKind::TestEvent => "TEST_EVENT",
        }
    }

    /// Live, superseded by the next of its kind: the outbox may drop it to
    /// stay under its size cap (oldest first); nothing else is ever dropped.
    pub fn is_sheddable(self) -> bool {
        matches!(
            self,
            EventKind::IntermediateResults | EventKind::ConstraintWarning
        )
    }

    /// The kind with this wire name.
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn severity(self) -> Severity {
        match self {
            EventKind::LowSnr
            | EventKind::ConstraintViolation
            | EventKind::FailedInitBloodFlow
            | EventKind::GeneralError
            | EventKind::CameraPermissionDenied => Severity::Error,
            EventKind::MeasurementCanceled | EventKind::ConstraintWarning => Severity::Warn,
            _ => Severity::Info,
        }
    }
}

/// An event before it is stamped: its kind and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub payload: Value,
}

fn round(v: f64, digits: i32) -> f64 {
    let k = 10f64.powi(digits);
    (v * k).round() / k
}

fn opt(v: Option<f64>, digits: i32) -> Value {
    v.filter(|x| x.is_finite())
        .map_or(Value::Null, |x| json!(round(x, digits)))
}

/// UCUM-annotated vital, or null when not measured.
fn vital(value: Option<f64>, unit: &str, confidence: f64, digits: i32) -> Value {
    match value.filter(|v| v.is_finite()) {
        Some(v) => {
            json!({ "value": round(v, digits), "unit": unit, "confidence": round(confidence, 3) })
        }
        None => Value::Null,
    }
}

impl Event {
    /// CAMERA_STARTED: the frame source is open.
    pub fn camera_started(info: &SourceInfo) -> Event {
        Event {
            kind: EventKind::CameraStarted,
            payload: json!({
                "source": info.kind,
                "description": info.description,
                "width": info.width,
                "height": info.height,
                "fps": round(info.fps, 3),
            }),
        }
    }

    /// The event for an input that failed, by its `details` code:
    /// CAMERA_PERMISSION_DENIED has an event of its own, everything else is
    /// GENERAL_ERROR (`CAMERA_START_ERROR`, `CAMERA_STALLED`, `INPUT_ERROR`).
    pub fn input_failed(details: &str, message: &str) -> Event {
        let mut e = Event::general_error(details, message);
        if details == "CAMERA_PERMISSION_DENIED" {
            e.kind = EventKind::CameraPermissionDenied;
        }
        e
    }

    /// TEST_EVENT number `index` (from 1) of `count` (`rppg-agent send-test`).
    pub fn test(index: u64, count: u64) -> Event {
        Event {
            kind: EventKind::TestEvent,
            payload: json!({
                "index": index,
                "count": count,
                "message": "a test event from rppg-agent send-test; no measurement",
            }),
        }
    }

    /// GENERAL_ERROR with a WMS-style `details` code (e.g. `CAMERA_START_ERROR`).
    pub fn general_error(details: &str, message: &str) -> Event {
        Event {
            kind: EventKind::GeneralError,
            payload: json!({ "details": details, "message": message }),
        }
    }

    /// The event for a measurement update. `processing_time_ms` is the
    /// compute time spent on the scan so far (measured by the caller).
    pub fn from_update(
        update: &Update,
        measurement_id: &str,
        planned_duration_s: f64,
        processing_time_ms: u64,
    ) -> Event {
        let (kind, payload) = match update {
            Update::Created => (
                EventKind::MeasurementCreated,
                json!({ "measurementId": measurement_id, "durationSeconds": planned_duration_s }),
            ),
            Update::Started { t_s } => (
                EventKind::MeasurementStarted,
                json!({ "measurementId": measurement_id, "frameTime": round(*t_s, 3) }),
            ),
            Update::Intermediate(r) => (
                EventKind::IntermediateResults,
                intermediate(r, measurement_id),
            ),
            Update::LowSnr {
                snr_db,
                threshold_db,
                below_for_s,
            } => (
                EventKind::LowSnr,
                json!({
                    "measurementId": measurement_id,
                    "details": "LOW_SNR",
                    "snr_db": round(*snr_db, 2),
                    "threshold_db": threshold_db,
                    "below_for_s": round(*below_for_s, 1),
                }),
            ),
            Update::Hint(h) => (
                EventKind::ConstraintWarning,
                json!({
                    "measurementId": measurement_id,
                    "constraint": h.constraint.code(),
                    "status": if h.active { "ACTIVE" } else { "CLEARED" },
                    "severity": "WARN",
                    "message": h.detail,
                    "advice": if h.active { json!(h.constraint.advice()) } else { Value::Null },
                }),
            ),
            Update::Constraint {
                reason,
                constraint,
                detail,
            } => (
                EventKind::ConstraintViolation,
                json!({
                    "measurementId": measurement_id,
                    "details": reason.code(),
                    "constraint": constraint.code(),
                    "severity": "ERROR",
                    "message": detail,
                    "advice": constraint.advice(),
                }),
            ),
            Update::NoFace {
                waited_s,
                constraint,
                detail,
            } => (
                EventKind::FailedInitBloodFlow,
                json!({
                    "measurementId": measurement_id,
                    "details": CancelReason::NoFace.code(),
                    "constraint": constraint.code(),
                    "severity": "ERROR",
                    "message": detail,
                    "advice": constraint.advice(),
                    "waited_s": round(*waited_s, 1),
                }),
            ),
            Update::Cancelled {
                reason,
                constraint,
                result,
            } => (
                EventKind::MeasurementCanceled,
                json!({
                    "measurementId": measurement_id,
                    "reason": reason.code(),
                    "constraint": constraint.map(|c| c.code()),
                    "snr_db": opt(result.snr_db, 2),
                    "duration_s": round(result.duration_s, 2),
                    "frames": result.frames,
                }),
            ),
            Update::Completed(r) => (
                EventKind::ScanCompleted,
                completed(r, measurement_id, processing_time_ms),
            ),
        };
        Event { kind, payload }
    }
}

fn intermediate(r: &Intermediate, measurement_id: &str) -> Value {
    json!({
        "measurementId": measurement_id,
        "sequence": r.index,
        "elapsed_s": round(r.elapsed_s, 2),
        "snr": round(r.snr_db, 2),
        "heart_rate_bpm": opt(r.hr_bpm, 1),
        "confidence": round(r.confidence, 3),
        "respiratory_rate_bpm": opt(r.rr_bpm, 1),
        "rr_confidence": round(r.rr_confidence, 3),
    })
}

fn completed(r: &ScanResult, measurement_id: &str, processing_time_ms: u64) -> Value {
    json!({
        "measurementId": measurement_id,
        "results": {
            "heart_rate": vital(r.hr_bpm, "/min", r.confidence, 1),
            "respiratory_rate": vital(r.rr_bpm, "/min", r.rr_confidence, 1),
            "hrv_rmssd": vital(r.rmssd_ms, "ms", r.hrv_confidence, 1),
            "blood_pressure": Value::Null,
        },
        "snr_db": opt(r.snr_db, 2),
        "processing_time_ms": processing_time_ms,
        "duration_s": round(r.duration_s, 2),
        "frames": r.frames,
    })
}

/// A stamped, serialised event: what sinks write.
#[derive(Debug, Clone, PartialEq)]
pub struct StampedEvent {
    pub id: String,
    pub session_id: String,
    pub sequence: u64,
    pub kind: EventKind,
    /// The envelope as compact JSON (no trailing newline). Never re-serialised.
    pub bytes: Vec<u8>,
}

impl StampedEvent {
    /// The envelope parsed back (for display and tests; never for sending).
    pub fn envelope(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    id: &'a str,
    schema_version: u32,
    timestamp: u64,
    time: &'a str,
    device_id: &'a str,
    session_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scan_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    sequence: u64,
    event: &'static str,
    severity: Severity,
    payload: &'a Value,
}

/// Crockford base32, as used by ULID.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A ULID (48-bit millisecond time, 80 random bits) as 26 characters.
pub fn ulid(unix_ms: u64, random: u128) -> String {
    let value: u128 = ((unix_ms as u128 & 0xFFFF_FFFF_FFFF) << 80) | (random & ((1u128 << 80) - 1));
    (0..26)
        .rev()
        .map(|i| CROCKFORD[((value >> (5 * i)) & 31) as usize] as char)
        .collect()
}

/// RFC 3339 UTC time with milliseconds, e.g. `2026-11-22T11:02:03.004+00:00`.
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (H. Hinnant's algorithm), for 1970 onwards.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// Stamps events of one session: ids, sequence numbers, envelope, bytes.
#[derive(Debug, Clone)]
pub struct Stamper {
    device_id: String,
    session_id: String,
    context: ScanContext,
    next_sequence: u64,
    last_ulid: Option<(u64, u128)>,
}

/// What every event of one scan carries beside its session: the scan's id
/// (the one `POST /v1/scans` answers with), and the integrator's own
/// correlation id and subject when it gave them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanContext {
    pub scan_id: Option<String>,
    pub external_id: Option<String>,
    pub subject: Option<String>,
}

/// The longest `externalId` or `subject`.
pub const MAX_CORRELATION_LEN: usize = 128;

/// Checks an `externalId` or `subject` given by an integrator: 1 to
/// [`MAX_CORRELATION_LEN`] printable ASCII characters (so every body stays
/// ASCII and JSON.stringify-stable, see [`json`]). Returns what is wrong.
pub fn check_correlation(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_CORRELATION_LEN {
        return Err(format!(
            "{what} must be 1 to {MAX_CORRELATION_LEN} characters long"
        ));
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!(
            "{what} must be printable ASCII (letters, digits, punctuation, spaces)"
        ));
    }
    Ok(())
}

impl Stamper {
    pub fn new(device_id: impl Into<String>, session_id: impl Into<String>) -> Self {
        Stamper {
            device_id: device_id.into(),
            session_id: session_id.into(),
            context: ScanContext::default(),
            next_sequence: 0,
            last_ulid: None,
        }
    }

    /// Every event stamped from now on carries `context`.
    pub fn with_context(mut self, context: ScanContext) -> Self {
        self.context = context;
        self
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Stamps `event` at wall-clock `unix_ms` with id entropy `random`. Ids
    /// are strictly increasing within a session even within one millisecond
    /// or if the clock steps back (ULID monotonic rule).
    pub fn stamp(&mut self, event: &Event, unix_ms: u64, random: u128) -> StampedEvent {
        let (ms, rnd) = match self.last_ulid {
            Some((last_ms, last_rnd)) if unix_ms <= last_ms => {
                (last_ms, last_rnd.wrapping_add(1) & ((1u128 << 80) - 1))
            }
            _ => (unix_ms, random & ((1u128 << 79) - 1)),
        };
        self.last_ulid = Some((ms, rnd));
        let id = format!("evt_{}", ulid(ms, rnd));
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let time = rfc3339(unix_ms);
        let envelope = Envelope {
            id: &id,
            schema_version: SCHEMA_VERSION,
            timestamp: unix_ms / 1000,
            time: &time,
            device_id: &self.device_id,
            session_id: &self.session_id,
            scan_id: self.context.scan_id.as_deref(),
            external_id: self.context.external_id.as_deref(),
            subject: self.context.subject.as_deref(),
            sequence,
            event: event.kind.name(),
            severity: event.kind.severity(),
            payload: &event.payload,
        };
        let bytes = json::to_vec(&envelope);
        StampedEvent {
            id,
            session_id: self.session_id.clone(),
            sequence,
            kind: event.kind,
            bytes,
        }
    }
}

/// Where stamped events go (JSONL file, stdout, and next the durable outbox).
pub trait EventSink {
    fn accept(&mut self, event: &StampedEvent) -> Result<(), SinkError>;
}

/// A sink could not take an event; the scan must not pretend it was kept.
#[derive(Debug, thiserror::Error)]
#[error("cannot write event {event_id} to {sink}: {source}")]
pub struct SinkError {
    pub sink: String,
    pub event_id: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000+00:00");
        assert_eq!(rfc3339(1_649_367_553_004), "2022-04-07T21:39:13.004+00:00");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000+00:00");
        assert_eq!(rfc3339(1_795_000_000_999), "2026-11-18T11:06:40.999+00:00");
    }

    #[test]
    fn ulids_have_26_crockford_characters_and_sort_by_time() {
        let a = ulid(1_700_000_000_000, u128::MAX);
        let b = ulid(1_700_000_000_001, 0);
        assert_eq!(a.len(), 26);
        assert!(a.chars().all(|c| CROCKFORD.contains(&(c as u8))));
        assert!(a < b);
        assert_eq!(ulid(0, 0), "00000000000000000000000000");
    }

    #[test]
    fn stamping_numbers_events_and_keeps_ids_strictly_increasing() {
        let mut s = Stamper::new("dev-1", "ses_1");
        let e = Event::general_error("X", "y");
        let a = s.stamp(&e, 1000, 5);
        let b = s.stamp(&e, 1000, 1); // same millisecond, smaller entropy
        let c = s.stamp(&e, 999, 0); // clock stepped back
        assert_eq!((a.sequence, b.sequence, c.sequence), (0, 1, 2));
        assert!(a.id < b.id && b.id < c.id, "{} {} {}", a.id, b.id, c.id);
        assert!(!a.id.contains('.'));
    }

    #[test]
    fn the_envelope_has_every_documented_field() {
        let mut s = Stamper::new("kiosk-7", "ses_A");
        let e = s.stamp(
            &Event::general_error("CAMERA_START_ERROR", "busy"),
            1_649_367_553_004,
            42,
        );
        let v = e.envelope();
        for key in [
            "id",
            "schemaVersion",
            "timestamp",
            "time",
            "deviceId",
            "sessionId",
            "sequence",
            "event",
            "severity",
            "payload",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["timestamp"], 1_649_367_553);
        assert_eq!(v["event"], "GENERAL_ERROR");
        assert_eq!(v["severity"], "ERROR");
        assert_eq!(v["payload"]["details"], "CAMERA_START_ERROR");
        assert_eq!(v["deviceId"], "kiosk-7");
    }

    #[test]
    fn scan_completed_carries_vitals_with_ucum_units_and_null_blood_pressure() {
        let r = ScanResult {
            hr_bpm: Some(71.96),
            confidence: 0.93,
            snr_db: Some(4.1),
            rr_bpm: Some(15.04),
            rr_confidence: 0.8,
            rmssd_ms: None,
            duration_s: 30.0,
            frames: 900,
            ..Default::default()
        };
        let e = Event::from_update(&Update::Completed(r), "msr_1", 30.0, 812);
        assert_eq!(e.kind, EventKind::ScanCompleted);
        let res = &e.payload["results"];
        assert_eq!(res["heart_rate"]["value"], 72.0);
        assert_eq!(res["heart_rate"]["unit"], "/min");
        assert_eq!(res["respiratory_rate"]["value"], 15.0);
        assert!(res["hrv_rmssd"].is_null());
        assert!(res["blood_pressure"].is_null());
        assert_eq!(e.payload["processing_time_ms"], 812);
    }

    #[test]
    fn severities_follow_the_wms_list() {
        use EventKind::*;
        for k in EventKind::ALL {
            let want = match k {
                LowSnr
                | ConstraintViolation
                | FailedInitBloodFlow
                | GeneralError
                | CameraPermissionDenied => Severity::Error,
                MeasurementCanceled | ConstraintWarning => Severity::Warn,
                _ => Severity::Info,
            };
            assert_eq!(k.severity(), want, "{}", k.name());
        }
    }
}
