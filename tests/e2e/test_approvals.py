"""Human approval of high-impact calls, end to end (API and CLI; the web
page has its own browser tests).

A `bank.transfer` (class `financial`) is held: the agent's `tools/call`
stays open while an approver decides. The upstream (the demo bank with
`--record`) proves what reached it.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from e2e_support import Gateway, Issuer, Launcher, RpcReply, mandate_bin, read_jsonl, sdk_client, text_of

OPERATORS = """
[[operators]]
sub = "carol@example.com"
roles = ["approver"]

[[operators]]
sub = "finn@example.com"
roles = ["approver"]
approve_classes = ["outbound"]

[[operators]]
sub = "alice@example.com"
roles = ["approver"]
"""


class Webhook:
    """A local HTTP endpoint recording the JSON it receives."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def webhook() -> Webhook:
    return Webhook()


def bank(rec: Path) -> dict[str, Any]:
    return {"command": str(mandate_bin()),
            "args": ["demo-server", "--profile", "bank", "--record", str(rec)],
            "timeout_secs": 10,
            "tools": {"get_balance": "read", "transfer": "financial", "close_account": "irreversible"}}


@pytest.fixture(scope="module")
def env(launcher: Launcher, issuer: Issuer, webhook: Webhook) -> tuple[Gateway, Path]:
    rec = launcher.root / "bank-calls.jsonl"
    gw = launcher.gateway(issuer, {"bank": bank(rec)},
                          extra_toml=OPERATORS + f'\n[approvals]\ntimeout_secs = 60\nwebhook_url = "{webhook.url}"\n')
    return gw, rec


class HeldCall:
    """An agent's tools/call running in a thread (it blocks while held)."""

    def __init__(self, gw: Gateway, issuer: Issuer, args: dict[str, Any], **claims: Any) -> None:
        self.sid = "held-" + uuid.uuid4().hex[:8]
        self.token = issuer.mint(gw.audience, scope="bank.*", sid=self.sid, **claims)
        self.session = gw.initialize(self.token)
        self.reply: RpcReply | None = None
        self.failure: Exception | None = None
        self.gw = gw
        self.args = args
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.reply = self.gw.call_tool(self.token, self.session, "bank.transfer", self.args)
        except httpx.HTTPError as e:  # the gateway went away mid-call
            self.failure = e

    def result(self, timeout: float = 30) -> dict[str, Any]:
        self.thread.join(timeout)
        assert self.reply is not None, "the held call did not finish"
        return self.reply.response()


