#!/usr/bin/env python3
"""Benchmark of the backup tool against a loopback redis-server.

Fills a throwaway redis-server (127.0.0.1, free port, its own temp dir) with --size-mb of data
(default 1024), then measures:
  - client latency (GET/SET, one connection) without a backup running: the baseline;
  - `python3 -m redis_infra.backup run` wall time, its phases (BGSAVE, copy, redis-check-rdb, gzip)
    from the status file, and the bytes it wrote; the same client latency while it runs;
  - restore: `restore-prepare` wall time, then a fresh redis-server loading the file (until the
    dataset is loaded and DBSIZE matches).
Every server it starts is stopped, its temp dir removed; all traffic goes to 127.0.0.1. The client
loops are bounded in operations and time.

    .venv/bin/python scripts/bench-backup.py --size-mb 200
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from redis_infra.backup import REQUIRED_ACL  # noqa: E402

PASSWORD = "bench-" + os.urandom(8).hex()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, binary: str, workdir: Path, extra: str = ""):
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "redis.conf"
        config.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\nsave \"\"\nappendonly no\n"
                          f"daemonize no\nlogfile {workdir / 'redis.log'}\n"
                          f"user backup on >{PASSWORD} {REQUIRED_ACL}\n" + extra)
        self.proc = subprocess.Popen([binary, str(config)], cwd=workdir, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=600)

    def wait_ready(self, timeout: float = 600.0) -> float:
        """Seconds until the server answers and has finished loading its dataset."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: see {self.workdir / 'redis.log'}")
            try:
                if int(self.client.info("persistence").get("loading", 0)) == 0:
                    return time.monotonic() - start
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def fill(client: redis.Redis, size_mb: int, value_size: int) -> int:
    """Write about size_mb MiB of values: half random bytes as hex (compressible like real text data)."""
    keys = max(1, size_mb * 1024 * 1024 // value_size)
    pool = [os.urandom(value_size // 4).hex().encode() + bytes(value_size // 2) for _ in range(64)]
    batch = 2000
    for start in range(0, keys, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + batch, keys)):
            value = pool[i % len(pool)]
            pipe.set(f"key:{i:09d}", value[: value_size - 9] + f"{i:09d}".encode())
        pipe.execute()
    return keys


class LatencyProbe:
    """One client doing GET/SET on random existing keys; bounded in operations and time."""

    def __init__(self, port: int, keys: int, max_ops: int, max_seconds: float):
        self.client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
        self.keys = keys
        self.max_ops = max_ops
        self.max_seconds = max_seconds
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        rng = random.Random(1)  # noqa: S311 - key choice, not security
        deadline = time.monotonic() + self.max_seconds
        value = b"x" * 100
        for n in range(self.max_ops):
            if self.stop.is_set() or time.monotonic() > deadline:
                break
            key = f"key:{rng.randrange(self.keys):09d}"
            start = time.perf_counter()
            if n % 2:
                self.client.set(key + ":probe", value)
            else:
                self.client.get(key)
            self.samples.append(time.perf_counter() - start)

    def summary(self) -> dict:
        data = sorted(self.samples)
        if not data:
            return {"ops": 0}

        def pct(p):
            return data[min(len(data) - 1, int(len(data) * p))] * 1000

        return {"ops": len(data), "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": data[-1] * 1000}


def paths(data_dir: Path) -> str:
    """The server's paths in the tool's config, as the role writes them: the backup user has no CONFIG GET."""
    return (f'data_dir = "{data_dir}"\ndbfilename = "dump.rdb"\nappenddirname = "appendonlydir"\n'
            'appendfilename = "appendonly.aof"\n')


def tool(*args: str, config: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "redis_infra.backup", *args, "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}):\n{proc.stderr}")
    return elapsed, proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="dataset size in MiB (default 1024)")
    parser.add_argument("--value-size", type=int, default=1024, help="bytes per value (default 1024)")
    parser.add_argument("--compression-level", type=int, default=6, help="gzip level for the tool (default 6)")
    parser.add_argument("--baseline-seconds", type=float, default=5.0, help="latency baseline duration")
    parser.add_argument("--server", default=shutil.which("redis-server") or shutil.which("valkey-server"),
                        help="redis-server or valkey-server binary")
    parser.add_argument("--workdir", help="where to put data and backups (default: a temp dir, removed after)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    if not args.server:
        parser.error("no redis-server/valkey-server found; use --server")

    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-backup-"))
    root.mkdir(parents=True, exist_ok=True)
    servers: list[Server] = []
    results: dict = {"size_mb": args.size_mb, "value_size": args.value_size,
                     "compression_level": args.compression_level, "server": args.server}
    try:
        source = Server(args.server, root / "source")
        servers.append(source)
        source.wait_ready()
        print(f"filling {args.size_mb} MiB on 127.0.0.1:{source.port} ...", file=sys.stderr)
        start = time.monotonic()
        keys = fill(source.client, args.size_mb, args.value_size)
        results["fill_seconds"] = round(time.monotonic() - start, 1)
        results["keys"] = keys
        results["used_memory_mb"] = round(source.client.info("memory")["used_memory"] / 2**20, 1)

        backups = root / "backups"
        backups.mkdir()
        conn = root / "backup.conn.toml"
        conn.write_text(f'name = "bench"\nhost = "127.0.0.1"\nport = {source.port}\nusername = "backup"\n'
                        f'password = "{PASSWORD}"\n')
        conn.chmod(0o600)
        config = root / "backup.toml"
        config.write_text(f'instance = "bench"\nconnection_file = "{conn}"\nbackup_dir = "{backups}"\n'
                          f'status_file = "{root / "status.json"}"\nlock_file = "{root / "backup.lock"}"\n'
                          + paths(root / "source") + f"[compression]\nlevel = {args.compression_level}\n")

        # latency without a backup (after a short warm-up that is not counted)
        LatencyProbe(source.port, keys, max_ops=200_000, max_seconds=1.0).run()
        probe = LatencyProbe(source.port, keys, max_ops=2_000_000, max_seconds=args.baseline_seconds)
        probe.run()
        results["latency_idle"] = probe.summary()

        # backup, with the same probe running alongside
        probe = LatencyProbe(source.port, keys, max_ops=20_000_000, max_seconds=1800)
        thread = threading.Thread(target=probe.run, daemon=True)
        thread.start()
        backup_seconds, _proc = tool("run", config=config)
        probe.stop.set()
        thread.join(60)
        results["latency_during_backup"] = probe.summary()
        results["fork_ms"] = round(int(source.client.info("stats")["latest_fork_usec"]) / 1000, 1)
        probe = LatencyProbe(source.port, keys, max_ops=2_000_000, max_seconds=args.baseline_seconds)
        probe.run()
        results["latency_idle_after"] = probe.summary()
        status = json.loads((root / "status.json").read_text())
        results["backup_seconds"] = round(backup_seconds, 2)
        results["backup_phases"] = status["phases"]
        results["rdb_bytes"] = status["rdb_size"]
        results["backup_file_bytes"] = status["size"]
        results["bytes_written"] = status["rdb_size"] + status["size"]     # raw temp copy + .rdb.gz

        # restore: restore-prepare, then a fresh server loads the file
        target = root / "restored"
        target.mkdir()
        prepare_seconds, _proc = tool("restore-prepare", "--rdb-dest", str(target / "dump.rdb"), config=config)
        start = time.monotonic()
        fresh = Server(args.server, target)
        servers.append(fresh)
        fresh.wait_ready()
        load_seconds = time.monotonic() - start
        restored_keys = fresh.client.dbsize()
        results.update(restore_prepare_seconds=round(prepare_seconds, 2), restore_load_seconds=round(load_seconds, 2),
                       restore_total_seconds=round(prepare_seconds + load_seconds, 2), restored_keys=restored_keys)
        if restored_keys < keys:
            raise RuntimeError(f"restored {restored_keys} keys, expected {keys}")
    finally:
        for server in servers:
            server.stop()
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)

    report(results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def report(r: dict) -> None:
    mb = 2**20
    print(f"dataset: {r['keys']} keys x {r['value_size']} B, used_memory {r['used_memory_mb']} MiB "
          f"(filled in {r['fill_seconds']} s), server {r['server']}")
    print(f"backup:  {r['backup_seconds']} s wall; phases (s): "
          + ", ".join(f"{k} {v}" for k, v in r["backup_phases"].items()))
    print(f"         RDB {r['rdb_bytes'] / mb:.1f} MiB -> .rdb.gz {r['backup_file_bytes'] / mb:.1f} MiB "
          f"(gzip level {r['compression_level']}); bytes written {r['bytes_written'] / mb:.1f} MiB "
          f"(temp copy + archive)")
    print(f"restore: {r['restore_total_seconds']} s = restore-prepare {r['restore_prepare_seconds']} s "
          f"+ server load {r['restore_load_seconds']} s ({r['restored_keys']} keys)")
    print(f"fork of the BGSAVE: {r['fork_ms']} ms (INFO stats latest_fork_usec)")
    for name in ("latency_idle", "latency_during_backup", "latency_idle_after"):
        s = r[name]
        print(f"{name.replace('_', ' '):<22}: {s['ops']:>7} ops, p50 {s['p50_ms']:.3f} ms, p99 {s['p99_ms']:.3f} ms, "
              f"max {s['max_ms']:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
