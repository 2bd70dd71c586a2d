//! The crash soak: the real binary stores and delivers events to a real
//! webhook receiver and a real MQTT broker while it is SIGKILLed at seeded
//! random moments, round after round; then `sync` drains what is left.
//!
//! Proven at the end: every event whose append returned (its id printed by
//! `send-test`) reached both destinations at least once; repeats carry the
//! same id; nothing is pending or dead; the database reopens cleanly.
//!
//! Where each kill landed is read from the outside, not assumed: the main
//! thread's system call at the moment of the kill (`/proc/PID/task/*/syscall`:
//! inside fsync = a flush, inside a write = an append or a send), requests
//! the receiver was still answering (mid-HTTP), and publishes the broker had
//! passed on whose PUBACK the outbox had not recorded (mid-MQTT).
//!
//! Bounded for the test run (6 rounds of up to 1.5 s). A longer soak:
//! `SOAK_ROUNDS=200 cargo test --release --test it soak -- --nocapture`
//! (`SOAK_SEED` picks another sequence of kill moments).

use crate::mqtt::{received_ids, start_broker, subscribe, wait_for_port, Listener};
use crate::util::{free_addr, run_bin, MINUTE};
use rppg_agent::app::receiver::{Receiver, Script};
use rppg_agent::delivery::signing::{parse_secret, Scheme};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the threads of `pid` were doing: the main thread's state and
/// whether any thread was inside an fsync-family call.
fn caught_doing(pid: u32) -> (String, bool) {
    let read = |tid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).unwrap_or_default()
    };
    let name = |text: &str| -> String {
        let first = text.split_whitespace().next().unwrap_or("?");
        if !cfg!(target_arch = "x86_64") {
            return first.to_string();
        }
        match first {
            "running" => "running".into(),
            "74" | "75" | "277" => "flush (fsync)".into(),
            "0" | "1" | "17" | "18" | "19" | "20" | "295" | "296" => "file or socket I/O".into(),
            "202" => "waiting (futex)".into(),
            "35" | "230" => "pacing (sleep)".into(),
            other => format!("syscall {other}"),
        }
    };
    let main = name(&read(&pid.to_string()));
    let any_flush = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .any(|t| name(&read(&t.file_name().to_string_lossy())) == "flush (fsync)");
    (main, any_flush)
}

