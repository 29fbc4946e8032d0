"""Policy hot reload while calls flow: a broken policy set is refused and
the last good set keeps deciding every call.

Three kinds of breakage, each refused with a clear message in the log and
counted in `mandate_policy_reload_failures_total`: a syntax error, a schema
violation, and a policy referencing an attribute the schema does not declare.
A valid change is then picked up without a restart.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from e2e_support import POLICY_DIR, Gateway, Issuer, Launcher, mandate_bin

BROKEN = {
    "syntax error": ("70-broken.cedar", "permit (principal, action, resource) when { context.in_scope && };\n",
                     "70-broken.cedar"),
    # Compares the schema's Long `amount` with a String.
    "schema violation": ("71-broken.cedar",
                         'forbid (principal, action == Mandate::Action::"financial", resource)\n'
                         'when { context.args has amount && context.args.amount == "lots" };\n',
                         "71-broken.cedar:2:"),
    "unknown attribute": ("72-broken.cedar",
                          'permit (principal, action == Mandate::Action::"read", resource) when { context.no_such_field };\n',
                          "no_such_field"),
}

# Valid: read calls for this query are forbidden once loaded.
VALID = """
@id("e2e-reload-forbid")
@reason("forbidden by the reloaded policy set")
forbid (principal, action == Mandate::Action::"read", resource)
when { context.args has query && context.args.query == "reload-target" };
"""


@pytest.fixture(scope="module")
def env(launcher: Launcher, issuer: Issuer) -> tuple[Gateway, Path]:
    live = launcher.root / "live-policies"
    shutil.copytree(POLICY_DIR, live, ignore=shutil.ignore_patterns("tests", "*.md"))
    gw = launcher.gateway(issuer, {
        "docs": {"command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace"],
                 "tools": {"search": "read"}},
    }, policy_dir=live)
    return gw, live


def reload_failures(gw: Gateway) -> float:
    m = re.search(r"^mandate_policy_reload_failures_total (\S+)$", gw.get("/metrics").text, re.M)
    assert m, "metric missing"
    return float(m.group(1))


def policy_hashes(gw: Gateway, since_seq: int) -> set[str]:
    return {r["policy_hash"] for r in gw.audit_rows("seq > ? AND kind = 'decision'", [since_seq])}


def last_seq(gw: Gateway) -> int:
    rows = gw.audit_rows()
    return rows[-1]["seq"] if rows else 0


@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_broken_set_is_refused_while_calls_flow(env, issuer: Issuer, kind: str) -> None:
    gw, live = env
    name, text, must_mention = BROKEN[kind]
    token = issuer.mint(gw.audience, scope="docs.search")
    session = gw.initialize(token)
    failures_before = reload_failures(gw)
    seq_before = last_seq(gw)
    good_hash = gw.audit_rows()[-1]["policy_hash"] if seq_before else None

    results: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            reply = gw.call_tool(token, session, "docs.search", {"query": f"flow-{kind}-{i}"}, rid=100 + i)
            body = reply.response() if reply.status == 200 else {"error": {"code": reply.status}}
            results.append("ok" if "result" in body else f"error {body['error']}")
            i += 1
            time.sleep(0.05)

    t = threading.Thread(target=traffic)
    t.start()
    try:
        time.sleep(0.5)
        (live / name).write_text(text)
        deadline = time.monotonic() + 10
        while reload_failures(gw) <= failures_before and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        t.join()
        (live / name).unlink()

    assert reload_failures(gw) > failures_before, f"{kind}: the broken set was not refused"
    assert results and all(r == "ok" for r in results), f"{kind}: calls failed during the reload: {results}"
    log = gw.proc.stderr()
    assert "policy reload refused" in log and must_mention in log, log[-2000:]
    # Every call was decided by the last good set.
    hashes = policy_hashes(gw, seq_before)
    assert len(hashes) == 1 and (good_hash is None or hashes == {good_hash}), hashes


def test_a_valid_change_is_picked_up_without_restart(env, issuer: Issuer) -> None:
    gw, live = env
    token = issuer.mint(gw.audience, scope="docs.search")
    session = gw.initialize(token)
    assert "result" in gw.call_tool(token, session, "docs.search", {"query": "reload-target"}).response()
    (live / "80-valid.cedar").write_text(VALID)
    try:
        deadline = time.monotonic() + 10
        while True:
            body = gw.call_tool(token, session, "docs.search", {"query": "reload-target"}).response()
            if "error" in body or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert body.get("error", {}).get("code") == -32003, body
        row = gw.wait_audit("decision_id = ?", [body["error"]["data"]["decision_id"]])[0]
        assert "e2e-reload-forbid" in row["policies"], row
    finally:
        (live / "80-valid.cedar").unlink()


SUSPENDED = """
@id("e2e-suspended-group")
@reason("members of the suspended group may not read")
forbid (principal, action == Mandate::Action::"read", resource)
when { context.user in Mandate::Group::"suspended" };
"""


def test_sighup_applies_groups_and_names_what_needs_a_restart(launcher: Launcher, issuer: Issuer) -> None:
    """SIGHUP re-reads mandate.toml: a new group membership decides the next
    call (after its audit record); a changed setting that needs a restart is
    named in the log and keeps its running value; a file that does not parse
    changes nothing."""
    live = launcher.root / "policies-sighup"
    shutil.copytree(POLICY_DIR, live, ignore=shutil.ignore_patterns("tests", "*.md"))
    (live / "60-suspended.cedar").write_text(SUSPENDED)
    gw = launcher.gateway(issuer, {"docs": {
        "command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace"],
        "tools": {"search": "read"}}}, policy_dir=live, name="sighup",
        extra_toml='\n[policy.groups]\nsuspended = ["nobody@example.com"]\n\n[approvals]\ntimeout_secs = 60\n')
    carol = issuer.mint(gw.audience, scope="docs.*", sub="carol@example.com")
    session = gw.initialize(carol)

    def search() -> dict:
        return gw.call_tool(carol, session, "docs.search", {"query": "q"}).response()

    def hup_and_wait(line: str) -> None:
        seen = gw.proc.stderr().count(line)
        os.kill(gw.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while gw.proc.stderr().count(line) == seen:
            assert time.monotonic() < deadline, f"no {line!r} after SIGHUP: {gw.proc.stderr()[-1500:]}"
            time.sleep(0.05)

    assert "result" in search()
    text = gw.config.read_text()
    gw.config.write_text(text.replace('suspended = ["nobody@example.com"]', 'suspended = ["carol@example.com"]')
                         .replace("timeout_secs = 60", "timeout_secs = 5"))
    hup_and_wait("SIGHUP: configuration reloaded")
    log = gw.proc.stderr()
    assert "need a restart" in log and "approvals.timeout_secs" in log, log[-1500:]
    err = search()["error"]
    assert err["code"] == -32003, err
    row = gw.wait_audit("decision_id = ?", [err["data"]["decision_id"]])[0]
    assert "e2e-suspended-group" in row["policies"], row
    reloads = gw.audit_rows("tool = 'control/config.reload'")
    assert reloads and "policy.groups" in reloads[-1]["detail"], reloads

    # A broken file: nothing changes, and the log says so.
    gw.config.write_text(text + "\n[[[ not toml\n")
    hup_and_wait("SIGHUP: configuration not reloaded")
    assert "error" in search(), "a broken file undid the running configuration"
    assert gw.proc.alive()
