//! MQTT delivery (rumqttc, MQTT 5 or 3.1.1): one lane per broker.
//!
//! Owns: the connection (TCP or TLS), presence (last will and `online`),
//! publishing with QoS 1, and matching PUBACKs to events.
//!
//! Acknowledgement: rumqttc's `publish()` returns when the message is
//! *queued*, not when the broker has it (rumqtt issues #349, #805, #1007).
//! This lane owns the event loop. The loop reports `Outgoing::Publish(pkid)`
//! in the order the publishes were requested, so a FIFO of outbox ids gives
//! each packet id its event. An event leaves the MQTT lane only on the
//! PUBACK for its own packet id (MQTT 5: with a success reason code).
//! PUBACKs that arrive while the previous batch is being written are
//! recorded together in one outbox transaction.
//!
//! Signing: the Standard Webhooks headers (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature`) over the exact event bytes.
//! - MQTT 5: the payload is the event bytes and the headers travel as user
//!   properties, so a subscriber verifies exactly as a webhook receiver does.
//! - MQTT 3.1.1 has no user properties. The payload is a signed envelope,
//!   `{"headers":{...the three headers...},"body":"<event JSON as a string>"}`
//!   ([`envelope`]): the string `body` is the exact signed bytes, so
//!   `Webhook(secret).verify(env["body"], env["headers"])` works unchanged.
//!
//! Offline: a connection that cannot be made, or that drops, pauses the lane.
//! The lane reconnects with the capped probe backoff and spends no attempts.
//! Unacknowledged events are still pending in the outbox and are published
//! again (same id) after reconnecting. A broker that keeps a publish
//! unacknowledged for `ack_timeout` costs that event an attempt, and the
//! lane reconnects.

use super::policy::{next_delay, probe_delay, RetryPolicy};
use super::signing::{envelope, sign, Scheme, Secret};
use super::webhook::{LaneClock, LaneStats};
use super::{blocking, unit_random, AckBatch};
use crate::events::EventKind;
use crate::outbox::{Ack, AttemptRecord, Outbox, OutboxError, PendingEvent};
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// TLS settings of a broker connection (files are read when connecting).
#[derive(Debug, Clone, PartialEq)]
pub struct MqttTls {
    /// PEM bundle of the CA(s) that sign the broker's certificate.
    pub ca_file: std::path::PathBuf,
    /// Client certificate chain and private key (PEM files), for mutual TLS.
    pub client_auth: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The MQTT protocol version spoken to a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttProtocol {
    /// MQTT 5: signature headers as user properties.
    V5,
    /// MQTT 3.1.1: a signed JSON envelope as the payload.
    V311,
}

/// A validated MQTT destination.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttDestination {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub protocol: MqttProtocol,
    pub tls: Option<MqttTls>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `{deviceId}` is replaced; empty = `rppg-{deviceId}`.
    pub client_id: String,
    /// Topic template with `{deviceId}` and `{event}`.
    pub topic: String,
    /// Standard Webhooks keys for the user-property signature.
    pub keys: Vec<Secret>,
    pub events: Vec<EventKind>,
    pub policy: RetryPolicy,
    pub keep_alive: Duration,
    pub ack_timeout: Duration,
    pub max_in_flight: usize,
}

