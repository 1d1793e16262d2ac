"""Command line: `python3 -m redis_infra.maintenance --config PATH [report] [--sections a,b] [--json]`.

Exit codes: 0 the report passed (warnings included), 1 a section failed (the drill, or one that could
not run), 2 a bad config or an unreadable connection file. The report goes to report_dir and the
status file; `--json` also prints it on stdout. Credentials come only from the connection file.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import DEFAULT_CONFIG_DIR, OK, REQUIRED_ACL, SECTIONS, MaintenanceError
from . import config as config_module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m redis_infra.maintenance",
        description="The maintenance routine of one Redis/Valkey instance: slow log, memory, latency, key "
                    "patterns and a backup drill. Exit codes: 0 passed, 1 a section failed, 2 bad config.")
    parser.add_argument("--config", metavar="PATH",
                        help=f"the instance's config (TOML; the role writes {DEFAULT_CONFIG_DIR}/NAME.toml); "
                             "required for report")
    parser.add_argument("command", nargs="?", default="report", choices=["report", "acl"],
                        help="report (default): run the routine; acl: print the ACL rules its user needs")
    parser.add_argument("--sections", default=",".join(SECTIONS), metavar="LIST",
                        help=f"comma-separated, of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--no-write", action="store_true", help="write neither the report files nor the status")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "acl":
        print(REQUIRED_ACL)
        return 0
    if not args.config:
        parser.print_usage(sys.stderr)
        print("redis-infra-maintenance: --config is required for report", file=sys.stderr)
        return 2
    wanted = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown or not wanted:
        print(f"redis-infra-maintenance: --sections: unknown {', '.join(unknown) or '(none given)'}; "
              f"choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    from redis_infra.connection import ConnectionFileError, load

    from . import report as report_module

    try:
        cfg = config_module.load(args.config)
        settings = load(cfg.connection_file)
        report = report_module.run(cfg, wanted, settings)
        written = [] if args.no_write else report_module.write(cfg, report)
    except (MaintenanceError, ConnectionFileError) as exc:
        print(f"redis-infra-maintenance: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"redis-infra-maintenance: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. the instance is down: one line, not a traceback
        print(f"redis-infra-maintenance: {args.config}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    for name, section in report["sections"].items():
        print(f"redis-infra-maintenance[{cfg.instance}]: {name}: {section['status']}: {section['summary']}",
              file=sys.stderr)
    for path in written:
        print(f"redis-infra-maintenance[{cfg.instance}]: wrote {path}", file=sys.stderr)
    return 0 if report["result"] == OK else 1
