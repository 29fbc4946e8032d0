"""Every token the gateway must not accept gets HTTP 401 with a challenge
that lets a standard MCP client discover the authorization server (RFC 9728).

Tokens are minted with PyJWT + cryptography (a real third-party JWT stack);
the attacks that PyJWT refuses to produce (`alg: none`, HS256 keyed with the
public key) are built by hand.
"""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

import jwt
from e2e_support import (
    DROP,
    MCP_ACCEPT,
    Gateway,
    Issuer,
    Launcher,
    b64url,
    b64url_json,
    initialize_request,
    mandate_bin,
    read_jsonl,
)


@pytest.fixture(scope="module")
def env(launcher: Launcher, issuer: Issuer):
    rec = launcher.root / "docs-calls.jsonl"
    gw = launcher.gateway(issuer, {
        "docs": {
            "command": str(mandate_bin()), "args": ["demo-server", "--profile", "workspace", "--record", str(rec)],
            "timeout_secs": 10, "tools": {"search": "read"},
        },
    })
    return gw, rec


def metadata_url(gw: Gateway) -> str:
    return f"{gw.public_url}/.well-known/oauth-protected-resource/mcp"


# RFC 6750 §3: `Bearer` then `name="value"` parameters, comma-separated; a
# value is a quoted-string (RFC 9110 §5.6.4, `\\`-escapes allowed).
CHALLENGE_PARAM = re.compile(r'\s*([A-Za-z_]+)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')
# The characters RFC 6750 §3 allows in error, error_description and scope.
RFC6750_VALUE = re.compile(r"^[\x20\x21\x23-\x5b\x5d-\x7e]*$")


def challenge_params(challenge: str) -> dict[str, str]:
    """A Bearer challenge's parameters, refusing anything that does not
    parse as RFC 6750 §3 writes it (so an unescaped quote fails)."""
    assert challenge.startswith("Bearer "), challenge
    rest = challenge[len("Bearer "):]
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = CHALLENGE_PARAM.match(rest, pos)
        assert m, f"unparsable challenge at {rest[pos:]!r}: {challenge!r}"
        assert m.group(1) not in params, f"parameter {m.group(1)} twice: {challenge!r}"
        params[m.group(1)] = m.group(2)
        pos = m.end()
    for name in ("error", "error_description", "scope"):
        if name in params:
            assert RFC6750_VALUE.match(params[name]), f"{name} outside RFC 6750's characters: {challenge!r}"
    return params


def assert_refused(gw: Gateway, token: str | None, *, sent: bool = True, label: str = "") -> None:
    reply = gw.post(initialize_request(), token)
    assert reply.status == 401, f"{label}: expected 401, got HTTP {reply.status}: {reply.text[:500]}"
    challenge = reply.headers.get("www-authenticate", "")
    assert challenge.startswith("Bearer "), f"{label}: WWW-Authenticate {challenge!r}"
    assert f'resource_metadata="{metadata_url(gw)}"' in challenge, f"{label}: {challenge!r}"
    params = challenge_params(challenge)
    assert params.get("resource_metadata") == metadata_url(gw), f"{label}: {challenge!r}"
    # JSON-RPC -32001 means "unauthenticated", and only that (docs/ERRORS.md).
    assert reply.error()["code"] == -32001, f"{label}: {reply.text[:500]}"
    if sent:
        assert 'error="invalid_token"' in challenge, f"{label}: {challenge!r}"
        assert params.get("error") == "invalid_token" and params.get("error_description"), f"{label}: {challenge!r}"
    else:
        assert "error" not in params, f"{label}: RFC 6750 §3.1: no error code without a credential: {challenge!r}"
    assert "mcp-session-id" not in reply.headers, f"{label}: a session was opened"
    # Never the token, or a stack trace, in the answer.
    if token:
        assert token not in reply.text
    assert "panicked" not in reply.text and "backtrace" not in reply.text.lower()


def test_valid_token_is_accepted(env, issuer: Issuer) -> None:
    """The positive control for every refusal below."""
    gw, _ = env
    reply = gw.post(initialize_request(), issuer.mint(gw.audience, scope="docs.search"))
    assert reply.status == 200 and "result" in reply.response(1), reply.text
    assert reply.headers.get("mcp-session-id")


