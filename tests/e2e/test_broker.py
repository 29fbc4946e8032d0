"""The delegation broker (RFC 8693) end to end, with real peers only:

* the user signs in at a real OpenID Connect provider (`oidc-provider` from
  npm) through its login and consent pages, driven over HTTP; the broker
  validates the resulting ID token through discovery and JWKS;
* agents authenticate with `private_key_jwt`; the happy path uses `authlib`
  as the OAuth client, the refusals plain HTTP so each error code is seen;
* PyJWT verifies the issued token against `/.well-known/jwks.json`;
* the official Python MCP SDK calls the gateway with the issued token, and
  after `mandate task complete` the very next call is refused;
* DPoP-bound tokens work only with a valid proof (RFC 9449).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlparse

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from e2e_support import (POLICY_DIR, SERVERS_DIR, Gateway, Issuer, Launcher, RpcReply, b64url, free_port,
                         initialize_request, mandate_bin, read_jsonl, run_mandate, sdk_client, text_of, toml_value)

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

APP = "agent-app"
APP_SECRET = "e2e-" + uuid.uuid4().hex
OTHER_APP = "other-app"
SHORT_APP = "short-lived-app"
REDIRECT = "http://127.0.0.1:9/callback"  # never reached: the test reads the code from the redirect

USERS = {
    "alice@example.com": {"groups": ["research"]},
    "bob@example.com": {"groups": ["sales"]},
    "carol@example.com": {"groups": ["research"], "may_act": {"sub": "someone-else"}},
    "dave@example.com": {"groups": ["research"], "may_act": {"sub": "assistant"}},
}

SYSTEM_PROMPT = "You are the research assistant. Answer from the bank's records only.\n"
MODEL = "example-model-2026-01"
SPIFFE_ID = "spiffe://example.org/ns/agents/assistant"


class Agent:
    """A registered agent: an EC P-256 key whose public JWKS the broker trusts."""

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = f"{name}-{uuid.uuid4().hex[:6]}"
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=self.kid, alg="ES256", use="sig")
        self.jwks_path = directory / f"{name}.jwks.json"
        self.jwks_path.write_text(json.dumps({"keys": [jwk]}))

    @property
    def pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def signed(self, claims: dict[str, Any], typ: str = "JWT") -> str:
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": self.kid, "typ": typ})

    def assertion(self, audience: str, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": self.name, "sub": self.name, "aud": audience, "jti": uuid.uuid4().hex,
                  "iat": now, "exp": now + 60}
        claims.update(overrides)
        return self.signed({k: v for k, v in claims.items() if v is not None})

    def actor_token(self, audience: str, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": self.name, "sub": self.name, "aud": audience, "iat": now, "exp": now + 300,
                  "jti": uuid.uuid4().hex}
        claims.update(overrides)
        return self.signed(claims)

    def dpop_proof(self, method: str, url: str, *, token: str | None = None, nonce: str | None = None,
                   jti: str | None = None) -> str:
        pub = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        claims: dict[str, Any] = {"jti": jti or uuid.uuid4().hex, "htm": method, "htu": url, "iat": int(time.time())}
        if token is not None:
            claims["ath"] = b64url(hashlib.sha256(token.encode()).digest())
        if nonce is not None:
            claims["nonce"] = nonce
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": pub})


def login(idp: str, client_id: str, secret: str, user: str, scope: str = "openid groups delegation") -> str:
    """Signs `user` in at the provider through its own login and consent
    pages (authorization code + PKCE) and returns the ID token."""
    verifier = secrets.token_urlsafe(48)
    challenge = b64url(hashlib.sha256(verifier.encode()).digest())
    with httpx.Client(follow_redirects=False, timeout=15) as h:
        r = h.get(f"{idp}/auth", params={
            "client_id": client_id, "response_type": "code", "redirect_uri": REDIRECT, "scope": scope,
            "code_challenge": challenge, "code_challenge_method": "S256", "state": secrets.token_hex(8),
            "nonce": secrets.token_hex(8)})
        location = ""
        for _ in range(12):
            if r.status_code == 200:
                # An interaction page (login, then consent): submit its form.
                action = re.search(r'action="([^"]+)"', r.text)
                prompt = re.search(r'name="prompt" value="([^"]+)"', r.text)
                assert action and prompt, f"unexpected page: {r.text[:500]}"
                data = {"prompt": prompt.group(1)}
                if data["prompt"] == "login":
                    data.update(login=user, password="any-password")
                r = h.post(urljoin(str(r.url), action.group(1)), data=data)
                continue
            assert r.status_code in (302, 303), f"{r.status_code}: {r.text[:500]}"
            location = r.headers["location"]
            if location.startswith(REDIRECT):
                break
            r = h.get(urljoin(str(r.url), location))
        query = parse_qs(urlparse(location).query)
        assert "code" in query, f"no authorization code: {location}"
        tr = h.post(f"{idp}/token", data={"grant_type": "authorization_code", "code": query["code"][0],
                                         "redirect_uri": REDIRECT, "code_verifier": verifier},
                    auth=(client_id, secret))
        assert tr.status_code == 200, tr.text
        return tr.json()["id_token"]


def bank(rec: Path) -> dict[str, Any]:
    return {"command": str(mandate_bin()), "args": ["demo-server", "--profile", "bank", "--record", str(rec)],
            "timeout_secs": 10, "tools": {"get_balance": "read", "transfer": "financial"}}


def manifest_of(launcher: Launcher, issuer: Issuer, rec: Path) -> list[dict[str, Any]]:
    """The bank's tools as the gateway serves them (read through a plain
    gateway with a development token): the agent's registered manifest."""
    gw = launcher.gateway(issuer, {"bank": bank(rec)}, name="lister")
    token = issuer.mint(gw.audience, scope="bank.*")
    session = gw.initialize(token)
    listed = gw.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, token, session).response()
    tools = [t for t in listed["result"]["tools"] if t["name"] == "bank.get_balance"]
    assert tools, listed
    return tools


