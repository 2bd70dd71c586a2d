//! A webhook receiver on loopback: the demo's backend and the tests' peer.
//!
//! Owns: a real HTTP/1.1 server (hyper) bound to `127.0.0.1:0` that records
//! every request, verifies its signature with the shared secret, and answers
//! as scripted (status codes in order, a delay, `Retry-After`) so tests can
//! make it fail N times, stall, or disappear.

use crate::delivery::signing::{verify, Scheme, Secret, DEFAULT_TOLERANCE_S};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One received request.
#[derive(Debug, Clone)]
pub struct Received {
    /// `webhook-id` (the event id), when sent.
    pub webhook_id: Option<String>,
    /// The `event` field of the body.
    pub event: String,
    /// `Ok(())` when the signature verified, else the reason.
    pub verified: Result<(), String>,
    /// Receipt time minus the envelope's `time`, in milliseconds.
    pub latency_ms: i64,
    /// The status the receiver answered with.
    pub status: u16,
    /// Every request header, as received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// How the receiver answers.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Statuses for the next requests, in order; afterwards 200.
    pub statuses: VecDeque<u16>,
    /// Sent with every non-2xx answer.
    pub retry_after: Option<String>,
    /// Wait this long before answering.
    pub delay: Option<Duration>,
}

struct State {
    verifier: Option<(Scheme, Vec<Secret>)>,
    script: Mutex<Script>,
    received: Mutex<Vec<Received>>,
    /// Requests being handled right now (read, not yet answered).
    in_progress: std::sync::atomic::AtomicUsize,
}

/// Counts a request as in progress until it is answered or abandoned.
struct InProgress<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InProgress<'a> {
    fn enter(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InProgress(n)
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Milliseconds since the epoch of an RFC 3339 `...T..:..:..(.mmm)+00:00` time.
fn parse_time_ms(t: &str) -> Option<i64> {
    let (date, rest) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let hms = rest.get(..12)?;
    let h: i64 = hms.get(0..2)?.parse().ok()?;
    let mi: i64 = hms.get(3..5)?.parse().ok()?;
    let s: i64 = hms.get(6..8)?.parse().ok()?;
    let ms: i64 = hms.get(9..12)?.parse().ok()?;
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) * 1000) + ms)
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let _busy = InProgress::enter(&state.in_progress);
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let now = unix_ms();
    let verified = match &state.verifier {
        Some((scheme, keys)) => verify(
            *scheme,
            keys,
            &headers,
            &body,
            (now / 1000) as u64,
            DEFAULT_TOLERANCE_S,
        )
        .map(|_| ())
        .map_err(|e| e.to_string()),
        None => Ok(()),
    };
    let envelope: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let sent_ms = envelope["time"]
        .as_str()
        .and_then(parse_time_ms)
        .unwrap_or(now);
    let (status, delay, retry_after) = {
        let mut s = state.script.lock().expect("script lock");
        (
            s.statuses.pop_front().unwrap_or(200),
            s.delay,
            s.retry_after.clone(),
        )
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    state
        .received
        .lock()
        .expect("received lock")
        .push(Received {
            webhook_id: headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("webhook-id"))
                .map(|(_, v)| v.clone()),
            event: envelope["event"].as_str().unwrap_or("").to_string(),
            verified,
            latency_ms: now - sent_ms,
            status,
            headers,
            body,
        });
    let mut resp = Response::builder().status(status);
    if !(200..300).contains(&status) {
        if let Some(r) = retry_after {
            resp = resp.header("retry-after", r);
        }
    }
    Ok(resp
        .body(Full::new(Bytes::from_static(b"ok")))
        .expect("a valid response"))
}

impl Receiver {
    /// Binds 127.0.0.1:0 and serves until dropped. With `verifier`, every
    /// request's signature is checked and the verdict recorded.
    pub async fn start(
        verifier: Option<(Scheme, Vec<Secret>)>,
        script: Script,
    ) -> std::io::Result<Receiver> {
        Self::start_at("127.0.0.1:0".parse().expect("loopback"), verifier, script).await
    }

    /// Like [`Receiver::start`] on a given address (a receiver coming back on its old port).
    pub async fn start_at(
        bind: SocketAddr,
        verifier: Option<(Scheme, Vec<Secret>)>,
        script: Script,
    ) -> std::io::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            verifier,
            script: Mutex::new(script),
            received: Mutex::new(Vec::new()),
            in_progress: Default::default(),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Receiver { addr, state, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// Everything received so far, in order of receipt.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("received lock").clone()
    }

    /// Requests being handled right now (read, not yet answered).
    pub fn in_progress(&self) -> usize {
        self.state
            .in_progress
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Replaces the script.
    pub fn set_script(&self, script: Script) {
        *self.state.script.lock().expect("script lock") = script;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse_to_unix_milliseconds() {
        assert_eq!(
            parse_time_ms("2022-04-07T21:39:13.004+00:00"),
            Some(1_649_367_553_004)
        );
        assert_eq!(parse_time_ms("1970-01-01T00:00:00.000+00:00"), Some(0));
        assert_eq!(parse_time_ms("yesterday"), None);
    }
}
