"""Run the sections, and write the report (JSON and Markdown) and the status file."""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime

from . import ERROR, FAILED, OK, SECTIONS, SKIPPED, WARNING
from .config import MaintenanceConfig

WORST = [OK, SKIPPED, WARNING, FAILED, ERROR]


def run(cfg: MaintenanceConfig, wanted: list[str], settings, clock=lambda: datetime.now(UTC)) -> dict:
    """The report of the sections in `wanted` (in SECTIONS order); a section that raises is an error
    section naming the exception, and the others still run."""
    from . import drill, sections

    cluster_node = []

    def connect(db: int = 0, decode: bool = False):
        # On a cluster node every connection (pipelines' too) says READONLY first: a replica of a cluster serves
        # reads only after it, and answers MOVED before.
        client = settings.client(timeout=60.0, decode_responses=decode, db=db,
                                 redis_connect_func=_readonly_on_connect if cluster_node else None)
        # redis-py >= 5 names itself with CLIENT SETINFO on connect, which the maintenance user may not run
        # (each refusal would land in the server's ACL LOG); set on the pool, as the health checker does.
        kwargs = client.connection_pool.connection_kwargs
        for key in ("driver_info", "lib_name", "lib_version"):
            if key in kwargs:
                kwargs[key] = None
        return client

    started = clock()
    text = connect(decode=True)
    text.ping()     # a server that is down ends the run here, in one line (cli.py), with nothing written
    if str(text.info("cluster").get("cluster_enabled", 0)) == "1":
        cluster_node.append(True)
        text = connect(decode=True)
    server_binary = None
    report = {"instance": cfg.instance, "host": socket.getfqdn(), "started": started.isoformat(timespec="seconds"),
              "sections": {}}
    for name in SECTIONS:
        if name not in wanted:
            continue
        try:
            if name == "slowlog":    # bytes: the slow log keeps 128 bytes of each argument, cut anywhere
                result = sections.slowlog(connect(), cfg)
            elif name == "memory":
                if server_binary is None:
                    server_binary = _server_or_none(cfg)
                result = sections.memory(text, cfg, server_binary, cfg.drill.scratch_dir or None)
            elif name == "latency":
                result = sections.latency(text, cfg)
            elif name == "keys":
                result = sections.keys(connect, cfg)
            else:
                result = drill.drill(cfg, connect, now=clock())
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            result = sections.section(ERROR, f"{type(exc).__name__}: {exc}", [f"the section failed: {exc}"])
        result["time"] = clock().isoformat(timespec="seconds")
        report["sections"][name] = result
    if "server" not in report:
        info = text.info("server")
        report["server"] = {"engine": "valkey" if "valkey_version" in info else "redis",
                            "version": info.get("valkey_version") or info.get("redis_version")}
    report["finished"] = clock().isoformat(timespec="seconds")
    report["ran"] = [name for name in SECTIONS if name in report["sections"]]
    return summarize(report)


def summarize(report: dict) -> dict:
    statuses = [section["status"] for section in report["sections"].values()]
    report["result"] = FAILED if any(status in (FAILED, ERROR) for status in statuses) else OK
    report["warnings"] = sum(len(section.get("findings", [])) for section in report["sections"].values()
                             if section["status"] == WARNING)
    return report


def merged(cfg: MaintenanceConfig, report: dict) -> dict:
    """A run of some sections (a tag of playbooks/maintenance.yml) keeps the last result of the others, in the
    report and in the status: a slow-log review must not clear a failed drill."""
    if not cfg.report_dir:
        return report
    try:
        with open(os.path.join(cfg.report_dir, "report.json"), encoding="utf-8") as handle:
            previous = json.load(handle)
    except (OSError, ValueError):
        return report
    if not isinstance(previous, dict) or previous.get("instance") != report["instance"] or \
            not isinstance(previous.get("sections"), dict):
        return report
    sections = {name: previous["sections"][name] for name in SECTIONS if name in previous["sections"]}
    sections.update(report["sections"])
    return summarize(dict(report, sections={name: sections[name] for name in SECTIONS if name in sections}))


def _readonly_on_connect(connection) -> None:
    connection.on_connect()
    connection.send_command("READONLY")
    answer = connection.read_response()
    if answer not in (b"OK", "OK"):
        raise ConnectionError(f"READONLY answered {answer!r}")


def _server_or_none(cfg: MaintenanceConfig) -> str | None:
    from . import MaintenanceError

    check_rdb = None
    if cfg.backup_config:
        try:
            from redis_infra.backup import config as backup_config

            check_rdb = backup_config.load(cfg.backup_config).check_rdb
        except Exception:  # noqa: BLE001 - only a hint for where the server binary is
            check_rdb = None
    try:
        return cfg.server_binary(check_rdb)
    except MaintenanceError:
        return None


