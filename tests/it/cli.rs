//! The real binary: output contracts, exit codes, and every bad input's message.

use crate::util::{run_bin, synthetic_frames, MINUTE};
use rppg_agent::capture::y4m::encode_420;
use serde_json::Value;

const JSON_KEYS: [&str; 16] = [
    "sessionId",
    "measurementId",
    "status",
    "reason",
    "constraint",
    "heart_rate_bpm",
    "respiratory_rate_bpm",
    "hrv_rmssd_ms",
    "snr_db",
    "confidence",
    "rr_confidence",
    "hrv_confidence",
    "duration_s",
    "frames",
    "frames_dropped",
    "processing_time_ms",
];

fn one_json_object(stdout: &str) -> Value {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "stdout must be exactly one JSON object: {stdout}"
    );
    let v: Value = serde_json::from_str(lines[0]).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = JSON_KEYS.to_vec();
    want.sort();
    let mut got = keys.clone();
    got.sort();
    assert_eq!(got, want, "exact key set");
    v
}

#[test]
fn synth_writes_a_y4m_file_that_scan_measures_to_its_known_pulse() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("face.y4m");
    let r = run_bin(
        &[
            "synth",
            "synthetic:hr=84,width=320,height=240,seconds=22",
            "--out",
            path.to_str().unwrap(),
        ],
        None,
        MINUTE,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let bytes = std::fs::read(&path).unwrap();
    let header = b"YUV4MPEG2 W320 H240 F30:1 Ip A1:1 C420jpeg\n";
    assert!(bytes.starts_with(header), "{:?}", &bytes[..60]);
    let frame = b"FRAME\n".len() + 320 * 240 * 3 / 2;
    assert_eq!(
        bytes.len(),
        header.len() + 22 * 30 * frame,
        "22 s at 30 fps"
    );
    // The file keeps its planar layout through the pipeline and measures
    // the pulse the generator put in.
    let r = run_bin(
        &[
            "scan",
            "--input",
            path.to_str().unwrap(),
            "--seconds",
            "20",
            "--json",
        ],
        None,
        MINUTE,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = one_json_object(&r.stdout);
    assert_eq!(v["status"], "completed", "{v}");
    assert!(
        (v["heart_rate_bpm"].as_f64().unwrap() - 84.0).abs() < 2.5,
        "{v}"
    );
    // Only the synthetic video, never another source.
    let r = run_bin(
        &["synth", "frames:/tmp", "--out", "/dev/null"],
        None,
        MINUTE,
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("synthetic video only"), "{}", r.stderr);
}

#[test]
fn scan_json_prints_exactly_one_object_with_the_documented_keys_and_exits_0() {
    let r = run_bin(
        &[
            "scan",
            "--input",
            "synthetic:hr=84,width=320,height=240",
            "--seconds",
            "20",
            "--json",
        ],
        None,
        MINUTE,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = one_json_object(&r.stdout);
    assert_eq!(v["status"], "completed");
    assert!(v["reason"].is_null());
    assert!(
        (v["heart_rate_bpm"].as_f64().unwrap() - 84.0).abs() < 2.5,
        "{v}"
    );
    assert!(v["sessionId"].as_str().unwrap().starts_with("ses_"));
    assert!(v["measurementId"].as_str().unwrap().starts_with("msr_"));
    assert!(v["frames"].as_u64().unwrap() >= 600);
}

#[test]
fn scan_without_json_streams_events_as_json_lines_and_appends_them_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    std::fs::write(&log, "").unwrap();
    let path = log.to_str().unwrap();
    let args = [
        "scan",
        "-q",
        "--input",
        "synthetic:face=0,width=160,height=120",
        "--events",
        path,
    ];
    let r = run_bin(&args, None, MINUTE);
    assert_eq!(
        r.code, 3,
        "a scene without a face is a cancelled scan: {}",
        r.stderr
    );
    let streamed: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = streamed
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names.last(), Some(&"MEASUREMENT_CANCELED"));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        r.stdout,
        "the file holds the same bytes"
    );
    let again = run_bin(&args, None, MINUTE);
    let lines = std::fs::read_to_string(&log).unwrap().lines().count();
    assert_eq!(
        lines,
        2 * again.stdout.lines().count(),
        "appended, never truncated"
    );
}

