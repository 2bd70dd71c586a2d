//! The event contract as a JSON Schema (draft 2020-12), for tools.
//!
//! Owns: [`events_schema`], built here next to the payload builders in
//! this module's parent, with every code list taken from the Rust enums
//! ([`EventKind::ALL`], [`CancelReason::ALL`], [`Constraint::ALL`]) so a
//! new code cannot be missing from it; and [`violations`], a validator for
//! the subset of JSON Schema the agent's own schemas use (`type`,
//! `properties`, `required`, `additionalProperties`, `enum`, `const`,
//! `items`, `oneOf`, `$ref` into `$defs` or `components/schemas`,
//! `minimum`, `maximum`, `minLength`, `maxLength`; `pattern` and `format`
//! are left to full validators), used by the tests on real emitted events
//! and on the daemon's answers (see `app::openapi`).
//!
//! Invariant: every object in the schema is closed (`additionalProperties:
//! false`), so a field added to a payload without the schema fails the
//! tests that validate emitted events. `rppg-agent schema` prints it.

use super::EventKind;
use crate::measurement::guidance::Constraint;
use crate::measurement::CancelReason;
use serde_json::{json, Map, Value};

/// The JSON Schema of one event envelope, every payload included: a
/// `oneOf` over the event kinds, each fixing `event`, `severity` and its
/// payload.
pub fn events_schema() -> Value {
    let reasons: Vec<&str> = CancelReason::ALL.iter().map(|r| r.code()).collect();
    let constraints: Vec<&str> = Constraint::ALL.iter().map(|c| c.code()).collect();
    let number = json!({"type": "number"});
    let nullable_number = json!({"type": ["number", "null"]});
    let string = json!({"type": "string"});
    let nullable_string = json!({"type": ["string", "null"]});
    let count = json!({"type": "integer", "minimum": 0});
    let measurement = json!({"type": "string", "pattern": "^msr_[0-9A-Z]{26}$"});
    let vital = |unit: &str| {
        json!({"oneOf": [
            {"type": "null"},
            strict(&[("value", number.clone()), ("unit", json!({"const": unit})),
                     ("confidence", json!({"type": "number", "minimum": 0, "maximum": 1}))]),
        ]})
    };
    let constraint = json!({"enum": constraints});
    let advice = nullable_string.clone();
    let payloads: Vec<(EventKind, Value)> = vec![
        (
            EventKind::CameraStarted,
            strict(&[
                ("source", string.clone()),
                ("description", string.clone()),
                ("width", count.clone()),
                ("height", count.clone()),
                ("fps", number.clone()),
            ]),
        ),
        (
            EventKind::MeasurementCreated,
            strict(&[
                ("measurementId", measurement.clone()),
                ("durationSeconds", number.clone()),
            ]),
        ),
        (
            EventKind::MeasurementStarted,
            strict(&[
                ("measurementId", measurement.clone()),
                ("frameTime", number.clone()),
            ]),
        ),
        (
            EventKind::IntermediateResults,
            strict(&[
                ("measurementId", measurement.clone()),
                ("sequence", count.clone()),
                ("elapsed_s", number.clone()),
                ("snr", number.clone()),
                ("heart_rate_bpm", nullable_number.clone()),
                ("confidence", number.clone()),
                ("respiratory_rate_bpm", nullable_number.clone()),
                ("rr_confidence", number.clone()),
            ]),
        ),
        (
            EventKind::ConstraintWarning,
            strict(&[
                ("measurementId", measurement.clone()),
                ("constraint", constraint.clone()),
                ("status", json!({"enum": ["ACTIVE", "CLEARED"]})),
                ("severity", json!({"const": "WARN"})),
                ("message", string.clone()),
                ("advice", advice.clone()),
            ]),
        ),
        (
            EventKind::LowSnr,
            strict(&[
                ("measurementId", measurement.clone()),
                ("details", json!({"const": "LOW_SNR"})),
                ("snr_db", number.clone()),
                ("threshold_db", number.clone()),
                ("below_for_s", number.clone()),
            ]),
        ),
        (
            EventKind::ConstraintViolation,
            strict(&[
                ("measurementId", measurement.clone()),
                ("details", json!({"enum": reasons})),
                ("constraint", constraint.clone()),
                ("severity", json!({"const": "ERROR"})),
                ("message", string.clone()),
                ("advice", advice.clone()),
            ]),
        ),
        (
            EventKind::FailedInitBloodFlow,
            strict(&[
                ("measurementId", measurement.clone()),
                ("details", json!({"const": "NO_FACE"})),
                ("constraint", constraint.clone()),
                ("severity", json!({"const": "ERROR"})),
                ("message", string.clone()),
                ("advice", advice.clone()),
                ("waited_s", number.clone()),
            ]),
        ),
        (
            EventKind::MeasurementCanceled,
            strict(&[
                ("measurementId", measurement.clone()),
                ("reason", json!({"enum": reasons})),
                (
                    "constraint",
                    json!({"oneOf": [{"type": "null"}, constraint.clone()]}),
                ),
                ("snr_db", nullable_number.clone()),
                ("duration_s", number.clone()),
                ("frames", count.clone()),
            ]),
        ),
        (
            EventKind::ScanCompleted,
            closed(
                &[
                    ("measurementId", measurement.clone()),
                    (
                        "results",
                        closed(
                            &[
                                ("heart_rate", vital("/min")),
                                ("respiratory_rate", vital("/min")),
                                ("hrv_rmssd", vital("ms")),
                                ("blood_pressure", json!({"type": "null"})),
                            ],
                            &[
                                "heart_rate",
                                "respiratory_rate",
                                "hrv_rmssd",
                                "blood_pressure",
                            ],
                        ),
                    ),
                    ("snr_db", nullable_number.clone()),
                    ("processing_time_ms", count.clone()),
                    ("duration_s", number.clone()),
                    ("frames", count.clone()),
                    ("subject", string.clone()),
                ],
                &[
                    "measurementId",
                    "results",
                    "snr_db",
                    "processing_time_ms",
                    "duration_s",
                    "frames",
                ],
            ),
        ),
        (
            EventKind::GeneralError,
            strict(&[
                (
                    "details",
                    json!({"enum": ["INPUT_ERROR", "INPUT_STALLED", "CAMERA_START_ERROR", "CAMERA_STALLED", "OUTBOX_FULL"]}),
                ),
                ("message", string.clone()),
            ]),
        ),
        (
            EventKind::CameraPermissionDenied,
            strict(&[
                ("details", json!({"const": "CAMERA_PERMISSION_DENIED"})),
                ("message", string.clone()),
            ]),
        ),
        (
            EventKind::TestEvent,
            strict(&[
                ("index", count.clone()),
                ("count", count.clone()),
                ("message", string.clone()),
            ]),
        ),
    ];
    assert_eq!(
        payloads.len(),
        EventKind::ALL.len(),
        "every kind has a payload schema"
    );
    let correlation =
        json!({"type": "string", "minLength": 1, "maxLength": super::MAX_CORRELATION_LEN});
    let kinds: Vec<Value> = payloads
        .into_iter()
        .map(|(kind, payload)| {
            let mut props = envelope_properties();
            props.insert("event".into(), json!({"const": kind.name()}));
            props.insert(
                "severity".into(),
                json!({"const": serde_json::to_value(kind.severity()).expect("a severity serialises")}),
            );
            props.insert("payload".into(), payload);
            props.insert("scanId".into(), json!({"type": "string", "pattern": "^scn_[0-9A-Z]{26}$"}));
            props.insert("externalId".into(), correlation.clone());
            props.insert("subject".into(), correlation.clone());
            json!({
                "title": kind.name(),
                "type": "object",
                "properties": Value::Object(props),
                "required": ["id", "schemaVersion", "timestamp", "time", "deviceId", "sessionId",
                             "sequence", "event", "severity", "payload"],
                "additionalProperties": false,
            })
        })
        .collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:rppg-agent:event:1",
        "title": "rppg-agent event (schemaVersion 1)",
        "description": "One lifecycle event: the envelope and, by `event`, its payload. Bodies of format \"wms\", MQTT payloads, SSE data and `scan` output lines.",
        "oneOf": kinds,
    })
}

