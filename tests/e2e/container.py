#!/usr/bin/env python3
"""A rendered container run by a real container runtime: podman with runc, from the image that
scripts/build-image.sh built from the Dockerfile (test_image.py).

kubelet.py resolves what a kubelet resolves (env with `fieldRef` values and `$(VAR)` references,
args, the pod's volumes as directories); here the paths stay as rendered, since the runtime
mounts the volumes. The rest of the rendered spec becomes `podman run` flags:

- image: the rendered reference, from local storage (`--pull=never`; nothing is pulled);
- securityContext: runAsUser / runAsGroup → --user, runAsNonRoot checked against that user,
  readOnlyRootFilesystem → --read-only without podman's own tmpfs mounts (Kubernetes adds none),
  allowPrivilegeEscalation false → no-new-privileges, capabilities → --cap-drop / --cap-add,
  privileged, seccompProfile RuntimeDefault → the runtime's default profile;
- resources: limits.memory → --memory, limits.cpu → --cpus, requests.cpu → --cpu-shares (the
  kubelet's conversion); requests.memory only places the pod, nothing enforces it;
- volumeMounts: bind mounts of the volumes' directories (readOnly → ro);
- network: `--network none`, a network namespace of the container's own with loopback only
  (the pod's); probes and scrapes enter it (kubelet.PodNetwork's nsenter) and dial 127.0.0.1;
- hostname: the pod's name (the runtime sets HOSTNAME from it);
- stop: SIGTERM, then SIGKILL after terminationGracePeriodSeconds, as the kubelet does.

Anything else the rendered container asks for raises kubelet.Unsupported. Not applied:
terminationMessagePolicy (the log is read instead).

Flags this machine's runtime needs besides (RUNTIME, ULIMITS): `--runtime runc`, and explicit
open-file and process limits, because podman's default open-file limit (1048576) is above this
machine's hard limit and runc is refused raising it ("error setting rlimits for ready process").
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import kubelet

RUNTIME = ["--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
APPLIED = {"name", "image", "imagePullPolicy", "args", "env", "ports", "volumeMounts", "startupProbe",
           "readinessProbe", "livenessProbe", "securityContext", "resources"}
NOT_APPLIED = {"terminationMessagePolicy": "no termination message (the container's log is read instead)"}


def podman_path() -> str | None:
    return shutil.which("podman")


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """One podman command (with RUNTIME); its output as text."""
    proc = subprocess.run(["podman", *RUNTIME, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number: 384Mi, 64M, 2, 100m, 1.5."""
    text = str(value)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    match = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T|m)?", text)
    if not match:
        raise kubelet.Unsupported(f"quantity {text!r}")
    return float(match[1]) * units.get(match[2] or "", 1)


def security_flags(context: dict[str, Any], image_user: str) -> list[str]:
    unknown = set(context) - {"runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem",
                              "allowPrivilegeEscalation", "privileged", "capabilities", "seccompProfile"}
    if unknown:
        raise kubelet.Unsupported(f"securityContext {sorted(unknown)} is not applied")
    flags: list[str] = []
    user = str(context.get("runAsUser", image_user.split(":")[0]))
    group = context.get("runAsGroup")
    if "runAsUser" in context or group is not None:
        flags += ["--user", user + (f":{group}" if group is not None else "")]
    if context.get("runAsNonRoot") and (not user.isdigit() or int(user) == 0):
        # The kubelet refuses to start it: a user name cannot be verified, 0 is root.
        raise AssertionError(f"runAsNonRoot with user {user!r}: the kubelet would not start the container")
    if context.get("readOnlyRootFilesystem"):
        flags += ["--read-only", "--read-only-tmpfs=false"]
    if context.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    if context.get("privileged"):
        flags += ["--privileged"]
    capabilities = context.get("capabilities") or {}
    if set(capabilities) - {"drop", "add"}:
        raise kubelet.Unsupported(f"capabilities {sorted(capabilities)}")
    flags += [f"--cap-drop={c}" for c in capabilities.get("drop") or []]
    flags += [f"--cap-add={c}" for c in capabilities.get("add") or []]
    seccomp = (context.get("seccompProfile") or {"type": "RuntimeDefault"}).get("type")
    if seccomp == "Unconfined":
        flags += ["--security-opt", "seccomp=unconfined"]
    elif seccomp != "RuntimeDefault":
        raise kubelet.Unsupported(f"seccompProfile {seccomp!r}")
    return flags


