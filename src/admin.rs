//! The admin HTTP port, apart from gRPC:
//! - `GET /livez`: 200 while the process runs;
//! - `GET /readyz`: 200 once every listener serves, 503 while starting or draining;
//! - `GET /metrics`: Prometheus metrics, OpenMetrics text;
//! - `GET /hooks`: the hooks in force and the unknown-hook policy, as JSON.
//!
//! Served with hyper's HTTP/1 server directly rather than `axum::serve`, for what a probe port
//! needs under abuse: a client must send its request headers within a deadline (which also
//! bounds an idle keep-alive connection), at most `admin_max_connections` are open, and failed
//! `accept`s back off instead of spinning.

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use std::{sync::Arc, time::Duration};

use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

use crate::{
    bounds::WarnLimit,
    hooks::Hooks,
    hygiene::AcceptBackoff,
    lifecycle::Lifecycle,
    metrics::{Metrics, RefusedBy},
};

/// How long open admin connections get to finish once the server stops.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Bounds of the admin port.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Time a client has to send a request's headers, from connect or from the previous
    /// response.
    pub header_read_timeout: Duration,
    /// Open connections at most; more are accepted and closed at once.
    pub max_connections: usize,
}

/// What the admin handlers read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Readiness.
    pub lifecycle: Lifecycle,
    /// Metrics to expose.
    pub metrics: Metrics,
    /// The hooks in force.
    pub hooks: Hooks,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/hooks", get(hooks))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.lifecycle.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn hooks(State(state): State<AdminState>) -> impl IntoResponse {
    let table = state.hooks.current();
    let body = serde_json::json!({
        "unknown_hooks": table.unknown(),
        "hooks": table.configs(),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// Serves `router` on `listener` within `limits` until `stop` is cancelled, then gives open
/// connections a few seconds to finish.
///
/// # Errors
/// None so far: `accept` failures are retried. The signature leaves room for fatal ones.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: AdminLimits,
    metrics: Metrics,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refused = metrics.connections_refused(RefusedBy::AdminMaxConnections);
    let refusals = WarnLimit::default();
    let addr = listener
        .local_addr()
        .map_or_else(|_| "admin".to_string(), |addr| addr.to_string());
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(err) => {
                if let Some(pause) = backoff.failed(&addr, &err) {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            refused.inc();
            if let Some(suppressed) = refusals.permit() {
                tracing::warn!(
                    listener = %addr,
                    suppressed,
                    "admin_max_connections reached: connection closed"
                );
            }
            continue;
        };
        let conn = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "admin connection ended with an error");
                    }
                }
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(STOP_GRACE, conn).await;
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    // Every slot back: every connection closed (or given up on after its grace).
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ =
        tokio::time::timeout(STOP_GRACE + Duration::from_secs(1), slots.acquire_many(all)).await;
    Ok(())
}
