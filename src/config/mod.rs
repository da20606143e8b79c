//! Configuration: one [`Config`] tree with every default, loaded from defaults < TOML file <
//! `TYK_DISPATCHER_*` env < command-line flags, completed by the gateway's own
//! `TYK_GW_COPROCESSOPTIONS_*` variables, and validated before anything binds.

mod address;
mod gateway;
pub mod otel;
pub mod sources;

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

pub use address::{AddressError, AddressList, Host, ListenAddr};

pub use gateway::GatewayOptions;
pub use sources::{CliOverrides, Loaded, Sources, load};

/// Exit code for configuration errors (sysexits' EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;
/// Exit code when a listener cannot be bound (sysexits' EX_OSERR: the system refused, e.g. the
/// port is taken).
pub const EXIT_BIND: u8 = 71;

/// Where the gRPC server listens when nothing else says.
pub const DEFAULT_LISTEN: &str = "[::]:50051";
/// Where the admin HTTP server listens by default.
pub const DEFAULT_ADMIN_LISTEN: &str = "[::]:9464";
/// The gateway's receive limit when it sets none (gRPC-Go's default).
pub const GATEWAY_DEFAULT_RECV_BYTES: usize = 4 * 1024 * 1024;
/// 64 MiB: the default receive limit; the gateway sends bodies of any size.
pub const DEFAULT_MAX_RECV_BYTES: usize = 64 * 1024 * 1024;
/// The in-flight budget when none is set: at least this, and at least four largest messages.
pub const MIN_DEFAULT_IN_FLIGHT_BYTES: usize = 256 * 1024 * 1024;
/// Dispatch duration buckets: pass-through calls take tens of microseconds, plugins more.
pub const DEFAULT_DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];
/// Samplers we accept, as `OTEL_TRACES_SAMPLER` names them.
pub const SAMPLERS: &[&str] = &[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];
/// Open gRPC connections allowed when `max_connections` is unset (the open-file limit may
/// lower it).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Open admin connections allowed by default: probes and scrapes, with room to spare.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 32;
/// File descriptors kept free of gRPC connections besides the admin connections: standard
/// streams, the runtime's epoll and wakers, listeners, trace export, config and certificate
/// reloads, a connection being refused.
pub const FD_RESERVE: u64 = 32;
/// gRPC frames carry a 32-bit length.
pub const MAX_MESSAGE_BYTES: usize = u32::MAX as usize;

/// OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration. Field names are the file keys; env names are
/// `TYK_DISPATCHER_` + the upper-cased key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Plaintext gRPC listeners. Unset: the gateway's `COPROCESSGRPCSERVER`, else `[::]:50051`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<AddressList>,
    /// TLS gRPC listeners.
    pub tls_listen: AddressList,
    /// PEM certificate chain for TLS listeners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS listeners.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle; when set, TLS clients must present a certificate it signed (mTLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// How often certificate files are checked for changes.
    pub tls_reload_interval_secs: u64,
    /// File mode of Unix sockets, octal digits.
    pub unix_socket_mode: String,
    /// SO_REUSEPORT on TCP listeners, so a new instance can bind before the old one leaves.
    pub reuse_port: bool,
    /// The admin HTTP listener (`/livez`, `/readyz`, `/metrics`).
    pub admin_listen: String,
    /// Largest request message accepted.
    pub max_recv_bytes: usize,
    /// Largest reply sent; unset: the gateway's `GRPCRECVMAXSIZE` if given, else no limit
    /// (replies over the gateway's 4 MiB default are warned about).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_reply_bytes: Option<usize>,
    /// Replies carry only what the gateway reads back (see `trim`): the one exception to
    /// byte-for-byte replies, off by default.
    pub trim_replies: bool,
    /// Longest drain after SIGTERM while clients are still connected.
    pub drain_delay_secs: u64,
    /// Time for in-flight calls to finish once the listeners are closed.
    pub shutdown_grace_secs: u64,
    /// Close client connections (GOAWAY) after this long, ±10%, so clients re-resolve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_age_secs: Option<u64>,
    /// After a connection's age GOAWAY, how long its in-flight calls may take.
    pub max_connection_age_grace_secs: u64,
    /// HTTP/2 PING interval; unset: no pings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_interval_secs: Option<u64>,
    /// How long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout_secs: u64,
    /// Concurrent calls per connection.
    pub max_concurrent_streams: u32,
    /// Time from accept until the TLS handshake (on TLS listeners), the HTTP/2 preface and the
    /// client's first SETTINGS frame have all arrived; past it the connection is closed.
    pub handshake_timeout_secs: u64,
    /// A connection that has made no call this long after accept is closed (GOAWAY). One that
    /// has made a call is never closed for idleness: the gateway keeps one connection for good.
    pub idle_timeout_secs: u64,
    /// Open gRPC connections; past it new ones are accepted and closed at once. Unset:
    /// [`DEFAULT_MAX_CONNECTIONS`]; either way held below the open-file limit (see
    /// [`Config::connection_cap`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Time an admin client has to send a request's headers (also bounds an idle keep-alive
    /// connection waiting for its next request).
    pub admin_header_read_timeout_secs: u64,
    /// Open admin connections; past it new ones are accepted and closed at once.
    pub admin_max_connections: usize,
    /// Bytes of requests held at once across all calls; over it, calls get RESOURCE_EXHAUSTED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight_bytes: Option<usize>,
    /// A request body (after its headers) that makes no progress this long is failed and its
    /// stream reset, returning its budget share: a client cannot hold a share by stalling.
    pub request_progress_timeout_secs: u64,
    /// Replies on a connection that make no send progress (no bytes taken by HTTP/2) this long
    /// close the connection, returning their shares. Progress, not total time: a 64 MiB reply
    /// to a busy gateway is never cut while it moves.
    pub reply_progress_timeout_secs: u64,
    /// Runtime worker threads; unset: the CPUs this process may use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
    /// Serve gRPC reflection.
    pub reflection: bool,
    /// One INFO line per call.
    pub log_calls: bool,
    /// Log each Object as JSON (secrets redacted, bodies summarised).
    pub log_objects: bool,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// The collector's traces endpoint; unset: no trace export. For `grpc`, e.g.
    /// `http://otel-collector:4317`; for `http/protobuf`, the full URL ending in `/v1/traces`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub otlp_protocol: OtlpProtocol,
    /// Extra headers for the collector, `name=value` pairs separated by commas (often a
    /// credential: never printed).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "sources::hide_secret"
    )]
    pub otlp_headers: Option<String>,
    /// Longest time one export may take.
    pub otlp_timeout_ms: u64,
    /// `service.name` of our spans.
    pub service_name: String,
    /// Extra resource attributes of our spans, `name=value` pairs separated by commas
    /// (`OTEL_RESOURCE_ATTRIBUTES`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_attributes: Option<String>,
    /// Sampler: `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
    /// `parentbased_always_off`, `parentbased_traceidratio`.
    pub trace_sampler: String,
    /// The ratio for the `*traceidratio` samplers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_sampler_arg: Option<f64>,
    /// Finished spans waiting for export; past it, spans are dropped and counted.
    pub span_queue_size: usize,
    /// Spans per export.
    pub span_batch_size: usize,
    /// Longest wait before a partial batch is exported.
    pub span_batch_delay_ms: u64,
    /// Buckets (seconds) of the Dispatch duration histogram.
    #[serde(deserialize_with = "sources::number_list")]
    pub metrics_duration_buckets: Vec<f64>,
    /// Distinct hook names (and API IDs) counted by name; the rest count as `other`.
    pub metrics_label_cap: usize,
    /// Add an `api_id` label to the Dispatch request counter.
    pub metrics_api_label: bool,
    /// What calls whose hook is not declared get: `pass` or `reject`.
    pub unknown_hooks: crate::hooks::UnknownHooks,
    /// How often the config file is checked for hook changes.
    pub config_reload_interval_secs: u64,
    /// Hook pipelines (see the `hooks` module).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<crate::hooks::HookConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: None,
            tls_listen: AddressList::default(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_reload_interval_secs: 10,
            unix_socket_mode: "0660".to_string(),
            reuse_port: false,
            admin_listen: DEFAULT_ADMIN_LISTEN.to_string(),
            max_recv_bytes: DEFAULT_MAX_RECV_BYTES,
            max_reply_bytes: None,
            trim_replies: false,
            drain_delay_secs: 45,
            shutdown_grace_secs: 30,
            max_connection_age_secs: None,
            max_connection_age_grace_secs: 30,
            keepalive_interval_secs: None,
            keepalive_timeout_secs: 20,
            max_concurrent_streams: 1024,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: None,
            admin_header_read_timeout_secs: 10,
            admin_max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            max_in_flight_bytes: None,
            request_progress_timeout_secs: 30,
            reply_progress_timeout_secs: 60,
            worker_threads: None,
            reflection: true,
            log_calls: true,
            log_objects: false,
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::Grpc,
            otlp_headers: None,
            otlp_timeout_ms: 10_000,
            service_name: env!("CARGO_PKG_NAME").to_string(),
            resource_attributes: None,
            trace_sampler: "parentbased_always_on".to_string(),
            trace_sampler_arg: None,
            span_queue_size: 2048,
            span_batch_size: 512,
            span_batch_delay_ms: 1000,
            metrics_duration_buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
            metrics_label_cap: 200,
            metrics_api_label: false,
            unknown_hooks: crate::hooks::UnknownHooks::Pass,
            config_reload_interval_secs: 5,
            hooks: Vec::new(),
        }
    }
}

