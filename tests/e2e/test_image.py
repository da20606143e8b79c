"""The image as users run it: built by scripts/build-image.sh from the unmodified Dockerfile (on
the local base images of scripts/local-base-images.sh), started by a real container runtime
(podman with runc) exactly as the chart renders the sidecar container (container.py: the image's
ENTRYPOINT with the rendered args; env with fieldRef values and $(VAR) references filled in as a
kubelet does; the mounts; securityContext and resources), next to a real Tyk Gateway that gets
the overlay's TYK_GW_* variables and shares the socket volume (the chart's emptyDir) with it.

What is checked on the running container is read from this machine's side (/proc of its first
process, its cgroup, its mount namespace), since the image has no shell to ask from inside.

Skipped, loudly, only when tests/e2e/run.sh says so in E2E_IMAGE_SKIP (podman missing or not
root, never under CI); otherwise a missing podman or image fails.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import stat
import subprocess
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import chart_render
import container
import harness
import kubelet
import traffic
from harness import dispatch_count
from test_sidecar import (NAMESPACE, POD, PRE, RELEASE, RESPONSE, VALUES, AdminOverPodNetwork,
                          overlay_gateway_values, proc_environ)

if os.environ.get("E2E_IMAGE_SKIP"):
    pytest.skip(f"the image test did not run: {os.environ['E2E_IMAGE_SKIP']}", allow_module_level=True)

NAME = "tyk-dispatcher-e2e"
BINARY = "/usr/local/bin/tyk-dispatcher"
SHELLS = {"sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "busybox", "toybox"}
PACKAGE_MANAGERS = {"dpkg", "apt", "apt-get", "apt-cache", "aptitude", "apk", "rpm", "yum", "dnf", "microdnf"}
# Besides the rendered and resolved variables: the image's ENV, and what the runtime adds.
RUNTIME_ENV = {"PATH", "SSL_CERT_FILE", "HOME", "HOSTNAME", "container", "TERM"}
MAX_IMAGE_BYTES = 64 * 2**20
SLOW_MS = 3000


def git_revision() -> str:
    """The revision scripts/build-image.sh labels the image with, for the tree as it is now."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=harness.REPO, capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    status = subprocess.run(["git", "status", "--porcelain", "--", "Cargo.toml", "Cargo.lock", "build.rs", "proto",
                             "src", "Dockerfile"], cwd=harness.REPO, capture_output=True, text=True, check=True)
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def runtime_base() -> str:
    froms = [line.split()[1] for line in (harness.REPO / "Dockerfile").read_text().splitlines()
             if line.upper().startswith("FROM ")]
    return froms[-1]


