//! Built-in steps and the registry that builds steps from their configured kind.
//!
//! | kind | hook types | what it does |
//! |---|---|---|
//! | `log` | all | logs the Object as redacted JSON |
//! | `set_headers`, `delete_headers` | request hooks | request headers, through `set_headers`/`delete_headers` |
//! | `add_params`, `delete_params` | request hooks | query parameters |
//! | `rewrite_url` | request hooks | the URL's path, by regular expression |
//! | `set_method` | request hooks | the HTTP method |
//! | `respond` | all | ends the request with a status, body and headers, under conditions |
//! | `set_response_headers`, `add_response_headers`, `delete_response_headers` | Response | response headers (one value or several per name) |
//! | `api_key_auth` | CustomKeyCheck | keys from a file of SHA-256 hashes, each with grants |
//! | `jwt_auth` | CustomKeyCheck | JWTs verified with pinned keys (file, JWKS file or JWKS URL) |
//! | `config_data_headers` | request hooks | request headers from the API's `config_data` |
//! | `delay` | all | waits (fault injection: deadlines and `on_error` before a real slow step) |

mod api_key;
mod config_data;
mod fault;
pub mod grants;
mod headers;
mod jwt;
mod log;
mod params;
mod reloading;
mod respond;
mod url;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

/// The parsers of keys files and JWKS documents, for the fuzz harness and its corpus replay
/// ([`crate::fuzzing`]); not an API.
#[doc(hidden)]
pub mod parsers {
    use std::path::Path;

    /// Reads an `api_key_auth` keys file.
    ///
    /// # Errors
    /// What the step would refuse the file with.
    pub fn api_keys_file(path: &Path) -> Result<(), String> {
        super::api_key::check_keys_file(path)
    }

    /// Reads a `jwt_auth` keys file (and the secret files it names).
    ///
    /// # Errors
    /// What the step would refuse the file with.
    pub fn jwt_keys_file(path: &Path) -> Result<(), String> {
        super::jwt::check_keys(Some(path), &[])
    }

    /// Parses a JWKS document.
    ///
    /// # Errors
    /// What the step would refuse the document with.
    pub fn jwks(bytes: &[u8]) -> Result<(), String> {
        super::jwt::check_keys(None, bytes)
    }
}

use serde::de::DeserializeOwned;

use super::{
    config::StepConfig,
    step::{Step, StepError},
};
use crate::pb::{self, HookType};

pub use headers::canonical_header_name;
pub(crate) use respond::{replace_response, respond_to_request};

/// The request hooks: every type but Response.
pub const REQUEST_HOOKS: &[HookType] = &[
    HookType::Pre,
    HookType::Post,
    HookType::PostKeyAuth,
    HookType::CustomKeyCheck,
];
/// Every hook type.
pub const ALL_HOOKS: &[HookType] = &[
    HookType::Pre,
    HookType::Post,
    HookType::PostKeyAuth,
    HookType::CustomKeyCheck,
    HookType::Response,
];
/// Response hooks only.
pub const RESPONSE_HOOK: &[HookType] = &[HookType::Response];
/// Custom authentication only.
pub const AUTH_HOOK: &[HookType] = &[HookType::CustomKeyCheck];

/// Builds a step from its settings; the message of an error names what is wrong.
pub type StepFactory = Arc<dyn Fn(&StepConfig) -> Result<Arc<dyn Step>, String> + Send + Sync>;

/// A step kind: where it can act and how to build it.
#[derive(Clone)]
pub struct StepKind {
    /// Hook types the step can act on.
    pub hook_types: &'static [HookType],
    /// The builder.
    pub build: StepFactory,
}

impl std::fmt::Debug for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepKind")
            .field("hook_types", &self.hook_types)
            .finish_non_exhaustive()
    }
}

/// Step kinds by name.
#[derive(Debug, Clone)]
pub struct StepRegistry {
    kinds: HashMap<String, StepKind>,
}

/// Parses a step's settings into its own type (unknown settings are refused).
///
/// # Errors
/// serde's message, after the path of the setting it is about (`headers.X-Id: invalid type:
/// …`) when it is about one.
pub fn settings<T: DeserializeOwned>(config: &StepConfig) -> Result<T, String> {
    let value = serde_json::Value::Object(config.settings.clone());
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        if path == "." {
            err.into_inner().to_string()
        } else {
            format!("{path}: {}", err.into_inner())
        }
    })
}

/// Sets `entries` through a request's edit map (`set_headers`, `add_params`), taking each name
/// off the matching deletion list (`delete_headers`, `delete_params`).
fn set_entries(
    map: &mut BTreeMap<String, String>,
    deleted: &mut Vec<String>,
    entries: &BTreeMap<String, String>,
) {
    for (name, value) in entries {
        map.insert(name.clone(), value.clone());
        deleted.retain(|d| d != name);
    }
}

/// Puts `names` on a request's deletion list, taking them out of the matching edit map.
fn delete_entries(map: &mut BTreeMap<String, String>, deleted: &mut Vec<String>, names: &[String]) {
    for name in names {
        map.remove(name);
        if !deleted.contains(name) {
            deleted.push(name.clone());
        }
    }
}

/// The response a Response-hook step works on.
fn response_of(object: &mut pb::Object) -> Result<&mut pb::ResponseObject, StepError> {
    object
        .response
        .as_mut()
        .ok_or_else(|| StepError::new("the Object has no response"))
}

