"""Processes and clients for the observability suite: the dispatcher binary, Prometheus, grpcurl
and a raw-bytes gRPC client, all on 127.0.0.1 and all bounded in time."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import grpc

REPO = Path(__file__).resolve().parents[2]
FILES = REPO / "helm" / "tyk-dispatcher" / "files"
DASHBOARD = FILES / "dashboard.json"
ALERTS = FILES / "alerts.yaml"

HOOK_TYPE_NUMBERS = {"Unknown": 0, "Pre": 1, "Post": 2, "PostKeyAuth": 3, "CustomKeyCheck": 4, "Response": 5}


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode(errors="replace")


def wait_until(what: str, check, timeout: float, interval: float = 0.2, on_fail=None):
    """Calls `check` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as err:  # noqa: BLE001 - retried until the deadline
            last_err = err
        time.sleep(interval)
    extra = on_fail() if on_fail else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_err})" if last_err else "") + (f"\n{extra}" if extra else ""))


def required_tool(env_var: str | None, default: Path | None, name: str, how: str) -> str:
    """The path of a tool the suite cannot run without; a missing one fails the test loudly."""
    candidates = []
    if env_var and os.environ.get(env_var):
        candidates.append(os.environ[env_var])
    if default is not None:
        candidates.append(str(default))
    found = shutil.which(name)
    if found:
        candidates.append(found)
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise AssertionError(f"MISSING TOOL: {name} not found (looked at {candidates or 'PATH'}); {how}")


def dispatcher_bin() -> str:
    path = os.environ.get("DISPATCHER_BIN") or str(REPO / "target" / "debug" / "tyk-dispatcher")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise AssertionError(f"MISSING BINARY: {path} (run `cargo build` or set DISPATCHER_BIN)")
    return path


def grpcurl_bin() -> str:
    return required_tool("GRPCURL", REPO / "target" / "test-tools" / "bin" / "grpcurl", "grpcurl",
                         "tests/run.sh installs it (or set GRPCURL)")


def promtool_bin() -> str:
    return required_tool("PROMTOOL", None, "promtool", "install Debian's `prometheus` package (apt-get install prometheus)")


def prometheus_bin() -> str:
    return required_tool("PROMETHEUS", None, "prometheus", "install Debian's `prometheus` package (apt-get install prometheus)")


def _clean_env() -> dict[str, str]:
    """The environment less anything that configures the dispatcher or OpenTelemetry."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("TYK_DISPATCHER_", "TYK_GW_", "OTEL_"))}


class Dispatcher:
    """The real binary on loopback ports, JSON logs to a file; with `config`, that TOML as its
    config file (`TYK_DISPATCHER_CONFIG`), which `rewrite_config` replaces while it runs."""

    def __init__(self, workdir: Path, extra_env: dict[str, str] | None = None, config: str | None = None):
        self.workdir = workdir
        self.grpc_port = free_port()
        self.admin_port = free_port()
        self.log_path = workdir / "dispatcher.log"
        self.config_path = workdir / "dispatcher.toml"
        env = _clean_env()
        env.update({
            "TYK_DISPATCHER_LISTEN": f"127.0.0.1:{self.grpc_port}",
            "TYK_DISPATCHER_ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
            "TYK_DISPATCHER_LOG_FORMAT": "json",
            "TYK_DISPATCHER_DRAIN_DELAY_SECS": "1",
            "TYK_DISPATCHER_SHUTDOWN_GRACE_SECS": "1",
        })
        if config is not None:
            self.config_path.write_text(config)
            env["TYK_DISPATCHER_CONFIG"] = str(self.config_path)
        env.update(extra_env or {})
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except FileNotFoundError:
            return ""

    def start(self) -> "Dispatcher":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([dispatcher_bin()], env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"dispatcher exited with {self.proc.returncode}:\n{self.log()}")
            return http_get(self.admin_url + "/readyz", timeout=1)[0] == 200

        try:
            wait_until("the dispatcher's /readyz", ready, timeout=30, on_fail=self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def rewrite_config(self, text: str) -> None:
        """Replaces the config file in one rename, as a ConfigMap volume update does, so the
        dispatcher's reload watcher never reads half a file."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def metrics(self) -> tuple[str, str]:
        """(content type, body) of GET /metrics."""
        status, headers, body = http_get(self.admin_url + "/metrics")
        assert status == 200, f"/metrics answered {status}: {body[:500]}"
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        return ctype, body


