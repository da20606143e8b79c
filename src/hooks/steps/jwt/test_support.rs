//! What the jwt_auth tests share: keys, tokens, a step built in a scratch directory, calls.

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::Value;

use super::JwtAuth;
use crate::{
    hooks::{
        step::StepOutcome,
        steps::{
            grants,
            tests::{auth_call, cx, run_step, step_config},
        },
    },
    pb,
};

pub(super) const HS_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
pub(super) const TOKEN_SECRET: &str = "0123456789abcdef0123";
/// A 2048-bit RSA public key (its private half was thrown away).
pub(super) const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAufFO1o+rGb3DS5wi4KK7
1WDq9klGRn7xx91NklWoM4Dgoko1Ai4ymuwdqLI+VDCYSNqKHxRjZfwdQheCFBAS
hYIlKwGAiPBDPQ9uFFTErh4sxY/ZCMiPXG9kP44scEbUjBLHk6Fgz70FHjF+jzRQ
JLs+QOgb7ZygTNGr1Pbj5pUFwuLhg4+Aqic+gbgVT+VgzGew38yy8mKpPId3WkLb
ahumqpWOx0CKmMn5at2S0fl5c4hCa5yFrLQT0EtGQ1+uEJjdRCVcpW/vG8JRhR7O
IEPAhv8dcwwq+avrMyvoVH9A8jPpiPrKk/UyHx0A4luqphdaHHB8j1zmrrVZx1fn
aQIDAQAB
-----END PUBLIC KEY-----
";

pub(super) fn b64url(bytes: &[u8]) -> String {
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
pub(super) fn ec_pair() -> (EncodingKey, rcgen::KeyPair) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    (signing, pair)
}

pub(super) fn ec_jwk(pair: &rcgen::KeyPair, kid: &str) -> Value {
    let point = pair.public_key_raw();
    assert_eq!(point[0], 4, "uncompressed point");
    serde_json::json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
        "x": b64url(&point[1..33]), "y": b64url(&point[33..65]),
    })
}

pub(super) fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    encode(&header, claims, key).unwrap()
}

pub(super) fn hs(kid: &str, claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        kid,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        claims,
    )
}

pub(super) fn claims(exp_in: i64) -> Value {
    let now = grants::now_secs();
    serde_json::json!({
        "iss": "https://idp.test/", "sub": "user-42", "aud": "orders",
        "exp": now + exp_in, "iat": now, "email": "u@example.com", "scope": "read write",
        "roles": ["a", "b"],
    })
}

/// A directory with the token secret and `files`, and the step built with `settings`
/// (paths in the settings relative to the directory).
pub(super) fn setup(
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
    let step = JwtAuth::build(&step_config("jwt_auth", Value::Object(settings)))
        .map_err(|err| err.to_string())?;
    Ok((dir, step))
}

pub(super) fn hs_keys() -> String {
    format!("[[keys]]\nkid = \"hs1\"\nalg = \"HS256\"\nsecret = \"{HS_SECRET}\"\n")
}

pub(super) fn call(token: Option<&str>) -> pb::Object {
    auth_call(token.map(|t| format!("Bearer {t}")))
}

pub(super) async fn check(step: &JwtAuth, token: Option<&str>) -> (StepOutcome, pb::Object) {
    let mut object = call(token);
    let outcome = run_step(step, &mut object, &cx(pb::HookType::CustomKeyCheck)).await;
    (outcome, object)
}

/// The token is answered 403 in band, and `verify` refuses it for `why`.
pub(super) async fn assert_refused(step: &JwtAuth, token: &str, why: &str) {
    let keys = step.key_set(None).await.unwrap();
    assert_eq!(step.verify(token, &keys).err(), Some(why));
    let (outcome, object) = check(step, Some(token)).await;
    assert_eq!(outcome, StepOutcome::Denied, "{why}");
    let overrides = object.request.unwrap().return_overrides.unwrap();
    assert_eq!(overrides.response_code, 403, "{why}");
    assert_eq!(overrides.response_error, "Key not authorised");
    assert!(!overrides.response_error.contains(token));
    assert!(object.session.is_none(), "{why}");
}
