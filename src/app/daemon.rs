//! `run`: the kiosk daemon.
//!
//! Owns: the long-running process a kiosk, a Pi scanner or a telehealth cart
//! runs all day — delivery lanes always on, one scan at a time (on request
//! or, with `run.auto_start_steady_s`, when a face has been steady), and a
//! local HTTP API for the kiosk screen and for monitoring:
//!
//! | request | answer |
//! |---|---|
//! | `POST /v1/scans` (`{"subject":"Patient/1","seconds":30}`, both optional) | 201 `{"id","state":"running"}`; 409 while a scan runs; 507 when the outbox is full |
//! | `DELETE /v1/scans/current` | 202, the scan ends with MEASUREMENT_CANCELED (reason REQUESTED); 404 if none |
//! | `GET /v1/scans/{id}` | `{"id","state","result"}`: running, completed, cancelled or failed; `result` is the `scan --json` object |
//! | `GET /v1/events` | Server-Sent Events: every event as it is emitted (`event:` name, `id:` event id, `data:` envelope) |
//! | `GET /healthz` | 200 `{"status":"ok",...}` |
//! | `GET /metrics` | Prometheus text: frames, drops, scans, outbox depth and delivery counters per destination, latency histogram |
//! | `GET /openapi.json` | this table as OpenAPI 3.1 ([`super::openapi`]) |
//!
//! Access: bound to loopback by default and then serves loopback clients
//! only. With `api.token_env` set, every request needs
//! `Authorization: Bearer <token>` (compared in constant time); a
//! non-loopback `api.listen` without a token is a configuration error.
//!
//! Shutdown (SIGTERM/SIGINT, or the future passed to [`serve`]): stop
//! accepting, cancel a running scan (its MEASUREMENT_CANCELED is stored),
//! deliver for up to `run.shutdown_drain_s`, stop the lanes, flush the
//! outbox. Whatever is still pending is delivered after the next start.
//!
//! Invariants: at most one scan runs; every event of a scan is durable in
//! the outbox before it is shown on `/v1/events`; secrets and tokens never
//! reach a log line or a response.

use super::scan::{run_scan, CancelRequest, ScanOptions};
use super::sinks::OutboxSink;
use super::{deliver, device_id, unix_ms, AppError};
use crate::capture::{Frame, SourceSpec};
use crate::config::Config;
use crate::delivery::signing::ct_eq;
use crate::delivery::webhook::LATENCY_BUCKETS_S;
use crate::delivery::Lane;
use crate::events::{ulid, EventKind, EventSink, SinkError, StampedEvent};
use crate::measurement::CancelReason;
use crate::outbox::Outbox;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame as BodyFrame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

/// Scans whose state `GET /v1/scans/{id}` can still answer.
const KEEP_SCANS: usize = 64;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Where a scan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanState {
    Running,
    Completed,
    Cancelled,
    Failed,
}

impl ScanState {
    fn name(self) -> &'static str {
        match self {
            ScanState::Running => "running",
            ScanState::Completed => "completed",
            ScanState::Cancelled => "cancelled",
            ScanState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone)]
struct ScanRecord {
    id: String,
    state: ScanState,
    started_unix_ms: u64,
    result: Value,
    error: Option<String>,
}

struct Running {
    id: String,
    cancel: Arc<CancelRequest>,
    thread: std::thread::JoinHandle<()>,
}

#[derive(Default)]
struct State {
    current: Option<Running>,
    scans: VecDeque<ScanRecord>,
    /// When the last scan ended (Unix ms), for the auto-start cool-down.
    last_end_ms: u64,
}

/// Process-wide counters for `/metrics`.
#[derive(Debug, Default)]
struct Metrics {
    frames: AtomicU64,
    frames_dropped: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    /// Frames per second of video processed by the last scan, ×1000.
    last_fps_milli: AtomicU64,
    events: AtomicU64,
}

struct Shared {
    config: Config,
    outbox: Arc<Outbox>,
    lanes: Vec<Lane>,
    events: broadcast::Sender<Arc<StampedEvent>>,
    /// The events of the current and the last scan, for SSE replay.
    recent: Mutex<Recent>,
    /// The last check of `run.input`: when (Unix ms) and what it found.
    input: Mutex<(u64, Result<(), String>)>,
    state: Mutex<State>,
    metrics: Metrics,
    token: Option<String>,
    started_unix_ms: u64,
}

/// Why a scan could not start.
#[derive(Debug, PartialEq, Eq)]
pub enum StartError {
    Busy {
        id: String,
    },
    OutboxFull,
    /// The outbox cannot store events (a storage error that has not healed).
    Storage(String),
    /// The input (`run.input`) cannot be opened: no camera, a missing file.
    Input(String),
}

/// How long a failed input check stands before a health check or a scan
/// request checks again.
const INPUT_RECHECK_MS: u64 = 5_000;

/// Whether `spec` can be opened, without taking anything from it: a camera
/// is opened and closed; a file or folder must exist (a FIFO is not opened:
/// that would block, or take a writer's frames); standard input and
/// synthetic sources are always ready.
pub fn probe_input(spec: &SourceSpec) -> Result<(), String> {
    match spec {
        SourceSpec::Synthetic(_) => Ok(()),
        SourceSpec::Y4m(path) if path.as_os_str() == "-" => Ok(()),
        SourceSpec::Y4m(path) => match std::fs::metadata(path) {
            Ok(m) if m.is_file() => std::fs::File::open(path)
                .map(drop)
                .map_err(|e| format!("{}: {e}", path.display())),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        },
        SourceSpec::Frames { dir, .. } if dir.is_dir() => Ok(()),
        SourceSpec::Frames { dir, .. } => Err(format!("{}: not a folder", dir.display())),
        SourceSpec::Camera(_) => crate::capture::open(spec)
            .map(drop)
            .map_err(|e| e.to_string()),
    }
}

