"""A real scrape: the binary with hook pipelines declared (obs_harness.hooks_config), known traffic
(grpcurl and raw gRPC), then GET /metrics parsed with the strict OpenMetrics parser and checked name
by name, label by label, value by value."""

from __future__ import annotations

import re
import time
import tomllib
from dataclasses import dataclass, field

import grpc
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from obs_contract import (ALTERNATIVES, AUTH_DECISIONS, FAILURE_REASONS, FAMILIES, LABEL_VALUES,
                          RELOAD_RESULTS, STEP_OUTCOMES, TOLERATED_EXTRA)
from obs_harness import (API_KEY, HOOK_NAMES, MALFORMED_OBJECT, REPO, WRONG_KEY, Dispatcher,
                         RawClient, auth_failure_event, encode_object, grpcurl, hooks_config)

# MyPre and MyResponse are not declared: passed through unchanged, counted as unknown hooks.
PRE = {"hookType": "Pre", "hookName": "MyPre", "spec": {"APIID": "api-1"}}
RESPONSE = {"hookType": "Response", "hookName": "MyResponse", "spec": {"APIID": "api-1"},
            "response": {"statusCode": 200}}
# The same Objects as wire bytes (what the size histograms measure).
PRE_BYTES = len(encode_object("Pre", "MyPre", {"APIID": "api-1"}))
RESPONSE_BYTES = len(encode_object("Response", "MyResponse", {"APIID": "api-1"}, status_code=200))
# Connections the traffic below opens: one per grpcurl run, one for the raw client.
CONNECTIONS = 3 + 1 + 2 + 1
UNKNOWN_CALLS = 3 + 1  # PRE and RESPONSE above

# Calls to the declared hooks, through the raw client: (hook type, hook name, encode_object
# keywords, the outcome the call must count as).
HOOK_CALLS = [
    ("Pre", "TeamPre", {}, "modified"),
    ("Pre", "TeamPre", {}, "modified"),
    ("Pre", "TeamPre", {"headers": {"X-Block": "1"}}, "responded"),
    ("Response", "StampResponse", {"status_code": 200}, "modified"),
    ("CustomKeyCheck", "KeyAuth", {"headers": {"Authorization": API_KEY}}, "modified"),
    ("CustomKeyCheck", "KeyAuth", {"headers": {"Authorization": WRONG_KEY}}, "responded"),
    ("CustomKeyCheck", "KeyAuth", {}, "responded"),
    # No `response` field: set_response_headers errors; fail_open sends the Object back.
    ("Response", "FragileResponse", {}, "failed"),
]


