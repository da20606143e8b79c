//! Prometheus metrics (prometheus-client, OpenMetrics text): per-hook request counters and
//! latency histograms (with trace-id exemplars), sizes, events, rejections, connections, span
//! export, build and process information.
//!
//! Label values stay bounded: hook names (and, when enabled, API IDs) past a cap on their
//! number, or longer than [`MAX_LABEL_VALUE_BYTES`], count as `other`. The per-hook series are
//! built once and cached, so the Dispatch hot path only increments.

mod labels;
mod process;

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
    time::Instant,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, text::encode},
    metrics::{
        counter::Counter,
        exemplar::HistogramWithExemplars,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::Registry,
};

pub use labels::{
    AuthDecision, RefusedBy, Rejection, ReloadResult, StepRun, StreamReset, TimedOut,
};
pub use process::ProcessCollector;

use crate::{call::Outcome, hooks::Failure};

/// Longest hook name or API ID (in bytes) that becomes a label value; longer ones count as
/// `other`. The count cap alone bounds series, not bytes: 200 distinct 64 KiB names made one
/// scrape of `/metrics` tens of MB. `other` rather than a cut name: cut names that share a
/// prefix would merge into a series that looks like a real hook.
pub const MAX_LABEL_VALUE_BYTES: usize = 128;

/// The label value a request-derived name is counted under, by its length alone (the count
/// cap is applied where the series are kept).
fn label_value(name: &str) -> &str {
    if name.len() > MAX_LABEL_VALUE_BYTES {
        "other"
    } else {
        name
    }
}

/// Tyk's event names; any other counts as `other`.
pub const TYK_EVENTS: &[&str] = &[
    "QuotaExceeded",
    "RateLimitExceeded",
    "AuthFailure",
    "UpstreamOAuthError",
    "KeyExpired",
    "VersionFailure",
    "OrgQuotaExceeded",
    "OrgRateLimitExceeded",
    "TriggerExceeded",
    "BreakerTriggered",
    "BreakerTripped",
    "BreakerReset",
    "HostDown",
    "HostUp",
    "TokenCreated",
    "TokenUpdated",
    "TokenDeleted",
    "RateLimitSmoothingUp",
    "RateLimitSmoothingDown",
    "CertificateExpiringSoon",
    "CertificateExpired",
];

/// What the metrics can be tuned by.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// Buckets (seconds) of the Dispatch duration histogram.
    pub duration_buckets: Vec<f64>,
    /// Distinct hook names (and API IDs) before `other`.
    pub label_cap: usize,
    /// Add `api_id` to the request counter.
    pub api_label: bool,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            duration_buckets: crate::config::DEFAULT_DURATION_BUCKETS.to_vec(),
            label_cap: 200,
            api_label: false,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct DispatchLabels {
    hook_type: &'static str,
    hook_name: String,
    api_id: Option<String>,
    outcome: Outcome,
}

impl EncodeLabelSet for DispatchLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("hook_type", self.hook_type).encode(encoder.encode_label())?;
        ("hook_name", self.hook_name.as_str()).encode(encoder.encode_label())?;
        if let Some(api_id) = &self.api_id {
            ("api_id", api_id.as_str()).encode(encoder.encode_label())?;
        }
        ("outcome", self.outcome).encode(encoder.encode_label())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook_type: &'static str,
    hook_name: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookTypeLabel {
    hook_type: &'static str,
}

/// A `reason` label of any of the reason enums.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Reason<R>(R);

impl<R: EncodeLabelValue + Copy> EncodeLabelSet for Reason<R> {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("reason", self.0).encode(encoder.encode_label())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    hook_name: String,
    step: String,
    outcome: StepRun,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepNameLabels {
    hook_name: String,
    step: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    hook_name: String,
    step: String,
    decision: AuthDecision,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    hook_name: String,
    reason: Failure,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: ReloadResult,
}

/// The counters of one step of one hook, built once per pipeline.
#[derive(Debug, Clone)]
pub struct StepCounters {
    /// Runs by outcome, indexed by [`StepRun::index`].
    runs: [Counter; StepRun::ALL.len()],
    /// Authentication decisions, indexed by [`AuthDecision::index`], for steps that
    /// authenticate.
    auth: Option<[Counter; AuthDecision::ALL.len()]>,
    /// How long runs took, for steps that call out.
    duration: Option<Histogram>,
}

impl StepCounters {
    /// Counts a run that ended `run`.
    pub fn ran(&self, run: StepRun) {
        self.runs[run.index()].inc();
    }

