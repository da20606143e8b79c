//! Shared test fixtures: the app in-process on port 0, the binary as a child process with its
//! JSON logs captured, clients, certificates and Objects.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::uri::PathAndQuery;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tonic::{
    Status,
    transport::{Channel, Endpoint},
};
use tyk_dispatcher::{
    App, BoundAddr, Config, Lifecycle,
    codec::{RawCodec, RawMessage},
    pb,
};

/// The path of the Dispatch method.
pub const DISPATCH: &str = "/coprocess.Dispatcher/Dispatch";
/// The path of the DispatchEvent method.
pub const DISPATCH_EVENT: &str = "/coprocess.Dispatcher/DispatchEvent";

/// An app running in this process.
pub struct TestApp {
    pub grpc: Vec<BoundAddr>,
    pub admin: SocketAddr,
    pub lifecycle: Lifecycle,
    pub stop: CancellationToken,
    pub task: JoinHandle<()>,
}

impl TestApp {
    /// The first TCP gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.grpc
            .iter()
            .find_map(|a| match a {
                BoundAddr::Tcp(addr) => Some(*addr),
                BoundAddr::Unix(_) => None,
            })
            .expect("a TCP listener")
    }

    /// A channel to the first TCP listener.
    pub async fn channel(&self) -> Channel {
        connect(self.addr()).await
    }

    /// Stops the app and waits for it to finish.
    pub async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the app stops within 10 s")
            .expect("the app task does not panic");
    }
}

/// Starts the app with `config` (listeners on port 0 as the config says) and waits until ready.
pub async fn spawn_app(config: Config) -> TestApp {
    spawn_built(App::build(config).await.expect("app builds")).await
}

/// Runs a built app and waits until ready.
pub async fn spawn_built(app: App) -> TestApp {
    let grpc = app.grpc_addrs();
    let admin = app.admin_addr();
    let lifecycle = app.lifecycle();
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { app.run_until_stopped(stop).await.expect("app runs") }
    });
    let started = Instant::now();
    while !lifecycle.is_ready() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "app never became ready"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    TestApp {
        grpc,
        admin,
        lifecycle,
        stop,
        task,
    }
}

/// A plaintext HTTP/2 channel to `addr`.
pub async fn connect(addr: SocketAddr) -> Channel {
    Endpoint::try_from(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("connects")
}

/// A channel over a Unix socket; `:authority` is `localhost`, as Tyk 5.9+ sends.
pub async fn connect_unix(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    Endpoint::try_from("http://localhost")
        .expect("valid uri")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}

/// Calls `path` with raw protobuf bytes and returns the raw reply.
pub async fn call_raw(
    channel: Channel,
    path: &'static str,
    body: impl Into<Bytes>,
) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let reply = grpc
        .unary(
            tonic::Request::new(RawMessage::new(body.into())),
            PathAndQuery::from_static(path),
            RawCodec,
        )
        .await?;
    Ok(reply.into_inner().into_bytes())
}