def resource_flags(resources: dict[str, Any]) -> list[str]:
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    if set(limits) - {"cpu", "memory"} or set(requests) - {"cpu", "memory"}:
        raise kubelet.Unsupported(f"resources {resources}")
    flags: list[str] = []
    if "memory" in limits:
        flags += ["--memory", str(int(quantity(limits["memory"])))]
    if "cpu" in limits:
        flags += ["--cpus", f"{quantity(limits['cpu']):g}"]
    if "cpu" in requests:
        # The kubelet's MilliCPUToShares: 1024 shares per CPU, at least 2.
        flags += ["--cpu-shares", str(max(2, int(quantity(requests["cpu"]) * 1000) * 1024 // 1000))]
    return flags


@dataclass
class Container:
    """A running container: the attached `podman run` client as a harness.Proc (its output is
    the container's log, its exit code the container's)."""
    name: str
    image: str
    argv: list[str]
    proc: harness.Proc

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.name).stdout.strip()

    def pid(self) -> int:
        """The container's first process, as this machine's PID."""
        return int(self.inspect("{{.State.Pid}}"))

    def running(self) -> bool:
        proc = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return proc.returncode == 0 and proc.stdout.strip() == "true"

    def kill(self, signal: str) -> None:
        podman("kill", "--signal", signal, self.name)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)
        self.proc.stop()


def run(spec: dict[str, Any], run: kubelet.ContainerRun, pod: kubelet.PodFacts, *, name: str,
        log: Path) -> Container:
    """Starts the rendered container (run: kubelet.container_run(..., map_paths=False))."""
    unknown = set(spec) - APPLIED - set(NOT_APPLIED)
    if unknown:
        raise kubelet.Unsupported(f"{spec['name']}: {sorted(unknown)} would change how the container runs")
    image = spec["image"]
    if spec.get("imagePullPolicy", "IfNotPresent") == "Always":
        raise kubelet.Unsupported("imagePullPolicy Always: nothing can be pulled here")
    if podman("image", "exists", image, check=False).returncode != 0:
        raise AssertionError(f"image {image} is not in podman's storage: build it with scripts/build-image.sh "
                             "(tests/e2e/run.sh does)")
    image_user = podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
    mounts: list[str] = []
    read_only = {m["mountPath"].rstrip("/"): m.get("readOnly", False) for m in spec.get("volumeMounts") or []}
    for path, directory in run.mounts.table:
        mounts += ["--volume", f"{directory}:{path}" + (":ro" if read_only[path] else "")]
    env: list[str] = []
    for key, value in run.env.items():
        if key != "HOSTNAME":  # the runtime's, from --hostname
            env += ["--env", f"{key}={value}"]
    argv = ["podman", *RUNTIME, "run", "--name", name, "--pull=never", "--network", "none",
            "--hostname", pod.name, *ULIMITS, *security_flags(spec.get("securityContext") or {}, image_user),
            *resource_flags(spec.get("resources") or {}), *mounts, *env, image, *run.args]
    podman("rm", "--force", "--time", "0", name, check=False)
    proc = harness.Proc(name, argv, log)
    container = Container(name, image, argv, proc)
    try:
        harness.wait_until(f"container {name} running", lambda: _started(container), 60)
    except BaseException:
        container.remove()
        raise
    return container


def _started(container: Container) -> bool:
    if not container.proc.alive():
        raise AssertionError(f"podman run exited {container.proc.popen.returncode}:\n{container.proc.tail()}")
    return container.running() and container.pid() > 0


class ContainerNetwork(kubelet.PodNetwork):
    """The container's network namespace, made by the runtime (loopback already up)."""

    def attach_container(self, pid: int) -> None:
        self.pid = pid
        assert self.rootless is False, "rootful podman only: its namespaces are entered with nsenter as root"
        ours, theirs = (Path(f"/proc/{p}/ns/net").readlink() for p in ("self", pid))
        assert ours != theirs, "the container shares the test's network namespace"


def export_image(image: str, dest: Path) -> tarfile.TarFile:
    """The image's filesystem as a tar file (podman export of a container never started)."""
    name = f"export-{dest.stem}-{int(time.time() * 1000)}"
    podman("create", "--pull=never", "--name", name, image)
    try:
        with open(dest, "wb") as out:
            code = subprocess.run(["podman", *RUNTIME, "export", name], stdout=out, timeout=120).returncode
        assert code == 0, f"podman export {image} exited {code}"
    finally:
        podman("rm", "--force", name, check=False)
    return tarfile.open(dest)
