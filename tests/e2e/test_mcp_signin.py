"""MCP sign-in end to end: the broker as the MCP client's authorization
server (the MCP authorization spec), with real peers only.

* The official Python MCP SDK's `OAuthClientProvider` is the client: it
  finds the broker through the gateway's RFC 9728 metadata, registers
  itself (RFC 7591), and runs the authorization code flow with PKCE and
  RFC 8707 `resource`.
* The user signs in at a real OpenID Connect provider (`oidc-provider`)
  and approves the broker's consent page in Chromium (Playwright).
* The client then lists and calls a tool; the audit record names the user
  (`sub`) and the client (`act = mcp-client-…`).

Threats closed: a code redeemed with the wrong PKCE verifier, twice, for
an unregistered redirect URI or another resource; unbounded registration.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.server
import queue
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, expect

from e2e_support import SERVERS_DIR, Gateway, Issuer, Launcher, free_port, mandate_bin, text_of

IDP_CLIENT = "mandate-broker"
IDP_SECRET = "e2e-" + secrets.token_hex(8)
SECRET_ENV = "MANDATE_E2E_SIGNIN_SECRET"
USER = "erin@example.com"
MAX_CLIENTS = 4


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Callbacks:
    """A loopback redirect URI (RFC 8252 §7.3): records each query it receives."""

    def __init__(self) -> None:
        self.received: queue.Queue[dict[str, str]] = queue.Queue()
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                if url.path != "/callback":  # the browser's /favicon.ico
                    self.send_error(404)
                    return
                received.put({k: v[0] for k, v in parse_qs(url.query).items()})
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"signed in; you may close this window")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}/callback"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self, timeout: float = 30) -> dict[str, str]:
        return self.received.get(timeout=timeout)


@dataclass
class Env:
    gw: Gateway
    idp: str
    rec: Path
    callbacks: Callbacks
    registered: list[str] = field(default_factory=list)

    @property
    def broker(self) -> str:
        return self.gw.public_url


@pytest.fixture(scope="module")
def env(launcher: Launcher, issuer: Issuer) -> Any:
    node = shutil.which("node")
    assert node, "node is needed for the OpenID Connect provider"
    idp_port = free_port()
    idp = f"http://127.0.0.1:{idp_port}"
    rec = launcher.root / "bank-signin.jsonl"
    bank = {"command": str(mandate_bin()), "args": ["demo-server", "--profile", "bank", "--record", str(rec)],
            "timeout_secs": 10, "tools": {"get_balance": "read", "transfer": "financial"}}
    extra = f"""
[broker]
max_token_ttl_secs = 600

[broker.entitlements]
default = "bank.get_balance"

[broker.sign_in]
issuer = "{idp}"
client_id = "{IDP_CLIENT}"
client_secret_env = "{SECRET_ENV}"
scopes = "bank.get_balance"
token_ttl_secs = 300
max_clients = {MAX_CLIENTS}
"""
    gw = launcher.gateway(issuer, {"bank": bank}, extra_toml=extra, name="signin", env={SECRET_ENV: IDP_SECRET},
                          log="info,mandate_broker=debug")
    proc = launcher.spawn(
        [node, str(SERVERS_DIR / "oidc_provider.mjs"), "--port", str(idp_port), "--client-id", IDP_CLIENT,
         "--client-secret", IDP_SECRET, "--redirect-uri", gw.public_url + "/oauth2/signin/callback",
         "--users", USER],
        "oidc-provider")
    deadline = time.monotonic() + 30
    while "ready" not in proc.stdout():
        assert proc.alive(), f"oidc-provider exited:\n{proc.stderr()}"
        assert time.monotonic() < deadline, f"oidc-provider did not start:\n{proc.stderr()}"
        time.sleep(0.1)
    cb = Callbacks()
    try:
        yield Env(gw=gw, idp=idp, rec=rec, callbacks=cb)
    finally:
        cb.server.shutdown()


@pytest.fixture(scope="module")
def context(browser: Browser) -> Any:
    ctx = browser.new_context()
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        ctx.close()


def approve_in_browser(env: Env, ctx: BrowserContext, authorize_url: str, *, client_name: str | None = None) -> None:
    """The user's part: sign in at the provider (its own pages), then allow
    the client on the broker's consent page. The browser ends at the
    client's redirect URI."""
    page = ctx.new_page()
    try:
        page.goto(authorize_url)
        consent = re.compile(re.escape(env.broker) + r"/oauth2/signin/callback")
        for _ in range(4):
            if consent.match(page.url):
                break
            if page.locator("input[name=login]").count():
                page.fill("input[name=login]", USER)
                page.fill("input[name=password]", "any")
                page.click("button[type=submit]")
            elif page.get_by_role("button", name="Continue").count():
                page.get_by_role("button", name="Continue").click()
            page.wait_for_load_state()
        page.wait_for_url(consent)
        expect(page.locator("#user")).to_have_text(USER)
        expect(page.locator("#scopes")).to_have_text("bank.get_balance")
        if client_name is not None:
            # Shown as text, never as markup.
            expect(page.locator("#client-name")).to_have_text(client_name)
        page.get_by_role("button", name="Allow").click()
        page.wait_for_url(re.compile(re.escape(env.callbacks.uri)))
    finally:
        page.close()


