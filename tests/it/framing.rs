//! Face acquisition and framing: every face size at every resolution, the
//! right person among several, and the limits the agent documents. Faces
//! are real public-domain portraits (the built-in set, skin types I–VI)
//! placed into the synthetic video at a known size and place.

use crate::util::{names, scan};
use rppg_agent::capture::synthetic::{SyntheticParams, SyntheticSource};
use rppg_agent::capture::{Frame, FrameSource};
use rppg_agent::config::Config;
use rppg_agent::events::EventKind;
use rppg_agent::vision::detector::FaceDetector;
use rppg_agent::vision::FaceRoiExtractor;
use serde_json::Value;

/// Frames until the vision stage reports a face (confirmed), the reported
/// box at that frame, and the true place of the measured face.
fn frames_to_lock(
    spec: &str,
    limit: usize,
) -> (Option<usize>, Option<rppg_agent::vision::FaceBox>, [f64; 3]) {
    let params = SyntheticParams::parse(spec, spec).unwrap();
    let truth = params.face_place(0);
    let mut src = SyntheticSource::new(params).unwrap();
    let mut vision = FaceRoiExtractor::new(
        FaceDetector::builtin().unwrap(),
        Config::default_config().vision(),
    );
    let mut frame = Frame::default();
    for i in 0..limit {
        assert!(src.next_frame(&mut frame).unwrap(), "video too short");
        let obs = vision.process(&frame);
        if obs.face.is_some() {
            return (Some(i + 1), obs.face, [truth.cx, truth.cy, truth.w]);
        }
    }
    (None, None, [truth.cx, truth.cy, truth.w])
}

fn assert_locks_within_a_second(spec: &str) {
    // 1 s of video at 30 fps.
    let (frames, face, [cx, cy, w]) = frames_to_lock(spec, 30);
    let n =
        frames.unwrap_or_else(|| panic!("{spec}: no face within 30 frames (true face {w:.0} px)"));
    let f = face.unwrap();
    let (fx, fy) = f.center();
    assert!(
        (fx - cx).abs() < 0.3 * w && (fy - cy).abs() < 0.3 * w,
        "{spec}: face at ({fx:.0},{fy:.0}), truly at ({cx:.0},{cy:.0})"
    );
    assert!(
        f.w > 0.7 * w && f.w < 1.4 * w,
        "{spec}: face {:.0} px wide, truly {w:.0} px",
        f.w
    );
    eprintln!("{spec}: locked on frame {n}, {:.0} px (true {w:.0})", f.w);
}

#[test]
fn faces_from_the_detector_floor_to_close_ups_are_locked_within_one_second_at_320x240_and_640x480()
{
    // 28 px faces: the documented floor (24 px) plus a margin for the
    // portraits the detector finds hardest.
    for spec in [
        "width=320,height=240,face_width=0.0875,photo=016",
        "width=320,height=240,face_width=0.6,photo=astronaut,face_y=0.5",
        "width=640,height=480,face_width=0.044,photo=021",
        "width=640,height=480,face_width=0.12,photo=013,clutter=1",
        "width=640,height=480,face_width=0.6,photo=001,face_y=0.5",
    ] {
        assert_locks_within_a_second(spec);
    }
}

#[test]
fn faces_from_the_detector_floor_up_are_locked_within_one_second_at_1280x720_and_1920x1080() {
    for spec in [
        "width=1280,height=720,face_width=0.022,photo=032",
        "width=1280,height=720,face_width=0.45,photo=016",
        "width=1920,height=1080,face_width=0.015,photo=001,clutter=1",
        "width=1920,height=1080,face_width=0.12,photo=021",
    ] {
        assert_locks_within_a_second(spec);
    }
}