/// Calls `path` with raw protobuf bytes and gRPC `metadata` (a trace context, say); the raw
/// reply.
pub async fn call_with_metadata(
    app: &TestApp,
    path: &'static str,
    body: Vec<u8>,
    metadata: &[(&'static str, &str)],
) -> Bytes {
    let mut grpc = tonic::client::Grpc::new(app.channel().await);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(RawMessage::new(body));
    for (key, value) in metadata {
        request.metadata_mut().insert(*key, value.parse().unwrap());
    }
    grpc.unary(request, PathAndQuery::from_static(path), RawCodec)
        .await
        .expect("answered")
        .into_inner()
        .into_bytes()
}

/// Whether a failed call provably never reached the server: refused by a GOAWAY, or canceled
/// by the client before it was sent. gRPC-Go (Tyk's client) retries exactly these
/// transparently; tonic's client reports them, so load tests retry them the same way.
pub fn never_sent(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>()
            && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM))
        {
            return true;
        }
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// [`call_raw`] with gRPC-Go's transparent retry of calls that never reached the server.
pub async fn call_like_grpc_go(
    channel: Channel,
    path: &'static str,
    body: Bytes,
) -> Result<Bytes, Status> {
    let mut attempts = 0;
    loop {
        match call_raw(channel.clone(), path, body.clone()).await {
            Err(status) if never_sent(&status) && attempts < 5 => attempts += 1,
            result => return result,
        }
    }
}

/// A GET on the admin port; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("admin port reachable");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("request sent");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The seed tutorial's Dispatch payload.
/// Appends a length-delimited record of `field` to `out`, whatever the payload holds (a test
/// may send bytes a string field must not carry).
pub fn put_len_record(out: &mut Vec<u8>, field: u32, payload: &[u8]) {
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

pub fn seed_object() -> pb::Object {
    pb::Object {
        hook_type: pb::HookType::Pre as i32,
        hook_name: "MyPreCustomPluginForBasicAuth".into(),
        request: Some(pb::MiniRequestObject {
            headers: map(&[
                ("User-Agent", "curl/8.1.2"),
                ("Host", "tyk-gateway.localhost:8080"),
                ("Authorization", "Basic ZGV2QHR5ay5pbzpwYXN0cnk="),
                ("Accept", "*/*"),
            ]),
            url: "/basic-authentication-valid/get".into(),
            return_overrides: Some(pb::ReturnOverrides {
                response_code: -1,
                ..Default::default()
            }),
            method: "GET".into(),
            request_uri: "/basic-authentication-valid/get".into(),
            scheme: "https".into(),
            ..Default::default()
        }),
        spec: map(&[
            ("bundle_hash", "d41d8cd98f00b204e9800998ecf8427e"),
            ("OrgID", "5e9d9544a1dcd60001d0ed20"),
            ("APIID", "04e911d3012646d97fcdd6c846fafc4b"),
        ]),
        ..Default::default()
    }
}

/// An Object with every field of every message set.
pub fn full_object() -> pb::Object {
    pb::Object {
        hook_type: pb::HookType::Response as i32,
        hook_name: "Everything".into(),
        request: Some(pb::MiniRequestObject {
            headers: map(&[("Content-Type", "application/octet-stream"), ("Host", "gw")]),
            set_headers: map(&[("X-Set", "1")]),
            delete_headers: vec!["X-Del".into(), "X-Del-2".into()],
            body: String::new(),
            url: "/full/path?a=1&b=2".into(),
            params: map(&[("a", "1"), ("b", "2")]),
            add_params: map(&[("c", "3")]),
            extended_params: map(&[("d", "4")]),
            delete_params: vec!["e".into()],
            return_overrides: Some(pb::ReturnOverrides {
                response_code: -1,
                response_error: "err".into(),
                headers: map(&[("X-Override", "o")]),
                override_error: true,
                response_body: "rb".into(),
            }),
            method: "POST".into(),
            request_uri: "/full/path?a=1&b=2".into(),
            scheme: "https".into(),
            // Not UTF-8: the gateway leaves `body` empty for such bodies.
            raw_body: vec![0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28].into(),
        }),
        session: Some(pb::SessionState {
            last_check: 1,
            allowance: 2.5,
            rate: 3.5,
            per: 4.5,
            expires: 5,
            quota_max: 6,
            quota_renews: 7,
            quota_remaining: 8,
            quota_renewal_rate: 9,
            access_rights: [(
                "api-1".to_string(),
                pb::AccessDefinition {
                    api_name: "API One".into(),
                    api_id: "api-1".into(),
                    versions: vec!["Default".into()],
                    allowed_urls: vec![pb::AccessSpec {
                        url: "/x".into(),
                        methods: vec!["GET".into(), "POST".into()],
                    }],
                },
            )]
            .into(),
            org_id: "org".into(),
            oauth_client_id: "client".into(),
            oauth_keys: map(&[("k", "v")]),
            basic_auth_data: Some(pb::BasicAuthData {
                password: "p".into(),
                hash: "bcrypt".into(),
            }),
            jwt_data: Some(pb::JwtData { secret: "s".into() }),
            hmac_enabled: true,
            hmac_secret: "h".into(),
            is_inactive: true,
            apply_policy_id: "pol".into(),
            data_expires: 20,
            monitor: Some(pb::Monitor {
                trigger_limits: vec![80.0, 90.5],
            }),
            enable_detailed_recording: true,
            metadata: map(&[("token", "t"), ("nested", "{\"a\":1}")]),
            tags: vec!["t1".into(), "t2".into()],
            alias: "alias".into(),
            last_updated: "1700000000".into(),
            id_extractor_deadline: 27,
            session_lifetime: 28,
            apply_policies: vec!["p1".into(), "p2".into()],
            certificate: "cert".into(),
            max_query_depth: 31,
            key_id: "key-id".into(),
            post_expiry_action: "delete".into(),
            post_expiry_grace_period: 34,
        }),
        metadata: map(&[("token", "t")]),
        spec: map(&[
            ("APIID", "api-1"),
            ("OrgID", "org"),
            ("bundle_hash", "d41d8cd98f00b204e9800998ecf8427e"),
            ("config_data", "{\"x\":1}"),
        ]),
        response: Some(pb::ResponseObject {
            status_code: 201,
            raw_body: vec![0x00, 0xff, 0x10].into(),
            body: String::new(),
            headers: map(&[("Set-Cookie", "a=1")]),
            multivalue_headers: vec![pb::Header {
                key: "Set-Cookie".into(),
                values: vec!["a=1".into(), "b=2".into()],
            }],
        }),
    }
}

/// Certificates for TLS tests, written to a temporary directory.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_ca: PathBuf,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

/// A CA with a server certificate for `localhost` and a client certificate.
pub fn make_pki() -> TestPki {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca_pem, server_cert, server_key) = write_server_cert(dir.path(), "ca-1");
    let client_ca_key = rcgen::KeyPair::generate().expect("key");
    let mut client_ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    client_ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let client_ca = client_ca_params
        .self_signed(&client_ca_key)
        .expect("client CA");
    let client_key = rcgen::KeyPair::generate().expect("key");
    let client_params = rcgen::CertificateParams::new(vec!["gateway".to_string()]).expect("params");
    let issuer = rcgen::Issuer::new(client_ca_params, client_ca_key);
    let client_cert = client_params
        .signed_by(&client_key, &issuer)
        .expect("client cert");
    let client_ca_path = dir.path().join("client-ca.pem");
    std::fs::write(&client_ca_path, client_ca.pem()).expect("write");
    TestPki {
        ca_pem,
        server_cert,
        server_key,
        client_ca: client_ca_path,
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
        dir,
    }
}

/// Writes a fresh CA and a `localhost` server certificate it signed into `dir` (cert.pem,
/// key.pem); returns the CA's PEM and both paths.
pub fn write_server_cert(dir: &Path, ca_name: &str) -> (String, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let server_key = rcgen::KeyPair::generate().expect("key");
    let server_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server = server_params
        .signed_by(&server_key, &issuer)
        .expect("server cert");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    // Written beside and renamed, as a Secret volume swaps its files.
    std::fs::write(dir.join("cert.pem.tmp"), server.pem()).expect("write");
    std::fs::write(dir.join("key.pem.tmp"), server_key.serialize_pem()).expect("write");
    std::fs::rename(dir.join("key.pem.tmp"), &key_path).expect("rename");
    std::fs::rename(dir.join("cert.pem.tmp"), &cert_path).expect("rename");
    (ca.pem(), cert_path, key_path)
}

/// The dispatcher binary running as a child process with JSON logs captured.
pub struct Process {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<serde_json::Value>>>,
    pub stderr: Arc<Mutex<String>>,
}

impl Process {
    /// Starts the binary with `env` (JSON logs, admin on an ephemeral port unless given) and
    /// `args`, without waiting for readiness.
    pub fn start(env: &[(&str, &str)], args: &[&str]) -> Self {
        Self::start_via(&[], env, args)
    }

    /// Like [`Process::start`], with the binary run through `wrapper` (a command that execs its
    /// arguments).
    pub fn start_via(wrapper: &[&str], env: &[(&str, &str)], args: &[&str]) -> Self {
        Self::start_program(env!("CARGO_BIN_EXE_tyk-dispatcher"), wrapper, env, args)
    }

    /// Like [`Process::start`], for one of the crate's examples (built by `cargo test`).
    pub fn start_example(name: &str, env: &[(&str, &str)], args: &[&str]) -> Self {
        let deps = std::env::current_exe().expect("test binary path");
        let example = deps
            .parent()
            .and_then(std::path::Path::parent)
            .expect("target dir")
            .join("examples")
            .join(name);
        Self::start_program(example.to_str().expect("UTF-8 path"), &[], env, args)
    }

    fn start_program(binary: &str, wrapper: &[&str], env: &[(&str, &str)], args: &[&str]) -> Self {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TYK_DISPATCHER_LOG_FORMAT", "json")
            .env("TYK_DISPATCHER_ADMIN_LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("binary starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn({
            let lines = lines.clone();
            move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let value =
                        serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
                    lines.lock().unwrap().push(value);
                }
            }
        });
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn({
            let text = stderr_text.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut text = text.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        });
        Self {
            child,
            lines,
            stderr: stderr_text,
        }
    }

    /// Log lines whose message is `message`.
    pub fn logs(&self, message: &str) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line["message"] == message)
            .cloned()
            .collect()
    }

    /// Everything logged so far, as text.
    pub fn log_text(&self) -> String {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits up to `timeout` for a line with `message`.
    pub async fn wait_for_log(&self, message: &str, timeout: Duration) -> serde_json::Value {
        let started = Instant::now();
        loop {
            if let Some(line) = self.logs(message).into_iter().next() {
                return line;
            }
            assert!(
                started.elapsed() < timeout,
                "no {message:?} log line within {timeout:?}; logs:\n{}\nstderr:\n{}",
                self.log_text(),
                self.stderr.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until serving; returns the gRPC listener addresses and the admin address.
    pub async fn ready(&self) -> (Vec<String>, SocketAddr) {
        self.wait_for_log("serving", Duration::from_secs(10)).await;
        let grpc = self
            .logs("gRPC listener")
            .iter()
            .map(|line| line["addr"].as_str().expect("addr").to_string())
            .collect();
        let admin = self.logs("admin interface")[0]["addr"]
            .as_str()
            .expect("addr")
            .parse()
            .expect("socket address");
        (grpc, admin)
    }

    /// Sends `signal` (e.g. "TERM").
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits up to `timeout` for exit; returns the exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                started.elapsed() < timeout,
                "process did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (for `check-config` and bad-config runs).
pub fn run_binary(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tyk-dispatcher"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A loopback config (quiet, short drain), adjusted by `f`.
/// A config file in `dir` for `examples/custom_auth.rs`: its step on a CustomKeyCheck hook
/// named `Signed`, signing with `secret` (written beside it).
pub fn custom_auth_config(dir: &Path, secret: &str) -> PathBuf {
    std::fs::write(dir.join("secret"), secret).unwrap();
    let config = dir.join("dispatcher.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n[[hooks]]\nname = \"Signed\"\ntype = \"CustomKeyCheck\"\n[[hooks.steps]]\nkind = \"signed_request_auth\"\nsecret_file = \"{}\"\ngrants = {{ apis = [\"04e911d3012646d97fcdd6c846fafc4b\"], rate = 5.0, per = 1.0 }}\n",
            dir.join("secret").display()
        ),
    )
    .unwrap();
    config
}

pub fn config_with(f: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::for_loopback();
    config.log_calls = false;
    // Tests hold client connections while stopping; do not wait long for them to leave.
    config.drain_delay_secs = 1;
    f(&mut config);
    config
}

/// A step of `kind` with `settings` (a JSON object).
pub fn step(kind: &str, settings: serde_json::Value) -> tyk_dispatcher::hooks::StepConfig {
    tyk_dispatcher::hooks::StepConfig {
        kind: kind.into(),
        settings: settings.as_object().cloned().unwrap_or_default(),
    }
}

/// A hook of `steps`, failing closed within 500 ms.
pub fn hook(
    name: &str,
    hook_type: tyk_dispatcher::hooks::HookTypeName,
    steps: Vec<tyk_dispatcher::hooks::StepConfig>,
) -> tyk_dispatcher::hooks::HookConfig {
    tyk_dispatcher::hooks::HookConfig {
        name: name.into(),
        hook_type,
        api_ids: Vec::new(),
        steps,
        deadline_ms: 500,
        on_error: tyk_dispatcher::hooks::OnError::FailClosed,
        dry_run: false,
        cel_cost_limit: tyk_dispatcher::hooks::cel::DEFAULT_COST_LIMIT,
    }
}