#[test]
fn a_face_without_pulse_exits_3_with_reason_low_snr() {
    let r = run_bin(
        &[
            "scan",
            "--input",
            "synthetic:pulse=0,width=320,height=240",
            "--json",
        ],
        None,
        MINUTE,
    );
    assert_eq!(r.code, 3, "{}", r.stderr);
    let v = one_json_object(&r.stdout);
    assert_eq!(v["status"], "cancelled");
    assert_eq!(v["reason"], "LOW_SNR");
    assert!(v["heart_rate_bpm"].is_null());
}

#[test]
fn ffmpeg_style_y4m_on_stdin_is_measured() {
    let frames = synthetic_frames("hr=96,width=320,height=240,fps=15,seconds=17");
    let bytes = encode_420(&frames, 15);
    let r = run_bin(&["scan", "--input", "-", "--json"], Some(bytes), MINUTE);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = one_json_object(&r.stdout);
    assert!(
        (v["heart_rate_bpm"].as_f64().unwrap() - 96.0).abs() < 3.0,
        "{v}"
    );
    assert!(
        (v["duration_s"].as_f64().unwrap() - 17.0).abs() < 0.5,
        "input ended early: {v}"
    );
}

#[test]
fn a_directory_of_png_frames_is_measured() {
    let dir = tempfile::tempdir().unwrap();
    for (i, f) in synthetic_frames("hr=70,width=320,height=240,fps=15,seconds=16")
        .iter()
        .enumerate()
    {
        image::RgbImage::from_raw(f.width, f.height, f.to_rgb())
            .unwrap()
            .save(dir.path().join(format!("{i:05}.png")))
            .unwrap();
    }
    let input = format!("frames:{},fps=15", dir.path().display());
    let r = run_bin(&["scan", "--input", &input, "--json"], None, MINUTE);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = one_json_object(&r.stdout);
    assert!(
        (v["heart_rate_bpm"].as_f64().unwrap() - 70.0).abs() < 3.0,
        "{v}"
    );
}

#[test]
fn analyze_resamples_irregular_timestamps_from_a_trace_csv() {
    // 72 bpm in the blood-volume direction, frames at jittered times with a gap.
    let mut csv = String::from("time,R,G,B\n");
    let (mut t, mut state) = (0.0f64, 9u64);
    while t < 40_000.0 {
        let p = 0.004 * (2.0 * std::f64::consts::PI * 1.2 * t / 1000.0).sin();
        csv += &format!(
            "{t:.0},{:.4},{:.4},{:.4}\n",
            180.0 * (1.0 - 0.43 * p),
            120.0 * (1.0 - p),
            100.0 * (1.0 - 0.69 * p)
        );
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        t += 20.0
            + ((state >> 33) % 30) as f64
            + if (20_000.0..20_040.0).contains(&t) {
                500.0
            } else {
                0.0
            };
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.csv");
    std::fs::write(&path, csv).unwrap();
    let r = run_bin(
        &["analyze", "--rgb-csv", path.to_str().unwrap()],
        None,
        MINUTE,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = one_json_object(&r.stdout);
    assert!(
        (v["heart_rate_bpm"].as_f64().unwrap() - 72.0).abs() < 1.0,
        "{v}"
    );
}

#[test]
fn config_default_prints_a_file_that_config_check_accepts() {
    let r = run_bin(&["config", "default"], None, MINUTE);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("[signal]") && r.stdout.contains("# "));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("default.toml");
    std::fs::write(&path, &r.stdout).unwrap();
    let check = run_bin(&["config", "check", path.to_str().unwrap()], None, MINUTE);
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(check.stdout.contains("valid"));
}

#[test]
fn config_check_explains_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[scan]\nduraton_s = 30\n[signal]\nfilter_order = 5\n",
    )
    .unwrap();
    let r = run_bin(&["config", "check", path.to_str().unwrap()], None, MINUTE);
    assert_eq!(r.code, 2);
    for needle in [
        "scan.duraton_s",
        "did you mean `duration_s`",
        "signal.filter_order",
        "fix:",
    ] {
        assert!(
            r.stderr.contains(needle),
            "missing {needle:?} in {}",
            r.stderr
        );
    }
}

