//! Every way a `scan` can end stores its terminal event: a pipe that stalls
//! (stdin or a FIFO), SIGTERM, SIGINT or SIGHUP to the process, and a
//! reader of its standard output that goes away (`| head -c1`). The real
//! binary writes to a real outbox whose destination is down; the outbox is
//! read after the process has exited.

use crate::util::{kinds_and_reasons, stored_events};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// A config whose only destination is down: every event stays pending.
fn config(dir: &Path) -> std::path::PathBuf {
    let dead = crate::util::free_addr();
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[outbox]\npath = {:?}\n[delivery]\ndrain_timeout_s = 0.2\nprobe_initial_s = 0.05\nprobe_max_s = 0.2\n\
             [[webhook]]\nname = \"hook\"\nurl = \"http://{dead}/h\"\nsecrets = [\"{SECRET}\"]\nallow_insecure = true\n",
            dir.join("outbox").display().to_string()
        ),
    )
    .unwrap();
    path
}

fn agent(args: &[&str], cfg: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rppg-agent"));
    cmd.args(args)
        .arg("--config")
        .arg(cfg)
        .arg("--quiet")
        .env_remove("RPPG_CONFIG");
    cmd
}

/// Everything `child` wrote on its (piped) standard error.
fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

/// Waits (bounded) for `child` to exit; returns its exit code (None: by signal).
fn wait(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A y4m header and `frames` frames of a synthetic face (640x480 would be
/// slower to make; 160x120 is enough to lock a face).
fn y4m(frames: usize) -> Vec<u8> {
    let list = "width=160,height=120,face_width=0.45,seconds=2";
    let source = crate::util::synthetic_frames(list);
    let mut out = b"YUV4MPEG2 W160 H120 F30:1 C444\n".to_vec();
    for f in source.iter().cycle().take(frames) {
        out.extend_from_slice(b"FRAME\n");
        // 4:4:4 planes from RGB (BT.601 full range is close enough here).
        let px: Vec<[f64; 3]> = f
            .data()
            .chunks(3)
            .map(|p| [p[0] as f64, p[1] as f64, p[2] as f64])
            .collect();
        let clamp = |v: f64| v.round().clamp(0.0, 255.0) as u8;
        out.extend(
            px.iter()
                .map(|p| clamp(0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2])),
        );
        out.extend(
            px.iter()
                .map(|p| clamp(128.0 - 0.1687 * p[0] - 0.3313 * p[1] + 0.5 * p[2])),
        );
        out.extend(
            px.iter()
                .map(|p| clamp(128.0 + 0.5 * p[0] - 0.4187 * p[1] - 0.0813 * p[2])),
        );
    }
    out
}

fn assert_ends_with(events: &[serde_json::Value], want: &[(&str, &str)], what: &str) {
    let got = kinds_and_reasons(events);
    let tail: Vec<(&str, &str)> = got
        .iter()
        .rev()
        .take(want.len())
        .rev()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(tail, want, "{what}: {got:?}");
    let starts = got
        .iter()
        .filter(|(k, _)| k == "MEASUREMENT_STARTED")
        .count();
    let ends = got
        .iter()
        .filter(|(k, _)| k == "MEASUREMENT_CANCELED" || k == "SCAN_COMPLETED")
        .count();
    assert_eq!(ends, 1, "{what}: one terminal event: {got:?}");
    assert!(starts <= 1, "{what}: {got:?}");
}

#[test]
fn a_stdin_pipe_that_stalls_ends_the_scan_within_seconds_and_stores_why() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut child = agent(&["scan", "--input", "-"], &cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Two seconds of video, then the writer hangs (the pipe stays open).
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&y4m(60)).unwrap();
    let started = Instant::now();
    let code = wait(&mut child, Duration::from_secs(30));
    let took = started.elapsed();
    drop(stdin);
    let stderr = stderr_of(&mut child);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("stdin: no data for 3.0 s"), "{stderr}");
    assert!(took < Duration::from_secs(15), "ended after {took:?}");
    let events = stored_events(&dir.path().join("outbox"), "hook");
    assert_ends_with(
        &events,
        &[
            ("GENERAL_ERROR", ""),
            ("MEASUREMENT_CANCELED", "INPUT_ERROR"),
        ],
        "stalled stdin",
    );
    let error = events.iter().rev().nth(1).unwrap();
    assert_eq!(error["payload"]["details"], "INPUT_STALLED");
}

