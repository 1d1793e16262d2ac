"""Facts about the host that more than one role needs, in one place."""

from __future__ import annotations

# Virtualization types of a container: user namespaces (PrivateUsers=) cannot be set up inside one, and
# its kernel settings belong to the container host.
CONTAINER_TYPES = ("docker", "podman", "container", "lxc", "containerd", "systemd-nspawn")


def redis_is_container(facts):
    """Whether the host whose ansible_facts these are is a container."""
    facts = facts or {}
    return facts.get("virtualization_role", "") == "guest" and facts.get("virtualization_type", "") in CONTAINER_TYPES


class FilterModule:
    def filters(self):
        return {"redis_is_container": redis_is_container}
