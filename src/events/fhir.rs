//! FHIR R4 output: a completed scan as a Bundle of vital-signs Observations.
//!
//! Owns: the mapping from a stored SCAN_COMPLETED envelope to FHIR. Pure: it
//! reads the envelope bytes (the same bytes the outbox keeps) and returns
//! JSON, so a `format = "fhir"` destination can build the body at delivery
//! time, and every retry sends the same bytes (ids derive from the event id).
//!
//! Profile (http://hl7.org/fhir/R4/vitalsigns.html): each Observation has
//! `status` final, `category` vital-signs, a LOINC `code` (heart rate
//! 8867-4, respiratory rate 9279-1), `subject`, `effectiveDateTime` (when the
//! scan completed), and `valueQuantity` in UCUM `/min`
//! (system http://unitsofmeasure.org). The device is referenced by its
//! identifier (the envelope's `deviceId`). The subject is the scan
//! request's, else `[fhir] subject` from the configuration, else a
//! display-only reference to an anonymous kiosk user (valid R4; a receiver
//! that needs a patient should configure one).
//!
//! Only SCAN_COMPLETED maps to FHIR: a cancelled scan has no vitals to report.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const UCUM: &str = "http://unitsofmeasure.org";
pub const LOINC: &str = "http://loinc.org";
pub const CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

/// Why an event cannot become a FHIR bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FhirError {
    #[error("only SCAN_COMPLETED maps to FHIR, not {0}")]
    NotCompleted(String),
    #[error("the event is not a readable envelope: {0}")]
    Envelope(String),
    #[error("the completed scan has no heart rate")]
    NoHeartRate,
}

/// A vital sign of the vital-signs profile.
struct Vital {
    key: &'static str,
    loinc: &'static str,
    display: &'static str,
    unit: &'static str,
    profile: &'static str,
}

const VITALS: [Vital; 2] = [
    Vital {
        key: "heart_rate",
        loinc: "8867-4",
        display: "Heart rate",
        unit: "beats/minute",
        profile: "http://hl7.org/fhir/StructureDefinition/heartrate",
    },
    Vital {
        key: "respiratory_rate",
        loinc: "9279-1",
        display: "Respiratory rate",
        unit: "breaths/minute",
        profile: "http://hl7.org/fhir/StructureDefinition/resprate",
    },
];

