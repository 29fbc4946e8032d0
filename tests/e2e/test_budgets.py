"""Budgets and rate limits take effect on the next call at the gateway.

The gateway counts per session and per task (calls, calls per tool, calls
in the last minute, money moved) and policies limit them. Here a copy of
the quickstart set gets small limits so the test can reach them.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest

from e2e_support import POLICY_DIR, Gateway, Issuer, Launcher, mandate_bin, read_jsonl

LIMITS = """
@id("e2e-search-budget")
@reason("at most 3 searches per session")
forbid (principal, action, resource == Mandate::Tool::"docs.search")
when { context.tool_calls_in_session >= 3 };

@id("e2e-task-read-budget")
@reason("at most 5 calls per task")
forbid (principal, action == Mandate::Action::"read", resource)
when { context.calls_in_task >= 5 };

@id("e2e-task-money")
@reason("at most 1000 moved per task")
forbid (principal, action == Mandate::Action::"financial", resource)
when { context.args has amount && context.amount_in_task + context.args.amount > 1000 };
"""

OPERATORS = """
[[operators]]
sub = "carol@example.com"
roles = ["approver"]
"""


@pytest.fixture(scope="module")
def env(launcher: Launcher, issuer: Issuer) -> tuple[Gateway, Path, Path]:
    policies = launcher.root / "budget-policies"
    shutil.copytree(POLICY_DIR, policies, ignore=shutil.ignore_patterns("tests", "*.md"))
    (policies / "90-e2e-limits.cedar").write_text(LIMITS)
    docs_rec, bank_rec = launcher.root / "docs.jsonl", launcher.root / "bank.jsonl"
    exe = str(mandate_bin())
    gw = launcher.gateway(issuer, {
        "docs": {"command": exe, "args": ["demo-server", "--profile", "workspace", "--record", str(docs_rec)],
                 "tools": {"search": "read", "list_customers": "read"}},
        "bank": {"command": exe, "args": ["demo-server", "--profile", "bank", "--record", str(bank_rec)],
                 "tools": {"get_balance": "read", "transfer": "financial"}},
    }, policy_dir=policies, extra_toml=OPERATORS)
    return gw, docs_rec, bank_rec


def outcome(body: dict) -> str:
    return "ok" if "result" in body else body["error"]["data"]["reason"]


def test_per_tool_session_budget(env, issuer: Issuer) -> None:
    gw, docs_rec, _ = env
    token = issuer.mint(gw.audience, scope="docs.*", task_id="t-" + uuid.uuid4().hex[:6])
    session = gw.initialize(token)
    got = [outcome(gw.call_tool(token, session, "docs.search", {"query": f"b{i}"}).response()) for i in range(4)]
    assert got == ["ok", "ok", "ok", "not_permitted"], got
    assert not [c for c in read_jsonl(docs_rec) if c["arguments"].get("query") == "b3"]
    # Other tools of the same session are not affected; a new session starts afresh.
    assert outcome(gw.call_tool(token, session, "docs.list_customers", {}).response()) == "ok"
    fresh = issuer.mint(gw.audience, scope="docs.*", task_id="t-" + uuid.uuid4().hex[:6])
    assert outcome(gw.call_tool(fresh, gw.initialize(fresh), "docs.search", {"query": "b4"}).response()) == "ok"


def test_task_budget_spans_sessions(env, issuer: Issuer) -> None:
    gw, _, _ = env
    task = "t-" + uuid.uuid4().hex[:6]
    got = []
    for i in range(6):  # a new session (sid) per call, same task
        token = issuer.mint(gw.audience, scope="docs.*", task_id=task)
        got.append(outcome(gw.call_tool(token, gw.initialize(token), "docs.list_customers", {}).response()))
    assert got == ["ok"] * 5 + ["not_permitted"], got
    # The same task id of another user is another budget.
    other = issuer.mint(gw.audience, scope="docs.*", task_id=task, sub="zoe@example.com")
    assert outcome(gw.call_tool(other, gw.initialize(other), "docs.list_customers", {}).response()) == "ok"


def test_money_budget_counts_only_released_payments(env, issuer: Issuer) -> None:
    gw, _, bank_rec = env
    task = "pay-" + uuid.uuid4().hex[:6]
    token = issuer.mint(gw.audience, scope="bank.*", task_id=task)
    session = gw.initialize(token)
    op = issuer.operator_token(gw.api_audience, "carol@example.com")

    def pay(amount: int, decide: str) -> str:
        memo = f"{task}-{amount}-{decide}"
        box: dict = {}
        t = threading.Thread(target=lambda: box.update(r=gw.call_tool(
            token, session, "bank.transfer", {"amount": amount, "to": "acc-bob", "memo": memo}).response()))
        t.start()
        deadline = time.monotonic() + 10
        while t.is_alive() and time.monotonic() < deadline:
            pending = [a for a in gw.api("GET", "/api/approvals?status=pending", op).json()["approvals"]
                       if a["args"].get("memo") == memo]
            if pending:
                a = pending[0]
                r = gw.api("POST", f"/api/approvals/{a['id']}/{decide}", op, {"args_hash": a["args_hash"]})
                assert r.status_code == 200, r.text
                break
            time.sleep(0.1)
        t.join(15)
        return outcome(box["r"])

    assert pay(600, "deny") == "approval_denied"      # denied: moves nothing
    assert pay(600, "approve") == "ok"                # 600 of 1000
    assert pay(600, "approve") == "not_permitted"     # 1200 > 1000: refused before anyone is asked
    assert pay(400, "approve") == "ok"                # exactly 1000
    sent = [c["arguments"]["amount"] for c in read_jsonl(bank_rec) if c["arguments"].get("memo", "").startswith(task)]
    assert sent == [600, 400], sent


def test_budgets_survive_a_restart(launcher: Launcher, issuer: Issuer, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies, ignore=shutil.ignore_patterns("tests", "*.md"))
    (policies / "90-e2e-limits.cedar").write_text(LIMITS)
    data = tmp_path / "data"
    upstreams = {"docs": {"command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace"],
                          "tools": {"search": "read", "list_customers": "read"}}}
    task = "restart-" + uuid.uuid4().hex[:6]

    def call(gw: Gateway) -> str:
        token = issuer.mint(gw.audience, scope="docs.*", task_id=task)
        return outcome(gw.call_tool(token, gw.initialize(token), "docs.list_customers", {}).response())

    first = launcher.gateway(issuer, upstreams, policy_dir=policies, data_dir=data, name="budget-1")
    assert [call(first) for _ in range(3)] == ["ok"] * 3
    first.proc.stop()
    second = launcher.gateway(issuer, upstreams, policy_dir=policies, data_dir=data, name="budget-2")
    # 3 calls before the restart count: 2 more, then the task budget of 5 is spent.
    assert [call(second) for _ in range(3)] == ["ok", "ok", "not_permitted"]
