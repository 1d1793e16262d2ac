"""Health checker for the Redis/Valkey instances of one host.

One background loop checks every configured instance (default every 30 s) through a monitoring
ACL user; an HTTP server answers `/api/health`, `/api/health/redis` and `/metrics` from the last
results, never waiting on Redis. `python3 -m redis_infra.health check` runs the checks once with
Nagios/Icinga exit codes. See docs/health.md.

The monitoring user needs exactly the rules in `REQUIRED_ACL`; the Ansible role builds the user
from it (`python3 -m redis_infra.health acl` prints it).
"""

from __future__ import annotations

# Commands the checker sends. AUTH/HELLO/SELECT are sent by the client library on connect, ECHO is
# kept for connection probes by other tools running as the same user. On a cluster node the checker
# also reads CLUSTER INFO and CLUSTER NODES, and a replica's round trip needs READONLY.
REQUIRED_COMMANDS: tuple[str, ...] = (
    "+ping", "+info", "+slowlog|get", "+slowlog|len", "+set", "+get", "+del", "+exists",
    "+client|setname", "+hello", "+auth", "+select", "+echo", "+cluster|info", "+cluster|nodes", "+readonly",
)

# Every key the checker touches lives under this prefix (the SET/GET/DEL round trip).
KEY_PREFIX = "redis-infra:health:"
KEY_PATTERN = f"~{KEY_PREFIX}*"

# The complete ACL rule list of the monitoring user, in the order Redis applies it: start from
# nothing (so applying it with ACL SETUSER to an existing user gives exactly these rights), allow
# the commands, the key prefix, and no pub/sub channels. Append `on >password` (or `#sha256`) to
# build the user, e.g. `user monitor on >secret <REQUIRED_ACL>` in an ACL file.
REQUIRED_ACL = " ".join(("-@all", *REQUIRED_COMMANDS, "resetkeys", KEY_PATTERN, "resetchannels"))

# What the checker sends to the host's Sentinel ([sentinel] in its config), as Sentinel's own ACL user:
# reads only. INFO lists the primaries it watches; SENTINEL REPLICAS, SENTINELS and CKQUORUM are asked
# for each.
SENTINEL_REQUIRED_COMMANDS: tuple[str, ...] = (
    "+ping", "+info", "+auth", "+hello", "+client|setname",
    "+sentinel|replicas", "+sentinel|sentinels", "+sentinel|ckquorum",
)
# That user's complete rule list on Sentinel (no keys, no channels): it cannot fail over, reconfigure
# Sentinel (SENTINEL SET, MONITOR, REMOVE, RESET, FLUSHCONFIG), read its config or its ACLs.
SENTINEL_REQUIRED_ACL = " ".join(("-@all", *SENTINEL_REQUIRED_COMMANDS, "resetkeys", "resetchannels"))

# Name the checker gives its connections (CLIENT SETNAME), visible in CLIENT LIST and the slow log.
CLIENT_NAME = "redis-infra-health"

DEFAULT_CONFIG_PATH = "/etc/redis-infra/health.toml"
DEFAULT_LISTEN_ADDRESS = "127.0.0.1"
# 9121 is redis_exporter's port; the checker takes the next one.
DEFAULT_LISTEN_PORT = 9122

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
UNKNOWN = "unknown"
STATUS_CODES = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}


def worst(statuses) -> str:
    """The worst of some statuses (healthy < degraded < unhealthy); healthy for none."""
    result = HEALTHY
    for status in statuses:
        if STATUS_CODES.get(status, 2) > STATUS_CODES[result]:
            result = status if status in STATUS_CODES else UNHEALTHY
    return result


__all__ = [
    "CLIENT_NAME", "DEFAULT_CONFIG_PATH", "DEFAULT_LISTEN_ADDRESS", "DEFAULT_LISTEN_PORT", "DEGRADED",
    "HEALTHY", "KEY_PATTERN", "KEY_PREFIX", "REQUIRED_ACL", "REQUIRED_COMMANDS", "SENTINEL_REQUIRED_ACL",
    "SENTINEL_REQUIRED_COMMANDS", "STATUS_CODES",
    "UNHEALTHY", "UNKNOWN", "worst",
]
