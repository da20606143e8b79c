//! A token checked against the keys: its header names a known key of the algorithm it is signed
//! with, its signature verifies, and its claims (`exp`, `nbf`, `sub`, and `iss`/`aud` when set)
//! pass; a refusal says why, never what the token holds.

use jsonwebtoken::{Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use super::{
    JwtAuth,
    keys::{Alg, KeySet},
};

/// One validation per pinned algorithm, indexed by `Alg as usize`: `exp` and `sub` required,
/// `nbf` checked when present, `leeway_secs` of clock skew, and `iss`/`aud` when set.
pub(super) fn validations(
    leeway_secs: u64,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> [Validation; 3] {
    Alg::ALL.map(|alg| {
        let mut validation = Validation::new(alg.algorithm());
        validation.leeway = leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = audience {
            validation.set_audience(&[audience]);
            required.push("aud");
        } else {
            validation.validate_aud = false;
        }
        validation.set_required_spec_claims(&required);
        validation
    })
}

impl JwtAuth {
    /// The verified claims, or why the token is refused (never the token itself).
    pub(super) fn verify(
        &self,
        token: &str,
        keys: &KeySet,
    ) -> Result<Map<String, Value>, &'static str> {
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

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use serde_json::Value;

    use super::super::test_support::*;
    use crate::{
        hooks::{
            step::StepOutcome,
            steps::{
                grants,
                tests::{cx, run_step},
            },
        },
        pb,
    };

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
}
