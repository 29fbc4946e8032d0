"""Two `mandate serve` replicas sharing one control store on PostgreSQL
(issue #20): what one replica is told, the other enforces.

- a revocation made through replica A refuses the token's next call on
  replica B (within B's poll interval), and the upstream never sees it;
- a call held on replica A is approved through replica B's API and
  released on A, once;
- a replica that cannot read the shared store refuses calls
  (`control_store_unavailable`) rather than miss a revocation, and reports it on
  `/readyz`;
- one replica at a time signs the shared log's checkpoints (a lease in the
  control store); when it is killed, another takes over within 5 s and
  `mandate audit verify` passes over the log both wrote;
- with polls a minute apart, PostgreSQL's notifications carry a
  revocation, an approval and a policy set activated through the change
  gate to the other replica within seconds.

Each test run gets PostgreSQL schemas of its own (MANDATE_TEST_POSTGRES_URL,
default postgres://postgres@127.0.0.1:5432/test; `skip` skips this file),
dropped at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from e2e_support import POLICY_DIR, Gateway, Issuer, Launcher, mandate_bin, read_jsonl
from test_approvals import HeldCall, bank, pending_for, transfers

PG_URL = os.environ.get("MANDATE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")

pytestmark = pytest.mark.skipif(PG_URL == "skip", reason="MANDATE_TEST_POSTGRES_URL=skip")

OPERATORS = """
[[operators]]
sub = "secops@example.com"
roles = ["admin", "approver"]
"""


def psql(sql: str) -> None:
    subprocess.run(["psql", PG_URL, "-q", "-c", sql], check=False, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def replicas(launcher: Launcher, issuer: Issuer) -> tuple[Gateway, Gateway, Path]:
    tag = uuid.uuid4().hex[:8]
    control_schema, audit_schema = f"e2e_ctl_{tag}", f"e2e_aud_{tag}"
    launcher.cleanups.append(lambda: psql(f"DROP SCHEMA IF EXISTS {control_schema} CASCADE; "
                                          f"DROP SCHEMA IF EXISTS {audit_schema} CASCADE"))
    rec = launcher.root / f"bank-replicas-{tag}.jsonl"
    shared = (OPERATORS
              + f'\n[control]\nstore = "{PG_URL}"\nschema = "{control_schema}"\npoll_ms = 200\n'
              + f'\n[audit]\nstore = "{PG_URL}"\nschema = "{audit_schema}"\n'
              + "\n[approvals]\ntimeout_secs = 60\n")
    a = launcher.gateway(issuer, {"bank": bank(rec)}, extra_toml=shared, name="replica-a")
    b = launcher.gateway(issuer, {"bank": bank(rec)}, extra_toml=shared, name="replica-b")
    return a, b, rec


def balance(gw: Gateway, token: str, session: str) -> dict[str, Any]:
    reply = gw.call_tool(token, session, "bank.get_balance", {"account": "ops"})
    assert reply.status == 200, reply.text
    return reply.response()


def test_a_revocation_on_one_replica_refuses_the_next_call_on_the_other(replicas, issuer: Issuer) -> None:
    a, b, rec = replicas
    user = "user-" + uuid.uuid4().hex[:6]
    token_b = issuer.mint(b.audience, scope="bank.*", sub=user)
    session_b = b.initialize(token_b)
    assert "result" in balance(b, token_b, session_b)

    op = issuer.operator_token(a.api_audience, "secops@example.com")
    r = a.operator_cli(op, "revoke", "user", user, "--reason", "e2e: laptop lost")
    assert r.returncode == 0, r.stderr
    revoked_at = time.monotonic()

    # B re-reads the shared store every poll (200 ms here): its next call
    # after that is refused, on the same session and token.
    deadline = revoked_at + 5
    while True:
        reply = balance(b, token_b, session_b)
        if "error" in reply:
            break
        assert time.monotonic() < deadline, "replica B still let a revoked user through after 5 s"
        time.sleep(0.05)
    seen_after = time.monotonic() - revoked_at
    err = reply["error"]
    assert err["data"]["reason"] == "revoked", err
    assert seen_after < 2, f"replica B took {seen_after:.2f} s to see the revocation"
    # The revocation is listed by B's own API too: one store.
    op_b = issuer.operator_token(b.api_audience, "secops@example.com")
    listed = b.api("GET", "/api/revocations", op_b).json()["revocations"]
    assert any(x["value"] == user for x in listed), listed


def test_a_call_held_on_one_replica_is_released_by_an_approval_on_the_other(replicas, issuer: Issuer) -> None:
    a, b, rec = replicas
    memo = "replica-" + uuid.uuid4().hex[:6]
    held = HeldCall(a, issuer, {"amount": 75, "to": "acc-bob", "memo": memo})
    op_a = issuer.operator_token(a.api_audience, "secops@example.com")
    req = pending_for(a, op_a, held.sid)
    assert not transfers(rec, memo), "the upstream saw a held call"

    # B sees the request (one store) and decides it.
    op_b = issuer.operator_token(b.api_audience, "secops@example.com")
    pending_b = b.api("GET", "/api/approvals?status=pending", op_b).json()["approvals"]
    mine = [x for x in pending_b if x["id"] == req["id"]]
    assert mine, "replica B does not see the request held on A"
    assert mine[0]["waiting"] is False, "B cannot be holding a call A holds"
    decided = time.monotonic()
    r = b.api("POST", f"/api/approvals/{req['id']}/approve", op_b, {"args_hash": req["args_hash"]})
    assert r.status_code == 200, r.text

    body = held.result(timeout=10)
    released_after = time.monotonic() - decided
    assert "result" in body, body
    assert len(transfers(rec, memo)) == 1, "released exactly once"
    assert released_after < 3, f"A released {released_after:.2f} s after B's approval"
    # Used once: approving again on either replica changes nothing.
    again = a.api("POST", f"/api/approvals/{req['id']}/approve", op_a, {"args_hash": req["args_hash"]})
    assert again.status_code == 409, again.text


def test_a_replica_that_cannot_read_the_shared_store_refuses_calls(launcher: Launcher, issuer: Issuer) -> None:
    """The control store's schema is dropped under a running replica: its
    re-reads fail, and after ten polls (at least 5 s) it refuses calls
    and says so on /readyz; when the tables are back, it serves again."""
    tag = uuid.uuid4().hex[:8]
    schema = f"e2e_ctl_gone_{tag}"
    launcher.cleanups.append(lambda: psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    rec = launcher.root / f"bank-gone-{tag}.jsonl"
    gw = launcher.gateway(issuer, {"bank": bank(rec)}, name="replica-gone",
                          extra_toml=f'\n[control]\nstore = "{PG_URL}"\nschema = "{schema}"\npoll_ms = 100\n')
    token = issuer.mint(gw.audience, scope="bank.*")
    session = gw.initialize(token)
    assert "result" in balance(gw, token, session)
    assert gw.get("/readyz").status_code == 200

    psql(f"ALTER SCHEMA {schema} RENAME TO {schema}_away")
    launcher.cleanups.append(lambda: psql(f"DROP SCHEMA IF EXISTS {schema}_away CASCADE"))
    deadline = time.monotonic() + 15
    while True:
        reply = balance(gw, token, session)
        if "error" in reply:
            break
        assert time.monotonic() < deadline, "calls kept going through with the control store unreadable"
        time.sleep(0.2)
    assert reply["error"]["data"]["reason"] == "control_store_unavailable", reply
    ready = gw.get("/readyz")
    assert ready.status_code == 503 and ready.json().get("control") == "unavailable", ready.text
    calls_before = len(read_jsonl(rec))

    psql(f"ALTER SCHEMA {schema}_away RENAME TO {schema}")
    deadline = time.monotonic() + 10
    while "error" in (reply := balance(gw, token, session)):
        assert time.monotonic() < deadline, f"the replica did not recover: {reply}"
        time.sleep(0.2)
    assert len(read_jsonl(rec)) == calls_before + 1
    assert gw.get("/readyz").status_code == 200


# ----- notifications: what the polls cannot explain ----------------------

GATE_OPERATORS = OPERATORS + """
[[operators]]
sub = "ann@example.com"
roles = ["admin"]

