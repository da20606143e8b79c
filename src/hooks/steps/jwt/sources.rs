//! Where a step's keys come from: a keys file or JWKS file, read again in the background when it
//! changes ([`crate::watch`]), or a JWKS URL, fetched by a background task and refreshed.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;

use super::keys::{KeySet, load_keys_file, parse_jwks};
use crate::{
    hooks::{
        recorded::Recorded,
        step::{BuildError, StepError},
        steps::reloading,
    },
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

/// A keys file or JWKS file, read again in the background when it (or a secret file it names)
/// changes; a broken edit keeps the keys in force.
pub(super) struct FileSource {
    pub(super) keys: Watched<KeySet>,
}

impl FileSource {
    fn load(files: &mut FileReads, path: &Path, jwks: bool) -> Result<KeySet, BuildError> {
        if jwks {
            let bytes = files
                .read(path)
                .map_err(|err| format!("cannot read jwks_file {}: {err}", path.display()))?;
            parse_jwks(&bytes, &path.display().to_string())
        } else {
            load_keys_file(files, path)
        }
    }

    fn new(path: PathBuf, jwks: bool) -> Result<Self, BuildError> {
        let keys = reloading::watch_files("JWT keys", move |files| Self::load(files, &path, jwks))?;
        Ok(Self { keys })
    }
}

/// A JWKS URL, fetched by a background task.
pub(super) struct RemoteSource {
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
    fn new(url: String, refresh: Duration) -> Result<Self, BuildError> {
        let parsed = reqwest::Url::parse(&url).map_err(|err| format!("jwks_url {url:?}: {err}"))?;
        match parsed.scheme() {
            "https" => {}
            "http" => {
                tracing::warn!(jwks_url = %url, "jwks_url is plain http: keys could be tampered with in transit")
            }
            other => {
                return Err(format!("jwks_url {url:?}: scheme {other:?} is not http(s)").into());
            }
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

    async fn fetch(&self) -> Result<KeySet, BuildError> {
        let failed = |err: reqwest::Error| format!("GET {}: {err}", self.url);
        let mut response = self.client.get(&self.url).send().await.map_err(failed)?;
        if !response.status().is_success() {
            return Err(format!("GET {}: status {}", self.url, response.status()).into());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("GET {}: larger than {MAX_JWKS_BYTES} bytes", self.url).into());
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
                *last_error = Some(err.to_string());
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

/// The step's key source.
pub(super) enum Keys {
    File(FileSource),
    Remote(Arc<RemoteSource>),
}

impl Keys {
    /// The one source the settings name, and how to name it in logs.
    pub(super) fn new(
        keys_file: Option<PathBuf>,
        jwks_file: Option<PathBuf>,
        jwks_url: Option<String>,
        jwks_refresh_secs: Option<u64>,
    ) -> Result<(Self, String), BuildError> {
        if jwks_refresh_secs.is_some() && jwks_url.is_none() {
            return Err("jwks_refresh_secs is for jwks_url only".into());
        }
        Ok(match (keys_file, jwks_file, jwks_url) {
            (Some(path), None, None) => {
                let source = format!("keys_file {}", path.display());
                (Self::File(FileSource::new(path, false)?), source)
            }
            (None, Some(path), None) => {
                let source = format!("jwks_file {}", path.display());
                (Self::File(FileSource::new(path, true)?), source)
            }
            (None, None, Some(url)) => {
                let refresh = jwks_refresh_secs.unwrap_or(300);
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
                (Self::Remote(remote), source)
            }
            _ => return Err("set exactly one of keys_file, jwks_file, jwks_url".into()),
        })
    }

    /// The keys in force; offline (`recorded` answers), a JWKS URL's are the answer recorded
    /// for `GET` on it.
    pub(super) async fn current(
        &self,
        recorded: Option<&Recorded>,
    ) -> Result<Arc<KeySet>, StepError> {
        match (self, recorded) {
            (Self::File(file), _) => Ok(file.keys.current()),
            (Self::Remote(remote), Some(recorded)) => {
                let answer = recorded.answer("GET", &remote.url)?;
                if !(200..300).contains(&answer.status) {
                    return Err(StepError::new(format!(
                        "GET {}: status {}",
                        remote.url, answer.status
                    )));
                }
                parse_jwks(&answer.body_bytes(), &remote.url)
                    .map(Arc::new)
                    .map_err(|err| StepError::new(err.to_string()))
            }
            (Self::Remote(remote), None) => remote.current().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use jsonwebtoken::{Algorithm, EncodingKey};

    use super::{super::test_support::*, *};
    use crate::{
        hooks::{step::Step, step::StepOutcome, steps::tests::cx},
        pb,
    };

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
                .to_string()
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
    async fn offline_a_jwks_url_is_the_answer_recorded_for_it() {
        // Built outside a runtime: no background fetch starts, and none may.
        let (_dir, step) = std::thread::spawn(|| {
            setup(
                &[],
                serde_json::json!({"jwks_url": "https://idp.invalid/jwks"}),
            )
            .unwrap()
        })
        .join()
        .unwrap();
        let jwks = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hs1", "alg": "HS256", "k": b64url(HS_SECRET.as_bytes())},
        ]});
        let answer = |status: u16| crate::hooks::recorded::RecordedAnswer {
            method: "GET".into(),
            url: "https://idp.invalid/jwks".into(),
            status,
            headers: Default::default(),
            body: jwks.clone(),
        };
        let offline = |answers| {
            let mut cx = cx(pb::HookType::CustomKeyCheck);
            cx.recorded = Some(Arc::new(Recorded::new(answers)));
            cx
        };
        let token = hs("hs1", &claims(60));
        let mut object = call(Some(&token));
        let outcome = step.run(&mut object, &offline(vec![answer(200)])).await;
        assert_eq!(outcome.unwrap(), StepOutcome::Allowed);
        let err = step
            .run(&mut call(Some(&token)), &offline(vec![]))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no answer recorded for GET https://idp.invalid/jwks (offline runs do not reach the network)"
        );
        let err = step
            .run(&mut call(Some(&token)), &offline(vec![answer(503)]))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(err, "GET https://idp.invalid/jwks: status 503");
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
        assert!(
            err.message().starts_with("no JWKS keys available ("),
            "{err}"
        );
        assert!(err.message().contains("500"), "{err}");
        assert!(!err.message().contains(&token));
        // No token at all is still a plain 401, keys or not.
        assert_eq!(check(&step, None).await.0, StepOutcome::Denied);
    }
}
