"""The report's sections that read a live instance: slow log, memory, latency and key patterns.

Each returns a dict: `status` (ok, warning, skipped, failed or error), `summary` (one line),
`findings` (what an operator should look at, one line each) and the section's figures. Nothing here
writes to the instance; the key sampling is a throttled SCAN with TYPE, PTTL and MEMORY USAGE.
"""

from __future__ import annotations

import statistics
import time

from . import ERROR, OK, SKIPPED, WARNING
from .config import MaintenanceConfig
from .scratch import probe_active_defrag

# Commands whose second word names what they do (CONFIG GET, CLIENT LIST): reported as config|get.
CONTAINERS = {"acl", "client", "cluster", "command", "config", "debug", "function", "latency", "memory", "module",
              "object", "pubsub", "script", "slowlog", "xgroup", "xinfo"}
FRAGMENTATION_MIN_BYTES = 100 * 1024 * 1024   # below this, the ratios say nothing (the allocator's own pages)
NO_NAMESPACE = "(no namespace)"


def as_text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def section(status: str, summary: str, findings: list[str] | None = None, **figures) -> dict:
    return {"status": status, "summary": summary, "findings": findings or [], **figures}


def command_name(args: list) -> str:
    """The command of a slow log entry without its arguments (which hold keys and values)."""
    if not args:
        return "?"
    name = as_text(args[0]).lower()
    if name in CONTAINERS and len(args) > 1:
        name += "|" + as_text(args[1]).lower()
    return name


def slowlog(client, cfg: MaintenanceConfig) -> dict:
    entries = client.execute_command("SLOWLOG", "GET", "-1" if _accepts_all(client) else "1024")
    rows = [{"id": int(e[0]), "time": int(e[1]), "duration_us": int(e[2]), "command": command_name(e[3])}
            for e in entries]
    threshold_us = cfg.slow_ms * 1000
    by_command: dict[str, dict] = {}
    for row in rows:
        stats = by_command.setdefault(row["command"], {"command": row["command"], "count": 0, "max_us": 0,
                                                       "total_us": 0})
        stats["count"] += 1
        stats["max_us"] = max(stats["max_us"], row["duration_us"])
        stats["total_us"] += row["duration_us"]
    slow = [row for row in rows if row["duration_us"] >= threshold_us]
    top = sorted(rows, key=lambda row: -row["duration_us"])[:cfg.slowlog_top]
    findings = [f"{len(slow)} entr{'y' if len(slow) == 1 else 'ies'} at or above {cfg.slow_ms:g} ms, the slowest "
                f"{top[0]['command']} at {top[0]['duration_us'] / 1000:.1f} ms"] if slow else []
    summary = (f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'} in the slow log, {len(slow)} at or above "
               f"{cfg.slow_ms:g} ms"
               if rows else "the slow log is empty")
    return section(WARNING if slow else OK, summary, findings, entries=len(rows), slow_entries=len(slow),
                   threshold_ms=cfg.slow_ms, top=top,
                   by_command=sorted(by_command.values(), key=lambda s: (-s["max_us"], s["command"])))


def _accepts_all(client) -> bool:
    """SLOWLOG GET -1 (every entry) exists since Redis 7.0 and in Valkey."""
    version = str(client.info("server").get("redis_version", "0"))
    return int(version.split(".", maxsplit=1)[0]) >= 7


