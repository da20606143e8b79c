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
//! | `authorize` | request hooks | allows or denies on a CEL expression, with a configurable denial |
//! | `opa_authorize`, `http_authorize` | request hooks | asks an OPA server (Data API) or any HTTP decision service |
//! | `delay` | all | waits (fault injection: deadlines and `on_error` before a real slow step) |

mod api_key;
mod authorize;
mod config_data;
mod decision;
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

    use crate::hooks::BuildError;

    /// Reads an `api_key_auth` keys file.
    ///
    /// # Errors
    /// What the step would refuse the file with.
    pub fn api_keys_file(path: &Path) -> Result<(), BuildError> {
        super::api_key::check_keys_file(path)
    }

    /// Reads a `jwt_auth` keys file (and the secret files it names).
    ///
    /// # Errors
    /// What the step would refuse the file with.
    pub fn jwt_keys_file(path: &Path) -> Result<(), BuildError> {
        super::jwt::check_keys(Some(path), &[])
    }

    /// Parses a JWKS document.
    ///
    /// # Errors
    /// What the step would refuse the document with.
    pub fn jwks(bytes: &[u8]) -> Result<(), BuildError> {
        super::jwt::check_keys(None, bytes)
    }
}

use serde::de::DeserializeOwned;

use super::{
    cel::Scope,
    config::StepConfig,
    step::{BuildError, Step, StepError},
};
use crate::pb::{self, HookType};

pub use headers::{canonical_header_name, is_canonical_header_name};
pub(crate) use headers::{request_header, upstream_headers};
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

/// Builds a step of one kind from its settings, for a hook (the scope its expressions are
/// compiled in).
type StepFactory =
    Arc<dyn Fn(&StepConfig, Scope) -> Result<Arc<dyn Step>, BuildError> + Send + Sync>;

/// A step kind: its name in hook configs (`kind = "..."`), the hook types it can act on, and
/// how to build it from its settings. The name is also the step's `step` label in metrics and
/// its span's name.
///
/// ```
/// use tyk_dispatcher::{
///     hooks::{BuildError, Step, StepConfig, StepContext, StepError, StepKind, StepOutcome},
///     hooks::steps::{REQUEST_HOOKS, settings},
///     pb,
/// };
///
/// /// Adds one fixed header to the request.
/// #[derive(Debug)]
/// struct Stamp {
///     value: String,
/// }
///
/// #[derive(serde::Deserialize)]
/// struct StampSettings {
///     value: String,
/// }
///
/// impl Stamp {
///     fn build(config: &StepConfig) -> Result<Self, BuildError> {
///         let StampSettings { value } = settings(config)?;
///         if value.is_empty() {
///             return Err(BuildError::at("value", "must not be empty"));
///         }
///         Ok(Self { value })
///     }
/// }
///
/// #[async_trait::async_trait]
/// impl Step for Stamp {
///     async fn run(
///         &self,
///         object: &mut pb::Object,
///         _cx: &StepContext,
///     ) -> Result<StepOutcome, StepError> {
///         let request = object.request.get_or_insert_with(Default::default);
///         request.set_headers.insert("X-Stamp".into(), self.value.clone());
///         Ok(StepOutcome::Modified)
///     }
/// }
///
/// let kind = StepKind::new("stamp", REQUEST_HOOKS, Stamp::build);
/// assert_eq!(kind.name(), "stamp");
/// ```
#[derive(Clone)]
pub struct StepKind {
    name: Arc<str>,
    hook_types: &'static [HookType],
    build: StepFactory,
}

impl StepKind {
    /// A kind named `name`, acting on `hook_types`, whose steps `build` makes from their
    /// settings.
    pub fn new<S: Step>(
        name: impl Into<Arc<str>>,
        hook_types: &'static [HookType],
        build: impl Fn(&StepConfig) -> Result<S, BuildError> + Send + Sync + 'static,
    ) -> Self {
        Self::with_scope(name, hook_types, move |config, _| build(config))
    }

    /// A kind whose steps compile CEL expressions: `build` is also told the hook they are for
    /// (its type, whether an auth step runs before, its cost limit).
    pub fn with_scope<S: Step>(
        name: impl Into<Arc<str>>,
        hook_types: &'static [HookType],
        build: impl Fn(&StepConfig, Scope) -> Result<S, BuildError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            hook_types,
            build: Arc::new(move |config, scope| {
                build(config, scope).map(|step| Arc::new(step) as Arc<dyn Step>)
            }),
        }
    }

    /// The kind's name, as hook configs give it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hook types its steps can act on.
    pub fn hook_types(&self) -> &'static [HookType] {
        self.hook_types
    }
}

impl std::fmt::Debug for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepKind")
            .field("name", &self.name)
            .field("hook_types", &self.hook_types)
            .finish_non_exhaustive()
    }
}

/// Step kinds by name.
#[derive(Debug, Clone)]
pub struct StepRegistry {
    kinds: HashMap<Arc<str>, StepKind>,
}

/// Parses a step's settings into its own type (unknown settings are refused).
///
/// # Errors
/// serde's message, at the path of the setting it is about (`headers.X-Id`) when it is about
/// one.
pub fn settings<T: DeserializeOwned>(config: &StepConfig) -> Result<T, BuildError> {
    setting(serde_json::Value::Object(config.settings.clone()), "")
}

