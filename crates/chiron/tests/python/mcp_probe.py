"""Drives chiron's MCP endpoint with the official MCP Python SDK.

Usage: python mcp_probe.py '<json spec>'
spec: {"url": ..., "headers": {...}, "mode": "legacy" | "2026-07-28",
       "steps": [{"op": "list"} | {"op": "call", "name": ..., "arguments": {...}}
                 | {"op": "exec_and_await_list_changed", "command": {"argv", "cwd", "env"},
                    "timeout": seconds}]}
The last runs a command while the session is open and reports whether the server then
announced a changed tool list (the session stream in legacy mode, subscriptions/listen in
2026-07-28 mode).
Prints one JSON array with a result per step. Errors from the server are reported as
{"error": "<message>"} so the calling test can assert on them.
"""

import asyncio
import json
import os
import subprocess
import sys

import anyio
from mcp import types

from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def execute(command):
    env = dict(os.environ)
    env.update(command.get("env") or {})
    done = await asyncio.to_thread(
        subprocess.run, command["argv"], cwd=command["cwd"], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"command failed: {done.stderr}")
    return done.stdout


async def run(spec):
    results = []
    changed = anyio.Event()

    async def on_message(message):
        notification = getattr(message, "root", message)
        if isinstance(notification, types.ToolListChangedNotification):
            changed.set()

    http = create_mcp_http_client(headers=spec.get("headers") or {})
    async with http:
        transport = streamable_http_client(spec["url"], http_client=http)
        async with Client(transport, mode=spec["mode"], cache=None, message_handler=on_message) as client:
            for step in spec["steps"]:
                try:
                    if step["op"] == "list":
                        listed = await client.list_tools()
                        results.append({"tools": [tool.name for tool in listed.tools]})
                    elif step["op"] == "call":
                        called = await client.call_tool(step["name"], step.get("arguments") or {})
                        results.append(called.model_dump(mode="json", by_alias=True, exclude_none=True))
                    elif step["op"] == "exec_and_await_list_changed":
                        timeout = step.get("timeout", 30)
                        if spec["mode"] == "legacy":
                            output = await execute(step["command"])
                            with anyio.move_on_after(timeout):
                                await changed.wait()
                            results.append({"changed": changed.is_set(), "output": output})
                        else:
                            seen = False
                            async with client.listen(tools_list_changed=True) as subscription:
                                output = await execute(step["command"])
                                with anyio.move_on_after(timeout):
                                    async for _event in subscription:
                                        seen = True
                                        break
                            results.append({"changed": seen, "output": output})
                    else:
                        raise ValueError(f"unknown op {step['op']}")
                except Exception as err:  # reported to the test, which decides
                    results.append({"error": str(err)})
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(run(json.loads(sys.argv[1])))
