//! Receiver faults, one test each, with real parts: sled on disk, the
//! delivery lanes, and a misbehaving HTTP server on 127.0.0.1:0 written at
//! the TCP level so it can stall, reset or answer in plain text to TLS.
//! Each test checks what the agent did, that nothing was lost, and exactly
//! what the dead-letter store holds, with its reasons. (Connection refused
//! for hours, 429 with Retry-After and 410 are in `delivery.rs`; MQTT
//! broker faults in `mqtt.rs`.)

use crate::delivery::{append, destination, eventually, now_ms, setup};
use crate::util::open_outbox;
use rppg_agent::delivery::webhook::WebhookDestination;
use rppg_agent::delivery::Delivery;
use rppg_agent::outbox::Outbox;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the server does with one connection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Answer with this status.
    Status(u16),
    /// Read the request, wait this long, then answer 200.
    Slow(Duration),
    /// Read the whole request, then reset the connection (RST, no reply).
    Reset,
    /// Answer whatever arrives with plain-text HTTP (to a TLS client).
    PlainText,
}

/// A receiver that works through `plan` one connection at a time, then
/// answers every further connection with `then`.
struct FaultServer {
    addr: SocketAddr,
    /// `webhook-id` of every complete request it read, in order.
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultServer {
    async fn start(plan: Vec<Fault>, then: Fault) -> FaultServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let plan = Arc::new(Mutex::new(VecDeque::from(plan)));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let fault = plan.lock().unwrap().pop_front().unwrap_or(then);
                tokio::spawn(serve(socket, fault, log.clone()));
            }
        });
        FaultServer { addr, seen, task }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}/hooks", self.addr)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Reads one HTTP/1.1 request (head and `content-length` body); its `webhook-id`.
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 || buf.len() > 1 << 20 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length").and_then(|v| v.parse().ok())?;
    while buf.len() < head_end + length {
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    header("webhook-id")
}

async fn serve(mut socket: tokio::net::TcpStream, fault: Fault, seen: Arc<Mutex<Vec<String>>>) {
    let answer = |status: u16| {
        format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    };
    if fault == Fault::PlainText {
        let mut chunk = [0u8; 1024];
        let _ = socket.read(&mut chunk).await;
        let _ = socket.write_all(answer(400).as_bytes()).await;
        return;
    }
    let Some(id) = read_request(&mut socket).await else {
        return;
    };
    seen.lock().unwrap().push(id);
    match fault {
        Fault::Status(status) => {
            let _ = socket.write_all(answer(status).as_bytes()).await;
        }
        Fault::Slow(wait) => {
            tokio::time::sleep(wait).await;
            let _ = socket.write_all(answer(200).as_bytes()).await;
        }
        Fault::Reset => {
            // SO_LINGER 0: closing sends RST instead of FIN.
            let _ = socket.set_zero_linger();
            drop(socket);
        }
        Fault::PlainText => unreachable!(),
    }
}

/// `(pending, dead, delivered)` of the test lane.
fn counts(outbox: &Outbox) -> (u64, u64, u64) {
    let s = outbox.stats("hook", u64::MAX).unwrap();
    (s.pending, s.dead, s.delivered)
}

/// Runs the lane for `dest` until its `(pending, dead, delivered)` counts
/// are `until` (bounded), then stops it.
async fn run_lane_until(outbox: &Arc<Outbox>, dest: WebhookDestination, until: (u64, u64, u64)) {
    let d = Delivery::start(outbox.clone(), setup(&[dest]), now_ms()).unwrap();
    eventually(
        &format!("counts {until:?}"),
        Duration::from_secs(20),
        || counts(outbox) == until,
    )
    .await;
    d.stop().await;
}

