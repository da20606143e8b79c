//! `jwt_auth` (CustomKeyCheck): JSON Web Tokens verified against keys whose algorithm is pinned,
//! with the same grants for every valid token.
//!
//! ```toml
//! [[hooks.steps]]
//! kind = "jwt_auth"
//! # Exactly one key source:
//! keys_file = "/etc/tyk-dispatcher/jwt/keys.toml"          # reloaded when it changes
//! # jwks_file = "/etc/tyk-dispatcher/jwt/jwks.json"        # reloaded when it changes
//! # jwks_url = "https://idp.example.com/.well-known/jwks.json"
//! # jwks_refresh_secs = 300                                # only with jwks_url
//! secret_file = "/etc/tyk-dispatcher/secret/token-key"    # session-token HMAC, shared by every replica
//! header = "Authorization"                                # default; a "Bearer " prefix is dropped
//! issuer = "https://idp.example.com/"                     # optional: `iss` must equal it
//! audience = "orders-api"                                 # optional: `aud` must contain it
//! leeway_secs = 30                                        # clock skew allowed on exp and nbf
//! cache_secs = 60                                         # id_extractor_deadline (never past exp), 0 = off
//! claims_to_metadata = ["email", "scope"]                 # copied into the session metadata
//! grants = { apis = ["04e911d3012646d97fcdd6c846fafc4b"], rate = 100.0, per = 60.0, quota_max = 10000, quota_renewal_rate = 86400 }
//! ```
//!
//! The keys file (`kid` and `alg` required; `alg` is one of HS256, RS256, ES256 and is pinned: a
//! token naming another algorithm is refused, whatever its signature):
//!
//! ```toml
//! [[keys]]
//! kid = "hs-2024"
//! alg = "HS256"
//! secret = "at least 32 bytes of shared secret....."   # or secret_file = "hs-2024.key"
//!                                                       # (relative to this file, trimmed)
//! [[keys]]
//! kid = "rsa-1"
//! alg = "RS256"                                         # or ES256 (P-256)
//! pem = """
//! -----BEGIN PUBLIC KEY-----
//! ...
//! -----END PUBLIC KEY-----
//! """
//! ```
//!
//! A JWKS (file or URL) is the usual `{"keys": [...]}`. A key is used when it has a `kid`, is not
//! marked `"use": "enc"`, and its algorithm is HS256 (`kty` "oct"), RS256 (`kty` "RSA") or ES256
//! (`kty` "EC", `crv` "P-256"): its `alg` when given, otherwise inferred from `kty`/`crv`; other
//! keys are skipped with a warning. A JWKS URL is fetched with a timeout, in a background task
//! (started when the step is built inside a runtime, else on its first call), and refreshed every
//! `jwks_refresh_secs`; a failed fetch keeps the last good keys. While no key was ever fetched the
//! step fails (`StepError`) and the hook's `on_error` answers.
//!
//! A token must carry a `kid` naming a known key, `exp` and `sub`; `nbf` is checked when present.
//! The session token is the HMAC of `iss` + "\n" + `sub` under the shared secret, not of the JWT,
//! so quotas and rate limits count per subject and a new JWT of the same subject finds the same
//! session. The session expires at `exp` (or earlier, if `grants.expires` says so); the gateway
//! checks that itself, so the leeway only covers clocks where the dispatcher runs.
//!
//! No token is answered 401 and any invalid one 403, both through `return_overrides`. The token
//! is never logged or returned; refusals are logged at debug level with a reason only.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;

use super::reloading;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{
    canonical_header_name,
    grants::{self, Grants},
    settings,
};
use crate::{
    hooks::{
        config::StepConfig,
        step::{Step, StepContext, StepError, StepOutcome},
    },
    pb,
    watch::{FileReads, Watched},
};

/// Time limit of one JWKS fetch (connect, headers and body).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A JWKS larger than this is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// After a failed fetch, the next one comes no later than this.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// While no key was ever fetched, a call fetches itself at most this often.
const FETCH_ON_CALL_EVERY: Duration = Duration::from_secs(5);
/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash.
const MIN_HMAC_KEY_BYTES: usize = 32;

fn default_header() -> String {
    "Authorization".into()
}

fn default_cache() -> i64 {
    60
}

fn default_leeway() -> u64 {
    30
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtSettings {
    #[serde(default)]
    keys_file: Option<PathBuf>,
    #[serde(default)]
    jwks_file: Option<PathBuf>,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default)]
    jwks_refresh_secs: Option<u64>,
    secret_file: PathBuf,
    #[serde(default = "default_header")]
    header: String,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default = "default_leeway")]
    leeway_secs: u64,
    #[serde(default = "default_cache")]
    cache_secs: i64,
    grants: Grants,
    #[serde(default)]
    claims_to_metadata: Vec<String>,
}

/// The algorithms a key can be pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum Alg {
    #[serde(rename = "HS256")]
    Hs256 = 0,
    #[serde(rename = "RS256")]
    Rs256 = 1,
    #[serde(rename = "ES256")]
    Es256 = 2,
}

impl Alg {
    const ALL: [Self; 3] = [Self::Hs256, Self::Rs256, Self::Es256];

    fn algorithm(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
        }
    }
}

/// A verification key and the one algorithm it accepts.
#[derive(Clone)]
struct VerifyKey {
    alg: Alg,
    key: DecodingKey,
}

