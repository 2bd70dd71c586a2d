//! The kiosk daemon with real parts: its HTTP API on 127.0.0.1:0 in-process
//! (`daemon::serve` with a synthetic source), a real webhook receiver, and
//! the real binary stopped with SIGTERM.

use crate::util::MINUTE;
use rppg_agent::app::daemon::{ends_scan, parse_sse, serve};
use rppg_agent::app::receiver::{Receiver, Script};
use rppg_agent::config::Config;
use rppg_agent::delivery::policy::RetryPolicy;
use rppg_agent::delivery::signing::{parse_secret, Scheme};
use rppg_agent::delivery::webhook::{BodyFormat, WebhookDestination};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

pub(crate) fn http_client() -> reqwest::Client {
    rppg_agent::delivery::install_crypto_provider();
    reqwest::Client::new()
}

async fn get_text(http: &reqwest::Client, url: String) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

async fn get_json(http: &reqwest::Client, url: String) -> Value {
    http.get(url).send().await.unwrap().body_json().await
}

/// The response body as JSON (reqwest is built without its `json` feature).
trait JsonBody {
    async fn body_json(self) -> Value;
}

impl JsonBody for reqwest::Response {
    async fn body_json(self) -> Value {
        let text = self.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// `daemon::serve` on a free loopback port, until [`Daemon::stop`].
struct Daemon {
    base: String,
    stop_tx: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<
        Result<rppg_agent::app::daemon::Summary, rppg_agent::app::AppError>,
    >,
}

impl Daemon {
    async fn start(cfg: Config) -> Daemon {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(cfg, listener, async {
            let _ = stop_rx.await;
        }));
        Daemon {
            base,
            stop_tx,
            task,
        }
    }

    /// Asks it to shut down and waits (at most 20 s) for its summary.
    async fn stop(self) -> rppg_agent::app::daemon::Summary {
        self.stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }
}

fn config(dir: &std::path::Path, realtime: bool) -> Config {
    let mut c = Config::default_config();
    c.outbox.path = dir.join("outbox").display().to_string();
    c.run.input = "synthetic:hr=78,rr=14,width=320,height=240".into();
    c.run.realtime = realtime;
    c.run.shutdown_drain_s = 3.0;
    c.scan.duration_s = 12.0;
    c.scan.min_duration_s = 10.0;
    c.api.listen = "127.0.0.1:0".into();
    c
}

fn hook(url: &str) -> WebhookDestination {
    WebhookDestination {
        name: "backend".into(),
        url: url.parse().unwrap(),
        signing: vec![(
            Scheme::Standard,
            vec![parse_secret(Scheme::Standard, SECRET).unwrap()],
        )],
        events: vec![],
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(3),
        policy: RetryPolicy::default(),
        allow_insecure: true,
        max_in_flight: 4,
        format: BodyFormat::Envelope,
    }
}

/// Reads an SSE response until `done` holds for the parsed events (bounded).
async fn read_sse(
    resp: &mut reqwest::Response,
    limit: Duration,
    done: impl Fn(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let start = Instant::now();
    let mut text = String::new();
    loop {
        let events = parse_sse(&text);
        if done(&events) {
            return events;
        }
        let left = limit.saturating_sub(start.elapsed());
        assert!(!left.is_zero(), "SSE: timed out; got {events:?}");
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
            Ok(Ok(None)) => panic!("SSE stream ended; got {:?}", parse_sse(&text)),
            Ok(Err(e)) => panic!("SSE: {e}"),
            Err(_) => panic!("SSE: timed out; got {:?}", parse_sse(&text)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_starts_a_scan_streams_its_events_refuses_a_second_and_cancels_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(
        Some((
            Scheme::Standard,
            vec![parse_secret(Scheme::Standard, SECRET).unwrap()],
        )),
        Script::default(),
    )
    .await
    .unwrap();
    let mut cfg = config(dir.path(), false);
    cfg.webhook = vec![hook(&rx.url())];
    let daemon = Daemon::start(cfg).await;
    let base = daemon.base.clone();
    let http = http_client();

    let health: Value = get_json(&http, format!("{base}/healthz")).await;
    assert_eq!(health["status"], "ok");
    let mut events = http.get(format!("{base}/v1/events")).send().await.unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");

    // Start; a second start while it runs is refused with the running id.
    let started = http
        .post(format!("{base}/v1/scans"))
        .header("content-type", "application/json")
        .body(r#"{"subject":"Patient/7"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 201);
    let id = started.body_json().await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let busy = http.post(format!("{base}/v1/scans")).send().await.unwrap();
    assert_eq!(busy.status(), 409);
    assert_eq!(busy.body_json().await["current"], id.as_str());

    // The kiosk screen sees the whole lifecycle, live.
    let seen = read_sse(&mut events, MINUTE, |e| e.iter().any(|(n, _)| ends_scan(n))).await;
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..3],
        [
            "CAMERA_STARTED",
            "MEASUREMENT_CREATED",
            "MEASUREMENT_STARTED"
        ]
    );
    assert_eq!(*names.last().unwrap(), "SCAN_COMPLETED", "{names:?}");
    assert!(names.contains(&"INTERMEDIATE_RESULTS"));
    let completed = &seen.last().unwrap().1;
    assert_eq!(completed["payload"]["subject"], "Patient/7");

    // The scan's state and result.
    let start = Instant::now();
    let rec = loop {
        let r: Value = get_json(&http, format!("{base}/v1/scans/{id}")).await;
        if r["state"] != "running" {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rec["state"], "completed");
    let hr = rec["result"]["heart_rate_bpm"].as_f64().unwrap();
    assert!((hr - 78.0).abs() < 3.0, "{hr}");
    let unknown = http
        .get(format!("{base}/v1/scans/scn_nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    // Every event reached the backend, signed; metrics show it.
    let start = Instant::now();
    while rx.received().len() < seen.len() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the backend got {} of {}",
            rx.received().len(),
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rx.received().iter().all(|r| r.verified.is_ok()));
    // The receiver counts a request before the lane records its ack: wait for the counter.
    let delivered = format!(
        "rppg_delivered_total{{destination=\"backend\"}} {}",
        seen.len()
    );
    let start = Instant::now();
    let metrics = loop {
        let m = get_text(&http, format!("{base}/metrics")).await;
        if m.contains(&delivered) || start.elapsed() > Duration::from_secs(10) {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for needle in [
        "rppg_scans_total{status=\"completed\"} 1",
        "rppg_outbox_pending{destination=\"backend\"} 0",
        &format!(
            "rppg_delivered_total{{destination=\"backend\"}} {}",
            seen.len()
        ),
        &format!(
            "rppg_delivery_latency_seconds_count{{destination=\"backend\"}} {}",
            seen.len()
        ),
        "rppg_scan_running 0",
    ] {
        assert!(metrics.contains(needle), "{needle} in\n{metrics}");
    }
    let frames: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rppg_frames_processed_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(frames > 300, "{frames}");

    // A second scan, cancelled from the kiosk.
    let second = http
        .post(format!("{base}/v1/scans"))
        .header("content-type", "application/json")
        .body(r#"{"seconds": 60}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 201);
    let id2 = second.body_json().await["id"].as_str().unwrap().to_string();
    read_sse(&mut events, MINUTE, |e| {
        e.iter().any(|(n, _)| n == "MEASUREMENT_STARTED")
    })
    .await;
    let cancel = http
        .delete(format!("{base}/v1/scans/current"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 202);
    let seen = read_sse(&mut events, MINUTE, |e| {
        e.iter().any(|(n, _)| n == "MEASUREMENT_CANCELED")
    })
    .await;
    let cancelled = &seen
        .iter()
        .find(|(n, _)| n == "MEASUREMENT_CANCELED")
        .unwrap()
        .1;
    assert_eq!(cancelled["payload"]["reason"], "REQUESTED");
    let start = Instant::now();
    loop {
        let r: Value = get_json(&http, format!("{base}/v1/scans/{id2}")).await;
        if r["state"] == "cancelled" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        http.delete(format!("{base}/v1/scans/current"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // Bad requests are explained.
    let bad = http
        .post(format!("{base}/v1/scans"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad = http
        .post(format!("{base}/v1/scans"))
        .header("content-type", "application/json")
        .body(r#"{"seconds":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        http.get(format!("{base}/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let summary = daemon.stop().await;
    assert_eq!((summary.scans, summary.pending), (2, 0));
}

/// One raw HTTP/1.1 exchange (exact headers, no client rewriting them):
/// the status and the body.
fn raw(addr: &str, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_cannot_drive_the_api_and_untyped_or_oversized_bodies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), false);
    cfg.api.allowed_origins = vec!["https://kiosk-ui.example.org".into()];
    let daemon = Daemon::start(cfg).await;
    let addr = daemon.base.trim_start_matches("http://").to_string();
    let req = |method: &str, headers: &str, body: &str| {
        format!(
            "{method} /v1/scans HTTP/1.1\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let rq = addr.clone();
    let ask = move |text: String| {
        let a = rq.clone();
        async move {
            tokio::task::spawn_blocking(move || raw(&a, &text))
                .await
                .unwrap()
        }
    };
    let host = format!("Host: {addr}\r\n");
    for (what, request, want, says) in [
        (
            "a page on another site, as a simple (unpreflighted) request",
            req("POST", &format!("{host}Origin: https://evil.example\r\nContent-Type: text/plain\r\n"), "{}"),
            403,
            "web page",
        ),
        (
            "DNS rebinding: a foreign name for 127.0.0.1",
            "GET /healthz HTTP/1.1\r\nHost: rebind.evil.example:8686\r\nConnection: close\r\n\r\n".to_string(),
            403,
            "not this machine",
        ),
        (
            "DNS rebinding on a write",
            req("POST", "Host: rebind.evil.example\r\nContent-Type: application/json\r\n", "{}"),
            403,
            "not this machine",
        ),
        (
            "a sandboxed page (Origin: null)",
            format!("GET /v1/scans/current HTTP/1.1\r\n{host}Origin: null\r\nConnection: close\r\n\r\n"),
            403,
            "web page",
        ),
        (
            "a body that does not say it is JSON",
            req("POST", &format!("{host}Content-Type: text/plain\r\n"), "{\"seconds\":30}"),
            415,
            "application/json",
        ),
        (
            "a form post (curl -d without a type)",
            req("POST", &format!("{host}Content-Type: application/x-www-form-urlencoded\r\n"), "{}"),
            415,
            "application/json",
        ),
        (
            "a 200 KB body",
            req("POST", &format!("{host}Content-Type: application/json\r\n"), &format!("{{\"subject\":\"{}\"}}", "x".repeat(200_000))),
            413,
            "larger than 65536",
        ),
        (
            "this machine's own page",
            format!("GET /healthz HTTP/1.1\r\n{host}Origin: http://localhost:3000\r\nConnection: close\r\n\r\n"),
            200,
            "\"ok\"",
        ),
        (
            "an allowed origin",
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\nOrigin: https://kiosk-ui.example.org\r\nConnection: close\r\n\r\n".to_string(),
            200,
            "\"ok\"",
        ),
    ] {
        let (status, body) = ask(request).await;
        assert_eq!(status, want, "{what}: {body}");
        assert!(body.contains(says), "{what}: {body}");
    }
    // Nothing above started a scan.
    let health: Value = get_json(&http_client(), format!("{}/healthz", daemon.base)).await;
    assert_eq!(health["scan_running"], false);
    let summary = daemon.stop().await;
    assert_eq!(summary.scans, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_requests_are_shed_after_the_header_timeout_while_health_still_answers() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(config(dir.path(), false)).await;
    let addr = daemon.base.trim_start_matches("http://").to_string();
    let a = addr.clone();
    let held = tokio::task::spawn_blocking(move || {
        (0..100)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(&a).unwrap();
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: loc").unwrap();
                s
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let (status, _) = tokio::task::spawn_blocking(move || {
        raw(
            &addr,
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "health answers beside 100 half-open requests");
    // Each half-open request is closed by the server (EOF or a 408) within
    // the header timeout plus a margin.
    let closed = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        held.into_iter()
            .filter(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut buf = Vec::new();
                let ended = s.read_to_end(&mut buf).is_ok();
                ended && start.elapsed() < Duration::from_secs(20)
            })
            .count()
    })
    .await
    .unwrap();
    assert_eq!(closed, 100);
    daemon.stop().await;
}

/// SIGTERM to `child`, then its exit status (within 20 s).
fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU time (user + system) of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_file_descriptors_the_daemon_backs_off_instead_of_spinning_and_recovers() {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\ninput = \"synthetic:width=160,height=120\"\n[api]\nlisten = \"127.0.0.1:0\"\n[outbox]\npath = {:?}\n",
            dir.path().join("outbox").display().to_string()
        ),
    )
    .unwrap();
    let (mut child, addr, _, lines) = spawn_run_with(cfg.to_str().unwrap(), |cmd| {
        // SAFETY: setrlimit(2) between fork and exec touches no shared state.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 256,
                    rlim_max: 256,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    // 300 half-open requests: more than the process may hold open.
    let held: Vec<std::net::TcpStream> = (0..300)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: loc").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(child.id());
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(child.id()) - before;
    // 100 ticks per second: spinning would be about 200 in 2 s.
    assert!(
        spent < 60,
        "{spent} ticks of CPU in 2 s with 300 half-open sockets"
    );
    // Health answers within the header timeout and a margin.
    let start = Instant::now();
    let (status, _) = raw(
        &addr,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    drop(held);
    let status = terminate(&mut child);
    let log = log.join().unwrap();
    assert_eq!(status.code(), Some(0), "{log:?}");
    let warnings = log.iter().filter(|l| l.contains("backing off")).count();
    assert!(warnings <= 20, "{warnings} back-off warnings: {log:?}");
}

/// Sets the file-size limit of process `pid` (RLIMIT_FSIZE, soft limit):
/// past it, writes that grow a file fail (EFBIG) as on a full disk.
fn limit_file_size(pid: u32, bytes: u64) {
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit(2) on our own child with a valid struct.
    let rc = unsafe {
        libc::prlimit(
            libc::pid_t::try_from(pid).unwrap(),
            libc::RLIMIT_FSIZE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn a_disk_that_fills_then_frees_heals_without_a_restart_and_health_says_so_meanwhile() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let dead = crate::util::free_addr();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[run]\ninput = \"synthetic:width=160,height=120,face_width=0.45\"\nshutdown_drain_s = 0.2\n\
             [api]\nlisten = \"127.0.0.1:0\"\n[outbox]\npath = {:?}\n[scan]\nduration_s = 10.0\nmin_duration_s = 5.0\n\
             [[webhook]]\nname = \"later\"\nurl = \"http://{dead}/h\"\nsecrets = [\"{SECRET}\"]\nallow_insecure = true\n",
            dir.path().join("outbox").display().to_string()
        ),
    )
    .unwrap();
    let (mut child, addr, _, lines) = spawn_run_with(cfg.to_str().unwrap(), |cmd| {
        // SAFETY: signal(2) between fork and exec: a write past the
        // file-size limit then fails with EFBIG instead of killing the process.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    });
    let pid = child.id();
    let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let get = |path: &str| {
        raw(
            &addr,
            &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        )
    };
    let post = || {
        raw(
            &addr,
            "POST /v1/scans HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
    };
    let wait_until = |what: &str, done: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(60), "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let scan_ends = |id: &str| -> String {
        let mut state = String::new();
        wait_until("the scan ends", &|| {
            let (_, body) = get(&format!("/v1/scans/{id}"));
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            v["state"] != "running"
        });
        let (_, body) = get(&format!("/v1/scans/{id}"));
        let v: Value = serde_json::from_str(&body).unwrap();
        state.push_str(v["state"].as_str().unwrap());
        state
    };
    let id_of = |body: &str| -> String {
        let v: Value = serde_json::from_str(body).unwrap();
        v["id"].as_str().unwrap().to_string()
    };
    // A scan on a healthy disk.
    let (status, body) = post();
    assert_eq!(status, 201, "{body}");
    assert_eq!(scan_ends(&id_of(&body)), "completed");
    // The disk "fills": no file may grow any more.
    limit_file_size(pid, 0);
    let (status, body) = post();
    if status == 201 {
        assert_eq!(scan_ends(&id_of(&body)), "failed");
    } else {
        assert_eq!(status, 507, "{body}");
    }
    let (status, body) = get("/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"degraded\""), "{body}");
    let (status, body) = post();
    assert_eq!(
        status, 507,
        "a scan whose events cannot be stored is refused: {body}"
    );
    // Space again: health recovers and scans complete, without a restart.
    limit_file_size(pid, libc::RLIM_INFINITY);
    wait_until("health recovers", &|| get("/healthz").0 == 200);
    let (status, body) = post();
    assert_eq!(status, 201, "{body}");
    assert_eq!(scan_ends(&id_of(&body)), "completed");
    let status = terminate(&mut child);
    let log = log.join().unwrap();
    assert_eq!(status.code(), Some(0), "{log:#?}");
    assert!(
        log.iter().any(|l| l.contains("the outbox works again")),
        "{log:#?}"
    );
    // The two completed scans are stored and wait for the destination.
    let stored = crate::util::stored_events(&dir.path().join("outbox"), "later");
    let completed = stored
        .iter()
        .filter(|e| e["event"] == "SCAN_COMPLETED")
        .count();
    assert_eq!(
        completed,
        2,
        "{:?}",
        crate::util::kinds_and_reasons(&stored)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_input_that_stalls_ends_its_scan_and_the_next_scan_can_start() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("camera.y4m");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) on a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut cfg = config(dir.path(), false);
    cfg.run.input = fifo.display().to_string();
    let daemon = Daemon::start(cfg).await;
    let base = daemon.base.clone();
    let http = http_client();
    let mut events = http.get(format!("{base}/v1/events")).send().await.unwrap();
    // A writer that sends a header and a few frames, then hangs.
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let writer_path = fifo.clone();
    let writer = std::thread::spawn(move || {
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(writer_path)
            .unwrap();
        w.write_all(b"YUV4MPEG2 W64 H48 F30:1 C420jpeg\n").unwrap();
        for _ in 0..10 {
            w.write_all(b"FRAME\n").unwrap();
            w.write_all(&[90u8; 64 * 48 * 3 / 2]).unwrap();
        }
        let _ = hold_rx.recv_timeout(Duration::from_secs(60));
    });
    let started = http.post(format!("{base}/v1/scans")).send().await.unwrap();
    assert_eq!(started.status(), 201);
    let id = started.body_json().await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t0 = Instant::now();
    let seen = read_sse(&mut events, Duration::from_secs(30), |e| {
        e.iter().any(|(n, _)| n == "MEASUREMENT_CANCELED")
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    let error = seen.iter().find(|(n, _)| n == "GENERAL_ERROR").unwrap();
    assert_eq!(error.1["payload"]["details"], "INPUT_STALLED");
    let start = Instant::now();
    loop {
        let r: Value = get_json(&http, format!("{base}/v1/scans/{id}")).await;
        if r["state"] != "running" {
            assert_eq!(r["state"], "failed", "{r}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No scan is stuck: the next one is accepted (and stalls in turn, as
    // nobody writes the FIFO now; its wait for a first byte is bounded).
    hold_tx.send(()).unwrap();
    writer.join().unwrap();
    let next = http.post(format!("{base}/v1/scans")).send().await.unwrap();
    assert_eq!(next.status(), 201);
    let id2 = next.body_json().await["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    loop {
        let r: Value = get_json(&http, format!("{base}/v1/scans/{id2}")).await;
        if r["state"] != "running" {
            assert!(r["error"].as_str().unwrap().contains("stalled"), "{r}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let summary = daemon.stop().await;
    assert_eq!(summary.scans, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_request_needs_it_and_a_wrong_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var(
        "TEST_DAEMON_API_TOKEN",
        "a-long-random-test-token-0123456789",
    );
    let mut cfg = config(dir.path(), false);
    cfg.api.token_env = "TEST_DAEMON_API_TOKEN".into();
    let daemon = Daemon::start(cfg).await;
    let base = daemon.base.clone();
    let http = http_client();
    let none = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let wrong = http
        .get(format!("{base}/metrics"))
        .bearer_auth("a-long-random-test-token-0123456788")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // The scheme is case-insensitive.
    let lower = http
        .get(format!("{base}/healthz"))
        .header(
            "authorization",
            "bearer a-long-random-test-token-0123456789",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200);
    // With a token, any Host is fine (the token is the proof).
    let addr = base.trim_start_matches("http://");
    let (status, _) = raw(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: kiosk-7.clinic.lan:8686\r\nAuthorization: Bearer a-long-random-test-token-0123456789\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    let right = http
        .get(format!("{base}/healthz"))
        .bearer_auth("a-long-random-test-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let body = right.text().await.unwrap();
    assert!(!body.contains("a-long-random"), "the token is never echoed");
    daemon.stop().await;

    // A short token is refused at start, naming the variable.
    std::env::set_var("TEST_DAEMON_SHORT_TOKEN", "short");
    let mut cfg = config(dir.path(), false);
    cfg.api.token_env = "TEST_DAEMON_SHORT_TOKEN".into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = serve(cfg, listener, async {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("TEST_DAEMON_SHORT_TOKEN") && err.contains("16"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kiosk_screen_gets_live_throttled_hints_on_sse_before_a_cancellation_that_says_what_was_seen(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), false);
    // A person too far away: a face of about 48 px at 320×240.
    cfg.run.input = "synthetic:width=320,height=240,face_width=0.15,photo=016".into();
    let daemon = Daemon::start(cfg).await;
    let base = daemon.base.clone();
    let http = http_client();
    let mut events = http.get(format!("{base}/v1/events")).send().await.unwrap();
    let started = http.post(format!("{base}/v1/scans")).send().await.unwrap();
    assert_eq!(started.status(), 201);
    let seen = read_sse(&mut events, MINUTE, |e| e.iter().any(|(n, _)| ends_scan(n))).await;
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    let hints: Vec<&Value> = seen
        .iter()
        .filter(|(n, _)| n == "CONSTRAINT_WARNING")
        .map(|(_, e)| e)
        .collect();
    // Raised after 0.5 s and repeated every 3 s while it holds: a handful
    // over the 10 s wait, not one per frame.
    let small = hints
        .iter()
        .filter(|h| {
            h["payload"]["constraint"] == "FACE_TOO_SMALL" && h["payload"]["status"] == "ACTIVE"
        })
        .count();
    assert!(
        (2..=5).contains(&small),
        "{small} FACE_TOO_SMALL hints in {names:?}"
    );
    let first = hints[0];
    assert_eq!(first["severity"], "WARN");
    assert_eq!(first["payload"]["advice"], "step closer to the camera");
    assert!(first["payload"]["message"]
        .as_str()
        .unwrap()
        .contains("the minimum is 56 px"));
    // The hints come before the cancellation, which says what was seen.
    let failed_at = names
        .iter()
        .position(|n| *n == "FAILED_INIT_BLOOD_FLOW")
        .expect("NO_FACE");
    let first_hint = names
        .iter()
        .position(|n| *n == "CONSTRAINT_WARNING")
        .unwrap();
    assert!(first_hint < failed_at, "{names:?}");
    let failed = &seen[failed_at].1["payload"];
    assert_eq!(failed["constraint"], "FACE_TOO_SMALL");
    assert!(
        failed["message"].as_str().unwrap().starts_with("a face "),
        "{failed}"
    );
    daemon.stop().await;
}

/// The real binary running `run --config cfg`: the child, the API address
/// (from the "listening" log line), the log lines before it, and the rest of
/// its log to read on.
pub(crate) fn spawn_run(cfg: &str) -> Running {
    spawn_run_with(cfg, |_| {})
}

/// What [`spawn_run`] returns.
pub(crate) type Running = (
    std::process::Child,
    String,
    Vec<String>,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
);

/// As [`spawn_run`], with `setup` applied to the command first (limits,
/// signal dispositions for the child).
pub(crate) fn spawn_run_with(cfg: &str, setup: impl FnOnce(&mut std::process::Command)) -> Running {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rppg-agent"));
    cmd.args(["run", "--config", cfg])
        .env_remove("RPPG_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    setup(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let line = lines.next().expect("the daemon logs its address").unwrap();
        if let Some(a) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
        {
            break a.to_string();
        }
        seen.push(line);
        assert!(seen.len() < 30, "no addr= in {seen:?}");
    };
    (child, addr, seen, lines)
}

#[test]
fn sigterm_or_sighup_cancels_the_running_scan_for_shutdown_stores_it_and_exits_0() {
    for signal in [libc::SIGTERM, libc::SIGHUP] {
        stop_the_daemon_with(signal);
    }
}

fn stop_the_daemon_with(signal: libc::c_int) {
    let dir = tempfile::tempdir().unwrap();
    // An unreachable destination: events stay pending in the outbox, where we can read them.
    let dead_port = crate::util::free_addr();
    let cfg_path = dir.path().join("agent.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[run]\ninput = \"synthetic:width=160,height=120,face_width=0.45\"\nrealtime = true\nshutdown_drain_s = 0.5\n[api]\nlisten = \"127.0.0.1:0\"\n[outbox]\npath = {:?}\n[delivery]\nprobe_initial_s = 0.05\nprobe_max_s = 0.2\n[[webhook]]\nname = \"later\"\nurl = \"http://{dead_port}/hooks\"\nsecrets = [\"{SECRET}\"]\nallow_insecure = true\n",
            dir.path().join("outbox").display().to_string()
        ),
    )
    .unwrap();
    let cfg = cfg_path.to_str().unwrap();
    let (mut child, addr, seen, lines) = spawn_run(cfg);
    assert!(
        seen.iter()
            .any(|l| l.contains("WARN") && l.contains("unencrypted")),
        "an insecure destination is warned about: {seen:?}"
    );
    let log =
        std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = http_client();
        let r = http
            .post(format!("http://{addr}/v1/scans"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        // Let the (real-time) scan get going.
        let start = Instant::now();
        loop {
            let m = get_text(&http, format!("http://{addr}/metrics")).await;
            if m.contains("rppg_events_emitted_total 3")
                || m.contains("rppg_events_emitted_total 4")
            {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{m}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid; no memory is shared.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "did not stop within 20 s of signal {signal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = log.join().unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    // A shutdown is not a user's cancel.
    assert!(log.contains("reason=\"SHUTDOWN\""), "{log}");
    assert!(!log.contains(SECRET), "secrets never reach the log");
    // The cancellation is durable and waits for the destination.
    let list = crate::util::run_bin(&["outbox", "list", "--json", "--config", cfg], None, MINUTE);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(
        list.stdout.contains("MEASUREMENT_CANCELED"),
        "{}",
        list.stdout
    );
    let stored = crate::util::stored_events(&dir.path().join("outbox"), "later");
    let ends = crate::util::kinds_and_reasons(&stored);
    assert!(
        ends.contains(&("MEASUREMENT_CANCELED".into(), "SHUTDOWN".into())),
        "{ends:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_face_starts_a_scan_by_itself_and_an_empty_scene_does_not() {
    for (input, expect_scan) in [
        ("synthetic:hr=70,width=320,height=240", true),
        ("synthetic:face=0,width=160,height=120,seconds=600", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), false);
        cfg.run.input = input.into();
        cfg.run.auto_start_steady_s = 1.0;
        cfg.run.auto_start_cooldown_s = 3600.0;
        let daemon = Daemon::start(cfg).await;
        let base = daemon.base.clone();
        let http = http_client();
        let mut events = http.get(format!("{base}/v1/events")).send().await.unwrap();
        if expect_scan {
            let seen = read_sse(&mut events, MINUTE, |e| e.iter().any(|(n, _)| ends_scan(n))).await;
            assert_eq!(seen.last().unwrap().0, "SCAN_COMPLETED", "{input}");
        } else {
            // Watch an empty scene for a while: frames are read, no scan starts.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let m = get_text(&http, format!("{base}/metrics")).await;
            assert!(m.contains("rppg_events_emitted_total 0"), "{m}");
            assert!(m.contains("rppg_scan_running 0"), "{m}");
        }
        let summary = daemon.stop().await;
        assert_eq!(summary.scans, u64::from(expect_scan), "{input}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_carries_the_scan_id_and_external_id_and_a_screen_that_reconnects_replays_what_it_missed(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), false);
    // A backend that is down: the events wait in the outbox.
    let down = format!("http://{}/hooks", crate::util::free_addr());
    cfg.webhook = vec![hook(&down)];
    let outbox_path = cfg.outbox.path.clone();
    let daemon = Daemon::start(cfg).await;
    let base = daemon.base.clone();
    let http = http_client();
    let post = |body: &'static str| {
        http.post(format!("{base}/v1/scans"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // Unknown or malformed fields are refused, naming what is wrong.
    for (body, needle) in [
        (r#"{"secs":5}"#, "unknown field \"secs\""),
        (r#"{"externalId":"visit-é"}"#, "printable ASCII"),
        (r#"{"externalId":7}"#, "externalId"),
        (r#"[1]"#, "JSON object"),
    ] {
        let r = post(body).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let why = r.body_json().await["error"].as_str().unwrap().to_string();
        assert!(why.contains(needle), "{body}: {why}");
    }
    let started = post(r#"{"externalId":"visit-42","subject":"Patient/7","seconds":10}"#)
        .await
        .unwrap();
    assert_eq!(started.status(), 201);
    let id = started.body_json().await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let start = Instant::now();
    while get_json(&http, format!("{base}/v1/scans/{id}")).await["state"] == "running" {
        assert!(start.elapsed() < MINUTE);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A screen that opens after the scan ended asks for everything kept.
    let mut all = http
        .get(format!("{base}/v1/events?since="))
        .send()
        .await
        .unwrap();
    let replayed = read_sse(&mut all, MINUTE, |e| e.iter().any(|(n, _)| ends_scan(n))).await;
    let names: Vec<&str> = replayed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[0], "CAMERA_STARTED", "{names:?}");
    assert_eq!(*names.last().unwrap(), "SCAN_COMPLETED", "{names:?}");
    for (name, e) in &replayed {
        assert_eq!(e["scanId"], id.as_str(), "{name}");
        assert_eq!(e["externalId"], "visit-42", "{name}");
        assert_eq!(e["subject"], "Patient/7", "{name}");
    }
    // An EventSource that reconnects sends Last-Event-ID: only what follows.
    let third = replayed[2].1["id"].as_str().unwrap().to_string();
    let mut resumed = http
        .get(format!("{base}/v1/events"))
        .header("last-event-id", &third)
        .send()
        .await
        .unwrap();
    let rest = read_sse(&mut resumed, MINUTE, |e| {
        e.iter().any(|(n, _)| ends_scan(n))
    })
    .await;
    let ids = |v: &[(String, Value)]| -> Vec<String> {
        v.iter()
            .map(|(_, e)| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&rest), ids(&replayed)[3..].to_vec());
    // Without either, only live events (none now): the stream stays open, empty.
    let mut live = http.get(format!("{base}/v1/events")).send().await.unwrap();
    let first = tokio::time::timeout(Duration::from_millis(500), live.chunk()).await;
    let text = String::from_utf8_lossy(&first.unwrap().unwrap().unwrap()).to_string();
    assert!(parse_sse(&text).is_empty(), "{text}");
    // The outbox can be inspected while the daemon holds it; not changed.
    let file = dir.path().join("inspect.toml");
    std::fs::write(&file, format!("[outbox]\npath = {outbox_path:?}\n")).unwrap();
    let file = file.display().to_string();
    // The binary, off the runtime's threads (the daemon runs on them).
    let outbox_command = |args: &[&str]| {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend(["--config".to_string(), file.clone()]);
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            crate::util::run_bin(&args, None, MINUTE)
        })
    };
    let list = outbox_command(&["outbox", "list", "--json"]).await.unwrap();
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(
        list.stderr.contains("a copy taken just now"),
        "{}",
        list.stderr
    );
    let pending: Value = serde_json::from_str(list.stdout.trim()).unwrap();
    let listed: Vec<&str> = pending
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    for id in ids(&replayed) {
        assert!(listed.contains(&id.as_str()), "{id} not in {listed:?}");
    }
    let purge = outbox_command(&["outbox", "purge", "--dead", "--yes"])
        .await
        .unwrap();
    assert_eq!(purge.code, 2, "{}", purge.stderr);
    assert!(
        purge.stderr.contains("stop that agent first"),
        "{}",
        purge.stderr
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("inspecting"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_that_cannot_be_opened_is_reported_by_health_and_refused_before_a_scan_starts() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("later.y4m");
    let mut cfg = config(dir.path(), false);
    cfg.run.input = video.display().to_string();
    let daemon = Daemon::start(cfg).await;
    let base = daemon.base.clone();
    let http = http_client();
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    let health = health.body_json().await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["input"]["ok"], false);
    assert!(
        health["input"]["error"]
            .as_str()
            .unwrap()
            .contains("later.y4m"),
        "{health}"
    );
    let refused = http.post(format!("{base}/v1/scans")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.body_json().await["error"]
        .as_str()
        .unwrap()
        .contains("cannot be opened"));
    // The file appears: health says so after the re-check interval.
    let frames = crate::util::synthetic_frames("hr=72,width=160,height=120,seconds=1");
    std::fs::write(&video, rppg_agent::capture::y4m::encode_420(&frames, 30)).unwrap();
    let start = Instant::now();
    loop {
        let r = http.get(format!("{base}/healthz")).send().await.unwrap();
        if r.status() == 200 {
            assert_eq!(r.body_json().await["input"]["ok"], true);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "still {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_answer_of_the_running_daemon() {
    use rppg_agent::app::openapi::response_schema;
    use rppg_agent::events::schema::violations;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(config(dir.path(), false)).await;
    let base = daemon.base.clone();
    let http = http_client();
    let doc = get_json(&http, format!("{base}/openapi.json")).await;
    assert_eq!(doc, rppg_agent::app::openapi::document());
    assert_eq!(doc["openapi"], "3.1.0");
    // Each answer: its status is documented for the operation, and a JSON
    // body matches the documented schema.
    let check = |path: &str, method: &str, status: u16, body: &str| {
        let documented = response_schema(&doc, path, method, status).unwrap_or_else(|| {
            panic!("{method} {path} answered {status}, which is not documented")
        });
        if let Some(schema) = documented {
            let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
            let found = violations(&doc, &schema, &v);
            assert!(found.is_empty(), "{method} {path} {status}: {found:?}\n{v}");
        }
    };
    let send = |req: reqwest::RequestBuilder| async move {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    };
    let (s, b) = send(http.get(format!("{base}/healthz"))).await;
    check("/healthz", "get", s, &b);
    let post = |body: &'static str| {
        http.post(format!("{base}/v1/scans"))
            .header("content-type", "application/json")
            .body(body)
    };
    let (s, b) = send(post(
        r#"{"seconds":10,"externalId":"visit-9","subject":"Patient/9"}"#,
    ))
    .await;
    assert_eq!(s, 201, "{b}");
    check("/v1/scans", "post", s, &b);
    let id = serde_json::from_str::<Value>(&b).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for body in [r#"{"seconds":10}"#, r#"{"secs":10}"#, "nope"] {
        let (s, b) = send(post(body)).await;
        check("/v1/scans", "post", s, &b);
    }
    let (s, b) = send(
        http.post(format!("{base}/v1/scans"))
            .header("content-type", "text/plain")
            .body("x"),
    )
    .await;
    assert_eq!(s, 415);
    check("/v1/scans", "post", s, &b);
    let (s, b) = send(http.get(format!("{base}/v1/scans/{id}"))).await;
    check("/v1/scans/{id}", "get", s, &b);
    let start = Instant::now();
    loop {
        let (s, b) = send(http.get(format!("{base}/v1/scans/{id}"))).await;
        check("/v1/scans/{id}", "get", s, &b);
        if !b.contains("\"running\"") {
            assert!(b.contains("\"completed\""), "{b}");
            break;
        }
        assert!(start.elapsed() < MINUTE);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (method, path) in [
        ("delete", "/v1/scans/current"),
        ("get", "/v1/scans/scn_nope"),
    ] {
        let url = format!("{base}{path}");
        let req = if method == "delete" {
            http.delete(url)
        } else {
            http.get(url)
        };
        let (s, b) = send(req).await;
        assert_eq!(s, 404);
        let documented = if method == "delete" {
            path
        } else {
            "/v1/scans/{id}"
        };
        check(documented, method, s, &b);
    }
    let (s, b) = send(http.get(format!("{base}/metrics"))).await;
    check("/metrics", "get", s, &b);
    // Every event on the stream fits the Event schema.
    let mut events = http
        .get(format!("{base}/v1/events?since="))
        .send()
        .await
        .unwrap();
    let seen = read_sse(&mut events, MINUTE, |e| e.iter().any(|(n, _)| ends_scan(n))).await;
    let event_schema = doc.pointer("/components/schemas/Event").unwrap();
    assert!(seen.len() > 5);
    for (name, e) in &seen {
        let found = violations(&doc, event_schema, e);
        assert!(found.is_empty(), "{name}: {found:?}\n{e}");
    }
    // Every documented path answers (not 404).
    for path in doc["paths"].as_object().unwrap().keys() {
        let url = format!("{base}{}", path.replace("{id}", "current"));
        let r = if path == "/v1/events" {
            http.get(&url).send().await.unwrap().status().as_u16()
        } else {
            send(http.get(&url)).await.0
        };
        assert!(
            r != 404 || path.contains("/v1/scans/"),
            "{path} is documented but answers 404"
        );
    }
    daemon.stop().await;
}
