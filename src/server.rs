//! The gRPC side: routes (Dispatcher, health, reflection) and the accept loops that serve each
//! HTTP/2 connection, with per-connection age limits and the drain's GOAWAY.
//!
//! Connections are served with hyper directly rather than through tonic's `Server`, so that the
//! server decides the order of shutdown (listeners close before GOAWAY), counts connections for
//! the drain, and gives each connection its own jittered maximum age.

use std::{io, pin::pin, sync::Arc, time::Duration};

use hyper::server::conn::http2;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use rand::Rng;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    task::JoinHandle,
};
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

use crate::{
    config::Config,
    dispatcher::Dispatcher,
    lifecycle::{ConnectionGuard, Lifecycle},
    listener::Listener,
    metrics::{Metrics, Rejection},
    pb::{self, dispatcher_server::DispatcherServer},
    response::FinishedRoutes,
    tls::ReloadingConfig,
};

/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the gRPC routes and the health reporter that mirrors readiness.
///
/// # Errors
/// When the reflection descriptors cannot be read (a build defect).
pub fn routes(
    config: &Config,
    dispatcher: Dispatcher,
) -> Result<(Routes, HealthReporter), tonic_reflection::server::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let dispatcher = DispatcherServer::new(dispatcher)
        .max_decoding_message_size(config.max_recv_bytes)
        // Reply sizes are policed by `limits::ReplyPolicy`, which can still rescue a reply.
        .max_encoding_message_size(usize::MAX);
    let mut builder = Routes::builder();
    builder.add_service(dispatcher).add_service(health_service);
    if config.reflection {
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .include_reflection_service(false)
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // Both reflection versions list each other, whichever a client speaks.
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                )
        };
        builder
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?);
    }
    Ok((builder.routes().prepare(), health))
}

/// Everything a connection needs; shared by all accept loops.
#[derive(Debug, Clone)]
pub struct ConnectionServer {
    routes: FinishedRoutes,
    http2: http2::Builder<TokioExecutor>,
    lifecycle: Lifecycle,
    metrics: Metrics,
    max_age: Option<Duration>,
    age_grace: Duration,
}

