"""Shared machinery for Mandate's end-to-end tests.

Everything here drives real processes: the `mandate` binary, the official
Python MCP SDK, `@modelcontextprotocol/server-everything` and the recording
server in `servers/`. Nothing is mocked.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parent.parent
SERVERS_DIR = E2E_DIR / "servers"
RECORDING_SERVER = SERVERS_DIR / "recording_server.py"
FAULTY_SERVER = SERVERS_DIR / "faulty_server.py"
POLICY_DIR = REPO_ROOT / "examples" / "quickstart" / "policies"
EVERYTHING_PKG = E2E_DIR / "node_modules" / "@modelcontextprotocol" / "server-everything"

ISSUER = "https://idp.test"
MCP_ACCEPT = "application/json, text/event-stream"
PROTOCOL_VERSION = "2025-06-18"


# --------------------------------------------------------------------------
# Locating the peers


def mandate_bin() -> Path:
    """The binary under test: $MANDATE_BIN, else the cargo target dir's debug build."""
    if os.environ.get("MANDATE_BIN"):
        path = Path(os.environ["MANDATE_BIN"])
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO_ROOT / "target")
        if not target.is_absolute():
            target = REPO_ROOT / target
        path = target / "debug" / "mandate"
    if not path.is_file():
        raise RuntimeError(f"mandate binary not found at {path}: run `cargo build -p mandate --features dev` or set MANDATE_BIN")
    return path


def everything_entry() -> list[str]:
    """argv that starts @modelcontextprotocol/server-everything on stdio."""
    pkg = json.loads((EVERYTHING_PKG / "package.json").read_text())
    bin_field = pkg["bin"]
    rel = bin_field if isinstance(bin_field, str) else next(iter(bin_field.values()))
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH; the e2e suite needs Node.js for server-everything")
    return [node, str(EVERYTHING_PKG / rel), "stdio"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# Tokens: a test identity provider built on PyJWT + cryptography


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


class Issuer:
    """A token issuer with an Ed25519 and an EC P-256 signing key, whose
    public keys are published in a JWKS file the gateway trusts."""

    def __init__(self, directory: Path, issuer: str = ISSUER) -> None:
        self.issuer = issuer
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ed_key = ed25519.Ed25519PrivateKey.generate()
        self.ed_kid = "ed-" + uuid.uuid4().hex[:8]
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.ec_kid = "ec-" + uuid.uuid4().hex[:8]
        self.jwks_path = directory / "jwks.json"
        self.jwks_path.write_text(json.dumps(self.jwks()))

    def jwks(self) -> dict[str, Any]:
        ed = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self.ed_key.public_key()))
        ed.update(kid=self.ed_kid, alg="EdDSA", use="sig")
        ecj = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec_key.public_key()))
        ecj.update(kid=self.ec_kid, alg="ES256", use="sig")
        return {"keys": [ed, ecj]}

    def ed_public_pem(self) -> bytes:
        return self.ed_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def ed_public_raw(self) -> bytes:
        return self.ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def claims(self, audience: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience,
            "sub": "alice@example.com",
            "act": {"sub": "agent-research"},
            "scope": "",
            "sid": "sess-" + uuid.uuid4().hex[:10],
            "task_id": "task-e2e",
            "build": "sha256:" + hashlib.sha256(b"e2e-build").hexdigest(),
            "jti": uuid.uuid4().hex,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        }
        for k, v in overrides.items():
            if v is _DROP:
                claims.pop(k, None)
            else:
                claims[k] = v
        return claims

    def mint(self, audience: str, *, alg: str = "EdDSA", headers: dict[str, Any] | None = None, **overrides: Any) -> str:
        claims = self.claims(audience, **overrides)
        if alg == "EdDSA":
            key, kid = self.ed_key, self.ed_kid
        elif alg == "ES256":
            key, kid = self.ec_key, self.ec_kid
        else:
            raise ValueError(alg)
        hdr = {"kid": kid, "typ": "at+jwt"}
        hdr.update(headers or {})
        return jwt.encode(claims, key, algorithm=alg, headers=hdr)

    def operator_token(self, audience: str, sub: str) -> str:
        """A person's token for the control API: no `act`, no task, no build."""
        return self.mint(audience, sub=sub, act=_DROP, task_id=_DROP, build=_DROP, sid=_DROP)

    def hs256_with(self, secret: bytes, audience: str, **overrides: Any) -> str:
        """HS256 token keyed with `secret` (the algorithm-confusion attack:
        the public key used as an HMAC secret)."""
        header = {"alg": "HS256", "typ": "JWT", "kid": self.ed_kid}
        signing_input = f"{b64url_json(header)}.{b64url_json(self.claims(audience, **overrides))}"
        sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(sig)}"

    def unsigned(self, audience: str, alg: str = "none", **overrides: Any) -> str:
        header = {"alg": alg, "typ": "JWT", "kid": self.ed_kid}
        return f"{b64url_json(header)}.{b64url_json(self.claims(audience, **overrides))}."


