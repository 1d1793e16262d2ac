"""The backup tool's config file: TOML, one file per instance.

Every problem raises ConfigError with a one-line message that names the file and the key.
The full format is documented in docs/backup.md.
"""

from __future__ import annotations

import os
import re
import shutil
import tomllib
from dataclasses import dataclass, field

from . import BackupError, ExitCode

INSTANCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
REMOTE_RE = re.compile(r"^(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9._-]+:")


class ConfigError(BackupError):
    def __init__(self, message: str):
        super().__init__(ExitCode.CONFIG, message)


@dataclass(frozen=True)
class Retention:
    keep_last: int = 7
    keep_daily_days: int = 14


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0          # socket connect/read timeout for Redis commands
    bgsave: float = 3600.0         # waiting for BGSAVE to finish
    aof_rewrite: float = 600.0     # at most this long retrying while AOF rewrites change the manifest
    lock_wait: float = 0.0         # waiting for the lock held by another run (0: fail at once)
    check: float = 3600.0          # each redis-check-rdb / redis-check-aof run
    offsite: float = 3600.0        # each rsync/ssh command of the off-host copy


@dataclass(frozen=True)
class Offsite:
    mode: str                      # "rsync" or "copy"
    destination: str               # rsync: "[user@]host:/path" or a local directory; copy: a local directory
    ssh_identity: str | None = None
    ssh_known_hosts: str | None = None
    ssh_port: int | None = None
    rsync: str = "rsync"
    ssh: str = "ssh"
    remote_sha256sum: str = "sha256sum"

    @property
    def is_remote(self) -> bool:
        return self.mode == "rsync" and not self.destination.startswith("/") and bool(
            REMOTE_RE.match(self.destination))


@dataclass(frozen=True)
class BackupConfig:
    source: str
    instance: str
    connection_file: str
    backup_dir: str
    status_file: str
    lock_file: str
    data_dir: str | None = None
    dbfilename: str | None = None
    appenddirname: str | None = None   # None: asked with CONFIG GET (the backup user then needs +config|get)
    appendfilename: str | None = None
    aof: str = "auto"              # "auto": copy the AOF directory when the server has appendonly yes; "off"
    space_check: bool = True       # refuse to start without room for the worst case (2x RDB + 2x AOF)
    compression_level: int = 6
    check_rdb: str | None = None
    check_aof: str | None = None
    retention: Retention = field(default_factory=Retention)
    timeouts: Timeouts = field(default_factory=Timeouts)
    offsite: Offsite | None = None
    backup_group: str | int | None = None   # group of the files written (name or gid); None: backup_dir's

    def tool(self, kind: str) -> str:
        """Path of redis-check-rdb/-aof (or the valkey one); ConfigError naming the key when absent."""
        configured = self.check_rdb if kind == "rdb" else self.check_aof
        key = f"tools.check_{kind}"
        if configured:
            if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
                raise ConfigError(f"{self.source}: {key}: {configured} is not an executable file")
            return configured
        for name in (f"redis-check-{kind}", f"valkey-check-{kind}"):
            found = shutil.which(name)
            if found:
                return found
        raise ConfigError(f"{self.source}: {key}: neither redis-check-{kind} nor valkey-check-{kind} is in PATH; "
                          f"set {key}")


_TOP = {"instance", "connection_file", "backup_dir", "status_file", "lock_file", "data_dir", "dbfilename",
        "appenddirname", "appendfilename", "aof", "space_check", "backup_group", "retention", "compression",
        "tools", "timeouts", "offsite"}
# Only root can create this directory (the tool does, mode 0700): a lock in a world-writable
# directory such as /run/lock could be pre-created by any local user to stop every backup and restore.
LOCK_DIR = "/run/redis-infra-backup"
_SECTIONS = {
    "retention": {"keep_last", "keep_daily_days"},
    "compression": {"level"},
    "tools": {"check_rdb", "check_aof"},
    "timeouts": {"connect", "bgsave", "aof_rewrite", "lock_wait", "check", "offsite"},
    "offsite": {"mode", "destination", "ssh_identity", "ssh_known_hosts", "ssh_port", "rsync", "ssh",
                "remote_sha256sum"},
}


class _Reader:
    def __init__(self, source: str, data: dict):
        self.source = source
        self.data = data

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {message}")

    def section(self, name: str) -> dict:
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise self.fail(name, f"must be a table ([{name}]), got {type(value).__name__}")
        unknown = sorted(set(value) - _SECTIONS[name])
        if unknown:
            raise self.fail(f"{name}.{unknown[0]}", f"unknown key; allowed in [{name}]: "
                            f"{', '.join(sorted(_SECTIONS[name]))}")
        return value

    def string(self, table: dict, key: str, name: str, required: bool = False, path: bool = False,
               default: str | None = None) -> str | None:
        if key not in table:
            if required:
                raise self.fail(name, "is required")
            return default
        value = table[key]
        if not isinstance(value, str) or not value:
            raise self.fail(name, f"must be a non-empty string, got {value!r}")
        if path and not os.path.isabs(value):
            raise self.fail(name, f"must be an absolute path, got {value!r}")
        return value

    def integer(self, table: dict, key: str, name: str, default: int, low: int, high: int | None = None) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            bounds = f"{low}..{high}" if high is not None else f">= {low}"
            raise self.fail(name, f"must be an integer {bounds}, got {value!r}")
        return value

    def number(self, table: dict, key: str, name: str, default: float, low: float = 0.0,
               allow_zero: bool = False) -> float:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < low or (
                value == 0 and not allow_zero):
            raise self.fail(name, f"must be a number {'>=' if allow_zero else '>'} 0 (seconds), got {value!r}")
        return float(value)