    /// Whether the step's runs are timed.
    pub fn timed(&self) -> bool {
        self.duration.is_some()
    }

    /// Records how long a run took (ignored for a step that is not timed).
    pub fn took(&self, elapsed: std::time::Duration) {
        if let Some(duration) = &self.duration {
            duration.observe(elapsed.as_secs_f64());
        }
    }

    /// Counts an authentication decision (ignored for a step that does not authenticate).
    pub fn decided(&self, decision: AuthDecision) {
        if let Some(auth) = &self.auth {
            auth[decision.index()].inc();
        }
    }
}

/// The failure counters of one hook, indexed by [`Failure::index`].
pub type FailureCounters = [Counter; Failure::ALL.len()];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event_type: &'static str,
}

/// The exemplar attached to latency observations: the call's trace.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabel {
    /// 32 hex digits.
    pub trace_id: String,
}

#[derive(Debug, Clone)]
struct DurationHistogram(Arc<[f64]>);

impl MetricConstructor<HistogramWithExemplars<TraceLabel>> for DurationHistogram {
    fn new_metric(&self) -> HistogramWithExemplars<TraceLabel> {
        HistogramWithExemplars::new(self.0.iter().copied())
    }
}

impl MetricConstructor<Histogram> for DurationHistogram {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

fn size_histogram() -> Histogram {
    // 256 B to 64 MiB.
    Histogram::new(exponential_buckets(256.0, 4.0, 10))
}

type Outcomes = [Counter; 5];

/// The series of one (hook type, hook name): built once, then only updated.
#[derive(Debug)]
pub struct HookSeries {
    hook_type: &'static str,
    hook_name: String,
    requests: Outcomes,
    by_api: Option<RwLock<HashMap<Box<str>, Arc<Outcomes>>>>,
    duration: HistogramWithExemplars<TraceLabel>,
    request_bytes: Histogram,
    reply_bytes: Histogram,
}

type HookSeriesByName = RwLock<HashMap<Box<str>, Arc<HookSeries>>>;

/// Registers `metric` under `name` and gives it back, so a concern's metrics are built and
/// registered in one expression each.
fn registered<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Dispatch calls: counts by hook and outcome, latency, sizes, calls in flight.
#[derive(Debug, Clone)]
pub struct DispatchMetrics {
    requests: Family<DispatchLabels, Counter>,
    duration: Family<HookLabels, HistogramWithExemplars<TraceLabel>, DurationHistogram>,
    request_bytes: Family<HookTypeLabel, Histogram, fn() -> Histogram>,
    reply_bytes: Family<HookTypeLabel, Histogram, fn() -> Histogram>,
    /// The series of each hook, by hook type (slot 6: types the protocol lacks).
    series: Arc<[HookSeriesByName; 7]>,
    /// Dispatch calls being handled now.
    pub in_flight: Gauge,
}

impl DispatchMetrics {
    fn register(registry: &mut Registry, settings: &MetricsSettings) -> Self {
        let buckets: Arc<[f64]> = settings.duration_buckets.clone().into();
        Self {
            requests: registered(
                registry,
                "dispatch_requests",
                "Dispatch calls by hook and outcome",
                Family::default(),
            ),
            duration: registered(
                registry,
                "dispatch_duration_seconds",
                "Time to answer a Dispatch call, by hook",
                Family::new_with_constructor(DurationHistogram(buckets)),
            ),
            in_flight: registered(
                registry,
                "dispatch_in_flight",
                "Dispatch calls being handled",
                Gauge::default(),
            ),
            request_bytes: registered(
                registry,
                "request_bytes",
                "Size of Dispatch requests",
                Family::new_with_constructor(size_histogram as fn() -> Histogram),
            ),
            reply_bytes: registered(
                registry,
                "reply_bytes",
                "Size of Dispatch replies",
                Family::new_with_constructor(size_histogram as fn() -> Histogram),
            ),
            series: Arc::default(),
        }
    }
}

/// Calls refused, and replies changed or let through to fit the gateway's limit.
#[derive(Debug, Clone)]
pub struct RefusalMetrics {
    rejected: Family<Reason<Rejection>, Counter>,
    /// Replies whose `body` strings were dropped to fit the gateway's limit.
    pub body_strings_dropped: Counter,
    /// Replies sent over the gateway's default 4 MiB limit (no limit known).
    pub over_gateway_default: Counter,
}

impl RefusalMetrics {
    fn register(registry: &mut Registry) -> Self {
        let rejected = registered(
            registry,
            "rejected_calls",
            "Calls refused before any hook ran, by reason",
            Family::default(),
        );
        every_reason(&rejected, Rejection::ALL);
        Self {
            rejected,
            body_strings_dropped: registered(
                registry,
                "reply_body_strings_dropped",
                "Replies whose body strings were dropped to fit the gateway's receive limit",
                Counter::default(),
            ),
            over_gateway_default: registered(
                registry,
                "replies_over_gateway_default_limit",
                "Replies over the gateway's default 4 MiB receive limit sent while no limit was configured",
                Counter::default(),
            ),
        }
    }
}

/// Client connections and their streams.
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    /// Open client connections.
    pub open: Gauge,
    /// Client connections accepted since start.
    pub accepted: Counter,
    refused: Family<Reason<RefusedBy>, Counter>,
    timed_out: Family<Reason<TimedOut>, Counter>,
    streams_reset: Family<Reason<StreamReset>, Counter>,
}