/// The envelope's fields other than `event`, `severity` and `payload`.
fn envelope_properties() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "id".into(),
        json!({"type": "string", "pattern": "^evt_[0-9A-Z]{26}$"}),
    );
    m.insert(
        "schemaVersion".into(),
        json!({"const": super::SCHEMA_VERSION}),
    );
    m.insert("timestamp".into(), json!({"type": "integer", "minimum": 0}));
    m.insert(
        "time".into(),
        json!({"type": "string", "format": "date-time"}),
    );
    m.insert("deviceId".into(), json!({"type": "string"}));
    m.insert("sessionId".into(), json!({"type": "string"}));
    m.insert("sequence".into(), json!({"type": "integer", "minimum": 0}));
    m
}

/// A closed object schema whose every property is required.
fn strict(props: &[(&str, Value)]) -> Value {
    let keys: Vec<&str> = props.iter().map(|(k, _)| *k).collect();
    closed(props, &keys)
}

/// A closed object schema.
fn closed(props: &[(&str, Value)], required: &[&str]) -> Value {
    let properties: Map<String, Value> = props
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// What is wrong with `instance` under `schema` (empty: valid), for the
/// subset of JSON Schema described in the module doc; `root` resolves
/// `$ref`s. Each entry names the JSON pointer of the offending value.
pub fn violations(root: &Value, schema: &Value, instance: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check(root, schema, instance, "", &mut out, 0);
    out
}

fn check(root: &Value, schema: &Value, v: &Value, at: &str, out: &mut Vec<String>, depth: u32) {
    if depth > 64 {
        out.push(format!("{at}: the schema nests deeper than 64"));
        return;
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        match r.strip_prefix('#').and_then(|p| root.pointer(p)) {
            Some(target) => check(root, target, v, at, out, depth + 1),
            None => out.push(format!("{at}: unresolvable $ref {r}")),
        }
        return;
    }
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = options
            .iter()
            .filter(|o| violations(root, o, v).is_empty())
            .count();
        if matching != 1 {
            // Name the closest option's problems: the one with fewest.
            let best = options
                .iter()
                .map(|o| {
                    let mut e = Vec::new();
                    check(root, o, v, at, &mut e, depth + 1);
                    e
                })
                .min_by_key(Vec::len)
                .unwrap_or_default();
            out.push(format!(
                "{at}: matches {matching} of the oneOf options, not 1"
            ));
            out.extend(best);
        }
    }
    if let Some(c) = schema.get("const") {
        if !same(c, v) {
            out.push(format!("{at}: {v} is not {c}"));
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.iter().any(|x| same(x, v)) {
            out.push(format!(
                "{at}: {v} is not one of {}",
                Value::Array(e.clone())
            ));
        }
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !types.iter().any(|t| is_type(v, t)) {
            out.push(format!("{at}: {v} is not of type {}", types.join(" or ")));
            return;
        }
    }
    if let Some(n) = v.as_f64() {
        if schema
            .get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n < m)
        {
            out.push(format!("{at}: {n} is below the minimum"));
        }
        if schema
            .get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n > m)
        {
            out.push(format!("{at}: {n} is above the maximum"));
        }
    }
    if let Some(text) = v.as_str() {
        let n = text.chars().count() as u64;
        if schema
            .get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
        {
            out.push(format!("{at}: shorter than minLength"));
        }
        if schema
            .get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| n > m)
        {
            out.push(format!("{at}: longer than maxLength"));
        }
    }
    if let Some(obj) = v.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for key in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !obj.contains_key(key) {
                out.push(format!("{at}: missing {key:?}"));
            }
        }
        for (k, x) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check(root, s, x, &format!("{at}/{k}"), out, depth + 1),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    out.push(format!("{at}: unexpected field {k:?}"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            check(root, items, x, &format!("{at}/{i}"), out, depth + 1);
        }
    }
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "number" => v.is_number(),
        "integer" => v.as_f64().is_some_and(|n| n.fract() == 0.0),
        _ => false,
    }
}