#[test]
fn the_user_config_folder_is_read_and_stray_variables_are_ignored_or_named() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("rppg-agent");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("agent.toml");
    std::fs::write(&file, "[scan]\nduration_s = 40\n").unwrap();
    let run = |args: &[&str], vars: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rppg-agent"));
        cmd.args(args)
            .env_remove("RPPG_CONFIG")
            .env("XDG_CONFIG_HOME", home.path());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        crate::util::run_command(cmd, None, MINUTE)
    };
    let r = run(&["config", "check"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(file.to_str().unwrap()), "{}", r.stdout);
    assert!(r.stdout.contains("Scan 40 s"), "{}", r.stdout);
    let r = run(&["config", "path"], &[]);
    assert!(
        r.stdout.contains(&format!("used: {}", file.display())),
        "{}",
        r.stdout
    );
    // The README's secret variables, with a config that names none of them.
    let r = run(
        &["config", "check"],
        &[
            ("RPPG_HOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            ("RPPG_API_TOKEN", "t"),
        ],
    );
    assert_eq!((r.code, r.stderr.as_str()), (0, ""));
    // A misspelt key: a warning that names the key, and the value unused.
    let r = run(&["config", "check"], &[("RPPG_SCAN_DURATON_S", "20")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("RPPG_SCAN_DURATON_S") && r.stderr.contains("RPPG_SCAN_DURATION_S?"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("Scan 40 s"));
    // -v shows debug lines, -q hides warnings of the log (not the command's own).
    let r = run(&["-v", "config", "check"], &[]);
    assert!(
        r.stderr.contains("DEBUG") && r.stderr.contains("configuration loaded"),
        "{}",
        r.stderr
    );
    let r = run(&["config", "check"], &[("RPPG_LOG", "warn")]);
    assert!(!r.stderr.contains("DEBUG"), "{}", r.stderr);
    let r = run(&["config", "check"], &[("RUST_LOG", "debug")]);
    assert!(r.stderr.contains("DEBUG"), "{}", r.stderr);
    // demo and eval measure the built-in defaults: the file is not theirs.
    let r = run(&["demo", "--fast", "--seconds", "10"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn the_checked_in_contracts_are_what_the_binary_prints_and_real_events_fit_the_schema() {
    use rppg_agent::events::schema::violations;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema");
    for (which, file) in [
        ("events", "events.schema.json"),
        ("openapi", "openapi.json"),
    ] {
        let r = run_bin(&["schema", which], None, MINUTE);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let printed: Value = serde_json::from_str(&r.stdout).unwrap();
        let kept: Value =
            serde_json::from_str(&std::fs::read_to_string(root.join(file)).unwrap()).unwrap();
        assert!(
            printed == kept,
            "docs/schema/{file} is stale: rppg-agent schema {which} > docs/schema/{file}"
        );
    }
    // A cancelled scan (no face: hints, FAILED_INIT_BLOOD_FLOW, MEASUREMENT_CANCELED)
    // and a completed one, every line against the schema.
    let schema = rppg_agent::events::schema::events_schema();
    let mut kinds = std::collections::BTreeSet::new();
    for input in [
        "synthetic:face=0,width=160,height=120",
        "synthetic:hr=80,width=320,height=240",
    ] {
        let r = run_bin(
            &["scan", "-q", "--external-id", "order 7/b", "--input", input],
            None,
            MINUTE,
        );
        for line in r.stdout.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let found = violations(&schema, &schema, &v);
            assert!(found.is_empty(), "{found:?}\n{v}");
            kinds.insert(v["event"].as_str().unwrap().to_string());
        }
    }
    for k in [
        "CONSTRAINT_WARNING",
        "FAILED_INIT_BLOOD_FLOW",
        "MEASUREMENT_CANCELED",
        "INTERMEDIATE_RESULTS",
        "SCAN_COMPLETED",
    ] {
        assert!(kinds.contains(k), "{k} not seen: {kinds:?}");
    }
}

#[test]
fn completions_and_the_man_page_are_generated_from_the_help() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let r = run_bin(&["completions", shell], None, MINUTE);
        assert_eq!(r.code, 0, "{shell}: {}", r.stderr);
        // fish spells a long option `-l config`.
        for word in ["send-test", "config", "outbox", "external-id"] {
            assert!(r.stdout.contains(word), "{shell} completion lacks {word}");
        }
    }
    let r = run_bin(&["completions", "tcsh"], None, MINUTE);
    assert_eq!(r.code, 2, "an unknown shell is a usage error");
    let r = run_bin(&["man"], None, MINUTE);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(".TH rppg-agent 1"),
        "{}",
        &r.stdout[..200]
    );
    // Every command's own section, with its options.
    for needle in [
        "rppg\\-agent\\-send\\-test",
        "rppg\\-agent\\-scan",
        "\\-\\-input",
    ] {
        assert!(r.stdout.contains(needle), "man page lacks {needle}");
    }
}

/// Writes `bytes` to a temp file and scans it; returns (exit code, stderr).
fn scan_file(name: &str, bytes: &[u8]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let r = run_bin(
        &["scan", "--input", path.to_str().unwrap(), "--json"],
        None,
        MINUTE,
    );
    assert!(
        r.stdout.is_empty(),
        "no result object on an input error: {}",
        r.stdout
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    (r.code, r.stderr)
}

#[test]
fn bad_inputs_exit_2_with_a_message_that_says_what_is_wrong() {
    let good = encode_420(&synthetic_frames("width=64,height=48,seconds=0.2"), 30);
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 100);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "bad.y4m",
            b"RIFF....WAVE".to_vec(),
            "not a YUV4MPEG2 stream",
        ),
        (
            "hdr.y4m",
            b"YUV4MPEG2 W64 H48\n".to_vec(),
            "missing F (frame rate)",
        ),
        (
            "p10.y4m",
            b"YUV4MPEG2 W64 H48 F30:1 C420p10\n".to_vec(),
            "unsupported colour space \"420p10\"",
        ),
        (
            "zero.y4m",
            b"YUV4MPEG2 W0 H48 F30:1\n".to_vec(),
            "zero-size frames",
        ),
        ("trunc.y4m", truncated, "frame 5 is truncated"),
    ];
    for (name, bytes, needle) in cases {
        let (code, stderr) = scan_file(name, &bytes);
        assert_eq!(code, 2, "{name}: {stderr}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
    }
    let r = run_bin(
        &["scan", "--input", "/nonexistent/clip.y4m", "--json"],
        None,
        MINUTE,
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("cannot open input /nonexistent/clip.y4m"),
        "{}",
        r.stderr
    );
    let r = run_bin(&["scan", "--input", "synthetic:hr=500"], None, MINUTE);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("hr=500 is outside 30..=240"),
        "{}",
        r.stderr
    );
    let r = run_bin(&["scan", "--input", "camera:0"], None, MINUTE);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("camera input is not available"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_csv_without_rgb_columns_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    std::fs::write(&path, "time,red,green\n0,1,2\n").unwrap();
    let r = run_bin(
        &["analyze", "--rgb-csv", path.to_str().unwrap()],
        None,
        MINUTE,
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("lacks an R, G or B column"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_model_file_with_the_wrong_checksum_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.bin");
    std::fs::write(&model, b"not the model").unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!("[vision]\nmodel_path = {:?}\n", model.to_str().unwrap()),
    )
    .unwrap();
    let args = [
        "scan",
        "--input",
        "synthetic",
        "--config",
        config.to_str().unwrap(),
    ];
    let r = run_bin(&args, None, MINUTE);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("failed its integrity check"),
        "{}",
        r.stderr
    );
    std::fs::remove_file(&model).unwrap();
    let r = run_bin(&args, None, MINUTE);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("cannot read face model"), "{}", r.stderr);
}

