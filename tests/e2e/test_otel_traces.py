"""OpenTelemetry traces: the caller's W3C trace goes through the gateway to
the upstream, and the gateway's spans reach a real OTLP/HTTP receiver (a
small HTTP server here that decodes `ExportTraceServiceRequest` with the
official `opentelemetry-proto` package).

Threats closed: calls that cannot be traced across the gateway (the
caller's trace broken, its tracestate or baggage dropped); user data
leaking into a telemetry backend (no subject, no arguments in spans);
telemetry that runs, and costs, when it was not asked for.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from e2e_support import Gateway, Issuer, Launcher, RecordingServer

CORR = "io.mandate/correlation_id"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER_TP = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
BAGGAGE = "tenant=acme"
PHASES = {"authenticate", "decide", "record", "forward", "sanitise"}
SUBJECT = "alice@example.com"


class Receiver:
    """An OTLP/HTTP traces endpoint: decodes every export, keeps the spans."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.requests = 0
        self.services: set[str] = set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                ok = self.path == "/v1/traces" and self.headers.get("content-type") == "application/x-protobuf"
                if ok:
                    receiver.take(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 400)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def take(self, req: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            for rs in req.resource_spans:
                for kv in rs.resource.attributes:
                    if kv.key == "service.name":
                        self.services.add(kv.value.string_value)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        attrs = {}
                        for kv in s.attributes:
                            v = kv.value
                            attrs[kv.key] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
                        self.spans.append({
                            "name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(), "kind": s.kind, "attributes": attrs,
                        })

    def wait_trace(self, trace_id: str, names: set[str], timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = [s for s in self.spans if s["trace_id"] == trace_id]
            if names <= {s["name"] for s in spans} or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def gateway(launcher: Launcher, issuer: Issuer, rec_http: RecordingServer, receiver: Receiver) -> Gateway:
    telemetry = "\n".join([
        "[telemetry]",
        f'otlp_endpoint = "{receiver.endpoint}"',
        'service_name = "mandate-e2e"',
        "batch_delay_ms = 50",
        "",
    ])
    return launcher.gateway(issuer, {
        "rec": {"url": rec_http.url, "timeout_secs": 10, "default_class": "deny",
                "tools": {"lookup": "read", "note": "write"}},
    }, extra_toml=telemetry)


def call(gw: Gateway, token: str, name: str, args: dict[str, Any], meta: dict[str, str] | None = None,
         headers: dict[str, str] | None = None, status: int = 200) -> dict[str, Any]:
    sid = gw.initialize(token)
    params: dict[str, Any] = {"name": name, "arguments": args}
    if meta:
        params["_meta"] = meta
    reply = gw.post({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}, token, sid,
                    headers=headers)
    assert reply.status == status, reply.text
    return reply.response(7)


def corr_trace_id(corr: str) -> str:
    digits = "".join(c for c in corr.removeprefix("corr_") if c in "0123456789abcdef")[:32]
    return digits.ljust(32, "0")


def by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in spans}


def test_caller_trace_continues_through_gateway_spans_and_upstream(
    gateway: Gateway, issuer: Issuer, rec_http: RecordingServer, receiver: Receiver
) -> None:
    token = issuer.mint(gateway.audience, scope="rec.lookup")
    before = len(rec_http.calls())
    reply = call(gateway, token, "rec.lookup", {"key": "invoice-17"},
                 meta={"traceparent": CALLER_TP, "tracestate": TRACESTATE, "baggage": BAGGAGE})
    result = reply["result"]
    assert not result.get("isError"), result
    corr = result["_meta"][CORR]

    spans = receiver.wait_trace(CALLER_TRACE, {"mandate.tool_call", *PHASES})
    named = by_name(spans)
    assert {"mandate.tool_call", *PHASES} <= set(named), f"spans received: {sorted(named)}"
    assert "mandate-e2e" in receiver.services
    root = named["mandate.tool_call"]
    # The gateway's span is a child of the caller's span, in the caller's trace.
    assert root["parent"] == CALLER_SPAN, root
    for phase in PHASES:
        assert named[phase]["parent"] == root["span_id"], (phase, named[phase])
    a = root["attributes"]
    assert a["tool"] == "rec.lookup" and a["effect"] == "allow" and a["correlation_id"] == corr, a
    assert a["decision_id"].startswith("dec_") and a["trace_id"] == CALLER_TRACE, a
    assert named["forward"]["attributes"].get("upstream") == "rec", named["forward"]
    assert named["record"]["attributes"].get("decision_id") == a["decision_id"], named["record"]
    # Nothing about the subject or the arguments is in any span.
    for s in spans:
        text = repr(s["attributes"])
        assert SUBJECT not in text and "invoice-17" not in text, s

    # The upstream got the caller's trace with the forward span as parent,
    # and the caller's tracestate and baggage, in `_meta` and as headers.
    got = rec_http.calls()[before:]
    assert len(got) == 1, got
    up = got[0]
    meta = up["_meta"] or {}
    expected_tp = f"00-{CALLER_TRACE}-{named['forward']['span_id']}-01"
    assert meta.get("traceparent") == expected_tp, meta
    assert up["traceparent_header"] == expected_tp, up
    assert meta.get("tracestate") == TRACESTATE and up["tracestate_header"] == TRACESTATE, up
    assert meta.get("baggage") == BAGGAGE and up["baggage_header"] == BAGGAGE, up
    assert meta.get(CORR) == corr, meta
    # The correlation id stays on the audit record.
    rows = gateway.wait_audit("correlation_id = ? AND kind = 'decision'", (corr,))
    assert rows and rows[0]["decision_id"] == a["decision_id"], rows


def test_traceparent_from_http_headers_and_malformed_meta_is_ignored(
    gateway: Gateway, issuer: Issuer, rec_http: RecordingServer, receiver: Receiver
) -> None:
    token = issuer.mint(gateway.audience, scope="rec.lookup")
    header_trace = "0af7651916cd43dd8448eb211c80319c"
    before = len(rec_http.calls())
    reply = call(gateway, token, "rec.lookup", {"key": "k2"}, meta={"traceparent": "00-garbage"},
                 headers={"traceparent": f"00-{header_trace}-b7ad6b7169203331-01"})
    assert not reply["result"].get("isError"), reply
    named = by_name(receiver.wait_trace(header_trace, {"mandate.tool_call", "forward"}))
    assert named["mandate.tool_call"]["parent"] == "b7ad6b7169203331", named
    up = rec_http.calls()[before:][0]
    assert up["_meta"]["traceparent"].split("-")[1] == header_trace, up


def test_without_a_caller_trace_the_correlation_trace_is_the_root(
    gateway: Gateway, issuer: Issuer, rec_http: RecordingServer, receiver: Receiver
) -> None:
    token = issuer.mint(gateway.audience, scope="rec.lookup")
    before = len(rec_http.calls())
    reply = call(gateway, token, "rec.lookup", {"key": "k3"})
    corr = reply["result"]["_meta"][CORR]
    trace = corr_trace_id(corr)
    named = by_name(receiver.wait_trace(trace, {"mandate.tool_call", "forward"}))
    assert named["mandate.tool_call"]["parent"] == "", named
    up = rec_http.calls()[before:][0]
    assert up["_meta"]["traceparent"] == f"00-{trace}-{named['forward']['span_id']}-01", up
    assert "tracestate" not in up["_meta"] and "baggage" not in up["_meta"], up


def test_denied_call_is_traced_with_its_reason_and_is_not_forwarded(
    gateway: Gateway, issuer: Issuer, receiver: Receiver
) -> None:
    # `slow` is served by the upstream but in no class: denied by default.
    token = issuer.mint(gateway.audience, scope="rec.*")
    trace = "11111111111111111111111111111111"
    reply = call(gateway, token, "rec.slow", {"seconds": 0.01},
                 meta={"traceparent": f"00-{trace}-2222222222222222-01"})
    assert reply["error"]["data"]["denied"] is True, reply
    reason = reply["error"]["data"]["reason"]
    spans = receiver.wait_trace(trace, {"mandate.tool_call", "decide", "record"})
    named = by_name(spans)
    assert {"mandate.tool_call", "decide", "record"} <= set(named), sorted(named)
    a = named["mandate.tool_call"]["attributes"]
    assert a["effect"] == "deny" and a["reason"] == reason, (a, reason)
    assert a["decision_id"] == reply["error"]["data"]["decision_id"], a
    assert "forward" not in named and "sanitise" not in named, sorted(named)
    assert all(SUBJECT not in repr(s["attributes"]) for s in spans)


def test_telemetry_off_sends_nothing(launcher: Launcher, issuer: Issuer, rec_http: RecordingServer) -> None:
    idle = Receiver()
    try:
        # The per-signal variable is the exporter's own: with [telemetry]
        # unset it must not start one either.
        gw = launcher.gateway(issuer, {
            "rec": {"url": rec_http.url, "timeout_secs": 10, "default_class": "deny", "tools": {"lookup": "read"}},
        }, name="gateway-off", env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": idle.endpoint + "/v1/traces"})
        token = issuer.mint(gw.audience, scope="rec.lookup")
        before = len(rec_http.calls())
        reply = call(gw, token, "rec.lookup", {"key": "off"}, meta={"traceparent": CALLER_TP, "baggage": BAGGAGE})
        assert not reply["result"].get("isError"), reply
        # Off, the caller's trace goes on, with the correlation id's span id
        # as the gateway's hop, and its baggage.
        hop = corr_trace_id(reply["result"]["_meta"][CORR])[::-1][:16]
        up = rec_http.calls()[before:][0]
        assert up["_meta"]["traceparent"] == f"00-{CALLER_TRACE}-{hop}-01", up
        assert up["traceparent_header"] == up["_meta"]["traceparent"] and up["_meta"]["baggage"] == BAGGAGE, up
        time.sleep(0.5)
        gw.proc.stop()
        assert idle.requests == 0 and idle.spans == []
    finally:
        idle.close()
