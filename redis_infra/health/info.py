"""Parsing of Redis/Valkey INFO text and SLOWLOG GET replies (no redis-py parsing involved, so the
result is the same whatever the redis-py version)."""

from __future__ import annotations

import re
from dataclasses import dataclass


def parse_info(text: str) -> dict[str, str]:
    """INFO text -> {field: raw value}. Field names are unique across sections."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value
    return fields


def parse_kv(value: str) -> dict[str, str]:
    """'keys=1,expires=0,avg_ttl=0' -> {'keys': '1', ...}; parts without '=' are skipped."""
    result = {}
    for part in value.split(","):
        key, sep, val = part.partition("=")
        if sep:
            result[key] = val
    return result


def to_float(value, default: float | None = None) -> float | None:
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def to_int(value, default: int | None = None) -> int | None:
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        number = to_float(value)
        return int(number) if number is not None else default


def server_kind(info: dict[str, str]) -> tuple[str, str]:
    """('valkey'|'redis'|other server_name, version). Valkey reports server_name:valkey and
    valkey_version; Redis 8 may report server_name:redis; Redis 7.0 has no server_name."""
    name = info.get("server_name") or "redis"
    version = info.get(f"{name}_version") or info.get("valkey_version") or info.get("redis_version") or ""
    return name, version


def replicas(info: dict[str, str]) -> list[dict[str, str]]:
    """The slaveN lines of a primary, in order, each as {'ip', 'port', 'state', 'offset', 'lag'}."""
    found = []
    for key, value in info.items():
        if key.startswith("slave") and key[5:].isdigit():
            entry = parse_kv(value)
            entry["_index"] = key[5:]
            found.append(entry)
    found.sort(key=lambda entry: int(entry["_index"]))
    return found


def keyspace(info: dict[str, str]) -> dict[str, dict[str, str]]:
    """{'db0': {'keys': ..., 'expires': ..., 'avg_ttl': ...}, ...}"""
    return {key: parse_kv(value) for key, value in info.items() if key.startswith("db") and key[2:].isdigit()}


def commandstats(info: dict[str, str]) -> dict[str, tuple[float, float]]:
    """{'get': (calls, usec), 'client|setname': (...), ...} from INFO commandstats."""
    stats = {}
    for key, value in info.items():
        if key.startswith("cmdstat_"):
            parts = parse_kv(value)
            calls, usec = to_float(parts.get("calls")), to_float(parts.get("usec"))
            if calls is not None and usec is not None:
                stats[key[len("cmdstat_"):]] = (calls, usec)
    return stats


def errorstats(info: dict[str, str]) -> dict[str, float]:
    """{'ERR': count, 'WRONGPASS': count, ...} from INFO errorstats (Redis 6.2+)."""
    stats = {}
    for key, value in info.items():
        if key.startswith("errorstat_"):
            count = to_float(parse_kv(value).get("count"))
            if count is not None:
                stats[key[len("errorstat_"):]] = count
    return stats


# Commands whose second word names a subcommand (a fixed vocabulary, never user data); for every
# other command the second word may be a key or a value.
_CONTAINER_COMMANDS = frozenset((
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DEBUG", "FUNCTION", "LATENCY", "MEMORY", "MODULE",
    "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
))
_NAME_CHARS = re.compile(r"^[A-Za-z][A-Za-z0-9_.|-]{0,39}$")


@dataclass(frozen=True)
class SlowEntry:
    """One slow-log entry. `command` is the command's name only (with the subcommand of a container
    command such as CLIENT or CONFIG): its arguments are keys, values, scripts or passwords, and never
    leave the checker."""
    id: int
    timestamp: int
    duration_us: int
    command: str
    client_name: str = ""

    def describe(self) -> str:
        return f"{self.command} ({self.duration_us / 1000:.1f} ms)"


def command_name(args: list) -> str:
    """The command name of a slow-log argument list, upper-case; '?' when it does not look like one."""
    words = [_text(arg) for arg in args[:2]]
    if not words or not _NAME_CHARS.match(words[0]):
        return "?"
    name = words[0].upper()
    if name in _CONTAINER_COMMANDS and len(words) > 1 and _NAME_CHARS.match(words[1]):
        name += " " + words[1].upper()
    return name


def parse_slowlog(reply) -> list[SlowEntry]:
    """SLOWLOG GET reply (list of [id, ts, usec, [args], addr?, name?]) -> entries without the
    commands' arguments; malformed ones skipped."""
    entries = []
    if not isinstance(reply, list):
        return entries
    for item in reply:
        if not isinstance(item, list) or len(item) < 4:
            continue
        try:
            entry_id, timestamp, duration = int(item[0]), int(item[1]), int(item[2])
        except (TypeError, ValueError):
            continue
        args = item[3] if isinstance(item[3], list) else [item[3]]
        name = _text(item[5]) if len(item) > 5 else ""
        entries.append(SlowEntry(entry_id, timestamp, duration, command_name(args), name))
    return entries


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
