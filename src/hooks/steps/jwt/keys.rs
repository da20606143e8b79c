//! Verification keys, each pinned to one algorithm: from the keys file (TOML, with secrets inline
//! or in files of their own) or from a JWKS document.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};
use serde::Deserialize;
use serde_json::Value;

use crate::{hooks::BuildError, watch::FileReads};

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash.
const MIN_HMAC_KEY_BYTES: usize = 32;

/// The algorithms a key can be pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(super) enum Alg {
    #[serde(rename = "HS256")]
    Hs256 = 0,
    #[serde(rename = "RS256")]
    Rs256 = 1,
    #[serde(rename = "ES256")]
    Es256 = 2,
}

impl Alg {
    pub(super) const ALL: [Self; 3] = [Self::Hs256, Self::Rs256, Self::Es256];

    pub(super) fn algorithm(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
        }
    }
}

/// A verification key and the one algorithm it accepts.
#[derive(Clone)]
pub(super) struct VerifyKey {
    pub(super) alg: Alg,
    pub(super) key: DecodingKey,
}

/// Keys by `kid`.
#[derive(Clone, Default)]
pub(super) struct KeySet {
    pub(super) keys: HashMap<String, VerifyKey>,
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
fn entry_key(
    entry: &KeyEntry,
    dir: &Path,
    files: &mut FileReads,
) -> Result<DecodingKey, BuildError> {
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
                return Err(
                    format!("HS256 secret holds fewer than {MIN_HMAC_KEY_BYTES} bytes").into(),
                );
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
            key.map_err(|err| {
                BuildError::new(format!("pem is not a {:?} public key: {err}", entry.alg))
                    .caused_by(err)
            })
        }
        (Alg::Hs256, ..) => Err("HS256 takes secret or secret_file, not pem".into()),
        _ => Err("RS256 and ES256 take pem (the public key), not a secret".into()),
    }
}

/// [`load_keys_file`] and [`parse_jwks`], for [`crate::hooks::steps::parsers`] (the fuzz
/// harness).
pub(in crate::hooks::steps) fn check_keys(
    path: Option<&Path>,
    jwks: &[u8],
) -> Result<(), BuildError> {
    match path {
        Some(path) => load_keys_file(&mut FileReads::default(), path).map(drop),
        None => parse_jwks(jwks, "(fuzz input)").map(drop),
    }
}

/// Reads a keys file, and the secret files it names, through `files` (so all are watched).
pub(super) fn load_keys_file(files: &mut FileReads, path: &Path) -> Result<KeySet, BuildError> {
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
            return Err(format!("{}: kid is empty", context()).into());
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
            return Err(format!("{}: kid listed twice", context()).into());
        }
    }
    if keys.is_empty() {
        return Err(format!("keys_file {}: no keys", path.display()).into());
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
pub(super) fn parse_jwks(bytes: &[u8], origin: &str) -> Result<KeySet, BuildError> {
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
        return Err(format!("JWKS {origin}: no usable key").into());
    }
    Ok(KeySet { keys })
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Algorithm, EncodingKey};

    use super::super::test_support::*;
    use crate::hooks::step::StepOutcome;

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
}