/// The body of `POST /v1/scans` (every field optional; any other field is
/// refused, so a misspelt `secs` is not silently a 30 s scan).
#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScanRequest {
    /// Who is measured (`Patient/123`): in every event and the FHIR subject.
    pub subject: Option<String>,
    /// Scan length, 5..3600 s (default `scan.duration_s`).
    pub seconds: Option<f64>,
    /// The caller's correlation id, in every event of the scan.
    pub external_id: Option<String>,
}

impl ScanRequest {
    /// The fields a request may have.
    pub const FIELDS: [&'static str; 3] = ["subject", "seconds", "externalId"];

    /// Parses and checks a request body; the error says what is wrong in
    /// the caller's terms.
    pub fn parse(body: &[u8]) -> Result<ScanRequest, String> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let Some(object) = value.as_object() else {
            return Err("the body must be a JSON object, e.g. {\"seconds\": 30}".into());
        };
        if let Some(unknown) = object.keys().find(|k| !Self::FIELDS.contains(&k.as_str())) {
            return Err(format!(
                "unknown field {unknown:?}; the fields are {}",
                Self::FIELDS.join(", ")
            ));
        }
        let request: ScanRequest = serde_json::from_value(value).map_err(|e| {
            format!("{e}; subject and externalId are strings, seconds a number from 5 to 3600")
        })?;
        if let Some(s) = request.seconds {
            if !(5.0..=3600.0).contains(&s) {
                return Err("seconds must be a number from 5 to 3600".into());
            }
        }
        for (what, v) in [
            ("subject", &request.subject),
            ("externalId", &request.external_id),
        ] {
            if let Some(v) = v {
                crate::events::check_correlation(what, v)?;
            }
        }
        Ok(request)
    }
}

/// Fans events out to the SSE clients (after the outbox sink made them
/// durable) and keeps them for replay.
struct Broadcast {
    tx: broadcast::Sender<Arc<StampedEvent>>,
    shared: Arc<Shared>,
    scan_id: String,
}

impl EventSink for Broadcast {
    fn accept(&mut self, event: &StampedEvent) -> Result<(), SinkError> {
        self.shared.metrics.events.fetch_add(1, Ordering::Relaxed);
        let event = Arc::new(event.clone());
        // Kept before it is sent: a client that subscribes and then reads
        // the replay misses nothing (it skips what it has seen by id).
        self.shared
            .recent
            .lock()
            .expect("recent lock")
            .push(&self.scan_id, event.clone());
        // No subscriber is fine: the kiosk screen may not be open.
        let _ = self.tx.send(event);
        Ok(())
    }
}

/// Events kept per scan for replay; a longer scan keeps its newest.
const REPLAY_PER_SCAN: usize = 8192;

/// The events of the current and the last scan, oldest first, so a kiosk
/// screen that reconnects (`Last-Event-ID`) or opens late sees the whole
/// scan, and the previous one's result.
#[derive(Default)]
struct Recent {
    scans: VecDeque<(String, VecDeque<Arc<StampedEvent>>)>,
}