/// Keys by `kid`.
#[derive(Clone, Default)]
struct KeySet {
    keys: HashMap<String, VerifyKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

// ---- the keys file ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    kid: String,
    alg: Alg,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_file: Option<PathBuf>,
    #[serde(default)]
    pem: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

/// One key of the keys file; the message never holds key material.
fn entry_key(entry: &KeyEntry, dir: &Path, files: &mut FileReads) -> Result<DecodingKey, String> {
    match (entry.alg, &entry.secret, &entry.secret_file, &entry.pem) {
        (Alg::Hs256, secret, secret_file, None) => {
            let bytes = match (secret, secret_file) {
                (Some(secret), None) => secret.as_bytes().to_vec(),
                (None, Some(file)) => {
                    let path = dir.join(file);
                    let bytes = files.read(&path).map_err(|err| {
                        format!("cannot read secret_file {}: {err}", path.display())
                    })?;
                    bytes.trim_ascii().to_vec()
                }
                _ => return Err("HS256 needs exactly one of secret, secret_file".into()),
            };
            if bytes.len() < MIN_HMAC_KEY_BYTES {
                return Err(format!(
                    "HS256 secret holds fewer than {MIN_HMAC_KEY_BYTES} bytes"
                ));
            }
            Ok(DecodingKey::from_secret(&bytes))
        }
        (Alg::Rs256 | Alg::Es256, None, None, Some(pem)) => {
            if pem.contains("PRIVATE KEY") {
                return Err("pem holds a private key; give the public key".into());
            }
            let key = if entry.alg == Alg::Rs256 {
                DecodingKey::from_rsa_pem(pem.as_bytes())
            } else {
                DecodingKey::from_ec_pem(pem.as_bytes())
            };
            key.map_err(|err| format!("pem is not a {:?} public key: {err}", entry.alg))
        }
        (Alg::Hs256, ..) => Err("HS256 takes secret or secret_file, not pem".into()),
        _ => Err("RS256 and ES256 take pem (the public key), not a secret".into()),
    }
}

/// [`load_keys_file`] and [`parse_jwks`], for [`super::parsers`] (the fuzz harness).
pub(super) fn check_keys(path: Option<&Path>, jwks: &[u8]) -> Result<(), String> {
    match path {
        Some(path) => load_keys_file(&mut FileReads::default(), path).map(drop),
        None => parse_jwks(jwks, "(fuzz input)").map(drop),
    }
}

/// Reads a keys file, and the secret files it names, through `files` (so all are watched).
fn load_keys_file(files: &mut FileReads, path: &Path) -> Result<KeySet, String> {
    let text = files
        .read_to_string(path)
        .map_err(|err| format!("cannot read keys_file {}: {err}", path.display()))?;
    let file: KeysFile =
        toml::from_str(&text).map_err(|err| format!("keys_file {}: {err}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut keys = HashMap::new();
    for (i, entry) in file.keys.iter().enumerate() {
        let context = || {
            format!(
                "keys_file {}: key {} ({})",
                path.display(),
                i + 1,
                entry.kid
            )
        };
        if entry.kid.is_empty() {
            return Err(format!("{}: kid is empty", context()));
        }
        let key = entry_key(entry, dir, files).map_err(|err| format!("{}: {err}", context()))?;
        let previous = keys.insert(
            entry.kid.clone(),
            VerifyKey {
                alg: entry.alg,
                key,
            },
        );
        if previous.is_some() {
            return Err(format!("{}: kid listed twice", context()));
        }
    }
    if keys.is_empty() {
        return Err(format!("keys_file {}: no keys", path.display()));
    }
    Ok(KeySet { keys })
}

// ---- JWKS ----

/// The pinned algorithm of a JWK, or why it is skipped.
fn jwk_alg(jwk: &Jwk) -> Result<Alg, &'static str> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Err("an encryption key");
    }
    let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
        (Some(KeyAlgorithm::HS256), _) | (None, AlgorithmParameters::OctetKey(_)) => Alg::Hs256,
        (Some(KeyAlgorithm::RS256), _) | (None, AlgorithmParameters::RSA(_)) => Alg::Rs256,
        (Some(KeyAlgorithm::ES256), _) | (None, AlgorithmParameters::EllipticCurve(_)) => {
            Alg::Es256
        }
        _ => return Err("an unsupported algorithm (HS256, RS256, ES256 only)"),
    };
    // The key's type must fit the algorithm, whatever `alg` says.
    let fits = match (alg, &jwk.algorithm) {
        (Alg::Hs256, AlgorithmParameters::OctetKey(_))
        | (Alg::Rs256, AlgorithmParameters::RSA(_)) => true,
        (Alg::Es256, AlgorithmParameters::EllipticCurve(ec)) => ec.curve == EllipticCurve::P256,
        _ => false,
    };
    if fits {
        Ok(alg)
    } else {
        Err("a key type that does not fit its algorithm")
    }
}

/// Parses a JWKS; keys that cannot be used are skipped (and logged), none at all is an error.
fn parse_jwks(bytes: &[u8], origin: &str) -> Result<KeySet, String> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<Value>,
    }
    let raw: RawSet =
        serde_json::from_slice(bytes).map_err(|err| format!("JWKS {origin}: {err}"))?;
    let mut keys = HashMap::new();
    let mut skipped = Vec::new();
    for (i, value) in raw.keys.into_iter().enumerate() {
        let kid = value.get("kid").and_then(Value::as_str).map(str::to_owned);
        let name = format!("key {} ({})", i + 1, kid.as_deref().unwrap_or("no kid"));
        let Some(kid) = kid.filter(|kid| !kid.is_empty()) else {
            skipped.push(format!("{name}: no kid"));
            continue;
        };
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            skipped.push(format!("{name}: not a JWK this server reads"));
            continue;
        };
        let alg = match jwk_alg(&jwk) {
            Ok(alg) => alg,
            Err(why) => {
                skipped.push(format!("{name}: {why}"));
                continue;
            }
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            skipped.push(format!("{name}: bad key parameters"));
            continue;
        };
        if keys.contains_key(&kid) {
            skipped.push(format!("{name}: kid listed twice (the first is used)"));
            continue;
        }
        keys.insert(kid, VerifyKey { alg, key });
    }
    if !skipped.is_empty() {
        tracing::warn!(jwks = origin, skipped = %skipped.join("; "), "JWKS keys skipped");
    }
    if keys.is_empty() {
        return Err(format!("JWKS {origin}: no usable key"));
    }
    Ok(KeySet { keys })
}