fn kind<S: Step + 'static>(
    hook_types: &'static [HookType],
    build: fn(&StepConfig) -> Result<S, String>,
) -> StepKind {
    StepKind {
        hook_types,
        build: Arc::new(move |config| build(config).map(|step| Arc::new(step) as Arc<dyn Step>)),
    }
}

impl Default for StepRegistry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl StepRegistry {
    /// The built-in kinds.
    pub fn builtin() -> Self {
        let mut kinds = HashMap::new();
        kinds.insert("log".to_string(), kind(ALL_HOOKS, log::Log::build));
        kinds.insert(
            "set_headers".to_string(),
            kind(REQUEST_HOOKS, headers::SetHeaders::build),
        );
        kinds.insert(
            "delete_headers".to_string(),
            kind(REQUEST_HOOKS, headers::DeleteHeaders::build),
        );
        kinds.insert(
            "set_response_headers".to_string(),
            kind(RESPONSE_HOOK, headers::ResponseHeaders::build_set),
        );
        kinds.insert(
            "add_response_headers".to_string(),
            kind(RESPONSE_HOOK, headers::ResponseHeaders::build_add),
        );
        kinds.insert(
            "delete_response_headers".to_string(),
            kind(RESPONSE_HOOK, headers::DeleteResponseHeaders::build),
        );
        kinds.insert(
            "add_params".to_string(),
            kind(REQUEST_HOOKS, params::AddParams::build),
        );
        kinds.insert(
            "delete_params".to_string(),
            kind(REQUEST_HOOKS, params::DeleteParams::build),
        );
        kinds.insert(
            "rewrite_url".to_string(),
            kind(REQUEST_HOOKS, url::RewriteUrl::build),
        );
        kinds.insert(
            "set_method".to_string(),
            kind(REQUEST_HOOKS, url::SetMethod::build),
        );
        kinds.insert(
            "respond".to_string(),
            kind(ALL_HOOKS, respond::Respond::build),
        );
        kinds.insert(
            "api_key_auth".to_string(),
            kind(AUTH_HOOK, api_key::ApiKeyAuth::build),
        );
        kinds.insert("jwt_auth".to_string(), kind(AUTH_HOOK, jwt::JwtAuth::build));
        kinds.insert("delay".to_string(), kind(ALL_HOOKS, fault::Delay::build));
        kinds.insert(
            "config_data_headers".to_string(),
            kind(REQUEST_HOOKS, config_data::ConfigDataHeaders::build),
        );
        Self { kinds }
    }

    /// Adds (or replaces) a kind.
    pub fn register(&mut self, name: impl Into<String>, kind: StepKind) {
        self.kinds.insert(name.into(), kind);
    }

    /// Builds the step `config` describes for a hook of `hook_type`.
    ///
    /// # Errors
    /// An unknown kind, a kind that cannot act on this hook type, or bad settings.
    pub fn build(&self, config: &StepConfig, hook_type: HookType) -> Result<Arc<dyn Step>, String> {
        let Some(kind) = self.kinds.get(&config.kind) else {
            let mut known: Vec<&str> = self.kinds.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(format!(
                "unknown step kind {:?} (known: {})",
                config.kind,
                known.join(", ")
            ));
        };
        if !kind.hook_types.contains(&hook_type) {
            let allowed: Vec<&str> = kind.hook_types.iter().map(|t| t.as_str_name()).collect();
            return Err(format!(
                "step {:?} cannot act on {} hooks (only on {})",
                config.kind,
                hook_type.as_str_name(),
                allowed.join(", ")
            ));
        }
        (kind.build)(config).map_err(|err| format!("step {:?}: {err}", config.kind))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use crate::{
        hooks::{
            config::StepConfig,
            step::{Step, StepContext, StepOutcome},
        },
        pb,
    };

    pub(crate) fn step_config(kind: &str, settings: serde_json::Value) -> StepConfig {
        StepConfig {
            kind: kind.to_string(),
            settings: settings.as_object().cloned().unwrap_or_default(),
        }
    }

    pub(crate) fn cx(hook_type: pb::HookType) -> StepContext {
        StepContext {
            hook_type,
            hook_name: Arc::from("test-hook"),
            api_id: "api-1".into(),
            org_id: "org-1".into(),
            config_data: None,
        }
    }

    pub(crate) async fn run_step(
        step: &dyn Step,
        object: &mut pb::Object,
        cx: &StepContext,
    ) -> StepOutcome {
        step.run(object, cx).await.expect("step runs")
    }

    #[test]
    fn the_registry_refuses_unknown_kinds_and_wrong_hook_types() {
        let registry = super::StepRegistry::builtin();
        let err = registry
            .build(
                &step_config("set_header", serde_json::json!({})),
                pb::HookType::Pre,
            )
            .unwrap_err();
        assert!(
            err.starts_with("unknown step kind \"set_header\" (known: "),
            "{err}"
        );
        let err = registry
            .build(
                &step_config(
                    "set_response_headers",
                    serde_json::json!({"headers": {"a": "b"}}),
                ),
                pb::HookType::Pre,
            )
            .unwrap_err();
        assert_eq!(
            err,
            "step \"set_response_headers\" cannot act on Pre hooks (only on Response)"
        );
        let err = registry
            .build(
                &step_config("set_headers", serde_json::json!({"headers": {}})),
                pb::HookType::Pre,
            )
            .unwrap_err();
        assert_eq!(err, "step \"set_headers\": needs at least one header");
    }
}
