"""Mandate replicas on PostgreSQL against one replica on SQLite, in one run.

Run it through `scripts/bench-replicas` (which finds the binary and the
venv). Two parts, each reported as ratios measured in the same run:

1. Throughput and added latency. One replica on SQLite and 1, 2 and 3
   replicas sharing a PostgreSQL database (audit log and control store),
   every configuration behind its own HAProxy (round robin, no stickiness)
   and all of them running at once, are given to `mandate bench --peer`,
   which drives them, the upstream directly, a bare MCP proxy and a Mandate
   of its own with the same client, tool and arguments: the sequential calls
   interleaved round-robin, the throughput runs taken in turn. Around that
   run this script reads each configuration's CPU (replicas, HAProxy and the
   PostgreSQL backends serving its database) and the calls it decided, and
   samples what the PostgreSQL backends were doing (`pg_stat_activity`).
2. Cross-replica release. A `bank.transfer` held on replica A is approved
   through replica B's API (or, as the baseline, A's own) after a random
   pause of up to one poll interval (a person's decision does not wait for
   the holder's poll), and the time from sending the approval to the
   agent's result is taken at the client. Modes
   alternate in blocks: notifications on; polling only, with A's listening
   connection terminated and new connections to the database refused (what
   happens while that connection is down); and the local approval.

Each configuration has a database of its own, dropped at the end, and every
process started is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import httpx  # noqa: E402

from e2e_support import POLICY_DIR, Gateway, Issuer, Launcher, free_port, mandate_bin  # noqa: E402
from test_approvals import HeldCall, pending_for  # noqa: E402
from test_no_sticky import HAPROXY  # noqa: E402  (round robin, no stickiness, /readyz checks)

CLK_TCK = os.sysconf("SC_CLK_TCK")
APPROVER = "approver@example.com"
OPERATORS = f'\n[[operators]]\nsub = "{APPROVER}"\nroles = ["approver"]\n'



def die(msg: str) -> None:
    print(f"scripts/bench-replicas: {msg}", file=sys.stderr)
    sys.exit(1)


# --------------------------------------------------------------------------
# PostgreSQL


class Pg:
    """The server, through `psql` with an administrator's URL."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        parts = urlsplit(admin_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5432

    def sql(self, statement: str, db: str | None = None) -> str:
        url = self.admin_url if db is None else self.url_for(db)
        r = subprocess.run(["psql", url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-F", "|", "-c", statement],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"psql: {statement[:80]}…: {r.stderr.strip()}")
        return r.stdout.strip()

    def url_for(self, db: str, app: str | None = None) -> str:
        """The administrator's URL for database `db`, naming the client
        `app` (`application_name`, as `pg_stat_activity` shows it)."""
        parts = urlsplit(self.admin_url)
        return parts._replace(path="/" + db, query=f"application_name={app}" if app else "").geturl()


@dataclass
class Database:
    """A database for one configuration."""
    name: str
    pg: Pg

    def url(self, app: str | None = None) -> str:
        return self.pg.url_for(self.name, app)

    def sql(self, statement: str) -> str:
        return self.pg.sql(statement, db=self.name)


class Run:
    """The databases one run made on the server, dropped at the end."""

    def __init__(self, pg: Pg, tag: str) -> None:
        self.pg = pg
        self.tag = tag
        self.databases: list[str] = []

    def database(self, suffix: str) -> Database:
        name = f"rbench_{self.tag}_{suffix}"
        self.pg.sql(f"CREATE DATABASE {name}")
        self.databases.append(name)
        return Database(name, self.pg)

    def drop(self) -> None:
        for db in reversed(self.databases):
            with contextlib.suppress(Exception):
                self.pg.sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


class Sampler:
    """Samples what the run's PostgreSQL backends are doing, every 100 ms,
    over one `psql` connection (`\\watch`)."""

    def __init__(self, pg: Pg, prefix: str, out: Path) -> None:
        query = (
            "SELECT extract(epoch FROM clock_timestamp())::numeric(20,3), datname, state, "
            "coalesce(wait_event_type, 'CPU'), coalesce(wait_event, 'running'), count(*) "
            f"FROM pg_stat_activity WHERE datname LIKE '{prefix}%' AND state NOT IN ('idle') "
            "AND backend_type = 'client backend' GROUP BY 1, 2, 3, 4, 5 "
            "UNION ALL SELECT extract(epoch FROM clock_timestamp())::numeric(20,3), '-', '', '', '', 0"
        )
        self.out = out
        self._file = open(out, "w")
        self.proc = subprocess.Popen(["psql", pg.admin_url, "-XAtq", "-F", "|", "-f", "-"],
                                     stdin=subprocess.PIPE, stdout=self._file, stderr=subprocess.DEVNULL,
                                     text=True, start_new_session=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(query + "\n\\watch 0.1\n")
        self.proc.stdin.flush()

    def stop(self) -> dict[str, Counter[str]]:
        """Per database: backend-samples by `state / wait event`."""
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._file.close()
        per_db: dict[str, Counter[str]] = {}
        for line in self.out.read_text().splitlines():
            fields = line.split("|")
            if len(fields) != 6 or fields[1] == "-":
                continue
            _, db, state, wtype, wevent, n = fields
            what = "running (CPU)" if wtype == "CPU" else f"{wtype}: {wevent}"
            if state == "idle in transaction":
                what = f"idle in transaction ({what})"
            per_db.setdefault(db, Counter())[what] += int(n)
        return per_db


# --------------------------------------------------------------------------
# Processes


def cpu_seconds(pid: int) -> float:
    """User + system time of one process (all its threads), 0 if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_port(port: int, what: str, proc: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if not proc.alive():
            die(f"{what} exited:\n{proc.stderr()}")
        if time.monotonic() > deadline:
            die(f"{what} is not listening on port {port} after {timeout} s")
        time.sleep(0.1)


@dataclass
class Config:
    """One configuration under test: replicas behind one HAProxy."""
    name: str
    replicas: list[Gateway]
    lb_url: str
    haproxy_pid: int
    stats_sock: Path
    db: Database | None = None
    token_file: Path | None = None
    cpu: dict[str, float] = field(default_factory=dict)

    def decisions(self) -> int:
        """Decision records in its audit log."""
        if self.db is not None:
            return int(self.db.sql("SELECT count(*) FROM mandate_audit.audit_log WHERE kind = 'decision'"))
        path = self.replicas[0].audit_db
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return int(conn.execute("SELECT count(*) FROM audit_log WHERE kind = 'decision'").fetchone()[0])
        finally:
            conn.close()

    def backend_pids(self) -> list[int]:
        if self.db is None:
            return []
        out = self.db.pg.sql(f"SELECT pid FROM pg_stat_activity WHERE datname = '{self.db.name}'")
        return [int(p) for p in out.split()]

    def servers(self) -> dict[str, tuple[str, int]]:
        """HAProxy's view of each replica: (status, requests sent)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.stats_sock))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "replicas" and row.get("svname") not in ("FRONTEND", "BACKEND"):
                out[row["svname"]] = (row.get("status", "?"), int(row.get("stot") or 0))
        return out


class Cpu:
    """CPU seconds of each configuration's processes, read before and after."""

    def __init__(self, configs: list[Config]) -> None:
        self.configs = configs
        self.start: dict[str, dict[str, float]] = {}
        self.pg_start: dict[str, dict[int, float]] = {}
        self.calls_start: dict[str, int] = {}

    def _read(self, c: Config) -> tuple[dict[str, float], dict[int, float]]:
        own = {"replicas": sum(cpu_seconds(g.proc.pid) for g in c.replicas),
               "haproxy": cpu_seconds(c.haproxy_pid)}
        return own, {pid: cpu_seconds(pid) for pid in c.backend_pids()}

    def before(self) -> None:
        for c in self.configs:
            self.start[c.name], self.pg_start[c.name] = self._read(c)
            self.calls_start[c.name] = c.decisions()

    def after(self) -> dict[str, dict[str, float]]:
        """Per configuration: calls decided and CPU ms per call by part."""
        out = {}
        for c in self.configs:
            own, pg = self._read(c)
            calls = c.decisions() - self.calls_start[c.name]
            pg_used = sum(t - self.pg_start[c.name].get(pid, 0.0) for pid, t in pg.items())
            used = {k: v - self.start[c.name][k] for k, v in own.items()}
            used["postgres"] = pg_used
            out[c.name] = {"calls": calls, **{k: 1000 * v / max(calls, 1) for k, v in used.items()}}
        return out


# --------------------------------------------------------------------------
# Setting up


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.work_dir).resolve()
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.launcher = Launcher(self.work)
        self.pg = Pg(args.pg_url)
        self.run = Run(self.pg, uuid.uuid4().hex[:8])
        self.issuer = Issuer(self.work / "idp")
        self.report: list[str] = []

    def close(self) -> None:
        self.launcher.close()
        self.run.drop()

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.report.append(text)

    def policies(self) -> Path:
        """The quickstart policies, with the session budget raised as
        `mandate bench` raises it for its own Mandate (one benchmark session
        makes thousands of calls; the rule is still evaluated on each)."""
        out = self.work / "policies"
        shutil.copytree(POLICY_DIR, out, ignore=shutil.ignore_patterns("tests", "*.md"))
        limits = out / "40-limits.cedar"
        text = limits.read_text()
        raised = text.replace("context.calls_in_session >= 1000", "context.calls_in_session >= 1000000000")
        if raised == text:
            die(f"the session budget rule was not found in {limits}")
        limits.write_text(raised)
        return out

    def upstream(self, profile: str) -> tuple[str, int]:
        port = free_port()
        proc = self.launcher.spawn([str(mandate_bin()), "demo-server", "--profile", profile,
                                    "--http", f"127.0.0.1:{port}"], f"upstream-{profile}")
        wait_port(port, f"the {profile} upstream", proc)
        return f"http://127.0.0.1:{port}/mcp", proc.pid

    def config(self, name: str, replicas: int, upstreams: dict[str, Any], policies: Path,
               db: Database | None, *, extra: str = "", apps: list[str] | None = None) -> Config:
        lb_port = free_port()
        lb_url = f"http://127.0.0.1:{lb_port}"
        gws = []
        for i in range(replicas):
            toml = extra
            if db is not None:
                (self.work / name).mkdir(exist_ok=True)
                url = db.url(apps[i] if apps else f"{name}-{i}")
                toml += (f'\n[control]\nstore = "{url}"\npoll_ms = {self.args.poll_ms}\n'
                         f'\n[audit]\nstore = "{url}"\n'
                         f'checkpoint_key = "{self.work / name / "checkpoint.key"}"\n')
            gws.append(self.launcher.gateway(self.issuer, upstreams, extra_toml=toml, name=f"{name}-{i}",
                                             policy_dir=policies, public_url=lb_url, log="warn"))
        sock = self.work / f"haproxy-{name}.sock"
        servers = "\n".join(f"    server r{i} {g.public_url.removeprefix('http://')} check inter 1s"
                            for i, g in enumerate(gws))
        cfg = self.work / f"haproxy-{name}.cfg"
        # The end-to-end tests' configuration, with a stats socket to see
        # each replica's state and the requests it was sent.
        cfg.write_text(HAPROXY.format(lb=lb_port, servers=servers)
                       .replace("global\n", f"global\n    stats socket {sock} mode 600 level user\n", 1))
        proc = self.launcher.spawn(["haproxy", "-f", str(cfg), "-db"], f"haproxy-{name}")
        wait_port(lb_port, f"HAProxy for {name}", proc)
        c = Config(name, gws, lb_url, proc.pid, sock, db)
        deadline = time.monotonic() + 30
        seen: dict[str, tuple[str, int]] = {}
        while len(seen) != len(gws) or not all(status == "UP" for status, _ in seen.values()):
            if time.monotonic() > deadline:
                die(f"HAProxy does not see every replica of {name} up: {seen}")
            time.sleep(0.2)
            with contextlib.suppress(OSError):
                seen = c.servers()
        return c

    # ----------------------------------------------------------------------
    # Part 1: throughput and added latency

    def throughput(self) -> None:
        a = self.args
        up_url, up_pid = self.upstream("workspace")
        policies = self.policies()
        docs = {"url": up_url, "timeout_secs": 30, "tools": {"search": "read"},
                "default_provenance": "untrusted", "provenance": {"search": "untrusted"}}
        configs = [self.config("sqlite-1", 1, {"docs": docs}, policies, None)]
        for n in a.replicas:
            db = self.run.database(f"pg{n}")
            configs.append(self.config(f"pg-{n}", n, {"docs": docs}, policies, db))
        peers = []
        for c in configs:
            # One token per configuration: every client of the run is one
            # Mandate session there (`--peer` sends a fixed token).
            token = self.issuer.mint(c.lb_url + "/mcp", scope="docs.*", sid=f"bench-{c.name}",
                                     exp=int(time.time()) + 6 * 3600)
            c.token_file = self.work / f"token-{c.name}"
            c.token_file.write_text(token)
            peers += ["--peer", f"{c.name}={c.lb_url}/mcp,tool=docs.search,token={c.token_file}"]
        cmd = [str(mandate_bin()), "bench", "--data-dir", str(self.work / "bench-data"),
               "--upstream-url", up_url, "--upstream-pid", str(up_pid), "--tool", "search",
               "--sequential-calls", str(a.sequential_calls), "--seconds", str(a.seconds),
               "--rounds", str(a.rounds), "--concurrency", str(a.concurrency),
               "--protocol", a.protocol, *peers]
        load_before = Path("/proc/loadavg").read_text().split()[0]
        cpu = Cpu(configs)
        cpu.before()
        sampler = Sampler(self.pg, f"rbench_{self.run.tag}_", self.work / "pg-activity.txt")
        print(f"running: {' '.join(cmd)}", file=sys.stderr, flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, MANDATE_LOG="warn"),
                           stdin=subprocess.DEVNULL)
        waits = sampler.stop()
        (self.work / "bench.md").write_text(r.stdout)
        (self.work / "bench.stderr").write_text(r.stderr)
        if r.returncode != 0:
            die(f"mandate bench failed ({r.returncode}):\n{r.stderr[-4000:]}")
        used = cpu.after()
        load_after = Path("/proc/loadavg").read_text().split()[0]
        rows = side_by_side(r.stdout)
        spread = {c.name: c.servers() for c in configs}
        for c in configs:
            for g in c.replicas:
                if not g.proc.alive():
                    die(f"a replica of {c.name} died during the run:\n{g.proc.stderr()[-2000:]}")

        base = rows.get("sqlite-1")
        if base is None:
            die("the bench report has no sqlite-1 row")
        self.say("### Throughput and added latency\n")
        self.say(f"`mandate bench`: {a.sequential_calls} interleaved sequential rounds, then {a.rounds} "
                 f"round(s) of {a.seconds} s with {a.concurrency} clients per target, MCP {a.protocol}. "
                 f"Load average (1 min) {load_before} → {load_after}.\n")
        self.say("| target | sequential p50 / p99 | added p50 / p99 vs direct | throughput | ÷ sqlite-1 "
                 "| p50 / p99 under load | CPU per call: replicas / HAProxy / PostgreSQL |")
        self.say("|---|---|---|---|---|---|---|")
        for name, row in rows.items():
            u = used.get(name)
            cpu_cell = (f"{u['replicas']:.3f} / {u['haproxy']:.3f} / {u['postgres']:.3f} ms"
                        if u else "—")
            self.say(f"| {name} | {row['seq']} | {row['added']} | {row['rate']:.0f} calls/s "
                     f"| {row['rate'] / base['rate']:.2f}× | {row['load']} | {cpu_cell} |")
        self.say("\nRequests HAProxy sent to each replica (round robin): "
                 + "; ".join(f"{n}: " + ", ".join(f"{s} {k}" for s, (_, k) in sorted(v.items()))
                             for n, v in spread.items()) + ".")
        self.say("Calls decided per configuration over the run (its audit log): "
                 + ", ".join(f"{n} {int(u['calls'])}" for n, u in used.items()) + ".\n")
        self.say("What the PostgreSQL backends serving each configuration were doing when not idle "
                 "(`pg_stat_activity` every 100 ms over the whole run, share of backend-samples):\n")
        for c in configs:
            if c.db is None:
                continue
            counts = waits.get(c.db.name, Counter())
            total = sum(counts.values()) or 1
            top = ", ".join(f"{what} {100 * n / total:.0f}%" for what, n in counts.most_common(6))
            self.say(f"- {c.name} ({total} samples): {top}")
        self.say("")
        self.explain(configs[-1])

    def explain(self, c: Config) -> None:
        """EXPLAIN ANALYZE of the per-call read and the writer's head read,
        on the largest configuration's log as the run left it."""
        if c.db is None:
            return
        db = c.db
        session = db.sql("SELECT session FROM mandate_audit.audit_log WHERE kind = 'decision' "
                         "GROUP BY session ORDER BY count(*) DESC LIMIT 1")
        rows = db.sql("SELECT count(*) FROM mandate_audit.audit_log")
        last = int(db.sql("SELECT max(seq) FROM mandate_audit.audit_log"))
        after = max(last - 4, 0)
        tail = ("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT seq, prev_hash, hash, body "
                "FROM mandate_audit.audit_log WHERE session = '{s}' AND seq > {a} "
                "AND kind IN ('decision', 'outcome') ORDER BY seq").format(s=session.replace("'", "''"), a=after)
        head = ("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT seq, hash FROM mandate_audit.audit_log "
                "ORDER BY seq DESC LIMIT 1")
        self.say(f"Plans on {c.name}'s log after the run ({rows} records; the session's records after "
                 f"seq {after}, as a replica's next catch-up reads them):\n")
        self.say("```")
        self.say(db.sql(tail))
        self.say(db.sql(head))
        self.say("```\n")

    # ----------------------------------------------------------------------
    # Part 2: cross-replica release

    def release(self) -> None:
        a = self.args
        up_url, _ = self.upstream("bank")
        bank = {"url": up_url, "timeout_secs": 30,
                "tools": {"get_balance": "read", "transfer": "financial"}}
        db = self.run.database("release")
        c = self.config("release", 2, {"bank": bank}, POLICY_DIR, db,
                        extra=OPERATORS + "\n[approvals]\ntimeout_secs = 60\n",
                        apps=["rbench-a", "rbench-b"])
        a_gw, b_gw = c.replicas
        op = self.issuer.operator_token(a_gw.api_audience, APPROVER)
        modes = ["notify", "poll", "local"]
        per_block = max(1, a.release_calls // a.release_blocks)
        times: dict[str, list[float]] = {m: [] for m in modes}
        posts: dict[str, list[float]] = {m: [] for m in modes}
        # Warm up: every connection of both replicas is opened (the pools
        # connect lazily) before the connection limit is set.
        for i in range(5):
            self.release_once(a_gw, a_gw, op, f"warm {i}")
        time.sleep(2.5 * a.poll_ms / 1000 + 2)
        load_before = Path("/proc/loadavg").read_text().split()[0]
        for block in range(a.release_blocks):
            for mode in modes:
                if mode == "poll":
                    self.refuse_listener(db, "rbench-a")
                for i in range(per_block):
                    approver = a_gw if mode == "local" else b_gw
                    took, post = self.release_once(a_gw, approver, op, f"{mode} {block}.{i}")
                    times[mode].append(took)
                    posts[mode].append(post)
                if mode == "poll":
                    self.allow_listener(db, "rbench-a")
        load_after = Path("/proc/loadavg").read_text().split()[0]
        for g in c.replicas:
            if not g.proc.alive():
                die(f"a replica died during the release runs:\n{g.proc.stderr()[-2000:]}")
        n = len(times["notify"])
        self.say("### Cross-replica release\n")
        self.say(f"{n} held `bank.transfer` calls per mode, on replica A, in {a.release_blocks} interleaved "
                 f"blocks; `poll_ms` = {a.poll_ms}. Timed at the client: from sending the approval "
                 f"(`POST /api/approvals/{{id}}/approve`) to the agent's result. Load average (1 min) "
                 f"{load_before} → {load_after}.\n")
        self.say("| approved through | notifications | p50 | p99 | max | mean | ÷ local p50 | approval POST p50 |")
        self.say("|---|---|---|---|---|---|---|---|")
        local50 = pct(times["local"], 0.5)
        label = {"notify": ("replica B", "on"), "poll": ("replica B", "off: A's listener refused, polls only"),
                 "local": ("replica A (the holder)", "not needed")}
        for mode in modes:
            v = times[mode]
            who, note = label[mode]
            self.say(f"| {who} | {note} | {pct(v, 0.5):.1f} ms | {pct(v, 0.99):.1f} ms | {max(v):.1f} ms "
                     f"| {sum(v) / len(v):.1f} ms | {pct(v, 0.5) / local50:.1f}× | {pct(posts[mode], 0.5):.1f} ms |")
        self.say(f"\nGoals: p99 ≤ 1000 ms with notifications (measured {pct(times['notify'], 0.99):.1f} ms); "
                 f"≤ poll interval {a.poll_ms} ms without (measured {pct(times['poll'], 0.99):.1f} ms). "
                 f"With {n} samples the p99 is the largest but one or the largest.")

    def release_once(self, holder: Gateway, approver: Gateway, op: str, memo: str) -> tuple[float, float]:
        """One held transfer on `holder`, approved through `approver`:
        (approval sent → result, the approval request's own time), in ms."""
        held = TimedHeldCall(holder, self.issuer, {"amount": 1, "to": "SUPPLIER-7", "memo": f"rbench {memo}"},
                             task_id="rbench-" + uuid.uuid4().hex[:8])
        req = pending_for(holder, op, held.sid)
        # A person decides at a moment unrelated to the holder's polls: a
        # pause of up to one poll interval, so the approval does not always
        # land at the same phase of the holder's poll.
        time.sleep(random.uniform(0, self.args.poll_ms / 1000))
        sent = time.monotonic()
        r = approver.api("POST", f"/api/approvals/{req['id']}/approve", op, {"args_hash": req["args_hash"]})
        acked = time.monotonic()
        if r.status_code != 200:
            die(f"the approval was refused: {r.status_code} {r.text}")
        held.thread.join(30)
        if held.done is None or held.reply is None:
            die(f"the held call did not finish within 30 s of its approval ({held.failure})")
        body = held.reply.response()
        if "result" not in body:
            die(f"the approved call failed: {body}")
        return 1000 * (held.done - sent), 1000 * (acked - sent)

    def listeners(self, db: Database, app: str) -> list[int]:
        out = self.pg.sql(f"SELECT pid FROM pg_stat_activity WHERE datname = '{db.name}' "
                          f"AND application_name = '{app}' AND query LIKE 'LISTEN %'")
        return [int(p) for p in out.split()]

    def refuse_listener(self, db: Database, app: str) -> None:
        """Ends `app`'s listening connection and refuses its reconnection
        (the database takes no new connection; those open stay): that
        replica sees other replicas' changes by polling only."""
        pids = self.listeners(db, app)
        if len(pids) != 1:
            die(f"expected one listening connection for {app}, found {pids}")
        self.pg.sql(f"ALTER DATABASE {db.name} ALLOW_CONNECTIONS false")
        self.pg.sql(f"SELECT pg_terminate_backend({pids[0]})")
        time.sleep(1)
        if self.listeners(db, app):
            die(f"{app} is still listening after its connection was ended")

    def allow_listener(self, db: Database, app: str) -> None:
        self.pg.sql(f"ALTER DATABASE {db.name} ALLOW_CONNECTIONS true")
        deadline = time.monotonic() + 15
        while not self.listeners(db, app):
            if time.monotonic() > deadline:
                die(f"{app} did not listen again within 15 s")
            time.sleep(0.1)


class TimedHeldCall(HeldCall):
    """A held call that notes when its result arrived."""

    done: float | None = None

    def _run(self) -> None:
        super()._run()
        self.done = time.monotonic()


def pct(v: list[float], p: float) -> float:
    s = sorted(v)
    return s[round((len(s) - 1) * p)] if s else 0.0


def side_by_side(report: str) -> dict[str, dict[str, Any]]:
    """The rows of `mandate bench`'s side-by-side table, by target."""
    rows: dict[str, dict[str, Any]] = {}
    inside = False
    for line in report.splitlines():
        if line.startswith("## Side by side"):
            inside = True
            continue
        if not inside:
            continue
        if line.startswith("Throughput, row"):
            break
        cells = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(cells) < 8 or cells[0] in ("target", "") or cells[0].startswith("---"):
            continue
        rows[cells[0]] = {"seq": cells[1], "added": cells[2],
                          "rate": float(cells[4].split()[0]), "load": cells[7]}
    return rows


def main() -> None:
    p = argparse.ArgumentParser(prog="scripts/bench-replicas", description=__doc__.split("\n\n")[0])
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
                   help="a PostgreSQL superuser's URL: it creates and drops the run's databases, "
                        "and the replicas connect with it")
    p.add_argument("--replicas", default="1,2,3", help="replica counts on PostgreSQL (default 1,2,3)")
    p.add_argument("--sequential-calls", type=int, default=300, help="interleaved sequential rounds (mandate bench)")
    p.add_argument("--seconds", type=int, default=5, help="seconds per throughput run (mandate bench)")
    p.add_argument("--rounds", type=int, default=2, help="throughput runs per target, in turn (mandate bench)")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent clients (mandate bench)")
    p.add_argument("--protocol", default="2025-11-25", choices=["2025-11-25", "2026-07-28"],
                   help="MCP revision the clients speak (mandate bench)")
    p.add_argument("--poll-ms", type=int, default=500, help="[control] poll_ms of every PostgreSQL replica")
    p.add_argument("--release-calls", type=int, default=50, help="held calls per release mode (default 50)")
    p.add_argument("--release-blocks", type=int, default=5, help="blocks the release modes alternate in")
    p.add_argument("--only", choices=["throughput", "release"], help="run one part only")
    p.add_argument("--work-dir", default=str(REPO / "target" / "bench-replicas"), help="wiped first")
    args = p.parse_args()
    args.replicas = [int(x) for x in args.replicas.split(",") if x]
    if not args.replicas or any(n < 1 or n > 8 for n in args.replicas):
        die("--replicas: counts from 1 to 8")
    if args.release_blocks < 1 or args.release_calls < args.release_blocks:
        die("--release-calls must be at least --release-blocks")
    for tool in ("haproxy", "psql"):
        if shutil.which(tool) is None:
            die(f"{tool} is not installed")
    bench = Bench(args)
    try:
        bench.say(f"## Replicas (`scripts/bench-replicas`, {time.strftime('%Y-%m-%d %H:%M')})\n")
        bench.say(f"{os.cpu_count()} CPUs; {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}; "
                  f"PostgreSQL {bench.pg.sql('SHOW server_version')}, "
                  f"{subprocess.run(['haproxy', '-v'], capture_output=True, text=True).stdout.splitlines()[0]}.\n")
        if args.only != "release":
            bench.throughput()
        if args.only != "throughput":
            bench.release()
    finally:
        (bench.work / "report.md").write_text("\n".join(bench.report) + "\n")
        bench.close()
    print(f"\n(report: {bench.work / 'report.md'}; bench's own: {bench.work / 'bench.md'})", file=sys.stderr)


if __name__ == "__main__":
    main()