def pending_for(gw: Gateway, op: str, sid: str, timeout: float = 10) -> dict[str, Any]:
    """The session's pending request, once its call is held (the request is
    durable a moment before the holder starts waiting on it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = gw.api("GET", "/api/approvals?status=pending", op)
        assert r.status_code == 200, r.text
        mine = [a for a in r.json()["approvals"] if a["session"] == f"sid:{sid}"]
        if mine and (mine[0]["waiting"] or time.monotonic() > deadline - timeout / 2):
            return mine[0]
        time.sleep(0.1)
    raise AssertionError(f"no pending approval for session {sid}")


def transfers(rec: Path, memo: str) -> list[dict[str, Any]]:
    return [c for c in read_jsonl(rec) if c["tool"] == "transfer" and c["arguments"].get("memo") == memo]


def op_token(gw: Gateway, issuer: Issuer, who: str = "carol") -> str:
    return issuer.operator_token(gw.api_audience, f"{who}@example.com")


def test_approved_call_completes_with_the_upstream_result(env, issuer: Issuer, webhook: Webhook) -> None:
    gw, rec = env
    memo = "approve-" + uuid.uuid4().hex[:6]
    held = HeldCall(gw, issuer, {"amount": 250, "to": "acc-bob", "memo": memo})
    op = op_token(gw, issuer)
    a = pending_for(gw, op, held.sid)
    # The request carries what a person needs to decide.
    assert a["tool"] == "bank.transfer" and a["class"] == "financial" and a["args"]["amount"] == 250
    assert a["sub"] == "alice@example.com" and a["act"] == ["agent-research"] and a["task_id"] == "task-e2e"
    assert a["reasons"] and a["waiting"] is True and a["url"].endswith(f"/approvals#{a['id']}")
    time.sleep(0.5)
    assert not transfers(rec, memo), "the upstream saw a held call"
    # The webhook heard about it.
    assert any(w["id"] == a["id"] and w["type"] == "approval.requested" for w in webhook.received), webhook.received

    r = gw.operator_cli(op, "approvals", "approve", a["id"], "--comment", "invoice 42 checked")
    assert r.returncode == 0, r.stderr
    body = held.result()
    assert "result" in body, body
    assert "transferred 250" in json.dumps(body["result"]), body
    assert len(transfers(rec, memo)) == 1

    # The trail: held decision, the approver's decision, the released decision, the outcome.
    corr = a["correlation_id"]
    rows = gw.wait_audit("correlation_id = ? AND kind = 'outcome' AND tool = 'bank.transfer'", [corr])
    assert rows and rows[0]["outcome"] == "ok", rows
    decisions = gw.audit_rows("correlation_id = ? AND kind = 'decision'", [corr])
    assert len(decisions) == 2 and "held for human approval" in (decisions[0]["detail"] or ""), decisions
    assert "approved by carol@example.com" in decisions[1]["reasons"], decisions[1]
    control = gw.audit_rows("kind = 'control' AND tool = 'approval/approve' AND detail LIKE ?", [f"%{a['id']}%"])
    assert control and control[0]["sub"] == "carol@example.com" and "invoice 42 checked" in control[0]["reasons"]

    # Used once: it cannot be decided again.
    again = gw.api("POST", f"/api/approvals/{a['id']}/approve", op, {"args_hash": a["args_hash"]})
    assert again.status_code == 409, again.text


def test_denied_call_gets_the_denial_and_never_reaches_the_upstream(env, issuer: Issuer) -> None:
    gw, rec = env
    memo = "deny-" + uuid.uuid4().hex[:6]
    held = HeldCall(gw, issuer, {"amount": 300, "to": "acc-eve", "memo": memo})
    op = op_token(gw, issuer)
    a = pending_for(gw, op, held.sid)
    r = gw.operator_cli(op, "approvals", "deny", a["id"], "--comment", "not ours")
    assert r.returncode == 0, r.stderr
    err = held.result()["error"]
    assert err["code"] == -32003 and err["data"]["reason"] == "approval_denied", err
    assert not transfers(rec, memo)


def test_approval_binds_to_the_arguments_it_was_shown(env, issuer: Issuer) -> None:
    gw, rec = env
    memo_a, memo_b = "bind-a-" + uuid.uuid4().hex[:6], "bind-b-" + uuid.uuid4().hex[:6]
    op = op_token(gw, issuer)
    call_a = HeldCall(gw, issuer, {"amount": 100, "to": "acc-bob", "memo": memo_a})
    a = pending_for(gw, op, call_a.sid)
    call_b = HeldCall(gw, issuer, {"amount": 9000, "to": "acc-bob", "memo": memo_b})
    b = pending_for(gw, op, call_b.sid)
    assert a["args_hash"] != b["args_hash"]

    # Approving A while naming B's arguments changes nothing.
    r = gw.api("POST", f"/api/approvals/{a['id']}/approve", op, {"args_hash": b["args_hash"]})
    assert r.status_code == 409 and "other arguments" in r.json()["error_description"], r.text
    # A decision without the hash it binds to is malformed.
    r = gw.api("POST", f"/api/approvals/{a['id']}/approve", op, {})
    assert r.status_code == 400, r.text

    # Approving A releases A only; B stays held.
    r = gw.api("POST", f"/api/approvals/{a['id']}/approve", op, {"args_hash": a["args_hash"]})
    assert r.status_code == 200, r.text
    assert "result" in call_a.result()
    time.sleep(0.5)
    assert call_b.thread.is_alive(), "approving A released B"
    assert len(transfers(rec, memo_a)) == 1 and not transfers(rec, memo_b)
    gw.api("POST", f"/api/approvals/{b['id']}/deny", op, {"args_hash": b["args_hash"]})
    assert call_b.result()["error"]["data"]["reason"] == "approval_denied"


def test_who_may_decide(env, issuer: Issuer) -> None:
    gw, rec = env
    memo = "who-" + uuid.uuid4().hex[:6]
    held = HeldCall(gw, issuer, {"amount": 50, "to": "acc-bob", "memo": memo})
    a = pending_for(gw, op_token(gw, issuer), held.sid)
    body = {"args_hash": a["args_hash"]}
    url = f"/api/approvals/{a['id']}/approve"

    # The agent's own token (any audience) can never approve.
    r = gw.api("POST", url, issuer.mint(gw.api_audience), body)
    assert r.status_code == 403 and "agent tokens" in r.json()["error_description"], r.text
    r = gw.api("POST", url, held.token, body)
    assert r.status_code == 401, r.text
    # The delegating user may not approve their own agent's call (not allowed by config).
    r = gw.api("POST", url, op_token(gw, issuer, "alice"), body)
    assert r.status_code == 403 and "their own agent" in r.json()["error_description"], r.text
    # An approver for other classes may not decide a financial call.
    r = gw.api("POST", url, op_token(gw, issuer, "finn"), body)
    assert r.status_code == 403 and "financial" in r.json()["error_description"], r.text
    # No token at all.
    assert gw.api("POST", url, None, body).status_code == 401
    # Still pending; every refusal is on the record.
    assert held.thread.is_alive() and not transfers(rec, memo)
    refused = gw.audit_rows("kind = 'control' AND effect = 'deny' AND tool = 'approval/approve' AND detail LIKE ?",
                            [f"%{a['id']}%"])
    assert {r["sub"] for r in refused} >= {"alice@example.com", "finn@example.com"}, refused
    gw.api("POST", f"/api/approvals/{a['id']}/deny", op_token(gw, issuer), body)
    held.result()


def test_timeout_denies_and_the_upstream_is_never_called(launcher: Launcher, issuer: Issuer, tmp_path: Path) -> None:
    rec = tmp_path / "bank.jsonl"
    gw = launcher.gateway(issuer, {"bank": bank(rec)}, extra_toml=OPERATORS + "\n[approvals]\ntimeout_secs = 2\n",
                          name="short-timeout")
    memo = "timeout-" + uuid.uuid4().hex[:6]
    started = time.monotonic()
    held = HeldCall(gw, issuer, {"amount": 10, "to": "acc-bob", "memo": memo})
    err = held.result()["error"]
    assert err["data"]["reason"] == "approval_timeout", err
    assert time.monotonic() - started >= 1.5
    assert not transfers(rec, memo)
    op = op_token(gw, issuer)
    expired = gw.api("GET", "/api/approvals?status=expired", op).json()["approvals"]
    a = next(x for x in expired if x["session"] == f"sid:{held.sid}")
    # A late approval changes nothing.
    late = gw.api("POST", f"/api/approvals/{a['id']}/approve", op, {"args_hash": a["args_hash"]})
    assert late.status_code == 409, late.text
    time.sleep(0.3)
    assert not transfers(rec, memo)


def test_client_cancel_withdraws_the_request(env, issuer: Issuer) -> None:
    gw, rec = env
    memo = "withdraw-" + uuid.uuid4().hex[:6]
    sid = "cancel-" + uuid.uuid4().hex[:8]
    token = issuer.mint(gw.audience, scope="bank.*", sid=sid)
    op = op_token(gw, issuer)

    async def agent() -> None:
        async with sdk_client(gw.mcp_url, token) as client:
            with anyio.move_on_after(2):
                await client.call_tool("bank.transfer", {"amount": 20, "to": "acc-bob", "memo": memo})
            await anyio.sleep(0.5)

    anyio.run(agent)
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        listed = gw.api("GET", "/api/approvals?status=all", op).json()["approvals"]
        mine = [a for a in listed if a["session"] == f"sid:{sid}"]
        status = mine[0]["status"] if mine else None
        if status == "withdrawn":
            break
        time.sleep(0.2)
    assert status == "withdrawn", status
    a = mine[0]
    r = gw.api("POST", f"/api/approvals/{a['id']}/approve", op, {"args_hash": a["args_hash"]})
    assert r.status_code == 409, r.text
    time.sleep(0.3)
    assert not transfers(rec, memo)


def test_restart_while_pending_fails_closed(launcher: Launcher, issuer: Issuer, tmp_path: Path) -> None:
    """The gateway dies (SIGKILL) while a call is held: after the restart
    its request is still pending but held by nobody, and approving it
    releases nothing."""
    rec = tmp_path / "bank.jsonl"
    data = tmp_path / "data"
    gw = launcher.gateway(issuer, {"bank": bank(rec)}, extra_toml=OPERATORS, data_dir=data, name="before-restart")
    memo = "restart-" + uuid.uuid4().hex[:6]
    held = HeldCall(gw, issuer, {"amount": 75, "to": "acc-bob", "memo": memo})
    a = pending_for(gw, op_token(gw, issuer), held.sid)
    os.kill(gw.proc.pid, signal.SIGKILL)
    gw.proc.stop()
    held.thread.join(30)
    # The agent's call failed (the connection closed); nothing was forwarded.
    assert held.failure is not None or not any("result" in m for m in held.reply.messages), held.reply

    gw2 = launcher.gateway(issuer, {"bank": bank(rec)}, extra_toml=OPERATORS, data_dir=data, name="after-restart")
    op = op_token(gw2, issuer)
    still = gw2.api("GET", f"/api/approvals/{a['id']}", op).json()
    assert still["status"] == "pending" and still["waiting"] is False, still
    r = gw2.api("POST", f"/api/approvals/{a['id']}/approve", op, {"args_hash": a["args_hash"], "comment": "late"})
    assert r.status_code == 200, r.text
    # The decision is recorded; nothing is released without the held call.
    rec_rows = gw2.audit_rows("kind = 'control' AND tool = 'approval/approve' AND detail LIKE ?", [f"%{a['id']}%"])
    assert rec_rows and rec_rows[-1]["effect"] == "allow"
    time.sleep(0.5)
    assert not transfers(rec, memo), "a call was forwarded without its held request"


def test_clients_are_pointed_at_the_page_but_cannot_answer_for_the_approver(env, issuer: Issuer) -> None:
    """A client that supports URL-mode elicitation is sent the approval
    page; accepting that elicitation (the agent's own channel) decides
    nothing. Only the approver's decision on Mandate's side does."""
    import httpx2
    from mcp import Client, MCPError
    from mcp.client.streamable_http import streamable_http_client
    from mcp.types import ElicitResult

    gw, rec = env
    memo = "elicit-" + uuid.uuid4().hex[:6]
    sid = "elicit-" + uuid.uuid4().hex[:8]
    token = issuer.mint(gw.audience, scope="bank.*", sid=sid)
    op = op_token(gw, issuer)
    seen: list[Any] = []

    async def accept_everything(context: Any, params: Any) -> ElicitResult:
        seen.append(params)
        return ElicitResult(action="accept")

    outcome: dict[str, Any] = {}

    async def agent() -> None:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=30))
        async with http, Client(streamable_http_client(gw.mcp_url, http_client=http), mode="legacy",
                                read_timeout_seconds=30, elicitation_callback=accept_everything) as client:
            async with anyio.create_task_group() as tg:
                async def call() -> None:
                    try:
                        outcome["result"] = await client.call_tool(
                            "bank.transfer", {"amount": 30, "to": "acc-bob", "memo": memo})
                    except MCPError as e:
                        outcome["error"] = e

                tg.start_soon(call)
                with anyio.fail_after(10):
                    while not seen:
                        await anyio.sleep(0.05)
                # The client accepted the elicitation; the call is still held.
                await anyio.sleep(0.5)
                pending = [a for a in gw.api("GET", "/api/approvals?status=pending", op).json()["approvals"]
                           if a["session"] == f"sid:{sid}"]
                assert pending, "accepting the elicitation decided the approval"
                outcome["approval"] = pending[0]
                gw.api("POST", f"/api/approvals/{pending[0]['id']}/deny", op,
                       {"args_hash": pending[0]["args_hash"], "comment": "no"})

    anyio.run(agent)
    params = seen[0]
    assert getattr(params, "mode", None) == "url", params
    assert params.url.endswith(f"/approvals#{outcome['approval']['id']}"), params.url
    err = outcome.get("error")
    assert err is not None and err.data["reason"] == "approval_denied", outcome
    assert not transfers(rec, memo)


TASKS_EXT = "io.modelcontextprotocol/tasks"


def task_client_session(gw: Gateway, token: str) -> str:
    """An MCP session whose client declares the tasks extension."""
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "clientInfo": {"name": "e2e-tasks", "version": "1"},
        "capabilities": {"extensions": {TASKS_EXT: {}}}}}
    reply = gw.post(init, token, headers={"MCP-Protocol-Version": "2025-11-25"})
    assert reply.status == 200, reply.text
    sid = reply.headers["mcp-session-id"]
    gw.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, token, sid,
            headers={"MCP-Protocol-Version": "2025-11-25"})
    return sid


def rpc(gw: Gateway, token: str, sid: str, method: str, params: dict[str, Any], rid: int) -> dict[str, Any]:
    return gw.post({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}, token, sid,
                   headers={"MCP-Protocol-Version": "2025-11-25"}).response(rid)


def test_a_long_hold_becomes_an_mcp_task_for_clients_that_take_tasks(env, issuer: Issuer) -> None:
    gw, rec = env
    memo = "task-" + uuid.uuid4().hex[:6]
    sid_claim = "task-" + uuid.uuid4().hex[:8]
    token = issuer.mint(gw.audience, scope="bank.*", sid=sid_claim)
    session = task_client_session(gw, token)
    op = op_token(gw, issuer)

    started = time.monotonic()
    created = rpc(gw, token, session, "tools/call",
                  {"name": "bank.transfer", "arguments": {"amount": 40, "to": "acc-bob", "memo": memo}}, 5)
    assert time.monotonic() - started < 5, "the held call was not answered with a task"
    result = created["result"]
    assert result["resultType"] == "task" and result["status"] == "working", result
    task_id = result["taskId"]
    assert "/approvals#" in result.get("statusMessage", ""), result

    # Working while held; the upstream has seen nothing.
    got = rpc(gw, token, session, "tasks/get", {"taskId": task_id}, 6)["result"]
    assert got["status"] == "working", got
    assert not transfers(rec, memo)

    # Another subject cannot see or cancel it.
    other = issuer.mint(gw.audience, scope="bank.*", sub="mallory@example.com")
    other_session = task_client_session(gw, other)
    assert "error" in rpc(gw, other, other_session, "tasks/get", {"taskId": task_id}, 7)
    assert "error" in rpc(gw, other, other_session, "tasks/cancel", {"taskId": task_id}, 8)

    a = pending_for(gw, op, sid_claim)
    r = gw.api("POST", f"/api/approvals/{a['id']}/approve", op, {"args_hash": a["args_hash"]})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = rpc(gw, token, session, "tasks/get", {"taskId": task_id}, 9)["result"]
        if got["status"] != "working":
            break
        time.sleep(0.1)
    assert got["status"] == "completed", got
    assert "transferred 40" in json.dumps(got["result"]), got
    assert len(transfers(rec, memo)) == 1


def test_cancelling_the_task_withdraws_the_held_call(env, issuer: Issuer) -> None:
    gw, rec = env
    memo = "task-cancel-" + uuid.uuid4().hex[:6]
    sid_claim = "taskc-" + uuid.uuid4().hex[:8]
    token = issuer.mint(gw.audience, scope="bank.*", sid=sid_claim)
    session = task_client_session(gw, token)
    created = rpc(gw, token, session, "tools/call",
                  {"name": "bank.transfer", "arguments": {"amount": 41, "to": "acc-bob", "memo": memo}}, 5)
    task_id = created["result"]["taskId"]
    assert "result" in rpc(gw, token, session, "tasks/cancel", {"taskId": task_id}, 6)
    op = op_token(gw, issuer)
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        got = rpc(gw, token, session, "tasks/get", {"taskId": task_id}, 7)["result"]
        status = got["status"]
        if status != "working":
            break
        time.sleep(0.1)
    assert status == "cancelled", got
    withdrawn = [x for x in gw.api("GET", "/api/approvals?status=withdrawn", op).json()["approvals"]
                 if x["session"] == f"sid:{sid_claim}"]
    assert withdrawn, "the approval request was not withdrawn"
    assert not transfers(rec, memo)


def test_the_cli_shows_hidden_characters_as_the_page_does(env, issuer: Issuer) -> None:
    """A memo that reverses text (U+202E) and carries a terminal escape
    sequence is shown marked in `mandate approvals list` and `show`, not
    passed raw to the approver's terminal."""
    gw, rec = env
    memo = "rent \u202emoc.live\u202c " + uuid.uuid4().hex[:6] + " \u200b"
    held = HeldCall(gw, issuer, {"amount": 120, "to": "acc-bob", "memo": memo})
    op = op_token(gw, issuer)
    a = pending_for(gw, op, held.sid)
    for args in (("approvals", "list"), ("approvals", "show", a["id"])):
        r = gw.operator_cli(op, *args)
        assert r.returncode == 0, r.stderr
        assert "⟨U+202E⟩" in r.stdout and "⟨U+200B⟩" in r.stdout, r.stdout
        assert "\u202e" not in r.stdout and "\u200b" not in r.stdout and "\x1b" not in r.stdout, r.stdout
    gw.operator_cli(op, "approvals", "deny", a["id"], "--comment", "hidden text")
    assert held.result()["error"]["data"]["reason"] == "approval_denied"


def test_held_calls_of_task_clients_can_be_answered_synchronously(launcher: Launcher, issuer: Issuer) -> None:
    """`[approvals] held_calls_as_tasks = false`: a client that declares the
    tasks extension but would not poll is held open like any other, and
    gets the tool's result once a person approves."""
    rec = launcher.root / "bank-sync-calls.jsonl"
    gw = launcher.gateway(issuer, {"bank": bank(rec)}, name="sync-holds",
                          extra_toml=OPERATORS + "\n[approvals]\ntimeout_secs = 60\nheld_calls_as_tasks = false\n")
    memo = "sync-" + uuid.uuid4().hex[:6]
    sid_claim = "sync-" + uuid.uuid4().hex[:8]
    token = issuer.mint(gw.audience, scope="bank.*", sid=sid_claim)
    session = task_client_session(gw, token)
    op = op_token(gw, issuer)
    answer: dict[str, Any] = {}

    def call() -> None:
        answer.update(rpc(gw, token, session, "tools/call",
                          {"name": "bank.transfer", "arguments": {"amount": 42, "to": "acc-bob", "memo": memo}}, 5))

    t = threading.Thread(target=call)
    t.start()
    a = pending_for(gw, op, sid_claim)
    time.sleep(0.5)
    assert t.is_alive() and not answer, f"the held call was answered before the decision: {answer}"
    r = gw.api("POST", f"/api/approvals/{a['id']}/approve", op, {"args_hash": a["args_hash"]})
    assert r.status_code == 200, r.text
    t.join(30)
    result = answer.get("result", {})
    assert result.get("resultType") != "task" and "transferred 42" in json.dumps(result), answer
    assert len(transfers(rec, memo)) == 1


def test_sigterm_answers_a_held_call_and_withdraws_its_request(launcher: Launcher, issuer: Issuer,
                                                               tmp_path: Path) -> None:
    """A process manager stops the gateway (SIGTERM) while a call is held:
    the agent is told `shutting_down` at once (retry the call), the request
    is closed as withdrawn so that nobody approves a call no process holds,
    nothing is forwarded, and the log still verifies."""
    rec = tmp_path / "bank.jsonl"
    data = tmp_path / "data"
    gw = launcher.gateway(issuer, {"bank": bank(rec)}, extra_toml=OPERATORS, data_dir=data, name="sigterm")
    memo = "sigterm-" + uuid.uuid4().hex[:6]
    held = HeldCall(gw, issuer, {"amount": 76, "to": "acc-bob", "memo": memo})
    a = pending_for(gw, op_token(gw, issuer), held.sid)
    started = time.monotonic()
    os.kill(gw.proc.pid, signal.SIGTERM)
    held.thread.join(20)
    assert held.reply is not None, f"the held call got no answer: {held.failure}"
    err = held.reply.error()
    assert err["data"]["reason"] == "shutting_down", err
    assert time.monotonic() - started < 10, "the held call was not answered promptly"
    gw.proc.popen.wait(timeout=30)
    assert not transfers(rec, memo)
    # The stop signed a final checkpoint over every record, the held call's included.
    import sqlite3
    with sqlite3.connect(data / "audit.sqlite") as db:
        last = db.execute("SELECT max(seq) FROM audit_log").fetchone()[0]
        signed = db.execute("SELECT max(size) FROM audit_checkpoints").fetchone()[0]
    assert signed == last, f"the last checkpoint covers {signed} of {last} records"

    gw2 = launcher.gateway(issuer, {"bank": bank(rec)}, extra_toml=OPERATORS, data_dir=data, name="after-sigterm")
    op = op_token(gw2, issuer)
    closed = gw2.api("GET", f"/api/approvals/{a['id']}", op).json()
    assert closed["status"] == "withdrawn", closed
    late = gw2.api("POST", f"/api/approvals/{a['id']}/approve", op, {"args_hash": a["args_hash"]})
    assert late.status_code >= 400, late.text
    verify = gw2.cli("audit", "verify", "--data-dir", str(data))
    assert verify.returncode == 0, verify.stdout + verify.stderr