impl ConnectionMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            open: registered(
                registry,
                "connections",
                "Open gRPC client connections",
                Gauge::default(),
            ),
            accepted: registered(
                registry,
                "connections_accepted",
                "gRPC client connections accepted since start",
                Counter::default(),
            ),
            refused: registered(
                registry,
                "connections_refused",
                "Connections accepted and closed at once because a connection cap was reached, by cap",
                Family::default(),
            ),
            timed_out: registered(
                registry,
                "connections_timed_out",
                "gRPC connections closed for not finishing their handshake or making no call in time, by reason",
                Family::default(),
            ),
            streams_reset: registered(
                registry,
                "streams_reset",
                "Dispatcher calls whose stream was reset because its request or its reply made no progress in time, by reason",
                Family::default(),
            ),
        };
        every_reason(&metrics.refused, RefusedBy::ALL);
        every_reason(&metrics.timed_out, TimedOut::ALL);
        every_reason(&metrics.streams_reset, StreamReset::ALL);
        metrics
    }
}

/// Hook pipelines: step runs, authentication decisions, failures, unmatched calls, reloads.
#[derive(Debug, Clone)]
pub struct HookMetrics {
    step_runs: Family<StepLabels, Counter>,
    step_duration: Family<StepNameLabels, Histogram, DurationHistogram>,
    auth_decisions: Family<AuthLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    /// Calls whose hook no pipeline matched.
    pub unknown: Counter,
    reloads: Family<ResultLabels, Counter>,
}

impl HookMetrics {
    fn register(registry: &mut Registry, settings: &MetricsSettings) -> Self {
        let buckets: Arc<[f64]> = settings.duration_buckets.clone().into();
        let metrics = Self {
            step_runs: registered(
                registry,
                "step_runs",
                "Plugin step runs by hook, step and outcome",
                Family::default(),
            ),
            step_duration: registered(
                registry,
                "step_duration_seconds",
                "Time taken by steps that call out (OPA, HTTP decisions), by hook and step",
                Family::new_with_constructor(DurationHistogram(buckets)),
            ),
            auth_decisions: registered(
                registry,
                "auth_decisions",
                "Authentication decisions by hook, step and decision",
                Family::default(),
            ),
            failures: registered(
                registry,
                "hook_failures",
                "Hooks answered by their on_error policy, by reason",
                Family::default(),
            ),
            unknown: registered(
                registry,
                "unknown_hooks",
                "Calls whose hook no pipeline matched",
                Counter::default(),
            ),
            reloads: registered(
                registry,
                "config_reloads",
                "Hook configuration reloads by result",
                Family::default(),
            ),
        };
        for &result in ReloadResult::ALL {
            let _ = metrics.reloads.get_or_create(&ResultLabels { result });
        }
        metrics
    }
}

