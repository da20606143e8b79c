//! tyk-dispatcher: a gRPC plugin server (`coprocess.Dispatcher`) for Tyk Gateway.
//!
//! Most users run the binary. This library is for those who embed the server or add their own
//! plugin steps in Rust; its API is:
//!
//! - [`cli::main`]: the whole command line (flags, `check-config`, the offline `test` and `eval`
//!   of hook pipelines, logs, signals), with a hook to register custom steps on the
//!   [`AppBuilder`];
//! - [`App`] / [`AppBuilder`]: [`AppBuilder::build`] validates and binds every listener;
//!   [`App::run_until_stopped`] serves and drains;
//! - [`config`]: the configuration tree and its sources (file, environment, flags, the gateway's
//!   own variables);
//! - [`hooks`]: hook declarations and the step API ([`hooks::Step`], [`hooks::StepKind`]);
//! - [`pb`]: the protocol's message types; [`codec`]: a gRPC codec that keeps messages as bytes,
//!   to call a Dispatcher byte for byte.
//!
//! Everything else is internal; `ARCHITECTURE.md` maps it.
//!
//! ```no_run
//! # async fn serve() -> Result<(), tyk_dispatcher::AppError> {
//! use tyk_dispatcher::{App, Config};
//!
//! let app = App::build(Config::for_loopback()).await?;
//! let stop = tokio_util::sync::CancellationToken::new();
//! app.run_until_stopped(stop).await
//! # }
//! ```

// The product's API: the app builder, its configuration, the command line, the protocol types
// and the raw codec (to call a Dispatcher byte for byte), and the hook and step API.
pub mod app;
pub mod cli;
pub mod codec;
pub mod config;
pub mod hooks;
pub mod pb;

#[doc(hidden)]
pub mod fuzzing;

pub(crate) mod admin;
pub(crate) mod bounds;
pub(crate) mod call;
pub(crate) mod charge;
pub(crate) mod dispatcher;
pub(crate) mod event_log;
pub(crate) mod hex;
pub(crate) mod hygiene;
pub(crate) mod lifecycle;
pub(crate) mod limits;
pub(crate) mod listener;
pub(crate) mod malloc_tuning;
pub(crate) mod metrics;
pub(crate) mod object_log;
pub(crate) mod offline;
pub(crate) mod reload;
pub(crate) mod response;
pub(crate) mod server;
pub(crate) mod stream_watch;
pub(crate) mod telemetry;
pub(crate) mod tls;
pub(crate) mod trim;
pub(crate) mod watch;
pub(crate) mod wire;
pub(crate) mod write_batch;

pub use app::{App, AppBuilder, AppError};
pub use config::Config;
pub use lifecycle::Lifecycle;
pub use listener::BoundAddr;
/// The glibc malloc settings the binary starts with (for its test).
#[doc(hidden)]
pub use malloc_tuning::TUNABLES;
/// The `tracing` layer that exports a custom step's own spans as children of its step span; the
/// binary installs it, an embedder with a subscriber of its own adds it there.
pub use telemetry::StepSpans;
