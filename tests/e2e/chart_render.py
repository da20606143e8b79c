#!/usr/bin/env python3
"""Renders helm/tyk-dispatcher with Helm's own engine for the end-to-end suite.

Two halves, because Helm's engine (PyPI helm-python-sdk) lives in target/helm-venv, which the
chart suite creates, while the end-to-end suite runs under target/test-tools:

- run as a script under target/helm-venv/bin/python, it calls scripts/render-deploy.py's
  render() and writes every rendered object as JSON:

    chart_render.py --values JSON --name RELEASE --namespace NS --out FILE

- imported by a test, render_chart() runs that script in a subprocess and reads the objects
  back (failing with one line when target/helm-venv is missing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HELM_PYTHON = REPO / "target" / "helm-venv" / "bin" / "python"


def _render_deploy():
    spec = importlib.util.spec_from_file_location("render_deploy", REPO / "scripts" / "render-deploy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def missing_helm() -> str | None:
    """One line saying how to get Helm's engine, or None when it is there."""
    if HELM_PYTHON.is_file():
        return None
    return (f"missing: {HELM_PYTHON} (Helm's engine, helm-python-sdk): run tests/run.sh's chart suite first, "
            "which creates target/helm-venv from tests/helm/requirements.txt")


def render_chart(values: dict[str, Any], out: Path, *, name: str, namespace: str) -> list[dict[str, Any]]:
    """The chart's objects for these values (NOTES and empty templates left out), rendered by
    target/helm-venv's Helm engine in a subprocess; also kept in `out` (JSON)."""
    missing = missing_helm()
    if missing:
        raise LookupError(missing)
    proc = subprocess.run([str(HELM_PYTHON), __file__, "--values", json.dumps(values), "--name", name,
                           "--namespace", namespace, "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"rendering helm/tyk-dispatcher failed ({proc.returncode}):\n{proc.stderr}")
    return [entry["object"] for entry in json.loads(out.read_text())]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--values", required=True, help="the values, as JSON")
    parser.add_argument("--name", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    render_deploy = _render_deploy()
    rendered = render_deploy.render(json.loads(args.values), name=args.name, namespace=args.namespace)
    docs = [{"template": template, "object": obj} for template, _, obj in render_deploy.documents(rendered)]
    Path(args.out).write_text(json.dumps(docs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
