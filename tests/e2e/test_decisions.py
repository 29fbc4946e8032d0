"""Why a call was decided as it was: `GET /api/decisions/{id}` and `mandate
decision show ID`, from the decision id the agent was given with its
refusal. An operator sees the policies that decided and their reasons, the
code the agent was told, where each argument's values came from, and the
outcome; reading it is itself on the record; nobody else may read it."""

from __future__ import annotations

import json
import uuid

import jwt
import pytest

from e2e_support import Gateway, Issuer, Launcher, mandate_bin

OPERATORS = """
[[operators]]
sub = "secops@example.com"
roles = ["admin"]
"""


@pytest.fixture(scope="module")
def gw(launcher: Launcher, issuer: Issuer) -> Gateway:
    demo = lambda profile, tools: {  # noqa: E731
        "command": str(mandate_bin()), "args": ["demo-server", "--profile", profile], "timeout_secs": 10,
        "tools": tools}
    return launcher.gateway(issuer, {
        "docs": {**demo("workspace", {"search": "read"}), "provenance": {"search": "untrusted"}},
        "bank": demo("bank", {"get_balance": "read", "transfer": "financial"}),
    }, extra_toml=OPERATORS, name="decisions")


def test_an_operator_reads_why_a_call_was_refused(gw: Gateway, issuer: Issuer) -> None:
    token = issuer.mint(gw.audience, scope="docs.* bank.*", sid="why-" + uuid.uuid4().hex[:6])
    session = gw.initialize(token)
    read = gw.call_tool(token, session, "docs.search", {"query": "Q3"}).response()
    assert "ACME-666" in json.dumps(read)  # the injected instruction names the attacker's account
    refused = gw.call_tool(token, session, "bank.transfer",
                           {"to": "ACME-666", "amount": 5000, "memo": "as instructed"}).response()["error"]
    decision_id = refused["data"]["decision_id"]
    assert refused["data"]["reason"] == "untrusted_argument", refused
    # The operator's sentence for agents (`@agent_reason` on the payee
    # allow-list) is said too; the policies' `@reason`s are not.
    assert "ask the user to have it added" in refused["message"], refused
    assert "transfers go only to known payees" not in refused["message"], refused

    op = issuer.operator_token(gw.api_audience, "secops@example.com")
    r = gw.api("GET", f"/api/decisions/{decision_id}", op)
    assert r.status_code == 200, r.text
    v = r.json()
    d = v["decision"]
    assert d["tool"] == "bank.transfer" and d["decision"]["id"] == decision_id, d
    assert d["decision"]["effect"] == "deny" and d["decision"]["code"] == "untrusted_argument", d
    assert {"untrusted-value-in-a-sink", "transfer-payee-allow-list"} <= set(d["decision"]["policies"]), d
    assert len(d["decision"]["reasons"]) == len(d["decision"]["policies"]), d
    # Where the arguments' values came from: the amount from the untrusted search result.
    assert "docs.search" in json.dumps(d["sources"]), d["sources"]
    assert v["policy_set"]["in_force"] is True, v["policy_set"]

    # The same from the command line, for a person.
    out = gw.operator_cli(op, "decision", "show", decision_id)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"decision {decision_id}" in text and "DENY bank.transfer" in text, text
    assert "reason code given to the agent: untrusted_argument" in text, text
    assert "untrusted-value-in-a-sink: " in text and "argument amount: amount from untrusted (docs.search)" in text, text
    assert "policy set: the one in force now" in text, text

    # An allowed call's decision shows its outcome.
    ok = gw.call_tool(token, session, "bank.get_balance", {"account": "acc-1"}).response()
    assert "result" in ok, ok
    allowed = gw.wait_audit("kind = 'outcome' AND tool = 'bank.get_balance' AND session = ?",
                            [f"sid:{session_sid(token)}"])
    shown = gw.operator_cli(op, "decision", "show", allowed[-1]["decision_id"])
    assert "ALLOW bank.get_balance" in shown.stdout and "outcome: ok" in shown.stdout, shown.stdout

    # The serve log names the deciding policies too.
    logged = [line for line in gw.proc.stderr().splitlines() if decision_id in line]
    assert logged and "untrusted-value-in-a-sink" in logged[0], logged

    # Reading it is on the record, with who read it.
    rows = gw.wait_audit("kind = 'control' AND tool = 'control/audit.read_decision'")
    assert any(decision_id in r["body"] and "secops@example.com" in r["body"] for r in rows), rows


def session_sid(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["sid"]


def test_only_an_operator_reads_a_decision_and_bad_ids_are_refused(gw: Gateway, issuer: Issuer) -> None:
    op = issuer.operator_token(gw.api_audience, "secops@example.com")
    assert gw.api("GET", "/api/decisions/dec_00000000000000000000000000000000", op).status_code == 404
    assert gw.api("GET", "/api/decisions/dec%27%20OR%201%3D1", op).status_code == 400
    agent = issuer.mint(gw.api_audience, scope="bank.*")
    assert gw.api("GET", "/api/decisions/dec_00000000000000000000000000000000", agent).status_code in (401, 403)
    assert gw.api("GET", "/api/decisions/dec_00000000000000000000000000000000", None).status_code == 401
    missing = gw.operator_cli(op, "decision", "show", "dec_00000000000000000000000000000000")
    assert missing.returncode != 0 and "404" in missing.stderr, missing.stderr
