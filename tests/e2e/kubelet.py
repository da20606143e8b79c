#!/usr/bin/env python3
"""What a kubelet supplies to a container, for running a rendered container spec as a plain
process (test_sidecar.py). Everything else comes from the rendered objects, unchanged:

- volumes: an `emptyDir` becomes an empty directory (mode 0777); a `configMap` volume becomes a
  directory laid out as the kubelet's atomic writer does (`..<timestamp>/KEY` files, a `..data`
  symlink to it, `KEY -> ..data/KEY` symlinks), filled from the rendered ConfigMap of that name;
- mounts: each volumeMount's mountPath is mapped to its volume's directory, in every env value
  and argument that names the path (a mount path is replaced only as a whole path component);
- env: `value` with `$(VAR)` references expanded as the kubelet does (earlier variables of the
  container and the service variables; `$$` is a literal `$`; an unknown reference stays as
  written); `valueFrom.fieldRef` from the pod's facts; an optional secret/configMap key the
  cluster does not have is left out, as the kubelet leaves it out; plus what the kubelet and the
  runtime add to every container (HOSTNAME, the `kubernetes` Service's variables);
- args: expanded with the container's environment; the image's ENTRYPOINT is the binary;
- network: the pod's own network namespace (only loopback, brought up), so the rendered
  wildcard listeners bind inside it and nowhere else; probes and scrapes enter that namespace
  (nsenter) and dial the pod IP, which inside it is 127.0.0.1;
- probes: httpGet with a named or numbered port, the kubelet's headers, success on 200-399,
  periodSeconds / failureThreshold / timeoutSeconds as rendered.

Anything a rendered container or volume asks for that is not listed here raises Unsupported, so a
change to the chart cannot be silently ignored. Not emulated (reported by `not_emulated()`):
resources (no cgroup limits), securityContext (the process runs as the current user, with its
capabilities, a writable root filesystem and no seccomp profile), read-only mounts, image pulls.
(test_image.py applies those with a real runtime: container.py runs the image with podman.)

Run as a script it is the in-namespace half of a probe: `kubelet.py http-get URL --timeout S
[--header 'Name: value']…` prints {"status": …, "body": …} or {"error": …} as JSON.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# Container keys this module applies, and keys it knowingly does not (their effect is listed).
APPLIED = {"name", "args", "env", "ports", "volumeMounts", "startupProbe", "readinessProbe", "livenessProbe"}
NOT_EMULATED = {
    "image": "the release binary stands for the image",
    "imagePullPolicy": "no image pull",
    "resources": "no cgroup CPU/memory limits",
    "securityContext": "runs as the current user (uid {uid}), its capabilities, writable root filesystem, "
                       "no seccomp profile",
    "terminationMessagePolicy": "no termination message",
}
MOUNT_KEYS = {"name", "mountPath", "readOnly"}


class Unsupported(AssertionError):
    """The rendered spec asks for something this emulation does not do."""


@dataclass(frozen=True)
class PodFacts:
    """What the API server and the kubelet know about the pod (the sources of fieldRef)."""
    name: str
    namespace: str
    node_name: str
    uid: str = "6c1d7d1e-0000-4000-8000-00000000e2e0"
    service_account: str = "default"
    pod_ip: str = "127.0.0.1"    # inside the pod's own network namespace (loopback only)
    host_ip: str = "127.0.0.1"
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    def field(self, path: str) -> str:
        simple = {
            "metadata.name": self.name, "metadata.namespace": self.namespace, "metadata.uid": self.uid,
            "spec.nodeName": self.node_name, "spec.serviceAccountName": self.service_account,
            "status.podIP": self.pod_ip, "status.podIPs": self.pod_ip, "status.hostIP": self.host_ip,
            "status.hostIPs": self.host_ip,
        }
        if path in simple:
            return simple[path]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match:
            return (self.labels if match[1] == "labels" else self.annotations).get(match[2], "")
        raise Unsupported(f"fieldRef {path!r} is not a field the kubelet supplies here")


# The `kubernetes` Service's variables, which every container gets (enableServiceLinks governs
# only the other Services of the namespace; the sidecar's namespace has none named like ours).
KUBERNETES_SERVICE_ENV = {
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
    "KUBERNETES_SERVICE_PORT_HTTPS": "443",
    "KUBERNETES_PORT": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
    "KUBERNETES_PORT_443_TCP_PORT": "443",
    "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
}


def expand(text: str, lookup: Callable[[str], str | None]) -> str:
    """Kubernetes' `$(VAR)` expansion: `$(NAME)` becomes the value when NAME is known and stays
    as written when not; `$$` is one `$`; any other `$` (and an unclosed `$(`) is literal."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$" or i + 1 == len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close == -1:
                out.append("$(")
                i += 2
            else:
                name = text[i + 2:close]
                value = lookup(name)
                out.append(value if value is not None else f"$({name})")
                i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Volumes and mounts


