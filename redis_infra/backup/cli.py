"""Command line: `python3 -m redis_infra.backup --config PATH {run,verify,list,restore-prepare,acl}`.

Log lines go to stderr (cron and the journal capture them); machine-readable results of `list`,
`verify` and `restore-prepare` go to stdout. Credentials come only from the connection file.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from datetime import datetime

from . import REQUIRED_ACL, BackupError, ExitCode, engine, storage
from . import config as config_module

log = logging.getLogger("redis_infra.backup")


class _Formatter(logging.Formatter):
    def __init__(self, instance: str | None):
        super().__init__()
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).astimezone().strftime("%Y-%m-%dT%H:%M:%S%z")
        level = "" if record.levelno == logging.INFO else f"{record.levelname}: "
        who = f"redis-backup[{self.instance}]" if self.instance else "redis-backup"
        text = f"{when} {who}: {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(instance: str | None, verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(instance))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                        help="the instance's backup config file (TOML)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="python3 -m redis_infra.backup", parents=[common],
                                     description="Back up, verify, list and prepare restores of one Redis/Valkey "
                                                 "instance. Exit codes: see docs/backup.md.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="take a backup now")
    run.add_argument("--lock-wait", type=float, metavar="SECONDS",
                     help="wait this long for another run's lock (default: timeouts.lock_wait)")

    verify = sub.add_parser("verify", parents=[common],
                            help="check backups: checksum, redis-check-rdb (and redis-check-aof)")
    verify.add_argument("backup", nargs="?", help="backup id, file name or path (default: the newest)")
    verify.add_argument("--all", action="store_true", help="verify every backup of the instance")
    verify.add_argument("--tmp-dir", metavar="DIR", help="where to decompress (default: the backup's directory)")

    listing = sub.add_parser("list", parents=[common], help="list backups with their status")
    listing.add_argument("--json", action="store_true", help="one JSON document on stdout")
    listing.add_argument("--no-verify", action="store_true", help="do not checksum (status 'unchecked')")

    restore = sub.add_parser("restore-prepare", parents=[common],
                             help="verify a backup and unpack it for a restore (Redis must be stopped)")
    restore.add_argument("--backup", metavar="NAME", help="backup id or file name (default: the newest valid)")
    restore.add_argument("--rdb-dest", required=True, metavar="PATH",
                         help="where to write the RDB file, e.g. /var/lib/redis/main/dump.rdb")
    restore.add_argument("--aof-dir", metavar="PATH",
                         help="also unpack the AOF archive to this directory (the instance's appenddirname)")
    restore.add_argument("--force", action="store_true",
                         help="replace existing targets (they are renamed to *.before-restore-<time>)")
    restore.add_argument("--slots", metavar="RANGES",
                         help="keep only the keys of these cluster slots, e.g. 0-5460,10923 (a shard's restore; "
                              "loads the RDB into a scratch server)")
    restore.add_argument("--lock-wait", type=float, metavar="SECONDS",
                         help="wait this long for a running backup (default: timeouts.lock_wait)")

    sub.add_parser("acl", parents=[common], help="print the ACL rules the backup user needs")
    return parser


def _handle_signal(signum, _frame):
    raise BackupError(ExitCode.INTERNAL, f"interrupted by {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "acl":
        print(REQUIRED_ACL)
        return ExitCode.OK
    setup_logging(None, getattr(args, "verbose", False))
    if not getattr(args, "config", None):
        log.error("--config PATH is required")
        return ExitCode.CONFIG
    try:
        cfg = config_module.load(args.config)
    except BackupError as exc:
        log.error("config error: %s", exc.message)
        return exc.code
    setup_logging(cfg.instance, getattr(args, "verbose", False))
    previous = {sig: signal.signal(sig, _handle_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return int(_dispatch(cfg, args))
    except BackupError as exc:
        log.error("%s", exc.message)
        return int(exc.code)
    except KeyboardInterrupt:
        log.error("interrupted")
        return int(ExitCode.INTERNAL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _dispatch(cfg, args) -> ExitCode:
    if args.command == "run":
        result = engine.run(cfg, lock_wait=args.lock_wait)
        return result.code
    if args.command == "list":
        backups = engine.list_backups(cfg, verify_sums=not args.no_verify)
        records = [engine.backup_record(backup) for backup in backups]
        if args.json:
            print(json.dumps(records, indent=2))
        else:
            _print_table(records)
        return ExitCode.OK
    if args.command == "verify":
        return _verify(cfg, args)
    if args.command == "restore-prepare":
        result = engine.restore_prepare(cfg, args.backup, args.rdb_dest, args.aof_dir, args.force,
                                        lock_wait=args.lock_wait, slots=args.slots)
        print(json.dumps(result))
        return ExitCode.OK
    raise BackupError(ExitCode.CONFIG, f"unknown command {args.command}")


def _verify(cfg, args) -> ExitCode:
    if args.backup:
        backup = storage.find_backup(cfg.backup_dir, cfg.instance, args.backup)
        if backup is None:
            raise BackupError(ExitCode.NOT_FOUND, f"no backup {args.backup!r} of instance {cfg.instance}")
        targets = [backup]
    else:
        targets = engine.list_backups(cfg, verify_sums=False)
        if not targets:
            raise BackupError(ExitCode.NOT_FOUND, f"no backup of instance {cfg.instance} in {cfg.backup_dir}")
        if not args.all:
            targets = targets[:1]
    failed = 0
    for backup in targets:
        ok, detail = engine.verify_backup(cfg, backup, args.tmp_dir)
        print(f"{backup.id}\t{'ok' if ok else 'FAILED'}\t{detail}")
        if ok:
            log.info("verified %s: %s", backup.id, detail)
        else:
            failed += 1
            log.error("verification failed for %s: %s", backup.rdb_path, detail)
    return ExitCode.VERIFY if failed else ExitCode.OK


def _print_table(records: list[dict]) -> None:
    if not records:
        print("no backups")
        return
    print(f"{'ID':<40} {'TIME (UTC)':<21} {'SIZE':>12} {'STATUS':<12} AOF")
    for record in records:
        aof = (record["aof_status"] or "unchecked") if record["aof"] else "-"
        size = record["size"] if record["size"] is not None else "?"
        line = f"{record['id']:<40} {record['time']:<21} {size:>12} {record['status']:<12} {aof}"
        if record["detail"]:
            line += f"  ({record['detail']})"
        print(line)
