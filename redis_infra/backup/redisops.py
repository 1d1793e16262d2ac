"""What the backup tool asks of Redis: only the commands in REQUIRED_ACL.

Written against redis-py 4.3.4 (Debian 12) as well as current releases: plain `execute_command`,
`info`, `config_get`; no newer helpers. The tool never changes the server's config.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime

from . import CONFIG_GET_ACL, REQUIRED_ACL, BackupError, ExitCode

log = logging.getLogger("redis_infra.backup")


def _is_noperm(exc: Exception) -> bool:
    import redis

    text = str(exc)
    return isinstance(exc, redis.exceptions.NoPermissionError) or text.startswith("NOPERM") or \
        "no permissions" in text


def _redis_error(exc: Exception, where: str, address: str, username: str | None) -> BackupError:
    import redis

    user = username or "default"
    text = str(exc)
    if isinstance(exc, redis.exceptions.AuthenticationError) or text.startswith("WRONGPASS") or \
            "invalid username-password" in text or "NOAUTH" in text:
        return BackupError(ExitCode.REDIS, f"Redis at {address} refused authentication for user '{user}': {text} "
                                           f"(check the password in the connection file)")
    if _is_noperm(exc):
        return BackupError(ExitCode.REDIS, f"ACL user '{user}' may not {where} on {address}: {text} "
                                           f"(the backup user needs: {REQUIRED_ACL}; and {CONFIG_GET_ACL} "
                                           f"when the tool's config leaves out a path)")
    if isinstance(exc, redis.exceptions.TimeoutError):
        return BackupError(ExitCode.REDIS, f"Redis at {address} timed out during {where}: {text}")
    if isinstance(exc, redis.exceptions.ConnectionError):
        return BackupError(ExitCode.REDIS, f"cannot connect to Redis at {address}: {text}")
    return BackupError(ExitCode.REDIS, f"Redis at {address} answered {where} with an error: {text}")


@dataclass
class ServerFacts:
    data_dir: str
    dbfilename: str
    aof_enabled: bool
    appenddirname: str | None
    appendfilename: str
    keys: int
    version: str
    server_name: str


class RedisSession:
    """A client plus error mapping: every Redis error becomes a BackupError with exit code 3 or 8."""

    def __init__(self, settings, timeout: float):
        self.settings = settings
        self.address = settings.unix_socket if settings.unix_socket and os.access(
            settings.unix_socket, os.R_OK | os.W_OK) else settings.address
        try:
            self.client = settings.client(timeout=timeout)
        except ImportError:
            raise BackupError(ExitCode.CONFIG, "the Python package redis (redis-py) is not installed "
                                               "(Debian: apt install python3-redis)") from None
        if hasattr(self.client, "set_retry"):
            # redis-py >= 5 retries 3 times with up to 10 s backoff by default (4.3.4 does not retry):
            # one quick retry keeps a run robust against a blip and quick to report a down server.
            from redis.backoff import ConstantBackoff
            from redis.retry import Retry

            self.client.set_retry(Retry(ConstantBackoff(0.2), 1))

    def call(self, where: str, func, *args, **kwargs):
        import redis

        try:
            return func(*args, **kwargs)
        except redis.exceptions.RedisError as exc:
            raise _redis_error(exc, where, self.address, self.settings.username) from None

    def command(self, *args):
        return self.call(args[0].lower() if len(args) == 1 else f"{args[0]} {args[1]}".lower(),
                         self.client.execute_command, *args)

    def info(self, section: str) -> dict:
        return self.call(f"run INFO {section}", self.client.info, section)

    def config_get(self, name: str, key: str | None = None) -> str | None:
        """CONFIG GET name; refused for lack of +config|get, the error names the config key that spares it."""
        import redis

        try:
            value = self.client.config_get(name)
        except redis.exceptions.RedisError as exc:
            error = _redis_error(exc, f"run CONFIG GET {name}", self.address, self.settings.username)
            if key and _is_noperm(exc):
                error = BackupError(error.code, f"{error} Set {key} in the tool's config (the role writes it), "
                                                f"or give the user {CONFIG_GET_ACL}.")
            raise error from None
        return value.get(name) if isinstance(value, dict) else None

    def config_get_if_allowed(self, name: str) -> tuple[bool, str | None]:
        """(False, None) when the user may not CONFIG GET, else (True, value)."""
        import redis

        try:
            value = self.client.config_get(name)
        except redis.exceptions.RedisError as exc:
            if _is_noperm(exc):
                return False, None
            raise _redis_error(exc, f"run CONFIG GET {name}", self.address, self.settings.username) from None
        return True, value.get(name) if isinstance(value, dict) else None

    def lastsave(self) -> int:
        value = self.call("run LASTSAVE", self.client.execute_command, "LASTSAVE")
        if isinstance(value, datetime):       # redis-py converts it to a naive local datetime
            return int(value.timestamp())
        return int(value)

    def close(self) -> None:
        with contextlib.suppress(Exception):   # closing is best effort
            self.client.close()

    # --- facts -------------------------------------------------------------------------------

    def ping(self) -> None:
        self.call("run PING", self.client.ping)

    def facts(self, cfg) -> ServerFacts:
        """What a backup needs to know; the paths from the config, CONFIG GET only for those it leaves out."""
        server = self.info("server")
        persistence = self.info("persistence")
        keyspace = self.info("keyspace")
        keys = 0
        for name, value in keyspace.items():
            if name.startswith("db") and isinstance(value, dict):
                keys += int(value.get("keys", 0))
        aof_enabled = bool(int(persistence.get("aof_enabled", 0)))

        def path(key: str, directive: str, default: str | None = None) -> str | None:
            configured = getattr(cfg, key)
            if configured is not None:
                return configured
            return self.config_get(directive, key) or default

        return ServerFacts(
            data_dir=path("data_dir", "dir", ""),
            dbfilename=path("dbfilename", "dbfilename", "dump.rdb"),
            aof_enabled=aof_enabled,
            appenddirname=path("appenddirname", "appenddirname") if aof_enabled else None,
            appendfilename=(path("appendfilename", "appendfilename", "appendonly.aof") if aof_enabled
                            else "appendonly.aof"),
            keys=keys,
            version=str(server.get("valkey_version") or server.get("redis_version", "?")),
            server_name=str(server.get("server_name") or "redis"))

    # --- BGSAVE ------------------------------------------------------------------------------

    def bgsave_and_wait(self, timeout: float, poll: float = 0.1) -> dict:
        """Start a BGSAVE (or schedule one) and wait until it has finished successfully.

        Done when INFO persistence shows no save in progress, a save started after our request has
        finished (`rdb_saves` advanced; on servers without it, LASTSAVE advanced) and
        `rdb_last_bgsave_status:ok`.
        """
        deadline = time.monotonic() + timeout
        while True:
            before = self.info("persistence")
            saves_before = before.get("rdb_saves")
            lastsave_before = self.lastsave()
            reply = self._bgsave_once()
            if reply is not None:
                break
            # Another save is running: let it finish, then ask for ours (it would miss newer writes).
            log.info("a background save is already in progress; waiting for it before starting ours")
            self._wait(deadline, timeout, lambda info: int(info.get("rdb_bgsave_in_progress", 0)) == 0,
                       "the running background save", poll)
        log.info("BGSAVE: %s (LASTSAVE was %d)", reply, lastsave_before)
        seen_running = False

        def finished(info: dict) -> bool:
            nonlocal seen_running
            if int(info.get("rdb_bgsave_in_progress", 0)):
                seen_running = True
                return False
            if saves_before is not None:
                advanced = int(info.get("rdb_saves", 0)) > int(saves_before)
            else:
                advanced = self.lastsave() > lastsave_before or (
                    seen_running and info.get("rdb_last_bgsave_status") != "ok")
            return advanced

        info = self._wait(deadline, timeout, finished, "BGSAVE", poll)
        if info.get("rdb_last_bgsave_status") != "ok":
            raise BackupError(ExitCode.SNAPSHOT, f"BGSAVE failed on {self.address}: rdb_last_bgsave_status:"
                                                 f"{info.get('rdb_last_bgsave_status')} (see the Redis log; "
                                                 f"is the data directory full or not writable?)")
        return info

    def _bgsave_once(self) -> str | None:
        """Reply of BGSAVE (or BGSAVE SCHEDULE); None when a save is already in progress."""
        import redis

        try:
            reply = self.client.execute_command("BGSAVE")
        except redis.exceptions.ResponseError as exc:
            text = str(exc)
            if "already in progress" in text:
                return None
            if "SCHEDULE" in text or "Another child process is active" in text or "AOF" in text:
                log.info("an AOF rewrite or other child is running; using BGSAVE SCHEDULE")
                reply = self.call("run BGSAVE SCHEDULE", self.client.execute_command, "BGSAVE", "SCHEDULE")
            else:
                raise _redis_error(exc, "run BGSAVE", self.address, self.settings.username) from None
        except redis.exceptions.RedisError as exc:
            raise _redis_error(exc, "run BGSAVE", self.address, self.settings.username) from None
        return str(reply) if reply is not True else "Background saving started"

    def _wait(self, deadline: float, timeout: float, done, what: str, poll: float) -> dict:
        delay = poll
        while True:
            info = self.info("persistence")
            if done(info):
                return info
            if time.monotonic() >= deadline:
                raise BackupError(ExitCode.SNAPSHOT, f"timed out after {timeout:g}s waiting for {what} on "
                                                     f"{self.address} (timeouts.bgsave)")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
