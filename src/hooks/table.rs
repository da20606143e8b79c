//! The hooks in force: routing by (hook type, hook name, API ID), swapped whole when the config
//! file changes, and the per-API `config_data` cache.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError, RwLock},
};

use arc_swap::ArcSwap;

use crate::config::Problem;

use super::{
    config::{HookConfig, UnknownHooks},
    pipeline::Pipeline,
    steps::StepRegistry,
};

/// Distinct `config_data` values kept parsed; past it the cache starts over.
const CONFIG_DATA_CACHE: usize = 1024;

type ByName = HashMap<String, Vec<(Vec<String>, Arc<Pipeline>)>>;

/// One immutable set of hooks.
#[derive(Debug, Default)]
pub struct HookTable {
    by_type: HashMap<i32, ByName>,
    configs: Vec<HookConfig>,
    unknown: UnknownHooks,
}

impl HookTable {
    /// Builds every pipeline of `configs`.
    ///
    /// # Errors
    /// Every problem found, keyed by where it is in the config (`hooks[2].steps[1]`).
    pub fn build(
        configs: &[HookConfig],
        unknown: UnknownHooks,
        registry: &StepRegistry,
    ) -> Result<Self, Vec<Problem>> {
        let mut by_type: HashMap<i32, ByName> = HashMap::new();
        let mut problems = Vec::new();
        for (index, config) in configs.iter().enumerate() {
            let pipeline = match Pipeline::build(config, registry) {
                Ok(pipeline) => Arc::new(pipeline),
                Err(found) => {
                    problems.extend(found.into_iter().map(|problem| {
                        Problem::new(format!("hooks[{index}].{}", problem.key), problem.message)
                    }));
                    continue;
                }
            };
            let entries = by_type
                .entry(pipeline.hook_type as i32)
                .or_default()
                .entry(config.name.clone())
                .or_default();
            let overlaps = entries.iter().any(|(api_ids, _)| {
                (api_ids.is_empty() && config.api_ids.is_empty())
                    || api_ids.iter().any(|id| config.api_ids.contains(id))
            });
            if overlaps {
                problems.push(Problem::new(
                    format!("hooks[{index}]"),
                    format!(
                        "hook {:?} ({:?}) is declared twice for the same APIs",
                        config.name, config.hook_type
                    ),
                ));
                continue;
            }
            entries.push((config.api_ids.clone(), pipeline));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            by_type,
            configs: configs.to_vec(),
            unknown,
        })
    }

    /// The pipeline for a call: one declared for its API, else one for every API.
    pub fn find(&self, hook_type: i32, hook_name: &str, api_id: &str) -> Option<&Arc<Pipeline>> {
        let entries = self.by_type.get(&hook_type)?.get(hook_name)?;
        entries
            .iter()
            .find(|(api_ids, _)| api_ids.iter().any(|id| id == api_id))
            .or_else(|| entries.iter().find(|(api_ids, _)| api_ids.is_empty()))
            .map(|(_, pipeline)| pipeline)
    }

    /// The declared hooks, as configured.
    pub fn configs(&self) -> &[HookConfig] {
        &self.configs
    }

    /// The policy for calls no hook matches.
    pub fn unknown(&self) -> UnknownHooks {
        self.unknown
    }

    /// Creates every pipeline's metric series, so they start at zero.
    pub fn prepare_metrics(&self, metrics: &crate::metrics::Metrics) {
        for by_name in self.by_type.values() {
            for entries in by_name.values() {
                for (_, pipeline) in entries {
                    pipeline.prepare_metrics(metrics);
                }
            }
        }
    }

    /// Whether no hook is declared.
    pub fn is_empty(&self) -> bool {
        self.configs.is_empty()
    }
}

/// The live hooks; cheap to clone.
#[derive(Debug, Clone)]
pub struct Hooks {
    table: Arc<ArcSwap<HookTable>>,
    registry: Arc<StepRegistry>,
    warned_unknown: Arc<Mutex<HashSet<(i32, String)>>>,
    config_data: Arc<RwLock<HashMap<String, Arc<serde_json::Value>>>>,
}

