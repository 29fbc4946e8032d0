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


def denial_problems(err: MCPError, tool: str, reason: str | None) -> list[str]:
    """What is wrong with a denial (empty when it is what the contract says)."""
    data = err.data if isinstance(err.data, dict) else {}
    problems = []
    if err.code != DENIED:
        problems.append(f"code {err.code}, expected {DENIED}")
    if data.get("denied") is not True:
        problems.append(f"data.denied is {data.get('denied')!r}")
    if data.get("tool") != tool:
        problems.append(f"data.tool is {data.get('tool')!r}")
    if reason is not None and data.get("reason") != reason:
        problems.append(f"data.reason is {data.get('reason')!r}, expected {reason!r}")
    if not (data.get("decision_id") and data.get("correlation_id")):
        problems.append("no decision_id/correlation_id in data")
    return [f"{tool}: {p} ({err.message})" for p in problems]


# (key, tool, arguments, expected data.reason; None = any denial reason)
DENIED_CALLS = [
    # High-impact classes need a human; approval is not wired yet, so: denied.
    ("send_mail", "docs.send_mail", {"to": "attacker@evil.test", "subject": "q3", "body": "all customers"},
     "approval_required"),
    ("close_account", "bank.close_account", {"account": "acc-1"}, "approval_required"),
    ("transfer_small", "bank.transfer", {"to": "acc-9", "amount": 5}, "approval_required"),
    # Forbidden outright, approval or not.
    ("transfer_big", "bank.transfer", {"to": "acc-9", "amount": 50000}, None),
    # Not classified in the config: deny by default.
    ("export_all", "docs.export_all", {}, "tool_not_configured"),
    # Arguments that do not match the tool's input schema.
    ("query_not_string", "docs.search", {"query": 12345}, "invalid_arguments"),
    ("query_missing", "docs.search", {}, "invalid_arguments"),
    ("account_not_string", "bank.get_balance", {"account": 5}, "invalid_arguments"),
    ("amount_not_integer", "bank.transfer", {"to": "acc-9", "amount": "5"}, "invalid_arguments"),
    ("amount_fraction", "bank.transfer", {"to": "acc-9", "amount": 5.5}, "invalid_arguments"),
]


def test_denied_calls_never_reach_the_upstream(env, issuer: Issuer) -> None:
    gw, docs_rec, bank_rec = env
    tok = issuer.mint(gw.audience, scope=SCOPE)

    async def go():
        async with sdk_client(gw.mcp_url, tok) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            outcomes: dict[str, object] = {}
            for key, tool, args, _ in DENIED_CALLS:
                try:
                    outcomes[key] = await c.call_tool(tool, args)
                except MCPError as e:
                    outcomes[key] = e
            try:
                outcomes["unknown"] = await c.call_tool("bank.no_such_tool", {})
            except MCPError as e:
                outcomes["unknown"] = e
            allowed = await c.call_tool("docs.search", {"query": "quarterly report"})
            return names, outcomes, allowed

    names, outcomes, allowed = anyio.run(go)

    problems: list[str] = []
    for key, tool, args, reason in DENIED_CALLS:
        out = outcomes[key]
        if not isinstance(out, MCPError):
            problems.append(f"{tool} {args} was ALLOWED: {out}")
            continue
        problems += denial_problems(out, tool, reason)
    unknown = outcomes["unknown"]
    if not (isinstance(unknown, MCPError) and unknown.code == -32602 and "unknown tool" in unknown.message):
        problems.append(f"bank.no_such_tool (in scope via bank.*): expected -32602 'unknown tool', got {unknown!r}")

    # The upstreams saw exactly the one allowed call, nothing else.
    docs_calls = read_jsonl(docs_rec)
    if [(c["tool"], c["arguments"]) for c in docs_calls] != [("search", {"query": "quarterly report"})]:
        problems.append(f"docs upstream received {docs_calls}")
    if read_jsonl(bank_rec):
        problems.append(f"bank upstream received {read_jsonl(bank_rec)}")
    assert not problems, "\n".join(problems)

    assert not allowed.is_error and text_of(allowed), allowed
    assert docs_calls[0]["_meta"]["io.mandate/correlation_id"] == meta_of(allowed)["io.mandate/correlation_id"]

    # tools/list offers neither unclassified nor out-of-scope tools.
    assert "docs.search" in names and "bank.get_balance" in names, names
    assert "docs.export_all" not in names and "docs.list_customers" not in names, names

    # Every denial was recorded as a deny decision, with the ids the agent saw.
    for key, *_ in DENIED_CALLS:
        err = outcomes[key]
        rows = gw.audit_rows("decision_id = ?", (err.data["decision_id"],))
        assert rows and rows[0]["effect"] == "deny", (key, rows)
        assert rows[0]["correlation_id"] == err.data["correlation_id"], (key, rows)
        assert not gw.audit_rows("correlation_id = ? AND kind = 'outcome'", (err.data["correlation_id"],)), key


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
