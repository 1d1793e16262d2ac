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

# Commands the routine sends, and nothing else: AUTH/HELLO/SELECT from the client library on connect
# (SELECT for the drill's other databases), INFO, the slow log, MEMORY DOCTOR and USAGE, the latency
# monitor, SCAN with TYPE, PTTL and OBJECT IDLETIME, the read command and the length of each type
# (the drill compares values), and READONLY on a cluster replica. No CONFIG: the latency threshold
# comes from the routine's config (CONFIG GET would also show masterauth).
REQUIRED_COMMANDS: tuple[str, ...] = (
    "+ping", "+hello", "+auth", "+select", "+info", "+slowlog|get", "+memory|doctor", "+memory|usage",
    "+latency|latest", "+latency|doctor", "+scan", "+type", "+pttl", "+object|idletime", "+readonly",
    "+strlen", "+get", "+hlen", "+hgetall", "+llen", "+lrange", "+scard", "+smembers", "+zcard", "+zrange",
    "+xlen", "+xrange",
)

# The complete ACL rule list of the maintenance user (redis_server_maintenance_acl): start from nothing,
# allow the commands above, read (and only read) every key, no pub/sub channels. Append `on >password`
# to build the user, e.g. `user maintenance on >secret <REQUIRED_ACL>` in an ACL file.
REQUIRED_ACL = " ".join(("-@all", *REQUIRED_COMMANDS, "resetkeys", "%R~*", "resetchannels"))


class MaintenanceError(Exception):
    """A problem the tool reports in one line (a bad config, an unreadable file)."""


__all__ = ["DEFAULT_CONFIG_DIR", "ERROR", "FAILED", "OK", "REQUIRED_ACL", "REQUIRED_COMMANDS", "SECTIONS", "SKIPPED",
           "WARNING", "MaintenanceError"]