/// DispatchEvent calls.
#[derive(Debug, Clone)]
pub struct EventMetrics {
    by_type: Family<EventLabels, Counter>,
    /// DispatchEvent payloads that were not JSON.
    pub unparsable: Counter,
}

impl EventMetrics {
    fn register(registry: &mut Registry) -> Self {
        Self {
            by_type: registered(
                registry,
                "events",
                "DispatchEvent calls by Tyk event type",
                Family::default(),
            ),
            unparsable: registered(
                registry,
                "events_unparsable",
                "DispatchEvent payloads that were not JSON",
                Counter::default(),
            ),
        }
    }
}

/// Span export.
#[derive(Debug, Clone)]
pub struct SpanMetrics {
    /// Spans handed to the exporter and accepted by the collector.
    pub exported: Counter,
    /// Spans lost: queue full, or the collector refused or could not be reached.
    pub dropped: Counter,
}

impl SpanMetrics {
    fn register(registry: &mut Registry) -> Self {
        Self {
            exported: registered(
                registry,
                "spans_exported",
                "Spans accepted by the trace collector",
                Counter::default(),
            ),
            dropped: registered(
                registry,
                "spans_dropped",
                "Spans lost because the export queue was full or the collector failed",
                Counter::default(),
            ),
        }
    }
}

/// Every metric the server exports, by concern; cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    settings: Arc<MetricsSettings>,
    /// Dispatch calls.
    pub dispatch: DispatchMetrics,
    /// Refusals and reply fitting.
    pub refusals: RefusalMetrics,
    /// Connections and streams.
    pub connections: ConnectionMetrics,
    /// Hook pipelines.
    pub hooks: HookMetrics,
    /// Events.
    pub events: EventMetrics,
    /// Span export.
    pub spans: SpanMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(MetricsSettings::default())
    }
}

