//! Connection hygiene against hostile clients: handshake and idle deadlines, the admin port's
//! header deadline, connection caps, fd exhaustion and HTTP/2 rapid reset.

use std::time::{Duration, Instant};

use prost::Message;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::*;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the peer closes (EOF or reset); returns how long that took, or `None` if it
/// stayed open for `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// The value of the metric line starting with `series` (name and labels).
async fn metric(admin: std::net::SocketAddr, series: &str) -> f64 {
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{body}"))
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_closed_within_the_handshake_timeout() {
    let app = spawn_app(config_with(|c| c.handshake_timeout_secs = 1)).await;
    let mut silent = TcpStream::connect(app.addr()).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(4))
        .await
        .expect("closed");
    assert!(
        took >= Duration::from_millis(800) && took <= Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(
        metric(
            app.admin,
            "tyk_dispatcher_connections_timed_out_total{reason=\"handshake\"}"
        )
        .await,
        1.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn half_a_preface_or_a_preface_without_settings_is_closed_within_the_handshake_timeout() {
    let app = spawn_app(config_with(|c| c.handshake_timeout_secs = 1)).await;
    let mut half = TcpStream::connect(app.addr()).await.unwrap();
    half.write_all(&PREFACE[..10]).await.unwrap();
    let mut no_settings = TcpStream::connect(app.addr()).await.unwrap();
    no_settings.write_all(PREFACE).await.unwrap();
    // Half a SETTINGS frame: its header promises 12 bytes, 6 come.
    no_settings
        .write_all(&frame(0x4, 0, 0, &[0; 12])[..15])
        .await
        .unwrap();
    for stream in [&mut half, &mut no_settings] {
        let took = closed_within(stream, Duration::from_secs(4))
            .await
            .expect("closed");
        assert!(took <= Duration::from_secs(2), "{took:?}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_never_calls_is_closed_after_the_idle_timeout() {
    let app = spawn_app(config_with(|c| c.idle_timeout_secs = 2)).await;
    let tcp = TcpStream::connect(app.addr()).await.unwrap();
    let started = Instant::now();
    let (_send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let ended = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("closed by the server");
    let took = started.elapsed();
    assert!(ended.is_ok(), "closed with GOAWAY NO_ERROR: {ended:?}");
    assert!(
        took >= Duration::from_millis(1800) && took <= Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(
        metric(
            app.admin,
            "tyk_dispatcher_connections_timed_out_total{reason=\"idle\"}"
        )
        .await,
        1.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_made_a_call_outlives_the_idle_timeout() {
    let app = spawn_app(config_with(|c| c.idle_timeout_secs = 1)).await;
    let channel = app.channel().await;
    let request = seed_object().encode_to_vec();
    let reply = call_raw(channel.clone(), DISPATCH, request.clone())
        .await
        .unwrap();
    assert_eq!(reply.as_ref(), request.as_slice());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let reply = call_raw(channel, DISPATCH, request.clone()).await.unwrap();
    assert_eq!(reply.as_ref(), request.as_slice());
    // The same connection served both: the client did not have to reconnect.
    assert_eq!(
        metric(app.admin, "tyk_dispatcher_connections_accepted_total").await,
        1.0
    );
    assert_eq!(
        metric(
            app.admin,
            "tyk_dispatcher_connections_timed_out_total{reason=\"idle\"}"
        )
        .await,
        0.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_admin_port_closes_a_half_sent_request_after_its_header_timeout() {
    let app = spawn_app(config_with(|c| c.admin_header_read_timeout_secs = 1)).await;
    let mut half = TcpStream::connect(app.admin).await.unwrap();
    half.write_all(b"GET /readyz HTTP/1.1\r\nHost: test\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(app.admin).await.unwrap();
    for stream in [&mut half, &mut silent] {
        let took = closed_within(stream, Duration::from_secs(4))
            .await
            .expect("closed");
        assert!(took <= Duration::from_secs(2), "{took:?}");
    }
    assert_eq!(
        http_get(app.admin, "/readyz").await,
        (200, "ready\n".into())
    );
    app.shutdown().await;
}

#[tokio::test]
async fn past_max_connections_new_connections_are_closed_at_once_and_counted() {
    let app = spawn_app(config_with(|c| c.max_connections = Some(3))).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(app.addr()).await.unwrap());
    }
    let started = Instant::now();
    while app.lifecycle.open_connections() < 3 {
        assert!(started.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut extra = TcpStream::connect(app.addr()).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(500), extra.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "no byte served: {read:?}");
    assert_eq!(
        metric(
            app.admin,
            "tyk_dispatcher_connections_refused_total{reason=\"max_connections\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        http_get(app.admin, "/readyz").await,
        (200, "ready\n".into())
    );
    // A slot freed is a slot served.
    drop(held.pop());
    while app.lifecycle.open_connections() > 2 {
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let request = seed_object().encode_to_vec();
    let reply = call_raw(app.channel().await, DISPATCH, request.clone())
        .await
        .unwrap();
    assert_eq!(reply.as_ref(), request.as_slice());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_few_file_descriptors_probes_still_answer_and_calls_are_served() {
    // 256 descriptors, hard and soft: 192 gRPC connections, 32 admin ones, 32 kept free.
    let process = Process::start_via(
        &["prlimit", "--nofile=256:256", "--"],
        &[
            ("TYK_DISPATCHER_LISTEN", "127.0.0.1:0"),
            ("TYK_DISPATCHER_LOG_CALLS", "false"),
        ],
        &[],
    );
    let (grpc, admin) = process.ready().await;
    let serving = &process.logs("serving")[0];
    assert_eq!(serving["max_connections"], 192, "{serving}");
    let limit = &process.logs("open-file limit")[0];
    assert_eq!((&limit["soft"], &limit["hard"]), (&256.into(), &256.into()));
    let addr: std::net::SocketAddr = grpc[0].parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let probe = tokio::time::timeout(Duration::from_secs(3), http_get(admin, "/readyz"))
        .await
        .expect("/readyz answers with every connection slot taken");
    assert_eq!(probe, (200, "ready\n".into()));
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(3), http_get(admin, "/livez"))
            .await
            .expect("/livez answers"),
        (200, "ok\n".into())
    );
    // Some idle clients leave; a fresh one is served.
    idle.truncate(100);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let request = seed_object().encode_to_vec();
    let reply = tokio::time::timeout(Duration::from_secs(5), async {
        call_raw(connect(addr).await, DISPATCH, request.clone()).await
    })
    .await
    .expect("the call is served in time")
    .unwrap();
    assert_eq!(reply.as_ref(), request.as_slice());
    // Refusals are logged a few at a time, and accept never ran out of descriptors.
    let refusals = process.logs("max_connections reached: connection closed");
    assert!((1..=15).contains(&refusals.len()), "{}", refusals.len());
    assert!(
        process.logs("accept failed").len() <= 15,
        "{}",
        process.log_text()
    );
}

#[tokio::test]
async fn rapid_reset_gets_goaway_enhance_your_calm_and_the_server_stays_responsive() {
    let app = spawn_app(config_with(|_| {})).await;
    let mut attacker = TcpStream::connect(app.addr()).await.unwrap();
    let mut burst = PREFACE.to_vec();
    burst.extend(frame(0x4, 0, 0, &[]));
    // :method GET, :scheme http, :path / (HPACK static table), then RST_STREAM CANCEL.
    for i in 0..500u32 {
        let stream = 2 * i + 1;
        burst.extend(frame(0x1, 0x4 | 0x1, stream, &[0x82, 0x86, 0x84]));
        burst.extend(frame(0x3, 0, stream, &8u32.to_be_bytes()));
    }
    attacker.write_all(&burst).await.unwrap();
    // Read frames until GOAWAY.
    let mut received = Vec::new();
    let goaway_code = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 16384];
        loop {
            let mut at = 0;
            while received.len() >= at + 9 {
                let len = (usize::from(received[at]) << 16)
                    | (usize::from(received[at + 1]) << 8)
                    | usize::from(received[at + 2]);
                if received.len() < at + 9 + len {
                    break;
                }
                if received[at + 3] == 0x7 {
                    let payload = &received[at + 9..at + 9 + len];
                    return u32::from_be_bytes(payload[4..8].try_into().unwrap());
                }
                at += 9 + len;
            }
            received.drain(..at);
            match attacker.read(&mut buf).await {
                Ok(0) | Err(_) => panic!("closed without GOAWAY"),
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("GOAWAY within 5 s");
    assert_eq!(goaway_code, 0xb, "ENHANCE_YOUR_CALM");
    let request = seed_object().encode_to_vec();
    let reply = call_raw(app.channel().await, DISPATCH, request.clone())
        .await
        .unwrap();
    assert_eq!(reply.as_ref(), request.as_slice());
    app.shutdown().await;
}
