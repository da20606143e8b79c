"""The dashboard and the alerting rules, read as files: structure, variables, metric names."""

import re

from obs_contract import (ALERT_EXTRA_NAMES, ALERT_NAMES, DASHBOARD_REQUIRED_SERIES,
                          SERIES_NAMES)
from obs_promql import selectors, substitute
from obs_sources import (alert_exprs, alert_rules, all_panels, dashboard_exprs,
                         load_alerts, load_dashboard)


def test_dashboard_identity():
    d = load_dashboard()
    assert d["uid"] == "tyk-dispatcher"
    assert d["title"] == "Tyk Dispatcher"
    assert 39 <= d["schemaVersion"] <= 41
    assert d.get("id") is None, "a provisioned dashboard must not carry a database id"


def test_dashboard_variables():
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert set(variables) == {"datasource", "job"}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    job = variables["job"]
    assert job["type"] == "query"
    assert job["datasource"]["uid"] == "${datasource}"
    query = job["query"]["query"] if isinstance(job["query"], dict) else job["query"]
    assert query == "label_values(tyk_dispatcher_build_info, job)"
    assert job["definition"] == query
    assert job["multi"] is True and job["includeAll"] is True
    # "All" must expand to the dispatcher jobs found, not `.*`: the process_* panels would show
    # every process Prometheus scrapes.
    assert not job.get("allValue")
    # No job name baked in.
    assert not job.get("current", {}).get("value"), "a job value is hard-coded as current"
    assert not job.get("options"), "job options are hard-coded"


def test_every_panel_uses_the_datasource_variable():
    for panel in all_panels(load_dashboard()):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f'panel "{panel["title"]}" has no query'
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert target.get("expr"), f'panel "{panel["title"]}" target {target.get("refId")} has no expr'


def test_every_selector_filters_by_the_job_variable():
    problems = []
    for e in dashboard_exprs():
        sels = selectors(e.expr)
        if not sels:
            problems.append(f"{e.source}: no selector in {e.expr!r}")
        for sel in sels:
            m = sel.matcher("job")
            if m is None or m.op != "=~" or m.value != "$job":
                problems.append(f'{e.source}: {sel} does not filter job=~"$job"')
    assert not problems, "\n".join(problems)


def test_no_hard_coded_job_name_in_the_dashboard():
    text = "\n".join(e.expr for e in dashboard_exprs())
    assert not re.search(r'job\s*(=|=~|!=)\s*"(?!\$job")', text), "a job name is hard-coded in a query"


def test_dashboard_uses_only_contract_metrics_and_charts_every_required_one():
    used = {}
    for e in dashboard_exprs():
        for sel in selectors(e.expr):
            used.setdefault(sel.name, []).append(e.source)
    unknown = {name: srcs for name, srcs in used.items() if name not in SERIES_NAMES}
    assert not unknown, f"metrics outside the contract: {unknown}"
    missing = DASHBOARD_REQUIRED_SERIES - set(used)
    assert not missing, f"no panel charts {sorted(missing)}"


def test_dashboard_expressions_substitute_cleanly():
    for e in dashboard_exprs():
        out = substitute(e.expr, {"job": ".*"})
        assert "$" not in out, f"{e.source}: {out}"


def test_panels_have_unique_ids_and_do_not_overlap():
    panels = all_panels(load_dashboard())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f'panel "{p["title"]}" is wider than the grid'
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f'panels "{cells[(x, y)]}" and "{p["title"]}" overlap'
                cells[(x, y)] = p["title"]


def test_panel_titles_cover_the_issue():
    titles = " | ".join(p["title"].lower() for p in all_panels(load_dashboard()))
    for word in ("request rate by hook", "error ratio", "latency by hook", "in flight", "outcomes",
                 "events by type", "request size", "reply size", "memory", "cpu",
                 "open connections", "rejected calls by reason", "spans exported / dropped",
                 "step runs by hook / step / outcome", "auth decisions by hook / step / decision",
                 "hook failures by reason", "unknown hooks", "config reloads by result",
                 "outcomes by hook"):
        assert word in titles, f"no panel titled with {word!r}: {titles}"


