"""The approval page (`/approvals`) in a real browser: Chromium driven by
Playwright, a real OpenID Connect provider (`oidc-provider` from npm), and
the agent's original MCP call held until a person clicks.

A `bank.transfer` (class `financial`) is held; the demo bank upstream
(`--record`) proves what reached it.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from e2e_support import REPO_ROOT, SERVERS_DIR, Gateway, Issuer, Launcher, RpcReply, free_port, mandate_bin, read_jsonl

SCREENSHOT = REPO_ROOT / "target" / "approvals-page.png"

CAROL_PASSWORD = "carol-" + uuid.uuid4().hex[:12]
WALT_PASSWORD = "walt-" + uuid.uuid4().hex[:12]
CLIENT_ID = "mandate-approvals"
CLIENT_SECRET = "e2e-" + uuid.uuid4().hex
SECRET_ENV = "MANDATE_E2E_OIDC_CLIENT_SECRET"


def hash_password(password: str) -> str:
    r = subprocess.run([str(mandate_bin()), "approvals", "hash-password", "--iterations", "100000"],
                       input=password + "\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def bank(rec: Path) -> dict[str, Any]:
    return {"command": str(mandate_bin()),
            "args": ["demo-server", "--profile", "bank", "--record", str(rec)],
            "timeout_secs": 10,
            "tools": {"get_balance": "read", "transfer": "financial"}}


class Env:
    def __init__(self, gw: Gateway, rec: Path, idp: str) -> None:
        self.gw, self.rec, self.idp = gw, rec, idp

    @property
    def page_url(self) -> str:
        return self.gw.public_url + "/approvals"


@pytest.fixture(scope="module")
def env(launcher: Launcher, issuer: Issuer) -> Env:
    node = shutil.which("node")
    assert node, "node is needed for the OpenID Connect provider"
    idp_port = free_port()
    idp = f"http://127.0.0.1:{idp_port}"
    rec = launcher.root / "bank-web.jsonl"
    extra = f"""
[[operators]]
sub = "carol@example.com"
issuer = "local"
roles = ["approver"]

[[operators]]
sub = "walt@example.com"
issuer = "local"
roles = ["admin"]

[[operators]]
sub = "ops@example.com"
roles = ["approver"]

[[operators]]
sub = "dana@example.com"
issuer = "{idp}"
roles = ["approver"]

[approvals]
timeout_secs = 60

[approvals.web]
session_idle_secs = 600

[[approvals.web.local_accounts]]
sub = "carol@example.com"
password_hash = "{hash_password(CAROL_PASSWORD)}"

[[approvals.web.local_accounts]]
sub = "walt@example.com"
password_hash = "{hash_password(WALT_PASSWORD)}"