@dataclass
class Env:
    gw: Gateway
    idp: str
    agents: dict[str, Agent]
    build: str
    tampered_build: str
    rec: Path
    ops: str
    spire: Agent

    @property
    def issuer(self) -> str:
        return self.gw.public_url

    @property
    def token_endpoint(self) -> str:
        return self.gw.public_url + "/oauth2/token"

    def id_token(self, user: str = "alice@example.com", client: str = APP) -> str:
        return login(self.idp, client, APP_SECRET, user)

    def exchange(self, agent: str, subject: str, *, actor: str | None = None, scope: str | None = "bank.get_balance",
                 task_id: str | None = None, build: str | None = None, assertion: str | None = None,
                 subject_type: str = ID_TOKEN, dpop: str | None = None, **extra: str) -> httpx.Response:
        a = self.agents[agent]
        form = {"grant_type": GRANT, "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion or a.assertion(self.issuer),
                "subject_token": subject, "subject_token_type": subject_type,
                "actor_token": self.agents[actor or agent].actor_token(self.issuer), "actor_token_type": JWT_TYPE,
                "resource": self.gw.audience, "task_id": task_id or f"task-{uuid.uuid4().hex}",
                "build": build or self.build}
        if scope is not None:
            form["scope"] = scope
        form.update(extra)
        headers = {"DPoP": dpop} if dpop else {}
        return httpx.post(self.token_endpoint, data={k: v for k, v in form.items() if v != ""}, headers=headers,
                          timeout=30)


def write_build(d: Path, name: str, tools: list[dict[str, Any]]) -> tuple[Path, Path]:
    prompt = d / f"{name}.prompt.txt"
    prompt.write_text(SYSTEM_PROMPT)
    manifest = d / f"{name}.tools.json"
    manifest.write_text(json.dumps(tools, indent=2))
    return prompt, manifest


def build_hash(prompt: Path, manifest: Path) -> str:
    r = run_mandate("build-hash", "--model", MODEL, "--system-prompt", str(prompt), "--tools", str(manifest))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def canonical_build_hash(tools: list[dict[str, Any]]) -> str:
    """The documented canonical form (docs/BROKER.md), in Python."""
    keep = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
    reduced = sorted(({k: t[k] for k in keep if k in t} for t in tools), key=lambda t: t["name"])

    def canon(v: Any) -> bytes:
        return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    manifest = hashlib.sha256(canon(reduced)).hexdigest()
    return hashlib.sha256(canon({"mandate_build": 1, "model": MODEL, "system_prompt": SYSTEM_PROMPT,
                                 "tools": manifest})).hexdigest()


