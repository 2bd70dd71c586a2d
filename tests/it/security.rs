//! Secrets stay secret: a webhook signing key, an API key, an MQTT password
//! and the local API's bearer token, each a recognisable canary, go through
//! every command that prints, logs, errs or stores (config check, scan,
//! send-test, sync, the outbox commands, the daemon with its log), and the
//! captured output and every byte of the outbox are searched for them.
//! Replays and tampering are refused by `verify` from a shell.

use crate::util::{free_addr, run_bin, MINUTE};
use rppg_agent::app::receiver::{Receiver, Script};
use rppg_agent::config::Config;
use rppg_agent::delivery::signing::{parse_secret, sign, Scheme};
use std::path::Path;
use std::time::Duration;

/// `whsec_` + base64 of "LEAKCANARYhooksecret01".
const HOOK_SECRET: &str = "whsec_TEVBS0NBTkFSWWhvb2tzZWNyZXQwMQ==";
const API_KEY: &str = "apikey-LEAKCANARY-5f2a9";
const MQTT_PASSWORD: &str = "mqttpw-LEAKCANARY-77";
const API_TOKEN: &str = "apitoken-LEAKCANARY-0123456789";

/// What must never be seen: each secret as written, the signing key's
/// bytes, and the credentials a destination URL carries.
const CANARIES: [&str; 6] = [
    "TEVBS0NBTkFSWWhvb2tzZWNyZXQwMQ",
    "LEAKCANARYhooksecret01",
    "apikey-LEAKCANARY",
    "mqttpw-LEAKCANARY",
    "apitoken-LEAKCANARY",
    "URLCANARY",
];

fn assert_clean(what: &str, text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    for c in CANARIES {
        assert!(!text.contains(c), "{what} leaks {c}:\n{text}");
    }
}

fn set_secret_env() {
    std::env::set_var("TEST_SEC_HOOK", HOOK_SECRET);
    std::env::set_var("TEST_SEC_MQTT_PW", MQTT_PASSWORD);
    std::env::set_var("TEST_SEC_API_TOKEN", API_TOKEN);
}

fn config_text(dir: &Path, hook_url: &str, broker_port: u16) -> String {
    let dead = free_addr();
    format!(
        "[run]\ninput = \"synthetic:width=160,height=120,face_width=0.45\"\nrealtime = false\nshutdown_drain_s = 0.2\n\
         [api]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"TEST_SEC_API_TOKEN\"\n\
         [outbox]\npath = {:?}\n[delivery]\ndrain_timeout_s = 0.5\nprobe_initial_s = 0.05\nprobe_max_s = 0.2\n\
         [[webhook]]\nname = \"signed\"\nurl = {hook_url:?}\nsecret_env = [\"TEST_SEC_HOOK\"]\nallow_insecure = true\nretry_schedule_s = [0, 0.05]\n\
         [[webhook]]\nname = \"keyed\"\nurl = {hook_url:?}\nschemes = [\"standard\", \"api-key\"]\nsecret_env = [\"TEST_SEC_HOOK\"]\napi_key = {API_KEY:?}\nallow_insecure = true\nretry_schedule_s = [0, 0.05]\n\
         [[webhook]]\nname = \"creds\"\nurl = \"http://kiosk:URLCANARY-pass@{dead}/h?token=URLCANARY-tok\"\nsecret_env = [\"TEST_SEC_HOOK\"]\nallow_insecure = true\nretry_schedule_s = [0, 0.05]\n\
         [[mqtt]]\nname = \"broker\"\nhost = \"127.0.0.1\"\nport = {broker_port}\nallow_insecure = true\nusername = \"kiosk\"\npassword_env = \"TEST_SEC_MQTT_PW\"\nsecret_env = [\"TEST_SEC_HOOK\"]\n",
        dir.join("outbox").display().to_string()
    )
}