def materialize_volumes(volumes: list[dict[str, Any]], objects: list[dict[str, Any]], root: Path,
                        namespace: str) -> dict[str, Path]:
    """Each pod volume as a directory under root: {volume name: directory}."""
    dirs: dict[str, Path] = {}
    for volume in volumes:
        name = volume["name"]
        kinds = set(volume) - {"name"}
        target = root / name
        if kinds == {"emptyDir"}:
            target.mkdir(parents=True)
            target.chmod(0o777)  # as the kubelet makes an emptyDir
        elif kinds == {"configMap"}:
            source = volume["configMap"]
            unknown = set(source) - {"name", "items", "defaultMode", "optional"}
            if unknown:
                raise Unsupported(f"volume {name}: configMap settings {sorted(unknown)} are not emulated")
            found = [o for o in objects if o.get("kind") == "ConfigMap" and o["metadata"]["name"] == source["name"]
                     and o["metadata"].get("namespace", namespace) == namespace]
            if len(found) != 1:
                raise Unsupported(f"volume {name}: ConfigMap {source['name']!r} is not among the rendered objects "
                                  f"(found {len(found)})")
            write_configmap_volume(target, found[0], source.get("items"), source.get("defaultMode", 0o644))
        else:
            raise Unsupported(f"volume {name}: {sorted(kinds)} is not emulated")
        dirs[name] = target
    return dirs


def write_configmap_volume(target: Path, configmap: dict[str, Any], items: list[dict] | None, mode: int) -> None:
    """The kubelet's atomic-writer layout: data in a timestamped directory, `..data` pointing at
    it, and one symlink per file through `..data`."""
    files: dict[str, bytes] = {k: v.encode() for k, v in (configmap.get("data") or {}).items()}
    files.update({k: base64.b64decode(v) for k, v in (configmap.get("binaryData") or {}).items()})
    if items is not None:
        chosen = {}
        for item in items:
            if item["key"] not in files:
                raise Unsupported(f"configMap item {item['key']!r} is not in ConfigMap {configmap['metadata']['name']}")
            chosen[item["path"]] = (files[item["key"]], item.get("mode", mode))
    else:
        chosen = {key: (data, mode) for key, data in files.items()}
    target.mkdir(parents=True)
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.000000001", time.gmtime())
    data_dir = target / stamp
    for rel, (data, file_mode) in chosen.items():
        path = data_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(file_mode)
    (target / "..data").symlink_to(stamp)
    for rel in {r.split("/", 1)[0] for r in chosen}:
        (target / rel).symlink_to(f"..data/{rel}")


@dataclass(frozen=True)
class Mounts:
    """A container's mounts: (mountPath, directory), longest path first."""
    table: tuple[tuple[str, Path], ...]

    @classmethod
    def of(cls, container: dict[str, Any], volume_dirs: dict[str, Path]) -> "Mounts":
        table = []
        for mount in container.get("volumeMounts") or []:
            unknown = set(mount) - MOUNT_KEYS
            if unknown:
                raise Unsupported(f"{container['name']}: mount settings {sorted(unknown)} are not emulated")
            if mount["name"] not in volume_dirs:
                raise Unsupported(f"{container['name']}: mount of {mount['name']!r}, which is not a pod volume "
                                  "rendered here")
            table.append((mount["mountPath"].rstrip("/") or "/", volume_dirs[mount["name"]]))
        table.sort(key=lambda entry: -len(entry[0]))
        return cls(tuple(table))

    def map(self, text: str) -> str:
        """Every mount path in text, as a whole path, replaced by its directory."""
        if not self.table:
            return text
        pattern = re.compile(r"(?<![\w.~-])(" + "|".join(re.escape(p) for p, _ in self.table) + r")(?=/|$|[^\w.~-])")
        dirs = dict(self.table)
        return pattern.sub(lambda m: str(dirs[m.group(1)]), text)


