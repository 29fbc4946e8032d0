"""The per-upstream bound on one answer (`max_result_bytes`), over each
transport, against the official Python SDK's server (servers/recording_server.py,
tool `huge`), which answers over stdio with one line and over Streamable HTTP
with an SSE event. The JSON-body case is
`test_upstream_returns_gigantic_result_is_refused_with_memory_bounded`
(test_faults.py).

For each: an answer over the bound is refused at once (not at the call
timeout) with -32004 `result_too_large`, naming no upstream internals; the
outcome record says `result_too_large`; `mandate_upstream_errors_total`
counts it; an answer within the bound and the next call on the same
connection go through.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any

import pytest

from e2e_support import (
    RECORDING_SERVER,
    Gateway,
    Issuer,
    Launcher,
    free_port,
    gateway_toml,
    read_jsonl,
    run_mandate,
)

UPSTREAM_FAILED = -32004
MAX = 1024 * 1024
TIMEOUT_SECS = 30


def upstream(transport: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"up": {**transport, "timeout_secs": TIMEOUT_SECS, "max_result_bytes": MAX,
                   "tools": {"lookup": "read", "huge": "read"}}}


def too_large_metric(gw: Gateway) -> float:
    m = re.search(r'^mandate_upstream_errors_total\{kind="result_too_large"\} (\S+)$', gw.get("/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


def assert_bounded(gw: Gateway, issuer: Issuer, record) -> None:
    tok = issuer.mint(gw.audience, scope="up.*")
    session = gw.initialize(tok)

    # Within the bound: relayed whole (the SDK sends the text twice, as
    # content and as structured content).
    ok = gw.call_tool(tok, session, "up.huge", {"kib": 256}, rid=1).response(1)
    assert "result" in ok, ok
    assert len(ok["result"]["content"][0]["text"]) == 256 * 1024

    # Over it: refused at once, with a category and the bound, nothing else.
    t0 = time.monotonic()
    reply = gw.call_tool(tok, session, "up.huge", {"kib": 8 * 1024}, rid=2)
    took = time.monotonic() - t0
    assert len(reply.text) < 64 * 1024, f"a {len(reply.text)} byte answer reached the agent"
    err = reply.error(2)
    assert err["code"] == UPSTREAM_FAILED, err
    assert err["data"]["outcome"] == "result_too_large", err
    assert f"exceeded {MAX} bytes" in err["message"], err
    for internal in ("127.0.0.1", "http://", "python", "recording", "AAAA"):
        assert internal not in reply.text, f"{internal!r} reached the agent: {reply.text[:500]}"
    assert took < TIMEOUT_SECS / 3, f"refused after {took:.1f} s (timeout {TIMEOUT_SECS} s): not prompt"

    rows = gw.wait_audit("kind = 'outcome' AND correlation_id = ?", [err["data"]["correlation_id"]])
    assert [r["outcome"] for r in rows] == ["result_too_large"], rows
    assert too_large_metric(gw) == 1.0

    # The connection goes on serving.
    after = gw.call_tool(tok, session, "up.lookup", {"key": "after"}, rid=3).response(3)
    assert after["result"]["content"][0]["text"] == "value-of-after", after
    assert [c["tool"] for c in read_jsonl(record)] == ["huge", "huge", "lookup"]


def test_oversized_result_over_stdio_is_refused_at_once_and_the_connection_recovers(
    fresh_launcher: Launcher, issuer: Issuer
) -> None:
    record = fresh_launcher.root / "stdio-calls.jsonl"
    gw = fresh_launcher.gateway(issuer, upstream(
        {"command": sys.executable, "args": [str(RECORDING_SERVER), "--record", str(record)]}))
    assert_bounded(gw, issuer, record)
    # One server process throughout: the oversized line was dropped, not
    # the process.
    assert len({c["pid"] for c in read_jsonl(record)}) == 1


def test_oversized_result_over_http_sse_is_refused_at_once_and_the_connection_recovers(
    fresh_launcher: Launcher, issuer: Issuer
) -> None:
    rec = fresh_launcher.recording_http_server()
    gw = fresh_launcher.gateway(issuer, upstream({"url": rec.url}))
    assert_bounded(gw, issuer, rec.record)


@pytest.mark.parametrize("value", [0, 1023, 256 * 1024 * 1024 + 1])
def test_max_result_bytes_out_of_range_is_a_config_error(fresh_launcher: Launcher, issuer: Issuer,
                                                         value: int) -> None:
    config = fresh_launcher.root / f"bad-{value}.toml"
    config.write_text(gateway_toml(port=free_port(), data_dir=fresh_launcher.root / "data", jwks=issuer.jwks_path,
                                   issuer=issuer.issuer, upstreams={"up": {
                                       "url": "http://127.0.0.1:1/mcp", "max_result_bytes": value,
                                       "tools": {"lookup": "read"}}}))
    r = run_mandate("serve", "--config", str(config), "--check", timeout=90)
    assert r.returncode != 0
    assert "max_result_bytes must be between 1024 and" in r.stdout + r.stderr, r.stdout + r.stderr
