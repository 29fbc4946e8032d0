"""No sticky sessions (issue #20): replicas sharing one control store and
one audit log on PostgreSQL behind HAProxy balancing every request round
robin, with no stickiness at all.

- a 2025-era MCP session (the official Python SDK, `Mcp-Session-Id`)
  opened through the balancer carries on whichever replica each request
  lands on, with no new handshake;
- it stays bound: another subject presenting its id on any replica is
  refused (F-04);
- what a session read on one replica taints it on every other: a mail
  after reading the customer list is held on the replica it lands on,
  though the list was read on another (F-02, F-03);
- with the embedded SQLite stores, a session outlives a restart of the
  process.

Each run gets PostgreSQL schemas of its own (MANDATE_TEST_POSTGRES_URL,
default postgres://postgres@127.0.0.1:5432/test; `skip` skips the
PostgreSQL tests), dropped at the end. HAProxy is Debian's `haproxy`
package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from e2e_support import (POLICY_DIR, Gateway, Issuer, Launcher, free_port, mandate_bin, read_jsonl, sdk_client, text_of,
                          wait_for_balancer)
from test_provenance import INTERNAL_MAIL, OPERATORS

PG_URL = os.environ.get("MANDATE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
needs_pg = pytest.mark.skipif(PG_URL == "skip", reason="MANDATE_TEST_POSTGRES_URL=skip")

HAPROXY = """
global
    maxconn 1024
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend mcp
    bind 127.0.0.1:{lb}
    default_backend replicas
