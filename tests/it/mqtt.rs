//! MQTT delivery against a real broker (rumqttd, in-process on a free port)
//! and a real MQTT 5 subscriber that verifies every signature.

use crate::util::{free_addr, open_outbox};
use rppg_agent::delivery::mqtt::MqttTls;
use rppg_agent::delivery::mqtt::{MqttDestination, MqttProtocol};
use rppg_agent::delivery::policy::RetryPolicy;
use rppg_agent::delivery::signing::{open_envelope, parse_secret, verify, Scheme, Secret};
use rppg_agent::delivery::{Delivery, Setup};
use rppg_agent::events::{Event, Stamper};
use rppg_agent::outbox::Outbox;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event as MqttEvent, MqttOptions};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

pub(crate) fn key() -> Secret {
    parse_secret(Scheme::Standard, SECRET).unwrap()
}

/// How the in-process broker listens.
pub(crate) enum Listener {
    V5,
    V311,
    /// MQTT 5 over TLS that requires a client certificate signed by the CA.
    MutualTls(TlsFiles),
}

/// PEM files of a test PKI: a CA, the broker's certificate for 127.0.0.1,
/// and a client certificate, all signed by the CA.
#[derive(Clone)]
pub(crate) struct TlsFiles {
    ca: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
}

/// Makes a fresh CA and certificates with rcgen under `dir`.
fn make_pki(dir: &std::path::Path, tag: &str) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("rppg-agent test CA {tag}"));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into()]);
    let (client_cert, client_key) = leaf(vec!["kiosk-client".into()]);
    let write = |name: &str, text: &str| {
        let path = dir.join(format!("{tag}-{name}"));
        std::fs::write(&path, text).unwrap();
        path
    };
    TlsFiles {
        ca: write("ca.pem", &ca_cert.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    }
}

/// Starts rumqttd on `addr` in a background thread; it lives until the test process ends.
pub(crate) fn start_broker(addr: SocketAddr, listener: Listener) {
    use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};
    let tls = match &listener {
        Listener::MutualTls(files) => Some(TlsConfig::Rustls {
            capath: Some(files.ca.display().to_string()),
            certpath: files.server_cert.display().to_string(),
            keypath: files.server_key.display().to_string(),
        }),
        _ => None,
    };
    let server = ServerSettings {
        name: "test".into(),
        listen: addr,
        tls,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 5000,
            max_payload_size: 1 << 20,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let servers = Some([("1".to_string(), server)].into());
    let (v4, v5) = match listener {
        Listener::V311 => (servers, None),
        _ => (None, servers),
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 100,
            max_outgoing_packet_count: 1000,
            max_segment_size: 100 << 20,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4,
        v5,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        let _ = broker.start();
    });
}

