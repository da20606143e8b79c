"""The sidecar as shipped: helm/tyk-dispatcher rendered in sidecar mode by Helm's own engine, its
Tyk values overlay (ConfigMap <fullname>-tyk-values, key tyk-oss-values.yaml) read back, and the
overlay's dispatcher container run as the kubelet would run it, next to a real gateway that gets
the overlay's TYK_GW_* variables.

Only what a kubelet supplies is filled in (kubelet.py): the pod volumes as directories (the
ConfigMap volume from the rendered ConfigMap, the socket emptyDir shared by both containers),
each mount path mapped to its volume's directory in every env value and argument, fieldRef
values from the pod's facts, `$(VAR)` references expanded, HOSTNAME and the `kubernetes`
Service's variables, and a network namespace of the pod's own (loopback only), in which the
rendered wildcard admin listener binds and the probes and scrapes run. Nothing is written by hand:
a change to the chart changes what runs here, and what this emulation cannot apply fails.

The rendered ports are kept (the admin port inside the pod's namespace), so this module runs on
its own stack. The dispatcher runs as the current user, not the rendered runAsUser.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import chart_render
import harness
import kubelet
from harness import dispatch_count

RELEASE, NAMESPACE = "tyk-dispatcher", "tyk"
# The chart's defaults in sidecar mode: what deploy/ ships and what the README installs.
VALUES = {"mode": "sidecar"}
OVERLAY_KEY = "tyk-oss-values.yaml"      # tyk-oss, tyk-stack, …: values under tyk-gateway.gateway.*
OVERLAY_PREFIX = ["tyk-gateway", "gateway"]
# A gateway pod of Tyk's Deployment gateway-tyk-tyk-gateway (release tyk), on this machine.
POD = kubelet.PodFacts(name="gateway-tyk-tyk-gateway-6f8d9c7b5-e2e01", namespace=NAMESPACE,
                       node_name=socket.gethostname())
PRE, RESPONSE = "sidecarPre", "sidecarResponse"


def image_entrypoint() -> list[str]:
    """The ENTRYPOINT of the Dockerfile's final stage (the image the container runs)."""
    entries = [line for line in (harness.REPO / "Dockerfile").read_text().splitlines()
               if line.startswith("ENTRYPOINT ")]
    return json.loads(entries[-1].split(" ", 1)[1])


def proc_cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def proc_environ(pid: int) -> dict[str, str]:
    items = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(item.split("=", 1) for item in items if item)


class AdminOverPodNetwork:
    """The dispatcher's admin port, reached from inside the pod's network namespace (for pods
    with `run`, the rendered pod, and `network`, its namespace)."""

    def admin_get(self, path: str, timeout: float = 5) -> tuple[int, str]:
        port = self.run.port("dispatch-admin")
        reply = self.network.http_get(f"http://{POD.pod_ip}:{port}{path}", timeout)
        assert "status" in reply, reply
        return reply["status"], reply["body"]

    def metrics(self) -> str:
        status, body = self.admin_get("/metrics")
        assert status == 200, body
        return body


@dataclass
class Pod(AdminOverPodNetwork):
    workdir: Path
    binary: Path
    objects: list[dict[str, Any]]
    gateway_values: dict[str, Any]
    sidecar: dict[str, Any]
    volumes: dict[str, Path]
    run: kubelet.ContainerRun
    gateway_run: kubelet.ContainerRun
    gateway_env: dict[str, str]
    network: kubelet.PodNetwork
    prober: kubelet.Prober
    startup: kubelet.ProbeResult
    dispatcher: harness.Proc
    redis: harness.Redis
    upstream: harness.Upstream
    gateway: harness.Gateway



def overlay_gateway_values(objects: list[dict[str, Any]]) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-tyk-values")]
    assert len(found) == 1, [o["metadata"]["name"] for o in found]
    doc = yaml.safe_load(found[0]["data"][OVERLAY_KEY])
    for key in OVERLAY_PREFIX:
        assert list(doc) == [key], f"{OVERLAY_KEY}: expected only {key!r}, got {list(doc)}"
        doc = doc[key]
    return doc


