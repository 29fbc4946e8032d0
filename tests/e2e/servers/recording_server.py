"""An upstream MCP server, built on the official Python SDK, that records
every call it receives.

Mandate's end-to-end tests put it behind the gateway to prove, from the
upstream's side, what did and did not get through: one JSON line per call
with the tool name, the arguments, the request's `_meta` and (over HTTP) the
`traceparent`, `tracestate`, `baggage` and `authorization` headers it arrived with.

    python recording_server.py --record calls.jsonl --http 127.0.0.1:0 --port-file port.txt
    python recording_server.py --record calls.jsonl            # stdio

Tools:
    lookup{key}        read: returns "value-of-<key>"
    note{text}         write: returns "noted: <text>"
    slow{seconds}      sleeps, then returns (a hanging upstream)
    crash{}            kills the process with os._exit (a crashing upstream)
    huge{kib}          read: returns a text of <kib> KiB (a gigantic result)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer

_lock = threading.Lock()


def build(record_path: str) -> MCPServer:
    server = MCPServer("recording-upstream", version="1.0.0")

    def record(tool: str, arguments: dict[str, Any], ctx: Context) -> None:
        rc = ctx.request_context
        meta: Any = None
        if rc.params is not None and isinstance(rc.params, dict):
            meta = rc.params.get("_meta")
        if meta is None and rc.meta is not None:
            meta = dict(rc.meta)
        headers = ctx.headers
        line = {
            "tool": tool,
            "arguments": arguments,
            "_meta": meta,
            "traceparent_header": headers.get("traceparent") if headers is not None else None,
            "tracestate_header": headers.get("tracestate") if headers is not None else None,
            "baggage_header": headers.get("baggage") if headers is not None else None,
            "authorization_header": headers.get("authorization") if headers is not None else None,
            "pid": os.getpid(),
            "time": time.time(),
        }
        with _lock, open(record_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    @server.tool(description="Look a key up (read-only).")
    async def lookup(key: str, ctx: Context) -> str:
        record("lookup", {"key": key}, ctx)
        return f"value-of-{key}"

    @server.tool(description="Store a note (internal write).")
    async def note(text: str, ctx: Context) -> str:
        record("note", {"text": text}, ctx)
        return f"noted: {text}"

    @server.tool(description="Sleep for the given number of seconds, then answer.")
    async def slow(seconds: float, ctx: Context) -> str:
        record("slow", {"seconds": seconds}, ctx)
        await anyio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool(description="Answer with a text of the given number of KiB.")
    async def huge(kib: int, ctx: Context) -> str:
        record("huge", {"kib": kib}, ctx)
        return "A" * (kib * 1024)

    @server.tool(description="Terminate the server process immediately.")
    async def crash(ctx: Context) -> str:
        record("crash", {}, ctx)
        sys.stdout.flush()
        os._exit(3)

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True, help="append one JSON line per received call")
    parser.add_argument("--http", help="serve Streamable HTTP on HOST:PORT (port 0 = any free port)")
    parser.add_argument("--port-file", help="with --http: write the bound port here once listening")
    args = parser.parse_args()

    server = build(args.record)
    if not args.http:
        server.run("stdio")
        return

    import uvicorn

    host, _, port = args.http.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(128)
    bound = sock.getsockname()[1]

    app = server.streamable_http_app(host=host)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)

    async def serve() -> None:
        async def announce() -> None:
            while not uv.started:
                await anyio.sleep(0.02)
            if args.port_file:
                tmp = args.port_file + ".tmp"
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(str(bound))
                os.replace(tmp, args.port_file)
            print(f"recording server listening on http://{host}:{bound}/mcp", file=sys.stderr, flush=True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(announce)
            await uv.serve(sockets=[sock])
            tg.cancel_scope.cancel()

    anyio.run(serve)


if __name__ == "__main__":
    main()
