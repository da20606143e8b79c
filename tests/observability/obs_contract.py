"""The metrics contract between the dispatcher, the dashboard and the alerting rules."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One metric family as the exposition declares it (`# TYPE name type`)."""

    name: str
    type: str  # counter, gauge, histogram, info
    labels: frozenset[str]
    optional_labels: frozenset[str] = frozenset()

    def series(self) -> list[str]:
        """The series names Prometheus stores for it."""
        if self.type == "counter":
            return [self.name + "_total"]
        if self.type == "histogram":
            return [self.name + s for s in ("_bucket", "_count", "_sum")]
        if self.type == "info":
            return [self.name + "_info"]
        return [self.name]


def _f(name: str, type_: str, *labels: str, optional: tuple[str, ...] = ()) -> Family:
    return Family(name, type_, frozenset(labels), frozenset(optional))


HOOK_TYPES = {"Pre", "Post", "PostKeyAuth", "CustomKeyCheck", "Response", "Unknown"}
OUTCOMES = {"unchanged", "modified", "responded", "failed", "error"}
REJECTION_REASONS = {"malformed", "request_too_large", "in_flight_budget", "reply_too_large"}
# Hook pipelines (issue 6): what one step did, an auth step's decision, why a hook failed, and
# how a config reload ended. An auth step that allows counts as `modified`, one that denies as
# `responded`; a step whose `when` does not hold, as `skipped`.
STEP_OUTCOMES = {"unchanged", "modified", "responded", "failed", "skipped"}
AUTH_DECISIONS = {"allowed", "denied"}
FAILURE_REASONS = {"deadline", "panic", "error"}
RELOAD_RESULTS = {"success", "failure"}
REFUSAL_REASONS = {"max_connections", "admin_max_connections"}
TIMEOUT_REASONS = {"handshake", "idle"}
RESET_REASONS = {"request_progress", "reply_progress"}

FAMILIES: list[Family] = [
    _f("tyk_dispatcher_dispatch_requests", "counter", "hook_type", "hook_name", "outcome"),
    _f("tyk_dispatcher_dispatch_duration_seconds", "histogram", "hook_type", "hook_name"),
    _f("tyk_dispatcher_dispatch_in_flight", "gauge"),
    _f("tyk_dispatcher_request_bytes", "histogram", "hook_type"),
    _f("tyk_dispatcher_reply_bytes", "histogram", "hook_type"),
    _f("tyk_dispatcher_events", "counter", "event_type"),
    # `protocol`: the Tyk protocol version the server speaks (an addition to the contract).
    _f("tyk_dispatcher_build", "info", "version", optional=("protocol",)),
    _f("tyk_dispatcher_spans_dropped", "counter"),
    _f("tyk_dispatcher_spans_exported", "counter"),
    _f("tyk_dispatcher_rejected_calls", "counter", "reason"),
    _f("tyk_dispatcher_connections", "gauge"),
    _f("tyk_dispatcher_connections_accepted", "counter"),
    # Connection hygiene: refused over a connection cap, cut for a missed handshake or idle deadline.
    _f("tyk_dispatcher_connections_refused", "counter", "reason"),
    _f("tyk_dispatcher_connections_timed_out", "counter", "reason"),
    # A call's stream reset because its request or reply stopped moving.
    _f("tyk_dispatcher_streams_reset", "counter", "reason"),
    _f("tyk_dispatcher_reply_body_strings_dropped", "counter"),
    _f("tyk_dispatcher_replies_over_gateway_default_limit", "counter"),
    # Hook pipelines. `step` is the step's kind (two steps of one kind in a hook share series);
    # the per-hook series appear when the hook first runs, the other two exist from the start.
    _f("tyk_dispatcher_step_runs", "counter", "hook_name", "step", "outcome"),
    _f("tyk_dispatcher_auth_decisions", "counter", "hook_name", "step", "decision"),
    _f("tyk_dispatcher_hook_failures", "counter", "hook_name", "reason"),
    _f("tyk_dispatcher_unknown_hooks", "counter"),
    _f("tyk_dispatcher_config_reloads", "counter", "result"),
    _f("process_resident_memory_bytes", "gauge"),
    _f("process_cpu_seconds", "counter"),
    _f("process_open_fds", "gauge"),
    _f("process_start_time_seconds", "gauge"),
]

