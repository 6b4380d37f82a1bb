"""Drives chiron's MCP endpoint with the official MCP Python SDK.

Usage: python mcp_probe.py '<json spec>'
spec: {"url": ..., "headers": {...}, "mode": "legacy" | "2026-07-28",
       "steps": [{"op": "list"} | {"op": "call", "name": ..., "arguments": {...}}]}
Prints one JSON array with a result per step. Errors from the server are reported as
{"error": "<message>"} so the calling test can assert on them.
"""

import asyncio
import json
import sys

from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def run(spec):
    results = []
    http = create_mcp_http_client(headers=spec.get("headers") or {})
    async with http:
        transport = streamable_http_client(spec["url"], http_client=http)
        async with Client(transport, mode=spec["mode"], cache=None) as client:
            for step in spec["steps"]:
                try:
                    if step["op"] == "list":
                        listed = await client.list_tools()
                        results.append({"tools": [tool.name for tool in listed.tools]})
                    elif step["op"] == "call":
                        called = await client.call_tool(step["name"], step.get("arguments") or {})
                        results.append(called.model_dump(mode="json", by_alias=True, exclude_none=True))
                    else:
                        raise ValueError(f"unknown op {step['op']}")
                except Exception as err:  # reported to the test, which decides
                    results.append({"error": str(err)})
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(run(json.loads(sys.argv[1])))