@pytest.fixture(scope="module")
def env(launcher: Launcher, issuer: Issuer) -> Env:
    node = shutil.which("node")
    assert node, "node is needed for the OpenID Connect provider"
    d = launcher.root / f"broker-{uuid.uuid4().hex[:6]}"
    d.mkdir(parents=True)
    rec = d / "bank.jsonl"

    # The identity provider: a real login, groups and may_act in the ID token.
    idp_port = free_port()
    idp = f"http://127.0.0.1:{idp_port}"
    (d / "claims.json").write_text(json.dumps(USERS))
    extra_clients = [
        {"client_id": OTHER_APP, "client_secret": APP_SECRET, "redirect_uris": [REDIRECT],
         "grant_types": ["authorization_code"], "response_types": ["code"],
         "token_endpoint_auth_method": "client_secret_basic"},
        {"client_id": SHORT_APP, "client_secret": APP_SECRET, "redirect_uris": [REDIRECT],
         "grant_types": ["authorization_code"], "response_types": ["code"],
         "token_endpoint_auth_method": "client_secret_basic", "id_token_ttl": 2},
    ]
    (d / "clients.json").write_text(json.dumps(extra_clients))
    proc = launcher.spawn(
        [node, str(SERVERS_DIR / "oidc_provider.mjs"), "--port", str(idp_port), "--client-id", APP,
         "--client-secret", APP_SECRET, "--redirect-uri", REDIRECT, "--users", ",".join(USERS),
         "--user-claims", str(d / "claims.json"), "--extra-clients", str(d / "clients.json")],
        "oidc-provider")
    deadline = time.monotonic() + 30
    while "ready" not in proc.stdout():
        assert proc.alive(), f"oidc-provider exited:\n{proc.stderr()}"
        assert time.monotonic() < deadline, f"oidc-provider did not start:\n{proc.stderr()}"
        time.sleep(0.1)

    agents = {n: Agent(n, d) for n in ("assistant", "summariser", "archiver", "dpopper")}
    # A SPIFFE trust domain's JWT signing key (as SPIRE would hold it) and its bundle.
    spire = Agent("spire", d)
    bundle = json.loads(spire.jwks_path.read_text())
    for k in bundle["keys"]:
        k["use"] = "jwt-svid"
    spire.jwks_path.write_text(json.dumps(bundle))
    tools = manifest_of(launcher, issuer, d / "lister.jsonl")
    prompt, manifest = write_build(d, "assistant", tools)
    tampered = json.loads(json.dumps(tools))
    tampered[0]["description"] = tampered[0].get("description", "") + " (as registered last week)"
    t_prompt, t_manifest = write_build(d, "assistant-old", tampered)

    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    config = d / "mandate.toml"

    def agent_toml(name: str, **fields: Any) -> str:
        lines = [f"[broker.agents.{name}]", f"jwks_file = {toml_value(agents[name].jwks_path)}"]
        lines += [f"{k} = {toml_value(v)}" for k, v in fields.items()]
        lines += [f"[[broker.agents.{name}.builds]]", f"model = {toml_value(MODEL)}",
                  f"system_prompt = {toml_value(prompt)}", f"tools = {toml_value(manifest)}", ""]
        return "\n".join(lines)

    config.write_text("\n".join([
        "[server]", f"listen = {toml_value(f'127.0.0.1:{port}')}", f"public_url = {toml_value(public_url)}",
        f"data_dir = {toml_value(d / 'data')}", "",
        "[auth]", "leeway_secs = 1", "",
        "[[auth.issuers]]", f"issuer = {toml_value(issuer.issuer)}", f"jwks_file = {toml_value(issuer.jwks_path)}", "",
        "[policy]", f"dir = {toml_value(POLICY_DIR)}", "",
        "[upstreams.bank]", 'default_provenance = "trusted"',
        f"command = {toml_value(mandate_bin())}",
        f"args = {toml_value(['demo-server', '--profile', 'bank', '--record', str(rec)])}",
        "[upstreams.bank.tools]", 'get_balance = "read"', 'transfer = "financial"', "",
        "[[operators]]", 'sub = "ops@example.com"', 'roles = ["admin"]', "",
        "[broker]", "max_token_ttl_secs = 600", "max_delegation_depth = 2", "dpop_require_nonce = true", "",
        "[[broker.identity_providers]]", f"issuer = {toml_value(idp)}", f"audience = {toml_value(APP)}", "",
        "[broker.entitlements.groups]", 'research = "bank.get_balance"', "",
        "[broker.spiffe]", 'trust_domain = "example.org"', f"bundle = {toml_value(spire.jwks_path)}", "",
        agent_toml("assistant", scope_ceiling="bank.*", groups=["research"], delegate_to=["summariser"],
                   spiffe_id=SPIFFE_ID),
        f"[[broker.agents.assistant.builds]]\nname = \"assistant (old manifest)\"\nmodel = {toml_value(MODEL)}\n"
        f"system_prompt = {toml_value(t_prompt)}\ntools = {toml_value(t_manifest)}\n",
        agent_toml("summariser", scope_ceiling="bank.get_balance", delegate_to=["archiver"]),
        agent_toml("archiver", scope_ceiling="bank.get_balance"),
        agent_toml("dpopper", scope_ceiling="bank.get_balance", groups=["research"], dpop=True),
        "[broker.tasks.banking]", 'scope = "bank.get_balance"', "max_duration_secs = 3600",
        'agents = ["assistant", "summariser", "archiver", "dpopper"]', "",
    ]))
    proc = launcher.spawn([str(mandate_bin()), "serve", "--config", str(config)], "broker",
                          env={"MANDATE_LOG": "info,mandate_broker=debug,mandate_gateway=debug"})
    gw = Gateway(public_url=public_url, config=config, data_dir=d / "data", proc=proc)
    gw.wait_ready()
    return Env(gw=gw, idp=idp, agents=agents, build=build_hash(prompt, manifest), spire=spire,
               tampered_build=build_hash(t_prompt, t_manifest), rec=rec,
               ops=issuer.operator_token(gw.api_audience, "ops@example.com"))


