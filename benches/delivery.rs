//! `cargo bench --bench delivery`: outbox and delivery throughput, medians
//! with the machine noted. Real parts only: sled on disk (a temp dir), the
//! loopback webhook receiver, an in-process rumqttd broker.
//!
//! Sizes: RPPG_BENCH_EVENTS (default 5000 per drain), RPPG_BENCH_RUNS (3).

use rppg_agent::app::receiver::{Receiver, Script};
use rppg_agent::delivery::mqtt::{MqttDestination, MqttProtocol};
use rppg_agent::delivery::policy::RetryPolicy;
use rppg_agent::delivery::signing::{parse_secret, Scheme};
use rppg_agent::delivery::webhook::{BodyFormat, WebhookDestination};
use rppg_agent::delivery::{Delivery, Setup};
use rppg_agent::events::{Event, EventKind, StampedEvent, Stamper};
use rppg_agent::outbox::{Outbox, OutboxConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn open(dir: &std::path::Path) -> Arc<Outbox> {
    Arc::new(
        Outbox::open(OutboxConfig {
            path: dir.join("outbox"),
            max_bytes: 4 << 30,
            cache_capacity_bytes: 16 << 20,
            retention_ms: 3_600_000,
        })
        .unwrap(),
    )
}

/// A typical INTERMEDIATE_RESULTS envelope (~330 bytes).
fn events(n: usize, session: &str) -> Vec<StampedEvent> {
    let mut st = Stamper::new("bench-device", session);
    let payload = serde_json::json!({"measurementId":"msr_01M81J8CXH1CR4QNN1KCRD355G","sequence":3,"elapsed_s":8.03,"snr":4.86,"heart_rate_bpm":71.7,"confidence":0.979,"respiratory_rate_bpm":null,"rr_confidence":0.0});
    let e = Event {
        kind: EventKind::IntermediateResults,
        payload,
    };
    (0..n).map(|i| st.stamp(&e, now_ms(), i as u128)).collect()
}

fn rss_mib() -> f64 {
    rppg_agent::app::bench::peak_rss_mib().unwrap_or(0.0)
}

fn main() {
    let n = env("RPPG_BENCH_EVENTS", 5000);
    let runs = env("RPPG_BENCH_RUNS", 3);
    println!("# rppg-agent delivery bench\n\nMedians of {runs} runs; {n} events per drain; sled on local disk.\n");
    println!("| measurement | median |\n|---|---|");

    // 1. Durable appends: one thread (a flush per append) vs 8 threads (group commit).
    for threads in [1usize, 8, 32] {
        let per_thread = if threads == 1 {
            500
        } else {
            (n / threads).max(50)
        };
        let rates: Vec<f64> = (0..runs)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let ob = open(dir.path());
                let batches: Vec<Vec<StampedEvent>> = (0..threads)
                    .map(|t| events(per_thread, &format!("s{t}")))
                    .collect();
                let t0 = Instant::now();
                std::thread::scope(|s| {
                    for batch in &batches {
                        let ob = ob.clone();
                        s.spawn(move || {
                            for e in batch {
                                ob.append(e, &["hook"], now_ms()).unwrap();
                            }
                        });
                    }
                });
                (threads * per_thread) as f64 / t0.elapsed().as_secs_f64()
            })
            .collect();
        println!(
            "| durable appends, {threads} thread(s) | **{:.0} events/s** |",
            median(rates)
        );
    }

    // 2. Append latency at a scan's pace (10 events/s).
    {
        let dir = tempfile::tempdir().unwrap();
        let ob = open(dir.path());
        let mut lat: Vec<f64> = events(60, "paced")
            .iter()
            .map(|e| {
                std::thread::sleep(Duration::from_millis(100));
                let t0 = Instant::now();
                ob.append(e, &["hook"], now_ms()).unwrap();
                t0.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        lat.sort_by(f64::total_cmp);
        let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
        println!(
            "| append latency at 10 events/s: p50 / p99 | {:.2} ms / {:.2} ms |",
            p(0.5),
            p(0.99)
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let key = parse_secret(Scheme::Standard, "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();

    // 3. Backlog drain to a loopback webhook receiver (signing on, verification off).
    let rates: Vec<f64> = (0..runs)
        .map(|_| {
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let ob = open(dir.path());
                for e in events(n, "drain") {
                    ob.append(&e, &["hook"], now_ms()).unwrap();
                }
                let rx = Receiver::start(None, Script::default()).await.unwrap();
                let dest = WebhookDestination {
                    name: "hook".into(),
                    url: rx.url().parse().unwrap(),
                    signing: vec![(Scheme::Standard, vec![key.clone()])],
                    events: vec![],
                    timeout: Duration::from_secs(5),
                    connect_timeout: Duration::from_secs(3),
                    policy: RetryPolicy::default(),
                    allow_insecure: true,
                    max_in_flight: 16,
                    format: BodyFormat::Envelope,
                };
                let t0 = Instant::now();
                let d = Delivery::start(
                    ob.clone(),
                    Setup {
                        webhooks: &[dest],
                        mqtt: &[],
                        device_id: "bench".into(),
                        probe: (Duration::from_millis(50), Duration::from_secs(1)),
                        first_pass_all: false,
                    },
                    now_ms(),
                )
                .unwrap();
                let delivered = d.lanes()[0].stats.clone();
                while delivered
                    .delivered
                    .load(std::sync::atomic::Ordering::Relaxed)
                    < n as u64
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let rate = n as f64 / t0.elapsed().as_secs_f64();
                d.stop().await;
                rate
            })
        })
        .collect();
    println!(
        "| backlog drain to a loopback webhook (16 in flight) | **{:.0} events/s** |",
        median(rates)
    );

    // 4. Backlog drain to an MQTT 5 broker with PUBACK matching.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    start_broker(addr);
    while std::net::TcpStream::connect(addr).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    for window in [256usize, 1024] {
        let rates: Vec<f64> = (0..runs)
            .map(|run| {
                rt.block_on(async {
                    let dir = tempfile::tempdir().unwrap();
                    let ob = open(dir.path());
                    for e in events(n * 4, "mqtt") {
                        ob.append(&e, &["broker"], now_ms()).unwrap();
                    }
                    let dest = MqttDestination {
                        name: "broker".into(),
                        host: addr.ip().to_string(),
                        port: addr.port(),
                        protocol: MqttProtocol::V5,
                        tls: None,
                        username: None,
                        password: None,
                        client_id: format!("bench-{window}-{run}"),
                        topic: "rppg/{deviceId}/events/{event}".into(),
                        keys: vec![key.clone()],
                        events: vec![],
                        policy: RetryPolicy::default(),
                        keep_alive: Duration::from_secs(30),
                        ack_timeout: Duration::from_secs(10),
                        max_in_flight: window,
                    };
                    let t0 = Instant::now();
                    let d = Delivery::start(
                        ob.clone(),
                        Setup {
                            webhooks: &[],
                            mqtt: &[dest],
                            device_id: "bench".into(),
                            probe: (Duration::from_millis(50), Duration::from_secs(1)),
                            first_pass_all: false,
                        },
                        now_ms(),
                    )
                    .unwrap();
                    let delivered = d.lanes()[0].stats.clone();
                    while delivered
                        .delivered
                        .load(std::sync::atomic::Ordering::Relaxed)
                        < (n * 4) as u64
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let rate = (n * 4) as f64 / t0.elapsed().as_secs_f64();
                    d.stop().await;
                    rate
                })
            })
            .collect();
        println!(
        "| backlog drain to MQTT 5 (rumqttd, {window} in flight, PUBACK matched) | **{:.0} msgs/s** |",
        median(rates)
    );
    }
    println!(
        "\nPeak RSS of this process, including the in-process broker and receiver: {:.1} MiB",
        rss_mib()
    );
}

fn start_broker(addr: std::net::SocketAddr) {
    use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};
    let server = ServerSettings {
        name: "v5-bench".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 5000,
            max_payload_size: 1 << 20,
            max_inflight_count: 1000,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 100,
            max_outgoing_packet_count: 10000,
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