def grace_period(objects: list[dict[str, Any]]) -> int:
    """terminationGracePeriodSeconds as the chart prints it in the overlay: the patch it tells users
    to apply to the gateway's workload (tyk-charts has no value for it)."""
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-tyk-values")]
    text = next(iter(configmap["data"].values()))
    patch = re.search(r"-p '(\{.*\})'", text)
    assert patch, "the overlay prints no terminationGracePeriodSeconds patch"
    return int(json.loads(patch[1])["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])


def proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def cgroup_value(pid: int, controller: str, v1_file: str, v2_file: str) -> str:
    """One cgroup setting of the process: cgroup v1 (a hierarchy per controller) or v2."""
    entries = [line.split(":", 2) for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()]
    for _, controllers, path in entries:
        if controller in controllers.split(","):
            return (Path("/sys/fs/cgroup") / controller / path.lstrip("/") / v1_file).read_text().strip()
    for _, controllers, path in entries:
        if controllers == "":
            return (Path("/sys/fs/cgroup") / path.lstrip("/") / v2_file).read_text().strip()
    raise AssertionError(f"pid {pid}: no {controller} cgroup in {entries}")


def write_error(path: Path) -> int | None:
    """The errno of creating a file at path (None: it could be written, and was removed)."""
    try:
        with open(path, "x") as f:
            f.write("x")
    except OSError as err:
        return err.errno
    path.unlink()
    return None


@dataclass
class ImagePod(AdminOverPodNetwork):
    workdir: Path
    objects: list[dict[str, Any]]
    sidecar: dict[str, Any]
    volumes: dict[str, Path]
    run: kubelet.ContainerRun
    gateway_env: dict[str, str]
    container: container.Container
    pid: int
    network: container.ContainerNetwork
    prober: kubelet.Prober
    startup: kubelet.ProbeResult
    redis: harness.Redis
    upstream: harness.Upstream
    gateway: harness.Gateway


    def log_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.container.proc.text().splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def image() -> str:
    """The image the chart names, as scripts/build-image.sh left it in podman's storage."""
    if container.podman_path() is None:
        pytest.fail("missing: podman (tests/e2e/run.sh installs podman, buildah and runc when root)", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the image test needs root (rootful podman; tests/e2e/run.sh skips it for other users)",
                    pytrace=False)
    missing = chart_render.missing_helm()
    if missing:
        pytest.fail(missing, pytrace=False)
    return "tyk-dispatcher:" + tomllib.loads((harness.REPO / "Cargo.toml").read_text())["package"]["version"]


@pytest.fixture(scope="module")
def image_pod(tools, workroot, image):
    workdir = workroot / "image"
    workdir.mkdir()
    objects = chart_render.render_chart(VALUES, workdir / "rendered.json", name=RELEASE, namespace=NAMESPACE)
    gateway_values = overlay_gateway_values(objects)
    (sidecar,) = gateway_values["extraContainers"]
    assert sidecar["image"] == image, f"the chart runs {sidecar['image']}, scripts/build-image.sh tags {image}"
    volumes = kubelet.materialize_volumes(gateway_values["extraVolumes"], objects, workdir / "volumes", NAMESPACE)
    run = kubelet.container_run(sidecar, POD, volumes, map_paths=False)
    # The gateway runs on this machine: its mount paths become the volumes' directories.
    gateway_part = {"name": "gateway-tyk-gateway", "env": gateway_values.get("extraEnvs") or [],
                    "volumeMounts": gateway_values.get("extraVolumeMounts") or []}
    gateway_run = kubelet.container_run(gateway_part, POD, volumes)
    gateway_env = {e["name"]: gateway_run.env[e["name"]] for e in gateway_part["env"]}

    procs: list[harness.Proc] = []
    ctr = None
    try:
        ctr = container.run(sidecar, run, POD, name=NAME, log=workdir / "container.log")
        pid = ctr.pid()
        network = container.ContainerNetwork()
        network.attach_container(pid)
        prober = kubelet.Prober(network, run, POD)
        startup = prober.until_success(sidecar["startupProbe"])
        redis = harness.Redis(tools, workdir)
        procs.append(redis.proc)
        upstream = harness.Upstream(tools, workdir)
        procs.append(upstream.proc)
        # tyk.conf names a socket nobody serves: only the overlay's variables can make calls work.
        gateway = harness.Gateway(
            tools, workdir, redis, grpc_server=f"unix://{workdir}/not-the-sidecar.sock", env=gateway_env,
            apis=[harness.classic_api("image", "/image/", upstream.url, pre=[PRE], response=[RESPONSE])])
        procs.append(gateway.proc)
        yield ImagePod(workdir, objects, sidecar, volumes, run, gateway_env, ctr, pid, network, prober, startup,
                       redis, upstream, gateway)
    finally:
        for proc in reversed(procs):
            proc.stop()
        if ctr is not None:
            ctr.remove()


def test_the_image_is_the_dockerfiles_on_debian_12_with_no_shell(image, workroot, record_property):
    info = json.loads(container.podman("image", "inspect", image).stdout)[0]
    labels = info["Config"].get("Labels") or info.get("Labels") or {}
    config = info["Config"]
    version = tomllib.loads((harness.REPO / "Cargo.toml").read_text())["package"]["version"]
    print("labels:", json.dumps(labels, indent=1))
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.revision"] == git_revision(), \
        "the image is not the current tree's: scripts/build-image.sh builds it"
    assert labels["org.opencontainers.image.base.name"] == runtime_base()
    # Built on this machine's stand-in for the runtime base (its labels are inherited).
    assert labels.get("io.tyk-dispatcher.local-stand-in"), labels
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == [BINARY] and not config.get("Cmd")
    assert set(config["ExposedPorts"]) == {"50051/tcp", "9464/tcp"}

    tar = container.export_image(image, workroot / "image-files.tar")
    members = {m.name.lstrip("./"): m for m in tar.getmembers()}
    names = {Path(name).name for name, m in members.items() if not m.isdir()}
    assert not names & SHELLS, f"shells in the image: {sorted(names & SHELLS)}"
    assert not names & PACKAGE_MANAGERS, f"package managers in the image: {sorted(names & PACKAGE_MANAGERS)}"
    executables = sorted(n for n, m in members.items() if m.isreg() and m.mode & 0o111)
    programs = [n for n in executables if ".so" not in Path(n).name]
    assert programs == [BINARY.lstrip("/")], f"programs besides the dispatcher: {programs}"
    binary = members[BINARY.lstrip("/")]
    assert binary.uid == 0 and stat.S_IMODE(binary.mode) == 0o755
    passwd = tar.extractfile(members["etc/passwd"]).read().decode()
    assert "nonroot:x:65532:65532:" in passwd, passwd
    assert members["tmp"].isdir() and stat.S_IMODE(members["tmp"].mode) == 0o1777
    bundle = tar.extractfile(members["etc/ssl/certs/ca-certificates.crt"]).read().decode()
    assert bundle.count("BEGIN CERTIFICATE") > 100

    # The runtime's glibc is Debian 12's, and every library the binary needs resolves in it.
    def in_image(*args: str) -> str:
        proc = container.podman("run", "--rm", "--pull=never", "--network", "none", *container.ULIMITS, "--read-only",
                                "--cap-drop=ALL", "--entrypoint", "/lib64/ld-linux-x86-64.so.2", image, *args)
        return proc.stdout
    glibc = in_image("--version").splitlines()[0]
    libraries = in_image("--list", BINARY)
    print(glibc, "\n", libraries)
    assert re.search(r"GLIBC 2\.36-", glibc), glibc
    assert "not found" not in libraries and "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6" in libraries, libraries

    size = int(info["Size"])
    print(f"image {image}: {size} bytes ({size / 2**20:.1f} MiB); binary {BINARY}: {binary.size} bytes "
          f"({binary.size / 2**20:.1f} MiB); {len(members)} files")
    record_property("image_bytes", size)
    record_property("binary_bytes", binary.size)
    assert binary.size < size < MAX_IMAGE_BYTES, size


def test_the_container_runs_as_rendered_non_root_read_only_without_capabilities(image_pod):
    pod, pid = image_pod, image_pod.pid
    print("podman:", " ".join(pod.container.argv))
    print("not applied:", container.NOT_APPLIED)
    # The image's ENTRYPOINT with the rendered args, paths as rendered (the runtime mounts them).
    assert pod.run.args == pod.sidecar["args"] == ["--config", "/etc/tyk-dispatcher/dispatcher.toml"]
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1] == \
        [BINARY.encode(), b"--config", b"/etc/tyk-dispatcher/dispatcher.toml"]
    # Its environment: the resolved variables (fieldRef and $(VAR) filled in), HOSTNAME the pod's
    # name, and only the image's and the runtime's own besides (and the malloc tuning the
    # dispatcher adds as it starts).
    environ = harness.without_malloc_tuning(proc_environ(pid))
    expected = {k: v for k, v in pod.run.env.items()}
    assert {k: environ.get(k) for k in expected} == expected
    assert environ["HOSTNAME"] == POD.name
    assert environ["OTEL_RESOURCE_ATTRIBUTES"] == (
        f"k8s.pod.name={POD.name},k8s.namespace.name={NAMESPACE},k8s.node.name={POD.node_name},"
        "k8s.container.name=tyk-dispatcher")
    assert environ["TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER"] == "unix:///var/run/tyk-dispatcher/dispatcher.sock"
    assert set(environ) - set(expected) <= RUNTIME_ENV, set(environ) - set(expected)
    # UID/GID 65532, no capabilities at all, no privilege escalation, the runtime's seccomp filter.
    status = proc_status(pid)
    assert status["Uid"].split() == ["65532"] * 4 and status["Gid"].split() == ["65532"] * 4, status
    assert status["Groups"].split() in ([], ["65532"]), status["Groups"]
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, (cap, status[cap])
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    # A read-only root filesystem (no tmpfs on /tmp either) and a read-only config mount; only the
    # socket volume takes writes.
    root = Path(f"/proc/{pid}/root")
    for path in ("home/nonroot/probe", "tmp/probe", "usr/local/bin/probe", "etc/tyk-dispatcher/probe"):
        assert write_error(root / path) == errno.EROFS, path
    assert write_error(root / "var/run/tyk-dispatcher/probe") is None
    assert (root / "etc/tyk-dispatcher/dispatcher.toml").read_text() == \
        (pod.volumes["tyk-dispatcher-config"] / "dispatcher.toml").read_text()
    # The listener is in the shared volume, made by 65532 with the rendered mode.
    sock = pod.volumes["tyk-dispatcher-socket"] / "dispatcher.sock"
    info = sock.stat()
    assert stat.S_ISSOCK(info.st_mode) and info.st_uid == 65532 and stat.S_IMODE(info.st_mode) == 0o666
    # Limits: the explicit open-file limit, the rendered memory and CPU.
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert re.search(r"Max open files\s+1024\s+1024", limits), limits
    memory = int(container.quantity(pod.sidecar["resources"]["limits"]["memory"]))
    assert int(cgroup_value(pid, "memory", "memory.limit_in_bytes", "memory.max")) == memory
    cpu_limit = container.quantity(pod.sidecar["resources"]["limits"]["cpu"])
    cpu_request = container.quantity(pod.sidecar["resources"]["requests"]["cpu"])
    quota = cgroup_value(pid, "cpu", "cpu.cfs_quota_us", "cpu.max").split()[0]
    period = cgroup_value(pid, "cpu", "cpu.cfs_period_us", "cpu.max").split()[-1]
    assert int(quota) / int(period) == cpu_limit, (quota, period)
    if not Path("/sys/fs/cgroup/cgroup.controllers").exists():  # v1: shares as the kubelet converts them
        assert int(cgroup_value(pid, "cpu", "cpu.shares", "")) == int(cpu_request * 1000) * 1024 // 1000
    # What it logged: where it listens, and the open-file limit it fitted its connections to.
    events = pod.log_events()
    assert events, pod.container.proc.tail()
    listeners = {e["addr"] for e in events if e.get("message") == "gRPC listener"}
    admin = {e["addr"] for e in events if e.get("message") == "admin interface"}
    assert listeners == {"unix:///var/run/tyk-dispatcher/dispatcher.sock"}, listeners
    assert admin in ({"[::]:9464"}, {"0.0.0.0:9464"}), admin
    (serving,) = [e for e in events if e.get("message") == "serving"]
    assert serving["max_connections"] == 1024 - 32 - 32, serving


def test_the_rendered_probes_answer(image_pod):
    pod = image_pod
    assert pod.startup.ok and pod.startup.status == 200, pod.startup
    print(f"startup probe {pod.startup.url}: {pod.startup.status} after {pod.startup.attempts} attempt(s)")
    readiness = pod.prober.until_success(pod.sidecar["readinessProbe"])
    liveness = pod.prober.until_success(pod.sidecar["livenessProbe"])
    port = pod.run.port("dispatch-admin")
    assert readiness.url == f"http://{POD.pod_ip}:{port}/readyz" and readiness.status == 200, readiness
    assert liveness.url == f"http://{POD.pod_ip}:{port}/livez" and liveness.status == 200, liveness
    assert liveness.body == "ok\n"


def test_requests_through_the_gateway_reach_the_dispatcher_in_the_container(image_pod):
    pod = image_pod
    assert pod.gateway_env["TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER"] == \
        f"unix://{pod.volumes['tyk-dispatcher-socket']}/dispatcher.sock"
    before = pod.metrics()
    n = 10
    for i in range(n):
        reply = pod.gateway.request("GET", f"/image/item/{i}?q={i}")
        assert reply.status == 200, reply
        assert reply.json()["path"] == f"/item/{i}" and reply.json()["query"] == f"q={i}"
    after = pod.metrics()
    for hook_type, name in (("Pre", PRE), ("Response", RESPONSE)):
        delta = dispatch_count(after, hook_type, name, "unchanged") - dispatch_count(before, hook_type, name, "unchanged")
        assert delta == n, f"{hook_type} {name}: {delta} calls for {n} requests"
    assert harness.metric(after, "tyk_dispatcher_connections") >= 1


def test_sigterm_with_a_slow_request_in_flight_exits_0_within_the_grace_period(image_pod, record_property):
    """The kubelet's pod termination: SIGTERM to both containers at once (SIGKILL after the grace
    period). The slow request's Response hook runs after the SIGTERM, in the draining dispatcher;
    the container exits 0 once the gateway has gone, long before the grace period."""
    pod = image_pod
    grace = grace_period(pod.objects)
    config = (pod.volumes["tyk-dispatcher-config"] / "dispatcher.toml").read_text()
    drain = tomllib.loads(config)["drain_delay_secs"]
    assert drain < grace, (drain, grace)
    outcome: list[traffic.Outcome] = []
    pre_calls = dispatch_count(pod.metrics(), "Pre", PRE)
    sender = threading.Thread(target=lambda: outcome.append(traffic.request(pod.gateway.port, f"/image/slow?ms={SLOW_MS}",
                                                                            timeout=30)))
    sender.start()
    # Its Pre hook is done: it is on its way to the upstream, which holds it for SLOW_MS.
    harness.wait_until("the slow request's Pre hook", lambda: dispatch_count(pod.metrics(), "Pre", PRE) > pre_calls,
                       10, 0.05)
    termed = time.monotonic()
    pod.container.kill("TERM")
    pod.gateway.proc.send_signal(signal.SIGTERM)
    readiness = pod.prober.once(pod.sidecar["readinessProbe"])
    sender.join(30)
    gateway_code = pod.gateway.proc.wait(60)
    gateway_left = time.monotonic() - termed
    try:
        code = pod.container.wait(grace)
    except subprocess.TimeoutExpired:
        pod.container.kill("KILL")  # what the kubelet does after the grace period
        raise AssertionError(f"the container did not exit within terminationGracePeriodSeconds ({grace} s)")
    left = time.monotonic() - termed
    (slow,) = outcome
    print(f"SIGTERM: slow request {slow.status} {slow.ended - termed:.2f}s after it; gateway exited {gateway_code} "
          f"after {gateway_left:.2f}s, container {code} after {left:.2f}s (grace {grace} s, drain at most {drain} s); "
          f"readiness during the drain: {readiness.status}")
    record_property("container_exit_seconds", round(left, 2))
    assert readiness.status == 503, readiness
    assert slow.status == 200 and slow.ended - termed > 2, slow
    assert code == 0 and pod.container.inspect("{{.State.ExitCode}}") == "0", pod.container.proc.tail()
    assert gateway_left - 0.05 <= left < drain < grace
    log = pod.container.proc.text()
    assert "shutdown requested: draining" in log and '"message":"stopped"' in log
    assert not (pod.volumes["tyk-dispatcher-socket"] / "dispatcher.sock").exists()
