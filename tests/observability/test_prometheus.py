"""A real Prometheus scraping the real binary under a short mixed load (declared hook pipelines
and undeclared hooks, auth decisions, a failing hook, two config reloads (one refused), malformed
calls, events, tracing to a dead collector), then every dashboard and alert expression run against
it: each must parse, and each vector selector in it must match stored series, so a typo'd metric or
label cannot pass."""

from __future__ import annotations

import os
import re
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from obs_contract import ALERT_NAMES
from obs_harness import (ALERTS, API_KEY, MALFORMED_OBJECT, WRONG_KEY, Dispatcher, Prometheus,
                         RawClient, auth_failure_event, encode_event, encode_object, event_of_type,
                         free_port, hooks_config, wait_until)
from obs_promql import selectors, substitute
from obs_sources import alert_exprs, all_panels, dashboard_exprs, load_dashboard

JOB = "tyk-dispatcher"
LOAD_SECONDS = float(os.environ.get("OBS_LOAD_SECONDS", "10"))
# Undeclared hooks: passed through unchanged, counted as unknown.
HOOKS = [("Pre", "MyPre"), ("Post", "MyPost"), ("PostKeyAuth", "MyPostKeyAuth"),
         ("CustomKeyCheck", "MyAuth"), ("Response", "MyResponse")]
EVENTS = ["AuthFailure", "KeyExpired", "QuotaExceeded", "RateLimitExceeded"]


@dataclass
class Sent:
    dispatch: Counter = field(default_factory=Counter)  # (hook_type, hook_name, outcome) -> calls
    malformed: int = 0
    events: Counter = field(default_factory=Counter)  # event_type label -> calls
    started: float = 0.0
    unknown: int = 0  # calls to undeclared hooks
    steps: Counter = field(default_factory=Counter)  # (hook_name, step, outcome) -> runs
    auth: Counter = field(default_factory=Counter)  # (hook_name, step, decision) -> decisions
    failures: Counter = field(default_factory=Counter)  # (hook_name, reason) -> failures
    reloads: list = field(default_factory=list)  # (seconds into the load, what was written)

    def calls(self, hook_type: str | None = None) -> int:
        return sum(n for (t, _, _), n in self.dispatch.items() if hook_type in (None, t))


@dataclass
class Env:
    dispatcher: Dispatcher
    prometheus: Prometheus
    sent: Sent
    raw_metrics: str


