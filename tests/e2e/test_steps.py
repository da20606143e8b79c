"""Every hook type on one API, and every built-in step, through the real gateway: what the
upstream receives and what the client gets back are the gateway's doing with our replies.
"""

from __future__ import annotations

import time

import pytest

import harness
from harness import dispatch_count, metric

KEY = "steps-key-0001"

HOOKS = """
[[hooks]]
name = "e2ePre"
type = "Pre"
[[hooks.steps]]
kind = "set_headers"
headers = { X-Pre = "pre-value", X-Override = "from-pre" }
[[hooks.steps]]
kind = "delete_headers"
names = ["X-Drop-Me"]
[[hooks.steps]]
kind = "add_params"
params = { added = "yes" }
[[hooks.steps]]
kind = "delete_params"
names = ["drop"]

[[hooks]]
name = "e2ePostAuth"
type = "PostKeyAuth"
[[hooks.steps]]
kind = "config_data_headers"
headers = { X-Team = "/team", X-Tier = "/limits/tier" }

[[hooks]]
name = "e2ePost"
type = "Post"
[[hooks.steps]]
kind = "set_headers"
headers = { X-Post = "post-value", X-Override = "from-post" }

[[hooks]]
name = "e2eResponse"
type = "Response"
[[hooks.steps]]
kind = "set_response_headers"
headers = { X-Resp = "resp-value" }
[[hooks.steps]]
kind = "delete_response_headers"
names = ["X-Upstream"]

[[hooks]]
name = "e2eCookiesAdd"
type = "Response"
[[hooks.steps]]
kind = "add_response_headers"
headers = { Set-Cookie = ["plugin1=x; Path=/; HttpOnly", "plugin2=y; Path=/"] }

[[hooks]]
name = "e2eCookiesSet"
type = "Response"
[[hooks.steps]]
kind = "set_response_headers"
headers = { Set-Cookie = ["only1=x; Path=/", "only2=y; Path=/"], X-Single = "one" }

[[hooks]]
name = "e2eLog"
type = "Post"
[[hooks.steps]]
kind = "log"

[[hooks]]
name = "e2eRewrite"
type = "Pre"
[[hooks.steps]]
kind = "rewrite_url"
pattern = "^/rewrite/old/(.*)$"
replacement = "/rewrite/new/$1"

[[hooks]]
name = "e2eMethod"
type = "Pre"
[[hooks.steps]]
kind = "set_method"
method = "PUT"

[[hooks]]
name = "e2eRespond"
type = "Pre"
[[hooks.steps]]
kind = "respond"
status = 418
body = '{"teapot": true}'
headers = { Content-Type = "application/json", X-Responded = "by-plugin" }
when = { header_absent = "X-Let-Me-Through" }

[[hooks]]
name = "e2eRespondResponse"
type = "Response"
[[hooks.steps]]
kind = "respond"
status = 203
body = "replaced by the plugin"
headers = { Content-Type = "text/plain", X-Replaced = "yes" }

[[hooks]]
name = "e2eDryRun"
type = "Pre"
dry_run = true
[[hooks.steps]]
kind = "set_headers"
headers = { X-Dry = "should-not-arrive" }

[[hooks]]
name = "e2eSlowOpen"
type = "Pre"
deadline_ms = 200
on_error = "fail_open"
[[hooks.steps]]
kind = "delay"
ms = 3000

[[hooks]]
name = "e2eSlowClosed"
type = "Pre"
deadline_ms = 200
on_error = "fail_closed"
[[hooks.steps]]
kind = "delay"
ms = 3000
"""