def test_missing_token_is_refused(env) -> None:
    gw, _ = env
    assert_refused(gw, None, sent=False, label="no Authorization header")
    reply = gw.post(initialize_request(), None, headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"})
    assert reply.status == 401, reply.text


def test_garbage_token_is_refused(env) -> None:
    gw, _ = env
    for tok in ["not-a-jwt", "a.b.c", "....", "eyJhbGciOiJFZERTQSJ9..", "x" * 5000]:
        assert_refused(gw, tok, label=f"garbage {tok[:20]!r}")


def test_expired_token_is_refused(env, issuer: Issuer) -> None:
    gw, _ = env
    now = int(time.time())
    # 120 s past expiry: well outside the 30 s leeway.
    tok = issuer.mint(gw.audience, scope="docs.search", iat=now - 900, nbf=now - 900, exp=now - 120)
    assert_refused(gw, tok, label="expired")


def test_token_without_exp_is_refused(env, issuer: Issuer) -> None:
    gw, _ = env
    assert_refused(gw, issuer.mint(gw.audience, scope="docs.search", exp=DROP), label="no exp")


def test_not_yet_valid_token_is_refused(env, issuer: Issuer) -> None:
    gw, _ = env
    now = int(time.time())
    tok = issuer.mint(gw.audience, scope="docs.search", iat=now, nbf=now + 300, exp=now + 900)
    assert_refused(gw, tok, label="nbf in the future")


def test_wrong_audience_is_refused(env, issuer: Issuer) -> None:
    gw, _ = env
    for aud in ["https://other-gateway.test/mcp", gw.public_url, gw.public_url + "/mcp/", ["https://x.test"]]:
        assert_refused(gw, issuer.mint(gw.audience, scope="docs.search", aud=aud), label=f"aud {aud!r}")
    assert_refused(gw, issuer.mint(gw.audience, scope="docs.search", aud=DROP), label="no aud")


def test_wrong_issuer_is_refused(env, issuer: Issuer) -> None:
    gw, _ = env
    # Signed with the trusted key, but claiming to come from another issuer.
    assert_refused(gw, issuer.mint(gw.audience, scope="docs.search", iss="https://evil.test"), label="iss")
    assert_refused(gw, issuer.mint(gw.audience, scope="docs.search", iss=DROP), label="no iss")


def test_forged_signature_is_refused(env, issuer: Issuer) -> None:
    gw, _ = env
    # An attacker's key, presenting the trusted key's kid.
    attacker = ed25519.Ed25519PrivateKey.generate()
    forged = jwt.encode(issuer.claims(gw.audience, scope="docs.*"), attacker, algorithm="EdDSA",
                        headers={"kid": issuer.ed_kid})
    assert_refused(gw, forged, label="attacker key, trusted kid")
    # A genuine token whose payload was widened after signing.
    genuine = issuer.mint(gw.audience, scope="docs.search")
    head, payload, sig = genuine.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["scope"] = "docs.* bank.*"
    assert_refused(gw, f"{head}.{b64url_json(claims)}.{sig}", label="payload edited after signing")
    # Signature stripped.
    assert_refused(gw, f"{head}.{payload}.", label="signature stripped")
    # An unknown kid.
    unknown = jwt.encode(issuer.claims(gw.audience, scope="docs.search"), attacker, algorithm="EdDSA",
                         headers={"kid": "no-such-kid"})
    assert_refused(gw, unknown, label="unknown kid")


def test_alg_none_token_is_refused(env, issuer: Issuer) -> None:
    gw, _ = env
    for alg in ["none", "None", "NONE", "nOnE"]:
        assert_refused(gw, issuer.unsigned(gw.audience, alg=alg, scope="docs.search"), label=f"alg {alg}")
    # alg none with a (meaningless) signature attached.
    tok = issuer.unsigned(gw.audience, scope="docs.search") + b64url(b"sig")
    assert_refused(gw, tok, label="alg none + signature")


def test_hs256_keyed_with_the_public_key_is_refused(env, issuer: Issuer) -> None:
    """Algorithm confusion: HMAC 'signed' with the issuer's public key."""
    gw, _ = env
    jwks_text = issuer.jwks_path.read_text()
    x = json.loads(jwks_text)["keys"][0]["x"]
    for label, secret in [
        ("PEM", issuer.ed_public_pem()),
        ("raw key bytes", issuer.ed_public_raw()),
        ("JWK x", x.encode()),
        ("JWKS document", jwks_text.encode()),
    ]:
        assert_refused(gw, issuer.hs256_with(secret, gw.audience, scope="docs.search"), label=f"HS256 with {label}")


def test_token_without_actor_is_refused(env, issuer: Issuer) -> None:
    """Delegation, never impersonation: a token that names no agent is refused."""
    gw, _ = env
    assert_refused(gw, issuer.mint(gw.audience, scope="docs.search", act=DROP), label="no act")
    assert_refused(gw, issuer.mint(gw.audience, scope="docs.search", act={}), label="empty act")


def test_bad_token_on_an_established_session_is_refused_and_not_forwarded(env, issuer: Issuer) -> None:
    """Continuous verification: every request is authenticated, not just initialize."""
    gw, rec = env
    sid_claim = "sess-continuous"
    good = issuer.mint(gw.audience, scope="docs.search", sid=sid_claim)
    session = gw.initialize(good)
    before = len(read_jsonl(rec))
    now = int(time.time())
    expired = issuer.mint(gw.audience, scope="docs.search", sid=sid_claim, iat=now - 900, nbf=now - 900,
                          exp=now - 120)
    for tok, label in [(None, "no token"), (expired, "expired"),
                       (issuer.unsigned(gw.audience, scope="docs.search", sid=sid_claim), "alg none")]:
        reply = gw.call_tool(tok, session, "docs.search", {"query": "leak"})
        assert reply.status == 401, f"{label}: HTTP {reply.status} {reply.text}"
    assert len(read_jsonl(rec)) == before, read_jsonl(rec)
    ok = gw.call_tool(good, session, "docs.search", {"query": "fine"})
    assert ok.status == 200 and "result" in ok.response(7), ok.text


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Reads one HTTP/1.1 response with a Content-Length body (the gateway's
    JSON errors have one)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} bytes of response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed inside the response body")
        rest += chunk
    return status, headers, rest[:length]


