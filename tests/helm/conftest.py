"""Shared helpers of the chart, image and deploy suite (tests/helm).

Renders go through scripts/render-deploy.py's render(), i.e. Helm v4's own engine from PyPI
helm-python-sdk, offline.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tyk-dispatcher"
CI_DIR = CHART / "ci"
CI_FILES = sorted(p.name for p in CI_DIR.glob("*-values.yaml"))
# The oldest and newest Kubernetes the chart claims (Chart.yaml kubeVersion; kubernetes-validate's newest).
K8S_VERSIONS = ["1.27.0", "1.37.0"]
MONITORING_API = ["monitoring.coreos.com/v1"]
RELEASE = "tyk-dispatcher"
NAMESPACE = "tyk"


def _load_render_deploy():
    spec = importlib.util.spec_from_file_location("render_deploy", ROOT / "scripts" / "render-deploy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_deploy = _load_render_deploy()


def ci_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((CI_DIR / name).read_text()) or {}


@functools.cache
def _render_cached(values_json: str, name: str, namespace: str, api: bool, kube_version: str | None) -> dict[str, str]:
    return render_deploy.render(
        json.loads(values_json), name=name, namespace=namespace,
        api_versions=MONITORING_API if api else None,
        kube_version=f"v{kube_version}" if kube_version else None,
    )


def render(values: dict[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE,
           api: bool = True, kube_version: str | None = None) -> dict[str, str]:
    """Renders the chart (cached); api: the cluster serves monitoring.coreos.com/v1."""
    return _render_cached(json.dumps(values or {}, sort_keys=True), name, namespace, api, kube_version)


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    return [obj for _, _, obj in render_deploy.documents(rendered)]


def notes(rendered: dict[str, str]) -> str:
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [o for o in of_kind(objs, kind) if o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} named *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_specs(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(object name, pod spec) of every workload and Pod."""
    specs = []
    for o in objs:
        if o["kind"] == "Pod":
            specs.append((o["metadata"]["name"], o["spec"]))
        elif o["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            specs.append((o["metadata"]["name"], o["spec"]["template"]["spec"]))
    return specs


def overlays(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Tyk values overlays of a sidecar rendering: {file name: parsed overlay}."""
    cm = one(objs, "ConfigMap", "-tyk-values")
    return {key: yaml.safe_load(text) for key, text in cm["data"].items()}


def dispatcher_toml(objs: list[dict[str, Any]]) -> str:
    cms = [o for o in of_kind(objs, "ConfigMap") if "dispatcher.toml" in o.get("data", {})]
    assert len(cms) == 1
    return cms[0]["data"]["dispatcher.toml"]


def dispatcher_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """The dispatcher container: the Deployment's (service) or the overlay's (sidecar)."""
    deployments = of_kind(objs, "Deployment")
    if deployments:
        return next(c for c in deployments[0]["spec"]["template"]["spec"]["containers"] if c["name"] == "tyk-dispatcher")
    overlay = overlays(objs)["tyk-gateway-values.yaml"]
    return overlay["gateway"]["extraContainers"][0]


def merged_values(values: dict[str, Any]) -> dict[str, Any]:
    import helm_python as helm

    return helm.Chart.load(CHART).merge_values(values)


# --- the dispatcher binary ------------------------------------------------------------------

def dispatcher_bin() -> Path | None:
    """DISPATCHER_BIN, else target/release/tyk-dispatcher, else target/debug/tyk-dispatcher."""
    explicit = os.environ.get("DISPATCHER_BIN")
    if explicit:
        path = Path(explicit)
        assert path.is_file(), f"DISPATCHER_BIN={explicit} does not exist"
        return path
    for profile in ("release", "debug"):
        path = ROOT / "target" / profile / "tyk-dispatcher"
        if path.is_file():
            return path
    return None


@pytest.fixture(scope="session")
def binary() -> Path:
    path = dispatcher_bin()
    if path is None:
        pytest.skip("no tyk-dispatcher binary (cargo build, or set DISPATCHER_BIN)")
    return path


# --- names ----------------------------------------------------------------------------------

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
# IANA_SVC_NAME: at most 15 characters, lowercase letters, digits and inner single hyphens, at
# least one letter.
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?!-))*[a-z0-9]$|^[a-z]$")


def valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        return False
    return len(name) <= 63 and bool(LABEL_NAME.match(name))


def valid_label_value(value: str) -> bool:
    return isinstance(value, str) and len(value) <= 63 and bool(LABEL_VALUE.match(value))


def valid_port_name(name: str) -> bool:
    return len(name) <= 15 and bool(PORT_NAME.match(name))


# --- prometheus-operator validation ----------------------------------------------------------

def npm_modules() -> Path:
    return Path(os.environ.get("HELM_NPM_DIR", ROOT / "target" / "helm-npm")) / "node_modules"


def validate_prometheus_operator(objs: list[dict[str, Any]]) -> list[str | None]:
    """Validates with npm @kubernetes-models/prometheus-operator (see validate_prometheus_operator.mjs)."""
    node = shutil.which("node")
    modules = npm_modules()
    if node is None or not (modules / "@kubernetes-models" / "prometheus-operator").is_dir():
        pytest.fail(f"node and {modules}/@kubernetes-models/prometheus-operator are needed "
                    "(npm ci --prefix target/helm-npm, see tests/run.sh)")
    proc = subprocess.run(
        [node, str(Path(__file__).with_name("validate_prometheus_operator.mjs")), str(modules)],
        input=json.dumps(objs), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
