"""Traces that join: the gateway and the dispatcher export to one OTLP receiver, and every
Dispatch span sits in the trace of the gateway's request, under the gateway's gRPC client span.
Tyk 5.14 puts only W3C `traceparent` in the gRPC metadata, also with `context_propagation: b3`.
"""

from __future__ import annotations

import pytest

import harness
from otlp_receiver import Receiver, Span

KEY = "traces-key-0001"


def apis(upstream: str) -> list[dict]:
    return [
        harness.classic_api("traced", "/traced/", upstream, pre=["tracePre"], response=["traceResponse"]),
        harness.classic_api("tracedauth", "/traced-auth/", upstream, auth_check="traceAuth",
                            event_handlers=[{"event": "AuthFailure", "name": "traceEvents"}]),
    ]


@pytest.fixture(scope="module", params=["tracecontext", "b3"])
def traced(request, tools, workroot):
    propagation = request.param
    workdir = workroot / f"traces-{propagation}"
    workdir.mkdir()
    receiver = Receiver()
    keys_file, secret = harness.write_api_keys(workdir, {KEY: {"name": "t", "apis": ["tracedauth"]}})
    s = harness.start_stack(
        tools, workdir, apis=apis,
        dispatcher_config=harness.api_key_hook("traceAuth", keys_file, secret),
        dispatcher_env={
            "TYK_DISPATCHER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}/v1/traces",
            "TYK_DISPATCHER_OTLP_PROTOCOL": "http/protobuf",
            "TYK_DISPATCHER_SPAN_BATCH_DELAY_MS": "100",
        },
        gateway_conf={"opentelemetry": {
            "enabled": True, "exporter": "http", "endpoint": f"127.0.0.1:{receiver.port}",
            "context_propagation": propagation, "sampling": {"type": "AlwaysOn"},
            "span_batch_config": {"batch_timeout": 1},
        }})
    yield s, receiver
    s.close()
    receiver.close()


def spans_of_trace(receiver: Receiver, trace_id: str, service: str, name: str, count: int) -> list[Span]:
    def found():
        spans = [s for s in receiver.snapshot() if s.trace_id == trace_id and s.service == service and s.name == name]
        return spans if len(spans) >= count else None
    return harness.wait_until(f"{count} {service} spans {name} in trace {trace_id}", found, 15)


def test_dispatch_spans_join_the_gateways_trace_under_its_client_spans(traced):
    stack, receiver = traced
    reply = stack.gateway.request("GET", "/traced/x")
    assert reply.status == 200, reply
    trace_id = reply.header("X-Tyk-Trace-Id")
    assert trace_id and len(trace_id) == 32, reply.headers

    ours = spans_of_trace(receiver, trace_id, "tyk-dispatcher", "coprocess.Dispatcher/Dispatch", 2)
    theirs = spans_of_trace(receiver, trace_id, "tyk-gateway", "coprocess.Dispatcher/Dispatch", 2)
    client_span_ids = {s.span_id for s in theirs if s.kind == Span.KIND_CLIENT}
    assert len(client_span_ids) == 2, theirs
    by_hook = {s.attributes["tyk.hook.type"]: s for s in ours}
    assert set(by_hook) == {"Pre", "Response"}, ours
    for hook_type, name in (("Pre", "tracePre"), ("Response", "traceResponse")):
        span = by_hook[hook_type]
        assert span.kind == Span.KIND_SERVER
        assert span.parent_span_id in client_span_ids, f"{hook_type}: parent {span.parent_span_id} not a gateway client span"
        assert span.attributes["tyk.hook.name"] == name
        assert span.attributes["tyk.api.id"] == "traced"
        assert span.attributes["rpc.grpc.status_code"] == 0
    assert by_hook["Pre"].parent_span_id != by_hook["Response"].parent_span_id


def test_event_spans_sit_in_traces_of_their_own(traced):
    stack, receiver = traced
    reply = stack.gateway.request("GET", "/traced-auth/x", headers={"Authorization": "not-a-key"})
    assert reply.status == 403, reply
    request_trace = reply.header("X-Tyk-Trace-Id")

    def event_span():
        spans = [s for s in receiver.snapshot()
                 if s.service == "tyk-dispatcher" and s.name == "coprocess.Dispatcher/DispatchEvent"]
        return spans[-1] if spans else None
    span = harness.wait_until("a DispatchEvent span", event_span, 15)
    assert span.attributes["tyk.event.type"] == "AuthFailure"
    assert span.trace_id != request_trace
    # Its parent, when there is one, is the gateway's client span of that event call: a root of its own trace.
    gateway_spans = [s for s in receiver.snapshot() if s.service == "tyk-gateway" and s.trace_id == span.trace_id]
    assert all(s.parent_span_id == "" for s in gateway_spans), gateway_spans