def memory(client, cfg: MaintenanceConfig, server_binary: str | None, scratch_parent: str | None) -> dict:
    info = client.info("memory")
    used, maxmemory = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    rss = int(info.get("used_memory_rss", 0))
    ratio = float(info.get("mem_fragmentation_ratio", 0) or 0)
    findings = []
    share = round(100.0 * used / maxmemory, 1) if maxmemory else None
    if maxmemory == 0:
        findings.append("maxmemory is 0: the instance grows until the host runs out of memory")
    elif share >= 80:
        findings.append(f"used memory is {share}% of maxmemory (the guide's alert threshold is 80%)")
    if max(rss, used) >= FRAGMENTATION_MIN_BYTES:
        if ratio > 1.5:
            findings.append(f"mem_fragmentation_ratio {ratio} (RSS {rss} bytes for {used} used): memory is "
                            "fragmented; a restart (rolled, replicas first) or active defragmentation gives it back")
        elif 0 < ratio < 1:
            findings.append(f"mem_fragmentation_ratio {ratio}: part of the dataset is swapped out")
    doctor = as_text(client.execute_command("MEMORY", "DOCTOR"))
    defrag = {"supported": None, "detail": "not probed (no server binary)"}
    if server_binary:
        try:
            supported, detail = probe_active_defrag(server_binary, scratch_parent, cfg.drill.scratch_user)
            defrag = {"supported": supported, "detail": detail}
        except Exception as exc:  # noqa: BLE001 - a failed probe is a line of the report, not a failed routine
            defrag = {"supported": None, "detail": f"probe failed: {exc}"}
    summary = (f"{used} bytes used" + (f" of {maxmemory} ({share}%)" if maxmemory else ", no maxmemory")
               + f", fragmentation ratio {ratio}, active defragmentation "
               + {True: "available", False: "not available in this build", None: "unknown"}[defrag["supported"]])
    fields = ("used_memory", "used_memory_rss", "used_memory_peak", "used_memory_dataset", "maxmemory",
              "maxmemory_policy", "mem_fragmentation_ratio", "mem_fragmentation_bytes", "allocator_frag_ratio",
              "allocator_rss_ratio", "mem_allocator", "active_defrag_running")
    return section(WARNING if findings else OK, summary, findings, used_share_percent=share,
                   info={key: info.get(key) for key in fields if key in info}, doctor=doctor, active_defrag=defrag)


def latency(client, cfg: MaintenanceConfig) -> dict:
    # From the config the role writes: the maintenance user may not run CONFIG GET (it would show masterauth).
    threshold = cfg.latency_threshold_ms
    if threshold is None:
        threshold = int(client.config_get("latency-monitor-threshold").get("latency-monitor-threshold", 0))
    events = [{"event": as_text(e[0]), "time": int(e[1]), "latest_ms": int(e[2]), "max_ms": int(e[3])}
              for e in client.execute_command("LATENCY", "LATEST")]
    doctor = as_text(client.execute_command("LATENCY", "DOCTOR"))
    findings = []
    if threshold == 0:
        findings.append("latency-monitor-threshold is 0: the latency monitor records nothing "
                        "(set redis_server_latency_monitor_threshold)")
    for event in events:
        if event["max_ms"] >= cfg.slow_ms:
            findings.append(f"latency event {event['event']}: up to {event['max_ms']} ms")
    summary = (f"latency monitor at {threshold} ms, {len(events)} event type(s) recorded" if threshold
               else "latency monitor off")
    return section(WARNING if findings else OK, summary, findings, threshold_ms=threshold, events=events,
                   doctor=doctor)


def prefix_of(key: str) -> str:
    """`namespace:type` of a `namespace:type:id` key; `namespace` of `namespace:id`."""
    parts = key.split(":")
    if len(parts) >= 3:
        return f"{parts[0]}:{parts[1]}"
    return parts[0] if len(parts) == 2 else NO_NAMESPACE


def expected_ttl_for(prefix: str, expected: dict) -> tuple[str, int] | None:
    """The longest configured prefix that the key prefix starts with, and its TTL."""
    matches = [name for name in expected if prefix == name or prefix.startswith(name + ":")]
    return (max(matches, key=len), expected[max(matches, key=len)]) if matches else None


