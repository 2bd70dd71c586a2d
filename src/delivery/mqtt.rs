//! MQTT delivery (rumqttc, MQTT 5): one lane per broker.
//!
//! Owns: the connection (TCP or TLS), presence (last will and `online`),
//! publishing with QoS 1, and matching PUBACKs to events.
//!
//! Acknowledgement: rumqttc's `publish()` returns when the message is
//! *queued*, not when the broker has it (rumqtt issues #349, #805, #1007).
//! This lane owns the event loop. The loop reports `Outgoing::Publish(pkid)`
//! in the order the publishes were requested, so a FIFO of outbox ids gives
//! each packet id its event. An event leaves the MQTT lane only on the
//! PUBACK for its own packet id, with a success reason code.
//!
//! Signing: the payload is the exact event bytes. The Standard Webhooks
//! headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`) travel
//! as MQTT 5 user properties, so a subscriber verifies exactly as a webhook
//! receiver does. MQTT 3.1.1 has no user properties; this version speaks
//! MQTT 5 only (Mosquitto ≥ 1.6, EMQX, HiveMQ and rumqttd all do).
//!
//! Offline: a connection that cannot be made, or that drops, pauses the lane.
//! The lane reconnects with the capped probe backoff and spends no attempts.
//! Unacknowledged events are still pending in the outbox and are published
//! again (same id) after reconnecting. A broker that keeps a publish
//! unacknowledged for `ack_timeout` costs that event an attempt, and the
//! lane reconnects.

use super::policy::{next_delay, probe_delay, RetryPolicy};
use super::signing::{sign, Scheme, Secret};
use super::webhook::{LaneClock, LaneStats};
use super::{blocking, unit_random};
use crate::events::EventKind;
use crate::outbox::{AttemptRecord, Outbox, OutboxError, PendingEvent};
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use std::collections::{HashMap, VecDeque};
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

