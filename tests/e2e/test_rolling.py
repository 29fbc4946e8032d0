"""Rolling restarts and crashes under load (issue #20): three `mandate
serve` replicas sharing one control store and one audit log on
PostgreSQL, behind HAProxy run with the shipped `deploy/haproxy/haproxy.cfg`
(checks on /readyz, connection failures retried on another replica).

- a rolling restart of all three replicas (SIGTERM to each in turn, as a
  process manager sends it, then a new process on the same port) while
  stateless clients call through the balancer: no call fails, every call
  acknowledged has its decision record, and `mandate audit verify` passes
  over the log the six processes wrote;
- `kill -9` of a replica under load while it holds a call for approval:
  the calls in flight on the killed replica are the only ones lost, every
  acknowledged call has its decision record, the held call is never
  forwarded (not even once its request is approved on another replica),
  a held request nobody decides leaves the approvers' queue by itself
  (withdrawn: no process renews its mark), and `audit verify` passes.

Each run gets PostgreSQL schemas of its own (MANDATE_TEST_POSTGRES_URL,
default postgres://postgres@127.0.0.1:5432/test; `skip` skips this file),
dropped at the end. HAProxy is Debian's `haproxy` package.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e_support import MCP_ACCEPT, POLICY_DIR, Gateway, Issuer, Launcher, free_port, wait_for_balancer
from test_approvals import HeldCall, bank, pending_for

PG_URL = os.environ.get("MANDATE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
pytestmark = pytest.mark.skipif(PG_URL == "skip", reason="MANDATE_TEST_POSTGRES_URL=skip")

HAPROXY_CFG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
STATELESS = "2026-07-28"
OPERATORS = """
[[operators]]
sub = "secops@example.com"
roles = ["admin", "approver"]
"""


def psql(sql: str) -> str:
    r = subprocess.run(["psql", PG_URL, "-tAq", "-c", sql], check=False, capture_output=True, text=True,
                       timeout=30)
    return r.stdout.strip()


@dataclass
class Fleet:
    launcher: Launcher
    issuer: Issuer
    replicas: list[Gateway]
    lb_url: str
    audit_schema: str
    # What each replica's bank server executed (one file per replica: the
    # servers of several replicas would interleave their lines in one).
    recs: list[Path]
    extra_toml: str
    ports: list[int]
    policies: Path

    @property
    def audience(self) -> str:
        return self.lb_url + "/mcp"

    def restart(self, i: int) -> Gateway:
        """A (new) process for replica `i`, on its port and configuration."""
        gw = self.launcher.gateway(
            self.issuer, {"bank": bank(self.recs[i])}, extra_toml=self.extra_toml, name=f"rolling-{i}",
            public_url=self.lb_url, port=self.ports[i], policy_dir=self.policies)
        if i < len(self.replicas):
            self.replicas[i] = gw
        else:
            self.replicas.append(gw)
        return gw

    def executed(self, needle: str) -> bool:
        """Whether any replica's bank server received a call naming `needle`."""
        return any(needle in p.read_text(errors="replace") for p in self.recs if p.exists())

    def decision_ids(self) -> set[str]:
        rows = psql(f"SELECT correlation_id FROM {self.audit_schema}.audit_log WHERE kind = 'decision'")
        return set(rows.split())


