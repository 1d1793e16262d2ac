"""The checks of one Redis/Valkey instance.

`InstanceChecker.run()` opens one fresh connection (credentials read through
`redis_infra.connection.load`), sends a fixed, small set of commands (AUTH, CLIENT SETNAME, PING,
INFO all, SLOWLOG GET, SLOWLOG LEN, then SET/GET/DEL on a primary or EXISTS on a replica), closes
the connection and evaluates every check. Each socket operation is bounded by the configured
timeout, the connection is never reused and redis-py's retries are off, so a hung server costs at
most one timeout per cycle.

When the connection file says `tls = true`, the checker also reads the certificate served on the TCP
port (whichever way the check itself connected): one TLS handshake, verified as the tools' own
connections are and with no command sent, at most every TLS_PROBE_INTERVAL seconds (and after a
restart), within what is left of the instance's timeout. Between handshakes the `tls_certificate`
check counts the days left from the notAfter it read.

The `evaluate_*` functions are pure: they take parsed INFO fields and return a CheckResult.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .. import connection
from . import CLIENT_NAME, DEGRADED, HEALTHY, KEY_PREFIX, UNHEALTHY, worst
from .config import Config, InstanceConfig, Thresholds
from .info import (
    SlowEntry,
    parse_info,
    parse_slowlog,
    replicas,
    server_kind,
    to_int,
)

SLOWLOG_FETCH = 128          # entries fetched per cycle (Redis' default slowlog-max-len)
STATUS_FILE_MAX_BYTES = 65536   # the backup and maintenance status files
TLS_PROBE_INTERVAL = 300.0   # seconds between two handshakes that read an instance's certificate
TLS_PROBE_MIN_BUDGET = 0.05  # seconds of the timeout a handshake needs left, or it waits for the next cycle


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str
    value: float | int | str | None
    threshold: dict | None
    reason: str
    unit: str = ""
    details: dict | None = None

    def to_dict(self) -> dict:
        data = {"name": self.name, "status": self.status, "value": self.value, "unit": self.unit,
                "threshold": self.threshold, "reason": self.reason}
        if self.details:
            data["details"] = self.details
        return data


@dataclass
class InstanceResult:
    """What one check cycle found for one instance; immutable once published."""
    name: str
    address: str
    checks: list[CheckResult]
    time: float                      # epoch seconds when the check started
    duration: float                  # seconds
    up: bool                         # connected, authenticated and INFO answered
    info: dict[str, str] = field(default_factory=dict)
    slowlog_length: int | None = None
    slowlog_last_id: int | None = None
    last_slow_duration: float | None = None     # seconds, newest slow-log entry
    ping_seconds: float | None = None
    roundtrip_seconds: float | None = None
    backup: dict | None = None       # {'age': s|None, 'success': bool|None, 'size': int|None, 'time': epoch|None}
    maintenance: dict | None = None  # parse_maintenance_status()'s summary; None unless the file was read
    counters: dict[str, float] = field(default_factory=dict)   # checker's own cumulative counters
    replication_group: str | None = None
    timed_out: bool = False
    tls_certificate_expiry: float | None = None   # notAfter (epoch) of the certificate on the TLS port
    kind: str = "redis"              # "redis", or "sentinel" for the host's Sentinel (sentinel.py)
    sentinel: dict | None = None     # a Sentinel's view: {'masters': [...]} (sentinel.SentinelChecker)

    @property
    def status(self) -> str:
        return worst(check.status for check in self.checks)

    def check(self, name: str) -> CheckResult | None:
        for check in self.checks:
            if check.name == name:
                return check
        return None

    def to_dict(self) -> dict:
        kind, version = server_kind(self.info) if self.info else (None, None)
        if self.kind == "sentinel":
            kind = f"{kind}-sentinel" if kind else "sentinel"
        data = {
            "name": self.name,
            "status": self.status,
            "address": self.address,
            "up": self.up,
            "server": kind,
            "version": version or None,
            "role": self.info.get("role") if self.info else None,
            "checked_at": _iso(self.time),
            "duration_ms": round(self.duration * 1000, 2),
            "checks": [check.to_dict() for check in self.checks],
        }
        if self.sentinel is not None:
            data["masters"] = self.sentinel.get("masters", [])
        return data


@dataclass(frozen=True)
class TLSProbe:
    """What the last TLS handshake with an instance's TCP port found: the served certificate's notAfter
    (epoch seconds), or why there was none."""
    address: str
    monotonic: float                 # when, to know when the next one is due
    time: float                      # when, epoch seconds
    not_after: float | None = None
    error: str | None = None


@dataclass
class InstanceState:
    """What the checker remembers between cycles of one instance (used by one thread at a time)."""
    run_id: str | None = None
    uptime: int | None = None
    slowlog_last_id: int | None = None
    rejected_connections: int | None = None
    evicted_keys: int | None = None
    tls_probe: TLSProbe | None = None
    counters: dict[str, float] = field(default_factory=lambda: {
        "checks": 0.0, "check_failures": 0.0, "commands": 0.0, "slow_queries": 0.0})


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _level(value: float, degraded: float, unhealthy: float) -> str:
    if value >= unhealthy:
        return UNHEALTHY
    if value >= degraded:
        return DEGRADED
    return HEALTHY


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# --- pure evaluations ----------------------------------------------------------------------------

def evaluate_latency(name: str, seconds: float, thresholds: Thresholds, what: str) -> CheckResult:
    ms = seconds * 1000
    status = _level(ms, thresholds.ping_degraded_ms, thresholds.ping_unhealthy_ms)
    reason = f"{what} in {ms:.2f} ms"
    if status != HEALTHY:
        limit = thresholds.ping_unhealthy_ms if status == UNHEALTHY else thresholds.ping_degraded_ms
        reason += f" (>= {limit:g} ms)"
    limits = {"degraded": thresholds.ping_degraded_ms, "unhealthy": thresholds.ping_unhealthy_ms}
    return CheckResult(name, status, _ms(seconds), limits, reason, "ms")


def evaluate_memory(info: dict[str, str], thresholds: Thresholds) -> CheckResult:
    used = to_int(info.get("used_memory"), 0)
    limit = to_int(info.get("maxmemory"), 0)
    threshold = {"degraded": thresholds.memory_degraded_percent, "unhealthy": thresholds.memory_unhealthy_percent}
    details = {"used_bytes": used, "maxmemory_bytes": limit, "policy": info.get("maxmemory_policy")}
    if limit <= 0:
        return CheckResult("memory", HEALTHY, None, threshold,
                           f"no maxmemory limit (used {used / 1048576:.1f} MiB)", "%", details)
    percent = used * 100.0 / limit
    status = _level(percent, thresholds.memory_degraded_percent, thresholds.memory_unhealthy_percent)
    reason = f"{percent:.1f}% of maxmemory used ({used / 1048576:.1f} of {limit / 1048576:.1f} MiB)"
    if status != HEALTHY:
        reason += f", at or above the {status} threshold {threshold[status]:g}%"
    return CheckResult("memory", status, round(percent, 2), threshold, reason, "%", details)


def evaluate_clients(info: dict[str, str], thresholds: Thresholds) -> CheckResult:
    connected = to_int(info.get("connected_clients"), 0)
    maxclients = to_int(info.get("maxclients"))
    threshold = {"degraded": thresholds.clients_degraded_percent, "unhealthy": thresholds.clients_unhealthy_percent}
    details = {"connected_clients": connected, "maxclients": maxclients,
               "blocked_clients": to_int(info.get("blocked_clients"), 0)}
    if not maxclients:
        return CheckResult("clients", HEALTHY, None, threshold,
                           f"{connected} clients connected (maxclients not reported by this server)", "%", details)
    percent = connected * 100.0 / maxclients
    status = _level(percent, thresholds.clients_degraded_percent, thresholds.clients_unhealthy_percent)
    reason = f"{connected} of {maxclients} clients connected ({percent:.1f}%)"
    if status != HEALTHY:
        reason += f", at or above the {status} threshold {threshold[status]:g}%"
    return CheckResult("clients", status, round(percent, 2), threshold, reason, "%", details)


def evaluate_uptime(info: dict[str, str], state: InstanceState) -> CheckResult:
    uptime = to_int(info.get("uptime_in_seconds"), 0)
    run_id = info.get("run_id")
    restarted = state.run_id is not None and run_id is not None and run_id != state.run_id
    if not restarted and state.uptime is not None and uptime < state.uptime:
        restarted = True
    details = {"run_id": run_id}
    if restarted:
        return CheckResult("uptime", DEGRADED, uptime, {"degraded": "restart since last check"},
                           f"restarted since the last check (up {uptime} s, run_id changed)", "s", details)
    return CheckResult("uptime", HEALTHY, uptime, {"degraded": "restart since last check"},
                       f"up {_duration(uptime)}", "s", details)


def evaluate_replication(info: dict[str, str], thresholds: Thresholds, expected_replicas: int | None = None
                         ) -> CheckResult:
    role = info.get("role", "")
    threshold = {"degraded": thresholds.replication_lag_degraded_seconds,
                 "unhealthy": thresholds.replication_lag_unhealthy_seconds}
    if role == "slave":
        host, port = info.get("master_host", "?"), info.get("master_port", "?")
        link = info.get("master_link_status", "")
        last_io = to_int(info.get("master_last_io_seconds_ago"), -1)
        details = {"role": "replica", "master_host": host, "master_port": port, "master_link_status": link,
                   "master_last_io_seconds_ago": last_io,
                   "slave_repl_offset": to_int(info.get("slave_repl_offset")),
                   "master_sync_in_progress": info.get("master_sync_in_progress") == "1"}
        if link != "up":
            down = to_int(info.get("master_link_down_since_seconds"))
            since = f" for {_duration(down)}" if down is not None and down >= 0 else ""
            sync = ", initial sync in progress" if details["master_sync_in_progress"] else ""
            return CheckResult("replication", UNHEALTHY, last_io, threshold,
                               f"replica: link to primary {host}:{port} is down{since}{sync}", "s", details)
        status = _level(max(last_io, 0), thresholds.replication_lag_degraded_seconds,
                        thresholds.replication_lag_unhealthy_seconds)
        reason = f"replica of {host}:{port}, link up, last I/O {last_io} s ago"
        if status != HEALTHY:
            reason += f" (lagging: >= {threshold[status]:g} s)"
        return CheckResult("replication", status, last_io, threshold, reason, "s", details)

    # primary (role:master)
    found = replicas(info)
    connected = to_int(info.get("connected_slaves"), len(found))
    master_offset = to_int(info.get("master_repl_offset"), 0)
    listed = []
    status = HEALTHY
    problems = []
    max_lag = 0
    for entry in found:
        lag = to_int(entry.get("lag"), 0)
        offset = to_int(entry.get("offset"), 0)
        max_lag = max(max_lag, lag)
        addr = f"{entry.get('ip', '?')}:{entry.get('port', '?')}"
        listed.append({"address": addr, "state": entry.get("state"), "lag_seconds": lag, "offset": offset,
                       "offset_lag_bytes": max(master_offset - offset, 0)})
        level = _level(lag, thresholds.replication_lag_degraded_seconds, thresholds.replication_lag_unhealthy_seconds)
        if level != HEALTHY:
            problems.append(f"replica {addr} lags {lag} s")
        if entry.get("state") != "online":
            level = worst((level, DEGRADED))
            problems.append(f"replica {addr} is {entry.get('state')}")
        status = worst((status, level))
    if expected_replicas is not None and connected < expected_replicas:
        status = worst((status, DEGRADED))
        problems.append(f"{connected} of {expected_replicas} expected replicas connected")
    details = {"role": "primary", "connected_replicas": connected, "master_repl_offset": master_offset,
               "replicas": listed}
    if expected_replicas is not None:
        details["expected_replicas"] = expected_replicas
    if problems:
        reason = "primary: " + "; ".join(problems)
    elif connected:
        reason = f"primary with {connected} replica(s), max lag {max_lag} s"
    else:
        reason = "primary, no replicas connected"
    return CheckResult("replication", status, max_lag, threshold, reason, "s", details)


CLUSTER_SLOTS = 16384


def _crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the hash of Redis Cluster's key slots."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _bit in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def cluster_key(base: str, nodes_text: str) -> str:
    """A key under `base` whose slot this cluster node serves (a replica: its primary's), through a hash
    tag, so that the round trip stays on the node; `base` itself when the node serves no slot."""
    lines = [line.split() for line in (nodes_text or "").splitlines() if len(line.split()) >= 8]
    myself = next((fields for fields in lines if "myself" in fields[2].split(",")), None)
    if myself is None:
        return base
    owner = myself if myself[3] == "-" else next((fields for fields in lines if fields[0] == myself[3]), myself)
    ranges = []
    for item in owner[8:]:
        if not item.startswith("["):
            start, _, end = item.partition("-")
            ranges.append((int(start), int(end or start)))
    for number in range(CLUSTER_SLOTS * 8):
        tag = f"{number:x}"
        slot = _crc16(tag.encode()) % CLUSTER_SLOTS
        if any(start <= slot <= end for start, end in ranges):
            return f"{base}:{{{tag}}}"
    return base


def evaluate_cluster(cluster_info: dict[str, str]) -> CheckResult:
    """A cluster node: whether the cluster is ok as this node sees it, and its slots."""
    details = {key: to_int(cluster_info.get(f"cluster_{key}")) for key in
               ("slots_assigned", "slots_ok", "slots_pfail", "slots_fail", "known_nodes", "size")}
    state = cluster_info.get("cluster_state", "?")
    threshold = {"unhealthy": "cluster_state not ok", "degraded": "slots unassigned, pfail or fail"}
    summary = (f"{details['slots_assigned']} of {CLUSTER_SLOTS} slots assigned, {details['slots_ok']} ok, "
               f"{details['slots_pfail']} pfail, {details['slots_fail']} fail; {details['known_nodes']} nodes known, "
               f"{details['size']} primaries with slots")
    if state != "ok":
        return CheckResult("cluster", UNHEALTHY, state, threshold, f"cluster_state {state}: {summary}", "", details)
    if details["slots_assigned"] != CLUSTER_SLOTS or details["slots_pfail"] or details["slots_fail"]:
        return CheckResult("cluster", DEGRADED, state, threshold, f"cluster_state ok but {summary}", "", details)
    return CheckResult("cluster", HEALTHY, state, threshold, f"cluster_state ok: {summary}", "", details)


def evaluate_persistence(info: dict[str, str], thresholds: Thresholds, now: float) -> CheckResult:
    last_save = to_int(info.get("rdb_last_save_time"), 0)
    age = max(int(now) - last_save, 0) if last_save else None
    changes = to_int(info.get("rdb_changes_since_last_save"), 0)
    aof = info.get("aof_enabled") == "1"
    details = {"rdb_last_bgsave_status": info.get("rdb_last_bgsave_status"), "rdb_last_save_time": last_save,
               "rdb_changes_since_last_save": changes, "aof_enabled": aof}
    if aof:
        details["aof_last_write_status"] = info.get("aof_last_write_status")
        details["aof_last_bgrewrite_status"] = info.get("aof_last_bgrewrite_status")
    limit = thresholds.last_save_degraded_seconds
    threshold = {"degraded": limit if limit > 0 else None, "unhealthy": "RDB save or AOF write failed"}
    problems: list[tuple[str, str]] = []
    if info.get("rdb_last_bgsave_status", "ok") != "ok":
        problems.append((UNHEALTHY, "last RDB background save failed"))
    if aof and info.get("aof_last_write_status", "ok") != "ok":
        problems.append((UNHEALTHY, "last AOF write failed"))
    if aof and info.get("aof_last_bgrewrite_status", "ok") != "ok":
        problems.append((DEGRADED, "last AOF rewrite failed"))
    if info.get("loading") == "1":
        problems.append((DEGRADED, "loading the dataset from disk"))
    if limit > 0 and age is not None and changes > 0 and age >= limit:
        problems.append((DEGRADED, f"{changes} changes not saved for {_duration(age)} (>= {limit:g} s)"))
    status = worst(level for level, _ in problems)
    if problems:
        reason = "; ".join(text for _, text in problems)
    else:
        reason = (f"last RDB save {_duration(age)} ago, {changes} changes since" if age is not None
                  else "no RDB save yet") + (", AOF on" if aof else "")
    return CheckResult("persistence", status, age, threshold, reason, "s", details)


def evaluate_counter_delta(name: str, label: str, current: int | None, previous: int | None,
                           restarted: bool, limit: float) -> tuple[CheckResult, int]:
    """A counter's increase since the last check (0 on the first check; the whole value after a restart)."""
    current = current or 0
    if previous is None:
        delta = 0
    elif restarted or current < previous:
        delta = current
    else:
        delta = current - previous
    threshold = {"degraded": limit if limit > 0 else None}
    if limit > 0 and delta >= limit:
        return CheckResult(name, DEGRADED, delta, threshold, f"{delta} {label} since the last check",
                           "", {"total": current}), delta
    since = "since the last check" if previous is not None else "(first check; counting from now)"
    return CheckResult(name, HEALTHY, delta, threshold, f"{delta} {label} {since}", "", {"total": current}), delta


def select_new_slow_entries(entries: list[SlowEntry], last_id: int | None, now: float, window: float
                            ) -> list[SlowEntry]:
    """Entries not seen before: id above the highest seen; on the first check, those of the last `window` s."""
    if last_id is None:
        return [entry for entry in entries if entry.timestamp >= now - window]
    return [entry for entry in entries if entry.id > last_id]


def evaluate_slowlog(new_entries: list[SlowEntry], thresholds: Thresholds, first: bool) -> CheckResult:
    limit_us = thresholds.slowlog_threshold_ms * 1000
    slow = [entry for entry in new_entries if entry.duration_us >= limit_us]
    threshold = {"threshold_ms": thresholds.slowlog_threshold_ms, "degraded": thresholds.slowlog_degraded_count}
    since = "in the last interval" if first else "since the last check"
    if len(slow) >= thresholds.slowlog_degraded_count and slow:
        slowest = max(slow, key=lambda entry: entry.duration_us)
        return CheckResult("slowlog", DEGRADED, len(slow), threshold,
                           f"{len(slow)} slow quer{'y' if len(slow) == 1 else 'ies'} "
                           f"(>= {thresholds.slowlog_threshold_ms:g} ms) {since}; slowest: {slowest.describe()}",
                           "", {"slowest_ms": round(slowest.duration_us / 1000, 3),
                                "commands": [entry.describe() for entry in slow[:10]]})
    return CheckResult("slowlog", HEALTHY, len(slow), threshold,
                       f"{len(slow)} queries >= {thresholds.slowlog_threshold_ms:g} ms {since}")


def evaluate_tls_certificate(probe: TLSProbe, thresholds: Thresholds, now: float) -> CheckResult:
    """Days until the certificate a handshake read expires (fewer is worse); unhealthy when the handshake
    failed, since a TCP client would fail the same way."""
    degraded, unhealthy = thresholds.tls_expiry_degraded_days, thresholds.tls_expiry_unhealthy_days
    threshold = {"degraded": degraded, "unhealthy": unhealthy}
    details = {"address": probe.address, "probed_at": _iso(probe.time)}
    if probe.not_after is None:
        return CheckResult("tls_certificate", UNHEALTHY, None, threshold,
                           f"TLS handshake with {probe.address} failed: {probe.error}", "d", details)
    details["not_after"] = _iso(probe.not_after)
    left = probe.not_after - now
    days = left / 86400
    status = UNHEALTHY if days < unhealthy else DEGRADED if days < degraded else HEALTHY
    if left > 0:
        reason = f"the certificate on {probe.address} expires in {_duration(left)} ({_iso(probe.not_after)})"
    else:
        reason = f"the certificate on {probe.address} expired {_duration(-left)} ago ({_iso(probe.not_after)})"
    if status != HEALTHY:
        reason += f", below the {status} threshold of {threshold[status]:g} days"
    return CheckResult("tls_certificate", status, round(days, 2), threshold, reason, "d", details)


def read_status_file(path: str) -> dict:
    """A status file another tool writes (the backup tool's, the maintenance tool's): one JSON object.
    Raises FileNotFoundError, OSError or ValueError (with a readable message)."""
    with open(path, "rb") as handle:
        raw = handle.read(STATUS_FILE_MAX_BYTES + 1)
    if len(raw) > STATUS_FILE_MAX_BYTES:
        raise ValueError(f"larger than {STATUS_FILE_MAX_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def parse_time(value) -> float:
    """ISO-8601 (naive means UTC, 'Z' allowed) or epoch seconds -> epoch seconds; ValueError if neither."""
    if isinstance(value, bool):
        raise ValueError("time must be ISO-8601 or epoch seconds")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    raise ValueError("time must be ISO-8601 or epoch seconds")


def evaluate_backup(instance: InstanceConfig, thresholds: Thresholds, now: float) -> tuple[CheckResult, dict]:
    path = instance.backup_status_file
    if instance.max_backup_age:
        degraded_age, unhealthy_age = instance.max_backup_age, instance.max_backup_age * 2
    else:
        degraded_age, unhealthy_age = thresholds.backup_age_degraded_seconds, thresholds.backup_age_unhealthy_seconds
    threshold = {"degraded": degraded_age, "unhealthy": unhealthy_age}
    summary: dict = {"age": None, "success": None, "size": None, "time": None}
    try:
        data = read_status_file(path)
    except FileNotFoundError:
        return CheckResult("backup", DEGRADED, None, threshold,
                           f"backup status file {path} is missing (no backup recorded yet?)", "s"), summary
    except (OSError, ValueError) as exc:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return CheckResult("backup", DEGRADED, None, threshold,
                           f"cannot read backup status file {path}: {text}", "s"), summary
    result = str(data.get("result", "")).lower()
    details = {key: data[key] for key in ("time", "result", "file", "size", "error", "last_success")
               if key in data}
    summary["size"] = to_int(data.get("size"))
    success = result == "ok"
    summary["success"] = success
    try:
        when = parse_time(data.get("time"))
    except (TypeError, ValueError, OverflowError):
        return CheckResult("backup", DEGRADED, None, threshold,
                           f"backup status file {path}: field 'time' is missing or not ISO-8601/epoch", "s",
                           details), summary
    summary["time"] = when
    success_time = when if success else None
    if not success and "last_success" in data:
        try:
            success_time = parse_time(data["last_success"])
        except (TypeError, ValueError, OverflowError):
            success_time = None
    age = max(now - success_time, 0.0) if success_time is not None else None
    summary["age"] = age
    if not success:
        error = data.get("error") or data.get("message") or ""
        status = DEGRADED if age is None or age < unhealthy_age else UNHEALTHY
        reason = f"last backup at {_iso(when)} {result or 'has no result'}" + (f": {error}" if error else "")
        if age is not None:
            reason += f"; last good backup {_duration(age)} ago"
        return CheckResult("backup", status, round(age, 1) if age is not None else None, threshold, reason, "s",
                           details), summary
    status = _level(age, degraded_age, unhealthy_age)
    reason = f"last backup {_duration(age)} ago ({_iso(when)})"
    if status != HEALTHY:
        reason = f"backup is stale: {reason}, at or above the {status} threshold {_duration(threshold[status])}"
    return CheckResult("backup", status, round(age, 1), threshold, reason, "s", details), summary


# The maintenance tool's status file (redis_infra.maintenance), one per instance, rewritten after each run.
MAINTENANCE_RESULTS = ("ok", "failed")
MAINTENANCE_SECTION_STATES = ("ok", "warning", "failed", "skipped", "error")
DRILL_RESULTS = ("ok", "failed", "skipped")


class MalformedStatus(ValueError):
    """A field of a status file breaks the file's contract; str(error) names the field."""


def parse_maintenance_status(data: dict, instance: str) -> dict:
    """The fields of a maintenance status file, checked against its contract, as the summary the metrics
    are built from: time (epoch), result, success, sections, warnings, and drill_* (None when the drill
    did not run, or only was skipped). Raises MalformedStatus naming the first bad field."""
    for key in ("instance", "time", "result", "sections", "drill", "warnings"):
        if key not in data:
            hint = " (null when the drill did not run)" if key == "drill" else ""
            raise MalformedStatus(f"field '{key}' is missing{hint}")
    if data["instance"] != instance:
        raise MalformedStatus(f"field 'instance' is {_shown(data['instance'])}, not \"{instance}\" "
                              f"(the file of another instance?)")
    when = _status_time(data["time"], "time")
    result = data["result"]
    if result not in MAINTENANCE_RESULTS:
        raise MalformedStatus(f"field 'result' must be ok or failed, got {_shown(result)}")
    sections = data["sections"]
    if not isinstance(sections, dict):
        raise MalformedStatus("field 'sections' must be an object of section name: state")
    for name, state in sections.items():
        if state not in MAINTENANCE_SECTION_STATES:
            raise MalformedStatus(f"field 'sections.{name}' must be one of {', '.join(MAINTENANCE_SECTION_STATES)}, "
                                  f"got {_shown(state)}")
    warnings = data["warnings"]
    if isinstance(warnings, bool) or not isinstance(warnings, int) or warnings < 0:
        raise MalformedStatus(f"field 'warnings' must be a whole number, at least 0, got {_shown(warnings)}")
    summary = {"time": when, "result": result, "success": result == "ok", "sections": sections,
               "warnings": warnings, "drill_result": None, "drill_success": None, "drill_time": None,
               "drill_duration": None, "drill_error": None, "drill_backup_id": None}
    drill = data["drill"]
    if drill is None:
        return summary
    if not isinstance(drill, dict):
        raise MalformedStatus("field 'drill' must be an object, or null when the drill did not run")
    if drill.get("result") not in DRILL_RESULTS:
        raise MalformedStatus(f"field 'drill.result' must be one of {', '.join(DRILL_RESULTS)}, "
                              f"got {_shown(drill.get('result'))}")
    duration = drill.get("duration_seconds")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int | float)
                                 or not 0 <= duration < math.inf):
        raise MalformedStatus(f"field 'drill.duration_seconds' must be a number of seconds, got {_shown(duration)}")
    for key in ("error", "backup_id"):
        if drill.get(key) is not None and not isinstance(drill[key], str):
            raise MalformedStatus(f"field 'drill.{key}' must be a string or null, got {_shown(drill[key])}")
    drill_time = _status_time(drill["time"], "drill.time") if drill.get("time") is not None else None
    summary.update(drill_result=drill["result"], drill_error=drill.get("error"), drill_backup_id=drill.get("backup_id"))
    if drill["result"] != "skipped":        # a skipped drill says nothing about the backups
        summary.update(drill_success=drill["result"] == "ok", drill_time=drill_time,
                       drill_duration=float(duration) if duration is not None else None)
    return summary


