//! The gRPC side: routes (Dispatcher, health, reflection) and the accept loops that serve each
//! HTTP/2 connection, with per-connection age limits and the drain's GOAWAY.
//!
//! Connections are served with hyper directly rather than through tonic's `Server`, so that the
//! server decides the order of shutdown (listeners close before GOAWAY), counts connections for
//! the drain, and gives each connection its own jittered maximum age.
//!
//! Hostile clients are bounded per connection: the TLS and HTTP/2 handshake must arrive within
//! `handshake_timeout_secs` of accept, a connection that has made no call is closed after
//! `idle_timeout_secs` (one that has made a call never is: the gateway keeps one connection and
//! may leave it idle for hours), and at most `max_connections` are open, below the open-file
//! limit so the admin port can still answer.

use std::{
    io,
    pin::pin,
    sync::{Arc, atomic::AtomicBool, atomic::Ordering},
    time::Duration,
};

use hyper::server::conn::http2;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use rand::Rng;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
    time::Instant,
};
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

use crate::{
    bounds::WarnLimit,
    charge::{Charger, Charging},
    config::Config,
    dispatcher::Dispatcher,
    hygiene::{AcceptBackoff, HandshakeWatch, MarkCalls},
    lifecycle::{ConnectionGuard, Lifecycle},
    listener::{BoundAddr, Listener},
    metrics::{Metrics, RefusedBy, StreamReset, TimedOut},
    pb::{self, dispatcher_server::DispatcherServer},
    response::FinishedRoutes,
    stream_watch::StreamExecutor,
    tls::ReloadingConfig,
    write_batch::WriteBatch,
};

/// Streams a client may open and reset before the server has accepted them, at once, before
/// the connection is closed with GOAWAY ENHANCE_YOUR_CALM: the HTTP/2 rapid-reset attack
/// (CVE-2023-44487). h2's default is 20; the gateway never resets streams in bulk, so a little
/// more room costs nothing.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 64;
/// Streams the server may reset because the client broke the protocol on them, before the
/// connection is closed with GOAWAY ENHANCE_YOUR_CALM (hyper's default, made explicit).
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// Largest header block a request may carry, decoded (hyper's default, made explicit). It also
/// bounds CONTINUATION frames: h2 refuses more than this needs (at least 5).
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// After a GOAWAY for idleness, how long the client has to notice before the connection is
/// dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Builds the gRPC routes and the health reporter that mirrors readiness.
///
/// # Errors
/// When the reflection descriptors cannot be read (a build defect).
pub fn routes(
    dispatcher: Dispatcher,
    max_recv_bytes: usize,
    reflection: bool,
) -> Result<(Routes, HealthReporter), tonic_reflection::server::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let dispatcher = DispatcherServer::new(dispatcher)
        .max_decoding_message_size(max_recv_bytes)
        // Reply sizes are policed by `limits::ReplyPolicy`, which can still rescue a reply.
        .max_encoding_message_size(usize::MAX);
    let mut builder = Routes::builder();
    builder.add_service(dispatcher).add_service(health_service);
    if reflection {
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
    charger: Arc<Charger>,
    http2: http2::Builder<StreamExecutor>,
    lifecycle: Lifecycle,
    metrics: Metrics,
    max_age: Option<Duration>,
    age_grace: Duration,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    /// One permit per open connection, `max_connections` in all.
    slots: Arc<Semaphore>,
    refusals: Arc<WarnLimit>,
}

/// How gRPC connections are served: HTTP/2 settings, timers and the connection cap.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// Streams a connection may have open at once.
    pub max_concurrent_streams: u32,
    /// How often idle clients are pinged (HTTP/2 PING), if at all.
    pub keepalive_interval: Option<Duration>,
    /// How long a ping may go unanswered.
    pub keepalive_timeout: Duration,
    /// A connection's age before it is asked to go away.
    pub max_age: Option<Duration>,
    /// How long calls in flight get after an age GOAWAY.
    pub age_grace: Duration,
    /// TLS and HTTP/2 handshake deadline.
    pub handshake_timeout: Duration,
    /// Deadline of a connection's first call.
    pub idle_timeout: Duration,
    /// A reply's longest stall before its stream is reset.
    pub reply_progress_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
}

impl ConnectionSettings {
    /// The settings of `config`, with `max_connections` as the open-file limit allows it.
    pub fn of(config: &Config, max_connections: usize) -> Self {
        Self {
            max_concurrent_streams: config.max_concurrent_streams,
            keepalive_interval: config.keepalive_interval_secs.map(Duration::from_secs),
            keepalive_timeout: Duration::from_secs(config.keepalive_timeout_secs),
            max_age: config.max_connection_age_secs.map(Duration::from_secs),
            age_grace: Duration::from_secs(config.max_connection_age_grace_secs),
            handshake_timeout: Duration::from_secs(config.handshake_timeout_secs),
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
            reply_progress_timeout: Duration::from_secs(config.reply_progress_timeout_secs),
            max_connections,
        }
    }
}

