//! [`App::build`] binds every listener (so port 0 works and bind errors surface before any
//! serving); [`App::run_until_stopped`] serves until told to stop, then drains in order.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    admin,
    call::Refusals,
    charge::Charger,
    config::Sources,
    config::{Config, EXIT_BIND, EXIT_CONFIG, ListenAddr, Listeners, Problem, Problems, Settled},
    dispatcher::{Dispatcher, LogSettings},
    hooks::{HookTable, Hooks, StepKind, StepRegistry},
    lifecycle::Lifecycle,
    limits::{InFlightBudget, ReplyPolicy},
    listener::{self, BindError, BindOptions, BoundAddr, Listener},
    metrics::{Metrics, MetricsSettings},
    pb,
    response::FinishedRoutes,
    server::{self, ConnectionServer, ConnectionSettings},
    telemetry::Traces,
    tls::{ReloadingConfig, TlsFiles},
};

/// Why the server could not start (or stopped on its own).
///
/// Messages carry their cause in full and no variant reports it again as `source()`, so
/// printing the chain cannot repeat it.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration is invalid: values, hooks, TLS files, trace export settings.
    #[error(transparent)]
    Config(#[from] Problems),
    /// A listener could not be bound; the ones bound before it are closed again.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The reflection descriptors are broken (a build defect).
    #[error("reflection: {0}")]
    Reflection(tonic_reflection::server::Error),
    /// The admin server failed.
    #[error("admin server: {0}")]
    Admin(std::io::Error),
}

impl AppError {
    /// The process exit code for this error: [`EXIT_CONFIG`] for configuration, [`EXIT_BIND`]
    /// for a listener, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => EXIT_CONFIG,
            Self::Bind(_) => EXIT_BIND,
            Self::Reflection(_) | Self::Admin(_) => 1,
        }
    }
}

/// What a configuration builds into before anything binds, with every problem found on the way.
struct Prepared {
    problems: Vec<Problem>,
    settled: Option<Settled>,
    hooks: Option<HookTable>,
    tls: Option<Arc<ReloadingConfig>>,
}

/// The TLS files the listeners would use, when there are TLS listeners.
fn tls_files(config: &Config) -> Option<TlsFiles> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) if !config.tls_listen.is_empty() => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: config.tls_client_ca.clone(),
        }),
        _ => None,
    }
}

/// Validates `config`, builds its hooks, loads its TLS files and checks its trace export: all
/// that can refuse a start short of binding, so `check-config` and the server agree.
fn prepare(config: &Config, registry: &StepRegistry) -> Prepared {
    let (settled, mut problems) = match config.settle() {
        Ok(settled) => (Some(settled), Vec::new()),
        Err(Problems(problems)) => (None, problems),
    };
    // A setting already reported (say, a file that does not exist) is not tried again: the
    // second message would repeat the first.
    let reported = |problems: &[Problem], keys: &[&str]| {
        problems.iter().any(|p| keys.contains(&p.key.as_str()))
    };
    let hooks = HookTable::build(&config.hooks, config.unknown_hooks, registry)
        .map_err(|found| problems.extend(found))
        .ok();
    let mut tls = None;
    if !reported(
        &problems,
        &["tls_cert", "tls_key", "tls_client_ca", "tls_listen"],
    ) && let Some(files) = tls_files(config)
    {
        match ReloadingConfig::load(files.clone()) {
            Ok(loaded) => tls = Some(loaded),
            Err(err) => problems.push(files.problem(&err)),
        }
    }
    if !reported(
        &problems,
        &["otlp_endpoint", "otlp_headers", "otlp_protocol"],
    ) && let Err(err) = Traces::check(config)
    {
        problems.push(err.problem());
    }
    Prepared {
        problems,
        settled,
        hooks,
        tls,
    }
}

/// The metrics as `config` sets them up.
fn metrics(config: &Config) -> Metrics {
    Metrics::new(MetricsSettings {
        duration_buckets: config.metrics_duration_buckets.clone(),
        label_cap: config.metrics_label_cap,
        api_label: config.metrics_api_label,
    })
}

