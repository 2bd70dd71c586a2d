//! MQTT delivery against a real broker (rumqttd, in-process on a free port)
//! and a real MQTT 5 subscriber that verifies every signature.

use rppg_agent::delivery::mqtt::MqttDestination;
use rppg_agent::delivery::policy::RetryPolicy;
use rppg_agent::delivery::signing::{parse_secret, verify, Scheme, Secret};
use rppg_agent::delivery::{Delivery, Setup};
use rppg_agent::events::{Event, Stamper};
use rppg_agent::outbox::{Outbox, OutboxConfig};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event as MqttEvent, MqttOptions};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn key() -> Secret {
    parse_secret(Scheme::Standard, SECRET).unwrap()
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts rumqttd (MQTT 5) on `addr` in a background thread; it lives until the test process ends.
fn start_broker(addr: SocketAddr) {
    use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};
    let server = ServerSettings {
        name: "v5-test".into(),
        listen: addr,
        tls: None,
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
        v4: None,
        v5: Some([("1".to_string(), server)].into()),
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

/// Messages a subscriber received: topic -> (payload, user properties).
type Inbox = Arc<Mutex<Vec<(String, Vec<u8>, Vec<(String, String)>)>>>;

async fn subscribe(addr: SocketAddr, filter: &str) -> Inbox {
    let inbox: Inbox = Arc::default();
    let mut opts = MqttOptions::new("test-subscriber", addr.ip().to_string(), addr.port());
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
    let outbox = Arc::new(
        Outbox::open(OutboxConfig {
            path: dir.path().join("outbox"),
            max_bytes: 1 << 30,
            cache_capacity_bytes: 1 << 20,
            retention_ms: 3_600_000,
        })
        .unwrap(),
    );
    let addr = free_port();
    let dest = MqttDestination {
        name: "broker".into(),
        host: addr.ip().to_string(),
        port: addr.port(),
        tls: None,
        username: None,
        password: None,
        client_id: String::new(),
        topic: "rppg/{deviceId}/events/{event}".into(),
        keys: vec![key()],
        events: vec![],
        policy: RetryPolicy::default(),
        keep_alive: Duration::from_secs(5),
        ack_timeout: Duration::from_secs(10),
        max_in_flight: 8,
    };
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
    let delivery = Delivery::start(
        outbox.clone(),
        Setup {
            webhooks: &[],
            mqtt: std::slice::from_ref(&dest),
            device_id: "kiosk-1".into(),
            probe: (Duration::from_millis(50), Duration::from_millis(200)),
            first_pass_all: false,
        },
        now_ms(),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pending = outbox.due("broker", u64::MAX, 100).unwrap();
    assert_eq!(pending.len(), 20);
    assert!(
        pending.iter().all(|p| p.state.attempts == 0),
        "offline costs no attempts"
    );

    start_broker(addr);
    let start = Instant::now();
    let inbox = loop {
        // Subscribe as soon as the broker accepts connections.
        if std::net::TcpStream::connect(addr).is_ok() {
            break subscribe(addr, "rppg/#").await;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the broker did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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