def drive_load(d: Dispatcher, work: Path, seconds: float) -> Sent:
    """Mixed traffic for `seconds`, at most a few thousand calls. A third of the way in, the
    config file is edited (TeamPre's X-Team becomes "platform"); once a reply shows the edit in
    force, the file is broken (an unknown step kind): the dispatcher must refuse it and keep
    serving "platform"."""
    sent = Sent(started=time.time())
    client = RawClient(d.grpc_addr)
    spec = {"APIID": "api-1"}
    objects = {hook: encode_object(hook[0], hook[1], spec,
                                   status_code=200 if hook[0] == "Response" else None) for hook in HOOKS}
    team = encode_object("Pre", "TeamPre", spec)
    team_blocked = encode_object("Pre", "TeamPre", spec, headers={"X-Block": "1"})
    stamp = encode_object("Response", "StampResponse", spec, status_code=200)
    key_right = encode_object("CustomKeyCheck", "KeyAuth", spec, headers={"Authorization": API_KEY})
    key_wrong = encode_object("CustomKeyCheck", "KeyAuth", spec, headers={"Authorization": WRONG_KEY})
    fragile_ok = encode_object("Response", "FragileResponse", spec, status_code=200)
    fragile_broken = encode_object("Response", "FragileResponse", spec)  # no `response` field

    def call(hook_type: str, hook_name: str, body: bytes, outcome: str) -> bytes:
        reply = client.dispatch(body)
        if outcome in ("unchanged", "failed"):  # failed: FragileResponse is fail_open
            assert reply == body, (hook_name, outcome, reply)
        else:
            assert reply != body, (hook_name, outcome, reply)
        sent.dispatch[(hook_type, hook_name, outcome)] += 1
        return reply

    begun = time.monotonic()
    deadline = begun + seconds
    phase = 0  # 0: first config, 1: good edit written, 2: broken edit written
    i = 0
    try:
        while time.monotonic() < deadline and i < 5000:
            elapsed = time.monotonic() - begun
            for hook, body in objects.items():
                call(hook[0], hook[1], body, "unchanged")
                sent.unknown += 1
            # TeamPre: set_headers, then respond when X-Block is present.
            blocked = i % 7 == 3
            reply = call("Pre", "TeamPre", team_blocked if blocked else team, "responded" if blocked else "modified")
            sent.steps[("TeamPre", "set_headers", "modified")] += 1
            # Its `when` does not hold without X-Block: skipped.
            sent.steps[("TeamPre", "respond", "responded" if blocked else "skipped")] += 1
            if phase == 0:
                assert b"payments" in reply, reply
            elif b"platform" in reply and phase == 1:
                d.rewrite_config(hooks_config(work, team="broken-edit", broken=True))
                sent.reloads.append((elapsed, "failure"))
                phase = 2
            elif phase == 2:
                assert b"platform" in reply, f"the refused edit changed the hooks in force: {reply}"
            if phase == 0 and elapsed >= seconds / 3:
                d.rewrite_config(hooks_config(work, team="platform"))
                sent.reloads.append((elapsed, "success"))
                phase = 1
            call("Response", "StampResponse", stamp, "modified")
            sent.steps[("StampResponse", "set_response_headers", "modified")] += 1
            # KeyAuth: a wrong key every 4th call. Allowed counts as modified, denied as responded.
            wrong = i % 4 == 1
            call("CustomKeyCheck", "KeyAuth", key_wrong if wrong else key_right, "responded" if wrong else "modified")
            sent.steps[("KeyAuth", "api_key_auth", "responded" if wrong else "modified")] += 1
            sent.auth[("KeyAuth", "api_key_auth", "denied" if wrong else "allowed")] += 1
            # FragileResponse: works on a Response Object, fails without one. The server makes a
            # hook's series on its first run, so rate() misses an increment made before the
            # series was first scraped; the failures recur, so the later ones are seen.
            if i % 10 == 5:
                call("Response", "FragileResponse", fragile_broken, "failed")
                sent.steps[("FragileResponse", "set_response_headers", "failed")] += 1
                sent.failures[("FragileResponse", "error")] += 1
            else:
                call("Response", "FragileResponse", fragile_ok, "modified")
                sent.steps[("FragileResponse", "set_response_headers", "modified")] += 1
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
    assert phase == 2, (f"the good config edit was not in force {seconds}s into the load (reload "
                        f"interval 1s):\n{d.log()[-3000:]}")
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
    }, config=hooks_config(work)).start()
    prom = None
    try:
        prom = Prometheus(work, JOB, [f"127.0.0.1:{d.admin_port}"], [ALERTS]).start()
        wait_until("Prometheus's first scrape of the dispatcher",
                   lambda: prom.scalar(f'up{{job="{JOB}"}}') == 1, timeout=20, on_fail=prom.log)
        sent = drive_load(d, work, LOAD_SECONDS)
        total = sent.calls()
        # Wait for a scrape that saw all of it (the malformed calls may count as Unknown).
        wait_until(f"Prometheus to see the {total} answered calls",
                   lambda: (prom.scalar(f'sum(tyk_dispatcher_dispatch_requests_total{{job="{JOB}",hook_type!="Unknown"}})') or 0) >= total,
                   timeout=20, on_fail=lambda: d.metrics()[1][-3000:])
        # And the refused edit (polled every second by the dispatcher).
        wait_until("Prometheus to see the refused config reload",
                   lambda: prom.scalar(f'tyk_dispatcher_config_reloads_total{{job="{JOB}",result="failure"}}') == 1,
                   timeout=20, on_fail=lambda: d.log()[-3000:])
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
    for (hook_type, hook_name, outcome), count in sent.dispatch.items():
        got = prom.scalar(f'tyk_dispatcher_dispatch_requests_total{{job="{JOB}",hook_type="{hook_type}",hook_name="{hook_name}",outcome="{outcome}"}}')
        assert got == count, (hook_type, hook_name, outcome, got, count)
    for hook_type in {t for t, _, _ in sent.dispatch}:
        got = prom.scalar(f'sum(tyk_dispatcher_dispatch_requests_total{{job="{JOB}",hook_type="{hook_type}"}})')
        assert got == sent.calls(hook_type), (hook_type, got, sent.calls(hook_type))
        got = prom.scalar(f'sum(tyk_dispatcher_dispatch_duration_seconds_count{{job="{JOB}",hook_type="{hook_type}"}})')
        assert got == sent.calls(hook_type), (hook_type, got, sent.calls(hook_type))
    got = prom.scalar(f'tyk_dispatcher_rejected_calls_total{{job="{JOB}",reason="malformed"}}')
    assert got == sent.malformed, (got, sent.malformed)
    for event_type, count in sent.events.items():
        got = prom.scalar(f'tyk_dispatcher_events_total{{job="{JOB}",event_type="{event_type}"}}')
        assert got == count, (event_type, got, count)
    assert prom.scalar(f'tyk_dispatcher_dispatch_in_flight{{job="{JOB}"}}') == 0
    assert prom.scalar(f'tyk_dispatcher_connections_accepted_total{{job="{JOB}"}}') >= 1