/// A server with every listener bound, ready to run.
#[derive(Debug)]
pub struct App {
    config: Config,
    hooks: Hooks,
    reload: Option<Sources>,
    grpc: Vec<GrpcListener>,
    admin: Vec<TcpListener>,
    tls: Option<Arc<ReloadingConfig>>,
    connections: ConnectionServer,
    max_connections: usize,
    health: HealthReporter,
    lifecycle: Lifecycle,
    metrics: Metrics,
    traces: Traces,
}

/// Builds an [`App`]: custom step kinds, config reload.
#[derive(Debug)]
pub struct AppBuilder {
    config: Config,
    registry: StepRegistry,
    reload: Option<Sources>,
}

impl AppBuilder {
    /// Registers a custom step kind, usable in hooks as `kind = "<its name>"`.
    #[must_use]
    pub fn step(mut self, kind: StepKind) -> Self {
        self.registry.register(kind);
        self
    }

    /// Re-reads the configuration from `sources` when its file changes, putting new hooks in
    /// force (other settings need a restart).
    #[must_use]
    pub fn reload_from(mut self, sources: Sources) -> Self {
        self.reload = Some(sources);
        self
    }

    /// Checks everything that could refuse a start short of binding a port: every value, the
    /// hooks with this builder's steps, the TLS files (readable, and the key belongs to the
    /// certificate), trace export settings.
    ///
    /// # Errors
    /// Every problem found, keyed by setting.
    pub fn check(&self) -> Result<(), Problems> {
        let Prepared { problems, .. } = prepare(&self.config, &self.registry);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Problems(problems))
        }
    }

    /// The hooks of the config, built with this builder's steps, for offline runs (`test`,
    /// `eval`): the config is checked as [`AppBuilder::check`] does, so a case runs only on a
    /// config the server would start with; nothing is bound and no trace is exported.
    ///
    /// # Errors
    /// Every problem found, keyed by setting.
    pub(crate) fn offline_hooks(self) -> Result<Hooks, Problems> {
        let Prepared {
            problems, hooks, ..
        } = prepare(&self.config, &self.registry);
        match hooks {
            Some(table) if problems.is_empty() => Ok(Hooks::new(
                table,
                Arc::new(self.registry),
                metrics(&self.config),
            )),
            _ => Err(Problems(problems)),
        }
    }

    /// Validates the config, builds the hooks, loads TLS files and binds every listener (the
    /// admin port first); if one cannot be bound, those bound before it are closed again.
    ///
    /// # Errors
    /// [`AppError::Config`] with every problem of the config, hooks and TLS files, or
    /// [`AppError::Bind`] for an address that cannot be bound.
    pub async fn build(self) -> Result<App, AppError> {
        let Self {
            config,
            registry,
            reload,
        } = self;
        let Prepared {
            problems,
            hooks,
            tls,
            settled,
        } = prepare(&config, &registry);
        let (
            hooks,
            Settled {
                listeners,
                trace_sampler,
            },
        ) = match (hooks, settled) {
            (Some(table), Some(settled)) if problems.is_empty() => (table, settled),
            _ => return Err(Problems(problems).into()),
        };
        let metrics = metrics(&config);
        let hooks = Hooks::new(hooks, Arc::new(registry), metrics.clone());
        let traces = Traces::from_config(&config, trace_sampler, &metrics)
            .map_err(|err| Problems(vec![err.problem()]))?;
        let lifecycle = Lifecycle::default();
        let budget = InFlightBudget::new(config.in_flight_budget(), config.max_recv_bytes);
        let refusals = Refusals::new(metrics.clone());
        let dispatcher = Dispatcher::new(
            LogSettings {
                calls: config.log_calls,
                objects: config.log_objects,
            },
            budget.clone(),
            ReplyPolicy::new(config.max_reply_bytes, metrics.clone()).trimming(config.trim_replies),
            metrics.clone(),
            traces.clone(),
            hooks.clone(),
            refusals.clone(),
        );
        let (routes, health) = server::routes(dispatcher, config.max_recv_bytes, config.reflection)
            .map_err(AppError::Reflection)?;
        // Not serving until every listener is up.
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_service_status(pb::SERVICE_NAME, ServingStatus::NotServing)
            .await;

        let (admin, grpc) = bind_all(&config, listeners, tls.as_ref())?;
        let nofile = crate::hygiene::nofile_soft_limit();
        let (max_connections, lowered) = config.connection_cap(nofile);
        if lowered && config.max_connections.is_some() {
            tracing::warn!(
                max_connections = config.max_connections,
                open_file_limit = nofile,
                effective = max_connections,
                "max_connections lowered to fit the open-file limit, with room for the admin port"
            );
        }
        let charger = Charger::new(
            budget,
            config.max_recv_bytes,
            Duration::from_secs(config.request_progress_timeout_secs),
            &metrics,
            hooks.clone(),
            config.log_objects,
            refusals.clone(),
        );
        let connections = ConnectionServer::new(
            &ConnectionSettings::of(&config, max_connections),
            FinishedRoutes::new(routes, refusals),
            charger,
            lifecycle.clone(),
            metrics.clone(),
        );
        Ok(App {
            config,
            hooks,
            reload,
            grpc,
            admin,
            tls,
            connections,
            max_connections,
            health,
            lifecycle,
            metrics,
            traces,
        })
    }
}

