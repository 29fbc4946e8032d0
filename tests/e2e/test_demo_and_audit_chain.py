"""`mandate demo` runs the whole story end to end and its audit log verifies;
any edit, deletion or reordering of that log is detected."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from e2e_support import run_mandate


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("demo") / "data"
    r = run_mandate("demo", "--data-dir", str(data), timeout=180)
    return data, r


def test_demo_gets_every_expected_decision(demo) -> None:
    _, r = demo
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "expected" in r.stdout and "got" in r.stdout, out
    assert "✗" not in r.stdout, out
    assert "Every call got the decision" in r.stdout, out
    # The human-in-the-loop story: a held exfiltration denied, a held payment approved and completed.
    assert "DENIED   docs.send_mail" in r.stdout and "APPROVED bank.transfer" in r.stdout, out
    # The address the injected text named is refused without asking anyone
    # (it came only from an untrusted result): one send_mail prompt, not two.
    assert r.stdout.count("DENIED   docs.send_mail") == 1, out
    assert "drop@evil.example" not in r.stdout.split("decided, on the approval API:")[1], out
    assert "transferred 1200 EUR to SUPPLIER-7" in r.stdout, out


def test_demo_audit_log_verifies(demo) -> None:
    data, _ = demo
    r = run_mandate("audit", "verify", "--data-dir", str(data))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verified" in r.stdout, r.stdout


def test_demo_session_replays_in_order(demo) -> None:
    data, _ = demo
    r = run_mandate("audit", "replay", "--data-dir", str(data), "--session", "sid:sess-alice-1")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert lines, "no records for alice's session"
    seqs = [ln["seq"] for ln in lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    effects = {ln["record"]["decision"]["effect"] for ln in lines}
    assert "allow" in effects and "deny" in effects, effects
    for ln in lines:
        assert ln["record"]["subject"]["sub"] and ln["record"]["subject"]["act"], ln
        assert ln["record"]["correlation_id"], ln


def tampered_copy(data: Path, tmp_path: Path, sql: list[str]) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    conn = sqlite3.connect(copy / "audit.sqlite")
    try:
        for stmt in ["DROP TRIGGER IF EXISTS audit_log_no_update", "DROP TRIGGER IF EXISTS audit_log_no_delete",
                     "DROP TRIGGER IF EXISTS audit_log_extend_chain", *sql]:
            conn.execute(stmt)
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return copy


@pytest.mark.parametrize("label,sql", [
    ("edit a decision's effect", ["UPDATE audit_log SET body = replace(body, '\"deny\"', '\"allow\"'), "
                                  "effect = 'allow' WHERE seq = (SELECT MIN(seq) FROM audit_log WHERE effect = 'deny')"]),
    ("edit only the query column", ["UPDATE audit_log SET sub = 'nobody@example.com' WHERE seq = 2"]),
    ("delete a record", ["DELETE FROM audit_log WHERE seq = 2"]),
    # The demo signs a checkpoint at its end: a truncated tail is visible.
    ("truncate the tail", ["DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)"]),
    ("swap two records", ["UPDATE audit_log SET seq = 1000000 WHERE seq = 2", "UPDATE audit_log SET seq = 2 WHERE seq = 3",
                          "UPDATE audit_log SET seq = 3 WHERE seq = 1000000"]),
])
def test_tampering_with_the_audit_log_is_detected(demo, tmp_path: Path, label: str, sql: list[str]) -> None:
    data, r = demo
    assert r.returncode == 0
    copy = tampered_copy(data, tmp_path, sql)
    v = run_mandate("audit", "verify", "--data-dir", str(copy))
    assert v.returncode != 0, f"{label} went undetected: {v.stdout}{v.stderr}"
