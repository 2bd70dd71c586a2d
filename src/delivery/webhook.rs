//! Webhook delivery: one lane (tokio task) per destination.
//!
//! Owns: the HTTP attempt (reqwest with rustls), mapping transport errors to
//! [`AttemptResult`]s, and the lane loop that drives the outbox through the
//! pure [`policy`](super::policy).
//!
//! Lane loop: take up to `max_in_flight` due events of this destination from
//! the outbox (emission order), send them concurrently, then record each
//! outcome — `ack` on 2xx only, `reschedule` with the next wait, or
//! `dead_letter` with the reason and attempt history. One failing event
//! never blocks the others: it waits for its own retry time while later
//! events go ahead (receivers order by `sessionId` + `sequence`). If the
//! receiver is unreachable the lane pauses and probes with the oldest event
//! on a capped backoff, spending no attempts, and resumes when it answers.
//!
//! Invariants: the `webhook-id` is the event id on every attempt; the
//! signature covers the stored bytes exactly; an event leaves `pending` only
//! through `ack` or `dead_letter`; secrets never reach a log or error.

use super::policy::{classify, next_delay, probe_delay, AttemptResult, Outcome, RetryPolicy};
use super::signing::{sign, Scheme, Secret};
use super::{blocking, unit_random, AckBatch};
use crate::events::EventKind;
use crate::outbox::{Ack, AttemptRecord, Outbox, OutboxError, PendingEvent};
use std::error::Error as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// What a destination receives as the request body.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyFormat {
    /// The event envelope, byte for byte as stored (WMS style).
    Envelope,
    /// SCAN_COMPLETED as a FHIR R4 Bundle; `subject` when the scan named none.
    Fhir { subject: String },
    /// Scan start, completion and failure in the Circadify shape
    /// ([`crate::events::circadify`]), with a body `signature`: the hex
    /// HMAC-SHA256, with the destination's first key, of the body's JSON
    /// without `signature` (what `JSON.stringify` of the parsed body minus
    /// `signature` gives back, byte for byte).
    Circadify,
}

/// Why an event has no body for a destination's format.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Fhir(#[from] crate::events::fhir::FhirError),
    #[error(transparent)]
    Circadify(#[from] crate::events::circadify::CircadifyError),
}

/// A validated webhook destination. Its `Debug` shows the URL redacted
/// ([`super::redact_url`]) and the keys redacted ([`Secret`]).
#[derive(Clone, PartialEq)]
pub struct WebhookDestination {
    pub name: String,
    pub url: reqwest::Url,
    /// Every scheme with the keys it signs with (several keys: rotation).
    pub signing: Vec<(Scheme, Vec<Secret>)>,
    /// Event kinds to send; empty = all.
    pub events: Vec<EventKind>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub policy: RetryPolicy,
    pub allow_insecure: bool,
    pub max_in_flight: usize,
    pub format: BodyFormat,
}

impl std::fmt::Debug for WebhookDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookDestination")
            .field("name", &self.name)
            .field("url", &self.display_url())
            .field("signing", &self.signing)
            .field("events", &self.events)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("policy", &self.policy)
            .field("allow_insecure", &self.allow_insecure)
            .field("max_in_flight", &self.max_in_flight)
            .field("format", &self.format)
            .finish()
    }
}

impl WebhookDestination {
    /// The URL as it may be shown: credentials and query values hidden.
    pub fn display_url(&self) -> String {
        super::redact_url(self.url.as_str())
    }

    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }

    /// The body of an event for this destination (signed and sent as is).
    pub fn body(&self, event_bytes: &[u8]) -> Result<Vec<u8>, BodyError> {
        match &self.format {
            BodyFormat::Envelope => Ok(event_bytes.to_vec()),
            BodyFormat::Fhir { subject } => {
                Ok(crate::events::fhir::bundle_bytes(event_bytes, subject)?)
            }
            BodyFormat::Circadify => {
                let mut body = crate::events::circadify::body(event_bytes)?;
                let unsigned = crate::events::json::to_vec(&body);
                let key = self.signing.iter().flat_map(|(_, keys)| keys).next();
                body["signature"] = match key {
                    Some(k) => super::signing::hmac_hex(k, &unsigned).into(),
                    None => serde_json::Value::Null,
                };
                Ok(crate::events::json::to_vec(&body))
            }
        }
    }

    /// Every header of one attempt: content type, agent, and the signatures.
    pub fn headers(
        &self,
        event_id: &str,
        timestamp_s: u64,
        body: &[u8],
    ) -> Vec<(&'static str, String)> {
        let content_type = match self.format {
            BodyFormat::Envelope | BodyFormat::Circadify => "application/json",
            BodyFormat::Fhir { .. } => "application/fhir+json",
        };
        let mut h = vec![
            ("content-type", content_type.to_string()),
            (
                "user-agent",
                format!("rppg-agent/{}", env!("CARGO_PKG_VERSION")),
            ),
        ];
        for (scheme, keys) in &self.signing {
            h.extend(sign(*scheme, keys, event_id, timestamp_s, body));
        }
        h
    }
}