#[test]
fn the_demo_runs_a_complete_scan_and_shows_measured_against_true_values() {
    let r = run_bin(
        &["demo", "--fast", "--seconds", "20", "--hr", "66"],
        None,
        MINUTE,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    for needle in [
        "CAMERA_STARTED",
        "MEASUREMENT_STARTED",
        "INTERMEDIATE_RESULTS",
        "SCAN_COMPLETED",
        "Result: completed",
        "measured     true",
    ] {
        assert!(
            r.stdout.contains(needle),
            "missing {needle:?}:\n{}",
            r.stdout
        );
    }
}

#[test]
fn help_teaches_the_inputs_and_exit_codes() {
    let r = run_bin(&["scan", "--help"], None, MINUTE);
    assert_eq!(r.code, 0);
    for needle in [
        "synthetic",
        "yuv4mpegpipe",
        "frames:DIR",
        "Exit codes",
        "LOW_SNR",
    ] {
        assert!(
            r.stdout.contains(needle),
            "missing {needle:?} in scan --help"
        );
    }
}

#[test]
fn bench_runs_in_a_short_mode_and_reports_every_stage() {
    let r = run_bin(&["bench", "--frames", "30", "--runs", "1"], None, MINUTE);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for needle in [
        "| 320x240 |",
        "| 640x480 |",
        "frames/s",
        "final vitals",
        "event stamp",
        "Machine:",
    ] {
        assert!(
            r.stdout.contains(needle),
            "missing {needle:?}:\n{}",
            r.stdout
        );
    }
    let r = run_bin(&["bench", "--frames", "3"], None, MINUTE);
    assert_eq!(r.code, 2, "too few frames is a usage error");
}

#[test]
fn eval_runs_in_a_short_mode_with_every_condition_and_the_robustness_verdicts() {
    // Every row at the shortest length (`--quick` is 20 s a scan: twice the
    // cost, the same code).
    let r = run_bin(
        &["eval", "--trials", "1", "--seconds", "10", "--threads", "2"],
        None,
        5 * MINUTE,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    for cond in rppg_agent::app::eval::CONDITIONS {
        assert!(
            r.stdout.contains(cond.name),
            "missing row {:?}:\n{}",
            cond.name,
            r.stdout
        );
    }
    assert!(r.stdout.contains("| HR MAE |") && r.stdout.contains("conf. right / wrong"));
    // The framing axis: every row, with time to lock and to the first result.
    for cond in rppg_agent::app::eval::FRAMINGS {
        assert!(
            r.stdout.contains(cond.name),
            "missing framing row {:?}",
            cond.name
        );
    }
    assert!(
        r.stdout.contains("## Framing") && r.stdout.contains("lock"),
        "{}",
        r.stdout
    );
    // Seeded videos: these robustness rows end in their cancellation every time.
    for row in [
        "| no pulse (a photo) | LOW_SNR | 1 of 1 |",
        "| no face | NO_FACE | 1 of 1 |",
    ] {
        assert!(r.stdout.contains(row), "{row}\n{}", r.stdout);
    }
    assert!(
        r.stderr.contains("synthetic scans"),
        "progress on stderr: {}",
        r.stderr
    );
    // JSON: one object with every trial of the sweep asked for (the
    // conditions sweep at the shortest length: the framing rows are the same
    // code and cost twice as much; the tables above have them all).
    let j = run_bin(
        &[
            "eval",
            "--trials",
            "1",
            "--seconds",
            "10",
            "--sweep",
            "conditions",
            "--json",
            "--threads",
            "2",
        ],
        None,
        5 * MINUTE,
    );
    assert_eq!(j.code, 0, "{}", j.stderr);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    let rows = v["synthetic"].as_array().unwrap();
    let in_sweep = |name: &str| rows.iter().filter(|r| r["sweep"] == name).count();
    assert_eq!(
        in_sweep("conditions"),
        rppg_agent::app::eval::CONDITIONS.len()
    );
    assert_eq!(
        rows.len(),
        in_sweep("conditions"),
        "only the sweep asked for"
    );
    assert!(rows
        .iter()
        .flat_map(|r| r["trials"].as_array().unwrap())
        .all(|t| t["status"] == "cancelled" || t["locked_at_s"].is_number()));
    let quick = run_bin(&["eval", "--quick", "--sweep", "none"], None, MINUTE);
    assert_eq!(quick.code, 0, "{}", quick.stderr);
    // Bad arguments are usage errors.
    let bad = run_bin(&["eval", "--seconds", "7"], None, MINUTE);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("at least 10 s"), "{}", bad.stderr);
    let missing = run_bin(
        &[
            "eval",
            "--trials",
            "0",
            "--welltory",
            "/nonexistent/welltory",
        ],
        None,
        MINUTE,
    );
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.contains("--welltory /nonexistent/welltory"),
        "{}",
        missing.stderr
    );
}

