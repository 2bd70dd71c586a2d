//! Events: order, numbering, envelope.

use crate::util::{names, scan};
use rppg_agent::events::EventKind;

#[test]
fn a_completed_scan_emits_events_in_the_documented_order_with_consecutive_sequences() {
    let (report, events) = scan("synthetic:hr=80,width=320,height=240,seconds=21");
    assert_eq!(report.cancelled, None);
    let n = names(&events);
    assert_eq!(
        &n[..3],
        &[
            "CAMERA_STARTED",
            "MEASUREMENT_CREATED",
            "MEASUREMENT_STARTED"
        ]
    );
    assert_eq!(n.last(), Some(&"SCAN_COMPLETED"));
    let middle = &n[3..n.len() - 1];
    assert!(
        middle.len() >= 14 && middle.iter().all(|e| *e == "INTERMEDIATE_RESULTS"),
        "{n:?}"
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, i as u64);
        let env = e.envelope();
        assert_eq!(env["sequence"], i as u64);
        assert_eq!(env["sessionId"], report.session_id);
        assert_eq!(env["deviceId"], "test-device");
        assert_eq!(env["schemaVersion"], 1);
        assert!(env["time"].as_str().unwrap().ends_with("+00:00"));
    }
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids sort in emission order"
    );
    // Intermediate results carry their own 0-based sequence and the measurement id.
    let first = events
        .iter()
        .find(|e| e.kind == EventKind::IntermediateResults)
        .unwrap()
        .envelope();
    assert_eq!(first["payload"]["sequence"], 0);
    assert_eq!(first["payload"]["measurementId"], report.measurement_id);
    let done = events.last().unwrap().envelope();
    assert_eq!(done["payload"]["results"]["heart_rate"]["unit"], "/min");
    assert!(done["payload"]["results"]["blood_pressure"].is_null());
}

#[test]
fn a_scene_without_a_face_warns_live_then_fails_init_blood_flow_saying_what_was_seen() {
    let (report, events) = scan("synthetic:face=0,width=320,height=240");
    assert_eq!(report.cancelled.map(|c| c.code()), Some("NO_FACE"));
    // The hint is raised once the search has looked everywhere (2 s) and
    // repeated every 3 s while nobody is there (2, 5 and 8 s of 10).
    assert_eq!(
        names(&events),
        [
            "CAMERA_STARTED",
            "MEASUREMENT_CREATED",
            "CONSTRAINT_WARNING",
            "CONSTRAINT_WARNING",
            "CONSTRAINT_WARNING",
            "FAILED_INIT_BLOOD_FLOW",
            "MEASUREMENT_CANCELED"
        ]
    );
    let hint = events[2].envelope();
    assert_eq!(hint["severity"], "WARN");
    assert_eq!(hint["payload"]["constraint"], "NO_FACE");
    assert_eq!(hint["payload"]["status"], "ACTIVE");
    assert_eq!(
        hint["payload"]["advice"],
        "stand in front of the camera and face it"
    );
    let failed = events[5].envelope();
    assert_eq!(failed["severity"], "ERROR");
    assert_eq!(failed["payload"]["constraint"], "NO_FACE");
    assert!(
        failed["payload"]["message"]
            .as_str()
            .unwrap()
            .starts_with("no face was found in 10.0 s"),
        "{failed}"
    );
    let cancelled = events[6].envelope();
    assert_eq!(cancelled["severity"], "WARN");
    assert_eq!(cancelled["payload"]["constraint"], "NO_FACE");
}

#[test]
fn a_dark_room_is_cancelled_as_too_dark() {
    let (report, events) = scan("synthetic:brightness=0.1,width=320,height=240");
    assert_eq!(report.cancelled.map(|c| c.code()), Some("TOO_DARK"));
    let violation = events
        .iter()
        .find(|e| e.kind == EventKind::ConstraintViolation)
        .unwrap();
    assert_eq!(violation.envelope()["payload"]["details"], "TOO_DARK");
}

#[test]
fn violent_head_motion_is_cancelled_as_too_much_motion() {
    let (report, _) = scan("synthetic:motion=120,width=320,height=240");
    assert_eq!(report.cancelled.map(|c| c.code()), Some("TOO_MUCH_MOTION"));
}