/// `(pending, dead, delivered)` per destination, from `outbox stats --json`.
fn lanes(cfg: &str) -> HashMap<String, (u64, u64, u64)> {
    let stats = run_bin(
        &["outbox", "stats", "--json", "--config", cfg],
        None,
        MINUTE,
    );
    assert_eq!(
        stats.code, 0,
        "the database reopens cleanly: {}",
        stats.stderr
    );
    assert!(!stats.stderr.contains("damaged"), "{}", stats.stderr);
    let v: serde_json::Value = serde_json::from_str(stats.stdout.trim()).unwrap();
    v["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let n = |k: &str| d[k].as_u64().unwrap_or(0);
            (
                d["name"].as_str().unwrap().to_string(),
                (n("pending"), n("dead"), n("delivered")),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_soak_loses_no_stored_event_on_either_destination() {
    let rounds = env_u64("SOAK_ROUNDS", 6);
    let mut seed = env_u64("SOAK_SEED", 0x50AC);
    let dir = tempfile::tempdir().unwrap();
    let key = parse_secret(Scheme::Standard, SECRET).unwrap();
    // A receiver that takes 3 ms per request, so kills land mid-request.
    let rx = Receiver::start(
        Some((Scheme::Standard, vec![key])),
        Script {
            delay: Some(Duration::from_millis(3)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let broker = free_addr();
    start_broker(broker, Listener::V5);
    wait_for_port(broker).await;
    let inbox = subscribe(broker, "soak/#").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[outbox]\npath = {:?}\n[delivery]\nprobe_initial_s = 0.05\nprobe_max_s = 0.2\n\
             [[webhook]]\nname = \"hook\"\nurl = \"{}\"\nsecret_env = [\"TEST_SOAK_SECRET\"]\nallow_insecure = true\n\
             max_in_flight = 8\nretry_schedule_s = [0, 0.05, 0.2, 1, 1, 1, 1, 1]\n\
             [[mqtt]]\nname = \"broker\"\nhost = \"127.0.0.1\"\nport = {}\nallow_insecure = true\n\
             client_id = \"soak-agent\"\ntopic = \"soak/{{deviceId}}/{{event}}\"\nsecret_env = [\"TEST_SOAK_SECRET\"]\nmax_in_flight = 32\n",
            dir.path().join("outbox").display().to_string(),
            rx.url(),
            broker.port()
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    std::env::set_var("TEST_SOAK_SECRET", SECRET);

    let mut accepted: Vec<String> = Vec::new();
    let (mut kills, mut flushes, mut mid_http, mut mid_mqtt) = (0, 0, 0, 0);
    let mut main_states: HashMap<String, u32> = HashMap::new();
    let started = Instant::now();
    for round in 0..rounds {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let kill_after = Duration::from_millis(150 + (seed >> 33) % 1350);
        let ids_file = dir.path().join(format!("accepted-{round}.jsonl"));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rppg-agent"))
            .args(["send-test", "--count", "1000000", "--rate", "2000"])
            .args(["--timeout", "0", "--config", &cfg])
            .stdout(std::fs::File::create(&ids_file).unwrap())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::sleep(kill_after).await;
        let doing = caught_doing(child.id());
        let http_in_progress = rx.in_progress();
        let alive = child.try_wait().unwrap().is_none();
        if alive {
            child.kill().unwrap(); // SIGKILL
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(alive, "send-test ended by itself: {stderr}");
        assert!(!stderr.contains("damaged"), "{stderr}");
        kills += 1;
        *main_states.entry(doing.0).or_default() += 1;
        flushes += doing.1 as u32;
        mid_http += (http_in_progress > 0) as u32;
        // Every line is an event whose append returned (a kill can cut the last one short).
        let text = std::fs::read_to_string(&ids_file).unwrap();
        accepted.extend(text.lines().filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some(v["id"].as_str()?.to_string())
        }));
        // Published (the subscriber has it) but no PUBACK recorded: mid-MQTT.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let seen = received_ids(&inbox)
            .into_iter()
            .collect::<HashSet<_>>()
            .len() as u64;
        let recorded = lanes(&cfg).get("broker").map_or(0, |l| l.2);
        mid_mqtt += (seen > recorded) as u32;
    }
    // The network is fine now: drain everything.
    let sync = run_bin(
        &["sync", "--timeout", "60", "--config", &cfg],
        None,
        MINUTE * 2,
    );
    assert_eq!(sync.code, 0, "{}{}", sync.stdout, sync.stderr);
    let after = lanes(&cfg);
    for lane in ["hook", "broker"] {
        let (pending, dead, _) = after[lane];
        assert_eq!((pending, dead), (0, 0), "{lane}: the outbox is empty");
    }
    // Both destinations got every stored event; repeats keep their ids.
    let mut http: Vec<String> = rx
        .received()
        .into_iter()
        .filter_map(|r| r.webhook_id)
        .collect();
    assert!(rx.received().iter().all(|r| r.verified.is_ok()));
    let limit = Instant::now() + Duration::from_secs(20);
    let mut mqtt = received_ids(&inbox);
    let want: HashSet<&String> = accepted.iter().collect();
    while !want.iter().all(|id| mqtt.contains(id)) && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
        mqtt = received_ids(&inbox);
    }
    let lost_http: Vec<&&String> = want.iter().filter(|id| !http.contains(id)).collect();
    let lost_mqtt: Vec<&&String> = want.iter().filter(|id| !mqtt.contains(id)).collect();
    let dup = |v: &mut Vec<String>| {
        let n = v.len();
        v.sort();
        v.dedup();
        n - v.len()
    };
    let (http_dups, mqtt_dups) = (dup(&mut http), dup(&mut mqtt));
    eprintln!(
        "soak: {rounds} rounds, {kills} SIGKILLs in {:.0} s, {} stored events; \
         kills with a flush in progress {flushes}, with an HTTP request in progress {mid_http}, \
         with MQTT publishes unacknowledged {mid_mqtt}; main thread caught in {main_states:?}; \
         webhook: {} deliveries, {http_dups} repeats, {} lost; MQTT: {} messages, {mqtt_dups} repeats, {} lost",
        started.elapsed().as_secs_f64(),
        accepted.len(),
        http.len() + http_dups,
        lost_http.len(),
        mqtt.len() + mqtt_dups,
        lost_mqtt.len(),
    );
    assert!(accepted.len() > 100, "the rounds stored events");
    assert!(lost_http.is_empty(), "lost on the webhook: {lost_http:?}");
    assert!(lost_mqtt.is_empty(), "lost on MQTT: {lost_mqtt:?}");
}
