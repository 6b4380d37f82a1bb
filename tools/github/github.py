"""chiron command tool for GitHub's REST API (Python standard library only).

Reads {"tool", "arguments"} on stdin and prints one JSON object. Requests go to
https://api.github.com through the proxy in HTTPS_PROXY (set by chiron per process); the
proxy adds the caller's token, so this program never holds one.
"""

import json
import sys
import urllib.error
import urllib.parse
import urllib.request

API = "https://api.github.com"


def get(path, query=None):
    url = API + path
    if query:
        url += "?" + urllib.parse.urlencode(query)
    request = urllib.request.Request(
        url,
        headers={
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "chiron-github-tool",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=25) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")[:500]
        sys.stderr.write(f"GitHub answered {err.code} for {path}: {detail}\n")
        sys.exit(1)
    except urllib.error.URLError as err:
        sys.stderr.write(f"cannot reach GitHub: {err.reason}\n")
        sys.exit(1)


def quote(part):
    return urllib.parse.quote(str(part), safe="")


def list_repos(args):
    limit = args.get("limit", 30)
    if args.get("owner"):
        repos = get(f"/users/{quote(args['owner'])}/repos", {"per_page": limit, "sort": "updated"})
    else:
        repos = get("/user/repos", {"per_page": limit, "sort": "updated"})
    return {
        "repos": [
            {
                "full_name": r.get("full_name"),
                "description": r.get("description"),
                "private": r.get("private"),
                "url": r.get("html_url"),
                "updated_at": r.get("updated_at"),
            }
            for r in repos
        ]
    }


def issue_summary(issue):
    return {
        "number": issue.get("number"),
        "title": issue.get("title"),
        "state": issue.get("state"),
        "author": (issue.get("user") or {}).get("login"),
        "url": issue.get("html_url"),
        "pull_request": "pull_request" in issue,
    }


def get_issue(args):
    issue = get(f"/repos/{quote(args['owner'])}/{quote(args['repo'])}/issues/{int(args['number'])}")
    summary = issue_summary(issue)
    summary["body"] = issue.get("body") or ""
    summary["comments"] = issue.get("comments", 0)
    return summary


def list_issues(args):
    query = {"state": args.get("state", "open"), "per_page": args.get("limit", 30)}
    issues = get(f"/repos/{quote(args['owner'])}/{quote(args['repo'])}/issues", query)
    return {"issues": [issue_summary(i) for i in issues]}


TOOLS = {"list_repos": list_repos, "get_issue": get_issue, "list_issues": list_issues}


def main():
    request = json.load(sys.stdin)
    tool = TOOLS.get(request.get("tool"))
    if tool is None:
        sys.stderr.write(f"unknown tool {request.get('tool')!r}\n")
        sys.exit(2)
    json.dump(tool(request.get("arguments") or {}), sys.stdout)


if __name__ == "__main__":
    main()
