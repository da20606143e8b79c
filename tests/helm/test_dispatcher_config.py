"""The rendered configuration is the binary's: `tyk-dispatcher check-config` accepts each
scenario's dispatcher.toml with the container's environment, and the sidecar container, run as
rendered (args, env, config file, socket path), serves on the socket and leaves on SIGTERM."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    CI_FILES, ci_values, dispatcher_container, dispatcher_toml, merged_values, objects, of_kind, render,
)

MOUNT = "/etc/tyk-dispatcher"
FIELDS = {"metadata.name": "gateway-tyk-tyk-gateway-7d9f-abcde", "metadata.namespace": "tyk", "spec.nodeName": "node-1"}
# check-config notes that mean the two sides disagree.
DISAGREEMENT = re.compile(r"does not include where the gateway dials|above the gateway")


def container_env(env: list[dict[str, Any]]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: downward-API fields, optional Secret
    keys left out when absent, $(VAR) references to earlier variables expanded."""
    out: dict[str, str] = {}
    for entry in env:
        if "value" in entry:
            value = entry["value"]
        elif "fieldRef" in entry.get("valueFrom", {}):
            value = FIELDS[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        elif entry.get("valueFrom", {}).get("secretKeyRef", {}).get("optional"):
            continue
        else:
            raise AssertionError(f"cannot resolve {entry}")
        out[entry["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: out.get(m[1], m[0]), value)
    return out


def mount_config(objs, tmp: Path) -> tuple[Path, dict[str, str]]:
    """Writes dispatcher.toml (and stand-ins for the mounted Secrets) under tmp, as the pod mounts
    them under /etc/tyk-dispatcher; returns the config path and the container env."""
    root = tmp / "etc-tyk-dispatcher"
    root.mkdir()
    text = dispatcher_toml(objs).replace(MOUNT + "/", f"{root}/")
    paths = re.findall(rf'"({re.escape(str(root))}/[^"]+)"', text)
    if paths:
        # check-config reads the mounted Secrets as the server would: a real key and certificate.
        key, cert = tmp / "stand-in.key", tmp / "stand-in.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=tyk-dispatcher",
                        "-days", "2"], check=True, capture_output=True, timeout=30)
    for path in paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(key if path.endswith(".key") else cert, path)
    config = root / "dispatcher.toml"
    config.write_text(text)
    return config, container_env(dispatcher_container(objs)["env"])


def container_args(objs, config: Path) -> list[str]:
    args = dispatcher_container(objs)["args"]
    assert args == ["--config", f"{MOUNT}/dispatcher.toml"]
    return ["--config", str(config)]


@pytest.mark.parametrize("ci", CI_FILES)
def test_check_config_accepts_the_rendered_config(ci, binary, tmp_path):
    values = ci_values(ci)
    merged = merged_values(values)
    objs = objects(render(values))
    config, env = mount_config(objs, tmp_path)
    proc = subprocess.run([str(binary), *container_args(objs, config), "check-config"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not DISAGREEMENT.search(proc.stderr), proc.stderr
    effective = tomllib.loads(proc.stdout)

    coprocess = merged["coprocess"]
    assert effective["max_reply_bytes"] == coprocess["grpcRecvMaxSize"]
    assert effective["max_recv_bytes"] >= coprocess["grpcSendMaxSize"]
    assert effective["admin_listen"] == "[::]:9464"
    assert effective["log_format"] == "json"
    server = env["TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER"]
    if merged["mode"] == "sidecar":
        assert effective["log_calls"] is values.get("config", {}).get("log_calls", False)
        assert effective["unix_socket_mode"] == "0666"
        if server.startswith("unix://"):
            assert effective["listen"] == [server]
        else:
            assert effective["listen"] == [server.removeprefix("tcp://")]
        assert "max_connection_age_secs" not in effective
    else:
        assert effective["listen"] == ["[::]:50051"]
        assert effective["max_connection_age_secs"] == values.get("config", {}).get("max_connection_age_secs", 300)
        if merged["tls"]["enabled"]:
            assert effective["tls_listen"] == ["[::]:50052"]
            assert effective["tls_client_ca"].endswith("/client-ca/ca.crt")
    limit = dispatcher_container(objs)["resources"]["limits"]["cpu"]
    cpus = -(-int(limit[:-1]) // 1000) if limit.endswith("m") else int(limit)
    assert effective["worker_threads"] == (values.get("workerThreads") or cpus)


def test_the_sidecar_helm_test_runs_check_config_like_the_sidecar(binary, tmp_path):
    objs = objects(render({}))
    (pod,) = of_kind(objs, "Pod")
    check = pod["spec"]["containers"][0]
    config, _ = mount_config(objs, tmp_path)
    args = [a.replace(f"{MOUNT}/dispatcher.toml", str(config)) for a in check["args"]]
    proc = subprocess.run([str(binary), *args], env=container_env(check["env"]),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'listen = ["unix:///var/run/tyk-dispatcher/dispatcher.sock"]' in proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_sidecar_container_serves_on_the_socket_as_rendered(binary, tmp_path):
    """The overlay's container, run as the kubelet would: its args, env and config file, the
    socket in the shared directory (moved under tmp), the admin port (moved to a free loopback
    port, the one override)."""
    objs = objects(render({}))
    config, env = mount_config(objs, tmp_path)
    # A short directory: a socket path must fit sun_path (108 bytes).
    socket_dir = Path(tempfile.mkdtemp(prefix="tdsk-"))
    server = env["TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER"]
    assert server == "unix:///var/run/tyk-dispatcher/dispatcher.sock"
    env["TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER"] = server.replace("/var/run/tyk-dispatcher", str(socket_dir))
    port = free_port()
    env["TYK_DISPATCHER_ADMIN_LISTEN"] = f"127.0.0.1:{port}"
    sock = socket_dir / "dispatcher.sock"

    proc = subprocess.Popen([str(binary), *container_args(objs, config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        ready = False
        while time.monotonic() < deadline and not ready:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                    ready = resp.status == 200
            except OSError:
                time.sleep(0.1)
        assert ready, "/readyz never answered 200"
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o666, "sidecar.socketMode: any gateway UID may connect"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=2) as resp:
            assert resp.status == 200
        grpcurl = os.environ.get("GRPCURL") or shutil.which("grpcurl")
        if grpcurl:
            health = subprocess.run(
                [grpcurl, "-plaintext", "-unix", "-authority", "localhost", str(sock), "grpc.health.v1.Health/Check"],
                capture_output=True, text=True, timeout=20)
            assert "\"SERVING\"" in health.stdout, health.stdout + health.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, "no client connected: the drain ends at once and the process exits 0"
        output = proc.stdout.read()
        assert output.lstrip().startswith("{"), "log_format json"
        assert not sock.exists(), "the socket is removed on exit"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(socket_dir, ignore_errors=True)
