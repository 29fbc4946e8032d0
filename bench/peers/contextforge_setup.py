"""Registers the benchmark's upstream with a running ContextForge and exposes
its tool on a virtual server, through ContextForge's own admin API.

    python contextforge_setup.py BASE_URL ADMIN_TOKEN_FILE UPSTREAM_URL TOOL

Prints the virtual server's MCP URL and the tool's name there (ContextForge
prefixes federated tools with the gateway's name). Standard library only.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path


def call(method: str, url: str, token: str, body: object | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def main(base: str, token_file: str, upstream: str, tool: str) -> None:
    token = Path(token_file).read_text().strip()
    call("POST", f"{base}/gateways", token,
         {"name": "demo", "url": upstream, "transport": "STREAMABLEHTTP"})
    tools = call("GET", f"{base}/tools", token)
    found = [t for t in tools if t.get("originalName") == tool]
    if len(found) != 1:
        sys.exit(f"ContextForge lists {len(found)} tools named {tool!r}")
    server = call("POST", f"{base}/servers", token,
                  {"server": {"name": "bench", "associated_tools": [found[0]["id"]]}})
    print(f"{base}/servers/{server['id']}/mcp {found[0]['name']}")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