impl ConnectionServer {
    /// Serves `routes` with `settings`, Dispatcher messages charged by `charger`.
    pub fn new(
        settings: &ConnectionSettings,
        routes: FinishedRoutes,
        charger: Charger,
        lifecycle: Lifecycle,
        metrics: Metrics,
    ) -> Self {
        let mut http2 = http2::Builder::new(StreamExecutor::new(
            settings.reply_progress_timeout,
            metrics.streams_reset(StreamReset::ReplyProgress),
        ));
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(settings.max_concurrent_streams)
            .keep_alive_interval(settings.keepalive_interval)
            .keep_alive_timeout(settings.keepalive_timeout)
            // Large bodies are common: let windows grow with the connection's bandwidth.
            .adaptive_window(true)
            .max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
            .max_header_list_size(MAX_HEADER_LIST_BYTES);
        Self {
            routes,
            charger: Arc::new(charger),
            http2,
            lifecycle,
            metrics,
            max_age: settings.max_age,
            age_grace: settings.age_grace,
            handshake_timeout: settings.handshake_timeout,
            idle_timeout: settings.idle_timeout,
            slots: Arc::new(Semaphore::new(settings.max_connections)),
            refusals: Arc::new(WarnLimit::default()),
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
        let shaken = Arc::new(AtomicBool::new(false));
        let called = Arc::new(AtomicBool::new(false));
        let io = HandshakeWatch::new(WriteBatch::new(io), shaken.clone());
        let budget = self.charger.connection();
        let service = MarkCalls::new(
            TowerToHyperService::new(Charging::new(
                self.routes.clone(),
                self.charger.clone(),
                budget.clone(),
            )),
            called.clone(),
        );
        let mut conn = pin!(self.http2.serve_connection(TokioIo::new(io), service));
        // Both deadlines count from accept; each is checked once, when it comes.
        let mut handshake_due = pin!(tokio::time::sleep_until(
            tracked.accepted_at + self.handshake_timeout
        ));
        let mut handshake_checked = false;
        let mut idle_due = pin!(tokio::time::sleep_until(
            tracked.accepted_at + self.idle_timeout
        ));
        let mut idle_checked = false;
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
                () = &mut handshake_due, if !handshake_checked => {
                    handshake_checked = true;
                    if !shaken.load(Ordering::Acquire) {
                        tracing::debug!("no HTTP/2 handshake in time: closed");
                        self.metrics.connections_timed_out(TimedOut::Handshake).inc();
                        break;
                    }
                }
                () = &mut idle_due, if !idle_checked && !closing => {
                    idle_checked = true;
                    if !called.load(Ordering::Relaxed) {
                        tracing::debug!("no call in time: GOAWAY");
                        self.metrics.connections_timed_out(TimedOut::Idle).inc();
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        grace_over.as_mut().reset(Instant::now() + IDLE_CLOSE_GRACE);
                    }
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
                    if called.load(Ordering::Relaxed) {
                        tracing::warn!("connection still busy after its grace period: closed");
                    }
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
            let mut backoff = AcceptBackoff::default();
            loop {
                let accepted = tokio::select! {
                    () = close.cancelled() => break,
                    accepted = accept(&listener) => accepted,
                };
                match accepted {
                    Ok(conn) => {
                        backoff.succeeded();
                        server.admit(conn, tls.clone(), &listener_addr);
                    }
                    Err(err) => {
                        if let Some(pause) = backoff.failed(&listener_addr, &err) {
                            tokio::select! {
                                () = close.cancelled() => break,
                                () = tokio::time::sleep(pause) => {}
                            }
                        }
                    }
                }
            }
            // Connections the kernel already completed would be reset by close(): serve them.
            for conn in take_pending(&listener) {
                server.admit(conn, tls.clone(), &listener_addr);
            }
            drop(listener);
            tracing::info!(listener = %listener_addr, "listener closed");
        })
    }

    /// Serves `conn` if a connection slot is free; otherwise closes it at once, counted, with a
    /// rate-limited warning.
    fn admit(&self, conn: Accepted, tls: Option<Arc<ReloadingConfig>>, listener: &BoundAddr) {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => self.spawn_connection(conn, tls, slot),
            Err(_) => {
                drop(conn);
                self.metrics
                    .connections_refused(RefusedBy::MaxConnections)
                    .inc();
                if let Some(suppressed) = self.refusals.permit() {
                    tracing::warn!(
                        listener = %listener,
                        open_connections = self.lifecycle.open_connections(),
                        suppressed,
                        "max_connections reached: connection closed"
                    );
                }
            }
        }
    }

    fn spawn_connection(
        &self,
        conn: Accepted,
        tls: Option<Arc<ReloadingConfig>>,
        slot: OwnedSemaphorePermit,
    ) {
        let tracked = Tracked::new(&self.lifecycle, &self.metrics, slot);
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
        // The TLS handshake spends the same deadline as the HTTP/2 one after it.
        let due = tracked.accepted_at + self.handshake_timeout;
        match tokio::time::timeout_at(due, acceptor.accept(io)).await {
            Ok(Ok(stream)) => self.serve(stream, tracked).await,
            Ok(Err(err)) => tracing::info!(error = %err, "TLS handshake failed"),
            Err(_) => {
                self.metrics
                    .connections_timed_out(TimedOut::Handshake)
                    .inc();
                tracing::info!("TLS handshake timed out");
            }
        }
    }
}

/// An accepted connection, counted for the drain and in the metrics, and holding its slot
/// under `max_connections`, until dropped.
struct Tracked {
    _guard: ConnectionGuard,
    _slot: OwnedSemaphorePermit,
    open: prometheus_client::metrics::gauge::Gauge,
    accepted_at: Instant,
}

impl Tracked {
    fn new(lifecycle: &Lifecycle, metrics: &Metrics, slot: OwnedSemaphorePermit) -> Self {
        metrics.connections.open.inc();
        metrics.connections.accepted.inc();
        Self {
            _guard: lifecycle.track_connection(),
            _slot: slot,
            open: metrics.connections.open.clone(),
            accepted_at: Instant::now(),
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
            // Small unary messages: do not wait to coalesce. A socket that refuses it is
            // still served.
            let _ = stream.set_nodelay(true);
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