def register(env: Env, redirect_uris: list[str] | None = None) -> httpx.Response:
    r = httpx.post(env.broker + "/oauth2/register", timeout=15, json={
        "client_name": "e2e client", "redirect_uris": redirect_uris or [env.callbacks.uri],
        "grant_types": ["authorization_code"], "response_types": ["code"], "token_endpoint_auth_method": "none"})
    if r.status_code == 201:
        env.registered.append(r.json()["client_id"])
    return r


def authorize_url(env: Env, client_id: str, challenge: str, **overrides: str) -> str:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": env.callbacks.uri,
              "code_challenge": challenge, "code_challenge_method": "S256", "state": secrets.token_hex(8),
              "resource": env.gw.audience, "scope": "bank.*"}
    params.update(overrides)
    return env.broker + "/oauth2/authorize?" + urlencode(params)


def new_code(env: Env, ctx: BrowserContext, client_id: str) -> tuple[str, str]:
    """A fresh code for `client_id` (and its PKCE verifier)."""
    verifier = secrets.token_urlsafe(48)
    challenge = b64url(hashlib.sha256(verifier.encode()).digest())
    approve_in_browser(env, ctx, authorize_url(env, client_id, challenge))
    back = env.callbacks.next()
    assert "code" in back and back["iss"] == env.broker, back
    return back["code"], verifier


def redeem(env: Env, client_id: str, code: str, verifier: str, **overrides: str) -> httpx.Response:
    form = {"grant_type": "authorization_code", "client_id": client_id, "code": code,
            "redirect_uri": env.callbacks.uri, "code_verifier": verifier, "resource": env.gw.audience}
    form.update(overrides)
    return httpx.post(env.broker + "/oauth2/token", data=form, timeout=15)


def oauth_error(r: httpx.Response) -> str:
    assert r.status_code in (400, 401), r.text
    body = r.json()
    assert set(body) <= {"error", "error_description"}, body
    return body["error"]


# ---------------------------------------------------------------------------


def test_the_sdk_client_signs_in_and_calls_a_tool(env: Env, context: BrowserContext) -> None:
    import httpx2
    from mcp import Client
    from mcp.client.auth import OAuthClientProvider
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

    # The gateway names the broker first.
    prm = httpx.get(env.gw.public_url + "/.well-known/oauth-protected-resource/mcp").json()
    assert prm["authorization_servers"][0] == env.broker, prm
    meta = httpx.get(env.broker + "/.well-known/oauth-authorization-server").json()
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "authorization_code" in meta["grant_types_supported"]

    class Memory:
        def __init__(self) -> None:
            self.tokens: OAuthToken | None = None
            self.client: OAuthClientInformationFull | None = None

        async def get_tokens(self) -> OAuthToken | None:
            return self.tokens

        async def set_tokens(self, tokens: OAuthToken) -> None:
            self.tokens = tokens

        async def get_client_info(self) -> OAuthClientInformationFull | None:
            return self.client

        async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
            self.client = client_info

    urls: queue.Queue[str] = queue.Queue()
    storage = Memory()

    async def redirect_handler(url: str) -> None:
        urls.put(url)

    async def callback_handler() -> AuthorizationCodeResult:
        q = await asyncio.to_thread(env.callbacks.next, 60)
        return AuthorizationCodeResult(code=q["code"], state=q.get("state"), iss=q.get("iss"))

    async def client_session() -> tuple[list[str], str]:
        provider = OAuthClientProvider(
            server_url=env.gw.mcp_url,
            client_metadata=OAuthClientMetadata(
                client_name="<b>Inspector</b>", redirect_uris=[env.callbacks.uri],
                grant_types=["authorization_code"], response_types=["code"], token_endpoint_auth_method="none"),
            storage=storage, redirect_handler=redirect_handler, callback_handler=callback_handler)
        async with httpx2.AsyncClient(auth=provider, timeout=httpx2.Timeout(60)) as http:
            async with Client(streamable_http_client(env.gw.mcp_url, http_client=http), mode="legacy",
                              read_timeout_seconds=60) as c:
                tools = await c.list_tools()
                r = await c.call_tool("bank.get_balance", {"account": "DE-research"})
                return [t.name for t in tools.tools], text_of(r)

    # The SDK runs in its own thread and event loop; the person drives the
    # browser here when the SDK hands over the authorization URL.
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["ok"] = asyncio.run(client_session())
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome["error"] = e
            urls.put("")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    url = urls.get(timeout=60)
    assert url, f"the SDK failed before authorization: {outcome.get('error')!r}"
    assert url.startswith(env.broker + "/oauth2/authorize?")
    assert parse_qs(urlparse(url).query)["resource"] == [env.gw.audience]
    approve_in_browser(env, context, url, client_name="<b>Inspector</b>")
    t.join(90)
    assert "ok" in outcome, f"the SDK client failed: {outcome.get('error')!r}"
    tools, text = outcome["ok"]
    assert "bank.get_balance" in tools
    assert "12500" in text

    client_id = storage.client.client_id if storage.client else ""
    env.registered.append(client_id)
    actor = f"mcp-client-{client_id}"
    rows = env.gw.wait_audit("kind = 'decision' AND tool = 'bank.get_balance' AND sub = ?", (USER,))
    assert rows and actor in rows[-1]["act"] and rows[-1]["effect"] == "allow", rows
    issued = env.gw.audit_rows("tool = 'broker/sign_in' AND effect = 'allow' AND sub = ?", (USER,))
    assert issued and actor in issued[-1]["act"] and issued[-1]["build"] is None, issued