# ---------------------------------------------------------------------------------------------
# Containers


@dataclass
class ContainerRun:
    """A rendered container as a process: its argv (after the entrypoint), environment, mounts."""
    name: str
    args: list[str]
    env: dict[str, str]
    mounts: Mounts
    omitted_env: list[str]
    spec: dict[str, Any]

    def port(self, port: int | str) -> int:
        """A probe's port: a number, or the name of one of the container's ports."""
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in self.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise Unsupported(f"{self.name}: no port named {port!r}")


def container_env(container: dict[str, Any], pod: PodFacts, mounts: Mounts,
                  service_env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The env list as the kubelet resolves it (mapped through the mounts), and the names it
    leaves out (optional references to objects the cluster does not have)."""
    if container.get("envFrom"):
        raise Unsupported(f"{container['name']}: envFrom is not emulated")
    env: dict[str, str] = {}
    omitted: list[str] = []
    for entry in container.get("env") or []:
        name = entry["name"]
        if "valueFrom" in entry:
            source = entry["valueFrom"]
            if set(source) == {"fieldRef"}:
                env[name] = pod.field(source["fieldRef"]["fieldPath"])
            elif set(source) <= {"secretKeyRef", "configMapKeyRef"} and len(source) == 1:
                ref = next(iter(source.values()))
                if not ref.get("optional"):
                    raise Unsupported(f"{container['name']}: env {name} needs {next(iter(source))} "
                                      f"{ref.get('name')}/{ref.get('key')}, which does not exist here: the kubelet "
                                      "would not start the container")
                omitted.append(name)  # optional and absent: the kubelet leaves the variable out
            else:
                raise Unsupported(f"{container['name']}: env {name} from {sorted(source)} is not emulated")
        else:
            value = entry.get("value", "")
            env[name] = mounts.map(expand(value, lambda var: env.get(var, service_env.get(var))))
    return env, omitted


def container_run(container: dict[str, Any], pod: PodFacts, volume_dirs: dict[str, Path], *,
                  map_paths: bool = True) -> ContainerRun:
    """The container as a process. With map_paths (a process on this machine) mount paths in env
    values and args become their volumes' directories; without (a real container runtime that
    mounts the volumes, container.py) they stay as rendered."""
    unknown = set(container) - APPLIED - set(NOT_EMULATED)
    if unknown:
        raise Unsupported(f"{container['name']}: {sorted(unknown)} would change how the container runs; "
                          "this emulation does not apply it")
    mounts = Mounts.of(container, volume_dirs)
    text = mounts if map_paths else Mounts(())
    service_env = dict(KUBERNETES_SERVICE_ENV)
    env, omitted = container_env(container, pod, text, service_env)
    kubelet_env = {**service_env, **env}
    args = [text.map(expand(a, kubelet_env.get)) for a in container.get("args") or []]
    # HOSTNAME comes from the container runtime (the pod's hostname), after the kubelet's list.
    full_env = {"HOSTNAME": pod.name, **kubelet_env}
    return ContainerRun(container["name"], args, full_env, mounts, omitted, container)


def not_emulated(container: dict[str, Any]) -> dict[str, str]:
    """The container's keys that have no effect outside Kubernetes here, with their effect."""
    return {k: v.format(uid=os.getuid()) for k, v in NOT_EMULATED.items() if k in container}


# ---------------------------------------------------------------------------------------------
# The pod's network namespace and probes