def status_of(report: dict) -> dict:
    """The status file's content: what the health checker reads (docs/health.md)."""
    drill = report["sections"].get("drill")
    drill_status = None
    if drill is not None:
        # Findings name no key (names stay in the 0600 report): this file is world-readable.
        drill_status = {"result": drill["status"] if drill["status"] in (OK, SKIPPED) else
                        (OK if drill["status"] == WARNING else FAILED),
                        "time": drill.get("time", report["finished"]), "backup_id": drill.get("backup_id"),
                        "duration_seconds": drill.get("duration_s"),
                        "error": "; ".join(drill["findings"]) if drill["status"] in (FAILED, ERROR) else None}
    return {"instance": report["instance"], "time": report["finished"], "result": report["result"],
            "sections": {name: section["status"] for name, section in report["sections"].items()},
            "drill": drill_status, "warnings": report["warnings"]}


def markdown(report: dict) -> str:
    lines = [f"# Maintenance report: {report['instance']} on {report['host']}", "",
             f"{report['server']['engine']} {report['server']['version']}, {report['started']} to "
             f"{report['finished']}: **{report['result']}**, {report['warnings']} warning(s).", ""]
    for name, section in report["sections"].items():
        ran = "" if name in report.get("ran", [name]) else f" (from the run of {section.get('time', 'an earlier run')})"
        lines += [f"## {name}: {section['status']}{ran}", "", section["summary"], ""]
        lines += [f"- {finding}" for finding in section.get("findings", [])]
        if section.get("findings"):
            lines.append("")
        lines += _tables(name, section)
    return "\n".join(lines).rstrip() + "\n"


def _table(header: list[str], rows: list[list]) -> list[str]:
    if not rows:
        return []
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |" for row in rows] + [""])


def _tables(name: str, section: dict) -> list[str]:
    if name == "slowlog":
        return _table(["command", "entries", "max ms", "total ms"],
                      [[s["command"], s["count"], s["max_us"] / 1000, s["total_us"] / 1000]
                       for s in section.get("by_command", [])])
    if name == "memory":
        rows = [[key, value] for key, value in section.get("info", {}).items()]
        defrag = section.get("active_defrag", {})
        rows.append(["active defragmentation", defrag.get("detail")])
        doctor = section.get("doctor", "").strip()
        return _table(["figure", "value"], rows) + ([f"MEMORY DOCTOR: {doctor}", ""] if doctor else [])
    if name == "latency":
        doctor = section.get("doctor", "").strip()
        return (_table(["event", "latest ms", "max ms"],
                       [[e["event"], e["latest_ms"], e["max_ms"]] for e in section.get("events", [])])
                + (["```", doctor, "```", ""] if doctor else []))
    if name == "keys":
        return (_table(["prefix", "keys", "bytes", "no TTL %", "TTL median s", "TTL max s", "expected TTL s"],
                       [[p["prefix"], p["keys"], p["bytes"], p["no_ttl_share_percent"], p["ttl_median_s"],
                         p["ttl_max_s"], p["expected_ttl_s"]] for p in section.get("prefixes", [])])
                + _table(["biggest keys", "db", "type", "bytes"],
                         [[k["key"], k["db"], k["type"], k["bytes"]] for k in section.get("big_keys", [])]))
    if name == "drill" and "sample" in section:
        sample = section["sample"]
        return _table(["figure", "value"], [[key, section.get(key)] for key in (
            "backup_id", "backup_age_s", "rdb_size", "unpack_s", "load_s", "restored_keys", "expired_at_load",
            "recorded_keys", "key_drift_percent", "duration_s")] + [
            ["sampled values: same / changed since / gone / skipped",
             f"{sample['same']} / {sample['changed_since']} / {sample['gone']} / {sample['skipped']}"]])
    return []


def write_atomically(path: str, text: str, mode: int) -> None:
    """The backup tool's atomic write (temporary file, fsync, rename), into a directory made if missing, with
    `mode` whatever the umask."""
    from redis_infra.backup.storage import atomic_write_text

    os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)
    atomic_write_text(path, text, mode)
    os.chmod(path, mode)


def write(cfg: MaintenanceConfig, report: dict) -> list[str]:
    """The report (0600: it names keys) and the status file (0644: verdicts only); the paths written."""
    written = []
    report = merged(cfg, report)
    if cfg.report_dir:
        for name, text, mode in (("report.json", json.dumps(report, indent=2, sort_keys=True) + "\n", 0o600),
                                 ("report.md", markdown(report), 0o600)):
            path = os.path.join(cfg.report_dir, name)
            write_atomically(path, text, mode)
            written.append(path)
    if cfg.status_file:
        write_atomically(cfg.status_file, json.dumps(status_of(report), indent=2, sort_keys=True) + "\n", 0o644)
        written.append(cfg.status_file)
    return written
