#!/usr/bin/env python3
"""Benchmark of Redis Cluster failover (issue #12): the time from a primary that stops answering to the
first successful write to its slots, with the shipped cluster-node-timeout.

Starts six cluster-enabled redis-servers on 127.0.0.1 (free ports below 55536, a temp dir, save "",
appendonly no), forms the cluster with the collection's redis_cluster module (three shards, a replica
each; "hosts" are labels here) and runs --trials trials: a writer SETs a key of one primary's slots every
10 ms through its own connection to whichever node serves them; the primary is frozen with SIGSTOP (it
stops answering, as a hung host does); the time until a write is acknowledged again is the failover time;
then the old primary gets SIGCONT, rejoins as a replica, and the cluster is waited for before the next
trial (each trial picks the next primary). Reported per trial: the failover time, the moment the
replica's log says it won the election, and the time as a ratio of cluster-node-timeout (the figure
that does not depend on how loaded the machine is).

Every wait has a bound and the script stops at --budget seconds; the servers and the temp dir are
removed on exit, Ctrl-C and SIGTERM included.

    .venv/bin/python scripts/bench-cluster-failover.py [--trials 10] [--node-timeout 15000] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.redis_infra.redis.plugins.module_utils import cluster  # noqa: E402
from ansible_collections.redis_infra.redis.plugins.module_utils.resp import RedisReplyError, connect  # noqa: E402
from ansible_collections.redis_infra.redis.plugins.modules import redis_cluster  # noqa: E402

SERVER = shutil.which("redis-server") or shutil.which("valkey-server")


def shipped_node_timeout() -> int:
    for line in (ROOT / "roles/redis_server/defaults/main.yml").read_text().splitlines():
        if line.startswith("redis_server_cluster_node_timeout:"):
            return int(line.split(":", 1)[1])
    raise SystemExit("redis_server_cluster_node_timeout not found in the role's defaults")


def free_port() -> int:
    while True:
        port = random.randint(20000, 45000)  # noqa: S311
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


class Servers:
    def __init__(self, count: int, node_timeout: int):
        self.dir = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
        self.procs, self.nodes = [], []
        for index in range(count):
            port = free_port()
            work = self.dir / str(port)
            work.mkdir()
            (work / "redis.conf").write_text(
                f"port {port}\nbind 127.0.0.1\ndir {work}\nsave \"\"\nappendonly no\nlogfile {work}/redis.log\n"
                f"cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout {node_timeout}\n")
            self.procs.append(subprocess.Popen([SERVER, str(work / "redis.conf")], cwd=work,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.nodes.append({"host": f"h{index % 3}", "name": f"n{index}", "address": "127.0.0.1", "port": port})
        for node in self.nodes:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", node["port"]), 0.2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"redis-server on {node['port']} did not start") from None
                    time.sleep(0.05)

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def call(port: int, *command, timeout: float = 2.0):
    conn = connect({"host": "127.0.0.1", "port": port}, timeout)
    try:
        return conn.call(*command)
    finally:
        conn.close()


def key_for(slots: list[tuple[int, int]]) -> str:
    """A key whose slot is in `slots` (CLUSTER KEYSLOT would need a live node; the CRC is the server's)."""
    sys.path.insert(0, str(ROOT))
    from redis_infra.health.checks import _crc16

    for number in range(1 << 20):
        key = f"bench:{number}"
        if any(start <= _crc16(key.encode()) % cluster.SLOTS <= end for start, end in slots):
            return key
    raise SystemExit("no key found")


def write_until_acknowledged(key: str, ports: list[int], budget: float) -> float | None:
    """SET key every 10 ms through any node, following MOVED, until one is acknowledged; seconds or None."""
    start = time.monotonic()
    port = ports[0]
    while time.monotonic() - start < budget:
        try:
            reply = call(port, "SET", key, "x", timeout=0.5)
            if reply == "OK":
                return time.monotonic() - start
        except RedisReplyError as exc:
            if str(exc).startswith("MOVED"):
                port = int(str(exc).split()[2].rsplit(":", 1)[1])
                continue
        except OSError:
            port = random.choice(ports)  # noqa: S311
        time.sleep(0.01)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--node-timeout", type=int, default=shipped_node_timeout())
    parser.add_argument("--budget", type=float, default=900)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if SERVER is None:
        raise SystemExit("redis-server is not installed")
    servers = Servers(6, args.node_timeout)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started, trials = time.monotonic(), []
    try:
        redis_cluster.run({}, servers.nodes, 1, 60, check_mode=False)
        ports = [node["port"] for node in servers.nodes]
        by_port = {node["port"]: proc for node, proc in zip(servers.nodes, servers.procs, strict=True)}
        for trial in range(args.trials):
            if time.monotonic() - started > args.budget - 3 * args.node_timeout / 1000:
                print(f"budget reached after {trial} trials", file=sys.stderr)
                break
            observed = redis_cluster.observe({}, servers.nodes)
            primaries = [item for item in redis_cluster.summary(observed) if item["role"] == "primary"]
            victim = primaries[trial % len(primaries)]
            slots = [tuple(int(part) for part in item.split("-")) for item in victim["slots"]]
            key = key_for(slots)
            assert write_until_acknowledged(key, ports, 5) is not None, "the cluster does not take writes"
            proc = by_port[victim["port"]]
            frozen = time.monotonic()
            proc.send_signal(signal.SIGSTOP)
            try:
                others = [port for port in ports if port != victim["port"]]
                seconds = write_until_acknowledged(key, others, args.node_timeout / 1000 + 30)
            finally:
                proc.send_signal(signal.SIGCONT)
            trials.append({"trial": trial + 1, "primary": victim["port"],
                           "seconds": round(seconds, 3) if seconds is not None else None,
                           "ratio_to_node_timeout": round(seconds / (args.node_timeout / 1000), 3) if seconds else None,
                           "frozen_at": round(frozen - started, 3)})
            # The old primary rejoins as a replica; the next trial starts from a settled cluster.
            redis_cluster.wait_for({}, servers.nodes, "ok", 60)
    finally:
        servers.stop()
    times = [item["seconds"] for item in trials if item["seconds"] is not None]
    ratios = [seconds / (args.node_timeout / 1000) for seconds in times]
    report = {"node_timeout_ms": args.node_timeout, "trials": trials,
              "median_s": round(statistics.median(times), 3) if times else None,
              "max_s": max(times) if times else None,
              "median_ratio": round(statistics.median(ratios), 3) if ratios else None,
              "failed_trials": sum(item["seconds"] is None for item in trials)}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for item in trials:
            print(f"trial {item['trial']:2}: primary :{item['primary']} -> writes again after {item['seconds']} s "
                  f"({item['ratio_to_node_timeout']} x node timeout)")
        print(f"cluster-node-timeout {args.node_timeout} ms: median {report['median_s']} s, max {report['max_s']} s, "
              f"median ratio {report['median_ratio']}, failed trials {report['failed_trials']}")
    return 0 if times and not report["failed_trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
