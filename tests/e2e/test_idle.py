"""Connection deadlines against the real gateway: Tyk keeps one long-lived HTTP/2 connection that
sits idle between requests, and no handshake or idle deadline may ever cut it. A client that
never speaks is cut, while the gateway's traffic goes on.
"""

from __future__ import annotations

import socket
import time

import pytest

import harness
import traffic
from harness import metric

HANDSHAKE_SECS = 1
IDLE_SECS = 2


def counters(stack) -> dict[str, float]:
    text = stack.dispatcher.metrics()
    return {
        "accepted": metric(text, "tyk_dispatcher_connections_accepted_total"),
        "idle": metric(text, "tyk_dispatcher_connections_timed_out_total", reason="idle"),
        "handshake": metric(text, "tyk_dispatcher_connections_timed_out_total", reason="handshake"),
    }


@pytest.fixture(scope="module")
def stack(tools, workroot):
    workdir = workroot / "idle"
    workdir.mkdir()
    s = harness.start_stack(
        tools, workdir,
        apis=lambda up: [harness.classic_api("idle", "/idle/", up, pre=["idlePre"], response=["idleResponse"])],
        dispatcher_env={"TYK_DISPATCHER_HANDSHAKE_TIMEOUT_SECS": str(HANDSHAKE_SECS),
                        "TYK_DISPATCHER_IDLE_TIMEOUT_SECS": str(IDLE_SECS)})
    yield s
    s.close()


def test_the_gateway_idle_past_every_deadline_still_gets_answers(stack):
    assert stack.gateway.request("GET", "/idle/first").status == 200
    before = counters(stack)
    time.sleep(IDLE_SECS + HANDSHAKE_SECS + 1.5)
    reply = stack.gateway.request("GET", "/idle/after-idling")
    assert reply.status == 200, reply
    assert reply.json()["path"] == "/after-idling"
    after = counters(stack)
    # The same connection served both: nothing was cut, nothing reconnected.
    assert after == before, (before, after)
    assert after["accepted"] == 1


def test_a_trickle_across_the_idle_deadline_never_fails(stack):
    before = counters(stack)
    outcomes = []
    # Gaps just under, at and past the idle deadline, and past the handshake deadline.
    for gap in (0.5, IDLE_SECS - 0.2, IDLE_SECS, IDLE_SECS + 0.2, IDLE_SECS + 1.0, HANDSHAKE_SECS + 0.1):
        time.sleep(gap)
        outcomes.append(traffic.request(stack.gateway.port, "/idle/trickle"))
    assert [o.status for o in outcomes] == [200] * len(outcomes), outcomes
    assert counters(stack) == before


def test_a_client_that_never_speaks_is_cut_while_the_gateway_goes_on(stack):
    before = counters(stack)
    silent = socket.create_connection(("127.0.0.1", stack.dispatcher.grpc_port), timeout=10)
    started = time.monotonic()
    with traffic.Stream(stack.gateway.port, "/idle/stream", threads=2, duration=10) as stream:
        # The server speaks first (its SETTINGS frame); then, hearing nothing back, it hangs up.
        while silent.recv(4096):
            pass
        cut_after = time.monotonic() - started
        stream.wait_for(20)
    silent.close()
    assert cut_after < HANDSHAKE_SECS * 3, f"cut after {cut_after:.2f}s"
    assert not stream.failures(), stream.failures()[:5]
    after = counters(stack)
    assert after["handshake"] - before["handshake"] == 1
    assert after["idle"] == before["idle"]
    # The silent client is the only new connection: the gateway kept its own.
    assert after["accepted"] - before["accepted"] == 1
