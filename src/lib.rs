//! tyk-dispatcher: a gRPC plugin server (`coprocess.Dispatcher`) for Tyk Gateway.
//!
//! # Layout
//! - [`app`]: [`App::build`] binds every listener; [`App::run_until_stopped`] serves and drains.
//! - [`config`]: the configuration tree, its sources (file, env, flags, the gateway's own
//!   variables) and validation.
//! - [`dispatcher`]: the `Dispatch`/`DispatchEvent` handlers.
//! - [`bounds`]: request-derived strings cut for logs and spans; rate-limited warnings.
//! - [`hooks`]: declarative hook pipelines, built-in steps and the step API.
//! - [`codec`] and [`wire`]: messages as wire bytes; shallow scans and byte-preserving edits.
//! - [`object_log`]: the Object as canonical JSON with secrets redacted.
//! - [`event_log`]: event payloads as JSON with the key redacted and the request dump hashed.
//! - [`hex`]: lower-case hex, the one encoder.
//! - [`limits`]: message size and in-flight byte budgets.
//! - [`charge`]: a call's message charged to the budget from its prefix, before its body.
//! - [`response`]: finishing gRPC responses (size errors, budget held until sent).
//! - [`server`]: gRPC routes (Dispatcher, health, reflection) and HTTP/2 connection serving.
//! - [`stream_watch`]: one stream reset when its reply makes no send progress.
//! - [`listener`]: TCP, Unix-socket and TLS listeners.
//! - [`hygiene`]: handshake and first-call watches, `accept` back-off, the open-file limit.
//! - [`tls`]: rustls configuration with certificate reload.
//! - [`reload`]: hooks reloaded when the config file changes.
//! - [`watch`]: files read again when they change, for the config file, TLS and auth steps.
//! - [`admin`]: the side HTTP port: `/livez`, `/readyz`, `/metrics`.
//! - [`metrics`]: Prometheus metrics.
//! - [`lifecycle`]: readiness, connection tracking, drain and shutdown signals.
//! - [`malloc_tuning`]: glibc's malloc tuned at start so freed memory returns to the system.
//! - [`telemetry`]: log output.
//! - [`cli`]: command-line flags and `check-config`.
//! - [`pb`]: generated protocol types.

pub mod admin;
pub mod app;
pub mod bounds;
pub mod charge;
pub mod cli;
pub mod codec;
pub mod config;
pub mod dispatcher;
pub mod event_log;
#[doc(hidden)]
pub mod fuzzing;
pub mod hex;
pub mod hooks;
pub mod hygiene;
pub mod lifecycle;
pub mod limits;
pub mod listener;
pub mod malloc_tuning;
pub mod metrics;
pub mod object_log;
pub mod pb;
pub mod reload;
pub mod response;
pub mod server;
pub mod stream_watch;
pub mod telemetry;
pub mod tls;
pub mod watch;
pub mod wire;

pub use app::{App, AppBuilder};
pub use config::Config;
