"""A PDP internal error yields deny, with an audit record, and the upstream
never sees the call.

Cedar skips a policy whose evaluation errors and decides on the rest, so an
erroring `forbid` would silently stop protecting. Mandate treats an error in
ANY policy as a deny of the call (fail closed). Here a policy overflows
64-bit arithmetic on every read call.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from e2e_support import POLICY_DIR, Gateway, Issuer, Launcher, mandate_bin, read_jsonl

ERRORING = """
// Overflows for any current time: evaluation fails on every read call.
@id("e2e-overflow")
@reason("never reached")
forbid (principal, action == Mandate::Action::"read", resource)
when { context.now * 100000000000000 > 0 };
"""


@pytest.fixture(scope="module")
def env(launcher: Launcher, issuer: Issuer) -> tuple[Gateway, Path]:
    policies = launcher.root / "erroring-policies"
    shutil.copytree(POLICY_DIR, policies, ignore=shutil.ignore_patterns("tests", "*.md"))
    (policies / "90-erroring.cedar").write_text(ERRORING)
    rec = launcher.root / "docs-calls.jsonl"
    gw = launcher.gateway(issuer, {
        "docs": {"command": str(mandate_bin()),
                 "args": ["demo-server", "--profile", "workspace", "--record", str(rec)],
                 "tools": {"search": "read"}},
    }, policy_dir=policies)
    return gw, rec


def test_an_evaluation_error_denies_and_is_audited(env, issuer: Issuer) -> None:
    gw, rec = env
    token = issuer.mint(gw.audience, scope="docs.search")
    session = gw.initialize(token)
    body = gw.call_tool(token, session, "docs.search", {"query": "pdp-error"}).response()
    err = body.get("error")
    assert err and err["code"] == -32003 and err["data"]["reason"] == "not_permitted", body
    # The agent learns nothing about policy internals.
    assert "overflow" not in err["message"] and "e2e-overflow" not in str(err), err
    row = gw.wait_audit("decision_id = ?", [err["data"]["decision_id"]])[0]
    assert row["effect"] == "deny", row
    assert "e2e-overflow" in row["reasons"] and "error" in row["reasons"], row
    assert not read_jsonl(rec), "the upstream received a call the PDP could not decide"