def _rows_of(dashboard: dict) -> dict[str, list[dict]]:
    """Row title -> the panels laid out under it (up to the next row)."""
    panels = sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    rows: dict[str, list[dict]] = {}
    current = None
    for panel in panels:
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], [])
            current.extend(panel.get("panels", []))  # a collapsed row holds its panels
        elif current is not None:
            current.append(panel)
    return rows


def test_hooks_row_charts_the_pipeline_metrics():
    rows = _rows_of(load_dashboard())
    assert "Hooks" in rows, f"no Hooks row: {sorted(rows)}"
    used = {sel.name for panel in rows["Hooks"] for target in panel.get("targets", [])
            for sel in selectors(target["expr"])}
    for series in ("tyk_dispatcher_step_runs_total", "tyk_dispatcher_auth_decisions_total",
                   "tyk_dispatcher_hook_failures_total", "tyk_dispatcher_unknown_hooks_total",
                   "tyk_dispatcher_config_reloads_total", "tyk_dispatcher_dispatch_requests_total"):
        assert series in used, f"the Hooks row does not chart {series}"
    by_title = {p["title"]: p for p in rows["Hooks"]}
    # Counted events, not rates: reloads are rare.
    reloads = by_title["Config reloads by result"]["targets"][0]["expr"]
    assert "increase(tyk_dispatcher_config_reloads_total" in reloads and "by (result)" in reloads, reloads
    steps = by_title["Step runs by hook / step / outcome"]["targets"][0]["expr"]
    assert "by (hook_name, step, outcome)" in steps, steps
    auth = by_title["Auth decisions by hook / step / decision"]["targets"][0]["expr"]
    assert "by (hook_name, step, decision)" in auth, auth
    failures = by_title["Hook failures by reason"]["targets"][0]["expr"]
    assert "by (hook_name, reason)" in failures, failures


def test_outcomes_panel_knows_the_pipeline_outcomes():
    panel = next(p for p in all_panels(load_dashboard()) if p["title"] == "Outcomes")
    assert "sum by (outcome)" in panel["targets"][0]["expr"]
    colored = {o["matcher"]["options"] for o in panel["fieldConfig"]["overrides"]}
    assert colored == {"unchanged", "modified", "responded", "failed", "error"}, colored


def test_alert_rules_are_complete_and_labelled():
    rules = alert_rules(load_alerts())
    names = [r["alert"] for r in rules]
    assert sorted(names) == sorted(ALERT_NAMES), names
    for rule in rules:
        assert rule["labels"].get("severity") in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"].get("summary"), rule["alert"]
        assert rule["annotations"].get("description"), rule["alert"]
        assert rule.get("for"), f'{rule["alert"]} has no `for`'
    by_name = {r["alert"]: r for r in rules}
    assert by_name["TykDispatcherHighErrorRatio"]["for"] == "5m"
    assert by_name["TykDispatcherHighLatencyP99"]["for"] == "10m"
    assert by_name["TykDispatcherDown"]["for"] == "2m"
    assert by_name["TykDispatcherSpansDropped"]["for"] == "10m"
    assert by_name["TykDispatcherRequestsRejected"]["for"] == "10m"
    assert by_name["TykDispatcherHookFailures"]["for"] == "10m"
    # A refused reload is one event: waiting would only delay the news.
    assert by_name["TykDispatcherConfigReloadFailed"]["for"] == "0m"
    assert by_name["TykDispatcherHookFailures"]["labels"]["severity"] == "warning"
    assert by_name["TykDispatcherConfigReloadFailed"]["labels"]["severity"] == "warning"
    hook_failures = by_name["TykDispatcherHookFailures"]["expr"]
    assert "sum by (job, hook_name, reason)" in hook_failures, hook_failures
    reloads = by_name["TykDispatcherConfigReloadFailed"]["expr"]
    assert 'increase(tyk_dispatcher_config_reloads_total{result="failure"}[15m])' in reloads, reloads


def test_alerts_use_only_contract_metrics():
    problems = []
    for e in alert_exprs():
        for sel in selectors(e.expr):
            if sel.name not in SERIES_NAMES | ALERT_EXTRA_NAMES:
                problems.append(f"{e.source}: {sel}")
    assert not problems, "metrics outside the contract:\n" + "\n".join(problems)


def test_alert_file_is_plain_rule_file_format():
    alerts = load_alerts()
    assert set(alerts) == {"groups"}, "a plain Prometheus rule file has only `groups`"
    for group in alerts["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