def apis(upstream: str) -> list[dict]:
    c = harness.classic_api
    return [
        c("allhooks", "/allhooks/", upstream, pre=["e2ePre"], auth_check="e2eAuth", post_key_auth=["e2ePostAuth"],
          post=["e2ePost"], response=["e2eResponse"], config_data={"team": "payments", "limits": {"tier": 3}}),
        c("rewrite", "/rewrite/", upstream, pre=["e2eRewrite"]),
        c("cookiesadd", "/cookies-add/", upstream, response=["e2eCookiesAdd"]),
        c("cookiesset", "/cookies-set/", upstream, response=["e2eCookiesSet"]),
        c("method", "/method/", upstream, pre=["e2eMethod"]),
        c("logged", "/logged/", upstream, post=["e2eLog"]),
        c("respond", "/respond/", upstream, pre=["e2eRespond"]),
        c("respondresponse", "/respond-response/", upstream, response=["e2eRespondResponse"]),
        c("dryrun", "/dryrun/", upstream, pre=["e2eDryRun"]),
        c("slowopen", "/slow-open/", upstream, pre=["e2eSlowOpen"]),
        c("slowclosed", "/slow-closed/", upstream, pre=["e2eSlowClosed"]),
    ]


@pytest.fixture(scope="module")
def stack(tools, workroot):
    workdir = workroot / "steps"
    workdir.mkdir()
    keys_file, secret = harness.write_api_keys(workdir, {KEY: {"name": "steps", "apis": ["allhooks"]}})
    config = HOOKS + harness.api_key_hook("e2eAuth", keys_file, secret)
    s = harness.start_stack(tools, workdir, dispatcher_config=config, apis=apis)
    yield s
    s.close()


def upstream_calls(stack, path: str) -> int:
    """How many requests for `path` the upstream has logged."""
    return sum(1 for line in stack.upstream.proc.text().splitlines() if f" {path}" in line)


def test_all_five_hook_types_edit_one_request_in_order(stack):
    before = stack.dispatcher.metrics()
    reply = stack.gateway.request(
        "GET", "/allhooks/echo?keep=1&drop=2",
        headers={"Authorization": KEY, "X-Drop-Me": "gone", "X-Client": "kept"})
    assert reply.status == 200, reply
    seen = reply.json()
    headers = seen["headers"]
    assert headers["X-Pre"] == ["pre-value"]
    assert headers["X-Post"] == ["post-value"]
    # Post runs last, so its value of a header both set wins.
    assert headers["X-Override"] == ["from-post"]
    # config_data of this API, through a PostKeyAuth step.
    assert headers["X-Team"] == ["payments"] and headers["X-Tier"] == ["3"]
    assert headers["X-Client"] == ["kept"]
    assert "X-Drop-Me" not in headers
    assert sorted(seen["query"].split("&")) == ["added=yes", "keep=1"]
    assert seen["path"] == "/echo"
    # The Response hook's edits reach the client.
    assert reply.header("X-Resp") == "resp-value"
    assert reply.header("X-Upstream") is None
    after = stack.dispatcher.metrics()
    for hook_type, name in (("Pre", "e2ePre"), ("CustomKeyCheck", "e2eAuth"), ("PostKeyAuth", "e2ePostAuth"),
                            ("Post", "e2ePost"), ("Response", "e2eResponse")):
        delta = dispatch_count(after, hook_type, name, "modified") - dispatch_count(before, hook_type, name, "modified")
        assert delta == 1, f"{hook_type} {name}: {delta} modified calls"


def test_a_step_adds_cookies_beside_the_upstreams_own(stack):
    reply = stack.gateway.request("GET", "/cookies-add/cookies")
    assert reply.status == 200, reply
    assert sorted(reply.header_values("Set-Cookie")) == sorted([
        "upstream1=a; Path=/", "upstream2=b; Path=/", "plugin1=x; Path=/; HttpOnly", "plugin2=y; Path=/"])


def test_a_step_replaces_the_upstreams_cookies_when_configured_so(stack):
    reply = stack.gateway.request("GET", "/cookies-set/cookies")
    assert reply.status == 200, reply
    assert sorted(reply.header_values("Set-Cookie")) == ["only1=x; Path=/", "only2=y; Path=/"]
    assert reply.header_values("X-Single") == ["one"]
    assert reply.header("X-Upstream") == "e2e", "headers the step does not name are kept"