/// Upper bounds (seconds) of the delivery-latency histogram buckets.
pub const LATENCY_BUCKETS_S: [f64; 10] =
    [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0, 86400.0];

/// Live counters of a lane (for `sync`, `outbox stats` and metrics).
#[derive(Debug, Default)]
pub struct LaneStats {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub offline: AtomicBool,
    pub last_error: Mutex<Option<String>>,
    /// Unix ms of the last acknowledged delivery (0: none yet).
    pub last_delivered_ms: AtomicU64,
    /// Delivery latency (stored -> acknowledged): cumulative bucket counts
    /// per [`LATENCY_BUCKETS_S`], then +Inf; and the sum in milliseconds.
    pub latency_buckets: [AtomicU64; 11],
    pub latency_sum_ms: AtomicU64,
}

impl LaneStats {
    /// Counts acknowledged deliveries and their latency at `now_ms`.
    pub fn record_delivered(&self, acks: &[Ack], now_ms: u64) {
        if acks.is_empty() {
            return;
        }
        self.delivered
            .fetch_add(acks.len() as u64, Ordering::Relaxed);
        self.last_delivered_ms.fetch_max(now_ms, Ordering::Relaxed);
        for a in acks {
            let ms = now_ms.saturating_sub(a.created_ms);
            self.latency_sum_ms.fetch_add(ms, Ordering::Relaxed);
            let s = ms as f64 / 1000.0;
            for (i, bound) in LATENCY_BUCKETS_S.iter().enumerate() {
                if s <= *bound {
                    self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
                }
            }
            self.latency_buckets[LATENCY_BUCKETS_S.len()].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn note_error(&self, e: String) {
        *self.last_error.lock().expect("stats lock") = Some(e);
    }
}

/// Wall-clock milliseconds that advance with tokio's clock (so tests with
/// paused time are deterministic) and never go backwards.
#[derive(Debug, Clone, Copy)]
pub struct LaneClock {
    base_unix_ms: u64,
    base: tokio::time::Instant,
}

impl LaneClock {
    pub fn new(now_unix_ms: u64) -> Self {
        LaneClock {
            base_unix_ms: now_unix_ms,
            base: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.base_unix_ms + self.base.elapsed().as_millis() as u64
    }
}

/// The error chain as one line (reqwest hides the useful part in sources).
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !text.contains(&t) {
            text = format!("{text}: {t}");
        }
        src = s.source();
    }
    text
}

/// Maps a transport error: unreachable (offline) vs reached-but-failed.
fn classify_error(e: &reqwest::Error) -> AttemptResult {
    let text = chain(e);
    if e.is_connect() {
        if e.is_timeout() {
            return AttemptResult::Unreachable(format!("connect timed out: {text}"));
        }
        let mut src = e.source();
        while let Some(s) = src {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                if matches!(
                    io.kind(),
                    ConnectionRefused
                        | AddrNotAvailable
                        | HostUnreachable
                        | NetworkUnreachable
                        | NotFound
                ) {
                    return AttemptResult::Unreachable(text);
                }
            }
            let t = s.to_string();
            if t.contains("dns error") || t.contains("failed to lookup address") {
                return AttemptResult::Unreachable(text);
            }
            src = s.source();
        }
        return AttemptResult::Failed(text);
    }
    if e.is_timeout() {
        return AttemptResult::Timeout;
    }
    AttemptResult::Failed(text)
}

