"""Before a Sentinel-managed instance starts: follow the primary a majority of the Sentinels names.

In Sentinel mode the instance's config file holds no `replicaof` (Sentinel moves the primary at
runtime, and Ansible owns the file), so an instance started by anything (a crash and systemd's
restart, a reboot, `systemctl restart`) would come up as a master serving stale data until Sentinel
converts it. The unit runs this first (`ExecStartPre=+redis-infra-follow <config>`): it asks every
Sentinel of the group for the primary and writes the include file the config file reads, either
`replicaof <address> <port>` or nothing when this instance is the primary itself.

Decisions, from the Sentinels' answers only (docs/ha.md, "A restarted instance"):
- a majority of the configured Sentinels names one address: follow it (or be the primary when it is
  this instance's own address);
- no majority within `wait` seconds (Sentinels down or still starting, not yet told about the
  instance, split, wrong password): no replicaof either. The instance comes up a master without
  replicas, which min-replicas-to-write keeps from taking writes, until Sentinel or the next converge
  makes it a replica. Following the primary of an earlier start instead could make it copy a stale
  primary over newer data (after a failover since then, or every host restarted at once); the
  journal says which it was.

The config file (TOML, written by the redis_server role, root only since it holds the Sentinels'
password):

    name = "main"                      # the instance, as Sentinel monitors it
    address = "10.0.0.2"               # the address this instance announces (replica-announce-ip)
    port = 6379
    include_file = "/etc/redis/replicaof-main.conf"
    group = "redis"                    # the server's group: it reads the include file
    wait = 5.0                         # seconds to wait for a majority
    tls = true                         # optional: the Sentinels serve TLS only
    tls_ca_file = "/etc/redis-infra/tls/ca.crt"          # optional, and the three below: as in a
    tls_cert_file = "/etc/redis-infra/tls/server.crt"    # connection file (redis_infra/connection.py),
    tls_key_file = "/etc/redis-infra/tls/server.key"     # for every Sentinel of the file
    tls_check_hostname = true
    [[sentinels]]
    host = "10.0.0.1"
    port = 26379
    password = "..."                   # optional

Exit status: 0 when the include file says what was decided; 2 for a bad config file; 1 when the
include file cannot be written (the unit does not start then: an old file could name a stale primary).
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import os
import stat
import sys
import tempfile
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field

from .connection import TLS_FIELDS, ConnectionSettings, TLSFilesError, check_tls, read_private

HEADER = ("# Managed by redis-infra: the primary this instance follows when it starts. Written by\n"
          "# redis-infra-follow from the Sentinels' majority before each start.\n"
          "# No replicaof: this is the primary, or no majority answered.\n")


class FollowConfigError(Exception):
    """The config file is missing, unreadable or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Sentinel:
    host: str
    port: int = 26379
    password: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class FollowConfig:
    name: str
    address: str
    port: int
    include_file: str
    group: str
    wait: float = 5.0
    sentinels: tuple[Sentinel, ...] = field(default_factory=tuple)
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_check_hostname: bool = True

    def connection(self, sentinel: Sentinel) -> ConnectionSettings:
        """How to reach one Sentinel: its address and password, with the file's TLS settings."""
        return ConnectionSettings(name=self.name, host=sentinel.host, port=sentinel.port, password=sentinel.password,
                                  **{key: getattr(self, key) for key in TLS_FIELDS})


@dataclass(frozen=True)
class Decision:
    """primary: (address, port) a majority names, or None when there is no majority."""
    primary: tuple[str, int] | None
    votes: int
    needed: int

    def follows(self, config: FollowConfig) -> tuple[str, int] | None:
        """The primary this instance replicates from; None when it is the primary (or undecided)."""
        if self.primary is None or self.primary == (config.address, config.port):
            return None
        return self.primary


def decide(answers: list[tuple[str, int] | None], total: int) -> Decision:
    """The primary a majority of `total` Sentinels names; answers holds one entry per Sentinel that
    was asked (None: no answer, an error, or no master of that name)."""
    needed = total // 2 + 1
    votes = Counter(answer for answer in answers if answer is not None)
    if votes:
        primary, count = votes.most_common(1)[0]
        if count >= needed:
            return Decision(primary, count, needed)
    return Decision(None, max(votes.values(), default=0), needed)


def render(primary: tuple[str, int] | None) -> str:
    return HEADER + (f"replicaof {primary[0]} {primary[1]}\n" if primary else "")


_REQUIRED = {"name": str, "address": str, "port": int, "include_file": str, "group": str}


