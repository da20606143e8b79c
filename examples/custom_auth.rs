//! A custom authentication plugin on the tyk-dispatcher server: requests must carry
//! `X-Signature: hex(HMAC-SHA256(secret, "METHOD path"))`. It runs with everything the stock
//! server has (config, hooks, metrics, traces, drain): only the step is ours.
//!
//! Run: `cargo run --release --example custom_auth -- --config examples/custom_auth.toml`
//! with a hook such as
//!
//! ```toml
//! [[hooks]]
//! name = "SignedRequests"
//! type = "CustomKeyCheck"
//! [[hooks.steps]]
//! kind = "signed_request_auth"
//! secret_file = "/etc/tyk-dispatcher/signing-secret"
//! grants = { apis = ["04e911d3012646d97fcdd6c846fafc4b"], rate = 10.0, per = 1.0 }
//! ```

use std::{path::PathBuf, process::ExitCode};

use serde::Deserialize;
use tyk_dispatcher::{
    hooks::{
        BuildError, Step, StepConfig, StepContext, StepError, StepKind, StepOutcome,
        steps::{AUTH_HOOK, grants, settings},
    },
    pb,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    secret_file: PathBuf,
    grants: grants::Grants,
}

/// See the module docs.
struct SignedRequestAuth {
    secret: ring::hmac::Key,
    grants: grants::Grants,
}

impl std::fmt::Debug for SignedRequestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedRequestAuth").finish_non_exhaustive()
    }
}

impl SignedRequestAuth {
    fn build(config: &StepConfig) -> Result<Self, BuildError> {
        let Settings {
            secret_file,
            grants,
        } = settings(config)?;
        grants.validate()?;
        Ok(Self {
            secret: grants::read_secret(&secret_file)?,
            grants,
        })
    }
}

#[async_trait::async_trait]
impl Step for SignedRequestAuth {
    fn authenticates(&self) -> bool {
        true
    }

    async fn run(
        &self,
        object: &mut pb::Object,
        cx: &StepContext,
    ) -> Result<StepOutcome, StepError> {
        let request = object.request.clone().unwrap_or_default();
        let Some(signature) = request.headers.get("X-Signature") else {
            grants::deny(object, 401, "X-Signature missing");
            return Ok(StepOutcome::Denied);
        };
        let path = request.url.split('?').next().unwrap_or("");
        // A step's own spans are exported as children of its step span when the call is traced.
        let matches =
            tracing::info_span!("verify_signature", method = %request.method).in_scope(|| {
                let signed = format!("{} {path}", request.method);
                let expected =
                    grants::hex(ring::hmac::sign(&self.secret, signed.as_bytes()).as_ref());
                // Compare in constant time.
                expected.len() == signature.len()
                    && expected
                        .bytes()
                        .zip(signature.bytes())
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0
            });
        if !matches || !self.grants.allows(&cx.api_id) {
            grants::deny(object, 403, "Key not authorised");
            return Ok(StepOutcome::Denied);
        }
        // One session per signing secret holder: the token is stable across requests.
        let token = grants::token(&self.secret, b"signed-request-client");
        grants::allow(
            object,
            self.grants.session(&token, "signed-client", &cx.org_id, 0),
        );
        Ok(StepOutcome::Allowed)
    }
}

fn main() -> ExitCode {
    tyk_dispatcher::cli::main(|builder| {
        builder.step(StepKind::new(
            "signed_request_auth",
            AUTH_HOOK,
            SignedRequestAuth::build,
        ))
    })
}
