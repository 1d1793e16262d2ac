#!/usr/bin/env python3
"""Write outage of the zero-downtime rotations (#11) on a Sentinel topology of containers (the lab).

Runs a writer against the current primary (found through the Sentinels, TLS with the CA when given)
while, one step after the other:
  renewal    playbooks/redis.yml renews every host's certificate (a renewal window longer than the
             certificates live), which each instance takes with one CONFIG SET and each Sentinel with a
             restart, one host at a time;
  phase 1    playbooks/rotate_credentials.yml -e rotate_phase=add: new passwords for the application,
             admin, monitor, backup, replication and Sentinel ACL users, the old ones kept beside them;
  (the writer moves to the new application password, as an application would between the phases)
  phase 2    rotate_phase=finish: the old passwords removed;
  back       the same two phases again, back to the passwords the inventory has, so that the lab is
             left as it was.
The writer opens a new connection every 50 writes (so that authentication is exercised, not only a
connection made before). Per step: writes acknowledged, writes failed, the longest gap between two
acknowledged writes, and the step's duration. Target: no failed write.

Passwords come from the environment, never argv: REDIS_PASSWORD, REDIS_ADMIN_PASSWORD,
REDIS_MONITOR_PASSWORD, REDIS_BACKUP_PASSWORD, REDIS_REPLICATION_PASSWORD, REDIS_SENTINEL_ACL_PASSWORD
(the inventory's), SENTINEL_PASSWORD (Sentinel's own, not rotated here). The playbooks get the passwords
through a 0600 file of extra variables, removed afterwards. For the lab: `set -a; . .lab/secrets.env`
and map LAB_REDIS_PASSWORD to REDIS_PASSWORD and so on (`make lab` prints the CA's path).

  scripts/bench-rotation.py --inventory INVENTORY --sentinel 172.18.0.2 --sentinel 172.18.0.3 \
      --sentinel 172.18.0.4 --tls-ca-file CA [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
from redis.sentinel import Sentinel

ROOT = Path(__file__).resolve().parents[1]
# Inventory variable -> environment variable holding its current value; the ACL user it belongs to.
ROTATED = {
    "redis_server_password": ("REDIS_PASSWORD", "default"),
    "redis_server_admin_password": ("REDIS_ADMIN_PASSWORD", "admin"),
    "redis_server_monitor_password": ("REDIS_MONITOR_PASSWORD", "monitor"),
    "redis_server_backup_password": ("REDIS_BACKUP_PASSWORD", "backup"),
    "redis_server_replication_password": ("REDIS_REPLICATION_PASSWORD", "replication"),
    "redis_server_sentinel_password": ("REDIS_SENTINEL_ACL_PASSWORD", "sentinel"),
}


class Writer:
    """SETs through the primary Sentinel names; counts acknowledged and failed writes and the gaps."""

    def __init__(self, sentinels, port, sentinel_password, password, tls):
        self.sentinel = Sentinel([(address, port) for address in sentinels], socket_timeout=1,
                                 sentinel_kwargs={"password": sentinel_password, "socket_timeout": 1, **tls})
        self.tls, self.password = tls, password
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.reset()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def reset(self):
        with self.lock:
            self.acknowledged, self.errors, self.longest = 0, [], 0.0
            self.last = time.monotonic()

    def client(self):
        return self.sentinel.master_for("main", password=self.password, socket_timeout=2, socket_connect_timeout=2,
                                        **self.tls)

    def run(self):
        end = time.monotonic() + 3600
        client, count = self.client(), 0
        while not self.stop.is_set() and time.monotonic() < end:
            if count % 50 == 0:
                client.close()
                client = self.client()
            count += 1
            try:
                client.set("bench:rotation", count)
                now = time.monotonic()
                with self.lock:
                    self.acknowledged += 1
                    self.longest = max(self.longest, now - self.last)
                    self.last = now
            except (redis.RedisError, OSError) as exc:
                with self.lock:
                    self.errors.append(f"{type(exc).__name__}: {str(exc)[:100]}")
                time.sleep(0.05)
            time.sleep(0.01)
        client.close()

    def figures(self):
        with self.lock:
            return {"acknowledged": self.acknowledged, "failed": len(self.errors),
                    "longest_gap_ms": round(self.longest * 1000, 1), "first_errors": self.errors[:3]}


def playbook(inventory, name, variables):
    """Run a project playbook with the extra variables in a private file (no password in argv)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        os.chmod(handle.name, 0o600)
        json.dump(variables, handle)
    try:
        command = ["ansible-playbook", "-i", inventory, str(ROOT / "playbooks" / name), "-e", f"@{handle.name}"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False,
                                stdin=subprocess.DEVNULL, env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
    finally:
        os.unlink(handle.name)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-25:])
        raise SystemExit(f"bench-rotation: {name} failed (rc {result.returncode}):\n{tail}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--inventory", required=True, help="the topology's Ansible inventory")
    parser.add_argument("--sentinel", action="append", required=True, help="a Sentinel's address (repeat)")
    parser.add_argument("--sentinel-port", type=int, default=26379)
    parser.add_argument("--tls-ca-file", help="CA certificate of the hosts (TLS on: the production profile)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    missing = [env for env, _ in ROTATED.values() if not os.environ.get(env)] + (
        [] if os.environ.get("SENTINEL_PASSWORD") else ["SENTINEL_PASSWORD"])
    if missing:
        parser.error(f"set {', '.join(missing)} in the environment")
    current = {variable: os.environ[env] for variable, (env, _) in ROTATED.items()}
    new = {variable: secrets.token_urlsafe(36) for variable in ROTATED}
    tls = ({"ssl": True, "ssl_ca_certs": args.tls_ca_file, "ssl_cert_reqs": "required"} if args.tls_ca_file else {})

    def rotation(old, to):
        previous = {ROTATED[variable][1]: old[variable] for variable in ROTATED}
        common = dict(to, redis_sentinel_auth_password=to["redis_server_sentinel_password"])
        return (dict(common, redis_server_previous_passwords=previous, rotate_phase="add"),
                dict(common, redis_server_previous_passwords={}, rotate_phase="finish"))

    there, there_done = rotation(current, new)
    back, back_done = rotation(new, current)
    steps = [
        ("renewal", "redis.yml", {"redis_server_tls_certificate_days": 500, "redis_server_tls_renew_days": 400}, None),
        ("phase 1", "rotate_credentials.yml", there, new["redis_server_password"]),
        ("phase 2", "rotate_credentials.yml", there_done, None),
        ("back, phase 1", "rotate_credentials.yml", back, current["redis_server_password"]),
        ("back, phase 2", "rotate_credentials.yml", back_done, None),
    ]
    writer = Writer(args.sentinel, args.sentinel_port, os.environ["SENTINEL_PASSWORD"],
                    current["redis_server_password"], tls)
    writer.thread.start()
    results = []
    try:
        for name, book, variables, then_password in steps:
            writer.reset()
            started = time.monotonic()
            print(f"bench-rotation: {name} ...", file=sys.stderr)
            playbook(args.inventory, book, variables)
            results.append(dict(step=name, seconds=round(time.monotonic() - started, 1), **writer.figures()))
            if then_password:
                writer.password = then_password  # the application moves between the phases
    finally:
        writer.stop.set()
        writer.thread.join(10)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'step':<15} {'seconds':>8} {'acknowledged':>13} {'failed':>7} {'longest gap ms':>15}")
        for row in results:
            print(f"{row['step']:<15} {row['seconds']:>8} {row['acknowledged']:>13} {row['failed']:>7} "
                  f"{row['longest_gap_ms']:>15}")
    return 0 if all(row["failed"] == 0 for row in results) else 1


if __name__ == "__main__":
    sys.exit(main())
