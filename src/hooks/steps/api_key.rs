//! `api_key_auth` (CustomKeyCheck): keys checked against a file of SHA-256 hashes, each with its
//! own grants.
//!
//! ```toml
//! [[hooks.steps]]
//! kind = "api_key_auth"
//! keys_file = "/etc/tyk-dispatcher/keys/keys.toml"      # reloaded when it changes
//! secret_file = "/etc/tyk-dispatcher/secret/token-key"  # shared by every replica
//! header = "Authorization"                              # default; a "Bearer " prefix is dropped
//! cache_secs = 60                                       # id_extractor_deadline, 0 = off
//! ```
//!
//! The keys file:
//!
//! ```toml
//! [[keys]]
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! name = "team-a"                 # the session alias; never the key
//! apis = ["04e911d3012646d97fcdd6c846fafc4b"]
//! rate = 100.0
//! per = 60.0
//! quota_max = 10000
//! quota_renewal_rate = 86400
//! expires = 0
//! policies = []
//! metadata = { team = "a" }
//! ```
//!
//! A missing key is answered 401, an unknown, expired or ungranted one 403, both through
//! `return_overrides` (the gateway's own error template and AuthFailure event). The raw key is
//! never logged, returned or stored: only its HMAC becomes the session token.

use serde::Deserialize;
use std::{collections::HashMap, path::PathBuf};

use super::{
    canonical_header_name,
    grants::{self, Grants},
    reloading, settings,
};
use crate::{
    hooks::{
        config::StepConfig,
        step::{BuildError, Step, StepContext, StepError, StepOutcome},
    },
    pb,
    watch::{FileReads, Watched},
};

fn default_header() -> String {
    "Authorization".into()
}

