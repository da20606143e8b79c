//! A closed-loop gRPC load generator for `coprocess.Dispatcher/Dispatch`.
//!
//! Opens `--connections` HTTP/2 connections (one `tonic` channel each) and keeps `--streams`
//! unary calls in flight on each, every call sending the same pre-encoded `Object`. Replies
//! are checked against the request: byte for byte, or, when the bytes differ (a server that
//! decodes and re-encodes may reorder map entries), as decoded messages. After a warm-up it
//! measures a fixed window and reports the calls completed in it, their latency percentiles
//! and, with `--server-pid`, the server's CPU time per call.
//!
//! ```text
//! cargo run --release --example loadgen -- --target http://127.0.0.1:50051 --json
//! ```
//!
//! It exits 1 when any call failed or a reply did not echo the request, 2 on bad usage or when
//! the server never became ready.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::Parser;
use prost::Message as _;
use tokio::time::{sleep, sleep_until, timeout_at};
use tonic::{
    client::Grpc,
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint},
};
use tyk_dispatcher::{
    codec::{RawCodec, RawMessage},
    pb::{HookType, MiniRequestObject, Object, ReturnOverrides},
};

const DISPATCH: &str = "/coprocess.Dispatcher/Dispatch";

/// Closed-loop load generator for coprocess.Dispatcher/Dispatch.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Server address: http://HOST:PORT or unix:///path/to.sock
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// HTTP/2 connections, each its own channel.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Calls kept in flight on each connection.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// File holding an encoded coprocess.Object to send [default: the tutorial's Pre-hook
    /// Object, built in code].
    #[arg(long)]
    payload: Option<PathBuf>,
    /// Writes the payload that would be sent to this file and exits.
    #[arg(long)]
    dump_payload: Option<PathBuf>,
    /// Keeps retrying the first call for up to this many seconds until the server answers.
    #[arg(long, default_value_t = 0.0)]
    wait_ready_secs: f64,
    /// Only waits for the server to answer one call correctly, then exits.
    #[arg(long)]
    probe_only: bool,
    /// Process id of the server, to report its CPU time (from /proc) over the window.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Runtime worker threads; 1 runs everything on the calling thread.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seconds to wait after the window for calls still in flight before they count as
    /// failed.
    #[arg(long, default_value_t = 10.0)]
    grace_secs: f64,
    /// Label copied into the result (for scripts comparing several servers).
    #[arg(long, default_value = "")]
    label: String,
    /// Prints the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Hook type of the seed payload (Pre, Post, PostKeyAuth, CustomKeyCheck, Response).
    #[arg(long, default_value = "Pre")]
    hook_type: String,
    /// Hook name of the seed payload.
    #[arg(long, default_value = "MyPreCustomPluginForBasicAuth")]
    hook_name: String,
    /// Accept any well-formed Object as the reply (for servers whose hooks change it).
    #[arg(long)]
    any_reply: bool,
}

