//! Delivery stage: getting durable events to their destinations.
//!
//! Owns: how an event is signed for a receiver ([`signing`], pure), what the
//! result of an attempt means ([`policy`], pure), the webhook lanes
//! ([`webhook`], tokio + reqwest), the MQTT lanes ([`mqtt`], rumqttc), and
//! [`Delivery`], which starts one lane per destination and stops them.
//!
//! Delivery model: at least once. Every event keeps its `id` on every attempt
//! and every destination, so receivers drop duplicates by id; events of one
//! session carry `sessionId` + `sequence`, so receivers can order them.

pub mod mqtt;
pub mod policy;
pub mod signing;
pub mod webhook;

use crate::events::EventKind;
use crate::outbox::{Ack, Outbox, OutboxError};
use mqtt::{MqttDestination, MqttLaneContext};
use std::sync::{Arc, Once};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use webhook::{LaneClock, LaneContext, LaneStats, WebhookDestination};

/// What to start.
#[derive(Debug, Clone)]
pub struct Setup<'a> {
    pub webhooks: &'a [WebhookDestination],
    pub mqtt: &'a [MqttDestination],
    /// For MQTT topics, client ids and presence.
    pub device_id: String,
    /// Offline probing: first wait and cap.
    pub probe: (Duration, Duration),
    /// Treat every pending event as due on the first pass (`sync`).
    pub first_pass_all: bool,
}

/// A uniform random number in `0..1` for jitter (OS entropy).
pub(crate) fn unit_random() -> f64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs blocking outbox work (sled, fsync) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    outbox: &Arc<Outbox>,
    f: impl FnOnce(&Outbox) -> Result<T, OutboxError> + Send + 'static,
) -> Result<T, OutboxError> {
    let ob = outbox.clone();
    tokio::task::spawn_blocking(move || f(&ob))
        .await
        .expect("outbox task does not panic")
}

/// The blocking task that writes one batch of acks.
type AckWrite = tokio::task::JoinHandle<Result<(), OutboxError>>;

/// Acknowledged events not yet recorded: collected while the previous batch
/// is being written, then written in one transaction ([`Outbox::ack_many`]),
/// so a lane pays one blocking hop per batch instead of one per event.
/// Until then they are still pending in the outbox, so the lane must not
/// publish them again ([`AckBatch::ids`] go into the refill's skip set).
#[derive(Default)]
pub(crate) struct AckBatch {
    buffered: Vec<Ack>,
    writing: Option<(Vec<Ack>, AckWrite)>,
}

impl AckBatch {
    pub(crate) fn push(&mut self, ack: Ack) {
        self.buffered.push(ack);
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        let writing = self.writing.iter().flat_map(|(batch, _)| batch);
        self.buffered.iter().chain(writing).map(|a| a.id)
    }

    pub(crate) fn is_writing(&self) -> bool {
        self.writing.is_some()
    }

    /// Starts writing the buffered acks if no write is under way.
    pub(crate) fn start(&mut self, outbox: &Arc<Outbox>, dest: &str, now_ms: u64) {
        if self.writing.is_some() || self.buffered.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.buffered);
        let (ob, name, acks) = (outbox.clone(), dest.to_string(), batch.clone());
        let handle = tokio::task::spawn_blocking(move || ob.ack_many(&name, &acks, now_ms));
        self.writing = Some((batch, handle));
    }

    /// Waits for the write under way; returns the acks it recorded.
    pub(crate) async fn written(&mut self) -> Result<Vec<Ack>, OutboxError> {
        let Some((_, handle)) = self.writing.as_mut() else {
            return std::future::pending().await;
        };
        let result = handle.await.expect("outbox task does not panic");
        let (batch, _) = self.writing.take().expect("a write was under way");
        result.map(|()| batch)
    }

    /// Records everything acknowledged so far (when a connection ends).
    pub(crate) async fn finish(
        &mut self,
        outbox: &Arc<Outbox>,
        dest: &str,
        now_ms: u64,
    ) -> Result<Vec<Ack>, OutboxError> {
        let mut all = Vec::new();
        while self.is_writing() || !self.buffered.is_empty() {
            self.start(outbox, dest, now_ms);
            all.extend(self.written().await?);
        }
        Ok(all)
    }
}

