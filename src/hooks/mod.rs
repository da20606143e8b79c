//! Hook pipelines: the config file declares, per hook name and type (and optionally per API),
//! an ordered list of steps; a matching call runs them within a deadline, and the server turns
//! the changes into edits of the request's wire bytes.
//!
//! - [`config`]: how hooks are declared.
//! - [`step`]: the step API (also for custom steps).
//! - [`steps`]: built-in steps and the registry of kinds.
//! - `pipeline`: running a hook's steps, failure policy, dry runs.
//! - `edit`: typed changes → byte-preserving wire edits.
//! - `parts`: which parts of the Object a hook decodes.
//! - `table`: the hooks in force, reload, `config_data` cache.
//! - `route`: one call through the hooks: route, size, run, answer.
//! - [`cel`]: CEL expressions (conditions, computed values, `authorize`).
//! - [`when`]: a step's condition.

pub mod cel;
pub mod config;
mod edit;
mod parts;
mod pipeline;
pub mod recorded;
mod route;
pub mod step;
pub mod steps;
mod table;
pub mod when;

pub use config::{HookConfig, HookTypeName, OnError, StepConfig, UnknownHooks};
pub use parts::ObjectParts;
pub use step::{BuildError, Cause, Step, StepContext, StepError, StepOutcome};
pub use steps::{StepKind, StepRegistry};

pub(crate) use edit::reply_bytes;
pub(crate) use pipeline::Failure;
pub(crate) use route::Answer;
pub(crate) use table::{HookTable, Hooks};
