"""Try Mandate with the official MCP Python SDK (`pip install mcp`).

    MANDATE_TOKEN=<token> python try_mandate.py [http://127.0.0.1:8943/mcp]

Lists the tools the token may see, makes a read the quickstart policies
allow, then asks for a transfer they refuse, and prints what Mandate
answered each time. Nothing here is specific to
Mandate: any MCP client that can send an `Authorization` header works the
same way.
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp import Client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
from mcp.shared.exceptions import MCPError


async def main(url: str, token: str) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        tools = await client.list_tools()
        print("tools:", ", ".join(sorted(t.name for t in tools.tools)))

        found = await client.call_tool("docs.search", {"query": "Q3 report"})
        text = "".join(getattr(c, "text", "") for c in found.content)
        print("docs.search:", text[:160].replace("\n", " "), "…")

        # A payment to a payee outside the quickstart's allow-list: refused
        # whatever the model says. (A payment to an allowed payee would be
        # held until a person decides it: `mandate approvals list`.)
        try:
            await client.call_tool("bank.transfer", {"to": "ACME-666", "amount": 5000, "memo": "as instructed"})
            print("bank.transfer: went through (it should not have)")
        except MCPError as e:
            data = e.data or {}
            print(f"bank.transfer: refused, reason {data.get('reason')!r}: {e.message}")


if __name__ == "__main__":
    token = os.environ.get("MANDATE_TOKEN")
    if not token:
        sys.exit("set MANDATE_TOKEN to a token for this gateway (README: `mandate token mint`)")
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8943/mcp", token))