// ---- key sources ----

/// A keys file or JWKS file, read again in the background when it (or a secret file it names)
/// changes; a broken edit keeps the keys in force.
struct FileSource {
    keys: Watched<KeySet>,
}

impl FileSource {
    fn load(files: &mut FileReads, path: &Path, jwks: bool) -> Result<KeySet, String> {
        if jwks {
            let bytes = files
                .read(path)
                .map_err(|err| format!("cannot read jwks_file {}: {err}", path.display()))?;
            parse_jwks(&bytes, &path.display().to_string())
        } else {
            load_keys_file(files, path)
        }
    }

    fn new(path: PathBuf, jwks: bool) -> Result<Self, String> {
        let keys = reloading::watch_files("JWT keys", move |files| Self::load(files, &path, jwks))?;
        Ok(Self { keys })
    }
}

/// A JWKS URL, fetched by a background task.
struct RemoteSource {
    url: String,
    client: reqwest::Client,
    refresh: Duration,
    keys: ArcSwapOption<KeySet>,
    /// Serialises fetches; holds when the last one started.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
    started: AtomicBool,
}

impl RemoteSource {
    fn new(url: String, refresh: Duration) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(&url).map_err(|err| format!("jwks_url {url:?}: {err}"))?;
        match parsed.scheme() {
            "https" => {}
            "http" => {
                tracing::warn!(jwks_url = %url, "jwks_url is plain http: keys could be tampered with in transit")
            }
            other => return Err(format!("jwks_url {url:?}: scheme {other:?} is not http(s)")),
        }
        // reqwest uses the process-wide rustls provider, installed at start.
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|err| format!("jwks_url: cannot build an HTTP client: {err}"))?;
        Ok(Self {
            url,
            client,
            refresh,
            keys: ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(None),
            last_error: Mutex::new(None),
            started: AtomicBool::new(false),
        })
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let failed = |err: reqwest::Error| format!("GET {}: {err}", self.url);
        let mut response = self.client.get(&self.url).send().await.map_err(failed)?;
        if !response.status().is_success() {
            return Err(format!("GET {}: status {}", self.url, response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!(
                    "GET {}: larger than {MAX_JWKS_BYTES} bytes",
                    self.url
                ));
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body, &self.url)
    }

    /// One fetch; success replaces the keys, failure keeps the last good ones.
    async fn update(&self) -> bool {
        let mut last = self.fetching.lock().await;
        self.update_locked(&mut last).await
    }

    /// [`Self::update`] with the fetch lock held.
    async fn update_locked(&self, last: &mut Option<Instant>) -> bool {
        *last = Some(Instant::now());
        let result = self.fetch().await;
        let ok = result.is_ok();
        let mut last_error = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(keys) => {
                tracing::debug!(jwks_url = %self.url, keys = keys.keys.len(), "JWKS fetched");
                self.keys.store(Some(Arc::new(keys)));
                *last_error = None;
            }
            Err(err) => {
                let kept = self.keys.load().is_some();
                tracing::warn!(error = %err, kept_last_good_keys = kept, "JWKS fetch failed");
                *last_error = Some(err);
            }
        }
        ok
    }

    /// Starts the refresh task once (inside a runtime).
    fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(refresh_jwks(weak));
    }

    /// The keys; while none was ever fetched, fetches now (at most every few seconds).
    async fn current(self: &Arc<Self>) -> Result<Arc<KeySet>, StepError> {
        self.start();
        if let Some(keys) = self.keys.load_full() {
            return Ok(keys);
        }
        {
            // Waits for a fetch in flight (the refresh task's first one, say); the lock held
            // while deciding keeps concurrent calls from fetching one after another.
            let mut last = self.fetching.lock().await;
            let due = last.is_none_or(|at| at.elapsed() >= FETCH_ON_CALL_EVERY);
            if due && self.keys.load().is_none() {
                self.update_locked(&mut last).await;
            }
        }
        self.keys.load_full().ok_or_else(|| {
            let why = self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
                .unwrap_or_else(|| "not fetched yet".into());
            StepError::new(format!("no JWKS keys available ({why})"))
        })
    }
}

/// Refreshes a JWKS until its step is dropped (a reloaded config builds new steps).
async fn refresh_jwks(remote: Weak<RemoteSource>) {
    loop {
        let Some(source) = remote.upgrade() else {
            return;
        };
        let wait = if source.update().await {
            source.refresh
        } else {
            source.refresh.min(RETRY_AFTER_FAILURE)
        };
        drop(source);
        tokio::time::sleep(wait).await;
    }
}

enum Keys {
    File(FileSource),
    Remote(Arc<RemoteSource>),
}

// ---- the step ----