/// Builds an HTTP client for destinations like `dest`. One client (its
/// TLS roots, its connection pool) serves every destination with the same
/// [`client_key`]: a client per destination made 3,000 destinations cost
/// over 1 GB. The per-attempt timeout is set on each request.
pub fn client_for(dest: &WebhookDestination) -> Result<reqwest::Client, reqwest::Error> {
    super::install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(dest.connect_timeout)
        .https_only(!dest.allow_insecure)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// The client settings a destination needs: destinations with the same key
/// share one client.
pub fn client_key(dest: &WebhookDestination) -> (Duration, bool) {
    (dest.connect_timeout, dest.allow_insecure)
}

/// One delivery attempt of `event`, signed at `now_s`.
pub async fn attempt(
    client: &reqwest::Client,
    dest: &WebhookDestination,
    event: &PendingEvent,
    now_s: u64,
) -> AttemptResult {
    let body = match dest.body(&event.bytes) {
        Ok(b) => b,
        Err(e) => return AttemptResult::Unsendable(e.to_string()),
    };
    let headers = dest.headers(&event.meta.event_id, now_s, &body);
    let mut req = client
        .post(dest.url.clone())
        .timeout(dest.timeout)
        .body(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    match req.send().await {
        Ok(resp) => AttemptResult::Status {
            status: resp.status().as_u16(),
            retry_after: resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        },
        // The URL may carry credentials: no error text repeats it.
        Err(e) => classify_error(&e.without_url()),
    }
}

fn describe(result: &AttemptResult) -> String {
    match result {
        AttemptResult::Status { status, .. } => format!("HTTP {status}"),
        AttemptResult::Timeout => "timed out".into(),
        AttemptResult::Unreachable(e) => format!("unreachable: {e}"),
        AttemptResult::Failed(e) => format!("failed: {e}"),
        AttemptResult::Unsendable(e) => format!("cannot be sent: {e}"),
    }
}

/// Everything a lane needs from outside.
#[derive(Clone)]
pub struct LaneContext {
    pub outbox: Arc<Outbox>,
    pub wake: Arc<Notify>,
    pub stop: watch::Receiver<bool>,
    pub stats: Arc<LaneStats>,
    pub clock: LaneClock,
    pub probe: (Duration, Duration),
    /// Treat every pending event as due on the first pass (`sync`).
    pub first_pass_all: bool,
}

/// Records one outcome; returns the offline reason if the destination was
/// unreachable. A delivery joins `acks` (written in batches by the lane).
async fn settle(
    ctx: &LaneContext,
    dest: &Arc<WebhookDestination>,
    acks: &mut AckBatch,
    event: PendingEvent,
    result: AttemptResult,
) -> Result<Option<String>, OutboxError> {
    let now = ctx.clock.now_ms();
    let outcome = classify(&result, &dest.policy, now / 1000);
    let mut state = event.state.clone();
    let name = dest.name.clone();
    let id = event.outbox_id;
    match outcome {
        Outcome::Offline { reason } => return Ok(Some(reason)),
        Outcome::Delivered => acks.push(Ack {
            id,
            attempts: state.attempts + 1,
            status: describe(&result),
            created_ms: event.meta.created_ms,
        }),
        Outcome::Retry { after, reason } => {
            state.attempts += 1;
            state.history.push(AttemptRecord {
                at_ms: now,
                result: describe(&result),
            });
            let age = Duration::from_millis(now.saturating_sub(event.meta.created_ms));
            match next_delay(&dest.policy, state.attempts, age, after, unit_random()) {
                Some(wait) => {
                    state.next_attempt_ms = now + wait.as_millis() as u64;
                    blocking(&ctx.outbox, move |o| o.reschedule(&name, id, &state)).await?;
                    ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    let why = format!("gave up after {} attempts; last: {reason}", state.attempts);
                    blocking(&ctx.outbox, move |o| {
                        o.dead_letter(&name, id, &why, &state, now)
                    })
                    .await?;
                    ctx.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                }
            }
            ctx.stats.note_error(describe(&result));
        }
        Outcome::DeadLetter { reason } => {
            state.attempts += 1;
            state.history.push(AttemptRecord {
                at_ms: now,
                result: describe(&result),
            });
            blocking(&ctx.outbox, move |o| {
                o.dead_letter(&name, id, &reason, &state, now)
            })
            .await?;
            ctx.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            ctx.stats.note_error(describe(&result));
        }
    }
    Ok(None)
}

/// Waits `d`, or less if told to stop; returns false when stopping.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

/// Writes every batched ack (when the lane idles or stops) and counts them.
async fn record_acks(
    ctx: &LaneContext,
    dest: &WebhookDestination,
    acks: &mut AckBatch,
) -> Result<(), OutboxError> {
    let now = ctx.clock.now_ms();
    let written = acks.finish(&ctx.outbox, &dest.name, now).await?;
    ctx.stats.record_delivered(&written, now);
    Ok(())
}

/// The lane of one destination; runs until `ctx.stop` turns true.
///
/// A pipeline: up to `max_in_flight` attempts run at once; each result is
/// recorded as soon as it arrives and the freed slot is refilled at once.
/// Deliveries are written to the outbox in batches ([`AckBatch`]) while
/// the next attempts are already under way.
pub async fn run_lane(
    dest: Arc<WebhookDestination>,
    client: reqwest::Client,
    mut ctx: LaneContext,
) -> Result<(), OutboxError> {
    let mut all_due = ctx.first_pass_all;
    let mut in_flight: std::collections::HashSet<u64> = Default::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut offline: Option<(String, PendingEvent)> = None;
    let mut acks = AckBatch::default();
    loop {
        if *ctx.stop.borrow() {
            // In-flight attempts are dropped: their events stay pending (at-least-once).
            record_acks(&ctx, &dest, &mut acks).await?;
            return Ok(());
        }
        acks.start(&ctx.outbox, &dest.name, ctx.clock.now_ms());
        if offline.is_none() && tasks.len() < dest.max_in_flight {
            let now = ctx.clock.now_ms();
            let horizon = if all_due { u64::MAX } else { now };
            let (name, free) = (dest.name.clone(), dest.max_in_flight - tasks.len());
            let skip: std::collections::HashSet<u64> =
                in_flight.iter().copied().chain(acks.ids()).collect();
            let max_wait = dest.policy.longest_wait().as_millis() as u64;
            let due = blocking(&ctx.outbox, move |o| {
                o.due_except(&name, horizon, max_wait, free, &skip)
            })
            .await?;
            for event in due {
                in_flight.insert(event.outbox_id);
                let (client, dest) = (client.clone(), dest.clone());
                tasks.spawn(async move {
                    let r = attempt(&client, &dest, &event, now / 1000).await;
                    (event, r)
                });
            }
            // Everything pending was tried once; from now on the schedule applies.
            if tasks.len() < dest.max_in_flight {
                all_due = false;
            }
        }
        if tasks.is_empty() {
            record_acks(&ctx, &dest, &mut acks).await?;
            if let Some((reason, probe)) = offline.take() {
                if !probe_until_answered(&dest, &client, &mut ctx, reason, probe).await? {
                    return Ok(());
                }
                continue;
            }
            let now = ctx.clock.now_ms();
            let name = dest.name.clone();
            let max_wait = dest.policy.longest_wait().as_millis() as u64;
            let next = blocking(&ctx.outbox, move |o| o.next_due_ms(&name, now, max_wait)).await?;
            let wait = next.map_or(60_000, |n| n.saturating_sub(now).min(60_000));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait.max(1))) => {}
                _ = ctx.wake.notified() => {}
                _ = ctx.stop.changed() => {}
            }
            continue;
        }
        tokio::select! {
            Some(joined) = tasks.join_next() => {
                let (event, result) = joined.expect("attempt tasks do not panic");
                in_flight.remove(&event.outbox_id);
                let probe_event = event.clone();
                if let Some(reason) = settle(&ctx, &dest, &mut acks, event, result).await? {
                    offline.get_or_insert((reason, probe_event));
                }
            }
            written = acks.written(), if acks.is_writing() => {
                ctx.stats.record_delivered(&written?, ctx.clock.now_ms());
            }
            _ = ctx.stop.changed() => {}
        }
    }
}

