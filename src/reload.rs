//! Puts edited hooks in force without a restart: the config file is compared every few seconds
//! ([`crate::watch`]); a changed file is loaded and validated in full, and its hooks are swapped
//! in atomically. On any problem the hooks in force stay, and the failure is logged and counted.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{
    config::{self, Problems, Sources},
    hooks::{HookTable, Hooks},
    metrics::Metrics,
    watch::{FileReads, FileWatch},
};

/// Watches the config file of `sources` until `stop`; does nothing without a file.
pub async fn watch(
    sources: Sources,
    hooks: Hooks,
    metrics: Metrics,
    interval: Duration,
    stop: CancellationToken,
) {
    let Some(path) = sources.config_file() else {
        return;
    };
    // The hooks in force were loaded from what the file holds now (near enough: it was read at
    // start); `config::load` reads the file itself, this read is what later ones compare with.
    let mut in_force = FileReads::default();
    let _ = in_force.read(&path);
    let watch = FileWatch::new(in_force, move |files| {
        let _ = files.read(&path);
        match reload(&sources, &hooks) {
            Ok(count) => {
                metrics.config_reload(true);
                tracing::info!(path = %path.display(), hooks = count, "hooks reloaded");
            }
            Err(problems) => {
                metrics.config_reload(false);
                tracing::warn!(
                    path = %path.display(),
                    problems = %problems.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                    "config file changed but is not valid; the hooks in force stay"
                );
            }
        }
    });
    watch.run(interval, stop).await;
}

/// Loads `sources` and puts their hooks in force (their metric series made first); returns how
/// many there are.
///
/// # Errors
/// Every problem of the new configuration.
pub fn reload(sources: &Sources, hooks: &Hooks) -> Result<usize, Problems> {
    let loaded = config::load(sources)?;
    let table = HookTable::build(
        &loaded.config.hooks,
        loaded.config.unknown_hooks,
        hooks.registry(),
    )
    .map_err(Problems)?;
    let count = loaded.config.hooks.len();
    hooks.replace(table);
    Ok(count)
}
