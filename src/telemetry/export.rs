//! The span queue and the task that exports it, counting what is exported and what is dropped.
//!
//! Ended spans arrive already encoded (see `otlp`) and are appended to one bounded buffer
//! without blocking the call that ended them; the export task is woken only when a batch is
//! full (or the batch delay passes), not once per span. Exports have a timeout, so a collector
//! that is down or slow costs only the spans that do not fit, and those are counted.

use std::{
    fmt,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Notify, mpsc, oneshot};

use super::otlp::{RequestFrame, SCOPE_SPANS_SPAN};
use crate::{codec::RawCodec, wire::put_len_record};

/// How spans are batched.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Spans waiting at most; more are dropped.
    pub queue_size: usize,
    /// Spans per export.
    pub batch_size: usize,
    /// Longest wait before a partial batch goes out.
    pub delay: Duration,
    /// Longest time one export may take.
    pub export_timeout: Duration,
}

/// Exported and dropped span counts.
#[derive(Debug, Clone, Default)]
pub struct SpanCounters {
    /// Spans the collector accepted.
    pub exported: Counter,
    /// Spans lost to a full queue or a failed export.
    pub dropped: Counter,
}

/// Where export requests go.
#[derive(Debug)]
pub enum Transport {
    /// OTLP/gRPC: `TraceService/Export` with the request's bytes as they are.
    Grpc {
        /// The client.
        client: tonic::client::Grpc<tonic::transport::Channel>,
        /// Headers sent with each export.
        metadata: tonic::metadata::MetadataMap,
    },
    /// OTLP/HTTP with binary protobuf.
    Http {
        /// The client.
        client: reqwest::Client,
        /// The traces URL.
        url: String,
        /// Headers sent with each export.
        headers: reqwest::header::HeaderMap,
    },
}

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Why one export did not reach the collector.
#[derive(Debug, thiserror::Error)]
enum SendError {
    /// No connection, or the request did not get through.
    #[error("collector unreachable: {0}")]
    Unreachable(String),
    /// The collector answered OTLP/gRPC with an error status.
    #[error("collector answered {code:?}: {message}")]
    Status {
        /// The gRPC status code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The collector answered OTLP/HTTP with an error status.
    #[error("collector answered HTTP {0}")]
    Http(reqwest::StatusCode),
}

impl Transport {
    async fn send(&mut self, body: Vec<u8>) -> Result<(), SendError> {
        match self {
            Self::Grpc { client, metadata } => {
                client
                    .ready()
                    .await
                    .map_err(|err| SendError::Unreachable(err.to_string()))?;
                let mut request = tonic::Request::new(crate::codec::RawMessage::new(body));
                *request.metadata_mut() = metadata.clone();
                client
                    .unary(
                        request,
                        http::uri::PathAndQuery::from_static(EXPORT_PATH),
                        RawCodec,
                    )
                    .await
                    .map(drop)
                    .map_err(|status| SendError::Status {
                        code: status.code(),
                        message: status.message().to_string(),
                    })
            }
            Self::Http {
                client,
                url,
                headers,
            } => {
                let response = client
                    .post(url.as_str())
                    .headers(headers.clone())
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await
                    .map_err(|err| SendError::Unreachable(err.to_string()))?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(SendError::Http(response.status()))
                }
            }
        }
    }
}

enum Control {
    Shutdown(oneshot::Sender<()>),
}

/// Encoded spans waiting for export: `ScopeSpans.spans` records back to back, and where each
/// one ends.
#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

/// The queue ended spans go into; see the module docs.
pub struct SpanSink {
    pending: Mutex<Pending>,
    capacity: usize,
    batch_size: usize,
    /// Woken when a batch is full.
    batch_ready: Notify,
    /// Warn about a full queue once, not once per span.
    warned_full: AtomicBool,
    counters: SpanCounters,
    control: mpsc::UnboundedSender<Control>,
}