/// See the module docs.
pub struct JwtAuth {
    keys: Keys,
    source: String,
    /// One validation per pinned algorithm, indexed by `Alg as usize`.
    validations: [Validation; 3],
    secret: ring::hmac::Key,
    header: String,
    cache_secs: i64,
    grants: Grants,
    claims_to_metadata: Vec<String>,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("keys", &self.source)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl JwtAuth {
    pub(super) fn build(config: &StepConfig) -> Result<Self, String> {
        let settings: JwtSettings = settings(config)?;
        settings
            .grants
            .validate()
            .map_err(|err| format!("grants: {err}"))?;
        if settings.claims_to_metadata.iter().any(|c| c == "token") {
            return Err("claims_to_metadata cannot hold \"token\" (the session token)".into());
        }
        if settings.jwks_refresh_secs.is_some() && settings.jwks_url.is_none() {
            return Err("jwks_refresh_secs is for jwks_url only".into());
        }
        let (keys, source) = match (settings.keys_file, settings.jwks_file, settings.jwks_url) {
            (Some(path), None, None) => {
                let source = format!("keys_file {}", path.display());
                (Keys::File(FileSource::new(path, false)?), source)
            }
            (None, Some(path), None) => {
                let source = format!("jwks_file {}", path.display());
                (Keys::File(FileSource::new(path, true)?), source)
            }
            (None, None, Some(url)) => {
                let refresh = settings.jwks_refresh_secs.unwrap_or(300);
                if refresh == 0 {
                    return Err("jwks_refresh_secs must be at least 1".into());
                }
                let source = format!("jwks_url {url}");
                let remote = Arc::new(RemoteSource::new(url, Duration::from_secs(refresh))?);
                // The first fetch starts now when there is a runtime to run it (not in
                // `check-config`); otherwise on the first call.
                if tokio::runtime::Handle::try_current().is_ok() {
                    remote.start();
                }
                (Keys::Remote(remote), source)
            }
            _ => return Err("set exactly one of keys_file, jwks_file, jwks_url".into()),
        };
        let secret = grants::read_secret(&settings.secret_file)?;
        let validations = Alg::ALL.map(|alg| {
            let mut validation = Validation::new(alg.algorithm());
            validation.leeway = settings.leeway_secs;
            validation.validate_nbf = true;
            let mut required = vec!["exp", "sub"];
            if let Some(issuer) = &settings.issuer {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            if let Some(audience) = &settings.audience {
                validation.set_audience(&[audience]);
                required.push("aud");
            } else {
                validation.validate_aud = false;
            }
            validation.set_required_spec_claims(&required);
            validation
        });
        Ok(Self {
            keys,
            source,
            validations,
            secret,
            header: canonical_header_name(&settings.header),
            cache_secs: settings.cache_secs.max(0),
            grants: settings.grants,
            claims_to_metadata: settings.claims_to_metadata,
        })
    }

    async fn key_set(&self) -> Result<Arc<KeySet>, StepError> {
        match &self.keys {
            Keys::File(file) => Ok(file.keys.current()),
            Keys::Remote(remote) => remote.current().await,
        }
    }

    /// The verified claims, or why the token is refused (never the token itself).
    fn verify(&self, token: &str, keys: &KeySet) -> Result<Map<String, Value>, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed")?;
        let kid = header.kid.as_deref().ok_or("no kid")?;
        let key = keys.keys.get(kid).ok_or("unknown kid")?;
        if header.alg != key.alg.algorithm() {
            return Err("algorithm differs from the key's");
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(
            token,
            &key.key,
            &self.validations[key.alg as usize],
        )
        .map_err(|err| match err.kind() {
            ErrorKind::InvalidSignature => "bad signature",
            ErrorKind::ExpiredSignature => "expired",
            ErrorKind::ImmatureSignature => "not yet valid",
            ErrorKind::InvalidIssuer => "issuer",
            ErrorKind::InvalidAudience => "audience",
            ErrorKind::InvalidAlgorithm => "algorithm",
            ErrorKind::MissingRequiredClaim(_) => "missing claim",
            _ => "malformed",
        })?;
        Ok(data.claims)
    }
}

/// A claim as session metadata: strings as they are, anything else as JSON.
fn claim_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn deny(object: &mut pb::Object, reason: &str) -> StepOutcome {
    tracing::debug!(reason, "JWT refused");
    grants::deny(object, 403, "Key not authorised");
    StepOutcome::Denied
}

#[async_trait::async_trait]
impl Step for JwtAuth {
    fn kind(&self) -> &str {
        "jwt_auth"
    }

    fn authenticates(&self) -> bool {
        true
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let Some(token) = object
            .request
            .as_ref()
            .and_then(|r| grants::credential(r, &self.header))
            .map(str::to_owned)
        else {
            grants::deny(object, 401, "Authorization field missing");
            return Ok(StepOutcome::Denied);
        };
        let keys = self.key_set().await?;
        let claims = match self.verify(&token, &keys) {
            Ok(claims) => claims,
            Err(reason) => return Ok(deny(object, reason)),
        };
        let Some(sub) = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            return Ok(deny(object, "empty sub"));
        };
        let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
        if iss.contains('\n') {
            // "iss\nsub" must name one subject only.
            return Ok(deny(object, "newline in iss"));
        }
        let Some(exp) = claims
            .get("exp")
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
        else {
            return Ok(deny(object, "exp not a number"));
        };
        let now = grants::now_secs();
        let grants = &self.grants;
        if (grants.expires > 0 && grants.expires <= now) || !grants.allows(&cx.api_id) {
            return Ok(deny(object, "not granted"));
        }
        let expires = if grants.expires > 0 {
            grants.expires.min(exp)
        } else {
            exp
        };
        let cache_until = if self.cache_secs > 0 {
            (now + self.cache_secs).min(expires)
        } else {
            0
        };
        let session_token = grants::token(&self.secret, format!("{iss}\n{sub}").as_bytes());
        let mut session = grants.session(&session_token, sub, &cx.org_id, cache_until);
        session.expires = expires;
        for name in &self.claims_to_metadata {
            if let Some(value) = claims.get(name) {
                session.metadata.insert(name.clone(), claim_text(value));
            }
        }
        grants::allow(object, session);
        Ok(StepOutcome::Allowed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use jsonwebtoken::{EncodingKey, Header, encode};

    use super::*;
    use crate::hooks::steps::tests::{cx, run_step, step_config};

    const HS_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
    const TOKEN_SECRET: &str = "0123456789abcdef0123";
    /// A 2048-bit RSA public key (its private half was thrown away).
    const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAufFO1o+rGb3DS5wi4KK7
1WDq9klGRn7xx91NklWoM4Dgoko1Ai4ymuwdqLI+VDCYSNqKHxRjZfwdQheCFBAS
hYIlKwGAiPBDPQ9uFFTErh4sxY/ZCMiPXG9kP44scEbUjBLHk6Fgz70FHjF+jzRQ
JLs+QOgb7ZygTNGr1Pbj5pUFwuLhg4+Aqic+gbgVT+VgzGew38yy8mKpPId3WkLb
ahumqpWOx0CKmMn5at2S0fl5c4hCa5yFrLQT0EtGQ1+uEJjdRCVcpW/vG8JRhR7O
IEPAhv8dcwwq+avrMyvoVH9A8jPpiPrKk/UyHx0A4luqphdaHHB8j1zmrrVZx1fn
aQIDAQAB
-----END PUBLIC KEY-----
";

    fn b64url(bytes: &[u8]) -> String {
        const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    /// A P-256 key pair: the signing key and the public PEM.
    fn ec_pair() -> (EncodingKey, rcgen::KeyPair) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        (signing, pair)
    }

    fn ec_jwk(pair: &rcgen::KeyPair, kid: &str) -> Value {
        let point = pair.public_key_raw();
        assert_eq!(point[0], 4, "uncompressed point");
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": b64url(&point[1..33]), "y": b64url(&point[33..65]),
        })
    }

    fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        encode(&header, claims, key).unwrap()
    }

