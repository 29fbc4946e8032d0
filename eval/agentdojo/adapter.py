#!/usr/bin/env python3
"""An AgentDojo suite's tools as an MCP server, for Mandate's security evaluation.

The gateway starts this as a stdio upstream (see `eval/agentdojo/<suite>/mandate.toml`).
It is the thin, stateless half of the adapter: it speaks MCP (the official
Python SDK's low-level `Server`) and passes every `tools/list` and `tools/call`
to the environment host over a Unix socket. The host (`EnvironmentHost` in
`harness.py`, run by `scripts/security-eval`) owns the suite's environment and
AgentDojo's `FunctionsRuntime`; it starts a fresh environment for every run and
records every call that reaches it, so a call the gateway denied or a person
refused can never appear in what AgentDojo scores.

    python3 adapter.py --host DATA_DIR/dojo.sock

Protocol with the host: one JSON object per line each way on one connection
per request: {"op": "tools"} -> {"tools": [{"name", "description",
"input_schema"}]}; {"op": "call", "name", "arguments", "correlation_id"} ->
{"text", "is_error"}.
Nothing but MCP goes to stdout; diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server


def ask(host: str, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the environment host (blocking; run in a worker thread)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(host)
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(buf)
    if not isinstance(reply, dict):
        raise RuntimeError(f"environment host sent {reply!r}")
    if "error" in reply:
        raise RuntimeError(str(reply["error"]))
    return reply


def build(host: str, suite: str) -> Server[Any]:
    listed = ask(host, {"op": "tools"})["tools"]
    tools = [types.Tool(name=t["name"], description=t["description"], input_schema=t["input_schema"]) for t in listed]
    names = {t.name for t in tools}

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        if params.name not in names:
            return types.CallToolResult(content=[types.TextContent(text=f"unknown tool {params.name}")], is_error=True)
        # The gateway's correlation id travels with the call, so the harness
        # can match what reached the environment to the audit log.
        meta = dict(params.meta or {})
        reply = await anyio.to_thread.run_sync(
            ask, host, {"op": "call", "name": params.name, "arguments": dict(params.arguments or {}),
                        "correlation_id": meta.get("io.mandate/correlation_id")}
        )
        return types.CallToolResult(content=[types.TextContent(text=str(reply["text"]))],
                                    is_error=bool(reply.get("is_error")))

    return Server(f"agentdojo-{suite}", version="1", on_list_tools=list_tools, on_call_tool=call_tool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True, help="the environment host's Unix socket")
    parser.add_argument("--suite", default="agentdojo", help="the suite's name (for the server's name only)")
    args = parser.parse_args()
    server = build(args.host, args.suite)

    async def serve() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    try:
        anyio.run(serve)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
