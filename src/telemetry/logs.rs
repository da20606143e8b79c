//! Log output: text or JSON lines on stdout, filtered by `RUST_LOG` (default `info`), written off
//! the request path by a background thread. The same subscriber records steps' spans for export
//! (see `step_spans`).

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use super::{StepSpans, clock::CachedSecondClock};
use crate::config::{LogFormat, Problem};

/// Lines queued for the writer thread at most; a logger finding the queue full waits. The
/// queue's slots are allocated up front: `tracing-appender`'s default of 128 000 lines would be
/// 4 MiB of resident memory for a queue that, with batched writes, never holds more than a
/// few hundred lines.
const QUEUED_LINES: usize = 8192;

/// Bytes of log lines gathered into one `write` to stdout.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Stdout without its line buffer: the writer thread writes each line into a buffer and
/// flushes it once the queue is empty, so a busy server makes one `write` per batch of lines
/// instead of one per line (`std::io::Stdout` flushes at every newline).
fn batched_stdout() -> std::io::Result<std::io::BufWriter<std::fs::File>> {
    use std::os::fd::AsFd;
    let stdout = std::io::stdout().as_fd().try_clone_to_owned()?;
    Ok(std::io::BufWriter::with_capacity(
        WRITE_BATCH_BYTES,
        std::fs::File::from(stdout),
    ))
}

/// Keeps the log writer alive; dropping it flushes what is buffered.
#[derive(Debug)]
#[must_use = "dropping the guard stops log output"]
pub struct LogGuard {
    _writer: WorkerGuard,
}

/// The level filter `RUST_LOG` asks for (default `info`).
///
/// # Errors
/// A problem keyed `RUST_LOG` when it does not parse: configuration like any other.
pub fn log_filter() -> Result<EnvFilter, Problem> {
    match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => EnvFilter::try_new(&value).map_err(|err| {
            Problem::new(
                "RUST_LOG",
                format!("{value:?} is not a valid filter: {err}"),
            )
        }),
        _ => Ok(EnvFilter::new("info")),
    }
}

/// Installs the global subscriber.
///
/// # Errors
/// When `RUST_LOG` does not parse or a subscriber is already installed.
pub fn init(format: LogFormat) -> anyhow::Result<LogGuard> {
    let filter = log_filter()?;
    // Lossless: a full queue slows logging down rather than dropping lines.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .finish(
            batched_stdout()
                .map_err(|err| anyhow::anyhow!("cannot open stdout for logging: {err}"))?,
        );
    // Behind the filter: a step's span that is not logged is not exported either.
    let registry = tracing_subscriber::registry().with(filter).with(StepSpans);
    match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_timer(CachedSecondClock)
                    .with_writer(writer)
                    .with_target(false)
                    .with_ansi(std::io::stdout().is_terminal()),
            )
            .try_init()?,
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .with_timer(CachedSecondClock)
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(writer),
            )
            .try_init()?,
    }
    Ok(LogGuard { _writer: guard })
}
