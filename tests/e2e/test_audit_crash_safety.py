"""Write-ahead audit survives a crash: calls are sent under load, the gateway
is killed with SIGKILL mid-flight and restarted on the same data directory.
Every call the upstream received must have its durable decision record
(matched by the correlation id the upstream saw), and `mandate audit verify`
must pass: chain, Merkle tree and every signed checkpoint.

The upstream is a separate process (Mandate's demo server over HTTP, with
`--record`), so it outlives the gateway and its record of received calls is
the independent witness.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx

from e2e_support import Issuer, Launcher, free_port, mandate_bin, read_jsonl

CORRELATION = "io.mandate/correlation_id"


def start_upstream(launcher: Launcher, record: Path) -> str:
    port = free_port()
    launcher.spawn([str(mandate_bin()), "demo-server", "--profile", "workspace", "--record", str(record),
                    "--http", f"127.0.0.1:{port}"], "upstream")
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return url
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("demo upstream did not start")


def decision_correlations(db: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT correlation_id FROM audit_log WHERE kind = 'decision' AND effect = 'allow'")
        return {r[0] for r in rows}
    finally:
        conn.close()


def test_sigkill_under_load_loses_no_decision_record(fresh_launcher: Launcher, issuer: Issuer) -> None:
    rec = fresh_launcher.root / "upstream-calls.jsonl"
    url = start_upstream(fresh_launcher, rec)
    upstreams = {"docs": {"url": url, "timeout_secs": 10, "tools": {"search": "read"}}}
    # Checkpoints every second, so the crash lands between signed ones.
    extra = "\n[audit]\ncheckpoint_interval_secs = 1\n"
    gw = fresh_launcher.gateway(issuer, upstreams, extra_toml=extra)
    tok = issuer.mint(gw.audience, scope="docs.search")
    session = gw.initialize(tok)

    stop = threading.Event()
    sent = [0]
    answered = [0]

    def worker(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = gw.call_tool(tok, session, "docs.search", {"query": f"w{n}-{i}"}, rid=i)
                sent[0] += 1
                if r.status == 200:
                    answered[0] += 1
            except (httpx.HTTPError, AssertionError, ValueError):
                sent[0] += 1  # the gateway died under this call

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(8)]
    for t in threads:
        t.start()
    # Let load build up and at least one periodic checkpoint be signed.
    deadline = time.monotonic() + 60
    while answered[0] < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.2)
    os.kill(gw.proc.pid, signal.SIGKILL)
    gw.proc.popen.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert answered[0] >= 30, f"only {answered[0]} calls answered before the kill"

    received = read_jsonl(rec)
    assert received, "the upstream received nothing"
    seen = [(c.get("_meta") or {}).get(CORRELATION) for c in received]
    assert all(seen), "a forwarded call carried no correlation id"

    # Restart on the same data directory: the log opens, resumes its chain
    # and Merkle tree from what is on disk.
    gw2 = fresh_launcher.gateway(issuer, upstreams, data_dir=gw.data_dir, extra_toml=extra, name="restarted")
    tok2 = issuer.mint(gw2.audience, scope="docs.search")
    after = gw2.call_tool(tok2, gw2.initialize(tok2), "docs.search", {"query": "after restart"}, rid=1)
    assert after.status == 200 and "result" in after.response(1), after.text

    recorded = decision_correlations(gw2.audit_db)
    missing = [c for c in seen if c not in recorded]
    assert not missing, f"{len(missing)} of {len(seen)} forwarded calls have no decision record: {missing[:5]}"

    gw2.proc.stop()
    verify = gw2.cli("audit", "verify", "--data-dir", str(gw2.data_dir))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "verified" in verify.stdout and "with the log's public key" in verify.stdout, verify.stdout