_DROP = object()
DROP = _DROP
"""Pass as a claim value to `Issuer.mint` to leave that claim out."""


# --------------------------------------------------------------------------
# Processes


_ALL_PROCS: list[Proc] = []


@atexit.register
def _stop_leftovers() -> None:
    """Last line of defence (e.g. after a pytest-timeout abort): no spawned
    process group outlives the test run."""
    for proc in _ALL_PROCS:
        with contextlib.suppress(Exception):
            proc.stop()


class Proc:
    """A child process in its own process group, with logs in files."""

    def __init__(self, argv: list[str], log_dir: Path, name: str, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.argv = argv
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            argv, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL,
            env=full_env, cwd=cwd, start_new_session=True,
        )
        self.pid = self.popen.pid
        self._stopped = False
        _ALL_PROCS.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stderr(self) -> str:
        self._err.flush()
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        self._out.flush()
        return self.stdout_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM the group (the process and any children it started), then SIGKILL."""
        if self._stopped:
            return
        self._stopped = True
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=1)
            except subprocess.TimeoutExpired:
                # A replica polled by a load balancer keeps accepting for a
                # while after the first signal (limits.drain_delay_ms); a
                # second one skips that wait, not the drain.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=5)
        # Children (stdio upstreams) may outlive the leader: end the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        self._out.close()
        self._err.close()


class Launcher:
    """Starts processes and stops every one of them on close()."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[Proc] = []
        self.cleanups: list[Any] = []

    def spawn(self, argv: list[str], name: str, **kw: Any) -> Proc:
        proc = Proc(argv, self.root / "logs", f"{name}-{len(self.procs)}", **kw)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        for fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                fn()
        self.cleanups.clear()

    # ---- peers ----------------------------------------------------------

    def recording_http_server(self, name: str = "rec") -> RecordingServer:
        d = self.root / f"{name}-{uuid.uuid4().hex[:6]}"
        d.mkdir(parents=True)
        record = d / "calls.jsonl"
        record.touch()
        port_file = d / "port"
        proc = self.spawn(
            [sys.executable, str(RECORDING_SERVER), "--record", str(record), "--http", "127.0.0.1:0",
             "--port-file", str(port_file)],
            name,
        )
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if not proc.alive():
                raise RuntimeError(f"recording server exited early:\n{proc.stderr()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"recording server did not start:\n{proc.stderr()}")
            time.sleep(0.05)
        port = int(port_file.read_text())
        return RecordingServer(url=f"http://127.0.0.1:{port}/mcp", record=record, proc=proc)

    def faulty_http_server(self, record: Path, port: int = 0, name: str = "faulty") -> str:
        """servers/faulty_server.py on `port` (0: any free one); returns its MCP URL."""
        port_file = self.root / f"{name}-{uuid.uuid4().hex[:6]}.port"
        proc = self.spawn([sys.executable, str(FAULTY_SERVER), "--record", str(record), "--port", str(port),
                           "--port-file", str(port_file)], name)
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"faulty server did not start:\n{proc.stderr()}")
            time.sleep(0.05)
        return f"http://127.0.0.1:{int(port_file.read_text())}/mcp"

    def gateway(self, issuer: Issuer, upstreams: dict[str, dict[str, Any]], *, max_body_bytes: int = 1048576,
                data_dir: Path | None = None, extra_toml: str = "", name: str = "gateway",
                policy_dir: Path = POLICY_DIR, policy_toml: str = "",
                env: dict[str, str] | None = None, jwks_url: str | None = None,
                log: str = "info,mandate=debug,mandate_gateway=debug",
                public_url: str | None = None, port: int | None = None) -> Gateway:
        """A `mandate serve` on its own loopback port. `public_url` is the
        URL agents use (replicas behind a load balancer share the balancer's:
        tokens name it as their audience); by default, this port's."""
        port = port or free_port()
        d = self.root / f"{name}-{uuid.uuid4().hex[:6]}"
        d.mkdir(parents=True)
        data = data_dir or (d / "data")
        own_url = f"http://127.0.0.1:{port}"
        config = d / "mandate.toml"
        config.write_text(
            gateway_toml(port=port, data_dir=data, jwks=issuer.jwks_path, issuer=issuer.issuer,
                         upstreams=upstreams, max_body_bytes=max_body_bytes, policy_dir=policy_dir,
                         policy_toml=policy_toml, jwks_url=jwks_url, public_url=public_url) + extra_toml
        )
        proc = self.spawn([str(mandate_bin()), "serve", "--config", str(config)], name,
                          env={"MANDATE_LOG": log, **(env or {})})
        gw = Gateway(public_url=own_url, config=config, data_dir=data, proc=proc,
                     served_url=public_url or own_url)
        gw.wait_ready()
        return gw