impl ConnectionServer {
    /// Applies the HTTP/2 and connection settings of `config`.
    pub fn new(config: &Config, routes: Routes, lifecycle: Lifecycle, metrics: Metrics) -> Self {
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.max_concurrent_streams)
            .keep_alive_interval(config.keepalive_interval_secs.map(Duration::from_secs))
            .keep_alive_timeout(Duration::from_secs(config.keepalive_timeout_secs))
            // Large bodies are common: let windows grow with the connection's bandwidth.
            .adaptive_window(true)
            .max_pending_accept_reset_streams(Some(64));
        let routes = FinishedRoutes::new(routes, metrics.rejections(Rejection::RequestTooLarge));
        Self {
            routes,
            http2,
            lifecycle,
            metrics,
            max_age: config.max_connection_age_secs.map(Duration::from_secs),
            age_grace: Duration::from_secs(config.max_connection_age_grace_secs),
        }
    }

    /// Serves one connection until it closes, its age runs out, or the drain ends it.
    ///
    /// `tracked` was taken when the connection was accepted, so the drain never misses a
    /// connection whose task has not started yet.
    async fn serve<IO>(&self, io: IO, tracked: Tracked)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = TowerToHyperService::new(self.routes.clone());
        let mut conn = pin!(self.http2.serve_connection(TokioIo::new(io), service));
        // ±10% so connections opened together do not all reconnect together.
        let max_age = self
            .max_age
            .map(|age| age.mul_f64(rand::rng().random_range(0.9..1.1)));
        let age = async move {
            match max_age {
                Some(age) => tokio::time::sleep(age).await,
                None => std::future::pending().await,
            }
        };
        let mut age = pin!(age);
        let mut closing = false;
        let mut grace_over = pin!(tokio::time::sleep(Duration::MAX));
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                    break;
                }
                () = &mut age, if !closing => {
                    tracing::debug!("connection reached its maximum age: GOAWAY");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    grace_over.as_mut().reset(tokio::time::Instant::now() + self.age_grace);
                }
                () = self.lifecycle.goaway_token().cancelled(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = &mut grace_over => {
                    tracing::warn!("connection still busy after its age grace period: closed");
                    break;
                }
                () = self.lifecycle.abort_token().cancelled() => break,
            }
        }
        drop(tracked);
    }

    /// Accepts connections on `listener` until the lifecycle closes listeners, then drops it.
    pub fn spawn_accept_loop(
        &self,
        listener: Listener,
        tls: Option<Arc<ReloadingConfig>>,
    ) -> JoinHandle<()> {
        let server = self.clone();
        tokio::spawn(async move {
            let close = server.lifecycle.close_listeners_token().clone();
            let listener_addr = listener.local_addr();
            loop {
                let accepted = tokio::select! {
                    () = close.cancelled() => break,
                    accepted = accept(&listener) => accepted,
                };
                match accepted {
                    Ok(conn) => server.spawn_connection(conn, tls.clone()),
                    Err(err) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(listener = %listener_addr, error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            // Connections the kernel already completed would be reset by close(): serve them.
            for conn in take_pending(&listener) {
                server.spawn_connection(conn, tls.clone());
            }
            drop(listener);
            tracing::info!(listener = %listener_addr, "listener closed");
        })
    }

    fn spawn_connection(&self, conn: Accepted, tls: Option<Arc<ReloadingConfig>>) {
        let tracked = Tracked::new(&self.lifecycle, &self.metrics);
        let server = self.clone();
        tokio::spawn(async move {
            match (conn, tls) {
                (Accepted::Tcp(stream), None) => server.serve(stream, tracked).await,
                (Accepted::Unix(stream), None) => server.serve(stream, tracked).await,
                (Accepted::Tcp(stream), Some(tls)) => server.serve_tls(stream, &tls, tracked).await,
                (Accepted::Unix(stream), Some(tls)) => {
                    server.serve_tls(stream, &tls, tracked).await
                }
            }
        });
    }

    async fn serve_tls<IO>(&self, io: IO, tls: &ReloadingConfig, tracked: Tracked)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
            Ok(Ok(stream)) => self.serve(stream, tracked).await,
            Ok(Err(err)) => tracing::info!(error = %err, "TLS handshake failed"),
            Err(_) => tracing::info!("TLS handshake timed out"),
        }
    }
}

/// An accepted connection, counted for the drain and in the metrics until dropped.
struct Tracked {
    _guard: ConnectionGuard,
    open: prometheus_client::metrics::gauge::Gauge,
}

impl Tracked {
    fn new(lifecycle: &Lifecycle, metrics: &Metrics) -> Self {
        metrics.connections.inc();
        metrics.connections_accepted.inc();
        Self {
            _guard: lifecycle.track_connection(),
            open: metrics.connections.clone(),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.open.dec();
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<Accepted> {
    match listener {
        Listener::Tcp(listener) => {
            let (stream, _) = listener.accept().await?;
            // Small unary messages: do not wait to coalesce.
            stream.set_nodelay(true)?;
            Ok(Accepted::Tcp(stream))
        }
        Listener::Unix(listener, _) => Ok(Accepted::Unix(listener.accept().await?.0)),
    }
}

/// Accepts, without waiting, every connection already queued on `listener`.
fn take_pending(listener: &Listener) -> Vec<Accepted> {
    let socket = match listener {
        Listener::Tcp(listener) => socket2::SockRef::from(listener),
        Listener::Unix(listener, _) => socket2::SockRef::from(listener),
    };
    let mut pending = Vec::new();
    // The listener is non-blocking: accept stops with WouldBlock once the queue is empty.
    while let Ok((conn, _)) = socket.accept() {
        if conn.set_nonblocking(true).is_err() {
            continue;
        }
        let accepted = match listener {
            Listener::Tcp(_) => {
                let _ = conn.set_tcp_nodelay(true);
                tokio::net::TcpStream::from_std(conn.into()).map(Accepted::Tcp)
            }
            Listener::Unix(..) => tokio::net::UnixStream::from_std(conn.into()).map(Accepted::Unix),
        };
        match accepted {
            Ok(accepted) => pending.push(accepted),
            Err(err) => tracing::warn!(error = %err, "could not take over a queued connection"),
        }
    }
    pending
}
