"""An upstream MCP server over Streamable HTTP (plain JSON responses) that
misbehaves on request, for the fault-injection tests.

The official SDKs cannot be made to answer with garbage or to die half-way
through a response, so this one speaks the protocol by hand, on the standard
library's HTTP server. It records every call it receives, like
recording_server.py (one JSON line: tool, arguments, `_meta`, pid).

    python faulty_server.py --record calls.jsonl --port 0 --port-file port.txt
    python faulty_server.py --record calls.jsonl --stdio     # over stdio (lookup, garbage)

Tools:
    lookup{key}       returns "value-of-<key>"
    note{text}        returns "noted: <text>"
    garbage{}         answers HTTP 200, application/json, with a body that is not JSON-RPC;
                      over stdio, writes a line that is not JSON where its answer should go
                      and never answers
    huge{mib}         answers a valid result whose text is <mib> MiB, streamed
    crash{}           sends half a response, then the process exits (a crash mid-call)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOOLS = [
    {"name": "lookup", "description": "Look a key up (read-only).",
     "inputSchema": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}},
    {"name": "note", "description": "Store a note.",
     "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
    {"name": "garbage", "description": "Answer with something that is not JSON-RPC.",
     "inputSchema": {"type": "object", "properties": {}}},
    {"name": "huge", "description": "Answer with a very large result.",
     "inputSchema": {"type": "object", "properties": {"mib": {"type": "integer"}}, "required": ["mib"]}},
    {"name": "crash", "description": "Die half-way through the response.",
     "inputSchema": {"type": "object", "properties": {}}},
]

_lock = threading.Lock()


def record(path: str, params: dict[str, Any]) -> None:
    """Appends one call to the record (one JSON line, fsynced)."""
    line = {"tool": params.get("name"), "arguments": params.get("arguments") or {}, "_meta": params.get("_meta"),
            "pid": os.getpid(), "time": time.time()}
    with _lock, open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def serve_stdio(record_path: str) -> None:
    """The same server over stdio, by hand: newline-delimited JSON-RPC on
    stdin and stdout. `garbage` breaks the framing that the SDKs keep."""
    out = sys.stdout.buffer

    def send(msg: dict[str, Any]) -> None:
        out.write(json.dumps(msg).encode() + b"\n")
        out.flush()

    for raw in sys.stdin.buffer:
        if not raw.strip():
            continue
        msg = json.loads(raw)
        method, rid = msg.get("method"), msg.get("id")
        if rid is None:
            continue  # a notification
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": rid, "result": {
                "protocolVersion": msg["params"].get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "faulty-upstream", "version": "1.0.0"}}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": rid, "result": {"tools": TOOLS}})
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": rid, "result": {}})
        elif method == "tools/call":
            params = msg.get("params") or {}
            record(record_path, params)
            if params.get("name") == "garbage":
                out.write(b"<html><body>502 Bad Gateway: upstream internals</body></html>\n")
                out.flush()
            else:
                key = (params.get("arguments") or {}).get("key")
                send({"jsonrpc": "2.0", "id": rid,
                      "result": {"content": [{"type": "text", "text": f"value-of-{key}"}]}})
        else:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no such method"}})


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    record_path = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        # No server-initiated stream.
        self.send_response(405)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_DELETE(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        msg = json.loads(self.rfile.read(length) or b"{}")
        method, rid = msg.get("method"), msg.get("id")
        if rid is None:  # a notification
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if method == "initialize":
            self._json(200, {"jsonrpc": "2.0", "id": rid, "result": {
                "protocolVersion": msg["params"].get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "faulty-upstream", "version": "1.0.0"},
            }}, {"Mcp-Session-Id": "faulty-" + os.urandom(4).hex()})
        elif method == "tools/list":
            self._json(200, {"jsonrpc": "2.0", "id": rid, "result": {"tools": TOOLS}})
        elif method == "ping":
            self._json(200, {"jsonrpc": "2.0", "id": rid, "result": {}})
        elif method == "tools/call":
            self._call(rid, msg.get("params") or {})
        else:
            self._json(200, {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no such method"}})

    def _call(self, rid: Any, params: dict[str, Any]) -> None:
        tool, args = params.get("name"), params.get("arguments") or {}
        record(self.record_path, params)
        if tool == "lookup":
            self._json(200, {"jsonrpc": "2.0", "id": rid,
                             "result": {"content": [{"type": "text", "text": f"value-of-{args.get('key')}"}]}})
        elif tool == "note":
            self._json(200, {"jsonrpc": "2.0", "id": rid,
                             "result": {"content": [{"type": "text", "text": f"noted: {args.get('text')}"}]}})
        elif tool == "garbage":
            data = b"<html><body>502 Bad Gateway (this is not JSON-RPC)</body></html>\x00\xff"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif tool == "huge":
            self._huge(rid, int(args.get("mib", 1)))
        elif tool == "crash":
            body = json.dumps({"jsonrpc": "2.0", "id": rid,
                               "result": {"content": [{"type": "text", "text": "x" * 4096}]}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            os._exit(3)
        else:
            self._json(200, {"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": "unknown tool"}})

    def _huge(self, rid: Any, mib: int) -> None:
        head = json.dumps({"jsonrpc": "2.0", "id": rid})[:-1].encode() + b',"result":{"content":[{"type":"text","text":"'
        tail = b'"}]}}'
        chunk = b"A" * (1 << 20)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(head) + mib * len(chunk) + len(tail)))
        self.end_headers()
        try:
            self.wfile.write(head)
            for _ in range(mib):
                self.wfile.write(chunk)
            self.wfile.write(tail)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the reader stopped reading: what a bounded client does


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file")
    parser.add_argument("--stdio", action="store_true", help="serve over stdin/stdout instead of HTTP")
    args = parser.parse_args()
    if args.stdio:
        serve_stdio(args.record)
        return
    Handler.record_path = args.record
    ThreadingHTTPServer.allow_reuse_address = True
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    httpd.daemon_threads = True
    port = httpd.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(str(port))
        os.replace(tmp, args.port_file)
    print(f"faulty upstream on http://127.0.0.1:{port}/mcp", file=sys.stderr, flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
