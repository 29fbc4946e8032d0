"""The audit plane as an investigator and a regulator use it: a session's
timeline (CLI, `/api/audit/sessions/{id}`, and the replay page in Chromium),
an evidence bundle verified offline with only its files and the log's public
key (and refused once tampered with), argument redaction, and a signed
checkpoint on demand."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from e2e_support import Gateway, Issuer, Launcher, mandate_bin, run_mandate

PASSWORD = "erin-" + uuid.uuid4().hex[:12]


def hash_password(password: str) -> str:
    r = subprocess.run([str(mandate_bin()), "approvals", "hash-password", "--iterations", "100000"],
                       input=password + "\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


class Env:
    def __init__(self, gw: Gateway, sid: str, other_sid: str) -> None:
        self.gw, self.sid, self.other_sid = gw, sid, other_sid


@pytest.fixture(scope="module")
def env(launcher: Launcher, issuer: Issuer) -> Env:
    exe = str(mandate_bin())
    extra = f"""
[[operators]]
sub = "erin@example.com"
issuer = "local"
roles = ["approver"]

[[operators]]
sub = "ops@example.com"
roles = ["admin"]

[approvals.web]
session_idle_secs = 600

[[approvals.web.local_accounts]]
sub = "erin@example.com"
password_hash = "{hash_password(PASSWORD)}"

[audit]
checkpoint_interval_secs = 0