impl App {
    /// An [`AppBuilder`] for `config`, to register custom steps or config reload.
    pub fn builder(config: Config) -> AppBuilder {
        // Before anything could build a TLS client or server: the JWKS and OTLP clients need it.
        crate::tls::crypto_provider();
        AppBuilder {
            config,
            registry: StepRegistry::builtin(),
            reload: None,
        }
    }

    /// Validates `config`, builds its hooks, loads TLS files and binds every listener.
    ///
    /// # Errors
    /// Invalid config or hooks, unusable TLS files, or an address that cannot be bound.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        Self::builder(config).build().await
    }

    /// Where the gRPC listeners are bound (plaintext first, then TLS).
    pub fn grpc_addrs(&self) -> Vec<BoundAddr> {
        self.grpc
            .iter()
            .map(|(listener, _)| listener.local_addr())
            .collect()
    }

    /// Where the (first) admin listener is bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .first()
            .and_then(|l| l.local_addr().ok())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The server's lifecycle state (readiness, open connections).
    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle.clone()
    }

    /// The server's metrics.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Serves until `stop` is cancelled, then drains: not ready at once; wait for clients to
    /// disconnect (at most `drain_delay_secs`); close listeners; GOAWAY; give in-flight calls
    /// `shutdown_grace_secs`.
    ///
    /// # Errors
    /// When the admin server fails.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> Result<(), AppError> {
        let Self {
            config,
            hooks,
            reload,
            grpc,
            admin,
            tls,
            connections,
            max_connections,
            health,
            lifecycle,
            metrics,
            traces,
        } = self;
        // Stops the admin port and the file watches, last of all.
        let background_stop = CancellationToken::new();
        let mut admin_tasks = serve_admin(
            &config,
            admin,
            &lifecycle,
            &metrics,
            &hooks,
            &background_stop,
        )?;
        if let Some(sources) = reload {
            let interval = Duration::from_secs(config.config_reload_interval_secs);
            tokio::spawn(crate::reload::watch(
                sources,
                hooks,
                metrics.clone(),
                interval,
                background_stop.clone(),
            ));
        }
        if let Some(tls) = &tls {
            tls.watch(
                Duration::from_secs(config.tls_reload_interval_secs),
                &background_stop,
            );
        }
        let accept_loops: Vec<_> = grpc
            .into_iter()
            .map(|(listener, tls)| {
                tracing::info!(
                    addr = %listener.local_addr(),
                    tls = tls.is_some(),
                    mtls = tls.is_some() && config.tls_client_ca.is_some(),
                    "gRPC listener"
                );
                connections.spawn_accept_loop(listener, tls)
            })
            .collect();
        set_health(&health, ServingStatus::Serving).await;
        lifecycle.set_ready(true);
        tracing::info!(
            max_recv_bytes = config.max_recv_bytes,
            max_reply_bytes = config.max_reply_bytes,
            reflection = config.reflection,
            traces = config.otlp_endpoint.as_deref().unwrap_or("off"),
            max_connections,
            admin_max_connections = config.admin_max_connections,
            "serving"
        );

        tokio::select! {
            () = stop.cancelled() => {}
            Some(result) = admin_tasks.join_next() => {
                if let Ok(Err(err)) = result {
                    return Err(AppError::Admin(err));
                }
            }
        }

        drain(&config, &lifecycle, &health, accept_loops).await;
        traces.shutdown(Duration::from_secs(5)).await;
        background_stop.cancel();
        while admin_tasks.join_next().await.is_some() {}
        tracing::info!("stopped");
        Ok(())
    }
}