impl Recent {
    fn push(&mut self, scan_id: &str, event: Arc<StampedEvent>) {
        if self.scans.back().is_none_or(|(id, _)| id != scan_id) {
            self.scans.push_back((scan_id.to_string(), VecDeque::new()));
            while self.scans.len() > 2 {
                self.scans.pop_front();
            }
        }
        let (_, events) = self.scans.back_mut().expect("just pushed");
        if events.len() == REPLAY_PER_SCAN {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// Kept events with an id after `last_id` (ids are ULIDs: ordered by
    /// time), oldest first.
    fn after(&self, last_id: &str) -> Vec<Arc<StampedEvent>> {
        self.scans
            .iter()
            .flat_map(|(_, events)| events.iter())
            .filter(|e| e.id.as_str() > last_id)
            .cloned()
            .collect()
    }
}

impl Shared {
    fn record(&self, id: &str) -> Option<ScanRecord> {
        let st = self.state.lock().expect("state lock");
        st.scans.iter().find(|r| r.id == id).cloned()
    }

    fn is_running(&self) -> bool {
        self.state.lock().expect("state lock").current.is_some()
    }

    /// The input's state: the last check's, checked again (blocking) when
    /// `recheck` and it failed more than [`INPUT_RECHECK_MS`] ago. While a
    /// scan runs the input is in use and its last state stands.
    fn input_health(&self, recheck: bool) -> Result<(), String> {
        let (at, last) = self.input.lock().expect("input lock").clone();
        let stale = unix_ms().saturating_sub(at) >= INPUT_RECHECK_MS;
        if last.is_ok() || !recheck || !stale || self.is_running() {
            return last;
        }
        self.check_input()
    }

    /// Checks `run.input` now and records the answer.
    fn check_input(&self) -> Result<(), String> {
        let found = match self.config.run.input.parse::<SourceSpec>() {
            Ok(spec) => probe_input(&spec),
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = &found {
            tracing::warn!(input = %self.config.run.input, error = %why, "the input cannot be opened");
        }
        *self.input.lock().expect("input lock") = (unix_ms(), found.clone());
        found
    }

    /// Records what opening the input found (a scan or the face watcher did).
    fn input_seen(&self, found: Result<(), String>) {
        *self.input.lock().expect("input lock") = (unix_ms(), found);
    }

    /// Starts a scan on its own thread.
    fn start_scan(self: &Arc<Self>, request: ScanRequest) -> Result<String, StartError> {
        let ScanRequest {
            subject,
            seconds,
            external_id,
        } = request;
        let mut st = self.state.lock().expect("state lock");
        if let Some(r) = &st.current {
            return Err(StartError::Busy { id: r.id.clone() });
        }
        if let Err(why) = self.outbox.health() {
            tracing::warn!(error = %why, "scan refused: the outbox cannot store events");
            return Err(StartError::Storage(why));
        }
        if let Err(why) = self.input_health(true) {
            return Err(StartError::Input(why));
        }
        if !self.outbox.has_room_for(super::SCAN_LIFECYCLE_BYTES) {
            let full = crate::outbox::OutboxError::Full {
                used: self.outbox.stored_bytes(),
                max: self.config.outbox.max_bytes,
                kind: "a new scan",
            };
            tracing::warn!(error = %full, "scan refused");
            // The kiosk screen learns why over SSE; the event cannot be stored.
            let _ = self
                .events
                .send(Arc::new(super::outbox_full_event(&self.config, &full)));
            return Err(StartError::OutboxFull);
        }
        let id = format!("scn_{}", ulid(unix_ms(), super::random_u128()));
        let cancel = Arc::new(CancelRequest::default());
        let mut config = self.config.clone();
        let mut source: SourceSpec = config
            .run
            .input
            .parse()
            .expect("run.input was validated at start");
        if let Some(s) = seconds {
            config.scan.duration_s = s;
            config.scan.min_duration_s = config.scan.min_duration_s.min(s);
        }
        if let SourceSpec::Synthetic(p) = &mut source {
            // A synthetic kiosk subject stays in front of the camera for the whole scan.
            p.seconds = p.seconds.max(config.scan.duration_s + 2.0);
        }
        let opts = ScanOptions {
            source,
            device_id: device_id(&config),
            realtime: config.run.realtime,
            config,
            subject,
            scan_id: Some(id.clone()),
            external_id,
            cancel: Some(cancel.clone()),
        };
        st.scans.push_back(ScanRecord {
            id: id.clone(),
            state: ScanState::Running,
            started_unix_ms: unix_ms(),
            result: Value::Null,
            error: None,
        });
        while st.scans.len() > KEEP_SCANS {
            st.scans.pop_front();
        }
        let shared = self.clone();
        let scan_id = id.clone();
        let thread = std::thread::Builder::new()
            .name("scan".into())
            .spawn(move || shared.scan_thread(&scan_id, opts))
            .expect("a thread can be started");
        st.current = Some(Running {
            id: id.clone(),
            cancel,
            thread,
        });
        tracing::info!(scan = %id, input = %self.config.run.input, "scan started");
        Ok(id)
    }

    fn scan_thread(self: &Arc<Self>, id: &str, opts: ScanOptions) {
        let mut outbox_sink = OutboxSink {
            outbox: self.outbox.clone(),
            lanes: self.lanes.clone(),
        };
        let mut live = Broadcast {
            tx: self.events.clone(),
            shared: self.clone(),
            scan_id: id.to_string(),
        };
        let mut sinks: Vec<&mut dyn EventSink> = vec![&mut outbox_sink, &mut live];
        let metrics = &self.metrics;
        let report = run_scan(opts, &mut sinks, &mut |_, e| {
            if e.is_none() {
                metrics.frames.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Outside the state lock: a failed scan may probe the camera.
        let (state, result, error) = match report {
            Ok(r) => {
                // It opened; a stall or an end is a scan's fate, not the input's state.
                self.input_seen(Ok(()));
                self.metrics
                    .frames_dropped
                    .fetch_add(r.frames_dropped, Ordering::Relaxed);
                if r.processing_time_ms > 0 {
                    let fps = r.result.frames as f64 * 1000.0 / r.processing_time_ms as f64;
                    self.metrics
                        .last_fps_milli
                        .store((fps * 1000.0) as u64, Ordering::Relaxed);
                }
                let state = if r.cancelled.is_some() {
                    self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                    ScanState::Cancelled
                } else {
                    self.metrics.completed.fetch_add(1, Ordering::Relaxed);
                    ScanState::Completed
                };
                tracing::info!(scan = %id, state = state.name(), reason = r.cancelled.map(|c| c.code()), "scan ended");
                (state, r.to_json(), None)
            }
            Err(e) => {
                self.metrics.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(scan = %id, error = %e, "scan failed");
                if matches!(e, AppError::Capture(_)) {
                    // Whether it cannot be opened now (unplugged), or only
                    // this scan's stream failed (a stalled pipe).
                    let _ = self.check_input();
                }
                (ScanState::Failed, Value::Null, Some(e.to_string()))
            }
        };
        let mut st = self.state.lock().expect("state lock");
        if let Some(rec) = st.scans.iter_mut().find(|r| r.id == id) {
            rec.state = state;
            rec.result = result;
            rec.error = error;
        }
        st.last_end_ms = unix_ms();
        if st.current.as_ref().is_some_and(|r| r.id == id) {
            // The handle is dropped, not joined: this is the thread itself.
            st.current = None;
        }
    }

    /// Asks the running scan to stop for `reason`; returns its id.
    fn cancel_current(&self, reason: CancelReason) -> Option<String> {
        let st = self.state.lock().expect("state lock");
        st.current.as_ref().map(|r| {
            r.cancel.request(reason);
            r.id.clone()
        })
    }

    /// Waits (bounded) for the running scan's thread to end.
    fn wait_for_scan(&self, limit: Duration) -> bool {
        let start = std::time::Instant::now();
        loop {
            let running = self
                .state
                .lock()
                .expect("state lock")
                .current
                .as_ref()
                .map(|r| r.thread.is_finished());
            match running {
                None | Some(true) => return true,
                Some(false) if start.elapsed() >= limit => return false,
                Some(false) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// The Prometheus text of `/metrics`.
fn metrics_text(shared: &Shared) -> String {
    use std::fmt::Write as _;
    let m = &shared.metrics;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let plain = |v: u64| vec![(String::new(), v.to_string())];
    metric(
        "rppg_frames_processed_total",
        "counter",
        "Frames processed by scans.",
        plain(m.frames.load(Ordering::Relaxed)),
    );
    metric(
        "rppg_frames_dropped_total",
        "counter",
        "Frames the camera hand-off dropped because vision was behind.",
        plain(m.frames_dropped.load(Ordering::Relaxed)),
    );
    metric(
        "rppg_processing_fps",
        "gauge",
        "Frames per second of processing in the last scan.",
        vec![(
            String::new(),
            format!(
                "{:.1}",
                m.last_fps_milli.load(Ordering::Relaxed) as f64 / 1000.0
            ),
        )],
    );
    metric(
        "rppg_scans_total",
        "counter",
        "Scans by how they ended.",
        vec![
            (
                "{status=\"completed\"}".into(),
                m.completed.load(Ordering::Relaxed).to_string(),
            ),
            (
                "{status=\"cancelled\"}".into(),
                m.cancelled.load(Ordering::Relaxed).to_string(),
            ),
            (
                "{status=\"failed\"}".into(),
                m.failed.load(Ordering::Relaxed).to_string(),
            ),
        ],
    );
    metric(
        "rppg_scan_running",
        "gauge",
        "1 while a scan runs.",
        plain(u64::from(shared.is_running())),
    );
    metric(
        "rppg_events_emitted_total",
        "counter",
        "Events emitted (and stored in the outbox).",
        plain(m.events.load(Ordering::Relaxed)),
    );
    let now = unix_ms();
    // A storage error leaves the sample out rather than reporting 0.
    let stats: Vec<_> = shared
        .lanes
        .iter()
        .map(|l| shared.outbox.stats(&l.name, now).ok())
        .collect();
    let per_lane = |f: &dyn Fn(usize, &Lane) -> Option<String>| -> Vec<(String, String)> {
        shared
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some((format!("{{destination=\"{}\"}}", l.name), f(i, l)?)))
            .collect()
    };
    metric(
        "rppg_outbox_pending",
        "gauge",
        "Events waiting for a destination.",
        per_lane(&|i, _| stats[i].as_ref().map(|s| s.pending.to_string())),
    );
    metric(
        "rppg_outbox_dead",
        "gauge",
        "Dead-lettered events of a destination.",
        per_lane(&|i, _| stats[i].as_ref().map(|s| s.dead.to_string())),
    );
    metric(
        "rppg_outbox_bytes",
        "gauge",
        "Bytes of stored events.",
        plain(shared.outbox.stored_bytes()),
    );
    metric(
        "rppg_delivered_total",
        "counter",
        "Events acknowledged by a destination (since start).",
        per_lane(&|_, l| Some(l.stats.delivered.load(Ordering::Relaxed).to_string())),
    );
    metric(
        "rppg_retried_total",
        "counter",
        "Failed attempts that were rescheduled.",
        per_lane(&|_, l| Some(l.stats.retried.load(Ordering::Relaxed).to_string())),
    );
    metric(
        "rppg_dead_lettered_total",
        "counter",
        "Events dead-lettered (since start).",
        per_lane(&|_, l| Some(l.stats.dead_lettered.load(Ordering::Relaxed).to_string())),
    );
    metric(
        "rppg_destination_offline",
        "gauge",
        "1 while a destination cannot be reached.",
        per_lane(&|_, l| Some(u8::from(l.stats.offline.load(Ordering::Relaxed)).to_string())),
    );
    metric(
        "rppg_last_delivery_timestamp_seconds",
        "gauge",
        "Unix time of the last acknowledged delivery (0: none since start).",
        per_lane(&|_, l| {
            let ms = l.stats.last_delivered_ms.load(Ordering::Relaxed);
            Some(format!("{:.3}", ms as f64 / 1000.0))
        }),
    );
    let _ = writeln!(
        out,
        "# HELP rppg_delivery_latency_seconds From storing an event to its acknowledgement.\n# TYPE rppg_delivery_latency_seconds histogram"
    );
    for l in &shared.lanes {
        let b = &l.stats.latency_buckets;
        for (i, le) in LATENCY_BUCKETS_S.iter().enumerate() {
            let _ = writeln!(
                out,
                "rppg_delivery_latency_seconds_bucket{{destination=\"{}\",le=\"{le}\"}} {}",
                l.name,
                b[i].load(Ordering::Relaxed)
            );
        }
        let count = b[LATENCY_BUCKETS_S.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "rppg_delivery_latency_seconds_bucket{{destination=\"{0}\",le=\"+Inf\"}} {count}\nrppg_delivery_latency_seconds_sum{{destination=\"{0}\"}} {1:.3}\nrppg_delivery_latency_seconds_count{{destination=\"{0}\"}} {count}",
            l.name,
            l.stats.latency_sum_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
    }
    out
}

/// A streaming response body fed by a channel (Server-Sent Events).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(BodyFrame::data(b))))
    }
}

fn json_response(status: StatusCode, v: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    r
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, json!({"error": message}))
}

fn too_large() -> Response<Body> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the body is larger than {MAX_BODY_BYTES} bytes"),
    )
}

/// One SSE message for an event.
fn sse_message(e: &StampedEvent) -> Bytes {
    let mut m = format!("event: {}\nid: {}\ndata: ", e.kind.name(), e.id).into_bytes();
    m.extend_from_slice(&e.bytes);
    m.extend_from_slice(b"\n\n");
    Bytes::from(m)
}

/// `GET /v1/events`. With `Last-Event-ID` (a reconnecting EventSource
/// sends it) or `?since=<event id>`, the kept events after that id come
/// first (the current and the last scan's); `?since=` with an empty id
/// replays all of them.
fn sse(
    shared: &Arc<Shared>,
    stop: watch::Receiver<bool>,
    last_id: Option<String>,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let mut events = shared.events.subscribe();
    let replay = last_id
        .map(|id| shared.recent.lock().expect("recent lock").after(&id))
        .unwrap_or_default();
    let mut stop = stop;
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b": rppg-agent events\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let mut seen = String::new();
        for e in replay {
            if tx.send(sse_message(&e)).await.is_err() {
                return;
            }
            seen.clone_from(&e.id);
        }
        let mut keep_alive = tokio::time::interval(Duration::from_secs(15));
        loop {
            let msg = tokio::select! {
                e = events.recv() => match e {
                    // Sent live after it was kept: replayed already.
                    Ok(e) if e.id <= seen => continue,
                    Ok(e) => sse_message(&e),
                    Err(broadcast::error::RecvError::Lagged(n)) => Bytes::from(format!(": {n} events skipped (slow client); they are in the outbox\n\n")),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
                _ = stop.changed() => break,
            };
            if tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    let h = r.headers_mut();
    h.insert("content-type", "text/event-stream".parse().expect("static"));
    h.insert("cache-control", "no-cache".parse().expect("static"));
    r
}

/// Largest request body accepted (a POST's JSON is a few dozen bytes).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// A client must send its request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 128;

/// Whether the request comes from this machine's clients rather than from a
/// web page: without a token, `Host` must name loopback (`localhost`, a
/// loopback address) so a DNS-rebinding page whose name resolves to
/// 127.0.0.1 is refused; with a token any `Host` is fine (the page cannot
/// know the token). An `Origin` header (a browser's) must be a page of this
/// machine or one of `allowed`. Pure, so the rule is tested directly.
fn same_site(
    token_configured: bool,
    host: Option<&str>,
    origin: Option<&str>,
    allowed: &[String],
) -> Result<(), String> {
    if !token_configured {
        let host = host.unwrap_or("");
        if !is_loopback_authority(host) {
            return Err(format!(
                "Host {host:?} is not this machine: the API answers requests for localhost only \
                 (a web page reaching it through another name is refused)"
            ));
        }
    }
    if let Some(origin) = origin {
        let own = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(is_loopback_authority);
        if !own && !allowed.iter().any(|a| a == origin) {
            return Err(format!(
                "requests from the web page {origin:?} are refused; list it in api.allowed_origins"
            ));
        }
    }
    Ok(())
}

/// `localhost`, `127.x.y.z` or `[::1]`, with an optional port.
fn is_loopback_authority(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, port)) if port.is_empty() || port.starts_with(':') => h,
            _ => return false,
        }
    } else {
        authority.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A token is configured and the request did not carry it.
    NoToken,
    /// No token is configured and the peer is not on loopback.
    NotLoopback,
}

/// Who may use the API: with a token configured, whoever presents it
/// (`Authorization: Bearer`, compared in constant time), from anywhere;
/// without one, loopback peers only. Pure, so the rule is tested directly.
fn admit(
    token: Option<&str>,
    peer: std::net::IpAddr,
    authorization: Option<&str>,
) -> Result<(), Refusal> {
    match token {
        Some(token) => {
            // The scheme is case-insensitive (RFC 9110, 11.1).
            let given = authorization
                .and_then(|v| v.trim().split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map_or("", |(_, t)| t.trim());
            if ct_eq(given.as_bytes(), token.as_bytes()) {
                Ok(())
            } else {
                Err(Refusal::NoToken)
            }
        }
        None if peer.is_loopback() => Ok(()),
        None => Err(Refusal::NotLoopback),
    }
}

/// Whether the request may be served ([`admit`]), else the refusal to send.
/// The refusal is boxed: it is the rare path.
fn authorised(
    shared: &Shared,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Result<(), Box<Response<Body>>> {
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    match admit(shared.token.as_deref(), peer.ip(), authorization) {
        Ok(()) => Ok(()),
        Err(Refusal::NoToken) => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "send Authorization: Bearer <token> (api.token_env)",
            );
            r.headers_mut()
                .insert("www-authenticate", "Bearer".parse().expect("static"));
            Err(Box::new(r))
        }
        Err(Refusal::NotLoopback) => Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "this API serves loopback clients only; set api.token_env to admit others",
        ))),
    }
}

async fn handle(
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Err(why) = same_site(
        shared.token.is_some(),
        header("host"),
        header("origin"),
        &shared.config.api.allowed_origins,
    ) {
        return Ok(error(StatusCode::FORBIDDEN, &why));
    }
    if let Err(r) = authorised(&shared, peer, &req) {
        return Ok(*r);
    }
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let response = match (method, path.as_str()) {
        (Method::POST, "/v1/scans") => {
            let json_type = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .eq_ignore_ascii_case("application/json")
                });
            let declared = req
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
                return Ok(too_large());
            }
            let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => return Ok(too_large()),
                Err(_) => Bytes::new(),
            };
            let empty = body.iter().all(u8::is_ascii_whitespace);
            // A browser sends text/plain without asking first (no CORS
            // preflight); JSON must say it is JSON.
            if json_type == Some(false) || (!empty && json_type.is_none()) {
                return Ok(error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "send the body as Content-Type: application/json",
                ));
            }
            let request = if empty {
                Ok(ScanRequest::default())
            } else {
                ScanRequest::parse(&body)
            };
            let request = match request {
                Ok(r) => r,
                Err(why) => return Ok(error(StatusCode::BAD_REQUEST, &why)),
            };
            let sh = shared.clone();
            let sh_input = shared.config.run.input.clone();
            match tokio::task::spawn_blocking(move || sh.start_scan(request))
                .await
                .expect("start does not panic")
            {
                Ok(id) => json_response(
                    StatusCode::CREATED,
                    json!({"id": id, "state": "running", "href": format!("/v1/scans/{id}")}),
                ),
                Err(StartError::Busy { id }) => json_response(
                    StatusCode::CONFLICT,
                    json!({"error": "a scan is running", "current": id}),
                ),
                Err(StartError::OutboxFull) => error(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "the outbox is full: let pending events drain or raise outbox.max_bytes",
                ),
                Err(StartError::Storage(why)) => error(
                    StatusCode::INSUFFICIENT_STORAGE,
                    &format!("the outbox cannot store events ({why}); free disk space, it recovers by itself"),
                ),
                Err(StartError::Input(why)) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the input {} cannot be opened: {why}", sh_input),
                ),
            }
        }
        (Method::DELETE, "/v1/scans/current") => {
            match shared.cancel_current(CancelReason::Requested) {
                Some(id) => json_response(
                    StatusCode::ACCEPTED,
                    json!({"id": id, "state": "cancelling"}),
                ),
                None => error(StatusCode::NOT_FOUND, "no scan is running"),
            }
        }
        (Method::GET, p) if p.starts_with("/v1/scans/") => {
            let id = &p["/v1/scans/".len()..];
            let id = if id == "current" {
                shared
                    .state
                    .lock()
                    .expect("state lock")
                    .current
                    .as_ref()
                    .map(|r| r.id.clone())
                    .unwrap_or_default()
            } else {
                id.to_string()
            };
            match shared.record(&id) {
                Some(r) => json_response(
                    StatusCode::OK,
                    json!({"id": r.id, "state": r.state.name(), "started": r.started_unix_ms,
                           "result": r.result, "error": r.error}),
                ),
                None => error(StatusCode::NOT_FOUND, "no such scan (the last 64 are kept)"),
            }
        }
        (Method::GET, "/v1/events") => {
            let since = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("since="))
                    .map(str::to_string)
            });
            let last_id = header("last-event-id").map(str::to_string).or(since);
            sse(&shared, stop, last_id)
        }
        (Method::GET, "/healthz") => {
            let sh = shared.clone();
            let (storage, input) =
                tokio::task::spawn_blocking(move || (sh.outbox.health(), sh.input_health(true)))
                    .await
                    .unwrap_or_else(|_| {
                        let failed = || Err("the health check failed".to_string());
                        (failed(), failed())
                    });
            let (status, word) = match (&storage, &input) {
                (Ok(()), Ok(())) => (StatusCode::OK, "ok"),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "degraded"),
            };
            json_response(
                status,
                json!({
                    "status": word,
                    "outbox": match &storage {
                        Ok(()) => json!({"ok": true}),
                        Err(why) => json!({"ok": false, "error": why}),
                    },
                    "input": match &input {
                        Ok(()) => json!({"ok": true, "source": shared.config.run.input}),
                        Err(why) => json!({"ok": false, "source": shared.config.run.input, "error": why}),
                    },
                    "version": env!("CARGO_PKG_VERSION"),
                    "uptime_s": (unix_ms() - shared.started_unix_ms) / 1000,
                    "scan_running": shared.is_running(),
                    "destinations": shared.lanes.iter().map(|l| json!({
                        "name": l.name,
                        "offline": l.stats.offline.load(Ordering::Relaxed),
                    })).collect::<Vec<_>>(),
                }),
            )
        }
        (Method::GET, "/openapi.json") => json_response(StatusCode::OK, super::openapi::document()),
        (Method::GET, "/metrics") => {
            let sh = shared.clone();
            let text = tokio::task::spawn_blocking(move || metrics_text(&sh))
                .await
                .expect("metrics do not panic");
            let mut r = Response::new(Full::new(Bytes::from(text)).boxed());
            r.headers_mut().insert(
                "content-type",
                "text/plain; version=0.0.4".parse().expect("static"),
            );
            r
        }
        (
            _,
            "/v1/scans" | "/v1/scans/current" | "/v1/events" | "/healthz" | "/metrics"
            | "/openapi.json",
        ) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "see the API table in docs/daemon.md",
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "unknown path; see the API table in docs/daemon.md",
        ),
    };
    Ok(response)
}

