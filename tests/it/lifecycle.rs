//! Start, drain and exit: readiness, health, SIGTERM under load, early drain end, hand-over of
//! a TCP address with SO_REUSEPORT, and the second signal.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prost::Message;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::*;

async fn health(channel: tonic::transport::Channel, service: &str) -> ServingStatus {
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .expect("health answers");
    reply.into_inner().status()
}

#[tokio::test]
async fn readiness_and_health_follow_start_drain_and_exit() {
    let app = spawn_app(config_with(|c| c.drain_delay_secs = 30)).await;
    let channel = app.channel().await;
    assert_eq!(http_get(app.admin, "/readyz").await.0, 200);
    assert_eq!(http_get(app.admin, "/livez").await.0, 200);
    assert_eq!(health(channel.clone(), "").await, ServingStatus::Serving);
    assert_eq!(
        health(channel.clone(), "coprocess.Dispatcher").await,
        ServingStatus::Serving
    );

    let grpc_addr = app.addr();
    let started = Instant::now();
    app.stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        http_get(app.admin, "/readyz").await.0,
        503,
        "not ready as soon as the drain starts"
    );
    assert_eq!(
        health(channel.clone(), "coprocess.Dispatcher").await,
        ServingStatus::NotServing
    );
    assert_eq!(health(channel.clone(), "").await, ServingStatus::NotServing);
    // Still answering while draining.
    let request = seed_object().encode_to_vec();
    assert!(
        call_raw(channel.clone(), DISPATCH, request.clone())
            .await
            .unwrap()
            == request.as_slice()
    );
    assert_eq!(http_get(app.admin, "/livez").await.0, 200);
    // The drain ends as soon as the last client leaves, long before drain_delay_secs.
    drop(channel);
    tokio::time::timeout(Duration::from_secs(10), app.task)
        .await
        .expect("drain ends early")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        tokio::net::TcpStream::connect(app.admin).await.is_err(),
        "admin port closed at exit"
    );
    assert!(
        tokio::net::TcpStream::connect(grpc_addr).await.is_err(),
        "gRPC port closed at exit"
    );
}

/// Runs calls on `channels` (each `streams` at a time) until `stop`; counts successes and
/// failures.
fn run_load(
    channels: Vec<tonic::transport::Channel>,
    streams: usize,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let request = bytes::Bytes::from(seed_object().encode_to_vec());
    let mut tasks = Vec::new();
    for channel in channels {
        for _ in 0..streams {
            let (channel, stop, ok, failed, request) = (
                channel.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                request.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match call_like_grpc_go(channel.clone(), DISPATCH, request.clone()).await {
                        Ok(reply) if reply == request => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(_) => failed.fetch_add(1, Ordering::Relaxed),
                        Err(status) => {
                            eprintln!("call failed: {status:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
    }
    (ok, failed, tasks)
}

#[tokio::test]
async fn sigterm_under_load_fails_no_call_and_the_drain_ends_when_clients_leave() {
    let mut process = Process::start(
        &[
            ("TYK_DISPATCHER_LISTEN", "127.0.0.1:0"),
            ("TYK_DISPATCHER_LOG_CALLS", "false"),
            ("TYK_DISPATCHER_DRAIN_DELAY_SECS", "30"),
        ],
        &[],
    );
    let (grpc, _) = process.ready().await;
    let addr = grpc[0].parse().unwrap();
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(connect(addr).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, tasks) = run_load(channels, 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    process.signal("TERM");
    process
        .wait_for_log("draining", Duration::from_secs(5))
        .await;
    let at_term = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        ok.load(Ordering::Relaxed) > at_term,
        "calls are still answered while draining"
    );
    let left = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(process.wait_exit(Duration::from_secs(10)).await, Some(0));
    assert!(
        left.elapsed() < Duration::from_secs(10),
        "the drain ended once the clients left"
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no call failed");
    assert!(ok.load(Ordering::Relaxed) > 100);
    process
        .wait_for_log("every client disconnected", Duration::from_secs(1))
        .await;
    process
        .wait_for_log("stopped", Duration::from_secs(1))
        .await;
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut process = Process::start(
        &[
            ("TYK_DISPATCHER_LISTEN", "127.0.0.1:0"),
            ("TYK_DISPATCHER_DRAIN_DELAY_SECS", "60"),
        ],
        &[],
    );
    let (grpc, _) = process.ready().await;
    // A connected client keeps the drain going.
    let _client = connect(grpc[0].parse().unwrap()).await;
    process.signal("TERM");
    process
        .wait_for_log("draining", Duration::from_secs(5))
        .await;
    let started = Instant::now();
    process.signal("INT");
    assert_eq!(process.wait_exit(Duration::from_secs(5)).await, Some(1));
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Calls on fresh connections, one connection per call, so every call lands on whichever
/// instance the kernel picks at that moment.
fn run_reconnecting_load(
    addr: std::net::SocketAddr,
    tasks: usize,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let request = bytes::Bytes::from(seed_object().encode_to_vec());
    let handles = (0..tasks)
        .map(|_| {
            let (stop, ok, failed, request) =
                (stop.clone(), ok.clone(), failed.clone(), request.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let result =
                        match tonic::transport::Endpoint::try_from(format!("http://{addr}"))
                            .unwrap()
                            .connect()
                            .await
                        {
                            Ok(channel) => {
                                call_like_grpc_go(channel, DISPATCH, request.clone()).await
                            }
                            Err(err) => Err(tonic::Status::unavailable(err.to_string())),
                        };
                    match result {
                        Ok(reply) if reply == request => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("call failed: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    (ok, failed, handles)
}

#[tokio::test]
async fn with_reuse_port_a_second_instance_takes_over_without_a_failed_call() {
    fn start(listen: &str) -> Process {
        Process::start(
            &[
                ("TYK_DISPATCHER_LISTEN", listen),
                ("TYK_DISPATCHER_REUSE_PORT", "true"),
                ("TYK_DISPATCHER_DRAIN_DELAY_SECS", "2"),
            ],
            &[],
        )
    }
    let mut first = start("127.0.0.1:0");
    let (grpc, _) = first.ready().await;
    let addr: std::net::SocketAddr = grpc[0].parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, tasks) = run_reconnecting_load(addr, 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = start(&addr.to_string());
    second.ready().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.signal("TERM");
    assert_eq!(first.wait_exit(Duration::from_secs(15)).await, Some(0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no call failed during the hand-over"
    );
    second.signal("TERM");
    assert_eq!(second.wait_exit(Duration::from_secs(15)).await, Some(0));
    // Logs are read by a thread; give it a moment after exit.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first_calls = first.logs("dispatch").len();
    let second_calls = second.logs("dispatch").len();
    assert!(
        first_calls > 0 && second_calls > 0,
        "both answered: {first_calls} / {second_calls}"
    );
    assert_eq!(
        first_calls + second_calls,
        ok.load(Ordering::Relaxed) as usize
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_their_maximum_age_are_replaced_without_failed_calls() {
    let app = spawn_app(config_with(|c| {
        c.max_connection_age_secs = Some(1);
        c.max_connection_age_grace_secs = 5;
    }))
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, tasks) = run_load(vec![app.channel().await], 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    let accepted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tyk_dispatcher_connections_accepted_total "))
        .and_then(|v| v.parse().ok())
        .expect("accepted counter");
    assert!(
        accepted >= 3,
        "the client reconnected after each GOAWAY: {accepted} connections"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no call failed across reconnects"
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
    app.shutdown().await;
}
