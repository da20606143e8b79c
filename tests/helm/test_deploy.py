"""deploy/: the Tyk values overlays (generated from the chart's one container template) and the
plain manifests for kubectl users: current, at the right value paths, and valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from conftest import (
    CI_FILES, K8S_VERSIONS, ci_values, ROOT, dispatcher_container, objects, overlays, render, render_deploy,
    validate_prometheus_operator, valid_port_name,
)

DEPLOY = ROOT / "deploy"

# Tyk's charts have no values schema: a wrong key or prefix silently renders no sidecar. These are
# the gateway values the overlays may set, as in TykTechnologies/tyk-charts 5.3.0
# (components/tyk-gateway/values.yaml, extraContainers #L577-L580, extraEnvs #L582-L585,
# extraVolumes #L587-L593, extraVolumeMounts #L595-L600, podLabels #L236-L237, podAnnotations
# #L227-L234; see shared/docs/tyk-helm.md §1.3), and where they sit.
TYK_CHARTS_VERSION = "5.3.0"
TYK_GATEWAY_KEYS = {"extraContainers", "extraEnvs", "extraVolumes", "extraVolumeMounts", "podLabels", "podAnnotations"}
OVERLAYS = {
    "tyk-oss-values.yaml": ["tyk-gateway", "gateway"],   # tyk-oss, tyk-stack, tyk-data-plane, tyk-control-plane
    "tyk-gateway-values.yaml": ["gateway"],              # the component chart tyk-gateway
}


def test_deploy_is_current():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "render-deploy.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_every_generated_file_is_committed_and_nothing_else_is_stale():
    generated = set(render_deploy.outputs())
    on_disk = {str(p.relative_to(ROOT)) for p in (DEPLOY / "kubernetes").glob("*.yaml")}
    on_disk |= {str(p.relative_to(ROOT)) for p in DEPLOY.glob("*.yaml")}
    assert on_disk == generated, "deploy/*.yaml and deploy/kubernetes/*.yaml are all generated"


def gateway_values(name: str) -> dict:
    doc = yaml.safe_load((DEPLOY / name).read_text())
    for key in OVERLAYS[name]:
        assert list(doc) == [key], f"{name}: expected only {key!r} at this level, got {list(doc)}"
        doc = doc[key]
    return doc


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_overlay_value_paths(name):
    text = (DEPLOY / name).read_text()
    assert f"tyk-charts {TYK_CHARTS_VERSION}" in text
    if name == "tyk-oss-values.yaml":
        assert "tyk-oss, tyk-stack, tyk-data-plane and tyk-control-plane" in text
    gateway = gateway_values(name)
    assert set(gateway) == TYK_GATEWAY_KEYS
    for ci in CI_FILES:  # every scenario's overlay stays within the known value paths too
        values = ci_values(ci)
        if values.get("mode", "sidecar") == "sidecar":
            rendered = overlays(objects(render(values)))[name]
            for key in OVERLAYS[name]:
                assert list(rendered) == [key]
                rendered = rendered[key]
            assert set(rendered) <= TYK_GATEWAY_KEYS, ci
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "{{" not in body, "Tyk's chart passes the extra* values through tpl"


def tyk_gateway_pod(gateway: dict) -> dict:
    """The gateway pod as Tyk's deployment-gw-repset.yaml (tyk-charts 5.3.0) builds it from the
    overlay: its fixed init container, gateway container (+extraEnvs, +extraVolumeMounts),
    extraContainers, pod securityContext (fsGroup 2000) and volumes (+extraVolumes)."""
    hardened = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "privileged": False,
                "readOnlyRootFilesystem": True, "seccompProfile": {"type": "RuntimeDefault"},
                "capabilities": {"drop": ["ALL"]}}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "gateway-tyk-tyk-gateway-0",
                     "labels": {"app": "gateway-tyk-tyk-gateway", "release": "tyk", **gateway["podLabels"]},
                     "annotations": gateway["podAnnotations"]},
        "spec": {
            "initContainers": [{"name": "setup-directories", "image": "busybox:1.32", "securityContext": hardened,
                                "command": ["sh", "-c", "mkdir -p apps middleware policies"],
                                "volumeMounts": [{"name": "tyk-scratch", "mountPath": "/mnt/tyk-gateway"}]}],
            "containers": [{
                "name": "gateway-tyk-gateway", "image": "tykio/tyk-gateway:v5.13.1", "securityContext": hardened,
                "env": [{"name": "TYK_GW_LISTENPORT", "value": "8080"},
                        {"name": "TYK_GW_COPROCESSOPTIONS_ENABLECOPROCESS", "value": "true"}] + gateway["extraEnvs"],
                "ports": [{"containerPort": 8080}],
                "volumeMounts": [{"name": "tyk-scratch", "mountPath": "/mnt/tyk-gateway"}] + gateway["extraVolumeMounts"],
            }] + gateway["extraContainers"],
            "securityContext": {"fsGroup": 2000, "runAsNonRoot": True},
            "volumes": [{"name": "tyk-scratch", "emptyDir": {}}] + gateway["extraVolumes"],
        },
    }


@pytest.mark.parametrize("kube_version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_overlay_builds_a_valid_gateway_pod(name, kube_version):
    gateway = gateway_values(name)
    pod = tyk_gateway_pod(gateway)
    kubernetes_validate.validate(pod, kube_version, strict=True)
    volumes = {v["name"] for v in pod["spec"]["volumes"]}
    assert len(volumes) == len(pod["spec"]["volumes"])
    for container in pod["spec"]["containers"]:
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes
    port_names = [p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", []) if "name" in p]
    assert len(port_names) == len(set(port_names)) and all(map(valid_port_name, port_names))


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_overlay_sets_the_gateway_variables_and_shares_the_socket(name):
    gateway = gateway_values(name)
    gw_env = {e["name"]: e["value"] for e in gateway["extraEnvs"]}
    (sidecar,) = gateway["extraContainers"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    server = "unix:///var/run/tyk-dispatcher/dispatcher.sock"
    assert gw_env == {
        "TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER": server,
        "TYK_GW_COPROCESSOPTIONS_GRPCRECVMAXSIZE": "67108864",
        "TYK_GW_COPROCESSOPTIONS_GRPCSENDMAXSIZE": "67108864",
    }
    for key, value in gw_env.items():
        assert env[key] == value, "the dispatcher reads the gateway's own variables"
    # the socket's directory: one emptyDir, mounted by both (read-only for the gateway)
    socket_volume = next(v for v in gateway["extraVolumes"] if "emptyDir" in v)
    (gw_mount,) = gateway["extraVolumeMounts"]
    side_mount = next(m for m in sidecar["volumeMounts"] if m["name"] == socket_volume["name"])
    assert gw_mount["name"] == socket_volume["name"] and gw_mount["readOnly"] is True
    assert gw_mount["mountPath"] == side_mount["mountPath"] == "/var/run/tyk-dispatcher"
    assert server.removeprefix("unix://").startswith(gw_mount["mountPath"] + "/")
    config_volume = next(v for v in gateway["extraVolumes"] if "configMap" in v)
    assert config_volume["configMap"]["name"] == "tyk-dispatcher", "the ConfigMap of `helm install tyk-dispatcher`"
    assert gateway["podLabels"] == {"tyk-dispatcher/gateway": "tyk-dispatcher"}
    assert "checksum/tyk-dispatcher-config" in gateway["podAnnotations"], "gateway pods roll when the config changes"
    assert sidecar["securityContext"]["runAsUser"] == 65532
    assert sidecar["resources"]["limits"]


def test_overlay_documents_termination_grace():
    text = (DEPLOY / "tyk-oss-values.yaml").read_text()
    assert "terminationGracePeriodSeconds" in text and '"terminationGracePeriodSeconds":80' in text
    assert "kubectl -n tyk patch deployment gateway-tyk-tyk-gateway" in text
    assert "helm upgrade tyk tyk-helm/tyk-oss -n tyk --reuse-values -f THIS_FILE" in text


def test_overlay_container_is_the_charts_one_container():
    """Sidecar and service mode render the same container template: only the mode's ports,
    env values and mounts differ."""
    sidecar = gateway_values("tyk-gateway-values.yaml")["extraContainers"][0]
    service = dispatcher_container(objects(render({"mode": "service"})))
    for key in ("name", "image", "imagePullPolicy", "args", "securityContext", "resources",
                "startupProbe", "readinessProbe", "livenessProbe", "terminationMessagePolicy"):
        assert sidecar[key] == service[key], key
    assert [e["name"] for e in sidecar["env"]] == [e["name"] for e in service["env"]]


def test_overlays_equal_the_charts_configmap():
    cm = overlays(objects(render({})))
    for name in OVERLAYS:
        assert yaml.safe_load((DEPLOY / name).read_text()) == cm[name]


def plain_manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj:
                out.append((path.name, obj))
    return out


@pytest.mark.parametrize("kube_version", K8S_VERSIONS)
def test_plain_manifests_are_valid(kube_version):
    manifests = plain_manifests()
    assert {name for name, _ in manifests} == {
        "sidecar.yaml", "service.yaml", "sidecar-podmonitor.yaml", "service-servicemonitor.yaml",
        "prometheusrule.yaml", "grafana-dashboard.yaml"}
    operator = []
    for name, obj in manifests:
        meta = obj["metadata"]
        assert "helm.sh/hook" not in (meta.get("annotations") or {}), f"{name}: no helm test hooks for kubectl"
        assert "namespace" not in meta, f"{name}: kubectl apply -n chooses the namespace"
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            operator.append(obj)
        else:
            kubernetes_validate.validate(obj, kube_version, strict=True)
    results = validate_prometheus_operator(operator)
    assert results == [None] * len(operator), results


def test_plain_manifest_kinds():
    kinds = {}
    for name, obj in plain_manifests():
        kinds.setdefault(name, []).append(obj["kind"])
    assert kinds["service.yaml"] == ["ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget",
                                     "Service", "Service", "ServiceAccount"]
    assert kinds["sidecar.yaml"] == ["ConfigMap"]
    assert kinds["sidecar-podmonitor.yaml"] == ["PodMonitor"]
    assert kinds["service-servicemonitor.yaml"] == ["ServiceMonitor"]
    assert kinds["prometheusrule.yaml"] == ["PrometheusRule"]
    assert kinds["grafana-dashboard.yaml"] == ["ConfigMap"]
