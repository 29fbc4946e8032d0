"""Fault injection: each dependency of the gateway fails for real while
`mandate serve` runs, and then recovers.

Every test asserts the same three things about its fault:
- the agent's call fails closed, with a clear JSON-RPC error (or HTTP 401
  for a token), and nothing reaches the upstream unless its decision record
  is durable (the upstream's own record of received calls is the witness);
- where the audit log can be written, the denial is on it;
- once the fault ends, calls succeed again without restarting the gateway.

Faults covered elsewhere: the audit store's disk filling up
(`test_audit_store_unwritable_denies_and_does_not_forward`,
test_audit_fail_closed.py), an upstream that hangs or whose stdio process
crashes (test_upstream_failures.py). docs/THREAT-MODEL.md, "Faults", lists
them all.

Some faults need root (mounting, a private PostgreSQL run as `postgres`),
libfaketime or PostgreSQL; without them the test is skipped, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e_support import Gateway, Issuer, Launcher, free_port, read_jsonl

CORRELATION = "io.mandate/correlation_id"
DENIED = -32003
UPSTREAM_FAILED = -32004
PG_URL = os.environ.get("MANDATE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


# --------------------------------------------------------------------------
# Helpers


def upstream(url: str, **tools: str) -> dict[str, dict[str, Any]]:
    return {"up": {"url": url, "timeout_secs": 10, "tools": tools or {"lookup": "read"}}}


def lookup(gw: Gateway, token: str, session: str, key: str, rid: int = 7) -> dict[str, Any]:
    reply = gw.call_tool(token, session, "up.lookup", {"key": key}, rid=rid)
    assert reply.status == 200, f"HTTP {reply.status}: {reply.text[:500]}"
    return reply.response(rid)


def succeeded(msg: dict[str, Any], key: str) -> str:
    """Asserts a successful lookup of `key`; returns its correlation id."""
    assert "result" in msg, msg
    assert msg["result"]["content"][0]["text"] == f"value-of-{key}", msg
    return msg["result"]["_meta"][CORRELATION]


def denied(msg: dict[str, Any], reason: str) -> dict[str, Any]:
    """Asserts a policy-point denial with `reason`; returns the error's data."""
    err = msg.get("error")
    assert err is not None, f"expected a denial, got {msg}"
    assert err["code"] == DENIED, err
    data = err.get("data") or {}
    assert data.get("reason") == reason, err
    return data


def received(record: Path, tool: str = "lookup") -> list[dict[str, Any]]:
    return [c for c in read_jsonl(record) if c["tool"] == tool]


def keys_received(record: Path) -> list[str]:
    return [c["arguments"]["key"] for c in received(record)]


def wait_until(fn, timeout: float, what: str, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)


def health(gw: Gateway) -> int:
    return gw.get("/healthz").status_code


def psql(url: str, sql: str, timeout: float = 30) -> str:
    r = subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-Atq", "-c", sql],
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"psql: {r.stderr.strip()}")
    return r.stdout


def pg_up(url: str) -> bool:
    if shutil.which("psql") is None:
        return False
    try:
        psql(url, "SELECT 1", timeout=10)
        return True
    except (RuntimeError, subprocess.TimeoutExpired):
        return False


def pg_decisions(url: str, schema: str) -> dict[str, str]:
    """correlation id -> effect of every decision record in the PostgreSQL log."""
    out = psql(url, f"SELECT correlation_id, effect FROM {schema}.audit_log WHERE kind = 'decision'")
    return dict(line.split("|", 1) for line in out.splitlines() if line)


def pg_audit_toml(url: str, schema: str) -> str:
    return f'\n[audit]\nstore = "{url}"\nschema = "{schema}"\n'


def assert_recorded_and_refused_unforwarded(ok: list[tuple[str, str, str]], refused: list[tuple[str, str, str]],
                                            rec: Path, decisions: dict[str, str]) -> None:
    """Every call the agent saw succeed (`ok`: phase, key, correlation id)
    and every call the upstream received has its `allow` decision record,
    and no `refused` call reached the upstream."""
    unrecorded = [key for _, key, cid in ok if decisions.get(cid) != "allow"]
    assert not unrecorded, f"{len(unrecorded)} calls the agent saw succeed have no decision record: {unrecorded[:5]}"
    forwarded = [(c["arguments"]["key"], (c.get("_meta") or {}).get(CORRELATION)) for c in received(rec)]
    unrecorded = [key for key, cid in forwarded if decisions.get(cid) != "allow"]
    assert not unrecorded, f"{len(unrecorded)} calls reached the upstream without a decision record: {unrecorded[:5]}"
    assert not {key for _, key, _ in refused} & {key for key, _ in forwarded}, "a refused call reached the upstream"


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