impl Metrics {
    /// Registers every metric, concern by concern (the order of the exposition).
    pub fn new(settings: MetricsSettings) -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("tyk_dispatcher");
        let dispatch = DispatchMetrics::register(registry, &settings);
        let events = EventMetrics::register(registry);
        let refusals = RefusalMetrics::register(registry);
        let connections = ConnectionMetrics::register(registry);
        let spans = SpanMetrics::register(registry);
        let hooks = HookMetrics::register(registry, &settings);
        registry.register(
            "build",
            "Build information",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("protocol", crate::pb::PROTOCOL_VERSION),
            ]),
        );
        Self {
            registry: Arc::new(root),
            settings: Arc::new(settings),
            dispatch,
            refusals,
            connections,
            hooks,
            events,
            spans,
        }
    }

    fn outcomes(&self, hook_type: &'static str, hook_name: &str, api_id: Option<&str>) -> Outcomes {
        Outcome::ALL.map(|outcome| {
            self.dispatch
                .requests
                .get_or_create(&DispatchLabels {
                    hook_type,
                    hook_name: hook_name.to_string(),
                    api_id: api_id.map(str::to_string),
                    outcome,
                })
                .clone()
        })
    }

    /// The series of one hook, created on first use. Hook names past the cap, or longer than
    /// [`MAX_LABEL_VALUE_BYTES`], share `other`.
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
        let map = &self.dispatch.series[slot];
        // Checked before any lookup: a long name is neither hashed nor kept.
        let hook_name = label_value(hook_name);
        {
            let map = map.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(series) = map.get(hook_name) {
                return series.clone();
            }
            // Past the cap, new names go to `other` without the write lock, so a flood of
            // distinct names does not serialise every call on it.
            if map.len() >= self.settings.label_cap
                && let Some(series) = map.get("other")
            {
                return series.clone();
            }
        }
        let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
        let label = if map.len() >= self.settings.label_cap && !map.contains_key(hook_name) {
            "other"
        } else {
            hook_name
        };
        if let Some(series) = map.get(label) {
            return series.clone();
        }
        let type_label = HookTypeLabel {
            hook_type: hook_type_name,
        };
        let series = Arc::new(HookSeries {
            hook_type: hook_type_name,
            hook_name: label.to_string(),
            requests: self.outcomes(hook_type_name, label, None),
            by_api: self.settings.api_label.then(Default::default),
            duration: self
                .dispatch
                .duration
                .get_or_create(&HookLabels {
                    hook_type: hook_type_name,
                    hook_name: label.to_string(),
                })
                .clone(),
            request_bytes: self
                .dispatch
                .request_bytes
                .get_or_create(&type_label)
                .clone(),
            reply_bytes: self.dispatch.reply_bytes.get_or_create(&type_label).clone(),
        });
        map.insert(label.into(), series.clone());
        series
    }

    /// Starts measuring one Dispatch call.
    pub fn start_call(&self, series: Arc<HookSeries>, request_bytes: usize) -> CallMeasure<'_> {
        self.dispatch.in_flight.inc();
        series.request_bytes.observe(request_bytes as f64);
        CallMeasure {
            metrics: self,
            series,
            started: Instant::now(),
            finished: false,
        }
    }

    fn api_outcomes(&self, series: &HookSeries, api_id: &str) -> Option<Arc<Outcomes>> {
        let by_api = series.by_api.as_ref()?;
        let api_id = label_value(api_id);
        {
            let map = by_api.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(outcomes) = map.get(api_id) {
                return Some(outcomes.clone());
            }
            if map.len() >= self.settings.label_cap
                && let Some(outcomes) = map.get("other")
            {
                return Some(outcomes.clone());
            }
        }
        let mut map = by_api.write().unwrap_or_else(PoisonError::into_inner);
        let label = if map.len() >= self.settings.label_cap && !map.contains_key(api_id) {
            "other"
        } else {
            api_id
        };
        let outcomes = map
            .entry(label.into())
            .or_insert_with(|| {
                Arc::new(self.outcomes(series.hook_type, &series.hook_name, Some(label)))
            })
            .clone();
        Some(outcomes)
    }

    /// The counter of connections refused because `cap` was reached.
    pub fn connections_refused(&self, cap: RefusedBy) -> Counter {
        self.connections.refused.get_or_create(&Reason(cap)).clone()
    }

    /// The counter of gRPC connections closed for `reason`.
    pub fn connections_timed_out(&self, reason: TimedOut) -> Counter {
        self.connections
            .timed_out
            .get_or_create(&Reason(reason))
            .clone()
    }

    /// The counter of streams reset for `reason`.
    pub fn streams_reset(&self, reason: StreamReset) -> Counter {
        self.connections
            .streams_reset
            .get_or_create(&Reason(reason))
            .clone()
    }

    /// Counts a call refused for `reason`.
    pub fn reject(&self, reason: Rejection) {
        self.rejections(reason).inc();
    }

    /// The counter of calls refused for `reason`.
    pub fn rejections(&self, reason: Rejection) -> Counter {
        self.refusals
            .rejected
            .get_or_create(&Reason(reason))
            .clone()
    }

    /// The counters of one step of one hook.
    /// `authenticates`: whether the step makes authentication decisions (only those get
    /// decision series); `calls_out`: whether it calls a service (only those are timed).
    pub fn step_counters(
        &self,
        hook_name: &str,
        step: &str,
        authenticates: bool,
        calls_out: bool,
    ) -> StepCounters {
        StepCounters {
            duration: calls_out.then(|| {
                self.hooks
                    .step_duration
                    .get_or_create(&StepNameLabels {
                        hook_name: hook_name.to_string(),
                        step: step.to_string(),
                    })
                    .clone()
            }),
            runs: std::array::from_fn(|i| {
                self.hooks
                    .step_runs
                    .get_or_create(&StepLabels {
                        hook_name: hook_name.to_string(),
                        step: step.to_string(),
                        outcome: StepRun::ALL[i],
                    })
                    .clone()
            }),
            auth: authenticates.then(|| {
                std::array::from_fn(|i| {
                    self.hooks
                        .auth_decisions
                        .get_or_create(&AuthLabels {
                            hook_name: hook_name.to_string(),
                            step: step.to_string(),
                            decision: AuthDecision::ALL[i],
                        })
                        .clone()
                })
            }),
        }
    }

    /// The failure counters of one hook.
    pub fn hook_failure_counters(&self, hook_name: &str) -> FailureCounters {
        std::array::from_fn(|i| {
            self.hooks
                .failures
                .get_or_create(&FailureLabels {
                    hook_name: hook_name.to_string(),
                    reason: Failure::ALL[i],
                })
                .clone()
        })
    }

    /// Counts a hook configuration reload.
    pub fn config_reload(&self, success: bool) {
        let result = if success {
            ReloadResult::Success
        } else {
            ReloadResult::Failure
        };
        self.hooks
            .reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts one event by its Tyk type (anything else, or nothing, as `other`).
    pub fn event(&self, event_type: Option<&str>) {
        let event_type = event_type
            .and_then(|name| TYK_EVENTS.iter().find(|known| **known == name))
            .copied()
            .unwrap_or("other");
        self.events
            .by_type
            .get_or_create(&EventLabels { event_type })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Creates the series of every reason now, so `rate()` sees a reason's first increment.
fn every_reason<R: EncodeLabelValue + Copy + Eq + std::hash::Hash + std::fmt::Debug>(
    family: &Family<Reason<R>, Counter>,
    reasons: &[R],
) {
    for &reason in reasons {
        let _ = family.get_or_create(&Reason(reason));
    }
}

/// Measures one Dispatch call; a call dropped unfinished (cancelled) counts as an error.
#[derive(Debug)]
pub struct CallMeasure<'a> {
    metrics: &'a Metrics,
    series: Arc<HookSeries>,
    started: Instant,
    finished: bool,
}

impl CallMeasure<'_> {
    /// Records the call's outcome, latency (with the trace as exemplar) and reply size.
    pub fn finish(
        mut self,
        outcome: Outcome,
        api_id: &str,
        reply_bytes: Option<usize>,
        trace_id: Option<String>,
    ) {
        self.finished = true;
        self.record(outcome, api_id);
        if let Some(bytes) = reply_bytes {
            self.series.reply_bytes.observe(bytes as f64);
        }
        self.series.duration.observe(
            self.started.elapsed().as_secs_f64(),
            trace_id.map(|trace_id| TraceLabel { trace_id }),
            None,
        );
    }

    fn record(&self, outcome: Outcome, api_id: &str) {
        match self.metrics.api_outcomes(&self.series, api_id) {
            Some(outcomes) => outcomes[outcome.index()].inc(),
            None => self.series.requests[outcome.index()].inc(),
        };
    }
}

