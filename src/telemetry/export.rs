//! A batch span processor that counts what it exports and what it drops.
//!
//! The SDK's batch processor keeps its drop count private; this one is small enough to own.
//! Finished spans go into a bounded queue without blocking the call that ended them; a task
//! exports them in batches with a timeout, so a collector that is down or slow costs only the
//! spans that do not fit, and those are counted.

use std::{fmt, sync::Mutex, time::Duration};

use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    trace::{SpanData, SpanExporter, SpanProcessor},
};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

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

/// See the module docs.
pub struct CountingBatchProcessor {
    spans: mpsc::Sender<SpanData>,
    control: mpsc::UnboundedSender<Control>,
    counters: SpanCounters,
    /// Warn about a full queue once, not once per span.
    warned_full: Mutex<bool>,
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
        let (spans, queue) = mpsc::channel(settings.queue_size);
        let (control, control_rx) = mpsc::unbounded_channel();
        tokio::spawn(run(exporter, queue, control_rx, settings, counters.clone()));
        Self {
            spans,
            control,
            counters,
            warned_full: Mutex::new(false),
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
        if self.spans.try_send(span).is_err() {
            self.counters.dropped.inc();
            let mut warned = self
                .warned_full
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !*warned {
                *warned = true;
                tracing::warn!(
                    "span export queue full: spans are being dropped (see tyk_dispatcher_spans_dropped_total)"
                );
            }
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

async fn run<E: SpanExporter>(
    exporter: E,
    mut queue: mpsc::Receiver<SpanData>,
    mut control: mpsc::UnboundedReceiver<Control>,
    settings: BatchSettings,
    counters: SpanCounters,
) {
    let mut batch = Vec::with_capacity(settings.batch_size);
    let mut failing = false;
    let mut export = async |batch: &mut Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::take(batch);
        let count = spans.len() as u64;
        match tokio::time::timeout(settings.export_timeout, exporter.export(spans)).await {
            Ok(Ok(())) => {
                counters.exported.inc_by(count);
                if failing {
                    failing = false;
                    tracing::info!("span export recovered");
                }
            }
            outcome => {
                counters.dropped.inc_by(count);
                if !failing {
                    failing = true;
                    let reason = match outcome {
                        Ok(Err(err)) => err.to_string(),
                        _ => format!("no answer within {:?}", settings.export_timeout),
                    };
                    tracing::warn!(
                        reason,
                        spans = count,
                        "span export failed; spans are dropped until it recovers"
                    );
                }
            }
        }
    };
    let mut tick = tokio::time::interval(settings.delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            span = queue.recv() => match span {
                Some(span) => {
                    batch.push(span);
                    if batch.len() >= settings.batch_size {
                        export(&mut batch).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => export(&mut batch).await,
            message = control.recv() => {
                while let Ok(span) = queue.try_recv() {
                    batch.push(span);
                    if batch.len() >= settings.batch_size {
                        export(&mut batch).await;
                    }
                }
                export(&mut batch).await;
                match message {
                    Some(Control::Flush(done)) => {
                        let _ = done.send(());
                    }
                    Some(Control::Shutdown(done)) => {
                        let _ = exporter.shutdown();
                        let _ = done.send(());
                        return;
                    }
                    None => break,
                }
            }
        }
    }
    export(&mut batch).await;
}
