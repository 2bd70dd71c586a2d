//! Delivery with real parts: sled on disk, the lanes, a real HTTP receiver
//! on 127.0.0.1:0, and the real binary for `scan`, `sync` and `outbox`.

use crate::util::{free_addr, open_outbox, run_bin, MINUTE};
use rppg_agent::app::receiver::{Receiver, Script};
use rppg_agent::delivery::policy::RetryPolicy;
use rppg_agent::delivery::signing::{parse_secret, Scheme, Secret};
use rppg_agent::delivery::webhook::{BodyFormat, WebhookDestination};
use rppg_agent::delivery::{Delivery, Setup};
use rppg_agent::events::{Event, EventKind, Stamper};
use rppg_agent::outbox::Outbox;
use std::path::Path;
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

pub(crate) fn key() -> Secret {
    parse_secret(Scheme::Standard, SECRET).unwrap()
}

/// A destination with a fast schedule: waits of 50 ms between attempts.
pub(crate) fn destination(url: &str, attempts: usize) -> WebhookDestination {
    WebhookDestination {
        name: "hook".into(),
        url: url.parse().unwrap(),
        signing: vec![(Scheme::Standard, vec![key()])],
        events: vec![],
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        policy: RetryPolicy {
            schedule: (0..attempts)
                .map(|i| Duration::from_millis(if i == 0 { 0 } else { 50 }))
                .collect(),
            ..RetryPolicy::default()
        },
        allow_insecure: true,
        max_in_flight: 4,
        format: BodyFormat::Envelope,
    }
}

pub(crate) fn append(outbox: &Outbox, n: usize) -> Vec<String> {
    let mut st = Stamper::new("dev", "ses_test");
    (0..n)
        .map(|i| {
            let e = st.stamp(
                &Event::general_error("TEST", &format!("event {i}")),
                1_000 + i as u64,
                i as u128,
            );
            outbox.append(&e, &["hook"], now_ms()).unwrap();
            e.id
        })
        .collect()
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn probe() -> (Duration, Duration) {
    (Duration::from_millis(50), Duration::from_millis(200))
}

pub(crate) fn setup(webhooks: &[WebhookDestination]) -> Setup<'_> {
    Setup {
        webhooks,
        mqtt: &[],
        device_id: "test-device".into(),
        probe: probe(),
        first_pass_all: false,
    }
}

