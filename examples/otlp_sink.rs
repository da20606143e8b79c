//! A minimal OTLP/gRPC trace receiver that counts spans and throws them away, for benchmarks.
//!
//! It serves `opentelemetry.proto.collector.trace.v1.TraceService/Export`, adds the number of
//! spans in each request to a counter and answers with an empty (full-success) response. It keeps
//! nothing, so what a benchmark measures is the exporter's work, not the receiver's. It runs on
//! one thread.
//!
//! ```text
//! cargo run --release --example otlp_sink -- --listen 127.0.0.1:4317 --count-file spans.txt
//! ```
//!
//! The count is reported three ways: `--count-file PATH` is rewritten (atomically, via a
//! temporary file and a rename) every `--interval-ms` with one line `spans=N requests=N`;
//! `--print` prints the same line on stdout at that interval; and on SIGTERM or SIGINT the final
//! line is printed on stdout (and written to the count file) before it exits. With
//! `--ready-file PATH` it writes its bound address there once it listens (useful with port 0).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tokio::signal::unix::{SignalKind, signal};
use tonic::{Request, Response, Status};

/// OTLP/gRPC trace receiver that counts spans and discards them.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (host:port; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:4317")]
    listen: SocketAddr,
    /// File rewritten with `spans=N requests=N` every --interval-ms and at exit.
    #[arg(long)]
    count_file: Option<PathBuf>,
    /// Also prints the count line on stdout every --interval-ms.
    #[arg(long)]
    print: bool,
    /// How often the count is written, in milliseconds.
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
    /// File to write the bound address to once listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Largest request accepted, in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    max_recv_bytes: usize,
}

/// What has arrived so far.
#[derive(Debug, Default)]
struct Counts {
    spans: AtomicU64,
    requests: AtomicU64,
}

impl Counts {
    fn line(&self) -> String {
        format!(
            "spans={} requests={}",
            self.spans.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed)
        )
    }
}

#[derive(Debug, Clone)]
struct Sink(Arc<Counts>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.spans.fetch_add(spans as u64, Ordering::Relaxed);
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        // Dropping the request here frees it; nothing is kept.
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Writes `line` to `path` through a temporary file and a rename, so readers never see half.
fn write_count(path: &Path, line: &str) {
    let tmp = path.with_extension("tmp");
    let result =
        std::fs::write(&tmp, format!("{line}\n")).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        eprintln!("otlp_sink: write {}: {e}", path.display());
    }
}

async fn run(args: Args) -> Result<(), String> {
    let counts = Arc::new(Counts::default());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;
    if let Some(path) = &args.count_file {
        write_count(path, &counts.line());
    }
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{local}\n"))
            .map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    eprintln!("otlp_sink: listening on {local}");

    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };

    let reporter = {
        let counts = counts.clone();
        let (path, print) = (args.count_file.clone(), args.print);
        let interval = Duration::from_millis(args.interval_ms.max(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = String::new();
            loop {
                tick.tick().await;
                let line = counts.line();
                if line == last {
                    continue;
                }
                if let Some(path) = &path {
                    write_count(path, &line);
                }
                if print {
                    println!("{line}");
                }
                last = line;
            }
        })
    };

    let service = TraceServiceServer::new(Sink(counts.clone()))
        .max_decoding_message_size(args.max_recv_bytes);
    let served = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop,
        )
        .await;
    reporter.abort();
    let line = counts.line();
    if let Some(path) = &args.count_file {
        write_count(path, &line);
    }
    println!("{line}");
    served.map_err(|e| format!("serve: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("otlp_sink: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otlp_sink: {e}");
            ExitCode::FAILURE
        }
    }
}
