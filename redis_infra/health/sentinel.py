"""The host's Sentinel, checked like an instance ([sentinel] in the config).

Each cycle, as Sentinel's read-only ACL user (SENTINEL_REQUIRED_ACL): PING, INFO (its `sentinel`
section lists every primary it watches, with the primary's status in its view and the counts of
replicas and Sentinels), then for each primary SENTINEL REPLICAS, SENTINEL SENTINELS and SENTINEL
CKQUORUM in one pipeline. The metrics keep redis_exporter's names and labels for a Sentinel target
(metrics.py); the checks make the result degraded, never unhealthy: a Sentinel in trouble weakens
failover, it does not stop the instances from serving, and /api/health must not send traffic away
from a healthy Redis for it.
"""

from __future__ import annotations

import time

from .. import connection
from . import DEGRADED, HEALTHY
from .checks import (
    CheckResult,
    InstanceResult,
    InstanceState,
    _close,
    _ms,
    _raw_connection,
    _Session,
    describe_error,
    evaluate_latency,
)
from .config import Config, SentinelConfig
from .info import parse_info, parse_kv, to_int


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _pairs(entry) -> dict[str, str]:
    """A flat [field, value, ...] reply (SENTINEL REPLICAS / SENTINELS entries) -> dict."""
    if isinstance(entry, dict):
        return {_text(key): _text(value) for key, value in entry.items()}
    items = [_text(item) for item in entry]
    return dict(zip(items[::2], items[1::2], strict=False))


def watched_masters(info: dict[str, str]) -> list[dict[str, str]]:
    """The masterN lines of a Sentinel's INFO, in order: name, status (ok, sdown, odown), address,
    slaves, sentinels (the Sentinels that watch it, this one included)."""
    found = []
    for key, value in info.items():
        if key.startswith("master") and key[6:].isdigit():
            entry = parse_kv(value)
            if entry.get("name"):
                found.append((int(key[6:]), entry))
    return [entry for _index, entry in sorted(found, key=lambda item: item[0])]


def count_ok(reply) -> int | None:
    """Entries of a SENTINEL REPLICAS / SENTINELS reply not flagged s_down or o_down (as redis_exporter
    counts them); None when the reply is an error."""
    if isinstance(reply, Exception) or not isinstance(reply, list):
        return None
    flags = [_pairs(entry).get("flags", "") for entry in reply]
    return sum(1 for flag in flags if "s_down" not in flag and "o_down" not in flag)


def evaluate_sentinel(masters: list[dict], expected: tuple[str, ...], tilt: bool) -> CheckResult:
    """Degraded when Sentinel is in TILT mode, misses a primary it must watch, sees one down, or could
    not get a failover authorised for one (CKQUORUM)."""
    problems = []
    if tilt:
        problems.append("in TILT mode (its clock jumped or it was blocked): it acts on nothing until it leaves it")
    names = [master["name"] for master in masters]
    missing = [name for name in expected if name not in names]
    if missing:
        problems.append(f"does not watch {', '.join(missing)}")
    for master in masters:
        if master["status"] != "ok":
            problems.append(f"{master['name']}: the primary at {master['address']} is {master['status']} "
                            "in this Sentinel's view")
        if not master["ckquorum_ok"]:
            problems.append(f"{master['name']}: {master['ckquorum_message']}")
    summary = ", ".join(f"{m['name']} at {m['address']} ({m['ok_slaves']} replicas, {m['ok_sentinels']} Sentinels ok)"
                        for m in masters) or "no primary"
    if problems:
        return CheckResult("sentinel", DEGRADED, len(masters), None, "; ".join(problems), "primaries")
    return CheckResult("sentinel", HEALTHY, len(masters), None, f"watches {summary}; quorum reachable", "primaries")