@dataclass
class Scrape:
    content_type: str
    text: str
    families: dict  # family name -> prometheus_client Metric
    log: str
    started: float
    # Raw hook calls by hook type: [calls, request bytes, reply bytes].
    raw_sizes: dict = field(default_factory=dict)
    replies: list = field(default_factory=list)  # (hook name, request bytes, reply bytes)

    def samples(self, name: str) -> list:
        return [s for f in self.families.values() for s in f.samples if s.name == name]

    def value(self, name: str, **labels) -> float:
        """The value of the one sample named `name` whose labels include `labels`."""
        found = [s for s in self.samples(name) if all(s.labels.get(k) == v for k, v in labels.items())]
        assert found, f"no sample {name}{labels} in the scrape:\n{self.text}"
        assert len(found) == 1, f"{len(found)} samples match {name}{labels}: {found}"
        return found[0].value

    def total(self, name: str, **labels) -> float:
        return sum(s.value for s in self.samples(name) if all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture(scope="module")
def scrape(tmp_path_factory) -> Scrape:
    started = time.time()
    work = tmp_path_factory.mktemp("scrape")
    d = Dispatcher(work, config=hooks_config(work)).start()
    raw_sizes: dict = {}
    replies = []
    try:
        for _ in range(3):
            assert grpcurl(d.grpc_addr, "coprocess.Dispatcher/Dispatch", PRE) == PRE
        grpcurl(d.grpc_addr, "coprocess.Dispatcher/Dispatch", RESPONSE)
        grpcurl(d.grpc_addr, "coprocess.Dispatcher/DispatchEvent", {"payload": auth_failure_event()})
        grpcurl(d.grpc_addr, "coprocess.Dispatcher/DispatchEvent", {"payload": "this is not JSON"})
        raw = RawClient(d.grpc_addr)
        try:
            for hook_type, hook_name, kwargs, _ in HOOK_CALLS:
                body = encode_object(hook_type, hook_name, {"APIID": "api-1"}, **kwargs)
                reply = raw.dispatch(body)
                replies.append((hook_name, body, reply))
                sizes = raw_sizes.setdefault(hook_type, [0, 0, 0])
                sizes[0] += 1
                sizes[1] += len(body)
                sizes[2] += len(reply)
            with pytest.raises(grpc.RpcError) as err:
                raw.dispatch(MALFORMED_OBJECT)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        finally:
            raw.close()
        # Let the server see the connections close.
        time.sleep(0.5)
        content_type, text = d.metrics()
    finally:
        d.stop()
    families = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in families, f"family {family.name} declared twice"
        families[family.name] = family
    return Scrape(content_type, text, families, d.log(), started, raw_sizes, replies)


def _expected_families(scrape: Scrape):
    """The contract's families, each resolved to the declaration the scrape uses."""
    for family in FAMILIES:
        for candidate in [family, *ALTERNATIVES.get(family.name, [])]:
            if candidate.name in scrape.families:
                yield candidate, scrape.families[candidate.name]
                break
        else:
            yield family, None


def test_content_type_is_openmetrics(scrape):
    assert scrape.content_type.startswith("application/openmetrics-text"), scrape.content_type
    assert scrape.text.endswith("# EOF\n")


def test_every_contract_metric_is_exported_with_its_type(scrape):
    problems = []
    for family, got in _expected_families(scrape):
        if got is None:
            problems.append(f"missing: {family.name} ({family.type}; series {', '.join(family.series())})")
        elif got.type != family.type:
            problems.append(f"{family.name}: type {got.type}, expected {family.type}")
    assert not problems, "\n".join(problems) + "\n--- scrape ---\n" + scrape.text


def test_no_metric_outside_the_contract(scrape):
    known = {f.name for f in FAMILIES} | {a.name for alts in ALTERNATIVES.values() for a in alts} | TOLERATED_EXTRA
    extra = sorted(set(scrape.families) - known)
    assert not extra, f"exported but not in the contract (add them to the dashboard and obs_contract.py): {extra}"


def test_label_sets(scrape):
    problems = []
    for family, got in _expected_families(scrape):
        if got is None:
            continue
        for s in got.samples:
            keys = set(s.labels)
            if s.name.endswith("_bucket") and family.type == "histogram":
                keys.discard("le")
            if s.name.endswith("_created"):
                continue
            if not (set(family.labels) <= keys <= set(family.labels | family.optional_labels)):
                problems.append(f"{s.name}{s.labels}: labels {sorted(keys)}, expected {sorted(family.labels)}"
                                + (f" (optional: {sorted(family.optional_labels)})" if family.optional_labels else ""))
    assert not problems, "\n".join(problems)


def test_label_values_are_from_the_contract(scrape):
    problems = []
    for family, got in _expected_families(scrape):
        allowed = LABEL_VALUES.get(family.name, {})
        for s in (got.samples if got is not None else []):
            for label, values in allowed.items():
                if s.labels.get(label) not in values:
                    problems.append(f"{s.name}{s.labels}: {label} not in {sorted(values)}")
    assert not problems, "\n".join(problems)
    # And the hook-type label of every family that has one.
    for f in scrape.families.values():
        for s in f.samples:
            assert "hook_type" not in s.labels or f.name in LABEL_VALUES, f"{s.name}: hook_type unchecked"


def test_dispatch_requests_by_hook_and_outcome(scrape):
    name = "tyk_dispatcher_dispatch_requests_total"
    assert scrape.value(name, hook_type="Pre", hook_name="MyPre", outcome="unchanged") == 3
    assert scrape.total(name, hook_type="Pre", hook_name="MyPre") == 3
    assert scrape.value(name, hook_type="Response", hook_name="MyResponse", outcome="unchanged") == 1
    assert scrape.total(name, hook_type="Response", hook_name="MyResponse") == 1
    known = [s for s in scrape.samples(name) if s.labels["hook_type"] != "Unknown"]
    assert sum(s.value for s in known) == 4 + len(HOOK_CALLS), known
    # The malformed call reached no hook; if it is counted here at all, it is one Unknown error.
    unknown = {s.labels["outcome"]: s.value for s in scrape.samples(name) if s.labels["hook_type"] == "Unknown"}
    assert sum(unknown.values()) <= 1 and unknown.get("error", 0) == sum(unknown.values()), unknown


def _histogram_checks(scrape: Scrape, base: str, labels: dict, count: int):
    buckets = sorted(((float(s.labels["le"]), s.value) for s in scrape.samples(base + "_bucket")
                      if all(s.labels.get(k) == v for k, v in labels.items())))
    assert buckets, f"no {base}_bucket{labels}"
    assert buckets[-1][0] == float("inf"), buckets
    values = [v for _, v in buckets]
    assert values == sorted(values), f"{base}{labels}: buckets not cumulative: {buckets}"
    assert buckets[-1][1] == count, f"{base}{labels}: +Inf bucket {buckets[-1][1]}, expected {count}"
    assert scrape.value(base + "_count", **labels) == count
    return buckets


def test_duration_histogram(scrape):
    base = "tyk_dispatcher_dispatch_duration_seconds"
    buckets = _histogram_checks(scrape, base, {"hook_type": "Pre", "hook_name": "MyPre"}, 3)
    _histogram_checks(scrape, base, {"hook_type": "Response", "hook_name": "MyResponse"}, 1)
    total = scrape.value(base + "_sum", hook_type="Pre", hook_name="MyPre")
    assert 0 < total < 3.0, f"3 pass-through calls took {total}s in all?"
    # Buckets fine enough to tell a fast plugin from a slow one, and to alert at 250ms.
    bounds = [b for b, _ in buckets if b != float("inf")]
    assert min(bounds) <= 0.001 and max(bounds) >= 1, bounds
    assert any(b <= 0.25 for b in bounds) and any(b >= 0.25 for b in bounds), bounds
    # Pass-through calls finish under 100ms.
    assert dict(buckets).get(0.1, dict(buckets).get(0.25)) == 3, buckets


def test_size_histograms(scrape):
    # grpcurl's Objects go back unchanged (replies as large as requests); the raw calls' sizes
    # were measured on the client.
    grpcurl_calls = {"Pre": (3, 3 * PRE_BYTES), "Response": (1, RESPONSE_BYTES)}
    for index, base in ((1, "tyk_dispatcher_request_bytes"), (2, "tyk_dispatcher_reply_bytes")):
        for hook_type in ("Pre", "Response", "CustomKeyCheck"):
            calls, size = grpcurl_calls.get(hook_type, (0, 0))
            raw = scrape.raw_sizes[hook_type]
            _histogram_checks(scrape, base, {"hook_type": hook_type}, calls + raw[0])
            assert scrape.value(base + "_sum", hook_type=hook_type) == size + raw[index], (base, hook_type)


def test_in_flight_is_back_to_zero(scrape):
    assert scrape.value("tyk_dispatcher_dispatch_in_flight") == 0


def test_events_by_type(scrape):
    assert scrape.value("tyk_dispatcher_events_total", event_type="AuthFailure") == 1
    assert scrape.value("tyk_dispatcher_events_total", event_type="other") == 1
    assert scrape.total("tyk_dispatcher_events_total") == 2
    if "tyk_dispatcher_events_unparsable" in scrape.families:
        assert scrape.value("tyk_dispatcher_events_unparsable_total") == 1


def test_rejections(scrape):
    assert scrape.value("tyk_dispatcher_rejected_calls_total", reason="malformed") == 1
    assert scrape.total("tyk_dispatcher_rejected_calls_total") == 1


def test_connections(scrape):
    assert scrape.value("tyk_dispatcher_connections_accepted_total") == CONNECTIONS
    assert scrape.value("tyk_dispatcher_connections") == 0


def test_reply_limit_counters_stay_zero(scrape):
    assert scrape.value("tyk_dispatcher_reply_body_strings_dropped_total") == 0
    assert scrape.value("tyk_dispatcher_replies_over_gateway_default_limit_total") == 0


def test_build_info(scrape):
    version = tomllib.loads((REPO / "Cargo.toml").read_text())["package"]["version"]
    samples = scrape.samples("tyk_dispatcher_build_info")
    assert len(samples) == 1, scrape.text
    assert samples[0].value == 1
    assert samples[0].labels.get("version") == version, samples[0]


def test_span_counters_without_tracing(scrape):
    # No exporter configured: the counters exist and nothing is dropped.
    assert scrape.value("tyk_dispatcher_spans_dropped_total") == 0
    assert scrape.value("tyk_dispatcher_spans_exported_total") >= 0


def test_process_metrics(scrape):
    assert scrape.value("process_resident_memory_bytes") > 1 << 20
    assert scrape.value("process_cpu_seconds_total") > 0
    assert scrape.value("process_open_fds") >= 5
    start = scrape.value("process_start_time_seconds")
    assert scrape.started - 60 < start <= time.time() + 1, (start, scrape.started)


def test_hook_name_and_api_id_in_logs(scrape):
    # The JSON logs of the same calls (format sanity, and no raw key from the event).
    assert '"hook_name":"MyPre"' in scrape.log
    assert "secret-key-value" not in scrape.log
    for line in scrape.log.splitlines():
        assert re.match(r"^\{.*\}$", line), f"not a JSON log line: {line}"


# --- hook pipelines -------------------------------------------------------------------------------

def _calls(hook_name: str, outcome: str | None = None) -> int:
    return sum(1 for _, name, _, out in HOOK_CALLS if name == hook_name and outcome in (None, out))


def test_pipeline_replies_are_what_the_steps_did(scrape):
    """The metrics below count what these replies show (a sanity check of the traffic itself)."""
    for (hook_type, hook_name, kwargs, outcome), (_, body, reply) in zip(HOOK_CALLS, scrape.replies):
        if outcome == "failed":  # fail_open
            assert reply == body, hook_name
        else:
            assert reply != body, hook_name
    team = [reply for name, _, reply in scrape.replies if name == "TeamPre"]
    assert all(b"X-Team" in r and b"payments" in r for r in team), team
    assert sum(b"blocked" in r for r in team) == 1, team
    assert any(b"X-Stamp" in r for name, _, r in scrape.replies if name == "StampResponse")


def test_dispatch_outcomes_of_the_pipelines(scrape):
    name = "tyk_dispatcher_dispatch_requests_total"
    for hook_type, hook_name, _, _ in HOOK_CALLS:
        for outcome in ("unchanged", "modified", "responded", "failed", "error"):
            got = scrape.value(name, hook_type=hook_type, hook_name=hook_name, outcome=outcome)
            assert got == _calls(hook_name, outcome), (hook_name, outcome, got)


def test_step_runs_by_hook_step_and_outcome(scrape):
    name = "tyk_dispatcher_step_runs_total"
    expected = {
        # Every TeamPre call sets its header; the respond step fires once (X-Block), and is
        # skipped otherwise (its `when` does not hold).
        ("TeamPre", "set_headers"): {"modified": _calls("TeamPre")},
        ("TeamPre", "respond"): {"skipped": _calls("TeamPre", "modified"),
                                 "responded": _calls("TeamPre", "responded")},
        ("StampResponse", "set_response_headers"): {"modified": 1},
        # An allowing auth step counts as modified, a denying one as responded.
        ("KeyAuth", "api_key_auth"): {"modified": 1, "responded": 2},
        ("FragileResponse", "set_response_headers"): {"failed": 1},
    }
    for (hook_name, step), counts in expected.items():
        for outcome in STEP_OUTCOMES:
            got = scrape.value(name, hook_name=hook_name, step=step, outcome=outcome)
            assert got == counts.get(outcome, 0), (hook_name, step, outcome, got)
    # Nothing else: one series per (hook, step, outcome) of the declared hooks that ran.
    series = {(s.labels["hook_name"], s.labels["step"]) for s in scrape.samples(name)}
    assert series == set(expected), series
    assert len(scrape.samples(name)) == len(expected) * len(STEP_OUTCOMES)


def test_auth_decisions(scrape):
    name = "tyk_dispatcher_auth_decisions_total"
    assert scrape.value(name, hook_name="KeyAuth", step="api_key_auth", decision="allowed") == 1
    # A wrong key (403) and no key (401).
    assert scrape.value(name, hook_name="KeyAuth", step="api_key_auth", decision="denied") == 2
    # The server keeps a zero series for both decisions of every step of a hook that ran; no
    # step but the auth step decides.
    for s in scrape.samples(name):
        assert s.labels["decision"] in AUTH_DECISIONS
        if s.labels["step"] != "api_key_auth":
            assert s.value == 0, s


def test_hook_failures_by_reason(scrape):
    name = "tyk_dispatcher_hook_failures_total"
    for hook_name in HOOK_NAMES:
        for reason in FAILURE_REASONS:
            want = 1 if (hook_name, reason) == ("FragileResponse", "error") else 0
            assert scrape.value(name, hook_name=hook_name, reason=reason) == want, (hook_name, reason)
    assert scrape.total(name) == 1
    assert "the Object has no response" in scrape.log


def test_unknown_hooks(scrape):
    # MyPre and MyResponse; the malformed call was refused before any hook lookup.
    assert scrape.value("tyk_dispatcher_unknown_hooks_total") == UNKNOWN_CALLS


def test_config_reloads_exist_from_the_start(scrape):
    for result in RELOAD_RESULTS:
        assert scrape.value("tyk_dispatcher_config_reloads_total", result=result) == 0


def test_no_api_key_in_the_log(scrape):
    assert API_KEY not in scrape.log
    assert WRONG_KEY not in scrape.log