/// Every file under `dir`, concatenated.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else {
            out.extend(std::fs::read(p).unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_output_logs_errors_debug_or_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    set_secret_env();
    // A receiver that refuses everything (errors get printed) and a broker that is down.
    let rx = Receiver::start(
        None,
        Script {
            statuses: std::iter::repeat_n(500, 10_000).collect(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let text = config_text(dir.path(), &rx.url(), free_addr().port());
    let cfg_path = dir.path().join("agent.toml");
    std::fs::write(&cfg_path, &text).unwrap();
    let cfg = cfg_path.display().to_string();

    // Debug of the loaded configuration.
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = Config::load(Some(("agent.toml", &text)), env.into_iter()).unwrap();
    assert_clean("Debug of Config", format!("{config:?}").as_bytes());

    let mut runs: Vec<(String, crate::util::Run)> = Vec::new();
    fn bin(runs: &mut Vec<(String, crate::util::Run)>, args: &[&str]) {
        let r = tokio::task::block_in_place(|| run_bin(args, None, MINUTE));
        runs.push((args.join(" "), r));
    }
    bin(&mut runs, &["config", "check", &cfg]);
    bin(
        &mut runs,
        &[
            "scan",
            "--input",
            "synthetic:width=160,height=120,face_width=0.45",
            "--config",
            &cfg,
        ],
    );
    bin(
        &mut runs,
        &[
            "send-test",
            "--count",
            "3",
            "--timeout",
            "1",
            "--config",
            &cfg,
        ],
    );
    bin(&mut runs, &["sync", "--timeout", "1", "--config", &cfg]);
    bin(&mut runs, &["outbox", "stats", "--config", &cfg]);
    bin(&mut runs, &["outbox", "list", "--config", &cfg]);
    bin(&mut runs, &["outbox", "list", "--dead", "--config", &cfg]);
    let first = runs
        .iter()
        .find(|(a, _)| a.starts_with("outbox list --config"))
        .and_then(|(_, r)| {
            r.stdout
                .split_whitespace()
                .find(|w| w.starts_with("evt_"))
                .map(String::from)
        })
        .expect("an event in the outbox");
    bin(&mut runs, &["outbox", "show", &first, "--config", &cfg]);
    // A secret in a malformed form is not echoed in the error about it.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[webhook]]\nname = \"x\"\nurl = \"https://example.com/h\"\nsecrets = [\"whsec_LEAKCANARYhooksecret01!!\"]\n",
    )
    .unwrap();
    bin(&mut runs, &["config", "check", bad.to_str().unwrap()]);
    // A secret pasted where a variable name belongs, or as a string where
    // a list belongs, or as the MQTT password's variable.
    for (name, text) in [
        ("pasted.toml", "[[webhook]]\nname = \"x\"\nurl = \"https://example.com/h\"\nsecret_env = [\"whsec_TEVBS0NBTkFSWWhvb2tzZWNyZXQwMQ==\"]\n"),
        ("string.toml", "[[webhook]]\nname = \"x\"\nurl = \"https://example.com/h\"\nsecret_env = \"whsec_TEVBS0NBTkFSWWhvb2tzZWNyZXQwMQ==\"\n"),
        ("inline.toml", "[[webhook]]\nname = \"x\"\nurl = \"https://example.com/h\"\nsecrets = \"whsec_TEVBS0NBTkFSWWhvb2tzZWNyZXQwMQ==\"\n"),
        ("mqttpw.toml", "[[mqtt]]\nname = \"x\"\nhost = \"h\"\nallow_insecure = true\npassword_env = \"mqttpw-LEAKCANARY-77\"\nsecrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]\n"),
        ("creds.toml", "[[webhook]]\nname = \"x\"\nurl = \"http://u:URLCANARY@example.com/h?k=URLCANARY\"\nsecrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]\n"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        bin(&mut runs, &["config", "check", path.to_str().unwrap()]);
    }
    for (args, r) in &runs {
        assert_clean(&format!("`{args}` stdout"), r.stdout.as_bytes());
        assert_clean(&format!("`{args}` stderr"), r.stderr.as_bytes());
    }
    // The runs did what they should (so the search above saw real output).
    let code = |part: &str| runs.iter().find(|(a, _)| a.contains(part)).unwrap().1.code;
    assert_eq!(code("agent.toml"), 0, "config check");
    // Refused twice, send-test's events are dead-lettered: not a success.
    assert_eq!(code("send-test"), 4, "refused events are not a success");
    assert_eq!(
        code("sync"),
        3,
        "the credentialed destination stays offline"
    );
    assert_eq!(code("outbox show"), 0);
    for bad in [
        "bad.toml",
        "pasted.toml",
        "string.toml",
        "inline.toml",
        "mqttpw.toml",
        "creds.toml",
    ] {
        assert_eq!(code(bad), 2, "{bad}");
    }

    // Inspection needs none of the secrets.
    for args in [["outbox", "stats"], ["outbox", "list"]] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rppg-agent"));
        cmd.args(args)
            .args(["--config", &cfg])
            .env_remove("RPPG_CONFIG")
            .env_remove("TEST_SEC_HOOK")
            .env_remove("TEST_SEC_MQTT_PW")
            .env_remove("TEST_SEC_API_TOKEN");
        let r = tokio::task::block_in_place(|| crate::util::run_command(cmd, None, MINUTE));
        assert_eq!(r.code, 0, "{args:?} without secrets: {}", r.stderr);
        assert!(r.stdout.contains("creds"), "{args:?}: {}", r.stdout);
    }

    // The keyed destination's x-api-key is its own key, never the signing
    // secret; the signed one sends no x-api-key at all.
    let received = rx.received();
    assert!(!received.is_empty());
    for r in &received {
        let api_key = r
            .headers
            .iter()
            .find(|(k, _)| k == "x-api-key")
            .map(|(_, v)| v.as_str());
        assert!(api_key.is_none_or(|k| k == API_KEY), "{api_key:?}");
        let all: String = r
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\n"))
            .collect();
        assert!(!all.contains("TEVBS0NBTkFSWWhvb2tzZWNyZXQwMQ"), "{all}");
    }
    assert!(received.iter().any(|r| r
        .headers
        .iter()
        .any(|(k, v)| k == "x-api-key" && v == API_KEY)));

    // The daemon: its log, and its answers.
    let (mut child, addr, mut log, lines) = crate::daemon::spawn_run(&cfg);
    let http = crate::daemon::http_client();
    let mut answers = Vec::new();
    for path in ["/healthz", "/metrics", "/v1/scans"] {
        let r = http
            .get(format!("http://{addr}{path}"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        answers.push(r.text().await.unwrap());
    }
    let refused = http
        .get(format!("http://{addr}/metrics"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    answers.push(refused.text().await.unwrap());
    let started = http
        .post(format!("http://{addr}/v1/scans"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 201);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(status.success());
    log.extend(lines.map_while(Result::ok));
    assert!(
        log.iter().any(|l| l.contains("WARN")),
        "the daemon logged: {log:?}"
    );
    assert_clean("the daemon's log", log.join("\n").as_bytes());
    for a in &answers {
        assert_clean("an API answer", a.as_bytes());
    }

    // The outbox stores events, never what signs or authenticates them.
    let stored = all_bytes(&dir.path().join("outbox"));
    assert!(stored.len() > 10_000, "the outbox holds the runs' events");
    assert_clean("the outbox files", &stored);
}

#[test]
fn verify_refuses_a_replay_outside_the_tolerance_and_any_tampered_byte() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("TEST_SEC_VERIFY", HOOK_SECRET);
    let key = parse_secret(Scheme::Standard, HOOK_SECRET).unwrap();
    let body = br#"{"event":"SCAN_COMPLETED","id":"evt_1"}"#.to_vec();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body_file = dir.path().join("body.json");
    let check = |ts: u64, body: &[u8], signed_ts: u64| {
        std::fs::write(&body_file, body).unwrap();
        let headers = sign(
            Scheme::Standard,
            std::slice::from_ref(&key),
            "evt_1",
            signed_ts,
            br#"{"event":"SCAN_COMPLETED","id":"evt_1"}"#,
        );
        let mut args: Vec<String> = vec![
            "verify".into(),
            "--secret-env".into(),
            "TEST_SEC_VERIFY".into(),
            "--body".into(),
            body_file.display().to_string(),
        ];
        for (k, v) in headers {
            let v = if k == "webhook-timestamp" {
                ts.to_string()
            } else {
                v
            };
            args.push("-H".into());
            args.push(format!("{k}: {v}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_bin(&args, None, MINUTE)
    };
    let ok = check(now, &body, now);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    // Replayed ten minutes later: the signature is right but too old.
    let old = now - 600;
    let replay = check(old, &body, old);
    assert_eq!(replay.code, 3);
    assert!(
        replay.stdout.contains("outside the 300 s tolerance"),
        "{}",
        replay.stdout
    );
    // A fresh timestamp on an old signature: the signature no longer matches.
    let moved = check(now, &body, old);
    assert_eq!(moved.code, 3);
    assert!(moved.stdout.contains("invalid"), "{}", moved.stdout);
    // One changed byte in the body.
    let mut tampered = body.clone();
    tampered[10] ^= 0x20;
    let t = check(now, &tampered, now);
    assert_eq!(t.code, 3, "{}", t.stdout);
    assert!(t.stdout.starts_with("invalid:"), "{}", t.stdout);
    assert_clean(
        "verify output",
        format!("{}{}{}", ok.stdout, replay.stdout, t.stdout).as_bytes(),
    );
}
