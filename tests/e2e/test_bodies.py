"""Large bodies through a Pre and a Response plugin: byte-identical at the gateway's default
limits up to what fits, with raised limits for 20 MiB, and the gateway's 500 (with a dispatcher
log line naming both sizes) where a body cannot fit the gateway's receive limit.
"""

from __future__ import annotations

import re

import pytest

import harness
from upstream import payload

MIB = 1 << 20
RAISED = str(64 * MIB)


def apis(upstream: str) -> list[dict]:
    return [harness.classic_api("bodies", "/bodies/", upstream, pre=["e2eBodyPre"], response=["e2eBodyResponse"])]


@pytest.fixture(scope="module", params=["default", "raised"])
def stack(request, tools, workroot):
    workdir = workroot / f"bodies-{request.param}"
    workdir.mkdir()
    env = {}
    if request.param == "raised":
        env = {"TYK_GW_COPROCESSOPTIONS_GRPCRECVMAXSIZE": RAISED, "TYK_GW_COPROCESSOPTIONS_GRPCSENDMAXSIZE": RAISED}
    s = harness.start_stack(tools, workdir, apis=apis, dispatcher_env=env, gateway_env=env)
    s.limits = request.param
    yield s
    s.close()


def sizes(stack) -> list[int]:
    return [3 * MIB] if stack.limits == "default" else [3 * MIB, 20 * MIB]


@pytest.mark.parametrize("kind", ["binary", "json"])
def test_request_bodies_reach_the_upstream_byte_identical(stack, kind):
    for size in sizes(stack):
        body = payload(size, kind)
        content_type = "application/json" if kind == "json" else "application/octet-stream"
        reply = stack.gateway.request("POST", "/bodies/upload", body=body, headers={"Content-Type": content_type},
                                      timeout=60)
        assert reply.status == 200, f"{size} bytes of {kind}: {reply}"
        seen = reply.json()
        assert (seen["body_bytes"], seen["body_sha256"]) == (size, harness.sha256(body)), f"{size} bytes of {kind}"


@pytest.mark.parametrize("kind", ["binary", "json"])
def test_response_bodies_reach_the_client_byte_identical(stack, kind):
    for size in sizes(stack):
        reply = stack.gateway.request("GET", f"/bodies/bytes?n={size}&kind={kind}", timeout=60)
        assert reply.status == 200, f"{size} bytes of {kind}: {reply}"
        assert len(reply.body) == size
        assert harness.sha256(reply.body) == harness.sha256(payload(size, kind)), f"{size} bytes of {kind}"


@pytest.mark.parametrize("stack", ["default"], indirect=True)
def test_utf8_bodies_lose_their_duplicate_strings_to_fit_the_default_limit(stack):
    """A 3 MiB JSON body arrives twice (`body` and `raw_body`): 6 MiB, over the gateway's 4 MiB
    default. The reply drops the `body` strings the gateway never reads, and fits."""
    before = harness.metric(stack.dispatcher.metrics(), "tyk_dispatcher_reply_body_strings_dropped_total")
    body = payload(3 * MIB, "json")
    reply = stack.gateway.request("POST", "/bodies/upload", body=body, headers={"Content-Type": "application/json"})
    assert reply.status == 200, reply
    after = harness.metric(stack.dispatcher.metrics(), "tyk_dispatcher_reply_body_strings_dropped_total")
    # The Pre reply and the Response reply (which carries the request body too); trimmed
    # replies (run.sh's second pass) never had the strings, so there is nothing left to drop.
    trimmed = harness.SUITE_DISPATCHER_ENV.get("TYK_DISPATCHER_TRIM_REPLIES") == "true"
    assert after - before == (0 if trimmed else 2)


@pytest.mark.parametrize("stack", ["default"], indirect=True)
def test_a_body_over_the_default_receive_limit_fails_with_both_sizes_logged(stack):
    body = payload(5 * MIB, "binary")
    reply = stack.gateway.request("POST", "/bodies/upload", body=body)
    assert reply.status == 500, reply
    assert b"Middleware error" in reply.body
    response = stack.gateway.request("GET", f"/bodies/bytes?n={5 * MIB}&kind=binary")
    assert response.status == 500, response
    lines = stack.dispatcher.log_lines("reply exceeds the gateway's default receive limit", at_least=2)
    for line in lines[-2:]:
        reply_bytes = int(re.search(r"reply_bytes=(\d+)", line).group(1))
        assert reply_bytes > 5 * MIB
        assert "limit_bytes=4194304" in line
