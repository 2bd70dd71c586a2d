//! The Circadify-style body (`format = "circadify"`): a scan's start, its
//! vitals, or its failure, in the shape the Circadify integration plan
//! describes, for backends built against it.
//!
//! Owns: which events map (MEASUREMENT_STARTED → `scan.started`,
//! SCAN_COMPLETED → `scan.completed`, MEASUREMENT_CANCELED → `scan.failed`;
//! nothing else is sent to such a destination) and the unsigned body:
//!
//! ```json
//! {"id":"evt_…","event":"scan.completed","created_at":"2026-…Z",
//!  "data":{"scan_id":"scn_…","measurement_id":"msr_…","device_id":"kiosk-7",
//!          "external_id":"visit-42","subject":"Patient/7",
//!          "vitals":{"heart_rate":72.3,"respiratory_rate":15,"hrv":null,
//!                    "blood_pressure":null,"confidence":0.97,
//!                    "processing_time_ms":1305}}}
//! ```
//!
//! `scan.failed` carries `data.reason` and `data.constraint` instead of
//! `vitals`. A vital the agent did not trust is `null` (never a number it
//! does not trust); `blood_pressure` is always `null` (not measured).
//! The delivery stage adds `signature` (see
//! `delivery::webhook::BodyFormat::Circadify`). Pure.

use super::EventKind;
use serde_json::{json, Value};

/// Why an event has no Circadify body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CircadifyError {
    #[error("{0} has no Circadify event (only scan start, completion and failure do)")]
    NotMapped(String),
    #[error("the event is not a readable envelope: {0}")]
    Envelope(String),
}

/// The event kinds a Circadify destination receives.
pub const KINDS: [EventKind; 3] = [
    EventKind::MeasurementStarted,
    EventKind::ScanCompleted,
    EventKind::MeasurementCanceled,
];

/// The Circadify event name of `kind`, if it has one.
pub fn event_name(kind: EventKind) -> Option<&'static str> {
    match kind {
        EventKind::MeasurementStarted => Some("scan.started"),
        EventKind::ScanCompleted => Some("scan.completed"),
        EventKind::MeasurementCanceled => Some("scan.failed"),
        _ => None,
    }
}

/// The unsigned body of a stored envelope.
pub fn body(envelope_bytes: &[u8]) -> Result<Value, CircadifyError> {
    let e: Value = serde_json::from_slice(envelope_bytes)
        .map_err(|err| CircadifyError::Envelope(err.to_string()))?;
    let name = e["event"].as_str().unwrap_or_default();
    let kind = EventKind::from_name(name)
        .and_then(event_name)
        .ok_or_else(|| CircadifyError::NotMapped(name.to_string()))?;
    let p = &e["payload"];
    let mut data = json!({
        "scan_id": e["scanId"],
        "measurement_id": p["measurementId"],
        "device_id": e["deviceId"],
    });
    for (from, to) in [("externalId", "external_id"), ("subject", "subject")] {
        if let Some(v) = e.get(from) {
            data[to] = v.clone();
        }
    }
    match kind {
        "scan.completed" => {
            let r = &p["results"];
            let value = |v: &str| r[v]["value"].clone();
            data["vitals"] = json!({
                "heart_rate": value("heart_rate"),
                "respiratory_rate": value("respiratory_rate"),
                "hrv": value("hrv_rmssd"),
                "blood_pressure": Value::Null,
                "confidence": r["heart_rate"]["confidence"],
                "processing_time_ms": p["processing_time_ms"],
            });
        }
        "scan.failed" => {
            data["reason"] = p["reason"].clone();
            data["constraint"] = p["constraint"].clone();
        }
        _ => {}
    }
    Ok(json!({
        "id": e["id"],
        "event": kind,
        "created_at": e["time"],
        "data": data,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, ScanContext, Stamper};

    fn stamped(kind: EventKind, payload: Value) -> Vec<u8> {
        let mut s = Stamper::new("kiosk-7", "ses_A").with_context(ScanContext {
            scan_id: Some("scn_1".into()),
            external_id: Some("visit-42".into()),
            subject: None,
        });
        s.stamp(&Event { kind, payload }, 1_700_000_000_000, 1)
            .bytes
    }

    #[test]
    fn a_completed_scan_carries_its_trusted_vitals_and_nulls_for_the_rest() {
        let bytes = stamped(
            EventKind::ScanCompleted,
            json!({"measurementId": "msr_1", "processing_time_ms": 1305,
                   "results": {"heart_rate": {"value": 72.3, "confidence": 0.97},
                               "respiratory_rate": null, "hrv_rmssd": {"value": 41.0, "confidence": 0.8},
                               "blood_pressure": null}}),
        );
        let b = body(&bytes).unwrap();
        assert_eq!(b["event"], "scan.completed");
        assert_eq!(b["data"]["scan_id"], "scn_1");
        assert_eq!(b["data"]["external_id"], "visit-42");
        assert!(b["data"].get("subject").is_none());
        let v = &b["data"]["vitals"];
        assert_eq!(v["heart_rate"], 72.3);
        assert_eq!(v["respiratory_rate"], Value::Null);
        assert_eq!(v["hrv"], 41.0);
        assert_eq!(v["blood_pressure"], Value::Null);
        assert_eq!(v["confidence"], 0.97);
        assert_eq!(v["processing_time_ms"], 1305);
    }

    #[test]
    fn a_cancelled_scan_is_a_failure_with_its_reason_and_other_events_do_not_map() {
        let bytes = stamped(
            EventKind::MeasurementCanceled,
            json!({"measurementId": "msr_1", "reason": "NO_FACE", "constraint": "FACE_TOO_SMALL"}),
        );
        let b = body(&bytes).unwrap();
        assert_eq!(b["event"], "scan.failed");
        assert_eq!(b["data"]["reason"], "NO_FACE");
        assert_eq!(b["data"]["constraint"], "FACE_TOO_SMALL");
        assert!(b["data"].get("vitals").is_none());
        let live = stamped(EventKind::IntermediateResults, json!({}));
        assert!(matches!(body(&live), Err(CircadifyError::NotMapped(_))));
        assert_eq!(
            EventKind::ALL
                .iter()
                .filter(|k| event_name(**k).is_some())
                .count(),
            KINDS.len()
        );
    }
}