/// The Object from the tutorial's grpcurl example: a Pre hook for a basic-auth API.
fn seed_object(hook_type: HookType, hook_name: &str) -> Object {
    let headers: BTreeMap<String, String> = [
        ("User-Agent", "curl/8.1.2"),
        ("Host", "tyk-gateway.localhost:8080"),
        ("Authorization", "Basic ZGV2QHR5ay5pbzpwYXN0cnk="),
        ("Accept", "*/*"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let spec: BTreeMap<String, String> = [
        ("bundle_hash", "d41d8cd98f00b204e9800998ecf8427e"),
        ("OrgID", "5e9d9544a1dcd60001d0ed20"),
        ("APIID", "04e911d3012646d97fcdd6c846fafc4b"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    Object {
        hook_type: hook_type as i32,
        hook_name: hook_name.to_owned(),
        request: Some(MiniRequestObject {
            headers,
            url: "/basic-authentication-valid/get".to_owned(),
            return_overrides: Some(ReturnOverrides {
                response_code: -1,
                ..Default::default()
            }),
            method: "GET".to_owned(),
            request_uri: "/basic-authentication-valid/get".to_owned(),
            scheme: "https".to_owned(),
            ..Default::default()
        }),
        spec,
        ..Default::default()
    }
}

/// What one call's reply says about the server.
enum Echo {
    /// The reply is the request, byte for byte.
    Exact,
    /// Different bytes, same message (re-encoded, e.g. map entries in another order).
    Equivalent,
    /// Not the request.
    Mismatch,
}

/// The request every call sends and what its reply must be.
struct Payload {
    bytes: Bytes,
    /// The payload decoded, to compare replies whose bytes differ.
    decoded: Option<Object>,
    /// Any well-formed Object is a good reply.
    any_reply: bool,
    /// The first reply that differed from the request and was accepted: the same bytes again
    /// are accepted without decoding, so a server whose hooks change the Object does not make
    /// the load generator slower (and the load lighter) than an echo does.
    accepted: std::sync::OnceLock<Vec<u8>>,
}

impl Payload {
    fn check(&self, reply: &[u8]) -> Echo {
        if reply == &self.bytes[..] {
            return Echo::Exact;
        }
        if self
            .accepted
            .get()
            .is_some_and(|accepted| accepted == reply)
        {
            return Echo::Equivalent;
        }
        let echo = match (&self.decoded, Object::decode(reply)) {
            (Some(want), Ok(got)) if *want == got => Echo::Equivalent,
            (_, Ok(_)) if self.any_reply => Echo::Equivalent,
            _ => Echo::Mismatch,
        };
        if matches!(echo, Echo::Equivalent) {
            let _ = self.accepted.set(reply.to_vec());
        }
        echo
    }
}

/// What one in-flight slot saw.
#[derive(Default)]
struct SlotResult {
    /// Latency in nanoseconds of every call completed without error in the window.
    latencies: Vec<u64>,
    /// Failed calls (status, transport error or wrong reply) completed in the window.
    errors_in_window: u64,
    /// Failed calls at any time, warm-up and tail included.
    errors_total: u64,
    /// Replies equal to the request once decoded but not byte for byte.
    equivalent: u64,
    /// Calls that completed (successfully or not) after the window closed.
    tail_calls: u64,
    first_error: Option<String>,
}

impl SlotResult {
    fn fail(&mut self, in_window: bool, what: String) {
        self.errors_total += 1;
        if in_window {
            self.errors_in_window += 1;
        }
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }
}

/// A gRPC client on `channel` that takes replies of any size (payloads may be large).
fn client(channel: Channel) -> Grpc<Channel> {
    Grpc::new(channel).max_decoding_message_size(usize::MAX)
}

/// Sends calls back to back until `end`, recording those that complete within `[start, end)`.
async fn run_slot(
    channel: Channel,
    payload: Arc<Payload>,
    start: Instant,
    end: Instant,
) -> SlotResult {
    let mut grpc = client(channel);
    let path = PathAndQuery::from_static(DISPATCH);
    let mut out = SlotResult::default();
    out.latencies.reserve(4096);
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let outcome = match grpc.ready().await {
            Err(e) => Err(format!("channel not ready: {}", chain(&e))),
            Ok(()) => {
                let request = tonic::Request::new(RawMessage::new(payload.bytes.clone()));
                match grpc
                    .unary::<RawMessage, RawMessage, _>(request, path.clone(), RawCodec)
                    .await
                {
                    Err(status) => Err(format!("call failed: {status}")),
                    Ok(reply) => match payload.check(reply.get_ref().bytes()) {
                        Echo::Exact => Ok(false),
                        Echo::Equivalent => Ok(true),
                        Echo::Mismatch => Err(format!(
                            "reply of {} bytes is not the {}-byte request",
                            reply.get_ref().bytes().len(),
                            payload.bytes.len()
                        )),
                    },
                }
            }
        };
        let done = Instant::now();
        let in_window = done >= start && done < end;
        if done >= end {
            out.tail_calls += 1;
        }
        match outcome {
            Ok(equivalent) => {
                if in_window {
                    out.latencies.push((done - sent).as_nanos() as u64);
                    if equivalent {
                        out.equivalent += 1;
                    }
                }
            }
            Err(what) => {
                out.fail(in_window, what);
                // A dead server fails calls at once; do not spin on it.
                sleep(Duration::from_millis(10)).await;
            }
        }
    }
    out
}

/// An error with its chain of causes, e.g. "transport error: tcp connect error: Connection refused".
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn endpoint(target: &str) -> Result<Endpoint, String> {
    Endpoint::from_shared(target.to_owned())
        .map(|e| e.connect_timeout(Duration::from_secs(2)).tcp_nodelay(true))
        .map_err(|e| format!("bad --target {target:?}: {e}"))
}

/// Connects and makes one call, retrying until it succeeds or `wait` has passed.
async fn wait_ready(args: &Args, payload: &Payload) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs_f64(args.wait_ready_secs);
    let endpoint = endpoint(&args.target)?;
    loop {
        let attempt = async {
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| format!("connect to {}: {}", args.target, chain(&e)))?;
            let mut grpc = client(channel);
            grpc.ready()
                .await
                .map_err(|e| format!("channel not ready: {}", chain(&e)))?;
            let reply = grpc
                .unary::<RawMessage, RawMessage, _>(
                    tonic::Request::new(RawMessage::new(payload.bytes.clone())),
                    PathAndQuery::from_static(DISPATCH),
                    RawCodec,
                )
                .await
                .map_err(|s| format!("probe call failed: {s}"))?;
            match payload.check(reply.get_ref().bytes()) {
                Echo::Mismatch => Err("probe reply is not the request".to_owned()),
                Echo::Exact | Echo::Equivalent => Ok(()),
            }
        };
        let result = tokio::time::timeout(Duration::from_secs(5), attempt)
            .await
            .unwrap_or_else(|_| Err("probe timed out".to_owned()));
        match result {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Seconds of CPU (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: &str, ticks_per_sec: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3, `state`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_sec)
}

fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Seconds of CPU the whole machine has been busy (every CPU, every process and interrupt),
/// from the first line of `/proc/stat`.
fn machine_busy_seconds(ticks_per_sec: f64) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    let busy: f64 = fields.iter().take(8).sum::<f64>() - fields.get(3)? - fields.get(4)?;
    Some(busy / ticks_per_sec)
}

/// CPU seconds of the server, this process and the machine at one moment.
#[derive(Clone, Copy)]
struct CpuSample {
    server: Option<f64>,
    client: Option<f64>,
    machine: Option<f64>,
}

fn sample_cpu(server_pid: Option<u32>, ticks: f64) -> CpuSample {
    CpuSample {
        server: server_pid.and_then(|p| cpu_seconds(&p.to_string(), ticks)),
        client: cpu_seconds("self", ticks),
        machine: machine_busy_seconds(ticks),
    }
}

/// CPU seconds between two samples of one counter.
fn delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}

/// Nearest-rank percentile of sorted nanoseconds, in microseconds.
fn percentile_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

async fn run(args: Args) -> Result<bool, String> {
    let bytes = match &args.payload {
        Some(path) => {
            Bytes::from(std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?)
        }
        None => {
            let hook_type = HookType::from_str_name(&args.hook_type)
                .ok_or_else(|| format!("unknown hook type {:?}", args.hook_type))?;
            Bytes::from(seed_object(hook_type, &args.hook_name).encode_to_vec())
        }
    };
    if let Some(path) = &args.dump_payload {
        std::fs::write(path, &bytes).map_err(|e| format!("write {}: {e}", path.display()))?;
        return Ok(true);
    }
    let payload = Arc::new(Payload {
        decoded: Object::decode(&bytes[..]).ok(),
        bytes,
        any_reply: args.any_reply,
        accepted: std::sync::OnceLock::new(),
    });
    if args.connections == 0 || args.streams == 0 {
        return Err("--connections and --streams must be at least 1".to_owned());
    }

    wait_ready(&args, &payload)
        .await
        .map_err(|e| format!("server not ready: {e}"))?;
    if args.probe_only {
        if !args.json {
            println!("{} answers Dispatch", args.target);
        }
        return Ok(true);
    }

    let endpoint = endpoint(&args.target)?;
    let mut channels = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connection {i} to {}: {}", args.target, chain(&e)))?;
        channels.push(channel);
    }

    let ticks = clock_ticks_per_sec();
    let load_start = Instant::now();
    let window_start = load_start + Duration::from_secs_f64(args.warmup_secs);
    let window_end = window_start + Duration::from_secs_f64(args.duration_secs);
    let mut slots = Vec::with_capacity(args.connections * args.streams);
    for channel in &channels {
        for _ in 0..args.streams {
            slots.push(tokio::spawn(run_slot(
                channel.clone(),
                payload.clone(),
                window_start,
                window_end,
            )));
        }
    }

    sleep_until(window_start.into()).await;
    let cpu_before = sample_cpu(args.server_pid, ticks);
    let measured_from = Instant::now();
    sleep_until(window_end.into()).await;
    let cpu_after = sample_cpu(args.server_pid, ticks);
    let measured = measured_from.elapsed().as_secs_f64();

    let deadline = window_end + Duration::from_secs_f64(args.grace_secs);
    let mut results = Vec::with_capacity(slots.len());
    let mut stuck = 0u64;
    for slot in &mut slots {
        match timeout_at(deadline.into(), slot).await {
            Ok(Ok(result)) => results.push(result),
            Ok(Err(e)) => return Err(format!("load task failed: {e}")),
            Err(_) => stuck += 1,
        }
    }
    for slot in &slots {
        slot.abort();
    }

    let mut latencies: Vec<u64> =
        Vec::with_capacity(results.iter().map(|r| r.latencies.len()).sum());
    let mut errors = 0u64;
    let mut errors_total = stuck;
    let mut equivalent = 0u64;
    let mut tail_calls = 0u64;
    let mut first_error =
        (stuck > 0).then(|| format!("{stuck} calls still in flight after --grace-secs"));
    for r in results {
        latencies.extend_from_slice(&r.latencies);
        errors += r.errors_in_window;
        errors_total += r.errors_total;
        equivalent += r.equivalent;
        tail_calls += r.tail_calls;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    latencies.sort_unstable();
    let calls = latencies.len() as u64;
    let window = args.duration_secs;
    let throughput = calls as f64 / window;
    let mean_us = if calls == 0 {
        0.0
    } else {
        latencies.iter().map(|&n| n as f64).sum::<f64>() / calls as f64 / 1000.0
    };
    let server_cpu = delta(cpu_before.server, cpu_after.server);
    let client_cpu = delta(cpu_before.client, cpu_after.client);
    let machine_cpu = delta(cpu_before.machine, cpu_after.machine);
    // What neither the server nor this process used: other programs, and interrupt work the
    // kernel did not charge to a process.
    let other_cpu =
        machine_cpu.map(|m| (m - server_cpu.unwrap_or(0.0) - client_cpu.unwrap_or(0.0)).max(0.0));
    let server_cpu_us_per_call = server_cpu
        .filter(|_| calls > 0)
        .map(|s| s * 1e6 / calls as f64);

    let result = serde_json::json!({
        "label": args.label,
        "target": args.target,
        "connections": args.connections,
        "streams": args.streams,
        "warmup_secs": args.warmup_secs,
        "duration_secs": window,
        "payload_bytes": payload.bytes.len(),
        "calls": calls,
        "errors": errors,
        "errors_total": errors_total,
        "equivalent_replies": equivalent,
        "tail_calls": tail_calls,
        "throughput": throughput,
        "latency_us": {
            "mean": mean_us,
            "p50": percentile_us(&latencies, 50.0),
            "p90": percentile_us(&latencies, 90.0),
            "p99": percentile_us(&latencies, 99.0),
            "max": percentile_us(&latencies, 100.0),
        },
        "server_pid": args.server_pid,
        "server_cpu_secs": server_cpu,
        "server_cpu_us_per_call": server_cpu_us_per_call,
        "server_cpu_util": server_cpu.map(|s| s / measured),
        "client_cpu_util": client_cpu.map(|s| s / measured),
        "machine_cpu_util": machine_cpu.map(|s| s / measured),
        "other_cpu_util": other_cpu.map(|s| s / measured),
        "first_error": first_error,
    });
    if args.json {
        println!("{result}");
    } else {
        let opt = |v: Option<f64>, scale: f64, unit: &str| {
            v.map_or_else(|| "n/a".to_owned(), |v| format!("{:.1}{unit}", v * scale))
        };
        println!("target       {}", args.target);
        println!(
            "load         {} connections x {} streams, warm-up {} s, measured {} s",
            args.connections, args.streams, args.warmup_secs, window
        );
        println!("payload      {} bytes", payload.bytes.len());
        println!(
            "calls        {calls} ok, {errors} failed in window ({errors_total} failed in all), {equivalent} re-encoded replies"
        );
        println!("throughput   {throughput:.0} calls/s");
        println!(
            "latency      mean {mean_us:.0} µs, p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            percentile_us(&latencies, 50.0),
            percentile_us(&latencies, 90.0),
            percentile_us(&latencies, 99.0),
            percentile_us(&latencies, 100.0)
        );
        println!(
            "server cpu   {} per call, {} of one core",
            opt(server_cpu_us_per_call, 1.0, " µs"),
            opt(server_cpu.map(|s| s / measured), 100.0, "%")
        );
        println!(
            "client cpu   {} of one core",
            opt(client_cpu.map(|s| s / measured), 100.0, "%")
        );
        println!(
            "other cpu    {} of one core (other processes, unattributed interrupts)",
            opt(other_cpu.map(|s| s / measured), 100.0, "%")
        );
        if let Some(e) = &first_error {
            println!("first error  {e}");
        }
    }
    if let Some(e) = &first_error {
        eprintln!("loadgen: {errors_total} calls failed; first: {e}");
    }
    Ok(errors_total == 0 && calls > 0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}
