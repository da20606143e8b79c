//! Readiness, connection tracking and the shutdown sequence's signals.
//!
//! SIGTERM starts a drain: readiness and gRPC health go NOT_SERVING at once while the server
//! keeps answering. In a sidecar the gateway in the same pod got SIGTERM too and goes on calling
//! through its own graceful shutdown, so the drain lasts until its connections close (or at most
//! `drain_delay_secs`). Then listeners close first, GOAWAY goes out, and in-flight calls get
//! `shutdown_grace_secs`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Shared state of the server's lifecycle; cheap to clone.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ready: AtomicBool,
    connections: watch::Sender<usize>,
    /// Cancelled when listeners must stop accepting and close.
    close_listeners: CancellationToken,
    /// Cancelled when connections must be asked to finish (HTTP/2 GOAWAY).
    goaway: CancellationToken,
    /// Cancelled when whatever is still open must be dropped.
    abort: CancellationToken,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                ready: AtomicBool::new(false),
                connections: watch::Sender::new(0),
                close_listeners: CancellationToken::new(),
                goaway: CancellationToken::new(),
                abort: CancellationToken::new(),
            }),
        }
    }
}

impl Lifecycle {
    /// Whether the server is serving and not draining.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Marks the server ready or not.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    /// Counts a client connection until the guard is dropped.
    pub fn track_connection(&self) -> ConnectionGuard {
        self.inner.connections.send_modify(|n| *n += 1);
        ConnectionGuard {
            lifecycle: self.clone(),
        }
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        *self.inner.connections.borrow()
    }

    /// Resolves once no client connection is open.
    pub async fn connections_closed(&self) {
        let mut rx = self.inner.connections.subscribe();
        // The sender lives in `self`, so this cannot fail while we hold it.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Token cancelled when listeners must close.
    pub fn close_listeners_token(&self) -> &CancellationToken {
        &self.inner.close_listeners
    }

    /// Token cancelled when connections must receive GOAWAY.
    pub fn goaway_token(&self) -> &CancellationToken {
        &self.inner.goaway
    }

    /// Token cancelled when open connections must be dropped.
    pub fn abort_token(&self) -> &CancellationToken {
        &self.inner.abort
    }
}

/// Decrements the open-connection count when dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    lifecycle: Lifecycle,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.lifecycle
            .inner
            .connections
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Resolves on the first SIGTERM or SIGINT and cancels `stop`; a second signal exits the
/// process at once.
///
/// SIGTERM is what Kubernetes sends at pod deletion (to every container at once); SIGINT is
/// Ctrl-C in a terminal.
///
/// # Errors
/// When signal handlers cannot be installed.
pub async fn stop_on_signals(stop: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let first = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = first, "shutdown requested: draining");
    stop.cancel();
    let second = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::warn!(signal = second, "second signal: exiting at once");
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn connections_closed_waits_for_the_last_guard() {
        let lifecycle = Lifecycle::default();
        let first = lifecycle.track_connection();
        let second = lifecycle.track_connection();
        assert_eq!(lifecycle.open_connections(), 2);
        let waiter = tokio::spawn({
            let lifecycle = lifecycle.clone();
            async move { lifecycle.connections_closed().await }
        });
        drop(first);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("resolves once all are closed")
            .unwrap();
    }
}