def parse(text: str, source: str = "<string>") -> BackupConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    reader = _Reader(source, data)
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise reader.fail(unknown[0], f"unknown key; allowed: {', '.join(sorted(_TOP))}")

    instance = reader.string(data, "instance", "instance", required=True)
    if not INSTANCE_RE.match(instance):
        raise reader.fail("instance", f"must match {INSTANCE_RE.pattern}, got {instance!r}")
    connection_file = reader.string(data, "connection_file", "connection_file", required=True, path=True)
    backup_dir = reader.string(data, "backup_dir", "backup_dir", required=True, path=True)
    status_file = reader.string(data, "status_file", "status_file", required=True, path=True)
    lock_file = reader.string(data, "lock_file", "lock_file", path=True,
                              default=f"{LOCK_DIR}/{instance}.lock")
    data_dir = reader.string(data, "data_dir", "data_dir", path=True)
    names = {key: reader.string(data, key, key) for key in ("dbfilename", "appenddirname", "appendfilename")}
    for key, name in names.items():
        if name is not None and ("/" in name or name in ("", ".", "..")):
            raise reader.fail(key, f"must be a file name without '/', got {name!r}")
    backup_group = data.get("backup_group")
    if backup_group is not None and (isinstance(backup_group, bool) or not (
            (isinstance(backup_group, str) and backup_group) or (isinstance(backup_group, int) and backup_group >= 0))):
        raise reader.fail("backup_group", f"must be a group name or a gid >= 0, got {backup_group!r}")
    aof = data.get("aof", "auto")
    if aof not in ("auto", "off"):
        raise reader.fail("aof", f"must be \"auto\" or \"off\", got {aof!r}")

    space_check = data.get("space_check", True)
    if not isinstance(space_check, bool):
        raise reader.fail("space_check", f"must be true or false, got {space_check!r}")

    retention_table = reader.section("retention")
    retention = Retention(
        keep_last=reader.integer(retention_table, "keep_last", "retention.keep_last", 7, 1),
        keep_daily_days=reader.integer(retention_table, "keep_daily_days", "retention.keep_daily_days", 14, 0))
    compression = reader.section("compression")
    level = reader.integer(compression, "level", "compression.level", 6, 0, 9)
    tools = reader.section("tools")
    check_rdb = reader.string(tools, "check_rdb", "tools.check_rdb", path=True)
    check_aof = reader.string(tools, "check_aof", "tools.check_aof", path=True)
    timeouts_table = reader.section("timeouts")
    defaults = Timeouts()
    timeouts = Timeouts(**{
        key: reader.number(timeouts_table, key, f"timeouts.{key}", getattr(defaults, key),
                           allow_zero=(key == "lock_wait"))
        for key in _SECTIONS["timeouts"]})

    offsite = None
    if "offsite" in data:
        table = reader.section("offsite")
        mode = table.get("mode", "rsync")
        if mode not in ("rsync", "copy"):
            raise reader.fail("offsite.mode", f"must be \"rsync\" or \"copy\", got {mode!r}")
        destination = reader.string(table, "destination", "offsite.destination", required=True)
        ssh_port = None
        if "ssh_port" in table:
            ssh_port = reader.integer(table, "ssh_port", "offsite.ssh_port", 22, 1, 65535)
        offsite = Offsite(
            mode=mode, destination=destination,
            ssh_identity=reader.string(table, "ssh_identity", "offsite.ssh_identity", path=True),
            ssh_known_hosts=reader.string(table, "ssh_known_hosts", "offsite.ssh_known_hosts", path=True),
            ssh_port=ssh_port,
            rsync=reader.string(table, "rsync", "offsite.rsync", default="rsync"),
            ssh=reader.string(table, "ssh", "offsite.ssh", default="ssh"),
            remote_sha256sum=reader.string(table, "remote_sha256sum", "offsite.remote_sha256sum",
                                           default="sha256sum"))
        if offsite.is_remote:
            if not offsite.ssh_identity:
                raise reader.fail("offsite.ssh_identity", f"is required for the remote destination {destination!r}")
            remote_path = destination.split(":", 1)[1]
            if not remote_path.startswith("/"):
                raise reader.fail("offsite.destination", f"remote path must be absolute (host:/path), "
                                  f"got {destination!r}")
        elif not destination.startswith("/"):
            raise reader.fail("offsite.destination", "must be an absolute local path"
                              + (" or [user@]host:/path" if mode == "rsync" else "") + f", got {destination!r}")
        if os.path.realpath(destination) == os.path.realpath(backup_dir):
            raise reader.fail("offsite.destination", "must not be the backup directory itself")

    return BackupConfig(
        source=source, instance=instance, connection_file=connection_file, backup_dir=backup_dir,
        status_file=status_file, lock_file=lock_file, data_dir=data_dir, dbfilename=names["dbfilename"],
        appenddirname=names["appenddirname"], appendfilename=names["appendfilename"], aof=aof,
        space_check=space_check, backup_group=backup_group,
        compression_level=level, check_rdb=check_rdb, check_aof=check_aof, retention=retention,
        timeouts=timeouts, offsite=offsite)


def load(path: str) -> BackupConfig:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse(text, path)