/// A stable `urn:uuid:` from a name (SHA-256, shaped as a version-8 UUID).
fn uuid_urn(name: &str) -> String {
    let h = Sha256::digest(name.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The FHIR Reference of a subject string: `Patient/123` (or any
/// `Type/id`) as a reference, anything else as display text; empty means
/// an anonymous kiosk user.
pub fn subject_reference(subject: &str) -> Value {
    let s = subject.trim();
    if s.is_empty() {
        json!({"display": "anonymous kiosk user"})
    } else if s.starts_with("Patient/") || s.starts_with("Group/") || s.starts_with("urn:uuid:") {
        json!({"reference": s})
    } else {
        json!({"display": s})
    }
}

/// The Bundle for a SCAN_COMPLETED envelope. `default_subject` applies when
/// the scan request named none (the event's `payload.subject`).
pub fn bundle(envelope: &Value, default_subject: &str) -> Result<Value, FhirError> {
    let event = envelope["event"].as_str().unwrap_or_default();
    if event != "SCAN_COMPLETED" {
        return Err(FhirError::NotCompleted(if event.is_empty() {
            "an event without a name".into()
        } else {
            event.into()
        }));
    }
    let id = envelope["id"]
        .as_str()
        .ok_or_else(|| FhirError::Envelope("no id".into()))?;
    let time = envelope["time"]
        .as_str()
        .ok_or_else(|| FhirError::Envelope("no time".into()))?;
    let device = envelope["deviceId"].as_str().unwrap_or_default();
    let payload = &envelope["payload"];
    let subject = payload["subject"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or(default_subject);
    let measurement = payload["measurementId"].as_str().unwrap_or(id);
    let mut entries = Vec::new();
    for v in &VITALS {
        let result = &payload["results"][v.key];
        let Some(value) = result["value"].as_f64() else {
            if v.key == "heart_rate" {
                return Err(FhirError::NoHeartRate);
            }
            continue;
        };
        let mut obs = json!({
            "resourceType": "Observation",
            "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns", v.profile]},
            "identifier": [{"system": "urn:rppg-agent:measurement", "value": format!("{measurement}/{}", v.loinc)}],
            "status": "final",
            "category": [{
                "coding": [{"system": CATEGORY_SYSTEM, "code": "vital-signs", "display": "Vital Signs"}],
                "text": "Vital Signs"
            }],
            "code": {
                "coding": [{"system": LOINC, "code": v.loinc, "display": v.display}],
                "text": v.display
            },
            "subject": subject_reference(subject),
            "effectiveDateTime": time,
            "valueQuantity": {"value": value, "unit": v.unit, "system": UCUM, "code": "/min"},
            "method": {"text": "remote photoplethysmography (camera), rppg-agent"},
        });
        if !device.is_empty() {
            obs["device"] = json!({
                "identifier": {"system": "urn:rppg-agent:device", "value": device},
                "display": format!("rppg-agent {device}")
            });
        }
        if let Some(c) = result["confidence"].as_f64() {
            obs["note"] = json!([{"text": format!("signal confidence {c:.2}")}]);
        }
        entries.push(json!({
            "fullUrl": uuid_urn(&format!("{id}/{}", v.loinc)),
            "resource": obs,
        }));
    }
    Ok(json!({
        "resourceType": "Bundle",
        "identifier": {"system": "urn:rppg-agent:event", "value": id},
        "type": "collection",
        "timestamp": time,
        "entry": entries,
    }))
}

/// [`bundle`] from stored envelope bytes, serialised (what a FHIR destination sends).
pub fn bundle_bytes(envelope_bytes: &[u8], default_subject: &str) -> Result<Vec<u8>, FhirError> {
    let envelope: Value =
        serde_json::from_slice(envelope_bytes).map_err(|e| FhirError::Envelope(e.to_string()))?;
    let b = bundle(&envelope, default_subject)?;
    Ok(super::json::to_vec(&b))
}

/// Checks one Observation against the R4 vital-signs profile rules
/// (required elements and fixed values) for the LOINC `loinc`; returns
/// every violation (empty: valid). For tests and for receivers.
pub fn vital_signs_violations(obs: &Value, loinc: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut need = |ok: bool, what: &str| {
        if !ok {
            v.push(what.to_string());
        }
    };
    need(
        obs["resourceType"] == "Observation",
        "resourceType Observation",
    );
    need(
        ["registered", "preliminary", "final", "amended"]
            .contains(&obs["status"].as_str().unwrap_or("")),
        "status",
    );
    let cats = obs["category"].as_array().cloned().unwrap_or_default();
    need(
        cats.iter().any(|c| {
            c["coding"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|x| x["system"] == CATEGORY_SYSTEM && x["code"] == "vital-signs")
            })
        }),
        "category vital-signs",
    );
    need(
        obs["code"]["coding"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|x| x["system"] == LOINC && x["code"] == loinc)
        }),
        "code LOINC",
    );
    let subj = &obs["subject"];
    need(
        subj["reference"].is_string()
            || subj["display"].is_string()
            || subj["identifier"].is_object(),
        "subject",
    );
    let t = obs["effectiveDateTime"].as_str().unwrap_or("");
    need(
        t.len() >= 10 && t.as_bytes()[4] == b'-' && t.contains('T'),
        "effectiveDateTime",
    );
    let q = &obs["valueQuantity"];
    need(q["value"].is_number(), "valueQuantity.value");
    need(q["unit"].is_string(), "valueQuantity.unit");
    need(q["system"] == UCUM, "valueQuantity.system UCUM");
    need(q["code"] == "/min", "valueQuantity.code /min");
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed(rr: Option<f64>, subject: Option<&str>) -> Value {
        let mut payload = json!({
            "measurementId": "msr_1",
            "results": {
                "heart_rate": {"value": 71.7, "unit": "/min", "confidence": 0.951},
                "respiratory_rate": rr.map_or(Value::Null, |r| json!({"value": r, "unit": "/min", "confidence": 0.77})),
                "hrv_rmssd": Value::Null, "blood_pressure": Value::Null
            }
        });
        if let Some(s) = subject {
            payload["subject"] = json!(s);
        }
        json!({"id": "evt_01M81J8EQYFSPQY7TRK5WG50QD", "schemaVersion": 1, "timestamp": 1795348080,
               "time": "2026-11-22T11:48:00.500+00:00", "deviceId": "kiosk-7", "sessionId": "ses_1",
               "sequence": 28, "event": "SCAN_COMPLETED", "severity": "INFO", "payload": payload})
    }

    #[test]
    fn a_completed_scan_becomes_a_bundle_of_valid_heart_and_respiratory_rate_observations() {
        let b = bundle(&completed(Some(14.9), None), "Patient/123").unwrap();
        assert_eq!(b["resourceType"], "Bundle");
        assert_eq!(b["type"], "collection");
        let entries = b["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        for (e, loinc, value) in [(&entries[0], "8867-4", 71.7), (&entries[1], "9279-1", 14.9)] {
            let obs = &e["resource"];
            assert_eq!(vital_signs_violations(obs, loinc), Vec::<String>::new());
            assert_eq!(obs["valueQuantity"]["value"], value);
            assert_eq!(obs["subject"]["reference"], "Patient/123");
            assert_eq!(obs["effectiveDateTime"], "2026-11-22T11:48:00.500+00:00");
            assert_eq!(obs["device"]["identifier"]["value"], "kiosk-7");
            assert!(e["fullUrl"].as_str().unwrap().starts_with("urn:uuid:"));
        }
        // Deterministic: a retry sends the same bytes.
        let again = bundle(&completed(Some(14.9), None), "Patient/123").unwrap();
        assert_eq!(b, again);
        assert_ne!(entries[0]["fullUrl"], entries[1]["fullUrl"]);
    }

    #[test]
    fn the_scan_requests_subject_wins_and_no_subject_means_an_anonymous_reference() {
        let b = bundle(&completed(None, Some("Patient/abc")), "Patient/123").unwrap();
        assert_eq!(
            b["entry"].as_array().unwrap().len(),
            1,
            "no RR: only the heart rate"
        );
        assert_eq!(
            b["entry"][0]["resource"]["subject"]["reference"],
            "Patient/abc"
        );
        let anon = bundle(&completed(Some(12.0), None), "").unwrap();
        let obs = &anon["entry"][0]["resource"];
        assert_eq!(obs["subject"]["display"], "anonymous kiosk user");
        assert!(vital_signs_violations(obs, "8867-4").is_empty());
    }

    #[test]
    fn only_completed_scans_map_to_fhir() {
        let mut e = completed(Some(12.0), None);
        e["event"] = json!("MEASUREMENT_CANCELED");
        assert_eq!(
            bundle(&e, "").unwrap_err(),
            FhirError::NotCompleted("MEASUREMENT_CANCELED".into())
        );
        let mut e = completed(Some(12.0), None);
        e["payload"]["results"]["heart_rate"] = Value::Null;
        assert_eq!(bundle(&e, "").unwrap_err(), FhirError::NoHeartRate);
        assert!(matches!(
            bundle_bytes(b"nope", ""),
            Err(FhirError::Envelope(_))
        ));
    }

    #[test]
    fn the_validator_catches_a_broken_observation() {
        let b = bundle(&completed(Some(14.9), None), "Patient/1").unwrap();
        let mut obs = b["entry"][0]["resource"].clone();
        obs["valueQuantity"]["system"] = json!("http://example.org");
        obs["status"] = json!("done");
        let v = vital_signs_violations(&obs, "8867-4");
        assert!(
            v.contains(&"valueQuantity.system UCUM".to_string())
                && v.contains(&"status".to_string()),
            "{v:?}"
        );
        assert!(!vital_signs_violations(&obs, "9279-1").is_empty());
    }
}