[audit.redaction]
default = "redact"
[audit.redaction.tools]
"docs.search" = {{ default = "full", fields = {{ body = "hash", to = "redact" }} }}
"""
    gw = launcher.gateway(issuer, {
        "docs": {"command": exe, "args": ["demo-server", "--profile", "workspace"], "timeout_secs": 10,
                 "tools": {"search": "read", "send_mail": "outbound", "list_customers": "read"}},
    }, extra_toml=extra, name="evidence")
    sid = "inv-" + uuid.uuid4().hex[:8]
    tok = issuer.mint(gw.audience, scope="docs.search docs.list_customers", sid=sid)
    session = gw.initialize(tok)
    for i, (tool, args) in enumerate([
        ("docs.search", {"query": "quarterly report"}),
        ("docs.list_customers", {}),
        ("docs.send_mail", {"to": "x@evil.example", "subject": "hi", "body": "secret body"}),  # out of scope
        ("docs.search", {"query": "second", "to": "x@evil.example", "body": "secret body"}),
    ]):
        gw.call_tool(tok, session, tool, args, rid=i + 1)
    other = "other-" + uuid.uuid4().hex[:8]
    tok2 = issuer.mint(gw.audience, scope="docs.search", sid=other)
    gw.call_tool(tok2, gw.initialize(tok2), "docs.search", {"query": "not yours"}, rid=1)
    # Outcomes are written in order, after the responses: the other
    # session's one comes last.
    gw.wait_audit("session = ? AND kind = 'outcome'", [f"sid:{other}"])
    return Env(gw, sid, other)


def ops(env: Env, issuer: Issuer) -> str:
    return issuer.operator_token(env.gw.api_audience, "ops@example.com")


def test_cli_replay_rebuilds_the_timeline(env: Env) -> None:
    r = run_mandate("audit", "replay", "--data-dir", str(env.gw.data_dir), "--session", f"sid:{env.sid}")
    assert r.returncode == 0, r.stderr
    steps = [json.loads(line) for line in r.stdout.splitlines()]
    assert [s["seq"] for s in steps] == sorted(s["seq"] for s in steps)
    # Calls in order; each call's decision before its outcome (an outcome
    # is written after the response, so it may follow the next decision).
    calls: dict[str, list[dict[str, Any]]] = {}
    for s in steps:
        calls.setdefault(s["correlation_id"], []).append(s)
    summary = [(c[0]["tool"], [s["step"] for s in c], c[0]["effect"]) for c in calls.values()]
    assert summary[:3] == [
        ("docs.search", ["decided", "outcome"], "allow"),
        ("docs.list_customers", ["decided", "outcome"], "allow"),
        ("docs.send_mail", ["decided"], "deny"),
    ], steps
    assert len(summary) == 4 and summary[3][0] == "docs.search", summary
    first, first_outcome = list(calls.values())[0]
    assert first["subject"]["sub"] and first["subject"]["act"] and first["subject"]["session"] == f"sid:{env.sid}"
    assert first_outcome["outcome"] == "ok" and first_outcome["decision_id"] == first["decision_id"]
    listing = list(calls.values())[1]
    mail = list(calls.values())[2][0]
    assert "scope" in " ".join(mail["reasons"])
    assert "taint" in listing[1] and listing[1]["outcome"] == "ok", listing
    # Redaction: search arguments in full, except `to` (redacted) and
    # `body` (hashed: checkable against a disclosed body); the hash of the
    # complete arguments always stays.
    assert first["args"] == {"query": "quarterly report"}
    extra = list(calls.values())[3][0]
    assert extra["args"]["query"] == "second"
    assert extra["args"]["to"] == "[redacted]"
    assert extra["args"]["body"] == {"sha256": hashlib.sha256(b'"secret body"').hexdigest()}
    assert "secret body" not in r.stdout and "x@evil.example" not in r.stdout
    canonical = json.dumps({"body": "secret body", "query": "second", "to": "x@evil.example"},
                           separators=(",", ":"), sort_keys=True)
    assert extra["args_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert listing[0]["args"] is None  # list_customers: not listed, default redact
    # A call refused at the HTTP layer (outside the token's scope) keeps its
    # argument hash too, and its values follow the same redaction rules.
    refused = json.dumps({"body": "secret body", "subject": "hi", "to": "x@evil.example"},
                         separators=(",", ":"), sort_keys=True)
    assert mail["args_hash"] == hashlib.sha256(refused.encode()).hexdigest(), mail
    assert mail["args"] is None, mail


def test_api_serves_the_timeline_to_operators_only(env: Env, issuer: Issuer) -> None:
    r = env.gw.api("GET", f"/api/audit/sessions/sid:{env.sid}", ops(env, issuer))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["calls"] == 4 and body["records"] in (6, 7), body
    assert body["subject"]["session"] == f"sid:{env.sid}"
    assert all(e["subject"]["session"] == f"sid:{env.sid}" for e in body["timeline"])
    # An agent's token is not an operator's.
    agent = issuer.mint(env.gw.api_audience, scope="docs.search")
    assert env.gw.api("GET", f"/api/audit/sessions/sid:{env.sid}", agent).status_code == 403
    assert env.gw.api("GET", f"/api/audit/sessions/sid:{env.sid}", None).status_code == 401
    # The read itself is on the record.
    rows = env.gw.audit_rows("kind = 'control' AND tool = 'control/audit.read_session' AND sub = 'ops@example.com'")
    assert rows and f"sid:{env.sid}" in rows[-1]["detail"], rows


def test_checkpoint_on_demand_is_signed(env: Env, issuer: Issuer) -> None:
    r = env.gw.api("POST", "/api/audit/checkpoint", ops(env, issuer))
    assert r.status_code == 200, r.text
    cp = r.json()["checkpoint"]
    lines = cp["note"].split("\n")
    assert lines[1] == str(cp["size"]) and lines[3] == "" and lines[4].startswith("\u2014 "), cp["note"]
    listed = env.gw.api("GET", "/api/audit/checkpoints", ops(env, issuer)).json()["checkpoints"]
    assert listed[-1]["size"] == cp["size"]


@pytest.fixture(scope="module")
def bundle(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "evidence"
    r = run_mandate("audit", "export", "--data-dir", str(env.gw.data_dir), "--from", "2020-01-01",
                    "--session", f"sid:{env.sid}", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def test_bundle_verifies_offline_with_only_its_files(env: Env, bundle: Path, tmp_path: Path) -> None:
    names = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert {"records.jsonl", "proofs.json", "log.pub", "report.html", "manifest.json"} <= set(names), names
    assert any(n.startswith("checkpoints/") for n in names)
    lines = (bundle / "records.jsonl").read_text().splitlines()
    assert len(lines) in (6, 7)
    # Moved elsewhere, away from the data directory: only the bundle and the key.
    copy = tmp_path / "elsewhere"
    shutil.copytree(bundle, copy)
    key = env.gw.data_dir / "audit-checkpoint.key.pub"
    r = run_mandate("audit", "verify", "--bundle", str(copy), "--key", str(key))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"verified: {len(lines)} records" in r.stdout, r.stdout
    # Without a key from elsewhere a bundle proves nothing: refused.
    bare = run_mandate("audit", "verify", "--bundle", str(copy))
    assert bare.returncode != 0 and "--key" in bare.stdout + bare.stderr, bare.stdout + bare.stderr
    html = (bundle / "report.html").read_text()
    assert "Art. 12" in html and "SP 800-207" in html and f"sid:{env.sid}" in html
    assert "<script" not in html


@pytest.mark.parametrize("label", ["edit a record", "drop a record", "swap the key"])
def test_tampered_bundle_is_refused(env: Env, issuer: Issuer, bundle: Path, tmp_path: Path, label: str) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(bundle, copy)
    key = env.gw.data_dir / "audit-checkpoint.key.pub"
    records = copy / "records.jsonl"
    lines = records.read_text().splitlines()
    if label == "edit a record":
        i = next(i for i, line in enumerate(lines) if '"deny"' in json.loads(line)["body"])
        rec: dict[str, Any] = json.loads(lines[i])
        rec["body"] = rec["body"].replace('"deny"', '"allow"')
        lines[i] = json.dumps(rec)
        expect_text = f"record {rec['seq']}"
    elif label == "drop a record":
        del lines[2]
        expect_text = "records.jsonl"
    else:
        # Another log's key, put in the bundle in place of the real one.
        made = run_mandate("audit", "checkpoint", "--data-dir", str(tmp_path))
        assert made.returncode == 0, made.stderr
        (copy / "log.pub").write_text((tmp_path / "audit-checkpoint.key.pub").read_text())
        expect_text = "log.pub"
    records.write_text("\n".join(lines) + "\n")
    r = run_mandate("audit", "verify", "--bundle", str(copy), "--key", str(key))
    assert r.returncode != 0, f"{label} went undetected: {r.stdout}"
    assert expect_text in r.stdout, r.stdout


def test_replay_page_shows_the_session_to_a_signed_in_operator(env: Env, browser: Browser) -> None:
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
    ctx.set_default_timeout(15_000)
    try:
        page = ctx.new_page()
        # Signed out: the page says to sign in, and the data endpoint refuses.
        page.goto(env.gw.public_url + f"/approvals/audit?session=sid:{env.sid}")
        expect(page.locator("#login-view")).to_be_visible()
        assert env.gw.get(f"/approvals/audit/sessions/sid:{env.sid}").status_code == 401
        # Sign in on the approvals page, come back.
        page.goto(env.gw.public_url + "/approvals")
        page.fill("#login-account", "erin@example.com")
        page.fill("#login-password", PASSWORD)
        page.click("#login-submit")
        expect(page.locator("#whoami-sub")).to_have_text("erin@example.com")
        page.goto(env.gw.public_url + f"/approvals/audit?session=sid:{env.sid}")
        expect(page.locator("#r-session")).to_have_text(f"sid:{env.sid}")
        rows = page.locator("#timeline-body tr")
        expect(rows.first).to_be_visible()
        expect(page.locator("#timeline-body tr", has_text="docs.send_mail")).to_contain_text("deny")
        expect(page.locator("#timeline-body tr.step-outcome").first).to_be_visible()
        expect(page.locator("#r-subject")).to_contain_text("Agent chain")
        # Another session, by the form.
        page.fill("#session-id", f"sid:{env.other_sid}")
        page.click("#session-load")
        expect(page.locator("#r-session")).to_have_text(f"sid:{env.other_sid}")
        expect(page.locator("#timeline-body tr")).to_have_count(2)
    finally:
        ctx.close()
    rows = env.gw.audit_rows("kind = 'control' AND tool = 'control/audit.read_session' AND sub = 'erin@example.com'")
    assert len(rows) >= 2, rows
