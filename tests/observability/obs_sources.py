"""The PromQL expressions of the dashboard and the alerting rules, with where each comes from."""

from __future__ import annotations

import json
from dataclasses import dataclass

import yaml

from obs_harness import ALERTS, DASHBOARD


@dataclass(frozen=True)
class Expr:
    source: str  # e.g. 'dashboard panel "Error ratio" target B'
    expr: str  # as written (Grafana variables unsubstituted)
    kind: str  # "dashboard" or "alert"


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def load_alerts() -> dict:
    return yaml.safe_load(ALERTS.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels included."""
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs(dashboard: dict | None = None) -> list[Expr]:
    dashboard = dashboard or load_dashboard()
    out = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            out.append(Expr(f'dashboard panel "{panel.get("title")}" target {target.get("refId")}',
                            target.get("expr", ""), "dashboard"))
    return out


def alert_rules(alerts: dict | None = None) -> list[dict]:
    alerts = alerts or load_alerts()
    return [rule for group in alerts["groups"] for rule in group["rules"]]


def alert_exprs(alerts: dict | None = None) -> list[Expr]:
    return [Expr(f'alert {rule.get("alert") or rule.get("record")}', rule["expr"], "alert")
            for rule in alert_rules(alerts)]
