//! How hooks are declared in the config file:
//!
//! ```toml
//! unknown_hooks = "pass"            # or "reject"
//!
//! [[hooks]]
//! name = "MyPreRequestPlugin"       # what Tyk sends as hook_name (`name`, or `functionName` in OAS)
//! type = "Pre"                      # Pre, Post, PostKeyAuth, CustomKeyCheck, Response
//! api_ids = ["04e911d3…"]           # optional: this pipeline for these APIs only
//! deadline_ms = 250
//! on_error = "fail_closed"          # or "fail_open"
//! dry_run = false
//! cel_cost_limit = 100000           # largest estimated cost of one CEL evaluation
//!
//! [[hooks.steps]]
//! kind = "set_headers"
//! headers = { X-Team = "payments" }
//! ```

use serde::{Deserialize, Serialize};

use crate::pb::HookType;

/// What happens to a call whose hook no pipeline matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownHooks {
    /// The Object goes back unchanged (warned once per name, counted).
    #[default]
    Pass,
    /// Answered as `fail_closed`.
    Reject,
}

/// What a failed pipeline (deadline, panic, step error) answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The Object unchanged: the request goes on (for CustomKeyCheck the gateway still answers
    /// 403, since no session comes back).
    FailOpen,
    /// 503 for request hooks, 403 for CustomKeyCheck, 502 for Response hooks.
    #[default]
    FailClosed,
}

/// A hook type as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HookTypeName {
    /// Before authentication.
    Pre,
    /// After the other middlewares.
    Post,
    /// After authentication.
    PostKeyAuth,
    /// Custom authentication.
    CustomKeyCheck,
    /// After the upstream answered.
    Response,
}

impl From<HookTypeName> for HookType {
    fn from(name: HookTypeName) -> Self {
        match name {
            HookTypeName::Pre => HookType::Pre,
            HookTypeName::Post => HookType::Post,
            HookTypeName::PostKeyAuth => HookType::PostKeyAuth,
            HookTypeName::CustomKeyCheck => HookType::CustomKeyCheck,
            HookTypeName::Response => HookType::Response,
        }
    }
}

/// Default per-hook deadline: Tyk sets none, and a request waits on every hook.
pub const DEFAULT_DEADLINE_MS: u64 = 250;

fn default_deadline() -> u64 {
    DEFAULT_DEADLINE_MS
}

/// One declared hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// The hook name Tyk sends.
    pub name: String,
    /// The hook type.
    #[serde(rename = "type")]
    pub hook_type: HookTypeName,
    /// Only for these APIs (empty: every API).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_ids: Vec<String>,
    /// The steps, run in order.
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    /// Longest time the steps may take.
    #[serde(default = "default_deadline")]
    pub deadline_ms: u64,
    /// The answer when the steps fail.
    #[serde(default)]
    pub on_error: OnError,
    /// Run and report, but send the original Object back.
    #[serde(default)]
    pub dry_run: bool,
    /// Largest estimated cost of one CEL evaluation in this hook's steps.
    #[serde(default = "default_cel_cost_limit")]
    pub cel_cost_limit: u64,
}

fn default_cel_cost_limit() -> u64 {
    super::cel::DEFAULT_COST_LIMIT
}

/// One step: its kind and the kind's own settings. Every step also takes `when`: a CEL
/// expression (`when = "request.method == 'POST'"`) or the structured conditions of
/// [`Conditions`](super::when::Conditions); the step runs only when it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepConfig {
    /// The step kind (`set_headers`, `api_key_auth`, or a custom step's name).
    pub kind: String,
    /// The kind's settings.
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}
