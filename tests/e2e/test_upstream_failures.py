"""An upstream that hangs or crashes gets a clear error to the agent, an
audit record saying what happened, and does not take the others down."""

from __future__ import annotations

import json
import sys
import time

import anyio
import pytest
from mcp import MCPError

from e2e_support import (
    FAULTY_SERVER,
    RECORDING_SERVER,
    Issuer,
    Launcher,
    RecordingServer,
    everything_entry,
    meta_of,
    read_jsonl,
    sdk_client,
    text_of,
)

UPSTREAM_FAILED = -32004
TIMEOUT_SECS = 2


@pytest.fixture(scope="module")
def env(launcher: Launcher, issuer: Issuer, rec_http: RecordingServer):
    crashy_rec = launcher.root / "crashy-calls.jsonl"
    garbled_rec = launcher.root / "garbled-calls.jsonl"
    node, script, arg = everything_entry()
    gw = launcher.gateway(issuer, {
        "everything": {"command": node, "args": [script, arg], "timeout_secs": 20, "tools": {"echo": "read"}},
        # The Python SDK recording server over HTTP; `slow` outlives timeout_secs.
        "rec": {"url": rec_http.url, "timeout_secs": TIMEOUT_SECS,
                "tools": {"lookup": "read", "slow": "read"}},
        # The same server over stdio, as a child process that can crash.
        "crashy": {"command": sys.executable, "args": [str(RECORDING_SERVER), "--record", str(crashy_rec)],
                   "timeout_secs": 10, "tools": {"lookup": "read", "crash": "read"}},
        # A hand-written stdio server that can break the framing.
        "garbled": {"command": sys.executable, "args": [str(FAULTY_SERVER), "--record", str(garbled_rec), "--stdio"],
                    "timeout_secs": 10, "tools": {"lookup": "read", "garbage": "read"}},
    })
    tok = issuer.mint(gw.audience, scope="everything.* rec.* crashy.* garbled.*")
    return gw, tok, crashy_rec, garbled_rec


def test_hanging_upstream_times_out_and_others_keep_working(env, rec_http: RecordingServer) -> None:
    gw, tok, _, _ = env
    results: dict[str, object] = {}

    async def hang(c) -> None:
        t0 = time.monotonic()
        try:
            r = await c.call_tool("rec.slow", {"seconds": 60})
            results["slow"] = r
        except MCPError as e:
            results["slow"] = e
        results["slow_secs"] = time.monotonic() - t0

    async def meanwhile(c, other) -> None:
        await anyio.sleep(0.5)  # the slow call is now in flight
        t0 = time.monotonic()
        results["same_session_echo"] = text_of(await c.call_tool("everything.echo", {"message": "same session"}))
        results["other_session_echo"] = text_of(await other.call_tool("everything.echo", {"message": "other"}))
        results["echo_secs"] = time.monotonic() - t0

    async def go() -> None:
        async with sdk_client(gw.mcp_url, tok) as c, sdk_client(gw.mcp_url, tok) as other:
            # Start the stdio upstream first: its spawn time is not what is measured.
            await other.call_tool("everything.echo", {"message": "warm-up"})
            async with anyio.create_task_group() as tg:
                tg.start_soon(hang, c)
                tg.start_soon(meanwhile, c, other)
            # The hung upstream itself still answers its other tools.
            results["after"] = text_of(await c.call_tool("rec.lookup", {"key": "after-timeout"}))

    anyio.run(go)

    err = results["slow"]
    assert isinstance(err, MCPError), f"a 60 s call through a {TIMEOUT_SECS} s timeout returned {err}"
    assert err.code == UPSTREAM_FAILED, (err.code, err.message)
    said = err.message.lower()
    assert any(w in said for w in ("timeout", "timed out", f"within {TIMEOUT_SECS} s")), err.message
    assert (err.data or {}).get("outcome") == "timeout" or "time" in said, err
    assert results["slow_secs"] < TIMEOUT_SECS + 8, f"error came after {results['slow_secs']:.1f}s"
    assert results["same_session_echo"] == "Echo: same session"
    assert results["other_session_echo"] == "Echo: other"
    assert results["echo_secs"] < TIMEOUT_SECS, f"other upstream blocked for {results['echo_secs']:.1f}s"
    assert results["after"] == "value-of-after-timeout"

    assert any(c["tool"] == "slow" for c in rec_http.calls()), "the slow call never reached the upstream"
    rows = gw.wait_audit("tool = 'rec.slow' AND kind = 'outcome'")
    assert rows and rows[-1]["outcome"] == "timeout", rows