/// A validated MQTT destination.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttDestination {
    pub name: String,
    pub host: String,
    pub port: u16,
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

    fn options(&self, device_id: &str) -> Result<MqttOptions, String> {
        let id = if self.client_id.is_empty() {
            format!("rppg-{device_id}")
        } else {
            self.client_id.replace("{deviceId}", device_id)
        };
        let mut o = MqttOptions::new(id, self.host.clone(), self.port);
        o.set_keep_alive(self.keep_alive);
        o.set_clean_start(true);
        o.set_last_will(LastWill::new(
            Self::status_topic(device_id),
            "offline",
            QoS::AtLeastOnce,
            true,
            None,
        ));
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            o.set_credentials(u.clone(), String::from_utf8_lossy(p.expose()).into_owned());
        } else if let Some(u) = &self.username {
            o.set_credentials(u.clone(), "");
        }
        if let Some(tls) = &self.tls {
            o.set_transport(rumqttc::Transport::tls_with_config(tls_config(tls)?.into()));
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
        let options = match dest.options(&ctx.device_id) {
            Ok(o) => o,
            Err(e) => {
                // A TLS file problem cannot heal by itself; report it and wait for a restart.
                *ctx.stats.last_error.lock().expect("stats lock") = Some(e);
                ctx.stats.offline.store(true, Ordering::Relaxed);
                let _ = ctx.stop.changed().await;
                return Ok(());
            }
        };
        // Room for the whole in-flight window plus presence: publishing never waits on it.
        let (client, eventloop) = AsyncClient::new(options, dest.max_in_flight + 8);
        match connection(&dest, &mut ctx, client, eventloop).await? {
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

/// One connection: publish due events, match PUBACKs, until it ends.
async fn connection(
    dest: &Arc<MqttDestination>,
    ctx: &mut MqttLaneContext,
    client: AsyncClient,
    mut eventloop: EventLoop,
) -> Result<Ended, OutboxError> {
    let mut connected = false;
    // Outbox ids in the order their publishes were requested (None: presence).
    let mut requested: VecDeque<Option<u64>> = VecDeque::new();
    let mut by_pkid: HashMap<u16, u64> = HashMap::new();
    // Events published on this connection and not yet acknowledged, with when.
    let mut in_flight: HashMap<u64, (PendingEvent, u64)> = HashMap::new();
    let mut all_due = ctx.first_pass_all;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let room = connected && in_flight.len() < dest.max_in_flight;
        tokio::select! {
            _ = ctx.stop.changed() => {
                let _ = client.disconnect().await;
                return Ok(Ended::Stop);
            }
            polled = eventloop.poll() => match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    ctx.stats.offline.store(false, Ordering::Relaxed);
                    let topic = MqttDestination::status_topic(&ctx.device_id);
                    if client.try_publish(topic, QoS::AtLeastOnce, true, "online").is_ok() {
                        requested.push_back(None);
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(Some(id)) = requested.pop_front() {
                        by_pkid.insert(pkid, id);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let Some(id) = by_pkid.remove(&ack.pkid) else { continue };
                    let Some((event, _)) = in_flight.remove(&id) else { continue };
                    if matches!(ack.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers) {
                        let now = ctx.clock.now_ms();
                        let (name, attempts) = (dest.name.clone(), event.state.attempts + 1);
                        blocking(&ctx.outbox, move |o| o.ack(&name, id, now, "PUBACK", attempts)).await?;
                        ctx.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed(ctx, dest, event, format!("PUBACK {:?}", ack.reason)).await?;
                    }
                }
                Ok(_) => {}
                Err(e) => return Ok(Ended::Offline(e.to_string())),
            },
            _ = ctx.wake.notified(), if room => {}
            _ = tick.tick() => {}
        }
        // Publishes unacknowledged for too long cost an attempt; then reconnect.
        let now = ctx.clock.now_ms();
        let overdue: Vec<u64> = in_flight
            .iter()
            .filter(|(_, (_, at))| now.saturating_sub(*at) > dest.ack_timeout.as_millis() as u64)
            .map(|(id, _)| *id)
            .collect();
        if !overdue.is_empty() {
            for id in overdue {
                if let Some((event, _)) = in_flight.remove(&id) {
                    let why = format!("no PUBACK within {} s", dest.ack_timeout.as_secs_f64());
                    failed(ctx, dest, event, why).await?;
                }
            }
            let _ = client.disconnect().await;
            return Ok(Ended::AckTimeout);
        }
        if !(connected && in_flight.len() < dest.max_in_flight) {
            continue;
        }
        let horizon = if all_due { u64::MAX } else { now };
        all_due = false;
        let (name, limit) = (dest.name.clone(), dest.max_in_flight + in_flight.len());
        let due = blocking(&ctx.outbox, move |o| o.due(&name, horizon, limit)).await?;
        for event in due {
            if in_flight.len() >= dest.max_in_flight {
                break;
            }
            if in_flight.contains_key(&event.outbox_id) {
                continue;
            }
            let topic = dest.topic_for(&ctx.device_id, &event.meta.kind);
            let props = PublishProperties {
                content_type: Some("application/json".into()),
                user_properties: sign(
                    Scheme::Standard,
                    &dest.keys,
                    &event.meta.event_id,
                    now / 1000,
                    &event.bytes,
                )
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
                ..Default::default()
            };
            let id = event.outbox_id;
            // Never await the request channel here: this task also polls the
            // event loop that drains it (awaiting would deadlock).
            match client.try_publish_with_properties(
                topic,
                QoS::AtLeastOnce,
                false,
                event.bytes.clone(),
                props,
            ) {
                Ok(()) => requested.push_back(Some(id)),
                Err(rumqttc::v5::ClientError::TryRequest(_)) => break,
                Err(_) => return Ok(Ended::Offline("the MQTT client stopped".into())),
            }
            in_flight.insert(id, (event, now));
        }
    }
}
