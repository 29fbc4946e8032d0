"""Nothing a user would miss is kept per process (issue #20): two replicas
sharing one control store and one audit log on PostgreSQL, behind HAProxy
balancing every request round robin with no stickiness.

- an approver who signs in to the approval page through one replica is
  signed in on every replica, stays signed in across a restart, and is
  signed out everywhere at once; failed sign-ins count against the
  account whichever replica they reach;
- MCP sign-in (the broker as the client's authorization server) works
  while each step of the flow (registration, authorize, the provider's
  callback, consent, token) lands on whichever replica HAProxy picks, and
  a code is redeemed once across replicas;
- an MCP task handle for a call held on replica A is read, followed to
  its result and cancelled through replica B.

Each run gets PostgreSQL schemas of its own (MANDATE_TEST_POSTGRES_URL,
default postgres://postgres@127.0.0.1:5432/test; `skip` skips this file),
dropped at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from playwright.sync_api import Browser

from e2e_support import SERVERS_DIR, Gateway, Issuer, Launcher, free_port, mandate_bin, wait_for_balancer
from test_approvals import pending_for, rpc, task_client_session, transfers
from test_approvals_web import hash_password
from test_no_sticky import HAPROXY, psql
from test_mcp_signin import IDP_CLIENT, IDP_SECRET, SECRET_ENV, Callbacks, approve_in_browser, authorize_url, b64url

PG_URL = os.environ.get("MANDATE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
pytestmark = pytest.mark.skipif(PG_URL == "skip", reason="MANDATE_TEST_POSTGRES_URL=skip")

CAROL_PASSWORD = "carol-" + uuid.uuid4().hex[:12]
USER = "erin@example.com"



@dataclass
class Pair:
    a: Gateway
    b: Gateway
    lb_url: str
    rec: Path
    callbacks: Callbacks
    fresh: Callable[[str], Gateway]

    # What test_mcp_signin's helpers read.
    @property
    def broker(self) -> str:
        return self.lb_url

    @property
    def gw(self) -> Gateway:
        return self.a


@pytest.fixture(scope="module")
def pair(launcher: Launcher, issuer: Issuer) -> Any:
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed (sudo apt-get install haproxy); scripts/test installs it")
    node = shutil.which("node")
    assert node, "node is needed for the OpenID Connect provider"
    tag = uuid.uuid4().hex[:8]
    control_schema, audit_schema = f"e2e_ss_ctl_{tag}", f"e2e_ss_aud_{tag}"
    launcher.cleanups.append(lambda: psql(f"DROP SCHEMA IF EXISTS {control_schema} CASCADE; "
                                          f"DROP SCHEMA IF EXISTS {audit_schema} CASCADE"))
    lb = free_port()
    lb_url = f"http://127.0.0.1:{lb}"
    idp_port = free_port()
    idp = f"http://127.0.0.1:{idp_port}"
    rec = launcher.root / f"bank-shared-{tag}.jsonl"
    keys = launcher.root / f"broker-keys-{tag}"
    keys.mkdir()
    bank = {"command": str(mandate_bin()), "args": ["demo-server", "--profile", "bank", "--record", str(rec)],
            "timeout_secs": 10, "tools": {"get_balance": "read", "transfer": "financial"}}
    shared = f"""
[[operators]]
sub = "carol@example.com"
issuer = "local"
roles = ["approver"]

[[operators]]
sub = "ops@example.com"
roles = ["admin", "approver"]

[control]
store = "{PG_URL}"
schema = "{control_schema}"
poll_ms = 200

[audit]
store = "{PG_URL}"
schema = "{audit_schema}"

[approvals]
timeout_secs = 60
held_calls_as_tasks = true

[approvals.web]
session_idle_secs = 600

[[approvals.web.local_accounts]]
sub = "carol@example.com"
password_hash = "{hash_password(CAROL_PASSWORD)}"

