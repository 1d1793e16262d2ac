#!/usr/bin/env python3
"""No-op converge cost on the lab (make lab first): remote executions per host and wall time.

Every module Ansible runs on a container is one `docker exec` (the docker connection, pipelining on),
so the engine's exec_start events during a run are the exact number of round trips to each host
(including one interpreter discovery per host and run); the count is stable where wall times are
not. Wall times are reported with a baseline taken in the same run: `ansible -m ping` on the same
hosts (one execution each), so the figure reads as a multiple of one round trip on this machine at
this moment. Run it on a quiet machine: other Molecule scenarios beside it make wall times useless.

    .venv/bin/python scripts/bench-converge.py [--runs 3] [--project DIR] [--scenario lab] [--limit HOST] [playbook ...]

Playbooks default to site.yml and playbooks/redis.yml, run from --project (default: this checkout),
so an older checkout (git worktree) can be measured against the same lab. Each playbook is run once
first so that the measured runs are no-ops; a measured run that changes something is reported.
--scenario names another Molecule scenario whose hosts are up (`molecule converge -s production`: one
production host without replication, and a monitoring host), measured the same way. --limit runs the
playbooks on one host (pattern) only: `--scenario production --limit redis-infra-prod-12` is site.yml on one
production host, as on an inventory of that host alone (the monitoring plays then have no host).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIXES = {"lab": "redis-infra-lab-", "production": "redis-infra-prod-"}


def lab_inventory(scenario: str) -> str:
    # The newest: Molecule leaves the ephemeral directories of earlier runs behind.
    found = sorted(Path.home().glob(f".ansible/tmp/molecule.*.{scenario}/inventory"),
                   key=lambda path: path.stat().st_mtime)
    if not found:
        sys.exit(f"bench-converge: no {scenario} inventory under ~/.ansible/tmp: "
                 "run `make lab` (or molecule converge) first")
    return str(found[-1])


def lab_hosts(scenario: str) -> list[str]:
    prefix = PREFIXES.get(scenario, f"redis-infra-{scenario}-")
    out = subprocess.run(["docker", "ps", "--filter", f"name={prefix}", "--format", "{{.Names}}"],
                         capture_output=True, text=True, check=True).stdout.split()
    if not out:
        sys.exit(f"bench-converge: no {scenario} container runs: run `make lab` (or molecule converge) first")
    return sorted(out)


def timed(command: list[str], project: Path, env: dict, hosts: list[str]) -> tuple[dict[str, int], float, str]:
    """Run a command; the exec_start events per container meanwhile, its wall time and its output.

    The events are taken as they happen, into a file: the engine keeps only its last 256 events for
    --since, and drops events for a subscriber that reads too slowly (a pipe that is not read fills)."""
    # The engine names the event "exec_start: <command>", which an event= filter does not match.
    with tempfile.TemporaryFile("w+") as log:
        events = subprocess.Popen(["docker", "events", "--filter", "type=container", "--format", "{{json .}}"],
                                  stdout=log, text=True)
        time.sleep(0.5)
        start = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, cwd=project, env=env, check=False)
        elapsed = time.monotonic() - start
        time.sleep(0.5)  # let the engine report the last events
        events.terminate()
        events.wait(30)
        log.seek(0)
        lines = log.read()
    if result.returncode != 0:
        sys.exit(f"bench-converge: {' '.join(command)} failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    counts = dict.fromkeys(hosts, 0)
    for line in lines.splitlines():
        event = json.loads(line)
        name = event.get("Actor", {}).get("Attributes", {}).get("name")
        if name in counts and str(event.get("Action", "")).startswith("exec_start"):
            counts[name] += 1
    return counts, elapsed, result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--project", type=Path, default=ROOT)
    parser.add_argument("--scenario", default="lab")
    parser.add_argument("--limit", help="run the playbooks on this host (pattern) only, as on a one-host inventory")
    parser.add_argument("playbooks", nargs="*", default=["site.yml", "playbooks/redis.yml"])
    args = parser.parse_args()
    inventory, hosts = lab_inventory(args.scenario), lab_hosts(args.scenario)
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, ANSIBLE_CONFIG=str(args.project / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=f"{bin_dir}:{os.environ.get('PATH', '')}")
    print(f"lab hosts: {', '.join(hosts)}; project: {args.project}")
    for playbook in args.playbooks:
        limit = ["--limit", args.limit] if args.limit else []
        command = [str(bin_dir / "ansible-playbook"), "-i", inventory, playbook, *limit]
        ping = [str(bin_dir / "ansible"), "-i", inventory, args.limit or "redis", "-m", "ansible.builtin.ping"]
        timed(command, args.project, env, hosts)  # settle: the measured runs are no-ops
        counts, walls, ratios = [], [], []
        for _ in range(args.runs):
            _, base, _ = timed(ping, args.project, env, hosts)
            execs, elapsed, out = timed(command, args.project, env, hosts)
            changed = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", out, re.MULTILINE)
            if any(count != "0" for _, count in changed):
                print(f"  note: a measured run of {playbook} changed something: {changed}")
            counts.append(execs)
            walls.append(elapsed)
            ratios.append(elapsed / base)
        per_host = {host: sorted({c[host] for c in counts}) for host in hosts}
        print(f"{playbook}: executions per host {per_host}; wall median {statistics.median(walls):.1f} s "
              f"({', '.join(f'{w:.1f}' for w in walls)}); wall / one ping round {statistics.median(ratios):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
