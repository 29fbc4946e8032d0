"""Server-to-client traffic an upstream starts while the gateway serves a call:
progress notifications and `notifications/tools/list_changed`, relayed by
`mandate serve` to the official Python SDK client over Streamable HTTP.

Threats closed:

* progress lost on the way: a client that asked for progress
  (`_meta.progressToken`) on a long-running upstream call hears nothing, or
  hears it under a token it never sent (the gateway's own);
* progress crossing clients: two clients calling the same shared upstream at
  once must each hear only their own call's progress, under their own token;
* a stale catalogue: an upstream that adds a tool and says
  `notifications/tools/list_changed` must have that change reach the
  connected clients, and the gateway's cached catalogue must be refreshed so
  the new tool is listed and callable.
"""

from __future__ import annotations

import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError

from e2e_support import Gateway, Issuer, Launcher, everything_entry, text_of

LONG_TOOL = "trigger-long-running-operation"

# A tiny upstream on the official Python SDK (stdio). `enable_extra` registers
# a new tool `extra` and tells its client the tool list changed. It declares
# `tools.listChanged`, as a server that sends the notification should.
LIST_CHANGING_SERVER = '''
import anyio
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.stdio import stdio_server

server = MCPServer("list-changer", version="1.0.0")


async def extra(word: str = "ping") -> str:
    """A tool that exists only after enable_extra."""
    return f"extra says {word}"


@server.tool(description="Register the tool `extra` and announce the new tool list.")
async def enable_extra(ctx: Context) -> str:
    server.add_tool(extra, name="extra")
    await ctx.session.send_tool_list_changed()
    return "extra enabled"


async def main() -> None:
    low = server._lowlevel_server
    async with stdio_server() as (read, write):
        await low.run(read, write, low.create_initialization_options(NotificationOptions(tools_changed=True)))


anyio.run(main)
'''


def run(fn, *args):
    return anyio.run(fn, *args)


@pytest.fixture(scope="module")
def list_changing_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("upstream") / "list_changing_server.py"
    path.write_text(LIST_CHANGING_SERVER)
    return path


@pytest.fixture(scope="module")
def gateway(launcher: Launcher, issuer: Issuer) -> Gateway:
    node, script, arg = everything_entry()
    # Shared (the default isolation): every client's call goes over the one
    # upstream connection, so only the gateway keeps their progress apart.
    return launcher.gateway(issuer, {
        "everything": {"command": node, "args": [script, arg], "timeout_secs": 20, "default_class": "deny",
                       "tools": {LONG_TOOL: "read", "echo": "read"}},
    })


@pytest.fixture
def list_gateway(fresh_launcher: Launcher, issuer: Issuer, list_changing_server: Path) -> Gateway:
    """A gateway whose only upstream is the list-changing server, so every
    `tools/list_changed` a client hears comes from it (server-everything
    announces one of its own when it connects)."""
    # `extra` is classified before it exists, so it is allowed once listed.
    return fresh_launcher.gateway(issuer, {
        "up": {"command": sys.executable, "args": [str(list_changing_server)], "timeout_secs": 20,
               "default_class": "deny", "tools": {"enable_extra": "read", "extra": "read"}},
    })


def token(issuer: Issuer, gw: Gateway, **kw: Any) -> str:
    return issuer.mint(gw.audience, scope="everything.* up.*", **kw)


@dataclass(repr=False)
class Recorder:
    """What one client heard: progress through its `progress_callback`, and
    every server notification through its `message_handler` (raw tokens)."""

    name: str
    clock: list[int]
    progress: list[tuple[float, float | None, int]] = field(default_factory=list)
    notifications: list[Any] = field(default_factory=list)
    first_progress: anyio.Event = field(default_factory=anyio.Event)
    list_changed: anyio.Event = field(default_factory=anyio.Event)

    def __repr__(self) -> str:
        return f"Recorder({self.name})"

    def tick(self) -> int:
        self.clock[0] += 1
        return self.clock[0]

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append((progress, total, self.tick()))
        self.first_progress.set()

    async def on_message(self, message: Any) -> None:
        from mcp.types import ToolListChangedNotification

        if isinstance(message, Exception):
            return
        self.notifications.append(message)
        if isinstance(message, ToolListChangedNotification):
            self.list_changed.set()

    def raw_progress(self) -> list[Any]:
        from mcp.types import ProgressNotification

        return [n.params for n in self.notifications if isinstance(n, ProgressNotification)]

    def methods(self) -> list[str]:
        return [getattr(n, "method", type(n).__name__) for n in self.notifications]


