"""The recipes of "Write a plugin without Rust" (examples/recipes) through the real gateway: the
same configs whose cases `tyk-dispatcher test` runs, with a real OPA server for the policy recipe.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import harness
from harness import metric

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "examples" / "recipes"

# Tokens signed with examples/recipes/jwt/keys.toml, valid until 2100 (the recipes' cases use
# the same ones).
ACME_GOLD = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJlY2lwZXMtaHMyNTYifQ."
             "eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlLmNvbS8iLCJleHAiOjQxMDI0NDQ4MDAsInN1YiI6ImFsaWNlIiwidGVuYW50IjoiYWNtZSIsInRpZXIiOiJnb2xkIn0."
             "OMMaWSIFucZxTe_Wif2w0acKG5_X0Ilc6HO0sgNs3ow")
GLOBEX_STANDARD = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJlY2lwZXMtaHMyNTYifQ."
                   "eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlLmNvbS8iLCJleHAiOjQxMDI0NDQ4MDAsInN1YiI6ImJvYiIsInRlbmFudCI6Imdsb2JleCIsInRpZXIiOiJzdGFuZGFyZCJ9."
                   "lTjToc9R9oJlo3g4C_sKLnHa6RDFj5quNS7j-o_nM74")
NO_CLAIMS = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJlY2lwZXMtaHMyNTYifQ."
             "eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlLmNvbS8iLCJleHAiOjQxMDI0NDQ4MDAsInN1YiI6ImNhcm9sIn0."
             "RdEJC6XBP7gs0v07xmmWWa6O4DtIeJucTMw1ZR1oGKs")


def recipe(name: str, opa_port: int) -> str:
    """A recipe's config, its paths made absolute and OPA's port the one started here."""
    text = (RECIPES / name / "dispatcher.toml").read_text()
    text = text.replace('"examples/recipes/', f'"{RECIPES}/')
    return text.replace("127.0.0.1:8181", f"127.0.0.1:{opa_port}")


def apis(upstream: str) -> list[dict]:
    c = harness.classic_api
    return [
        c("tenants-api", "/tenants/", upstream, auth_check="tenantAuth"),
        c("shop-api", "/shop/", upstream, auth_check="tierAuth"),
        c("policy-api", "/orders/", upstream, pre=["policyAuthz"]),
    ]


def opa_binary() -> str:
    binary = os.environ.get("OPA_BIN") or str(REPO / "target" / "test-tools" / "bin" / "opa")
    if not Path(binary).is_file():
        pytest.fail(f"no OPA server at {binary} (tests/tools/opa.sh builds it)", pytrace=False)
    return binary


@pytest.fixture(scope="module")
def stack(tools, workroot):
    workdir = workroot / "recipes"
    workdir.mkdir()
    port = harness.free_port()
    opa = harness.Proc("opa", [opa_binary(), "run", "--server", "--addr", f"127.0.0.1:{port}",
                               "--log-level", "error", "--skip-version-check",
                               "--ignore", "*_test.rego", str(RECIPES / "opa")], workdir / "opa.log")
    harness.wait_until("OPA answers /health",
                       lambda: harness.get_text(f"http://127.0.0.1:{port}/health", timeout=1)[0] == 200, 20)
    config = "\n".join(recipe(name, port) for name in ["tenant", "claim-routing", "opa"])
    s = harness.start_stack(tools, workdir, dispatcher_config=config, apis=apis)
    s.extra.append(opa)
    yield s
    s.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tenant_check_lets_a_matching_tenant_through(stack):
    reply = stack.gateway.request("GET", "/tenants/invoices", headers={**bearer(ACME_GOLD), "X-Tenant-Id": "acme"})
    assert reply.status == 200, reply
    assert reply.json()["path"] == "/invoices"


@pytest.mark.parametrize("token, tenant", [(ACME_GOLD, "globex"), (GLOBEX_STANDARD, "acme"), (NO_CLAIMS, "acme"),
                                           (ACME_GOLD, None)])
def test_tenant_check_refuses_any_other(stack, token, tenant):
    headers = bearer(token) if tenant is None else {**bearer(token), "X-Tenant-Id": tenant}
    reply = stack.gateway.request("GET", "/tenants/invoices", headers=headers)
    assert reply.status == 403, reply
    assert reply.json() == {"error": "tenant mismatch"}


def test_claim_routing_tags_every_caller_and_reroutes_gold_ones(stack):
    gold = stack.gateway.request("GET", "/shop/orders/42", headers=bearer(ACME_GOLD))
    assert gold.status == 200, gold
    assert gold.json()["path"] == "/orders/priority/42"
    assert gold.json()["headers"]["X-Tier"] == ["gold"]
    standard = stack.gateway.request("GET", "/shop/orders/42", headers=bearer(GLOBEX_STANDARD))
    assert standard.status == 200, standard
    assert standard.json()["path"] == "/orders/42"
    assert standard.json()["headers"]["X-Tier"] == ["standard"]
    untiered = stack.gateway.request("GET", "/shop/orders/42", headers=bearer(NO_CLAIMS))
    assert untiered.json()["headers"]["X-Tier"] == ["standard"]


def test_opa_policy_decides_on_path_method_and_user(stack):
    read = stack.gateway.request("GET", "/orders/42", headers={"X-User": "bob"})
    assert read.status == 200, read
    assert read.json()["headers"]["X-Policy-User"] == ["bob"], "the policy's header reached the upstream"

    write = stack.gateway.request("DELETE", "/orders/42", headers={"X-User": "bob"})
    assert write.status == 403, write
    assert write.json() == {"error": "forbidden by policy"}

    admin = stack.gateway.request("DELETE", "/orders/42", headers={"X-User": "alice"})
    assert admin.status == 200, admin
    assert admin.json()["method"] == "DELETE"

    anonymous = stack.gateway.request("GET", "/orders/42")
    assert anonymous.status == 403, anonymous

    text = stack.dispatcher.metrics()
    decisions = dict(hook_name="policyAuthz", step="opa_authorize")
    assert metric(text, "tyk_dispatcher_auth_decisions_total", decision="allowed", **decisions) == 2
    assert metric(text, "tyk_dispatcher_auth_decisions_total", decision="denied", **decisions) == 2
    assert metric(text, "tyk_dispatcher_step_duration_seconds_count", **decisions) == 4


def test_a_cached_decision_answers_without_opa_and_an_uncached_one_fails_closed(stack):
    before = stack.gateway.request("GET", "/orders/7", headers={"X-User": "carol"})
    assert before.status == 200, before
    opa = stack.extra[0]
    opa.stop()
    cached = stack.gateway.request("GET", "/orders/7", headers={"X-User": "carol"})
    assert cached.status == 200, cached
    assert cached.json()["headers"]["X-Policy-User"] == ["carol"]
    uncached = stack.gateway.request("GET", "/orders/8", headers={"X-User": "carol"})
    assert uncached.status == 503, uncached
    assert uncached.json() == {"error": "plugin unavailable"}
