"""chiron command tool: reads {"tool", "arguments"} on stdin and returns the arguments."""

import json
import sys


def main():
    request = json.load(sys.stdin)
    json.dump({"tool": request.get("tool"), "arguments": request.get("arguments") or {}}, sys.stdout)


if __name__ == "__main__":
    main()