/// Waits (bounded) until the broker accepts TCP connections.
pub(crate) async fn wait_for_port(addr: SocketAddr) {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the broker did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain-TCP destination on `addr` speaking `protocol`.
fn destination(name: &str, addr: SocketAddr, protocol: MqttProtocol) -> MqttDestination {
    MqttDestination {
        name: name.into(),
        host: addr.ip().to_string(),
        port: addr.port(),
        protocol,
        tls: None,
        username: None,
        password: None,
        client_id: format!("rppg-test-{name}"),
        topic: "rppg/{deviceId}/events/{event}".into(),
        keys: vec![key()],
        events: vec![],
        policy: RetryPolicy::default(),
        keep_alive: Duration::from_secs(5),
        ack_timeout: Duration::from_secs(10),
        max_in_flight: 8,
    }
}

fn start_delivery(outbox: &Arc<Outbox>, dests: &[MqttDestination]) -> Delivery {
    Delivery::start(
        outbox.clone(),
        Setup {
            webhooks: &[],
            mqtt: dests,
            device_id: "kiosk-1".into(),
            probe: (Duration::from_millis(50), Duration::from_millis(200)),
            first_pass_all: false,
        },
        now_ms(),
    )
    .unwrap()
}

/// Appends `n` events for `lanes`; returns their outbox ids, event ids and bytes.
fn append(outbox: &Outbox, lanes: &[&str], n: u64) -> Vec<(u64, String, Vec<u8>)> {
    let mut st = Stamper::new("kiosk-1", "ses_mqtt_more");
    (0..n)
        .map(|i| {
            let e = st.stamp(
                &Event::general_error("TEST", &format!("event {i}")),
                now_ms(),
                i as u128,
            );
            let n = outbox.append(&e, lanes, now_ms()).unwrap();
            (n, e.id, e.bytes)
        })
        .collect()
}

/// Waits (bounded) until `lane` has recorded `n` deliveries.
async fn wait_delivered(outbox: &Outbox, lane: &str, n: u64, limit: Duration) {
    let start = Instant::now();
    loop {
        let delivered = outbox.stats(lane, u64::MAX).unwrap().delivered;
        if delivered >= n {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{lane}: {delivered} of {n} PUBACKs recorded within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Messages a subscriber received: topic -> (payload, user properties).
pub(crate) type Inbox = Arc<Mutex<Vec<(String, Vec<u8>, Vec<(String, String)>)>>>;

pub(crate) async fn subscribe(addr: SocketAddr, filter: &str) -> Inbox {
    let inbox: Inbox = Arc::default();
    // Each subscriber its own id: two with one id would take turns.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut opts = MqttOptions::new(
        format!("test-subscriber-{n}"),
        addr.ip().to_string(),
        addr.port(),
    );
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let sink = inbox.clone();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    let props = p
                        .properties
                        .map(|pp| pp.user_properties)
                        .unwrap_or_default();
                    sink.lock().unwrap().push((
                        String::from_utf8_lossy(&p.topic).into_owned(),
                        p.payload.to_vec(),
                        props,
                    ));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    inbox
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_an_mqtt5_broker_signed_and_leave_the_lane_only_on_puback() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let addr = free_addr();
    let dest = destination("broker", addr, MqttProtocol::V5);
    let mut st = Stamper::new("kiosk-1", "ses_mqtt");
    let ids: Vec<String> = (0..20)
        .map(|i| {
            let e = st.stamp(
                &Event::general_error("TEST", &format!("event {i}")),
                now_ms(),
                i,
            );
            outbox.append(&e, &["broker"], now_ms()).unwrap();
            e.id
        })
        .collect();
    // The broker is not there yet: the lane is offline and spends no attempts.
    let delivery = start_delivery(&outbox, std::slice::from_ref(&dest));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pending = outbox.due("broker", u64::MAX, 100).unwrap();
    assert_eq!(pending.len(), 20);
    assert!(
        pending.iter().all(|p| p.state.attempts == 0),
        "offline costs no attempts"
    );

    start_broker(addr, Listener::V5);
    wait_for_port(addr).await;
    let inbox = subscribe(addr, "rppg/#").await;
    // Events published before the subscription are not retained: wait for
    // the lane to deliver, which needs the subscriber connected first only
    // for counting; the outbox counts the PUBACKs.
    let start = Instant::now();
    while outbox.stats("broker", u64::MAX).unwrap().delivered < 20 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not all PUBACKs arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(outbox.stats("broker", u64::MAX).unwrap().pending, 0);
    // A second batch while the subscriber listens: check topics and signatures.
    let more: Vec<String> = (20..30)
        .map(|i| {
            let e = st.stamp(
                &Event::general_error("TEST", &format!("event {i}")),
                now_ms(),
                i,
            );
            outbox.append(&e, &["broker"], now_ms()).unwrap();
            e.id
        })
        .collect();
    delivery.wake();
    let start = Instant::now();
    let id_of = |props: &Vec<(String, String)>| {
        props
            .iter()
            .find(|(k, _)| k == "webhook-id")
            .map(|p| p.1.clone())
    };
    loop {
        let got: Vec<String> = inbox
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, _, p)| id_of(p))
            .collect();
        let missing = more.iter().filter(|id| !got.contains(id)).count();
        if missing == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the subscriber is missing {missing} of 10"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    delivery.stop().await;
    let got = inbox.lock().unwrap().clone();
    let mut seen = HashMap::new();
    for (topic, payload, props) in got.iter().filter(|(t, _, _)| t.contains("/events/")) {
        assert_eq!(topic, "rppg/kiosk-1/events/GENERAL_ERROR");
        let now_s = now_ms() / 1000;
        assert_eq!(
            verify(Scheme::Standard, &[key()], props, payload, now_s, 300),
            Ok(0),
            "{props:?}"
        );
        let id = props
            .iter()
            .find(|(k, _)| k == "webhook-id")
            .unwrap()
            .1
            .clone();
        seen.insert(id, ());
    }
    assert!(
        more.iter().all(|id| seen.contains_key(id)),
        "every event of the second batch"
    );
    assert!(ids.iter().all(|id| !id.is_empty()));
    let online = got
        .iter()
        .any(|(t, p, _)| t == "rppg/kiosk-1/status" && p == b"online");
    assert!(online, "presence is published (retained) on connect");
    assert_eq!(outbox.stats("broker", u64::MAX).unwrap().delivered, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lanes_with_default_client_ids_share_a_broker_and_a_clean_stop_leaves_presence_offline()
{
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let addr = free_addr();
    start_broker(addr, Listener::V5);
    wait_for_port(addr).await;
    // Default client ids (empty): one per lane, so neither takes the
    // other's session.
    let dests: Vec<MqttDestination> = ["first", "second"]
        .iter()
        .map(|n| MqttDestination {
            client_id: String::new(),
            ..destination(n, addr, MqttProtocol::V5)
        })
        .collect();
    assert_ne!(dests[0].client_id("kiosk-1"), dests[1].client_id("kiosk-1"));
    append(&outbox, &["first", "second"], 40);
    let delivery = start_delivery(&outbox, &dests);
    wait_delivered(&outbox, "first", 40, Duration::from_secs(20)).await;
    wait_delivered(&outbox, "second", 40, Duration::from_secs(20)).await;
    let presence = subscribe(addr, "rppg/kiosk-1/status").await;
    let start = Instant::now();
    while !presence
        .lock()
        .unwrap()
        .iter()
        .any(|(_, p, _)| p == b"online")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "online is retained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    delivery.stop().await;
    // A subscriber arriving after the clean exit reads the retained state.
    let later = subscribe(addr, "rppg/kiosk-1/status").await;
    let start = Instant::now();
    loop {
        let got: Vec<Vec<u8>> = later
            .lock()
            .unwrap()
            .iter()
            .map(|(_, p, _)| p.clone())
            .collect();
        if !got.is_empty() {
            assert_eq!(got.last().unwrap(), b"offline", "{got:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no retained presence"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Messages an MQTT 3.1.1 subscriber received: (topic, payload).
type Inbox311 = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An MQTT 3.1.1 subscriber: (topic, payload) of every message.
async fn subscribe_v311(addr: SocketAddr, filter: &str) -> Inbox311 {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let inbox: Inbox311 = Arc::default();
    let mut opts = MqttOptions::new("test-subscriber-311", addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let sink = inbox.clone();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client; // dropping it would end the event loop
        let mut subscribed = Some(subscribed_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    sink.lock()
                        .unwrap()
                        .push((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
        .await
        .expect("SUBACK within 10 s")
        .unwrap();
    inbox
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_311_brokers_get_a_signed_envelope_whose_body_is_the_exact_event() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let addr = free_addr();
    start_broker(addr, Listener::V311);
    wait_for_port(addr).await;
    let inbox = subscribe_v311(addr, "rppg/#").await;
    let sent = append(&outbox, &["old-broker"], 12);
    let delivery = start_delivery(
        &outbox,
        &[destination("old-broker", addr, MqttProtocol::V311)],
    );
    wait_delivered(&outbox, "old-broker", 12, Duration::from_secs(20)).await;
    // Deliveries are recorded on PUBACK; the subscriber may see them a moment later.
    let start = Instant::now();
    while inbox
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| t.contains("/events/"))
        .count()
        < 12
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the subscriber got fewer than 12"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    delivery.stop().await;
    let got = inbox.lock().unwrap().clone();
    for (_, id, bytes) in &sent {
        let (topic, payload) = got
            .iter()
            .find(|(_, p)| String::from_utf8_lossy(p).contains(id.as_str()))
            .unwrap_or_else(|| panic!("{id} was not received"));
        assert_eq!(topic, "rppg/kiosk-1/events/GENERAL_ERROR");
        let (headers, body) = open_envelope(payload).unwrap();
        assert_eq!(
            &body, bytes,
            "the envelope's body is the stored event, byte for byte"
        );
        assert_eq!(
            verify(
                Scheme::Standard,
                &[key()],
                &headers,
                &body,
                now_ms() / 1000,
                300
            ),
            Ok(0)
        );
        let mut tampered = body.clone();
        tampered[10] ^= 1;
        assert!(verify(
            Scheme::Standard,
            &[key()],
            &headers,
            &tampered,
            now_ms() / 1000,
            300
        )
        .is_err());
    }
    assert!(
        got.iter()
            .any(|(t, p)| t == "rppg/kiosk-1/status" && p == b"online"),
        "presence is published on 3.1.1 too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_delivers_with_the_right_ca_and_client_certificate_and_stays_offline_without_either(
) {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let pki = make_pki(dir.path(), "good");
    let other = make_pki(dir.path(), "other");
    let addr = free_addr();
    start_broker(addr, Listener::MutualTls(pki.clone()));
    wait_for_port(addr).await;
    let tls_dest = |name: &str, ca: &std::path::Path, files: &TlsFiles| MqttDestination {
        tls: Some(MqttTls {
            ca_file: ca.to_path_buf(),
            client_auth: Some((files.client_cert.clone(), files.client_key.clone())),
        }),
        ..destination(name, addr, MqttProtocol::V5)
    };
    // Trusts the broker, presents a certificate the broker trusts.
    let good = tls_dest("tls-good", &pki.ca, &pki);
    // Trusts another CA: the broker's certificate does not verify.
    let wrong_ca = tls_dest("tls-wrong-ca", &other.ca, &pki);
    // Trusts the broker but has no client certificate: the broker refuses it.
    let anonymous = MqttDestination {
        tls: Some(MqttTls {
            ca_file: pki.ca.clone(),
            client_auth: None,
        }),
        ..destination("tls-anonymous", addr, MqttProtocol::V5)
    };
    let lanes = ["tls-good", "tls-wrong-ca", "tls-anonymous"];
    let sent = append(&outbox, &lanes, 10);
    let delivery = start_delivery(&outbox, &[good, wrong_ca, anonymous]);
    wait_delivered(&outbox, "tls-good", 10, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = |name: &str| {
        let lane = delivery.lanes().iter().find(|l| l.name == name).unwrap();
        lane.stats.clone()
    };
    let (wrong, anon) = (stats("tls-wrong-ca"), stats("tls-anonymous"));
    delivery.stop().await;
    for (name, lane) in [("tls-wrong-ca", wrong), ("tls-anonymous", anon)] {
        assert!(
            lane.offline.load(std::sync::atomic::Ordering::Relaxed),
            "{name}"
        );
        let error = lane.last_error.lock().unwrap().clone().unwrap_or_default();
        assert!(error.starts_with("offline: "), "{name}: {error}");
        let pending = outbox.due(name, u64::MAX, 100).unwrap();
        assert_eq!(pending.len(), sent.len(), "{name}: nothing is lost");
        assert!(
            pending.iter().all(|p| p.state.attempts == 0),
            "{name}: offline costs no attempts"
        );
    }
    assert_eq!(outbox.stats("tls-good", u64::MAX).unwrap().delivered, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_through_a_small_window_with_every_event_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let addr = free_addr();
    start_broker(addr, Listener::V5);
    wait_for_port(addr).await;
    let sent = append(&outbox, &["window"], 500);
    let dest = MqttDestination {
        max_in_flight: 7,
        ..destination("window", addr, MqttProtocol::V5)
    };
    let delivery = start_delivery(&outbox, &[dest]);
    wait_delivered(&outbox, "window", 500, Duration::from_secs(30)).await;
    let lane = delivery.lanes()[0].stats.clone();
    delivery.stop().await;
    let stats = outbox.stats("window", u64::MAX).unwrap();
    assert_eq!((stats.pending, stats.dead, stats.delivered), (0, 0, 500));
    // Batched acks are counted once each; each event took exactly one attempt.
    assert_eq!(
        lane.delivered.load(std::sync::atomic::Ordering::Relaxed),
        500
    );
    for (n, _, _) in sent.iter().step_by(50) {
        let state = outbox.lane_state("window", *n).unwrap().unwrap();
        assert_eq!(state["status"], "delivered");
        assert_eq!(state["delivered"]["attempts"], 1);
    }
}

/// A TCP proxy in front of the broker that can "restart" it as the agent
/// sees a broker restart: every connection dropped, new ones refused for a
/// while, then accepted again (new sessions).
struct Proxy {
    addr: SocketAddr,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    upstream: SocketAddr,
    /// Connections accepted, ever.
    accepted: Arc<std::sync::atomic::AtomicU32>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Arc<Proxy> {
        let addr = free_addr();
        let proxy = Arc::new(Proxy {
            addr,
            task: Mutex::new(None),
            upstream,
            accepted: Arc::default(),
        });
        proxy.listen().await;
        proxy
    }

    /// Accepts on `addr`; the task owns every forwarded connection.
    async fn listen(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let upstream = self.upstream;
        let accepted = self.accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    next = listener.accept() => {
                        let Ok((mut client, _)) = next else { return };
                        accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        conns.spawn(async move {
                            if let Ok(mut broker) = tokio::net::TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                            }
                        });
                    }
                    Some(_) = conns.join_next() => {}
                }
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Drops every connection, refuses new ones for `down`, then accepts again.
    async fn restart(&self, down: Duration) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort(); // the JoinSet aborts every connection with it
        }
        tokio::time::sleep(down).await;
        self.listen().await;
    }
}

/// The `id` of every event a subscriber received (MQTT 5: the payload is the event).
pub(crate) fn received_ids(inbox: &Inbox) -> Vec<String> {
    inbox
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, payload, _)| {
            let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
            Some(v["id"].as_str()?.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing_and_repeats_only_unacknowledged_ids() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let broker = free_addr();
    start_broker(broker, Listener::V5);
    wait_for_port(broker).await;
    let proxy = Proxy::start(broker).await;
    let inbox = subscribe(broker, "rppg/#").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dest = MqttDestination {
        max_in_flight: 64,
        ..destination("restart", proxy.addr, MqttProtocol::V5)
    };
    let delivery = start_delivery(&outbox, &[dest]);
    // Events keep arriving while the broker goes away twice.
    let total = 1500u64;
    let writer = {
        let outbox = outbox.clone();
        tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            for _ in 0..15 {
                all.extend(append(&outbox, &["restart"], total / 15));
                std::thread::sleep(Duration::from_millis(40));
            }
            all
        })
    };
    for at in [total / 3, 2 * total / 3] {
        wait_delivered(&outbox, "restart", at, Duration::from_secs(60)).await;
        proxy.restart(Duration::from_millis(800)).await;
    }
    let sent = writer.await.unwrap();
    wait_delivered(&outbox, "restart", total, Duration::from_secs(60)).await;
    let lane = delivery.lanes()[0].stats.clone();
    delivery.stop().await;
    let stats = outbox.stats("restart", u64::MAX).unwrap();
    assert_eq!((stats.pending, stats.dead, stats.delivered), (0, 0, total));
    // A dropped connection is offline, not failure: no attempts were spent.
    assert_eq!(lane.retried.load(std::sync::atomic::Ordering::Relaxed), 0);
    // Every event reached the subscriber; repeats carry the same id.
    let start = Instant::now();
    loop {
        let got: std::collections::HashSet<String> = received_ids(&inbox).into_iter().collect();
        if sent.iter().all(|(_, id, _)| got.contains(id)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} of {total} ids reached the subscriber",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids = received_ids(&inbox);
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len() as u64, total, "only our ids");
    let connections = proxy.accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        connections >= 3,
        "the lane reconnected after each restart: {connections}"
    );
    eprintln!(
        "broker restarts: {total} events, {connections} connections, {} repeated deliveries",
        ids.len() as u64 - total
    );
    // Repeats are bounded by what was in flight when the broker went away.
    assert!(
        ids.len() as u64 <= total + 2 * 64 + 64,
        "{} messages for {total} events",
        ids.len()
    );
}

/// A broker that accepts MQTT 5 connections, answers pings, and swallows
/// every PUBLISH without a PUBACK. Counts connections and publishes.
async fn start_silent_broker() -> (SocketAddr, Arc<Mutex<(u32, u32)>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts: Arc<Mutex<(u32, u32)>> = Arc::default();
    let seen = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            seen.lock().unwrap().0 += 1;
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    // Fixed header: type byte, then the variable-length remaining length.
                    let Ok(kind) = socket.read_u8().await else {
                        return;
                    };
                    let (mut len, mut shift) = (0usize, 0);
                    loop {
                        let Ok(b) = socket.read_u8().await else {
                            return;
                        };
                        len |= ((b & 0x7f) as usize) << shift;
                        shift += 7;
                        if b & 0x80 == 0 || shift > 21 {
                            break;
                        }
                    }
                    let mut body = vec![0u8; len];
                    if socket.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let reply: &[u8] = match kind >> 4 {
                        1 => &[0x20, 0x03, 0x00, 0x00, 0x00], // CONNECT -> CONNACK, success
                        12 => &[0xd0, 0x00],                  // PINGREQ -> PINGRESP
                        3 => {
                            seen.lock().unwrap().1 += 1; // PUBLISH -> nothing, ever
                            &[]
                        }
                        14 => return, // DISCONNECT
                        _ => &[],
                    };
                    if socket.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_never_sends_puback_costs_attempts_and_dead_letters_with_that_reason() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let (addr, counts) = start_silent_broker().await;
    let sent = append(&outbox, &["silent"], 2);
    let dest = MqttDestination {
        ack_timeout: Duration::from_millis(300),
        policy: RetryPolicy {
            schedule: vec![
                Duration::ZERO,
                Duration::from_millis(50),
                Duration::from_millis(50),
            ],
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        ..destination("silent", addr, MqttProtocol::V5)
    };
    let delivery = start_delivery(&outbox, &[dest]);
    let start = Instant::now();
    while outbox.stats("silent", u64::MAX).unwrap().dead < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            outbox.stats("silent", u64::MAX).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    delivery.stop().await;
    let stats = outbox.stats("silent", u64::MAX).unwrap();
    assert_eq!((stats.pending, stats.dead, stats.delivered), (0, 2, 0));
    let dead = outbox.dead_letters(Some("silent")).unwrap();
    let mut dead_ids: Vec<&String> = dead.iter().map(|(_, _, m, _)| &m.event_id).collect();
    dead_ids.sort();
    let mut sent_ids: Vec<&String> = sent.iter().map(|(_, id, _)| id).collect();
    sent_ids.sort();
    assert_eq!(dead_ids, sent_ids, "both events kept, as dead letters");
    for (_, _, _, d) in &dead {
        assert_eq!(
            d.reason,
            "gave up after 3 attempts; last: no PUBACK within 0.3 s"
        );
        let results: Vec<&str> = d.history.iter().map(|a| a.result.as_str()).collect();
        assert_eq!(results, vec!["no PUBACK within 0.3 s"; 3]);
    }
    let (connections, publishes) = *counts.lock().unwrap();
    assert!(
        publishes >= 6,
        "each event was published 3 times: {publishes}"
    );
    assert!(
        connections >= 3,
        "the lane reconnected after each timeout: {connections}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_stream_of_new_events_does_not_keep_the_lane_from_connecting() {
    // Found by the SIGKILL soak: each new event wakes the lane, and the lane
    // used to poll rumqttc's event loop inside its select, which dropped the
    // half-done connection handshake on every wake. At 2,000 events/s the
    // lane never connected until the stream stopped.
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let addr = free_addr();
    start_broker(addr, Listener::V5);
    wait_for_port(addr).await;
    let delivery = start_delivery(&outbox, &[destination("stream", addr, MqttProtocol::V5)]);
    let lane = delivery.lanes()[0].clone();
    let writer = {
        let outbox = outbox.clone();
        tokio::task::spawn_blocking(move || {
            for _ in 0..1500 {
                append(&outbox, &["stream"], 1);
                lane.wake.notify_one();
                std::thread::sleep(Duration::from_micros(500));
            }
            outbox.stats("stream", u64::MAX).unwrap().delivered
        })
    };
    let delivered_while_writing = writer.await.unwrap();
    assert!(
        delivered_while_writing > 500,
        "only {delivered_while_writing} of 1500 delivered while events kept arriving"
    );
    wait_delivered(&outbox, "stream", 1500, Duration::from_secs(30)).await;
    delivery.stop().await;
}