impl Hooks {
    /// Hooks from a built table.
    pub fn new(table: HookTable, registry: Arc<StepRegistry>) -> Self {
        Self {
            table: Arc::new(ArcSwap::from_pointee(table)),
            registry,
            warned_unknown: Arc::default(),
            config_data: Arc::default(),
        }
    }

    /// The table in force.
    pub fn current(&self) -> Arc<HookTable> {
        self.table.load_full()
    }

    /// The registry that builds steps.
    pub fn registry(&self) -> &StepRegistry {
        &self.registry
    }

    /// Puts a new table in force; calls already running finish with the old one.
    pub fn replace(&self, table: HookTable) {
        self.table.store(Arc::new(table));
    }

    /// Whether `(hook_type, name)` is seen unmatched for the first time (to warn once).
    pub fn first_unknown(&self, hook_type: i32, name: &str) -> bool {
        let mut warned = self
            .warned_unknown
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if warned.len() > 10_000 {
            warned.clear();
        }
        warned.insert((hook_type, name.to_string()))
    }

    /// `config_data` parsed, once per distinct value; `None` when it is not JSON.
    pub fn config_data(&self, raw: &str) -> Option<Arc<serde_json::Value>> {
        if let Some(parsed) = self
            .config_data
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(raw)
        {
            return Some(parsed.clone());
        }
        let parsed = Arc::new(serde_json::from_str::<serde_json::Value>(raw).ok()?);
        let mut cache = self
            .config_data
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CONFIG_DATA_CACHE {
            cache.clear();
        }
        cache.insert(raw.to_string(), parsed.clone());
        Some(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::{config::HookTypeName, steps::tests::step_config};

    fn hook(name: &str, api_ids: &[&str]) -> HookConfig {
        HookConfig {
            name: name.into(),
            hook_type: HookTypeName::Pre,
            api_ids: api_ids.iter().map(|s| s.to_string()).collect(),
            steps: vec![step_config(
                "set_headers",
                serde_json::json!({"headers": {"X-Api": name}}),
            )],
            deadline_ms: 100,
            on_error: Default::default(),
            dry_run: false,
        }
    }

    #[test]
    fn routing_prefers_the_apis_own_pipeline() {
        let table = HookTable::build(
            &[hook("h", &[]), hook("h", &["api-1"])],
            UnknownHooks::Pass,
            &StepRegistry::builtin(),
        )
        .unwrap();
        let general = table.find(1, "h", "api-2").unwrap();
        let specific = table.find(1, "h", "api-1").unwrap();
        assert!(!Arc::ptr_eq(general, specific));
        assert!(table.find(2, "h", "api-1").is_none(), "another hook type");
        assert!(table.find(1, "other", "api-1").is_none());
    }

    #[test]
    fn overlapping_declarations_and_bad_steps_are_all_reported() {
        let mut bad = hook("b", &[]);
        bad.steps.push(step_config("nope", serde_json::json!({})));
        let errors = HookTable::build(
            &[hook("h", &["a"]), hook("h", &["a"]), bad],
            UnknownHooks::Pass,
            &StepRegistry::builtin(),
        )
        .unwrap_err();
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(
            errors[0],
            "hooks[1]: hook \"h\" (Pre) is declared twice for the same APIs"
        );
        assert!(
            errors[1].starts_with("hooks[2].steps[1]: unknown step kind \"nope\""),
            "{errors:?}"
        );
    }

    #[test]
    fn config_data_is_parsed_once_per_value() {
        let hooks = Hooks::new(HookTable::default(), Arc::new(StepRegistry::builtin()));
        let a = hooks.config_data("{\"x\":1}").unwrap();
        let b = hooks.config_data("{\"x\":1}").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(hooks.config_data("not json").is_none());
    }
}