/// One thing wrong with a configuration, naming the key and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct Problem {
    /// The key (or env variable) at fault.
    pub key: String,
    /// What is wrong with its value.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Which calls are traced: `trace_sampler` with `trace_sampler_arg`, as OpenTelemetry's
/// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` name them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TraceSampler {
    /// Every call.
    AlwaysOn,
    /// No call.
    AlwaysOff,
    /// This fraction of trace IDs, whatever the caller decided.
    Ratio(f64),
    /// The caller's decision when it made one; the inner sampler's for the others.
    ParentBased(RootSampler),
}

/// How a parent-based sampler decides for calls that carry no decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampler {
    /// Every such call.
    AlwaysOn,
    /// No such call.
    AlwaysOff,
    /// This fraction of their trace IDs.
    Ratio(f64),
}

/// A setting's value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not octal permission bits.
    #[error("{0:?} is not a file mode (octal digits such as 0660)")]
    FileMode(String),
    /// A `name=value` list entry without its `=`; only its first characters are named, as the
    /// value may be a credential.
    #[error("an entry without name=value (entry starting {0:?})")]
    HeaderEntry(String),
}

/// The sections [`Config::settle`] parsed while checking them.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    /// Where to listen.
    pub listeners: Listeners,
    /// Which calls are traced.
    pub trace_sampler: TraceSampler,
}

/// The listen settings, parsed and checked ([`Config::listeners`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listeners {
    /// Plaintext gRPC listeners.
    pub plain: Vec<ListenAddr>,
    /// TLS gRPC listeners.
    pub tls: Vec<ListenAddr>,
    /// The admin port.
    pub admin: ListenAddr,
    /// Permission bits of the Unix sockets made.
    pub unix_mode: u32,
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct Problems(pub Vec<Problem>);

impl Config {
    /// A configuration for tests and tools: every gRPC and admin listener on `127.0.0.1:0`.
    pub fn for_loopback() -> Self {
        Self {
            listen: Some(AddressList::of(&["127.0.0.1:0"])),
            admin_listen: "127.0.0.1:0".to_string(),
            ..Self::default()
        }
    }

    /// The plaintext listen addresses in effect.
    ///
    /// # Errors
    /// An entry that does not parse.
    pub fn listen_addrs(&self) -> Result<Vec<ListenAddr>, AddressError> {
        match &self.listen {
            Some(list) => list.parse(),
            None => Ok(vec![ListenAddr::parse(DEFAULT_LISTEN)?]),
        }
    }

    /// The Unix socket mode as permission bits.
    ///
    /// # Errors
    /// When the value is not octal digits up to 0777.
    pub fn unix_socket_mode_bits(&self) -> Result<u32, ValueError> {
        let digits = self.unix_socket_mode.trim();
        let digits = digits.strip_prefix("0o").unwrap_or(digits);
        match u32::from_str_radix(digits, 8) {
            Ok(mode) if mode <= 0o777 && !digits.is_empty() => Ok(mode),
            _ => Err(ValueError::FileMode(self.unix_socket_mode.clone())),
        }
    }

