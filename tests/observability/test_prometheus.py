"""A real Prometheus scraping the real binary under a short mixed load (hooks, malformed calls,
events, tracing to a dead collector), then every dashboard and alert expression run against it:
each must parse, and each vector selector in it must match stored series, so a typo'd metric or
label cannot pass."""

from __future__ import annotations

import os
import re
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field

import grpc
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from obs_harness import (ALERTS, MALFORMED_OBJECT, Dispatcher, Prometheus, RawClient,
                         auth_failure_event, encode_event, encode_object, event_of_type,
                         free_port, wait_until)
from obs_promql import selectors, substitute
from obs_sources import alert_exprs, all_panels, dashboard_exprs, load_dashboard

JOB = "tyk-dispatcher"
LOAD_SECONDS = float(os.environ.get("OBS_LOAD_SECONDS", "10"))
HOOKS = [("Pre", "MyPre"), ("Post", "MyPost"), ("PostKeyAuth", "MyPostKeyAuth"),
         ("CustomKeyCheck", "MyAuth"), ("Response", "MyResponse")]
EVENTS = ["AuthFailure", "KeyExpired", "QuotaExceeded", "RateLimitExceeded"]


@dataclass
class Sent:
    dispatch: Counter = field(default_factory=Counter)  # hook_type -> calls answered OK
    malformed: int = 0
    events: Counter = field(default_factory=Counter)  # event_type label -> calls
    started: float = 0.0


@dataclass
class Env:
    dispatcher: Dispatcher
    prometheus: Prometheus
    sent: Sent
    raw_metrics: str