def keys(connect, cfg: MaintenanceConfig, sleep=time.sleep) -> dict:
    """`connect(db)` gives a client (bytes, not decoded: key names need not be UTF-8) of database db."""
    client = connect(0)
    replication = client.info("replication")
    role = replication.get("role")
    if role == "master" and int(replication.get("connected_slaves", 0)) > 0 and not cfg.keys.on_primary:
        return section(SKIPPED, "a primary with replicas: the keys are sampled on a replica (keys.on_primary)",
                       role=role)
    keyspace = client.info("keyspace")
    dbs = sorted(int(name[2:]) for name in keyspace if name.startswith("db"))
    total = sum(int(value.get("keys", 0)) for value in keyspace.values() if isinstance(value, dict))
    prefixes: dict[str, dict] = {}
    big: list[dict] = []
    errors: list[str] = []
    sampled, started = 0, time.monotonic()
    for db in dbs:
        conn = client if db == 0 else connect(db)
        cursor = 0
        while sampled < cfg.keys.sample:
            cursor, names = conn.scan(cursor, count=cfg.keys.scan_count)
            names = names[:cfg.keys.sample - sampled]
            if names:
                pipe = conn.pipeline(transaction=False)
                for name in names:
                    pipe.type(name)
                    pipe.pttl(name)
                    pipe.execute_command("MEMORY", "USAGE", name, "SAMPLES", "5")
                answers = pipe.execute(raise_on_error=False)
                for index, name in enumerate(names):
                    kind, pttl, usage = answers[3 * index:3 * index + 3]
                    failed = next((answer for answer in (kind, pttl) if isinstance(answer, Exception)), None)
                    if failed is not None:
                        errors.append(f"{type(failed).__name__}: {failed}")
                        continue
                    _count(prefixes, big, cfg, as_text(name), db, as_text(kind), pttl, usage)
                sampled += len(names)
            if cursor == 0:
                break
            sleep(cfg.keys.pause_ms / 1000.0)
    rows, findings = _prefix_rows(prefixes, cfg)
    top = sorted(big, key=lambda row: -row["bytes"])[:cfg.keys.big_keys]
    if errors and len(errors) >= sampled:
        return section(ERROR, f"every key read failed, e.g. {errors[0]}", [f"the key reads failed: {errors[0]}"],
                       role=role, keys_total=total, keys_sampled=0)
    if errors:
        findings.append(f"{len(errors)} of {sampled} key reads failed, e.g. {errors[0]}")
    summary = (f"{sampled} of {total} keys sampled on the {'replica' if role != 'master' else 'primary'} "
               f"in {time.monotonic() - started:.1f}s, {len(rows)} prefixes")
    return section(WARNING if findings else OK, summary, findings, role=role, keys_total=total,
                   keys_sampled=sampled, prefixes=rows, big_keys=top)


def _count(prefixes: dict, big: list, cfg: MaintenanceConfig, name: str, db: int, kind: str, pttl, usage) -> None:
    if pttl == -2:    # gone between SCAN and PTTL
        return
    size = usage if isinstance(usage, int) else 0
    prefix = prefix_of(name)
    stats = prefixes.setdefault(prefix, {"prefix": prefix, "keys": 0, "bytes": 0, "no_ttl": 0, "ttls": [],
                                         "types": {}})
    stats["keys"] += 1
    stats["bytes"] += size
    stats["types"][kind] = stats["types"].get(kind, 0) + 1
    if pttl == -1:
        stats["no_ttl"] += 1
    else:
        stats["ttls"].append(pttl / 1000.0)
    big.append({"key": name, "db": db, "type": kind, "bytes": size})
    if len(big) > 4 * cfg.keys.big_keys:
        big.sort(key=lambda row: -row["bytes"])
        del big[cfg.keys.big_keys:]


def _prefix_rows(prefixes: dict, cfg: MaintenanceConfig) -> tuple[list[dict], list[str]]:
    rows, findings = [], []
    for stats in sorted(prefixes.values(), key=lambda s: (-s["bytes"], s["prefix"])):
        ttls = stats.pop("ttls")
        stats["no_ttl_share_percent"] = round(100.0 * stats["no_ttl"] / stats["keys"], 1)
        stats["ttl_median_s"] = round(statistics.median(ttls), 1) if ttls else None
        stats["ttl_max_s"] = round(max(ttls), 1) if ttls else None
        expected = expected_ttl_for(stats["prefix"], cfg.keys.expected_ttl)
        stats["expected_ttl_s"] = expected[1] if expected else None
        stats["over_expected"] = sum(1 for ttl in ttls if expected and ttl > expected[1])
        if expected and stats["no_ttl"]:
            findings.append(f"{stats['prefix']}: {stats['no_ttl']} of {stats['keys']} sampled keys have no TTL "
                            f"(expected at most {expected[1]} s, from {expected[0]})")
        if stats["over_expected"]:
            findings.append(f"{stats['prefix']}: {stats['over_expected']} sampled keys live longer than "
                            f"{expected[1]} s")
        rows.append(stats)
    return rows, findings