[approvals.web.oidc]
issuer = "{idp}"
client_id = "{CLIENT_ID}"
client_secret_env = "{SECRET_ENV}"
"""
    os.environ[SECRET_ENV] = CLIENT_SECRET
    try:
        gw = launcher.gateway(issuer, {"bank": bank(rec)}, extra_toml=extra, name="web")
    finally:
        os.environ.pop(SECRET_ENV, None)
    proc = launcher.spawn(
        [node, str(SERVERS_DIR / "oidc_provider.mjs"), "--port", str(idp_port), "--client-id", CLIENT_ID,
         "--client-secret", CLIENT_SECRET, "--redirect-uri", gw.public_url + "/approvals/oidc/callback",
         "--users", "dana@example.com,mallory@example.com"],
        "oidc-provider",
    )
    deadline = time.monotonic() + 30
    while "ready" not in proc.stdout():
        assert proc.alive(), f"oidc-provider exited:\n{proc.stderr()}"
        assert time.monotonic() < deadline, f"oidc-provider did not start:\n{proc.stderr()}"
        time.sleep(0.1)
    return Env(gw, rec, idp)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        ctx.close()


class HeldCall:
    """The agent's `tools/call` (raw Streamable HTTP), in a thread: it
    blocks while the call is held."""

    def __init__(self, gw: Gateway, issuer: Issuer, args: dict[str, Any]) -> None:
        self.sid = "web-" + uuid.uuid4().hex[:8]
        self.token = issuer.mint(gw.audience, scope="bank.*", sid=self.sid)
        self.session = gw.initialize(self.token)
        self.reply: RpcReply | None = None
        self.thread = threading.Thread(
            target=lambda: setattr(self, "reply", gw.call_tool(self.token, self.session, "bank.transfer", args)),
            daemon=True)
        self.thread.start()

    def result(self, timeout: float = 30) -> dict[str, Any]:
        self.thread.join(timeout)
        assert self.reply is not None, "the held call did not finish"
        return self.reply.response()


def transfers(rec: Path, memo: str) -> list[dict[str, Any]]:
    return [c for c in read_jsonl(rec) if c["tool"] == "transfer" and c["arguments"].get("memo") == memo]


def ops_token(env: Env, issuer: Issuer) -> str:
    """An operator API token (the test's view of the store, not the page's)."""
    return issuer.operator_token(env.gw.api_audience, "ops@example.com")


def approval_of(env: Env, issuer: Issuer, sid: str) -> dict[str, Any]:
    """The request as the operator API sees it (to check state)."""
    op = ops_token(env, issuer)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = env.gw.api("GET", "/api/approvals?status=all", op).json()["approvals"]
        mine = [a for a in listed if a["session"] == f"sid:{sid}"]
        if mine:
            return mine[0]
        time.sleep(0.1)
    raise AssertionError(f"no approval request for session {sid}")


def sign_in_local(page: Page, env: Env, account: str = "carol@example.com", password: str = CAROL_PASSWORD) -> None:
    page.goto(env.page_url)
    page.fill("#login-account", account)
    page.fill("#login-password", password)
    page.click("#login-submit")
    expect(page.locator("#whoami-sub")).to_have_text(account)
    expect(page.locator("#live")).to_have_text("live")


def card_for(page: Page, memo: str):
    card = page.locator("article.request", has_text=memo)
    expect(card).to_be_visible()
    return card


# --------------------------------------------------------------------------


def test_browser_approval_completes_the_agents_call(env: Env, issuer: Issuer, context: BrowserContext) -> None:
    page = context.new_page()
    sign_in_local(page, env)
    memo = "web-approve-" + uuid.uuid4().hex[:6]
    held = HeldCall(env.gw, issuer, {"amount": 250, "to": "acc-bob", "memo": memo})

    # It appears live (no reload), with the full context.
    card = card_for(page, memo)
    a = approval_of(env, issuer, held.sid)
    assert card.get_attribute("id") == a["id"]
    expect(card.locator("h3")).to_have_text("bank.transfer")
    expect(card.locator(".badge")).to_have_text("financial")
    args = card.locator("table.args")
    expect(args.locator("tr", has_text="amount")).to_contain_text("250")
    expect(args.locator("tr", has_text="to")).to_contain_text("acc-bob")
    expect(card).to_contain_text(a["args_hash"])
    expect(card).to_contain_text("alice@example.com")
    expect(card).to_contain_text("agent-research")
    expect(card).to_contain_text("task-e2e")
    expect(card).to_contain_text(a["reasons"][0])
    expect(card.locator(".deadline")).to_contain_text("left")
    expect(card).to_contain_text("The agent's call is waiting")

    # The link in webhooks and progress messages leads to the request.
    page.goto(f"{env.page_url}#{a['id']}")
    expect(page.locator(f"#{a['id']}")).to_have_class(re.compile(r"\btargeted\b"))

    time.sleep(0.3)
    assert not transfers(env.rec, memo), "the upstream saw a held call"
    card = card_for(page, memo)
    card.locator("textarea").fill("invoice 42 checked")
    card.get_by_role("button", name="Approve").click()

    body = held.result()
    assert "result" in body, body
    assert "transferred 250" in json.dumps(body["result"]), body
    assert len(transfers(env.rec, memo)) == 1
    # It moves to the history, with who decided and why.
    row = page.locator(f"#history tr#{a['id']}")
    expect(row).to_contain_text("approved")
    expect(row).to_contain_text("carol@example.com")
    expect(row).to_contain_text("invoice 42 checked")
    expect(page.locator(f"#pending #{a['id']}")).to_have_count(0)
    # On the record, through the same decision path as the API.
    rows = env.gw.audit_rows("kind = 'control' AND tool = 'approval/approve' AND detail LIKE ?", [f"%{a['id']}%"])
    assert rows and rows[-1]["effect"] == "allow" and rows[-1]["sub"] == "carol@example.com", rows
    assert "invoice 42 checked" in rows[-1]["reasons"]


def test_browser_denial_reaches_the_agent(env: Env, issuer: Issuer, context: BrowserContext) -> None:
    page = context.new_page()
    sign_in_local(page, env)
    memo = "web-deny-" + uuid.uuid4().hex[:6]
    held = HeldCall(env.gw, issuer, {"amount": 900, "to": "acc-eve", "memo": memo})
    card = card_for(page, memo)
    # For reviewers: the page with a pending request (and, after the test
    # above, some history).
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    card.locator("textarea").fill("not a known payee")
    card.get_by_role("button", name="Deny").click()
    err = held.result()["error"]
    assert err["data"]["reason"] == "approval_denied", err
    assert not transfers(env.rec, memo)
    expect(page.locator("#history tr", has_text="not a known payee")).to_contain_text("denied")


def test_sign_in_through_a_real_oidc_provider(env: Env, browser: Browser) -> None:
    # An approver: through the provider's own login and consent pages.
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.goto(env.page_url)
        page.get_by_role("link", name=re.compile("Sign in with 127.0.0.1")).click()
        page.wait_for_url(re.compile(re.escape(env.idp) + "/interaction/"))
        page.fill("input[name=login]", "dana@example.com")
        page.fill("input[name=password]", "any")
        page.click("button[type=submit]")
        page.get_by_role("button", name="Continue").click()
        page.wait_for_url(env.page_url)
        expect(page.locator("#whoami-sub")).to_have_text("dana@example.com")
        expect(page.locator("#whoami-method")).to_contain_text(env.idp)
        expect(page.locator("#live")).to_have_text("live")
    finally:
        ctx.close()
    rows = env.gw.audit_rows("kind = 'control' AND tool = 'approval/web.login' AND sub = 'dana@example.com'")
    assert rows and rows[-1]["effect"] == "allow", rows

    # Signed in at the provider, but not an approver: refused, no session.
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.goto(env.page_url)
        page.get_by_role("link", name=re.compile("Sign in with")).click()
        page.fill("input[name=login]", "mallory@example.com")
        page.fill("input[name=password]", "any")
        page.click("button[type=submit]")
        with page.expect_response(re.compile(r"/approvals/oidc/callback")) as resp:
            page.get_by_role("button", name="Continue").click()
        assert resp.value.status == 403
        expect(page.locator("h1")).to_have_text("Not an approver")
        expect(page.locator("main")).to_contain_text("mallory@example.com")
        page.goto(env.page_url)
        expect(page.locator("#login-view")).to_be_visible()
        r = ctx.request.get(env.gw.public_url + "/approvals/requests")
        assert r.status == 401
    finally:
        ctx.close()
    refused = env.gw.audit_rows("kind = 'control' AND tool = 'approval/web.login' AND sub = 'mallory@example.com'")
    assert refused and refused[-1]["effect"] == "deny", refused


def test_local_sign_in_failures_reveal_nothing(env: Env, context: BrowserContext) -> None:
    page = context.new_page()
    page.goto(env.page_url)
    answers = []
    for account, password in [("carol@example.com", "wrong"), ("nobody@example.com", "wrong")]:
        page.fill("#login-account", account)
        page.fill("#login-password", password)
        page.click("#login-submit")
        expect(page.locator("#login-error")).to_be_visible()
        answers.append(page.locator("#login-error").text_content())
    assert answers[0] == answers[1] == "Wrong account or password.", answers
    # A correct password of someone who is not an approver.
    page.fill("#login-account", "walt@example.com")
    page.fill("#login-password", WALT_PASSWORD)
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_contain_text("not an approver")
    expect(page.locator("#app-view")).to_be_hidden()
    # Repeated failures lock the account name, existing or not, alike.
    origin = {"Origin": env.gw.public_url}
    for name in ["nobody@example.com", "walt@example.com"]:
        statuses = []
        for _ in range(6):
            csrf = context.request.get(env.gw.public_url + "/approvals/session").json()["csrf"]
            r = context.request.post(env.gw.public_url + "/approvals/login", headers=origin,
                                     form={"csrf": csrf, "account": name, "password": "wrong"})
            statuses.append(r.status)
        assert statuses[-1] == 429 and 401 in statuses, (name, statuses)
    # Locked even with the right password, until the window passes.
    csrf = context.request.get(env.gw.public_url + "/approvals/session").json()["csrf"]
    r = context.request.post(env.gw.public_url + "/approvals/login", headers=origin,
                             form={"csrf": csrf, "account": "walt@example.com", "password": WALT_PASSWORD})
    assert r.status == 429, r.text()


class AttackerSite:
    """Another site (a different host) with a form that posts to Mandate."""

    def __init__(self, target: str, fields: dict[str, str]) -> None:
        inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
        page = f'<!doctype html><form id="f" method="post" action="{target}">{inputs}<button>win a prize</button></form>'

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # `localhost` is another site than Mandate's `127.0.0.1`.
        self.url = f"http://localhost:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_posts_without_csrf_proof_are_refused(env: Env, issuer: Issuer, context: BrowserContext) -> None:
    page = context.new_page()
    sign_in_local(page, env)
    memo = "web-csrf-" + uuid.uuid4().hex[:6]
    held = HeldCall(env.gw, issuer, {"amount": 40, "to": "acc-bob", "memo": memo})
    card_for(page, memo)
    a = approval_of(env, issuer, held.sid)
    url = f"{env.gw.public_url}/approvals/requests/{a['id']}/approve"
    csrf = context.request.get(env.gw.public_url + "/approvals/session").json()["csrf"]
    same = {"Origin": env.gw.public_url}

    # The session cookie is sent (same browser context), but:
    attempts = {
        "no token": ({"args_hash": a["args_hash"]}, same),
        "wrong token": ({"csrf": "x" * 43, "args_hash": a["args_hash"]}, same),
        "foreign origin": ({"csrf": csrf, "args_hash": a["args_hash"]}, {"Origin": "https://evil.example"}),
        "null origin": ({"csrf": csrf, "args_hash": a["args_hash"]}, {"Origin": "null"}),
        "no origin": ({"csrf": csrf, "args_hash": a["args_hash"]}, {}),
    }
    for name, (form, headers) in attempts.items():
        r = context.request.post(url, form=form, headers=headers)
        assert r.status == 403, (name, r.status, r.text())
        assert r.json()["error"] == "csrf", (name, r.text())

    # A real cross-site form post from another site in the same browser.
    site = AttackerSite(url, {"csrf": csrf, "args_hash": a["args_hash"]})
    try:
        evil = context.new_page()
        evil.goto(site.url)
        with evil.expect_response(lambda r: "/approvals/requests/" in r.url) as resp:
            evil.click("button")
        # SameSite=Strict: the cross-site post does not even carry the session.
        assert resp.value.status in (401, 403), resp.value.status
    finally:
        site.close()

    # Nothing changed: still pending, the agent still waiting, nothing forwarded.
    time.sleep(0.3)
    op = ops_token(env, issuer)
    still = env.gw.api("GET", f"/api/approvals/{a['id']}", op).json()
    assert still["status"] == "pending" and still["waiting"] is True, still
    assert held.thread.is_alive() and not transfers(env.rec, memo)
    refused = env.gw.audit_rows("kind = 'control' AND effect = 'deny' AND tool = 'approval/approve' AND detail LIKE ?",
                                [f"%{a['id']}%"])
    assert len(refused) >= len(attempts), refused

    # The page itself (token and origin) still works.
    card_for(page, memo).get_by_role("button", name="Deny").click()
    assert held.result()["error"]["data"]["reason"] == "approval_denied"


def test_security_headers(env: Env, issuer: Issuer) -> None:
    with httpx.Client(timeout=10) as http:
        for path in ["/approvals", "/approvals/assets/approvals.js", "/approvals/assets/approvals.css",
                     "/approvals/session", "/approvals/requests"]:
            r = http.get(env.gw.public_url + path)
            h = r.headers
            csp = h.get("content-security-policy", "")
            assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, (path, csp)
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
            assert h.get("x-frame-options") == "DENY", path
            assert h.get("referrer-policy") == "no-referrer", path
            assert h.get("cache-control") == "no-store", path
            assert h.get("x-content-type-options") == "nosniff", path
        page = http.get(env.gw.public_url + "/approvals").text
        assert "<script>" not in page and "style=" not in page
        cookie = httpx.get(env.gw.public_url + "/approvals/session").headers.get("set-cookie", "")
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/approvals"]:
            assert attr in cookie, cookie
        # Not signed in: no data.
        assert http.get(env.gw.public_url + "/approvals/requests").status_code == 401
        assert http.get(env.gw.public_url + "/approvals/events").status_code == 401
        # Bearer tokens (an operator's, an agent's) open nothing here: only a
        # person's browser session does.
        for token in [ops_token(env, issuer), issuer.mint(env.gw.audience)]:
            r = http.get(env.gw.public_url + "/approvals/requests", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, r.text


PHONE_SCREENSHOT = REPO_ROOT / "target" / "approval-page-phone.png"


def test_the_approval_page_works_on_a_phone(env: Env, issuer: Issuer, browser: Browser) -> None:
    """At 390 px wide (a phone, touch): no sideways scrolling, and the
    request's Approve and Deny buttons are on screen once the request's
    heading is, without scrolling past its details; approving from there
    completes the agent's call."""
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                              device_scale_factor=2)
    ctx.set_default_timeout(15_000)
    try:
        page = ctx.new_page()
        sign_in_local(page, env)
        memo = "phone-" + uuid.uuid4().hex[:6] + "-" + "x" * 80  # a long memo must wrap, not widen the page
        held = HeldCall(env.gw, issuer, {"amount": 310, "to": "acc-bob", "memo": memo})
        card = card_for(page, memo[:20])
        card.locator("h3").scroll_into_view_if_needed()
        page.evaluate("window.scrollTo(0, document.querySelector('article.request h3').getBoundingClientRect().top"
                      " + window.scrollY - 8)")
        width = page.evaluate("Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)")
        assert width <= 390, f"the page is {width} px wide on a 390 px screen"
        for name in ("Approve", "Deny"):
            box = card.get_by_role("button", name=name).bounding_box()
            assert box is not None, name
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (name, box)
            assert box["y"] + box["height"] <= 844, f"{name} is below the fold with the request's heading at the top: {box}"
        PHONE_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(PHONE_SCREENSHOT))
        card.get_by_role("button", name="Approve").tap()
        body = held.result()
        assert "result" in body, body
    finally:
        ctx.close()
