"""Malformed input gets a proper JSON-RPC or HTTP error, never a crash, a
5xx or a forwarded call, and it does not disturb other sessions."""

from __future__ import annotations

import json
import threading

import anyio
import httpx
import pytest

from e2e_support import (
    MCP_ACCEPT,
    Gateway,
    Issuer,
    Launcher,
    RpcReply,
    everything_entry,
    initialize_request,
    mandate_bin,
    read_jsonl,
    sdk_client,
    text_of,
)

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def env(launcher: Launcher, issuer: Issuer):
    rec = launcher.root / "docs-calls.jsonl"
    node, script, arg = everything_entry()
    gw = launcher.gateway(issuer, {
        "everything": {"command": node, "args": [script, arg], "timeout_secs": 20, "tools": {"echo": "read"}},
        "docs": {
            "command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace", "--record", str(rec)],
            "timeout_secs": 10, "tools": {"search": "read"},
        },
    }, max_body_bytes=MAX_BODY)
    return gw, rec


def token(issuer: Issuer, gw: Gateway) -> str:
    return issuer.mint(gw.audience, scope="everything.echo docs.search")


def rejection_problem(reply: RpcReply, label: str, codes: tuple[int, ...] = (-32700, -32600)) -> str | None:
    """None if `reply` is HTTP 400 Bad Request (as MCP Streamable HTTP asks;
    any body must be a JSON-RPC error) or a JSON-RPC error with one of
    `codes`; otherwise what is wrong: a 5xx, a misleading status, a result."""
    head = f"{label}: HTTP {reply.status} {reply.text[:160]!r}"
    if any("result" in m for m in reply.messages):
        return f"{head}: got a result"
    if reply.status not in (200, 400):
        return f"{head}: expected 400 Bad Request or a JSON-RPC error"
    errors = [m for m in reply.messages if "error" in m]
    if reply.status == 200:
        if not errors:
            return f"{head}: no JSON-RPC error"
        if errors[0]["error"].get("code") not in codes:
            return f"{head}: JSON-RPC error code {errors[0]['error'].get('code')}, expected one of {codes}"
    elif reply.messages and not (errors and errors[0].get("jsonrpc") == "2.0"):
        return f"{head}: body is not a JSON-RPC error"
    return None


def assert_rejected_all(cases: list[tuple[str, RpcReply]], codes: tuple[int, ...] = (-32700, -32600)) -> None:
    problems = [p for label, reply in cases if (p := rejection_problem(reply, label, codes))]
    assert not problems, f"{len(problems)} of {len(cases)} malformed requests mishandled:\n" + "\n".join(problems)


def bad_requests(gw: Gateway, tok: str, session: str) -> list[tuple[str, RpcReply]]:
    out = []
    for s in (None, session):
        where = "with session" if s else "no session"
        out.append((f"broken JSON ({where})", gw.post(None, tok, s, content=b'{"jsonrpc": "2.0", "id": 1, "method": ')))
        out.append((f"not JSON at all ({where})", gw.post(None, tok, s, content=b"\x00\xff\xfe garbage")))
        for body in [
            {"jsonrpc": "1.0", "id": 1, "method": "tools/list"},
            {"id": 1, "method": "tools/list"},
            {"jsonrpc": "2.0", "id": 1, "method": 42},
            {"jsonrpc": "2.0", "id": {"nested": True}, "method": "tools/list"},
            {"jsonrpc": "2.0", "id": 1},
            [],
            42,
            "tools/list",
            None,
        ]:
            out.append((f"invalid envelope {json.dumps(body)} ({where})", gw.post(body, tok, s)))
    return out


def test_malformed_json_and_invalid_envelopes_get_errors(env, issuer: Issuer) -> None:
    gw, rec = env
    tok = token(issuer, gw)
    session = gw.initialize(tok)
    before = len(read_jsonl(rec))
    assert_rejected_all(bad_requests(gw, tok, session))
    assert len(read_jsonl(rec)) == before
    assert gw.proc.alive(), gw.proc.stderr()[-2000:]


def test_wrong_content_type_is_a_4xx(env, issuer: Issuer) -> None:
    gw, _ = env
    tok = token(issuer, gw)
    reply = gw.post(initialize_request(), tok, headers={"Content-Type": "text/plain"})
    assert 400 <= reply.status < 500, f"HTTP {reply.status} {reply.text[:200]}"


