"""chiron command tool for Slack's Web API (Python standard library only).

Reads {"tool", "arguments"} on stdin and prints one JSON object. Requests go to
https://slack.com/api through the proxy in HTTPS_PROXY (set by chiron per process); the
proxy adds the caller's token, so this program never holds one.
"""

import json
import sys
import urllib.error
import urllib.parse
import urllib.request

API = "https://slack.com/api/"


def call(method, params=None, body=None):
    url = API + method
    if params:
        url += "?" + urllib.parse.urlencode(params)
    data = None
    headers = {"User-Agent": "chiron-slack-tool"}
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json; charset=utf-8"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=25) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as err:
        sys.stderr.write(f"Slack answered {err.code} for {method}\n")
        sys.exit(1)
    except urllib.error.URLError as err:
        sys.stderr.write(f"cannot reach Slack: {err.reason}\n")
        sys.exit(1)
    if not answer.get("ok"):
        sys.stderr.write(f"Slack refused {method}: {answer.get('error', 'unknown error')}\n")
        sys.exit(1)
    return answer


def list_channels(args):
    answer = call(
        "conversations.list",
        {"limit": args.get("limit", 100), "exclude_archived": "true", "types": "public_channel"},
    )
    return {
        "channels": [
            {
                "id": c.get("id"),
                "name": c.get("name"),
                "topic": (c.get("topic") or {}).get("value", ""),
                "members": c.get("num_members"),
            }
            for c in answer.get("channels", [])
        ]
    }


def post_message(args):
    answer = call("chat.postMessage", body={"channel": args["channel"], "text": args["text"]})
    return {"channel": answer.get("channel"), "ts": answer.get("ts")}


TOOLS = {"list_channels": list_channels, "post_message": post_message}


def main():
    request = json.load(sys.stdin)
    tool = TOOLS.get(request.get("tool"))
    if tool is None:
        sys.stderr.write(f"unknown tool {request.get('tool')!r}\n")
        sys.exit(2)
    json.dump(tool(request.get("arguments") or {}), sys.stdout)


if __name__ == "__main__":
    main()