impl MqttDestination {
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }

    /// The topic of one event.
    pub fn topic_for(&self, device_id: &str, event: &str) -> String {
        self.topic
            .replace("{deviceId}", device_id)
            .replace("{event}", event)
    }

    /// The presence topic (`online` retained on connect, `offline` as last will).
    pub fn status_topic(device_id: &str) -> String {
        format!("rppg/{device_id}/status")
    }

    /// The MQTT client id: `rppg-{deviceId}-{name}` by default, so that
    /// two lanes on one broker do not take each other's session.
    pub fn client_id(&self, device_id: &str) -> String {
        if self.client_id.is_empty() {
            format!("rppg-{device_id}-{}", self.name)
        } else {
            self.client_id.replace("{deviceId}", device_id)
        }
    }

    fn credentials(&self) -> Option<(String, String)> {
        let user = self.username.clone()?;
        let pass = self
            .password
            .as_ref()
            .map(|p| String::from_utf8_lossy(p.expose()).into_owned())
            .unwrap_or_default();
        Some((user, pass))
    }

    fn transport(&self) -> Result<Option<rumqttc::Transport>, String> {
        match &self.tls {
            Some(tls) => Ok(Some(rumqttc::Transport::tls_with_config(
                tls_config(tls)?.into(),
            ))),
            None => Ok(None),
        }
    }

    /// MQTT 5 connection options.
    fn options(&self, device_id: &str) -> Result<MqttOptions, String> {
        let mut o = MqttOptions::new(self.client_id(device_id), self.host.clone(), self.port);
        o.set_keep_alive(self.keep_alive);
        o.set_clean_start(true);
        o.set_last_will(LastWill::new(
            Self::status_topic(device_id),
            "offline",
            QoS::AtLeastOnce,
            true,
            None,
        ));
        if let Some((u, p)) = self.credentials() {
            o.set_credentials(u, p);
        }
        if let Some(t) = self.transport()? {
            o.set_transport(t);
        }
        Ok(o)
    }

    /// MQTT 3.1.1 connection options.
    fn options_v311(&self, device_id: &str) -> Result<rumqttc::MqttOptions, String> {
        let mut o =
            rumqttc::MqttOptions::new(self.client_id(device_id), self.host.clone(), self.port);
        o.set_keep_alive(self.keep_alive);
        o.set_clean_session(true);
        o.set_inflight(u16::try_from(self.max_in_flight + 8).unwrap_or(u16::MAX));
        o.set_last_will(rumqttc::LastWill::new(
            Self::status_topic(device_id),
            "offline",
            rumqttc::QoS::AtLeastOnce,
            true,
        ));
        if let Some((u, p)) = self.credentials() {
            o.set_credentials(u, p);
        }
        if let Some(t) = self.transport()? {
            o.set_transport(t);
        }
        Ok(o)
    }
}