def start_fleet(launcher: Launcher, issuer: Issuer, drain_delay_ms: int) -> Fleet:
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed (sudo apt-get install haproxy); scripts/test installs it")
    tag = uuid.uuid4().hex[:8]
    control_schema, audit_schema = f"e2e_roll_ctl_{tag}", f"e2e_roll_aud_{tag}"
    launcher.cleanups.append(lambda: psql(f"DROP SCHEMA IF EXISTS {control_schema} CASCADE; "
                                          f"DROP SCHEMA IF EXISTS {audit_schema} CASCADE"))
    lb = free_port()
    lb_url = f"http://127.0.0.1:{lb}"
    recs = [launcher.root / f"bank-rolling-{tag}-{i}.jsonl" for i in range(3)]
    extra = (OPERATORS
             + f"\n[limits]\ndrain_delay_ms = {drain_delay_ms}\n"
             + f'\n[control]\nstore = "{PG_URL}"\nschema = "{control_schema}"\npoll_ms = 200\n'
             + f'\n[audit]\nstore = "{PG_URL}"\nschema = "{audit_schema}"\n'
             # One checkpoint key for every replica (docs/DEPLOY.md).
             + f'checkpoint_key = "{launcher.root / f"rolling-checkpoint-{tag}.key"}"\n'
             + "\n[approvals]\ntimeout_secs = 60\n")
    ports = [free_port() for _ in range(3)]
    # The quickstart policies without their budgets: the load makes more
    # calls than a session's or a task's budget allows.
    policies = launcher.root / f"rolling-policies-{tag}"
    shutil.copytree(POLICY_DIR, policies, ignore=shutil.ignore_patterns("tests", "*.md", "40-limits.cedar"))
    fleet = Fleet(launcher, issuer, [], lb_url, audit_schema, recs, extra, ports, policies)
    for i in range(3):
        fleet.restart(i)
    env = {"LB_BIND": f"127.0.0.1:{lb}",
           **{f"MANDATE_{i + 1}": f"127.0.0.1:{p}" for i, p in enumerate(ports)}}
    check = subprocess.run(["haproxy", "-c", "-f", str(HAPROXY_CFG)], env={**os.environ, **env},
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    launcher.spawn(["haproxy", "-f", str(HAPROXY_CFG), "-db"], f"haproxy-rolling-{tag}", env=env)
    # In rotation: `rise 2` checks a second apart for each replica.
    wait_for_balancer(lb_url, settle=3)
    return fleet


def stateless_call(client: httpx.Client, url: str, token: str, rid: int) -> httpx.Response:
    """One tools/call of the stateless revision: no handshake, no session."""
    body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call",
            "params": {"name": "bank.get_balance", "arguments": {"account": "ops"},
                       "_meta": {"io.modelcontextprotocol/protocolVersion": STATELESS,
                                 "io.modelcontextprotocol/clientInfo": {"name": "rolling-e2e", "version": "1"},
                                 "io.modelcontextprotocol/clientCapabilities": {}}}}
    return client.post(url, content=json.dumps(body).encode(),
                       headers={"Accept": MCP_ACCEPT, "Content-Type": "application/json",
                                "MCP-Protocol-Version": STATELESS, "Mcp-Method": "tools/call",
                                "Mcp-Name": "bank.get_balance", "Authorization": f"Bearer {token}"})