class PodNetwork:
    """A network namespace of the pod's own, created by `unshare` around the first container's
    command (which keeps its PID: unshare execs it). Unprivileged, a user namespace comes with it."""

    def __init__(self) -> None:
        self.rootless = os.geteuid() != 0
        self.pid: int | None = None

    def wrap(self, argv: list[str]) -> list[str]:
        flags = ["--net"] + (["--user", "--map-root-user"] if self.rootless else [])
        return ["unshare", *flags, "--", *argv]

    def _nsenter(self) -> list[str]:
        assert self.pid is not None
        return ["nsenter", f"--target={self.pid}", "--net"] + (["--user", "--preserve-credentials"]
                                                              if self.rootless else [])

    def attach(self, pid: int, exe: Path, timeout: float = 10) -> None:
        """Waits until pid runs exe (so it is inside the new namespace), then brings loopback up."""
        self.pid = pid
        deadline = time.monotonic() + timeout
        while True:
            try:
                if os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(exe):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"pid {pid} did not start {exe} within {timeout}s")
            time.sleep(0.01)
        ours = os.readlink("/proc/self/ns/net")
        theirs = os.readlink(f"/proc/{pid}/ns/net")
        assert theirs != ours, "the container shares the test's network namespace"
        subprocess.run([*self._nsenter(), sys.executable, __file__, "lo-up"], check=True, timeout=10,
                       capture_output=True)

    def http_get(self, url: str, timeout: float, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """One GET from inside the namespace: {"status", "body"} or {"error"}."""
        cmd = [*self._nsenter(), sys.executable, __file__, "http-get", url, "--timeout", str(timeout)]
        for name, value in (headers or {}).items():
            cmd += ["--header", f"{name}: {value}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10)
        if proc.returncode != 0:
            return {"error": f"nsenter/http-get exited {proc.returncode}: {proc.stderr.strip()}"}
        return json.loads(proc.stdout)


@dataclass
class ProbeResult:
    ok: bool
    status: int | None
    body: str
    attempts: int
    url: str


class Prober:
    """The kubelet's httpGet probes of one container."""

    KUBE_VERSION = "1.27"

    def __init__(self, network: PodNetwork, run: ContainerRun, pod: PodFacts):
        self.network, self.run, self.pod = network, run, pod

    def url(self, probe: dict[str, Any]) -> tuple[str, dict[str, str], float]:
        kinds = set(probe) & {"httpGet", "tcpSocket", "exec", "grpc"}
        if kinds != {"httpGet"}:
            raise Unsupported(f"{self.run.name}: probe kind {sorted(kinds)} is not emulated")
        get = probe["httpGet"]
        unknown = set(get) - {"path", "port", "scheme", "host", "httpHeaders"}
        if unknown:
            raise Unsupported(f"{self.run.name}: httpGet settings {sorted(unknown)} are not emulated")
        scheme = get.get("scheme", "HTTP").lower()
        host = get.get("host", self.pod.pod_ip)
        port = self.run.port(get["port"])
        headers = {"User-Agent": f"kube-probe/{self.KUBE_VERSION}", "Accept": "*/*", "Connection": "close"}
        headers.update({h["name"]: h["value"] for h in get.get("httpHeaders") or []})
        return f"{scheme}://{host}:{port}{get.get('path', '/')}", headers, float(probe.get("timeoutSeconds", 1))

    def once(self, probe: dict[str, Any]) -> ProbeResult:
        url, headers, timeout = self.url(probe)
        reply = self.network.http_get(url, timeout, headers)
        status = reply.get("status")
        ok = status is not None and 200 <= status < 400
        return ProbeResult(ok, status, reply.get("body", reply.get("error", "")), 1, url)

    def until_success(self, probe: dict[str, Any]) -> ProbeResult:
        """Probes every periodSeconds (after initialDelaySeconds) until a success; fails after
        failureThreshold failures in a row, as the kubelet would restart the container."""
        time.sleep(float(probe.get("initialDelaySeconds", 0)))
        period = float(probe.get("periodSeconds", 10))
        threshold = int(probe.get("failureThreshold", 3))
        failures = 0
        while True:
            result = self.once(probe)
            if result.ok:
                result.attempts = failures + 1
                return result
            failures += 1
            if failures >= threshold:
                raise AssertionError(f"{self.run.name}: probe {result.url} failed {failures} times in a row "
                                     f"(last: {result.status} {result.body!r})")
            time.sleep(period)


# ---------------------------------------------------------------------------------------------
# The in-namespace half


def lo_up() -> None:
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, siocgifflags, ifreq))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def http_get(url: str, timeout: float, headers: list[str]) -> dict[str, Any]:
    request = urllib.request.Request(url, headers=dict(h.split(": ", 1) for h in headers))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return {"status": resp.status, "body": resp.read().decode(errors="replace")}
    except urllib.error.HTTPError as err:
        return {"status": err.code, "body": err.read().decode(errors="replace")}
    except OSError as err:
        return {"error": repr(err)}


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("lo-up")
    get = sub.add_parser("http-get")
    get.add_argument("url")
    get.add_argument("--timeout", type=float, default=1.0)
    get.add_argument("--header", action="append", default=[])
    args = parser.parse_args()
    if args.cmd == "lo-up":
        lo_up()
    else:
        print(json.dumps(http_get(args.url, args.timeout, args.header)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
