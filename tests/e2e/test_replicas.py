"""Two `mandate serve` replicas sharing one control store on PostgreSQL
(issue #20): what one replica is told, the other enforces.

- a revocation made through replica A refuses the token's next call on
  replica B (within B's poll interval), and the upstream never sees it;
- a call held on replica A is approved through replica B's API and
  released on A, once;
- a replica that cannot read the shared store refuses calls
  (`control_store_unavailable`) rather than miss a revocation, and reports it on
  `/readyz`.

Each test run gets PostgreSQL schemas of its own (MANDATE_TEST_POSTGRES_URL,
default postgres://postgres@127.0.0.1:5432/test; `skip` skips this file),
dropped at the end.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from e2e_support import Gateway, Issuer, Launcher, mandate_bin, read_jsonl
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
