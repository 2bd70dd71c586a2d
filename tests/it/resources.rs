//! Resources: a full disk and the outbox cap, with the real binary.
//!
//! A full disk is made real for one process with `RLIMIT_FSIZE`: every
//! write past the limit fails with EFBIG, as on a full file system (SIGXFSZ,
//! which would kill the process instead, is ignored, as a daemon would).

use crate::util::{free_addr, run_bin, Run, MINUTE};
use rppg_agent::app::receiver::{Receiver, Script};
use rppg_agent::delivery::signing::{parse_secret, Scheme};
use std::collections::HashSet;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn config(dir: &Path, url: &str, max_bytes: u64) -> String {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[outbox]\npath = {:?}\nmax_bytes = {max_bytes}\n[delivery]\ndrain_timeout_s = 0.5\nprobe_initial_s = 0.05\nprobe_max_s = 0.2\n\
             [[webhook]]\nname = \"hook\"\nurl = {url:?}\nsecret_env = [\"TEST_RES_SECRET\"]\nallow_insecure = true\n",
            dir.join("outbox").display().to_string()
        ),
    )
    .unwrap();
    std::env::set_var("TEST_RES_SECRET", SECRET);
    path.display().to_string()
}

/// The binary with every file write limited to `max_file_bytes`.
fn run_with_file_limit(args: &[&str], max_file_bytes: u64) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rppg-agent"));
    cmd.args(args)
        .env_remove("RPPG_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: max_file_bytes,
                rlim_max: max_file_bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let mut stdout = String::new();
    out.read_to_string(&mut stdout).unwrap();
    let status = child.wait().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr: err_t.join().unwrap(),
    }
}

/// A receiver that answers 200 and verifies every signature with SECRET.
async fn verifying_receiver() -> Receiver {
    let key = parse_secret(Scheme::Standard, SECRET).unwrap();
    Receiver::start(Some((Scheme::Standard, vec![key])), Script::default())
        .await
        .unwrap()
}

