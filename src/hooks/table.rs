//! The hooks in force: routing by (hook type, hook name, API ID), swapped whole when the config
//! file changes, and the per-API `config_data` cache.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError, RwLock},
};

use crate::bounds::{self, WarnLimit};

use arc_swap::ArcSwap;

use crate::{config::Problem, metrics::Metrics};

use super::{
    config::{HookConfig, UnknownHooks},
    pipeline::Pipeline,
    steps::StepRegistry,
};

/// Distinct `config_data` values kept parsed; past it the cache starts over.
const CONFIG_DATA_CACHE: usize = 1024;
/// Bytes of `config_data` (as sent, raw JSON) the cache holds in all; past it the cache starts
/// over. The count alone let 1024 values of any size stay for good.
pub const CONFIG_DATA_CACHE_BYTES: usize = 1 << 20;
/// Largest `config_data` value (in bytes) kept parsed; a larger one is parsed on every call and
/// not kept, so one huge value cannot take the whole cache.
pub const CONFIG_DATA_ENTRY_BYTES: usize = 64 << 10;
/// Bytes of hook names the warned-once set holds in all (each name counted up to
/// [`crate::bounds::LOG_STRING_BYTES`], the part a log line shows); past it the set starts
/// over and names may be warned about again.
pub const WARNED_UNKNOWN_BYTES: usize = 64 << 10;
/// What one entry of a bounded set costs besides its text (the key's length and hook type, the
/// map's own slot), so that many tiny names are bounded too.
const ENTRY_OVERHEAD_BYTES: usize = 64;

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
                    // The position finds it in the file, the name in a long one.
                    problems.extend(found.into_iter().map(|problem| {
                        Problem::new(
                            format!("hooks[{index}].{}", problem.key),
                            format!("hook {:?}: {}", config.name, problem.message),
                        )
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
    fn prepare_metrics(&self, metrics: &Metrics) {
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

/// Hook names already warned about as unknown, bounded in bytes.
#[derive(Debug, Default)]
struct WarnedUnknown {
    /// By (hook type, the name's full length): the names up to the bytes a log line shows.
    /// Keyed so that a lookup borrows the name and allocates nothing.
    names: HashMap<(i32, usize), HashSet<Box<str>>>,
    bytes: usize,
}

/// Parsed `config_data` values by their raw JSON, bounded in bytes.
#[derive(Debug, Default)]
struct ConfigDataCache {
    parsed: HashMap<Box<str>, Arc<serde_json::Value>>,
    bytes: usize,
}

/// The live hooks; cheap to clone.
#[derive(Debug, Clone)]
pub struct Hooks {
    table: Arc<ArcSwap<HookTable>>,
    registry: Arc<StepRegistry>,
    metrics: Metrics,
    warned_unknown: Arc<Mutex<WarnedUnknown>>,
    unknown_warnings: Arc<WarnLimit>,
    config_data: Arc<RwLock<ConfigDataCache>>,
}

impl Hooks {
    /// Hooks from a built table, counted in `metrics` (each pipeline's series created now, so
    /// they start at zero).
    pub fn new(table: HookTable, registry: Arc<StepRegistry>, metrics: Metrics) -> Self {
        table.prepare_metrics(&metrics);
        Self {
            table: Arc::new(ArcSwap::from_pointee(table)),
            registry,
            metrics,
            warned_unknown: Arc::default(),
            unknown_warnings: Arc::default(),
            config_data: Arc::default(),
        }
    }

    /// Whether a call may be decoded by the table in force: it declares hooks, or refuses
    /// undeclared ones (which decodes them to build the refusal).
    pub fn may_decode(&self) -> bool {
        let table = self.table.load();
        !table.is_empty() || table.unknown() != UnknownHooks::Pass
    }

    /// The table in force.
    pub fn current(&self) -> Arc<HookTable> {
        self.table.load_full()
    }

    /// The table in force, borrowed for the length of one call's routing.
    pub(super) fn table(&self) -> arc_swap::Guard<Arc<HookTable>> {
        self.table.load()
    }

    /// Where the hooks are counted.
    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The registry that builds steps.
    pub fn registry(&self) -> &StepRegistry {
        &self.registry
    }

    /// Puts a new table in force (its series created first); calls already running finish
    /// with the old one.
    pub fn replace(&self, table: HookTable) {
        table.prepare_metrics(&self.metrics);
        self.table.store(Arc::new(table));
    }

    /// Whether to warn that `(hook_type, name)` matched no hook: `Some(warnings suppressed
    /// since the last one)` the first time the name is seen, if the warning rate limit allows;
    /// `None` otherwise. A name whose warning was suppressed is not remembered, so it is warned
    /// about on a later call.
    ///
    /// Names are told apart by their first [`bounds::LOG_STRING_BYTES`] bytes and their length:
    /// what the warning shows of them.
    pub fn first_unknown(&self, hook_type: i32, name: &str) -> Option<u64> {
        let shown = bounds::prefix(name, bounds::LOG_STRING_BYTES);
        let mut warned = self
            .warned_unknown
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // No allocation to look up: the key is built only to insert.
        if warned
            .names
            .get(&(hook_type, name.len()))
            .is_some_and(|names| names.contains(shown))
        {
            return None;
        }
        let suppressed = self.unknown_warnings.permit()?;
        let cost = shown.len() + ENTRY_OVERHEAD_BYTES;
        if warned.bytes + cost > WARNED_UNKNOWN_BYTES {
            warned.names.clear();
            warned.bytes = 0;
        }
        warned
            .names
            .entry((hook_type, name.len()))
            .or_default()
            .insert(shown.into());
        warned.bytes += cost;
        Some(suppressed)
    }

    /// `config_data` parsed, once per distinct value; `None` when it is not JSON.
    pub fn config_data(&self, raw: &str) -> Option<Arc<serde_json::Value>> {
        if raw.len() > CONFIG_DATA_ENTRY_BYTES {
            return Some(Arc::new(serde_json::from_str(raw).ok()?));
        }
        if let Some(parsed) = self
            .config_data
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .parsed
            .get(raw)
        {
            return Some(parsed.clone());
        }
        let parsed = Arc::new(serde_json::from_str::<serde_json::Value>(raw).ok()?);
        let mut cache = self
            .config_data
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let cost = raw.len() + ENTRY_OVERHEAD_BYTES;
        if cache.parsed.len() >= CONFIG_DATA_CACHE || cache.bytes + cost > CONFIG_DATA_CACHE_BYTES {
            cache.parsed.clear();
            cache.bytes = 0;
        }
        if cache.parsed.insert(raw.into(), parsed.clone()).is_none() {
            cache.bytes += cost;
        }
        Some(parsed)
    }

    /// Bytes and entries the `config_data` cache holds now.
    #[cfg(test)]
    fn config_data_held(&self) -> (usize, usize) {
        let cache = self
            .config_data
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        (cache.bytes, cache.parsed.len())
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
            cel_cost_limit: crate::hooks::cel::DEFAULT_COST_LIMIT,
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
            errors[1].starts_with("hooks[2].steps[1]: hook \"b\": unknown step kind \"nope\""),
            "{errors:?}"
        );
    }

    #[test]
    fn config_data_is_parsed_once_per_value() {
        let hooks = Hooks::new(
            HookTable::default(),
            Arc::new(StepRegistry::builtin()),
            Metrics::default(),
        );
        let a = hooks.config_data("{\"x\":1}").unwrap();
        let b = hooks.config_data("{\"x\":1}").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(hooks.config_data("not json").is_none());
    }

    #[test]
    fn the_config_data_cache_stays_within_its_byte_bound() {
        let hooks = Hooks::new(
            HookTable::default(),
            Arc::new(StepRegistry::builtin()),
            Metrics::default(),
        );
        let padding = "p".repeat(60 << 10);
        for i in 0..200 {
            let raw = format!("{{\"i\":{i},\"pad\":\"{padding}\"}}");
            let parsed = hooks.config_data(&raw).unwrap();
            assert_eq!(parsed["i"], i);
            let (bytes, entries) = hooks.config_data_held();
            assert!(bytes <= CONFIG_DATA_CACHE_BYTES, "{bytes} bytes held");
            assert!((1..=CONFIG_DATA_CACHE_BYTES / (60 << 10)).contains(&entries));
        }
        // The last value is still cached: the same Arc comes back.
        let last = format!("{{\"i\":199,\"pad\":\"{padding}\"}}");
        assert!(Arc::ptr_eq(
            &hooks.config_data(&last).unwrap(),
            &hooks.config_data(&last).unwrap()
        ));
    }

    #[test]
    fn config_data_over_the_entry_bound_is_parsed_but_not_kept() {
        let hooks = Hooks::new(
            HookTable::default(),
            Arc::new(StepRegistry::builtin()),
            Metrics::default(),
        );
        let big = format!(
            "{{\"team\":\"a\",\"pad\":\"{}\"}}",
            "p".repeat(CONFIG_DATA_ENTRY_BYTES)
        );
        let parsed = hooks.config_data(&big).unwrap();
        assert_eq!(parsed["team"], "a");
        assert_eq!(hooks.config_data_held(), (0, 0));
        assert!(!Arc::ptr_eq(&parsed, &hooks.config_data(&big).unwrap()));
    }

    #[test]
    fn unknown_names_are_warned_once_rate_limited_and_kept_within_bytes() {
        let mut hooks = Hooks::new(
            HookTable::default(),
            Arc::new(StepRegistry::builtin()),
            Metrics::default(),
        );
        hooks.unknown_warnings = Arc::new(WarnLimit::new(std::time::Duration::from_secs(3600), 1));
        assert_eq!(hooks.first_unknown(1, "a"), Some(0));
        assert_eq!(hooks.first_unknown(1, "a"), None, "warned once");
        // Within the rate limit's interval another name is not warned about, nor remembered.
        assert_eq!(hooks.first_unknown(1, "b"), None);
        assert_eq!(hooks.first_unknown(1, "b"), None);
        assert_eq!(hooks.first_unknown(2, "a"), None);

        // Many distinct long names, with no rate limit in the way: each is held by the prefix
        // a warning shows, and the set starts over before it passes its bound.
        let mut hooks = Hooks::new(
            HookTable::default(),
            Arc::new(StepRegistry::builtin()),
            Metrics::default(),
        );
        hooks.unknown_warnings = Arc::new(WarnLimit::new(std::time::Duration::ZERO, 1));
        let mut most = 0;
        for i in 0..1000 {
            let name = format!("{i:04}{}", "n".repeat(4096));
            assert_eq!(hooks.first_unknown(1, &name), Some(0));
            assert_eq!(hooks.first_unknown(1, &name), None);
            let warned = hooks.warned_unknown.lock().unwrap();
            assert!(warned.bytes <= WARNED_UNKNOWN_BYTES, "{}", warned.bytes);
            let held: usize = warned.names.values().flatten().map(|n| n.len()).sum();
            assert!(held <= WARNED_UNKNOWN_BYTES, "{held}");
            most = most.max(warned.names.values().map(HashSet::len).sum::<usize>());
        }
        assert_eq!(
            most,
            WARNED_UNKNOWN_BYTES / (bounds::LOG_STRING_BYTES + ENTRY_OVERHEAD_BYTES)
        );
    }
}
