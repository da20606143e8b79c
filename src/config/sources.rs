//! Where configuration comes from, in rising precedence: defaults, a TOML file, `TYK_DISPATCHER_*`
//! variables, command-line flags; then the gateway's `TYK_GW_COPROCESSOPTIONS_*` variables fill
//! what is still open.

use std::path::PathBuf;

use figment::{
    Figment, Metadata, Profile, Provider,
    providers::{Format, Serialized, Toml},
    value::{Dict, Map, Value},
};
use serde::Serialize;

use super::{Config, GatewayOptions, Problem, Problems};

/// Prefix of our environment variables.
pub const ENV_PREFIX: &str = "TYK_DISPATCHER_";
/// The variable naming the config file.
pub const ENV_CONFIG: &str = "TYK_DISPATCHER_CONFIG";

/// Every file key, which is also every env suffix we accept.
pub const KEYS: &[&str] = &[
    "listen",
    "tls_listen",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "tls_reload_interval_secs",
    "unix_socket_mode",
    "reuse_port",
    "admin_listen",
    "max_recv_bytes",
    "max_reply_bytes",
    "drain_delay_secs",
    "shutdown_grace_secs",
    "max_connection_age_secs",
    "max_connection_age_grace_secs",
    "keepalive_interval_secs",
    "keepalive_timeout_secs",
    "max_concurrent_streams",
    "handshake_timeout_secs",
    "idle_timeout_secs",
    "max_connections",
    "admin_header_read_timeout_secs",
    "admin_max_connections",
    "max_in_flight_bytes",
    "request_progress_timeout_secs",
    "reply_progress_timeout_secs",
    "worker_threads",
    "reflection",
    "trim_replies",
    "log_calls",
    "log_objects",
    "log_format",
    "otlp_endpoint",
    "otlp_protocol",
    "otlp_headers",
    "otlp_timeout_ms",
    "service_name",
    "resource_attributes",
    "trace_sampler",
    "trace_sampler_arg",
    "span_queue_size",
    "span_batch_size",
    "span_batch_delay_ms",
    "metrics_duration_buckets",
    "metrics_label_cap",
    "metrics_api_label",
    "unknown_hooks",
    "config_reload_interval_secs",
    "hooks",
];

/// Settings given as command-line flags; each wins over every other source.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct CliOverrides {
    /// Plaintext gRPC listeners, comma-separated (host:port, tcp://host:port, unix:///path).
    #[arg(long, global = true, value_name = "ADDRS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// TLS gRPC listeners, comma-separated.
    #[arg(long, global = true, value_name = "ADDRS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<String>,
    /// PEM certificate chain for TLS listeners.
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS listeners.
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle that client certificates must chain to (turns on mTLS).
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// File mode of Unix sockets (octal).
    #[arg(long, global = true, value_name = "MODE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_socket_mode: Option<String>,
    /// Set SO_REUSEPORT on TCP listeners.
    #[arg(long, global = true, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reuse_port: Option<bool>,
    /// Admin HTTP listener (host:port).
    #[arg(long, global = true, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    /// Largest request message accepted, in bytes.
    #[arg(long, global = true, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_recv_bytes: Option<usize>,
    /// Largest reply sent, in bytes.
    #[arg(long, global = true, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_reply_bytes: Option<usize>,
    /// Longest drain after SIGTERM while clients stay connected.
    #[arg(long, global = true, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_delay_secs: Option<u64>,
    /// Time for in-flight calls once listeners are closed.
    #[arg(long, global = true, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_secs: Option<u64>,
    /// Close client connections after this age (±10%).
    #[arg(long, global = true, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_age_secs: Option<u64>,
    /// Concurrent calls per connection.
    #[arg(long, global = true, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
    /// Time from accept to a finished TLS and HTTP/2 handshake.
    #[arg(long, global = true, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout_secs: Option<u64>,
    /// Close connections that made no call for this long after accept.
    #[arg(long, global = true, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// Open gRPC connections at most.
    #[arg(long, global = true, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Time an admin client has to send a request's headers.
    #[arg(long, global = true, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_header_read_timeout_secs: Option<u64>,
    /// Open admin connections at most.
    #[arg(long, global = true, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_max_connections: Option<usize>,
    /// Bytes of requests held at once across all calls.
    #[arg(long, global = true, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight_bytes: Option<usize>,
    /// Reset a request whose body makes no progress for this long.
    #[arg(long, global = true, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_progress_timeout_secs: Option<u64>,
    /// Cut a connection whose replies make no send progress for this long.
    #[arg(long, global = true, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_progress_timeout_secs: Option<u64>,
    /// Runtime worker threads.
    #[arg(long, global = true, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
    /// Serve gRPC reflection.
    #[arg(long, global = true, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reflection: Option<bool>,
    /// Send only what the gateway reads back (not byte for byte).
    #[arg(long, global = true, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trim_replies: Option<bool>,
    /// Log one line per call.
    #[arg(long, global = true, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_calls: Option<bool>,
    /// Log each Object as JSON, secrets redacted.
    #[arg(long, global = true, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_objects: Option<bool>,
    /// Log format: text or json.
    #[arg(long, global = true, value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
}