[broker]
max_token_ttl_secs = 600
key_dir = "{keys}"

[broker.entitlements]
default = "bank.get_balance"

[broker.sign_in]
issuer = "{idp}"
client_id = "{IDP_CLIENT}"
client_secret_env = "{SECRET_ENV}"
scopes = "bank.get_balance"
token_ttl_secs = 300
"""
    def fresh(name: str) -> Gateway:
        return launcher.gateway(issuer, {"bank": bank}, extra_toml=shared, name=f"shared-{name}-{tag}",
                                public_url=lb_url, env={SECRET_ENV: IDP_SECRET})

    a, b = fresh("a"), fresh("b")
    servers = "\n".join(f"    server {n} {g.public_url.removeprefix('http://')} check inter 500ms"
                        for n, g in (("a", a), ("b", b)))
    cfg = launcher.root / f"haproxy-shared-{tag}.cfg"
    cfg.write_text(HAPROXY.format(lb=lb, servers=servers))
    launcher.spawn(["haproxy", "-f", str(cfg), "-db"], f"haproxy-shared-{tag}")
    proc = launcher.spawn(
        [node, str(SERVERS_DIR / "oidc_provider.mjs"), "--port", str(idp_port), "--client-id", IDP_CLIENT,
         "--client-secret", IDP_SECRET, "--redirect-uri", lb_url + "/oauth2/signin/callback", "--users", USER],
        f"oidc-provider-{tag}")
    deadline = time.monotonic() + 30
    while "ready" not in proc.stdout():
        assert proc.alive(), f"oidc-provider exited:\n{proc.stderr()}"
        assert time.monotonic() < deadline, f"oidc-provider did not start:\n{proc.stderr()}"
        time.sleep(0.1)
    wait_for_balancer(lb_url)
    cb = Callbacks()
    try:
        yield Pair(a, b, lb_url, rec, cb, fresh)
    finally:
        cb.server.shutdown()


def page_session(base: str, cookie: str | None = None) -> tuple[dict[str, Any], str | None]:
    """GET /approvals/session on `base`; the body and the cookie to keep."""
    headers = {"Cookie": f"mandate_approvals={cookie}"} if cookie else {}
    r = httpx.get(base + "/approvals/session", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    set_cookie = r.cookies.get("mandate_approvals")
    return r.json(), set_cookie or cookie


def login(base: str, origin: str, cookie: str, csrf: str, password: str) -> httpx.Response:
    return httpx.post(base + "/approvals/login", timeout=30,
                      headers={"Origin": origin, "Cookie": f"mandate_approvals={cookie}"},
                      data={"csrf": csrf, "account": "carol@example.com", "password": password})


def test_an_approval_page_sign_in_holds_on_every_replica_and_across_a_restart(pair: Pair, issuer: Issuer) -> None:
    a, b = pair.a.public_url, pair.b.public_url
    anon, cookie = page_session(a)
    assert cookie and not anon["signed_in"]
    # The anonymous session (and its CSRF token) is known to B as well.
    again, _ = page_session(b, cookie)
    assert again["csrf"] == anon["csrf"]
    r = login(b, pair.lb_url, cookie, anon["csrf"], CAROL_PASSWORD)
    assert r.status_code == 200, r.text
    signed = r.cookies.get("mandate_approvals")
    assert signed and signed != cookie, "sign-in must rotate the session id"
    for base in (a, b):
        info, _ = page_session(base, signed)
        assert info["signed_in"] and info["sub"] == "carol@example.com", (base, info)
    # The pre-sign-in id is dead everywhere.
    old, _ = page_session(a, cookie)
    assert not old["signed_in"]

    # Carol decides a call held on A through B with her page session.
    memo = "shared-" + uuid.uuid4().hex[:6]
    sid_claim = "ss-" + uuid.uuid4().hex[:8]
    token = issuer.mint(pair.a.audience, scope="bank.*", sid=sid_claim)
    session = task_client_session(pair.a, token)
    created = rpc(pair.a, token, session, "tools/call",
                  {"name": "bank.transfer", "arguments": {"amount": 7, "to": "acc-bob", "memo": memo}}, 5)
    assert created["result"]["status"] == "working", created
    op = issuer.operator_token(pair.a.api_audience, "ops@example.com")
    req = pending_for(pair.a, op, sid_claim)
    info, _ = page_session(b, signed)
    r = httpx.post(f"{b}/approvals/requests/{req['id']}/approve", timeout=10,
                   headers={"Origin": pair.lb_url, "Cookie": f"mandate_approvals={signed}"},
                   data={"csrf": info["csrf"], "args_hash": req["args_hash"]})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while not transfers(pair.rec, memo):
        assert time.monotonic() < deadline, "the call approved on B was not released on A"
        time.sleep(0.1)

    # A process that has never seen the session (a restarted replica)
    # knows it: a restart signs nobody out.
    c = pair.fresh("c")
    try:
        info, _ = page_session(c.public_url, signed)
        assert info["signed_in"], info
    finally:
        c.proc.stop()

    # Signed out through A: signed out on B at once.
    r = httpx.post(a + "/approvals/logout", timeout=10,
                   headers={"Origin": pair.lb_url, "Cookie": f"mandate_approvals={signed}"},
                   data={"csrf": info["csrf"]})
    assert r.status_code == 200, r.text
    info, _ = page_session(b, signed)
    assert not info["signed_in"], info


def test_failed_sign_ins_count_across_replicas(pair: Pair) -> None:
    statuses = []
    for i in range(6):
        base = (pair.a, pair.b)[i % 2].public_url
        info, cookie = page_session(base)
        assert cookie
        statuses.append(login(base, pair.lb_url, cookie, info["csrf"], "wrong").status_code)
    assert statuses[:5] == [401] * 5 and statuses[5] == 429, statuses
    # Locked on both, even with the right password.
    for g in (pair.a, pair.b):
        info, cookie = page_session(g.public_url)
        assert cookie
        r = login(g.public_url, pair.lb_url, cookie, info["csrf"], CAROL_PASSWORD)
        assert r.status_code == 429, r.text


def test_mcp_sign_in_works_whichever_replica_each_step_reaches(pair: Pair, browser: Browser) -> None:
    ctx = browser.new_context()
    ctx.set_default_timeout(15_000)
    try:
        r = httpx.post(pair.lb_url + "/oauth2/register", timeout=15, json={
            "client_name": "e2e replicas", "redirect_uris": [pair.callbacks.uri],
            "grant_types": ["authorization_code"], "response_types": ["code"],
            "token_endpoint_auth_method": "none"})
        assert r.status_code == 201, r.text
        client_id = r.json()["client_id"]
        # Registered through one replica, known to both.
        for g in (pair.a, pair.b):
            url = authorize_url(pair, client_id, b64url(hashlib.sha256(b"x" * 43).digest()))
            probe = httpx.get(url.replace(pair.lb_url, g.public_url), timeout=15, follow_redirects=False)
            assert probe.status_code in (302, 303), (g.public_url, probe.status_code, probe.text[:300])
        # The whole flow through the balancer: several requests, both replicas.
        verifier = secrets.token_urlsafe(48)
        challenge = b64url(hashlib.sha256(verifier.encode()).digest())
        approve_in_browser(pair, ctx, authorize_url(pair, client_id, challenge))
        back = pair.callbacks.next()
        assert "code" in back and back["iss"] == pair.lb_url, back
        form = {"grant_type": "authorization_code", "client_id": client_id, "code": back["code"],
                "redirect_uri": pair.callbacks.uri, "code_verifier": verifier, "resource": pair.a.audience}
        # Redeemed on A; the same code on B is spent.
        r = httpx.post(pair.a.public_url + "/oauth2/token", data=form, timeout=15)
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        again = httpx.post(pair.b.public_url + "/oauth2/token", data=form, timeout=15)
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant", again.text
        # The token works on either replica.
        for g in (pair.a, pair.b):
            reply = g.call_tool(token, g.initialize(token), "bank.get_balance", {"account": "ops"})
            assert reply.status == 200 and "result" in reply.response(), reply.text
    finally:
        ctx.close()


def test_a_task_held_on_one_replica_is_followed_and_cancelled_through_another(pair: Pair, issuer: Issuer) -> None:
    op = issuer.operator_token(pair.a.api_audience, "ops@example.com")
    # Followed to its result through B.
    memo = "task-ab-" + uuid.uuid4().hex[:6]
    sid_claim = "tab-" + uuid.uuid4().hex[:8]
    token = issuer.mint(pair.a.audience, scope="bank.*", sid=sid_claim)
    session = task_client_session(pair.a, token)
    created = rpc(pair.a, token, session, "tools/call",
                  {"name": "bank.transfer", "arguments": {"amount": 9, "to": "acc-bob", "memo": memo}}, 5)
    task_id = created["result"]["taskId"]
    got = rpc(pair.b, token, session, "tasks/get", {"taskId": task_id}, 6)["result"]
    assert got["status"] == "working", got
    # Another subject, on B, is told it does not exist.
    other = issuer.mint(pair.a.audience, scope="bank.*", sub="mallory@example.com")
    other_session = task_client_session(pair.b, other)
    assert "error" in rpc(pair.b, other, other_session, "tasks/get", {"taskId": task_id}, 7)
    assert "error" in rpc(pair.b, other, other_session, "tasks/cancel", {"taskId": task_id}, 8)
    req = pending_for(pair.b, op, sid_claim)
    r = pair.b.api("POST", f"/api/approvals/{req['id']}/approve", op, {"args_hash": req["args_hash"]})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while (got := rpc(pair.b, token, session, "tasks/get", {"taskId": task_id}, 9)["result"])["status"] == "working":
        assert time.monotonic() < deadline, got
        time.sleep(0.1)
    assert got["status"] == "completed", got
    assert "transferred 9" in json.dumps(got["result"]), got
    assert len(transfers(pair.rec, memo)) == 1

    # Cancelled through B: the call held on A is withdrawn, never forwarded.
    memo = "task-cancel-ab-" + uuid.uuid4().hex[:6]
    sid_claim = "tcab-" + uuid.uuid4().hex[:8]
    token = issuer.mint(pair.a.audience, scope="bank.*", sid=sid_claim)
    session = task_client_session(pair.a, token)
    created = rpc(pair.a, token, session, "tools/call",
                  {"name": "bank.transfer", "arguments": {"amount": 11, "to": "acc-bob", "memo": memo}}, 5)
    task_id = created["result"]["taskId"]
    assert "result" in rpc(pair.b, token, session, "tasks/cancel", {"taskId": task_id}, 6)
    deadline = time.monotonic() + 10
    while (got := rpc(pair.b, token, session, "tasks/get", {"taskId": task_id}, 7)["result"])["status"] == "working":
        assert time.monotonic() < deadline, got
        time.sleep(0.1)
    assert got["status"] == "cancelled", got
    withdrawn = [x for x in pair.a.api("GET", "/api/approvals?status=withdrawn", op).json()["approvals"]
                 if x["session"] == f"sid:{sid_claim}"]
    assert withdrawn, "the approval request was not withdrawn"
    # Too late to approve: nothing reaches the bank.
    r = pair.a.api("POST", f"/api/approvals/{withdrawn[0]['id']}/approve", op,
                   {"args_hash": withdrawn[0]["args_hash"]})
    assert r.status_code != 200 or not transfers(pair.rec, memo)
    time.sleep(0.5)
    assert not transfers(pair.rec, memo)
