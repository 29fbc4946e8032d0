"""More audit-store faults, injected for real while `mandate serve` runs
under load (test_faults.py has the others; docs/THREAT-MODEL.md, "Faults",
lists them all):

- PostgreSQL turned read-only mid-load (`default_transaction_read_only`,
  as a failover to a standby or an operator's emergency switch does);
- PostgreSQL terminating the gateway's connections mid-load
  (`pg_terminate_backend`, as an administrator or a connection pooler does);
- PostgreSQL out of disk space (its tablespace on a small tmpfs, filled);
- the SQLite store locked by another process (a backup or an operator's
  `sqlite3` shell holding a write transaction).

Each asserts that the agent's calls fail closed (`audit_unavailable`), that
every call the agent saw succeed and every call the upstream received has
its durable decision record, that no refused call reached the upstream, and
that calls succeed again once the fault ends, without restarting Mandate.
The PostgreSQL faults use a private PostgreSQL of the test's own, never the
machine's shared one.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from e2e_support import Gateway, Issuer, Launcher
from test_audit_fail_closed import fill
from test_faults import (  # noqa: F401 (private_pg is a fixture)
    CORRELATION,
    PrivatePostgres,
    assert_recorded_and_refused_unforwarded,
    denied,
    health,
    keys_received,
    lookup,
    pg_audit_toml,
    pg_decisions,
    private_pg,
    received,
    succeeded,
    upstream,
    wait_until,
)

SCHEMA = "mandate_audit"


def psql_as_admin(url: str, sql: str) -> str:
    """psql whose own transactions stay writable whatever the server's default."""
    env = {**os.environ, "PGOPTIONS": "-c default_transaction_read_only=off"}
    r = subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-Atq", "-c", sql], capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"psql: {r.stderr.strip()}")
    return r.stdout


