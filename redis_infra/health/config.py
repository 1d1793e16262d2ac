"""The checker's configuration file (TOML), validated strictly.

Every problem (missing file, bad TOML, unknown key, wrong type, bad value) raises ConfigError with a
one-line message that names the file and the key; the CLI prints it and exits with code 2.

    listen_address = "127.0.0.1"     # default 127.0.0.1; or a list: ["127.0.0.1", "10.0.0.5"]
    listen_port = 9122               # default 9122 (9121 is redis_exporter's)
    interval = 30                    # seconds between check cycles, default 30
    timeout = 5                      # seconds one instance's check may take, default min(5, interval)
    http_max_connections = 1024      # concurrent HTTP connections served, default 1024
    http_request_timeout = 5         # seconds a client has for one request (TLS, request, response)
    web_config_file = "/etc/redis-infra/health-web.yml"   # optional: TLS and basic auth (web.py)
    log_level = "info"               # debug, info, warning, error

    [thresholds]                     # all optional; defaults in THRESHOLD_DEFAULTS
    memory_degraded_percent = 80
    ...

    [webhook]                        # optional
    url = "https://alerts.example.org/hook"
    timeout = 5
    retries = 3

    [[instances]]                    # one or more
    name = "main"
    connection_file = "/etc/redis-infra/connections/main-monitor.toml"
    backup_status_file = "/var/lib/redis-infra/backup/main/status.json"   # optional
    max_backup_age = 93600                                                # optional, seconds
    maintenance_status_file = "/var/lib/redis-infra/maintenance/main.json"   # optional
    max_maintenance_age = 691200                                          # optional, seconds
    replication_group = "main"                                            # optional
    expected_replicas = 1                                                 # optional

    [sentinel]                       # optional: the host's Sentinel, as its read-only ACL user
    connection_file = "/etc/redis-infra/connections/sentinel-monitor.toml"
    name = "sentinel"                # its name in the results (redis_instance label), default "sentinel"
    masters = ["main"]               # primary names it must watch, optional
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from . import DEFAULT_LISTEN_ADDRESS, DEFAULT_LISTEN_PORT


class ConfigError(Exception):
    """The configuration file is unusable; str(error) is one line naming the file and the key."""


# name: (default, description). Every threshold is a number; *_percent in 0-100.
THRESHOLD_DEFAULTS: dict[str, float] = {
    "memory_degraded_percent": 80.0,        # used_memory / maxmemory
    "memory_unhealthy_percent": 95.0,
    "clients_degraded_percent": 80.0,       # connected_clients / maxclients
    "clients_unhealthy_percent": 95.0,
    "ping_degraded_ms": 50.0,               # PING latency, also the SET/GET/DEL round trip
    "ping_unhealthy_ms": 500.0,
    "slowlog_threshold_ms": 100.0,          # slow-log entries at least this long count as slow queries
    "slowlog_degraded_count": 1.0,          # that many slow queries since the last check: degraded
    "replication_lag_degraded_seconds": 30.0,   # replica lag (primary side) / last I/O with primary
    "replication_lag_unhealthy_seconds": 120.0,
    "backup_age_degraded_seconds": 93600.0,     # 26 h
    "backup_age_unhealthy_seconds": 180000.0,   # 50 h
    # Maintenance runs weekly: a week and a day. Never unhealthy: a missed or failed maintenance run does
    # not make the instance unfit to serve.
    "maintenance_age_degraded_seconds": 691200.0,   # 8 d
    "last_save_degraded_seconds": 0.0,      # time since last RDB save with unsaved changes; 0 = off
    "rejected_connections_degraded": 1.0,   # rejected connections since the last check; 0 = off
    "evicted_keys_degraded": 1.0,           # evicted keys since the last check; 0 = off
    "tls_expiry_degraded_days": 21.0,       # days until the certificate on the TLS port expires
    "tls_expiry_unhealthy_days": 7.0,       # (instances whose connection file says tls = true)
}

# Pairs (low, high) that must be ordered low <= high: degraded <= unhealthy, except where less is worse
# (the days a certificate has left).
_THRESHOLD_PAIRS = (
    ("memory_degraded_percent", "memory_unhealthy_percent"),
    ("clients_degraded_percent", "clients_unhealthy_percent"),
    ("ping_degraded_ms", "ping_unhealthy_ms"),
    ("replication_lag_degraded_seconds", "replication_lag_unhealthy_seconds"),
    ("backup_age_degraded_seconds", "backup_age_unhealthy_seconds"),
    ("tls_expiry_unhealthy_days", "tls_expiry_degraded_days"),
)

_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Thresholds:
    values: dict[str, float] = field(default_factory=lambda: dict(THRESHOLD_DEFAULTS))

    def __getattr__(self, name: str) -> float:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(frozen=True)
class InstanceConfig:
    name: str
    connection_file: str
    backup_status_file: str | None = None
    max_backup_age: float | None = None
    replication_group: str | None = None
    expected_replicas: int | None = None
    maintenance_status_file: str | None = None
    max_maintenance_age: float | None = None


@dataclass(frozen=True)
class SentinelConfig:
    """The host's Sentinel: checked like an instance, published under `name`."""
    connection_file: str
    name: str = "sentinel"
    masters: tuple[str, ...] = ()       # primary names it must watch (the replication groups' instances)


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    timeout: float = 5.0
    retries: int = 3
    backoff: float = 1.0
    queue_size: int = 100


