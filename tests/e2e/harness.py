"""The end-to-end suite's processes: Redis, the echo upstream, the release dispatcher and a real
Tyk Gateway, each on loopback ports chosen at run time, each stopped by its PID, each logging to
a file whose tail goes into a failing test's report.

A `Stack` is one scenario group's four processes; `GatewayClient` speaks HTTP to the gateway.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ORG = "5e9d9544a1dcd60001d0ed20"
GATEWAY_SECRET = "e2e-gateway-secret"
# Every live process of the suite, so a failing test can print their logs.
LIVE: list["Proc"] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Calls `check` until it returns something truthy; fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as err:  # noqa: BLE001 - retried until the deadline
            last = err
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last!r})" if last else ""))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Proc:
    """One child process with its own log file; stopped by PID (its process group on kill)."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
        self.name, self.cmd, self.log_path = name, cmd, log
        self.env = env
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "ab")
        self.popen = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.popen.pid
        LIVE.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Signals the process, waits, then kills its whole group; returns the exit code."""
        if self.alive():
            try:
                os.kill(self.pid, sig)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(5)
        self._log.close()
        if self in LIVE:
            LIVE.remove(self)
        return self.popen.returncode

    def text(self) -> str:
        self._log.flush()
        return self.log_path.read_bytes().decode(errors="replace")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.text().splitlines()[-lines:])


def report_live_logs(lines: int = 60) -> str:
    return "\n".join(f"----- {p.name} (pid {p.pid}, {p.log_path}) -----\n{p.tail(lines)}" for p in LIVE)


# ---------------------------------------------------------------------------------------------
# Tools


@dataclass(frozen=True)
class Tools:
    gateway: Path
    templates: Path
    redis: str
    dispatcher: Path
    python: str = sys.executable


def find_tools() -> Tools:
    """The four binaries, or one line naming what is missing and how to get it."""
    gateway = os.environ.get("TYK_GATEWAY_BIN")
    if not gateway or not Path(gateway).is_file():
        raise LookupError("missing: a Tyk Gateway binary (set TYK_GATEWAY_BIN, or run "
                          "../shared/tyk-gateway/install.sh, which tests/e2e/run.sh does)")
    templates = Path(os.environ.get("TYK_GATEWAY_TEMPLATES", Path(gateway).parent / "templates"))
    if not (templates / "error.json").is_file():
        raise LookupError(f"missing: the gateway's templates at {templates} (set TYK_GATEWAY_TEMPLATES)")
    redis = shutil.which("redis-server")
    if not redis:
        raise LookupError("missing: redis-server (apt-get install redis-server)")
    dispatcher = Path(os.environ.get("DISPATCHER_BIN", REPO / "target" / "release" / "tyk-dispatcher"))
    if not dispatcher.is_file():
        raise LookupError(f"missing: the release dispatcher at {dispatcher} (cargo build --release)")
    return Tools(Path(gateway), templates, redis, dispatcher)


# ---------------------------------------------------------------------------------------------
# API definitions


def classic_api(api_id: str, listen_path: str, upstream: str, *, pre: list[str] = (), post: list[str] = (),
                post_key_auth: list[str] = (), response: list[str] = (), auth_check: str | None = None,
                keyless: bool = True, config_data: dict | None = None, event_handlers: list[dict] | None = None,
                raw_body_only: bool = False, extra: dict | None = None) -> dict[str, Any]:
    """A Tyk Classic API definition with gRPC plugins (`custom_middleware`, driver grpc)."""

    def entries(names):
        return [{"name": n, "path": "", "require_session": False, "raw_body_only": raw_body_only,
                 "disabled": False} for n in names]

    api: dict[str, Any] = {
        "name": api_id, "api_id": api_id, "org_id": ORG, "active": True,
        "use_keyless": keyless and auth_check is None,
        "proxy": {"listen_path": listen_path, "target_url": upstream, "strip_listen_path": True},
        "version_data": {"not_versioned": True, "versions": {"Default": {"name": "Default", "use_extended_paths": True}}},
        "custom_middleware": {
            "pre": entries(pre), "post": entries(post), "post_key_auth": entries(post_key_auth),
            "response": [dict(e, require_session=True) for e in entries(response)],
            "auth_check": {"name": auth_check or "", "path": "", "require_session": False,
                           "raw_body_only": raw_body_only, "disabled": auth_check is None},
            "driver": "grpc",
            "id_extractor": {"disabled": True, "extract_from": "", "extract_with": "", "extractor_config": {}},
        },
        "config_data": config_data or {},
        "config_data_disabled": False,
    }
    if auth_check is not None:
        api["custom_plugin_auth_enabled"] = True
        api["enable_coprocess_auth"] = True
    if event_handlers:
        api["event_handlers"] = {"events": {}}
        for handler in event_handlers:
            api["event_handlers"]["events"].setdefault(handler["event"], []).append(
                {"handler_name": "cp_dynamic_handler", "handler_meta": {"name": handler["name"]}})
    if extra:
        api.update(extra)
    return api


def oas_api(api_id: str, listen_path: str, upstream: str, middleware: dict[str, Any], *,
            authentication: dict | None = None, name: str | None = None) -> dict[str, Any]:
    """A Tyk OAS API definition (an OpenAPI 3 document with `x-tyk-api-gateway`)."""
    server: dict[str, Any] = {"listenPath": {"value": listen_path, "strip": True}}
    if authentication:
        server["authentication"] = authentication
    return {
        "openapi": "3.0.3",
        "info": {"title": name or api_id, "version": "1.0.0"},
        "paths": {},
        "components": {},
        "x-tyk-api-gateway": {
            "info": {"id": api_id, "orgId": ORG, "name": name or api_id, "state": {"active": True}},
            "upstream": {"url": upstream},
            "server": server,
            "middleware": middleware,
        },
    }


# ---------------------------------------------------------------------------------------------
# HTTP


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    def header_values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.headers}, {self.body[:300]!r})"


def send(port: int, method: str, path: str, *, headers: dict[str, str] | list[tuple[str, str]] | None = None,
         body: bytes | None = None, timeout: float = 30.0, host: str = "127.0.0.1") -> Reply:
    """One HTTP/1.1 request on a connection of its own; every response header kept in order."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        for name, value in items:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return Reply(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def get_text(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one OpenMetrics sample (0 when absent): `name{labels…} value`."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, rest = line.partition(" ")
        base, _, label_text = head.partition("{")
        if base != name:
            continue
        pairs = dict(p.split("=", 1) for p in label_text.rstrip("}").split(",") if "=" in p)
        pairs = {k: v.strip('"') for k, v in pairs.items()}
        if all(pairs.get(k) == v for k, v in labels.items()):
            total += float(rest.split()[0])
            found = True
    return total if found else 0.0