fn default_cache() -> i64 {
    60
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeySettings {
    keys_file: PathBuf,
    secret_file: PathBuf,
    #[serde(default = "default_header")]
    header: String,
    #[serde(default = "default_cache")]
    cache_secs: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    sha256: String,
    name: String,
    #[serde(flatten)]
    grants: Grants,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

/// Keys by the SHA-256 of the key.
#[derive(Debug, Default)]
struct KeyIndex {
    keys: HashMap<[u8; 32], (String, Grants)>,
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    // Bytes, not str slices: a multi-byte character must not split a pair (found by fuzzing).
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// [`load_keys`], for [`super::parsers`] (the fuzz harness).
pub(super) fn check_keys_file(path: &std::path::Path) -> Result<(), BuildError> {
    load_keys(&mut FileReads::default(), path).map(drop)
}

fn load_keys(files: &mut FileReads, path: &std::path::Path) -> Result<KeyIndex, BuildError> {
    let text = files
        .read_to_string(path)
        .map_err(|err| format!("cannot read keys_file {}: {err}", path.display()))?;
    let file: KeysFile =
        toml::from_str(&text).map_err(|err| format!("keys_file {}: {err}", path.display()))?;
    let mut keys = HashMap::new();
    for (i, entry) in file.keys.into_iter().enumerate() {
        let digest = parse_digest(&entry.sha256).ok_or_else(|| {
            format!(
                "keys_file {}: key {} ({}): sha256 must be 64 hex digits",
                path.display(),
                i + 1,
                entry.name
            )
        })?;
        entry.grants.validate().map_err(|err| {
            format!(
                "keys_file {}: key {} ({}): {err}",
                path.display(),
                i + 1,
                entry.name
            )
        })?;
        keys.insert(digest, (entry.name, entry.grants));
    }
    Ok(KeyIndex { keys })
}

/// See the module docs.
pub struct ApiKeyAuth {
    keys_file: PathBuf,
    keys: Watched<KeyIndex>,
    secret: ring::hmac::Key,
    header: String,
    cache_secs: i64,
}

impl std::fmt::Debug for ApiKeyAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyAuth")
            .field("keys_file", &self.keys_file)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl ApiKeyAuth {
    pub(super) fn build(config: &StepConfig) -> Result<Self, BuildError> {
        let settings: ApiKeySettings = settings(config)?;
        let keys_file = settings.keys_file.clone();
        let keys = reloading::watch_files("API keys", move |files| load_keys(files, &keys_file))?;
        let secret = grants::read_secret(&settings.secret_file)?;
        Ok(Self {
            keys,
            keys_file: settings.keys_file,
            secret,
            header: canonical_header_name(&settings.header),
            cache_secs: settings.cache_secs.max(0),
        })
    }
}

/// Constant-time equality of two digests.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[async_trait::async_trait]
impl Step for ApiKeyAuth {
    fn authenticates(&self) -> bool {
        true
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let key = match grants::require_credential(object, &self.header) {
            Ok(key) => key,
            Err(denied) => return Ok(denied),
        };
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
            .as_ref()
            .try_into()
            .map_err(|_| StepError::new("SHA-256 gave an unexpected length"))?;
        let keys = self.keys.current();
        let found = keys
            .keys
            .get_key_value(&digest)
            .filter(|(stored, _)| same(stored, &digest))
            .map(|(_, entry)| entry);
        let Some((name, grants)) = found else {
            grants::deny(object, 403, "Key not authorised");
            return Ok(StepOutcome::Denied);
        };
        let now = grants::now_secs();
        if (grants.expires > 0 && grants.expires <= now) || !grants.allows(&cx.api_id) {
            grants::deny(object, 403, "Key not authorised");
            return Ok(StepOutcome::Denied);
        }
        let token = grants::token(&self.secret, key.as_bytes());
        let cache_until = if self.cache_secs > 0 {
            now + self.cache_secs
        } else {
            0
        };
        grants::allow(
            object,
            grants.session(&token, name, &cx.org_id, cache_until),
        );
        Ok(StepOutcome::Allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_64_hex_digits_and_anything_else_is_refused_without_panicking() {
        let good = "fe99c07d02875eb2808e353938d44435c98350d4cf93f0618393366de6214af0";
        assert_eq!(parse_digest(good).map(|d| d[0]), Some(0xfe));
        assert_eq!(
            parse_digest(&good.to_uppercase()).map(|d| d[31]),
            Some(0xf0)
        );
        // 64 bytes with a two-byte character straddling a pair (the fuzzer's find), wrong
        // lengths and non-hex digits.
        for bad in [
            "fe99c07\u{19c}02875eb2808e353938d44435c98350d4cf93f0618393366de6214af",
            &good[..62],
            &format!("{good}00"),
            &good.replace('f', "g"),
        ] {
            assert_eq!(parse_digest(bad), None, "{bad}");
        }
    }
    use crate::hooks::steps::tests::{auth_call, cx, run_step, step_config};

    fn sha(key: &str) -> String {
        crate::hex::encode(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref())
    }

    fn setup(keys: &str) -> (tempfile::TempDir, ApiKeyAuth) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keys.toml"), keys).unwrap();
        std::fs::write(dir.path().join("secret"), "0123456789abcdef0123").unwrap();
        let step = ApiKeyAuth::build(&step_config(
            "api_key_auth",
            serde_json::json!({
                "keys_file": dir.path().join("keys.toml"),
                "secret_file": dir.path().join("secret"),
            }),
        ))
        .unwrap();
        (dir, step)
    }

    fn call(key: Option<&str>) -> pb::Object {
        auth_call(key.map(str::to_string))
    }

    #[tokio::test]
    async fn the_right_key_gets_a_session_with_exactly_its_grants() {
        let keys = format!(
            "[[keys]]\nsha256 = \"{}\"\nname = \"team-a\"\napis = [\"api-1\"]\nquota_max = 2\n",
            sha("s3cret-key")
        );
        let (_dir, step) = setup(&keys);
        let mut object = call(Some("Bearer s3cret-key"));
        assert_eq!(
            run_step(&step, &mut object, &cx(pb::HookType::CustomKeyCheck)).await,
            StepOutcome::Allowed
        );
        let session = object.session.unwrap();
        assert_eq!(
            session.access_rights.keys().collect::<Vec<_>>(),
            vec!["api-1"]
        );
        assert_eq!(session.quota_max, 2);
        assert_eq!(session.alias, "team-a");
        let token = object.metadata.get("token").unwrap();
        assert_eq!(token.len(), 64);
        assert!(!token.contains("s3cret-key"));
        assert!(session.id_extractor_deadline > grants::now_secs());
    }

    #[tokio::test]
    async fn missing_wrong_and_ungranted_keys_are_refused_in_band() {
        let keys = format!(
            "[[keys]]\nsha256 = \"{}\"\nname = \"team-a\"\napis = [\"other-api\"]\n",
            sha("k1")
        );
        let (_dir, step) = setup(&keys);
        for (key, status) in [(None, 401), (Some("nope"), 403), (Some("k1"), 403)] {
            let mut object = call(key);
            assert_eq!(
                run_step(&step, &mut object, &cx(pb::HookType::CustomKeyCheck)).await,
                StepOutcome::Denied
            );
            let overrides = object.request.unwrap().return_overrides.unwrap();
            assert_eq!(overrides.response_code, status, "{key:?}");
            assert!(!overrides.override_error);
            assert!(object.session.is_none());
        }
    }

    #[test]
    fn bad_files_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("keys.toml"),
            "[[keys]]\nsha256 = \"xyz\"\nname = \"a\"\napis = [\"x\"]\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("secret"), "0123456789abcdef").unwrap();
        let err = ApiKeyAuth::build(&step_config(
            "api_key_auth",
            serde_json::json!({"keys_file": dir.path().join("keys.toml"), "secret_file": dir.path().join("secret")}),
        ))
        .unwrap_err().to_string();
        assert!(
            err.contains("keys.toml: key 1 (a): sha256 must be 64 hex digits"),
            "{err}"
        );
        std::fs::write(
            dir.path().join("keys.toml"),
            format!(
                "[[keys]]\nsha256 = \"{}\"\nname = \"a\"\napis = [\"x\"]\n",
                sha("k")
            ),
        )
        .unwrap();
        let err = ApiKeyAuth::build(&step_config(
            "api_key_auth",
            serde_json::json!({"keys_file": dir.path().join("keys.toml"), "secret_file": dir.path().join("missing")}),
        ))
        .unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read secret_file ") && err.contains("missing"),
            "{err}"
        );
    }
}
