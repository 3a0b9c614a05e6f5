#!/usr/bin/env python3
"""Keeps deploy/monitoring consistent with the docs:

* every metric an alert rule or the dashboard queries is listed in
  docs/metrics.md;
* dashboard.json is what make_dashboard.py writes;
* every alert has a unit test in alerts_test.yaml, a section in
  docs/runbook.md, and a `runbook` annotation pointing at that section.
"""

import json
import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import make_dashboard  # noqa: E402


def read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def main():
    problems = []
    rules = yaml.safe_load(read("deploy", "monitoring", "alerts.yaml"))
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    dashboard = json.loads(read("deploy", "monitoring", "dashboard.json"))

    exprs = [r["expr"] for r in alerts]
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    metrics_doc = read("docs", "metrics.md")
    listed = set(re.findall(r"^\| `(lockstep_[a-z_]+)`", metrics_doc, re.M))
    if len(listed) < 10:
        problems.append(f"docs/metrics.md lists only {len(listed)} metrics in its tables")
    used = set()
    for e in exprs:
        for name in re.findall(r"\blockstep_[a-z_]+", e):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            used.add(base if base in listed else name)
    for name in sorted(used - listed):
        problems.append(f"{name} is queried but not listed in docs/metrics.md")

    if dashboard != json.loads(json.dumps(make_dashboard.dashboard)):
        problems.append("deploy/monitoring/dashboard.json differs from make_dashboard.py's; run it")
    ids = [p["id"] for p in dashboard["panels"]]
    if len(ids) != len(set(ids)):
        problems.append("dashboard panel ids repeat")

    tests = yaml.safe_load(read("deploy", "monitoring", "alerts_test.yaml"))
    tested = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    runbook = read("docs", "runbook.md")
    sections = set(re.findall(r"^## (Lockstep\w+)\s*$", runbook, re.M))
    for a in alerts:
        name = a["alert"]
        if name not in tested:
            problems.append(f"alert {name} has no unit test in which it fires")
        if name not in sections:
            problems.append(f"alert {name} has no section `## {name}` in docs/runbook.md")
        want = f"docs/runbook.md#{name.lower()}"
        if a.get("annotations", {}).get("runbook") != want:
            problems.append(f"alert {name}'s runbook annotation is not {want}")
    for s in sorted(sections - {a["alert"] for a in alerts}):
        problems.append(f"docs/runbook.md has a section for {s}, which is no alert")

    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"monitoring: {len(alerts)} alerts, each tested and in the runbook; "
          f"{len(used)} metrics queried, all in docs/metrics.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
