//! What an authenticated key may do, and the session that tells the gateway so.
//!
//! A session without access rights opens every API, so the session always lists exactly the
//! granted APIs. Its token (`metadata["token"]`) is derived from the credential with an HMAC
//! under a secret every replica shares: all pods agree on it (quotas and rate limits are not
//! split per pod), and the raw credential never becomes a key in the gateway's Redis.

use std::{collections::BTreeMap, path::Path, time::SystemTime};

use serde::Deserialize;

use crate::{
    hooks::{BuildError, StepOutcome},
    pb,
};

/// A credential's grants.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// API IDs the credential may call (required: an empty list would open every API).
    pub apis: Vec<String>,
    /// Requests allowed per `per` seconds (0: the gateway's default, unlimited).
    #[serde(default)]
    pub rate: f64,
    /// The rate window, seconds.
    #[serde(default)]
    pub per: f64,
    /// Requests per quota period (0: no quota).
    #[serde(default)]
    pub quota_max: i64,
    /// Quota period, seconds.
    #[serde(default)]
    pub quota_renewal_rate: i64,
    /// Unix time the credential expires (0: never).
    #[serde(default)]
    pub expires: i64,
    /// Tyk policies to apply.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Session metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Grants {
    /// Checks the grants.
    ///
    /// # Errors
    /// When no API is granted.
    pub fn validate(&self) -> Result<(), BuildError> {
        if self.apis.is_empty() {
            return Err(BuildError::new(
                "apis is empty (a session without APIs would open every API)",
            ));
        }
        Ok(())
    }

    /// Whether `api_id` is granted.
    pub fn allows(&self, api_id: &str) -> bool {
        self.apis.iter().any(|id| id == api_id)
    }

    /// The session for these grants.
    pub fn session(
        &self,
        token: &str,
        alias: &str,
        org_id: &str,
        cache_until: i64,
    ) -> pb::SessionState {
        let mut metadata: std::collections::BTreeMap<String, String> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        metadata.insert("token".into(), token.to_string());
        pb::SessionState {
            rate: self.rate,
            per: self.per,
            allowance: self.rate,
            quota_max: self.quota_max,
            quota_remaining: self.quota_max,
            quota_renewal_rate: self.quota_renewal_rate,
            expires: self.expires,
            org_id: org_id.to_string(),
            alias: alias.to_string(),
            apply_policies: self.policies.clone(),
            metadata,
            id_extractor_deadline: cache_until,
            access_rights: self
                .apis
                .iter()
                .map(|api| {
                    (
                        api.clone(),
                        pb::AccessDefinition {
                            api_id: api.clone(),
                            versions: vec!["Default".into()],
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }
}

/// The credential in request header `header` (Go canonical name), without a `Bearer ` prefix.
pub fn credential<'a>(request: &'a pb::MiniRequestObject, header: &str) -> Option<&'a str> {
    let value = super::headers::request_header(request, header)?.trim();
    let value = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .unwrap_or(value)
        .trim();
    (!value.is_empty()).then_some(value)
}

/// The credential in request header `header` (see [`credential`]), or the call refused with
/// 401 and the gateway's own message when there is none: `Err` holds the outcome to return.
///
/// # Errors
/// [`StepOutcome::Denied`] when the request carries no credential.
pub fn require_credential(object: &mut pb::Object, header: &str) -> Result<String, StepOutcome> {
    match object.request.as_ref().and_then(|r| credential(r, header)) {
        Some(value) => Ok(value.to_owned()),
        None => {
            deny(object, 401, "Authorization field missing");
            Err(StepOutcome::Denied)
        }
    }
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The shared token secret, from a required file.
///
/// # Errors
/// What is wrong, naming the file (never its content).
pub fn read_secret(path: &Path) -> Result<ring::hmac::Key, BuildError> {
    let secret = std::fs::read(path).map_err(|err| {
        BuildError::new(format!("cannot read secret_file {}: {err}", path.display())).caused_by(err)
    })?;
    let trimmed = secret.trim_ascii();
    if trimmed.len() < 16 {
        return Err(BuildError::new(format!(
            "secret_file {} holds fewer than 16 bytes",
            path.display()
        )));
    }
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, trimmed))
}

/// The session token of a credential: HMAC-SHA256 under the shared secret, hex.
pub fn token(secret: &ring::hmac::Key, credential: &[u8]) -> String {
    hex(ring::hmac::sign(secret, credential).as_ref())
}

/// Lower-case hex, for custom steps that make tokens of their own: [`crate::hex::encode`].
pub use crate::hex::encode as hex;

/// Ends a custom-authentication call with a refusal, through `return_overrides` without
/// `override_error`: the gateway answers with its own error template and fires AuthFailure, as
/// for its built-in authentication.
pub fn deny(object: &mut pb::Object, status: u16, message: &str) {
    let request = object.request.get_or_insert_with(Default::default);
    let overrides = request
        .return_overrides
        .get_or_insert_with(Default::default);
    overrides.response_code = i32::from(status);
    overrides.response_error = message.to_string();
    overrides.override_error = false;
}

/// Accepts a custom-authentication call: the session, and the token where the gateway reads it.
pub fn allow(object: &mut pb::Object, session: pb::SessionState) {
    let token = session.metadata.get("token").cloned().unwrap_or_default();
    object.metadata.insert("token".into(), token);
    object.session = Some(session);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_list_exactly_the_granted_apis_and_carry_the_token() {
        let grants = Grants {
            apis: vec!["a".into(), "b".into()],
            rate: 10.0,
            per: 1.0,
            quota_max: 2,
            ..Default::default()
        };
        let session = grants.session("tok", "team", "org", 99);
        let mut apis: Vec<&String> = session.access_rights.keys().collect();
        apis.sort();
        assert_eq!(apis, vec!["a", "b"]);
        assert_eq!(
            session.metadata.get("token").map(String::as_str),
            Some("tok")
        );
        assert_eq!(
            (
                session.quota_max,
                session.quota_remaining,
                session.id_extractor_deadline
            ),
            (2, 2, 99)
        );
        assert!(Grants::default().validate().is_err());
    }

    #[test]
    fn tokens_are_keyed_hmacs() {
        let a = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"0123456789abcdef");
        let b = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"fedcba9876543210");
        assert_eq!(token(&a, b"key").len(), 64);
        assert_eq!(token(&a, b"key"), token(&a, b"key"));
        assert_ne!(token(&a, b"key"), token(&b, b"key"));
    }
}
