"""Kill switches and operator authentication on the control API.

Revocation is continuous verification: a revoked user, agent, build, task,
session or token is denied on its very next call, the upstream never sees
that call (proved from the upstream's record file), and both the operator's
action and the denial are audit records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e_support import Gateway, Issuer, Launcher, mandate_bin, read_jsonl

OPERATORS = """
[[operators]]
sub = "secops@example.com"
roles = ["admin"]

[[operators]]
sub = "viewer@example.com"
roles = ["approver"]
"""


@pytest.fixture(scope="module")
def env(launcher: Launcher, issuer: Issuer) -> tuple[Gateway, Path]:
    docs_rec = launcher.root / "docs-calls.jsonl"
    gw = launcher.gateway(issuer, {
        "docs": {
            "command": str(mandate_bin()),
            "args": ["demo-server", "--profile", "workspace", "--record", str(docs_rec)],
            "timeout_secs": 10,
            "tools": {"search": "read"},
        },
    }, extra_toml=OPERATORS)
    return gw, docs_rec


def search(gw: Gateway, token: str, session: str, query: str) -> dict:
    reply = gw.call_tool(token, session, "docs.search", {"query": query})
    assert reply.status == 200, reply.text
    return reply.response()


def searches_received(rec: Path, query: str) -> int:
    return sum(1 for c in read_jsonl(rec) if c.get("arguments", {}).get("query") == query)


@pytest.mark.parametrize("kind,claim", [
    ("agent", "act"), ("user", "sub"), ("build", "build"), ("task", "task_id"),
    ("session", "sid"), ("token", "jti"),
])
def test_revocation_denies_the_next_call_and_lifting_restores(env, issuer: Issuer, kind: str, claim: str) -> None:
    gw, rec = env
    unique = f"{kind}-{id(env)}"
    claims = {"scope": "docs.search", "sub": f"user-{unique}", "act": {"sub": f"agent-{unique}"},
              "build": f"build-{unique}", "task_id": f"task-{unique}", "sid": f"sid-{unique}", "jti": f"jti-{unique}"}
    token = issuer.mint(gw.audience, **claims)
    session = gw.initialize(token)
    assert "result" in search(gw, token, session, f"before-{kind}")

    value = claims[claim]["sub"] if claim == "act" else claims[claim]
    op = issuer.operator_token(gw.api_audience, "secops@example.com")
    r = gw.operator_cli(op, "revoke", kind, value, "--reason", f"e2e {kind} compromise")
    assert r.returncode == 0, r.stderr
    assert "revoked" in r.stdout

    # The very next call, on the same transport session and token: denied.
    reply = search(gw, token, session, f"after-{kind}")
    err = reply["error"]
    assert err["code"] == -32003 and err["data"]["reason"] == "revoked", err
    assert searches_received(rec, f"after-{kind}") == 0, "a revoked call reached the upstream"
    rows = gw.wait_audit("decision_id = ?", [err["data"]["decision_id"]])
    assert rows and rows[0]["effect"] == "deny" and "revoked" in rows[0]["reasons"], rows
    # tools/list shows nothing to a revoked subject.
    listed = gw.post({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, token, session).response()
    assert listed["result"]["tools"] == []

    # The operator's action is on the record, before and after.
    control = gw.audit_rows("kind = 'control' AND tool = 'control/revoke' AND detail LIKE ?", [f"%{value}%"])
    assert [r["effect"] for r in control] == ["allow"], control
    assert control[0]["sub"] == "secops@example.com"

    # Lift it: calls flow again.
    listing = gw.operator_cli(op, "revocations", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    rid = next(r["id"] for r in json.loads(listing.stdout)["revocations"] if r["value"] == value)
    lifted = gw.operator_cli(op, "revocations", "lift", str(rid))
    assert lifted.returncode == 0, lifted.stderr
    assert "result" in search(gw, token, session, f"lifted-{kind}")
    assert searches_received(rec, f"lifted-{kind}") == 1


def test_revocations_survive_a_restart(launcher: Launcher, issuer: Issuer, tmp_path: Path) -> None:
    upstreams = {"docs": {"command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace"],
                          "tools": {"search": "read"}}}
    data = tmp_path / "data"
    gw = launcher.gateway(issuer, upstreams, extra_toml=OPERATORS, data_dir=data, name="first")
    op = issuer.operator_token(gw.api_audience, "secops@example.com")
    r = gw.api("POST", "/api/revocations", op, {"kind": "agent", "value": "agent-restart", "reason": "x"})
    assert r.status_code == 201, r.text
    gw.proc.stop()

    gw2 = launcher.gateway(issuer, upstreams, extra_toml=OPERATORS, data_dir=data, name="second")
    token = issuer.mint(gw2.audience, scope="docs.search", act={"sub": "agent-restart"})
    session = gw2.initialize(token)
    err = search(gw2, token, session, "after-restart")["error"]
    assert err["data"]["reason"] == "revoked", err


def test_control_api_authenticates_operators(env, issuer: Issuer) -> None:
    gw, _ = env
    body = {"kind": "user", "value": "bob@example.com", "reason": "test"}

    # No token: 401 with a challenge; nothing recorded as a change.
    r = gw.api("POST", "/api/revocations", None, body)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer "), r.text
    assert r.json()["error"] == "invalid_token"

    # An agent token (it has `act`), even with the right audience: refused and recorded.
    agent = issuer.mint(gw.api_audience, sub="secops@example.com")
    r = gw.api("POST", "/api/revocations", agent, body)
    assert r.status_code == 403 and "agent tokens" in r.json()["error_description"], r.text

    # An agent's /mcp token is for another audience: 401.
    r = gw.api("POST", "/api/revocations", issuer.mint(gw.audience), body)
    assert r.status_code == 401, r.text

    # A person who is not a configured operator, and one without the admin role.
    r = gw.api("POST", "/api/revocations", issuer.operator_token(gw.api_audience, "mallory@example.com"), body)
    assert r.status_code == 403, r.text
    r = gw.api("POST", "/api/revocations", issuer.operator_token(gw.api_audience, "viewer@example.com"), body)
    assert r.status_code == 403 and "admin" in r.json()["error_description"], r.text

    # Every refusal above that had a verified subject is a deny record.
    denies = gw.audit_rows("kind = 'control' AND effect = 'deny' AND tool = 'control/revoke'")
    subs = {d["sub"] for d in denies}
    assert {"secops@example.com", "mallory@example.com", "viewer@example.com"} <= subs, subs

    # Nothing was revoked.
    ok = gw.api("GET", "/api/revocations", issuer.operator_token(gw.api_audience, "secops@example.com"))
    assert ok.status_code == 200
    assert all(r["value"] != "bob@example.com" for r in ok.json()["revocations"])

    # Malformed requests get a clear 400.
    op = issuer.operator_token(gw.api_audience, "secops@example.com")
    r = gw.api("POST", "/api/revocations", op, {"kind": "galaxy", "value": "x"})
    assert r.status_code == 400 and "unknown revocation kind" in r.json()["error_description"], r.text
    r = gw.api("POST", "/api/revocations", op, {"kind": "user", "value": "  "})
    assert r.status_code == 400, r.text
