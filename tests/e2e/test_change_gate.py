"""The two-person change gate (F-01: capability accumulation).

With `policy.change_gate = true`, a new policy set or a wider scope ceiling
takes effect only after one operator proposes it, a different operator
approves it, and it is activated; editing files on disk changes nothing.
Every step is an audit record.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from e2e_support import POLICY_DIR, Gateway, Issuer, Launcher, mandate_bin

OPERATORS = """
[[operators]]
sub = "ann@example.com"
roles = ["admin"]

[[operators]]
sub = "ben@example.com"
roles = ["admin"]
"""

BLOCK_POLICY = """
// Added through the change gate by the e2e test.
@id("e2e-block")
@reason("searching for this is blocked by an activated change")
forbid (principal, action == Mandate::Action::"read", resource)
when { context.args has query && context.args.query == "blocked" };
"""


@pytest.fixture(scope="module")
def env(launcher: Launcher, issuer: Issuer) -> tuple[Gateway, Path]:
    live = launcher.root / "live-policies"
    shutil.copytree(POLICY_DIR, live, ignore=shutil.ignore_patterns("tests", "*.md"))
    gw = launcher.gateway(issuer, {
        "docs": {"command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace"],
                 "tools": {"search": "read", "list_customers": "read"}},
    }, extra_toml=OPERATORS, policy_dir=live, policy_toml="change_gate = true")
    return gw, live


def ops(gw: Gateway, issuer: Issuer, who: str, *args: str):
    return gw.operator_cli(issuer.operator_token(gw.api_audience, f"{who}@example.com"), *args)


def search(gw: Gateway, token: str, session: str, query: str) -> dict:
    return gw.call_tool(token, session, "docs.search", {"query": query}).response()


def change_id(stdout: str) -> str:
    m = re.search(r"chg-[0-9a-f-]+", stdout)
    assert m, stdout
    return m.group(0)


def test_policy_change_needs_two_people_and_activation(env, issuer: Issuer, tmp_path: Path) -> None:
    gw, live = env
    token = issuer.mint(gw.audience, scope="docs.*")
    session = gw.initialize(token)
    assert "result" in search(gw, token, session, "blocked")

    # Editing the policy directory on disk has no effect under the gate.
    (live / "50-e2e.cedar").write_text(BLOCK_POLICY)
    time.sleep(2.5)
    assert "result" in search(gw, token, session, "blocked"), "a file edit bypassed the change gate"

    proposed = tmp_path / "proposed"
    shutil.copytree(live, proposed)
    r = ops(gw, issuer, "ann", "change", "propose-policy", "--dir", str(proposed), "--summary", "block a query")
    assert r.returncode == 0, r.stderr
    cid = change_id(r.stdout)
    assert "result" in search(gw, token, session, "blocked"), "a proposal took effect"

    # The proposer cannot approve their own change, nor activate it unapproved.
    r = ops(gw, issuer, "ann", "change", "approve", cid)
    assert r.returncode != 0 and "two-person" in r.stderr, r
    r = ops(gw, issuer, "ann", "change", "activate", cid)
    assert r.returncode != 0 and "approved" in r.stderr, r

    r = ops(gw, issuer, "ben", "change", "approve", cid, "--comment", "looks right")
    assert r.returncode == 0, r.stderr
    assert "result" in search(gw, token, session, "blocked"), "an approval without activation took effect"

    r = ops(gw, issuer, "ann", "change", "activate", cid)
    assert r.returncode == 0, r.stderr
    err = search(gw, token, session, "blocked")["error"]
    assert err["code"] == -32003, err
    row = gw.wait_audit("decision_id = ?", [err["data"]["decision_id"]])[0]
    assert "e2e-block" in row["policies"], row
    shown = gw.api("GET", f"/api/changes/{cid}", issuer.operator_token(gw.api_audience, "ann@example.com")).json()
    assert row["policy_hash"] == shown["payload_hash"]
    assert shown["status"] == "activated" and shown["reviewed_by"] == "ben@example.com"
    assert "result" in search(gw, token, session, "allowed query")

    # Every step is on the record, attributed.
    steps = [(r["tool"], r["sub"], r["effect"]) for r in gw.audit_rows("kind = 'control' AND detail LIKE ?", [f"%{cid}%"])]
    assert ("control/change.approve", "ann@example.com", "deny") in steps, steps
    assert ("control/change.approve", "ben@example.com", "allow") in steps, steps
    assert ("control/change.activate", "ann@example.com", "allow") in steps, steps


def test_an_invalid_policy_set_cannot_be_proposed(env, issuer: Issuer, tmp_path: Path) -> None:
    gw, live = env
    broken = tmp_path / "broken"
    shutil.copytree(live, broken)
    (broken / "60-broken.cedar").write_text("permit (principal, action, resource) when { context.nope };\n")
    r = ops(gw, issuer, "ann", "change", "propose-policy", "--dir", str(broken))
    assert r.returncode != 0 and "invalid" in r.stderr, r


def test_scope_ceiling_narrows_tokens_only_once_activated(env, issuer: Issuer) -> None:
    gw, _ = env
    agent = "agent-ceiling"
    token = issuer.mint(gw.audience, scope="docs.*", act={"sub": agent})
    session = gw.initialize(token)
    assert gw.call_tool(token, session, "docs.list_customers", {}).status == 200

    r = ops(gw, issuer, "ann", "change", "propose-ceiling", "--agent", agent, "--scope", "docs.search")
    assert r.returncode == 0, r.stderr
    cid = change_id(r.stdout)
    assert ops(gw, issuer, "ben", "change", "approve", cid).returncode == 0
    assert gw.call_tool(token, session, "docs.list_customers", {}).status == 200, "ceiling applied before activation"
    assert ops(gw, issuer, "ben", "change", "activate", cid).returncode == 0

    # Same token: now narrowed to the ceiling.
    refused = gw.call_tool(token, session, "docs.list_customers", {})
    assert refused.status == 403 and "insufficient_scope" in refused.headers.get("www-authenticate", ""), refused.text
    assert "result" in search(gw, token, session, "still fine")
