#!/usr/bin/env python3
"""Benchmark of the maintenance routine's backup drill against a loopback redis-server.

Fills a throwaway redis-server (127.0.0.1, free port, its own temp dir) with --size-mb of data (default
1024, the same data as scripts/bench-backup.py), takes a backup with the backup tool (the baseline of the
same run: the machine is shared and noisy, so the drill is also given as a ratio to it), then runs
`redis-infra-maintenance --sections drill` and reports its wall time and phases (unpack, load into the
scratch server, key count and value comparison). Every server it starts is stopped and its temp dir
removed; all traffic goes to 127.0.0.1.

    .venv/bin/python scripts/bench-drill.py --size-mb 1024
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_backup", REPO / "scripts" / "bench-backup.py")
bench_backup = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_backup)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="dataset size in MiB (default 1024)")
    parser.add_argument("--value-size", type=int, default=1024, help="bytes per value (default 1024)")
    parser.add_argument("--sample", type=int, default=200, help="keys the drill compares by value (default 200)")
    parser.add_argument("--server", default=shutil.which("redis-server") or shutil.which("valkey-server"))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-drill-"))
    os.chmod(root, 0o711)   # noqa: S103 - the scratch server's account (nobody, as root) must reach its directory
    results: dict = {"size_mb": args.size_mb, "server": args.server, "sample": args.sample}
    source = None
    try:
        password = bench_backup.PASSWORD
        source = bench_backup.Server(args.server, root / "source", extra=f"user admin on >{password} ~* &* +@all\n")
        source.wait_ready()
        print(f"filling {args.size_mb} MiB on 127.0.0.1:{source.port} ...", file=sys.stderr)
        started = time.monotonic()
        results["keys"] = bench_backup.fill(source.client, args.size_mb, args.value_size)
        results["fill_s"] = round(time.monotonic() - started, 1)
        results["used_memory_mb"] = round(source.client.info("memory")["used_memory"] / 2**20, 1)
        backups = root / "backups"
        backups.mkdir()
        for user in ("backup", "admin"):
            conn = root / f"{user}.conn.toml"
            conn.write_text(f'name = "bench"\nhost = "127.0.0.1"\nport = {source.port}\nusername = "{user}"\n'
                            f'password = "{password}"\n')
            conn.chmod(0o600)
        backup_config = root / "backup.toml"
        backup_config.write_text(f'instance = "bench"\nconnection_file = "{root / "backup.conn.toml"}"\n'
                                 f'backup_dir = "{backups}"\nstatus_file = "{root / "status.json"}"\n'
                                 f'lock_file = "{root / "backup.lock"}"\n' + bench_backup.paths(root / "source"))
        results["backup_s"], _ = bench_backup.tool("run", config=backup_config)
        results["backup_s"] = round(results["backup_s"], 1)
        scratch = root / "scratch"
        scratch.mkdir(mode=0o711)
        config = root / "maintenance.toml"
        config.write_text(f'instance = "bench"\nconnection_file = "{root / "admin.conn.toml"}"\n'
                          f'report_dir = "{root / "report"}"\nstatus_file = "{root / "maintenance.json"}"\n'
                          f'backup_config = "{backup_config}"\nserver = "{args.server}"\n'
                          f'[drill]\nsample = {args.sample}\nscratch_dir = "{scratch}"\n')
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "redis_infra.maintenance", "--config", str(config), "--sections",
                               "drill", "--json"], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
        results["drill_wall_s"] = round(time.monotonic() - started, 1)
        if proc.returncode != 0:
            raise RuntimeError(f"the drill failed ({proc.returncode}):\n{proc.stderr}")
        drill = json.loads(proc.stdout)["sections"]["drill"]
        for key in ("rdb_size", "unpack_s", "load_s", "restored_keys", "recorded_keys", "duration_s"):
            results[f"drill_{key}"] = drill.get(key)
        results["drill_compare_s"] = round(drill["duration_s"] - drill["unpack_s"] - drill["load_s"], 2)
        results["drill_to_backup_ratio"] = round(results["drill_wall_s"] / results["backup_s"], 2)
    finally:
        if source is not None:
            source.stop()
        shutil.rmtree(root, ignore_errors=True)
    width = max(len(key) for key in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
