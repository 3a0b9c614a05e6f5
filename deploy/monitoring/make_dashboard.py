#!/usr/bin/env python3
"""Writes dashboard.json (Grafana) next to this file: python3 make_dashboard.py.

Kept as code so the panels stay uniform; check_metrics.py checks that the
committed dashboard.json is what this makes."""

import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
L = 'link="$link"'

panels = []
y = 0


def row(title):
    global y
    panels.append({"type": "row", "title": title, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    y += 1


def panel(kind, title, targets, w, h=7, x=0, description="", **extra):
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "targets": [
            {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
            for i, (expr, legend) in enumerate(targets)
        ],
    }
    p.update(extra)
    panels.append(p)
    return p


def mappings(values):
    return [{"type": "value", "options": {str(k): {"text": t, "color": c, "index": i}
                                          for i, (k, (t, c)) in enumerate(values.items())}}]


def thresholds(steps):
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


ROUTE = {0: ("blocked", "red"), 1: ("hot", "orange"), 2: ("warm", "blue")}

row("Link state")
panel("state-timeline", "Route per member (what each LB was last confirmed to route to)", [
    (f'max by (member) (lockstep_lb_routes{{{L},setup="hot"}}) + 2 * max by (member) (lockstep_lb_routes{{{L},setup="warm"}})',
     "{{member}}"),
], w=12, h=8, description="0 blocked, 1 hot, 2 warm. Two colours other than red at one instant is a split (alert LockstepRoutesDiffer), up to one scrape interval after a switch.",
    fieldConfig={"defaults": {"mappings": mappings(ROUTE), "color": {"mode": "thresholds"},
                              "thresholds": thresholds([(None, "red")])}, "overrides": []})
panel("stat", "Setups routed to", [
    (f'count(count by (setup) (lockstep_lb_routes{{{L},setup=~"hot|warm"}} == 1)) or vector(0)', "setups"),
], w=3, h=4, x=12, description="1 normally, 0 while every LB is blocked (mid-switch), 2 is a split.",
    fieldConfig={"defaults": {"thresholds": thresholds([(None, "orange"), (1, "green"), (2, "red")]),
                              "color": {"mode": "thresholds"}}, "overrides": []})
panel("stat", "Leader", [
    (f'max by (member) (lockstep_is_leader{{{L}}}) == 1', "{{member}}"),
], w=3, h=4, x=15, description="The member that leads the link; empty when there is none (alert LockstepNoLeader).",
    options={"textMode": "name", "colorMode": "none", "reduceOptions": {"calcs": ["lastNotNull"]}})
panel("stat", "Epoch", [(f'max(lockstep_applied_epoch{{{L}}})', "epoch")], w=3, h=4, x=18,
      description="Highest epoch a member applied; it grows by one or more per switch.")
panel("stat", "Paused", [(f'max(lockstep_paused{{{L}}})', "paused")], w=3, h=4, x=21,
      description="Paused: nothing moves, automatic failover included, until `lockstep resume`.",
      fieldConfig={"defaults": {"mappings": mappings({0: ("running", "green"), 1: ("paused", "orange")})},
                   "overrides": []})
y += 4
panel("stat", "Fenced members", [(f'sum(lockstep_fenced{{{L}}})', "fenced")], w=6, h=4, x=12,
      description="Members whose lease is not fresh; each blocked its LB (alert LockstepMemberFenced).",
      fieldConfig={"defaults": {"thresholds": thresholds([(None, "green"), (1, "red")]),
                                "color": {"mode": "thresholds"}}, "overrides": []})
panel("stat", "No healthy setup", [(f'max(lockstep_no_healthy_setup{{{L}}})', "none healthy")], w=6, h=4, x=18,
      description="1 while the leader sees both setups unhealthy (alert LockstepNoHealthySetup).",
      fieldConfig={"defaults": {"mappings": mappings({0: ("one or both healthy", "green"), 1: ("none healthy", "red")})},
                   "overrides": []})
y += 4

row("Switches")
panel("timeseries", "Switches", [
    (f'sum(increase(lockstep_switches_total{{{L}}}[$__rate_interval]))', "completed"),
    (f'sum(increase(lockstep_switch_failures_total{{{L}}}[$__rate_interval]))', "failed"),
], w=8, description="Completed and failed switches of the link (counted by the leader of the time).")
panel("timeseries", "Switch duration and outage", [
    (f'histogram_quantile(0.5, sum by (le) (rate(lockstep_switch_seconds_bucket{{{L}}}[$__rate_interval])))', "switch p50"),
    (f'histogram_quantile(0.99, sum by (le) (rate(lockstep_switch_seconds_bucket{{{L}}}[$__rate_interval])))', "switch p99"),
    (f'histogram_quantile(0.5, sum by (le) (rate(lockstep_drain_seconds_bucket{{{L}}}[$__rate_interval])))', "outage (drain) p50"),
    (f'histogram_quantile(0.99, sum by (le) (rate(lockstep_drain_seconds_bucket{{{L}}}[$__rate_interval])))', "outage (drain) p99"),
], w=8, x=8, description="Switch: request to every LB serving. Outage: drain write to serve write, when no LB routes.",
    fieldConfig={"defaults": {"unit": "s"}, "overrides": []})
panel("timeseries", "Switch steps (p99)", [
    (f'histogram_quantile(0.99, sum by (le, step) (rate(lockstep_switch_step_seconds_bucket{{{L}}}[$__rate_interval])))', "{{step}}"),
], w=8, x=16, description="Where a switch spends its time, per step.",
    fieldConfig={"defaults": {"unit": "s"}, "overrides": []})
y += 7

row("Health per setup")
panel("state-timeline", "KME health as each member probes it", [
    (f'lockstep_setup_healthy{{{L}}}', "{{member}} {{setup}}"),
], w=12, h=8, description="Each member probes its own end's hot and warm KME (ETSI 014 status).",
    fieldConfig={"defaults": {"mappings": mappings({0: ("down", "red"), 1: ("up", "green")})}, "overrides": []})
panel("timeseries", "Keys stored in each KME", [
    (f'lockstep_kme_stored_keys{{{L}}}', "{{member}} {{setup}}"),
], w=6, h=8, x=12, description="stored_key_count from the KME's status (alert LockstepKmeKeysLow below 1000).")
panel("timeseries", "Probe errors/s", [
    (f'sum by (member, setup) (rate(lockstep_probe_errors_total{{{L}}}[$__rate_interval]))', "{{member}} {{setup}}"),
], w=6, h=8, x=18, description="Failed KME probes (no answer, TLS, non-200, bad JSON).")
y += 8

row("Leases and etcd")
panel("timeseries", "Lease age", [
    (f'lockstep_lease_age_seconds{{{L}}}', "{{member}}"),
], w=12, description="Since the send time of each member's last acknowledged keep-alive. At lease_ttl - margin (4 s) the member fences.",
    fieldConfig={"defaults": {"unit": "s", "thresholds": thresholds([(None, "green"), (4, "red")]),
                              "custom": {"thresholdsStyle": {"mode": "line"}}}, "overrides": []})
panel("timeseries", "etcd request errors/s", [
    (f'sum by (member) (rate(lockstep_etcd_request_errors_total{{{L}}}[$__rate_interval]))', "{{member}}"),
], w=6, x=12, description="Failed etcd requests per member.")
panel("table", "Builds", [
    (f'lockstep_build_info{{{L}}}', ""),
], w=6, x=18, description="Version of every member's sidecar.",
    options={"showHeader": True}, transformations=[{"id": "labelsToFields", "options": {}}])
y += 7

row("Notifications")
panel("timeseries", "Notifications/s by outcome", [
    (f'sum(rate(lockstep_notify_delivered_total{{{L}}}[$__rate_interval]))', "delivered"),
    (f'sum(rate(lockstep_notify_failed_total{{{L}}}[$__rate_interval]))', "failed"),
    (f'sum(rate(lockstep_notify_dropped_total{{{L}}}[$__rate_interval]))', "dropped"),
], w=24, description="The leader's webhooks and commands ([notify]): accepted, given up after retries, dropped from a full queue (alert LockstepNotifyFailing).")
y += 7

for i, p in enumerate(panels, start=1):
    p["id"] = i

dashboard = {
    "uid": "lockstep-link",
    "title": "lockstep: link",
    "description": "One QKD link: what every LB routes to, switches, KME health per setup, leases. Metrics: docs/metrics.md; alerts: deploy/monitoring/alerts.yaml.",
    "tags": ["lockstep", "qkd"],
    "timezone": "utc",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "refresh": "10s",
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
        {"name": "link", "label": "Link", "type": "query", "datasource": DS,
         "query": {"query": "label_values(lockstep_is_leader, link)", "refId": "link"},
         "definition": "label_values(lockstep_is_leader, link)", "refresh": 2},
    ]},
    "annotations": {"list": []},
    "panels": panels,
}

if __name__ == "__main__":
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard.json")
    with open(path, "w") as f:
        json.dump(dashboard, f, indent=2)
        f.write("\n")
