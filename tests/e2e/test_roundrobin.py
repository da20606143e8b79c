"""Round robin over DNS: the gateway's `coprocess_grpc_server` is a gRPC `dns://` target whose
authority names the suite's own DNS server (dns_server.py), which answers the one name with
127.0.0.1 and 127.0.0.2; a dispatcher listens on each address, on the same port. With
`grpc_round_robin_load_balancing` the gateway's gRPC-Go client spreads Pre calls over both; a
SIGTERM to one drains it without a failed request while the other keeps serving.

The gateway (v5.14.0, gateway/coprocess_grpc.go) parses the target with Go's url.Parse, turns it
back into a string and strips only a leading `tcp://`, so `dns://127.0.0.1:PORT/NAME:P` reaches
grpc.NewClient unchanged; gRPC-Go's dns resolver then sends its queries to the authority
(internal/resolver/dns: a net.Resolver with PreferGo and a Dial to that address).
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import harness
from harness import dispatch_count

NAME = "dispatchers.e2e.test"
ADDRESSES = ["127.0.0.1", "127.0.0.2"]
HOOK = "rrPre"
DRAIN_DELAY_SECS = 3


def port_free_on_both() -> int:
    """A TCP port free on 127.0.0.1 and on 127.0.0.2."""
    for _ in range(50):
        port = harness.free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((ADDRESSES[1], port))
            return port
        except OSError:
            continue
    raise AssertionError("no port free on both 127.0.0.1 and 127.0.0.2")


def calls_logged(dispatcher: harness.Dispatcher) -> int:
    """Dispatch calls of HOOK in the dispatcher's JSON log (one `dispatch` line per call), which
    still counts after the process has exited and its /metrics is gone."""
    count = 0
    for line in dispatcher.log().splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event.get("message") == "dispatch" and event.get("hook_name") == HOOK:
            count += 1
    return count


@dataclass
class RoundRobin:
    workdir: Path
    redis: harness.Redis
    upstream: harness.Upstream
    dns: harness.Proc
    dns_port: int
    port: int
    dispatchers: list[harness.Dispatcher]
    gateway: harness.Gateway
    target: str
    # Requests of this module answered 200 by the gateway (each made one Pre call).
    sent: int = 0


@pytest.fixture(scope="module")
def rr(tools, workroot):
    workdir = workroot / "roundrobin"
    workdir.mkdir()
    procs: list[harness.Proc] = []
    try:
        redis = harness.Redis(tools, workdir)
        procs.append(redis.proc)
        upstream = harness.Upstream(tools, workdir)
        procs.append(upstream.proc)
        ready = workdir / "dns.ready"
        dns = harness.Proc("dns", [tools.python, str(harness.HERE / "dns_server.py"), "--name", NAME,
                                   *[arg for a in ADDRESSES for arg in ("--a", a)], "--ready-file", str(ready)],
                           workdir / "dns.log")
        procs.append(dns)
        harness.wait_until("dns server", ready.exists, 10)
        dns_port = int(ready.read_text())
        port = port_free_on_both()
        env = {"TYK_DISPATCHER_DRAIN_DELAY_SECS": str(DRAIN_DELAY_SECS), "TYK_DISPATCHER_LOG_FORMAT": "json"}
        dispatchers = []
        for i, address in enumerate(ADDRESSES, 1):
            d = harness.Dispatcher(tools, workdir, listen=f"{address}:{port}", name=f"dispatcher-{i}", env=env)
            procs.append(d.proc)
            dispatchers.append(d)
        # gRPC's dns target with an authority: dns://DNS-SERVER/NAME:PORT.
        target = f"dns://127.0.0.1:{dns_port}/{NAME}:{port}"
        gateway = harness.Gateway(
            tools, workdir, redis, grpc_server=target,
            conf={"coprocess_options": {"grpc_round_robin_load_balancing": True}},
            apis=[harness.classic_api("roundrobin", "/rr/", upstream.url, pre=[HOOK])])
        procs.append(gateway.proc)
        yield RoundRobin(workdir, redis, upstream, dns, dns_port, port, dispatchers, gateway, target)
    finally:
        for proc in reversed(procs):
            proc.stop()


class Load:
    """A steady stream of GETs through the gateway from a few threads, each result kept."""

    def __init__(self, rr: RoundRobin, threads: int = 3):
        self.rr = rr
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.results: list[tuple[float, int | str]] = []  # (monotonic time, status or error)
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, worker: int) -> None:
        n = 0
        while not self.stop_event.is_set():
            n += 1
            try:
                reply = self.rr.gateway.request("GET", f"/rr/w{worker}/{n}", timeout=10)
                outcome: int | str = reply.status
                if reply.status == 200 and reply.json()["path"] != f"/w{worker}/{n}":
                    outcome = f"wrong upstream path {reply.json()['path']}"
            except Exception as err:  # noqa: BLE001 - every failure is counted and reported
                outcome = repr(err)
            with self.lock:
                self.results.append((time.monotonic(), outcome))

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(15)

    def count(self) -> int:
        with self.lock:
            return len(self.results)

    def failures(self) -> list[tuple[float, int | str]]:
        with self.lock:
            return [r for r in self.results if r[1] != 200]


def pre_calls(d: harness.Dispatcher) -> float:
    return dispatch_count(d.metrics(), "Pre", HOOK, "unchanged")


def test_round_robin_spreads_calls_over_both_dns_addresses(rr):
    one, two = rr.dispatchers
    before = [pre_calls(one), pre_calls(two)]
    n = 40
    for i in range(n):
        reply = rr.gateway.request("GET", f"/rr/seq/{i}")
        assert reply.status == 200, reply
        rr.sent += 1
        assert reply.json()["path"] == f"/seq/{i}"
    after = [pre_calls(one), pre_calls(two)]
    deltas = [a - b for a, b in zip(after, before)]
    assert sum(deltas) == n, f"Pre calls per dispatcher {deltas}, expected {n} in all"
    # Round robin over two READY subchannels alternates; allow for the second connection coming
    # up a little after the first.
    assert min(deltas) >= n // 4, f"calls not spread over both addresses: {deltas}"
    print(f"Pre calls per dispatcher for {n} sequential requests: {deltas}")
    # The gateway asked our DNS server for the name (A), and it answered both addresses.
    dns_log = rr.dns.text()
    assert f"{NAME}. A -> rcode 0 {len(ADDRESSES)} answers" in dns_log, dns_log
    # Each dispatcher saw connections from the gateway on its own address.
    for d in (one, two):
        assert harness.metric(d.metrics(), "tyk_dispatcher_connections_accepted_total") >= 1


def test_sigterm_one_dispatcher_drains_without_a_failed_request(rr):
    stay, leave = rr.dispatchers
    stay_start = pre_calls(stay)
    with Load(rr) as load:
        # Both dispatchers get calls under the stream.
        leave_start = pre_calls(leave)
        harness.wait_until("calls on both dispatchers under load",
                           lambda: pre_calls(stay) - stay_start >= 20 and pre_calls(leave) - leave_start >= 20, 20)
        sigterm_at = time.monotonic()
        leave.proc.send_signal(signal.SIGTERM)
        # Readiness turns at once; the server keeps answering the gateway during the drain.
        harness.wait_until("/readyz 503 on the draining dispatcher",
                           lambda: harness.get_text(f"http://127.0.0.1:{leave.admin_port}/readyz", 1)[0] == 503, 2,
                           interval=0.05)
        at_sigterm = pre_calls(leave)
        harness.wait_until("calls served by the draining dispatcher after SIGTERM",
                           lambda: pre_calls(leave) - at_sigterm >= 10, DRAIN_DELAY_SECS)
        code = leave.proc.wait(DRAIN_DELAY_SECS + 30)
        exited_at = time.monotonic()
        sent_at_exit = load.count()
        stay_at_exit = pre_calls(stay)
        # The stream goes on against the one that stays.
        harness.wait_until("requests after the exit", lambda: load.count() - sent_at_exit >= 200, 30)
        time.sleep(1)
    total = load.count()
    failures = load.failures()
    rr.sent += total - len(failures)

    assert code == 0, leave.proc.tail()
    drained = exited_at - sigterm_at
    # The gateway keeps its connection open, so the drain lasts its full delay (then GOAWAY).
    assert DRAIN_DELAY_SECS - 0.5 <= drained <= DRAIN_DELAY_SECS + 5, f"exited {drained:.2f}s after SIGTERM"
    assert not failures, (f"{len(failures)} of {total} requests failed around the drain "
                          f"(SIGTERM at {sigterm_at:.3f}, exit at {exited_at:.3f}): {failures[:10]}")
    # The stream was steady across the drain and the exit: no pause over a second between answers.
    times = sorted(t for t, _ in load.results if sigterm_at - 1 <= t <= exited_at + 1)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) >= 20 and max(gaps) < 1.0, f"{len(times)} answers around the drain, longest gap {max(gaps):.2f}s"
    print(f"{total} requests, {len(times)} answered from 1 s before SIGTERM to 1 s after the exit "
          f"(longest gap {max(gaps) * 1000:.0f} ms); drain took {drained:.2f}s")
    # After the exit every call went to the one that stays.
    stay_end = pre_calls(stay)
    assert stay_end - stay_at_exit >= load.count() - sent_at_exit - 3 * len(load.threads), \
        (stay_end - stay_at_exit, load.count() - sent_at_exit)
    # Every Pre call of this module is accounted for, exactly once: the one that stays by its
    # metrics, the one that left by its log (it has no /metrics any more).
    left = calls_logged(leave)
    assert stay_end + left == rr.sent, f"stay {stay_end} + left {left} != sent {rr.sent}"
    log = leave.log()
    assert "shutdown requested: draining" in log
    # It left because the delay ran out with the gateway's connection still open, not earlier.
    assert '"message":"drain delay over","open_connections":1' in log, log[-2000:]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", rr.port), timeout=1).close()