/// Serves the admin port on each of `listeners` until `stop`.
fn serve_admin(
    config: &Config,
    listeners: Vec<TcpListener>,
    lifecycle: &Lifecycle,
    metrics: &Metrics,
    hooks: &Hooks,
    stop: &CancellationToken,
) -> Result<JoinSet<std::io::Result<()>>, AppError> {
    let router = admin::router(admin::AdminState {
        lifecycle: lifecycle.clone(),
        metrics: metrics.clone(),
        hooks: hooks.clone(),
    });
    let limits = admin::AdminLimits {
        header_read_timeout: Duration::from_secs(config.admin_header_read_timeout_secs),
        max_connections: config.admin_max_connections,
    };
    let mut tasks = JoinSet::new();
    for listener in listeners {
        tracing::info!(addr = %listener.local_addr().map_err(AppError::Admin)?, "admin interface");
        tasks.spawn(admin::serve(
            listener,
            router.clone(),
            limits,
            metrics.clone(),
            stop.clone(),
        ));
    }
    Ok(tasks)
}

/// The drain, in order: not ready at once; wait for clients to disconnect (at most
/// `drain_delay_secs`); close the listeners; GOAWAY; give in-flight calls
/// `shutdown_grace_secs`, then close what is left.
async fn drain(
    config: &Config,
    lifecycle: &Lifecycle,
    health: &HealthReporter,
    accept_loops: Vec<tokio::task::JoinHandle<()>>,
) {
    lifecycle.set_ready(false);
    set_health(health, ServingStatus::NotServing).await;
    tracing::info!(
        open_connections = lifecycle.open_connections(),
        max_drain_secs = config.drain_delay_secs,
        "draining"
    );
    tokio::select! {
        () = lifecycle.connections_closed() => tracing::info!("every client disconnected"),
        () = tokio::time::sleep(config.drain_delay()) => {
            tracing::info!(open_connections = lifecycle.open_connections(), "drain delay over");
        }
    }
    // Listeners close before any GOAWAY, so reconnecting clients cannot land in a dead accept
    // queue.
    lifecycle.close_listeners_token().cancel();
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
    lifecycle.goaway_token().cancel();
    if tokio::time::timeout(config.shutdown_grace(), lifecycle.connections_closed())
        .await
        .is_err()
    {
        tracing::warn!(
            open_connections = lifecycle.open_connections(),
            grace_secs = config.shutdown_grace_secs,
            "calls still in flight after the shutdown grace period: closing their connections"
        );
        lifecycle.abort_token().cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), lifecycle.connections_closed()).await;
    }
}

/// A bound gRPC listener, with the TLS configuration of its connections when it is a TLS one.
type GrpcListener = (Listener, Option<Arc<ReloadingConfig>>);

/// Binds the admin port first (when it is taken, no gRPC port or socket file was made), then
/// every gRPC listener, the TLS ones with `tls`. On a failure the listeners bound so far are
/// dropped on return, which closes them and removes the socket files they made.
fn bind_all(
    config: &Config,
    listeners: Listeners,
    tls: Option<&Arc<ReloadingConfig>>,
) -> Result<(Vec<TcpListener>, Vec<GrpcListener>), AppError> {
    let options = BindOptions {
        reuse_port: config.reuse_port,
        unix_mode: listeners.unix_mode,
    };
    let admin = bind_admin(&listeners.admin)?;
    let mut grpc = Vec::new();
    for addr in &listeners.plain {
        grpc.extend(
            listener::bind(addr, &options)?
                .into_iter()
                .map(|l| (l, None)),
        );
    }
    for addr in &listeners.tls {
        grpc.extend(
            listener::bind(addr, &options)?
                .into_iter()
                .map(|l| (l, tls.cloned())),
        );
    }
    Ok((admin, grpc))
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(pb::SERVICE_NAME, status).await;
}

fn bind_admin(addr: &ListenAddr) -> Result<Vec<TcpListener>, BindError> {
    listener::bind(addr, &BindOptions::default())?
        .into_iter()
        .map(|listener| match listener {
            Listener::Tcp(listener) => Ok(listener),
            Listener::Unix(..) => Err(BindError {
                addr: addr.to_string(),
                reason: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the admin port must be TCP",
                ),
            }),
        })
        .collect()
}
