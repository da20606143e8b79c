//! Prometheus metrics (prometheus-client, OpenMetrics text) and the per-hook series cache that
//! keeps label building off the Dispatch hot path.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// How a Dispatch call ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The Object went back as it came.
    Unchanged,
    /// The Object went back changed.
    Modified,
    /// The call failed with a non-OK gRPC status.
    Error,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Unchanged, Outcome::Modified, Outcome::Error];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged",
            Self::Modified => "modified",
            Self::Error => "error",
        }
    }
}

/// Hook names past this many distinct ones are counted as `other`.
pub const DEFAULT_HOOK_NAME_CAP: usize = 200;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DispatchLabels {
    hook_type: String,
    hook_name: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The counters of one (hook type, hook name) pair, built once and then only incremented.
#[derive(Debug)]
pub struct HookSeries {
    requests: [Counter; 3],
}

impl HookSeries {
    /// Counts one call with this outcome.
    pub fn record(&self, outcome: Outcome) {
        let index = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.requests[index].inc();
    }
}

/// The series of one hook type, by hook name.
type HookSeriesByName = RwLock<HashMap<Box<str>, Arc<HookSeries>>>;

/// Every metric the server exports; cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    dispatch_requests: Family<DispatchLabels, Counter>,
    hooks: Arc<[HookSeriesByName; 7]>,
    hook_name_cap: usize,
    rejected: Family<ReasonLabels, Counter>,
    /// Replies whose `body` strings were dropped to fit the gateway's limit.
    pub body_strings_dropped: Counter,
    /// Replies sent over the gateway's default 4 MiB limit (no limit known).
    pub replies_over_gateway_default: Counter,
    /// Open client connections.
    pub connections: Gauge,
    /// Client connections accepted since start.
    pub connections_accepted: Counter,
    /// DispatchEvent calls whose payload was not JSON.
    pub events_unparsable: Counter,
}

/// Why a call was refused before any hook ran; the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Over the in-flight byte budget.
    InFlightBudget,
    /// Not a well-formed message.
    Malformed,
    /// Reply over the known limit even without body strings.
    ReplyTooLarge,
    /// Request over the receive limit.
    RequestTooLarge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(DEFAULT_HOOK_NAME_CAP)
    }
}

impl Metrics {
    /// Registers every metric under the `tyk_dispatcher` prefix.
    pub fn new(hook_name_cap: usize) -> Self {
        let mut registry = Registry::with_prefix("tyk_dispatcher");
        let dispatch_requests = Family::<DispatchLabels, Counter>::default();
        registry.register(
            "dispatch_requests",
            "Dispatch calls by hook and outcome",
            dispatch_requests.clone(),
        );
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rejected_calls",
            "Calls refused before any hook ran, by reason",
            rejected.clone(),
        );
        let body_strings_dropped = Counter::default();
        registry.register(
            "reply_body_strings_dropped",
            "Replies whose body strings were dropped to fit the gateway's receive limit",
            body_strings_dropped.clone(),
        );
        let replies_over_gateway_default = Counter::default();
        registry.register(
            "replies_over_gateway_default_limit",
            "Replies over the gateway's default 4 MiB receive limit sent while no limit was configured",
            replies_over_gateway_default.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open gRPC client connections",
            connections.clone(),
        );
        let connections_accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "gRPC client connections accepted since start",
            connections_accepted.clone(),
        );
        let events_unparsable = Counter::default();
        registry.register(
            "events_unparsable",
            "DispatchEvent payloads that were not JSON",
            events_unparsable.clone(),
        );
        Self {
            registry: Arc::new(registry),
            dispatch_requests,
            hooks: Arc::new(Default::default()),
            hook_name_cap,
            rejected,
            body_strings_dropped,
            replies_over_gateway_default,
            connections,
            connections_accepted,
            events_unparsable,
        }
    }

    /// The series of one hook, created on first use. Hook names past the cap share `other`.
    pub fn hook(
        &self,
        hook_type: i32,
        hook_type_name: &'static str,
        hook_name: &str,
    ) -> Arc<HookSeries> {
        let slot = usize::try_from(hook_type)
            .ok()
            .filter(|t| *t < 6)
            .unwrap_or(6);
        let map = &self.hooks[slot];
        if let Some(series) = map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(hook_name)
        {
            return series.clone();
        }
        let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
        let known = map.len();
        let label = if known >= self.hook_name_cap && !map.contains_key(hook_name) {
            "other"
        } else {
            hook_name
        };
        if let Some(series) = map.get(label) {
            return series.clone();
        }
        let series = Arc::new(HookSeries {
            requests: Outcome::ALL.map(|outcome| {
                self.dispatch_requests
                    .get_or_create(&DispatchLabels {
                        hook_type: hook_type_name.to_string(),
                        hook_name: label.to_string(),
                        outcome: outcome.as_str(),
                    })
                    .clone()
            }),
        });
        map.insert(label.into(), series.clone());
        series
    }

    /// Counts a call refused for `reason`.
    pub fn reject(&self, reason: Rejection) {
        self.rejections(reason).inc();
    }

    /// The counter of calls refused for `reason`.
    pub fn rejections(&self, reason: Rejection) -> Counter {
        let reason = match reason {
            Rejection::InFlightBudget => "in_flight_budget",
            Rejection::Malformed => "malformed",
            Rejection::ReplyTooLarge => "reply_too_large",
            Rejection::RequestTooLarge => "request_too_large",
        };
        self.rejected
            .get_or_create(&ReasonLabels { reason })
            .clone()
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_series_are_counted_by_name_and_capped() {
        let metrics = Metrics::new(2);
        metrics.hook(1, "Pre", "a").record(Outcome::Unchanged);
        metrics.hook(1, "Pre", "a").record(Outcome::Unchanged);
        metrics.hook(1, "Pre", "b").record(Outcome::Error);
        metrics.hook(1, "Pre", "c").record(Outcome::Unchanged);
        metrics.hook(1, "Pre", "d").record(Outcome::Unchanged);
        let text = metrics.encode();
        assert!(text.contains("tyk_dispatcher_dispatch_requests_total{hook_type=\"Pre\",hook_name=\"a\",outcome=\"unchanged\"} 2"), "{text}");
        assert!(text.contains("tyk_dispatcher_dispatch_requests_total{hook_type=\"Pre\",hook_name=\"b\",outcome=\"error\"} 1"), "{text}");
        assert!(text.contains("tyk_dispatcher_dispatch_requests_total{hook_type=\"Pre\",hook_name=\"other\",outcome=\"unchanged\"} 2"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
