"""The applications' local proxy (role redis_app_settings, playbooks/app_settings.yml): what one application
host's HAProxy serves for an application, and the Redis commands of its health checks as bytes."""

from __future__ import annotations

import ipaddress
import re

from ansible.errors import AnsibleFilterError


def redis_resp_hex(words):
    """A Redis command in RESP, as hex for HAProxy's `tcp-check send-binary`: a password passes whatever
    bytes it holds, and the configuration never has to quote it."""
    words = [str(word).encode() for word in words]
    data = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(word), word) for word in words)
    return data.hex()


def _is_ip(text):
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _safe(text):
    """A name HAProxy accepts for a proxy or a server."""
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", str(text))


def _endpoint(address, port):
    return f"ipv6@{address}:{port}" if ":" in address else f"{address}:{port}"


def redis_proxy_listener(summary, servers, instance_name, addresses=None, offsets=(0, 1000)):
    """The listeners of one application's replication group and instance: on loopback, one port that routes
    to the instance that answers ROLE as a master (with a replica online when the group's min-replicas-to-write
    asks for one) and one that routes to the replicas whose link is up;
    behind them the instance on every host of the group, by the address the applications use (addresses:
    inventory name -> address) and, with TLS, the name its certificate is checked against (that address when
    it is a DNS name, else the inventory name, which the role's own certificates always hold)."""
    addresses = addresses or {}
    group = summary.get("replication") or {}
    hosts = list(group.get("primaries") or []) + list(group.get("replicas") or [])
    if not group.get("enabled") or not hosts:
        raise AnsibleFilterError(f"{summary.get('host')} is not in a replication group: nothing to proxy")
    by_host = {server["host"]: server for server in servers}
    tls = bool((summary.get("tls") or {}).get("enabled"))
    members = []
    for host in hosts:
        server = by_host.get(host)
        instance = next((item for item in (server or {}).get("instances", []) if item["name"] == instance_name), None)
        if instance is None:
            raise AnsibleFilterError(f"{host} reported no instance {instance_name!r} in this run")
        address = str(addresses.get(host) or server["address"])
        # The port and TLS are in the name: HAProxy's saved state (kept across reloads) would otherwise carry a
        # server's old port and TLS over to its new definition.
        members.append({"name": _safe(f"{host}:{instance['port']}{':tls' if tls else ''}"),
                        "endpoint": _endpoint(address, int(instance["port"])),
                        "verify_name": host if _is_ip(address) else address})
    own = next(item for item in summary["instances"] if item["name"] == instance_name)
    return {
        "name": _safe(f"{hosts[0]}-{instance_name}"),
        "port": int(own["port"]) + int(offsets[0]),
        "replica_port": int(own["port"]) + int(offsets[1]),
        "tls": tls,
        # The primary must list a replica online when the group requires one to take writes.
        "min_replicas": int(group.get("min_replicas_to_write") or 0),
        "servers": members,
        "auth": redis_resp_hex(["AUTH", summary.get("proxy_user", ""), summary.get("proxy_password", "")]),
    }


class FilterModule:
    def filters(self):
        return {
            "redis_resp_hex": redis_resp_hex,
            "redis_proxy_listener": redis_proxy_listener,
        }