/// rustls needs one process-wide crypto provider: ring (pure Rust + asm, no cmake).
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot set up the HTTP client for destination {name}: {reason}")]
    Client { name: String, reason: String },
}

/// A running lane, as seen from outside.
#[derive(Debug, Clone)]
pub struct Lane {
    pub name: String,
    pub wake: Arc<Notify>,
    pub stats: Arc<LaneStats>,
    pub events: Vec<EventKind>,
}

impl Lane {
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }
}

/// Runs a lane until told to stop. A storage error ends a lane's run (it
/// cannot record what it does); the lane then waits, with a back-off of 1 s
/// doubling to 30 s, for the outbox to heal (see `Outbox::heal`: a disk
/// that was full has room again), and runs again. Only the stop ends it.
async fn supervise<F, Fut>(
    name: String,
    outbox: Arc<Outbox>,
    stats: Arc<LaneStats>,
    mut stop: watch::Receiver<bool>,
    mut run: F,
) -> (String, Result<(), OutboxError>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), OutboxError>>,
{
    let mut wait = Duration::from_secs(1);
    loop {
        let error = match run().await {
            Ok(()) => return (name, Ok(())),
            Err(e) => e,
        };
        if *stop.borrow() {
            return (name, Err(error));
        }
        stats.note_error(format!("outbox: {error}"));
        tracing::error!(destination = %name, error = %error, retry_in_s = wait.as_secs(), "delivery paused by a storage error");
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return (name, Err(error)),
            }
            wait = (wait * 2).min(Duration::from_secs(30));
            let ob = outbox.clone();
            let healed = tokio::task::spawn_blocking(move || ob.heal())
                .await
                .unwrap_or(false);
            if healed {
                break;
            }
        }
        wait = Duration::from_secs(1);
    }
}

/// The delivery workers: one lane per destination.
pub struct Delivery {
    lanes: Vec<Lane>,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<(String, Result<(), OutboxError>)>,
}

impl Delivery {
    /// Starts a lane per destination on the current tokio runtime.
    pub fn start(
        outbox: Arc<Outbox>,
        setup: Setup<'_>,
        now_unix_ms: u64,
    ) -> Result<Self, DeliveryError> {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let mut lanes = Vec::new();
        let clock = LaneClock::new(now_unix_ms);
        let new_lane = |name: &str, events: &[EventKind]| Lane {
            name: name.to_string(),
            wake: Arc::new(Notify::new()),
            stats: Arc::new(LaneStats::default()),
            events: events.to_vec(),
        };
        let mut clients = std::collections::HashMap::new();
        for dest in setup.webhooks {
            let client = match clients.entry(webhook::client_key(dest)) {
                std::collections::hash_map::Entry::Occupied(c) => {
                    let c: &reqwest::Client = c.into_mut();
                    c.clone()
                }
                std::collections::hash_map::Entry::Vacant(v) => v
                    .insert(
                        webhook::client_for(dest).map_err(|e| DeliveryError::Client {
                            name: dest.name.clone(),
                            reason: e.to_string(),
                        })?,
                    )
                    .clone(),
            };
            let lane = new_lane(&dest.name, &dest.events);
            let ctx = LaneContext {
                outbox: outbox.clone(),
                wake: lane.wake.clone(),
                stop: stop_rx.clone(),
                stats: lane.stats.clone(),
                clock,
                probe: setup.probe,
                first_pass_all: setup.first_pass_all,
            };
            let dest = Arc::new(dest.clone());
            let name = dest.name.clone();
            let (ob, stats, stop_rx) = (outbox.clone(), lane.stats.clone(), stop_rx.clone());
            tasks.spawn(supervise(name, ob, stats, stop_rx, move || {
                let (dest, client, ctx) = (dest.clone(), client.clone(), ctx.clone());
                async move { webhook::run_lane(dest, client, ctx).await }
            }));
            lanes.push(lane);
        }
        for dest in setup.mqtt {
            let lane = new_lane(&dest.name, &dest.events);
            let ctx = MqttLaneContext {
                outbox: outbox.clone(),
                wake: lane.wake.clone(),
                stop: stop_rx.clone(),
                stats: lane.stats.clone(),
                clock,
                probe: setup.probe,
                device_id: setup.device_id.clone(),
                first_pass_all: setup.first_pass_all,
            };
            let dest = Arc::new(dest.clone());
            let name = dest.name.clone();
            let (ob, stats, stop_rx) = (outbox.clone(), lane.stats.clone(), stop_rx.clone());
            tasks.spawn(supervise(name, ob, stats, stop_rx, move || {
                let (dest, ctx) = (dest.clone(), ctx.clone());
                async move { mqtt::run_lane(dest, ctx).await }
            }));
            lanes.push(lane);
        }
        Ok(Delivery { lanes, stop, tasks })
    }