def error_of(r: httpx.Response) -> str:
    assert r.headers.get("content-type", "").startswith("application/json"), r.text
    body = r.json()
    assert set(body) <= {"error", "error_description"}, body
    return body["error"]


def verify_with_pyjwt(env: Env, token: str) -> dict[str, Any]:
    """A third-party verifier: PyJWT with the keys at /.well-known/jwks.json."""
    meta = httpx.get(env.issuer + "/.well-known/oauth-authorization-server").json()
    keys = jwt.PyJWKClient(meta["jwks_uri"]).get_signing_key_from_jwt(token)
    return jwt.decode(token, keys.key, algorithms=["EdDSA", "ES256"], audience=env.gw.audience,
                      issuer=env.issuer, options={"require": ["exp", "iat", "sub", "jti"]})


# ---------------------------------------------------------------------------
# The happy path


def test_metadata_and_jwks_are_published(env: Env) -> None:
    meta = httpx.get(env.issuer + "/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == env.issuer
    assert meta["token_endpoint"] == env.token_endpoint
    assert GRANT in meta["grant_types_supported"]
    assert meta["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    jwks = httpx.get(meta["jwks_uri"]).json()
    assert jwks["keys"] and all("d" not in k for k in jwks["keys"])
    prm = httpx.get(env.gw.public_url + "/.well-known/oauth-protected-resource/mcp").json()
    assert env.issuer in prm["authorization_servers"]


def test_build_hash_is_reproducible_from_the_documented_form(env: Env, tmp_path: Path) -> None:
    tools = json.loads(next(env.gw.data_dir.parent.glob("assistant.tools.json")).read_text())
    assert canonical_build_hash(tools) == env.build
    # Reordering keys or adding ignored members changes nothing.
    shuffled = [dict(reversed(list(t.items())), _meta={"x": 1}) for t in tools]
    prompt, manifest = write_build(tmp_path, "shuffled", shuffled)
    assert build_hash(prompt, manifest) == env.build


def test_exchange_with_authlib_then_pyjwt_then_the_gateway_until_the_task_completes(env: Env) -> None:
    from authlib.integrations.httpx_client import OAuth2Client
    from authlib.oauth2.rfc7523 import PrivateKeyJWT
    from joserfc.jwk import ECKey

    task = f"task-{uuid.uuid4().hex}"
    started = env.gw.operator_cli(env.ops, "task", "start", "--template", "banking", "--user",
                                  "alice@example.com", "--id", task)
    assert started.returncode == 0, started.stderr

    subject = env.id_token("alice@example.com")
    agent = env.agents["assistant"]
    # rfc7523bis: the assertion's audience is the issuer identifier; a short
    # lifetime (the broker remembers each jti until it expires).
    auth = PrivateKeyJWT(token_endpoint=env.issuer, alg="ES256", headers={"kid": agent.kid},
                         claims={"exp": int(time.time()) + 60})
    with OAuth2Client(client_id="assistant", client_secret=ECKey.import_key(agent.pem),
                      token_endpoint_auth_method=auth) as client:
        token = client.fetch_token(env.token_endpoint, grant_type=GRANT, subject_token=subject,
                                   subject_token_type=ID_TOKEN, actor_token=agent.actor_token(env.issuer),
                                   actor_token_type=JWT_TYPE, resource=env.gw.audience,
                                   scope="bank.get_balance bank.transfer", task_id=task, build=env.build)
    assert token["token_type"] == "Bearer"
    assert token["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    # Narrowed: alice's entitlements and the task carry no transfer.
    assert token["scope"] == "bank.get_balance"
    assert 0 < token["expires_in"] <= 600

    claims = verify_with_pyjwt(env, token["access_token"])
    alice = jwt.decode(subject, options={"verify_signature": False})
    assert claims["sub"] == alice["sub"] == "alice@example.com"
    assert claims["act"] == {"sub": "assistant"}
    assert claims["task_id"] == task and claims["build"] == env.build
    assert claims["client_id"] == "assistant" and claims["aud"] == env.gw.audience
    assert claims["sid"] and claims["jti"] and claims["exp"] <= alice["exp"]
    assert jwt.get_unverified_header(token["access_token"])["typ"] == "at+jwt"

    async def call() -> tuple[str, Any]:
        async with sdk_client(env.gw.mcp_url, token["access_token"]) as c:
            r = await c.call_tool("bank.get_balance", {"account": "DE-research"})
            return text_of(r), r
    text, _ = asyncio.run(call())
    assert "12500" in text
    assert any(c["tool"] == "get_balance" for c in read_jsonl(env.rec))

    # Introspection (RFC 7662) by the client the token was issued to.
    intro = httpx.post(env.issuer + "/oauth2/introspect", data={
        "token": token["access_token"], "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": agent.assertion(env.issuer)}).json()
    assert intro["active"] is True
    assert intro["act"] == {"sub": "assistant"} and intro["task_id"] == task
    assert intro["build"] == env.build and intro["sid"] == claims["sid"]

    done = env.gw.operator_cli(env.ops, "task", "complete", task)
    assert done.returncode == 0, done.stderr

    # The very next call is refused.
    session = env.gw.initialize(token["access_token"])
    reply = env.gw.call_tool(token["access_token"], session, "bank.get_balance", {"account": "DE-research"})
    err = reply.error()
    assert err["data"]["reason"] == "revoked", err
    intro = httpx.post(env.issuer + "/oauth2/introspect", data={
        "token": token["access_token"], "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": agent.assertion(env.issuer)}).json()
    assert intro == {"active": False}
    # And no new token for the finished task.
    again = env.exchange("assistant", env.id_token(), task_id=task)
    assert again.status_code == 400 and error_of(again) == "invalid_request"

    rows = env.gw.audit_rows("tool = ?", ["broker/token_exchange"])
    assert any(r["effect"] == "allow" and r["task_id"] == task for r in rows)
    assert any(r["effect"] == "deny" and r["task_id"] == task for r in rows)
    listed = env.gw.operator_cli(env.ops, "task", "list", "--all")
    assert task in listed.stdout and "completed" in listed.stdout


def test_a_task_starts_implicitly_and_token_revocation_is_effective(env: Env) -> None:
    task = f"task-{uuid.uuid4().hex}"
    r = env.exchange("assistant", env.id_token(), task_id=task)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    token = r.json()["access_token"]
    session = env.gw.initialize(token)
    assert "12500" in json.dumps(env.gw.call_tool(token, session, "bank.get_balance", {"account": "x"}).response())
    # RFC 7009 revocation by the client: the next call is refused.
    rv = httpx.post(env.issuer + "/oauth2/revoke", data={
        "token": token, "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": env.agents["assistant"].assertion(env.issuer)})
    assert rv.status_code == 200
    assert env.gw.call_tool(token, session, "bank.get_balance", {"account": "x"}).error()["data"]["reason"] == "revoked"


# ---------------------------------------------------------------------------
# Refusals, each with its error code


def test_subject_token_for_another_audience_is_invalid_request(env: Env) -> None:
    r = env.exchange("assistant", env.id_token(client=OTHER_APP))
    assert r.status_code == 400 and error_of(r) == "invalid_request"


def test_expired_subject_token_is_invalid_request(env: Env) -> None:
    subject = login(env.idp, SHORT_APP, APP_SECRET, "alice@example.com")
    time.sleep(4)  # 2 s lifetime + 1 s leeway
    r = env.exchange("assistant", subject)
    assert r.status_code == 400 and error_of(r) == "invalid_request"


def test_forged_subject_token_is_invalid_request(env: Env) -> None:
    header, payload, sig = env.id_token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "mallory@example.com"
    forged = ".".join([header, b64url(json.dumps(claims).encode()), sig])
    r = env.exchange("assistant", forged)
    assert r.status_code == 400 and error_of(r) == "invalid_request"
    assert "mallory" not in r.text


def test_actor_token_of_another_agent_is_invalid_request(env: Env) -> None:
    r = env.exchange("assistant", env.id_token(), actor="summariser")
    assert r.status_code == 400 and error_of(r) == "invalid_request"


def test_missing_actor_token_is_invalid_request(env: Env) -> None:
    r = env.exchange("assistant", env.id_token(), actor_token="", actor_token_type="")
    assert r.status_code == 400 and error_of(r) == "invalid_request"


def test_replayed_client_assertion_is_invalid_client(env: Env) -> None:
    subject = env.id_token()
    assertion = env.agents["assistant"].assertion(env.issuer)
    first = env.exchange("assistant", subject, assertion=assertion)
    assert first.status_code == 200, first.text
    replay = env.exchange("assistant", subject, assertion=assertion)
    assert replay.status_code == 401 and error_of(replay) == "invalid_client"


def test_client_assertion_with_another_audience_is_invalid_client(env: Env) -> None:
    a = env.agents["assistant"]
    for aud in (env.token_endpoint, [env.issuer, "https://elsewhere.test"]):
        r = env.exchange("assistant", env.id_token(), assertion=a.assertion(env.issuer, aud=aud))
        assert r.status_code == 401 and error_of(r) == "invalid_client", aud


def test_no_client_authentication_is_invalid_client(env: Env) -> None:
    r = httpx.post(env.token_endpoint, data={"grant_type": GRANT, "client_id": "assistant",
                                              "subject_token": env.id_token(), "subject_token_type": ID_TOKEN})
    assert r.status_code == 401 and error_of(r) == "invalid_client"


def test_unregistered_build_is_unauthorized_client(env: Env) -> None:
    r = env.exchange("assistant", env.id_token(), build="0" * 64)
    assert r.status_code == 400 and error_of(r) == "unauthorized_client"


def test_changed_tool_manifest_makes_the_build_unknown_at_the_gateway(env: Env) -> None:
    # The build registered with last week's tool description: the broker
    # issues (the build is registered), the gateway refuses every call,
    # because the tools it serves no longer hash to that manifest.
    r = env.exchange("assistant", env.id_token(), build=env.tampered_build)
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    session = env.gw.initialize(token)
    err = env.gw.call_tool(token, session, "bank.get_balance", {"account": "x"}).error()
    assert err["data"]["reason"] == "unknown_build", err
    rows = env.gw.audit_rows("build = ? AND tool = 'bank.get_balance'", [env.tampered_build])
    assert rows and rows[-1]["effect"] == "deny"


def test_scope_escalation_is_invalid_scope(env: Env) -> None:
    r = env.exchange("assistant", env.id_token(), scope="bank.transfer")
    assert r.status_code == 400 and error_of(r) == "invalid_scope"


def test_agent_not_allowed_for_the_user_is_unauthorized_client(env: Env) -> None:
    r = env.exchange("assistant", env.id_token("bob@example.com"))
    assert r.status_code == 400 and error_of(r) == "unauthorized_client"


def test_may_act_excluding_the_agent_is_invalid_request(env: Env) -> None:
    r = env.exchange("assistant", env.id_token("carol@example.com"))
    assert r.status_code == 400 and error_of(r) == "invalid_request"
    ok = env.exchange("assistant", env.id_token("dave@example.com"))
    assert ok.status_code == 200, ok.text


def test_unserved_resource_is_invalid_target(env: Env) -> None:
    r = env.exchange("assistant", env.id_token(), resource="https://elsewhere.test/mcp")
    assert r.status_code == 400 and error_of(r) == "invalid_target"


def test_other_grants_are_unsupported(env: Env) -> None:
    r = httpx.post(env.token_endpoint, data={"grant_type": "client_credentials"})
    assert r.status_code == 400 and error_of(r) == "unsupported_grant_type"


# ---------------------------------------------------------------------------
# Sub-delegation


def test_sub_delegation_nests_act_and_only_narrows(env: Env) -> None:
    task = f"task-{uuid.uuid4().hex}"
    parent = env.exchange("assistant", env.id_token(), task_id=task)
    assert parent.status_code == 200, parent.text
    parent_token = parent.json()["access_token"]
    access = "urn:ietf:params:oauth:token-type:access_token"

    child = env.exchange("summariser", parent_token, subject_type=access, task_id=task)
    assert child.status_code == 200, child.text
    claims = verify_with_pyjwt(env, child.json()["access_token"])
    assert claims["act"] == {"sub": "summariser", "act": {"sub": "assistant"}}
    assert claims["sub"] == "alice@example.com" and claims["task_id"] == task
    assert claims["sid"] != verify_with_pyjwt(env, parent_token)["sid"]
    rows = env.gw.audit_rows("tool = ? AND task_id = ? AND effect = 'allow'", ["broker/token_exchange", task])
    assert json.loads(rows[-1]["act"]) == ["summariser", "assistant"]

    # Widening is refused, not trimmed.
    wide = env.exchange("summariser", parent_token, subject_type=access, task_id=task,
                        scope="bank.get_balance bank.transfer")
    assert wide.status_code == 400 and error_of(wide) == "invalid_scope"

    # Depth: user → assistant → summariser is the limit (2).
    deeper = env.exchange("archiver", child.json()["access_token"], subject_type=access, task_id=task)
    assert deeper.status_code == 400 and error_of(deeper) == "invalid_request"

    # An agent the parent may not delegate to.
    stray = env.exchange("archiver", parent_token, subject_type=access, task_id=task)
    assert stray.status_code == 400 and error_of(stray) == "unauthorized_client"


# ---------------------------------------------------------------------------
# DPoP (RFC 9449)


def dpop_exchange(env: Env) -> tuple[str, dict[str, Any]]:
    agent = env.agents["dpopper"]
    subject = env.id_token()
    first = env.exchange("dpopper", subject, dpop=agent.dpop_proof("POST", env.token_endpoint))
    assert first.status_code == 400 and error_of(first) == "use_dpop_nonce", first.text
    nonce = first.headers["dpop-nonce"]
    r = env.exchange("dpopper", subject, dpop=agent.dpop_proof("POST", env.token_endpoint, nonce=nonce))
    assert r.status_code == 200, r.text
    return nonce, r.json()


def dpop_post(env: Env, body: Any, token: str, proof: str | None, session: str | None = None,
              scheme: str = "DPoP") -> RpcReply:
    h = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
         "MCP-Protocol-Version": "2025-06-18", "Authorization": f"{scheme} {token}"}
    if proof is not None:
        h["DPoP"] = proof
    if session:
        h["Mcp-Session-Id"] = session
    with httpx.Client(timeout=30) as c:
        return RpcReply.of(c.post(env.gw.mcp_url, content=json.dumps(body).encode(), headers=h))


def test_dpop_bound_token_needs_a_valid_proof_at_the_gateway(env: Env) -> None:
    agent = env.agents["dpopper"]
    nonce, issued = dpop_exchange(env)
    assert issued["token_type"] == "DPoP"
    token = issued["access_token"]
    claims = verify_with_pyjwt(env, token)
    assert claims["cnf"]["jkt"]

    url = env.gw.mcp_url
    proof = lambda **kw: agent.dpop_proof("POST", url, token=token, nonce=nonce, **kw)  # noqa: E731
    init = dpop_post(env, initialize_request(), token, proof())
    assert init.status == 200, init.text
    session = init.headers["mcp-session-id"]
    note = dpop_post(env, {"jsonrpc": "2.0", "method": "notifications/initialized"}, token, proof(), session)
    assert note.status in (200, 202)
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "bank.get_balance", "arguments": {"account": "dpop"}}}
    ok = dpop_post(env, call, token, proof(), session)
    assert ok.status == 200 and "12500" in json.dumps(ok.response()), ok.text

    # As a plain bearer token: refused.
    assert dpop_post(env, call, token, None, session, scheme="Bearer").status == 401
    # Without a proof: refused.
    assert dpop_post(env, call, token, None, session).status == 401
    # A replayed proof: refused.
    used = proof()
    assert dpop_post(env, call, token, used, session).status == 200
    replay = dpop_post(env, call, token, used, session)
    assert replay.status == 401 and "replayed" in replay.headers.get("www-authenticate", "")
    # A proof for another URL: refused.
    other = agent.dpop_proof("POST", env.gw.public_url + "/other", token=token, nonce=nonce)
    assert dpop_post(env, call, token, other, session).status == 401
    # A proof made with another key: refused.
    stranger = env.agents["assistant"].dpop_proof("POST", url, token=token, nonce=nonce)
    assert dpop_post(env, call, token, stranger, session).status == 401
    # A valid bound token with a bad proof is what a stolen token looks
    # like: each such refusal is on the audit record, with the subject.
    refusals = env.gw.audit_rows("tool = 'mcp/dpop' AND effect = 'deny'")
    assert len(refusals) >= 4, refusals
    assert all(r["sub"] and json.loads(r["act"]) for r in refusals), refusals


