"""The seed tutorial's APIs through the real gateway: its Tyk Classic API (a Pre and a Response
plugin) and its Tyk OAS API (custom authentication, a pre and a response plugin), as printed in
the tutorial and in the forms the gateway really reads.
"""

from __future__ import annotations

import json

import pytest

import harness
from harness import dispatch_count

KEY = "seed-key-0001"
OTHER_KEY = "seed-key-0002"

# The tutorial's Tyk OAS `middleware` block as printed: `cors`, `prePlugin` and `responsePlugin`
# sit beside `global`, not inside it.
SEED_OAS_MIDDLEWARE_AS_PRINTED = {
    "global": {"pluginConfig": {"driver": "grpc"}},
    "cors": {"enabled": False, "maxAge": 24, "allowedHeaders": ["Accept", "Authorization"],
             "allowedOrigins": ["*"], "allowedMethods": ["GET", "HEAD", "POST"]},
    "prePlugin": {"plugins": [{"enabled": True, "functionName": "MyPreRequestPlugin", "path": ""}]},
    "responsePlugin": {"plugins": [{"enabled": True, "functionName": "MyResponsePlugin", "path": "",
                                    "requireSession": True}]},
}
SEED_AUTH = {"enabled": True, "custom": {"enabled": True, "header": {"enabled": False, "name": "Authorization"}}}
NAMED_AUTH = {"enabled": True, "custom": {"enabled": True, "config": {"enabled": True, "functionName": "MyAuthPlugin"},
                                          "header": {"enabled": False, "name": "Authorization"}}}


def inside_global(singular: bool) -> dict:
    pre = [{"enabled": True, "functionName": "MyPreRequestPlugin", "path": ""}]
    response = [{"enabled": True, "functionName": "MyResponsePlugin", "path": "", "requireSession": True}]
    plugins = ({"prePlugin": {"plugins": pre}, "responsePlugin": {"plugins": response}} if singular
               else {"prePlugins": pre, "responsePlugins": response})
    return {"global": {"pluginConfig": {"driver": "grpc"}, **plugins}}


@pytest.fixture(scope="module")
def stack(tools, workroot):
    workdir = workroot / "seed"
    workdir.mkdir()
    apis = ["seed-oas-printed", "seed-oas-singular", "seed-oas-plural"]
    keys_file, secret = harness.write_api_keys(workdir, {KEY: {"name": "seed", "apis": apis}})
    config = harness.api_key_hook("", keys_file, secret) + harness.api_key_hook("MyAuthPlugin", keys_file, secret)
    s = harness.start_stack(
        tools, workdir, dispatcher_config=config,
        apis=lambda up: [harness.classic_api("seed-classic", "/seed-classic/", up, pre=["MyPreRequestPlugin"],
                                             response=["MyResponsePlugin"])],
        oas_apis=lambda up: [
            harness.oas_api("seed-oas-printed", "/custom_auth/", up, SEED_OAS_MIDDLEWARE_AS_PRINTED,
                            authentication=SEED_AUTH),
            harness.oas_api("seed-oas-singular", "/oas-singular/", up, inside_global(True),
                            authentication=NAMED_AUTH),
            harness.oas_api("seed-oas-plural", "/oas-plural/", up, inside_global(False), authentication=NAMED_AUTH),
        ])
    yield s
    s.close()


def test_classic_seed_api_calls_pre_and_response_and_proxies_unchanged(stack):
    before = stack.dispatcher.metrics()
    reply = stack.gateway.request("POST", "/seed-classic/anything?colour=blue&colour=red",
                                  headers=[("X-Seed", "one"), ("Content-Type", "text/plain")], body=b"hello seed")
    assert reply.status == 200, reply
    seen = reply.json()
    assert seen["method"] == "POST"
    assert seen["path"] == "/anything"
    assert seen["query"] == "colour=blue&colour=red"
    assert seen["headers"]["X-Seed"] == ["one"]
    assert seen["body_bytes"] == 10 and seen["body_sha256"] == harness.sha256(b"hello seed")
    assert reply.header("X-Upstream") == "e2e"
    after = stack.dispatcher.metrics()
    for hook_type, name in (("Pre", "MyPreRequestPlugin"), ("Response", "MyResponsePlugin")):
        delta = dispatch_count(after, hook_type, name, "unchanged") - dispatch_count(before, hook_type, name, "unchanged")
        assert delta == 1, f"{hook_type} {name}: {delta} calls"
    stack.dispatcher.log_lines('hook_type="Pre" hook_name="MyPreRequestPlugin" api_id="seed-classic"')
    stack.dispatcher.log_lines('hook_type="Response" hook_name="MyResponsePlugin" api_id="seed-classic"')