# The values each enumerated label may take, by family (the contract's `Family.name`).
LABEL_VALUES: dict[str, dict[str, set[str]]] = {
    "tyk_dispatcher_dispatch_requests": {"hook_type": HOOK_TYPES, "outcome": OUTCOMES},
    "tyk_dispatcher_dispatch_duration_seconds": {"hook_type": HOOK_TYPES},
    "tyk_dispatcher_request_bytes": {"hook_type": HOOK_TYPES},
    "tyk_dispatcher_reply_bytes": {"hook_type": HOOK_TYPES},
    "tyk_dispatcher_rejected_calls": {"reason": REJECTION_REASONS},
    "tyk_dispatcher_step_runs": {"outcome": STEP_OUTCOMES},
    "tyk_dispatcher_auth_decisions": {"decision": AUTH_DECISIONS},
    "tyk_dispatcher_hook_failures": {"reason": FAILURE_REASONS},
    "tyk_dispatcher_config_reloads": {"result": RELOAD_RESULTS},
    "tyk_dispatcher_connections_refused": {"reason": REFUSAL_REASONS},
    "tyk_dispatcher_connections_timed_out": {"reason": TIMEOUT_REASONS},
    "tyk_dispatcher_streams_reset": {"reason": RESET_REASONS},
}

# Equivalent declarations an exposition may use instead (same series in Prometheus).
ALTERNATIVES: dict[str, list[Family]] = {
    "tyk_dispatcher_build": [_f("tyk_dispatcher_build_info", "gauge", "version", optional=("protocol",))],
}

# Families the server may still export beyond the contract, tolerated by the scrape test.
TOLERATED_EXTRA = {"tyk_dispatcher_events_unparsable"}

SERIES_NAMES: set[str] = {s for f in FAMILIES for s in f.series()}

# Metric names the alerting rules may use besides the contract's: Prometheus's own `up`.
ALERT_EXTRA_NAMES = {"up"}

ALERT_NAMES = {
    "TykDispatcherHighErrorRatio",
    "TykDispatcherHighLatencyP99",
    "TykDispatcherDown",
    "TykDispatcherSpansDropped",
    "TykDispatcherRequestsRejected",
    "TykDispatcherConnectionsRefused",
    "TykDispatcherStreamsReset",
    "TykDispatcherHookFailures",
    "TykDispatcherConfigReloadFailed",
}

# Series every dashboard must chart (the panels the observability issue asks for).
DASHBOARD_REQUIRED_SERIES = {
    "tyk_dispatcher_dispatch_requests_total",
    "tyk_dispatcher_dispatch_duration_seconds_bucket",
    "tyk_dispatcher_dispatch_in_flight",
    "tyk_dispatcher_events_total",
    "tyk_dispatcher_request_bytes_bucket",
    "tyk_dispatcher_reply_bytes_bucket",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "tyk_dispatcher_connections",
    "tyk_dispatcher_connections_refused_total",
    "tyk_dispatcher_connections_timed_out_total",
    "tyk_dispatcher_streams_reset_total",
    "tyk_dispatcher_rejected_calls_total",
    "tyk_dispatcher_spans_exported_total",
    "tyk_dispatcher_spans_dropped_total",
    "tyk_dispatcher_step_runs_total",
    "tyk_dispatcher_auth_decisions_total",
    "tyk_dispatcher_hook_failures_total",
    "tyk_dispatcher_unknown_hooks_total",
    "tyk_dispatcher_config_reloads_total",
}
