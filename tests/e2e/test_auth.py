"""Custom authentication through the real gateway: `api_key_auth` on Tyk Classic and Tyk OAS APIs
(grants, quotas, the gateway's `hash_keys` both ways), `jwt_auth`, and the events the gateway
fires for refused and expired credentials, with no secret left in Redis or in the logs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time

import pytest

import harness
from harness import metric

KEY = "auth-key-0001-right"
QUOTA_KEY = "auth-key-0002-quota"
WRONG_KEY = "auth-key-9999-wrong"
JWT_SECRET = "e2e-jwt-secret-that-is-at-least-32-bytes-long"
SECRETS = [KEY, QUOTA_KEY, WRONG_KEY]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims: dict, *, secret: str = JWT_SECRET, alg: str = "HS256", kid: str = "hs-1") -> str:
    header = b64url(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
    body = b64url(json.dumps(claims).encode())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signature = hmac.new(secret.encode(), f"{header}.{body}".encode(), digest).digest()
    return f"{header}.{body}.{b64url(signature)}"


def claims(exp_in: int) -> dict:
    now = int(time.time())
    return {"iss": "e2e-idp", "sub": "user-1", "aud": "e2e", "iat": now - 10, "exp": now + exp_in}


def events_config(name: str) -> list[dict]:
    return [{"event": "AuthFailure", "name": name}, {"event": "KeyExpired", "name": name}]


def apis(upstream: str) -> list[dict]:
    c = harness.classic_api
    return [
        c("authclassic", "/auth-classic/", upstream, auth_check="e2eKeyAuth", event_handlers=events_config("e2eEvents")),
        c("authother", "/auth-other/", upstream, auth_check="e2eKeyAuth"),
        c("authquota", "/auth-quota/", upstream, auth_check="e2eKeyAuth"),
        c("jwtapi", "/jwt/", upstream, auth_check="e2eJwt", event_handlers=events_config("e2eEvents")),
    ]


def oas_apis(upstream: str) -> list[dict]:
    auth = {"enabled": True, "custom": {"enabled": True, "config": {"enabled": True, "functionName": "e2eKeyAuth"},
                                        "header": {"enabled": False, "name": "Authorization"}}}
    middleware = {"global": {"pluginConfig": {"driver": "grpc"}}}
    return [harness.oas_api("authoas", "/auth-oas/", upstream, middleware, authentication=auth)]


@pytest.fixture(scope="module", params=[{"hash_keys": False, "log_objects": False},
                                        {"hash_keys": True, "log_objects": True}],
                ids=["hash_keys-off,log_objects-off", "hash_keys-on,log_objects-on"])
def stack(request, tools, workroot):
    options = request.param
    workdir = workroot / f"auth-{int(options['hash_keys'])}"
    workdir.mkdir()
    keys_file, secret = harness.write_api_keys(workdir, {
        KEY: {"name": "right", "apis": ["authclassic", "authoas"]},
        QUOTA_KEY: {"name": "quota", "apis": ["authquota"], "quota_max": 2, "quota_renewal_rate": 3600},
    })
    jwt_keys = workdir / "jwt-keys.toml"
    jwt_keys.write_text(f'[[keys]]\nkid = "hs-1"\nalg = "HS256"\nsecret = "{JWT_SECRET}"\n')
    config = harness.api_key_hook("e2eKeyAuth", keys_file, secret) + f"""
