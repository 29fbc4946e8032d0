"""`/metrics` as a scraper sees it, after real calls.

Threat: an operator blind to what the gateway does, or misled by it: a
denial, a hold or a slow phase that moves no series, a page Prometheus
cannot parse (checked with `promtool check metrics`, Debian's `prometheus`
package), or an OpenMetrics scrape answered in another format.

One gateway in front of the demo bank: an allowed `bank.get_balance`, a
denied `bank.close_account` (not classified: `tool_not_configured`) and a
`bank.transfer` held until an approver approves it through the API.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
import uuid

import pytest

from e2e_support import Gateway, Issuer, Launcher, RpcReply, mandate_bin

OPERATORS = """
[[operators]]
sub = "carol@example.com"
roles = ["approver"]

[approvals]
timeout_secs = 30
"""

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@pytest.fixture(scope="module")
def gw(launcher: Launcher, issuer: Issuer) -> Gateway:
    rec = launcher.root / "metrics-bank.jsonl"
    bank = {"command": str(mandate_bin()),
            "args": ["demo-server", "--profile", "bank", "--record", str(rec)],
            "timeout_secs": 10,
            # close_account is left unclassified: denied by default.
            "tools": {"get_balance": "read", "transfer": "financial"}}
    return launcher.gateway(issuer, {"bank": bank}, extra_toml=OPERATORS)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            labels = frozenset(LABEL.findall(m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(s: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sample `name` with exactly these labels (0 when absent: a series
    appears on its first observation)."""
    return s.get((name, frozenset(labels.items())), 0.0)


def scrape(gw: Gateway, accept: str | None = None) -> tuple[str, str]:
    r = gw._http.get(gw.public_url + "/metrics", headers={"Accept": accept} if accept else {})
    assert r.status_code == 200, r.text
    return r.headers["content-type"], r.text


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: apt-get install prometheus (scripts/test installs it)")
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"promtool check metrics failed ({r.returncode}):\n{r.stdout}{r.stderr}"


def approve_when_pending(gw: Gateway, issuer: Issuer, sid: str) -> None:
    op = issuer.operator_token(gw.api_audience, "carol@example.com")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = gw.api("GET", "/api/approvals?status=pending", op)
        assert r.status_code == 200, r.text
        mine = [a for a in r.json()["approvals"] if a["session"] == f"sid:{sid}" and a["waiting"]]
        if mine:
            a = mine[0]
            r = gw.api("POST", f"/api/approvals/{a['id']}/approve", op, {"args_hash": a["args_hash"]})
            assert r.status_code == 200, r.text
            return
        time.sleep(0.05)
    raise AssertionError("the transfer was never held")


def test_calls_move_the_series_and_promtool_accepts_the_page(gw: Gateway, issuer: Issuer) -> None:
    ctype, before_text = scrape(gw)
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    before = samples(before_text)

    sid = "metrics-" + uuid.uuid4().hex[:8]
    token = issuer.mint(gw.audience, scope="bank.*", sid=sid)
    session = gw.initialize(token)

    allowed = gw.call_tool(token, session, "bank.get_balance", {"account": "OPS-1"}).response()
    assert "result" in allowed and not allowed["result"].get("isError"), allowed
    denied = gw.call_tool(token, session, "bank.close_account", {"account": "OPS-1"}).error()
    assert denied["data"]["reason"] == "tool_not_configured", denied

    held: list[RpcReply] = []
    caller = threading.Thread(target=lambda: held.append(
        gw.call_tool(token, session, "bank.transfer", {"amount": 120, "to": "acc-bob", "memo": sid})))
    caller.start()
    approve_when_pending(gw, issuer, sid)
    caller.join(30)
    assert held and "result" in held[0].response(), held

    _, text = scrape(gw)
    promtool_check(text)
    after = samples(text)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    decisions = "mandate_decisions_total"
    assert moved(decisions, effect="allow", reason="permitted", tool="bank.get_balance") == 1, text
    assert moved(decisions, effect="deny", reason="tool_not_configured", tool="bank.close_account") == 1
    assert moved(decisions, effect="hold", reason="approval_required", tool="bank.transfer") == 1
    assert moved(decisions, effect="allow", reason="approved", tool="bank.transfer") == 1

    phase = "mandate_phase_duration_seconds_count"
    for p in ("authenticate", "decide", "record", "forward", "sanitise"):
        assert moved(phase, phase=p, tool="bank.get_balance") == 1, (p, text)
    # A denied call is decided and recorded, never forwarded.
    assert moved(phase, phase="decide", tool="bank.close_account") == 1
    assert moved(phase, phase="record", tool="bank.close_account") == 1
    assert moved(phase, phase="forward", tool="bank.close_account") == 0
    assert moved(phase, phase="hold", tool="bank.transfer") == 1
    assert moved(phase, phase="forward", tool="bank.transfer") == 1
    # Every observation falls in the +Inf bucket; the sum is a duration.
    inf = value(after, "mandate_phase_duration_seconds_bucket", le="+Inf", phase="forward", tool="bank.get_balance")
    assert inf == value(after, phase, phase="forward", tool="bank.get_balance")
    assert value(after, "mandate_phase_duration_seconds_sum", phase="hold", tool="bank.transfer") > 0

    assert moved("mandate_approval_wait_seconds_count", outcome="approved") == 1
    assert value(after, "mandate_approvals_pending") == 0

    # Five records at least (allow, deny, hold, release, and outcomes),
    # each in a timed commit; nothing left waiting for the writer.
    assert moved("mandate_audit_appended_total") >= 5
    assert moved("mandate_audit_commit_seconds_count") >= 1
    assert value(after, "mandate_audit_commits_total") == value(after, "mandate_audit_commit_seconds_count")
    assert value(after, "mandate_audit_up") == 1
    assert ("mandate_audit_queue_depth", frozenset()) in after
    assert value(after, "mandate_sessions_open") >= 1
    assert value(after, "mandate_connections_open") >= 1
    assert moved("mandate_connections_accepted_total") >= 3


def test_openmetrics_when_the_scraper_asks_for_it(gw: Gateway) -> None:
    # What Prometheus itself sends.
    accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
    ctype, text = scrape(gw, accept)
    assert ctype.startswith("application/openmetrics-text; version=1.0.0"), ctype
    assert text.endswith("# EOF\n"), text[-200:]
    # Counter families are named without `_total`; their samples keep it.
    assert "# TYPE mandate_auth_failures counter" in text, text
    assert re.search(r"^mandate_auth_failures_total \d", text, re.M), text
    assert "# UNIT mandate_audit_commit_seconds seconds" in text, text
    # The plain scrape has no EOF marker.
    _, plain = scrape(gw, "text/plain")
    assert "# EOF" not in plain


def test_promtool_rejects_a_counter_without_total() -> None:
    """promtool itself must reject what the gateway must never produce
    (else the check above proves nothing)."""
    bad = "# HELP mandate_x x\n# TYPE mandate_x counter\nmandate_x 1\n"
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: apt-get install prometheus")
    r = subprocess.run([promtool, "check", "metrics"], input=bad, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "_total" in (r.stdout + r.stderr), r