/// Offline: pauses the lane and probes with the oldest event on a capped
/// backoff, spending no attempts, until the destination answers. Returns
/// false when told to stop.
async fn probe_until_answered(
    dest: &Arc<WebhookDestination>,
    client: &reqwest::Client,
    ctx: &mut LaneContext,
    reason: String,
    mut probe: PendingEvent,
) -> Result<bool, OutboxError> {
    ctx.stats.offline.store(true, Ordering::Relaxed);
    ctx.stats.note_error(format!("offline: {reason}"));
    let policy = RetryPolicy {
        probe_initial: ctx.probe.0,
        probe_max: ctx.probe.1,
        ..dest.policy.clone()
    };
    let mut n = 0;
    loop {
        if !pause(&mut ctx.stop, probe_delay(&policy, n, unit_random())).await {
            return Ok(false);
        }
        let name = dest.name.clone();
        if let Some(oldest) = blocking(&ctx.outbox, move |o| o.due(&name, u64::MAX, 1))
            .await?
            .pop()
        {
            probe = oldest;
        }
        let result = attempt(client, dest, &probe, ctx.clock.now_ms() / 1000).await;
        if matches!(result, AttemptResult::Unreachable(_)) {
            n += 1;
            continue;
        }
        let mut acks = AckBatch::default();
        settle(ctx, dest, &mut acks, probe, result).await?;
        record_acks(ctx, dest, &mut acks).await?;
        ctx.stats.offline.store(false, Ordering::Relaxed);
        return Ok(true);
    }
}