    /// The in-flight byte budget in effect.
    pub fn in_flight_budget(&self) -> usize {
        self.max_in_flight_bytes.unwrap_or_else(|| {
            MIN_DEFAULT_IN_FLIGHT_BYTES.max(self.max_recv_bytes.saturating_mul(4))
        })
    }

    /// The gRPC connection cap in force under an open-file limit of `nofile` (the soft
    /// RLIMIT_NOFILE): `max_connections` (or [`DEFAULT_MAX_CONNECTIONS`]), lowered so that the
    /// admin connections and [`FD_RESERVE`] still fit, at least 1. Returns the cap and whether
    /// the limit lowered it.
    pub fn connection_cap(&self, nofile: u64) -> (usize, bool) {
        let wanted = self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let reserve = FD_RESERVE.saturating_add(self.admin_max_connections as u64);
        let room = usize::try_from(nofile.saturating_sub(reserve))
            .unwrap_or(usize::MAX)
            .max(1);
        (wanted.min(room), room < wanted)
    }

    /// `shutdown_grace_secs` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// `drain_delay_secs` as a duration.
    pub fn drain_delay(&self) -> Duration {
        Duration::from_secs(self.drain_delay_secs)
    }

    /// Checks every value; returns all problems at once.
    ///
    /// # Errors
    /// [`Problems`] listing each key and value at fault.
    pub fn validate(&self) -> Result<(), Problems> {
        self.settle().map(drop)
    }

    /// Checks every value and gives the sections that are parsed on the way, so what uses them
    /// never parses them again; returns all problems at once.
    ///
    /// # Errors
    /// [`Problems`] listing each key and value at fault.
    pub fn settle(&self) -> Result<Settled, Problems> {
        let mut problems = Vec::new();
        let listeners = self
            .listeners()
            .map_err(|found| problems.extend(found))
            .ok();
        let mut push = |key: &str, message: String| problems.push(Problem::new(key, message));
        self.validate_limits(&mut push);
        let trace_sampler = self
            .trace_sampler()
            .map_err(|found| problems.extend(found))
            .ok();
        let mut push = |key: &str, message: String| problems.push(Problem::new(key, message));
        self.validate_telemetry(&mut push);
        self.validate_intervals(&mut push);
        match (listeners, trace_sampler) {
            (Some(listeners), Some(trace_sampler)) if problems.is_empty() => Ok(Settled {
                listeners,
                trace_sampler,
            }),
            _ => Err(Problems(problems)),
        }
    }