[[hooks]]
name = "e2eJwt"
type = "CustomKeyCheck"
[[hooks.steps]]
kind = "jwt_auth"
keys_file = "{jwt_keys}"
secret_file = "{secret}"
issuer = "e2e-idp"
audience = "e2e"
leeway_secs = 300
grants = {{ apis = ["jwtapi"] }}
"""
    s = harness.start_stack(
        tools, workdir, dispatcher_config=config,
        dispatcher_env={"TYK_DISPATCHER_LOG_OBJECTS": str(options["log_objects"]).lower()},
        gateway_conf={"hash_keys": options["hash_keys"], "enable_analytics": False},
        apis=apis, oas_apis=oas_apis)
    s.options = options
    yield s
    s.close()


@pytest.mark.parametrize("prefix", ["/auth-classic/", "/auth-oas/"])
def test_api_keys_right_wrong_missing_and_ungranted(stack, prefix):
    ok = stack.gateway.request("GET", f"{prefix}x", headers={"Authorization": KEY})
    assert ok.status == 200, ok
    assert ok.json()["path"] == "/x"
    wrong = stack.gateway.request("GET", f"{prefix}x", headers={"Authorization": WRONG_KEY})
    assert wrong.status == 403, wrong
    missing = stack.gateway.request("GET", f"{prefix}x")
    assert missing.status == 401, missing
    # A Bearer prefix is dropped.
    assert stack.gateway.request("GET", f"{prefix}x", headers={"Authorization": f"Bearer {KEY}"}).status == 200


def test_a_key_granted_only_to_other_apis_is_refused(stack):
    reply = stack.gateway.request("GET", "/auth-other/x", headers={"Authorization": KEY})
    assert reply.status == 403, reply


def test_the_gateway_enforces_the_keys_quota(stack):
    statuses = [stack.gateway.request("GET", "/auth-quota/x", headers={"Authorization": QUOTA_KEY}) for _ in range(3)]
    assert [r.status for r in statuses] == [200, 200, 403], statuses
    assert "Quota exceeded" in statuses[2].body.decode(), statuses[2]


def test_jwts_valid_expired_wrong_signature_wrong_algorithm(stack):
    def call(token: str) -> int:
        return stack.gateway.request("GET", "/jwt/x", headers={"Authorization": f"Bearer {token}"}).status

    assert call(jwt(claims(600))) == 200
    assert call(jwt(claims(-3600))) == 403, "expired past the 300 s leeway"
    assert call(jwt(claims(600), secret="another-secret-of-at-least-32-bytes!!")) == 403
    assert call(jwt(claims(600), alg="HS512")) == 403, "a key pinned to HS256 refuses HS512"
    assert stack.gateway.request("GET", "/jwt/x").status == 401


def test_refused_and_expired_credentials_fire_events_and_leave_no_secret(stack):
    before = stack.dispatcher.metrics()
    assert stack.gateway.request("GET", "/auth-classic/x", headers={"Authorization": WRONG_KEY}).status == 403
    # Inside the step's leeway, past `exp`: jwt_auth accepts it, the gateway's own expiry check answers.
    expired = stack.gateway.request("GET", "/jwt/x", headers={"Authorization": f"Bearer {jwt(claims(-30))}"})
    assert expired.status == 401, expired
    assert "Key has expired" in expired.body.decode(), expired

    def counted():
        text = stack.dispatcher.metrics()
        return all(metric(text, "tyk_dispatcher_events_total", event_type=t)
                   - metric(before, "tyk_dispatcher_events_total", event_type=t) >= 1
                   for t in ("AuthFailure", "KeyExpired"))
    harness.wait_until("AuthFailure and KeyExpired events", counted, 10)
    stack.dispatcher.log_lines('event_type="AuthFailure" handler_name="e2eEvents" api_id="authclassic"')
    stack.dispatcher.log_lines('event_type="KeyExpired" handler_name="e2eEvents" api_id="jwtapi"')
    if stack.options["log_objects"]:
        # Seed parity: the payload itself, with the key redacted and the request dump hashed.
        line = stack.dispatcher.log_lines("event payload", "AuthFailure")[-1]
        assert '"Key":"[REDACTED]"' in line, line
        assert re.search(r'"OriginatingRequest":\{"bytes":\d+,"sha256":"[0-9a-f]{64}"\}', line), line
        assert '"handler_name":"e2eEvents"' in line, line
    log = stack.dispatcher.log()
    if not stack.options["log_objects"]:
        payload_lines = [line for line in log.splitlines() if "event payload" in line and "AuthFailure" in line]
        assert not payload_lines, payload_lines
    assert_no_secret(log, "the dispatcher's log")
    dump = stack.redis.dump()
    assert b"apikey-" in dump, "no session in Redis: the leak check would prove nothing"
    assert_no_secret(dump, "Redis")


def assert_no_secret(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for secret in SECRETS:
        assert secret.encode() not in data, f"{where} holds the raw key {secret}"
        # In base64 at each of the three alignments (the event's OriginatingRequest is base64).
        for pad in range(3):
            encoded = base64.b64encode(b"x" * pad + secret.encode())[4:-4]
            assert encoded not in data, f"{where} holds the key {secret} in base64 ({encoded!r})"