/// The inputs of one configuration load.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--config`; falls back to `TYK_DISPATCHER_CONFIG`.
    pub file: Option<PathBuf>,
    /// Environment variables (all of them; ours and the gateway's are picked out).
    pub env: Vec<(String, String)>,
    /// Command-line flags.
    pub cli: CliOverrides,
}

impl Sources {
    /// The process's environment, with the given flags.
    pub fn from_process(file: Option<PathBuf>, cli: CliOverrides) -> Self {
        Self {
            file,
            env: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            cli,
        }
    }

    /// The config file to read: `--config`, else `TYK_DISPATCHER_CONFIG` (its last value, as
    /// for every other variable). The only place that decides it, so the load and the reload
    /// watch read the same file.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.file.clone().or_else(|| {
            self.env
                .iter()
                .rev()
                .find(|(name, _)| name == ENV_CONFIG)
                .map(|(_, value)| PathBuf::from(value))
        })
    }
}

/// A loaded, completed and validated configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration in effect.
    pub config: Config,
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
    /// Where our settings and the gateway's disagree, or where one changed the other.
    pub notes: Vec<String>,
}

/// A list of numbers, written as a TOML array or a comma-separated string (as in env vars).
pub(crate) fn number_list<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<f64>, D::Error> {
    use serde::Deserialize;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Text(String),
        List(Vec<f64>),
    }
    match Form::deserialize(deserializer)? {
        Form::List(list) => Ok(list),
        Form::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<f64>()
                    .map_err(|_| serde::de::Error::custom(format!("{item:?} is not a number")))
            })
            .collect(),
    }
}

/// Prints a secret setting as set-but-hidden.
pub(crate) fn hide_secret<S: serde::Serializer>(
    value: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => serializer.serialize_str("(hidden)"),
        None => serializer.serialize_none(),
    }
}

