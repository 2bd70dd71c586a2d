//! The OpenAPI 3.1 description of the daemon's local API, served at
//! `GET /openapi.json` and printed by `rppg-agent schema openapi`.
//!
//! Owns: the document (paths, parameters, every status each operation can
//! answer, and closed response schemas). The event schema inside it is
//! [`crate::events::schema::events_schema`], so the SSE `data` and the
//! webhook bodies are described once. Invariant: the daemon test drives
//! every operation of the running daemon and validates each answer against
//! this document (status documented, body matching its schema), so the
//! document cannot drift from the code unnoticed.

use super::daemon::ScanRequest;
use crate::events::schema::events_schema;
use crate::measurement::guidance::Constraint;
use crate::measurement::CancelReason;
use serde_json::{json, Value};

/// The OpenAPI document.
pub fn document() -> Value {
    let reasons: Vec<&str> = CancelReason::ALL.iter().map(|r| r.code()).collect();
    let constraints: Vec<&str> = Constraint::ALL.iter().map(|c| c.code()).collect();
    let mut event = events_schema();
    if let Some(o) = event.as_object_mut() {
        // Identifiers of a standalone schema, not of a component.
        o.remove("$schema");
        o.remove("$id");
    }
    let number_or_null = json!({"type": ["number", "null"]});
    let error = |description: &str| json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let body = |description: &str, schema: &str| json!({"description": description, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "rppg-agent local API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The kiosk daemon (`rppg-agent run`): one scan at a time, its live events, health and metrics. Loopback clients only, unless `api.token_env` names a bearer token (then every request needs it). Browsers: requests from other web pages are refused (Host and Origin checks); POST bodies must be application/json and at most 64 KiB."
        },
        "servers": [{"url": "http://127.0.0.1:8686"}],
        "security": [{}, {"bearer": []}],
        "paths": {
            "/v1/scans": {
                "post": {
                    "summary": "Start a scan of run.input",
                    "operationId": "startScan",
                    "requestBody": {"required": false, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ScanRequest"}}}},
                    "responses": {
                        "201": body("Started; every event of the scan carries this id as scanId", "ScanStarted"),
                        "400": error("Not JSON, an unknown field, a wrong type, seconds outside 5..3600, or a subject/externalId that is not 1..128 printable ASCII"),
                        "409": body("A scan is running", "Busy"),
                        "413": error("The body is larger than 64 KiB"),
                        "415": error("The body is not application/json"),
                        "503": error("The input (run.input) cannot be opened"),
                        "507": error("The outbox is full or cannot store events")
                    }
                }
            },
            "/v1/scans/current": {
                "delete": {
                    "summary": "Cancel the running scan (MEASUREMENT_CANCELED, reason REQUESTED)",
                    "operationId": "cancelScan",
                    "responses": {
                        "202": body("Cancelling", "Cancelling"),
                        "404": error("No scan is running")
                    }
                }
            },
            "/v1/scans/{id}": {
                "get": {
                    "summary": "A scan's state and, once ended, its result (the last 64 scans; `current` is the running one)",
                    "operationId": "getScan",
                    "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                    "responses": {
                        "200": body("The scan", "ScanRecord"),
                        "404": error("No such scan")
                    }
                }
            },
            "/v1/events": {
                "get": {
                    "summary": "Server-Sent Events: every event as it is emitted (event: name, id: event id, data: the envelope, an Event)",
                    "operationId": "events",
                    "parameters": [
                        {"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "string"}, "description": "Replay the kept events (current and last scan) after this event id first; an EventSource sends it when it reconnects"},
                        {"name": "since", "in": "query", "required": false, "schema": {"type": "string"}, "description": "As Last-Event-ID; empty: replay both scans whole"}
                    ],
                    "responses": {
                        "200": {"description": "An endless event stream; keep-alive comments every 15 s", "content": {"text/event-stream": {"schema": {"type": "string"}, "x-data-schema": {"$ref": "#/components/schemas/Event"}}}}
                    }
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness, storage and input state",
                    "operationId": "health",
                    "responses": {
                        "200": body("Everything works", "Health"),
                        "503": body("Degraded: the outbox cannot store, or the input cannot be opened", "Health")
                    }
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text exposition",
                    "operationId": "metrics",
                    "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}
                }
            }
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Event": event,
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"], "additionalProperties": false},
                "ScanRequest": {
                    "type": "object",
                    "properties": {
                        "subject": {"type": "string", "minLength": 1, "maxLength": crate::events::MAX_CORRELATION_LEN, "description": "Who is measured (Patient/123): in every event and the FHIR subject"},
                        "seconds": {"type": "number", "minimum": 5, "maximum": 3600, "description": "Scan length (default scan.duration_s)"},
                        "externalId": {"type": "string", "minLength": 1, "maxLength": crate::events::MAX_CORRELATION_LEN, "description": "Your correlation id, in every event of the scan"}
                    },
                    "additionalProperties": false,
                    "x-fields": ScanRequest::FIELDS
                },
                "ScanStarted": {"type": "object", "properties": {"id": {"type": "string"}, "state": {"const": "running"}, "href": {"type": "string"}}, "required": ["id", "state", "href"], "additionalProperties": false},
                "Busy": {"type": "object", "properties": {"error": {"type": "string"}, "current": {"type": "string"}}, "required": ["error", "current"], "additionalProperties": false},
                "Cancelling": {"type": "object", "properties": {"id": {"type": "string"}, "state": {"const": "cancelling"}}, "required": ["id", "state"], "additionalProperties": false},
                "ScanRecord": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "state": {"enum": ["running", "completed", "cancelled", "failed"]},
                        "started": {"type": "integer", "description": "Unix ms"},
                        "result": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/ScanResult"}]},
                        "error": {"type": ["string", "null"]}
                    },
                    "required": ["id", "state", "started", "result", "error"],
                    "additionalProperties": false
                },
                "ScanResult": {
                    "description": "As `rppg-agent scan --json`",
                    "type": "object",
                    "properties": {
                        "sessionId": {"type": "string"},
                        "measurementId": {"type": "string"},
                        "status": {"enum": ["completed", "cancelled"]},
                        "reason": {"oneOf": [{"type": "null"}, {"enum": reasons}]},
                        "constraint": {"oneOf": [{"type": "null"}, {"enum": constraints}]},
                        "heart_rate_bpm": number_or_null,
                        "respiratory_rate_bpm": number_or_null,
                        "hrv_rmssd_ms": number_or_null,
                        "snr_db": number_or_null,
                        "confidence": number_or_null,
                        "rr_confidence": number_or_null,
                        "hrv_confidence": number_or_null,
                        "duration_s": number_or_null,
                        "frames": {"type": "integer"},
                        "frames_dropped": {"type": "integer"},
                        "processing_time_ms": {"type": "integer"}
                    },
                    "required": ["sessionId", "measurementId", "status", "reason", "constraint", "heart_rate_bpm", "respiratory_rate_bpm", "hrv_rmssd_ms", "snr_db", "confidence", "rr_confidence", "hrv_confidence", "duration_s", "frames", "frames_dropped", "processing_time_ms"],
                    "additionalProperties": false
                },
                "Health": {
                    "type": "object",
                    "properties": {
                        "status": {"enum": ["ok", "degraded"]},
                        "outbox": {"$ref": "#/components/schemas/Part"},
                        "input": {"$ref": "#/components/schemas/Part"},
                        "version": {"type": "string"},
                        "uptime_s": {"type": "integer"},
                        "scan_running": {"type": "boolean"},
                        "destinations": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "offline": {"type": "boolean"}}, "required": ["name", "offline"], "additionalProperties": false}}
                    },
                    "required": ["status", "outbox", "input", "version", "uptime_s", "scan_running", "destinations"],
                    "additionalProperties": false
                },
                "Part": {"type": "object", "properties": {"ok": {"type": "boolean"}, "source": {"type": "string"}, "error": {"type": "string"}}, "required": ["ok"], "additionalProperties": false}
            }
        }
    })
}

/// The schema of `(path, method, status)`'s JSON answer, resolved, if the
/// document lists that status (`Some(None)`: listed, not JSON).
pub fn response_schema(
    doc: &Value,
    path: &str,
    method: &str,
    status: u16,
) -> Option<Option<Value>> {
    let response = doc.pointer(&format!(
        "/paths/{}/{method}/responses/{status}",
        path.replace('~', "~0").replace('/', "~1")
    ))?;
    Some(
        response
            .pointer("/content/application~1json/schema")
            .cloned(),
    )
}