class Load:
    """Four agents calling `up.lookup` in a loop on one session, noting the
    phase each call was sent in and what became of it."""

    def __init__(self, gw: Gateway, token: str, session: str) -> None:
        self.gw, self.token, self.session = gw, token, session
        self.phase = "before"
        self.outcomes: list[tuple[str, str, str]] = []  # (phase at send, key, correlation id or "denied:<reason>")
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._worker, args=(n,), daemon=True) for n in range(4)]

    def _worker(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            key, at = f"w{n}-{i}", self.phase
            try:
                msg = lookup(self.gw, self.token, self.session, key, rid=n * 1_000_000 + i)
            except (httpx.HTTPError, AssertionError) as e:
                self.errors.append(f"{key}: {e}")
                continue
            outcome = succeeded(msg, key) if "result" in msg else \
                "denied:" + str((msg["error"].get("data") or {}).get("reason"))
            with self._lock:
                self.outcomes.append((at, key, outcome))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def during(self, phase: str, seconds: float, action: Callable[[], None] | None = None) -> None:
        self.phase = phase
        if action is not None:
            action()
        time.sleep(seconds)


def assert_failed_closed_and_recovered(load: Load, fault: str, gw: Gateway, rec, decisions: dict[str, str]) -> None:
    assert not load.errors, load.errors[:5]
    ok = [(at, key, cid) for at, key, cid in load.outcomes if not cid.startswith("denied:")]
    refused = [(at, key, why) for at, key, why in load.outcomes if why.startswith("denied:")]
    assert any(at == "before" for at, _, _ in ok), "no call succeeded before the fault"
    assert {why for _, _, why in refused} <= {"denied:audit_unavailable"}, refused[:5]
    assert any(at == fault for at, _, _ in refused), f"no call was denied during the fault ({fault})"
    assert any(at == "after" for at, _, _ in ok), "no call succeeded after the fault ended"
    assert gw.proc.alive() and health(gw) == 200

    assert_recorded_and_refused_unforwarded(ok, refused, rec, decisions)


def pg_gateway(launcher: Launcher, issuer: Issuer, pg: PrivatePostgres):
    rec = launcher.root / "calls.jsonl"
    gw = launcher.gateway(issuer, upstream(launcher.faulty_http_server(rec)), extra_toml=pg_audit_toml(pg.url, SCHEMA))
    tok = issuer.mint(gw.audience, scope="up.*")
    return gw, tok, gw.initialize(tok), rec


def test_audit_store_postgres_turned_read_only_mid_load_denies_and_recovers(
    fresh_launcher: Launcher, issuer: Issuer, private_pg: PrivatePostgres
) -> None:
    """Every transaction of the server becomes read-only mid-load (existing
    connections included, at the configuration reload), then writable again."""
    gw, tok, session, rec = pg_gateway(fresh_launcher, issuer, private_pg)

    def read_only(on: bool) -> None:
        setting = "on" if on else "off"
        psql_as_admin(private_pg.url, f"ALTER SYSTEM SET default_transaction_read_only = {setting}")
        psql_as_admin(private_pg.url, "SELECT pg_reload_conf()")

    try:
        with Load(gw, tok, session) as load:
            load.during("before", 1.5)
            load.during("read_only", 3.0, lambda: read_only(True))
            assert health(gw) == 503, "/healthz says healthy while the audit store refuses writes"
            load.during("after", 3.0, lambda: read_only(False))
    finally:
        read_only(False)

    assert_failed_closed_and_recovered(load, "read_only", gw, rec, pg_decisions(private_pg.url, SCHEMA))
    verify = gw.cli("audit", "verify", "--config", str(gw.config))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_audit_store_postgres_terminating_its_connections_mid_load_loses_no_record(
    fresh_launcher: Launcher, issuer: Issuer, private_pg: PrivatePostgres
) -> None:
    """The server ends every connection of the gateway's, five times 300 ms
    apart, mid-load: the writer reconnects by itself; a call whose record
    was lost with its connection is denied, never forwarded."""
    gw, tok, session, rec = pg_gateway(fresh_launcher, issuer, private_pg)
    kill = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
    killed = []

    def terminate_repeatedly() -> None:
        for _ in range(5):
            killed.append(int(psql_as_admin(private_pg.url, kill).strip() or 0))
            time.sleep(0.3)

    with Load(gw, tok, session) as load:
        load.during("before", 1.5)
        load.during("terminating", 0.5, terminate_repeatedly)
        load.during("after", 3.0)

    assert sum(killed) > 0, "no connection of the gateway was terminated"
    assert not load.errors, load.errors[:5]
    ok = [(at, key, cid) for at, key, cid in load.outcomes if not cid.startswith("denied:")]
    refused = [(at, key, why) for at, key, why in load.outcomes if why.startswith("denied:")]
    # Whether a call happened to be writing when its connection died is
    # chance: denials may or may not occur, but only for this reason.
    assert {why for _, _, why in refused} <= {"denied:audit_unavailable"}, refused[:5]
    assert any(at == "after" for at, _, _ in ok), "no call succeeded after the connections were terminated"
    assert gw.proc.alive() and health(gw) == 200
    assert_recorded_and_refused_unforwarded(ok, refused, rec, pg_decisions(private_pg.url, SCHEMA))
    verify = gw.cli("audit", "verify", "--config", str(gw.config))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_audit_store_slow_sqlite_locked_by_another_process_denies_and_recovers(
    fresh_launcher: Launcher, issuer: Issuer
) -> None:
    """Another process holds a write transaction on the SQLite audit store:
    a call whose decision record cannot be made durable in time is denied,
    not forwarded; calls flow again once the transaction ends."""
    rec = fresh_launcher.root / "calls.jsonl"
    gw = fresh_launcher.gateway(issuer, upstream(fresh_launcher.faulty_http_server(rec)))
    tok = issuer.mint(gw.audience, scope="up.*")
    session = gw.initialize(tok)
    succeeded(lookup(gw, tok, session, "before", rid=1), "before")

    holder = sqlite3.connect(gw.data_dir / "audit.sqlite", timeout=5, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the write lock, as a writer takes it
        t0 = time.monotonic()
        data = denied(lookup(gw, tok, session, "during", rid=2), "audit_unavailable")
        took = time.monotonic() - t0
        assert took < 15, f"denied only after {took:.1f} s"
        assert data.get("decision_id"), data
        assert health(gw) == 503, "/healthz says healthy while appends cannot land"
        assert keys_received(rec) == ["before"], "a call was forwarded before its decision was durable"
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    after = wait_until(lambda: "result" in (m := lookup(gw, tok, session, "after", rid=3)) and m,
                       timeout=15, what="a call after the lock went")
    succeeded(after, "after")
    assert keys_received(rec) == ["before", "after"]
    assert health(gw) == 200
    verify = gw.cli("audit", "verify", "--data-dir", str(gw.data_dir))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_audit_store_full_postgres_tablespace_out_of_space_denies_and_recovers(
    fresh_launcher: Launcher, issuer: Issuer, private_pg: PrivatePostgres
) -> None:
    """The PostgreSQL audit store runs out of disk: its tables live in a
    tablespace on a 4 MiB tmpfs, which fills up. Appends fail (`could not
    extend file`): calls are denied, not forwarded; they flow again once
    space returns."""
    space = private_pg.dir / "tablespace"
    space.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=700", "tmpfs", str(space)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    fresh_launcher.cleanups.append(lambda: (subprocess.run(["umount", "-l", str(space)], capture_output=True),
                                            shutil.rmtree(private_pg.dir, ignore_errors=True)))
    pg_user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    if pg_user is not None:
        os.chown(space, pg_user.pw_uid, pg_user.pw_gid)
    psql_as_admin(private_pg.url, f"CREATE TABLESPACE tiny LOCATION '{space}'")
    # The gateway creates its tables on first start, in the default tablespace.
    psql_as_admin(private_pg.url, "ALTER DATABASE postgres SET default_tablespace = tiny")
    gw, tok, session, rec = pg_gateway(fresh_launcher, issuer, private_pg)
    located = psql_as_admin(private_pg.url, f"SELECT count(*) FROM pg_tables WHERE schemaname = '{SCHEMA}' "
                                            "AND tablename = 'audit_log' AND tablespace = 'tiny'").strip()
    assert located == "1", "the audit table is not on the small tablespace"
    succeeded(lookup(gw, tok, session, "before", rid=1), "before")

    fill(space)
    fresh_launcher.cleanups.append(lambda: [p.unlink() for p in space.glob("fill-*")])
    # The table's last page may still hold a few records; past it, the
    # file cannot grow.
    outcomes = []
    for i in range(200):
        msg = lookup(gw, tok, session, f"full-{i}", rid=10 + i)
        outcomes.append(msg)
        if "error" in msg:
            break
    denied(outcomes[-1], "audit_unavailable")
    for i in range(3):
        denied(lookup(gw, tok, session, f"still-full-{i}", rid=300 + i), "audit_unavailable")
    assert health(gw) == 503
    forwarded = set(keys_received(rec))
    assert not {f"still-full-{i}" for i in range(3)} & forwarded, "a call was forwarded while its record went nowhere"

    for p in space.glob("fill-*"):
        p.unlink()
    after = wait_until(lambda: "result" in (m := lookup(gw, tok, session, "after", rid=400)) and m,
                       timeout=15, what="a call after space returned")
    cid = succeeded(after, "after")
    assert health(gw) == 200
    decisions = pg_decisions(private_pg.url, SCHEMA)
    assert decisions.get(cid) == "allow"
    for c in received(rec):
        assert decisions.get((c.get("_meta") or {}).get(CORRELATION)) == "allow", f"{c} reached the upstream unrecorded"
    verify = gw.cli("audit", "verify", "--config", str(gw.config))
    assert verify.returncode == 0, verify.stdout + verify.stderr