def test_crashed_stdio_upstream_errors_cleanly_and_reconnects(env) -> None:
    gw, tok, crashy_rec, _ = env

    async def go():
        async with sdk_client(gw.mcp_url, tok) as c:
            first = await c.call_tool("crashy.lookup", {"key": "before"})
            try:
                crashed: object = await c.call_tool("crashy.crash", {})
            except MCPError as e:
                crashed = e
            echo = await c.call_tool("everything.echo", {"message": "still here"})
            again = await c.call_tool("crashy.lookup", {"key": "after"})
            return first, crashed, echo, again

    first, crashed, echo, again = anyio.run(go)
    assert text_of(first) == "value-of-before", first
    assert isinstance(crashed, MCPError), f"crash call returned {crashed}"
    assert crashed.code == UPSTREAM_FAILED, (crashed.code, crashed.message)
    assert "crashy" in crashed.message or "upstream" in crashed.message.lower(), crashed.message
    assert text_of(echo) == "Echo: still here", echo
    assert not again.is_error and text_of(again) == "value-of-after", again
    assert meta_of(again).get("io.mandate/correlation_id")

    calls = read_jsonl(crashy_rec)
    assert [c["tool"] for c in calls] == ["lookup", "crash", "lookup"], calls
    assert calls[0]["pid"] == calls[1]["pid"] != calls[2]["pid"], "the upstream was not restarted"

    rows = gw.wait_audit("tool = 'crashy.crash' AND kind = 'outcome'")
    assert rows and rows[-1]["outcome"] in ("upstream_error", "upstream_unavailable"), rows
    assert gw.proc.alive()


def test_a_stdio_upstream_writing_garbage_fails_the_call_at_once_and_is_restarted(env) -> None:
    """A stdio server that writes a line that is not JSON-RPC where its
    answer should go (forbidden by MCP's stdio transport) gets the call an
    upstream error at once, not at the call's 10 s timeout; the garbage
    never reaches the agent, and the next call gets a new process."""
    gw, tok, _, garbled_rec = env

    async def go():
        async with sdk_client(gw.mcp_url, tok) as c:
            before = await c.call_tool("garbled.lookup", {"key": "before-garbage"})
            t0 = time.monotonic()
            try:
                garbled: object = await c.call_tool("garbled.garbage", {})
            except MCPError as e:
                garbled = e
            took = time.monotonic() - t0
            after = await c.call_tool("garbled.lookup", {"key": "after-garbage"})
            return before, garbled, took, after

    before, garbled, took, after = anyio.run(go)
    assert text_of(before) == "value-of-before-garbage", before
    assert isinstance(garbled, MCPError), f"the garbled call returned {garbled}"
    assert garbled.code == UPSTREAM_FAILED, (garbled.code, garbled.message)
    assert took < 5, f"the garbage was noticed only after {took:.1f} s (timeout_secs is 10)"
    assert "<html>" not in garbled.message and "Bad Gateway" not in json.dumps(garbled.data or {}), garbled
    assert not after.is_error and text_of(after) == "value-of-after-garbage", after

    calls = read_jsonl(garbled_rec)
    assert [c["tool"] for c in calls] == ["lookup", "garbage", "lookup"], calls
    assert calls[0]["pid"] == calls[1]["pid"] != calls[2]["pid"], "the upstream was not restarted"
    rows = gw.wait_audit("tool = 'garbled.garbage' AND kind = 'outcome'")
    assert rows and rows[-1]["outcome"] in ("upstream_error", "upstream_unavailable"), rows
    assert gw.proc.alive()


def test_unreachable_upstream_tells_the_agent_a_category_not_its_internals(launcher: Launcher, issuer: Issuer) -> None:
    """An HTTP upstream that went away after its catalogue was read: the
    agent gets "upstream unavailable" with the correlation id; the
    transport's error ("Connection refused", "os error 111"), the
    upstream's URL and address are in the gateway's log and the call's
    outcome record, never in what the agent receives (docs/ERRORS.md)."""
    gone = launcher.recording_http_server("gone")
    gw = launcher.gateway(issuer, {
        "gone": {"url": gone.url, "timeout_secs": 5, "tools": {"lookup": "read"}},
    }, name="gone-gateway")
    tok = issuer.mint(gw.audience, scope="gone.*")
    address = gone.url.removeprefix("http://").removesuffix("/mcp")
    port = address.rsplit(":", 1)[-1]

    async def go():
        async with sdk_client(gw.mcp_url, tok) as c:
            listed = await c.list_tools()  # the catalogue is read while the upstream is up
            assert any(t.name == "gone.lookup" for t in listed.tools), listed
            gone.proc.stop()
            try:
                return await c.call_tool("gone.lookup", {"key": "k"})
            except MCPError as e:
                return e

    err = anyio.run(go)
    assert isinstance(err, MCPError), f"a call to a stopped upstream returned {err}"
    assert err.code == UPSTREAM_FAILED, (err.code, err.message)
    assert err.message.startswith("upstream unavailable"), err.message
    correlation = (err.data or {}).get("correlation_id")
    assert correlation and correlation in err.message, (err.message, err.data)
    assert (err.data or {}).get("outcome") == "upstream_unavailable", err.data
    seen = json.dumps({"message": err.message, "data": err.data})
    for internal in ("os error", "Connection refused", "connection refused", "error sending request",
                     "tcp connect", gone.url, address, f":{port}"):
        assert internal not in seen, f"{internal!r} reached the agent: {seen}"

    # The detail is kept where operators look: the call's outcome record.
    rows = gw.wait_audit("tool = 'gone.lookup' AND kind = 'outcome'")
    assert rows and rows[-1]["outcome"] == "upstream_unavailable", rows
    assert rows[-1]["correlation_id"] == correlation, rows
    assert rows[-1]["detail"] and "gone" in rows[-1]["detail"], rows
    assert gw.proc.alive()