# ---------------------------------------------------------------------------------------------
# The four processes


class Redis:
    def __init__(self, tools: Tools, workdir: Path):
        self.port = free_port()
        self.proc = Proc("redis", [tools.redis, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", str(workdir)], workdir / "redis.log")
        wait_until("redis", lambda: self.command("PING") == "+PONG", 10)

    def command(self, *args: str) -> str:
        """One RESP command; the reply's first line (enough for PING, DBSIZE and the like)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(("*%d\r\n" % len(args) + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)).encode())
            return s.recv(1 << 20).decode(errors="replace").split("\r\n", 1)[0]

    def dump(self) -> bytes:
        """Every key with its string, hash or list value (for secret-leak checks)."""
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli is missing (apt-get install redis-tools)"

        def run(*args: str) -> bytes:
            return subprocess.run([cli, "-p", str(self.port), *args], capture_output=True, check=True,
                                  timeout=10).stdout
        keys = run("--scan").split()
        chunks = [b"\n".join(keys)]
        for key in keys:
            kind = run("TYPE", key.decode()).strip()
            command = {b"string": ["GET"], b"hash": ["HGETALL"], b"list": ["LRANGE"], b"set": ["SMEMBERS"],
                       b"zset": ["ZRANGE"]}.get(kind)
            if command:
                extra = ["0", "-1"] if kind in (b"list", b"zset") else []
                chunks.append(run(*command, key.decode(), *extra))
        return b"\n".join(chunks)


class Upstream:
    def __init__(self, tools: Tools, workdir: Path):
        self.port = free_port()
        ready = workdir / "upstream.ready"
        self.proc = Proc("upstream", [tools.python, str(HERE / "upstream.py"), str(self.port), "--ready-file",
                                      str(ready)], workdir / "upstream.log")
        wait_until("upstream", ready.exists, 10)
        self.url = f"http://127.0.0.1:{self.port}"


# Settings every dispatcher of the run gets, under the scenario's own: `E2E_DISPATCHER_ENV`
# holds NAME=value pairs separated by commas (run.sh's second pass sets
# TYK_DISPATCHER_TRIM_REPLIES=true this way).
SUITE_DISPATCHER_ENV = dict(
    pair.split("=", 1) for pair in os.environ.get("E2E_DISPATCHER_ENV", "").split(",") if "=" in pair
)


class Dispatcher:
    """The release binary with a TOML config file and environment; admin on its own port."""

    def __init__(self, tools: Tools, workdir: Path, *, config: str = "", env: dict[str, str] | None = None,
                 listen: str | None = None, name: str = "dispatcher", wait: bool = True):
        self.workdir = workdir
        self.name = name
        self.admin_port = free_port()
        if listen is None:
            self.grpc_port = free_port()
            listen = f"127.0.0.1:{self.grpc_port}"
        self.listen = listen
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(config)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("TYK_DISPATCHER_", "TYK_GW_", "OTEL_"))}
        base.update({
            "TYK_DISPATCHER_CONFIG": str(self.config_path),
            "TYK_DISPATCHER_LISTEN": listen,
            "TYK_DISPATCHER_ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
            "TYK_DISPATCHER_CONFIG_RELOAD_INTERVAL_SECS": "1",
            "RUST_LOG": "info",
        })
        base.update(SUITE_DISPATCHER_ENV)
        base.update(env or {})
        self.env = base
        self.tools = tools
        self.proc = self._spawn()
        if wait:
            self.wait_ready()

    def _spawn(self) -> Proc:
        return Proc(self.name, [str(self.tools.dispatcher)], self.workdir / f"{self.name}.log", env=self.env)

    def restart(self) -> None:
        self.proc = self._spawn()
        self.wait_ready()

    def wait_ready(self, timeout: float = 15) -> None:
        def ready():
            if not self.proc.alive():
                raise AssertionError(f"{self.name} exited {self.proc.popen.returncode}:\n{self.proc.tail()}")
            return get_text(f"http://127.0.0.1:{self.admin_port}/readyz", 1)[0] == 200
        wait_until(f"{self.name} /readyz", ready, timeout)

    def metrics(self) -> str:
        status, text = get_text(f"http://127.0.0.1:{self.admin_port}/metrics")
        assert status == 200, text
        return text

    def log(self) -> str:
        return self.proc.text()

    def log_lines(self, *containing: str, at_least: int = 1, timeout: float = 5) -> list[str]:
        """The log lines holding every string of `containing`, once there are `at_least` of them.
        A background thread writes the log, so a line can land a moment after the reply it
        describes."""
        def enough():
            lines = [line for line in self.log().splitlines() if all(c in line for c in containing)]
            return lines if len(lines) >= at_least else None
        try:
            return wait_until(f"{at_least} log line(s) holding {containing!r}", enough, timeout, 0.05)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{self.log()[-3000:]}") from None


class Gateway:
    def __init__(self, tools: Tools, workdir: Path, redis: Redis, *, grpc_server: str,
                 conf: dict | None = None, apis: list[dict] = (), oas_apis: list[dict] = (),
                 env: dict[str, str] | None = None, name: str = "gateway", port: int | None = None):
        self.port = port or free_port()
        self.workdir = workdir
        self.apps = workdir / f"{name}-apps"
        self.apps.mkdir(exist_ok=True)
        policies = workdir / f"{name}-policies"
        policies.mkdir(exist_ok=True)
        (policies / "policies.json").write_text("{}")
        for api in apis:
            (self.apps / f"{api['api_id']}.json").write_text(json.dumps(api, indent=1))
        self.conf: dict[str, Any] = {
            "listen_address": "127.0.0.1",
            "listen_port": self.port,
            "secret": GATEWAY_SECRET,
            "node_secret": GATEWAY_SECRET,
            "template_path": str(tools.templates),
            "app_path": str(self.apps),
            "use_db_app_configs": False,
            "policies": {"policy_source": "file", "policy_path": str(policies)},
            "storage": {"type": "redis", "host": "127.0.0.1", "port": redis.port, "database": 0,
                        "optimisation_max_idle": 100},
            "enable_analytics": False,
            "hash_keys": False,
            "enable_jsvm": False,
            "allow_insecure_configs": True,
            "suppress_redis_signal_reload": True,
            "coprocess_options": {"enable_coprocess": True, "coprocess_grpc_server": grpc_server},
            "health_check": {"enable_health_checks": False},
            "log_level": "info",
        }
        merge(self.conf, conf or {})
        self.conf_path = workdir / f"{name}.conf"
        self.conf_path.write_text(json.dumps(self.conf, indent=1))
        genv = {k: v for k, v in os.environ.items() if not k.startswith(("TYK_", "OTEL_"))}
        # Tyk makes a temporary folder at every start and never removes it: keep it in ours.
        genv["TMPDIR"] = str(workdir)
        genv.update(env or {})
        self.env = genv
        self.proc = Proc(name, [str(tools.gateway), "--conf", str(self.conf_path)], workdir / f"{name}.log",
                         env=genv, cwd=workdir)
        # /hello answers before the APIs are loaded; /ready only once they are.
        wait_until("gateway /ready", self._ready, 30)
        for oas in oas_apis:
            self.add_oas(oas)
        if oas_apis:
            self.reload()

    def _ready(self) -> bool:
        if not self.proc.alive():
            raise AssertionError(f"gateway exited {self.proc.popen.returncode}:\n{self.proc.tail()}")
        return get_text(f"http://127.0.0.1:{self.port}/ready", 1)[0] == 200

    def admin(self, method: str, path: str, body: Any = None) -> Reply:
        data = json.dumps(body).encode() if body is not None else None
        return send(self.port, method, path, headers={"X-Tyk-Authorization": GATEWAY_SECRET,
                                                        "Content-Type": "application/json"}, body=data)

    def add_oas(self, oas: dict) -> None:
        reply = self.admin("POST", "/tyk/apis/oas", oas)
        assert reply.status == 200, f"the gateway refused an OAS API: {reply}"

    def reload(self) -> None:
        reply = self.admin("GET", "/tyk/reload?block=true")
        assert reply.status == 200, reply

    def request(self, method: str, path: str, **kw) -> Reply:
        return send(self.port, method, path, **kw)

    def log(self) -> str:
        return self.proc.text()


def merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


@dataclass
class Stack:
    """One scenario group: its own Redis, upstream, dispatcher and gateway."""
    workdir: Path
    redis: Redis
    upstream: Upstream
    dispatcher: Dispatcher
    gateway: Gateway
    extra: list[Proc] = field(default_factory=list)

    def close(self) -> None:
        for proc in [self.gateway.proc, self.dispatcher.proc, self.upstream.proc, self.redis.proc, *self.extra]:
            proc.stop()


def start_stack(tools: Tools, workdir: Path, *, dispatcher_config: str = "", dispatcher_env: dict | None = None,
                apis: Callable[[str], list[dict]] = lambda upstream: [],
                oas_apis: Callable[[str], list[dict]] = lambda upstream: [],
                gateway_conf: dict | None = None, gateway_env: dict | None = None,
                unix_socket: bool = False) -> Stack:
    workdir.mkdir(parents=True, exist_ok=True)
    redis = Redis(tools, workdir)
    upstream = Upstream(tools, workdir)
    listen = f"unix://{workdir}/dispatcher.sock" if unix_socket else None
    dispatcher = Dispatcher(tools, workdir, config=dispatcher_config, env=dispatcher_env, listen=listen)
    grpc_server = listen if unix_socket else f"tcp://127.0.0.1:{dispatcher.grpc_port}"
    gateway = Gateway(tools, workdir, redis, grpc_server=grpc_server, conf=gateway_conf,
                      apis=apis(upstream.url), oas_apis=oas_apis(upstream.url), env=gateway_env)
    return Stack(workdir, redis, upstream, dispatcher, gateway)


# ---------------------------------------------------------------------------------------------
# Dispatcher configuration pieces


def write_api_keys(workdir: Path, keys: dict[str, dict[str, Any]]) -> tuple[Path, Path]:
    """A keys file (SHA-256 of each key with its grants) and the token secret, for api_key_auth."""
    lines = []
    for key, grants in keys.items():
        lines.append("[[keys]]")
        lines.append(f'sha256 = "{sha256(key.encode())}"')
        for name, value in grants.items():
            lines.append(f"{name} = {json.dumps(value)}")
        lines.append("")
    keys_file = workdir / "keys.toml"
    keys_file.write_text("\n".join(lines))
    secret = workdir / "token-secret"
    secret.write_text("e2e-token-secret-0123456789abcdef0123456789\n")
    return keys_file, secret


def api_key_hook(name: str, keys_file: Path, secret: Path, **extra: Any) -> str:
    """A CustomKeyCheck hook with one api_key_auth step, as TOML."""
    settings = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    return (f'[[hooks]]\nname = {json.dumps(name)}\ntype = "CustomKeyCheck"\n\n'
            f'[[hooks.steps]]\nkind = "api_key_auth"\nkeys_file = "{keys_file}"\nsecret_file = "{secret}"\n{settings}\n')


def dispatch_count(metrics_text: str, hook_type: str, hook_name: str, outcome: str | None = None) -> float:
    labels = {"hook_type": hook_type, "hook_name": hook_name}
    if outcome:
        labels["outcome"] = outcome
    return metric(metrics_text, "tyk_dispatcher_dispatch_requests_total", **labels)


# The dispatcher re-executes itself at start with glibc's malloc tuned (src/malloc_tuning.rs).
# glibc (before 2.39) cuts GLIBC_TUNABLES at each ':' in place as it reads it, so
# /proc/PID/environ shows the later pieces as entries of their own.
MALLOC_TUNABLES = ("glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=1048576:"
                   "glibc.malloc.arena_max=2")


def without_malloc_tuning(environ: dict[str, str]) -> dict[str, str]:
    """`environ` (as read from /proc) less the malloc tuning the dispatcher added to it, which
    must be there."""
    env = dict(environ)
    value = env.pop("GLIBC_TUNABLES", None)
    assert value and MALLOC_TUNABLES.startswith(value), f"GLIBC_TUNABLES={value!r}"
    for piece in MALLOC_TUNABLES.split(":")[1:]:
        env.pop(piece.split("=", 1)[0], None)
    return env