# --------------------------------------------------------------------------
# Audit store: slow, gone (full: test_audit_fail_closed.py)


@pytest.fixture
def pg_schema(fresh_launcher: Launcher) -> str:
    """A schema of its own on the machine's PostgreSQL, dropped afterwards."""
    if not pg_up(PG_URL):
        pytest.skip(f"no PostgreSQL at {PG_URL} (MANDATE_TEST_POSTGRES_URL)")
    schema = "faults_" + uuid.uuid4().hex[:10]
    fresh_launcher.cleanups.append(lambda: psql(PG_URL, f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    return schema


def test_audit_store_slow_denies_past_the_write_deadline_and_recovers(
    fresh_launcher: Launcher, issuer: Issuer, pg_schema: str
) -> None:
    """Another connection holds a lock on the PostgreSQL audit table, so
    appends block: each call is denied when its decision record is not
    durable within the 5 s write deadline, and flows again once the lock
    goes."""
    rec = fresh_launcher.root / "calls.jsonl"
    gw = fresh_launcher.gateway(issuer, upstream(fresh_launcher.faulty_http_server(rec)),
                                extra_toml=pg_audit_toml(PG_URL, pg_schema))
    tok = issuer.mint(gw.audience, scope="up.*")
    session = gw.initialize(tok)
    before = succeeded(lookup(gw, tok, session, "before", rid=1), "before")

    holder = subprocess.Popen(["psql", PG_URL, "-v", "ON_ERROR_STOP=1", "-Atq"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write(f"BEGIN; LOCK TABLE {pg_schema}.audit_log IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read() if holder.stderr else ""

        t0 = time.monotonic()
        data = denied(lookup(gw, tok, session, "during", rid=2), "audit_unavailable")
        took = time.monotonic() - t0
        assert 4 <= took < 15, f"denied after {took:.1f} s (write deadline 5 s)"
        assert data.get("decision_id"), data
        assert health(gw) == 503, "/healthz says healthy while appends time out"
        ready = gw.get("/readyz")
        assert ready.status_code == 503 and ready.json()["audit"] == "unavailable", ready.text
        assert keys_received(rec) == ["before"], "a call was forwarded before its decision was durable"

        holder.stdin.write("COMMIT;\n")
        holder.stdin.close()
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()

    after = succeeded(lookup(gw, tok, session, "after", rid=3), "after")
    assert keys_received(rec) == ["before", "after"]
    assert health(gw) == 200
    assert gw.get("/readyz").status_code == 200
    decisions = pg_decisions(PG_URL, pg_schema)
    assert decisions.get(before) == "allow" and decisions.get(after) == "allow", decisions
    # The denied call's decision record landed once the lock went; the
    # record behind it says the call never went through.
    query = (f"SELECT kind, effect, outcome FROM {pg_schema}.audit_log "
             f"WHERE correlation_id = '{data['correlation_id']}' ORDER BY seq")
    late = wait_until(lambda: len(rows := psql(PG_URL, query).split()) >= 2 and rows,
                      timeout=10, what="the late records of the denied call")
    assert late == ["decision|allow|", "outcome|allow|not_forwarded"], late
    verify = gw.cli("audit", "verify", "--config", str(gw.config))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_audit_store_gone_sqlite_data_dir_removed_denies_and_recovers_when_restored(
    fresh_launcher: Launcher, issuer: Issuer
) -> None:
    """The SQLite audit store's folder disappears (a volume unmounted, a
    folder moved away). SQLite would go on writing into the open, now
    unreachable file; Mandate must treat that as not durable: denied, not
    forwarded, and fine again once the same file is back."""
    rec = fresh_launcher.root / "calls.jsonl"
    volume = fresh_launcher.root / "volume"
    volume.mkdir()
    data = volume / "data"
    gw = fresh_launcher.gateway(issuer, upstream(fresh_launcher.faulty_http_server(rec)), data_dir=data)
    tok = issuer.mint(gw.audience, scope="up.*")
    session = gw.initialize(tok)
    succeeded(lookup(gw, tok, session, "before", rid=1), "before")

    away = volume / "data-away"
    data.rename(away)
    try:
        for i in range(2):
            denied(lookup(gw, tok, session, f"during-{i}", rid=10 + i), "audit_unavailable")
        assert keys_received(rec) == ["before"], "a call was forwarded while its record went nowhere"
        assert health(gw) == 503
        assert gw.proc.alive()
    finally:
        away.rename(data)

    after = succeeded(lookup(gw, tok, session, "after", rid=20), "after")
    assert keys_received(rec) == ["before", "after"]
    assert health(gw) == 200
    rows = gw.audit_rows("kind = 'decision' AND correlation_id = ?", [after])
    assert [r["effect"] for r in rows] == ["allow"], rows
    verify = gw.cli("audit", "verify", "--data-dir", str(gw.data_dir))
    assert verify.returncode == 0, verify.stdout + verify.stderr


class PrivatePostgres:
    """A PostgreSQL of this test's own (never the machine's shared one), so
    it can be stopped and started."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mandate-faults-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self.run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def run(self, *argv: str) -> None:
        r = subprocess.run([*self.as_postgres, *argv], capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {r.stdout}{r.stderr}")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self.run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists() or shutil.which("psql") is None:
        pytest.skip(f"PostgreSQL 15 server binaries not found in {PG_BIN}")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as `postgres`")
    pg = PrivatePostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.close()


def test_audit_store_gone_postgres_restarted_mid_load_loses_no_record_and_recovers(
    fresh_launcher: Launcher, issuer: Issuer, private_pg: PrivatePostgres
) -> None:
    """The PostgreSQL audit store crashes (immediate stop) under load and
    comes back. Every call the agent saw succeed, and every call the upstream
    received, has its decision record; calls in between were denied; calls
    succeed again after the restart, with the same `mandate serve`."""
    rec = fresh_launcher.root / "calls.jsonl"
    schema = "mandate_audit"
    gw = fresh_launcher.gateway(issuer, upstream(fresh_launcher.faulty_http_server(rec)),
                                extra_toml=pg_audit_toml(private_pg.url, schema))
    tok = issuer.mint(gw.audience, scope="up.*")
    session = gw.initialize(tok)

    phase = ["before"]
    outcomes: list[tuple[str, str, str]] = []  # (phase at send, key, correlation id or deny reason)
    errors: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def worker(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            key, at = f"w{n}-{i}", phase[0]
            try:
                msg = lookup(gw, tok, session, key, rid=n * 1_000_000 + i)  # ids unique in the session
            except (httpx.HTTPError, AssertionError) as e:
                errors.append(f"{key}: {e}")
                continue
            if "result" in msg:
                outcome = succeeded(msg, key)
            else:
                outcome = "denied:" + str((msg["error"].get("data") or {}).get("reason"))
            with lock:
                outcomes.append((at, key, outcome))

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        phase[0] = "down"
        private_pg.stop("immediate")
        time.sleep(2.0)
        phase[0] = "restarting"
        private_pg.start()
        phase[0] = "after"
        time.sleep(2.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)

    assert not errors, errors[:5]
    ok = [(at, key, cid) for at, key, cid in outcomes if not cid.startswith("denied:")]
    refused = [(at, key, why) for at, key, why in outcomes if why.startswith("denied:")]
    assert any(at == "before" for at, _, _ in ok), "no call succeeded before the crash"
    assert refused, "no call was denied while PostgreSQL was down"
    assert {why for _, _, why in refused} == {"denied:audit_unavailable"}, refused[:5]
    assert any(at == "after" for at, _, _ in ok), "no call succeeded after the restart"
    assert gw.proc.alive() and health(gw) == 200

    assert_recorded_and_refused_unforwarded(ok, refused, rec, pg_decisions(private_pg.url, schema))
    verify = gw.cli("audit", "verify", "--config", str(gw.config))
    assert verify.returncode == 0, verify.stdout + verify.stderr


# --------------------------------------------------------------------------
# Control store gone


OPERATORS = """
[[operators]]
sub = "secops@example.com"
roles = ["admin"]
"""


def test_control_store_gone_denies_calls_that_need_it_audited_and_recovers(
    fresh_launcher: Launcher, issuer: Issuer
) -> None:
    """The SQLite control store's file is moved away: a tool never vetted
    before needs its pin from the store and is denied (audited); an
    operator's revocation is refused rather than written where it would be
    lost; calls that need only in-memory state go on; all recovers once the
    file is back."""
    rec = fresh_launcher.root / "calls.jsonl"
    gw = fresh_launcher.gateway(issuer, upstream(fresh_launcher.faulty_http_server(rec), lookup="read", note="write"),
                                extra_toml=OPERATORS)
    tok = issuer.mint(gw.audience, scope="up.*")
    session = gw.initialize(tok)
    succeeded(lookup(gw, tok, session, "before", rid=1), "before")

    files = [gw.data_dir / n for n in ("control.sqlite", "control.sqlite-wal", "control.sqlite-shm")]
    moved = [(f, f.with_name(f.name + ".away")) for f in files if f.exists()]
    for f, away in moved:
        f.rename(away)
    try:
        reply = gw.call_tool(tok, session, "up.note", {"text": "during"}, rid=2)
        data = denied(reply.response(2), "control_store_unavailable")
        assert "control store is unavailable" in reply.error(2)["message"], reply.error(2)
        rows = gw.wait_audit("kind = 'decision' AND decision_id = ?", [data["decision_id"]])
        assert [r["effect"] for r in rows] == ["deny"], rows
        assert "removed or replaced" in rows[0]["reasons"], rows
        assert received(rec, "note") == [], "a call that needed the control store was forwarded"

        op = issuer.operator_token(gw.api_audience, "secops@example.com")
        revoke = gw.operator_cli(op, "revoke", "agent", "agent-research", "--reason", "e2e")
        assert revoke.returncode != 0, "a revocation was accepted into a control store that is gone"

        # Already vetted, and revocations are checked in memory.
        succeeded(lookup(gw, tok, session, "meanwhile", rid=3), "meanwhile")
        # Alive, but not ready: a load balancer should send calls elsewhere.
        ready = gw.get("/readyz")
        assert ready.status_code == 503 and ready.json()["control"] == "unavailable", ready.text
        assert health(gw) == 200
    finally:
        for f, away in moved:
            away.rename(f)

    assert gw.get("/readyz").status_code == 200
    reply = gw.call_tool(tok, session, "up.note", {"text": "after"}, rid=4)
    msg = reply.response(4)
    assert "result" in msg and msg["result"]["content"][0]["text"] == "noted: after", msg
    assert [c["arguments"] for c in received(rec, "note")] == [{"text": "after"}]
    listed = gw.operator_cli(issuer.operator_token(gw.api_audience, "secops@example.com"), "revocations", "list")
    assert listed.returncode == 0, listed.stderr
    assert "agent-research" not in listed.stdout, "the refused revocation exists after all"


# --------------------------------------------------------------------------
# Upstream: garbage, gigantic result, crash mid-response (hang and stdio
# crash: test_upstream_failures.py)


@pytest.fixture(scope="module")
def faulty(launcher: Launcher, issuer: Issuer) -> tuple[Gateway, str, Path]:
    rec = launcher.root / "faulty-calls.jsonl"
    gw = launcher.gateway(issuer, upstream(launcher.faulty_http_server(rec), lookup="read", garbage="read",
                                           huge="read"))
    tok = issuer.mint(gw.audience, scope="up.*")
    return gw, tok, rec


def test_upstream_returns_garbage_is_an_upstream_error_and_the_next_call_works(faulty, issuer: Issuer) -> None:
    gw, tok, rec = faulty
    session = gw.initialize(tok)
    t0 = time.monotonic()
    reply = gw.call_tool(tok, session, "up.garbage", {}, rid=1)
    err = reply.error(1)
    assert err["code"] == UPSTREAM_FAILED, err
    assert time.monotonic() - t0 < 9, "the garbage answer was only noticed at the call timeout"
    assert "<html>" not in err["message"], "the upstream's garbage was passed on to the agent"
    assert [c["tool"] for c in read_jsonl(rec)].count("garbage") == 1
    rows = gw.wait_audit("kind = 'outcome' AND tool = 'up.garbage'")
    assert rows and rows[-1]["outcome"] in ("upstream_error", "upstream_unavailable"), rows
    succeeded(lookup(gw, tok, session, "after-garbage", rid=2), "after-garbage")


def test_upstream_returns_gigantic_result_is_refused_with_memory_bounded(faulty, issuer: Issuer) -> None:
    gw, tok, rec = faulty
    session = gw.initialize(tok)
    succeeded(lookup(gw, tok, session, "warm-up", rid=1), "warm-up")
    peak_before = peak_rss_kib(gw.proc.pid)
    mib = 256
    with httpx.Client(timeout=60) as client:
        reply = gw.post({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                         "params": {"name": "up.huge", "arguments": {"mib": mib}}}, tok, session, client=client)
    assert len(reply.text) < 1 << 20, f"a {len(reply.text)} byte answer reached the agent"
    err = reply.error(2)
    assert err["code"] == UPSTREAM_FAILED, err
    # Past the upstream's max_result_bytes (4 MiB by default), the body is
    # not read further: memory stays bounded.
    assert err["data"]["outcome"] == "result_too_large", err
    grew_mib = (peak_rss_kib(gw.proc.pid) - peak_before) / 1024
    assert grew_mib < 32, f"peak memory grew by {grew_mib:.0f} MiB for a {mib} MiB result"
    rows = gw.wait_audit("kind = 'outcome' AND tool = 'up.huge'")
    assert rows and rows[-1]["outcome"] == "result_too_large", rows
    succeeded(lookup(gw, tok, session, "after-huge", rid=3), "after-huge")
    assert health(gw) == 200


def test_upstream_crashes_mid_response_errors_cleanly_and_recovers_when_back(
    fresh_launcher: Launcher, issuer: Issuer
) -> None:
    """An HTTP upstream dies half-way through its answer, then is started
    again on the same address: the call errors, the gateway reconnects by
    itself."""
    rec = fresh_launcher.root / "calls.jsonl"
    url = fresh_launcher.faulty_http_server(rec)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    gw = fresh_launcher.gateway(issuer, upstream(url, lookup="read", crash="read"))
    tok = issuer.mint(gw.audience, scope="up.*")
    session = gw.initialize(tok)
    succeeded(lookup(gw, tok, session, "before", rid=1), "before")

    err = gw.call_tool(tok, session, "up.crash", {}, rid=2).error(2)
    assert err["code"] == UPSTREAM_FAILED, err
    # While it is down: a clean error, not a hang.
    t0 = time.monotonic()
    down = lookup(gw, tok, session, "while-down", rid=3)
    assert down.get("error", {}).get("code") == UPSTREAM_FAILED, down
    assert time.monotonic() - t0 < 9
    rows = gw.wait_audit("kind = 'outcome' AND tool = 'up.crash'")
    assert rows and rows[-1]["outcome"] in ("upstream_error", "upstream_unavailable"), rows

    fresh_launcher.faulty_http_server(rec, port=port, name="faulty-again")
    msg = wait_until(lambda: (m := lookup(gw, tok, session, "after", rid=4)) and "result" in m and m,
                     timeout=20, what="calls through the restarted upstream")
    succeeded(msg, "after")
    assert gw.proc.alive()


# --------------------------------------------------------------------------
# JWKS URL down or rotated


class JwksServer:
    """Serves a JWKS document over HTTP on a fixed loopback port; can be
    stopped (connection refused) and started again with other keys."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/jwks.json"
        self.fetches = 0
        self._httpd: ThreadingHTTPServer | None = None
        self.start(jwks)

    def start(self, jwks: dict[str, Any]) -> None:
        body = httpx.Response(200, json=jwks).content
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


@pytest.fixture
def jwks_server(issuer: Issuer) -> Iterator[JwksServer]:
    server = JwksServer(issuer.jwks())
    try:
        yield server
    finally:
        server.stop()


def status_of(gw: Gateway, token: str) -> int:
    """HTTP status of a fresh `initialize` with `token`."""
    return gw.post({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                               "clientInfo": {"name": "faults", "version": "1"}}}, token).status


def test_jwks_url_down_keeps_cached_keys_and_refuses_an_unknown_kid(
    fresh_launcher: Launcher, issuer: Issuer, jwks_server: JwksServer, tmp_path: Path
) -> None:
    rec = fresh_launcher.root / "calls.jsonl"
    gw = fresh_launcher.gateway(issuer, upstream(fresh_launcher.faulty_http_server(rec)), jwks_url=jwks_server.url)
    tok = issuer.mint(gw.audience, scope="up.*")
    session = gw.initialize(tok)
    succeeded(lookup(gw, tok, session, "before", rid=1), "before")
    other = Issuer(tmp_path / "other-key", issuer=issuer.issuer)  # same issuer, a kid the JWKS lacks

    jwks_server.stop()
    # Keys already loaded keep working, for new tokens too.
    fresh = issuer.mint(gw.audience, scope="up.*")
    succeeded(lookup(gw, fresh, gw.initialize(fresh), "while-down", rid=2), "while-down")
    # An unknown kid cannot be checked: refused as a bad token, not an outage.
    unknown = other.mint(gw.audience, scope="up.*")
    assert status_of(gw, unknown) == 401
    assert health(gw) == 200
    assert keys_received(rec) == ["before", "while-down"]

    # The JWKS comes back with the new key added: after the re-fetch
    # interval (10 s) the new kid is accepted; the old keys still are.
    jwks_server.start({"keys": issuer.jwks()["keys"] + other.jwks()["keys"]})
    wait_until(lambda: status_of(gw, unknown) == 200, timeout=20, what="the new kid accepted after the JWKS returns",
               every=1)
    s2 = gw.initialize(unknown)
    succeeded(lookup(gw, unknown, s2, "new-key", rid=3), "new-key")
    succeeded(lookup(gw, tok, session, "old-key", rid=4), "old-key")


def test_jwks_url_serving_a_rotated_key_accepts_the_new_kid_and_refuses_the_removed_one(
    fresh_launcher: Launcher, issuer: Issuer, jwks_server: JwksServer, tmp_path: Path
) -> None:
    rec = fresh_launcher.root / "calls.jsonl"
    gw = fresh_launcher.gateway(issuer, upstream(fresh_launcher.faulty_http_server(rec)), jwks_url=jwks_server.url)
    old_tok = issuer.mint(gw.audience, scope="up.*")
    old_session = gw.initialize(old_tok)
    succeeded(lookup(gw, old_tok, old_session, "old", rid=1), "old")

    rotated = Issuer(tmp_path / "rotated", issuer=issuer.issuer)
    jwks_server.stop()
    jwks_server.start(rotated.jwks())  # the old keys are gone
    new_tok = rotated.mint(gw.audience, scope="up.*")
    # The first unknown kid triggers a re-fetch at once (none happened yet).
    new_session = gw.initialize(new_tok)
    succeeded(lookup(gw, new_tok, new_session, "new", rid=2), "new")

    # The removed key verifies nothing any more: not a new token, and not
    # the token verified (and cached) before the rotation.
    assert status_of(gw, issuer.mint(gw.audience, scope="up.*")) == 401
    stale = gw.call_tool(old_tok, old_session, "up.lookup", {"key": "stale"}, rid=3)
    assert stale.status == 401, stale.text
    assert keys_received(rec) == ["old", "new"]


# --------------------------------------------------------------------------
# The clock stepped


@pytest.fixture
def faketime_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    if not FAKETIME_LIB.exists():
        pytest.skip(f"libfaketime not installed ({FAKETIME_LIB}; apt-get install libfaketime)")
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = {
        "LD_PRELOAD": str(FAKETIME_LIB),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        # Re-read the file every second, so steps take effect at run time.
        "FAKETIME_CACHE_DURATION": "1",
        # A step of the wall clock (what NTP does), not of monotonic time.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    return env, offset


def test_clock_stepped_beyond_the_skew_tolerance_refuses_tokens_and_recovers(
    fresh_launcher: Launcher, issuer: Issuer, faketime_env: tuple[dict[str, str], Path]
) -> None:
    env, offset = faketime_env
    rec = fresh_launcher.root / "calls.jsonl"
    gw = fresh_launcher.gateway(issuer, upstream(fresh_launcher.faulty_http_server(rec)), env=env)
    tok = issuer.mint(gw.audience, scope="up.*")  # valid from now, for 600 s; leeway 30 s
    session = gw.initialize(tok)
    succeeded(lookup(gw, tok, session, "before", rid=1), "before")

    def call_status(key: str) -> int:
        return gw.call_tool(tok, session, "up.lookup", {"key": key}, rid=9).status

    # Forward past exp + leeway: the token has expired, even on its session.
    offset.write_text("+1200\n")
    wait_until(lambda: call_status("ahead") == 401, timeout=10, what="refusal with the clock 20 min ahead")
    assert status_of(gw, tok) == 401

    # Back past nbf - leeway: the token is not yet valid.
    offset.write_text("-600\n")
    wait_until(lambda: call_status("behind") == 401 and status_of(gw, issuer.mint(gw.audience, scope="up.*")) == 401,
               timeout=10, what="refusal with the clock 10 min behind")

    # Within the tolerance: accepted.
    offset.write_text("-20\n")
    wait_until(lambda: call_status("within-leeway") == 200, timeout=10, what="acceptance 20 s behind (leeway 30 s)")

    # The clock returns: the same token works again, same process.
    offset.write_text("+0\n")
    time.sleep(1.5)
    succeeded(lookup(gw, tok, session, "after", rid=2), "after")
    # Polls sent before a step took effect went through; none after.
    got = keys_received(rec)
    assert got[0] == "before" and got[-2:] == ["within-leeway", "after"] and "behind" not in got, got
    assert gw.proc.alive()