def wait_for_balancer(lb_url: str, settle: float = 1.5, timeout: float = 30) -> None:
    """Until a load balancer in front of replicas answers `/readyz` with 200,
    then `settle` seconds more, so every replica is up in its eyes (its
    health checks need a pass or two) before a test relies on spreading."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(lb_url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"the load balancer at {lb_url} did not come up"
        time.sleep(0.2)
    time.sleep(settle)


@dataclass
class RecordingServer:
    url: str
    record: Path
    proc: Proc

    def calls(self) -> list[dict[str, Any]]:
        return read_jsonl(self.record)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            out.append(json.loads(line))
    return out


# --------------------------------------------------------------------------
# Gateway


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (str, Path)):
        return json.dumps(str(v))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def gateway_toml(*, port: int, data_dir: Path, jwks: Path, issuer: str, upstreams: dict[str, dict[str, Any]],
                 max_body_bytes: int = 1048576, policy_dir: Path = POLICY_DIR, policy_toml: str = "",
                 jwks_url: str | None = None, public_url: str | None = None) -> str:
    lines = [
        "[server]",
        f"listen = {toml_value(f'127.0.0.1:{port}')}",
        f"public_url = {toml_value(public_url or f'http://127.0.0.1:{port}')}",
        f"data_dir = {toml_value(data_dir)}",
        f"max_body_bytes = {max_body_bytes}",
        "",
        "[auth]",
        "leeway_secs = 30",
        'algorithms = ["EdDSA", "ES256", "RS256", "PS256"]',
        "require_actor = true",
        "",
        "[[auth.issuers]]",
        f"issuer = {toml_value(issuer)}",
        f"jwks_url = {toml_value(jwks_url)}" if jwks_url else f"jwks_file = {toml_value(jwks)}",
        "",
        "[policy]",
        f"dir = {toml_value(policy_dir)}",
        policy_toml,
        "",
    ]
    for name, spec in upstreams.items():
        lines.append(f"[upstreams.{name}]")
        tools = spec.get("tools", {})
        # Mandate treats unlabelled tool results as untrusted (sanitised and
        # wrapped in an envelope). Tests about other things compare results
        # to the letter, so their upstreams are trusted unless they say so;
        # the provenance tests set it explicitly.
        if "default_provenance" not in spec:
            lines.append('default_provenance = "trusted"')
        for k, v in spec.items():
            if k not in ("tools", "provenance"):
                lines.append(f"{k} = {toml_value(v)}")
        if spec.get("provenance"):
            lines.append(f"provenance = {toml_value(spec['provenance'])}")
        lines.append(f"[upstreams.{name}.tools]")
        for tool, cls in tools.items():
            lines.append(f"{json.dumps(tool)} = {toml_value(cls)}")
        lines.append("")
    return "\n".join(lines) + "\n"


@dataclass
class Gateway:
    public_url: str
    config: Path
    data_dir: Path
    proc: Proc
    # The URL agents know it by (a load balancer's, for replicas): the
    # audience of their tokens. `public_url` is where this process listens.
    served_url: str = ""
    _http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    @property
    def mcp_url(self) -> str:
        return self.public_url + "/mcp"

    @property
    def audience(self) -> str:
        return (self.served_url or self.public_url) + "/mcp"

    @property
    def audit_db(self) -> Path:
        return self.data_dir / "audit.sqlite"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"mandate serve exited with {self.proc.popen.returncode}:\n{self.proc.stderr()}")
            try:
                r = self._http.get(self.public_url + "/healthz", timeout=2)
                if r.status_code == 200:
                    return
            except httpx.HTTPError as e:
                last = e
            time.sleep(0.1)
        raise RuntimeError(f"gateway not ready after {timeout}s ({last}):\n{self.proc.stderr()}")

    def get(self, path: str) -> httpx.Response:
        return self._http.get(self.public_url + path)

    # ---- raw MCP over HTTP --------------------------------------------------

    def post(self, body: Any, token: str | None = None, session: str | None = None, *,
             content: bytes | None = None, headers: dict[str, str] | None = None,
             client: httpx.Client | None = None) -> RpcReply:
        """POSTs to /mcp on a fresh connection (or on `client`'s pool), so a
        test's result does not depend on how the previous request ended."""
        h = {"Accept": MCP_ACCEPT, "Content-Type": "application/json", "MCP-Protocol-Version": PROTOCOL_VERSION}
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        if session is not None:
            h["Mcp-Session-Id"] = session
        h.update(headers or {})
        data = content if content is not None else json.dumps(body).encode()
        if client is not None:
            return RpcReply.of(client.post(self.mcp_url, content=data, headers=h))
        with httpx.Client(timeout=30) as fresh:
            return RpcReply.of(fresh.post(self.mcp_url, content=data, headers=h))

    def initialize(self, token: str) -> str:
        """Opens a transport session with `token`; returns its Mcp-Session-Id."""
        reply = self.post(initialize_request(), token)
        assert reply.status == 200, f"initialize failed: {reply.status} {reply.text}"
        sid = reply.headers.get("mcp-session-id")
        assert sid, f"initialize returned no Mcp-Session-Id: {reply.headers}"
        note = self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, token, sid)
        assert note.status in (200, 202), f"notifications/initialized: {note.status} {note.text}"
        return sid

    def call_tool(self, token: str | None, session: str, name: str, arguments: dict[str, Any], rid: int = 7) -> RpcReply:
        return self.post({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                          "params": {"name": name, "arguments": arguments}}, token, session)

    # ---- audit ------------------------------------------------------------

    def audit_rows(self, where: str = "1=1", params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        if not self.audit_db.exists():
            return []
        conn = sqlite3.connect(f"file:{self.audit_db}?mode=ro", uri=True, timeout=10)
        try:
            conn.row_factory = sqlite3.Row
            rows = conn.execute(f"SELECT * FROM audit_log WHERE {where} ORDER BY seq", tuple(params)).fetchall()
            return [dict(r) for r in rows]
        finally:
            conn.close()

    def wait_audit(self, where: str, params: Iterable[Any] = (), timeout: float = 10) -> list[dict[str, Any]]:
        """Rows matching `where`, waiting briefly for outcome records written after the response."""
        deadline = time.monotonic() + timeout
        params = tuple(params)
        while True:
            rows = self.audit_rows(where, params)
            if rows or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)

    def cli(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_mandate(*args, timeout=timeout, env=env)

    # ---- control API ------------------------------------------------------

    @property
    def api_audience(self) -> str:
        return (self.served_url or self.public_url) + "/api"

    def api(self, method: str, path: str, token: str | None, body: Any = None) -> httpx.Response:
        h = {"Authorization": f"Bearer {token}"} if token else {}
        return self._http.request(method, self.public_url + path, json=body, headers=h)

    def operator_cli(self, token: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Runs an operator command (`mandate revoke …`) against this gateway."""
        env = dict(os.environ, MANDATE_OPERATOR_TOKEN=token, MANDATE_SERVER=self.public_url)
        return run_mandate(*args, env=env)


def run_mandate(*args: str, timeout: float = 120, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(mandate_bin()), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, stdin=subprocess.DEVNULL, env=env)


def initialize_request(rid: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0", "id": rid, "method": "initialize",
        "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                   "clientInfo": {"name": "mandate-e2e-raw", "version": "1"}},
    }


@dataclass
class RpcReply:
    """An HTTP reply from /mcp, with its JSON-RPC messages (JSON or SSE body)."""

    status: int
    headers: httpx.Headers
    text: str
    messages: list[dict[str, Any]]

    @classmethod
    def of(cls, r: httpx.Response) -> RpcReply:
        text = r.text
        ctype = r.headers.get("content-type", "")
        messages: list[dict[str, Any]] = []
        if "text/event-stream" in ctype:
            for event in text.replace("\r\n", "\n").split("\n\n"):
                data = "\n".join(line[5:].lstrip() for line in event.split("\n") if line.startswith("data:"))
                if data.strip():
                    with contextlib.suppress(json.JSONDecodeError):
                        parsed = json.loads(data)
                        messages.extend(parsed if isinstance(parsed, list) else [parsed])
        elif text.strip():
            with contextlib.suppress(json.JSONDecodeError):
                parsed = json.loads(text)
                messages.extend(parsed if isinstance(parsed, list) else [parsed])
        return cls(status=r.status_code, headers=r.headers, text=text, messages=messages)

    def response(self, rid: Any = None) -> dict[str, Any]:
        """The JSON-RPC response (with `id` == rid, if given)."""
        for m in self.messages:
            if ("result" in m or "error" in m) and (rid is None or m.get("id") == rid):
                return m
        raise AssertionError(f"no JSON-RPC response (id={rid!r}) in HTTP {self.status} reply: {self.text[:2000]!r}")

    def error(self, rid: Any = None) -> dict[str, Any]:
        m = self.response(rid)
        assert "error" in m, f"expected a JSON-RPC error, got {m}"
        return m["error"]


# --------------------------------------------------------------------------
# The official Python MCP SDK as the agent's client


@contextlib.asynccontextmanager
async def sdk_client(url: str, token: str, mode: str = "legacy", timeout: float = 60) -> AsyncIterator[Any]:
    """An official `mcp.Client` over Streamable HTTP, presenting `token`."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                              timeout=httpx2.Timeout(timeout, read=timeout))
    async with http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode,
                          read_timeout_seconds=timeout) as client:
            yield client


def text_of(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


def meta_of(result: Any) -> dict[str, Any]:
    return dict(result.meta or {})


def traceparent_ok(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = value.split("-")
    return (len(parts) == 4 and parts[0] == "00" and len(parts[1]) == 32 and len(parts[2]) == 16
            and len(parts[3]) == 2 and all(c in "0123456789abcdef" for c in "".join(parts))
            and parts[1] != "0" * 32 and parts[2] != "0" * 16)