impl fmt::Debug for SpanSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpanSink")
            .field("capacity", &self.capacity)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl SpanSink {
    /// Starts the export task on the current Tokio runtime.
    pub fn spawn(
        transport: Transport,
        frame: RequestFrame,
        settings: BatchSettings,
        counters: SpanCounters,
    ) -> Arc<Self> {
        let (control, control_rx) = mpsc::unbounded_channel();
        let sink = Arc::new(Self {
            pending: Mutex::new(Pending::default()),
            capacity: settings.queue_size,
            batch_size: settings.batch_size.max(1),
            batch_ready: Notify::new(),
            warned_full: AtomicBool::new(false),
            counters: counters.clone(),
            control,
        });
        let exporting = Exporting {
            transport,
            frame,
            settings,
            counters,
            failing: false,
        };
        tokio::spawn(run(exporting, sink.clone(), control_rx));
        sink
    }

    /// Queues one ended span (an encoded `Span` message), or counts it dropped when the queue
    /// is full.
    pub fn push(&self, span: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.ends.len() >= self.capacity {
            drop(pending);
            self.counters.dropped.inc();
            if !self.warned_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "span export queue full: spans are being dropped (see tyk_dispatcher_spans_dropped_total)"
                );
            }
            return;
        }
        put_len_record(&mut pending.bytes, SCOPE_SPANS_SPAN, span);
        let end = pending.bytes.len();
        pending.ends.push(end);
        let batch_full = pending.ends.len().is_multiple_of(self.batch_size);
        drop(pending);
        if batch_full {
            self.batch_ready.notify_one();
        }
    }

    fn take(&self) -> Pending {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.ends.is_empty() {
            return Pending::default();
        }
        // The next batch will likely be as big: keep the size, start with fresh buffers (the
        // taken ones are exported outside the lock).
        let capacity = pending.bytes.capacity();
        let spans = pending.ends.capacity();
        std::mem::replace(
            &mut *pending,
            Pending {
                bytes: Vec::with_capacity(capacity),
                ends: Vec::with_capacity(spans),
            },
        )
    }

    /// The spans queued, as the `spans` records of a `ScopeSpans` message.
    #[cfg(test)]
    pub(super) fn queued(&self) -> Vec<u8> {
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.bytes.clone()
    }

    /// Exports everything queued and stops the export task, waiting at most `timeout`.
    pub async fn close(&self, timeout: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        if self.control.send(Control::Shutdown(done)).is_err() {
            return true;
        }
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(())))
    }
}

/// Exports batches, logging a failure once until exports recover.
struct Exporting {
    transport: Transport,
    frame: RequestFrame,
    settings: BatchSettings,
    counters: SpanCounters,
    failing: bool,
}

impl Exporting {
    async fn export_all(&mut self, pending: Pending) {
        let mut start = 0;
        for batch in pending.ends.chunks(self.settings.batch_size.max(1)) {
            let end = batch[batch.len() - 1];
            let request = self.frame.request(&pending.bytes[start..end]);
            self.export(request, batch.len() as u64).await;
            start = end;
        }
    }

    async fn export(&mut self, request: Vec<u8>, count: u64) {
        let sent = tokio::time::timeout(self.settings.export_timeout, self.transport.send(request));
        match sent.await {
            Ok(Ok(())) => {
                self.counters.exported.inc_by(count);
                if self.failing {
                    self.failing = false;
                    tracing::info!("span export recovered");
                }
            }
            outcome => {
                self.counters.dropped.inc_by(count);
                if !self.failing {
                    self.failing = true;
                    let reason = match outcome {
                        Ok(Err(err)) => err.to_string(),
                        _ => format!("no answer within {:?}", self.settings.export_timeout),
                    };
                    tracing::warn!(
                        reason,
                        spans = count,
                        "span export failed; spans are dropped until it recovers"
                    );
                }
            }
        }
    }
}

async fn run(
    mut exporting: Exporting,
    sink: Arc<SpanSink>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let mut tick = tokio::time::interval(exporting.settings.delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            () = sink.batch_ready.notified() => None,
            _ = tick.tick() => None,
            message = control.recv() => Some(message),
        };
        exporting.export_all(sink.take()).await;
        match message {
            None => {}
            Some(Some(Control::Shutdown(done))) => {
                let _ = done.send(());
                return;
            }
            Some(None) => return,
        }
    }
}
