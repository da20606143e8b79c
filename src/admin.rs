//! The admin HTTP port, apart from gRPC:
//! - `GET /livez`: 200 while the process runs;
//! - `GET /readyz`: 200 once every listener serves, 503 while starting or draining;
//! - `GET /metrics`: Prometheus metrics, OpenMetrics text;
//! - `GET /hooks`: the hooks in force and the unknown-hook policy, as JSON.

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{hooks::Hooks, lifecycle::Lifecycle, metrics::Metrics};

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

/// Serves `router` on `listener` until `stop` is cancelled.
///
/// # Errors
/// When serving fails.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}
