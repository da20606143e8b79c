//! Memory under load: messages charged from their prefix before they are read, fair shares
//! between connections, and stalled request and reply bodies cut.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::client::SendRequest;
use prost::Message;
use tokio::net::TcpStream;

use crate::helpers::*;

/// An encoded Object of exactly `len` bytes or a few bytes less.
fn object_of(len: usize) -> Bytes {
    let mut object = seed_object();
    let overhead = object.encoded_len() + 16;
    object.request.as_mut().expect("request").raw_body = vec![0xab; len - overhead].into();
    object.encode_to_vec().into()
}

/// The 5-byte gRPC prefix of an uncompressed message of `len` bytes.
fn prefix(len: usize) -> Bytes {
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
    prefix.into()
}

/// A raw HTTP/2 connection; `window` (bytes) is the stream window it grants and never updates
/// unless the caller releases capacity.
async fn h2_connect(addr: SocketAddr, window: Option<u32>) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut builder = h2::client::Builder::new();
    if let Some(window) = window {
        builder.initial_window_size(window);
    }
    let (send, connection) = builder.handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send.ready().await.unwrap()
}

fn dispatch_request() -> http::Request<()> {
    http::Request::post(format!("http://dispatcher{DISPATCH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// Sends `message` whole as one Dispatch call on `send`; the response to come.
fn send_whole(send: &mut SendRequest<Bytes>, message: &Bytes) -> h2::client::ResponseFuture {
    let (response, mut body) = send.send_request(dispatch_request(), false).unwrap();
    body.send_data(prefix(message.len()), false).unwrap();
    body.send_data(message.clone(), true).unwrap();
    response
}

/// The grpc-status of a trailers-only response, if it is one.
fn status_of(response: &http::Response<h2::RecvStream>) -> Option<i32> {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn vm_rss_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

const MIB: usize = 1 << 20;
/// What the process may hold beyond the budget: the runtime, allocator slack, HTTP/2 windows of
/// 128 streams, the buffer tonic decodes into, and an object log line (measured: 30-40 MiB past
/// the budget; README, *Bounds*).
const FLOOD_OVERHEAD: usize = 64 * MIB;

/// One flood: 8 connections x 16 streams, each a message of `message_bytes` sent slowly.
#[derive(Debug, Clone, Copy)]
struct Flood {
    message_bytes: usize,
    /// Through a Pre hook whose step decodes the whole Object (and a body string to copy).
    decoding_hook: bool,
    log_objects: bool,
}

impl Flood {
    /// The budget: room for two messages, so most of the 128 are refused at once.
    fn budget(self) -> usize {
        2 * self.max_recv()
    }

    fn max_recv(self) -> usize {
        self.message_bytes + MIB
    }

    /// The message: the seed's Object with a body of about `message_bytes`, half of it as the
    /// `body` string and half as `raw_body` when a hook decodes it (so decoding copies).
    fn message(self) -> Bytes {
        let mut object = seed_object();
        let overhead = object.encoded_len() + 16;
        let body_len = self.message_bytes - overhead;
        let request = object.request.as_mut().expect("request");
        if self.decoding_hook {
            request.body = "a".repeat(body_len / 2);
            request.raw_body = vec![0xab; body_len - body_len / 2].into();
        } else {
            request.raw_body = vec![0xab; body_len].into();
        }
        object.encode_to_vec().into()
    }
}

async fn flood(case: Flood) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dispatcher.toml");
    let hooks = if case.decoding_hook {
        "[[hooks]]\nname = \"MyPreCustomPluginForBasicAuth\"\ntype = \"Pre\"\n\
         [[hooks.steps]]\nkind = \"log\"\n"
    } else {
        ""
    };
    std::fs::write(&config, hooks).unwrap();
    let (budget, max_recv) = (case.budget().to_string(), case.max_recv().to_string());
    let log_objects = case.log_objects.to_string();
    let process = Process::start(
        &[
            ("TYK_DISPATCHER_LISTEN", "127.0.0.1:0"),
            ("TYK_DISPATCHER_MAX_IN_FLIGHT_BYTES", &budget),
            ("TYK_DISPATCHER_MAX_RECV_BYTES", &max_recv),
            ("TYK_DISPATCHER_MAX_REPLY_BYTES", &max_recv),
            ("TYK_DISPATCHER_LOG_CALLS", "false"),
            ("TYK_DISPATCHER_LOG_OBJECTS", &log_objects),
            ("TYK_DISPATCHER_WORKER_THREADS", "2"),
        ],
        &["--config", config.to_str().unwrap()],
    );
    let (grpc, _admin) = process.ready().await;
    let addr: SocketAddr = grpc[0].parse().unwrap();
    let pid = process.child.id();
    let message = case.message();
    let chunk = case.message_bytes / 8;
    // Past this the old behaviour is plain and the flood stops, to spare the machine.
    let abort_rss = 3 * (case.budget() + FLOOD_OVERHEAD);
    let peak = Arc::new(AtomicUsize::new(vm_rss_bytes(pid)));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (peak, stop) = (peak.clone(), stop.clone());
        async move {
            loop {
                let rss = vm_rss_bytes(pid);
                peak.fetch_max(rss, Ordering::Relaxed);
                if rss > abort_rss {
                    stop.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let refused = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let late = Arc::new(AtomicUsize::new(0));
    let slowest_refusal = Arc::new(AtomicUsize::new(0));
    let mut streams = Vec::new();
    for _ in 0..8 {
        let send = h2_connect(addr, None).await;
        for _ in 0..16 {
            let (send, message) = (send.clone(), message.clone());
            let (refused, served, late, stop, slowest_refusal) = (
                refused.clone(),
                served.clone(),
                late.clone(),
                stop.clone(),
                slowest_refusal.clone(),
            );
            streams.push(tokio::spawn(async move {
                let mut send = send.ready().await.unwrap();
                let (response, mut body) = send.send_request(dispatch_request(), false).unwrap();
                let sent_at = Instant::now();
                body.send_data(prefix(message.len()), false).unwrap();
                body.send_data(message.slice(..16 * 1024), false).unwrap();
                tokio::pin!(response);
                // A refused call is answered at once, before its body is sent.
                if let Ok(answer) =
                    tokio::time::timeout(Duration::from_secs(2), response.as_mut()).await
                {
                    let answer = answer.unwrap();
                    assert_eq!(status_of(&answer), Some(8), "{answer:?}");
                    refused.fetch_add(1, Ordering::Relaxed);
                    slowest_refusal.fetch_max(
                        usize::try_from(sent_at.elapsed().as_micros()).unwrap_or(usize::MAX),
                        Ordering::Relaxed,
                    );
                    return;
                }
                // Accepted: the rest, slowly, an eighth at a time.
                let mut sent = 16 * 1024;
                while sent < message.len() && !stop.load(Ordering::Relaxed) {
                    let end = (sent + chunk).min(message.len());
                    body.send_data(message.slice(sent..end), end == message.len())
                        .unwrap();
                    sent = end;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let answer = response.await.unwrap();
                // Refused once buffered, as calls were before the budget was charged early.
                if status_of(&answer).is_some() {
                    late.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let mut reply = answer.into_body();
                let received = read_to_end(&mut reply).await.unwrap();
                assert_eq!(received, message.len() + 5);
                served.fetch_add(1, Ordering::Relaxed);
            }));
        }
    }
    for stream in streams {
        stream.await.unwrap();
    }
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed);
    let (refused, served, late) = (
        refused.load(Ordering::Relaxed),
        served.load(Ordering::Relaxed),
        late.load(Ordering::Relaxed),
    );
    eprintln!(
        "flood {case:?}: peak VmRSS {} MiB (budget {} MiB), {refused} refused at once (the slowest answered in {} ms), {late} refused once buffered, {served} served",
        peak / MIB,
        case.budget() / MIB,
        slowest_refusal.load(Ordering::Relaxed) / 1000
    );
    assert!(
        !stop.load(Ordering::Relaxed),
        "VmRSS passed {} MiB",
        abort_rss / MIB
    );
    assert!(refused >= 100, "{refused} of 128 refused at once");
    assert_eq!(late, 0, "none refused after its body was read");
    assert!(served >= 1, "some calls were served: {served}");
    assert!(
        peak < case.budget() + FLOOD_OVERHEAD,
        "peak VmRSS {} MiB over the budget of {} MiB + {} MiB",
        peak / MIB,
        case.budget() / MIB,
        FLOOD_OVERHEAD / MIB
    );
}

/// A flood test for each message size, with and without a decoding hook and object logs.
macro_rules! floods {
    ($($name:ident: $mib:expr, $hook:expr, $log:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            flood(Flood { message_bytes: $mib * MIB, decoding_hook: $hook, log_objects: $log }).await;
        }
    )*};
}

floods! {
    a_flood_of_8_mib_messages_is_refused_before_it_is_buffered: 8, false, false;
    a_flood_of_8_mib_messages_with_object_logs_stays_in_budget: 8, false, true;
    a_flood_of_8_mib_messages_through_a_decoding_hook_stays_in_budget: 8, true, false;
    a_flood_of_8_mib_messages_through_a_hook_with_object_logs_stays_in_budget: 8, true, true;
    a_flood_of_64_mib_messages_is_refused_before_it_is_buffered: 64, false, false;
    a_flood_of_64_mib_messages_with_object_logs_stays_in_budget: 64, false, true;
    a_flood_of_64_mib_messages_through_a_decoding_hook_stays_in_budget: 64, true, false;
    a_flood_of_64_mib_messages_through_a_hook_with_object_logs_stays_in_budget: 64, true, true;
}

#[tokio::test]
async fn a_stalled_request_is_charged_then_cut_and_its_share_returned() {
    let app = spawn_app(config_with(|c| {
        c.max_recv_bytes = 2 * MIB;
        c.max_in_flight_bytes = Some(2 * MIB);
        c.request_progress_timeout_secs = 1;
    }))
    .await;
    let message = object_of(3 * MIB / 2);
    let mut send = h2_connect(app.addr(), None).await;
    let (response, mut body) = send.send_request(dispatch_request(), false).unwrap();
    body.send_data(prefix(message.len()), false).unwrap();
    body.send_data(message.slice(..1024), false).unwrap();
    let stalled_at = Instant::now();
    // Charged from its prefix: another large call does not fit beside it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let channel = app.channel().await;
    let err = call_raw(channel.clone(), DISPATCH, message.to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .starts_with("in-flight budget exhausted: this call needs"),
        "{}",
        err.message()
    );
    // Cut after the progress timeout.
    let answer = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("answered");
    let took = stalled_at.elapsed();
    match answer {
        Ok(answer) => assert_eq!(status_of(&answer), Some(4), "{answer:?}"),
        Err(err) => assert!(err.is_reset(), "{err:?}"),
    }
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // The share came back: the large call fits now.
    let reply = call_raw(channel, DISPATCH, message.to_vec()).await.unwrap();
    assert_eq!(reply.len(), message.len());
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert!(
        metrics.contains("tyk_dispatcher_streams_reset_total{reason=\"request_progress\"} 1"),
        "{metrics}"
    );
    app.shutdown().await;
}

/// A tonic call of `message`, counting a refusal for the budget as a failure of the test.
async fn small_calls_until(
    channel: tonic::transport::Channel,
    message: Vec<u8>,
    until: Instant,
) -> usize {
    let mut calls = 0;
    while Instant::now() < until {
        let reply = call_raw(channel.clone(), DISPATCH, message.clone())
            .await
            .unwrap_or_else(|status| panic!("small call {calls} failed: {status:?}"));
        assert_eq!(reply.as_ref(), message.as_slice());
        calls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_a_client_never_reads_are_reset_and_cannot_starve_others() {
    let app = spawn_app(config_with(|c| {
        c.max_recv_bytes = MIB;
        c.max_in_flight_bytes = Some(4 * MIB);
        c.max_reply_bytes = Some(2 * MIB);
        c.reply_progress_timeout_secs = 2;
    }))
    .await;
    let small = object_of(1024).to_vec();
    let others = app.channel().await;
    call_raw(others.clone(), DISPATCH, small.clone())
        .await
        .unwrap();
    let small_calls = tokio::spawn(small_calls_until(
        others.clone(),
        small.clone(),
        Instant::now() + Duration::from_secs(4),
    ));
    // Four calls that would fill the budget, on a connection granting a 1 KiB window it never
    // updates.
    let large = object_of(MIB);
    let hog = h2_connect(app.addr(), Some(1024)).await;
    let started = Instant::now();
    let mut replies = Vec::new();
    let mut refused = 0;
    for _ in 0..4 {
        let mut send = hog.clone().ready().await.unwrap();
        let response = send_whole(&mut send, &large);
        let answer = response.await.unwrap();
        match status_of(&answer) {
            Some(8) => refused += 1,
            status => {
                assert_eq!(status, None, "{answer:?}");
                replies.push(answer.into_body());
            }
        }
    }
    // Held to half the budget while the other connection calls too.
    assert_eq!((replies.len(), refused), (2, 2));
    for mut reply in replies {
        let cut = tokio::time::timeout(Duration::from_secs(6), read_holding_window(&mut reply))
            .await
            .expect("the reply ends");
        let err = cut.expect_err("the stalled reply was cut, not finished");
        assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err:?}");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let calls = small_calls.await.unwrap();
    assert!(calls >= 20, "{calls} small calls");
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert!(
        metrics.contains("tyk_dispatcher_streams_reset_total{reason=\"reply_progress\"} 2"),
        "{metrics}"
    );
    // Only the streams were reset: the hog's connection still answers a call that fits its
    // window.
    {
        let tiny = object_of(1000);
        let mut send = hog.clone().ready().await.unwrap();
        let response = send_whole(&mut send, &tiny);
        let mut reply = response.await.unwrap().into_body();
        let got = read_to_end(&mut reply).await.expect("a whole reply");
        assert_eq!(got, tiny.len() + 5);
    }
    // Once the hog hangs up it no longer counts: the other connection, alone again, may hold
    // the whole budget.
    drop(hog);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = (0..4).map(|_| call_raw(others.clone(), DISPATCH, large.to_vec()));
    for result in futures_util::future::join_all(calls).await {
        assert_eq!(result.unwrap().len(), large.len());
    }
    app.shutdown().await;
}

/// Reads what `body` can send without releasing any window: its end, or the stream's error.
async fn read_holding_window(body: &mut h2::RecvStream) -> Result<usize, h2::Error> {
    let mut received = 0;
    while let Some(chunk) = body.data().await {
        received += chunk?.len();
    }
    Ok(received)
}

/// Reads `body` to its end, releasing window as it goes; the bytes read, or the stream's error.
async fn read_to_end(body: &mut h2::RecvStream) -> Result<usize, h2::Error> {
    let mut received = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        received += chunk.len();
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    Ok(received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reply_is_reset_alone_while_its_connection_moves_on() {
    let app = spawn_app(config_with(|c| {
        c.max_reply_bytes = Some(2 * MIB);
        c.reply_progress_timeout_secs = 2;
    }))
    .await;
    let message = object_of(MIB);
    let conn = h2_connect(app.addr(), Some(16 * 1024)).await;
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let mut send = conn.clone().ready().await.unwrap();
        let response = send_whole(&mut send, &message);
        bodies.push(response.await.unwrap().into_body());
    }
    let mut moving = bodies.pop().unwrap();
    let mut stalled = bodies.pop().unwrap();
    let started = Instant::now();
    // One stream read slowly (16 KiB every 50 ms: over 3 s in all), the other never.
    let mut received = 0;
    while let Some(chunk) = moving.data().await {
        let chunk = chunk.expect("the moving reply is not cut");
        received += chunk.len();
        tokio::time::sleep(Duration::from_millis(50)).await;
        moving.flow_control().release_capacity(chunk.len()).unwrap();
    }
    assert_eq!(received, message.len() + 5);
    assert!(started.elapsed() > Duration::from_secs(2));
    let err = tokio::time::timeout(Duration::from_secs(3), read_holding_window(&mut stalled))
        .await
        .expect("the stalled reply ends")
        .expect_err("reset");
    assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err:?}");
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert!(
        metrics.contains("tyk_dispatcher_streams_reset_total{reason=\"reply_progress\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tyk_dispatcher_connections 1\n"),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_never_cut_while_its_reply_moves() {
    let app = spawn_app(config_with(|c| {
        c.max_reply_bytes = Some(2 * MIB);
        c.reply_progress_timeout_secs = 2;
    }))
    .await;
    let message = object_of(MIB);
    let mut send = h2_connect(app.addr(), Some(64 * 1024)).await;
    let response = send_whole(&mut send, &message);
    let started = Instant::now();
    let mut reply = response.await.unwrap().into_body();
    let mut received = 0;
    while let Some(chunk) = reply.data().await {
        let chunk = chunk.expect("not cut");
        received += chunk.len();
        // 16 KiB frames every 50 ms: 1 MiB takes over 3 s.
        tokio::time::sleep(Duration::from_millis(50)).await;
        reply.flow_control().release_capacity(chunk.len()).unwrap();
    }
    assert_eq!(received, message.len() + 5);
    // Longer than the timeout in all, yet never stalled for it.
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_call_that_never_sends_its_prefix_is_cut_after_the_timeout() {
    let app = spawn_app(config_with(|c| c.request_progress_timeout_secs = 1)).await;
    let mut send = h2_connect(app.addr(), None).await;
    let (response, mut body) = send.send_request(dispatch_request(), false).unwrap();
    // Two bytes of the five, then nothing.
    body.send_data(Bytes::from_static(&[0, 0]), false).unwrap();
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(status_of(&answer), Some(4), "{answer:?}");
    let message = answer.headers()["grpc-message"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("request_progress_timeout_secs"),
        "{message}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_binary_runs_with_malloc_tuned_unless_glibc_tunables_is_set() {
    use tyk_dispatcher::TUNABLES;
    let environ = |pid: u32| -> Vec<String> {
        std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap()
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    };
    // As shipped: the process re-executes itself (same pid) with the tunables, and serves.
    let process = Process::start(&[("TYK_DISPATCHER_LISTEN", "127.0.0.1:0")], &[]);
    let (grpc, _admin) = process.ready().await;
    let pid = process.child.id();
    // glibc (before 2.39) cuts the value at its first ':' in place as it reads it.
    let first = TUNABLES.split(':').next().unwrap();
    assert!(
        environ(pid).contains(&format!("GLIBC_TUNABLES={first}")),
        "{:?}",
        environ(pid)
    );
    assert!(
        process.logs("GLIBC_TUNABLES set at start").is_empty(),
        "{}",
        process.log_text()
    );
    let request = seed_object().encode_to_vec();
    let reply = call_raw(
        connect(grpc[0].parse().unwrap()).await,
        DISPATCH,
        request.clone(),
    )
    .await
    .unwrap();
    assert_eq!(reply.as_ref(), request.as_slice());
    // Set by whoever starts it: left as given, and said so.
    let process = Process::start(
        &[
            ("TYK_DISPATCHER_LISTEN", "127.0.0.1:0"),
            ("GLIBC_TUNABLES", "glibc.malloc.arena_max=4"),
        ],
        &[],
    );
    process.ready().await;
    assert!(
        environ(process.child.id())
            .contains(&"GLIBC_TUNABLES=glibc.malloc.arena_max=4".to_string())
    );
    assert_eq!(
        process
            .logs("GLIBC_TUNABLES set at start: malloc tuning left as given")
            .len(),
        1,
        "{}",
        process.log_text()
    );
}
