//! Helpers shared by the integration tests: the real binary with a timeout,
//! in-process scans, synthetic inputs written to temporary files.

use rppg_agent::app::scan::{run_scan, ScanOptions, ScanReport};
use rppg_agent::app::sinks::Collect;
use rppg_agent::capture::synthetic::{SyntheticParams, SyntheticSource};
use rppg_agent::capture::{Frame, FrameSource};
use rppg_agent::config::Config;
use rppg_agent::events::StampedEvent;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Output of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real binary with `args` (and optional stdin), killing it after `limit`.
pub fn run_bin(args: &[&str], stdin: Option<Vec<u8>>, limit: Duration) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rppg-agent"));
    // No configuration file from this machine's user folder either.
    cmd.args(args)
        .env_remove("RPPG_CONFIG")
        .env("XDG_CONFIG_HOME", "/nonexistent/rppg-agent-tests");
    run_command(cmd, stdin, limit)
}

/// Runs `cmd` (and optional stdin), killing it after `limit`.
pub fn run_command(mut cmd: Command, stdin: Option<Vec<u8>>, limit: Duration) -> Run {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let writer = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().unwrap();
        // The reader may stop early (an error): a broken pipe is fine.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("rppg-agent {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(w) = writer {
        w.join().unwrap();
    }
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

pub const MINUTE: Duration = Duration::from_secs(60);

/// A scan of `spec` in-process with default config; returns the report and every event.
pub fn scan(spec: &str) -> (ScanReport, Vec<StampedEvent>) {
    scan_with(spec, Config::default_config())
}

pub fn scan_with(spec: &str, mut config: Config) -> (ScanReport, Vec<StampedEvent>) {
    let mut events = Collect::default();
    let mut source = spec.parse().expect("valid spec");
    rppg_agent::app::scan_length(&mut config, &mut source, spec, None).expect("valid length");
    let opts = ScanOptions {
        source,
        config,
        device_id: "test-device".into(),
        realtime: false,
        subject: None,
        scan_id: None,
        external_id: None,
        cancel: None,
    };
    let report = run_scan(opts, &mut [&mut events], &mut |_, _| {}).expect("scan runs");
    (report, events.0)
}

/// All frames of a synthetic video.
pub fn synthetic_frames(list: &str) -> Vec<Frame> {
    let mut src = SyntheticSource::new(SyntheticParams::parse(list, list).unwrap()).unwrap();
    let mut frames = Vec::new();
    let mut f = Frame::default();
    while src.next_frame(&mut f).unwrap() {
        frames.push(f.clone());
    }
    frames
}

/// The event names in order.
pub fn names(events: &[StampedEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.name()).collect()
}

/// A loopback address nobody listens on (bound, then released): connections
/// are refused until a test starts a server there.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A real sled outbox in `dir` with room to spare.
pub fn open_outbox(dir: &std::path::Path) -> std::sync::Arc<rppg_agent::outbox::Outbox> {
    std::sync::Arc::new(
        rppg_agent::outbox::Outbox::open(rppg_agent::outbox::OutboxConfig {
            path: dir.join("outbox"),
            max_bytes: 1 << 30,
            cache_capacity_bytes: 1 << 20,
            retention_ms: 3_600_000,
        })
        .unwrap(),
    )
}

/// The events pending for `lane` in the outbox at `path` (opened after the
/// process that wrote it has exited), as JSON envelopes in emission order.
pub fn stored_events(path: &std::path::Path, lane: &str) -> Vec<serde_json::Value> {
    let outbox = rppg_agent::outbox::Outbox::open(rppg_agent::outbox::OutboxConfig {
        path: path.to_path_buf(),
        max_bytes: 1 << 30,
        cache_capacity_bytes: 1 << 20,
        retention_ms: 3_600_000,
    })
    .unwrap();
    outbox
        .due(lane, u64::MAX, usize::MAX)
        .unwrap()
        .iter()
        .map(|p| serde_json::from_slice(&p.bytes).unwrap())
        .collect()
}

/// The `(event, payload.reason)` of each stored event.
pub fn kinds_and_reasons(events: &[serde_json::Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or("").to_string(),
                e["payload"]["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}