    /// Where to listen, parsed: what binding uses, so nothing is parsed twice or assumed valid.
    ///
    /// # Errors
    /// Every problem of the listen settings (addresses, none twice, TLS files, the admin
    /// address, the socket mode), in that order.
    pub fn listeners(&self) -> Result<Listeners, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut push = |key: &str, message: String| problems.push(Problem::new(key, message));
        let plain = self
            .listen_addrs()
            .inspect_err(|err| push("listen", err.to_string()))
            .unwrap_or_default();
        if matches!(&self.listen, Some(list) if list.is_empty()) && self.tls_listen.is_empty() {
            push(
                "listen",
                "empty, and no tls_listen either: nothing to serve on".into(),
            );
        }
        let tls = self
            .tls_listen
            .parse()
            .inspect_err(|err| push("tls_listen", err.to_string()))
            .unwrap_or_default();
        let seen: Vec<&ListenAddr> = plain.iter().chain(&tls).collect();
        for (i, addr) in seen.iter().enumerate() {
            let port_zero = matches!(addr, ListenAddr::Tcp { port: 0, .. });
            if !port_zero && seen[..i].contains(addr) {
                push("listen", format!("{addr} is listed twice"));
            }
        }
        self.validate_tls(&mut push);
        let admin = self
            .admin_addr()
            .inspect_err(|err| push("admin_listen", err.to_string()))
            .ok();
        let unix_mode = self
            .unix_socket_mode_bits()
            .inspect_err(|err| push("unix_socket_mode", err.to_string()))
            .ok();
        match (admin, unix_mode) {
            (Some(admin), Some(unix_mode)) if problems.is_empty() => Ok(Listeners {
                plain,
                tls,
                admin,
                unix_mode,
            }),
            _ => Err(problems),
        }
    }

    /// Message sizes, the in-flight budget, streams, timeouts, connection caps, threads.
    fn validate_limits(&self, push: &mut impl FnMut(&str, String)) {
        if self.max_recv_bytes == 0 || self.max_recv_bytes > MAX_MESSAGE_BYTES {
            push(
                "max_recv_bytes",
                format!(
                    "{} is out of range (1 to {MAX_MESSAGE_BYTES})",
                    self.max_recv_bytes
                ),
            );
        }
        if let Some(limit) = self.max_reply_bytes
            && (limit == 0 || limit > MAX_MESSAGE_BYTES)
        {
            push(
                "max_reply_bytes",
                format!("{limit} is out of range (1 to {MAX_MESSAGE_BYTES})"),
            );
        }
        if let Some(budget) = self.max_in_flight_bytes
            && budget < self.max_recv_bytes
        {
            push(
                "max_in_flight_bytes",
                format!(
                    "{budget} is below max_recv_bytes ({}): a message of the allowed size could never be served",
                    self.max_recv_bytes
                ),
            );
        }
        if self.max_concurrent_streams == 0 {
            push("max_concurrent_streams", "0 would refuse every call".into());
        }
        for (key, secs) in [
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            (
                "request_progress_timeout_secs",
                self.request_progress_timeout_secs,
            ),
            (
                "reply_progress_timeout_secs",
                self.reply_progress_timeout_secs,
            ),
            (
                "admin_header_read_timeout_secs",
                self.admin_header_read_timeout_secs,
            ),
        ] {
            if secs == 0 {
                push(key, "0 would close every connection at once".into());
            }
        }
        if self.max_connections == Some(0) {
            push("max_connections", "0 would refuse every connection".into());
        }
        if self.admin_max_connections == 0 {
            push(
                "admin_max_connections",
                "0 would refuse every probe and scrape".into(),
            );
        }
        if self.max_connection_age_secs == Some(0) {
            push(
                "max_connection_age_secs",
                "0 would close every connection at once; leave it unset to turn it off".into(),
            );
        }
        if matches!(self.worker_threads, Some(n) if n == 0 || n > 1024) {
            push(
                "worker_threads",
                format!(
                    "{} is out of range (1 to 1024)",
                    self.worker_threads.unwrap_or(0)
                ),
            );
        }
        if self.keepalive_interval_secs == Some(0) {
            push(
                "keepalive_interval_secs",
                "0 is not an interval; leave it unset to send no pings".into(),
            );
        }
    }

    /// The sampler `trace_sampler` and `trace_sampler_arg` name, parsed.
    ///
    /// # Errors
    /// An unknown sampler, or a ratio outside 0 to 1.
    pub fn trace_sampler(&self) -> Result<TraceSampler, Vec<Problem>> {
        let mut problems = Vec::new();
        let ratio = self.trace_sampler_arg.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&ratio) {
            problems.push(Problem::new(
                "trace_sampler_arg",
                format!("{ratio} is not a ratio from 0 to 1"),
            ));
        }
        let sampler = match self.trace_sampler.as_str() {
            "always_on" => Some(TraceSampler::AlwaysOn),
            "always_off" => Some(TraceSampler::AlwaysOff),
            "traceidratio" => Some(TraceSampler::Ratio(ratio)),
            "parentbased_always_on" => Some(TraceSampler::ParentBased(RootSampler::AlwaysOn)),
            "parentbased_always_off" => Some(TraceSampler::ParentBased(RootSampler::AlwaysOff)),
            "parentbased_traceidratio" => {
                Some(TraceSampler::ParentBased(RootSampler::Ratio(ratio)))
            }
            _ => {
                problems.insert(
                    0,
                    Problem::new(
                        "trace_sampler",
                        format!(
                            "{:?} is not a sampler (one of {})",
                            self.trace_sampler,
                            SAMPLERS.join(", ")
                        ),
                    ),
                );
                None
            }
        };
        match sampler {
            Some(sampler) if problems.is_empty() => Ok(sampler),
            _ => Err(problems),
        }
    }

    /// OTLP export and metric buckets (the sampler is [`Config::trace_sampler`]).
    fn validate_telemetry(&self, push: &mut impl FnMut(&str, String)) {
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            push(
                "otlp_endpoint",
                format!("{endpoint:?} must start with http:// or https://"),
            );
        }
        if let Some(headers) = &self.otlp_headers
            && let Err(err) = parse_headers(headers)
        {
            push("otlp_headers", err.to_string());
        }
        if self.span_queue_size == 0
            || self.span_batch_size == 0
            || self.span_batch_size > self.span_queue_size
        {
            push(
                "span_batch_size",
                format!(
                    "{} must be at least 1 and at most span_queue_size ({})",
                    self.span_batch_size, self.span_queue_size
                ),
            );
        }
        let buckets = &self.metrics_duration_buckets;
        if buckets.is_empty()
            || buckets.windows(2).any(|w| w[0] >= w[1])
            || buckets.iter().any(|b| !b.is_finite() || *b <= 0.0)
        {
            push(
                "metrics_duration_buckets",
                format!("{buckets:?} must be positive, finite and strictly increasing"),
            );
        }
    }

    /// Reload intervals.
    fn validate_intervals(&self, push: &mut impl FnMut(&str, String)) {
        if self.config_reload_interval_secs == 0 {
            push("config_reload_interval_secs", "0 is not an interval".into());
        }
        if self.tls_reload_interval_secs == 0 {
            push("tls_reload_interval_secs", "0 is not an interval".into());
        }
    }

    fn validate_tls(&self, push: &mut impl FnMut(&str, String)) {
        let serving_tls = !self.tls_listen.is_empty();
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => push("tls_key", "missing: tls_cert is set without it".into()),
            (None, Some(_)) => push("tls_cert", "missing: tls_key is set without it".into()),
            (None, None) if serving_tls => push(
                "tls_listen",
                "TLS listeners need tls_cert and tls_key".into(),
            ),
            _ => {}
        }
        if !serving_tls && (self.tls_cert.is_some() || self.tls_client_ca.is_some()) {
            push(
                "tls_listen",
                "empty, but TLS certificates are configured: add a tls_listen address or remove them".into(),
            );
        }
        for (key, path) in [
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
            ("tls_client_ca", &self.tls_client_ca),
        ] {
            if let Some(path) = path
                && let Err(err) = std::fs::metadata(path)
            {
                push(key, format!("cannot read {}: {err}", path.display()));
            }
        }
    }

    /// Whether spans are exported.
    pub fn tracing_enabled(&self) -> bool {
        self.otlp_endpoint.is_some()
    }

    /// The admin listen address.
    ///
    /// # Errors
    /// When it does not parse or is a Unix socket.
    pub fn admin_addr(&self) -> Result<ListenAddr, AddressError> {
        match ListenAddr::parse(&self.admin_listen)? {
            ListenAddr::Unix(_) => Err(AddressError::Scheme(self.admin_listen.clone())),
            addr => Ok(addr),
        }
    }
}

