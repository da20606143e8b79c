"""The chart helm/tyk-dispatcher: metadata, lint, values schema, every ci/ scenario rendered and
validated strictly for the oldest and newest Kubernetes it claims, and the rules schemas miss."""

from __future__ import annotations

import json
import re
import textwrap
import tomllib
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import (
    CHART, CI_FILES, K8S_VERSIONS, ROOT, DNS1035_LABEL, DNS1123_LABEL, DNS1123_SUBDOMAIN,
    ci_values, dispatcher_container, dispatcher_toml, notes, objects, of_kind, one, overlays,
    pod_specs, render, valid_label_key, valid_label_value, valid_port_name,
    validate_prometheus_operator,
)

MONITORING_GROUP = "monitoring.coreos.com"


def chart_yaml() -> dict[str, Any]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


# --- metadata -------------------------------------------------------------------------------

def test_chart_metadata_and_app_version_match_the_crate():
    meta = chart_yaml()
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["type"] == "application"
    assert meta["kubeVersion"] == ">=1.27.0-0"
    assert meta["appVersion"] == cargo["package"]["version"], "Chart.yaml appVersion must be Cargo.toml's version"
    assert helm.Chart.load(CHART).metadata["appVersion"] == cargo["package"]["version"]


def test_the_claimed_kubernetes_versions_are_the_ones_tested():
    assert chart_yaml()["kubeVersion"] == f">={K8S_VERSIONS[0]}-0"
    assert K8S_VERSIONS[-1] == kubernetes_validate.latest_version(), "the newest schemas kubernetes-validate has"


# --- lint -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kube_version", K8S_VERSIONS)
@pytest.mark.parametrize("ci", CI_FILES)
def test_lint_strict(ci, kube_version):
    report = helm.lint(CHART, ci_values(ci), strict=True, namespace="tyk", kube_version=f"v{kube_version}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


# --- values schema --------------------------------------------------------------------------

@pytest.mark.parametrize("bad, fragment", [
    ({"bogus": 1}, "bogus"),
    ({"image": {"repository": "x", "flavour": "y"}}, "flavour"),
    ({"config": {"listen": "[::]:1"}}, "listen"),                      # owned by the chart
    ({"config": {"otlp_headers": "authorization=secret"}}, "otlp_headers"),  # belongs in a Secret
    ({"config": {"log_calls": "yes"}}, "log_calls"),
    ({"config": {"log_format": "xml"}}, "log_format"),
    ({"mode": "daemonset"}, "mode"),
    ({"replicaCount": "2"}, "replicaCount"),
    ({"grpc": {"port": 70000}}, "port"),
    ({"networkPolicy": {"enabled": "true"}}, "enabled"),
    ({"podDisruptionBudget": {"maxUnavailable": 0}}, "maxUnavailable"),
    ({"monitoring": {"job": "plugins"}}, "job"),
    ({"commonLabels": {"team": "x" * 64}}, "team"),
    ({"sidecar": {"socketMode": "rw-rw-rw-"}}, "socketMode"),
    ({"tyk": {"gracefulShutdown": {"timeoutSeconds": -1}}}, "timeoutSeconds"),
    ({"workerThreads": 0}, "workerThreads"),
])
def test_schema_rejects(bad, fragment):
    chart = helm.Chart.load(CHART)
    with pytest.raises(helm.HelmValuesError) as err:
        chart.validate_schema(bad)
    assert fragment in str(err.value)


def test_schema_is_enforced_on_render():
    with pytest.raises(helm.HelmError) as err:
        render({"replicas": 3})
    assert "replicas" in str(err.value)


@pytest.mark.parametrize("good", [
    {"global": {"imageRegistry": "registry.example.com", "anything": {"nested": [1, 2]}}},
    {"podAnnotations": {"example.com/any-key": "v"}, "podLabels": {"team": "payments"}},
    {"resources": {"limits": {"cpu": "4", "memory": "1Gi", "example.com/device": 1}}},
    {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}},
    {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "tyk", "effect": "NoSchedule"}]},
    {"nodeSelector": {"kubernetes.io/arch": "amd64"}},
    {"workerThreads": None, "runAsUser": None},
])
def test_schema_accepts_free_form_maps_and_global(good):
    helm.Chart.load(CHART).validate_schema(good)


