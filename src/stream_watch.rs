//! Resets one HTTP/2 stream whose reply makes no send progress, leaving the connection and its
//! other streams alone.
//!
//! A reply that HTTP/2 cannot send (the client grants no window) is never polled again, so it
//! cannot fail itself, and hyper offers no handle to reset a stream from outside. hyper does
//! spawn every stream as a task of its own through the connection's executor, though: this
//! executor wraps each stream's task in a [`Watched`] future that owns the stream. When a reply
//! body registered through [`reply_progress`] has not been polled for more within the timeout,
//! the task ends; dropping hyper's stream future drops the stream's last handle, and h2 resets
//! it with `RST_STREAM(CANCEL)`. The reply body is dropped with it and its budget share returns.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

use crate::bounds::WarnLimit;

tokio::task_local! {
    /// The progress of the stream whose task is running.
    static STREAM: Arc<StreamProgress>;
}

/// The send progress of one stream's reply.
#[derive(Debug, Default)]
pub struct StreamProgress {
    /// A reply body is alive and watched.
    watched: AtomicBool,
    /// Polls of the reply body so far.
    polls: AtomicU64,
}

impl StreamProgress {
    /// HTTP/2 took what the body gave before and asks for more.
    pub fn progressed(&self) {
        self.polls.fetch_add(1, Ordering::Relaxed);
    }
}

/// The progress handle of the stream running this task, marked watched; `None` outside a
/// stream spawned by [`StreamExecutor`] (as in unit tests).
pub fn reply_progress() -> Option<Arc<StreamProgress>> {
    STREAM
        .try_with(|stream| {
            stream.watched.store(true, Ordering::Relaxed);
            stream.clone()
        })
        .ok()
}

/// hyper's executor for a connection's streams: each is spawned on tokio inside a [`Watched`].
#[derive(Debug, Clone)]
pub struct StreamExecutor {
    timeout: Duration,
    reset: Counter,
    warnings: Arc<WarnLimit>,
}

impl StreamExecutor {
    /// Resets streams whose watched reply makes no progress for `timeout`, counting each in
    /// `reset`.
    pub fn new(timeout: Duration, reset: Counter) -> Self {
        Self {
            timeout,
            reset,
            warnings: Arc::default(),
        }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let progress = Arc::new(StreamProgress::default());
        let watched = Watched {
            stream: Box::pin(stream),
            progress: progress.clone(),
            executor: self.clone(),
            due: None,
            seen: 0,
        };
        tokio::spawn(STREAM.scope(progress, watched));
    }
}

/// A stream's task, ended when its watched reply stalls (see the module docs).
struct Watched<F> {
    stream: Pin<Box<F>>,
    progress: Arc<StreamProgress>,
    executor: StreamExecutor,
    /// Made when the reply is first watched; moved on at each sign of progress.
    due: Option<Pin<Box<Sleep>>>,
    seen: u64,
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.stream.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if !this.progress.watched.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        let polls = this.progress.polls.load(Ordering::Relaxed);
        let timeout = this.executor.timeout;
        let due = this
            .due
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if polls != this.seen {
            this.seen = polls;
            due.as_mut().reset(Instant::now() + timeout);
        }
        if due.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.executor.reset.inc();
        if let Some(suppressed) = this.executor.warnings.permit() {
            tracing::warn!(
                timeout_secs = timeout.as_secs_f64(),
                suppressed,
                "reply made no send progress in time: stream reset (reply_progress_timeout_secs)"
            );
        }
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;

    /// A stream task that registers a reply, then makes progress only when `steps` says so.
    async fn stalling_stream(mut steps: tokio::sync::mpsc::Receiver<()>) {
        let progress = reply_progress().expect("inside a watched stream");
        while steps.recv().await.is_some() {
            progress.progressed();
        }
        std::future::pending::<()>().await;
    }

    /// Waits for the task holding `alive`'s sender to be dropped; how long that took.
    async fn dropped_after(alive: tokio::sync::oneshot::Receiver<()>) -> Duration {
        let started = tokio::time::Instant::now();
        let _ = tokio::time::timeout(Duration::from_secs(10), alive)
            .await
            .expect("the task ends");
        started.elapsed()
    }

    #[tokio::test]
    async fn a_stalled_reply_ends_its_stream_and_is_counted() {
        let timeout = Duration::from_millis(600);
        let reset = Counter::default();
        let executor = StreamExecutor::new(timeout, reset.clone());
        let (steps, rx) = tokio::sync::mpsc::channel(1);
        let (alive, mut ended) = tokio::sync::oneshot::channel::<()>();
        executor.execute(async move {
            let _alive = alive;
            stalling_stream(rx).await;
        });
        // Progress every 150 ms keeps it alive for longer than the timeout.
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            steps.send(()).await.unwrap();
        }
        tokio::task::yield_now().await;
        assert!(ended.try_recv().is_err(), "reset while moving");
        assert_eq!(reset.get(), 0);
        // Then nothing: reset one timeout after the last progress.
        let took = dropped_after(ended).await;
        assert!(took >= timeout - Duration::from_millis(50), "{took:?}");
        assert_eq!(reset.get(), 1);
        drop(steps);
    }

    #[tokio::test]
    async fn a_stream_without_a_watched_reply_is_never_cut() {
        let reset = Counter::default();
        let executor = StreamExecutor::new(Duration::from_millis(100), reset.clone());
        let (alive, ended) = tokio::sync::oneshot::channel::<()>();
        executor.execute(async move {
            let _alive = alive;
            tokio::time::sleep(Duration::from_millis(800)).await;
        });
        let took = dropped_after(ended).await;
        assert!(
            took >= Duration::from_millis(750),
            "ran to its end: {took:?}"
        );
        assert_eq!(reset.get(), 0);
    }

    #[test]
    fn outside_a_stream_there_is_nothing_to_watch() {
        assert!(reply_progress().is_none());
    }
}