def test_dpop_agent_without_a_proof_gets_no_token(env: Env) -> None:
    r = env.exchange("dpopper", env.id_token())
    assert r.status_code == 400 and error_of(r) == "invalid_dpop_proof"


# ---------------------------------------------------------------------------
# SPIFFE


def test_a_jwt_svid_is_accepted_as_the_actor_token(env: Env) -> None:
    now = int(time.time())
    svid = env.spire.signed({"sub": SPIFFE_ID, "aud": env.issuer, "iat": now, "exp": now + 300})
    r = env.exchange("assistant", env.id_token(), actor_token=svid)
    assert r.status_code == 200, r.text
    assert verify_with_pyjwt(env, r.json()["access_token"])["act"] == {"sub": "assistant"}
    # An SVID of another workload, or one for another audience, is not this agent.
    other = env.spire.signed({"sub": "spiffe://example.org/ns/agents/mallory", "aud": env.issuer,
                              "iat": now, "exp": now + 300})
    assert error_of(env.exchange("assistant", env.id_token(), actor_token=other)) == "invalid_request"
    wrong_aud = env.spire.signed({"sub": SPIFFE_ID, "aud": "https://elsewhere.test", "iat": now, "exp": now + 300})
    assert error_of(env.exchange("assistant", env.id_token(), actor_token=wrong_aud)) == "invalid_request"
    # Signed by a key outside the bundle.
    forged = env.agents["summariser"].signed({"sub": SPIFFE_ID, "aud": env.issuer, "iat": now, "exp": now + 300})
    assert error_of(env.exchange("assistant", env.id_token(), actor_token=forged)) == "invalid_request"


