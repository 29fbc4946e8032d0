"""The soak (`scripts/soak`, docs/BENCHMARKS.md "Soak") kept working: a
15-second run with four agent sessions, an approver and a few idle and
slow-header connections. Nothing here is timed; the test checks the soak's
end invariants, which are the point of a soak: every call the agents saw
is on the audit record exactly as the audit format says (no record lost,
none extra, even for calls answered before their outcome record was
written), the upstreams received exactly the forwarded calls, and the
chain verifies."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from e2e_support import REPO_ROOT

SOAK = REPO_ROOT / "tests" / "soak" / "soak.py"


def test_a_short_soak_leaves_every_call_on_the_record_and_the_log_verifies(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    r = subprocess.run(
        [sys.executable, str(SOAK), "--duration", "15", "--sessions", "4", "--think-ms", "150",
         "--interval", "2", "--warmup", "4", "--idle", "20", "--slow", "5", "--no-plot", "--out", str(out)],
        capture_output=True, text=True, timeout=100, stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, f"soak failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    s = json.loads((out / "summary.json").read_text())
    audit = s["audit"]
    assert s["ok"] and not s["problems"], s["problems"]
    assert audit["records"] == audit["expected"], audit
    assert audit["call_outcomes"] == audit["forwarded_acknowledged"] == audit["upstream_received"], audit
    assert audit["verify_exit"] == 0, audit["verify_stdout"]
    # Every kind of call happened, so the expected count exercised each term.
    assert s["allowed"] > 0 and s["denied"] > 0, s
    assert s["held_released"] + s["held_denied"] > 0, s
    assert s["errors"] == 0, s["error_samples"]
    rows = list(csv.DictReader(open(out / "soak.csv")))
    assert len(rows) >= 5, rows
    assert all(float(row["rss_mib"]) > 0 and int(row["fds"]) > 0 for row in rows), rows
    assert any(row["p99_ms"] for row in rows), rows