/// Equal as JSON values (numbers by value).
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, ScanContext, Stamper};

    #[test]
    fn every_kind_of_event_the_builders_make_fits_the_schema_and_a_stray_field_does_not() {
        let schema = events_schema();
        let mut s = Stamper::new("kiosk-7", "ses_A").with_context(ScanContext {
            scan_id: Some(format!("scn_{}", crate::events::ulid(1, 2))),
            external_id: Some("visit-42".into()),
            subject: None,
        });
        let mut events = vec![
            Event::test(1, 2),
            Event::general_error("INPUT_STALLED", "no data for 3 s"),
            Event::input_failed("CAMERA_PERMISSION_DENIED", "no access"),
        ];
        let m = "msr_01M8NS17V4CS9YE3PG3S70ZJHZ";
        for u in [
            crate::measurement::Update::Created,
            crate::measurement::Update::Started { t_s: 0.5 },
        ] {
            events.push(Event::from_update(&u, m, 30.0, 5));
        }
        for e in &events {
            let v = s.stamp(e, 1_700_000_000_000, 3).envelope();
            assert_eq!(
                violations(&schema, &schema, &v),
                Vec::<String>::new(),
                "{v}"
            );
        }
        let mut bad = s.stamp(&Event::test(1, 1), 1_700_000_000_000, 3).envelope();
        bad["payload"]["extra"] = json!(1);
        let found = violations(&schema, &schema, &bad);
        assert!(
            found
                .iter()
                .any(|f| f.contains("unexpected field \"extra\"")),
            "{found:?}"
        );
        bad["payload"].as_object_mut().unwrap().remove("extra");
        bad["event"] = json!("NOT_AN_EVENT");
        assert!(!violations(&schema, &schema, &bad).is_empty());
    }

    #[test]
    fn the_validator_reads_refs_types_enums_and_ranges() {
        let root = json!({"$defs": {"n": {"type": "integer", "minimum": 1}}});
        let schema = json!({"type": "object", "properties": {
            "a": {"$ref": "#/$defs/n"}, "b": {"enum": ["x", "y"]}, "c": {"type": ["string", "null"]},
            "d": {"type": "array", "items": {"const": 3}}}, "required": ["a"], "additionalProperties": false});
        let root = json!({"$defs": root["$defs"], "properties": schema["properties"]});
        let ok = json!({"a": 2, "b": "y", "c": null, "d": [3, 3.0]});
        assert!(violations(&root, &schema, &ok).is_empty());
        let bad = json!({"a": 0.5, "b": "z", "c": 1, "d": [4], "e": true});
        let found = violations(&root, &schema, &bad);
        assert_eq!(found.len(), 5, "{found:?}");
        assert!(!violations(&root, &schema, &json!({})).is_empty());
    }
}
