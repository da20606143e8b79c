//! A batch span processor that counts what it exports and what it drops.
//!
//! The SDK's batch processor keeps its drop count private; this one is small enough to own.
//! Finished spans go into a bounded queue without blocking the call that ended them, and the
//! export task is woken only when a batch is full (or the batch delay passes), not once per
//! span. Exports have a timeout, so a collector that is down or slow costs only the spans that do
//! not fit, and those are counted.

use std::{
    fmt,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    trace::{SpanData, SpanExporter, SpanProcessor},
};
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use tokio::sync::{Notify, mpsc, oneshot};

/// How the processor batches.
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

enum Control {
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// Finished spans waiting for export.
#[derive(Debug)]
struct Queue {
    spans: Mutex<Vec<SpanData>>,
    capacity: usize,
    batch_size: usize,
    /// Woken when a batch is full.
    batch_ready: Notify,
    /// Warn about a full queue once, not once per span.
    warned_full: Mutex<bool>,
}

impl Queue {
    fn take(&self) -> Vec<SpanData> {
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *spans, Vec::with_capacity(self.batch_size))
    }
}

/// See the module docs.
pub struct CountingBatchProcessor {
    queue: Arc<Queue>,
    control: mpsc::UnboundedSender<Control>,
    counters: SpanCounters,
}

impl fmt::Debug for CountingBatchProcessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingBatchProcessor")
            .finish_non_exhaustive()
    }
}

impl CountingBatchProcessor {
    /// Starts the export task on the current Tokio runtime.
    pub fn spawn<E: SpanExporter + 'static>(
        exporter: E,
        settings: BatchSettings,
        counters: SpanCounters,
    ) -> Self {
        let queue = Arc::new(Queue {
            spans: Mutex::new(Vec::with_capacity(settings.batch_size)),
            capacity: settings.queue_size,
            batch_size: settings.batch_size,
            batch_ready: Notify::new(),
            warned_full: Mutex::new(false),
        });
        let (control, control_rx) = mpsc::unbounded_channel();
        tokio::spawn(run(
            exporter,
            queue.clone(),
            control_rx,
            settings,
            counters.clone(),
        ));
        Self {
            queue,
            control,
            counters,
        }
    }

    /// Exports everything queued, waiting at most `timeout`.
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.ask(Control::Flush, timeout).await
    }

    /// Exports everything queued and stops the exporter, waiting at most `timeout`.
    pub async fn close(&self, timeout: Duration) -> bool {
        self.ask(Control::Shutdown, timeout).await
    }

    async fn ask(&self, message: fn(oneshot::Sender<()>) -> Control, timeout: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        if self.control.send(message(done)).is_err() {
            return true;
        }
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(())))
    }
}

impl SpanProcessor for CountingBatchProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let queue = &self.queue;
        let mut spans = queue.spans.lock().unwrap_or_else(PoisonError::into_inner);
        if spans.len() >= queue.capacity {
            drop(spans);
            self.counters.dropped.inc();
            let mut warned = queue
                .warned_full
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !*warned {
                *warned = true;
                tracing::warn!(
                    "span export queue full: spans are being dropped (see tyk_dispatcher_spans_dropped_total)"
                );
            }
            return;
        }
        spans.push(span);
        let batch_full = spans.len() == queue.batch_size;
        drop(spans);
        if batch_full {
            queue.batch_ready.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Flushing is asynchronous here; `flush` is the awaited form.
        let (done, _) = oneshot::channel();
        self.control
            .send(Control::Flush(done))
            .map_err(|_| OTelSdkError::AlreadyShutdown)
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        let (done, _) = oneshot::channel();
        self.control
            .send(Control::Shutdown(done))
            .map_err(|_| OTelSdkError::AlreadyShutdown)
    }
}

/// Exports batches, logging a failure once until exports recover.
struct Exporting<E> {
    exporter: E,
    settings: BatchSettings,
    counters: SpanCounters,
    failing: bool,
}

impl<E: SpanExporter> Exporting<E> {
    async fn export_all(&mut self, mut spans: Vec<SpanData>) {
        while !spans.is_empty() {
            let rest = spans.split_off(spans.len().min(self.settings.batch_size));
            self.export(spans).await;
            spans = rest;
        }
    }

    async fn export(&mut self, spans: Vec<SpanData>) {
        let count = spans.len() as u64;
        match tokio::time::timeout(self.settings.export_timeout, self.exporter.export(spans)).await
        {
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

async fn run<E: SpanExporter>(
    exporter: E,
    queue: Arc<Queue>,
    mut control: mpsc::UnboundedReceiver<Control>,
    settings: BatchSettings,
    counters: SpanCounters,
) {
    let mut exporting = Exporting {
        exporter,
        settings,
        counters,
        failing: false,
    };
    let mut tick = tokio::time::interval(settings.delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            () = queue.batch_ready.notified() => None,
            _ = tick.tick() => None,
            message = control.recv() => Some(message),
        };
        exporting.export_all(queue.take()).await;
        match message {
            None => {}
            Some(Some(Control::Flush(done))) => {
                let _ = done.send(());
            }
            Some(Some(Control::Shutdown(done))) => {
                let _ = exporting.exporter.shutdown();
                let _ = done.send(());
                return;
            }
            Some(None) => return,
        }
    }
}