fn ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["id"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_append_clearly_keeps_every_stored_event_and_recovers_when_space_returns(
) {
    let dir = tempfile::tempdir().unwrap();
    // The receiver is down: everything stays in the outbox and grows the log.
    let dead_url = format!("http://{}/hooks", free_addr());
    let cfg = config(dir.path(), &dead_url, 1 << 30);
    let full = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || {
            run_with_file_limit(
                &[
                    "send-test",
                    "--count",
                    "20000",
                    "--rate",
                    "0",
                    "--timeout",
                    "0",
                    "--config",
                    &cfg,
                ],
                2 << 20,
            )
        }
    })
    .await
    .unwrap();
    let stored = ids(&full.stdout);
    assert_eq!(full.code, 1, "a storage error: {}", full.stderr);
    assert!(
        stored.len() > 100 && stored.len() < 20000,
        "the disk filled part way: {} stored",
        stored.len()
    );
    assert!(
        full.stderr.contains("outbox storage error")
            && full.stderr.contains("if the disk is full, free space"),
        "{}",
        full.stderr
    );
    assert!(!full.stderr.contains("panicked"), "{}", full.stderr);
    // Space returns: the outbox opens, and every event whose append returned
    // is delivered.
    let rx = verifying_receiver().await;
    let cfg = config(dir.path(), &rx.url(), 1 << 30);
    let sync = tokio::task::spawn_blocking(move || {
        run_bin(
            &["sync", "--timeout", "60", "--config", &cfg],
            None,
            MINUTE * 2,
        )
    })
    .await
    .unwrap();
    assert_eq!(sync.code, 0, "{}{}", sync.stdout, sync.stderr);
    assert!(!sync.stderr.contains("damaged"), "{}", sync.stderr);
    let got: HashSet<String> = rx
        .received()
        .into_iter()
        .filter_map(|r| r.webhook_id)
        .collect();
    let lost: Vec<&String> = stored.iter().filter(|id| !got.contains(*id)).collect();
    assert!(lost.is_empty(), "{} of {} lost", lost.len(), stored.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_sheds_intermediate_results_first_refuses_a_scan_with_an_event_and_recovers_after_sync(
) {
    let dir = tempfile::tempdir().unwrap();
    let dead_url = format!("http://{}/hooks", free_addr());
    let cfg = config(dir.path(), &dead_url, 1_048_576);
    let bin = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_bin(&args, None, MINUTE)
        })
    };
    let args = |a: &[&str]| -> Vec<String> {
        a.iter()
            .map(|s| s.to_string())
            .chain(["--config".into(), cfg.clone()])
            .collect()
    };
    let scan = args(&[
        "scan",
        "--input",
        "synthetic:width=160,height=120,face_width=0.45",
        "-q",
    ]);
    let listed = |cfg: &str| run_bin(&["outbox", "list", "--config", cfg], None, MINUTE).stdout;
    let stats = |cfg: &str| -> serde_json::Value {
        let s = run_bin(
            &["outbox", "stats", "--json", "--config", cfg],
            None,
            MINUTE,
        );
        serde_json::from_str(s.stdout.trim()).unwrap()
    };
    // A scan while the receiver is down: its events wait in the outbox.
    let first = bin(scan.clone()).await.unwrap();
    assert_eq!(first.code, 0, "{}", first.stderr);
    let before = listed(&cfg);
    let intermediate = before.matches("INTERMEDIATE_RESULTS").count();
    assert!(intermediate > 10, "{before}");
    // Test events fill the rest: intermediate results are shed first, then
    // the cap is reached and the append fails with what to do.
    let filled = bin(args(&[
        "send-test",
        "--count",
        "10000",
        "--rate",
        "0",
        "--timeout",
        "0",
    ]))
    .await
    .unwrap();
    assert_eq!(filled.code, 1, "{}", filled.stderr);
    assert!(
        filled.stderr.contains("the outbox is full")
            && filled
                .stderr
                .contains("raise outbox.max_bytes or let pending events drain"),
        "{}",
        filled.stderr
    );
    let stored_tests = ids(&filled.stdout).len();
    assert!(stored_tests > 20, "{stored_tests}");
    let after = listed(&cfg);
    assert_eq!(
        after.matches("INTERMEDIATE_RESULTS").count(),
        0,
        "all shed: {after}"
    );
    for kind in [
        "CAMERA_STARTED",
        "MEASUREMENT_CREATED",
        "MEASUREMENT_STARTED",
        "SCAN_COMPLETED",
    ] {
        assert_eq!(
            after.matches(kind).count(),
            before.matches(kind).count(),
            "{kind} kept"
        );
    }
    assert_eq!(after.matches("TEST_EVENT").count(), stored_tests);
    let s = stats(&cfg);
    assert_eq!(s["shed_intermediate_results"], intermediate as u64, "{s}");
    assert!(s["stored_bytes"].as_u64().unwrap() <= 1_048_576, "{s}");
    // No room for a scan's lifecycle: refused before it starts, with an
    // event on the stream and the reason on stderr.
    let refused = bin(args(&[
        "scan",
        "--input",
        "synthetic:width=160,height=120,face_width=0.45",
    ]))
    .await
    .unwrap();
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("cannot store a new scan"),
        "{}",
        refused.stderr
    );
    let event: serde_json::Value = serde_json::from_str(refused.stdout.trim()).unwrap();
    assert_eq!(event["event"], "GENERAL_ERROR");
    assert_eq!(event["payload"]["details"], "OUTBOX_FULL");
    // The receiver comes back: sync drains, and scans are accepted again.
    let rx = verifying_receiver().await;
    let cfg = config(dir.path(), &rx.url(), 1_048_576);
    let sync = bin(vec!["sync".into(), "--config".into(), cfg.clone()])
        .await
        .unwrap();
    assert_eq!(sync.code, 0, "{}", sync.stderr);
    let again = bin(scan).await.unwrap();
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(rx.received().iter().all(|r| r.verified.is_ok()));
    assert_eq!(
        rx.received()
            .iter()
            .filter(|r| r.event == "TEST_EVENT")
            .count(),
        stored_tests,
        "every stored test event was delivered"
    );
}