/// Parses `name=value,name2=value2` (the `OTEL_EXPORTER_OTLP_HEADERS` form).
///
/// # Errors
/// The malformed entry, named without its value.
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, ValueError> {
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| match entry.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() => Ok((
                name.trim().to_ascii_lowercase(),
                percent_encoding::percent_decode_str(value.trim())
                    .decode_utf8_lossy()
                    .into_owned(),
            )),
            // The value may be a credential: name only what is safe.
            _ => Err(ValueError::HeaderEntry(entry.chars().take(3).collect())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampler_is_parsed_once_with_its_ratio() {
        let config = Config {
            trace_sampler: "parentbased_traceidratio".into(),
            trace_sampler_arg: Some(0.25),
            ..Config::default()
        };
        assert_eq!(
            config.trace_sampler(),
            Ok(TraceSampler::ParentBased(RootSampler::Ratio(0.25)))
        );
        assert_eq!(
            config.settle().unwrap().trace_sampler,
            TraceSampler::ParentBased(RootSampler::Ratio(0.25))
        );
        let unknown = Config {
            trace_sampler: "sometimes".into(),
            trace_sampler_arg: Some(2.0),
            ..Config::default()
        };
        let keys: Vec<String> = unknown
            .trace_sampler()
            .unwrap_err()
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(keys, ["trace_sampler", "trace_sampler_arg"]);
    }

    #[test]
    fn defaults_are_valid_and_as_documented() {
        let config = Config::default();
        config.validate().expect("defaults are valid");
        assert_eq!(
            config.listen_addrs().unwrap(),
            vec![ListenAddr::parse("[::]:50051").unwrap()]
        );
        assert_eq!(config.max_recv_bytes, 67_108_864);
        assert_eq!(config.unix_socket_mode_bits(), Ok(0o660));
        assert_eq!(config.in_flight_budget(), 268_435_456);
        assert!(config.log_calls && !config.log_objects && config.reflection);
    }

    #[test]
    fn every_problem_is_reported_with_key_and_value() {
        let config = Config {
            listen: Some(AddressList::of(&[
                "nowhere:1",
                "127.0.0.1:7",
                "127.0.0.1:7",
            ])),
            unix_socket_mode: "0999".into(),
            max_recv_bytes: 0,
            tls_listen: AddressList::of(&["127.0.0.1:0"]),
            tls_cert: Some("/nonexistent/cert.pem".into()),
            worker_threads: Some(0),
            ..Config::default()
        };
        let Problems(problems) = config.validate().unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        assert!(
            all.contains("listen: \"nowhere:1\": the host must be an IP literal or localhost"),
            "{all}"
        );
        assert!(
            all.contains("unix_socket_mode: \"0999\" is not a file mode"),
            "{all}"
        );
        assert!(all.contains("max_recv_bytes: 0 is out of range"), "{all}");
        assert!(all.contains("tls_key: missing"), "{all}");
        assert!(
            all.contains("tls_cert: cannot read /nonexistent/cert.pem"),
            "{all}"
        );
        assert!(all.contains("worker_threads: 0 is out of range"), "{all}");
    }

    #[test]
    fn duplicate_listeners_are_refused() {
        let config = Config {
            listen: Some(AddressList::of(&["127.0.0.1:7", "tcp://127.0.0.1:7"])),
            ..Config::default()
        };
        let Problems(problems) = config.validate().unwrap_err();
        assert_eq!(
            problems[0].to_string(),
            "listen: 127.0.0.1:7 is listed twice"
        );
    }

    #[test]
    fn in_flight_budget_grows_with_the_receive_limit() {
        let config = Config {
            max_recv_bytes: 100 * 1024 * 1024,
            ..Config::default()
        };
        assert_eq!(config.in_flight_budget(), 400 * 1024 * 1024);
        let explicit = Config {
            max_in_flight_bytes: Some(1),
            ..Config::default()
        };
        assert!(
            explicit
                .validate()
                .unwrap_err()
                .to_string()
                .contains("max_in_flight_bytes: 1 is below")
        );
    }

    #[test]
    fn the_connection_cap_leaves_room_for_the_admin_port_under_the_fd_limit() {
        let config = Config::default();
        // 32 kept free, 32 admin connections.
        assert_eq!(config.connection_cap(1_048_576), (10_000, false));
        assert_eq!(config.connection_cap(1024), (960, true));
        assert_eq!(config.connection_cap(10_064), (10_000, false));
        assert_eq!(config.connection_cap(10_063), (9_999, true));
        assert_eq!(config.connection_cap(16), (1, true), "never below one");
        let explicit = Config {
            max_connections: Some(50),
            admin_max_connections: 4,
            ..Config::default()
        };
        assert_eq!(explicit.connection_cap(1024), (50, false));
        assert_eq!(explicit.connection_cap(80), (44, true));
    }

    #[test]
    fn zero_timeouts_and_caps_are_refused() {
        let config = Config {
            handshake_timeout_secs: 0,
            idle_timeout_secs: 0,
            admin_header_read_timeout_secs: 0,
            max_connections: Some(0),
            admin_max_connections: 0,
            ..Config::default()
        };
        let Problems(problems) = config.validate().unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "handshake_timeout_secs",
                "idle_timeout_secs",
                "admin_header_read_timeout_secs",
                "max_connections",
                "admin_max_connections"
            ]
        );
    }
}
