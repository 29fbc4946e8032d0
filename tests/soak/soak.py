"""Mandate's bounded soak and its limits probe (docs/BENCHMARKS.md, "Soak"
and "Memory and connections under the default limits").

Run through `scripts/soak`, which prepares the Python environment:

    scripts/soak [--duration SECS] [--sessions N] [--out DIR]     the soak
    scripts/soak --limits [--out DIR]                              the limits probe

The soak starts `mandate serve` (the quickstart policies, durable SQLite
audit) in front of two `mandate demo-server` upstreams (workspace and bank,
over stdio), then for `--duration` seconds runs `--sessions` concurrent
agents, each a real MCP client session (the official Python SDK over
Streamable HTTP) that makes a mixed workload of allowed, denied and held
calls and then closes its session and opens a new one with a fresh token.
An approver loop decides every held call through `/api/approvals` (two
approvals for each denial), as a person's tool would. In the background a
second process keeps idle connections and slow-header connections (one
header byte a second) open against the gateway, reopening each one the
gateway closes.

Every `--interval` seconds it samples the gateway's RSS (/proc/PID/status
VmRSS), its open descriptors (/proc/PID/fd), the p50/p99 latency of the
calls that finished in the interval (held calls apart: they wait for the
approver), and the audit lag: how many acknowledged, forwarded calls have
no outcome record visible in the store yet, and how long one sampled
call's outcome record took to become visible after the agent had its
result. It writes OUT/soak.csv, OUT/summary.json and a plot (OUT/soak.png,
or `--plot PATH`).

Before the load, one session lists the tools, so the gateway pins each on
first use (one `control/tool.pin` record per tool) before any agent runs.
At the end it checks that the store holds exactly the records the calls
imply (docs/AUDIT-FORMAT.md section 1):

    records = the records at the start     (the tool pins above)
            + 1 per call                   its decision record
            + 1 per held call              the "held for human approval" record
            + 1 per forwarded call         its outcome record
            + 2 per approver decision      the control record and its outcome
            + 1 per refused approver try   the refusal's control record

that the demo upstreams received exactly the forwarded calls, and that
`mandate audit verify` passes. It exits non-zero if any of these fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import http.client
import json
import logging
import os
import random
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import httpx  # noqa: E402

from e2e_support import (  # noqa: E402
    MCP_ACCEPT,
    PROTOCOL_VERSION,
    Gateway,
    Issuer,
    Launcher,
    initialize_request,
    mandate_bin,
    read_jsonl,
    run_mandate,
    sdk_client,
)

APPROVER = "approver@example.com"
SCOPE = "docs.* bank.*"
META_CORRELATION = "io.mandate/correlation_id"
HELD_REASONS = {"approval_denied", "approval_timeout", "withdrawn"}

OPERATORS = f"""
[[operators]]
sub = "{APPROVER}"
roles = ["approver"]

[approvals]
timeout_secs = 60
"""


def upstreams(root: Path) -> dict[str, dict[str, Any]]:
    """The quickstart's two demo upstreams, recording what reaches them."""
    exe = str(mandate_bin())
    return {
        "docs": {
            "command": exe,
            "args": ["demo-server", "--profile", "workspace", "--record", str(root / "docs-calls.jsonl")],
            "timeout_secs": 10,
            "default_class": "deny",
            "tools": {"search": "read", "list_customers": "read", "send_mail": "outbound"},
            "provenance": {"search": "untrusted", "list_customers": "sensitive", "send_mail": "trusted"},
        },
        "bank": {
            "command": exe,
            "args": ["demo-server", "--profile", "bank", "--record", str(root / "bank-calls.jsonl")],
            "timeout_secs": 10,
            "default_provenance": "trusted",
            "tools": {"get_balance": "read", "transfer": "financial", "close_account": "irreversible"},
        },
    }


def start_gateway(launcher: Launcher, issuer: Issuer, extra_toml: str = "") -> Gateway:
    return launcher.gateway(issuer, upstreams(launcher.root), extra_toml=OPERATORS + extra_toml,
                            log="warn", name="gateway")


# --------------------------------------------------------------------------
# The gateway process, seen from outside


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def rss_parts_kib(pid: int) -> dict[str, int]:
    """RssAnon (heap, stacks), RssFile (mapped files: the binary's pages,
    SQLite's shared-memory index) and RssShmem, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def metrics(gw: Gateway) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(gw.public_url + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#") and " " in line:
            name, value = line.rsplit(" ", 1)
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


class Store:
    """Read-only queries on the gateway's SQLite audit store."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)

    def counts(self) -> tuple[int, int]:
        """(all records, outcome records of tool calls)."""
        conn = self._conn()
        try:
            total = conn.execute("SELECT count(*) FROM audit_log").fetchone()[0]
            outcomes = conn.execute(
                "SELECT count(*) FROM audit_log WHERE kind = 'outcome' AND tool NOT LIKE '%/%'").fetchone()[0]
            return total, outcomes
        finally:
            conn.close()

    def breakdown(self) -> dict[str, int]:
        conn = self._conn()
        try:
            rows = conn.execute(
                "SELECT kind, CASE WHEN tool LIKE '%/%' THEN 'control' ELSE 'call' END, "
                "coalesce(effect, ''), detail LIKE 'held for human approval%', count(*) "
                "FROM audit_log GROUP BY 1, 2, 3, 4").fetchall()
        finally:
            conn.close()
        out: dict[str, int] = {}
        for kind, what, effect, held, n in rows:
            key = f"{kind}/{what}" + (f"/{effect}" if kind != "outcome" and effect else "") + ("/held" if held else "")
            out[key] = out.get(key, 0) + n
        return out

    def outcome_visible(self, correlation_id: str) -> bool:
        # One connection per probing thread: polled every 2 ms.
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = self._conn()
        return conn.execute("SELECT 1 FROM audit_log WHERE correlation_id = ? AND kind = 'outcome'",
                            (correlation_id,)).fetchone() is not None


def raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank), or None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


# --------------------------------------------------------------------------
# Background: idle and slow-header connections, in a process of their own so
# that the agents' measurements do not share its event loop.