@pytest.mark.parametrize("ci", CI_FILES)
def test_ci_values_pass_the_schema(ci):
    helm.Chart.load(CHART).validate_schema(ci_values(ci))


def _no_free_form_without_reason(schema: dict[str, Any], path: str = "") -> list[str]:
    """Every object in the schema closes its keys, except the free-form maps named here."""
    free_form = {
        "global", "resources", "affinity", "autoscaling.behavior",
        "commonLabels", "tyk.podLabels", "podAnnotations", "podLabels", "nodeSelector",
        "serviceAccount.annotations", "service.annotations", "networkPolicy.scrapers.podLabels",
        "monitoring.additionalLabels", "monitoring.dashboard.labels", "monitoring.dashboard.annotations",
    }
    open_ = []
    if schema.get("type") == "object" and path not in free_form:
        if schema.get("additionalProperties") is not False:
            open_.append(path or "<root>")
    for key, sub in schema.get("properties", {}).items():
        open_ += _no_free_form_without_reason(sub, f"{path}.{key}" if path else key)
    return open_


def test_schema_closes_every_object_but_free_form_maps():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert _no_free_form_without_reason(schema) == []
    # and values.yaml documents every top-level key the schema knows (and no other)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"]) - {"global"}


# --- rendering: every scenario, strictly valid ----------------------------------------------

@pytest.mark.parametrize("kube_version", K8S_VERSIONS)
@pytest.mark.parametrize("ci", CI_FILES)
def test_rendered_objects_are_valid(ci, kube_version):
    objs = objects(render(ci_values(ci), kube_version=kube_version))
    assert objs
    operator = []
    for obj in objs:
        if obj["apiVersion"].startswith(MONITORING_GROUP + "/"):
            operator.append(obj)
            continue
        kubernetes_validate.validate(obj, kube_version, strict=True)
    if operator:
        results = validate_prometheus_operator(operator)
        bad = [(o["kind"], r) for o, r in zip(operator, results) if r]
        assert not bad, bad


@pytest.mark.parametrize("ci", CI_FILES)
def test_names_labels_and_ports(ci):
    check_names_labels_and_ports(objects(render(ci_values(ci))))


def check_names_labels_and_ports(objs):
    names = set()
    for obj in objs:
        meta = obj["metadata"]
        name = meta["name"]
        assert (obj["kind"], name) not in names, f"duplicate {obj['kind']} {name}"
        names.add((obj["kind"], name))
        assert len(name) <= 63, name
        assert DNS1123_SUBDOMAIN.match(name), name
        if obj["kind"] == "Service":
            assert DNS1035_LABEL.match(name), f"Service name {name} is not a DNS-1035 label"
        assert "namespace" not in meta, "templates leave the namespace to Helm / kubectl -n"
        label_maps = [meta.get("labels") or {}]
        if obj["kind"] == "Deployment":
            label_maps += [obj["spec"]["selector"]["matchLabels"], obj["spec"]["template"]["metadata"]["labels"]]
            assert obj["spec"]["selector"]["matchLabels"].items() <= obj["spec"]["template"]["metadata"]["labels"].items()
        if obj["kind"] in ("ServiceMonitor", "PodMonitor", "PodDisruptionBudget"):
            label_maps.append(obj["spec"]["selector"]["matchLabels"])
        for labels in label_maps:
            for key, value in labels.items():
                assert valid_label_key(key), f"{obj['kind']} {name}: label key {key!r}"
                assert valid_label_value(value), f"{obj['kind']} {name}: label {key}={value!r}"
        if obj["kind"] == "Service":
            for port in obj["spec"]["ports"]:
                assert valid_port_name(port["name"]), port
        if obj["kind"] == "ConfigMap":
            assert all(re.match(r"^[-._a-zA-Z0-9]+$", k) for k in obj.get("data", {}))
    for _, spec in pod_specs(objs):
        check_pod_ports(spec)
    if of_kind(objs, "ConfigMap") and any(o["metadata"]["name"].endswith("-tyk-values") for o in objs):
        for overlay in overlays(objs).values():
            gateway = overlay.get("gateway") or overlay["tyk-gateway"]["gateway"]
            for key, value in gateway["podLabels"].items():
                assert valid_label_key(key) and valid_label_value(value)
            for container in gateway["extraContainers"]:
                for port in container.get("ports", []):
                    assert valid_port_name(port["name"]), port
            for volume in gateway["extraVolumes"]:
                assert DNS1123_LABEL.match(volume["name"]) and len(volume["name"]) <= 63