#[cfg(not(feature = "camera"))]
#[test]
fn without_the_camera_feature_camera_requests_say_how_to_get_one() {
    let r = run_bin(&["cameras"], None, MINUTE);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--features camera"), "{}", r.stderr);
    let r = run_bin(
        &["scan", "--input", "camera:0,width=320,height=240", "-q"],
        None,
        MINUTE,
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("libclang1-14"), "{}", r.stderr);
    // The kiosk backend hears about it too.
    assert!(r.stdout.contains("CAMERA_START_ERROR"), "{}", r.stdout);
    let bad = run_bin(&["scan", "--input", "camera:0,zoom=2"], None, MINUTE);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("unknown option \"zoom\""),
        "{}",
        bad.stderr
    );
}

#[test]
fn scan_report_writes_an_svg_for_a_good_and_for_a_cancelled_scan() {
    let dir = tempfile::tempdir().unwrap();
    for (spec, code, needle) in [
        (
            "synthetic:hr=84,rr=16,width=320,height=240",
            0,
            "heart rate 8",
        ),
        (
            "synthetic:pulse=0,width=320,height=240",
            3,
            "cancelled (LOW_SNR)",
        ),
    ] {
        let path = dir.path().join(format!("report-{code}.svg"));
        let r = run_bin(
            &[
                "scan",
                "--input",
                spec,
                "--subject",
                "Patient/7",
                "--report",
                path.to_str().unwrap(),
                "--json",
            ],
            None,
            MINUTE,
        );
        assert_eq!(r.code, code, "{}", r.stderr);
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains(needle), "{needle}");
        // The header: who, where, when.
        assert!(
            svg.contains("subject Patient/7") && svg.contains("device "),
            "{needle}"
        );
        assert!(svg.contains("<polyline"), "the spectrum is drawn");
        // Waves, beats and the trend only for trusted values.
        assert_eq!(svg.contains("detected beats"), code == 0, "{needle}");
        assert_eq!(svg.contains("live heart rate"), code == 0, "{needle}");
        assert_eq!(svg.contains("breathing wave:"), code == 0, "{needle}");
        assert!(
            !svg.contains(">-0<") && !svg.contains(">-0.0<"),
            "no -0 tick"
        );
    }
    let bad = run_bin(
        &[
            "scan",
            "--input",
            "synthetic:width=160,height=120,face_width=0.45,seconds=11",
            "--seconds",
            "10",
            "--report",
            "/nonexistent/dir/r.svg",
        ],
        None,
        MINUTE,
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("--report /nonexistent/dir/r.svg"),
        "{}",
        bad.stderr
    );
}