    pub fn lanes(&self) -> &[Lane] {
        &self.lanes
    }

    /// Tells every lane that new events are waiting.
    pub fn wake(&self) {
        for l in &self.lanes {
            l.wake.notify_one();
        }
    }

    /// Stops every lane (in-flight attempts finish first) and reports lane failures.
    pub async fn stop(mut self) -> Vec<(String, OutboxError)> {
        let _ = self.stop.send(true);
        let mut failures = Vec::new();
        while let Some(joined) = self.tasks.join_next().await {
            if let Ok((name, Err(e))) = joined {
                failures.push((name, e));
            }
        }
        failures
    }
}

/// A URL as it may be shown (logs, warnings, errors, dead-letter reasons):
/// credentials in the user-info part and the values of query parameters
/// (`?token=...`) become `***`, the fragment is dropped. Text that does not
/// parse as a URL is redacted the same way by position. Pure.
pub fn redact_url(text: &str) -> String {
    const HIDDEN: &str = "***";
    if let Ok(mut url) = reqwest::Url::parse(text) {
        if !url.username().is_empty() {
            let _ = url.set_username(HIDDEN);
        }
        if url.password().is_some() {
            let _ = url.set_password(Some(HIDDEN));
        }
        if url.query().is_some() {
            let keys: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
            url.query_pairs_mut()
                .clear()
                .extend_pairs(keys.iter().map(|k| (k.as_str(), HIDDEN)));
        }
        url.set_fragment(None);
        return url.to_string();
    }
    let mut out = text.to_string();
    if let Some(q) = out.find(['?', '#']) {
        out.truncate(q);
        out.push('?');
        out.push_str(HIDDEN);
    }
    let authority_start = out.find("://").map_or(0, |i| i + 3);
    let authority_end = out[authority_start..]
        .find('/')
        .map_or(out.len(), |i| authority_start + i);
    if let Some(at) = out[authority_start..authority_end].rfind('@') {
        out.replace_range(authority_start..authority_start + at, HIDDEN);
    }
    out
}

#[cfg(test)]
mod redaction_tests {
    use super::redact_url;

    #[test]
    fn credentials_and_query_values_never_survive_redaction() {
        for (given, shown) in [
            (
                "https://user:PASS@host.example/h?token=TOK&x=1#frag",
                "https://***:***@host.example/h?token=***&x=***",
            ),
            ("https://host.example/hooks", "https://host.example/hooks"),
            (
                "http://PASSONLY@10.0.0.2:8080/h",
                "http://***@10.0.0.2:8080/h",
            ),
            ("not a url://user:PASS@x/y?k=TOK", "not a url://***@x/y?***"),
        ] {
            let r = redact_url(given);
            assert_eq!(r, shown);
            assert!(!r.contains("PASS") && !r.contains("TOK"), "{r}");
        }
    }
}