class Prometheus:
    """A Prometheus server scraping `targets` every second, with the alerting rules loaded."""

    def __init__(self, workdir: Path, job: str, targets: list[str], rule_files: list[Path]):
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except FileNotFoundError:
            return ""

    def start(self) -> "Prometheus":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [prometheus_bin(),
             f"--config.file={self.config_path}",
             f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             "--enable-feature=exemplar-storage",
             "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            return http_get(self.url + "/-/ready", timeout=1)[0] == 200

        try:
            wait_until("Prometheus /-/ready", ready, timeout=30, on_fail=self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def api(self, path: str, params: dict[str, Any] | list[tuple[str, Any]] | None = None) -> dict:
        """GET /api/v1/<path>; returns the decoded body, error answers included."""
        query = urllib.parse.urlencode(params or {}, doseq=True)
        status, _, body = http_get(f"{self.url}/api/v1/{path}?{query}", timeout=10)
        try:
            decoded = json.loads(body)
        except json.JSONDecodeError:
            decoded = {"status": "error", "error": f"HTTP {status}: {body[:300]}"}
        return decoded

    def query(self, expr: str) -> dict:
        return self.api("query", {"query": expr})

    def scalar(self, expr: str) -> float | None:
        """The value of a query returning one sample, or None when it returns none."""
        answer = self.query(expr)
        assert answer.get("status") == "success", f"{expr}: {answer}"
        result = answer["data"]["result"]
        if not result:
            return None
        assert len(result) == 1, f"{expr} returned {len(result)} series: {result}"
        return float(result[0]["value"][1])


# --- protobuf, written by hand: the few fields the suite sends ---------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _varint_field(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _map_entry(field: int, key: str, value: str) -> bytes:
    return _len_field(field, _len_field(1, key.encode()) + _len_field(2, value.encode()))


def encode_object(hook_type: str, hook_name: str, spec: dict[str, str] | None = None,
                  status_code: int | None = None, headers: dict[str, str] | None = None) -> bytes:
    """A coprocess.Object: hook_type (1), hook_name (2), request.headers (3.1), spec (6),
    response.status_code (7.1)."""
    out = b""
    number = HOOK_TYPE_NUMBERS[hook_type]
    if number:
        out += _varint_field(1, number)
    if hook_name:
        out += _len_field(2, hook_name.encode())
    if headers:
        out += _len_field(3, b"".join(_map_entry(1, k, v) for k, v in headers.items()))
    for key, value in (spec or {}).items():
        out += _map_entry(6, key, value)
    if status_code is not None:
        out += _len_field(7, _varint_field(1, status_code))
    return out


def encode_event(payload: str) -> bytes:
    return _len_field(1, payload.encode()) if payload else b""


# Not a coprocess.Object: field 1 as a length-delimited field claiming 16 bytes, 3 present.
MALFORMED_OBJECT = b"\x0a\x10abc"


def auth_failure_event(api_id: str = "api-1") -> str:
    """The JSON the gateway's cp_dynamic_handler sends for an AuthFailure event."""
    return json.dumps({
        "message": {"Type": "AuthFailure",
                    "Meta": {"Message": "Key not authorised", "Path": "/get", "Origin": "127.0.0.1",
                             "Key": "secret-key-value"},
                    "TimeStamp": "2024-01-01 00:00:00 +0000 UTC"},
        "handler_name": "cp_dynamic_handler",
        "spec": {"APIID": api_id, "OrgID": "org-1"},
    })


def event_of_type(event_type: str, api_id: str = "api-1") -> str:
    return json.dumps({"message": {"Type": event_type, "Meta": {}, "TimeStamp": ""},
                       "handler_name": "cp_dynamic_handler", "spec": {"APIID": api_id}})


class RawClient:
    """gRPC calls with raw message bytes (no schema), to send what grpcurl cannot."""

    def __init__(self, addr: str):
        self.channel = grpc.insecure_channel(addr)
        grpc.channel_ready_future(self.channel).result(timeout=10)
        self._dispatch = self.channel.unary_unary("/coprocess.Dispatcher/Dispatch")
        self._event = self.channel.unary_unary("/coprocess.Dispatcher/DispatchEvent")

    def dispatch(self, body: bytes) -> bytes:
        return self._dispatch(body, timeout=10)

    def event(self, body: bytes) -> bytes:
        return self._event(body, timeout=10)

    def close(self) -> None:
        self.channel.close()


def grpcurl(addr: str, method: str, data: dict) -> dict:
    """One call with the real grpcurl (schema from the server's reflection)."""
    proc = subprocess.run(
        [grpcurl_bin(), "-plaintext", "-max-time", "10", "-d", json.dumps(data), addr, method],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"grpcurl {method} failed ({proc.returncode}): {proc.stderr}{proc.stdout}"
    return json.loads(proc.stdout or "{}")


# --- hook pipelines: one config for both live suites --------------------------------------------

# The one API key of the keys file (only its SHA-256 is written down), and a key it does not hold.
API_KEY = "obs-suite-key-3f1c9a"
WRONG_KEY = "obs-suite-wrong-key-77d0e2"

# What each declared hook is for:
#   TeamPre          Pre: set_headers X-Team, then respond 403 when X-Block is present
#   StampResponse    Response: set_response_headers X-Stamp
#   KeyAuth          CustomKeyCheck: api_key_auth (API_KEY, granted api-1)
#   FragileResponse  Response: set_response_headers, fail_open; called without a `response`
#                    field, the step errors ("the Object has no response"): a hook failure
# Every other hook name is undeclared: passed through unchanged and counted as unknown.
HOOK_NAMES = ("TeamPre", "StampResponse", "KeyAuth", "FragileResponse")


def write_key_files(workdir: Path) -> tuple[Path, Path]:
    """The keys file and the token secret of KeyAuth."""
    keys = workdir / "keys.toml"
    secret = workdir / "token-secret"
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    keys.write_text(f'[[keys]]\nsha256 = "{digest}"\nname = "obs-suite"\napis = ["api-1"]\n')
    secret.write_text("obs-suite-token-secret-0123456789\n")
    return keys, secret


def hooks_config(workdir: Path, team: str = "payments", broken: bool = False) -> str:
    """The dispatcher's TOML config declaring the hooks above (key files written to `workdir`).
    `team` is the X-Team value TeamPre sets; `broken` adds a step of an unknown kind, which the
    reload watcher refuses (the hooks in force stay)."""
    keys, secret = write_key_files(workdir)
    broken_step = '\n[[hooks.steps]]\nkind = "no_such_step"\n' if broken else ""
    return f'''# tests/observability: hooks for the metrics of issue 6.
config_reload_interval_secs = 1
unknown_hooks = "pass"

[[hooks]]
name = "TeamPre"
type = "Pre"
deadline_ms = 2000

[[hooks.steps]]
kind = "set_headers"
headers = {{ X-Team = "{team}" }}

[[hooks.steps]]
kind = "respond"
status = 403
body = "blocked"
when = {{ header_present = "X-Block" }}
{broken_step}
[[hooks]]
name = "StampResponse"
type = "Response"
deadline_ms = 2000

[[hooks.steps]]
kind = "set_response_headers"
headers = {{ X-Stamp = "obs" }}

[[hooks]]
name = "KeyAuth"
type = "CustomKeyCheck"
deadline_ms = 2000

[[hooks.steps]]
kind = "api_key_auth"
keys_file = {json.dumps(str(keys))}
secret_file = {json.dumps(str(secret))}
cache_secs = 0

[[hooks]]
name = "FragileResponse"
type = "Response"
deadline_ms = 2000
on_error = "fail_open"

[[hooks.steps]]
kind = "set_response_headers"
headers = {{ X-Stamp = "fragile" }}
'''
