#!/usr/bin/env python3
"""Fault-to-webhook benchmark for the monitoring stack (Prometheus and Alertmanager of redis_monitoring).

With the settings the inventory deployed (read back from the monitoring host), on containers run by this
machine (the lab, or a Molecule scenario with a monitoring host), each trial:
  1. stops redis-server@<instance> on a Redis host that is not a primary (so that no failover starts),
  2. times the webhook's first RedisDown notification for that host ("fired"),
  3. starts the instance again and times the "resolved" notification,
  4. waits until Prometheus no longer has the alert, so that the next trial is a new group again.
A webhook sink (a small HTTP server on the monitoring host's loopback) records what Alertmanager sends;
the script points the default receiver at it only if the deployed config already names it
(redis_monitoring_webhook_url: http://127.0.0.1:9099/hook, as the lab and the Molecule scenario do).
It also reports the resident memory of Prometheus and Alertmanager.

With --fault replica-link, each trial instead breaks a replica's link to its primary (a wrong masterauth,
then CLIENT KILL TYPE master; the admin password comes from REDIS_ADMIN_PASSWORD, never argv) and times
RedisReplicationBroken; the replica's masterauth is put back to repair it.

With --fault sentinel-down, each trial stops the Sentinel of a Redis host that is not a primary and times
RedisSentinelDown for it; with --fault sentinel-quorum, it stops the Sentinels of every other host, so that
the target's Sentinel can no longer get a failover authorised, and times RedisSentinelQuorumLost on the
target. The Sentinels are started again to repair it (no failover can start meanwhile: the primary stays up).

Every wait is bounded (--timeout), the sink and any stopped instance or broken link are restored on exit.

  scripts/bench-alerts.py --inventory ~/.ansible/tmp/molecule.XXXX.lab/inventory --trials 3
  REDIS_ADMIN_PASSWORD=... scripts/bench-alerts.py --inventory ... --fault replica-link --trials 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

SINK_PORT = 9099
SINK_LOG = "/run/bench-webhook.jsonl"
SINK_UNIT = "bench-webhook-sink"
# The webhook receiver (one JSON line per notification), shared with the Molecule test.
SINK = (Path(__file__).parent / "webhook-sink.py").read_text(encoding="utf-8")


def sh(container: str, command: str, check: bool = True) -> str:
    result = subprocess.run(["docker", "exec", container, "sh", "-c", command], capture_output=True, text=True,
                            timeout=60)
    if check and result.returncode != 0:
        sys.exit(f"bench-alerts: {container}: {command!r} failed: {result.stderr.strip()}")
    return result.stdout


def query(monitor: str, expression: str) -> list:
    script = ("import json, sys, urllib.parse, urllib.request; print(urllib.request.urlopen("
              "'http://127.0.0.1:9090/api/v1/query?query=' + urllib.parse.quote(sys.argv[1]), timeout=5)"
              ".read().decode())")
    return json.loads(sh(monitor, f"python3 -c {shlex.quote(script)} {shlex.quote(expression)}"))["data"]["result"]


def groups(inventory: str) -> dict:
    result = subprocess.run(["ansible-inventory", "-i", inventory, "--list"], capture_output=True, text=True,
                            timeout=120, check=True)
    data = json.loads(result.stdout)
    return {name: value.get("hosts", []) for name, value in data.items() if isinstance(value, dict)}


def wait_for_page(monitor: str, alertname: str, host: str, status: str, since: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in sh(monitor, f"cat {SINK_LOG} 2>/dev/null || true").splitlines():
            note = json.loads(line)
            if note["received"] < since:
                continue
            for alert in note["body"]["alerts"]:
                labels = alert["labels"]
                if (labels["alertname"], labels.get("instance"), alert["status"]) == (alertname, host, status):
                    return note["received"] - since
        time.sleep(0.5)
    sys.exit(f"bench-alerts: {alertname} {status} for {host} did not reach the webhook within {timeout} s")


def settings(monitor: str, target: str) -> dict:
    checker = sh(target, "cat /etc/redis-infra/health.toml")
    config = sh(monitor, "cat /etc/prometheus/prometheus.yml")
    rules = sh(monitor, "cat /etc/prometheus/rules/redis-infra.yml")
    alertmanager = sh(monitor, "cat /etc/prometheus/alertmanager.yml")
    durations = dict(re.findall(r"alert: (\w+)\n\s+expr: .*\n\s+for: (\S+)", rules))
    if f"127.0.0.1:{SINK_PORT}/" not in alertmanager:
        sys.exit(f"bench-alerts: the default receiver does not post to 127.0.0.1:{SINK_PORT}; deploy with "
                 f"redis_monitoring_webhook_url: http://127.0.0.1:{SINK_PORT}/hook")

    def find(pattern: str, text: str) -> str:
        match = re.search(pattern, text)
        return match.group(1) if match else "?"

    return {
        "checker_interval": find(r"(?m)^interval\s*=\s*(\d+)", checker),
        "scrape_interval": find(r"scrape_interval: (\S+)", config),
        "evaluation_interval": find(r"evaluation_interval: (\S+)", config),
        "for": {name: durations.get(name, "?") for name in ("RedisDown", "RedisReplicationBroken", "RedisSentinelDown",
                                                             "RedisSentinelQuorumLost")},
        "group_wait": find(r"group_wait: (\S+)", alertmanager),
        "group_interval": find(r"group_interval: (\S+)", alertmanager),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inventory", required=True, help="the inventory the containers were converged with")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--instance", default="main")
    parser.add_argument("--fault", choices=["redis-down", "replica-link", "sentinel-down", "sentinel-quorum"],
                        default="redis-down",
                        help="stop the instance (RedisDown), break a replica's link (RedisReplicationBroken), stop "
                             "its Sentinel (RedisSentinelDown) or the other hosts' Sentinels (RedisSentinelQuorumLost)")
    parser.add_argument("--timeout", type=float, default=420, help="longest wait for one notification, seconds")
    args = parser.parse_args()

    hosts = groups(args.inventory)
    if not hosts.get("monitoring"):
        sys.exit("bench-alerts: the inventory has no monitoring host")
    monitor = hosts["monitoring"][0]
    redis_hosts = sorted(set(hosts.get("redis", []))
                         | {h for group, members in hosts.items() if group.startswith("redis_") for h in members})
    primaries = {s["metric"]["instance"] for s in query(monitor, 'redis_instance_info{role="master"}')}
    candidates = [h for h in redis_hosts if h not in primaries] or redis_hosts
    if len(redis_hosts) > 1 and candidates == redis_hosts:
        sys.exit("bench-alerts: every Redis host is a primary; stopping one would start a failover")
    target = candidates[-1]
    found = settings(monitor, target)
    admin_password = os.environ.get("REDIS_ADMIN_PASSWORD", "")

    def admin(*command: str, last: str | None = None) -> str:
        """The admin user's CLI on the target's unix socket; the password goes through the environment, and a
        secret last argument through stdin (redis-cli -x), never argv."""
        argv = ["docker", "exec", "-i", "-e", "REDISCLI_AUTH", target, "redis-cli", "--no-auth-warning", "--user",
                "admin", "-s", f"/run/redis-{args.instance}/redis-server.sock", *(["-x"] if last is not None else []),
                *command]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, input=last or "",
                                env={**os.environ, "REDISCLI_AUTH": admin_password})
        if result.returncode != 0 or result.stdout.startswith(("ERR", "NOPERM", "WRONGPASS")):
            sys.exit(f"bench-alerts: {' '.join(command[:2])} on {target} failed: {result.stdout or result.stderr}")
        return result.stdout

    unit = f"redis-server@{args.instance}.service"
    if args.fault == "redis-down":
        alertname = "RedisDown"

        def break_it() -> None:
            sh(target, f"systemctl stop {unit}")

        def repair() -> None:
            sh(target, f"systemctl start {unit}", check=False)
    elif args.fault.startswith("sentinel-"):
        sentinels = hosts.get("redis_sentinel", [])
        if target not in sentinels:
            sys.exit(f"bench-alerts: --fault {args.fault} needs a Sentinel on {target} (group redis_sentinel)")
        stopped = [target] if args.fault == "sentinel-down" else [h for h in sentinels if h != target]
        alertname = "RedisSentinelDown" if args.fault == "sentinel-down" else "RedisSentinelQuorumLost"

        def break_it() -> None:
            for host in stopped:
                sh(host, "systemctl stop redis-sentinel.service")

        def repair() -> None:
            for host in stopped:
                sh(host, "systemctl start redis-sentinel.service", check=False)
    else:
        # The replica's link to its primary: a wrong masterauth, and the link cut so that it must
        # authenticate again; the password it had is put back (and a converge would put it back too).
        if not admin_password:
            sys.exit("bench-alerts: --fault replica-link needs REDIS_ADMIN_PASSWORD (the lab's admin password)")
        if target in primaries:
            sys.exit("bench-alerts: --fault replica-link needs a replica")
        alertname = "RedisReplicationBroken"
        masterauth = admin("CONFIG", "GET", "masterauth").splitlines()[-1]

        def break_it() -> None:
            admin("CONFIG", "SET", "masterauth", "bench-alerts-wrong-password")
            admin("CLIENT", "KILL", "TYPE", "master")

        def repair() -> None:
            admin("CONFIG", "SET", "masterauth", last=masterauth)

    sh(monitor, f"systemctl stop {SINK_UNIT} 2>/dev/null; rm -f {SINK_LOG}", check=False)
    sh(monitor, f"systemd-run --unit={SINK_UNIT} --collect python3 -c {shlex.quote(SINK)} {SINK_PORT} {SINK_LOG}")
    fired, resolved = [], []
    try:
        for trial in range(args.trials):
            fault = time.time()
            break_it()
            try:
                fired.append(wait_for_page(monitor, alertname, target, "firing", fault, args.timeout))
            finally:
                repaired = time.time()
                repair()
            resolved.append(wait_for_page(monitor, alertname, target, "resolved", repaired, args.timeout))
            print(f"trial {trial + 1}: {alertname} fired {fired[-1]:.1f} s, resolved {resolved[-1]:.1f} s", flush=True)
            deadline = time.monotonic() + args.timeout
            pending = f'ALERTS{{alertname="{alertname}", instance="{target}"}}'
            while query(monitor, pending) and time.monotonic() < deadline:
                time.sleep(2)
    finally:
        repair()
        sh(monitor, f"systemctl stop {SINK_UNIT}", check=False)

    memory = {}
    for process in ("prometheus", "prometheus-alertmanager"):
        rss = sh(monitor, f"ps -o rss= -C {process} || true").split()
        memory[process] = round(int(rss[0]) / 1024, 1) if rss else None
    report = {
        "fault": args.fault,
        "alert": alertname,
        "host": target,
        "settings": found,
        "fired_s": [round(x, 1) for x in fired],
        "resolved_s": [round(x, 1) for x in resolved],
        "fired_median_s": round(statistics.median(fired), 1),
        "fired_max_s": round(max(fired), 1),
        "resolved_median_s": round(statistics.median(resolved), 1),
        "rss_mib": memory,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