    fn hs(kid: &str, claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            kid,
            &EncodingKey::from_secret(HS_SECRET.as_bytes()),
            claims,
        )
    }

    fn claims(exp_in: i64) -> Value {
        let now = grants::now_secs();
        serde_json::json!({
            "iss": "https://idp.test/", "sub": "user-42", "aud": "orders",
            "exp": now + exp_in, "iat": now, "email": "u@example.com", "scope": "read write",
            "roles": ["a", "b"],
        })
    }

    /// A directory with the token secret and `files`, and the step built with `settings`
    /// (paths in the settings relative to the directory).
    fn setup(
        files: &[(&str, &str)],
        settings: Value,
    ) -> Result<(tempfile::TempDir, JwtAuth), String> {
        // What `App::builder` does at start: a JWKS URL's client needs the provider.
        crate::tls::crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), TOKEN_SECRET).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let mut settings = settings.as_object().cloned().unwrap();
        for field in ["keys_file", "jwks_file", "secret_file"] {
            let name = settings
                .get(field)
                .and_then(Value::as_str)
                .map(str::to_owned);
            if let Some(name) = name {
                settings.insert(field.into(), dir.path().join(name).to_str().unwrap().into());
            }
        }
        settings
            .entry("secret_file")
            .or_insert_with(|| dir.path().join("secret").to_str().unwrap().into());
        settings
            .entry("grants")
            .or_insert_with(|| serde_json::json!({"apis": ["api-1"], "quota_max": 5}));
        let step = JwtAuth::build(&step_config("jwt_auth", Value::Object(settings)))?;
        Ok((dir, step))
    }

    fn hs_keys() -> String {
        format!("[[keys]]\nkid = \"hs1\"\nalg = \"HS256\"\nsecret = \"{HS_SECRET}\"\n")
    }

    fn call(token: Option<&str>) -> pb::Object {
        pb::Object {
            hook_type: pb::HookType::CustomKeyCheck as i32,
            request: Some(pb::MiniRequestObject {
                headers: token
                    .map(|t| ("Authorization".to_string(), format!("Bearer {t}")))
                    .into_iter()
                    .collect(),
                return_overrides: Some(pb::ReturnOverrides {
                    response_code: -1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn check(step: &JwtAuth, token: Option<&str>) -> (StepOutcome, pb::Object) {
        let mut object = call(token);
        let outcome = run_step(step, &mut object, &cx(pb::HookType::CustomKeyCheck)).await;
        (outcome, object)
    }

    /// The token is answered 403 in band, and `verify` refuses it for `why`.
    async fn assert_refused(step: &JwtAuth, token: &str, why: &str) {
        let keys = step.key_set().await.unwrap();
        assert_eq!(step.verify(token, &keys).err(), Some(why));
        let (outcome, object) = check(step, Some(token)).await;
        assert_eq!(outcome, StepOutcome::Denied, "{why}");
        let overrides = object.request.unwrap().return_overrides.unwrap();
        assert_eq!(overrides.response_code, 403, "{why}");
        assert_eq!(overrides.response_error, "Key not authorised");
        assert!(!overrides.response_error.contains(token));
        assert!(object.session.is_none(), "{why}");
    }

    #[tokio::test]
    async fn a_valid_hs256_token_gets_a_session_keyed_by_issuer_and_subject() {
        let (_dir, step) = setup(
            &[("keys.toml", &hs_keys())],
            serde_json::json!({
                "keys_file": "keys.toml", "issuer": "https://idp.test/", "audience": "orders",
                "claims_to_metadata": ["email", "scope", "roles", "absent"],
                "grants": {"apis": ["api-1"], "quota_max": 2, "metadata": {"team": "a"}},
            }),
        )
        .unwrap();
        let claims = claims(3600);
        let token = hs("hs1", &claims);
        let (outcome, object) = check(&step, Some(&token)).await;
        assert_eq!(outcome, StepOutcome::Allowed);
        let session = object.session.unwrap();
        let secret = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, TOKEN_SECRET.as_bytes());
        let expected = grants::token(&secret, b"https://idp.test/\nuser-42");
        assert_eq!(object.metadata.get("token"), Some(&expected));
        assert_eq!(session.metadata.get("token"), Some(&expected));
        assert_eq!(session.expires, claims["exp"].as_i64().unwrap());
        assert!(session.id_extractor_deadline > grants::now_secs());
        assert!(session.id_extractor_deadline <= grants::now_secs() + 60);
        assert_eq!(session.alias, "user-42");
        assert_eq!(session.quota_max, 2);
        assert_eq!(
            session.access_rights.keys().collect::<Vec<_>>(),
            vec!["api-1"]
        );
        let meta = |k: &str| session.metadata.get(k).map(String::as_str);
        assert_eq!(meta("email"), Some("u@example.com"));
        assert_eq!(meta("scope"), Some("read write"));
        assert_eq!(meta("roles"), Some(r#"["a","b"]"#));
        assert_eq!(meta("team"), Some("a"));
        assert_eq!(meta("absent"), None);

        // Another JWT of the same subject: the same session token.
        let mut later = claims.clone();
        later["exp"] = (grants::now_secs() + 30).into();
        let (_, object) = check(&step, Some(&hs("hs1", &later))).await;
        assert_eq!(object.metadata.get("token"), Some(&expected));
        // The cache never outlives the token.
        let session = object.session.unwrap();
        assert!(session.id_extractor_deadline <= later["exp"].as_i64().unwrap());
    }

    #[tokio::test]
    async fn expired_tokens_are_refused_beyond_the_leeway() {
        let (_dir, step) = setup(
            &[("keys.toml", &hs_keys())],
            serde_json::json!({"keys_file": "keys.toml", "leeway_secs": 30}),
        )
        .unwrap();
        let (outcome, _) = check(&step, Some(&hs("hs1", &claims(-10)))).await;
        assert_eq!(outcome, StepOutcome::Allowed, "within the leeway");
        assert_refused(&step, &hs("hs1", &claims(-120)), "expired").await;
        let mut early = claims(3600);
        early["nbf"] = (grants::now_secs() + 600).into();
        assert_refused(&step, &hs("hs1", &early), "not yet valid").await;
        let mut no_exp = claims(0);
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_refused(&step, &hs("hs1", &no_exp), "missing claim").await;
    }

    #[tokio::test]
    async fn missing_malformed_and_unknown_kid_tokens_are_refused_in_band() {
        let (_dir, step) = setup(
            &[("keys.toml", &hs_keys())],
            serde_json::json!({"keys_file": "keys.toml"}),
        )
        .unwrap();
        let (outcome, object) = check(&step, None).await;
        assert_eq!(outcome, StepOutcome::Denied);
        let overrides = object.request.unwrap().return_overrides.unwrap();
        assert_eq!(
            (overrides.response_code, overrides.response_error.as_str()),
            (401, "Authorization field missing")
        );
        assert_refused(&step, &hs("other", &claims(60)), "unknown kid").await;
        assert_refused(&step, "not.a.jwt", "malformed").await;
        let unsigned = EncodingKey::from_secret(b"a-different-secret-of-32-bytes-or-more");
        assert_refused(
            &step,
            &sign(Algorithm::HS256, "hs1", &unsigned, &claims(60)),
            "bad signature",
        )
        .await;
        let no_kid = encode(
            &Header::new(Algorithm::HS256),
            &claims(60),
            &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        )
        .unwrap();
        assert_refused(&step, &no_kid, "no kid").await;
        let mut no_sub = claims(60);
        no_sub.as_object_mut().unwrap().remove("sub");
        assert_refused(&step, &hs("hs1", &no_sub), "missing claim").await;
        // An API outside the grants.
        let mut object = call(Some(&hs("hs1", &claims(60))));
        let mut other = cx(pb::HookType::CustomKeyCheck);
        other.api_id = "api-2".into();
        assert_eq!(
            run_step(&step, &mut object, &other).await,
            StepOutcome::Denied
        );
    }

    #[tokio::test]
    async fn issuer_and_audience_are_checked_when_set() {
        let (_dir, step) = setup(
            &[("keys.toml", &hs_keys())],
            serde_json::json!({"keys_file": "keys.toml", "issuer": "https://idp.test/", "audience": "orders"}),
        )
        .unwrap();
        for (field, value, why) in [
            ("iss", Value::from("https://evil.test/"), "issuer"),
            ("aud", Value::from("billing"), "audience"),
            ("iss", Value::Null, "missing claim"),
            ("aud", Value::Null, "missing claim"),
        ] {
            let mut claims = claims(60);
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(field);
            } else {
                claims[field] = value;
            }
            assert_refused(&step, &hs("hs1", &claims), why).await;
        }
        let mut list = claims(60);
        list["aud"] = serde_json::json!(["billing", "orders"]);
        assert_eq!(
            check(&step, Some(&hs("hs1", &list))).await.0,
            StepOutcome::Allowed
        );
    }

    #[tokio::test]
    async fn es256_and_rs256_keys_from_pem_with_the_algorithm_pinned() {
        let (signing, pair) = ec_pair();
        let keys = format!(
            "[[keys]]\nkid = \"ec1\"\nalg = \"ES256\"\npem = '''\n{}'''\n\
             [[keys]]\nkid = \"rsa1\"\nalg = \"RS256\"\npem = '''\n{RSA_PUBLIC_PEM}'''\n\
             [[keys]]\nkid = \"hs1\"\nalg = \"HS256\"\nsecret_file = \"hs.key\"\n",
            pair.public_key_pem()
        );
        let (_dir, step) = setup(
            &[("keys.toml", &keys), ("hs.key", &format!("{HS_SECRET}\n"))],
            serde_json::json!({"keys_file": "keys.toml"}),
        )
        .unwrap();
        let token = sign(Algorithm::ES256, "ec1", &signing, &claims(60));
        assert_eq!(check(&step, Some(&token)).await.0, StepOutcome::Allowed);
        assert_eq!(
            check(&step, Some(&hs("hs1", &claims(60)))).await.0,
            StepOutcome::Allowed,
            "secret_file relative to the keys file"
        );
        // Alg confusion: the public key used as an HMAC secret, the header naming HS256.
        for (kid, pem) in [
            ("rsa1", RSA_PUBLIC_PEM.to_string()),
            ("ec1", pair.public_key_pem()),
        ] {
            let forged = sign(
                Algorithm::HS256,
                kid,
                &EncodingKey::from_secret(pem.as_bytes()),
                &claims(60),
            );
            assert_refused(&step, &forged, "algorithm differs from the key's").await;
        }
        // A token signed by the ES256 key but naming another kid's algorithm.
        let wrong = sign(Algorithm::ES256, "rsa1", &signing, &claims(60));
        assert_refused(&step, &wrong, "algorithm differs from the key's").await;
    }

    #[test]
    fn bad_settings_and_key_files_are_refused_with_clear_messages() {
        let err = |files: &[(&str, &str)], settings: Value| setup(files, settings).unwrap_err();
        let hs = hs_keys();
        let keys = [("keys.toml", hs.as_str())];
        assert_eq!(
            err(&keys, serde_json::json!({})),
            "set exactly one of keys_file, jwks_file, jwks_url"
        );
        assert_eq!(
            err(
                &keys,
                serde_json::json!({"keys_file": "keys.toml", "jwks_url": "https://x/"})
            ),
            "set exactly one of keys_file, jwks_file, jwks_url"
        );
        assert!(
            err(
                &keys,
                serde_json::json!({"keys_file": "keys.toml", "issuers": "x"})
            )
            .contains("unknown field `issuers`")
        );
        assert!(
            err(
                &keys,
                serde_json::json!({"keys_file": "keys.toml", "grants": {"apis": []}})
            )
            .starts_with("grants: apis is empty")
        );
        let short = [(
            "keys.toml",
            "[[keys]]\nkid = \"a\"\nalg = \"HS256\"\nsecret = \"short\"\n",
        )];
        let e = err(&short, serde_json::json!({"keys_file": "keys.toml"}));
        assert!(
            e.contains("key 1 (a): HS256 secret holds fewer than 32 bytes"),
            "{e}"
        );
        let bad_alg = [(
            "keys.toml",
            "[[keys]]\nkid = \"a\"\nalg = \"none\"\nsecret = \"x\"\n",
        )];
        let e = err(&bad_alg, serde_json::json!({"keys_file": "keys.toml"}));
        assert!(e.contains("unknown variant `none`"), "{e}");
        let private = format!(
            "[[keys]]\nkid = \"a\"\nalg = \"ES256\"\npem = '''\n{}'''\n",
            ec_pair().1.serialize_pem()
        );
        let e = err(
            &[("keys.toml", &private)],
            serde_json::json!({"keys_file": "keys.toml"}),
        );
        assert!(e.contains("pem holds a private key"), "{e}");
        let mixed = format!("[[keys]]\nkid = \"a\"\nalg = \"RS256\"\nsecret = \"{HS_SECRET}\"\n");
        let e = err(
            &[("keys.toml", &mixed)],
            serde_json::json!({"keys_file": "keys.toml"}),
        );
        assert!(e.contains("RS256 and ES256 take pem"), "{e}");
        let e = err(
            &keys,
            serde_json::json!({"keys_file": "keys.toml", "secret_file": "nope"}),
        );
        assert!(e.starts_with("cannot read secret_file "), "{e}");
        let e = err(&[], serde_json::json!({"jwks_url": "ftp://x/keys"}));
        assert!(e.contains("is not http(s)"), "{e}");
        // Outside a runtime (check-config) a URL step builds without fetching.
        setup(
            &[],
            serde_json::json!({"jwks_url": "http://127.0.0.1:9/jwks"}),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn a_jwks_file_yields_its_usable_keys_only() {
        let (signing, pair) = ec_pair();
        let jwks = serde_json::json!({"keys": [
            ec_jwk(&pair, "ec1"),
            {"kty": "oct", "kid": "hs1", "alg": "HS256", "k": b64url(HS_SECRET.as_bytes())},
            {"kty": "RSA", "kid": "enc1", "use": "enc", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "OKP", "kid": "ed1", "crv": "Ed25519", "x": "AA"},
            {"kty": "weird", "kid": "w1"},
            {"kty": "oct", "kid": "hs-as-rs", "alg": "RS256", "k": "AAAA"},
        ]});
        let (dir, step) = setup(
            &[("jwks.json", &jwks.to_string())],
            serde_json::json!({"jwks_file": "jwks.json"}),
        )
        .unwrap();
        let Keys::File(file) = &step.keys else {
            panic!("a file source")
        };
        let mut kids: Vec<String> = file.keys.current().keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, ["ec1", "hs1"]);
        let token = sign(Algorithm::ES256, "ec1", &signing, &claims(60));
        assert_eq!(check(&step, Some(&token)).await.0, StepOutcome::Allowed);
        assert_eq!(
            check(&step, Some(&hs("hs1", &claims(60)))).await.0,
            StepOutcome::Allowed
        );
        let forged = sign(
            Algorithm::HS256,
            "ec1",
            &EncodingKey::from_secret(pair.public_key_pem().as_bytes()),
            &claims(60),
        );
        assert_refused(&step, &forged, "algorithm differs from the key's").await;

        // A changed file is picked up; a broken one keeps the keys in force.
        std::fs::write(dir.path().join("jwks.json"), "{\"keys\": []}").unwrap();
        file.keys.check().await;
        assert_eq!(check(&step, Some(&token)).await.0, StepOutcome::Allowed);
        let only_hs = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hs1", "k": b64url(HS_SECRET.as_bytes())},
        ]});
        std::fs::write(dir.path().join("jwks.json"), only_hs.to_string()).unwrap();
        file.keys.check().await;
        assert_refused(&step, &token, "unknown kid").await;
        assert!(
            parse_jwks(b"{\"keys\": []}", "t")
                .unwrap_err()
                .contains("no usable key")
        );
        assert!(parse_jwks(b"[]", "t").is_err());
    }

    /// A JWKS server whose answer the test changes; counts the requests.
    struct Served {
        body: Mutex<Option<String>>,
        hits: AtomicUsize,
    }

    async fn serve(served: Arc<Served>) -> String {
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(
                |axum::extract::State(s): axum::extract::State<Arc<Served>>| async move {
                    s.hits.fetch_add(1, Ordering::SeqCst);
                    match s.body.lock().unwrap().clone() {
                        Some(body) => (http::StatusCode::OK, body),
                        None => (http::StatusCode::INTERNAL_SERVER_ERROR, String::new()),
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app.with_state(served)).await });
        format!("http://{addr}/jwks")
    }

    async fn hits_past(served: &Served, count: usize) {
        for _ in 0..100 {
            if served.hits.load(Ordering::SeqCst) > count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no JWKS refresh came");
    }

    #[tokio::test]
    async fn a_jwks_url_is_fetched_refreshed_and_its_last_good_keys_kept() {
        let (signing, pair) = ec_pair();
        let (signing2, pair2) = ec_pair();
        let served = Arc::new(Served {
            body: Mutex::new(Some(
                serde_json::json!({"keys": [ec_jwk(&pair, "ec1")]}).to_string(),
            )),
            hits: AtomicUsize::new(0),
        });
        let url = serve(served.clone()).await;
        let (_dir, step) = setup(
            &[],
            serde_json::json!({"jwks_url": url, "jwks_refresh_secs": 1}),
        )
        .unwrap();
        let token = sign(Algorithm::ES256, "ec1", &signing, &claims(60));
        assert_eq!(check(&step, Some(&token)).await.0, StepOutcome::Allowed);

        // The server fails: the last good keys stay in force.
        *served.body.lock().unwrap() = None;
        let hits = served.hits.load(Ordering::SeqCst);
        hits_past(&served, hits).await;
        assert_eq!(check(&step, Some(&token)).await.0, StepOutcome::Allowed);

        // It comes back with a rotated key: the old kid goes, the new one works.
        *served.body.lock().unwrap() =
            Some(serde_json::json!({"keys": [ec_jwk(&pair2, "ec2")]}).to_string());
        let hits = served.hits.load(Ordering::SeqCst);
        hits_past(&served, hits).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rotated = sign(Algorithm::ES256, "ec2", &signing2, &claims(60));
        assert_eq!(check(&step, Some(&rotated)).await.0, StepOutcome::Allowed);
        assert_refused(&step, &token, "unknown kid").await;

        // Dropping the step ends its refresh task.
        drop(step);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let hits = served.hits.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(served.hits.load(Ordering::SeqCst), hits);
    }

    #[tokio::test]
    async fn without_any_fetched_key_the_step_fails_for_on_error_to_answer() {
        let served = Arc::new(Served {
            body: Mutex::new(None),
            hits: AtomicUsize::new(0),
        });
        let url = serve(served.clone()).await;
        let (_dir, step) = setup(&[], serde_json::json!({"jwks_url": url})).unwrap();
        let token = hs("hs1", &claims(60));
        let mut object = call(Some(&token));
        let err = step
            .run(&mut object, &cx(pb::HookType::CustomKeyCheck))
            .await
            .unwrap_err();
        assert!(err.0.starts_with("no JWKS keys available ("), "{err}");
        assert!(err.0.contains("500"), "{err}");
        assert!(!err.0.contains(&token));
        // No token at all is still a plain 401, keys or not.
        assert_eq!(check(&step, None).await.0, StepOutcome::Denied);
    }
}
