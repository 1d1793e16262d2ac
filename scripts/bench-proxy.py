#!/usr/bin/env python3
"""Benchmark of the applications' local proxy (#15, role redis_app_settings, docs/applications.md).

Starts what tests/role/test_proxy.py starts: a primary and a replica (redis-server on loopback, plaintext) with
the role's check user, and Debian's HAProxy on the configuration the role renders (templates/haproxy.cfg.j2,
checks every 1000 ms). Then:

- throughput: `redis-benchmark -t set,get` with --clients connections, unpipelined (-P 1) and pipelined (-P 16),
  straight to the primary and through the proxy's primary port, in an order rotated every round so that the
  noise of a shared machine falls on both alike; reported as the median requests/s of each side and the median
  of the per-round ratios proxy / direct;
- the proxy's switch: --swaps times, the replica is promoted and the primary made its replica (what a failover
  leaves), and a client writes through the proxy's primary port every 20 ms; reported is the time from the swap
  to the first write acknowledged by the new primary (median and maximum), which is the proxy's share of a
  failover's outage (Sentinel's own share, down-after plus its election, comes before it).

Every redis-benchmark run has a timeout; the servers, HAProxy and the temp dir are removed on exit.

    .venv/bin/python scripts/bench-proxy.py [--rounds 5] [--requests 50000] [--clients 50] [--swaps 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.role.test_proxy import APP_PASSWORD, Group, Proxy, up, wait_for  # noqa: E402


def benchmark(port: int, pipeline: int, requests: int, clients: int) -> dict[str, float]:
    """redis-benchmark's requests/s per test (SET, GET), through `port`."""
    result = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-a", APP_PASSWORD, "-t", "set,get", "-r", "100000", "-P",
         str(pipeline), "-n", str(requests * (10 if pipeline > 1 else 1)), "-c", str(clients), "--csv"],
        capture_output=True, text=True, timeout=300, check=True)
    rates = {}
    for line in result.stdout.splitlines():
        match = re.match(r'"(SET|GET)","([0-9.]+)"', line)
        if match:
            rates[match.group(1)] = float(match.group(2))
    return rates


def swap_time(group: Group, proxy: Proxy, primary: str, replica: str) -> float:
    """Seconds from the swap to the first write through the proxy that the new primary acknowledged."""
    import redis

    client = proxy.client(socket_timeout=0.5, socket_connect_timeout=0.5)
    started = time.monotonic()
    group.swap(replica, primary)
    while time.monotonic() - started < 30:
        try:
            if client.execute_command("ROLE")[0] == "master" and up(proxy, "-primary") == {replica} \
                    and client.set("bench:proxy:switch", "x"):
                return time.monotonic() - started
        except (redis.RedisError, OSError):
            client = proxy.client(socket_timeout=0.5, socket_connect_timeout=0.5)
        time.sleep(0.02)
    raise RuntimeError("the proxy did not switch within 30 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--swaps", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for tool in ("redis-server", "redis-benchmark", "haproxy"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(f"bench-proxy: {tool} is not installed (scripts/bootstrap-host.sh)", file=sys.stderr)
            return 1
    base = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    group = proxy = None
    try:
        group = Group(base).start()
        proxy = Proxy(base / "haproxy", group)
        wait_for(lambda: up(proxy, "-primary") == {"node-a"} and up(proxy, "-replicas") == {"node-b"}, "first checks")
        sides = {"direct": group.ports["node-a"], "proxy": proxy.port}
        figures = {(side, pipeline, test): [] for side in sides for pipeline in (1, 16) for test in ("SET", "GET")}
        ratios = {(pipeline, test): [] for pipeline in (1, 16) for test in ("SET", "GET")}
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for pipeline in (1, 16):
                measured = {side: benchmark(sides[side], pipeline, args.requests, args.clients) for side in order}
                for test in ("SET", "GET"):
                    for side in sides:
                        figures[(side, pipeline, test)].append(measured[side][test])
                    ratios[(pipeline, test)].append(measured["proxy"][test] / measured["direct"][test])
        switches = []
        names = ["node-a", "node-b"]
        for _ in range(args.swaps):
            switches.append(swap_time(group, proxy, names[0], names[1]))
            names.reverse()
            wait_for(lambda names=names: up(proxy, "-replicas") == {names[1]}, "the old primary as a replica", 15)
        report = {
            "rounds": args.rounds, "clients": args.clients, "requests": args.requests,
            "throughput": {f"{side} P{pipeline} {test}": round(statistics.median(values))
                           for (side, pipeline, test), values in figures.items()},
            "ratio_proxy_over_direct": {f"P{pipeline} {test}": round(statistics.median(values), 3)
                                        for (pipeline, test), values in ratios.items()},
            "switch_seconds": {"median": round(statistics.median(switches), 2), "max": round(max(switches), 2),
                               "trials": [round(value, 2) for value in switches]},
        }
    finally:
        if proxy:
            proxy.stop()
        if group:
            group.stop()
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