def _status_time(value, key: str) -> float:
    try:
        moment = parse_time(value)
        datetime.fromtimestamp(moment, UTC)     # NaN or the year 10000 is no time to report or export
    except (TypeError, ValueError, OverflowError, OSError):
        raise MalformedStatus(f"field '{key}' is not ISO-8601 (or epoch seconds), got {_shown(value)}") from None
    return moment


def _shown(value) -> str:
    """A value from a status file, as JSON, cut short for a one-line reason."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def evaluate_maintenance(instance: InstanceConfig, thresholds: Thresholds, now: float
                         ) -> tuple[CheckResult, dict | None]:
    """The last run of the maintenance tool: degraded when it failed (a failed backup drill included),
    when its status file cannot be read, or when it is older than the maximum age; never unhealthy, since
    the instance serves as well without it. No run recorded yet is healthy (the first weekly run may be
    days away). The summary (for the metrics) is None unless the file was read and follows its contract."""
    path = instance.maintenance_status_file
    max_age = instance.max_maintenance_age or thresholds.maintenance_age_degraded_seconds
    threshold = {"degraded": max_age}
    try:
        data = read_status_file(path)
    except FileNotFoundError:
        return CheckResult("maintenance", HEALTHY, None, threshold,
                           f"no maintenance run recorded yet ({path} does not exist)", "s"), None
    except (OSError, ValueError) as exc:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return CheckResult("maintenance", DEGRADED, None, threshold,
                           f"cannot read maintenance status file {path}: {text}", "s"), None
    try:
        summary = parse_maintenance_status(data, instance.name)
    except MalformedStatus as exc:
        return CheckResult("maintenance", DEGRADED, None, threshold,
                           f"maintenance status file {path}: {exc}", "s"), None
    when = summary["time"]
    age = max(now - when, 0.0)
    details = {key: data[key] for key in ("time", "result", "sections", "warnings", "drill")}
    stale = age >= max_age
    drill_failed = summary["drill_result"] == "failed"
    if summary["result"] == "failed" or drill_failed:
        failed = [name if state == "failed" else f"{name} ({state})"
                  for name, state in summary["sections"].items() if state in ("failed", "error")]
        parts = [f"failed sections: {', '.join(failed)}" if failed else "no section is marked failed"]
        if drill_failed:
            backup = f" of {summary['drill_backup_id']}" if summary["drill_backup_id"] else ""
            error = " ".join((summary["drill_error"] or "no error recorded").split())
            error = error if len(error) <= 300 else error[:297] + "..."
            parts.append(f"backup drill{backup} failed: {error}")
        reason = f"last maintenance run at {_iso(when)} failed: {'; '.join(parts)}"
        if stale:
            reason += f"; maintenance is stale: last run {_duration(age)} ago"
        return CheckResult("maintenance", DEGRADED, round(age, 1), threshold, reason, "s", details), summary
    if stale:
        return CheckResult("maintenance", DEGRADED, round(age, 1), threshold,
                           f"maintenance is stale: last run {_duration(age)} ago ({_iso(when)}), at or above "
                           f"the degraded threshold {_duration(max_age)}", "s", details), summary
    warnings = summary["warnings"]
    reason = (f"last maintenance run {_duration(age)} ago ({_iso(when)}) ok, "
              f"{warnings} warning{'' if warnings == 1 else 's'}")
    if summary["drill_result"] == "ok":
        backup = f" ({summary['drill_backup_id']})" if summary["drill_backup_id"] else ""
        reason += f"; backup drill{backup} ok"
    elif summary["drill_result"] == "skipped":
        reason += "; backup drill skipped"
    return CheckResult("maintenance", HEALTHY, round(age, 1), threshold, reason, "s", details), summary


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


# --- talking to Redis ------------------------------------------------------------------------------

def describe_error(exc: BaseException, timeout: float) -> str:
    """One line saying what went wrong; mentions 'auth' for authentication failures."""
    from redis import exceptions as rex

    text = " ".join(str(exc).split()) or type(exc).__name__
    upper = text.upper()
    if (isinstance(exc, rex.AuthenticationError) or "WRONGPASS" in upper or "NOAUTH" in upper
            or "INVALID PASSWORD" in upper or "INVALID USERNAME-PASSWORD" in upper):
        return f"auth failed: {text}"
    if isinstance(exc, getattr(rex, "NoPermissionError", ())) or upper.startswith("NOPERM") or " NOPERM" in upper:
        return f"permission denied (check the monitoring ACL user): {text}"
    if "[SSL" in text or isinstance(exc, ssl.SSLError):
        return f"TLS failed (the server's certificate, tls_ca_file or the client certificate): {text}"
    if isinstance(exc, rex.TimeoutError | socket.timeout):
        return f"timed out after {timeout:g} s: {text}"
    if isinstance(exc, rex.ConnectionError | OSError):
        return f"cannot connect: {text}"
    return f"{type(exc).__name__}: {text}"


def probe_certificate(settings: connection.ConnectionSettings, timeout: float) -> TLSProbe:
    """One TLS handshake with host:port, verified as the tools' connections are (no AUTH, no command):
    the served certificate's notAfter. Connecting and the handshake take at most `timeout` together."""
    started, now = time.monotonic(), time.time()
    deadline = started + timeout
    address = settings.address

    def failed(error: str) -> TLSProbe:
        return TLSProbe(address, started, now, error=error)

    try:
        context = settings.ssl_context()
        with socket.create_connection((settings.host, settings.port), timeout) as raw:
            raw.settimeout(max(deadline - time.monotonic(), 0.001))
            with context.wrap_socket(raw, server_hostname=settings.host) as tls:
                certificate = tls.getpeercert()
    except connection.TLSFilesError as exc:
        return failed(str(exc))
    except ssl.SSLCertVerificationError as exc:
        return failed(f"certificate not accepted: {exc.verify_message}")
    except TimeoutError:
        return failed(f"no answer within {timeout:.2f} s")
    except OSError as exc:
        return failed(" ".join(str(exc).split()) or type(exc).__name__)
    return TLSProbe(address, started, now, not_after=ssl.cert_time_to_seconds(certificate["notAfter"]))