def test_oas_seed_block_as_printed_drops_its_plugins_and_sends_an_unnamed_auth_hook(stack):
    """The gateway ignores `prePlugin`/`responsePlugin` outside `middleware.global` (it stores the
    API without them), and a custom-auth plugin without `config.functionName` arrives as a
    CustomKeyCheck call whose hook_name is the empty string."""
    stored = stack.gateway.admin("GET", "/tyk/apis/oas/seed-oas-printed").json()
    middleware = stored["x-tyk-api-gateway"]["middleware"]
    assert middleware == {"global": {"pluginConfig": {"driver": "grpc"}}}, middleware

    before = stack.dispatcher.metrics()
    assert stack.gateway.request("GET", "/custom_auth/pet/findByStatus", headers={"Authorization": KEY}).status == 200
    assert stack.gateway.request("GET", "/custom_auth/pet/findByStatus", headers={"Authorization": OTHER_KEY}).status == 403
    assert stack.gateway.request("GET", "/custom_auth/pet/findByStatus").status == 401
    after = stack.dispatcher.metrics()
    assert dispatch_count(after, "CustomKeyCheck", "") - dispatch_count(before, "CustomKeyCheck", "") == 3
    for hook_type, name in (("Pre", "MyPreRequestPlugin"), ("Response", "MyResponsePlugin")):
        assert dispatch_count(after, hook_type, name) == dispatch_count(before, hook_type, name), \
            f"the gateway called {hook_type} {name} for an API whose plugins it dropped"


@pytest.mark.parametrize("api,path", [("seed-oas-singular", "/oas-singular/"), ("seed-oas-plural", "/oas-plural/")])
def test_oas_seed_plugins_inside_global_call_pre_auth_and_response(stack, api, path):
    """`prePlugin`/`responsePlugin` (the tutorial's form) inside `global` are read, and stored as
    `prePlugins`/`responsePlugins`; the named auth plugin arrives with its functionName."""
    stored = stack.gateway.admin("GET", f"/tyk/apis/oas/{api}").json()
    global_ = stored["x-tyk-api-gateway"]["middleware"]["global"]
    assert [p["functionName"] for p in global_["prePlugins"]] == ["MyPreRequestPlugin"]
    assert [p["functionName"] for p in global_["responsePlugins"]] == ["MyResponsePlugin"]
    assert "prePlugin" not in global_ and "responsePlugin" not in global_

    before = stack.dispatcher.metrics()
    reply = stack.gateway.request("GET", f"{path}pet/findByStatus?status=available", headers={"Authorization": KEY})
    assert reply.status == 200, reply
    assert reply.json()["path"] == "/pet/findByStatus"
    denied = stack.gateway.request("GET", f"{path}pet/findByStatus", headers={"Authorization": OTHER_KEY})
    assert denied.status == 403, denied
    after = stack.dispatcher.metrics()
    delta = {(t, n): dispatch_count(after, t, n) - dispatch_count(before, t, n)
             for t, n in (("Pre", "MyPreRequestPlugin"), ("CustomKeyCheck", "MyAuthPlugin"),
                          ("Response", "MyResponsePlugin"))}
    # Pre runs for both requests, auth for both, Response only for the one that reached the upstream.
    assert delta == {("Pre", "MyPreRequestPlugin"): 2, ("CustomKeyCheck", "MyAuthPlugin"): 2,
                     ("Response", "MyResponsePlugin"): 1}, delta
    assert json.dumps(stored).count("MyAuthPlugin") == 1