backend replicas
    # Every request on its own: no stick table, no cookie.
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
{servers}
"""


def psql(sql: str) -> None:
    subprocess.run(["psql", PG_URL, "-q", "-c", sql], check=False, capture_output=True, timeout=30)


def docs(rec: Path) -> dict[str, Any]:
    return {"command": str(mandate_bin()),
            "args": ["demo-server", "--profile", "workspace", "--record", str(rec)],
            "tools": {"search": "read", "list_customers": "read", "send_mail": "outbound"},
            "default_provenance": "untrusted",
            "provenance": {"search": "untrusted", "list_customers": "sensitive", "send_mail": "trusted"}}


def flow_policies(launcher: Launcher) -> Path:
    policies = launcher.root / f"no-sticky-policies-{uuid.uuid4().hex[:6]}"
    shutil.copytree(POLICY_DIR, policies, ignore=shutil.ignore_patterns("tests", "*.md", "20-high-impact.cedar"))
    (policies / "50-internal-mail.cedar").write_text(INTERNAL_MAIL)
    return policies


def metric(gw: Gateway, name: str) -> float:
    for line in gw.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


class Trio:
    def __init__(self, replicas: list[Gateway], lb_url: str, rec: Path) -> None:
        self.replicas = replicas
        self.lb_url = lb_url
        self.rec = rec

    @property
    def audience(self) -> str:
        return self.lb_url + "/mcp"

    def taken_over(self) -> float:
        return sum(metric(g, "mandate_sessions_taken_over_total") for g in self.replicas)


@pytest.fixture(scope="module")
def trio(launcher: Launcher, issuer: Issuer) -> Trio:
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed (sudo apt-get install haproxy); scripts/test installs it")
    tag = uuid.uuid4().hex[:8]
    control_schema, audit_schema = f"e2e_ns_ctl_{tag}", f"e2e_ns_aud_{tag}"
    launcher.cleanups.append(lambda: psql(f"DROP SCHEMA IF EXISTS {control_schema} CASCADE; "
                                          f"DROP SCHEMA IF EXISTS {audit_schema} CASCADE"))
    lb = free_port()
    lb_url = f"http://127.0.0.1:{lb}"
    rec = launcher.root / f"docs-no-sticky-{tag}.jsonl"
    policies = flow_policies(launcher)
    shared = (OPERATORS
              + f'\n[control]\nstore = "{PG_URL}"\nschema = "{control_schema}"\npoll_ms = 200\n'
              + f'\n[audit]\nstore = "{PG_URL}"\nschema = "{audit_schema}"\n'
              + "\n[approvals]\ntimeout_secs = 60\n")
    replicas = [launcher.gateway(issuer, {"docs": docs(rec)}, extra_toml=shared, name=f"replica-{i}",
                                 policy_dir=policies, public_url=lb_url) for i in range(3)]
    servers = "\n".join(f"    server r{i} {g.public_url.removeprefix('http://')} check inter 500ms"
                        for i, g in enumerate(replicas))
    cfg = launcher.root / f"haproxy-{tag}.cfg"
    cfg.write_text(HAPROXY.format(lb=lb, servers=servers))
    launcher.spawn(["haproxy", "-f", str(cfg), "-db"], f"haproxy-{tag}")
    wait_for_balancer(lb_url)
    return Trio(replicas, lb_url, rec)


@needs_pg
def test_a_2025_session_moves_between_replicas_with_no_sticky_routing(trio: Trio, issuer: Issuer) -> None:
    token = issuer.mint(trio.audience, scope="docs.*", sid="lb-" + uuid.uuid4().hex[:8])
    before = trio.taken_over()

    async def go() -> list[str]:
        async with sdk_client(trio.audience, token) as c:
            names = sorted(t.name for t in (await c.list_tools()).tools)
            assert "docs.search" in names, names
            out = []
            for i in range(6):
                r = await c.call_tool("docs.search", {"query": f"quarterly report {i}"})
                assert not r.is_error, r
                out.append(text_of(r))
            return out

    results = anyio.run(go)
    assert len(results) == 6 and all(results), results
    searches = [c for c in read_jsonl(trio.rec) if c["tool"] == "search"
                and str(c["arguments"].get("query", "")).startswith("quarterly report")]
    assert len(searches) >= 6, searches
    # Round robin over three replicas: the session was carried on by at
    # least two replicas that did not open it.
    assert trio.taken_over() - before >= 2, "the balancer never moved the session"


@needs_pg
def test_a_session_id_stays_bound_to_its_subject_on_every_replica(trio: Trio, issuer: Issuer) -> None:
    a, b, c = trio.replicas
    sid = "bound-" + uuid.uuid4().hex[:8]
    alice = issuer.mint(trio.audience, scope="docs.*", sid=sid)
    session = a.initialize(alice)
    mallory = issuer.mint(trio.audience, sub="mallory@example.com", scope="docs.*", sid=sid)
    for gw in (b, c, a):
        r = gw.call_tool(mallory, session, "docs.search", {"query": "alice's session"})
        assert r.status == 403, (gw.public_url, r.status, r.text)
    ok = b.call_tool(alice, session, "docs.search", {"query": "mine"})
    assert ok.status == 200 and "result" in ok.response(), ok.text


@needs_pg
def test_what_a_session_read_on_one_replica_holds_its_mail_on_another(trio: Trio, issuer: Issuer) -> None:
    a, b, _ = trio.replicas
    mail = {"to": "team@example.com", "body": "summary"}

    def mails(subject: str) -> list[dict[str, Any]]:
        return [x for x in read_jsonl(trio.rec)
                if x["tool"] == "send_mail" and x["arguments"].get("subject") == subject]

    # Untainted, the internal mail goes straight through on B.
    clean = "clean-" + uuid.uuid4().hex[:8]
    token = issuer.mint(trio.audience, scope="docs.*", sid=clean)
    s = a.initialize(token)
    sent = b.call_tool(token, s, "docs.send_mail", {**mail, "subject": clean})
    assert "result" in sent.response(), sent.text
    assert len(mails(clean)) == 1

    # The customer list read on A, the mail sent through B: held on B.
    sid = "taint-" + uuid.uuid4().hex[:8]
    token = issuer.mint(trio.audience, scope="docs.*", sid=sid)
    s = a.initialize(token)
    listed = a.call_tool(token, s, "docs.list_customers", {}).response()
    assert listed["result"]["_meta"]["io.mandate/labels"] == ["sensitive"], listed
    box: dict[str, Any] = {}
    t = threading.Thread(target=lambda: box.update(r=b.call_tool(
        token, s, "docs.send_mail", {**mail, "subject": sid}).response()))
    t.start()
    op = issuer.operator_token(b.api_audience, "carol@example.com")
    pending: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while not pending and time.monotonic() < deadline:
        pending = [x for x in b.api("GET", "/api/approvals?status=pending", op).json()["approvals"]
                   if x["session"] == f"sid:{sid}"]
        time.sleep(0.1)
    assert pending, "the mail after reading customers on another replica was not held"
    held = pending[0]
    assert held["taint"] == ["sensitive"], held
    assert "tainted-session-sinks-need-approval" in held["policies"], held
    assert not mails(sid), "the held mail reached the upstream"
    b.api("POST", f"/api/approvals/{held['id']}/deny", op, {"args_hash": held["args_hash"], "comment": "no"})
    t.join(15)
    assert box["r"]["error"]["data"]["reason"] == "approval_denied", box
    assert not mails(sid)


def test_a_session_outlives_a_restart(launcher: Launcher, issuer: Issuer) -> None:
    rec = launcher.root / f"docs-restart-{uuid.uuid4().hex[:6]}.jsonl"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = launcher.root / f"restart-data-{uuid.uuid4().hex[:6]}"
    first = launcher.gateway(issuer, {"docs": docs(rec)}, data_dir=data, port=port, public_url=url,
                             name="before-restart")
    token = issuer.mint(first.audience, scope="docs.*", sid="restart-" + uuid.uuid4().hex[:8])
    session = first.initialize(token)
    assert "result" in first.call_tool(token, session, "docs.search", {"query": "before"}).response()
    first.proc.stop()
    second = launcher.gateway(issuer, {"docs": docs(rec)}, data_dir=data, port=port, public_url=url,
                              name="after-restart")
    after = second.call_tool(token, session, "docs.search", {"query": "after"})
    assert after.status == 200 and "result" in after.response(), after.text
    assert metric(second, "mandate_sessions_taken_over_total") == 1
    # Another subject still cannot use it.
    mallory = issuer.mint(second.audience, sub="mallory@example.com", scope="docs.*")
    assert second.call_tool(mallory, session, "docs.search", {"query": "x"}).status == 403