@dataclass(frozen=True)
class Config:
    instances: tuple[InstanceConfig, ...]
    listen_address: str = DEFAULT_LISTEN_ADDRESS
    listen_port: int = DEFAULT_LISTEN_PORT
    interval: float = 30.0
    timeout: float = 5.0
    http_max_connections: int = 1024
    http_request_timeout: float = 5.0
    web_config_file: str | None = None
    listen_addresses: tuple[str, ...] = ()     # every address; listen_address is the first
    log_level: str = "info"
    thresholds: Thresholds = field(default_factory=Thresholds)
    webhook: WebhookConfig | None = None
    sentinel: SentinelConfig | None = None
    source: str = "<config>"


# --- small typed readers -------------------------------------------------------------------------

class _Reader:
    """Reads one TOML table, remembering which keys were used so unknown ones can be reported."""

    def __init__(self, source: str, table: dict, prefix: str):
        self.source = source
        self.table = table
        self.prefix = prefix
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def fail(self, name: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: key '{self.key(name)}' {message}")

    def _get(self, name: str):
        self.used.add(name)
        return self.table.get(name)

    def string(self, name: str, default: str | None = None, required: bool = False) -> str | None:
        value = self._get(name)
        if value is None:
            if required:
                raise self.fail(name, "is required")
            return default
        if not isinstance(value, str):
            raise self.fail(name, f"must be a string, got {_type_name(value)}")
        if not value.strip():
            raise self.fail(name, "must not be empty")
        return value

    def number(self, name: str, default: float | None = None, minimum: float | None = None,
               maximum: float | None = None, positive: bool = False) -> float | None:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(name, f"must be a number, got {_type_name(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise self.fail(name, f"must be a finite number, got {value}")
        if positive and value <= 0:
            raise self.fail(name, f"must be greater than 0, got {_fmt(value)}")
        if minimum is not None and value < minimum:
            raise self.fail(name, f"must be at least {_fmt(minimum)}, got {_fmt(value)}")
        if maximum is not None and value > maximum:
            raise self.fail(name, f"must be at most {_fmt(maximum)}, got {_fmt(value)}")
        return value

    def integer(self, name: str, default: int | None = None, minimum: int | None = None,
                maximum: int | None = None) -> int | None:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"must be an integer, got {_type_name(value)}")
        if minimum is not None and value < minimum:
            raise self.fail(name, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.fail(name, f"must be at most {maximum}, got {value}")
        return value

    def table_of(self, name: str) -> dict | None:
        value = self._get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(name, f"must be a table, got {_type_name(value)}")
        return value

    def check_unknown(self, allowed: tuple[str, ...] | None = None) -> None:
        known = set(allowed) if allowed is not None else self.used
        unknown = sorted(set(self.table) - known)
        if unknown:
            raise ConfigError(f"{self.source}: unknown key '{self.key(unknown[0])}'"
                              f" (allowed here: {', '.join(sorted(known))})")


def _type_name(value) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", dict: "table",
            list: "array"}.get(type(value), type(value).__name__)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# --- the file ------------------------------------------------------------------------------------

_TOP_KEYS = ("listen_address", "listen_port", "interval", "timeout", "http_max_connections",
             "http_request_timeout", "web_config_file", "log_level", "thresholds", "webhook", "instances", "sentinel")
_INSTANCE_KEYS = ("name", "connection_file", "backup_status_file", "max_backup_age", "replication_group",
                  "expected_replicas", "maintenance_status_file", "max_maintenance_age")
_SENTINEL_KEYS = ("connection_file", "name", "masters")
_WEBHOOK_KEYS = ("url", "timeout", "retries", "backoff", "queue_size")


def load_config(path: str) -> Config:
    """Read and validate the configuration file at `path`."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    return parse_config(text, path)


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {' '.join(str(exc).split())}") from None

    top = _Reader(source, data, "")
    top.check_unknown(_TOP_KEYS)
    addresses = _addresses(top)
    listen_port = top.integer("listen_port", DEFAULT_LISTEN_PORT, minimum=1, maximum=65535)
    interval = top.number("interval", 30.0, positive=True, maximum=86400)
    timeout = top.number("timeout", None, positive=True, maximum=3600)
    if timeout is None:
        timeout = min(5.0, interval)
    http_max = top.integer("http_max_connections", 1024, minimum=1, maximum=100000)
    request_timeout = top.number("http_request_timeout", 5.0, positive=True, maximum=300)
    web_config_file = top.string("web_config_file")
    log_level = top.string("log_level", "info")
    if log_level not in _LOG_LEVELS:
        raise top.fail("log_level", f"must be one of {', '.join(_LOG_LEVELS)}, got '{log_level}'")

    thresholds = _thresholds(source, top.table_of("thresholds") or {})
    webhook_table = top.table_of("webhook")
    webhook = _webhook(source, webhook_table) if webhook_table is not None else None
    instances = _instances(source, data.get("instances"))
    sentinel_table = top.table_of("sentinel")
    sentinel = _sentinel(source, sentinel_table, instances) if sentinel_table is not None else None

    return Config(instances=instances, listen_address=addresses[0], listen_port=listen_port,
                  interval=interval, timeout=timeout, http_max_connections=http_max,
                  http_request_timeout=request_timeout, web_config_file=web_config_file,
                  listen_addresses=addresses, log_level=log_level, thresholds=thresholds, webhook=webhook,
                  sentinel=sentinel, source=source)


def _addresses(top: _Reader) -> tuple[str, ...]:
    """listen_address: one address or a list of them (e.g. loopback and the one Prometheus scrapes)."""
    value = top.table.get("listen_address")
    if not isinstance(value, list):
        return (top.string("listen_address", DEFAULT_LISTEN_ADDRESS),)
    top.used.add("listen_address")
    if not value or not all(isinstance(item, str) and item.strip() for item in value):
        raise top.fail("listen_address", "must be an address or a non-empty list of addresses")
    if len(set(value)) != len(value):
        raise top.fail("listen_address", f"lists an address twice: {', '.join(value)}")
    return tuple(value)


def _thresholds(source: str, table: dict) -> Thresholds:
    reader = _Reader(source, table, "thresholds.")
    reader.check_unknown(tuple(THRESHOLD_DEFAULTS))
    values = {}
    for name, default in THRESHOLD_DEFAULTS.items():
        maximum = 100.0 if name.endswith("_percent") else None
        positive = not name.endswith(("_degraded", "last_save_degraded_seconds"))
        values[name] = reader.number(name, default, minimum=0.0, maximum=maximum, positive=positive)
    for low, high in _THRESHOLD_PAIRS:
        if values[low] > values[high]:
            raise reader.fail(low, f"({_fmt(values[low])}) must not be greater than "
                                   f"'thresholds.{high}' ({_fmt(values[high])})")
    return Thresholds(values)


def _webhook(source: str, table: dict) -> WebhookConfig:
    reader = _Reader(source, table, "webhook.")
    reader.check_unknown(_WEBHOOK_KEYS)
    url = reader.string("url", required=True)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise reader.fail("url", "must be an http:// or https:// URL with a host (the value is not shown: "
                                 "a webhook URL often carries its secret)")
    return WebhookConfig(
        url=url,
        timeout=reader.number("timeout", 5.0, positive=True, maximum=300),
        retries=reader.integer("retries", 3, minimum=0, maximum=20),
        backoff=reader.number("backoff", 1.0, minimum=0.0, maximum=300),
        queue_size=reader.integer("queue_size", 100, minimum=1, maximum=100000),
    )


def _sentinel(source: str, table: dict, instances: tuple[InstanceConfig, ...]) -> SentinelConfig:
    reader = _Reader(source, table, "sentinel.")
    reader.check_unknown(_SENTINEL_KEYS)
    name = reader.string("name", "sentinel")
    if not _INSTANCE_NAME.match(name):
        raise reader.fail("name", f"must be 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit), "
                                  f"got '{name}'")
    if name in {instance.name for instance in instances}:
        raise reader.fail("name", f"'{name}' is also an instance's name; the results would mix them")
    masters = reader.table.get("masters", [])
    reader.used.add("masters")
    if not isinstance(masters, list) or not all(isinstance(m, str) and _INSTANCE_NAME.match(m) for m in masters):
        raise reader.fail("masters", "must be a list of primary names (letters, digits, '_', '.', '-')")
    if len(set(masters)) != len(masters):
        raise reader.fail("masters", f"lists a name twice: {', '.join(masters)}")
    return SentinelConfig(connection_file=reader.string("connection_file", required=True), name=name,
                          masters=tuple(masters))


def _instances(source: str, value) -> tuple[InstanceConfig, ...]:
    if value is None:
        raise ConfigError(f"{source}: key 'instances' is required (at least one [[instances]] table)")
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ConfigError(f"{source}: key 'instances' must be an array of tables ([[instances]]), "
                          f"got {_type_name(value)}")
    if not value:
        raise ConfigError(f"{source}: key 'instances' must list at least one instance")
    result = []
    seen: set[str] = set()
    for index, table in enumerate(value):
        reader = _Reader(source, table, f"instances[{index}].")
        reader.check_unknown(_INSTANCE_KEYS)
        name = reader.string("name", required=True)
        if not _INSTANCE_NAME.match(name):
            raise reader.fail("name", f"must be 1-64 letters, digits, '_', '.', '-' (starting with a letter or "
                                      f"digit), got '{name}'")
        if name in seen:
            raise reader.fail("name", f"duplicates instance '{name}'")
        seen.add(name)
        group = reader.string("replication_group")
        if group is not None and not _INSTANCE_NAME.match(group):
            raise reader.fail("replication_group", f"must be 1-64 letters, digits, '_', '.', '-', got '{group}'")
        result.append(InstanceConfig(
            name=name,
            connection_file=reader.string("connection_file", required=True),
            backup_status_file=reader.string("backup_status_file"),
            max_backup_age=reader.number("max_backup_age", None, positive=True),
            replication_group=group,
            expected_replicas=reader.integer("expected_replicas", None, minimum=0, maximum=1000),
            maintenance_status_file=reader.string("maintenance_status_file"),
            max_maintenance_age=reader.number("max_maintenance_age", None, positive=True),
        ))
    return tuple(result)
