"""The official Python MCP SDK, as an agent, through Mandate to real upstreams:
`@modelcontextprotocol/server-everything` (stdio) and a Python-SDK server
over Streamable HTTP that records what it receives.

Threats closed: a gateway that only works with its own client; tools listed
that the subject may not call; calls that cannot be traced end to end; the
agent's own token leaking to upstream servers (no token passthrough).
"""

from __future__ import annotations

import anyio
import pytest

from e2e_support import (
    Gateway,
    Issuer,
    Launcher,
    RecordingServer,
    everything_entry,
    meta_of,
    sdk_client,
    text_of,
    traceparent_ok,
)

CORR = "io.mandate/correlation_id"
DECISION = "io.mandate/decision_id"


@pytest.fixture(scope="module")
def gateway(launcher: Launcher, issuer: Issuer, rec_http: RecordingServer) -> Gateway:
    node, script, arg = everything_entry()
    return launcher.gateway(issuer, {
        "everything": {
            "command": node, "args": [script, arg], "timeout_secs": 20, "default_class": "deny",
            # get-env and the other tools stay unclassified: denied, and not listed.
            "tools": {"echo": "read", "get-sum": "read"},
        },
        "rec": {
            "url": rec_http.url, "timeout_secs": 10, "default_class": "deny",
            "tools": {"lookup": "read", "note": "write"},
        },
    })


def token(issuer: Issuer, gw: Gateway, scope: str = "everything.* rec.lookup rec.note", **kw) -> str:
    return issuer.mint(gw.audience, scope=scope, **kw)


def run(fn, *args):
    return anyio.run(fn, *args)


def test_sdk_client_lists_only_namespaced_tools_the_subject_may_call(gateway: Gateway, issuer: Issuer) -> None:
    async def go() -> list[str]:
        async with sdk_client(gateway.mcp_url, token(issuer, gateway, scope="everything.* rec.lookup")) as c:
            return sorted(t.name for t in (await c.list_tools()).tools)

    names = run(go)
    assert "everything.echo" in names and "everything.get-sum" in names and "rec.lookup" in names, names
    # Unclassified upstream tools are denied by default and so not offered.
    assert "everything.get-env" not in names, names
    # Out of the token's scope.
    assert "rec.note" not in names, names
    # Un-namespaced names never leak through.
    assert all(n.split(".", 1)[0] in ("everything", "rec") and "." in n for n in names), names


def test_sdk_client_calls_server_everything_and_gets_its_real_result(gateway: Gateway, issuer: Issuer) -> None:
    async def go():
        async with sdk_client(gateway.mcp_url, token(issuer, gateway)) as c:
            echo = await c.call_tool("everything.echo", {"message": "hello through mandate"})
            total = await c.call_tool("everything.get-sum", {"a": 2, "b": 40})
            return echo, total

    echo, total = run(go)
    assert not echo.is_error and text_of(echo) == "Echo: hello through mandate", echo
    assert not total.is_error and "42" in text_of(total), total
    for result in (echo, total):
        meta = meta_of(result)
        assert meta.get(CORR) and meta.get(DECISION), f"result _meta lacks Mandate ids: {meta}"
    # The allow decision and the upstream outcome are both in the audit log.
    corr = meta_of(echo)[CORR]
    rows = gateway.wait_audit("correlation_id = ? AND kind = 'outcome'", (corr,))
    decisions = gateway.audit_rows("correlation_id = ? AND kind = 'decision'", (corr,))
    assert decisions and decisions[0]["effect"] == "allow" and decisions[0]["tool"] == "everything.echo", decisions
    # The composite subject, all five token fields, is on the record.
    d = decisions[0]
    assert d["sub"] == "alice@example.com" and "agent-research" in d["act"], d
    assert d["task_id"] == "task-e2e" and d["build"] and d["build"].endswith(issuer.claims("x")["build"][7:]), d
    assert "everything.*" in d["scope"].split(), d
    assert d["session"], d
    assert decisions[0]["decision_id"] == meta_of(echo)[DECISION]
    assert rows and rows[0]["outcome"] == "ok", rows
    assert decisions[0]["seq"] < rows[0]["seq"], "the decision must be recorded before the outcome"


def test_correlation_id_reaches_the_http_upstream_with_traceparent(
    gateway: Gateway, issuer: Issuer, rec_http: RecordingServer
) -> None:
    tok = token(issuer, gateway)

    async def go():
        async with sdk_client(gateway.mcp_url, tok) as c:
            return await c.call_tool("rec.lookup", {"key": "invoice-17"})

    before = len(rec_http.calls())
    result = run(go)
    assert not result.is_error and text_of(result) == "value-of-invoice-17", result
    corr = meta_of(result).get(CORR)
    assert corr, f"no correlation id in result _meta: {result.meta}"

    received = rec_http.calls()[before:]
    assert len(received) == 1, received
    call = received[0]
    assert call["tool"] == "lookup" and call["arguments"] == {"key": "invoice-17"}, call
    meta = call["_meta"] or {}
    assert meta.get(CORR) == corr, f"upstream saw {meta}, agent got correlation id {corr}"
    assert traceparent_ok(meta.get("traceparent")), f"bad params._meta.traceparent: {meta}"
    assert traceparent_ok(call["traceparent_header"]), f"bad traceparent header: {call['traceparent_header']!r}"
    assert call["traceparent_header"].split("-")[1] == meta["traceparent"].split("-")[1], \
        f"header and _meta carry different trace ids: {call['traceparent_header']} vs {meta['traceparent']}"
    # No token passthrough: the agent's bearer token never reaches an upstream.
    assert tok not in (call["authorization_header"] or ""), "the agent's token was forwarded upstream"


def test_sdk_client_default_auto_mode_negotiates_with_the_gateway(gateway: Gateway, issuer: Issuer) -> None:
    """The SDK's default connect mode probes `server/discover` first and falls
    back to `initialize`; the gateway must answer the probe in a way that lets
    a stock client connect."""

    async def go():
        async with sdk_client(gateway.mcp_url, token(issuer, gateway), mode="auto") as c:
            return await c.call_tool("everything.echo", {"message": "auto"})

    result = run(go)
    assert text_of(result) == "Echo: auto", result


def test_es256_token_from_the_same_issuer_is_accepted(gateway: Gateway, issuer: Issuer) -> None:
    async def go():
        async with sdk_client(gateway.mcp_url, token(issuer, gateway, alg="ES256")) as c:
            return await c.call_tool("everything.echo", {"message": "es256"})

    assert text_of(run(go)) == "Echo: es256"