/// Kubernetes injects these for a Service named `tyk-dispatcher` into every pod of its
/// namespace: `_SERVICE_HOST`, `_SERVICE_PORT[_<NAME>]`, `_PORT`, `_PORT_<n>_<PROTO>[_PROTO|_PORT|_ADDR]`.
fn is_service_link(suffix: &str) -> bool {
    if matches!(suffix, "SERVICE_HOST" | "SERVICE_PORT" | "PORT") {
        return true;
    }
    if let Some(name) = suffix.strip_prefix("SERVICE_PORT_") {
        return !name.is_empty();
    }
    let Some(rest) = suffix.strip_prefix("PORT_") else {
        return false;
    };
    let Some((port, rest)) = rest.split_once('_') else {
        return false;
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let (proto, field) = rest.split_once('_').unwrap_or((rest, ""));
    matches!(proto, "TCP" | "UDP" | "SCTP") && matches!(field, "" | "PROTO" | "PORT" | "ADDR")
}

/// Our variables as a figment dictionary of strings (converted by `extract_lossy`), and the
/// problems found. The config file variable is [`Sources::config_file`]'s.
fn scan_env(env: &[(String, String)]) -> (Dict, Vec<Problem>) {
    let mut dict = Dict::new();
    let mut problems = Vec::new();
    for (name, value) in env {
        let Some(suffix) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if name == ENV_CONFIG {
            // The file, not a setting: [`Sources::config_file`] picks it up.
        } else if let Some(key) = KEYS.iter().find(|key| key.eq_ignore_ascii_case(suffix)) {
            dict.insert((*key).to_string(), Value::from(value.clone()));
        } else if !is_service_link(suffix) {
            problems.push(Problem::new(
                name.clone(),
                format!("unknown setting (known: {})", known_env_names()),
            ));
        }
    }
    (dict, problems)
}

fn known_env_names() -> String {
    let mut names: Vec<String> = KEYS
        .iter()
        .map(|key| format!("{ENV_PREFIX}{}", key.to_uppercase()))
        .collect();
    names.push(ENV_CONFIG.to_string());
    names.join(", ")
}

/// Names of the layers that are not files, as problems cite them.
const ENV_LAYER: &str = "environment";
const FLAGS_LAYER: &str = "command-line flags";
const OTEL_LAYER: &str = "OTEL_* variables";

/// A layer of settings under a name of our choosing: figment's own providers for values built in
/// code cite the Rust source line that added them (`src/config/sources.rs:…`), which means
/// nothing to an operator.
struct Layer<P> {
    name: &'static str,
    inner: P,
}

impl<P: Provider> Provider for Layer<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}

fn layer<T: Serialize>(name: &'static str, value: T) -> Layer<Serialized<T>> {
    Layer {
        name,
        inner: Serialized::defaults(value),
    }
}

/// A figment path as a key path: `hooks[0].steps[1].kind`.
pub(crate) fn key_path<'a>(segments: impl IntoIterator<Item = &'a str>) -> String {
    let mut path = String::new();
    for segment in segments {
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            path.push('[');
            path.push_str(segment);
            path.push(']');
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(segment);
        }
    }
    path
}

/// Where a bad value came from, in the terms the operator used to set it.
fn origin(meta: &Metadata, key: &str) -> String {
    let top = key.split(['.', '[']).next().unwrap_or(key);
    match (&meta.source, meta.name.as_ref()) {
        (Some(figment::Source::File(path)), _) => format!(" (from {})", path.display()),
        (_, ENV_LAYER) => format!(" (from {ENV_PREFIX}{})", top.to_uppercase()),
        (_, FLAGS_LAYER) => format!(" (from --{})", top.replace('_', "-")),
        (_, name) => format!(" (from {name})"),
    }
}

fn figment_problems(err: figment::Error) -> Vec<Problem> {
    err.into_iter()
        .map(|err| {
            let key = if err.path.is_empty() {
                "config".to_string()
            } else {
                key_path(err.path.iter().map(String::as_str))
            };
            let origin = err
                .metadata
                .as_ref()
                .map(|meta| origin(meta, &key))
                .unwrap_or_default();
            Problem::new(key, format!("{}{origin}", err.kind))
        })
        .collect()
}

