"""The maintenance config file of one instance (TOML, written by the redis_maintenance role):

    instance = "main"
    connection_file = "/etc/redis-infra/connections/main-admin.toml"   # the user the routine runs as
    report_dir = "/var/lib/redis-infra/maintenance/main"               # report.json and report.md
    status_file = "/var/lib/redis-infra/maintenance/main.json"         # read by the health checker
    backup_config = "/etc/redis-infra/backup/main.toml"                # optional: the drill's backups
    server = "/usr/bin/redis-server"                                   # optional: the drill's scratch server
    slow_ms = 100                                                      # the guide's slow-query threshold
    latency_threshold_ms = 100    # optional: the instance's latency-monitor-threshold (else CONFIG GET)

    [slowlog]
    top = 10

    [keys]
    sample = 10000        # keys read at most per run
    scan_count = 100      # SCAN's COUNT: keys per round trip
    pause_ms = 10         # sleep after each batch (throttle)
    on_primary = false    # sample a primary that has replicas (normally the replicas do it)
    big_keys = 10

    [keys.expected_ttl]   # prefix -> longest TTL its keys should have, seconds
    "session" = 86400

    [drill]
    sample = 200          # keys compared value by value with the source
    timeout = 600         # seconds for the scratch server to load the backup
    max_key_drift = 1.0   # % difference allowed between the restored and the recorded key count
    scratch_dir = ""      # where the backup is unpacked (default: the backup directory)
    scratch_user = ""     # the account the scratch server runs as when the tool runs as root
"""

from __future__ import annotations

import os
import shutil
import tomllib
from dataclasses import dataclass, field

from . import MaintenanceError

# The guide's TTLs: AI responses 1 hour, sessions 24 hours, rate limits 15 minutes.
GUIDE_TTLS = {"cache:ai": 3600, "session": 86400, "ratelimit": 900}


@dataclass(frozen=True)
class KeysConfig:
    sample: int = 10000
    scan_count: int = 100
    pause_ms: float = 10.0
    on_primary: bool = False
    big_keys: int = 10
    expected_ttl: dict = field(default_factory=lambda: dict(GUIDE_TTLS))


@dataclass(frozen=True)
class DrillConfig:
    sample: int = 200
    timeout: float = 600.0
    max_key_drift: float = 1.0
    scratch_dir: str = ""
    scratch_user: str = ""


@dataclass(frozen=True)
class MaintenanceConfig:
    source: str
    instance: str
    connection_file: str
    report_dir: str | None = None
    status_file: str | None = None
    backup_config: str | None = None
    server: str | None = None
    slow_ms: float = 100.0
    latency_threshold_ms: int | None = None
    slowlog_top: int = 10
    keys: KeysConfig = field(default_factory=KeysConfig)
    drill: DrillConfig = field(default_factory=DrillConfig)

    def server_binary(self, check_rdb: str | None = None) -> str:
        """The redis-server (or valkey-server) that loads backups: configured, beside the backup's
        redis-check-rdb, or in PATH; MaintenanceError naming `server` when there is none."""
        candidates = [self.server] if self.server else []
        if check_rdb:
            candidates.append(check_rdb.replace("-check-rdb", "-server"))
        candidates += [shutil.which("redis-server"), shutil.which("valkey-server")]
        for path in candidates:
            if path and os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        raise MaintenanceError(f"{self.source}: server: no redis-server or valkey-server found; set server")


_TOP = {"instance": str, "connection_file": str, "report_dir": str, "status_file": str, "backup_config": str,
        "server": str, "slow_ms": (int, float), "latency_threshold_ms": int, "slowlog": dict, "keys": dict,
        "drill": dict}
_SLOWLOG = {"top": int}
_KEYS = {"sample": int, "scan_count": int, "pause_ms": (int, float), "on_primary": bool, "big_keys": int,
         "expected_ttl": dict}
_DRILL = {"sample": int, "timeout": (int, float), "max_key_drift": (int, float), "scratch_dir": str,
          "scratch_user": str}


def _check(table: dict, allowed: dict, where: str, source: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise MaintenanceError(f"{source}: unknown key(s) {', '.join(where + k for k in unknown)}; "
                               f"allowed: {', '.join(where + k for k in allowed)}")
    for key, kind in allowed.items():
        value = table.get(key)
        if value is None:
            continue
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "number"
            raise MaintenanceError(f"{source}: {where}{key} must be {names}, got {type(value).__name__}")
        if kind is not bool and kind is not dict and kind is not str and value < 0:
            raise MaintenanceError(f"{source}: {where}{key} must not be negative, got {value}")


def parse(text: str, source: str = "<string>") -> MaintenanceConfig:
    """Parse config text; MaintenanceError names the source and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MaintenanceError(f"{source}: not valid TOML: {exc}") from None
    _check(data, _TOP, "", source)
    for key in ("instance", "connection_file"):
        if not data.get(key):
            raise MaintenanceError(f"{source}: {key} is required")
    slowlog, keys, drill = data.get("slowlog", {}), data.get("keys", {}), data.get("drill", {})
    _check(slowlog, _SLOWLOG, "slowlog.", source)
    _check(keys, _KEYS, "keys.", source)
    _check(drill, _DRILL, "drill.", source)
    expected = keys.get("expected_ttl", GUIDE_TTLS)
    for prefix, seconds in expected.items():
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
            raise MaintenanceError(f"{source}: keys.expected_ttl.{prefix} must be a positive number of seconds, "
                                   f"got {seconds!r}")
    for key, low in (("sample", 1), ("scan_count", 1)):
        if key in keys and keys[key] < low:
            raise MaintenanceError(f"{source}: keys.{key} must be at least {low}")
    if "timeout" in drill and drill["timeout"] <= 0:
        raise MaintenanceError(f"{source}: drill.timeout must be positive")
    return MaintenanceConfig(
        source=source, instance=data["instance"], connection_file=data["connection_file"],
        report_dir=data.get("report_dir") or None, status_file=data.get("status_file") or None,
        backup_config=data.get("backup_config") or None, server=data.get("server") or None,
        slow_ms=float(data.get("slow_ms", 100.0)), latency_threshold_ms=data.get("latency_threshold_ms"),
        slowlog_top=int(slowlog.get("top", 10)),
        keys=KeysConfig(**{**{k: v for k, v in keys.items() if k != "expected_ttl"}, "expected_ttl": dict(expected)}),
        drill=DrillConfig(**drill),
    )


def load(path: str) -> MaintenanceConfig:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise MaintenanceError(f"{path}: cannot read the maintenance config: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise MaintenanceError(f"{path}: not UTF-8 text") from None
    return parse(text, path)