@pytest.fixture(scope="module")
def pod(tools, workroot):
    workdir = workroot / "sidecar"
    workdir.mkdir()
    missing = chart_render.missing_helm()
    if missing:
        pytest.fail(missing, pytrace=False)
    objects = chart_render.render_chart(VALUES, workdir / "rendered.json", name=RELEASE, namespace=NAMESPACE)
    gateway_values = overlay_gateway_values(objects)
    (sidecar,) = gateway_values["extraContainers"]
    assert sidecar["name"] == "tyk-dispatcher"
    # The image runs its ENTRYPOINT with the container's args; the release binary stands for it.
    assert image_entrypoint() == ["/usr/local/bin/tyk-dispatcher"], image_entrypoint()

    volumes = kubelet.materialize_volumes(gateway_values["extraVolumes"], objects, workdir / "volumes", NAMESPACE)
    run = kubelet.container_run(sidecar, POD, volumes)
    # The gateway container's part of the overlay: its extra variables and mounts (the rest of
    # that container is Tyk's chart; here it is harness.Gateway's tyk.conf).
    gateway_part = {"name": "gateway-tyk-gateway", "env": gateway_values.get("extraEnvs") or [],
                    "volumeMounts": gateway_values.get("extraVolumeMounts") or []}
    gateway_run = kubelet.container_run(gateway_part, POD, volumes)
    gateway_env = {e["name"]: gateway_run.env[e["name"]] for e in gateway_part["env"]}

    procs: list[harness.Proc] = []
    try:
        network = kubelet.PodNetwork()
        dispatcher = harness.Proc("dispatcher", network.wrap([str(tools.dispatcher), *run.args]),
                                  workdir / "dispatcher.log", env=run.env, cwd=Path("/"))
        procs.append(dispatcher)
        network.attach(dispatcher.pid, tools.dispatcher)
        prober = kubelet.Prober(network, run, POD)
        startup = prober.until_success(sidecar["startupProbe"])
        redis = harness.Redis(tools, workdir)
        procs.append(redis.proc)
        upstream = harness.Upstream(tools, workdir)
        procs.append(upstream.proc)
        # tyk.conf names a socket nobody serves: only the overlay's variables can make calls work.
        gateway = harness.Gateway(
            tools, workdir, redis, grpc_server=f"unix://{workdir}/not-the-sidecar.sock", env=gateway_env,
            apis=[harness.classic_api("sidecar", "/sidecar/", upstream.url, pre=[PRE], response=[RESPONSE])])
        procs.append(gateway.proc)
        yield Pod(workdir, tools.dispatcher, objects, gateway_values, sidecar, volumes, run, gateway_run, gateway_env, network, prober,
                  startup, dispatcher, redis, upstream, gateway)
    finally:
        for proc in reversed(procs):
            proc.stop()


def test_the_container_runs_exactly_as_rendered(pod):
    """argv, environment and config file of the running dispatcher are the rendered ones, with only
    the kubelet's part filled in; this prints what was mapped."""
    socket_dir = pod.volumes["tyk-dispatcher-socket"]
    config_dir = pod.volumes["tyk-dispatcher-config"]
    mounts = {path: str(d) for path, d in pod.run.mounts.table}
    print("mounts (dispatcher):", mounts)
    print("mounts (gateway):", {path: str(d) for path, d in pod.gateway_run.mounts.table})
    print("env (dispatcher):", json.dumps(pod.run.env, indent=1))
    print("env (gateway, from the overlay):", json.dumps(pod.gateway_env, indent=1))
    print("args:", pod.run.args, "| omitted env:", pod.run.omitted_env)
    print("not emulated:", kubelet.not_emulated(pod.sidecar))

    # The process: the image's entrypoint (our binary) with the rendered args, and the resolved env.
    assert proc_cmdline(pod.dispatcher.pid) == [str(pod.binary), *pod.run.args]
    assert os.path.realpath(f"/proc/{pod.dispatcher.pid}/exe") == os.path.realpath(pod.binary)
    assert harness.without_malloc_tuning(proc_environ(pod.dispatcher.pid)) == pod.run.env
    rendered_env = {e["name"]: e for e in pod.sidecar["env"]}
    assert set(pod.run.env) == set(rendered_env) | {"HOSTNAME"} | set(kubelet.KUBERNETES_SERVICE_ENV)
    # What the kubelet filled in, as values.
    assert mounts == {"/etc/tyk-dispatcher": str(config_dir), "/var/run/tyk-dispatcher": str(socket_dir)}
    assert pod.run.args == ["--config", f"{config_dir}/dispatcher.toml"]
    assert pod.sidecar["args"] == ["--config", "/etc/tyk-dispatcher/dispatcher.toml"]
    server = f"unix://{socket_dir}/dispatcher.sock"
    assert rendered_env["TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER"]["value"] == \
        "unix:///var/run/tyk-dispatcher/dispatcher.sock"
    assert pod.run.env["TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER"] == server
    assert pod.run.env["K8S_POD_NAME"] == POD.name
    assert pod.run.env["K8S_NAMESPACE_NAME"] == NAMESPACE
    assert pod.run.env["K8S_NODE_NAME"] == POD.node_name
    assert pod.run.env["OTEL_RESOURCE_ATTRIBUTES"] == (
        f"k8s.pod.name={POD.name},k8s.namespace.name={NAMESPACE},k8s.node.name={POD.node_name},"
        "k8s.container.name=tyk-dispatcher")
    # The gateway got the overlay's variables, with the same socket.
    assert pod.gateway_env["TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER"] == server
    assert all(name.startswith("TYK_GW_") for name in pod.gateway_env), pod.gateway_env
    gateway_environ = proc_environ(pod.gateway.proc.pid)
    assert {k: gateway_environ[k] for k in pod.gateway_env} == pod.gateway_env
    # The config file is the rendered ConfigMap's, byte for byte, behind the kubelet's symlinks.
    (configmap,) = [o for o in pod.objects if o["kind"] == "ConfigMap" and "dispatcher.toml" in o.get("data", {})]
    config_file = config_dir / "dispatcher.toml"
    assert config_file.is_symlink() and os.readlink(config_file) == "..data/dispatcher.toml"
    assert config_file.read_text() == configmap["data"]["dispatcher.toml"]
    for path in ("/etc/tyk-dispatcher", "/var/run/tyk-dispatcher"):
        assert path not in config_file.read_text(), f"the config file names {path}, which is not mapped"
    # It listens where the gateway dials and serves admin on the rendered wildcard address,
    # inside the pod's network namespace.
    events = [json.loads(line) for line in pod.dispatcher.text().splitlines() if line.startswith("{")]
    assert events, "log_format json (from the config file) gave no JSON lines"
    listeners = {e["addr"] for e in events if e.get("message") == "gRPC listener"}
    admin = {e["addr"] for e in events if e.get("message") == "admin interface"}
    assert listeners == {server}, listeners
    assert admin in ({"[::]:9464"}, {"0.0.0.0:9464"}), admin