#[test]
fn an_off_centre_face_and_one_partly_out_of_frame_are_found_too() {
    for spec in [
        "width=640,height=480,face_width=0.15,face_x=0.15,face_y=0.3,photo=013",
        "width=640,height=480,face_width=0.2,face_x=0.92,photo=astronaut",
    ] {
        let (frames, _, _) = frames_to_lock(spec, 30);
        assert!(frames.is_some(), "{spec}: no face within 30 frames");
    }
}

#[test]
fn with_people_queueing_behind_the_largest_most_central_face_is_locked_first() {
    for spec in [
        "width=640,height=480,face_width=0.2,faces=2,photo=016",
        "width=640,height=480,face_width=0.2,faces=3,photo=astronaut,clutter=1",
        "width=1280,height=720,face_width=0.1,faces=3,photo=021",
    ] {
        assert_locks_within_a_second(spec);
    }
}

/// A scan of `spec` that must complete with HR within 2 bpm of the truth.
fn assert_measured_within_2_bpm(spec: &str) {
    let (report, _) = scan(spec);
    let truth = report.source.truth.unwrap();
    assert_eq!(
        report.cancelled, None,
        "{spec}: cancelled (SNR {:?}, constraint {:?})",
        report.result.snr_db, report.constraint
    );
    let hr = report.result.hr_bpm.unwrap();
    assert!(
        (hr - truth.hr_bpm).abs() <= 2.0,
        "{spec}: HR {hr:.1}, true {:.1}",
        truth.hr_bpm
    );
}

#[test]
fn a_face_of_64_px_near_the_minimum_is_measured_within_2_bpm_at_every_resolution_and_skin_type() {
    // The documented minimum is 56 px (scan.min_face_px, the detector's
    // box); these faces are 64 px by the photos' annotated boxes (about 60
    // by the detector's), on six portraits (types I–VI).
    for spec in [
        "synthetic:width=320,height=240,face_width=0.2,photo=001,hr=64,seconds=20",
        "synthetic:width=320,height=240,face_width=0.2,photo=016,hr=97,seconds=20",
        "synthetic:width=640,height=480,face_width=0.1,photo=013,hr=58,seconds=20",
        "synthetic:width=640,height=480,face_width=0.1,photo=astronaut,hr=121,seconds=20",
        "synthetic:width=1280,height=720,face_width=0.05,photo=021,hr=76,seconds=20",
        "synthetic:width=1280,height=720,face_width=0.05,photo=032,hr=88,seconds=20",
    ] {
        assert_measured_within_2_bpm(spec);
    }
}