# ---------------------------------------------------------------------------
# Key rotation


def test_key_rotation_keeps_tokens_of_the_old_key_valid(env: Env) -> None:
    old = env.exchange("assistant", env.id_token())
    assert old.status_code == 200, old.text
    old_token = old.json()["access_token"]
    rotated = run_mandate("keys", "rotate", "--config", str(env.gw.config))
    assert rotated.returncode == 0, rotated.stderr
    new = env.exchange("assistant", env.id_token())
    assert new.status_code == 200, new.text
    new_token = new.json()["access_token"]
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    new_kid = jwt.get_unverified_header(new_token)["kid"]
    assert old_kid != new_kid
    kids = {k["kid"] for k in httpx.get(env.issuer + "/.well-known/jwks.json").json()["keys"]}
    assert {old_kid, new_kid} <= kids
    for token in (old_token, new_token):
        verify_with_pyjwt(env, token)
        session = env.gw.initialize(token)
        reply = env.gw.call_tool(token, session, "bank.get_balance", {"account": "rotation"})
        assert "12500" in json.dumps(reply.response()), reply.text


def test_check_loads_the_brokers_keys_and_writes_none(env: Env) -> None:
    """`serve --check` on a running broker's config loads its identity
    providers, agents and signing keys, and changes none of its files."""
    keys = env.gw.data_dir / "broker-keys"
    files = lambda: {p.name: p.read_bytes() for p in sorted(keys.iterdir())}  # noqa: E731
    before = files()
    assert "keys.json" in before and "jwks.json" in before, sorted(before)
    r = run_mandate("serve", "--config", str(env.gw.config), "--check", timeout=90)
    said = r.stdout + r.stderr
    assert r.returncode == 0, said
    assert "signing keys loaded" in r.stdout and "configuration OK" in r.stdout, said
    assert files() == before, "the check changed the broker's keys"
