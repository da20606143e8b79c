//! Hook pipelines run without a gateway: `tyk-dispatcher test` checks case files against what the
//! configured hooks answer, `tyk-dispatcher eval` prints the answer to one Object.
//!
//! Each case goes through the server's own routing and pipeline code with the builder's step
//! registry (custom steps too), so a case that passes here answers the same when served. Steps
//! that would reach the network take their answers from the case's `recorded` list.
//!
//! - `cases`: the case file format (YAML or JSON) and its loading, with errors naming the file,
//!   the case and the field.
//! - `expect`: expectations and the readable differences from what came back.
//! - `run`: one request Object through the hooks.
//! - `logs`: the warnings a run logs (why a hook failed), caught to be shown with its result.
//! - `commands`: the `test` and `eval` commands: output and exit codes.

mod cases;
mod commands;
mod expect;
mod logs;
mod run;

pub(crate) use commands::{EvalOverrides, eval, test};

/// Exit code for case files that cannot be read or are invalid (as `opa test` and usage errors).
pub const EXIT_CASES: u8 = 2;
