"""Command line: `python3 -m redis_infra.health {serve,check,acl} [--config PATH]`.

check exit codes follow Nagios/Icinga: 0 healthy (OK), 1 degraded (WARNING), 2 unhealthy (CRITICAL).
A configuration error is one line on stderr and exit code 2 (for serve and check alike).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from . import DEFAULT_CONFIG_PATH, HEALTHY, REQUIRED_ACL, SENTINEL_REQUIRED_ACL, STATUS_CODES
from .config import ConfigError, load_config

PROG = "python3 -m redis_infra.health"
NAGIOS_WORDS = {0: "OK", 1: "WARNING", 2: "CRITICAL"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Health checker for local Redis/Valkey instances.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{serve,check,acl}")
    serve = sub.add_parser("serve", help="run the check loop and the HTTP server")
    serve.add_argument("--config", default=DEFAULT_CONFIG_PATH, help=f"config file (default {DEFAULT_CONFIG_PATH})")
    check = sub.add_parser("check", help="check once; exit 0 healthy, 1 degraded, 2 unhealthy")
    check.add_argument("--config", default=DEFAULT_CONFIG_PATH, help=f"config file (default {DEFAULT_CONFIG_PATH})")
    check.add_argument("--json", action="store_true", help="print the full result as JSON")
    check.add_argument("--instance", action="append", metavar="NAME",
                       help="check only this instance (repeatable)")
    acl = sub.add_parser("acl", help="print the ACL rules the monitoring user needs")
    acl.add_argument("--sentinel", action="store_true", help="the rules of its user on Sentinel instead")
    hashing = sub.add_parser("hash-passwords", help="bcrypt the passwords of a JSON object {user: password} on "
                                                    "stdin; print {user: hash} as JSON")
    hashing.add_argument("--keep", metavar="WEB_CONFIG",
                         help="reuse the hash of a user in this web config file while it still matches")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "acl":
        print(SENTINEL_REQUIRED_ACL if args.sentinel else REQUIRED_ACL)
        return 0
    if args.command == "hash-passwords":
        return hash_passwords(args.keep)
    try:
        config = load_config(args.config)
        if args.command == "check" and args.instance:
            config = _only(config, args.instance)
    except ConfigError as exc:
        print(f"{PROG}: config error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, config.log_level.upper()), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command == "check":
        return run_check(config, as_json=args.json)
    return run_serve(config)


def hash_passwords(keep: str | None, stdin=None, out=None) -> int:
    """For the role: passwords come on stdin (never in arguments), hashes go to stdout. A user whose
    current hash still matches keeps it, so that re-running the role changes nothing."""
    import bcrypt

    try:
        users = json.load(stdin or sys.stdin)
        if not isinstance(users, dict) or not all(isinstance(v, str) and v for v in users.values()):
            raise ValueError("expected a JSON object of user names to non-empty passwords")
    except ValueError as exc:
        print(f"{PROG}: hash-passwords: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    current: dict[str, bytes] = {}
    if keep:
        from .web import load_web_config

        try:
            current = load_web_config(keep).users
        except ConfigError:
            current = {}            # missing or unusable: every user gets a new hash
    hashes = {}
    for user, password in users.items():
        secret = password.encode()
        if len(secret) > 72:
            print(f"{PROG}: hash-passwords: the password of '{user}' is longer than bcrypt's 72 bytes",
                  file=sys.stderr)
            return 2
        old = current.get(user)
        if old is not None and bcrypt.checkpw(secret, old):
            hashes[user] = old.decode()
        else:
            hashes[user] = bcrypt.hashpw(secret, bcrypt.gensalt(rounds=12)).decode()
    (out or sys.stdout).write(json.dumps(hashes) + "\n")
    return 0


def _only(config, names: list[str]):
    from dataclasses import replace

    sentinel = config.sentinel.name if config.sentinel is not None else None
    known = {instance.name for instance in config.instances} | ({sentinel} if sentinel else set())
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"{config.source}: --instance '{unknown[0]}' is not configured "
                          f"(configured: {', '.join(sorted(known))})")
    return replace(config, instances=tuple(i for i in config.instances if i.name in names),
                   sentinel=config.sentinel if sentinel in names else None)


def run_check(config, as_json: bool = False, out=None) -> int:
    from .service import Monitor

    out = out or sys.stdout
    logging.getLogger("redis_infra.health").setLevel(logging.ERROR)   # status changes are the output here
    monitor = Monitor(config)
    snapshot = monitor.run_once()
    status = snapshot.status
    code = STATUS_CODES.get(status, 2)
    if as_json:
        data = json.loads(snapshot.detail_body)
        data["exit_code"] = code
        out.write(json.dumps(data, indent=2) + "\n")
        return code
    summary = ", ".join(f"{result.name} {result.status}" for result in snapshot.results)
    perf = []
    for result in snapshot.results:
        for check in result.checks:
            if isinstance(check.value, int | float) and check.unit in ("ms", "%"):
                unit = check.unit
                thr = check.threshold or {}
                perf.append(f"{result.name}_{check.name}={check.value}{unit};"
                            f"{_num(thr.get('degraded'))};{_num(thr.get('unhealthy'))}")
    out.write(f"REDIS-HEALTH {NAGIOS_WORDS[code]} - {status}: {summary}" + (f" | {' '.join(perf)}" if perf else "")
              + "\n")
    for result in snapshot.results:
        for check in result.checks:
            marker = "" if check.status == HEALTHY else " <--"
            out.write(f"{result.name} {check.name}: {check.status} - {check.reason}{marker}\n")
    return code


def _num(value) -> str:
    return f"{value:g}" if isinstance(value, int | float) else ""


def run_serve(config) -> int:
    from .service import HealthServer, Monitor
    from .web import load_web_config
    from .webhook import WebhookNotifier

    log = logging.getLogger("redis_infra.health")
    try:
        web = load_web_config(config.web_config_file) if config.web_config_file else None
    except ConfigError as exc:
        print(f"{PROG}: config error: {exc}", file=sys.stderr)
        return 2
    addresses = config.listen_addresses or (config.listen_address,)
    monitor = Monitor(config)
    try:
        server = HealthServer((addresses[0], config.listen_port), monitor, config.http_max_connections, web=web,
                              request_timeout=config.http_request_timeout, addresses=addresses)
    except OSError as exc:
        where = ", ".join(f"[{host}]:{config.listen_port}" if ":" in host else f"{host}:{config.listen_port}"
                          for host in addresses)
        print(f"{PROG}: cannot listen on {where}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    notifier = WebhookNotifier(config.webhook).start() if config.webhook else None
    monitor.notifier = notifier

    def shutdown(signum, _frame):
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    monitor.start()
    port = server.server_address[1]
    security = ", ".join(item for item in (("TLS" if server.ssl_context else ""),
                                           (f"basic auth ({len(web.users)} user(s))" if server.auth else ""))
                         if item) or "no TLS, no authentication"
    log.info("serving on %s port %d (%s), checking %d instance(s) every %g s: %s", ", ".join(addresses), port,
             security, len(config.instances), config.interval,
             ", ".join(instance.name for instance in config.instances))
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        monitor.stop()
        if notifier:
            notifier.stop()
        server.server_close()
    return 0
