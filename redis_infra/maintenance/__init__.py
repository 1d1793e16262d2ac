"""Maintenance routine for one Redis/Valkey instance: `python3 -m redis_infra.maintenance`.

The platform guide's weekly and monthly routine as one report: the slow log (command names only),
memory and fragmentation with MEMORY DOCTOR, LATENCY DOCTOR, key patterns by `namespace:type` prefix
(sampled with a throttled SCAN, preferably on a replica) against the expected TTLs, and a backup
drill that restores the latest backup into a scratch server on the host and compares it with the
source. It writes the report as JSON and Markdown and a status file the health checker reads.
See docs/maintenance.md.

The package must import without redis-py installed: only the sections that talk to Redis need it.
"""

from __future__ import annotations

# Each section's verdict, worst last; the report's result is "failed" when a section failed or erred.
OK, SKIPPED, WARNING, FAILED, ERROR = "ok", "skipped", "warning", "failed", "error"
SECTIONS = ("slowlog", "memory", "latency", "keys", "drill")
DEFAULT_CONFIG_DIR = "/etc/redis-infra/maintenance"


class MaintenanceError(Exception):
    """A problem the tool reports in one line (a bad config, an unreadable file)."""


__all__ = ["DEFAULT_CONFIG_DIR", "ERROR", "FAILED", "OK", "SECTIONS", "SKIPPED", "WARNING", "MaintenanceError"]