[[operators]]
sub = "ben@example.com"
roles = ["admin"]
"""

BLOCK_POLICY = """
@id("e2e-replica-block")
@reason("searching for this is blocked by a change activated on another replica")
forbid (principal, action == Mandate::Action::"read", resource)
when { context.args has query && context.args.query == "blocked" };
"""

# Polls a minute apart (the most `poll_ms` allows): something seen within
# NOTIFIED_WITHIN seconds was notified (a poll could explain it only if one
# happened to fall in that window, a 1-in-20 chance), with room for a slow CI
# machine.
SLOW_POLL_MS = 60000
NOTIFIED_WITHIN = 3.0


def activate_block_policy(a: Gateway, issuer: Issuer, live: Path, tmp_path: Path) -> None:
    """Puts BLOCK_POLICY in force through replica A's change gate: ann
    proposes, ben approves, ann activates."""
    proposed = tmp_path / "proposed"
    shutil.copytree(live, proposed)
    (proposed / "50-e2e-replica.cedar").write_text(BLOCK_POLICY)

    def ops(who: str, *args: str) -> subprocess.CompletedProcess[str]:
        r = a.operator_cli(issuer.operator_token(a.api_audience, f"{who}@example.com"), *args)
        assert r.returncode == 0, r.stderr
        return r

    m = re.search(r"chg-[0-9a-f-]+", ops("ann", "change", "propose-policy", "--dir", str(proposed),
                                         "--summary", "block a query on every replica").stdout)
    assert m, "no change id"
    ops("ben", "change", "approve", m.group(0))
    ops("ann", "change", "activate", m.group(0))


@pytest.fixture(scope="module")
def notified(launcher: Launcher, issuer: Issuer) -> tuple[Gateway, Gateway, Path, Path]:
    tag = uuid.uuid4().hex[:8]
    control_schema, audit_schema = f"e2e_ntf_{tag}", f"e2e_ntfa_{tag}"
    launcher.cleanups.append(lambda: psql(f"DROP SCHEMA IF EXISTS {control_schema} CASCADE; "
                                          f"DROP SCHEMA IF EXISTS {audit_schema} CASCADE"))
    live = launcher.root / f"policies-{tag}"
    shutil.copytree(POLICY_DIR, live, ignore=shutil.ignore_patterns("tests", "*.md"))
    rec = launcher.root / f"bank-notified-{tag}.jsonl"
    upstreams = {
        "bank": bank(rec),
        "docs": {"command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace"],
                 "tools": {"search": "read", "list_customers": "read"}},
    }
    shared = (GATE_OPERATORS
              + f'\n[control]\nstore = "{PG_URL}"\nschema = "{control_schema}"\npoll_ms = {SLOW_POLL_MS}\n'
              + f'\n[audit]\nstore = "{PG_URL}"\nschema = "{audit_schema}"\n'
              + "\n[approvals]\ntimeout_secs = 60\n")
    a = launcher.gateway(issuer, upstreams, extra_toml=shared, name="notified-a",
                         policy_dir=live, policy_toml="change_gate = true")
    b = launcher.gateway(issuer, upstreams, extra_toml=shared, name="notified-b",
                         policy_dir=live, policy_toml="change_gate = true")
    return a, b, rec, live


def test_notifications_carry_a_revocation_and_an_approval_at_once(notified, issuer: Issuer) -> None:
    a, b, rec, _ = notified
    # Revoked through A: B refuses the next call well within one poll.
    user = "user-" + uuid.uuid4().hex[:6]
    token_b = issuer.mint(b.audience, scope="bank.*", sub=user)
    session_b = b.initialize(token_b)
    assert "result" in balance(b, token_b, session_b)
    op_a = issuer.operator_token(a.api_audience, "secops@example.com")
    r = a.api("POST", "/api/revocations", op_a, {"kind": "user", "value": user, "reason": "e2e: notify"})
    assert r.status_code in (200, 201), r.text
    revoked_at = time.monotonic()
    while "error" not in (reply := balance(b, token_b, session_b)):
        assert time.monotonic() - revoked_at < SLOW_POLL_MS / 1000, "B let a revoked user through"
        time.sleep(0.02)
    seen_after = time.monotonic() - revoked_at
    assert reply["error"]["data"]["reason"] == "revoked", reply
    assert seen_after < NOTIFIED_WITHIN, f"B saw A's revocation after {seen_after:.2f} s: a poll, not a notification"

    # Held on A, approved through B: A releases it well within one poll.
    memo = "notified-" + uuid.uuid4().hex[:6]
    held = HeldCall(a, issuer, {"amount": 75, "to": "acc-bob", "memo": memo})
    req = pending_for(a, op_a, held.sid)
    op_b = issuer.operator_token(b.api_audience, "secops@example.com")
    decided = time.monotonic()
    r = b.api("POST", f"/api/approvals/{req['id']}/approve", op_b, {"args_hash": req["args_hash"]})
    assert r.status_code == 200, r.text
    body = held.result(timeout=10)
    released_after = time.monotonic() - decided
    assert "result" in body, body
    assert len(transfers(rec, memo)) == 1, "released exactly once"
    assert released_after < NOTIFIED_WITHIN, f"A released {released_after:.2f} s after B's approval: a poll, not a notification"


def test_a_policy_set_activated_on_one_replica_is_enforced_by_the_other(notified, issuer: Issuer,
                                                                         tmp_path: Path) -> None:
    a, b, _, live = notified
    token_b = issuer.mint(b.audience, scope="docs.*")
    session_b = b.initialize(token_b)

    def search_b(query: str) -> dict[str, Any]:
        return b.call_tool(token_b, session_b, "docs.search", {"query": query}).response()

    assert "result" in search_b("blocked")
    activate_block_policy(a, issuer, live, tmp_path)
    activated = time.monotonic()
    op_a = issuer.operator_token(a.api_audience, "secops@example.com")
    behind = 0
    while True:
        assert time.monotonic() - activated < SLOW_POLL_MS / 1000, "B never enforced the activated set"
        reply = search_b("blocked")
        if "error" not in reply:
            time.sleep(0.05)
            continue
        err = reply["error"]
        assert err["code"] == -32003, err
        # The decision, read back through A (one audit log): denied by the
        # new policy, or, while B installs it, because B is behind (fail
        # closed: never decided by the old set once B knows of the new one).
        shown = a.api("GET", f"/api/decisions/{err['data']['decision_id']}", op_a)
        assert shown.status_code == 200, shown.text
        decision = shown.json()["decision"]["decision"]
        if "e2e-replica-block" in decision["policies"]:
            break
        assert "not enforcing the policy set in force" in decision["reasons"][0], decision
        behind += 1
        time.sleep(0.05)
    enforced_after = time.monotonic() - activated
    assert enforced_after < NOTIFIED_WITHIN, f"B enforced the new set after {enforced_after:.2f} s: a poll, not a notification"
    assert "result" in search_b("allowed query")
    assert b.get("/readyz").json()["policies"] == "loaded"


# ----- one checkpoint signer -------------------------------------------------

SIGNS = "this replica signs the shared log's checkpoints"


def psql_value(sql: str) -> str:
    r = subprocess.run(["psql", PG_URL, "-tAq", "-c", sql], check=True, capture_output=True, text=True, timeout=30)
    return r.stdout.strip()


def test_one_replica_signs_checkpoints_and_another_takes_over_when_it_dies(launcher: Launcher, issuer: Issuer) -> None:
    tag = uuid.uuid4().hex[:8]
    control_schema, audit_schema = f"e2e_sig_{tag}", f"e2e_siga_{tag}"
    launcher.cleanups.append(lambda: psql(f"DROP SCHEMA IF EXISTS {control_schema} CASCADE; "
                                          f"DROP SCHEMA IF EXISTS {audit_schema} CASCADE"))
    key = launcher.root / f"shared-checkpoint-{tag}.key"
    rec = launcher.root / f"bank-signer-{tag}.jsonl"
    shared = (f'\n[control]\nstore = "{PG_URL}"\nschema = "{control_schema}"\n'
              + f'\n[audit]\nstore = "{PG_URL}"\nschema = "{audit_schema}"\n'
              + f'checkpoint_key = "{key}"\ncheckpoint_interval_secs = 1\n')
    replicas = [launcher.gateway(issuer, {"bank": bank(rec)}, extra_toml=shared, name=f"signer-{n}") for n in "ab"]
    token = {gw.public_url: issuer.mint(gw.audience, scope="bank.*") for gw in replicas}
    sessions = {gw.public_url: gw.initialize(token[gw.public_url]) for gw in replicas}

    def call(gw: Gateway) -> None:
        assert "result" in balance(gw, token[gw.public_url], sessions[gw.public_url])

    deadline = time.monotonic() + 10
    while not (signing := [gw for gw in replicas if SIGNS in gw.proc.stderr()]):
        assert time.monotonic() < deadline, "no replica took the checkpoint signer lease"
        time.sleep(0.1)
    time.sleep(1.5)
    assert len([gw for gw in replicas if SIGNS in gw.proc.stderr()]) == 1, "two replicas sign at once"
    holder = signing[0]
    survivor = next(gw for gw in replicas if gw is not holder)
    for gw in replicas:
        call(gw)

    os.killpg(holder.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    while SIGNS not in survivor.proc.stderr():
        assert time.monotonic() - killed < 5, "no replica took over signing within 5 s"
        time.sleep(0.05)

    call(survivor)
    records = int(psql_value(f"SELECT count(*) FROM {audit_schema}.audit_log"))
    deadline = time.monotonic() + 5
    while int(psql_value(f"SELECT coalesce(max(size), 0) FROM {audit_schema}.audit_checkpoints")) < records:
        assert time.monotonic() < deadline, "the new signer signed no checkpoint covering the log"
        time.sleep(0.1)
    survivor.proc.stop()
    verify = survivor.cli("audit", "verify", "--config", str(survivor.config))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "verified" in verify.stdout, verify.stdout


def test_a_replica_that_cannot_install_the_set_in_force_refuses_calls_until_it_can(
        launcher: Launcher, issuer: Issuer, tmp_path: Path) -> None:
    """Fail closed: a replica that learns of a policy set put in force
    elsewhere but cannot install it denies every call and is not ready,
    rather than keep deciding with the old set; once it can, it installs the
    set and serves again, with no restart."""
    tag = uuid.uuid4().hex[:8]
    control_schema, audit_schema = f"e2e_bhd_{tag}", f"e2e_bhda_{tag}"
    launcher.cleanups.append(lambda: psql(f"DROP SCHEMA IF EXISTS {control_schema} CASCADE; "
                                          f"DROP SCHEMA IF EXISTS {audit_schema} CASCADE"))
    live_a, live_b = launcher.root / f"policies-a-{tag}", launcher.root / f"policies-b-{tag}"
    for live in (live_a, live_b):
        shutil.copytree(POLICY_DIR, live, ignore=shutil.ignore_patterns("tests", "*.md"))
    upstreams = {"docs": {"command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace"],
                          "tools": {"search": "read"}}}
    shared = (GATE_OPERATORS
              + f'\n[control]\nstore = "{PG_URL}"\nschema = "{control_schema}"\npoll_ms = 200\n'
              + f'\n[audit]\nstore = "{PG_URL}"\nschema = "{audit_schema}"\n')
    a = launcher.gateway(issuer, upstreams, extra_toml=shared, name="behind-a",
                         policy_dir=live_a, policy_toml="change_gate = true")
    b = launcher.gateway(issuer, upstreams, extra_toml=shared, name="behind-b",
                         policy_dir=live_b, policy_toml="change_gate = true")
    token_b = issuer.mint(b.audience, scope="docs.*")
    session_b = b.initialize(token_b)

    def search_b(query: str) -> dict[str, Any]:
        return b.call_tool(token_b, session_b, "docs.search", {"query": query}).response()

    assert "result" in search_b("allowed query")
    assert b.get("/readyz").status_code == 200

    # B's active policy directory (with the change gate on, the copy in its
    # data directory) cannot be written: in its place, a plain file.
    active_b = b.data_dir / "policy-active"
    assert active_b.is_dir(), active_b
    aside = active_b.with_name("policy-active.aside")
    active_b.rename(aside)
    active_b.write_text("not a directory")

    activate_block_policy(a, issuer, live_a, tmp_path)

    # B cannot install it: not ready, and even a call the old set allows is
    # refused rather than decided by the old set.
    deadline = time.monotonic() + 10
    while (ready := b.get("/readyz")).status_code == 200:
        assert time.monotonic() < deadline, "B stayed ready without the set in force"
        time.sleep(0.1)
    assert ready.status_code == 503 and ready.json()["policies"] == "behind", ready.text
    refused = search_b("allowed query")
    assert refused["error"]["data"]["reason"] == "control_store_unavailable", refused
    # The agent is told the category; the record says why.
    op_a = issuer.operator_token(a.api_audience, "secops@example.com")
    shown = a.api("GET", f"/api/decisions/{refused['error']['data']['decision_id']}", op_a)
    assert shown.status_code == 200, shown.text
    assert "not enforcing the policy set in force" in shown.json()["decision"]["decision"]["reasons"][0], shown.text

    # Writable again: B installs the set within a few seconds, unrestarted.
    active_b.unlink()
    aside.rename(active_b)
    deadline = time.monotonic() + 10
    while b.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "B never caught up"
        time.sleep(0.1)
    assert "result" in search_b("allowed query")
    blocked = search_b("blocked")
    assert blocked["error"]["code"] == -32003, blocked
    assert (active_b / "50-e2e-replica.cedar").exists()


ONE_BALANCE = """
// A budget of one: a session reads the balance once.
@id("one-balance-per-session")
@reason("this session has had its one balance reading")
forbid (principal, action in Mandate::Action::"call", resource)
when { context.tool_calls_in_session >= 1 };
"""


def test_two_replicas_racing_for_a_budgets_last_unit_let_one_call_through(
        launcher: Launcher, issuer: Issuer) -> None:
    """The calls of one session decided at the same instant on two replicas
    (an agent's parallel tool calls spread by the balancer): the shared log
    orders their decision records, and the one it puts second is decided
    again with the first counted. A budget of one lets exactly one call
    through, whichever replicas they reach, round after round."""
    tag = uuid.uuid4().hex[:8]
    control_schema, audit_schema = f"e2e_race_ctl_{tag}", f"e2e_race_aud_{tag}"
    launcher.cleanups.append(lambda: psql(f"DROP SCHEMA IF EXISTS {control_schema} CASCADE; "
                                          f"DROP SCHEMA IF EXISTS {audit_schema} CASCADE"))
    policies = launcher.root / f"race-policies-{tag}"
    shutil.copytree(POLICY_DIR, policies, ignore=shutil.ignore_patterns("tests", "*.md"))
    (policies / "50-one-balance.cedar").write_text(ONE_BALANCE)
    rec = launcher.root / f"bank-race-{tag}.jsonl"
    shared = (OPERATORS
              + f'\n[control]\nstore = "{PG_URL}"\nschema = "{control_schema}"\npoll_ms = 200\n'
              + f'\n[audit]\nstore = "{PG_URL}"\nschema = "{audit_schema}"\n')
    a = launcher.gateway(issuer, {"bank": bank(rec)}, extra_toml=shared, name=f"race-a-{tag}", policy_dir=policies)
    # One public URL (as behind a balancer), so one token serves both.
    b = launcher.gateway(issuer, {"bank": bank(rec)}, extra_toml=shared, name=f"race-b-{tag}", policy_dir=policies,
                         public_url=a.public_url)

    from concurrent.futures import ThreadPoolExecutor

    rounds, through = 12, []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for i in range(rounds):
            sid = f"race-{tag}-{i}"
            token = issuer.mint(a.audience, scope="bank.*", sid=sid)
            session = a.initialize(token)
            # B carries the session on (taken over before the race).
            assert b.post({"jsonrpc": "2.0", "id": 2, "method": "ping"}, token, session).status == 200
            start = threading.Barrier(2)

            def call(gw: Gateway, account: str) -> bool:
                start.wait(timeout=10)
                reply = gw.call_tool(token, session, "bank.get_balance", {"account": account})
                return reply.status == 200 and "result" in reply.response()

            results = list(pool.map(lambda args: call(*args), [(a, f"ops-{i}-a"), (b, f"ops-{i}-b")]))
            through.append(sum(results))
    assert through == [1] * rounds, f"calls let through per round: {through}"
    # The upstream saw exactly one reading per session.
    seen = [r for r in read_jsonl(rec) if str(r.get("arguments", {}).get("account", "")).startswith("ops-")]
    assert len(seen) == rounds, seen
    refused_after_record = sum(metric(g, "mandate_replica_rechecks_refused_total") for g in (a, b))
    print(f"refused by the re-check (the rest were refused at their own decision): {refused_after_record:.0f} of {rounds}")
    # Every record of both replicas is in one verifiable log.
    for g in (a, b):
        g.proc.stop()
    verify = a.cli("audit", "verify", "--config", str(a.config))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def metric(gw: Gateway, name: str) -> float:
    for line in gw.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")
