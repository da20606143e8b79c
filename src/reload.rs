//! Puts edited hooks in force without a restart: the config file is compared every few seconds
//! (Kubernetes ConfigMap volumes swap a `..data` symlink, so contents are compared, not inodes);
//! a changed file is loaded and validated in full, and its hooks are swapped in atomically. On any
//! problem the hooks in force stay, and the failure is logged and counted.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{
    config::{self, Sources},
    hooks::{HookTable, Hooks},
    metrics::Metrics,
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
    let mut seen = std::fs::read(&path).ok();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let current = std::fs::read(&path).ok();
        if current == seen {
            continue;
        }
        seen = current;
        match reload(&sources, &hooks, &metrics) {
            Ok(count) => {
                metrics.config_reload(true);
                tracing::info!(path = %path.display(), hooks = count, "hooks reloaded");
            }
            Err(problems) => {
                metrics.config_reload(false);
                tracing::warn!(
                    path = %path.display(),
                    problems = %problems.join("; "),
                    "config file changed but is not valid; the hooks in force stay"
                );
            }
        }
    }
}

/// Loads `sources` and puts their hooks in force; returns how many there are.
///
/// # Errors
/// Every problem of the new configuration.
pub fn reload(sources: &Sources, hooks: &Hooks, metrics: &Metrics) -> Result<usize, Vec<String>> {
    let texts = |problems: Vec<config::Problem>| -> Vec<String> {
        problems.iter().map(ToString::to_string).collect()
    };
    let loaded = config::load(sources).map_err(|problems| texts(problems.0))?;
    let table = HookTable::build(
        &loaded.config.hooks,
        loaded.config.unknown_hooks,
        hooks.registry(),
    )
    .map_err(texts)?;
    let count = loaded.config.hooks.len();
    table.prepare_metrics(metrics);
    hooks.replace(table);
    Ok(count)
}
