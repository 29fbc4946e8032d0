"""One valid token must never take the gateway down, and one subject's state
must never be another's: bounded sessions, connections and concurrent calls,
one parse of the HTTP envelope, isolation by issuer, and taint that survives
a restart (docs/THREAT-MODEL.md, "Limits").

Each test is named after the finding it closes."""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import socket
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e_support import (
    MCP_ACCEPT,
    POLICY_DIR,
    PROTOCOL_VERSION,
    Gateway,
    Issuer,
    Launcher,
    initialize_request,
    mandate_bin,
    read_jsonl,
)

SCOPE = "docs.* rec.*"

OPERATORS = """
[[operators]]
sub = "carol@example.com"
roles = ["approver"]
"""


def limits_toml(**limits: int) -> str:
    return "\n[limits]\n" + "".join(f"{k} = {v}\n" for k, v in limits.items())


def docs_upstream(rec: Path) -> dict[str, Any]:
    return {
        "command": str(mandate_bin()),
        "args": ["demo-server", "--profile", "workspace", "--record", str(rec)],
        "tools": {"search": "read", "list_customers": "read", "send_mail": "outbound"},
        "provenance": {"search": "untrusted", "list_customers": "sensitive", "send_mail": "trusted"},
    }


def metric(gw: Gateway, name: str) -> float:
    for line in gw.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def raise_own_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


# --------------------------------------------------------------------------
# Sessions


def test_one_token_opening_sessions_keeps_only_its_newest_sessions(fresh_launcher: Launcher, issuer: Issuer) -> None:
    """Finding: any valid token opened thousands of MCP sessions (+8.5 GiB).
    Now a subject holds at most `max_sessions_per_subject`; opening one more
    closes its least recently used session, and nobody else's."""
    rec = fresh_launcher.root / "docs.jsonl"
    gw = fresh_launcher.gateway(issuer, {"docs": docs_upstream(rec)},
                                extra_toml=limits_toml(max_sessions_per_subject=4))
    bob = issuer.mint(gw.audience, scope=SCOPE, sub="bob@example.com", sid="bob-1")
    bobs = gw.initialize(bob)
    alice = issuer.mint(gw.audience, scope=SCOPE, sid="alice-flood")
    opened = [gw.initialize(alice) for _ in range(12)]

    newest = opened[-4:]
    for s in newest:
        r = gw.call_tool(alice, s, "docs.search", {"query": "q"})
        assert r.status == 200 and "result" in r.response(), r.text
    for s in opened[:-4]:
        r = gw.call_tool(alice, s, "docs.search", {"query": "q"})
        assert r.status == 404, f"evicted session still usable: {r.status} {r.text[:200]}"
    # Another subject's session was never touched.
    r = gw.call_tool(bob, bobs, "docs.search", {"query": "q"})
    assert r.status == 200 and "result" in r.response(), r.text
    assert metric(gw, "mandate_sessions_evicted_total") >= 8
    assert metric(gw, "mandate_sessions_open") <= 5


