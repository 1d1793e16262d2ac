"""Command line: `python3 -m redis_infra.verify --env-file FILE [--checks a,b] [--json]`.

Exit codes: 0 every check passed (or was skipped), 1 a check failed (each named on stderr), 2 the env
file is unreadable. Passwords come from the env file only and are never printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import CHECKS, FAILED
from .checks import Context, cleanup, run
from .envfile import EnvFileError, Settings, load


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m redis_infra.verify",
                                     description="Acceptance test of an application's Redis connection, from the "
                                                 "env file of playbooks/app_settings.yml.")
    parser.add_argument("--env-file", required=True, metavar="PATH")
    parser.add_argument("--checks", default=",".join(CHECKS), metavar="LIST",
                        help=f"comma-separated, of {', '.join(CHECKS)} (default: all)")
    parser.add_argument("--prefix", default="redis-infra:verify:",
                        help="key and channel prefix the test uses (the user's ACL must allow it)")
    parser.add_argument("--expect-replicas", type=int, default=0, metavar="N",
                        help="replicas each primary (Sentinel) or shard (cluster) must have (default 0)")
    parser.add_argument("--max-p99-ms", type=float, default=20.0, help="p99 of single GETs, ms (default 20)")
    parser.add_argument("--min-ops-per-second", type=float, default=2000.0,
                        help="pipelined SETs per second at least (default 2000)")
    parser.add_argument("--operations", type=int, default=500, help="GETs and SETs measured (default 500)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for every check together")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    wanted = [name.strip() for name in args.checks.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(CHECKS))
    if unknown or not wanted:
        print(f"redis-infra-verify: --checks: unknown {', '.join(unknown) or '(none given)'}; choose from "
              f"{', '.join(CHECKS)}", file=sys.stderr)
        return 2
    wanted = ["connection", *[name for name in wanted if name != "connection"]]   # every other check needs it
    try:
        settings = Settings.from_env(load(args.env_file))
    except (EnvFileError, ValueError) as exc:
        print(f"redis-infra-verify: {exc}", file=sys.stderr)
        return 2
    ctx = Context(settings, args.prefix, args.expect_replicas, args.max_p99_ms, args.min_ops_per_second,
                  args.operations)
    try:
        results = run(ctx, wanted, time.monotonic() + args.timeout)
    finally:
        cleanup(ctx)
    secrets = [secret for secret in (settings.password, settings.sentinel_password) if secret]
    for result in results:
        line = f"{result['status'].upper():7} {result['check']}: {result['detail']}"
        for secret in secrets:
            line = line.replace(secret, "***")
        print(line, file=sys.stderr)
    if args.json:
        text = json.dumps({"env_file": args.env_file, "topology": settings.topology, "checks": results}, indent=2)
        for secret in secrets:
            text = text.replace(secret, "***")
        print(text)
    return 1 if any(result["status"] == FAILED for result in results) else 0
