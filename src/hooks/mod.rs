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
//! - `table`: routing, reload, `config_data` cache.

pub mod config;
mod edit;
mod parts;
mod pipeline;
pub mod step;
pub mod steps;
mod table;

pub use config::{HookConfig, HookTypeName, OnError, StepConfig, UnknownHooks};
pub use edit::reply_bytes;
pub use parts::ObjectParts;
pub use pipeline::{Answer, Failure, Pipeline, decode_selected, fail_closed};
pub use step::{Step, StepContext, StepError, StepOutcome};
pub use steps::{StepKind, StepRegistry};
pub use table::{HookTable, Hooks};