/// Waits (bounded) until `cond` holds.
pub(crate) async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_503_then_delivers_once_with_the_same_id_and_a_valid_signature() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let rx = Receiver::start(
        Some((Scheme::Standard, vec![key()])),
        Script {
            statuses: [503, 503].into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let ids = append(&outbox, 1);
    let d = Delivery::start(
        outbox.clone(),
        setup(&[destination(&rx.url(), 6)]),
        now_ms(),
    )
    .unwrap();
    eventually("delivery", Duration::from_secs(10), || {
        outbox.stats("hook", u64::MAX).unwrap().delivered == 1
    })
    .await;
    d.stop().await;
    let got = rx.received();
    assert_eq!(got.len(), 3, "two 503s, then 200");
    assert!(
        got.iter().all(|r| r.webhook_id.as_ref() == Some(&ids[0])),
        "same id on every retry"
    );
    assert!(
        got.iter().all(|r| r.verified.is_ok()),
        "{:?}",
        got.iter().map(|r| &r.verified).collect::<Vec<_>>()
    );
    let s = outbox.stats("hook", u64::MAX).unwrap();
    assert_eq!((s.pending, s.dead), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_dead_letters_at_once_with_the_reason_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let rx = Receiver::start(
        None,
        Script {
            statuses: [410].into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    append(&outbox, 1);
    let d = Delivery::start(
        outbox.clone(),
        setup(&[destination(&rx.url(), 6)]),
        now_ms(),
    )
    .unwrap();
    eventually("dead letter", Duration::from_secs(10), || {
        outbox.stats("hook", u64::MAX).unwrap().dead == 1
    })
    .await;
    d.stop().await;
    assert_eq!(rx.received().len(), 1, "no retry after 410");
    let dead = outbox.dead_letters(Some("hook")).unwrap();
    assert!(dead[0].3.reason.contains("410"), "{}", dead[0].3.reason);
    assert_eq!(dead[0].3.history.len(), 1);
    assert_eq!(dead[0].3.history[0].result, "HTTP 410");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausting_the_schedule_dead_letters_with_every_attempt_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let rx = Receiver::start(
        None,
        Script {
            statuses: [500, 502, 503, 504].into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    append(&outbox, 1);
    let d = Delivery::start(
        outbox.clone(),
        setup(&[destination(&rx.url(), 3)]),
        now_ms(),
    )
    .unwrap();
    eventually("dead letter", Duration::from_secs(10), || {
        outbox.stats("hook", u64::MAX).unwrap().dead == 1
    })
    .await;
    d.stop().await;
    let dead = outbox.dead_letters(Some("hook")).unwrap();
    let results: Vec<&str> = dead[0]
        .3
        .history
        .iter()
        .map(|h| h.result.as_str())
        .collect();
    assert_eq!(results, ["HTTP 500", "HTTP 502", "HTTP 503"]);
    assert!(
        dead[0].3.reason.contains("gave up after 3 attempts"),
        "{}",
        dead[0].3.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_from_a_429_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let rx = Receiver::start(
        None,
        Script {
            statuses: [429].into(),
            retry_after: Some("1".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    append(&outbox, 1);
    let started = Instant::now();
    let d = Delivery::start(
        outbox.clone(),
        setup(&[destination(&rx.url(), 6)]),
        now_ms(),
    )
    .unwrap();
    eventually("delivery", Duration::from_secs(10), || {
        outbox.stats("hook", u64::MAX).unwrap().delivered == 1
    })
    .await;
    d.stop().await;
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited only {:?}",
        started.elapsed()
    );
    assert_eq!(rx.received().len(), 2);
    let s = outbox.stats("hook", u64::MAX).unwrap();
    assert_eq!(
        (s.pending, s.dead, s.delivered),
        (0, 0, 1),
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_receiver_spends_no_attempts_and_delivery_resumes_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    // A port nobody listens on (bound, then released).
    let addr = free_addr();
    let ids = append(&outbox, 5);
    let d = Delivery::start(
        outbox.clone(),
        setup(&[destination(&format!("http://{addr}/hooks"), 2)]),
        now_ms(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let lane = d.lanes()[0].clone();
    assert!(
        lane.stats
            .offline
            .load(std::sync::atomic::Ordering::Relaxed),
        "the lane knows it is offline"
    );
    let pending = outbox.due("hook", u64::MAX, 100).unwrap();
    assert_eq!(pending.len(), 5, "nothing dead-lettered while offline");
    assert!(
        pending.iter().all(|p| p.state.attempts == 0),
        "offline spends no attempts"
    );
    // The receiver comes back on the same port.
    let rx = Receiver::start_at(
        addr,
        Some((Scheme::Standard, vec![key()])),
        Script::default(),
    )
    .await
    .unwrap();
    eventually("delivery after reconnect", Duration::from_secs(10), || {
        outbox.stats("hook", u64::MAX).unwrap().delivered == 5
    })
    .await;
    d.stop().await;
    let mut got: Vec<String> = rx
        .received()
        .into_iter()
        .filter_map(|r| r.webhook_id)
        .collect();
    got.sort();
    got.dedup();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want);
    let s = outbox.stats("hook", u64::MAX).unwrap();
    assert_eq!(
        (s.pending, s.dead, s.delivered),
        (0, 0, 5),
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_event_does_not_hold_back_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let rx = Receiver::start(
        None,
        Script {
            statuses: [500].into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    append(&outbox, 6);
    let mut dest = destination(&rx.url(), 3);
    dest.policy.schedule = vec![
        Duration::ZERO,
        Duration::from_secs(60),
        Duration::from_secs(60),
    ];
    let d = Delivery::start(outbox.clone(), setup(&[dest]), now_ms()).unwrap();
    eventually("the other five", Duration::from_secs(10), || {
        outbox.stats("hook", u64::MAX).unwrap().delivered == 5
    })
    .await;
    d.stop().await;
    let s = outbox.stats("hook", now_ms()).unwrap();
    assert_eq!(
        (s.pending, s.due_now),
        (1, 0),
        "the failed one waits for its own retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_filtered_per_destination() {
    let dest = WebhookDestination {
        events: vec![EventKind::ScanCompleted],
        ..destination("http://127.0.0.1:1/", 1)
    };
    assert!(dest.wants(EventKind::ScanCompleted));
    assert!(!dest.wants(EventKind::IntermediateResults));
}

#[test]
fn the_python_standardwebhooks_library_accepts_our_signatures() {
    // CI installs the independent reference verifier (.ci/run); elsewhere it may be absent.
    let have = std::process::Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        eprintln!("python3 with standardwebhooks is not installed here; .ci/run installs it");
        return;
    }
    let dest = destination("http://127.0.0.1:1/", 1);
    let body = br#"{"id":"evt_1","event":"SCAN_COMPLETED","payload":{"heart_rate_bpm":72.1}}"#;
    let now_s = now_ms() / 1000;
    let headers: serde_json::Map<String, serde_json::Value> = dest
        .headers("evt_01TEST", now_s, body)
        .into_iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
        .collect();
    let script = format!(
        "import json,sys\nfrom standardwebhooks import Webhook\nh=json.loads(sys.argv[1])\nprint(Webhook({SECRET:?}).verify(sys.stdin.buffer.read(), h))"
    );
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            &script,
            &serde_json::Value::Object(headers).to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SCAN_COMPLETED"));

    // The MQTT 3.1.1 envelope verifies with the same library, unchanged:
    // Webhook(secret).verify(env["body"], env["headers"]).
    let signed =
        rppg_agent::delivery::signing::sign(Scheme::Standard, &[key()], "evt_01TEST", now_s, body);
    let env = rppg_agent::delivery::signing::envelope(&signed, body);
    let script = format!(
        "import json,sys\nfrom standardwebhooks import Webhook\nenv=json.load(sys.stdin)\nprint(Webhook({SECRET:?}).verify(env['body'], env['headers']))"
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&env).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SCAN_COMPLETED"));
}

/// A config file with one webhook destination and an outbox in `dir`.
fn config_file(dir: &Path, url: &str) -> String {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[outbox]\npath = {:?}\n[delivery]\ndrain_timeout_s = 1.0\nprobe_initial_s = 0.05\nprobe_max_s = 0.2\n[[webhook]]\nname = \"hook\"\nurl = {url:?}\nsecret_env = [\"TEST_HOOK_SECRET\"]\nallow_insecure = true\nretry_schedule_s = [0, 0.05, 0.05]\n",
            dir.join("outbox").display().to_string()
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// The `id` of every JSON line printed (events, or send-test's stored ids).
fn ids_printed(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn bin_env(args: &[&str]) -> crate::util::Run {
    std::env::set_var("TEST_HOOK_SECRET", SECRET);
    run_bin(args, None, MINUTE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_while_offline_keeps_its_events_and_sync_delivers_them_later() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let cfg = config_file(dir.path(), &format!("http://{addr}/hooks"));
    let scan = bin_env(&[
        "scan",
        "--input",
        "synthetic:face=0,width=160,height=120",
        "--config",
        &cfg,
    ]);
    assert_eq!(scan.code, 3, "{}", scan.stderr);
    assert!(scan.stderr.contains("rppg-agent sync"), "{}", scan.stderr);
    let emitted = ids_printed(&scan.stdout);
    let stats = bin_env(&["outbox", "stats", "--json", "--config", &cfg]);
    let v: serde_json::Value = serde_json::from_str(stats.stdout.trim()).unwrap();
    assert_eq!(v["destinations"][0]["pending"], emitted.len(), "{v}");
    // Still offline: sync gives up with a summary and exit 3.
    let offline = bin_env(&["sync", "--timeout", "0.5", "--config", &cfg]);
    assert_eq!(offline.code, 3, "{}", offline.stderr);
    assert!(
        offline.stdout.contains("hook (offline)"),
        "{}",
        offline.stdout
    );
    // Back online: sync delivers everything and exits 0.
    let rx = Receiver::start_at(
        addr,
        Some((Scheme::Standard, vec![key()])),
        Script::default(),
    )
    .await
    .unwrap();
    let sync = tokio::task::spawn_blocking(move || {
        bin_env(&["sync", "--timeout", "20", "--config", &cfg])
    })
    .await
    .unwrap();
    assert_eq!(sync.code, 0, "{}\n{}", sync.stdout, sync.stderr);
    // Up to max_in_flight requests run at once, so arrival order may differ;
    // sessionId + sequence restore emission order, and every id arrived.
    let mut bodies: Vec<serde_json::Value> = rx
        .received()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    bodies.sort_by_key(|b| b["sequence"].as_u64());
    let got: Vec<&str> = bodies.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(got, emitted, "every event once, ordered by sequence");
    assert!(rx.received().iter().all(|r| r.verified.is_ok()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_listed_shown_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(
        None,
        Script {
            statuses: vec![410; 10].into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let cfg = config_file(dir.path(), &rx.url());
    let scan = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || {
            bin_env(&[
                "scan",
                "-q",
                "--input",
                "synthetic:face=0,width=160,height=120",
                "--config",
                &cfg,
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(scan.code, 3);
    let list = bin_env(&["outbox", "list", "--dead", "--json", "--config", &cfg]);
    let dead: serde_json::Value = serde_json::from_str(list.stdout.trim()).unwrap();
    // The four lifecycle events and the three live NO_FACE hints (2, 5, 8 s).
    let dead_of = |kind: &str| {
        dead.as_array()
            .unwrap()
            .iter()
            .filter(|d| d["event"] == kind)
            .count()
    };
    assert_eq!(dead_of("CONSTRAINT_WARNING"), 3, "{dead}");
    let n = dead.as_array().unwrap().len();
    assert_eq!(n, 4 + 3, "{dead}");
    assert!(dead[0]["reason"].as_str().unwrap().contains("410"));
    let id = dead[0]["id"].as_str().unwrap().to_string();
    let show = bin_env(&["outbox", "show", &id, "--json", "--config", &cfg]);
    let shown: serde_json::Value = serde_json::from_str(show.stdout.trim()).unwrap();
    assert_eq!(shown["destinations"][0]["state"]["status"], "dead");
    assert_eq!(shown["envelope"]["id"], id.as_str());
    let replay = bin_env(&["outbox", "replay", "--id", &id, "--config", &cfg]);
    assert!(
        replay.stdout.contains("1 dead letter(s) moved back"),
        "{}",
        replay.stdout
    );
    rx.set_script(Script::default());
    let sync = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || bin_env(&["sync", "--timeout", "20", "--config", &cfg])
    })
    .await
    .unwrap();
    assert_eq!(sync.code, 0, "{}", sync.stdout);
    assert!(
        sync.stdout
            .contains("0 pending, 6 dead-lettered, 1 delivered"),
        "{}",
        sync.stdout
    );
    // Delivered: no longer stored, but `show` finds its audit record, and
    // the audit trail lists it (also without the config's destinations).
    let show = bin_env(&["outbox", "show", &id, "--json", "--config", &cfg]);
    assert_eq!(show.code, 0, "{}", show.stderr);
    let shown: serde_json::Value = serde_json::from_str(show.stdout.trim()).unwrap();
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["destinations"][0]["state"]["status"], "delivered");
    assert!(shown["destinations"][0]["state"]["delivered"]["attempts"].as_u64() >= Some(1));
    let list = bin_env(&["outbox", "list", "--delivered", "--json", "--config", &cfg]);
    let trail: serde_json::Value = serde_json::from_str(list.stdout.trim()).unwrap();
    assert_eq!(trail.as_array().unwrap().len(), 1, "{trail}");
    assert_eq!(trail[0]["id"], id.as_str());
    assert!(
        trail[0]["status"].as_str().unwrap().contains("200"),
        "{trail}"
    );
    let text = bin_env(&["outbox", "list", "--delivered", "--config", &cfg]);
    assert!(
        text.stdout.contains(&id) && text.stdout.contains("delivered 20"),
        "{}",
        text.stdout
    );
    let unknown = bin_env(&["outbox", "show", "evt_NOPE", "--config", &cfg]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
}

#[test]
fn plain_http_needs_allow_insecure_and_secrets_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[[webhook]]\nname = \"hook\"\nurl = \"http://10.1.2.3/hooks\"\nsecrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]\nschemes = [\"standard\", \"sha1\"]\n",
    )
    .unwrap();
    let r = run_bin(&["config", "check", path.to_str().unwrap()], None, MINUTE);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("webhook[0].url") && r.stderr.contains("allow_insecure"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("schemes"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("C2FVsBQIhrsc") && !r.stdout.contains("C2FVsBQIhrsc"),
        "a secret leaked: {}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_event_whose_append_returned() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(
        Some((Scheme::Standard, vec![key()])),
        Script {
            delay: Some(Duration::from_millis(40)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let cfg = config_file(dir.path(), &rx.url());
    let log = dir.path().join("accepted.jsonl");
    std::env::set_var("TEST_HOOK_SECRET", SECRET);
    let (mut seed, rounds) = (0x5EED_u64, 5);
    let mut kills = 0;
    for _ in 0..rounds {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let kill_after = Duration::from_millis(100 + (seed >> 33) % 2500);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rppg-agent"))
            .args([
                "scan",
                "-q",
                "--input",
                "synthetic:width=320,height=240,seconds=61",
                "--seconds",
                "60",
            ])
            .args(["--config", &cfg, "--events", log.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(kill_after).await;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    let cfg2 = cfg.clone();
    let sync = tokio::task::spawn_blocking(move || {
        bin_env(&["sync", "--timeout", "30", "--config", &cfg2])
    })
    .await
    .unwrap();
    assert_eq!(
        sync.code, 0,
        "the database reopens and every lane drains: {}{}",
        sync.stdout, sync.stderr
    );
    let accepted = ids_printed(&std::fs::read_to_string(&log).unwrap_or_default());
    let received: Vec<String> = rx
        .received()
        .into_iter()
        .filter_map(|r| r.webhook_id)
        .collect();
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|id| !received.contains(id))
        .collect();
    let mut unique = received.clone();
    unique.sort();
    unique.dedup();
    eprintln!(
        "crash test: {rounds} rounds, {kills} kills, {} accepted events, {} deliveries, {} duplicates, {} lost",
        accepted.len(),
        received.len(),
        received.len() - unique.len(),
        lost.len()
    );
    assert!(kills >= 2, "the seeded delays kill most rounds mid-scan");
    assert!(!accepted.is_empty());
    assert!(lost.is_empty(), "lost events: {lost:?}");
    assert!(rx.received().iter().all(|r| r.verified.is_ok()));
    let stats = bin_env(&["outbox", "stats", "--json", "--config", &cfg]);
    let v: serde_json::Value = serde_json::from_str(stats.stdout.trim()).unwrap();
    assert_eq!(v["destinations"][0]["pending"], 0, "{v}");
}

/// Paused-time tests: tokio's clock jumps to the next timer whenever every
/// task is idle, so hours of backoff pass in milliseconds. While a real HTTP
/// request is in flight the runtime is idle too, and the clock would jump to
/// the request's timeout; this heartbeat keeps the jumps at 10 ms, so a
/// loopback request costs a few virtual milliseconds at most.
fn heartbeat() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// Waits in virtual time (bounded) until `cond` holds.
async fn eventually_virtual(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out (virtual time) waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_lane_waits_exactly_the_configured_schedule_between_attempts_then_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let rx = Receiver::start(
        None,
        Script {
            statuses: [503; 10].into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let _beat = heartbeat();
    let schedule_s = [0u64, 5, 30, 300, 1800];
    let dest = WebhookDestination {
        timeout: Duration::from_secs(3600),
        policy: RetryPolicy {
            schedule: schedule_s.iter().map(|s| Duration::from_secs(*s)).collect(),
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        ..destination(&rx.url(), 5)
    };
    append(&outbox, 1);
    let d = Delivery::start(outbox.clone(), setup(&[dest]), now_ms()).unwrap();
    eventually_virtual("the dead letter", Duration::from_secs(3 * 3600), || {
        outbox.stats("hook", u64::MAX).unwrap().dead == 1
    })
    .await;
    d.stop().await;
    let (_, _, _, dead) = outbox.dead_letters(Some("hook")).unwrap().remove(0);
    let at: Vec<u64> = dead.history.iter().map(|a| a.at_ms).collect();
    assert_eq!(at.len(), 5, "{:?}", dead.history);
    assert!(dead.history.iter().all(|a| a.result == "HTTP 503"));
    for (i, pair) in at.windows(2).enumerate() {
        let waited_ms = pair[1] - pair[0];
        let planned_ms = schedule_s[i + 1] * 1000;
        assert!(
            (planned_ms..planned_ms + 1000).contains(&waited_ms),
            "wait before attempt {}: {waited_ms} ms, schedule says {planned_ms} ms",
            i + 2
        );
    }
    assert_eq!(rx.received().len(), 5, "one request per attempt");
}

#[tokio::test(start_paused = true)]
async fn a_week_offline_spends_no_attempts_and_ends_in_delivery_not_in_the_dead_letter_store() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    // Reserve a port, then leave it closed: connections are refused.
    let addr = free_addr();
    let dest = destination(&format!("http://{addr}/hooks"), 6);
    let ids = append(&outbox, 3);
    let d = Delivery::start(
        outbox.clone(),
        Setup {
            probe: (Duration::from_secs(1), Duration::from_secs(300)),
            ..setup(std::slice::from_ref(&dest))
        },
        now_ms(),
    )
    .unwrap();
    let week = Duration::from_secs(7 * 24 * 3600);
    tokio::time::sleep(week).await;
    let offline = d.lanes()[0].stats.clone();
    assert!(offline.offline.load(std::sync::atomic::Ordering::Relaxed));
    let pending = outbox.due("hook", u64::MAX, 100).unwrap();
    assert_eq!(pending.len(), 3, "nothing dead-lettered in a week offline");
    assert!(
        pending.iter().all(|p| p.state.attempts == 0),
        "no attempts spent"
    );
    // The receiver returns on its old address.
    let rx = Receiver::start_at(addr, None, Script::default())
        .await
        .unwrap();
    let _beat = heartbeat();
    // The probe backoff is capped at 5 min: delivery follows within one probe.
    eventually_virtual("delivery after the week", Duration::from_secs(400), || {
        outbox.stats("hook", u64::MAX).unwrap().delivered == 3
    })
    .await;
    d.stop().await;
    let got: Vec<String> = rx
        .received()
        .into_iter()
        .filter_map(|r| r.webhook_id)
        .collect();
    assert!(ids.iter().all(|id| got.contains(id)));
    let s = outbox.stats("hook", u64::MAX).unwrap();
    assert_eq!((s.pending, s.dead), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fhir_destination_gets_only_completed_scans_as_signed_valid_r4_bundles() {
    use rppg_agent::events::fhir::vital_signs_violations;
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Some((Scheme::Standard, vec![key()])), Script::default())
        .await
        .unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[outbox]\npath = {:?}\n[fhir]\nsubject = \"Patient/kiosk-default\"\n[[webhook]]\nname = \"ehr\"\nurl = {:?}\nsecret_env = [\"TEST_HOOK_SECRET\"]\nallow_insecure = true\nformat = \"fhir\"\n",
            dir.path().join("outbox").display().to_string(),
            rx.url()
        ),
    )
    .unwrap();
    let cfg = path.display().to_string();
    let scan = tokio::task::spawn_blocking(move || {
        bin_env(&[
            "scan",
            "--input",
            "synthetic:hr=84,rr=16,width=320,height=240",
            "--subject",
            "Patient/42",
            "--config",
            &cfg,
            "--json",
        ])
    })
    .await
    .unwrap();
    assert_eq!(scan.code, 0, "{}", scan.stderr);
    eventually("the bundle", Duration::from_secs(10), || {
        !rx.received().is_empty()
    })
    .await;
    let got = rx.received();
    assert_eq!(
        got.len(),
        1,
        "only SCAN_COMPLETED goes to a FHIR destination"
    );
    let r = &got[0];
    assert_eq!(r.verified, Ok(()), "the signature covers the bundle bytes");
    assert!(r.webhook_id.as_deref().unwrap_or("").starts_with("evt_"));
    let bundle: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let hr = &entries[0]["resource"];
    assert_eq!(vital_signs_violations(hr, "8867-4"), Vec::<String>::new());
    assert_eq!(
        vital_signs_violations(&entries[1]["resource"], "9279-1"),
        Vec::<String>::new()
    );
    assert_eq!(
        hr["subject"]["reference"], "Patient/42",
        "the scan request's subject wins"
    );
    let value = hr["valueQuantity"]["value"].as_f64().unwrap();
    assert!((value - 84.0).abs() < 2.0, "{value}");
}

#[test]
fn scan_fhir_prints_one_valid_bundle_and_a_cancelled_scan_prints_none() {
    use rppg_agent::events::fhir::vital_signs_violations;
    let ok = run_bin(
        &[
            "scan",
            "--input",
            "synthetic:hr=66,rr=12,width=320,height=240",
            "--fhir",
            "-q",
        ],
        None,
        MINUTE,
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let bundle: serde_json::Value = serde_json::from_str(ok.stdout.trim()).unwrap();
    let obs = &bundle["entry"][0]["resource"];
    assert!(vital_signs_violations(obs, "8867-4").is_empty(), "{obs}");
    assert_eq!(obs["subject"]["display"], "anonymous kiosk user");
    let none = run_bin(
        &[
            "scan",
            "--input",
            "synthetic:pulse=0,width=160,height=120,face_width=0.45",
            "--fhir",
            "-q",
        ],
        None,
        MINUTE,
    );
    assert_eq!(none.code, 3);
    assert!(none.stdout.trim().is_empty(), "{}", none.stdout);
    assert!(
        none.stderr.contains("cancelled (LOW_SNR)"),
        "{}",
        none.stderr
    );
    // Bad FHIR destination settings are explained, each with its key.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[webhook]]\nname = \"a\"\nurl = \"https://x.example\"\nsecrets = [\"k\"]\nschemes = [\"api-key\"]\nformat = \"fhir\"\nevents = [\"LOW_SNR\"]\n[[webhook]]\nname = \"b\"\nurl = \"https://y.example\"\nsecrets = [\"k\"]\nschemes = [\"api-key\"]\nformat = \"xml\"\n",
    )
    .unwrap();
    let bad = run_bin(&["config", "check", path.to_str().unwrap()], None, MINUTE);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("webhook[0].events") && bad.stderr.contains("completed scans only"),
        "{}",
        bad.stderr
    );
    assert!(
        bad.stderr.contains("webhook[1].format") && bad.stderr.contains("\"fhir\""),
        "{}",
        bad.stderr
    );
}

/// A short scan (no face: exit 3, a few events) whose events wait in the outbox.
fn short_scan(cfg: &str) -> crate::util::Run {
    bin_env(&[
        "scan",
        "--input",
        "synthetic:face=0,width=160,height=120",
        "--config",
        cfg,
        "-q",
    ])
}

#[test]
fn a_damaged_outbox_is_moved_aside_with_its_evidence_and_a_new_one_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &format!("http://{}/hooks", free_addr()));
    let scan = || short_scan(&cfg);
    assert_eq!(scan().code, 3);
    // Open it once more (sled grows the file to a full segment), then
    // damage the database file. sled 0.34 reports this damage as corruption.
    // (Damage to a freshly written log is the other case, see below.)
    assert_eq!(bin_env(&["outbox", "stats", "--config", &cfg]).code, 0);
    let db = dir.path().join("outbox").join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    for b in bytes.iter_mut().step_by(97) {
        *b ^= 0xff;
    }
    std::fs::write(&db, &bytes).unwrap();
    // Inspection reports it and leaves it where it is.
    let stats = bin_env(&["outbox", "stats", "--config", &cfg]);
    assert_ne!(stats.code, 0);
    assert!(
        stats.stderr.contains("is damaged") && stats.stderr.contains("move it aside"),
        "{}",
        stats.stderr
    );
    assert!(db.exists());
    // A scan keeps working: the damaged database is moved aside, byte for byte.
    let again = scan();
    assert_eq!(again.code, 3, "{}", again.stderr);
    assert!(
        again.stderr.contains("moved aside to") && again.stderr.contains("nothing was deleted"),
        "{}",
        again.stderr
    );
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("outbox.damaged-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(aside[0].join("db")).unwrap(),
        bytes,
        "the evidence is kept as it was"
    );
    // The new outbox holds the new scan's events, waiting for the destination.
    let stats = bin_env(&["outbox", "stats", "--json", "--config", &cfg]);
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    let v: serde_json::Value = serde_json::from_str(stats.stdout.trim()).unwrap();
    assert!(v["destinations"][0]["pending"].as_u64().unwrap() > 0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_loses_nothing_the_log_holds_and_a_total_loss_is_not_a_success() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let cfg = config_file(dir.path(), &format!("http://{addr}/hooks"));
    let run = |args: &[&str]| tokio::task::block_in_place(|| bin_env(args));
    let sent = run(&[
        "send-test",
        "--count",
        "100",
        "--rate",
        "0",
        "--timeout",
        "0.3",
        "--config",
        &cfg,
    ]);
    assert_eq!(sent.code, 3, "{}", sent.stderr);
    let ids = ids_printed(&sent.stdout);
    assert_eq!(ids.len(), 100);
    // A sync while the receiver is down: sled writes a snapshot on the way.
    assert_eq!(run(&["sync", "--timeout", "1", "--config", &cfg]).code, 3);
    let outbox = dir.path().join("outbox");
    let snap = std::fs::read_dir(&outbox)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap.")
        })
        .expect("sled wrote a snapshot");
    // One flipped bit in the middle of it (an SD card's kind of damage).
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&snap, &bytes).unwrap();
    let rx = Receiver::start_at(
        addr,
        Some((Scheme::Standard, vec![key()])),
        Script::default(),
    )
    .await
    .unwrap();
    let sync = run(&["sync", "--timeout", "20", "--config", &cfg]);
    assert_eq!(sync.code, 0, "{}", sync.stderr);
    assert!(sync.stderr.contains("read from its log"), "{}", sync.stderr);
    let mut got: Vec<String> = rx
        .received()
        .into_iter()
        .filter_map(|r| r.webhook_id)
        .collect();
    got.sort();
    got.dedup();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want, "every event of the damaged outbox is delivered");

    // Damage beyond repair (every byte of the log and snapshot): what could
    // not be read is reported and the command does not claim success.
    let sent = run(&[
        "send-test",
        "--count",
        "5",
        "--rate",
        "0",
        "--timeout",
        "0",
        "--config",
        &cfg,
    ]);
    assert!(matches!(sent.code, 0 | 3), "{}", sent.stderr);
    drop(rx);
    for e in std::fs::read_dir(&outbox).unwrap().flatten() {
        let p = e.path();
        if p.is_file() {
            let mut b = std::fs::read(&p).unwrap();
            for x in b.iter_mut() {
                *x ^= 0xa5;
            }
            std::fs::write(&p, b).unwrap();
        }
    }
    let lost = run(&["sync", "--timeout", "0.5", "--config", &cfg]);
    assert_eq!(lost.code, 1, "{}", lost.stderr);
    assert!(
        lost.stderr.contains("could not be recovered"),
        "{}",
        lost.stderr
    );
}

#[test]
fn records_sled_drops_silently_after_damage_are_detected_and_the_survivors_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &format!("http://{}/hooks", free_addr()));
    let scan = || short_scan(&cfg);
    let pending = || {
        let stats = bin_env(&["outbox", "stats", "--json", "--config", &cfg]);
        assert_eq!(stats.code, 0, "{}", stats.stderr);
        let v: serde_json::Value = serde_json::from_str(stats.stdout.trim()).unwrap();
        v["destinations"][0]["pending"].as_u64().unwrap()
    };
    // Two scans, their events pending: the log is freshly written.
    assert_eq!(scan().code, 3);
    let first = {
        let db = dir.path().join("outbox").join("db");
        std::fs::metadata(&db).unwrap().len()
    };
    assert_eq!(scan().code, 3);
    let db = dir.path().join("outbox").join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    // Damage the second scan's records. sled takes it for a torn write and
    // drops everything from there on without an error.
    let at = (first as usize + 64).min(bytes.len() - 64);
    for b in &mut bytes[at..at + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&db, &bytes).unwrap();
    let stats = bin_env(&["outbox", "stats", "--config", &cfg]);
    assert_ne!(stats.code, 0);
    assert!(
        stats.stderr.contains("is damaged") && stats.stderr.contains("dropped records"),
        "{}",
        stats.stderr
    );
    // The next scan moves it aside, salvages what survived, and goes on.
    let again = scan();
    assert_eq!(again.code, 3, "{}", again.stderr);
    assert!(
        again.stderr.contains("moved aside to") && again.stderr.contains("were salvaged"),
        "{}",
        again.stderr
    );
    let salvaged: u64 = again
        .stderr
        .split(" readable events were salvaged")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", again.stderr));
    assert!(
        salvaged > 0,
        "the first scan's events survive: {}",
        again.stderr
    );
    let per_scan = salvaged; // the first scan's events, all of them
    assert_eq!(
        pending(),
        salvaged + per_scan,
        "salvaged plus the new scan's"
    );
    // The evidence is kept as it was found.
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("outbox.damaged-")
        })
        .expect("moved aside");
    assert!(
        std::fs::read(aside.join("db")).unwrap() == bytes,
        "the evidence is kept exactly as found"
    );
    assert!(
        !std::fs::read_dir(dir.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("salvaging")),
        "the scratch copy is removed"
    );
}