def test_a_refused_request_does_not_break_the_clients_next_request(env, issuer: Issuer) -> None:
    """HTTP clients pool connections (the MCP SDKs do). When the gateway
    answers 401 before reading the request body, it must either say
    `Connection: close` or keep the connection usable; dropping it silently
    makes the client's next request on that connection (say, the retry with
    a refreshed token) fail with "server disconnected"."""
    gw, _ = env
    host, port = gw.public_url.removeprefix("http://").split(":")
    bad = issuer.mint(gw.audience, scope="docs.search", act=DROP)
    good = issuer.mint(gw.audience, scope="docs.search")
    big = json.dumps({**initialize_request(), "pad": "x" * 200_000}).encode()
    small = json.dumps(initialize_request()).encode()

    def request(token: str, body_len: int) -> bytes:
        return (f"POST /mcp HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                f"Accept: {MCP_ACCEPT}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {body_len}\r\n\r\n").encode()

    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # Headers and the start of the body; the 401 comes before the rest.
        sock.sendall(request(bad, len(big)) + big[:1000])
        status, headers, _ = read_response(sock)
        assert status == 401, status
        if headers.get("connection", "").lower() == "close":
            return  # the client was told not to reuse this connection
        # Kept alive, so the connection must stay usable: finish the body,
        # then send the next request.
        try:
            sock.sendall(big[1000:])
            sock.sendall(request(good, len(small)) + small)
            status2, _, _ = read_response(sock)
        except OSError as e:
            pytest.fail(f"the gateway answered 401 without `Connection: close` and then dropped the "
                        f"connection: the client's next request on it failed ({type(e).__name__}: {e})")
        assert status2 == 200, status2


def test_protected_resource_metadata_names_the_resource(env) -> None:
    gw, _ = env
    r = gw.get("/.well-known/oauth-protected-resource/mcp")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resource"] == gw.public_url + "/mcp", body
    assert "https://idp.test" in body.get("authorization_servers", []), body


def test_healthz_and_metrics(env) -> None:
    gw, _ = env
    r = gw.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text
    m = gw.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain"), m.headers
    assert "# TYPE" in m.text and "mandate_" in m.text, m.text[:500]