def check_pod_ports(spec):
    names = [p["name"] for c in spec["containers"] for p in c.get("ports", [])]
    assert len(names) == len(set(names)), names
    for name in names:
        assert valid_port_name(name), name


@pytest.mark.parametrize("release", [
    "tyk-dispatcher-" + "a" * 38,                # 53, Helm's longest, contains the chart name
    "payments-plugins-" + "b" * 36,               # 53, gets "-tyk-dispatcher" appended
])
@pytest.mark.parametrize("mode", ["sidecar", "service"])
def test_long_release_names_render_valid_names(release, mode):
    assert len(release) == 53
    values = {"mode": mode, "monitoring": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
                                           "prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}}}
    objs = objects(render(values, name=release))
    check_names_labels_and_ports(objs)
    for obj in objs:
        if not obj["apiVersion"].startswith(MONITORING_GROUP):
            kubernetes_validate.validate(obj, K8S_VERSIONS[0], strict=True)
    # the scrape job still names tyk-dispatcher, for the TykDispatcherDown alert
    for monitor in of_kind(objs, "ServiceMonitor") + of_kind(objs, "PodMonitor"):
        endpoint = (monitor["spec"].get("endpoints") or monitor["spec"]["podMetricsEndpoints"])[0]
        job = endpoint["relabelings"][0]["replacement"]
        assert "tyk-dispatcher" in job and len(job) <= 63 + len("tyk-dispatcher-")


# --- the dispatcher's pods: security, probes, ports, env ------------------------------------

RESTRICTED = {
    "runAsNonRoot": True, "runAsUser": 65532, "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def assert_restricted(container):
    sc = container["securityContext"]
    for key, value in RESTRICTED.items():
        assert sc.get(key) == value, f"{container['name']}: securityContext.{key} = {sc.get(key)!r}"
    assert sc.get("privileged") is False


@pytest.mark.parametrize("ci", CI_FILES)
def test_restricted_security_context_and_pod_settings(ci):
    objs = objects(render(ci_values(ci)))
    assert_restricted(dispatcher_container(objs))
    specs = pod_specs(objs)
    assert specs, "every scenario renders a pod (Deployment or the helm test pod)"
    for name, spec in specs:
        assert spec["enableServiceLinks"] is False, name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"]:
            assert_restricted(container)
            assert container["resources"]["limits"], name
    for sa in of_kind(objs, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False


@pytest.mark.parametrize("ci", CI_FILES)
def test_probes_ports_and_command(ci):
    values = ci_values(ci)
    objs = objects(render(values))
    c = dispatcher_container(objs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["dispatch-admin"] == 9464
    if values.get("mode") == "service":
        assert ports["dispatch-grpc"] == 50051
        assert ("dispatch-tls" in ports) == bool(values.get("tls", {}).get("enabled"))
    else:
        assert set(ports) == {"dispatch-admin"}, "a sidecar serves gRPC on the socket or loopback only"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "dispatch-admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "dispatch-admin"}
    assert c["startupProbe"]["httpGet"]["port"] == "dispatch-admin"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 30
    assert c["args"] == ["--config", "/etc/tyk-dispatcher/dispatcher.toml"]
    assert "command" not in c, "the image's ENTRYPOINT runs the binary"
    assert any(m["mountPath"] == "/etc/tyk-dispatcher" and m["readOnly"] for m in c["volumeMounts"])


def notes_extra_envs(text: str) -> list[dict[str, str]]:
    """The extraEnvs list that service-mode NOTES print for the gateways."""
    block = text.split("  extraEnvs:\n", 1)[1].split("  podLabels:", 1)[0]
    return yaml.safe_load(textwrap.dedent(block))


def env_of(container) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("ci", CI_FILES)
def test_one_coprocess_block_feeds_both_sides(ci):
    values = ci_values(ci)
    objs = objects(render(values))
    env = env_of(dispatcher_container(objs))
    coprocess = {"grpcRecvMaxSize": 67108864, "grpcSendMaxSize": 67108864, **values.get("coprocess", {})}
    assert env["TYK_GW_COPROCESSOPTIONS_GRPCRECVMAXSIZE"] == str(coprocess["grpcRecvMaxSize"])
    assert env["TYK_GW_COPROCESSOPTIONS_GRPCSENDMAXSIZE"] == str(coprocess["grpcSendMaxSize"])
    server = env["TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER"]
    if values.get("mode") == "service":
        assert server == "dns:///tyk-dispatcher-headless.tyk.svc.cluster.local:50051"
        # the gateways get the very same values (NOTES print them)
        gateway_env = {e["name"]: e["value"] for e in notes_extra_envs(notes(render(values)))}
        assert gateway_env["TYK_GW_COPROCESSOPTIONS_GRPCROUNDROBINLOADBALANCING"] == "true"
    else:
        assert server == coprocess.get("grpcServer", "unix:///var/run/tyk-dispatcher/dispatcher.sock")
        gateway_env = {e["name"]: e["value"] for e in overlays(objs)["tyk-oss-values.yaml"]["tyk-gateway"]["gateway"]["extraEnvs"]}
    for name in ("COPROCESSGRPCSERVER", "GRPCRECVMAXSIZE", "GRPCSENDMAXSIZE"):
        key = "TYK_GW_COPROCESSOPTIONS_" + name
        assert gateway_env[key] == env[key], key
    assert "TYK_GW_COPROCESSOPTIONS_ENABLECOPROCESS" not in gateway_env, "Tyk's chart sets it already"
    assert not [k for k in env if k.startswith("TYK_DISPATCHER_")], "config goes in dispatcher.toml"


def test_worker_threads_follow_the_cpu_limit():
    assert "worker_threads = 2" in dispatcher_toml(objects(render({})))  # limits.cpu "2"
    assert "worker_threads = 3" in dispatcher_toml(objects(render({"resources": {"limits": {"cpu": "2500m", "memory": "1Gi"}}})))
    assert "worker_threads = 1" in dispatcher_toml(objects(render(ci_values("sidecar-values.yaml"))))
    assert "worker_threads" not in dispatcher_toml(objects(render({"resources": {"limits": None}})))


def test_the_in_flight_budget_fills_the_memory_limit_less_the_overhead():
    def budget(values):
        lines = [l for l in dispatcher_toml(objects(render(values))).splitlines()
                 if l.startswith("max_in_flight_bytes = ")]
        return int(lines[0].split("=")[1]) if lines else None

    mib = 1 << 20
    assert budget({}) == 384 * mib - 64 * mib  # limits.memory 384Mi
    assert budget({"resources": {"limits": {"cpu": "2", "memory": "1Gi"}}}) == 960 * mib
    # Set by the user: kept as it is (and checked against the limit).
    assert budget({"config": {"max_in_flight_bytes": 256 * mib}}) == 256 * mib
    # No memory limit: the dispatcher's own default.
    assert budget({"resources": {"limits": None}}) is None


@pytest.mark.parametrize("values, message", [
    ({"workerThreads": 4}, "exceeds resources.limits.cpu"),
    ({"resources": {"limits": {"cpu": "1", "memory": "160Mi"}}}, "below twice the largest message"),
    ({"config": {"max_in_flight_bytes": 402653184}}, "is below the in-flight budget"),
    ({"config": {"drain_delay_secs": 20}}, "shorter than the gateway's graceful shutdown"),
    ({"tyk": {"gracefulShutdown": {"delaySeconds": 30, "timeoutSeconds": 30}}}, "shorter than the gateway's graceful shutdown"),
    ({"coprocess": {"grpcServer": "tcp://10.0.0.1:50051"}}, "sidecar mode"),
    ({"coprocess": {"grpcServer": "unix:///tmp/elsewhere.sock"}}, "sidecar mode"),
    ({"tls": {"enabled": True, "secretName": "x"}}, "TLS is for service mode"),
    ({"tyk": {"namespace": "elsewhere"}}, "install this chart in the Tyk release's namespace"),
    ({"mode": "service", "coprocess": {"grpcServer": "unix:///var/run/x.sock"}}, "cannot be shared across pods"),
    ({"mode": "service", "tls": {"enabled": True}}, "tls.secretName"),
    ({"mode": "service", "podDisruptionBudget": {"minAvailable": 2}}, "blocks every node drain"),
    ({"mode": "service", "autoscaling": {"enabled": True, "minReplicas": 1}, "podDisruptionBudget": {"minAvailable": 1}}, "blocks every node drain"),
    ({"mode": "service", "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "minReplicas"),
])
def test_inconsistent_values_fail_the_render(values, message):
    with pytest.raises(helm.HelmRenderError) as err:
        render(values)
    assert message in str(err.value)


# --- modes ----------------------------------------------------------------------------------

def kinds(values, api=True):
    return sorted(o["kind"] for o in objects(render(values, api=api)))


def test_sidecar_mode_renders_only_the_pods_side_objects():
    objs = objects(render({}))
    assert kinds({}) == ["ConfigMap", "ConfigMap", "Pod"]  # config, overlay, helm test
    assert not of_kind(objs, "NetworkPolicy"), "a policy selecting the gateway pod would cut its own traffic"
    monitoring = kinds(ci_values("sidecar-monitoring-values.yaml"))
    assert monitoring == ["ConfigMap", "ConfigMap", "ConfigMap", "Pod", "PodMonitor", "PrometheusRule"]


def test_service_mode_objects():
    assert kinds({"mode": "service"}) == sorted([
        "ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Pod", "Service", "Service", "ServiceAccount"])
    objs = objects(render({"mode": "service"}))
    deployment = one(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spec = deployment["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > 45 + 30, "drain_delay_secs + shutdown_grace_secs"
    assert "checksum/config" in deployment["spec"]["template"]["metadata"]["annotations"]
    services = {s["metadata"]["name"]: s for s in of_kind(objs, "Service")}
    assert services["tyk-dispatcher"]["spec"]["type"] == "ClusterIP"
    assert services["tyk-dispatcher-headless"]["spec"]["clusterIP"] == "None"
    for s in services.values():
        assert s["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert "max_connection_age_secs = 300" in dispatcher_toml(objs), "Tyk re-resolves only on connection events"
    assert "log_calls = true" in dispatcher_toml(objs)


def test_sidecar_config_turns_call_logs_off_and_opens_the_socket_in_the_pod():
    toml = tomllib.loads(dispatcher_toml(objects(render({}))))
    assert toml["log_calls"] is False
    assert toml["log_format"] == "json"
    assert toml["unix_socket_mode"] == "0666"
    assert "listen" not in toml, "the sidecar listens where TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER points"
    assert "max_connection_age_secs" not in toml


def test_pdb_never_blocks_a_drain():
    for values in (ci_values(ci) for ci in CI_FILES):
        if values.get("mode") != "service":
            continue
        objs = objects(render(values))
        for pdb in of_kind(objs, "PodDisruptionBudget"):
            deployment = one(objs, "Deployment")
            replicas = deployment["spec"].get("replicas") or values["autoscaling"]["minReplicas"]
            if "minAvailable" in pdb["spec"]:
                assert pdb["spec"]["minAvailable"] < replicas
            else:
                assert pdb["spec"]["maxUnavailable"] >= 1
    single = objects(render(ci_values("networkpolicy-off-values.yaml")))
    assert one(single, "Deployment")["spec"]["replicas"] == 1
    assert one(single, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_hpa_scenario():
    objs = objects(render(ci_values("service-values.yaml")))
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tyk-dispatcher"}
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert "replicas" not in one(objs, "Deployment")["spec"], "the HPA owns the replica count"


def test_network_policy_admits_only_gateways_and_scrapers():
    objs = objects(render({"mode": "service"}))
    policy = one(objs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"] == one(objs, "Deployment")["spec"]["selector"]["matchLabels"]
    rules = policy["spec"]["ingress"]
    for rule in rules:
        assert rule.get("from"), "a rule without peers admits everyone"
    grpc = [r for r in rules if {"port": "dispatch-grpc", "protocol": "TCP"} in r["ports"]]
    assert len(grpc) == 1
    assert grpc[0]["from"] == [{"podSelector": {"matchLabels": {"tyk-dispatcher/gateway": "tyk-dispatcher"}}}]
    admin = [r for r in rules if {"port": "dispatch-admin", "protocol": "TCP"} in r["ports"]]
    assert {"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["monitoring"]}]},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}} in admin[0]["from"]
    # gateways in other namespaces
    other = one(objects(render(ci_values("service-values.yaml"))), "NetworkPolicy")
    peer = other["spec"]["ingress"][0]["from"][0]
    assert peer["namespaceSelector"]["matchExpressions"][0]["values"] == ["tyk", "tyk-edge"]
    assert not of_kind(objects(render(ci_values("networkpolicy-off-values.yaml"))), "NetworkPolicy")


def test_tls_and_mtls_from_secrets():
    objs = objects(render(ci_values("tls-values.yaml")))
    toml = tomllib.loads(dispatcher_toml(objs))
    assert toml["tls_listen"] == ["[::]:50052"]
    assert toml["tls_cert"] == "/etc/tyk-dispatcher/tls/tls.crt"
    assert toml["tls_key"] == "/etc/tyk-dispatcher/tls/tls.key"
    assert toml["tls_client_ca"] == "/etc/tyk-dispatcher/client-ca/ca.crt"
    volumes = {v["name"]: v for v in one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tyk-dispatcher-tls"]["secret"]["secretName"] == "tyk-dispatcher-tls"
    assert volumes["tyk-dispatcher-client-ca"]["secret"]["secretName"] == "tyk-dispatcher-client-ca"
    for service in of_kind(objs, "Service"):
        assert {"name": "grpc-tls", "port": 50052, "targetPort": "dispatch-tls", "protocol": "TCP"} in service["spec"]["ports"]
    policy = one(objs, "NetworkPolicy")
    tls_rules = [r for r in policy["spec"]["ingress"] if {"port": "dispatch-tls", "protocol": "TCP"} in r["ports"]]
    assert len(tls_rules) == 2  # the gateways and the listed TLS clients


def test_affinity_values():
    spec = lambda v: one(objects(render({"mode": "service", **v})), "Deployment")["spec"]["template"]["spec"]  # noqa: E731
    assert "preferredDuringSchedulingIgnoredDuringExecution" in spec({})["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in spec({"podAntiAffinityPreset": "hard"})["affinity"]["podAntiAffinity"]
    assert "affinity" not in spec({"podAntiAffinityPreset": "none"})
    custom = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["tyk"]}]}]}}}
    assert spec({"affinity": custom})["affinity"] == custom


# --- monitoring -----------------------------------------------------------------------------

def test_monitoring_renders_only_when_enabled_and_the_cluster_has_the_api():
    values = ci_values("monitoring-values.yaml")
    with_api = objects(render(values, api=True))
    without = objects(render(values, api=False))
    assert [o["kind"] for o in with_api if o["apiVersion"].startswith(MONITORING_GROUP)] == ["PrometheusRule", "ServiceMonitor"]
    assert not [o for o in without if o["apiVersion"].startswith(MONITORING_GROUP)]
    assert "WARNING" in notes(render(values, api=False))
    assert not [o for o in objects(render({"mode": "service"})) if o["apiVersion"].startswith(MONITORING_GROUP)], "off by default"


def test_scrape_jobs_labels_and_selectors():
    objs = objects(render(ci_values("monitoring-values.yaml")))
    monitor = one(objs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert one(objs, "PrometheusRule")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"
    assert endpoint["relabelings"] == [{"action": "replace", "targetLabel": "job", "replacement": "tyk-dispatcher"}]
    assert re.fullmatch(r".*tyk-dispatcher.*", endpoint["relabelings"][0]["replacement"])  # TykDispatcherDown
    cluster_ip = next(s for s in of_kind(objs, "Service") if s["spec"].get("clusterIP") != "None")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= cluster_ip["metadata"]["labels"].items()
    headless = next(s for s in of_kind(objs, "Service") if s["spec"].get("clusterIP") == "None")
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= headless["metadata"]["labels"].items(), "one target per pod"
    assert "admin" in {p["name"] for p in cluster_ip["spec"]["ports"]}

    sidecar = objects(render(ci_values("sidecar-monitoring-values.yaml")))
    pod_monitor = one(sidecar, "PodMonitor")
    overlay_gateway = overlays(sidecar)["tyk-oss-values.yaml"]["tyk-gateway"]["gateway"]
    assert pod_monitor["spec"]["selector"]["matchLabels"] == overlay_gateway["podLabels"]
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == overlay_gateway["extraContainers"][0]["ports"][0]["name"]
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["tyk"]}
    custom = objects(render({"monitoring": {"podMonitor": {"enabled": True}, "job": "edge-tyk-dispatcher"}}))
    assert one(custom, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["replacement"] == "edge-tyk-dispatcher"


def test_rules_and_dashboard_are_the_canonical_files():
    objs = objects(render(ci_values("monitoring-values.yaml")))
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert one(objs, "PrometheusRule")["spec"] == alerts
    dashboard = one(objs, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Tyk"}
    assert dashboard["data"]["tyk-dispatcher.json"] == (CHART / "files" / "dashboard.json").read_text()
    json.loads(dashboard["data"]["tyk-dispatcher.json"])


# --- NOTES and helm test --------------------------------------------------------------------

def test_sidecar_notes_print_the_helm_upgrade_line():
    text = notes(render({}))
    assert "helm upgrade tyk tyk-helm/tyk-oss -n tyk --reuse-values -f tyk-dispatcher-overlay.yaml" in text
    assert "get configmap tyk-dispatcher-tyk-values \\\n    -o jsonpath='{.data.tyk-oss-values\\.yaml}'" in text
    assert '"terminationGracePeriodSeconds":80' in text
    assert "kubectl -n tyk patch deployment gateway-tyk-tyk-gateway" in text
    component = notes(render(ci_values("sidecar-values.yaml")))
    assert "helm upgrade edge tyk-helm/tyk-gateway -n tyk --reuse-values -f tyk-dispatcher-overlay.yaml" in component
    assert "{.data.tyk-gateway-values\\.yaml}" in component
    assert "deployment gateway-edge-tyk-gateway" in component
    # 5 + 40 s of gateway shutdown is shorter than the 50 s drain; plus 30 s grace and 5 s
    assert '"terminationGracePeriodSeconds":85' in component
    without_cm = notes(render({"sidecar": {"overlayConfigMap": False}}))
    assert "helm upgrade tyk tyk-helm/tyk-oss -n tyk --reuse-values -f deploy/tyk-oss-values.yaml" in without_cm


def test_service_notes_print_extra_envs_for_other_namespaces():
    text = notes(render(ci_values("service-values.yaml")))
    assert 'value: "dns:///tyk-dispatcher-headless.tyk.svc.cluster.local:50051"' in text
    assert "TYK_GW_COPROCESSOPTIONS_GRPCROUNDROBINLOADBALANCING" in text
    assert "tyk-dispatcher/gateway: tyk-dispatcher" in text
    assert "in the namespaces tyk, tyk-edge" in text


def test_helm_test_hooks():
    for values, container in (({}, "check-config"), ({"mode": "service"}, "readyz")):
        pods = of_kind(objects(render(values)), "Pod")
        assert len(pods) == 1
        pod = pods[0]
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "test", "not selected by the Services"
        assert pod["spec"]["containers"][0]["name"] == container
    readyz = of_kind(objects(render({"mode": "service"})), "Pod")[0]["spec"]["containers"][0]
    assert readyz["command"][-1] == "http://tyk-dispatcher.tyk.svc.cluster.local:9464/readyz"
    check = of_kind(objects(render({})), "Pod")[0]["spec"]["containers"][0]
    assert check["args"] == ["check-config", "--config", "/etc/tyk-dispatcher/dispatcher.toml"]
    assert not of_kind(objects(render({"tests": {"enabled": False}})), "Pod")


def test_config_schema_knows_every_key_of_the_binary():
    """values.schema.json's config covers the binary's file keys (src/config/sources.rs KEYS), less
    those the chart owns or keeps out of a ConfigMap."""
    source = (ROOT / "src" / "config" / "sources.rs").read_text()
    block = re.search(r"pub const KEYS: &\[&str\] = &\[(.*?)\];", source, re.S)[1]
    keys = set(re.findall(r'"([a-z0-9_]+)"', block))
    owned = {"listen", "tls_listen", "tls_cert", "tls_key", "tls_client_ca", "admin_listen",
             "unix_socket_mode", "worker_threads", "otlp_headers"}
    schema = json.loads((CHART / "values.schema.json").read_text())
    config = set(schema["properties"]["config"]["properties"])
    assert owned <= keys, owned - keys
    assert config == keys - owned, {"missing from the schema": keys - owned - config, "unknown to the binary": config - keys}
