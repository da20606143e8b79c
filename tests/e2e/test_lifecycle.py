"""The dispatcher's lifecycle under a steady stream of requests through the real gateway: a crash
and restart, hook edits, hand-over to a new instance (TCP with reuse_port, and a Unix socket),
connection ageing, and a pod's shutdown with the gateway (plus a negative control without drain).

Each test gets a stack of its own (most of them kill or replace a process). Every request of the
stream is recorded (`traffic.Stream`), and the assertions count failed requests by kind and time.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import harness
import traffic
from harness import dispatch_count, metric

PRE = "lcPre"
RESPONSE = "lcResponse"


def hooks(version: str, response: bool = False) -> str:
    text = (f'[[hooks]]\nname = "{PRE}"\ntype = "Pre"\n'
            f'[[hooks.steps]]\nkind = "set_headers"\nheaders = {{ X-Version = "{version}" }}\n')
    if response:
        text += (f'\n[[hooks]]\nname = "{RESPONSE}"\ntype = "Response"\n'
                 f'[[hooks.steps]]\nkind = "set_response_headers"\nheaders = {{ X-Resp = "seen" }}\n')
    return text


def apis(response: bool = False):
    return lambda upstream: [harness.classic_api("lifecycle", "/lc/", upstream, pre=[PRE],
                                                 response=[RESPONSE] if response else [])]


def short_lived(**extra: str) -> dict[str, str]:
    """Dispatcher environment with a short drain and grace, so a SIGTERM ends within seconds."""
    env = {"TYK_DISPATCHER_DRAIN_DELAY_SECS": "3", "TYK_DISPATCHER_SHUTDOWN_GRACE_SECS": "2"}
    env.update(extra)
    return env


@pytest.fixture
def stacks(tools, workroot, request):
    """Starts stacks for one test (each in a folder named after it) and closes them afterwards."""
    started: list[harness.Stack] = []

    def start(**kw) -> harness.Stack:
        workdir = workroot / f"lifecycle-{request.node.name}-{len(started)}"
        kw.setdefault("dispatcher_env", short_lived())
        stack = harness.start_stack(tools, workdir, **kw)
        started.append(stack)
        # The gateway answers /hello before it has loaded its APIs: until then a request for the
        # listen path gets 404 "Not Found". Streams start once the API answers.
        harness.wait_until("the API loaded in the gateway",
                           lambda: stack.gateway.request("GET", "/lc/echo", timeout=5).status == 200, 10, 0.05)
        return stack

    yield start
    for stack in started:
        stack.close()


def write_atomically(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    os.replace(temp, path)


def seen_version(outcome: traffic.Outcome) -> str | None:
    return (json.loads(outcome.body)["headers"].get("X-Version") or [None])[0]


def second_dispatcher(stack: harness.Stack, tools: harness.Tools, env: dict[str, str]) -> harness.Dispatcher:
    """Instance B on A's address, with A's hooks; stopped with the stack."""
    b = harness.Dispatcher(tools, stack.workdir, config=stack.dispatcher.config_path.read_text(), env=env,
                           listen=stack.dispatcher.listen, name="dispatcher-b")
    stack.extra.append(b.proc)
    return b


# ---------------------------------------------------------------------------------------------
# 1. Crash and restart


def test_killed_dispatcher_fails_requests_then_recovers_without_a_gateway_restart(stacks, record_property):
    stack = stacks(dispatcher_config=hooks("1"), apis=apis())
    gateway_pid = stack.gateway.proc.pid
    outage = 2.0
    with traffic.Stream(stack.gateway.port, "/lc/echo", duration=40) as stream:
        stream.wait_for(30)
        old = stack.dispatcher.proc
        killed = time.monotonic()
        old.send_signal(signal.SIGKILL)
        old.wait(5)
        old.stop()  # closes its log; it is gone already
        time.sleep(outage)
        respawned = time.monotonic()
        stack.dispatcher.restart()
        ready = time.monotonic()
        bound = traffic.grpc_backoff_bound(ready - killed)
        harness.wait_until("a 200 after the restart", lambda: stream.successes_since(ready), bound + 5, 0.02)
        stream.wait_for(30)
    outcomes = stream.snapshot()
    first_ok = min((o for o in outcomes if o.ok and o.started > killed), key=lambda o: o.ended)
    recovery = first_ok.ended - ready
    print(f"\nrecovery: {recovery:.2f}s after the restart was ready ({first_ok.ended - killed:.2f}s after the "
          f"kill; dispatcher down {ready - killed:.2f}s, of which {ready - respawned:.2f}s starting); "
          f"back-off bound {bound:.2f}s + 1s slack")
    record_property("recovery_seconds", round(recovery, 3))
    record_property("recovery_bound_seconds", round(bound + 1.0, 3))

    before = [o for o in outcomes if o.ended < killed]
    down = [o for o in outcomes if killed + 0.05 < o.started and o.ended < respawned]
    after = [o for o in outcomes if o.started >= first_ok.ended]
    assert not [o for o in before if not o.ok], traffic.summary(before)
    # While the dispatcher is gone, every request fails the gateway's way: 500 Middleware error.
    assert len(down) >= 20, traffic.summary(down)
    assert all(o.status == 500 and json.loads(o.body) == {"error": "Middleware error"} for o in down), \
        traffic.summary(down)
    assert recovery <= bound + 1.0, f"recovered {recovery:.2f}s after the restart; bound {bound:.2f}s + 1s"
    # Once back, back for good; the gateway is the one it was.
    assert len(after) >= 20 and not [o for o in after if not o.ok], traffic.summary(after)
    assert stack.gateway.proc.alive() and stack.gateway.proc.pid == gateway_pid
    assert dispatch_count(stack.dispatcher.metrics(), "Pre", PRE) >= len(after)


# ---------------------------------------------------------------------------------------------
# 2. Hooks edited under the stream


def test_hooks_file_edits_apply_without_a_failed_request_and_a_broken_file_is_refused(stacks):
    stack = stacks(dispatcher_config=hooks("1"), apis=apis())
    path = stack.dispatcher.config_path
    reload_interval = 1.0
    slack = 1.0
    before = stack.dispatcher.metrics()
    with traffic.Stream(stack.gateway.port, "/lc/echo", duration=40) as stream:
        stream.wait_for(20)
        edited = time.monotonic()
        write_atomically(path, hooks("2"))
        harness.wait_until("X-Version 2 upstream",
                           lambda: any(seen_version(o) == "2" for o in stream.successes_since(edited)),
                           reload_interval + slack + 2, 0.02)
        first_v2 = min((o for o in stream.successes_since(edited) if seen_version(o) == "2"),
                       key=lambda o: o.ended)
        stream.wait_for(20)
        middle = stack.dispatcher.metrics()
        broken = time.monotonic()
        write_atomically(path, hooks("3").replace('kind = "set_headers"', 'kind = "no_such_step"'))
        harness.wait_until(
            "a failed reload counted",
            lambda: metric(stack.dispatcher.metrics(), "tyk_dispatcher_config_reloads_total", result="failure")
            > metric(middle, "tyk_dispatcher_config_reloads_total", result="failure"),
            reload_interval + slack + 2)
        counted = time.monotonic()
        stream.wait_for(30)
    after = stack.dispatcher.metrics()
    outcomes = stream.snapshot()
    took = first_v2.ended - edited
    print(f"\nedit in force {took:.2f}s after the rename; broken file counted {counted - broken:.2f}s after it")

    assert not [o for o in outcomes if not o.ok], traffic.summary(outcomes)
    assert took <= reload_interval + slack, f"X-Version 2 first seen {took:.2f}s after the edit"
    # Versions only move forward: 1 before the edit, 2 once seen, never 3 (the broken file).
    versions = [seen_version(o) for o in outcomes]
    assert set(versions) == {"1", "2"}, sorted(set(map(str, versions)))
    assert all(seen_version(o) == "2" for o in outcomes if o.started >= first_v2.ended)
    assert all(seen_version(o) == "1" for o in outcomes if o.ended <= edited)
    assert len([o for o in outcomes if o.started >= counted]) >= 20
    assert metric(after, "tyk_dispatcher_config_reloads_total", result="success") - \
        metric(before, "tyk_dispatcher_config_reloads_total", result="success") == 1
    assert metric(after, "tyk_dispatcher_config_reloads_total", result="failure") - \
        metric(before, "tyk_dispatcher_config_reloads_total", result="failure") >= 1
    stack.dispatcher.log_lines("config file changed but is not valid")


# ---------------------------------------------------------------------------------------------
# 3 and 4. Hand-over to a new instance


def hand_over(stack: harness.Stack, tools: harness.Tools, env: dict[str, str]) -> None:
    a = stack.dispatcher
    with traffic.Stream(stack.gateway.port, "/lc/echo", duration=40) as stream:
        stream.wait_for(30)
        b = second_dispatcher(stack, tools, env)
        b_before = dispatch_count(b.metrics(), "Pre", PRE)
        stream.wait_for(20)
        termed = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        code = a.proc.wait(15)
        a_gone = time.monotonic()
        stream.wait_for(40)
    outcomes = stream.snapshot()
    b_calls = dispatch_count(b.metrics(), "Pre", PRE) - b_before
    after = [o for o in outcomes if o.started >= a_gone]
    print(f"\nA exited {code} after {a_gone - termed:.2f}s; B served {b_calls:.0f} calls; "
          f"{traffic.summary(outcomes)}")
    for o in outcomes:
        if not o.ok:
            print(f"failed {o.started - termed:+.3f}s..{o.ended - termed:+.3f}s after the SIGTERM "
                  f"(A gone at {a_gone - termed:+.3f}s, wall {time.time() - (time.monotonic() - o.started):.3f}): {o}")
    assert not [o for o in outcomes if not o.ok], traffic.summary(outcomes)
    assert code == 0, a.proc.tail()
    assert len(after) >= 30
    assert b_calls >= len(after), f"B served {b_calls} calls, {len(after)} requests after A exited"
    assert b.proc.alive()


def test_tcp_hand_over_with_reuse_port_loses_no_request(stacks, tools):
    env = short_lived(TYK_DISPATCHER_REUSE_PORT="true")
    stack = stacks(dispatcher_config=hooks("1"), dispatcher_env=env, apis=apis())
    hand_over(stack, tools, env)


def test_unix_socket_takeover_loses_no_request(stacks, tools):
    env = short_lived()
    stack = stacks(dispatcher_config=hooks("1"), dispatcher_env=env, apis=apis(), unix_socket=True)
    socket_path = Path(stack.dispatcher.listen.removeprefix("unix://"))
    hand_over(stack, tools, env)
    # A left the socket in place: it is B's now.
    assert socket_path.is_socket()
    stack.dispatcher.log_lines("Unix socket now belongs to another instance; left in place")


# ---------------------------------------------------------------------------------------------
# 5. Connection ageing


def test_max_connection_age_reconnects_without_a_failed_request(stacks):
    env = short_lived(TYK_DISPATCHER_MAX_CONNECTION_AGE_SECS="2", TYK_DISPATCHER_MAX_CONNECTION_AGE_GRACE_SECS="1")
    stack = stacks(dispatcher_config=hooks("1"), dispatcher_env=env, apis=apis())
    accepted = "tyk_dispatcher_connections_accepted_total"
    with traffic.Stream(stack.gateway.port, "/lc/echo", duration=30) as stream:
        stream.wait_for(10)
        before = metric(stack.dispatcher.metrics(), accepted)
        started = time.monotonic()
        time.sleep(6.5)
    after = metric(stack.dispatcher.metrics(), accepted)
    outcomes = stream.snapshot()
    print(f"\n{after - before:.0f} connections accepted in {time.monotonic() - started:.1f}s; "
          f"{traffic.summary(outcomes)}")
    assert not [o for o in outcomes if not o.ok], traffic.summary(outcomes)
    assert len(outcomes) >= 100
    assert after - before >= 2, f"connections accepted: {before} -> {after}"


# ---------------------------------------------------------------------------------------------
# 6. A pod's shutdown: SIGTERM to gateway and dispatcher at once


GATEWAY_DELAY = 2
SLOW_MS = 3000
SLOW_COUNT = 4


@dataclass
class Shutdown:
    stream: traffic.Stream
    termed: float  # both SIGTERMs sent
    gateway_exit: float
    dispatcher_exit: float
    gateway_code: int
    dispatcher_code: int
    gateway_ready: tuple[int, str]  # the gateway's /ready during its shutdown delay
    dispatcher_ready: tuple[int, str]  # the dispatcher's /readyz then


def pod_shutdown(stack: harness.Stack) -> Shutdown:
    """Streams, puts slow requests in flight, then SIGTERMs gateway and dispatcher together, as
    Kubernetes does to the containers of a pod; keeps streaming until both have exited."""
    gw, dispatcher = stack.gateway.proc, stack.dispatcher.proc
    with traffic.Stream(stack.gateway.port, "/lc/echo", duration=40) as stream:
        stream.wait_for(30)
        stream.fire(f"/lc/slow?ms={SLOW_MS}", SLOW_COUNT)
        time.sleep(0.5)
        termed = time.monotonic()
        gw.send_signal(signal.SIGTERM)
        dispatcher.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        gateway_ready = harness.get_text(f"http://127.0.0.1:{stack.gateway.port}/ready", 2)
        dispatcher_ready = harness.get_text(f"http://127.0.0.1:{stack.dispatcher.admin_port}/readyz", 2) \
            if dispatcher.alive() else (0, "exited")
        exits: dict[str, float] = {}
        harness.wait_until("gateway and dispatcher exited",
                           lambda: [exits.setdefault(p.name, time.monotonic()) for p in (gw, dispatcher)
                                    if not p.alive()] and len(exits) == 2,
                           GATEWAY_DELAY + SLOW_MS / 1000 + 15, 0.02)
        # New connections once the gateway has closed its listener are refused.
        stream.wait_for(10)
    return Shutdown(stream, termed, exits[gw.name], exits[dispatcher.name], gw.wait(1), dispatcher.wait(1),
                    gateway_ready, dispatcher_ready)


def gateway_conf() -> dict:
    return {"graceful_shutdown_delay_seconds": GATEWAY_DELAY, "graceful_shutdown_timeout_duration": 10}


def test_pod_shutdown_loses_no_request_the_gateway_accepted(stacks, record_property):
    # The dispatcher's defaults (45 s drain at most, 30 s grace): it leaves when the gateway does.
    stack = stacks(dispatcher_config=hooks("1", response=True), dispatcher_env={}, apis=apis(response=True),
                   gateway_conf=gateway_conf())
    run = pod_shutdown(stack)
    outcomes = run.stream.snapshot()
    slow = [o for o in outcomes if "/slow" in o.path]
    answered = [o for o in outcomes if o.error is None]
    refused = [o for o in outcomes if o.refused]
    other = [o for o in outcomes if o.error is not None and not o.refused]
    during = [o for o in answered if o.started > run.termed]
    first_refused = min((o.started for o in refused), default=float("nan"))
    print(f"\ngateway exited {run.gateway_code} {run.gateway_exit - run.termed:.2f}s after the SIGTERM, dispatcher "
          f"exited {run.dispatcher_code} {run.dispatcher_exit - run.termed:.2f}s after it; gateway /ready "
          f"{run.gateway_ready}, dispatcher /readyz {run.dispatcher_ready} during the delay; answered "
          f"{len(answered)} ({len(during)} started after the SIGTERM), refused {len(refused)} (the first "
          f"{first_refused - run.termed:.2f}s after the SIGTERM), other errors {len(other)}")
    record_property("refused_after_listener_closed", len(refused))

    # Every request the gateway accepted was answered 200; the slow ones went through their
    # Response hook after the SIGTERM.
    assert not [o for o in answered if not o.ok], traffic.summary(answered)
    assert not other, traffic.summary(other)
    assert len(slow) == SLOW_COUNT and all(o.ok and o.header("X-Resp") == "seen" and o.ended - run.termed > 2
                                           for o in slow), slow
    assert len(during) >= 20, "the gateway kept serving through its shutdown delay"
    # Both tell Kubernetes to send no more traffic while they finish what they have.
    assert run.gateway_ready[0] == 503 and "Gateway is shutting down" in run.gateway_ready[1], run.gateway_ready
    assert run.dispatcher_ready[0] == 503, run.dispatcher_ready
    # Refused connections only once the gateway closed its listener, after its delay. (Behind a
    # Service these never happen: the pod left the endpoints when /ready turned 503.)
    assert refused, "the stream never saw the gateway's listener closed"
    assert first_refused > run.termed + GATEWAY_DELAY - 0.2
    # The dispatcher outlived the gateway, left as soon as it was gone, and exited cleanly.
    assert run.dispatcher_code == 0, stack.dispatcher.proc.tail()
    assert run.gateway_exit <= run.dispatcher_exit < run.gateway_exit + 2
    log = stack.dispatcher.log()
    assert "every client disconnected" in log and "drain delay over" not in log, stack.dispatcher.proc.tail()


def test_pod_shutdown_without_drain_fails_requests(stacks):
    """Negative control: the same shutdown, with a dispatcher that does not wait for the gateway."""
    stack = stacks(dispatcher_config=hooks("1", response=True),
                   dispatcher_env={"TYK_DISPATCHER_DRAIN_DELAY_SECS": "0", "TYK_DISPATCHER_SHUTDOWN_GRACE_SECS": "0"},
                   apis=apis(response=True), gateway_conf=gateway_conf())
    run = pod_shutdown(stack)
    outcomes = run.stream.snapshot()
    slow = [o for o in outcomes if "/slow" in o.path]
    failed = [o for o in outcomes if o.error is None and not o.ok]
    print(f"\ngateway exited {run.gateway_code} {run.gateway_exit - run.termed:.2f}s after the SIGTERM, dispatcher "
          f"exited {run.dispatcher_code} {run.dispatcher_exit - run.termed:.2f}s after it; {len(failed)} answered "
          f"requests failed: {traffic.summary(outcomes)}")
    assert run.dispatcher_code == 0, stack.dispatcher.proc.tail()
    assert run.dispatcher_exit < run.termed + 1 and "drain delay over" in stack.dispatcher.log()
    # The slow requests reach their Response hook after the dispatcher has gone: 500.
    assert len(slow) == SLOW_COUNT, slow
    assert all(o.status == 500 and json.loads(o.body) == {"error": "Middleware error"} for o in slow), slow
    # And the stream's requests during the gateway's delay fail in their Pre hook.
    stream_failed = [o for o in failed if "/slow" not in o.path]
    assert len(stream_failed) >= 10, traffic.summary(outcomes)
    assert all(o.status == 500 and json.loads(o.body) == {"error": "Middleware error"} and o.ended > run.termed
               for o in stream_failed), traffic.summary(stream_failed)