class Siege:
    """`soak.py --siege-worker`: keeps idle and slow-header connections
    against a port, reopening (after `reopen_secs`) each one the server
    closes. Its counters go to a JSON status file."""

    def __init__(self, launcher: Launcher, port: int, idle: int, slow: int, reopen_secs: float,
                 name: str = "siege") -> None:
        self.status_path = launcher.root / f"{name}-{uuid.uuid4().hex[:6]}.json"
        argv = [sys.executable, str(Path(__file__).resolve()), "--siege-worker", "--port", str(port),
                "--idle", str(idle), "--slow", str(slow), "--reopen-secs", str(reopen_secs),
                "--status", str(self.status_path)]
        self.proc = launcher.spawn(argv, name)

    def status(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, json.JSONDecodeError):
            return json.loads(self.status_path.read_text())
        return {}

    def wait_ready(self, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status()
            if s.get("ready"):
                return s
            if not self.proc.alive():
                raise RuntimeError(f"siege worker exited:\n{self.proc.stderr()}")
            time.sleep(0.2)
        raise RuntimeError(f"siege worker not ready after {timeout}s: {self.status()}")

    def stop(self) -> None:
        self.proc.stop()


async def siege_worker(port: int, idle: int, slow: int, reopen_secs: float, status_path: Path) -> None:
    raise_fd_limit(idle + slow + 256)
    stats = {"ready": False, "idle_open": 0, "slow_open": 0, "closed_by_server": 0, "connect_failures": 0,
             "opened": 0, "slow_bytes_sent": 0}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        except (OSError, asyncio.TimeoutError):
            stats["connect_failures"] += 1
            return None
        stats["opened"] += 1
        return conn

    async def idle_one(first: asyncio.Event) -> None:
        while not stop.is_set():
            conn = await connect()
            first.set()
            if conn is None:
                await asyncio.sleep(max(reopen_secs, 1.0))
                continue
            reader, writer = conn
            stats["idle_open"] += 1
            with contextlib.suppress(OSError):
                await reader.read(1)  # returns when the server closes it
            stats["idle_open"] -= 1
            stats["closed_by_server"] += 1
            writer.close()
            if reopen_secs < 0:
                return
            await asyncio.sleep(reopen_secs)

    async def slow_one(first: asyncio.Event) -> None:
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        while not stop.is_set():
            conn = await connect()
            first.set()
            if conn is None:
                await asyncio.sleep(max(reopen_secs, 1.0))
                continue
            reader, writer = conn
            stats["slow_open"] += 1
            i = 0
            closed = asyncio.ensure_future(reader.read(1))
            try:
                while not stop.is_set():
                    byte = head[i:i + 1] if i < len(head) else b"a"
                    writer.write(byte)
                    await writer.drain()
                    stats["slow_bytes_sent"] += 1
                    i += 1
                    done, _ = await asyncio.wait({closed}, timeout=1.0)
                    if done:
                        break
            except OSError:
                pass
            closed.cancel()
            stats["slow_open"] -= 1
            stats["closed_by_server"] += 1
            writer.close()
            if reopen_secs < 0:
                return
            await asyncio.sleep(reopen_secs)

    tasks = []
    firsts = []
    # Open in batches so the listener's accept backlog is not the limit.
    for kind, n in (("idle", idle), ("slow", slow)):
        for start in range(0, n, 200):
            batch = []
            for _ in range(min(200, n - start)):
                ev = asyncio.Event()
                batch.append(ev)
                tasks.append(asyncio.create_task((idle_one if kind == "idle" else slow_one)(ev)))
            await asyncio.gather(*(ev.wait() for ev in batch))
            firsts += batch
    stats["ready"] = True

    async def report() -> None:
        while True:
            tmp = status_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(stats))
            tmp.replace(status_path)
            if stop.is_set():
                return
            await asyncio.sleep(0.5)

    reporter = asyncio.create_task(report())
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await reporter


# --------------------------------------------------------------------------
# The soak's agents and approver


@dataclass
class Tally:
    """What the clients saw, and the audit records it implies."""

    calls: int = 0
    allowed: int = 0          # forwarded without a hold
    denied: int = 0           # denied without a hold
    held_released: int = 0    # held, approved, forwarded
    held_denied: int = 0      # held, then denied (by a person, a timeout or a withdrawal)
    errors: int = 0           # anything else (transport errors, unexpected replies)
    forwarded: int = 0
    held_ids: set[str] = field(default_factory=set)
    approver_decided: int = 0
    approver_approved: int = 0
    approver_denied: int = 0
    approver_refused: int = 0
    approver_other: int = 0
    sessions: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    # This interval's latencies (seconds) and audit-lag probes (seconds).
    lat: list[float] = field(default_factory=list)
    held_lat: list[float] = field(default_factory=list)
    lag_probes: list[float] = field(default_factory=list)
    all_lat: list[float] = field(default_factory=list)
    all_held_lat: list[float] = field(default_factory=list)
    loop_lag: list[float] = field(default_factory=list)  # this interval's event-loop delays (seconds)
    all_loop_lag: list[float] = field(default_factory=list)
    pending_probe: bool = False
    held_calls: list[tuple[str, bool]] = field(default_factory=list)  # (correlation id, forwarded)

    def expected_records(self, bootstrap: int) -> int:
        held = len(self.held_calls)
        return (bootstrap + self.calls + held + self.forwarded
                + 2 * self.approver_decided + self.approver_refused)


def pick_call(rng: random.Random, n: int) -> tuple[str, dict[str, Any]]:
    """One call of the mix: ~70 % allowed, ~18 % denied, ~12 % held."""
    r = rng.random()
    if r < 0.50:
        return "bank.get_balance", {"account": f"acc-{rng.randrange(1000)}"}
    if r < 0.70:
        return "docs.search", {"query": f"quarterly report {n}"}
    if r < 0.78:  # a payee outside the allow-list: forbidden
        return "bank.transfer", {"to": f"EVIL-{rng.randrange(1000)}", "amount": rng.randrange(10, 900)}
    if r < 0.83:  # over the per-call amount limit: forbidden
        return "bank.transfer", {"to": f"SUPPLIER-{rng.randrange(100)}", "amount": 20000 + rng.randrange(100)}
    if r < 0.88:  # not classified in the configuration: denied
        return "docs.export_all", {}
    if r < 0.96:  # a supplier payment: held for a person
        return "bank.transfer", {"to": f"SUPPLIER-{rng.randrange(100)}", "amount": rng.randrange(10, 900),
                                 "memo": f"invoice {n}"}
    return "docs.send_mail", {"to": "team@example.com", "subject": f"status {n}", "body": "weekly status"}