#[test]
fn a_face_below_the_minimum_is_never_measured_and_the_cancellation_says_how_small_it_was() {
    // About 45 px: found by the search, but too small to measure.
    for spec in [
        "synthetic:width=320,height=240,face_width=0.14,photo=013,seconds=12",
        "synthetic:width=640,height=480,face_width=0.07,photo=032,seconds=12",
        "synthetic:width=1280,height=720,face_width=0.035,photo=001,seconds=12",
    ] {
        let (report, events) = scan(spec);
        assert_eq!(
            report.cancelled.map(|c| c.code()),
            Some("NO_FACE"),
            "{spec}"
        );
        assert_eq!(
            report.constraint.map(|c| c.code()),
            Some("FACE_TOO_SMALL"),
            "{spec}"
        );
        assert!(report.result.hr_bpm.is_none());
        let failed = events
            .iter()
            .find(|e| e.kind == EventKind::FailedInitBloodFlow)
            .expect("FAILED_INIT_BLOOD_FLOW")
            .envelope();
        let message = failed["payload"]["message"].as_str().unwrap();
        let px: f64 = message
            .strip_prefix("a face ")
            .and_then(|m| m.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{spec}: {message}"));
        assert!((36.0..56.0).contains(&px), "{spec}: {message}");
        assert!(message.ends_with("the minimum is 56 px: move closer or use a higher resolution"));
        assert_eq!(failed["payload"]["constraint"], "FACE_TOO_SMALL");
        assert_eq!(failed["payload"]["advice"], "step closer to the camera");
        // The live hint said so while there was time to act.
        let hint = events
            .iter()
            .map(|e| e.envelope())
            .find(|e| e["event"] == "CONSTRAINT_WARNING")
            .expect("a live hint");
        assert_eq!(hint["payload"]["constraint"], "FACE_TOO_SMALL");
        assert_eq!(hint["payload"]["status"], "ACTIVE");
        assert_eq!(hint["severity"], "WARN");
    }
}

#[test]
fn with_two_or_three_people_in_view_the_one_in_front_is_measured_not_those_behind() {
    // The people behind have their own pulses, at least 20 bpm away: a
    // wrong choice shows as a wrong heart rate.
    for spec in [
        "synthetic:width=640,height=480,face_width=0.2,faces=2,hr=70,photo=001,seconds=20",
        "synthetic:width=640,height=480,face_width=0.2,faces=3,hr=95,photo=021,clutter=1,seconds=20",
        // Here one search band missed the user's face on the first frame
        // and the person behind was found first (measured: 101.8 bpm, the
        // other person's pulse, before the survey was added).
        "synthetic:hr=72,rr=30,seed=202,seconds=31,width=640,height=480,face_width=0.2,faces=2,photo=021",
    ] {
        assert_measured_within_2_bpm(spec);
        let (_, events) = scan(spec);
        assert!(
            !names(&events).contains(&"CONSTRAINT_VIOLATION"),
            "{spec}: {:?}",
            names(&events)
        );
    }
}

#[test]
fn when_the_measured_person_walks_away_the_scan_ends_as_face_changed_never_with_the_next_persons_pulse(
) {
    let (report, events) =
        scan("synthetic:width=640,height=480,face_width=0.2,faces=2,hr=70,leave=8,seconds=20");
    assert_eq!(report.cancelled.map(|c| c.code()), Some("FACE_LOST"));
    assert_eq!(report.constraint.map(|c| c.code()), Some("FACE_CHANGED"));
    assert!(report.result.hr_bpm.is_none());
    let payload = |kind: EventKind| -> Value {
        events
            .iter()
            .find(|e| e.kind == kind)
            .unwrap_or_else(|| panic!("{kind:?} in {:?}", names(&events)))
            .envelope()["payload"]
            .clone()
    };
    let violation = payload(EventKind::ConstraintViolation);
    assert_eq!(violation["details"], "FACE_LOST");
    assert_eq!(violation["constraint"], "FACE_CHANGED");
    assert_eq!(violation["severity"], "ERROR");
    assert!(
        violation["message"]
            .as_str()
            .unwrap()
            .starts_with("another face"),
        "{violation}"
    );
    assert_eq!(
        payload(EventKind::MeasurementCanceled)["constraint"],
        "FACE_CHANGED"
    );
    // Nothing after the person left was reported as theirs.
    let someone_elses = events
        .iter()
        .filter(|e| e.kind == EventKind::IntermediateResults)
        .map(|e| {
            e.envelope()["payload"]["heart_rate_bpm"]
                .as_f64()
                .unwrap_or(70.0)
        })
        .any(|hr| (hr - 70.0).abs() > 10.0);
    assert!(
        !someone_elses,
        "an intermediate result took another person's pulse"
    );
}

#[test]
fn a_face_cut_by_the_frame_edge_gets_a_live_hint() {
    let (_, events) = scan("synthetic:width=640,height=480,face_width=0.3,face_x=0.1,seconds=12");
    let hints: Vec<Value> = events
        .iter()
        .map(|e| e.envelope())
        .filter(|e| e["event"] == "CONSTRAINT_WARNING")
        .collect();
    assert!(
        hints
            .iter()
            .any(|h| h["payload"]["constraint"] == "FACE_CUT_OFF"
                && h["payload"]["status"] == "ACTIVE"),
        "{hints:?}"
    );
}
