//! The trust rule, one per vital: heart rate, respiratory rate and HRV are
//! each reported only at or above their own confidence floor, and below it
//! they are null everywhere a number could leak: `--json`, every event
//! (live and final) and FHIR.

use crate::util::{run_bin, scan_with, MINUTE};
use rppg_agent::config::Config;
use rppg_agent::events::{EventKind, StampedEvent};
use serde_json::Value;

/// The payloads of every event of `kind`.
fn payloads(events: &[StampedEvent], kind: EventKind) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.envelope()["payload"].clone())
        .collect()
}

fn json_of(args: &[&str]) -> Value {
    let run = run_bin(args, None, MINUTE);
    assert!(run.code == 0 || run.code == 3, "{}", run.stderr);
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

#[test]
fn a_face_that_does_not_breathe_gets_a_heart_rate_and_no_respiratory_rate_anywhere() {
    let spec = "synthetic:hr=72,breathing=0,width=320,height=240";
    let json = json_of(&["scan", "--input", spec, "--json", "-q"]);
    assert!(json["heart_rate_bpm"].is_number(), "{json}");
    assert!(json["respiratory_rate_bpm"].is_null(), "{json}");
    assert!(json["rr_confidence"].as_f64().unwrap() < 0.3, "{json}");

    let (report, events) = scan_with(spec, Config::default_config());
    assert!(report.cancelled.is_none());
    assert_eq!(report.result.rr_bpm, None);
    let live = payloads(&events, EventKind::IntermediateResults);
    assert!(live.len() >= 20);
    for p in &live {
        assert!(p["respiratory_rate_bpm"].is_null(), "{p}");
    }
    let done = &payloads(&events, EventKind::ScanCompleted)[0];
    assert!(done["results"]["respiratory_rate"].is_null(), "{done}");
    assert!(done["results"]["heart_rate"]["value"].is_number(), "{done}");

    // FHIR: a heart-rate Observation, none for the respiratory rate.
    let run = run_bin(&["scan", "--input", spec, "--fhir", "-q"], None, MINUTE);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let bundle: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let codes: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["code"]["coding"][0]["code"].as_str())
        .collect();
    assert!(codes.contains(&"8867-4"), "{codes:?}");
    assert!(!codes.contains(&"9279-1"), "{codes:?}");
}

#[test]
fn a_heart_rate_below_its_floor_is_null_live_and_never_completes_a_scan() {
    // No pulse: every live estimate under the floor is null, and the scan
    // ends in LOW_SNR.
    let (report, events) = scan_with(
        "synthetic:pulse=0,width=320,height=240",
        Config::default_config(),
    );
    assert_eq!(report.cancelled.map(|c| c.code()), Some("LOW_SNR"));
    let live = payloads(&events, EventKind::IntermediateResults);
    assert!(!live.is_empty());
    for p in &live {
        let c = p["confidence"].as_f64().unwrap();
        assert_eq!(p["heart_rate_bpm"].is_null(), c < 0.5, "{p}");
    }
    // A clean pulse under a floor it cannot reach: no number anywhere.
    let mut strict = Config::default_config();
    strict.signal.hr_min_confidence = 1.0;
    let (report, events) = scan_with("synthetic:hr=72,width=320,height=240", strict);
    assert_eq!(report.cancelled.map(|c| c.code()), Some("LOW_SNR"));
    assert_eq!(report.result.hr_bpm, None);
    for p in payloads(&events, EventKind::IntermediateResults) {
        assert!(p["heart_rate_bpm"].is_null(), "{p}");
    }
    assert!(payloads(&events, EventKind::ScanCompleted).is_empty());
}

#[test]
fn hrv_is_reported_with_its_own_confidence_and_null_below_its_floor() {
    let spec = "synthetic:hr=72,rr=15";
    let (report, events) = scan_with(spec, Config::default_config());
    let r = &report.result;
    assert!(r.hrv_confidence >= 0.7, "{r:?}");
    let truth = report.source.truth.unwrap();
    let rmssd = r.rmssd_ms.expect("a clean full-size scan reports HRV");
    assert!(
        (rmssd - truth.rmssd_ms).abs() <= 10.0,
        "{rmssd} vs {truth:?}"
    );
    let done = &payloads(&events, EventKind::ScanCompleted)[0];
    let hrv = &done["results"]["hrv_rmssd"];
    assert_eq!(
        hrv["confidence"].as_f64().unwrap(),
        (r.hrv_confidence * 1000.0).round() / 1000.0
    );

    // The same scan under a floor its HRV does not reach: null, the heart
    // rate unaffected.
    let mut strict = Config::default_config();
    strict.signal.hrv_min_confidence = 0.999;
    let (report, events) = scan_with(spec, strict);
    assert_eq!(report.result.rmssd_ms, None);
    assert!(report.result.hr_bpm.is_some());
    let done = &payloads(&events, EventKind::ScanCompleted)[0];
    assert!(done["results"]["hrv_rmssd"].is_null(), "{done}");
    let json = json_of(&[
        "scan",
        "--input",
        "synthetic:hr=72,rr=15,width=320,height=240",
        "--json",
        "-q",
    ]);
    // At 320x240 the beat timing noise is too high for HRV (measured: the
    // two halves of the face disagree by more than the floor allows).
    assert!(json["hrv_rmssd_ms"].is_null(), "{json}");
    assert!(json["hrv_confidence"].as_f64().unwrap() < 0.7, "{json}");
    assert!(json["heart_rate_bpm"].is_number(), "{json}");
}