def drive_load(addr: str, seconds: float) -> Sent:
    """Mixed traffic for `seconds`, at most a few thousand calls."""
    sent = Sent(started=time.time())
    client = RawClient(addr)
    objects = {hook: encode_object(hook[0], hook[1], {"APIID": "api-1"},
                                   status_code=200 if hook[0] == "Response" else None) for hook in HOOKS}
    deadline = time.monotonic() + seconds
    i = 0
    try:
        while time.monotonic() < deadline and i < 5000:
            for hook, body in objects.items():
                assert client.dispatch(body) == body
                sent.dispatch[hook[0]] += 1
            if i % 10 == 0:
                with pytest.raises(grpc.RpcError) as err:
                    client.dispatch(MALFORMED_OBJECT)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                sent.malformed += 1
            if i % 5 == 0:
                kind = EVENTS[(i // 5) % len(EVENTS)]
                client.event(encode_event(auth_failure_event() if kind == "AuthFailure" else event_of_type(kind)))
                sent.events[kind] += 1
                client.event(encode_event("not JSON"))
                sent.events["other"] += 1
            i += 1
            time.sleep(0.01)
    finally:
        client.close()
    return sent


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    work = tmp_path_factory.mktemp("prometheus")
    dead_collector = free_port()  # nothing listens there
    d = Dispatcher(work, {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{dead_collector}",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "500",
        "OTEL_SERVICE_NAME": "tyk-dispatcher-observability-test",
    }).start()
    prom = None
    try:
        prom = Prometheus(work, JOB, [f"127.0.0.1:{d.admin_port}"], [ALERTS]).start()
        wait_until("Prometheus's first scrape of the dispatcher",
                   lambda: prom.scalar(f'up{{job="{JOB}"}}') == 1, timeout=20, on_fail=prom.log)
        sent = drive_load(d.grpc_addr, LOAD_SECONDS)
        total = sum(sent.dispatch.values())
        # Wait for a scrape that saw all of it (the malformed calls may count as Unknown).
        wait_until(f"Prometheus to see the {total} answered calls",
                   lambda: (prom.scalar(f'sum(tyk_dispatcher_dispatch_requests_total{{job="{JOB}",hook_type!="Unknown"}})') or 0) >= total,
                   timeout=20, on_fail=lambda: d.metrics()[1][-3000:])
        raw = d.metrics()[1]
        yield Env(d, prom, sent, raw)
    finally:
        if prom is not None:
            prom.stop()
        d.stop()


def test_the_target_is_up_and_scraped_as_openmetrics(env):
    answer = env.prometheus.api("targets")
    targets = answer["data"]["activeTargets"]
    assert len(targets) == 1, targets
    assert targets[0]["health"] == "up" and not targets[0]["lastError"], targets[0]


def test_prometheus_counts_match_the_traffic(env):
    prom, sent = env.prometheus, env.sent
    for hook_type, count in sent.dispatch.items():
        got = prom.scalar(f'sum(tyk_dispatcher_dispatch_requests_total{{job="{JOB}",hook_type="{hook_type}",outcome="unchanged"}})')
        assert got == count, (hook_type, got, count)
        got = prom.scalar(f'sum(tyk_dispatcher_dispatch_duration_seconds_count{{job="{JOB}",hook_type="{hook_type}"}})')
        assert got == count, (hook_type, got, count)
    got = prom.scalar(f'tyk_dispatcher_rejected_calls_total{{job="{JOB}",reason="malformed"}}')
    assert got == sent.malformed, (got, sent.malformed)
    for event_type, count in sent.events.items():
        got = prom.scalar(f'tyk_dispatcher_events_total{{job="{JOB}",event_type="{event_type}"}}')
        assert got == count, (event_type, got, count)
    assert prom.scalar(f'tyk_dispatcher_dispatch_in_flight{{job="{JOB}"}}') == 0
    assert prom.scalar(f'tyk_dispatcher_connections_accepted_total{{job="{JOB}"}}') >= 1


def _all_exprs():
    return [*dashboard_exprs(), *alert_exprs()]


def _ids(exprs):
    return [e.source for e in exprs]


def test_every_expression_parses_and_runs(env):
    failures = []
    for e in _all_exprs():
        expr = substitute(e.expr, {"job": ".*"})
        answer = env.prometheus.query(expr)
        if answer.get("status") != "success":
            failures.append(f"{e.source}: {answer.get('errorType')}: {answer.get('error')}\n    {expr}")
    assert not failures, "expressions Prometheus rejects:\n" + "\n".join(failures)


def test_every_selector_matches_stored_series(env):
    start = env.sent.started - 60
    checked = {}
    failures = []
    for e in _all_exprs():
        for sel in selectors(substitute(e.expr, {"job": ".*"})):
            text = str(sel)
            if text not in checked:
                answer = env.prometheus.api("series", [("match[]", text), ("start", start), ("end", time.time() + 5)])
                checked[text] = answer.get("status") == "success" and bool(answer["data"])
            if not checked[text]:
                failures.append(f"{e.source}: {text}")
    assert checked, "no selectors found"
    assert not failures, ("selectors that match no series (typo'd metric or label, or a metric the "
                          "server does not export):\n" + "\n".join(failures))


def test_every_dashboard_query_returns_data(env):
    empty = []
    for e in dashboard_exprs():
        expr = substitute(e.expr, {"job": ".*"})
        answer = env.prometheus.query(expr)
        if answer.get("status") == "success" and not answer["data"]["result"]:
            empty.append(f"{e.source}: {expr}")
    assert not empty, "dashboard queries with no data after the load:\n" + "\n".join(empty)


def test_legends_name_labels_the_queries_return(env):
    """`{{label}}` in a legend must be a label of the query's result (catches typos in `by (...)`
    and in legends, which selector matching cannot)."""
    problems = []
    for panel in all_panels(load_dashboard()):
        for target in panel.get("targets", []):
            wanted = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            if not wanted:
                continue
            expr = substitute(target["expr"], {"job": ".*"})
            result = env.prometheus.query(expr).get("data", {}).get("result", [])
            have = {label for series in result for label in series["metric"]}
            if not wanted <= have:
                problems.append(f'panel "{panel["title"]}" target {target["refId"]}: legend wants '
                                f"{sorted(wanted - have)}, the query returns {sorted(have)}")
    assert not problems, "\n".join(problems)


def test_dashboard_shows_what_the_load_did(env):
    prom = env.prometheus
    # The error ratio panel: the malformed calls are rejections; passed-through hooks never fail.
    ratio = next(e for e in dashboard_exprs() if e.source.startswith('dashboard panel "Error ratio" target A'))
    value = float(prom.query(substitute(ratio.expr, {"job": ".*"}))["data"]["result"][0]["value"][1])
    assert 0 <= value < 0.2, value
    # p99 latency of a pass-through hook is far under the alert's 250ms.
    p99 = prom.scalar(f'histogram_quantile(0.99, sum by (le) (rate(tyk_dispatcher_dispatch_duration_seconds_bucket{{job="{JOB}",hook_type="Pre"}}[1m])))')
    assert p99 is not None and 0 < p99 < 0.25, p99


def test_the_job_variable_finds_the_job(env):
    variable = next(v for v in load_dashboard()["templating"]["list"] if v["name"] == "job")
    query = variable["query"]["query"]
    m = re.fullmatch(r"label_values\((?P<sel>[^,]+),\s*(?P<label>\w+)\)", query)
    assert m, query
    answer = env.prometheus.api(f"label/{m['label']}/values", [("match[]", m["sel"].strip())])
    assert answer["status"] == "success" and answer["data"] == [JOB], answer


def test_alert_rules_load_and_evaluate_without_errors(env):
    prom = env.prometheus

    def evaluated():
        groups = prom.api("rules", {"type": "alert"})["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("2") and
                                      not r["lastEvaluation"].startswith("0001") for r in rules) else None

    rules = wait_until("the alerting rules to be evaluated", evaluated, timeout=15)
    assert sorted(r["name"] for r in rules) == sorted(
        ["TykDispatcherHighErrorRatio", "TykDispatcherHighLatencyP99", "TykDispatcherDown",
         "TykDispatcherSpansDropped", "TykDispatcherRequestsRejected"])
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    states = {r["name"]: r["state"] for r in rules}
    # Nothing should be firing against a healthy, fast dispatcher; the rejections (malformed
    # calls) and dropped spans are at most pending (they need 10 minutes).
    assert states["TykDispatcherHighErrorRatio"] == "inactive", states
    assert states["TykDispatcherHighLatencyP99"] == "inactive", states
    assert states["TykDispatcherDown"] == "inactive", states
    assert states["TykDispatcherRequestsRejected"] in ("pending", "inactive"), states


def test_spans_to_a_dead_collector_are_counted_as_dropped(env):
    prom = env.prometheus
    dropped = wait_until(
        "tyk_dispatcher_spans_dropped_total > 0 in Prometheus (exporting to a closed port)",
        lambda: prom.scalar(f'tyk_dispatcher_spans_dropped_total{{job="{JOB}"}}'),
        timeout=30, on_fail=lambda: env.dispatcher.metrics()[1][-2000:] + "\n" + env.dispatcher.log()[-3000:])
    exported = prom.scalar(f'tyk_dispatcher_spans_exported_total{{job="{JOB}"}}')
    assert exported == 0, f"{exported} spans exported to a closed port?"
    calls = sum(env.sent.dispatch.values()) + env.sent.malformed
    assert dropped <= calls + sum(env.sent.events.values()), (dropped, calls)


def test_latency_exemplars_carry_trace_ids(env):
    trace_ids = set()
    for family in text_string_to_metric_families(env.raw_metrics):
        if family.name != "tyk_dispatcher_dispatch_duration_seconds":
            continue
        for s in family.samples:
            if s.exemplar is not None:
                assert set(s.exemplar.labels) == {"trace_id"}, s.exemplar
                trace_ids.add(s.exemplar.labels["trace_id"])
    assert trace_ids, "no exemplar on the latency histogram with tracing on"
    for t in trace_ids:
        assert re.fullmatch(r"[0-9a-f]{32}", t) and t != "0" * 32, t
    # And Prometheus stored them.
    answer = env.prometheus.api("query_exemplars", {
        "query": f'tyk_dispatcher_dispatch_duration_seconds_bucket{{job="{JOB}"}}',
        "start": env.sent.started - 60, "end": time.time() + 5})
    assert answer["status"] == "success", answer
    stored = {ex["labels"].get("trace_id") for series in answer["data"] for ex in series["exemplars"]}
    assert stored, f"Prometheus stored no exemplar: {answer}"
    assert all(t and re.fullmatch(r"[0-9a-f]{32}", t) for t in stored), stored