class SentinelChecker:
    """Checks the host's Sentinel; same interface as checks.InstanceChecker for the monitor."""

    def __init__(self, sentinel: SentinelConfig, config: Config):
        self.instance = sentinel          # the monitor keys its work by instance.name
        self.config = config
        self.state = InstanceState()

    def _result(self, checks, started, started_wall, address, up, **extra) -> InstanceResult:
        counters = self.state.counters
        counters["checks"] += 1
        result = InstanceResult(name=self.instance.name, address=address, checks=checks, time=started_wall,
                                duration=time.monotonic() - started, up=up, kind="sentinel", **extra)
        if not up:      # a Sentinel's result is never unhealthy: count the cycles that could not read it
            counters["check_failures"] += 1
        result.counters = dict(counters)
        return result

    def timed_out_result(self, started_wall: float, waited: float) -> InstanceResult:
        checks = [CheckResult("connection", DEGRADED, None, {"timeout_seconds": self.config.timeout},
                              f"Sentinel's check did not finish within {waited:.1f} s (Sentinel hung or unreachable)",
                              "ms")]
        return InstanceResult(name=self.instance.name, address="", checks=checks, time=started_wall,
                              duration=waited, up=False, counters=dict(self.state.counters), timed_out=True,
                              kind="sentinel")

    def run(self) -> InstanceResult:
        started, now = time.monotonic(), time.time()
        try:
            return self._run(started, now)
        except Exception as exc:  # never let the Sentinel take the loop down
            checks = [CheckResult("connection", DEGRADED, None, None, f"internal error: {describe_error(exc, 0)}")]
            return self._result(checks, started, now, "", False)

    def _run(self, started: float, now: float) -> InstanceResult:
        timeout = self.config.timeout
        threshold = {"timeout_seconds": timeout}
        try:
            settings = connection.load(self.instance.connection_file)
            if settings.tls:
                settings.ssl_context()
        except connection.ConnectionFileError as exc:
            checks = [CheckResult("connection", DEGRADED, None, threshold, f"connection file: {exc}", "ms")]
            return self._result(checks, started, now, "", False)
        address, user = settings.address, settings.username or "default"
        conn = session = None
        try:
            conn = _raw_connection(settings, timeout)
            session = _Session(conn)
            t0 = time.monotonic()
            conn.connect()          # AUTH + CLIENT SETNAME
            session.commands += 2 if (settings.password or settings.username) else 1
            connect_seconds = time.monotonic() - t0
            t0 = time.monotonic()
            pong = session.call("PING")
            ping_seconds = time.monotonic() - t0
            info = parse_info(_text(session.call("INFO")))
            masters = watched_masters(info)
            asks = [(*prefix, master["name"]) for master in masters
                    for prefix in (("SENTINEL", "REPLICAS"), ("SENTINEL", "SENTINELS"), ("SENTINEL", "CKQUORUM"))]
            replies = session.pipeline(*asks) if asks else []
        except Exception as exc:
            if session is not None:
                self.state.counters["commands"] += session.commands
            _close(conn)
            checks = [CheckResult("connection", DEGRADED, None, threshold,
                                  f"Sentinel at {address} as {user}: {describe_error(exc, timeout)}", "ms")]
            return self._result(checks, started, now, address, False)
        _close(conn)
        self.state.counters["commands"] += session.commands

        views = []
        for index, master in enumerate(masters):
            replicas, sentinels, quorum = replies[3 * index:3 * index + 3]
            ok_sentinels = count_ok(sentinels)
            views.append({
                "name": master["name"], "status": master.get("status", ""), "address": master.get("address", ""),
                "slaves": to_int(master.get("slaves")), "sentinels": to_int(master.get("sentinels")),
                "ok_slaves": count_ok(replicas),
                # the Sentinels it knows that are not down, and itself
                "ok_sentinels": ok_sentinels + 1 if ok_sentinels is not None else None,
                "ckquorum_ok": not isinstance(quorum, Exception),
                "ckquorum_message": str(quorum) if isinstance(quorum, Exception) else _text(quorum),
            })
        kind = "valkey" if info.get("server_name") == "valkey" else "redis"
        checks = [CheckResult("connection", HEALTHY, _ms(connect_seconds), threshold,
                              f"connected to {kind} Sentinel at {address} as {user} in "
                              f"{connect_seconds * 1000:.2f} ms", "ms")]
        if _text(pong).upper() not in ("PONG", "TRUE"):
            checks.append(CheckResult("ping", DEGRADED, _ms(ping_seconds), None, f"unexpected PING reply {pong!r}",
                                      "ms"))
        else:
            ping = evaluate_latency("ping", ping_seconds, self.config.thresholds, "PONG")
            if ping.status != HEALTHY:      # a slow Sentinel is degraded at worst
                ping = CheckResult(ping.name, DEGRADED, ping.value, ping.threshold, ping.reason, ping.unit)
            checks.append(ping)
        checks.append(evaluate_sentinel(views, self.instance.masters, info.get("sentinel_tilt") == "1"))
        return self._result(checks, started, now, address, True, info=info, ping_seconds=ping_seconds,
                            sentinel={"masters": views})