def test_prometheus_counts_match_the_pipelines(env):
    prom, sent = env.prometheus, env.sent
    for (hook_name, step, outcome), count in sent.steps.items():
        got = prom.scalar(f'tyk_dispatcher_step_runs_total{{job="{JOB}",hook_name="{hook_name}",step="{step}",outcome="{outcome}"}}')
        assert got == count, (hook_name, step, outcome, got, count)
    assert prom.scalar(f'sum(tyk_dispatcher_step_runs_total{{job="{JOB}"}})') == sum(sent.steps.values())
    for (hook_name, step, decision), count in sent.auth.items():
        got = prom.scalar(f'tyk_dispatcher_auth_decisions_total{{job="{JOB}",hook_name="{hook_name}",step="{step}",decision="{decision}"}}')
        assert got == count, (hook_name, step, decision, got, count)
    assert prom.scalar(f'sum(tyk_dispatcher_auth_decisions_total{{job="{JOB}"}})') == sum(sent.auth.values())
    for (hook_name, reason), count in sent.failures.items():
        got = prom.scalar(f'tyk_dispatcher_hook_failures_total{{job="{JOB}",hook_name="{hook_name}",reason="{reason}"}}')
        assert got == count, (hook_name, reason, got, count)
    assert prom.scalar(f'sum(tyk_dispatcher_hook_failures_total{{job="{JOB}"}})') == sum(sent.failures.values())
    assert prom.scalar(f'tyk_dispatcher_unknown_hooks_total{{job="{JOB}"}}') == sent.unknown
    for result in ("success", "failure"):
        want = sum(1 for _, r in sent.reloads if r == result)
        got = prom.scalar(f'tyk_dispatcher_config_reloads_total{{job="{JOB}",result="{result}"}}')
        assert want == 1 and got == want, (result, got, sent.reloads)


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


def _panel_result(prom: Prometheus, title: str, ref: str = "A") -> list[tuple[dict, float]]:
    """(labels, value) of each series a dashboard query returns now."""
    panel = next(p for p in all_panels(load_dashboard()) if p["title"] == title)
    expr = next(t["expr"] for t in panel["targets"] if t["refId"] == ref)
    return [(s["metric"], float(s["value"][1]))
            for s in prom.query(substitute(expr, {"job": ".*"}))["data"]["result"]]