def test_the_log_step_logs_the_object_redacted_and_changes_nothing(stack):
    secret = "Bearer log-step-secret-123"
    reply = stack.gateway.request("POST", "/logged/thing?token=query-secret-456", body=b"logged body",
                                  headers={"Authorization": secret, "X-Visible": "shown"})
    assert reply.status == 200, reply
    assert reply.json()["headers"]["Authorization"] == [secret], "the request went on unchanged"
    lines = stack.dispatcher.log_lines('"hookName":"e2eLog"')
    line = lines[-1]
    assert '"X-Visible":"shown"' in line, line
    assert '"Authorization":"[REDACTED]"' in line, line
    assert "log-step-secret-123" not in line and "query-secret-456" not in line, line
    assert f'"rawBody":{{"bytes":11,"sha256":"{harness.sha256(b"logged body")}"}}' in line, line


def test_rewrite_url_changes_the_upstream_path(stack):
    reply = stack.gateway.request("GET", "/rewrite/old/items/7?q=1")
    assert reply.status == 200, reply
    assert reply.json()["path"] == "/new/items/7"
    assert reply.json()["query"] == "q=1"


def test_set_method_changes_the_upstream_method(stack):
    reply = stack.gateway.request("POST", "/method/thing", body=b"payload")
    assert reply.status == 200, reply
    assert reply.json()["method"] == "PUT"
    assert reply.json()["body_sha256"] == harness.sha256(b"payload")


def test_respond_on_a_request_hook_answers_without_the_upstream(stack):
    calls = upstream_calls(stack, "/answered")
    reply = stack.gateway.request("GET", "/respond/answered")
    assert reply.status == 418, reply
    assert reply.json() == {"teapot": True}
    assert reply.header("X-Responded") == "by-plugin"
    assert reply.header("Content-Type") == "application/json"
    assert upstream_calls(stack, "/answered") == calls, "the upstream was called"
    # The condition: a request with the header passes through.
    through = stack.gateway.request("GET", "/respond/answered", headers={"X-Let-Me-Through": "1"})
    assert through.status == 200 and through.json()["path"] == "/answered"
    assert upstream_calls(stack, "/answered") == calls + 1


def test_respond_on_a_response_hook_replaces_the_upstream_answer(stack):
    reply = stack.gateway.request("GET", "/respond-response/whatever")
    assert reply.status == 203, reply
    assert reply.body == b"replaced by the plugin"
    assert reply.header("X-Replaced") == "yes"
    assert reply.header("Content-Length") == str(len(b"replaced by the plugin"))
    assert reply.header("X-Upstream") is None


def test_dry_run_reports_but_sends_the_original(stack):
    before = stack.dispatcher.metrics()
    reply = stack.gateway.request("GET", "/dryrun/x")
    assert reply.status == 200, reply
    assert "X-Dry" not in reply.json()["headers"]
    after = stack.dispatcher.metrics()
    labels = {"hook_name": "e2eDryRun", "step": "set_headers", "outcome": "modified"}
    assert metric(after, "tyk_dispatcher_step_runs_total", **labels) - \
        metric(before, "tyk_dispatcher_step_runs_total", **labels) == 1
    assert dispatch_count(after, "Pre", "e2eDryRun", "unchanged") - dispatch_count(before, "Pre", "e2eDryRun", "unchanged") == 1


@pytest.mark.parametrize("path,hook,status", [("/slow-open/x", "e2eSlowOpen", 200),
                                              ("/slow-closed/x", "e2eSlowClosed", 503)])
def test_deadline_answers_per_on_error(stack, path, hook, status):
    before = stack.dispatcher.metrics()
    started = time.monotonic()
    reply = stack.gateway.request("GET", path)
    elapsed = time.monotonic() - started
    assert reply.status == status, reply
    if status == 200:
        assert reply.json()["path"] == "/x"
    # Answered at the 200 ms deadline, not after the step's 3 s.
    assert elapsed < 2.0, f"answered after {elapsed:.2f}s"
    after = stack.dispatcher.metrics()
    labels = {"hook_name": hook, "reason": "deadline"}
    assert metric(after, "tyk_dispatcher_hook_failures_total", **labels) - \
        metric(before, "tyk_dispatcher_hook_failures_total", **labels) == 1
    assert dispatch_count(after, "Pre", hook, "failed") - dispatch_count(before, "Pre", hook, "failed") == 1