def test_memory_of_one_token_flooding_initialize_stays_bounded(fresh_launcher: Launcher, issuer: Issuer) -> None:
    """Finding: eight keep-alive clients sending `initialize` for 20 s grew the
    gateway by 8.5 GiB. With the default caps the growth stays small (the
    full-size figure is in docs/BENCHMARKS.md)."""
    rec = fresh_launcher.root / "docs.jsonl"
    gw = fresh_launcher.gateway(issuer, {"docs": docs_upstream(rec)})
    token = issuer.mint(gw.audience, scope=SCOPE, sid="flood")
    rss = lambda: int(Path(f"/proc/{gw.proc.popen.pid}/status").read_text().split("VmRSS:")[1].split()[0])  # noqa: E731
    body = json.dumps(initialize_request()).encode()
    headers = {"Accept": MCP_ACCEPT, "Content-Type": "application/json", "MCP-Protocol-Version": PROTOCOL_VERSION,
               "Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=30) as c:  # warm up
        for _ in range(50):
            c.post(gw.mcp_url, content=body, headers=headers)
    before = rss()
    stop = time.monotonic() + 6
    count = [0]

    def flood() -> None:
        with httpx.Client(timeout=30) as c:
            while time.monotonic() < stop:
                r = c.post(gw.mcp_url, content=body, headers=headers)
                assert r.status_code == 200, r.text
                count[0] += 1

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grown_mib = (rss() - before) / 1024
    assert count[0] > 200, count
    assert metric(gw, "mandate_sessions_open") <= 32
    assert grown_mib < 64, f"{count[0]} initialize requests grew RSS by {grown_mib:.0f} MiB"


def test_total_session_cap_refuses_new_sessions_with_a_clear_error(fresh_launcher: Launcher, issuer: Issuer) -> None:
    rec = fresh_launcher.root / "docs.jsonl"
    gw = fresh_launcher.gateway(issuer, {"docs": docs_upstream(rec)}, extra_toml=limits_toml(max_sessions=3))
    for i in range(3):
        gw.initialize(issuer.mint(gw.audience, scope=SCOPE, sub=f"user{i}@example.com"))
    reply = gw.post(initialize_request(), issuer.mint(gw.audience, scope=SCOPE, sub="late@example.com"))
    assert reply.status == 503, reply.text
    assert reply.error()["code"] == -32000 and "too many MCP sessions" in reply.error()["message"], reply.text
    assert metric(gw, "mandate_sessions_refused_total") == 1


# --------------------------------------------------------------------------
# Connections


def open_idle(port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        out.append(s)
    return out


def open_slow_headers(port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        out.append(s)
    return out


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_idle_and_slow_header_connections_do_not_starve_healthz_or_calls(fresh_launcher: Launcher,
                                                                         issuer: Issuer) -> None:
    """Finding: ~1,100 idle connections under a 1024 open-file limit made
    /healthz and every call time out. Here the gateway runs with a 1024 soft
    limit and a small connection cap; 1,200 idle and 300 slow-header
    connections are opened; /healthz and an authenticated call still answer
    quickly, because at the cap the oldest idle connection makes room."""
    raise_own_fd_limit(4096)
    rec = fresh_launcher.root / "docs.jsonl"
    gw = fresh_launcher.gateway(
        issuer, {"docs": docs_upstream(rec)},
        extra_toml=limits_toml(max_connections=256, header_read_timeout_secs=30, idle_timeout_secs=120),
        name="fd-limited")
    # Lower the running gateway's soft limit as a host's default would be.
    hard = resource.prlimit(gw.proc.popen.pid, resource.RLIMIT_NOFILE)[1]
    resource.prlimit(gw.proc.popen.pid, resource.RLIMIT_NOFILE, (1024, hard))
    port = int(gw.public_url.rsplit(":", 1)[1])
    token = issuer.mint(gw.audience, scope=SCOPE, sid="under-siege")
    session = gw.initialize(token)
    held: list[socket.socket] = []
    try:
        held += open_idle(port, 1200)
        held += open_slow_headers(port, 300)
        health, calls = [], []
        for i in range(20):
            health.append(timed(lambda: gw._http.get(gw.public_url + "/healthz", timeout=5).raise_for_status()))
            calls.append(timed(lambda: gw.post({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                                "params": {"name": "docs.search", "arguments": {"query": "x"}}},
                                               token, session).response()))
        assert max(health) < 1.0 and statistics.median(health) < 0.1, health
        assert max(calls) < 2.0, calls
        assert metric(gw, "mandate_connections_open") <= 256
        assert metric(gw, "mandate_connections_evicted_total") >= 1000
    finally:
        for s in held:
            s.close()


def test_slow_header_connection_is_closed_after_the_header_timeout(fresh_launcher: Launcher, issuer: Issuer) -> None:
    rec = fresh_launcher.root / "docs.jsonl"
    gw = fresh_launcher.gateway(issuer, {"docs": docs_upstream(rec)},
                                extra_toml=limits_toml(header_read_timeout_secs=1, idle_timeout_secs=60))
    port = int(gw.public_url.rsplit(":", 1)[1])
    (slow,) = open_slow_headers(port, 1)
    (idle,) = open_idle(port, 1)
    slow.settimeout(5)
    started = time.monotonic()
    assert slow.recv(1024) == b"", "the gateway answered a request it never finished receiving"
    assert time.monotonic() - started < 4
    # A connection that sent nothing is idle, not slow: still open.
    idle.settimeout(0.2)
    with pytest.raises(socket.timeout):
        idle.recv(1)
    assert metric(gw, "mandate_connections_header_timeouts_total") >= 1
    slow.close()
    idle.close()


def test_idle_connection_is_closed_after_the_idle_timeout(fresh_launcher: Launcher, issuer: Issuer) -> None:
    rec = fresh_launcher.root / "docs.jsonl"
    gw = fresh_launcher.gateway(issuer, {"docs": docs_upstream(rec)},
                                extra_toml=limits_toml(idle_timeout_secs=1))
    port = int(gw.public_url.rsplit(":", 1)[1])
    (idle,) = open_idle(port, 1)
    idle.settimeout(5)
    assert idle.recv(1) == b""
    idle.close()


# --------------------------------------------------------------------------
# Concurrent calls


def test_concurrent_calls_of_one_subject_are_capped(fresh_launcher: Launcher, issuer: Issuer) -> None:
    rec_server = fresh_launcher.recording_http_server()
    gw = fresh_launcher.gateway(issuer, {
        "rec": {"url": rec_server.url, "tools": {"slow": "read", "lookup": "read"}},
    }, extra_toml=limits_toml(max_concurrent_calls_per_subject=2))
    token = issuer.mint(gw.audience, scope=SCOPE, sid="busy")
    session = gw.initialize(token)
    results: list[Any] = []

    def slow_call(i: int) -> None:
        results.append(gw.call_tool(token, session, "rec.slow", {"seconds": 2}, rid=100 + i).response())

    threads = [threading.Thread(target=slow_call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.7)
    refused = gw.call_tool(token, session, "rec.lookup", {"key": "k"}).response()
    assert refused["error"]["data"]["reason"] == "too_many_concurrent_calls", refused
    # Another subject is not affected.
    other = issuer.mint(gw.audience, scope=SCOPE, sub="dave@example.com", sid="dave")
    ok = gw.call_tool(other, gw.initialize(other), "rec.lookup", {"key": "k"}).response()
    assert "result" in ok, ok
    for t in threads:
        t.join()
    assert all("result" in r for r in results), results
    # The refusal is on the record, and the slot came back.
    rows = gw.audit_rows("kind = 'decision' AND effect = 'deny' AND tool = 'rec.lookup'")
    assert rows and "in flight" in rows[-1]["body"], rows
    again = gw.call_tool(token, session, "rec.lookup", {"key": "k"}).response()
    assert "result" in again, again
    assert metric(gw, "mandate_concurrency_refusals_total") == 1


# --------------------------------------------------------------------------
# One parse of the HTTP envelope


@pytest.fixture(scope="module")
def plain(launcher: Launcher, issuer: Issuer) -> tuple[Gateway, Path]:
    rec = launcher.root / "docs.jsonl"
    return launcher.gateway(issuer, {"docs": docs_upstream(rec)}), rec


def test_uppercase_json_media_type_gets_the_same_scope_check(plain, issuer: Issuer) -> None:
    """Finding: `Content-Type: APPLICATION/JSON` skipped the HTTP-level scope
    check (a 200 with -32003 instead of a 403 insufficient_scope)."""
    gw, rec = plain
    token = issuer.mint(gw.audience, scope="docs.search")
    session = gw.initialize(token)
    for ct in ["APPLICATION/JSON", "Application/Json; charset=UTF-8", "text/plain"]:
        reply = gw.post({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                         "params": {"name": "docs.list_customers", "arguments": {}}},
                        token, session, headers={"Content-Type": ct})
        assert reply.status == 403, f"{ct}: {reply.status} {reply.text[:200]}"
        assert "insufficient_scope" in reply.headers.get("www-authenticate", ""), reply.headers
    assert not [c for c in read_jsonl(rec) if c["tool"] == "list_customers"]


def test_two_authorization_headers_are_refused_with_400(plain, issuer: Issuer) -> None:
    """Finding: with two `Authorization` headers the first silently won."""
    gw, _ = plain
    good = issuer.mint(gw.audience, scope=SCOPE)
    other = issuer.mint(gw.audience, scope=SCOPE, sub="mallory@example.com")
    raw = (
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Accept: {MCP_ACCEPT}\r\nMCP-Protocol-Version: {PROTOCOL_VERSION}\r\n"
        f"Authorization: Bearer {good}\r\nAuthorization: Bearer {other}\r\n"
    )
    body = json.dumps(initialize_request()).encode()
    port = int(gw.public_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw.encode() + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    status = reply.split(b"\r\n", 1)[0]
    assert b" 400 " in status, reply[:300]
    assert b"more than one Authorization header" in reply, reply[:500]


def test_too_deep_arguments_are_invalid_arguments_not_a_policy_denial(plain, issuer: Issuer) -> None:
    """Finding: arguments nested deeper than 16 levels were denied as
    `not_permitted`."""
    gw, rec = plain
    token = issuer.mint(gw.audience, scope=SCOPE)
    session = gw.initialize(token)
    deep: Any = "x"
    for _ in range(20):
        deep = {"d": deep}
    r = gw.call_tool(token, session, "docs.search", {"query": deep}).response()
    assert r["error"]["data"]["reason"] == "invalid_arguments", r
    assert "nested deeper" in r["error"]["message"], r


# --------------------------------------------------------------------------
# Isolation by the full subject


def test_second_issuer_with_the_same_sub_and_sid_shares_nothing(fresh_launcher: Launcher, issuer: Issuer,
                                                                tmp_path: Path) -> None:
    """Finding: session state was keyed by `sid` alone and the transport
    binding left out the issuer, so issuer B's token rode on issuer A's
    user's session and shared its taint and budgets."""
    other = Issuer(tmp_path / "idp-b", issuer="https://idp-b.test")
    rec = fresh_launcher.root / "docs.jsonl"
    policies = fresh_launcher.root / "policies"
    shutil.copytree(POLICY_DIR, policies, ignore=shutil.ignore_patterns("tests", "*.md", "20-high-impact.cedar"))
    (policies / "50-internal-mail.cedar").write_text(
        '@id("internal-mail")\n@reason("mail inside the organisation")\n'
        'permit (principal, action == Mandate::Action::"outbound", resource == Mandate::Tool::"docs.send_mail")\n'
        'when { context.in_scope && context.args has to && context.args.to like "*@example.com" };\n')
    second = (f'\n[[auth.issuers]]\nissuer = "{other.issuer}"\njwks_file = "{other.jwks_path}"\n')
    gw = fresh_launcher.gateway(issuer, {"docs": docs_upstream(rec)}, policy_dir=policies,
                                extra_toml=OPERATORS, policy_toml="")
    # Trust a second issuer: append its section and restart on the same data.
    text = gw.config.read_text()
    marker = "[policy]"
    gw.config.write_text(text.replace(marker, second.strip() + "\n\n" + marker, 1))
    gw.proc.stop()
    gw.proc = fresh_launcher.spawn([str(mandate_bin()), "serve", "--config", str(gw.config)], "gateway-2issuers")
    gw.wait_ready()

    sid = "shared-sid"
    a = issuer.mint(gw.audience, scope=SCOPE, sid=sid)
    b = other.mint(gw.audience, scope=SCOPE, sid=sid)
    session_a = gw.initialize(a)
    # B cannot use A's transport session.
    assert gw.call_tool(b, session_a, "docs.search", {"query": "q"}).status == 403
    # A reads the customer list (sensitive): A's mail is held...
    assert "result" in gw.call_tool(a, session_a, "docs.list_customers", {}).response()
    # ...B's session with the same sub and sid is clean: its mail goes through.
    r = gw.call_tool(b, gw.initialize(b), "docs.send_mail",
                     {"to": "team@example.com", "subject": "issuer-b", "body": "x"}).response()
    assert "result" in r, f"issuer A's taint reached issuer B: {r}"


# --------------------------------------------------------------------------
# State that survives a restart


def test_taint_survives_a_restart_between_the_read_and_the_write(fresh_launcher: Launcher, issuer: Issuer) -> None:
    """Finding: a write held before a restart went straight through after it,
    with the same token: session taint was not restored."""
    rec = fresh_launcher.root / "docs.jsonl"
    policies = fresh_launcher.root / "policies"
    shutil.copytree(POLICY_DIR, policies, ignore=shutil.ignore_patterns("tests", "*.md", "20-high-impact.cedar"))
    (policies / "50-internal-mail.cedar").write_text(
        '@id("internal-mail")\n@reason("mail inside the organisation")\n'
        'permit (principal, action == Mandate::Action::"outbound", resource == Mandate::Tool::"docs.send_mail")\n'
        'when { context.in_scope && context.args has to && context.args.to like "*@example.com" };\n')
    gw = fresh_launcher.gateway(issuer, {"docs": docs_upstream(rec)}, policy_dir=policies,
                                extra_toml=OPERATORS + "\n[approvals]\ntimeout_secs = 2\n")
    sid = "restart-" + uuid.uuid4().hex[:6]
    token = issuer.mint(gw.audience, scope=SCOPE, sid=sid)
    s = gw.initialize(token)
    assert "result" in gw.call_tool(token, s, "docs.search", {"query": "inbox"}).response()  # untrusted
    gw.wait_audit("kind = 'outcome' AND tool = 'docs.search'")

    gw.proc.stop()
    gw.proc = fresh_launcher.spawn([str(mandate_bin()), "serve", "--config", str(gw.config)], "gateway-restarted")
    gw.wait_ready()

    s = gw.initialize(token)
    r = gw.call_tool(token, s, "docs.send_mail", {"to": "team@example.com", "subject": "after", "body": "x"})
    err = r.response().get("error")
    assert err is not None, f"the write went straight through after the restart: {r.text[:300]}"
    assert err["data"]["reason"] in ("approval_timeout", "approval_required"), err
    assert not [c for c in read_jsonl(rec) if c["tool"] == "send_mail"]