def test_unknown_method_gets_method_not_found(env, issuer: Issuer) -> None:
    gw, _ = env
    tok = token(issuer, gw)
    session = gw.initialize(tok)
    reply = gw.post({"jsonrpc": "2.0", "id": 9, "method": "tools/explode", "params": {}}, tok, session)
    assert reply.status < 500, reply.text
    assert reply.error(9)["code"] == -32601, reply.text


def test_tools_call_with_malformed_params_is_rejected(env, issuer: Issuer) -> None:
    gw, rec = env
    tok = token(issuer, gw)
    session = gw.initialize(tok)
    before = len(read_jsonl(rec))
    cases = []
    for rid, params in enumerate([
        "docs.search",
        {"arguments": {"query": "x"}},
        {"name": 7, "arguments": {}},
        {"name": "docs.search", "arguments": "query=x"},
        {"name": "docs.search", "arguments": [1, 2]},
    ], start=20):
        reply = gw.post({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}, tok, session)
        cases.append((f"tools/call params {json.dumps(params)}", reply))
    # -32601 (method not found) would be wrong: tools/call exists, its params are invalid.
    assert_rejected_all(cases, codes=(-32602, -32600))
    assert len(read_jsonl(rec)) == before, read_jsonl(rec)


def test_oversized_body_is_413(env, issuer: Issuer) -> None:
    gw, rec = env
    tok = token(issuer, gw)
    session = gw.initialize(tok)
    before = len(read_jsonl(rec))
    big = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
           "params": {"name": "docs.search", "arguments": {"query": "A" * (MAX_BODY + 10)}}}
    for s in (None, session):
        reply = gw.post(big, tok, s)
        assert reply.status == 413, f"HTTP {reply.status} {reply.text[:300]}"
    # Without Content-Length (chunked), the limit still holds.
    payload = json.dumps(big).encode()

    def chunks():
        for i in range(0, len(payload), 8192):
            yield payload[i:i + 8192]

    r = httpx.post(gw.mcp_url, content=chunks(), timeout=30, headers={
        "Authorization": f"Bearer {tok}", "Mcp-Session-Id": session, "Accept": MCP_ACCEPT,
        "Content-Type": "application/json"})
    assert r.status_code == 413, f"chunked: HTTP {r.status_code} {r.text[:300]}"
    # Just under the limit is fine (the upstream answers).
    ok = {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
          "params": {"name": "docs.search", "arguments": {"query": "B" * (MAX_BODY - 500)}}}
    reply = gw.post(ok, tok, session)
    assert reply.status == 200 and "result" in reply.response(4), reply.text[:300]
    assert len(read_jsonl(rec)) == before + 1


def test_bad_requests_do_not_disturb_a_concurrent_session(env, issuer: Issuer) -> None:
    gw, _ = env
    attacker_tok = issuer.mint(gw.audience, scope="everything.echo", sub="mallory@example.com")
    victim_tok = token(issuer, gw)
    attacker_session = gw.initialize(attacker_tok)
    stop = threading.Event()
    failures: list[str] = []
    sent = [0]

    def hammer() -> None:
        big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * (MAX_BODY * 2)}})
        while not stop.is_set():
            try:
                for label, reply in bad_requests(gw, attacker_tok, attacker_session):
                    if reply.status >= 500:
                        failures.append(f"{label}: HTTP {reply.status}")
                r = gw.post(None, attacker_tok, attacker_session, content=big.encode())
                if r.status != 413:
                    failures.append(f"oversized: HTTP {r.status}")
                sent[0] += 1
            except Exception as e:  # noqa: BLE001 - any transport failure is a finding
                failures.append(f"{type(e).__name__}: {e}")
                return

    async def victim() -> list[str]:
        texts = []
        async with sdk_client(gw.mcp_url, victim_tok) as c:
            for i in range(15):
                texts.append(text_of(await c.call_tool("everything.echo", {"message": f"m{i}"})))
        return texts

    t = threading.Thread(target=hammer, daemon=True)
    t.start()
    try:
        texts = anyio.run(victim)
    finally:
        stop.set()
        t.join(timeout=60)
    assert texts == [f"Echo: m{i}" for i in range(15)], texts
    assert sent[0] >= 1, "the hammering thread sent nothing"
    assert not failures, failures[:5]
    assert gw.proc.alive()
    assert gw.get("/healthz").status_code == 200
    # And a fresh session still works afterwards.
    reply = gw.post(initialize_request(), victim_tok)
    assert reply.status == 200, reply.text
