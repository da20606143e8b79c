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
//! Code: `keys` (key types, the keys file, JWKS documents), `sources` (where the keys come from:
//! a watched file or a fetched URL), `token` (verifying a token and its claims).
//!
//! No token is answered 401 and any invalid one 403, both through `return_overrides`. The token
//! is never logged or returned; refusals are logged at debug level with a reason only.

mod keys;
mod sources;
#[cfg(test)]
mod test_support;
mod token;

use std::{path::PathBuf, sync::Arc};

use jsonwebtoken::Validation;
use serde::Deserialize;
use serde_json::Value;

use keys::KeySet;
pub(super) use keys::check_keys;
use sources::Keys;

use super::{
    canonical_header_name,
    grants::{self, Grants},
    settings,
};
use crate::{
    hooks::{
        config::StepConfig,
        recorded::Recorded,
        step::{BuildError, Step, StepContext, StepError, StepOutcome},
    },
    pb,
};

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
    pub(super) fn build(config: &StepConfig) -> Result<Self, BuildError> {
        let settings: JwtSettings = settings(config)?;
        settings
            .grants
            .validate()
            .map_err(|err| BuildError::at("grants", err.message))?;
        if settings.claims_to_metadata.iter().any(|c| c == "token") {
            return Err("claims_to_metadata cannot hold \"token\" (the session token)".into());
        }
        let (keys, source) = Keys::new(
            settings.keys_file,
            settings.jwks_file,
            settings.jwks_url,
            settings.jwks_refresh_secs,
        )?;
        let secret = grants::read_secret(&settings.secret_file)?;
        let validations = token::validations(
            settings.leeway_secs,
            settings.issuer.as_deref(),
            settings.audience.as_deref(),
        );
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

    async fn key_set(&self, recorded: Option<&Recorded>) -> Result<Arc<KeySet>, StepError> {
        self.keys.current(recorded).await
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
    fn authenticates(&self) -> bool {
        true
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let token = match grants::require_credential(object, &self.header) {
            Ok(token) => token,
            Err(denied) => return Ok(denied),
        };
        let keys = self.key_set(cx.recorded.as_deref()).await?;
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
    use super::{test_support::*, *};

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
}