@dataclass
class Load:
    """Clients calling through the balancer until stopped; each keeps its
    HTTP connection alive between calls, as SDK clients do."""
    url: str
    token: str
    clients: int = 4
    ok: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for n in range(self.clients):
            t = threading.Thread(target=self._run, args=(n,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self, n: int) -> None:
        rid = n * 1_000_000
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                rid += 1
                try:
                    r = stateless_call(client, self.url, self.token, rid)
                    reply = r.json() if r.status_code == 200 else {}
                    result = reply.get("result") or {}
                    corr = (result.get("_meta") or {}).get("io.mandate/correlation_id")
                    if r.status_code == 200 and not result.get("isError") and corr:
                        with self._lock:
                            self.ok.append(corr)
                        continue
                    outcome = f"HTTP {r.status_code}: {r.text[:300]}"
                except (httpx.HTTPError, ValueError) as e:
                    outcome = f"{type(e).__name__}: {e}"
                with self._lock:
                    self.failed.append(f"{time.strftime('%H:%M:%S')} {outcome}")

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def verify_log(fleet: Fleet, gw: Gateway) -> None:
    r = gw.cli("audit", "verify", "--config", str(gw.config))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verified" in r.stdout, r.stdout


def test_a_rolling_restart_of_every_replica_under_load_fails_no_stateless_call(
        launcher: Launcher, issuer: Issuer) -> None:
    fleet = start_fleet(launcher, issuer, drain_delay_ms=3000)
    token = issuer.mint(fleet.audience, scope="bank.*", sid="rolling-" + uuid.uuid4().hex[:8])
    # The stateless revision works through the balancer before the test
    # relies on it.
    with httpx.Client(timeout=30) as c:
        first = stateless_call(c, fleet.audience, token, 1)
    assert first.status_code == 200 and "result" in first.json(), first.text

    load = Load(fleet.audience, token).start()
    time.sleep(2)
    for i in range(3):
        old = fleet.replicas[i]
        stopped = time.monotonic()
        old.proc.popen.send_signal(signal.SIGTERM)  # the leader only, as systemd's KillMode=mixed
        code = old.proc.popen.wait(timeout=60)
        took = time.monotonic() - stopped
        assert code == 0, f"replica {i} exited with {code} on SIGTERM:\n{old.proc.stderr()[-3000:]}"
        stderr = old.proc.stderr()
        assert "still accepting while the load balancer notices" in stderr, stderr[-3000:]
        assert "panicked" not in stderr, stderr[-3000:]
        assert took >= 2.5, f"replica {i} closed after {took:.2f} s, before the balancer could notice"
        old.proc.stop()
        fleet.restart(i)
        # In rotation again (rise 2 at 1 s) before the next one goes.
        time.sleep(3)
    time.sleep(1)
    load.stop()

    print(f"rolling restart: {len(load.ok)} calls answered, {len(load.failed)} failed")
    assert not load.failed, f"{len(load.failed)} of {len(load.ok) + len(load.failed)} calls failed:\n" \
        + "\n".join(load.failed[:20])
    assert len(load.ok) >= 100, f"only {len(load.ok)} calls made it during the restarts"
    recorded = fleet.decision_ids()
    missing = [c for c in load.ok if c not in recorded]
    assert not missing, f"{len(missing)} acknowledged calls have no decision record: {missing[:5]}"
    verify_log(fleet, fleet.replicas[0])


def test_kill_9_of_a_replica_under_load_loses_no_record_and_forwards_no_held_call(
        launcher: Launcher, issuer: Issuer) -> None:
    fleet = start_fleet(launcher, issuer, drain_delay_ms=3000)
    token = issuer.mint(fleet.audience, scope="bank.*", sid="crash-" + uuid.uuid4().hex[:8])
    victim, survivor = fleet.replicas[0], fleet.replicas[1]
    memo = "crash-" + uuid.uuid4().hex[:6]
    held = HeldCall(victim, issuer, {"amount": 75, "to": "acc-bob", "memo": memo})
    left = HeldCall(victim, issuer, {"amount": 80, "to": "acc-bob", "memo": memo + "-left"})
    op = issuer.operator_token(survivor.api_audience, "secops@example.com")
    req = pending_for(survivor, op, held.sid)
    left_req = pending_for(survivor, op, left.sid)

    load = Load(fleet.audience, token).start()
    time.sleep(2)
    os.killpg(victim.proc.pid, signal.SIGKILL)
    victim.proc.popen.wait(timeout=10)
    time.sleep(4)  # the balancer takes it out of rotation (fall 2 at 1 s)
    load.stop()

    # The holder is gone: its clients got an error, not a result.
    for h in (held, left):
        h.thread.join(10)
        assert h.reply is None or "result" not in h.reply.response(), h.reply and h.reply.text
    # Approving the orphaned request on another replica forwards nothing:
    # no process holds the call any more.
    r = survivor.api("POST", f"/api/approvals/{req['id']}/approve", op, {"args_hash": req["args_hash"]})
    assert r.status_code in (200, 409), r.text
    time.sleep(2)
    assert not fleet.executed(memo), "a call held on the killed replica was forwarded"

    # The other request leaves the approvers' queue by itself: no process
    # renews its mark, so a sweep withdraws it (30 s grace, 20 s mark).
    deadline = time.monotonic() + 75
    while True:
        pending = survivor.api("GET", "/api/approvals?status=pending", op).json()["approvals"]
        if not any(a["id"] == left_req["id"] for a in pending):
            break
        assert time.monotonic() < deadline, "an orphaned request was still pending after 75 s"
        time.sleep(1)
    late = survivor.api("POST", f"/api/approvals/{left_req['id']}/approve", op,
                        {"args_hash": left_req["args_hash"]})
    assert late.status_code == 409, late.text
    assert not fleet.executed(memo), "a call held on the killed replica was forwarded"

    # Only calls in flight on the killed replica failed: a few, not a share.
    total = len(load.ok) + len(load.failed)
    print(f"kill -9: {len(load.ok)} calls answered, {len(load.failed)} failed")
    assert len(load.ok) >= 50, f"only {len(load.ok)} calls made it"
    assert len(load.failed) <= load.clients, \
        f"{len(load.failed)} of {total} calls failed (at most one in flight per client):\n" \
        + "\n".join(load.failed[:20])
    recorded = fleet.decision_ids()
    missing = [c for c in load.ok if c not in recorded]
    assert not missing, f"{len(missing)} acknowledged calls have no decision record: {missing[:5]}"
    verify_log(fleet, survivor)