def test_hooks_row_shows_what_the_pipelines_did(env):
    moving = lambda rows, *labels: {tuple(m.get(l) for l in labels) for m, v in rows if v > 0}  # noqa: E731
    outcomes = moving(_panel_result(env.prometheus, "Outcomes"), "outcome")
    assert {("unchanged",), ("modified",), ("responded",), ("failed",)} <= outcomes, outcomes
    by_hook = moving(_panel_result(env.prometheus, "Outcomes by hook (modified / responded / failed / error)"), "hook_name", "outcome")
    assert {("TeamPre", "modified"), ("TeamPre", "responded"), ("KeyAuth", "responded"),
            ("FragileResponse", "failed")} <= by_hook, by_hook
    assert all(o != "unchanged" for _, o in by_hook), by_hook
    steps = moving(_panel_result(env.prometheus, "Step runs by hook / step / outcome"), "hook_name", "step", "outcome")
    assert set(env.sent.steps) == steps, steps
    decisions = _panel_result(env.prometheus, "Auth decisions by hook / step / decision")
    # Only the auth step, though every step of a hook has zero series.
    assert {(m["hook_name"], m["step"]) for m, _ in decisions} == {("KeyAuth", "api_key_auth")}, decisions
    assert moving(decisions, "decision") == {("allowed",), ("denied",)}, decisions
    failures = moving(_panel_result(env.prometheus, "Hook failures by reason"), "hook_name", "reason")
    assert failures == {("FragileResponse", "error")}, failures
    unknown = _panel_result(env.prometheus, "Unknown hooks")
    assert len(unknown) == 1 and unknown[0][1] > 0, unknown
    reloads = dict((m["result"], v) for m, v in _panel_result(env.prometheus, "Config reloads by result"))
    assert reloads.get("success", 0) > 0 and reloads.get("failure", 0) > 0, reloads
    denial = _panel_result(env.prometheus, "Auth denial ratio by hook")
    assert [m["hook_name"] for m, _ in denial] == ["KeyAuth"], denial
    assert 0.1 < denial[0][1] < 0.4, denial  # one wrong key in four


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
    assert sorted(r["name"] for r in rules) == sorted(ALERT_NAMES)
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    states = {r["name"]: r["state"] for r in rules}
    # Nothing should be firing against a healthy, fast dispatcher; the rejections (malformed
    # calls) and dropped spans are at most pending (they need 10 minutes).
    assert states["TykDispatcherHighErrorRatio"] == "inactive", states
    assert states["TykDispatcherHighLatencyP99"] == "inactive", states
    assert states["TykDispatcherDown"] == "inactive", states
    assert states["TykDispatcherRequestsRejected"] in ("pending", "inactive"), states


def test_hook_alerts_react_to_the_load(env):
    """The refused reload fires at once; the failing hook is pending (it needs 10 minutes)."""
    prom = env.prometheus

    def states():
        groups = prom.api("rules", {"type": "alert"})["data"]["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        got = {name: rules[name]["state"] for name in ("TykDispatcherConfigReloadFailed", "TykDispatcherHookFailures")}
        return (rules, got) if got == {"TykDispatcherConfigReloadFailed": "firing",
                                       "TykDispatcherHookFailures": "pending"} else None

    rules, _ = wait_until("TykDispatcherConfigReloadFailed firing and TykDispatcherHookFailures pending",
                          states, timeout=15,
                          on_fail=lambda: str({r["name"]: r["state"] for g in prom.api("rules", {"type": "alert"})["data"]["groups"] for r in g["rules"]}))
    reload = rules["TykDispatcherConfigReloadFailed"]["alerts"]
    assert [a["labels"]["job"] for a in reload] == [JOB], reload
    hook = rules["TykDispatcherHookFailures"]["alerts"]
    assert [(a["labels"]["hook_name"], a["labels"]["reason"]) for a in hook] == [("FragileResponse", "error")], hook


def test_spans_to_a_dead_collector_are_counted_as_dropped(env):
    prom = env.prometheus
    dropped = wait_until(
        "tyk_dispatcher_spans_dropped_total > 0 in Prometheus (exporting to a closed port)",
        lambda: prom.scalar(f'tyk_dispatcher_spans_dropped_total{{job="{JOB}"}}'),
        timeout=30, on_fail=lambda: env.dispatcher.metrics()[1][-2000:] + "\n" + env.dispatcher.log()[-3000:])
    exported = prom.scalar(f'tyk_dispatcher_spans_exported_total{{job="{JOB}"}}')
    assert exported == 0, f"{exported} spans exported to a closed port?"
    # One span per call and event, and a child span per step run.
    calls = env.sent.calls() + env.sent.malformed
    assert dropped <= calls + sum(env.sent.events.values()) + sum(env.sent.steps.values()), (dropped, calls)


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