def _check(data: dict, key: str, kind: type, source: str, required: bool = True):
    if key not in data:
        if required:
            raise FollowConfigError(f"{source}: field '{key}' is required")
        return None
    value = data[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FollowConfigError(f"{source}: field '{key}' must be {kind.__name__}, got {type(value).__name__}")
    return value


def parse(text: str, source: str = "<string>") -> FollowConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FollowConfigError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_REQUIRED) - set(TLS_FIELDS) - {"wait", "sentinels"})
    if unknown:
        raise FollowConfigError(f"{source}: unknown field(s) {', '.join(unknown)}")
    values = {key: _check(data, key, kind, source) for key, kind in _REQUIRED.items()}
    tls = {key: _check(data, key, kind, source, required=False) for key, kind in TLS_FIELDS.items() if key in data}
    check_tls(data, source, FollowConfigError)
    wait = _check(data, "wait", float, source, required=False)
    if wait is not None and not 0 <= wait <= 300:
        raise FollowConfigError(f"{source}: field 'wait' must be 0-300 seconds, got {wait}")
    raw_sentinels = data.get("sentinels")
    if not isinstance(raw_sentinels, list) or not raw_sentinels:
        raise FollowConfigError(f"{source}: 'sentinels' must list at least one [[sentinels]] table")
    sentinels = []
    for index, raw in enumerate(raw_sentinels):
        where = f"{source}: sentinels[{index}]"
        if not isinstance(raw, dict):
            raise FollowConfigError(f"{where} must be a table")
        extra = sorted(set(raw) - {"host", "port", "password"})
        if extra:
            raise FollowConfigError(f"{where}: unknown field(s) {', '.join(extra)}")
        port = _check(raw, "port", int, where, required=False)
        sentinels.append(Sentinel(host=_check(raw, "host", str, where),
                                  port=26379 if port is None else port,
                                  password=_check(raw, "password", str, where, required=False) or None))
    for port in [values["port"]] + [s.port for s in sentinels]:
        if not 1 <= port <= 65535:
            raise FollowConfigError(f"{source}: port {port} is not 1-65535")
    return FollowConfig(**values, wait=5.0 if wait is None else wait, sentinels=tuple(sentinels), **tls)


def load(path: str) -> FollowConfig:
    """Read the config file; it holds the Sentinels' password, so nobody but its owner may read it."""
    text, mode = read_private(path, FollowConfigError, "the follow config")
    config = parse(text, path)
    if any(s.password for s in config.sentinels) and mode & (stat.S_IRGRP | stat.S_IROTH):
        raise FollowConfigError(f"{path}: holds a password but others can read it; chmod 0600")
    if config.tls:
        try:
            config.connection(config.sentinels[0]).ssl_context()
        except TLSFilesError as exc:  # redis-py would say "Error 2 connecting to ..." for every Sentinel
            raise FollowConfigError(f"{path}: {exc}") from None
    return config


def ask(sentinel: ConnectionSettings, name: str, timeout: float) -> tuple[tuple[str, int] | None, str]:
    """One Sentinel's answer for the instance `name`, and what to say about it in the journal."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries (redis-py >= 5 retries with backoff by default): the poll loop asks again itself.
    client = sentinel.client(timeout, prefer_socket=False, retry=Retry(NoBackoff(), 0), retry_on_error=[])
    try:
        reply = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
    except redis.RedisError as exc:
        # The exception's text names the server's reply (WRONGPASS, connection refused, the certificate
        # that was not accepted), never the password.
        return None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:240]}"
    finally:
        client.close()
    if not reply or len(reply) != 2:
        return None, f"does not monitor {name!r}"
    try:
        return (str(reply[0]), int(reply[1])), f"{reply[0]}:{reply[1]}"
    except (TypeError, ValueError):
        return None, f"unexpected reply {reply!r}"


def poll(config: FollowConfig, timeout: float = 1.0, sleep=time.sleep, clock=time.monotonic):
    """Ask every Sentinel until a majority names a primary or `wait` runs out; the decision and the
    last answer of each Sentinel."""
    end = clock() + config.wait
    while True:
        results = [ask(config.connection(sentinel), config.name, timeout) for sentinel in config.sentinels]
        decision = decide([answer for answer, _ in results], len(config.sentinels))
        if decision.primary is not None or clock() >= end:
            return decision, {s.address: said for s, (_, said) in zip(config.sentinels, results, strict=True)}
        sleep(0.5)


def write(config: FollowConfig, text: str) -> bool:
    """Write the include file atomically (root:<group> 0640); False when it already says this."""
    try:
        with open(config.include_file, encoding="utf-8") as handle:
            if handle.read() == text:
                return False
    except FileNotFoundError:
        pass
    gid = grp.getgrnam(config.group).gr_gid
    directory = os.path.dirname(config.include_file) or "."
    fd, temporary = tempfile.mkstemp(prefix=".replicaof-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o640)
        os.chown(temporary, 0, gid)
        os.replace(temporary, config.include_file)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return True


def run(path: str) -> int:
    try:
        config = load(path)
    except FollowConfigError as exc:
        print(f"redis-infra-follow: {exc}", file=sys.stderr)
        return 2
    decision, said = poll(config)
    heard = "; ".join(f"{address}: {answer}" for address, answer in said.items())
    primary = decision.follows(config)
    try:
        changed = write(config, render(primary))
    except (OSError, KeyError) as exc:
        print(f"redis-infra-follow: {config.name}: cannot write {config.include_file}: {exc}; not starting, "
              f"since the file may contradict the Sentinels", file=sys.stderr)
        return 1
    again = "" if changed else ", as before"
    if decision.primary is None:
        print(f"redis-infra-follow: {config.name}: no majority of the {len(config.sentinels)} Sentinels "
              f"({decision.needed} needed) named a primary within {config.wait:g} s, so it starts as a master "
              f"without replicas (min-replicas-to-write refuses writes) until Sentinel or the next converge "
              f"makes it a replica{again}. Sentinels: {heard}", file=sys.stderr)
        return 0
    role = f"replica of {primary[0]}:{primary[1]}" if primary else "the primary"
    print(f"redis-infra-follow: {config.name}: starts as {role} ({decision.votes} of {len(config.sentinels)} "
          f"Sentinels){again}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="redis-infra-follow", description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("config", help="the instance's follow config (TOML)")
    return run(parser.parse_args(argv).config)


if __name__ == "__main__":
    sys.exit(main())