/// The attempt results recorded for the test lane's dead letters: `(event id, reason, results)`.
fn dead_letters(outbox: &Outbox) -> Vec<(String, String, Vec<String>)> {
    outbox
        .dead_letters(Some("hook"))
        .unwrap()
        .into_iter()
        .map(|(_, _, meta, d)| {
            (
                meta.event_id,
                d.reason,
                d.history.into_iter().map(|a| a.result).collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_500s_then_200_delivers_every_event_once_acknowledged_and_dead_letters_nothing()
{
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let rx = FaultServer::start(vec![Fault::Status(500); 6], Fault::Status(200)).await;
    let ids = append(&outbox, 3);
    run_lane_until(&outbox, destination(&rx.url("http"), 6), (0, 0, 3)).await;
    let seen = rx.seen();
    assert_eq!(seen.len(), 6 + 3, "six 500s, then one 200 per event");
    for id in &ids {
        assert!(seen.contains(id), "{id} reached the receiver");
    }
    assert!(seen.iter().all(|s| ids.contains(s)), "nothing but our ids");
    assert!(dead_letters(&outbox).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_slower_than_the_timeout_cost_attempts_dead_letter_as_timed_out_and_replay_delivers(
) {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    // The destination waits 500 ms for an answer; this receiver takes 2 s.
    let rx = FaultServer::start(vec![], Fault::Slow(Duration::from_secs(2))).await;
    let ids = append(&outbox, 1);
    run_lane_until(&outbox, destination(&rx.url("http"), 3), (0, 1, 0)).await;
    let dead = dead_letters(&outbox);
    assert_eq!(dead.len(), 1);
    let (id, reason, results) = &dead[0];
    assert_eq!(id, &ids[0]);
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    assert_eq!(results, &vec!["timed out".to_string(); 3]);
    // Each slow attempt did reach the receiver: the same id, three times.
    assert_eq!(rx.seen(), vec![ids[0].clone(); 3]);
    // Once the receiver is fast again, a replay delivers it.
    let fast = FaultServer::start(vec![], Fault::Status(200)).await;
    assert_eq!(outbox.replay(Some("hook"), None, None).unwrap(), 1);
    run_lane_until(&outbox, destination(&fast.url("http"), 3), (0, 0, 1)).await;
    assert_eq!(fast.seen(), vec![ids[0].clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_resets_before_replying_costs_attempts_and_gets_the_same_id_again() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let rx = FaultServer::start(vec![Fault::Reset, Fault::Reset], Fault::Status(200)).await;
    let ids = append(&outbox, 1);
    let outbox_id = outbox.find(&ids[0]).unwrap().0;
    run_lane_until(&outbox, destination(&rx.url("http"), 6), (0, 0, 1)).await;
    // The receiver read the request three times: at-least-once, one id.
    assert_eq!(rx.seen(), vec![ids[0].clone(); 3]);
    let state = outbox.lane_state("hook", outbox_id).unwrap().unwrap();
    assert_eq!(state["delivered"]["attempts"], 3, "{state}");

    // A receiver that always resets: the schedule runs out, the reason says why.
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let rx = FaultServer::start(vec![], Fault::Reset).await;
    let ids = append(&outbox, 1);
    run_lane_until(&outbox, destination(&rx.url("http"), 3), (0, 1, 0)).await;
    let dead = dead_letters(&outbox);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, ids[0]);
    assert_eq!(dead[0].2.len(), 3);
    assert!(
        dead[0].2.iter().all(|r| r.starts_with("failed:")),
        "{:?}",
        dead[0].2
    );
    assert!(
        dead[0].1.contains("gave up after 3 attempts"),
        "{}",
        dead[0].1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_failure_is_a_failed_attempt_not_offline_and_dead_letters_with_the_tls_reason() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    // https to a server that answers the TLS handshake in plain text.
    let rx = FaultServer::start(vec![], Fault::PlainText).await;
    let ids = append(&outbox, 2);
    let mut dest = destination(&rx.url("https"), 3);
    dest.allow_insecure = false;
    run_lane_until(&outbox, dest, (0, 2, 0)).await;
    let dead = dead_letters(&outbox);
    let dead_ids: Vec<&String> = dead.iter().map(|d| &d.0).collect();
    assert_eq!(dead_ids, ids.iter().collect::<Vec<_>>());
    for (_, reason, results) in &dead {
        assert_eq!(results.len(), 3, "{results:?}");
        assert!(
            results.iter().all(|r| r.starts_with("failed:")
                && (r.contains("corrupt message") || r.to_lowercase().contains("tls"))),
            "{results:?}"
        );
        assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    }
    // No event left the TLS layer in plain text: the server never saw a request.
    assert!(rx.seen().is_empty());
}