impl Drop for CallMeasure<'_> {
    fn drop(&mut self) {
        self.metrics.dispatch.in_flight.dec();
        if !self.finished {
            self.record(Outcome::Error, "");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series))
            .and_then(|rest| rest.trim().split(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn hook_series_are_counted_by_name_and_capped() {
        let metrics = Metrics::new(MetricsSettings {
            label_cap: 2,
            ..MetricsSettings::default()
        });
        for (name, outcome) in [
            ("a", Outcome::Unchanged),
            ("a", Outcome::Unchanged),
            ("b", Outcome::Error),
            ("c", Outcome::Unchanged),
            ("d", Outcome::Unchanged),
        ] {
            metrics
                .start_call(metrics.hook(1, "Pre", name), 100)
                .finish(outcome, "api", Some(100), None);
        }
        let text = metrics.encode();
        let series = |name: &str, outcome: &str| {
            count(
                &text,
                &format!(
                    "tyk_dispatcher_dispatch_requests_total{{hook_type=\"Pre\",hook_name=\"{name}\",outcome=\"{outcome}\"}}"
                ),
            )
        };
        assert_eq!(series("a", "unchanged"), Some(2.0), "{text}");
        assert_eq!(series("b", "error"), Some(1.0), "{text}");
        assert_eq!(series("other", "unchanged"), Some(2.0), "{text}");
        assert_eq!(
            count(
                &text,
                "tyk_dispatcher_dispatch_duration_seconds_count{hook_type=\"Pre\",hook_name=\"a\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            count(
                &text,
                "tyk_dispatcher_request_bytes_count{hook_type=\"Pre\"}"
            ),
            Some(5.0)
        );
        assert_eq!(count(&text, "tyk_dispatcher_dispatch_in_flight"), Some(0.0));
        assert!(
            text.contains("tyk_dispatcher_build_info{version=\""),
            "{text}"
        );
        assert!(
            text.contains("# TYPE process_cpu_seconds counter"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn the_api_label_is_opt_in_and_capped() {
        let metrics = Metrics::new(MetricsSettings {
            label_cap: 1,
            api_label: true,
            ..MetricsSettings::default()
        });
        for api in ["api-1", "api-2", "api-1"] {
            metrics
                .start_call(metrics.hook(5, "Response", "r"), 1)
                .finish(Outcome::Unchanged, api, None, None);
        }
        let text = metrics.encode();
        let prefix =
            "tyk_dispatcher_dispatch_requests_total{hook_type=\"Response\",hook_name=\"r\",api_id=";
        assert_eq!(
            count(&text, &format!("{prefix}\"api-1\",outcome=\"unchanged\"}}")),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            count(&text, &format!("{prefix}\"other\",outcome=\"unchanged\"}}")),
            Some(1.0),
            "{text}"
        );
    }

    #[test]
    fn long_hook_names_and_api_ids_count_as_other() {
        let metrics = Metrics::new(MetricsSettings {
            api_label: true,
            ..MetricsSettings::default()
        });
        let at_cap = "h".repeat(MAX_LABEL_VALUE_BYTES);
        for i in 0..50u8 {
            let long = format!("{}{i}", "x".repeat(64 * 1024));
            metrics.start_call(metrics.hook(1, "Pre", &long), 1).finish(
                Outcome::Unchanged,
                &long,
                None,
                None,
            );
        }
        metrics
            .start_call(metrics.hook(1, "Pre", &at_cap), 1)
            .finish(Outcome::Unchanged, "api", None, None);
        let text = metrics.encode();
        assert!(text.len() < 64 * 1024, "{} bytes", text.len());
        let requests = "tyk_dispatcher_dispatch_requests_total{hook_type=\"Pre\"";
        assert_eq!(
            count(
                &text,
                &format!("{requests},hook_name=\"other\",api_id=\"other\",outcome=\"unchanged\"}}")
            ),
            Some(50.0),
            "{text}"
        );
        assert_eq!(
            count(
                &text,
                &format!(
                    "{requests},hook_name=\"{at_cap}\",api_id=\"api\",outcome=\"unchanged\"}}"
                )
            ),
            Some(1.0),
            "a name of exactly the cap is kept: {text}"
        );
    }

    #[test]
    fn past_the_count_cap_new_names_share_other() {
        let metrics = Metrics::new(MetricsSettings {
            label_cap: 1,
            ..MetricsSettings::default()
        });
        for name in ["a", "b", "c", "d", "a"] {
            metrics.start_call(metrics.hook(1, "Pre", name), 1).finish(
                Outcome::Unchanged,
                "",
                None,
                None,
            );
        }
        assert!(Arc::ptr_eq(
            &metrics.hook(1, "Pre", "b"),
            &metrics.hook(1, "Pre", "z")
        ));
        let text = metrics.encode();
        let series = |name: &str| {
            count(
                &text,
                &format!(
                    "tyk_dispatcher_dispatch_requests_total{{hook_type=\"Pre\",hook_name=\"{name}\",outcome=\"unchanged\"}}"
                ),
            )
        };
        assert_eq!(series("a"), Some(2.0), "{text}");
        assert_eq!(series("other"), Some(3.0), "{text}");
    }

    #[test]
    fn a_dropped_call_counts_as_an_error_and_leaves_in_flight() {
        let metrics = Metrics::default();
        let call = metrics.start_call(metrics.hook(1, "Pre", "x"), 1);
        assert_eq!(metrics.dispatch.in_flight.get(), 1);
        drop(call);
        assert_eq!(metrics.dispatch.in_flight.get(), 0);
        assert!(
            metrics
                .encode()
                .contains("hook_name=\"x\",outcome=\"error\"} 1")
        );
    }

    #[test]
    fn events_are_counted_by_tyk_name_or_other() {
        let metrics = Metrics::default();
        metrics.event(Some("AuthFailure"));
        metrics.event(Some("MadeUp"));
        metrics.event(None);
        let text = metrics.encode();
        assert_eq!(
            count(
                &text,
                "tyk_dispatcher_events_total{event_type=\"AuthFailure\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            count(&text, "tyk_dispatcher_events_total{event_type=\"other\"}"),
            Some(2.0)
        );
    }

    #[test]
    fn exemplars_carry_the_trace_id() {
        let metrics = Metrics::default();
        metrics.start_call(metrics.hook(1, "Pre", "x"), 1).finish(
            Outcome::Unchanged,
            "",
            None,
            Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        );
        assert!(
            metrics
                .encode()
                .contains("# {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"}")
        );
    }
}