#[test]
fn a_fifo_whose_writer_stalls_ends_the_scan_like_a_stalled_camera() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let fifo = dir.path().join("camera.y4m");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) on a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let writer_path = fifo.clone();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        // Blocks until the agent opens the FIFO for reading.
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(writer_path)
            .unwrap();
        w.write_all(&y4m(30)).unwrap();
        // Hold the FIFO open without writing until the test is done.
        let _ = done_rx.recv_timeout(Duration::from_secs(60));
    });
    let mut child = agent(&["scan", "--input", fifo.to_str().unwrap()], &cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = wait(&mut child, Duration::from_secs(30));
    done_tx.send(()).unwrap();
    writer.join().unwrap();
    let stderr = stderr_of(&mut child);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("the input stalled"), "{stderr}");
    let events = stored_events(&dir.path().join("outbox"), "hook");
    assert_ends_with(
        &events,
        &[
            ("GENERAL_ERROR", ""),
            ("MEASUREMENT_CANCELED", "INPUT_ERROR"),
        ],
        "stalled FIFO",
    );
}

/// Starts a long scan, waits until it measures, then sends `signal`.
fn signal_a_measuring_scan(signal: libc::c_int) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut child = agent(&["scan", "--input", "synthetic:seconds=120"], &cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = Instant::now();
    loop {
        let line = lines
            .next()
            .expect("events until MEASUREMENT_STARTED")
            .unwrap();
        if line.contains("\"MEASUREMENT_STARTED\"") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let code = wait(&mut child, Duration::from_secs(30));
    let printed = rest.join().unwrap();
    assert_eq!(code, Some(3), "signal {signal}: a cancelled scan exits 3");
    assert!(
        printed.last().is_some_and(|l| l.contains("\"SHUTDOWN\"")),
        "signal {signal}: {printed:?}"
    );
    let events = stored_events(&dir.path().join("outbox"), "hook");
    assert_ends_with(
        &events,
        &[("MEASUREMENT_CANCELED", "SHUTDOWN")],
        &format!("signal {signal}"),
    );
}

#[test]
fn sigterm_sigint_or_sighup_cancel_a_scan_for_shutdown_and_store_it() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        signal_a_measuring_scan(signal);
    }
}

#[test]
fn a_reader_that_goes_away_ends_the_scan_with_its_cancellation_stored() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut child = agent(&["scan", "--input", "synthetic:seconds=60"], &cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // As `scan | head -c1`: one byte is read, then the pipe is closed.
    let mut stdout = child.stdout.take().unwrap();
    let mut one = [0u8; 1];
    stdout.read_exact(&mut one).unwrap();
    drop(stdout);
    let code = wait(&mut child, Duration::from_secs(60));
    let stderr = stderr_of(&mut child);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("stdout"), "{stderr}");
    let events = stored_events(&dir.path().join("outbox"), "hook");
    assert_ends_with(
        &events,
        &[("MEASUREMENT_CANCELED", "OUTPUT_ERROR")],
        "closed stdout",
    );
}

#[test]
fn the_demo_removes_its_temporary_outbox_however_it_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rppg-agent"))
        .args(["demo", "--fast", "--seconds", "20"])
        .env_remove("RPPG_CONFIG")
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The reader goes away after the first line: the demo fails writing.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    drop(stdout);
    let code = wait(&mut child, Duration::from_secs(120));
    assert_ne!(code, Some(0));
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
