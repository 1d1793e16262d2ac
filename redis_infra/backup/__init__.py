"""Backup tool for one Redis/Valkey instance: `python3 -m redis_infra.backup`.

It takes an RDB snapshot with BGSAVE (and, when AOF is on, a consistent copy of the files the
multi-part AOF manifest names), checks it with redis-check-rdb / redis-check-aof, compresses it,
writes a SHA-256 sidecar, applies retention, optionally copies it off the host, and writes a JSON
status file for the health checker. See docs/backup.md.

The package must import without redis-py installed: only `run` needs it.
"""

from __future__ import annotations

from enum import IntEnum

# The ACL rules of the backup user: exactly what `run` needs, and no key or channel access.
# The Ansible role builds the user from this string, e.g.
#   ACL SETUSER backup reset on >PASSWORD <REQUIRED_ACL>
# or the config line `user backup on >PASSWORD <REQUIRED_ACL>`.
# `+hello +auth` let clients connect with RESP3/HELLO or AUTH. No `+config|set`: the tool never changes
# the server's config (the AOF copy stays consistent through open file descriptors, see source.py), and
# a user with CONFIG SET could evict every key (maxmemory 1), set requirepass or turn persistence off.
# No `+config|get` either: it reads every setting, masterauth and the TLS key passphrase included. The
# config file names the paths (data_dir, dbfilename, appenddirname, appendfilename; the role writes
# them); only a config that leaves one out needs `+config|get` (CONFIG_GET_ACL) to ask the server.
REQUIRED_ACL_COMMANDS = ("ping", "info", "bgsave", "lastsave", "hello", "auth")
REQUIRED_ACL = " ".join(f"+{command}" for command in REQUIRED_ACL_COMMANDS)
CONFIG_GET_ACL = "+config|get"
# The config keys that spare the backup user CONFIG GET.
PATH_KEYS = ("data_dir", "dbfilename", "appenddirname", "appendfilename")


class ExitCode(IntEnum):
    """Exit codes of every subcommand; documented in docs/backup.md."""

    OK = 0
    INTERNAL = 1          # unexpected error (a bug) or interrupted by a signal
    CONFIG = 2            # bad command line, config file, connection file or tool path
    REDIS = 3             # Redis unreachable, authentication refused, or ACL denies a needed command
    BACKUP_DIR = 4        # backup directory (or lock/status/destination path) missing or not writable
    WRITE = 5             # disk full or I/O error while writing
    VERIFY = 6            # verification failed: checksum mismatch, redis-check-rdb or redis-check-aof
    LOCKED = 7            # another run holds the lock
    SNAPSHOT = 8          # Redis could not produce the snapshot: BGSAVE failed/timed out, RDB unreadable
    OFFSITE = 9           # off-host copy failed (the local backup was kept; retention skipped)
    NOT_FOUND = 10        # no (valid) backup matches


class BackupError(Exception):
    """A failure with the exit code it maps to; the message is meant for the operator."""

    def __init__(self, code: ExitCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


__all__ = ["CONFIG_GET_ACL", "PATH_KEYS", "REQUIRED_ACL", "REQUIRED_ACL_COMMANDS", "BackupError", "ExitCode"]