/// Parses `value`, the setting at `at` (`""` for the step's whole settings), into its own type.
///
/// # Errors
/// serde's message, at the path of what it is about below `at` (`deny.status`).
pub(crate) fn setting<T: DeserializeOwned>(
    value: serde_json::Value,
    at: &str,
) -> Result<T, BuildError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let message = err.into_inner().to_string();
        match (at, path.as_str()) {
            ("", ".") => BuildError::new(message),
            (at, ".") => BuildError::at(at, message),
            ("", path) => BuildError::at(path, message),
            (at, path) => BuildError::at(format!("{at}.{path}"), message),
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

impl Default for StepRegistry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl StepRegistry {
    /// The built-in kinds.
    pub fn builtin() -> Self {
        let mut registry = Self {
            kinds: HashMap::new(),
        };
        for kind in [
            StepKind::new("log", ALL_HOOKS, log::Log::build),
            StepKind::with_scope("set_headers", REQUEST_HOOKS, headers::SetHeaders::build),
            StepKind::new(
                "delete_headers",
                REQUEST_HOOKS,
                headers::DeleteHeaders::build,
            ),
            StepKind::new(
                "set_response_headers",
                RESPONSE_HOOK,
                headers::ResponseHeaders::build_set,
            ),
            StepKind::new(
                "add_response_headers",
                RESPONSE_HOOK,
                headers::ResponseHeaders::build_add,
            ),
            StepKind::new(
                "delete_response_headers",
                RESPONSE_HOOK,
                headers::DeleteResponseHeaders::build,
            ),
            StepKind::with_scope("add_params", REQUEST_HOOKS, params::AddParams::build),
            StepKind::new("delete_params", REQUEST_HOOKS, params::DeleteParams::build),
            StepKind::new("rewrite_url", REQUEST_HOOKS, url::RewriteUrl::build),
            StepKind::new("set_method", REQUEST_HOOKS, url::SetMethod::build),
            StepKind::with_scope("respond", ALL_HOOKS, respond::Respond::build),
            StepKind::new("api_key_auth", AUTH_HOOK, api_key::ApiKeyAuth::build),
            StepKind::new("jwt_auth", AUTH_HOOK, jwt::JwtAuth::build),
            StepKind::new("delay", ALL_HOOKS, fault::Delay::build),
            StepKind::with_scope("authorize", REQUEST_HOOKS, authorize::Authorize::build),
            StepKind::with_scope(
                "opa_authorize",
                REQUEST_HOOKS,
                decision::DecisionStep::build_opa,
            ),
            StepKind::with_scope(
                "http_authorize",
                REQUEST_HOOKS,
                decision::DecisionStep::build_http,
            ),
            StepKind::new(
                "config_data_headers",
                REQUEST_HOOKS,
                config_data::ConfigDataHeaders::build,
            ),
        ] {
            registry.register(kind);
        }
        registry
    }

    /// Adds (or replaces) a kind, under its name.
    pub fn register(&mut self, kind: StepKind) {
        self.kinds.insert(kind.name.clone(), kind);
    }

    /// Builds the step `config` describes for a hook of `hook_type`, as its first step.
    ///
    /// # Errors
    /// An unknown kind, a kind that cannot act on this hook type, or bad settings.
    pub fn build(
        &self,
        config: &StepConfig,
        hook_type: HookType,
    ) -> Result<Arc<dyn Step>, BuildError> {
        self.build_in(
            config,
            Scope {
                hook_type,
                after_auth: false,
                cost_limit: crate::hooks::cel::DEFAULT_COST_LIMIT,
            },
        )
    }

    /// Builds the step `config` describes, in `scope`.
    ///
    /// # Errors
    /// An unknown kind, a kind that cannot act on this hook type, or bad settings.
    pub fn build_in(&self, config: &StepConfig, scope: Scope) -> Result<Arc<dyn Step>, BuildError> {
        let hook_type = scope.hook_type;
        let Some(kind) = self.kinds.get(config.kind.as_str()) else {
            let mut known: Vec<&str> = self.kinds.keys().map(AsRef::as_ref).collect();
            known.sort_unstable();
            return Err(BuildError::new(format!(
                "unknown step kind {:?} (known: {})",
                config.kind,
                known.join(", ")
            )));
        };
        if !kind.hook_types.contains(&hook_type) {
            let allowed: Vec<&str> = kind.hook_types.iter().map(|t| t.as_str_name()).collect();
            return Err(BuildError::new(format!(
                "step {:?} cannot act on {} hooks (only on {})",
                config.kind,
                hook_type.as_str_name(),
                allowed.join(", ")
            )));
        }
        (kind.build)(config, scope).map_err(|mut err| {
            err.message = format!("step {:?}: {}", config.kind, err.message);
            err
        })
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

    /// A CustomKeyCheck call whose `Authorization` header is `authorization`, if any.
    pub(crate) fn auth_call(authorization: Option<String>) -> pb::Object {
        pb::Object {
            hook_type: pb::HookType::CustomKeyCheck as i32,
            request: Some(pb::MiniRequestObject {
                headers: authorization
                    .map(|value| ("Authorization".to_string(), value))
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

    pub(crate) fn scope(hook_type: pb::HookType) -> crate::hooks::cel::Scope {
        crate::hooks::cel::Scope {
            hook_type,
            after_auth: false,
            cost_limit: crate::hooks::cel::DEFAULT_COST_LIMIT,
        }
    }

    pub(crate) fn cx(hook_type: pb::HookType) -> StepContext {
        StepContext {
            hook_type,
            hook_name: Arc::from("test-hook"),
            api_id: "api-1".into(),
            org_id: "org-1".into(),
            config_data: None,
            trace: None,
            recorded: None,
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
            .unwrap_err()
            .to_string();
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
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "step \"set_response_headers\" cannot act on Pre hooks (only on Response)"
        );
        let err = registry
            .build(
                &step_config("set_headers", serde_json::json!({"headers": {}})),
                pb::HookType::Pre,
            )
            .unwrap_err()
            .to_string();
        assert_eq!(err, "step \"set_headers\": needs at least one header");
    }
}