/// Watches the source between scans and starts one when a face has been
/// steady for `run.auto_start_steady_s` (and the cool-down has passed).
fn auto_start_loop(shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let steady_s = shared.config.run.auto_start_steady_s;
    let cooldown_ms = (shared.config.run.auto_start_cooldown_s * 1000.0) as u64;
    while !stop.load(Ordering::Relaxed) {
        let idle = {
            let st = shared.state.lock().expect("state lock");
            st.current.is_none() && unix_ms().saturating_sub(st.last_end_ms) >= cooldown_ms
        };
        if !idle {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        match watch_for_face(&shared, steady_s, &stop) {
            Ok(true) => {
                if let Err(e) = shared.start_scan(ScanRequest::default()) {
                    tracing::warn!(?e, "auto-start skipped");
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "auto-start cannot read the source; retrying in 10 s");
                for _ in 0..50 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

/// Reads the source until a face has been present and steady for
/// `steady_s` (true), or a scan started on request / shutdown (false).
fn watch_for_face(
    shared: &Arc<Shared>,
    steady_s: f64,
    stop: &AtomicBool,
) -> Result<bool, AppError> {
    let spec: SourceSpec = shared.config.run.input.parse()?;
    let opened = crate::capture::open(&spec);
    shared.input_seen(opened.as_ref().map(drop).map_err(|e| e.to_string()));
    let mut source = opened?;
    let detector = super::scan::load_detector(&shared.config)?;
    let mut vision = crate::vision::FaceRoiExtractor::new(detector, shared.config.vision());
    let max_motion = shared.config.scan.max_motion_face_widths_per_s;
    let mut frame = Frame::default();
    let mut since: Option<f64> = None;
    let mut last_t = 0.0;
    let started = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) && !shared.is_running() {
        if !source.next_frame(&mut frame)? {
            return Ok(false);
        }
        if shared.config.run.realtime {
            let due = Duration::from_secs_f64(frame.t_s.max(0.0));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let dt = (frame.t_s - last_t).max(1e-3);
        last_t = frame.t_s;
        let obs = vision.process(&frame);
        let min_face_px = shared.config.scan.min_face_px;
        let steady = obs.face.is_some_and(|f| {
            let speed = (obs.motion_px[0].hypot(obs.motion_px[1]) / dt) / f.w.max(1.0);
            speed <= max_motion && f.w >= min_face_px
        });
        match (steady, since) {
            (true, None) => since = Some(frame.t_s),
            (true, Some(t0)) if frame.t_s - t0 >= steady_s => {
                tracing::info!(steady_s, "a steady face: starting a scan");
                return Ok(true);
            }
            (false, _) => since = None,
            _ => {}
        }
    }
    Ok(false)
}

/// What the daemon did, for the caller's last log line.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub scans: u64,
    pub pending: u64,
}

/// Runs the daemon on `listener` until `shutdown` resolves; then cancels a
/// running scan, drains, stops the lanes and flushes the outbox.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Summary, AppError> {
    let token = match config.api.token_env.as_str() {
        "" => None,
        var => Some(std::env::var(var).ok().filter(|t| t.len() >= 16).ok_or_else(|| {
            AppError::Usage(format!(
                "api.token_env: environment variable {var} must hold a token of at least 16 characters"
            ))
        })?),
    };
    for w in config.webhook.iter().filter(|w| w.url.scheme() == "http") {
        tracing::warn!(destination = %w.name, url = %w.display_url(), "events go unencrypted (allow_insecure = true)");
    }
    for m in config.mqtt.iter().filter(|m| m.tls.is_none()) {
        tracing::warn!(destination = %m.name, host = %m.host, port = m.port, "events go unencrypted (allow_insecure = true)");
    }
    let outbox = deliver::open_outbox(&config)?;
    let delivery = deliver::start(&config, outbox.clone(), false)?;
    let (events, _) = broadcast::channel(256);
    let shared = Arc::new(Shared {
        lanes: delivery.lanes().to_vec(),
        outbox: outbox.clone(),
        events,
        recent: Mutex::new(Recent::default()),
        input: Mutex::new((0, Ok(()))),
        state: Mutex::new(State::default()),
        metrics: Metrics::default(),
        token,
        started_unix_ms: unix_ms(),
        config,
    });
    {
        // Checked once at start, so /healthz is right before the first scan.
        let sh = shared.clone();
        let _ = tokio::task::spawn_blocking(move || sh.check_input()).await;
    }
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        input = %shared.config.run.input,
        destinations = shared.lanes.len(),
        auto_start = shared.config.run.auto_start_steady_s > 0.0,
        "rppg-agent run: listening"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let auto_stop = Arc::new(AtomicBool::new(false));
    let auto = (shared.config.run.auto_start_steady_s > 0.0).then(|| {
        let (sh, st) = (shared.clone(), auto_stop.clone());
        std::thread::spawn(move || auto_start_loop(sh, st))
    });
    tokio::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut accept_failures = 0u32;
    loop {
        // At most MAX_CONNECTIONS are served at once; the rest wait in the
        // backlog. Headers must arrive within HEADER_READ_TIMEOUT, so
        // half-open connections are shed and cannot hold the slots.
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                accept_failures = 0;
                a
            }
            Err(e) => {
                // Out of file descriptors (EMFILE) or similar: back off
                // instead of spinning; connections finishing free some.
                accept_failures = accept_failures.saturating_add(1);
                let wait = Duration::from_millis(10u64 << accept_failures.min(7));
                if accept_failures == 1 {
                    tracing::warn!(error = %e, "accepting a connection failed; backing off");
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let (sh, stop) = (shared.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let io = hyper_util::rt::TokioIo::new(stream);
            let service =
                hyper::service::service_fn(move |req| handle(sh.clone(), stop.clone(), peer, req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, service)
                .await;
        });
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    auto_stop.store(true, Ordering::Relaxed);
    if let Some(id) = shared.cancel_current(CancelReason::Shutdown) {
        tracing::info!(scan = %id, "cancelling the running scan");
    }
    let sh = shared.clone();
    let finished = tokio::task::spawn_blocking(move || sh.wait_for_scan(Duration::from_secs(10)))
        .await
        .expect("wait does not panic");
    if !finished {
        tracing::warn!("the scan did not stop within 10 s; its stored events are kept");
    }
    if let Some(t) = auto {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    let lanes = shared.lanes.clone();
    let drain = Duration::from_secs_f64(shared.config.run.shutdown_drain_s);
    let stats = deliver::drain(&outbox, &lanes, drain).await?;
    for (name, e) in delivery.stop().await {
        tracing::error!(destination = %name, error = %e, "lane failed");
    }
    outbox.flush()?;
    let pending: u64 = stats.iter().map(|(_, s)| s.pending).sum();
    let m = &shared.metrics;
    let scans = m.completed.load(Ordering::Relaxed)
        + m.cancelled.load(Ordering::Relaxed)
        + m.failed.load(Ordering::Relaxed);
    tracing::info!(
        scans,
        pending,
        "stopped; pending events are delivered after the next start"
    );
    Ok(Summary { scans, pending })
}

/// Resolves on SIGTERM, SIGINT or SIGHUP (a closed terminal or session:
/// the daemon stops as cleanly as on SIGTERM).
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(mut term), Ok(mut hup)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Events of a scan in order, from an SSE stream's text (for tests and tools).
pub fn parse_sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).ok();
                }
            }
            Some((name?, data?))
        })
        .collect()
}

