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

/// A client's opening: the preface and an empty SETTINGS frame.
fn opening() -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(0x4, 0, 0, &[]));
    bytes
}

/// One HTTP/2 frame as read: its type, stream and payload.
#[derive(Debug)]
struct Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Reads frames from `stream` until `stop` picks one (returned), the connection closes
/// (`None`) or `limit` passes (a panic).
async fn read_frames_until<T>(
    stream: &mut TcpStream,
    limit: Duration,
    mut stop: impl FnMut(&Frame) -> Option<T>,
) -> Option<T> {
    tokio::time::timeout(limit, async {
        let mut received = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            while received.len() >= 9 {
                let len = (usize::from(received[0]) << 16)
                    | (usize::from(received[1]) << 8)
                    | usize::from(received[2]);
                if received.len() < 9 + len {
                    break;
                }
                let frame = Frame {
                    kind: received[3],
                    stream: u32::from_be_bytes(received[5..9].try_into().unwrap()) & 0x7fff_ffff,
                    payload: received[9..9 + len].to_vec(),
                };
                received.drain(..9 + len);
                if let Some(found) = stop(&frame) {
                    return Some(found);
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("an answer in time")
}

/// The error code of the GOAWAY the server sends on `stream`, if it sends one.
async fn goaway_code(stream: &mut TcpStream) -> Option<u32> {
    read_frames_until(stream, Duration::from_secs(5), |frame| {
        (frame.kind == 0x7).then(|| u32::from_be_bytes(frame.payload[4..8].try_into().unwrap()))
    })
    .await
}

/// The server still serves a Dispatch call on a fresh connection.
async fn still_serves(app: &TestApp) {
    let request = seed_object().encode_to_vec();
    let reply = call_raw(app.channel().await, DISPATCH, request.clone())
        .await
        .unwrap();
    assert_eq!(reply.as_ref(), request.as_slice());
}

/// A Dispatch request's header block (HPACK): POST, http, the path, then `extra`.
fn dispatch_headers(extra: &[u8]) -> Vec<u8> {
    let path = b"/coprocess.Dispatcher/Dispatch";
    // :method POST and :scheme http from the static table; :path as a literal with an indexed
    // name (index 4), without indexing.
    let mut block = vec![0x83, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
    block.extend_from_slice(path);
    block.extend_from_slice(extra);
    block
}

/// The `:status` of a response header block as h2 writes it: an indexed field for the common
/// codes, else a literal with the indexed name `:status` (index 8), Huffman-coded or not.
fn hpack_status(block: &[u8]) -> Option<u16> {
    const INDEXED: [(u8, u16); 7] = [
        (8, 200),
        (9, 204),
        (10, 206),
        (11, 304),
        (12, 400),
        (13, 404),
        (14, 500),
    ];
    let first = *block.first()?;
    if first & 0x80 != 0 {
        return INDEXED
            .iter()
            .find(|(i, _)| *i == first & 0x7f)
            .map(|(_, s)| *s);
    }
    // Literal with incremental indexing (0x48) or without (0x08), name index 8.
    if first != 0x48 && first != 0x08 {
        return None;
    }
    let (huffman, len) = (block[1] & 0x80 != 0, usize::from(block[1] & 0x7f));
    let value = &block[2..2 + len];
    let digits = if huffman {
        // Huffman codes of digits (RFC 7541, appendix B): '0'-'2' are the 5-bit 00000-00010,
        // '3'-'9' the 6-bit 011001-011111; padding is all ones.
        let mut bits = value
            .iter()
            .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1));
        let mut out = String::new();
        while out.len() < 3 {
            let mut code = 0u8;
            for _ in 0..5 {
                code = (code << 1) | bits.next()?;
            }
            let digit = if code <= 0b00010 {
                code
            } else {
                code = (code << 1) | bits.next()?;
                code.checked_sub(0b011001)? + 3
            };
            out.push(char::from_digit(u32::from(digit), 10)?);
        }
        out
    } else {
        String::from_utf8(value.to_vec()).ok()?
    };
    digits.parse().ok()
}

/// A literal header field without indexing, new name (HPACK), for values of any length.
fn literal_header(name: &[u8], value: &[u8]) -> Vec<u8> {
    fn length(out: &mut Vec<u8>, mut n: usize) {
        if n < 127 {
            out.push(u8::try_from(n).unwrap());
            return;
        }
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push(u8::try_from(n % 128).unwrap() | 0x80);
            n /= 128;
        }
        out.push(u8::try_from(n).unwrap());
    }
    let mut out = vec![0x00];
    length(&mut out, name.len());
    out.extend_from_slice(name);
    length(&mut out, value.len());
    out.extend_from_slice(value);
    out
}

#[tokio::test]
async fn rapid_reset_gets_goaway_enhance_your_calm_and_the_server_stays_responsive() {
    let app = spawn_app(config_with(|_| {})).await;
    let mut attacker = TcpStream::connect(app.addr()).await.unwrap();
    let mut burst = opening();
    // :method GET, :scheme http, :path / (HPACK static table), then RST_STREAM CANCEL.
    for i in 0..500u32 {
        let stream = 2 * i + 1;
        burst.extend(frame(0x1, 0x4 | 0x1, stream, &[0x82, 0x86, 0x84]));
        burst.extend(frame(0x3, 0, stream, &8u32.to_be_bytes()));
    }
    attacker.write_all(&burst).await.unwrap();
    assert_eq!(
        goaway_code(&mut attacker).await,
        Some(0xb),
        "ENHANCE_YOUR_CALM"
    );
    still_serves(&app).await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_continuation_flood_gets_goaway_enhance_your_calm() {
    let app = spawn_app(config_with(|_| {})).await;
    let mut attacker = TcpStream::connect(app.addr()).await.unwrap();
    let mut burst = opening();
    // A header block that never ends: HEADERS without END_HEADERS, then empty CONTINUATION
    // frames, which cost the attacker 9 bytes each.
    burst.extend(frame(0x1, 0x1, 1, &dispatch_headers(&[])));
    for _ in 0..10_000 {
        burst.extend(frame(0x9, 0, 1, &[]));
    }
    // The server may close before it has read it all.
    let _ = attacker.write_all(&burst).await;
    assert_eq!(
        goaway_code(&mut attacker).await,
        Some(0xb),
        "ENHANCE_YOUR_CALM"
    );
    still_serves(&app).await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_header_block_over_16_kib_is_refused_with_431_and_nothing_is_dispatched() {
    let app = spawn_app(config_with(|_| {})).await;
    let mut attacker = TcpStream::connect(app.addr()).await.unwrap();
    let mut burst = opening();
    // 36 KB of headers in three frames (within h2's CONTINUATION count, so the size limit
    // itself answers): HEADERS, then two CONTINUATION frames, the last one ending the block.
    let first = dispatch_headers(&literal_header(b"x-pad-0", &[b'a'; 12_000]));
    burst.extend(frame(0x1, 0x1, 1, &first));
    for i in 1..3 {
        let flags = if i == 2 { 0x4 } else { 0 };
        let name = format!("x-pad-{i}");
        let block = literal_header(name.as_bytes(), &[b'a'; 12_000]);
        burst.extend(frame(0x9, flags, 1, &block));
    }
    attacker.write_all(&burst).await.unwrap();
    // h2 answers 431 (Request Header Fields Too Large) on stream 1 and resets it.
    let answer = read_frames_until(&mut attacker, Duration::from_secs(5), |frame| {
        (frame.stream == 1 && frame.kind == 0x1).then(|| frame.payload.clone())
    })
    .await
    .expect("an answer on stream 1 before the connection closed");
    let status = hpack_status(&answer);
    assert_eq!(status, Some(431), "{answer:?}");
    drop(attacker);
    let (_, metrics) = http_get(app.admin, "/metrics").await;
    assert!(
        !metrics.contains("tyk_dispatcher_dispatch_requests_total{"),
        "nothing was dispatched: {metrics}"
    );
    still_serves(&app).await;
    app.shutdown().await;
}

/// Writes `frame` to a connection that never reads, as fast as the socket takes it, for
/// `during`; the bytes the server accepted in all.
async fn flood_without_reading(
    addr: std::net::SocketAddr,
    flood: &[u8],
    during: Duration,
) -> usize {
    let mut attacker = TcpStream::connect(addr).await.unwrap();
    attacker.write_all(&opening()).await.unwrap();
    let mut batch = Vec::new();
    while batch.len() < 64 * 1024 {
        batch.extend_from_slice(flood);
    }
    let mut written = 0;
    let _ = tokio::time::timeout(during, async {
        loop {
            match attacker.write(&batch).await {
                Ok(n) if n > 0 => written += n,
                _ => break,
            }
        }
    })
    .await;
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_settings_floods_from_a_client_that_never_reads_are_held_back() {
    let app = spawn_app(config_with(|_| {})).await;
    for (name, flood) in [
        ("PING", frame(0x6, 0, 0, &[7; 8])),
        // SETTINGS_ENABLE_PUSH = 0, acknowledged by the server each time.
        ("SETTINGS", frame(0x4, 0, 0, &[0, 2, 0, 0, 0, 0])),
    ] {
        // Each frame asks for an answer; a client that never reads them stops the server
        // reading once its answers fill the socket, so what the flood can push is bounded by
        // the socket buffers, however long it tries, and other clients are served throughout.
        let (written, ()) = tokio::join!(
            flood_without_reading(app.addr(), &flood, Duration::from_secs(3)),
            async {
                for _ in 0..5 {
                    still_serves(&app).await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        );
        let frames = written / flood.len();
        eprintln!("{name} flood: {written} bytes ({frames} frames) taken in 3 s");
        assert!(
            written < 64 * 1024 * 1024,
            "{name} flood: {written} bytes ({frames} frames) taken in 3 s without reading"
        );
    }
    still_serves(&app).await;
    app.shutdown().await;
}