/// Loads, completes and validates the configuration, reporting every problem at once.
///
/// # Errors
/// [`Problems`], one per key at fault.
pub fn load(sources: &Sources) -> Result<Loaded, Problems> {
    let (env_dict, mut problems) = scan_env(&sources.env);
    let file = sources.config_file();

    let mut otel_layer = super::otel::layer(&sources.env);
    if let Some(attributes) = sources
        .env
        .iter()
        .find(|(k, _)| k == "OTEL_RESOURCE_ATTRIBUTES")
    {
        otel_layer.insert(
            "resource_attributes".into(),
            Value::from(attributes.1.clone()),
        );
    }
    let mut figment =
        Figment::from(layer("defaults", Config::default())).merge(layer(OTEL_LAYER, otel_layer));
    if let Some(path) = &file {
        if path.is_file() {
            figment = figment.merge(Toml::file_exact(path));
        } else {
            problems.push(Problem::new(
                "config",
                format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                ),
            ));
        }
    }
    figment = figment
        .merge(layer(ENV_LAYER, env_dict))
        .merge(layer(FLAGS_LAYER, &sources.cli));

    let gateway =
        GatewayOptions::from_env(sources.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|found| problems.extend(found))
            .unwrap_or_default();

    let mut config = match figment.extract_lossy::<Config>() {
        Ok(config) => config,
        Err(err) => {
            problems.extend(figment_problems(err));
            return Err(Problems(problems));
        }
    };
    if super::otel::sdk_disabled(&sources.env) {
        config.otlp_endpoint = None;
    }
    let mut notes = match gateway.apply(&mut config) {
        Ok(notes) => notes,
        Err(problem) => {
            problems.push(problem);
            Vec::new()
        }
    };
    if config.trim_replies {
        notes.push(
            "trim_replies is on: replies carry only what the gateway reads back (proven with Tyk Gateway v5.14.0), not the Object byte for byte"
                .to_string(),
        );
    }
    if let Err(Problems(found)) = config.validate() {
        problems.extend(found);
    }
    if problems.is_empty() {
        Ok(Loaded {
            config,
            file,
            notes,
        })
    } else {
        Err(Problems(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AddressList, LogFormat};
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keys_match_the_config_fields() {
        // Every field, with the optional ones filled, serialises to exactly KEYS.
        let config = Config {
            listen: Some(AddressList::default()),
            tls_cert: Some("c".into()),
            tls_key: Some("k".into()),
            tls_client_ca: Some("ca".into()),
            max_reply_bytes: Some(1),
            max_connection_age_secs: Some(1),
            keepalive_interval_secs: Some(1),
            max_in_flight_bytes: Some(1),
            max_connections: Some(1),
            worker_threads: Some(1),
            otlp_endpoint: Some("http://c:4317".into()),
            otlp_headers: Some("a=b".into()),
            trace_sampler_arg: Some(1.0),
            resource_attributes: Some("a=b".into()),
            hooks: vec![crate::hooks::HookConfig {
                name: "h".into(),
                hook_type: crate::hooks::HookTypeName::Pre,
                api_ids: Vec::new(),
                steps: Vec::new(),
                deadline_ms: 1,
                on_error: Default::default(),
                dry_run: false,
                cel_cost_limit: crate::hooks::cel::DEFAULT_COST_LIMIT,
            }],
            ..Config::default()
        };
        let value = serde_json::to_value(&config).unwrap();
        let mut fields: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut keys = KEYS.to_vec();
        fields.sort_unstable();
        keys.sort_unstable();
        assert_eq!(fields, keys);
    }

    #[test]
    fn the_load_and_the_reload_watch_read_the_same_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first.toml");
        let last = dir.path().join("last.toml");
        std::fs::write(&first, "max_recv_bytes = 1000\n").unwrap();
        std::fs::write(&last, "max_recv_bytes = 2000\n").unwrap();
        // Named twice: the last value wins, as for every other variable.
        let sources = Sources {
            env: env(&[
                (ENV_CONFIG, first.to_str().unwrap()),
                (ENV_CONFIG, last.to_str().unwrap()),
            ]),
            ..Sources::default()
        };
        assert_eq!(sources.config_file().as_deref(), Some(last.as_path()));
        let loaded = load(&sources).unwrap();
        assert_eq!(loaded.file.as_deref(), Some(last.as_path()));
        assert_eq!(loaded.config.max_recv_bytes, 2000);
        // `--config` wins over the variable.
        let flagged = Sources {
            file: Some(first.clone()),
            ..sources
        };
        assert_eq!(flagged.config_file().as_deref(), Some(first.as_path()));
        assert_eq!(
            load(&flagged).unwrap().file.as_deref(),
            Some(first.as_path())
        );
    }

    #[test]
    fn precedence_is_defaults_file_env_flags() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "listen = [\"127.0.0.1:1\"]\nmax_recv_bytes = 1000\nlog_format = \"json\"\ndrain_delay_secs = 3").unwrap();
        let sources = Sources {
            file: Some(file.path().to_path_buf()),
            env: env(&[
                ("TYK_DISPATCHER_MAX_RECV_BYTES", "2000"),
                ("TYK_DISPATCHER_LISTEN", "[::1]:2,127.0.0.1:3"),
                ("TYK_DISPATCHER_LOG_CALLS", "false"),
                ("TYK_DISPATCHER_UNIX_SOCKET_MODE", "0600"),
            ]),
            cli: CliOverrides {
                listen: Some("127.0.0.1:4".into()),
                ..CliOverrides::default()
            },
        };
        let loaded = load(&sources).unwrap();
        let config = loaded.config;
        assert_eq!(config.listen, Some(AddressList::of(&["127.0.0.1:4"])));
        assert_eq!(config.max_recv_bytes, 2000);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.drain_delay_secs, 3);
        assert!(!config.log_calls);
        assert_eq!(config.unix_socket_mode_bits(), Ok(0o600));
    }

    #[test]
    fn unknown_variables_are_refused_and_service_links_ignored() {
        let sources = Sources {
            env: env(&[
                ("TYK_DISPATCHER_LISTN", "127.0.0.1:1"),
                ("TYK_DISPATCHER_SERVICE_HOST", "10.0.0.1"),
                ("TYK_DISPATCHER_SERVICE_PORT", "50051"),
                ("TYK_DISPATCHER_SERVICE_PORT_GRPC", "50051"),
                ("TYK_DISPATCHER_PORT", "tcp://10.0.0.1:50051"),
                ("TYK_DISPATCHER_PORT_50051_TCP", "tcp://10.0.0.1:50051"),
                ("TYK_DISPATCHER_PORT_50051_TCP_PROTO", "tcp"),
                ("TYK_DISPATCHER_PORT_50051_TCP_PORT", "50051"),
                ("TYK_DISPATCHER_PORT_50051_TCP_ADDR", "10.0.0.1"),
            ]),
            ..Sources::default()
        };
        let Problems(problems) = load(&sources).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "TYK_DISPATCHER_LISTN");
        assert!(problems[0].message.starts_with("unknown setting"));
        for suffix in [
            "PORT_X_TCP",
            "PORT_50051_TCP_HOST",
            "PORT_50051_HTTP",
            "SERVICE_HOSTS",
        ] {
            assert!(!is_service_link(suffix), "{suffix}");
        }
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "max_recv_bytes = \"lots\"\nlistne = 1").unwrap();
        let sources = Sources {
            file: Some(file.path().to_path_buf()),
            ..Sources::default()
        };
        let text = load(&sources).unwrap_err().to_string();
        assert!(text.contains("listne"), "{text}");
        let sources = Sources {
            env: env(&[("TYK_DISPATCHER_REUSE_PORT", "maybe")]),
            ..Sources::default()
        };
        let text = load(&sources).unwrap_err().to_string();
        assert!(
            text.contains("reuse_port") && text.contains("maybe"),
            "{text}"
        );
        let sources = Sources {
            file: Some("/nonexistent/dispatcher.toml".into()),
            ..Sources::default()
        };
        let text = load(&sources).unwrap_err().to_string();
        assert!(
            text.contains("/nonexistent/dispatcher.toml does not exist"),
            "{text}"
        );
    }

    #[test]
    fn problems_name_the_key_path_and_the_setting_the_operator_used() {
        assert_eq!(
            key_path(["hooks", "2", "steps", "1", "kind"]),
            "hooks[2].steps[1].kind"
        );
        let sources = Sources {
            env: env(&[("TYK_DISPATCHER_DRAIN_DELAY_SECS", "soon")]),
            ..Sources::default()
        };
        let Problems(problems) = load(&sources).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "drain_delay_secs");
        assert_eq!(
            problems[0].message,
            "invalid type: found string \"soon\", expected u64 (from TYK_DISPATCHER_DRAIN_DELAY_SECS)"
        );
    }

    #[test]
    fn the_gateway_variables_complete_the_config() {
        let sources = Sources {
            env: env(&[
                (
                    "TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER",
                    "tcp://127.0.0.1:5555",
                ),
                ("TYK_GW_COPROCESSOPTIONS_GRPCRECVMAXSIZE", "20000000"),
            ]),
            ..Sources::default()
        };
        let config = load(&sources).unwrap().config;
        assert_eq!(config.listen, Some(AddressList::of(&["127.0.0.1:5555"])));
        assert_eq!(config.max_reply_bytes, Some(20_000_000));
    }
}