/// rustls client configuration from PEM material.
fn tls_config(tls: &MqttTls) -> Result<rumqttc::tokio_rustls::rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    super::install_crypto_provider();
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let ca = read(&tls.ca_file)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        let cert = cert.map_err(|e| format!("CA file: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA file holds no certificate".into());
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match &tls.client_auth {
        Some((chain_file, key_file)) => {
            let chain = read(chain_file)?;
            let key = read(key_file)?;
            let certs = CertificateDer::pem_slice_iter(&chain)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|_| "client key: not a PEM private key".to_string())?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Everything an MQTT lane needs from outside.
#[derive(Clone)]
pub struct MqttLaneContext {
    pub outbox: Arc<Outbox>,
    pub wake: Arc<Notify>,
    pub stop: watch::Receiver<bool>,
    pub stats: Arc<LaneStats>,
    pub clock: LaneClock,
    pub probe: (Duration, Duration),
    pub device_id: String,
    pub first_pass_all: bool,
}

/// Records a failed attempt for `event` (reschedule, or dead-letter when spent).
async fn failed(
    ctx: &MqttLaneContext,
    dest: &MqttDestination,
    event: PendingEvent,
    result: String,
) -> Result<(), OutboxError> {
    let now = ctx.clock.now_ms();
    let mut state = event.state.clone();
    state.attempts += 1;
    state.history.push(AttemptRecord {
        at_ms: now,
        result: result.clone(),
    });
    let age = Duration::from_millis(now.saturating_sub(event.meta.created_ms));
    let (name, id) = (dest.name.clone(), event.outbox_id);
    match next_delay(&dest.policy, state.attempts, age, None, unit_random()) {
        Some(wait) => {
            state.next_attempt_ms = now + wait.as_millis() as u64;
            blocking(&ctx.outbox, move |o| o.reschedule(&name, id, &state)).await?;
            ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
        }
        None => {
            let why = format!("gave up after {} attempts; last: {result}", state.attempts);
            blocking(&ctx.outbox, move |o| {
                o.dead_letter(&name, id, &why, &state, now)
            })
            .await?;
            ctx.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        }
    }
    *ctx.stats.last_error.lock().expect("stats lock") = Some(result);
    Ok(())
}

/// Why one connection ended.
enum Ended {
    Stop,
    /// Could not connect or the connection dropped: probe with backoff.
    Offline(String),
    /// The broker kept a publish unacknowledged too long: reconnect now.
    AckTimeout,
}

/// The lane of one broker; runs until `ctx.stop` turns true.
pub async fn run_lane(
    dest: Arc<MqttDestination>,
    mut ctx: MqttLaneContext,
) -> Result<(), OutboxError> {
    let mut failures = 0u32;
    loop {
        if *ctx.stop.borrow() {
            return Ok(());
        }
        let (publisher, events) = match link(&dest, &ctx.device_id) {
            Ok(l) => l,
            Err(e) => {
                // A TLS file problem cannot heal by itself; report it and wait for a restart.
                *ctx.stats.last_error.lock().expect("stats lock") = Some(e);
                ctx.stats.offline.store(true, Ordering::Relaxed);
                let _ = ctx.stop.changed().await;
                return Ok(());
            }
        };
        match connection(&dest, &mut ctx, publisher, events).await? {
            Ended::Stop => return Ok(()),
            Ended::AckTimeout => failures = 0,
            Ended::Offline(reason) => {
                ctx.stats.offline.store(true, Ordering::Relaxed);
                *ctx.stats.last_error.lock().expect("stats lock") =
                    Some(format!("offline: {reason}"));
                let policy = RetryPolicy {
                    probe_initial: ctx.probe.0,
                    probe_max: ctx.probe.1,
                    ..dest.policy.clone()
                };
                let wait = probe_delay(&policy, failures, unit_random());
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ctx.stop.changed() => return Ok(()),
                }
            }
        }
    }
}

/// The client half of a connection, for either protocol version.
enum Publisher {
    V5(AsyncClient),
    V311(rumqttc::AsyncClient),
}

/// The event-loop half of a connection, for either protocol version.
enum Events {
    V5(Box<EventLoop>),
    V311(Box<rumqttc::EventLoop>),
}

/// What the event loop reported, in protocol-neutral terms.
enum Polled {
    Connected,
    /// A publish left with this packet id (in the order they were requested).
    Sent(u16),
    /// The broker acknowledged a packet id; `refused` holds an MQTT 5 error reason.
    Acked {
        pkid: u16,
        refused: Option<String>,
    },
    Other,
}

/// Why a publish could not be queued.
enum NotQueued {
    /// The request channel is full: try again after the loop drains it.
    Full,
    /// The client is gone (the connection is ending).
    Stopped,
}

/// Creates the client and event loop of one connection attempt.
fn link(dest: &MqttDestination, device_id: &str) -> Result<(Publisher, Events), String> {
    // Room for the whole in-flight window plus presence: publishing never waits on it.
    let cap = dest.max_in_flight + 8;
    match dest.protocol {
        MqttProtocol::V5 => {
            let (c, l) = AsyncClient::new(dest.options(device_id)?, cap);
            Ok((Publisher::V5(c), Events::V5(Box::new(l))))
        }
        MqttProtocol::V311 => {
            let (c, l) = rumqttc::AsyncClient::new(dest.options_v311(device_id)?, cap);
            Ok((Publisher::V311(c), Events::V311(Box::new(l))))
        }
    }
}

impl Events {
    async fn poll(&mut self) -> Result<Polled, String> {
        use rumqttc::{Event as E4, Packet as P4};
        Ok(match self {
            Events::V5(l) => match l.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::ConnAck(_)) => Polled::Connected,
                Event::Outgoing(Outgoing::Publish(pkid)) => Polled::Sent(pkid),
                Event::Incoming(Packet::PubAck(ack)) => Polled::Acked {
                    pkid: ack.pkid,
                    refused: (!matches!(
                        ack.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    ))
                    .then(|| format!("PUBACK {:?}", ack.reason)),
                },
                _ => Polled::Other,
            },
            Events::V311(l) => match l.poll().await.map_err(|e| e.to_string())? {
                E4::Incoming(P4::ConnAck(_)) => Polled::Connected,
                E4::Outgoing(Outgoing::Publish(pkid)) => Polled::Sent(pkid),
                // MQTT 3.1.1 PUBACKs carry no reason: every one is a success.
                E4::Incoming(P4::PubAck(ack)) => Polled::Acked {
                    pkid: ack.pkid,
                    refused: None,
                },
                _ => Polled::Other,
            },
        })
    }
}

