//! The sample receivers in `examples/` (Node and Python, standard library
//! only) as independent verifiers: the real binary scans and delivers to
//! them in the three body formats, and they check every signature over the
//! raw bytes, the Circadify body signature the way a Node backend does
//! (`JSON.stringify` of the parsed body), and that the bytes survive
//! `JSON.parse` + `JSON.stringify` unchanged and are ASCII.
//!
//! An interpreter that is not installed is skipped with a note (the
//! default test command needs only Rust); `.ci/run` installs both.

use crate::util::{run_command, MINUTE};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// A sample receiver process and the JSON lines it prints.
struct SampleReceiver {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl SampleReceiver {
    /// Starts `interpreter examples/<script>` on `port`; `None` when the
    /// interpreter is missing.
    fn start(interpreter: &str, script: &str, port: u16) -> Option<SampleReceiver> {
        let ok = Command::new(interpreter)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("{interpreter} is not installed here; .ci/run installs it");
            return None;
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(script);
        let mut child = Command::new(interpreter)
            .arg(path)
            .env("RPPG_HOOK_SECRET", SECRET)
            .env("PORT", port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the receiver starts");
        let (ready_tx, ready_rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("listening") {
                    let _ = ready_tx.send(());
                } else {
                    eprintln!("receiver: {line}");
                }
            }
        });
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(serde_json::from_str(&line).expect("the receiver prints JSON"));
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the receiver listens within 20 s");
        Some(SampleReceiver { child, lines })
    }

    /// Every line printed until `n` have come (bounded by 30 s).
    fn take(&self, n: usize) -> Vec<Value> {
        let start = Instant::now();
        let mut out = Vec::new();
        while out.len() < n {
            let left = Duration::from_secs(30).saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(v) => out.push(v),
                Err(_) => panic!("the receiver printed {} of {n} lines: {out:?}", out.len()),
            }
        }
        out
    }
}

impl Drop for SampleReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three destinations on one receiver, one per body format.
fn config(dir: &Path, port: u16) -> String {
    let path = dir.join("agent.toml");
    let mut text = format!(
        "[outbox]\npath = {:?}\n[delivery]\ndrain_timeout_s = 10.0\n",
        dir.join("outbox").display().to_string()
    );
    for format in ["wms", "fhir", "circadify"] {
        text.push_str(&format!(
            "[[webhook]]\nname = \"{format}\"\nurl = \"http://127.0.0.1:{port}/{format}\"\nformat = \"{format}\"\nsecret_env = [\"EXAMPLE_HOOK_SECRET\"]\nallow_insecure = true\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn scan_to(interpreter: &str, script: &str) {
    let port = crate::util::free_addr().port();
    let Some(rx) = SampleReceiver::start(interpreter, script, port) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), port);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rppg-agent"));
    cmd.args([
        "scan",
        "-q",
        "--seconds",
        "12",
        "--external-id",
        "visit-42",
        "--input",
        "synthetic:hr=75,rr=15,width=320,height=240,seconds=14",
        "--config",
        &cfg,
    ])
    .env("EXAMPLE_HOOK_SECRET", SECRET)
    .env_remove("RPPG_CONFIG");
    let scan = run_command(cmd, None, MINUTE);
    assert_eq!(scan.code, 0, "{}", scan.stderr);
    let emitted = scan.stdout.lines().count();
    // wms: every event; fhir: the completed scan; circadify: started + completed.
    let lines = rx.take(emitted + 1 + 2);
    for l in &lines {
        assert_eq!(l["verified"], true, "{interpreter}: {l}");
    }
    let circadify: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("circadify_signature").is_some())
        .collect();
    let mut names: Vec<&str> = circadify
        .iter()
        .map(|l| l["event"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["scan.completed", "scan.started"], "{interpreter}");
    assert!(
        circadify.iter().all(|l| l["circadify_signature"] == true),
        "{interpreter}: {circadify:?}"
    );
    assert!(lines.iter().any(|l| l["event"] == "Bundle"), "{lines:?}");
    if interpreter == "node" {
        // JSON.stringify(JSON.parse(body)) is the body, and it is ASCII.
        for l in &lines {
            assert_eq!(l["stable"], true, "{l}");
            assert_eq!(l["ascii"], true, "{l}");
        }
    }
}

#[test]
fn the_node_sample_receiver_verifies_every_format_and_sees_json_stringify_stable_ascii_bodies() {
    scan_to("node", "receiver.js");
}

#[test]
fn the_python_sample_receiver_verifies_every_format_over_the_raw_bytes() {
    scan_to("python3", "receiver.py");
}