def test_codes_need_their_verifier_are_used_once_and_stay_with_their_resource(
        env: Env, context: BrowserContext) -> None:
    r = register(env)
    assert r.status_code == 201, r.text
    client_id = r.json()["client_id"]
    assert r.json()["token_endpoint_auth_method"] == "none"

    # Wrong PKCE verifier: refused, and the code is spent.
    code, verifier = new_code(env, context, client_id)
    assert oauth_error(redeem(env, client_id, code, secrets.token_urlsafe(48))) == "invalid_grant"
    assert oauth_error(redeem(env, client_id, code, verifier)) == "invalid_grant"

    # A redirect URI other than the one the code was issued for.
    code, verifier = new_code(env, context, client_id)
    assert oauth_error(redeem(env, client_id, code, verifier,
                              redirect_uri="http://127.0.0.1:9/elsewhere")) == "invalid_grant"

    # Another resource: invalid_target.
    code, verifier = new_code(env, context, client_id)
    assert oauth_error(redeem(env, client_id, code, verifier,
                              resource="http://127.0.0.1:9/mcp")) == "invalid_target"

    # The right request once; the same code again is refused.
    code, verifier = new_code(env, context, client_id)
    ok = redeem(env, client_id, code, verifier)
    assert ok.status_code == 200, ok.text
    assert ok.json()["scope"] == "bank.get_balance" and ok.json()["token_type"] == "Bearer"
    assert oauth_error(redeem(env, client_id, code, verifier)) == "invalid_grant"

    refused = env.gw.audit_rows("tool = 'broker/sign_in' AND effect = 'deny' AND act LIKE ?",
                                (f"%mcp-client-{client_id}%",))
    assert len(refused) >= 5, refused


def test_unregistered_redirect_and_foreign_resource_are_refused_at_authorize(env: Env) -> None:
    r = register(env)
    client_id = r.json()["client_id"]
    challenge = b64url(hashlib.sha256(b"x" * 43).digest())
    with httpx.Client(follow_redirects=False, timeout=15) as h:
        # A redirect URI the client did not register: a page, never a redirect there.
        other = authorize_url(env, client_id, challenge, redirect_uri="http://127.0.0.1:9/elsewhere")
        r = h.get(other)
        assert r.status_code == 400 and "location" not in r.headers
        # Another resource: the error goes back to the client, state echoed.
        r = h.get(authorize_url(env, client_id, challenge, resource="http://127.0.0.1:9/mcp", state="s1"))
        assert r.status_code == 303
        back = parse_qs(urlparse(r.headers["location"]).query)
        assert back["error"] == ["invalid_target"] and back["state"] == ["s1"] and back["iss"] == [env.broker]
        # Plain PKCE is not S256.
        r = h.get(authorize_url(env, client_id, challenge, code_challenge_method="plain"))
        assert parse_qs(urlparse(r.headers["location"]).query)["error"] == ["invalid_request"]
    # A consent decision posted from another site is refused before anything is looked up.
    forged = httpx.post(env.broker + "/oauth2/consent", data={"id": "x", "csrf": "y", "decision": "approve"},
                        headers={"Origin": "http://evil.example"}, timeout=15, follow_redirects=False)
    assert forged.status_code == 403 and "location" not in forged.headers
    # Registration refuses redirect URIs that are neither loopback http nor allowed https.
    bad = httpx.post(env.broker + "/oauth2/register", json={"redirect_uris": ["http://evil.example/cb"]}, timeout=15)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_redirect_uri"


def test_registration_beyond_max_clients_is_refused(env: Env) -> None:
    # Fill the bound, whatever the tests before registered.
    statuses = [register(env).status_code for _ in range(MAX_CLIENTS + 1)]
    assert statuses[-1] == 400 and len(set(env.registered)) == MAX_CLIENTS, statuses
    r = register(env)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_client_metadata" and set(r.json()) == {"error", "error_description"}
    rows = env.gw.audit_rows("tool = 'broker/sign_in' AND effect = 'deny' AND detail LIKE '%register%'")
    assert rows, "refused registrations are recorded"


def test_no_secret_in_any_answer(env: Env) -> None:
    meta = httpx.get(env.broker + "/.well-known/oauth-authorization-server").text
    assert IDP_SECRET not in meta
    assert IDP_SECRET not in env.gw.proc.stderr()