async def agent(i: int, gw: Gateway, issuer: Issuer, tally: Tally, deadline: float, think: float,
                store: Store, seed: int, token_ttl: int, per_session: tuple[int, int]) -> None:
    from mcp import MCPError

    rng = random.Random(seed * 1000 + i)
    user = f"user-{i}@example.com"
    n = 0
    while time.monotonic() < deadline:
        exp = int(time.time()) + token_ttl
        token = issuer.mint(gw.audience, scope=SCOPE, sub=user, act={"sub": f"agent-soak-{i}"},
                            sid=f"soak-{i}-{uuid.uuid4().hex[:8]}", task_id=f"task-{i}-{uuid.uuid4().hex[:8]}",
                            exp=exp)
        try:
            async with sdk_client(gw.mcp_url, token, timeout=90) as client:
                tally.sessions += 1
                for _ in range(rng.randint(*per_session)):
                    if time.monotonic() >= deadline or time.time() > exp - 20:
                        break  # (a session ends before its token does)
                    n += 1
                    name, args = pick_call(rng, n)
                    t0 = time.perf_counter()
                    held_tool = (name == "bank.transfer" and args["to"].startswith("SUPPLIER-")
                                 and args["amount"] <= 10000) or name == "docs.send_mail"
                    tally.calls += 1
                    try:
                        result = await client.call_tool(name, args)
                    except MCPError as e:
                        dt = time.perf_counter() - t0
                        data = e.error.data if isinstance(e.error.data, dict) else {}
                        reason = str(data.get("reason", f"code {e.code}"))
                        cid = str(data.get("correlation_id", ""))
                        tally.reasons[reason] = tally.reasons.get(reason, 0) + 1
                        if not data.get("denied"):
                            # Not a denial (an upstream error would still be
                            # forwarded and recorded): keep it for the report.
                            tally.errors += 1
                            if len(tally.error_samples) < 20:
                                tally.error_samples.append(f"{name}: {e.code} {e.message}")
                        elif reason in HELD_REASONS or cid in tally.held_ids:
                            tally.held_denied += 1
                            tally.held_calls.append((cid, False))
                            tally.held_lat.append(dt)
                        else:
                            tally.denied += 1
                            tally.lat.append(dt)
                    else:
                        dt = time.perf_counter() - t0
                        tally.forwarded += 1
                        cid = str((result.meta or {}).get(META_CORRELATION, ""))
                        if held_tool or cid in tally.held_ids:
                            tally.held_released += 1
                            tally.held_calls.append((cid, True))
                            tally.held_lat.append(dt)
                        else:
                            tally.allowed += 1
                            tally.lat.append(dt)
                            reason = "ok_tool_error" if result.is_error else "ok"
                            tally.reasons[reason] = tally.reasons.get(reason, 0) + 1
                            if cid and not tally.pending_probe:
                                tally.pending_probe = True
                                asyncio.get_running_loop().run_in_executor(
                                    None, probe_lag, store, cid, time.perf_counter(), tally)
                    await asyncio.sleep(rng.uniform(0, 2 * think))
        except Exception as e:  # noqa: BLE001 - a broken session is counted and reported
            tally.errors += 1
            if len(tally.error_samples) < 20:
                tally.error_samples.append(f"session of agent {i}: {type(e).__name__}: {e}"[:300])
            await asyncio.sleep(0.5)


def probe_lag(store: Store, cid: str, acked: float, tally: Tally) -> None:
    """Seconds from the agent having the result to the outcome record being
    visible in the store (polled every 2 ms, for at most 10 s)."""
    try:
        deadline = acked + 10
        while time.perf_counter() < deadline:
            if store.outcome_visible(cid):
                tally.lag_probes.append(time.perf_counter() - acked)
                return
            time.sleep(0.002)
        tally.lag_probes.append(float("inf"))
    finally:
        tally.pending_probe = False


async def approver(gw: Gateway, issuer: Issuer, tally: Tally, stop: asyncio.Event, seed: int) -> None:
    """Decides every pending held call: approves two of three, denies one.
    Its operator token (10 minutes) is renewed every 5 minutes, as a
    person's tool would."""
    import httpx2

    rng = random.Random(seed)
    minted = 0.0
    async with httpx2.AsyncClient(timeout=30) as http:
        while not stop.is_set():
            if time.monotonic() - minted > 300:
                http.headers["Authorization"] = f"Bearer {issuer.operator_token(gw.api_audience, APPROVER)}"
                minted = time.monotonic()
            try:
                r = await http.get(gw.public_url + "/api/approvals", params={"status": "pending", "limit": 1000})
                pending = r.json().get("approvals", []) if r.status_code == 200 else []
                if r.status_code != 200:
                    tally.approver_other += 1
            except (httpx2.HTTPError, ValueError):
                pending = []
                tally.approver_other += 1
            for a in pending:
                if a.get("kind") == "intent" or not a.get("waiting"):
                    continue
                if a.get("correlation_id"):
                    tally.held_ids.add(a["correlation_id"])
                approve = rng.random() < 2 / 3
                action = "approve" if approve else "deny"
                try:
                    d = await http.post(f"{gw.public_url}/api/approvals/{a['id']}/{action}",
                                        json={"args_hash": a["args_hash"], "comment": "soak approver"})
                except httpx2.HTTPError:
                    tally.approver_other += 1
                    continue
                if d.status_code == 200:
                    tally.approver_decided += 1
                    if approve:
                        tally.approver_approved += 1
                    else:
                        tally.approver_denied += 1
                elif d.status_code in (403, 409):
                    tally.approver_refused += 1  # recorded as a refused control action
                else:
                    tally.approver_other += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)


async def loop_lag(tally: Tally, stop: asyncio.Event) -> None:
    """How late the agents' own event loop wakes up (10 ms sleeps): the part
    of a measured latency that is the client's, not the gateway's."""
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.01)
        tally.loop_lag.append(time.perf_counter() - t - 0.01)


# --------------------------------------------------------------------------
# The soak


COLUMNS = ["t_s", "phase", "rss_mib", "rss_anon_mib", "rss_file_mib", "fds", "threads", "sessions_open", "connections_open", "calls",
           "calls_per_s", "allowed", "denied", "held", "errors", "p50_ms", "p99_ms", "held_p50_ms",
           "client_loop_lag_p99_ms", "forwarded_acked", "outcomes_visible", "audit_lag_records", "audit_lag_p50_ms", "audit_lag_max_ms",
           "audit_records", "siege_idle_open", "siege_slow_open"]


def fmt(v: float | None, scale: float = 1000.0) -> str:
    return "" if v is None else f"{v * scale:.2f}"


