"""Facts about the host that more than one role needs, in one place."""

from __future__ import annotations

import ipaddress

# Virtualization types of a container: user namespaces (PrivateUsers=) cannot be set up inside one, and
# its kernel settings belong to the container host.
CONTAINER_TYPES = ("docker", "podman", "container", "lxc", "containerd", "systemd-nspawn")


def redis_is_container(facts):
    """Whether the host whose ansible_facts these are is a container."""
    facts = facts or {}
    return facts.get("virtualization_role", "") == "guest" and facts.get("virtualization_type", "") in CONTAINER_TYPES


def redis_tls_subject_alt_names(names):
    """subjectAltName entries for a host's certificate: IP: for addresses, DNS: for names, each once,
    in the order given; empty entries and the "-" prefix of an optional bind address are dropped."""
    entries = []
    for raw in names or []:
        name = str(raw or "").strip().lstrip("-")
        if not name:
            continue
        try:
            entry = f"IP:{ipaddress.ip_address(name)}"
        except ValueError:
            entry = f"DNS:{name.lower()}"
        if entry not in entries:
            entries.append(entry)
    return entries


def redis_unit_needs_start(units, name):
    """Whether the systemd unit `name` must be started or enabled, from the `units` a redis_files
    execution read ({name: {state, status}}): true unless it is running and enabled. A unit that was not
    read, or does not exist, needs a start."""
    unit = (units or {}).get(name) or {}
    return unit.get("state", "") != "running" or unit.get("status", "") != "enabled"


class FilterModule:
    def filters(self):
        return {"redis_is_container": redis_is_container,
                "redis_tls_subject_alt_names": redis_tls_subject_alt_names,
                "redis_unit_needs_start": redis_unit_needs_start}
