//! The auth steps' key files as [`Watched`] values: compared every [`RELOAD_EVERY`] by a
//! background task while the step lives (see [`crate::watch`]), so a call only reads the keys
//! in memory. A broken edit keeps the keys in force.

use std::{fmt::Display, time::Duration};

use crate::watch::{FileReads, Watched};

/// How often the files are compared.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Loads a step's value from its files with `load` and polls them until the step is dropped (a
/// reloaded config builds new steps). `what` names the value in log lines (`"API keys"`).
///
/// Steps built outside a runtime (`check-config`) are never called, and are not polled.
///
/// # Errors
/// The first load's error.
pub fn watch_files<T, E>(
    what: &'static str,
    load: impl FnMut(&mut FileReads) -> Result<T, E> + Send + 'static,
) -> Result<Watched<T>, E>
where
    T: Send + Sync + 'static,
    E: Display,
{
    let watched = Watched::load(load, move |outcome, reads: &FileReads| match outcome {
        Ok(_) => tracing::info!(
            what,
            file = %reads.first().map(|f| f.display().to_string()).unwrap_or_default(),
            "reloaded"
        ),
        Err(err) => tracing::warn!(
            what,
            error = %err,
            "file changed but cannot be used; keeping the value in force"
        ),
    })?;
    watched.poll_every(RELOAD_EVERY);
    Ok(watched)
}