async def run_soak(args: argparse.Namespace) -> int:
    # The Python SDK warns on every session it closes: rmcp answers DELETE
    # with 202, the SDK expects 200 or 204 (the session is closed either way).
    logging.getLogger("mcp.client.streamable_http").setLevel(logging.ERROR)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    raise_fd_limit(args.idle + args.slow + 4 * args.sessions + 1024)
    issuer = Issuer(out / "idp")
    launcher = Launcher(out / "run")
    tally = Tally()
    problems: list[str] = []
    samples: list[dict[str, Any]] = []
    try:
        gw = start_gateway(launcher, issuer)
        pid = gw.proc.pid
        store = Store(gw.audit_db)
        # Pin every tool before the load: concurrent first uses of one tool
        # each record a pin (seen in the first runs), which would blur the
        # relation between calls and records checked at the end.
        async with sdk_client(gw.mcp_url, issuer.mint(gw.audience, scope=SCOPE, sub="pinning@example.com")) as c:
            await c.list_tools()
        bootstrap, _ = store.counts()
        port = int(gw.public_url.rsplit(":", 1)[1])
        siege = Siege(launcher, port, args.idle, args.slow, reopen_secs=1.0) if (args.idle or args.slow) else None
        if siege:
            siege.wait_ready()
        started = time.monotonic()
        deadline = started + args.duration
        # Per-session state (usage, taint, provenance) is kept until the
        # session's token has expired plus a 120 s grace, and swept once a
        # minute: only after that does the state of ended sessions turn over.
        warmup = args.warmup if args.warmup is not None else min(args.token_ttl + 180, args.duration / 2)
        lo, _, hi = args.calls_per_session.partition("-")
        per_session = (int(lo), int(hi or lo))
        stop = asyncio.Event()
        appr = asyncio.create_task(approver(gw, issuer, tally, stop, args.seed))
        lagger = asyncio.create_task(loop_lag(tally, stop))
        agents = [asyncio.create_task(agent(i, gw, issuer, tally, deadline, args.think_ms / 1000, store, args.seed,
                                        args.token_ttl, per_session))
                  for i in range(args.sessions)]
        print(f"soak: gateway pid {pid} at {gw.public_url}; {args.sessions} sessions for {args.duration:.0f} s, "
              f"{args.idle} idle + {args.slow} slow-header connections; out {out}", flush=True)

        csv_path = out / "soak.csv"
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            last_calls = 0
            last_t = started
            next_t = started + args.interval
            pending = set(agents)
            while pending:
                _, pending = await asyncio.wait(pending, timeout=max(0.0, next_t - time.monotonic()))
                now = time.monotonic()
                if now < next_t and pending:
                    continue
                next_t = max(next_t + args.interval, now + 0.5)
                m = await asyncio.to_thread(metrics, gw)
                total, outcomes = await asyncio.to_thread(store.counts)
                lat, tally.lat = tally.lat, []
                held_lat, tally.held_lat = tally.held_lat, []
                lags, tally.lag_probes = tally.lag_probes, []
                loop, tally.loop_lag = tally.loop_lag, []
                tally.all_loop_lag += loop
                tally.all_lat += lat
                tally.all_held_lat += held_lat
                st = siege.status() if siege else {}
                parts = rss_parts_kib(pid)
                row = {
                    "t_s": f"{now - started:.1f}",
                    "phase": "warmup" if now - started < warmup else ("run" if now < deadline else "drain"),
                    "rss_mib": f"{rss_kib(pid) / 1024:.1f}",
                    "rss_anon_mib": f"{parts.get('RssAnon', 0) / 1024:.1f}",
                    "rss_file_mib": f"{(parts.get('RssFile', 0) + parts.get('RssShmem', 0)) / 1024:.1f}",
                    "fds": fd_count(pid),
                    "threads": thread_count(pid),
                    "sessions_open": int(m.get("mandate_sessions_open", -1)),
                    "connections_open": int(m.get("mandate_connections_open", -1)),
                    "calls": tally.calls - last_calls,
                    "calls_per_s": f"{(tally.calls - last_calls) / max(1e-9, now - last_t):.1f}",
                    "allowed": tally.allowed, "denied": tally.denied,
                    "held": len(tally.held_calls), "errors": tally.errors,
                    "p50_ms": fmt(pct(lat, 50)), "p99_ms": fmt(pct(lat, 99)),
                    "held_p50_ms": fmt(pct(held_lat, 50)),
                    "client_loop_lag_p99_ms": fmt(pct(loop, 99)),
                    "forwarded_acked": tally.forwarded,
                    "outcomes_visible": outcomes,
                    "audit_lag_records": tally.forwarded - outcomes,
                    "audit_lag_p50_ms": fmt(pct(lags, 50)), "audit_lag_max_ms": fmt(max(lags) if lags else None),
                    "audit_records": total,
                    "siege_idle_open": st.get("idle_open", ""), "siege_slow_open": st.get("slow_open", ""),
                }
                last_calls, last_t = tally.calls, now
                w.writerow(row)
                f.flush()
                samples.append(row)
                print("soak: " + " ".join(f"{k}={row[k]}" for k in (
                    "t_s", "rss_mib", "fds", "calls_per_s", "p50_ms", "p99_ms", "held_p50_ms", "client_loop_lag_p99_ms",
                    "audit_lag_records", "audit_lag_max_ms", "errors")), flush=True)

        await asyncio.gather(*agents)
        stop.set()
        await appr
        await lagger
        if siege:
            siege_final = siege.status()
            siege.stop()
        else:
            siege_final = {}

        # Outcome records are written after the agent has its result: wait
        # for the last ones before counting.
        catch_up = time.monotonic()
        while time.monotonic() - catch_up < 30:
            total, outcomes = store.counts()
            if outcomes >= tally.forwarded:
                break
            await asyncio.sleep(0.05)
        m = metrics(gw)
        rss_end = rss_kib(pid)
        gw.proc.stop()  # SIGTERM: drains, signs a final checkpoint
        if gw.proc.popen.returncode not in (0, None):
            problems.append(f"mandate serve exited with {gw.proc.popen.returncode}")
        launcher.close()  # the demo upstreams flush their records

        total, outcomes = store.counts()
        expected = tally.expected_records(bootstrap)
        if total != expected:
            problems.append(f"audit records: {total} in the store, {expected} expected from the calls")
        if outcomes != tally.forwarded:
            problems.append(f"call outcome records: {outcomes}, forwarded calls acknowledged: {tally.forwarded}")
        received = len(read_jsonl(out / "run" / "docs-calls.jsonl")) + len(read_jsonl(out / "run" / "bank-calls.jsonl"))
        if received != tally.forwarded:
            problems.append(f"the upstreams received {received} calls, the agents had {tally.forwarded} results")
        if tally.approver_other:
            problems.append(f"the approver failed {tally.approver_other} times (listing or deciding)")
        if tally.errors:
            problems.append(f"{tally.errors} calls or sessions failed outside the policy: {tally.error_samples[:5]}")
        verify = run_mandate("audit", "verify", "--data-dir", str(gw.data_dir), "--json", timeout=600)
        if verify.returncode != 0:
            problems.append(f"mandate audit verify failed ({verify.returncode}): {verify.stdout[-2000:]} {verify.stderr[-2000:]}")

        summary = summarise(args, samples, tally, bootstrap, total, expected, outcomes, received, m, verify,
                            warmup, rss_end, siege_final, store.breakdown(), problems)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        if not args.no_plot:
            plot(csv_path, Path(args.plot) if args.plot else out / "soak.png", summary)
        print_report(summary)
        return 1 if problems else 0
    finally:
        launcher.close()