@contextlib.asynccontextmanager
async def http_client(gw: Gateway, tok: str, rec: Recorder) -> AsyncIterator[Client]:
    """The official SDK client over Streamable HTTP, recording every server
    notification it receives."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {tok}"}, timeout=httpx2.Timeout(30, read=30))
    async with http:
        async with Client(streamable_http_client(gw.mcp_url, http_client=http), mode="legacy",
                          read_timeout_seconds=30, message_handler=rec.on_message) as c:
            yield c


def describe(outcome: Any) -> str:
    if isinstance(outcome, MCPError):
        return f"MCPError(code={outcome.code}, message={outcome.message!r}, data={outcome.data!r})"
    return f"CallToolResult(is_error={outcome.is_error}, text={text_of(outcome)!r})"


def assert_own_progress(rec: Recorder, steps: int) -> None:
    """`rec` heard its own call's progress and nothing else: at least two of
    its `steps` notifications, in order (1, 2, ... of `steps`), under one
    token of its own (never the gateway's), and no notification it did not
    ask for.

    Only a trailing notification may be missing: the upstream sends its last
    one immediately before the result, and the gateway may relay the result
    first (rmcp handles notifications in spawned tasks), after which the
    progress has no request left to belong to."""
    seen = [(p, t) for p, t, _ in rec.progress]
    expected = [(float(i), float(steps)) for i in range(1, steps + 1)]
    assert len(seen) >= 2 and seen == expected[: len(seen)], (
        f"{rec.name}'s progress_callback heard {seen}, expected (a prefix of at least 2 of) {expected}; "
        f"raw progress notifications received: {rec.raw_progress()}")
    raw = rec.raw_progress()
    assert [(n.progress, n.total) for n in raw] == seen, (
        f"{rec.name} received progress notifications its call did not ask for: {raw}")
    tokens = {n.progress_token for n in raw}
    assert len(tokens) == 1, f"{rec.name} heard progress under several tokens: {raw}"
    assert not any(str(t).startswith("mandate-") for t in tokens), \
        f"the gateway's own progress token leaked to {rec.name}: {tokens}"


# --------------------------------------------------------------------------
# Progress


def test_upstream_progress_reaches_the_calling_client_with_its_own_token(gateway: Gateway, issuer: Issuer) -> None:
    rec = Recorder("client", [0])

    async def go():
        async with http_client(gateway, token(issuer, gateway), rec) as c:
            started = time.monotonic()
            result = await c.call_tool(f"everything.{LONG_TOOL}", {"duration": 1, "steps": 3},
                                       progress_callback=rec.on_progress)
            return result, time.monotonic() - started

    result, elapsed = run(go)
    assert not result.is_error, describe(result)
    assert text_of(result) == "Long running operation completed. Duration: 1 seconds, Steps: 3.", describe(result)
    assert elapsed >= 0.9, f"the call returned after {elapsed:.2f}s: it did not run upstream as asked"
    assert len(rec.progress) >= 2, (
        f"progress_callback heard {rec.progress}; raw notifications received: {rec.methods()}")
    progress = [p for p, _, _ in rec.progress]
    assert progress == sorted(progress) and len(set(progress)) == len(progress), progress
    assert_own_progress(rec, 3)


def test_progress_of_one_client_never_reaches_another(gateway: Gateway, issuer: Issuer) -> None:
    clock = [0]
    alice = Recorder("alice", clock)
    bob = Recorder("bob", clock)
    # Alice's call runs 1.6 s (4 steps of 0.4 s); Bob's starts after Alice's
    # first progress and runs 0.9 s (3 steps of 0.3 s), so both calls are in
    # flight on the one shared upstream connection at once and their progress
    # interleaves. Different totals tell whose progress a client heard.
    a_steps, b_steps = 4, 3
    a_tok = token(issuer, gateway, sid="sess-a-" + uuid.uuid4().hex[:8])
    b_tok = token(issuer, gateway, sub="bob@example.com", sid="sess-b-" + uuid.uuid4().hex[:8])
    results: dict[str, Any] = {}
    done_at: dict[str, int] = {}

    async def call(name: str, tok: str, rec: Recorder, args: dict[str, Any], ready: anyio.Event,
                   wait_for: anyio.Event | None) -> None:
        async with http_client(gateway, tok, rec) as c:
            ready.set()
            if wait_for is not None:
                # Should Alice hear no progress, Bob starts anyway; the
                # assertions below then say what each heard.
                with anyio.move_on_after(5):
                    await wait_for.wait()
            results[name] = await c.call_tool(f"everything.{LONG_TOOL}", args, progress_callback=rec.on_progress)
            done_at[name] = rec.tick()

    async def go():
        a_ready, b_ready = anyio.Event(), anyio.Event()
        with anyio.fail_after(18):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "bob", b_tok, bob, {"duration": 0.9, "steps": b_steps}, b_ready,
                              alice.first_progress)
                await b_ready.wait()  # Bob is connected before Alice starts
                tg.start_soon(call, "alice", a_tok, alice, {"duration": 1.6, "steps": a_steps}, a_ready, None)

    run(go)

    for name, steps, dur in (("alice", a_steps, "1.6"), ("bob", b_steps, "0.9")):
        r = results[name]
        assert not r.is_error, describe(r)
        assert text_of(r) == f"Long running operation completed. Duration: {dur} seconds, Steps: {steps}.", describe(r)
    assert_own_progress(alice, a_steps)
    assert_own_progress(bob, b_steps)
    # The calls really overlapped: Alice heard progress while Bob's call was
    # running (after Bob's first progress, before Bob's result).
    b_first = bob.progress[0][2]
    assert any(b_first < at < done_at["bob"] for _, _, at in alice.progress), (
        f"the calls did not overlap: alice {alice.progress}, bob {bob.progress}, done {done_at}")


# --------------------------------------------------------------------------
# tools/list_changed


def test_upstream_tool_list_change_reaches_connected_clients(list_gateway: Gateway, issuer: Issuer) -> None:
    gw = list_gateway
    caller = Recorder("caller", [0])
    bystander = Recorder("bystander", [0])  # another user's session, connected but not calling

    async def go():
        async with http_client(gw, token(issuer, gw), caller) as c, \
                http_client(gw, token(issuer, gw, sub="bob@example.com", sid="sess-b-" + uuid.uuid4().hex[:8]),
                            bystander) as other:
            before = sorted(t.name for t in (await c.list_tools()).tools)
            before_other = sorted(t.name for t in (await other.list_tools()).tools)
            early = (caller.list_changed.is_set(), bystander.list_changed.is_set())
            enabled = await c.call_tool("up.enable_extra", {})
            heard = {}
            for rec in (caller, bystander):
                with anyio.move_on_after(8):
                    await rec.list_changed.wait()
                heard[rec.name] = rec.list_changed.is_set()
            after = sorted(t.name for t in (await c.list_tools(cache_mode="bypass")).tools)
            after_other = sorted(t.name for t in (await other.list_tools(cache_mode="bypass")).tools)
            try:
                extra = await c.call_tool("up.extra", {"word": "hello"})
            except MCPError as e:
                extra = e
            # A tool validated before the refresh, called again after it: the
            # gateway's schema cache must replace its stale entry (this once
            # deadlocked a worker thread, hanging calls past every timeout).
            with anyio.fail_after(15):
                again = await c.call_tool("up.enable_extra", {})
            return before, before_other, early, enabled, heard, after, after_other, extra, again

    before, before_other, early, enabled, heard, after, after_other, extra, again = run(go)
    assert not again.is_error and text_of(again) == "extra enabled", describe(again)
    assert "up.enable_extra" in before and "up.extra" not in before, before
    assert "up.extra" not in before_other, before_other
    assert early == (False, False), f"a tools/list_changed arrived before the tool list changed: {early}"
    assert not enabled.is_error and text_of(enabled) == "extra enabled", describe(enabled)
    assert heard["caller"], (
        f"the calling client never received notifications/tools/list_changed; it heard {caller.methods()}")
    assert heard["bystander"], (
        f"another connected client never received notifications/tools/list_changed; "
        f"it heard {bystander.methods()}")
    assert "up.extra" in after, f"the gateway still lists its stale catalogue after list_changed: {after}"
    assert "up.extra" in after_other, after_other
    assert not isinstance(extra, MCPError) and not extra.is_error, describe(extra)
    assert text_of(extra) == "extra says hello", describe(extra)