/// Whether an event name ends a scan.
pub fn ends_scan(name: &str) -> bool {
    name == EventKind::ScanCompleted.name() || name == EventKind::MeasurementCanceled.name()
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_a_token_only_loopback_peers_are_admitted_and_with_one_only_its_bearers() {
        let lan: std::net::IpAddr = "192.168.1.20".parse().unwrap();
        let v6: std::net::IpAddr = "fe80::1".parse().unwrap();
        for local in ["127.0.0.1", "::1"] {
            assert_eq!(admit(None, local.parse().unwrap(), None), Ok(()));
        }
        assert_eq!(admit(None, lan, None), Err(Refusal::NotLoopback));
        assert_eq!(
            admit(None, v6, Some("Bearer anything")),
            Err(Refusal::NotLoopback)
        );
        let token = Some("a-long-random-test-token-0123456789");
        let bearer = Some("Bearer a-long-random-test-token-0123456789");
        assert_eq!(admit(token, lan, bearer), Ok(()));
        for wrong in [
            None,
            Some("a-long-random-test-token-0123456789"),
            Some("Bearer a-long-random-test-token-012345678"),
            Some("Bearer "),
        ] {
            assert_eq!(admit(token, lan, wrong), Err(Refusal::NoToken), "{wrong:?}");
            // A configured token binds loopback peers too.
            assert_eq!(
                admit(token, "127.0.0.1".parse().unwrap(), wrong),
                Err(Refusal::NoToken)
            );
        }
    }

    use super::*;

    #[test]
    fn sse_messages_carry_the_event_name_id_and_exact_envelope_and_parse_back() {
        let mut st = crate::events::Stamper::new("d", "s");
        let e = st.stamp(
            &crate::events::Event::general_error("X", "line\nbreak"),
            1,
            2,
        );
        let m = sse_message(&e);
        let text = String::from_utf8(m.to_vec()).unwrap();
        assert!(text.starts_with("event: GENERAL_ERROR\nid: evt_"));
        assert!(text.ends_with("\n\n"));
        // The envelope is one line of JSON (newlines inside strings are escaped).
        assert_eq!(text.lines().filter(|l| l.starts_with("data: ")).count(), 1);
        let parsed = parse_sse(&format!(": comment\n\n{text}"));
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].1["payload"]["message"], "line\nbreak");
        assert!(
            ends_scan("SCAN_COMPLETED")
                && ends_scan("MEASUREMENT_CANCELED")
                && !ends_scan("LOW_SNR")
        );
    }
}