def summarise(args: argparse.Namespace, samples: list[dict[str, Any]], tally: Tally, bootstrap: int, total: int,
              expected: int, outcomes: int, received: int, m: dict[str, float],
              verify: subprocess.CompletedProcess[str], warmup: float, rss_end_kib: int,
              siege: dict[str, Any], breakdown: dict[str, int], problems: list[str]) -> dict[str, Any]:
    run = [s for s in samples if s["phase"] == "run"]
    rss = [float(s["rss_mib"]) for s in run]
    ts = [float(s["t_s"]) for s in run]
    rss_after_warmup = statistics.median(rss[:3]) if rss else None
    rss_last = statistics.median(rss[-3:]) if rss else None
    slope = None
    if len(rss) >= 3:
        mt, mr = statistics.fmean(ts), statistics.fmean(rss)
        den = sum((t - mt) ** 2 for t in ts)
        slope = sum((t - mt) * (r - mr) for t, r in zip(ts, rss)) / den * 3600 if den else None
    anon = [float(s["rss_anon_mib"]) for s in run]
    filebacked = [float(s["rss_file_mib"]) for s in run]
    fds = [int(s["fds"]) for s in run]
    p99s = [float(s["p99_ms"]) for s in run if s["p99_ms"]]
    p50s = [float(s["p50_ms"]) for s in run if s["p50_ms"]]
    third = max(1, len(run) // 3)
    lags_ms = [float(s["audit_lag_max_ms"]) for s in samples if s["audit_lag_max_ms"] not in ("", "inf")]
    duration = args.duration
    return {
        "command": " ".join(sys.argv),
        "binary": str(mandate_bin()),
        "duration_s": duration, "sessions": args.sessions, "think_ms": args.think_ms, "warmup_s": warmup,
        "token_ttl_s": args.token_ttl, "calls_per_session": args.calls_per_session,
        "idle_connections": args.idle, "slow_header_connections": args.slow,
        "samples": len(samples), "samples_after_warmup": len(run),
        "calls": tally.calls, "calls_per_s": tally.calls / duration if duration else None,
        "allowed": tally.allowed, "denied": tally.denied, "held_released": tally.held_released,
        "held_denied": tally.held_denied, "errors": tally.errors, "error_samples": tally.error_samples,
        "reasons": tally.reasons, "mcp_sessions_opened": tally.sessions,
        "approver": {"approved": tally.approver_approved, "denied": tally.approver_denied,
                     "refused": tally.approver_refused, "other": tally.approver_other},
        "latency_ms": {"p50": fmt(pct(tally.all_lat, 50)), "p99": fmt(pct(tally.all_lat, 99)),
                       "held_p50": fmt(pct(tally.all_held_lat, 50)), "held_p99": fmt(pct(tally.all_held_lat, 99)),
                       "client_loop_lag_p50": fmt(pct(tally.all_loop_lag, 50)),
                       "client_loop_lag_p99": fmt(pct(tally.all_loop_lag, 99)),
                       "interval_p99_first_third_median": statistics.median(p99s[:third]) if p99s else None,
                       "interval_p99_last_third_median": statistics.median(p99s[-third:]) if p99s else None,
                       "interval_p50_first_third_median": statistics.median(p50s[:third]) if p50s else None,
                       "interval_p50_last_third_median": statistics.median(p50s[-third:]) if p50s else None},
        "rss_mib": {"after_warmup_median_first3": rss_after_warmup, "end_median_last3": rss_last,
                    "max": max(rss) if rss else None, "min": min(rss) if rss else None,
                    "growth_after_warmup_pct": (rss_last / rss_after_warmup - 1) * 100 if rss else None,
                    "slope_mib_per_hour": slope, "at_stop": rss_end_kib / 1024,
                    "anon_after_warmup_median_first3": statistics.median(anon[:3]) if anon else None,
                    "anon_end_median_last3": statistics.median(anon[-3:]) if anon else None,
                    "file_after_warmup_median_first3": statistics.median(filebacked[:3]) if filebacked else None,
                    "file_end_median_last3": statistics.median(filebacked[-3:]) if filebacked else None},
        "fds": {"after_warmup": fds[0] if fds else None, "end": fds[-1] if fds else None,
                "max": max(fds) if fds else None, "min": min(fds) if fds else None},
        "audit": {"bootstrap_records": bootstrap, "records": total, "expected": expected,
                  "call_outcomes": outcomes, "forwarded_acknowledged": tally.forwarded,
                  "upstream_received": received, "lag_probe_max_ms": max(lags_ms) if lags_ms else None,
                  "lag_records_max": max((int(s["audit_lag_records"]) for s in samples), default=None),
                  "appended_metric": m.get("mandate_audit_appended_total"), "breakdown": breakdown,
                  "verify_exit": verify.returncode, "verify_stdout": verify.stdout[-1500:]},
        "gateway_metrics_at_end": {k: v for k, v in m.items() if k.startswith((
            "mandate_sessions", "mandate_connections", "mandate_audit", "mandate_concurrency"))},
        "siege": siege,
        "problems": problems, "ok": not problems,
    }


def print_report(s: dict[str, Any]) -> None:
    r, lat, a = s["rss_mib"], s["latency_ms"], s["audit"]
    print()
    print(f"Soak: {s['sessions']} sessions, {s['duration_s']:.0f} s, {s['calls']} calls "
          f"({s['calls_per_s']:.1f}/s): {s['allowed']} allowed, {s['denied']} denied, "
          f"{s['held_released']} held and approved, {s['held_denied']} held and denied; {s['errors']} errors; "
          f"{s['mcp_sessions_opened']} MCP sessions opened")
    if r["after_warmup_median_first3"] is not None:
        print(f"RSS: {r['after_warmup_median_first3']:.1f} MiB after warm-up, {r['end_median_last3']:.1f} MiB at the end "
              f"({r['growth_after_warmup_pct']:+.1f} %), max {r['max']:.1f} MiB, slope "
              + (f"{r['slope_mib_per_hour']:+.1f} MiB/h" if r["slope_mib_per_hour"] is not None else "n/a"))
    print(f"Descriptors: {s['fds']}")
    print(f"Latency (unheld calls): p50 {lat['p50']} ms, p99 {lat['p99']} ms; held calls p50 {lat['held_p50']} ms "
          f"(includes the approver's polling); the client's own event loop was late by p50 "
          f"{lat['client_loop_lag_p50']} ms, p99 {lat['client_loop_lag_p99']} ms")
    print(f"Audit: {a['records']} records, {a['expected']} expected; {a['call_outcomes']} call outcomes for "
          f"{a['forwarded_acknowledged']} forwarded calls; upstreams received {a['upstream_received']}; "
          f"lag max {a['lag_records_max']} records / {a['lag_probe_max_ms']} ms; verify exit {a['verify_exit']}")
    for p in s["problems"]:
        print(f"PROBLEM: {p}")
    print("soak: " + ("ok" if s["ok"] else "FAILED"))


def plot(csv_path: Path, png: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(csv_path)))

    def col(name: str) -> list[float]:
        return [float(r[name]) if r[name] not in ("", "inf") else float("nan") for r in rows]

    t = col("t_s")
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    ax = axes[0]
    ax.plot(t, col("rss_mib"), color="tab:blue", label="RSS")
    ax.plot(t, col("rss_anon_mib"), color="tab:cyan", lw=1, label="of which anonymous (heap)")
    ax.plot(t, col("rss_file_mib"), color="tab:olive", lw=1, label="of which file-backed (binary, SQLite -shm)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_ylabel("gateway RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.axvline(summary["warmup_s"], color="grey", ls=":", lw=1)
    g = summary["rss_mib"]["growth_after_warmup_pct"]
    ax.set_title(f"Mandate soak: {summary['sessions']} MCP sessions, {summary['calls']} calls in "
                 f"{summary['duration_s']:.0f} s; RSS growth after warm-up "
                 + (f"{g:+.1f} %" if g is not None else "n/a"), fontsize=10)
    ax = axes[1]
    ax.plot(t, col("fds"), label="gateway open descriptors", color="tab:orange")
    ax.plot(t, col("connections_open"), label="HTTP connections open (metric)", color="tab:green", lw=1)
    ax.plot(t, col("sessions_open"), label="MCP sessions open (metric)", color="tab:purple", lw=1)
    ax.set_ylabel("count")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[2]
    ax.plot(t, col("p50_ms"), label="p50, unheld calls", color="tab:blue")
    ax.plot(t, col("p99_ms"), label="p99, unheld calls", color="tab:red")
    ax.plot(t, col("client_loop_lag_p99_ms"), label="p99 delay of the client's own event loop (not the gateway's)",
            color="tab:grey", lw=1, ls="--")
    ax.set_ylabel("latency per interval (ms)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[3]
    ax.plot(t, col("audit_lag_records"), label="forwarded calls without a visible outcome record",
            color="tab:brown")
    ax.set_ylabel("audit lag (records)")
    ax2 = ax.twinx()
    ax2.plot(t, col("audit_lag_max_ms"), label="sampled call: result → outcome record visible (ms)",
             color="tab:grey", lw=1, ls="--")
    ax2.set_ylabel("audit lag (ms)")
    ax2.set_ylim(bottom=0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    ax.set_xlabel("seconds since the load started (dotted line: end of warm-up)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    print(f"soak: plot written to {png}")


# --------------------------------------------------------------------------
# The limits probe: memory per MCP session, and latency under idle and
# slow-header connections, with the default limits


def raw_initialize(client: httpx.Client, gw: Gateway, token: str) -> str | None:
    h = {"Accept": MCP_ACCEPT, "Content-Type": "application/json", "MCP-Protocol-Version": PROTOCOL_VERSION,
         "Authorization": f"Bearer {token}"}
    r = client.post(gw.mcp_url, content=json.dumps(initialize_request()).encode(), headers=h)
    if r.status_code != 200:
        return None
    sid = r.headers.get("mcp-session-id")
    if sid:
        h["Mcp-Session-Id"] = sid
        client.post(gw.mcp_url, content=b'{"jsonrpc":"2.0","method":"notifications/initialized"}', headers=h)
    return sid


def run_threads(n: int, fn: Any) -> None:
    threads = [threading.Thread(target=fn, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def sample_rss_while(pid: int, stop: threading.Event, peaks: list[int]) -> None:
    while not stop.is_set():
        peaks.append(rss_kib(pid))
        time.sleep(0.2)


def flood_one_token(launcher: Launcher, issuer: Issuer, seconds: float, clients: int) -> dict[str, Any]:
    """The issue's attack: `clients` keep-alive clients send `initialize`
    with one token for `seconds`."""
    gw = start_gateway(launcher, issuer)
    pid = gw.proc.pid
    token = issuer.mint(gw.audience, scope=SCOPE, sid="flood")
    body = json.dumps(initialize_request()).encode()
    headers = {"Accept": MCP_ACCEPT, "Content-Type": "application/json", "MCP-Protocol-Version": PROTOCOL_VERSION,
               "Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=30) as c:  # warm up
        for _ in range(50):
            c.post(gw.mcp_url, content=body, headers=headers)
    time.sleep(1)
    before = rss_kib(pid)
    count = [0] * clients
    failures = [0] * clients
    stop_at = time.monotonic() + seconds

    def flood(k: int) -> None:
        with httpx.Client(timeout=30) as c:
            while time.monotonic() < stop_at:
                r = c.post(gw.mcp_url, content=body, headers=headers)
                if r.status_code == 200:
                    count[k] += 1
                else:
                    failures[k] += 1

    stop = threading.Event()
    peaks: list[int] = []
    sampler = threading.Thread(target=sample_rss_while, args=(pid, stop, peaks))
    sampler.start()
    run_threads(clients, flood)
    stop.set()
    sampler.join()
    after = rss_kib(pid)
    m = metrics(gw)
    gw.proc.stop()
    return {"clients": clients, "seconds": seconds, "initialize_ok": sum(count), "refused": sum(failures),
            "rss_before_mib": before / 1024, "rss_after_mib": after / 1024, "rss_peak_mib": max(peaks) / 1024,
            "added_peak_mib": (max(peaks) - before) / 1024, "added_after_mib": (after - before) / 1024,
            "sessions_open": m.get("mandate_sessions_open"), "sessions_evicted": m.get("mandate_sessions_evicted_total")}


def many_subjects(launcher: Launcher, issuer: Issuer, total: int, clients: int) -> dict[str, Any]:
    """Opens `total` sessions, one per subject (so none is evicted), in
    steps, measuring RSS at each; then one more (refused at the cap), then
    closes them all."""
    gw = start_gateway(launcher, issuer)
    pid = gw.proc.pid
    with httpx.Client(timeout=30) as c:  # warm up: a few sessions opened and closed
        for k in range(20):
            tok = issuer.mint(gw.audience, scope=SCOPE, sub=f"warm{k}@example.com")
            sid = raw_initialize(c, gw, tok)
            if sid:
                c.delete(gw.mcp_url, headers={"Mcp-Session-Id": sid, "Authorization": f"Bearer {tok}",
                                              "MCP-Protocol-Version": PROTOCOL_VERSION})
    time.sleep(1)
    base = rss_kib(pid)
    steps = []
    opened: list[tuple[str, str]] = []
    lock = threading.Lock()
    tokens = [issuer.mint(gw.audience, scope=SCOPE, sub=f"s{k}@example.com", sid=f"s{k}") for k in range(total)]
    marks = sorted({m for m in (total // 10, total // 4, total // 2, 3 * total // 4, total) if m > 0})
    done = 0
    failed = [0]
    t_open = time.monotonic()
    for mark in marks:
        chunk = tokens[done:mark]

        def open_some(k: int, chunk: list[str] = chunk) -> None:
            with httpx.Client(timeout=30) as c:
                for tok in chunk[k::clients]:
                    sid = raw_initialize(c, gw, tok)
                    with lock:
                        if sid:
                            opened.append((sid, tok))
                        else:
                            failed[0] += 1

        run_threads(clients, open_some)
        done = mark
        time.sleep(1)
        rss = rss_kib(pid)
        steps.append({"sessions": len(opened), "rss_mib": rss / 1024,
                      "bytes_per_session": (rss - base) * 1024 / max(1, len(opened))})
    open_secs = time.monotonic() - t_open
    m = metrics(gw)
    extra = gw.post(initialize_request(), issuer.mint(gw.audience, scope=SCOPE, sub="one-more@example.com"))
    fds_full = fd_count(pid)
    # Close them all (DELETE, as a client does on exit) and see what returns.
    def close_some(k: int) -> None:
        with httpx.Client(timeout=30) as c:
            for sid, tok in opened[k::clients]:
                c.delete(gw.mcp_url, headers={"Mcp-Session-Id": sid, "Authorization": f"Bearer {tok}",
                                              "MCP-Protocol-Version": PROTOCOL_VERSION})

    run_threads(clients, close_some)
    time.sleep(2)
    after_close = rss_kib(pid)
    m_after = metrics(gw)
    # Open as many again: if the memory of the closed sessions is reused,
    # RSS hardly moves; if it leaked, it grows by as much again.
    again: list[tuple[str, str]] = []
    tokens2 = [issuer.mint(gw.audience, scope=SCOPE, sub=f"r{k}@example.com", sid=f"r{k}") for k in range(len(opened))]

    def reopen_some(k: int) -> None:
        with httpx.Client(timeout=30) as c:
            for tok in tokens2[k::clients]:
                sid = raw_initialize(c, gw, tok)
                if sid:
                    with lock:
                        again.append((sid, tok))

    run_threads(clients, reopen_some)
    time.sleep(1)
    after_reopen = rss_kib(pid)
    gw.proc.stop()
    n = len(opened)
    return {"requested": total, "opened": n, "failed": failed[0], "open_seconds": open_secs,
            "rss_base_mib": base / 1024, "steps": steps,
            "bytes_per_session": (steps[-1]["rss_mib"] * 1024 - base) * 1024 / max(1, n),
            "added_mib": steps[-1]["rss_mib"] - base / 1024,
            "one_more_status": extra.status, "sessions_open_metric": m.get("mandate_sessions_open"),
            "sessions_refused_metric": m.get("mandate_sessions_refused_total"), "fds_at_full": fds_full,
            "rss_after_close_mib": after_close / 1024, "sessions_open_after_close": m_after.get("mandate_sessions_open"),
            "reopened": len(again), "rss_after_reopen_mib": after_reopen / 1024}


def session_churn(launcher: Launcher, issuer: Issuer, per_cycle: int, cycles: int, clients: int) -> dict[str, Any]:
    """Opens and closes `per_cycle` sessions (distinct subjects, fresh
    tokens) `cycles` times: if closed sessions leaked, RSS would rise by
    about the same amount every cycle; if their memory is reused, it levels
    off after the first."""
    gw = start_gateway(launcher, issuer)
    pid = gw.proc.pid
    base = rss_kib(pid)
    after: list[float] = []
    for cycle in range(cycles):
        tokens = [issuer.mint(gw.audience, scope=SCOPE, sub=f"c{cycle}-{k}@example.com") for k in range(per_cycle)]
        opened: list[tuple[str, str]] = []
        lock = threading.Lock()

        def open_close(k: int, tokens: list[str] = tokens, opened: list[tuple[str, str]] = opened) -> None:
            with httpx.Client(timeout=30) as c:
                mine = []
                for tok in tokens[k::clients]:
                    sid = raw_initialize(c, gw, tok)
                    if sid:
                        mine.append((sid, tok))
                for sid, tok in mine:
                    c.delete(gw.mcp_url, headers={"Mcp-Session-Id": sid, "Authorization": f"Bearer {tok}",
                                                  "MCP-Protocol-Version": PROTOCOL_VERSION})
                with lock:
                    opened.extend(mine)

        run_threads(clients, open_close)
        time.sleep(1)
        after.append(rss_kib(pid) / 1024)
    m = metrics(gw)
    gw.proc.stop()
    return {"per_cycle": per_cycle, "cycles": cycles, "rss_base_mib": base / 1024, "rss_after_each_cycle_mib": after,
            "sessions_open_at_end": m.get("mandate_sessions_open")}


def fresh_request(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> bool:
    """One request on a new connection (http.client: no client-side set-up
    cost to speak of, unlike an httpx client per request)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        return r.status == 200 and (method == "GET" or b'"result"' in data)
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def timed_requests(gw: Gateway, token: str, session: str, n: int) -> dict[str, Any]:
    """`n` /healthz requests and `n` authenticated tool calls, each on a
    fresh connection (as a new client must get in past the attackers)."""
    port = int(gw.public_url.rsplit(":", 1)[1])
    health, calls, fails = [], [], 0
    call = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "bank.get_balance", "arguments": {"account": "acc-1"}}}).encode()
    h = {"Accept": MCP_ACCEPT, "Content-Type": "application/json", "MCP-Protocol-Version": PROTOCOL_VERSION,
         "Authorization": f"Bearer {token}", "Mcp-Session-Id": session, "Connection": "close"}
    for _ in range(n):
        t = time.perf_counter()
        ok = fresh_request(port, "GET", "/healthz", {"Connection": "close"})
        health.append(time.perf_counter() - t)
        fails += not ok
        t = time.perf_counter()
        ok = fresh_request(port, "POST", "/mcp", h, call)
        calls.append(time.perf_counter() - t)
        fails += not ok
        time.sleep(0.01)
    return {"n": n, "failures": fails,
            "healthz_p50_ms": pct(health, 50) * 1000, "healthz_p99_ms": pct(health, 99) * 1000,
            "healthz_max_ms": max(health) * 1000,
            "call_p50_ms": pct(calls, 50) * 1000, "call_p99_ms": pct(calls, 99) * 1000,
            "call_max_ms": max(calls) * 1000}


def under_siege(launcher: Launcher, issuer: Issuer, idle: int, slow: int, n: int, reopen_secs: float,
                max_connections: int | None = None) -> dict[str, Any]:
    gw = start_gateway(launcher, issuer,
                       f"\n[limits]\nmax_connections = {max_connections}\n" if max_connections else "")
    pid = gw.proc.pid
    port = int(gw.public_url.rsplit(":", 1)[1])
    token = issuer.mint(gw.audience, scope=SCOPE, sid="under-siege", exp=int(time.time()) + 3600)
    session = gw.initialize(token)
    timed_requests(gw, token, session, 20)  # warm up
    baseline = timed_requests(gw, token, session, n)
    rss0, fds0 = rss_kib(pid), fd_count(pid)
    siege = Siege(launcher, port, idle, slow, reopen_secs)
    status = siege.wait_ready(timeout=300)
    time.sleep(3)
    m0 = metrics(gw)
    during = timed_requests(gw, token, session, n)
    m1 = metrics(gw)
    status = siege.status()
    rss1, fds1 = rss_kib(pid), fd_count(pid)
    siege.stop()
    gw.proc.stop()
    keys = ("mandate_connections_open", "mandate_connections_evicted_total", "mandate_connections_refused_total",
            "mandate_connections_header_timeouts_total", "mandate_connections_idle_closed_total")
    return {"idle": idle, "slow": slow, "reopen_secs": reopen_secs, "max_connections": max_connections or "default",
            "baseline": baseline, "during": during,
            "p99_ratio_healthz": during["healthz_p99_ms"] / baseline["healthz_p99_ms"],
            "p99_ratio_call": during["call_p99_ms"] / baseline["call_p99_ms"],
            "rss_before_mib": rss0 / 1024, "rss_during_mib": rss1 / 1024, "fds_before": fds0, "fds_during": fds1,
            "metrics_start": {k: m0.get(k) for k in keys}, "metrics_end": {k: m1.get(k) for k in keys},
            "siege": status}


def run_limits(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    raise_fd_limit(args.siege_idle + args.siege_slow + 2048)
    issuer = Issuer(out / "idp")
    result: dict[str, Any] = {"command": " ".join(sys.argv), "binary": str(mandate_bin())}
    problems = []
    for name, fn in (
        ("flood_one_token", lambda lr: flood_one_token(lr, issuer, args.flood_seconds, args.flood_clients)),
        ("many_subjects", lambda lr: many_subjects(lr, issuer, args.subjects, 8)),
        ("session_churn", lambda lr: session_churn(lr, issuer, args.churn_sessions, args.churn_cycles, 8)),
        ("siege_held", lambda lr: under_siege(lr, issuer, args.siege_idle, args.siege_slow, args.siege_requests, -1)),
        ("siege_reopening", lambda lr: under_siege(lr, issuer, args.siege_idle, args.siege_slow,
                                                   args.siege_requests, 5.0)),
        # The same with the connection cap above the attackers' count, so
        # that all of them are open at once (slow heads are then cut by the
        # header timeout, idle ones by the idle timeout, and reopened).
        ("siege_uncapped", lambda lr: under_siege(lr, issuer, args.siege_idle, args.siege_slow,
                                                  args.siege_requests, 5.0, max_connections=8192)),
    ):
        if args.only and name not in args.only.split(","):
            continue
        launcher = Launcher(out / name)
        try:
            print(f"limits: {name} ...", flush=True)
            result[name] = fn(launcher)
            print(json.dumps(result[name], indent=1), flush=True)
        finally:
            launcher.close()
    f = result.get("flood_one_token")
    if f and f["added_peak_mib"] > 256:
        problems.append(f"one token's initialize flood added {f['added_peak_mib']:.0f} MiB (goal <= 256)")
    for k in ("siege_held", "siege_reopening", "siege_uncapped"):
        s = result.get(k)
        if s and (s["during"]["healthz_p99_ms"] >= 100 or s["during"]["call_p99_ms"] >= 100):
            problems.append(f"{k}: p99 /healthz {s['during']['healthz_p99_ms']:.1f} ms, call "
                            f"{s['during']['call_p99_ms']:.1f} ms (goal < 100 ms)")
    result["problems"] = problems
    (out / "limits.json").write_text(json.dumps(result, indent=2))
    for p in problems:
        print(f"GOAL MISSED: {p}")
    print(f"limits: written to {out / 'limits.json'}")
    return 1 if problems else 0


# --------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    p.add_argument("--sessions", type=int, default=50, help="concurrent agent sessions (default 50)")
    p.add_argument("--out", default=str(REPO / "target" / "soak"), help="output directory (default target/soak)")
    p.add_argument("--interval", type=float, default=5, help="seconds between samples (default 5)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up before RSS growth is measured (default: "
                   "token lifetime + 180 s, when ended sessions' state starts being swept; at most half the duration)")
    p.add_argument("--calls-per-session", default="20-50", help="calls an agent makes before it closes its "
                   "session and opens a new one, MIN-MAX (default 20-50)")
    p.add_argument("--token-ttl", type=int, default=120, help="lifetime of each agent session's token (default 120 s)")
    p.add_argument("--think-ms", type=float, default=1000, help="mean pause of an agent between calls (default 1000)")
    p.add_argument("--idle", type=int, default=300, help="idle connections in the background (default 300)")
    p.add_argument("--slow", type=int, default=50, help="slow-header connections in the background (default 50)")
    p.add_argument("--seed", type=int, default=19)
    p.add_argument("--plot", help="where to write the PNG (default OUT/soak.png)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG (no matplotlib needed)")
    p.add_argument("--limits", action="store_true", help="run the limits probe instead of the soak")
    p.add_argument("--only", help="limits probe: comma-separated parts to run")
    p.add_argument("--flood-seconds", type=float, default=20)
    p.add_argument("--flood-clients", type=int, default=8)
    p.add_argument("--subjects", type=int, default=10000, help="limits probe: sessions of distinct subjects")
    p.add_argument("--churn-sessions", type=int, default=2000, help="limits probe: sessions per open/close cycle")
    p.add_argument("--churn-cycles", type=int, default=5)
    p.add_argument("--siege-idle", type=int, default=5000)
    p.add_argument("--siege-slow", type=int, default=1000)
    p.add_argument("--siege-requests", type=int, default=200)
    # Internal: the background connection process.
    p.add_argument("--siege-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--reopen-secs", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--status", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.siege_worker:
        asyncio.run(siege_worker(args.port, args.idle, args.slow, args.reopen_secs, Path(args.status)))
        return 0
    if args.limits:
        return run_limits(args)
    return asyncio.run(run_soak(args))


if __name__ == "__main__":
    sys.exit(main())
