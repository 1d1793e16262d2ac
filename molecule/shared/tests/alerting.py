"""Prometheus, Alertmanager and a webhook receiver on a scenario's monitoring host: what the tests that prove
an alert end to end share (test_monitoring.py for a standalone host, test_cluster.py for a cluster).

The receiver (scripts/webhook-sink.py, shared with scripts/bench-alerts.py) runs on the monitoring host under
systemd-run and writes one JSON line per notification Alertmanager posts to it; the scenario's
redis_monitoring_webhook_url points there."""

from __future__ import annotations

import json
import os
import shlex
import time
import urllib.parse

import pytest

PROJECT = os.path.join(os.path.dirname(__file__), "..", "..", "..")
SINK_PORT = 9099
SINK_LOG = "/run/molecule-webhook.jsonl"
# Longest a fault may take to reach the webhook with the scenarios' delays (measured: well under 30 s).
PAGE_WITHIN = 60

with open(os.path.join(PROJECT, "scripts", "webhook-sink.py"), encoding="utf-8") as _sink:
    SINK = _sink.read()


def start_sink(host):
    host.run(f"rm -f {SINK_LOG}")
    host.run_test(f"systemd-run --unit=molecule-webhook-sink --collect python3 -c {shlex.quote(SINK)} "
                  f"{SINK_PORT} {SINK_LOG}")


def stop_sink(host):
    host.run("systemctl stop molecule-webhook-sink.service")


def api(host, url):
    """JSON of a GET on Prometheus' or Alertmanager's API, from inside the monitoring host."""
    script = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
    return json.loads(host.check_output(f"python3 -c {shlex.quote(script)}"))


def prometheus(host, path):
    return api(host, f"http://127.0.0.1:9090/api/v1/{path}")["data"]


def notifications(host):
    result = host.run(f"cat {SINK_LOG}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def wait_for_page(host, alertname, status, since, instance, redis_instance=None, seconds=PAGE_WITHIN):
    """Seconds from `since` until the webhook got `alertname` in `status` for the host `instance` (and, when
    given, its Redis instance `redis_instance`)."""
    wanted = (alertname, instance, status) + ((redis_instance,) if redis_instance is not None else ())
    deadline = time.monotonic() + seconds
    while True:
        for note in notifications(host):
            if note["received"] < since:
                continue
            for alert in note["body"]["alerts"]:
                labels = alert["labels"]
                seen = (labels["alertname"], labels.get("instance"), alert["status"])
                if redis_instance is not None:
                    seen += (labels.get("redis_instance"),)
                if seen == wanted:
                    return note["received"] - since
        if time.monotonic() > deadline:
            seen = [(a["labels"]["alertname"], a["labels"].get("instance"), a["labels"].get("redis_instance"),
                     a["status"]) for n in notifications(host) for a in n["body"]["alerts"]]
            pytest.fail(f"{alertname} {status} for {instance} {redis_instance or ''} did not reach the webhook "
                        f"within {seconds} s; it got {seen}")
        time.sleep(0.5)


def page_and_resolve(sink, alertname, instance, break_it, repair, seconds=PAGE_WITHIN):
    """Break something, wait for the webhook to get `alertname` firing for the host `instance` (None for the
    group-wide alerts, which carry replication_group instead), repair it (whatever happened), and wait for the
    resolution; (fired, resolved) in seconds from the fault and from the repair."""
    fault = time.time()
    try:
        break_it()
        fired = wait_for_page(sink, alertname, "firing", fault, instance, seconds=seconds)
    finally:
        repaired = time.time()
        repair()
    resolved = wait_for_page(sink, alertname, "resolved", repaired, instance, seconds=seconds)
    print(f"{alertname}: fired {fired:.1f} s after the fault, resolved {resolved:.1f} s after the repair")
    return fired, resolved


def wait_for_targets_up(host, job="redis-infra-health", count=1, seconds=60):
    """The `up` samples of the health checkers' job once `count` of them say 1 (or what there is at the deadline)."""
    deadline = time.monotonic() + seconds
    while True:
        result = prometheus(host, "query?query=" + f'up{{job="{job}"}}')["result"]
        if sum(sample["value"][1] == "1" for sample in result) >= count or time.monotonic() > deadline:
            return result
        time.sleep(1)


def dashboard():
    with open(os.path.join(PROJECT, "files", "grafana", "redis-infra-health.json"), encoding="utf-8") as handle:
        return json.load(handle)


def dashboard_queries(variables):
    """(title, query) of every panel target and query variable of the project's Grafana dashboard, with Grafana's
    variables ($instance, $redis_instance, $__rate_interval) replaced by `variables`' values."""
    board = dashboard()

    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    queries = [(panel["title"], target["expr"]) for panel in panels(board["panels"])
               for target in panel.get("targets", []) if target.get("expr")]
    queries += [("variable " + v["name"], v["query"]["query"].removeprefix("label_values(").rsplit(",", 1)[0])
                for v in board["templating"]["list"] if v["type"] == "query"]
    for name, value in variables.items():
        queries = [(title, expr.replace(name, value)) for title, expr in queries]
    return queries


def query(host, expr):
    """The samples Prometheus returns for `expr` now."""
    return prometheus(host, "query?query=" + urllib.parse.quote(expr))["result"]