def _raw_connection(settings: connection.ConnectionSettings, timeout: float):
    """A single redis-py Connection built from the settings' client: no pool, no retries, named."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = settings.client(timeout=timeout)
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs.update(client_name=CLIENT_NAME, retry=Retry(NoBackoff(), 0), retry_on_error=[], health_check_interval=0)
    # redis-py >= 5 sends CLIENT SETINFO on connect; the monitoring user may not run it.
    for key in ("driver_info", "lib_name", "lib_version"):
        if key in kwargs:
            kwargs[key] = None
    return pool.connection_class(**kwargs)


class _Session:
    """Sends commands on one connection and counts them."""

    def __init__(self, conn):
        self.conn = conn
        self.commands = 0

    def call(self, *args):
        self.commands += 1
        self.conn.send_command(*args)
        return self.conn.read_response()

    def pipeline(self, *commands) -> list:
        """Send all commands in one write; replies in order, an error reply as its exception object."""
        from redis.exceptions import ResponseError

        self.commands += len(commands)
        self.conn.send_packed_command(self.conn.pack_commands(commands))
        replies = []
        for _ in commands:
            try:
                replies.append(self.conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies


class InstanceChecker:
    """Checks one configured instance; keeps the state between cycles. Not thread-safe: the monitor
    runs at most one check of an instance at a time."""

    def __init__(self, instance: InstanceConfig, config: Config):
        self.instance = instance
        self.config = config
        self.state = InstanceState()
        self.key = f"{KEY_PREFIX}{socket.gethostname()}:{instance.name}"

    def _result(self, checks, started, started_wall, address, up, **extra) -> InstanceResult:
        counters = self.state.counters
        counters["checks"] += 1
        result = InstanceResult(name=self.instance.name, address=address, checks=checks, time=started_wall,
                                duration=time.monotonic() - started, up=up,
                                replication_group=self.instance.replication_group, **extra)
        if result.status == "unhealthy":
            counters["check_failures"] += 1
        result.counters = dict(counters)
        return result

    def tls_check(self, now: float) -> CheckResult | None:
        probe = self.state.tls_probe
        return evaluate_tls_certificate(probe, self.config.thresholds, now) if probe is not None else None

    def _probe_tls(self, settings: connection.ConnectionSettings, started: float, restarted: bool) -> None:
        """Read the certificate on the TLS port when it is due, within what is left of the timeout."""
        probe = self.state.tls_probe
        due = (probe is None or probe.address != settings.address or restarted
               or time.monotonic() - probe.monotonic >= TLS_PROBE_INTERVAL)
        budget = self.config.timeout - (time.monotonic() - started)
        if due and budget >= TLS_PROBE_MIN_BUDGET:
            self.state.tls_probe = probe_certificate(settings, budget)

    def backup_check(self, now: float) -> tuple[CheckResult | None, dict | None]:
        if not self.instance.backup_status_file:
            return None, None
        return evaluate_backup(self.instance, self.config.thresholds, now)

    def maintenance_check(self, now: float) -> tuple[CheckResult | None, dict | None]:
        if not self.instance.maintenance_status_file:
            return None, None
        try:
            return evaluate_maintenance(self.instance, self.config.thresholds, now)
        except Exception as exc:  # whatever the file holds, it must not make the whole check unhealthy
            return CheckResult("maintenance", DEGRADED, None, None,
                               f"maintenance status file {self.instance.maintenance_status_file}: internal error: "
                               f"{type(exc).__name__}: {exc}", "s"), None

    def timed_out_result(self, started_wall: float, waited: float) -> InstanceResult:
        """The result published when a check did not finish in time (the server hangs)."""
        checks = [CheckResult("connection", "unhealthy", None, {"timeout_seconds": self.config.timeout},
                              f"check did not finish within {waited:.1f} s (server hung or unreachable)", "ms")]
        now = time.time()
        probe = self.state.tls_probe
        tls = self.tls_check(now)
        if tls:
            checks.append(tls)
        backup, summary = self.backup_check(now)
        if backup:
            checks.append(backup)
        maintenance, maintenance_summary = self.maintenance_check(now)
        if maintenance:
            checks.append(maintenance)
        result = InstanceResult(name=self.instance.name, address="", checks=checks, time=started_wall,
                                duration=waited, up=False, backup=summary, maintenance=maintenance_summary,
                                counters=dict(self.state.counters), replication_group=self.instance.replication_group,
                                timed_out=True, tls_certificate_expiry=probe.not_after if probe else None)
        return result

    def run(self) -> InstanceResult:
        started, now = time.monotonic(), time.time()
        try:
            return self._run(started, now)
        except Exception as exc:  # never let one instance take the loop down
            checks = [CheckResult("connection", UNHEALTHY, None, None, f"internal error: {describe_error(exc, 0)}")]
            return self._result(checks, started, now, "", False)

    def _run(self, started: float, now: float) -> InstanceResult:
        thresholds, timeout = self.config.thresholds, self.config.timeout
        conn_threshold = {"timeout_seconds": timeout}
        checks: list[CheckResult] = []
        backup, backup_summary = self.backup_check(now)
        maintenance, maintenance_summary = self.maintenance_check(now)

        def finish(up: bool, **extra) -> InstanceResult:
            # the certificate's last known end, also while the server does not answer
            probe = self.state.tls_probe
            tls = self.tls_check(now)
            if tls:
                checks.append(tls)
            if backup:
                checks.append(backup)
            if maintenance:
                checks.append(maintenance)
            return self._result(checks, started, now, address, up, backup=backup_summary,
                                maintenance=maintenance_summary,
                                tls_certificate_expiry=probe.not_after if probe else None, **extra)

        address = ""
        try:
            settings = connection.load(self.instance.connection_file)
        except connection.ConnectionFileError as exc:
            checks.append(CheckResult("connection", UNHEALTHY, None, conn_threshold, f"connection file: {exc}", "ms"))
            return finish(False)
        if not settings.tls:
            self.state.tls_probe = None
        use_socket = bool(settings.unix_socket) and os.access(settings.unix_socket, os.R_OK | os.W_OK)
        address = settings.unix_socket if use_socket else settings.address
        user = settings.username or "default"
        if settings.tls and not use_socket:
            try:    # redis-py would only say "Error 2 connecting to ..."
                settings.ssl_context()
            except connection.TLSFilesError as exc:
                checks.append(CheckResult("connection", UNHEALTHY, None, conn_threshold,
                                          f"connection file {self.instance.connection_file}: {exc}", "ms"))
                return finish(False)

        conn = None
        session = None
        try:
            conn = _raw_connection(settings, timeout)
            session = _Session(conn)
            t0 = time.monotonic()
            conn.connect()          # AUTH (when a password is set) + CLIENT SETNAME
            session.commands += 2 if (settings.password or settings.username) else 1
            connect_seconds = time.monotonic() - t0
        except Exception as exc:
            if session is not None:
                self.state.counters["commands"] += session.commands
            checks.append(CheckResult("connection", UNHEALTHY, None, conn_threshold,
                                      f"{address} as {user}: {describe_error(exc, timeout)}", "ms"))
            _close(conn)
            return finish(False)

        try:
            t0 = time.monotonic()
            pong = session.call("PING")
            ping_seconds = time.monotonic() - t0
            info_reply, slowlog_reply, slowlog_len = session.pipeline(
                ("INFO", "all"), ("SLOWLOG", "GET", str(SLOWLOG_FETCH)), ("SLOWLOG", "LEN"))
            if isinstance(info_reply, Exception):
                raise info_reply
            info = parse_info(info_reply if isinstance(info_reply, str) else info_reply.decode("utf-8", "replace"))
            role = info.get("role", "")
            key, cluster_info, reading = self.key, None, ()
            if info.get("cluster_enabled") == "1":
                # A cluster node: its view of the cluster, and a key in a slot it serves (a replica reads
                # its primary's slots after READONLY), so the round trip is not redirected.
                cluster_reply, nodes_reply = session.pipeline(("CLUSTER", "INFO"), ("CLUSTER", "NODES"))
                if not isinstance(cluster_reply, Exception):
                    cluster_info = parse_info(cluster_reply if isinstance(cluster_reply, str)
                                              else cluster_reply.decode("utf-8", "replace"))
                    info.update(cluster_info)
                else:
                    cluster_info = {"cluster_state": f"unknown ({describe_error(cluster_reply, timeout)})"}
                if not isinstance(nodes_reply, Exception):
                    key = cluster_key(self.key, nodes_reply if isinstance(nodes_reply, str)
                                      else nodes_reply.decode("utf-8", "replace"))
                reading = (("READONLY",),)
            t0 = time.monotonic()
            if role == "master":
                token = f"{now:.6f}:{os.getpid()}"
                op_replies = session.pipeline(("SET", key, token, "PX", "30000"), ("GET", key), ("DEL", key))
                op_what = "SET/GET/DEL round trip"
            else:
                op_replies = session.pipeline(*reading, ("EXISTS", key))[len(reading):]
                op_what = "EXISTS round trip (replica, read-only)"
            roundtrip_seconds = time.monotonic() - t0
        except Exception as exc:
            self.state.counters["commands"] += session.commands
            _close(conn)
            checks.append(CheckResult("connection", UNHEALTHY, _ms(connect_seconds), conn_threshold,
                                      f"{address} as {user}: connected, then {describe_error(exc, timeout)}", "ms"))
            return finish(False)
        _close(conn)
        self.state.counters["commands"] += session.commands

        kind, version = server_kind(info)
        checks.append(CheckResult("connection", HEALTHY, _ms(connect_seconds), conn_threshold,
                                  f"connected to {kind} {version} at {address} as {user} "
                                  f"in {connect_seconds * 1000:.2f} ms", "ms"))
        if str(pong).upper() not in ("PONG", "TRUE"):
            checks.append(CheckResult("ping", UNHEALTHY, _ms(ping_seconds), None, f"unexpected PING reply {pong!r}",
                                      "ms"))
        else:
            checks.append(evaluate_latency("ping", ping_seconds, thresholds, "PONG"))
        checks.append(self._roundtrip_check(role, op_replies, roundtrip_seconds, op_what, token if role == "master"
                                            else None, key))
        checks.append(evaluate_memory(info, thresholds))
        checks.append(evaluate_clients(info, thresholds))
        uptime_check = evaluate_uptime(info, self.state)
        restarted = uptime_check.status != HEALTHY
        checks.append(uptime_check)
        checks.append(evaluate_replication(info, thresholds, self.instance.expected_replicas))
        checks.append(evaluate_persistence(info, thresholds, now))
        if cluster_info is not None:
            checks.append(evaluate_cluster(cluster_info))

        # slow log: entries above the threshold not seen before
        entries = parse_slowlog(slowlog_reply) if not isinstance(slowlog_reply, Exception) else []
        max_id = max((entry.id for entry in entries), default=-1)
        last_id = self.state.slowlog_last_id
        if last_id is not None and (restarted or max_id < last_id):
            last_id = -1   # a restart resets the ids: every entry is new
        if isinstance(slowlog_reply, Exception):
            checks.append(CheckResult("slowlog", DEGRADED, None, None,
                                      f"SLOWLOG GET failed: {describe_error(slowlog_reply, timeout)}"))
        else:
            new_entries = select_new_slow_entries(entries, last_id, now, self.config.interval)
            slow_check = evaluate_slowlog(new_entries, thresholds, first=last_id is None)
            self.state.counters["slow_queries"] += slow_check.value or 0
            checks.append(slow_check)
            self.state.slowlog_last_id = max(max_id, last_id if last_id is not None else -1)

        rejected = to_int(info.get("rejected_connections"))
        evicted = to_int(info.get("evicted_keys"))
        check, _ = evaluate_counter_delta("rejected_connections", "rejected connections", rejected,
                                          self.state.rejected_connections, restarted,
                                          thresholds.rejected_connections_degraded)
        checks.append(check)
        check, _ = evaluate_counter_delta("evicted_keys", "evicted keys", evicted, self.state.evicted_keys,
                                          restarted, thresholds.evicted_keys_degraded)
        checks.append(check)

        self.state.run_id = info.get("run_id")
        self.state.uptime = to_int(info.get("uptime_in_seconds"))
        self.state.rejected_connections = rejected
        self.state.evicted_keys = evicted
        if settings.tls:
            self._probe_tls(settings, started, restarted)

        newest = entries[0] if entries else None
        return finish(True, info=info,
                      slowlog_length=slowlog_len if isinstance(slowlog_len, int) else None,
                      slowlog_last_id=newest.id if newest else 0,
                      last_slow_duration=newest.duration_us / 1e6 if newest else 0.0,
                      ping_seconds=ping_seconds, roundtrip_seconds=roundtrip_seconds)

    def _roundtrip_check(self, role: str, replies: list, seconds: float, what: str, token: str | None,
                         key: str | None = None) -> CheckResult:
        key = key or self.key
        thresholds = self.config.thresholds
        errors = [reply for reply in replies if isinstance(reply, Exception)]
        if errors:
            return CheckResult("roundtrip", UNHEALTHY, _ms(seconds), None,
                               f"{what} on {key} failed: {describe_error(errors[0], self.config.timeout)}", "ms")
        if token is not None:
            set_reply, get_reply, _ = replies
            if str(set_reply).upper() not in ("OK", "TRUE") or get_reply != token:
                return CheckResult("roundtrip", UNHEALTHY, _ms(seconds), None,
                                   f"{what} on {key} returned unexpected replies "
                                   f"(SET {set_reply!r}, GET {get_reply!r})", "ms")
        return evaluate_latency("roundtrip", seconds, thresholds, what)


def _close(conn) -> None:
    if conn is None:
        return
    with contextlib.suppress(Exception):   # closing a broken socket may fail; nothing to do about it
        conn.disconnect()