def test_requests_flow_through_pre_and_response_plugins(pod):
    before = pod.metrics()
    n = 10
    for i in range(n):
        reply = pod.gateway.request("GET", f"/sidecar/item/{i}?q={i}")
        assert reply.status == 200, reply
        assert reply.json()["path"] == f"/item/{i}" and reply.json()["query"] == f"q={i}"
    after = pod.metrics()
    for hook_type, name in (("Pre", PRE), ("Response", RESPONSE)):
        delta = dispatch_count(after, hook_type, name, "unchanged") - dispatch_count(before, hook_type, name, "unchanged")
        assert delta == n, f"{hook_type} {name}: {delta} calls for {n} requests"
        assert dispatch_count(after, hook_type, name) == dispatch_count(after, hook_type, name, "unchanged")
    # Over the socket in the shared emptyDir, with the rendered unix_socket_mode.
    sock = pod.volumes["tyk-dispatcher-socket"] / "dispatcher.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o666
    assert harness.metric(after, "tyk_dispatcher_connections") >= 1
    # log_calls = false (the chart's sidecar default): no line per call.
    assert '"message":"dispatch"' not in pod.dispatcher.text()


def test_probes_answer_on_the_rendered_port_and_path(pod):
    port = pod.run.port(pod.sidecar["readinessProbe"]["httpGet"]["port"])
    assert port == next(p["containerPort"] for p in pod.sidecar["ports"] if p["name"] == "dispatch-admin")
    assert pod.startup.ok and pod.startup.status == 200, pod.startup
    print(f"startup probe {pod.startup.url}: {pod.startup.status} after {pod.startup.attempts} attempt(s)")
    readiness = pod.prober.until_success(pod.sidecar["readinessProbe"])
    liveness = pod.prober.until_success(pod.sidecar["livenessProbe"])
    for result, path in ((readiness, pod.sidecar["readinessProbe"]["httpGet"]["path"]),
                         (liveness, pod.sidecar["livenessProbe"]["httpGet"]["path"])):
        print(f"probe {result.url}: {result.status} {result.body!r}")
        assert result.url == f"http://{POD.pod_ip}:{port}{path}"
        assert result.status == 200 and result.attempts == 1, result
    assert liveness.body == "ok\n"
    assert {readiness.url.rsplit("/", 1)[1], liveness.url.rsplit("/", 1)[1]} == {"readyz", "livez"}


def test_pod_termination_the_dispatcher_leaves_after_the_gateway(pod):
    """The kubelet sends SIGTERM to both containers at once: the dispatcher turns unready, keeps
    serving while the gateway's connection is open, and exits 0 once it closes, well within the
    grace period the chart prints."""
    config = (pod.volumes["tyk-dispatcher-config"] / "dispatcher.toml").read_text()
    drain = int(next(line.split("=")[1] for line in config.splitlines() if line.startswith("drain_delay_secs")))
    started = time.monotonic()
    pod.gateway.proc.send_signal(signal.SIGTERM)
    pod.dispatcher.send_signal(signal.SIGTERM)
    readiness = pod.prober.once(pod.sidecar["readinessProbe"])
    gateway_code = pod.gateway.proc.wait(60)
    gateway_left = time.monotonic() - started
    code = pod.dispatcher.wait(drain + 35)
    left = time.monotonic() - started
    print(f"gateway exited {gateway_code} after {gateway_left:.2f}s, dispatcher {code} after {left:.2f}s; "
          f"readiness during the drain: {readiness.status}")
    assert readiness.status == 503, readiness
    assert code == 0, pod.dispatcher.tail()
    assert left >= gateway_left - 0.05
    assert left < drain, f"the dispatcher waited {left:.1f}s: it did not see the gateway's connection close"
    log = pod.dispatcher.text()
    assert "shutdown requested: draining" in log and '"message":"stopped"' in log
    assert not (pod.volumes["tyk-dispatcher-socket"] / "dispatcher.sock").exists()
