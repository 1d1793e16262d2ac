"""Which host is the primary of each instance now: Sentinel first, then the instances, then the inventory."""

from __future__ import annotations

from collections import Counter


def _replies(registered):
    """{instance name: first reply} from a registered redis_command loop (failed items give None)."""
    replies = {}
    for result in (registered or {}).get("results", []):
        name = (result.get("item") or {}).get("name")
        responses = result.get("responses") or []
        if name is not None:
            replies[name] = None if result.get("failed") or not responses else responses[0]
    return replies


def redis_server_topology(reports, instances, bootstrap_address, local_address=None):
    """The current primary of each instance, as {name: {address, port, source}}.

    reports: one dict per host of the topology that took part in this run, with its `address` and the
    registered results of ROLE (`roles`) and of SENTINEL GET-MASTER-ADDR-BY-NAME (`sentinel`) per
    instance. instances: this host's instances (name, port). bootstrap_address: the address of the
    inventory's primary, used only when neither Sentinel nor a running instance knows better.
    local_address: this host's; its own Sentinel's answer, asked last, wins over the other hosts'.
    """
    topology = {}
    for instance in instances:
        name, port = instance["name"], int(instance["port"])
        votes = Counter()
        for report in reports:
            reply = _replies(report.get("sentinel")).get(name)
            if isinstance(reply, list) and len(reply) == 2:
                local = local_address is not None and str(report.get("address")) == str(local_address)
                votes[(str(reply[0]), int(reply[1]))] += len(reports) + 1 if local else 1
        if votes:
            (address, primary_port), _ = votes.most_common(1)[0]
            topology[name] = {"address": address, "port": primary_port, "source": "sentinel"}
            continue
        masters, followed = set(), Counter()
        for report in reports:
            reply = _replies(report.get("roles")).get(name)
            if not isinstance(reply, list) or not reply:
                continue
            if reply[0] == "master":
                masters.add((str(report["address"]), port))
            elif reply[0] == "slave" and len(reply) >= 3:
                followed[(str(reply[1]), int(reply[2]))] += 1
        # A running primary is a master that replicas follow; a lone master may be a restarted replica.
        followed_masters = [(key, count) for key, count in followed.most_common() if key in masters]
        if followed_masters or followed:
            # Without the primary among the hosts asked, the replicas still say whom they follow.
            (address, primary_port), _ = (followed_masters or followed.most_common())[0]
            topology[name] = {"address": address, "port": primary_port, "source": "instances"}
            continue
        topology[name] = {"address": str(bootstrap_address), "port": port, "source": "inventory"}
    return topology


def redis_server_replicaof(topology, address, instances):
    """{instance name: "address port"} for each of this host's instances that is a replica."""
    result = {}
    for instance in instances:
        primary = topology.get(instance["name"])
        if primary and (primary["address"], int(primary["port"])) != (str(address), int(instance["port"])):
            result[instance["name"]] = f"{primary['address']} {primary['port']}"
    return result


def redis_server_follows(role_reply, replicaof):
    """Whether a ROLE reply shows an instance replicating from "address port" already."""
    if not isinstance(role_reply, list) or len(role_reply) < 3 or role_reply[0] != "slave":
        return False
    address, port = replicaof.split()
    return str(role_reply[1]) == address and int(role_reply[2]) == int(port)


class FilterModule:
    def filters(self):
        return {
            "redis_server_topology": redis_server_topology,
            "redis_server_replicaof": redis_server_replicaof,
            "redis_server_follows": redis_server_follows,
        }