impl Publisher {
    /// Queues a QoS 1 publish without waiting (this task also drains the queue).
    fn try_publish(
        &self,
        topic: String,
        retain: bool,
        payload: Vec<u8>,
        props: Option<PublishProperties>,
    ) -> Result<(), NotQueued> {
        let qos = QoS::AtLeastOnce;
        let result = match (self, props) {
            (Publisher::V5(c), Some(p)) => c
                .try_publish_with_properties(topic, qos, retain, payload, p)
                .map_err(|e| matches!(e, rumqttc::v5::ClientError::TryRequest(_))),
            (Publisher::V5(c), None) => c
                .try_publish(topic, qos, retain, payload)
                .map_err(|e| matches!(e, rumqttc::v5::ClientError::TryRequest(_))),
            (Publisher::V311(c), _) => c
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
                .map_err(|e| matches!(e, rumqttc::ClientError::TryRequest(_))),
        };
        result.map_err(|full| {
            if full {
                NotQueued::Full
            } else {
                NotQueued::Stopped
            }
        })
    }

    async fn disconnect(&self) {
        let _ = match self {
            Publisher::V5(c) => c.disconnect().await.is_ok(),
            Publisher::V311(c) => c.disconnect().await.is_ok(),
        };
    }
}

/// The event loop, polled in a task of its own. rumqttc's `poll` is not
/// cancel-safe: dropping it mid-handshake starts the connection over. The
/// lane's select loop drops whatever branch did not win on every wake and
/// tick, so polling there directly meant that a steady stream of new events
/// (one per connect round trip, e.g. 2,000/s on loopback, or the 100 ms tick
/// against a slow TLS handshake) kept the lane from ever connecting. A
/// channel's `recv` is cancel-safe.
struct Pump {
    polled: tokio::sync::mpsc::Receiver<Result<Polled, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Pump {
    fn start(mut events: Events) -> Pump {
        let (tx, polled) = tokio::sync::mpsc::channel(256);
        let task = tokio::spawn(async move {
            loop {
                let next = events.poll().await;
                let ended = next.is_err();
                if tx.send(next).await.is_err() || ended {
                    return;
                }
            }
        });
        Pump { polled, task }
    }

    async fn next(&mut self) -> Result<Polled, String> {
        self.polled
            .recv()
            .await
            .unwrap_or_else(|| Err("the MQTT event loop ended".into()))
    }
}

/// One connection: publish due events, match PUBACKs, until it ends.
///
/// The window: up to `max_in_flight` publishes await their PUBACK. It is
/// refilled from the outbox when half of it is free, or at once after a
/// wake (new events) or the 100 ms tick (retries that became due); a
/// refill that finds fewer due events than it had room for stops further
/// refills until the next wake or tick, so an idle lane does not scan.
async fn connection(
    dest: &Arc<MqttDestination>,
    ctx: &mut MqttLaneContext,
    publisher: Publisher,
    events: Events,
) -> Result<Ended, OutboxError> {
    let mut pump = Pump::start(events);
    let mut connected = false;
    // Outbox ids in the order their publishes were requested (None: presence).
    let mut requested: VecDeque<Option<u64>> = VecDeque::new();
    let mut by_pkid: HashMap<u16, u64> = HashMap::new();
    // Events published on this connection and not yet acknowledged, with when.
    let mut in_flight: HashMap<u64, (PendingEvent, u64)> = HashMap::new();
    let mut acks = AckBatch::default();
    let mut all_due = ctx.first_pass_all;
    let (mut exhausted, mut asked) = (false, true);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ack_timeout_ms = dest.ack_timeout.as_millis() as u64;
    let ended = loop {
        let mut ticked = false;
        tokio::select! {
            _ = ctx.stop.changed() => break Ended::Stop,
            polled = pump.next() => match polled {
                Ok(Polled::Connected) => {
                    connected = true;
                    ctx.stats.offline.store(false, Ordering::Relaxed);
                    let topic = MqttDestination::status_topic(&ctx.device_id);
                    if publisher.try_publish(topic, true, b"online".to_vec(), None).is_ok() {
                        requested.push_back(None);
                    }
                }
                Ok(Polled::Sent(pkid)) => {
                    if let Some(Some(id)) = requested.pop_front() {
                        by_pkid.insert(pkid, id);
                    }
                }
                Ok(Polled::Acked { pkid, refused }) => {
                    let Some(id) = by_pkid.remove(&pkid) else { continue };
                    let Some((event, _)) = in_flight.remove(&id) else { continue };
                    match refused {
                        None => acks.push(Ack {
                            id,
                            attempts: event.state.attempts + 1,
                            status: "PUBACK".into(),
                            created_ms: event.meta.created_ms,
                        }),
                        Some(reason) => failed(ctx, dest, event, reason).await?,
                    }
                }
                Ok(Polled::Other) => {}
                Err(e) => break Ended::Offline(e),
            },
            written = acks.written(), if acks.is_writing() => {
                ctx.stats.record_delivered(&written?, ctx.clock.now_ms());
            }
            _ = ctx.wake.notified() => (exhausted, asked) = (false, true),
            _ = tick.tick() => (exhausted, asked, ticked) = (false, true, true),
        }
        let now = ctx.clock.now_ms();
        acks.start(&ctx.outbox, &dest.name, now);
        // Publishes unacknowledged for too long cost an attempt; then reconnect.
        if ticked
            && in_flight
                .values()
                .any(|(_, at)| now.saturating_sub(*at) > ack_timeout_ms)
        {
            let overdue: Vec<u64> = in_flight
                .iter()
                .filter(|(_, (_, at))| now.saturating_sub(*at) > ack_timeout_ms)
                .map(|(id, _)| *id)
                .collect();
            for id in overdue {
                if let Some((event, _)) = in_flight.remove(&id) {
                    let why = format!("no PUBACK within {} s", dest.ack_timeout.as_secs_f64());
                    failed(ctx, dest, event, why).await?;
                }
            }
            break Ended::AckTimeout;
        }
        let free = dest.max_in_flight.saturating_sub(in_flight.len());
        if !connected || free == 0 || exhausted || !(asked || free * 2 >= dest.max_in_flight) {
            continue;
        }
        asked = false;
        let horizon = if all_due { u64::MAX } else { now };
        all_due = false;
        let skip: HashSet<u64> = in_flight.keys().copied().chain(acks.ids()).collect();
        let name = dest.name.clone();
        let max_wait = dest.policy.longest_wait().as_millis() as u64;
        let due = blocking(&ctx.outbox, move |o| {
            o.due_except(&name, horizon, max_wait, free, &skip)
        })
        .await?;
        exhausted = due.len() < free;
        for event in due {
            let topic = dest.topic_for(&ctx.device_id, &event.meta.kind);
            let headers = sign(
                Scheme::Standard,
                &dest.keys,
                &event.meta.event_id,
                now / 1000,
                &event.bytes,
            );
            let (payload, props) = match dest.protocol {
                MqttProtocol::V5 => (
                    event.bytes.clone(),
                    Some(PublishProperties {
                        content_type: Some("application/json".into()),
                        user_properties: headers
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect(),
                        ..Default::default()
                    }),
                ),
                MqttProtocol::V311 => (envelope(&headers, &event.bytes), None),
            };
            match publisher.try_publish(topic, false, payload, props) {
                Ok(()) => requested.push_back(Some(event.outbox_id)),
                Err(NotQueued::Full) => break,
                Err(NotQueued::Stopped) => break,
            }
            in_flight.insert(event.outbox_id, (event, now));
        }
    };
    // Every PUBACK received is a real acknowledgement: record it before leaving.
    let now = ctx.clock.now_ms();
    let written = acks.finish(&ctx.outbox, &dest.name, now).await?;
    ctx.stats.record_delivered(&written, now);
    if matches!(ended, Ended::Stop) && connected {
        // A clean exit says so: the retained presence becomes `offline`
        // (the last will covers only a lost connection), acknowledged
        // before the DISCONNECT (bounded: the broker may be gone).
        let topic = MqttDestination::status_topic(&ctx.device_id);
        if publisher
            .try_publish(topic, true, b"offline".to_vec(), None)
            .is_ok()
        {
            let mut ahead = requested.len();
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let mut mine = None;
                loop {
                    match pump.next().await {
                        Ok(Polled::Sent(pkid)) if ahead == 0 => mine = Some(pkid),
                        Ok(Polled::Sent(_)) => ahead -= 1,
                        Ok(Polled::Acked { pkid, .. }) if Some(pkid) == mine => break,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
            .await;
        }
    }
    if matches!(ended, Ended::Stop | Ended::AckTimeout) {
        // Let the event loop send the DISCONNECT (bounded: the broker may be gone).
        publisher.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            while pump.next().await.is_ok() {}
        })
        .await;
    }
    Ok(ended)
}
