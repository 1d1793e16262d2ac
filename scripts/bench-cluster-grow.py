#!/usr/bin/env python3
"""Benchmark of growing a Redis Cluster by one shard (issue #12): the time the collection's redis_cluster
module takes to add a primary and its replica to a cluster holding --dataset-mb of data and move a quarter
of the slots to it, and the errors a client writing meanwhile sees.

Starts eight cluster-enabled redis-servers on 127.0.0.1 (the servers of scripts/bench-cluster-failover.py:
plaintext, no persistence, the shipped cluster-node-timeout), forms a cluster of six (three shards, a
replica each) with the module, loads the data set through redis-py's cluster client (random 64 KiB values,
incompressible), then runs the module with all eight nodes while a second cluster client SETs small keys in
a loop. Reported: the grow time, the load time of the same data set through the client (the baseline of
the same run: the ratio is the figure that does not depend on how loaded the machine is), the slots and
keys the new primary got, the writes acknowledged and every error the writer saw, and whether every key
of the data set and of the writer reads back. The servers and the temp dir are removed on exit.

    .venv/bin/python scripts/bench-cluster-grow.py [--dataset-mb 1024] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_cluster_failover", ROOT / "scripts/bench-cluster-failover.py")
_failover = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_failover)
redis_cluster = _failover.redis_cluster
VALUE_BYTES = 64 * 1024


def client(nodes):
    return redis.RedisCluster(startup_nodes=[redis.cluster.ClusterNode(node["address"], node["port"])
                                             for node in nodes], socket_timeout=10)


def load(nodes, count):
    cluster_client = client(nodes)
    try:
        for start in range(0, count, 64):
            pipe = cluster_client.pipeline()
            for number in range(start, min(start + 64, count)):
                pipe.set(f"bench:grow:{number}", os.urandom(VALUE_BYTES))
            pipe.execute()
    finally:
        cluster_client.close()


class Writer(threading.Thread):
    def __init__(self, nodes):
        super().__init__(daemon=True)
        self.client = client(nodes)
        self.stop = threading.Event()
        self.acknowledged, self.errors = [], []

    def run(self):
        number = 0
        while not self.stop.is_set():
            try:
                self.client.set(f"bench:live:{number}", number)
                self.acknowledged.append(number)
            except redis.RedisError as exc:
                self.errors.append(f"{type(exc).__name__}: {str(exc)[:80]}")
                time.sleep(0.05)
            number += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-mb", type=int, default=1024)
    parser.add_argument("--node-timeout", type=int, default=_failover.shipped_node_timeout())
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if _failover.SERVER is None:
        raise SystemExit("redis-server is not installed")
    servers = _failover.Servers(8, args.node_timeout)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    count = args.dataset_mb * 1024 * 1024 // VALUE_BYTES
    try:
        first, added = servers.nodes[:6], servers.nodes[6:]
        redis_cluster.run({}, first, 1, 60, check_mode=False)
        started = time.monotonic()
        load(first, count)
        loaded = time.monotonic() - started
        writer = Writer(first)
        writer.start()
        time.sleep(1)
        started = time.monotonic()
        result = redis_cluster.run({}, servers.nodes, 1, 120, check_mode=False)
        grown = time.monotonic() - started
        time.sleep(1)
        writer.stop.set()
        writer.join(30)
        new = [node for node in result["nodes"]
               if node["role"] == "primary" and node["port"] in {item["port"] for item in added}]
        new_slots = sum(int(run.split("-")[-1]) - int(run.split("-")[0]) + 1 for node in new for run in node["slots"])
        new_keys = sum(_failover.call(node["port"], "DBSIZE") for node in new)
        check = client(servers.nodes)
        try:
            missing = 0
            for start in range(0, count, 500):
                pipe = check.pipeline()
                for number in range(start, min(start + 500, count)):
                    pipe.exists(f"bench:grow:{number}")
                missing += sum(1 for found in pipe.execute() if not found)
            pipe = check.pipeline()
            for number in writer.acknowledged:
                pipe.get(f"bench:live:{number}")
            lost = sum(1 for value in pipe.execute() if value is None)
        finally:
            check.close()
            writer.client.close()
    finally:
        servers.stop()
    report = {"dataset_mb": args.dataset_mb, "keys": count, "load_s": round(loaded, 1), "grow_s": round(grown, 1),
              "grow_to_load_ratio": round(grown / loaded, 2), "new_primary_slots": new_slots,
              "new_primary_keys": new_keys, "writes_acknowledged": len(writer.acknowledged),
              "writer_errors": len(writer.errors), "error_kinds": sorted(set(writer.errors))[:10],
              "data_set_keys_missing": missing, "acknowledged_writes_lost": lost}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"grow by one shard with {args.dataset_mb} MiB ({count} keys): {report['grow_s']} s "
              f"(loading the data set took {report['load_s']} s: ratio {report['grow_to_load_ratio']}); "
              f"the new primary got {new_slots} slots and {new_keys} keys; "
              f"writer: {len(writer.acknowledged)} acknowledged, "
              f"{len(writer.errors)} errors {report['error_kinds']}; missing keys {missing}, lost writes {lost}")
    return 0 if not writer.errors and not missing and not lost else 1


if __name__ == "__main__":
    sys.exit(main())
