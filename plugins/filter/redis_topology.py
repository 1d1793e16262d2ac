"""Which host is the primary of each instance now, decided from the evidence of every node (docs/ha.md).

The evidence is what every Redis host of the topology answers to ROLE and what every Sentinel of the
group answers to SENTINEL GET-MASTER-ADDR-BY-NAME, gathered by tasks/topology.yml whatever the batch of
the run. The decision, in order:

1. A majority of the configured Sentinels naming one address decides, unless the instances contradict
   it (that address answers as a replica, or another master has replicas attached): then it is a
   conflict.
2. Otherwise the instances decide: a master with replicas attached (its own ROLE list, or replicas
   whose link to it is up); else the one master that replicas follow; else, among masters with no
   replicas (every instance after a full restart with Sentinel), the newest data (highest replication
   offset), the inventory's primary only breaking a tie.
3. Nothing answers at all: a Sentinel view all answering Sentinels share, else the inventory's primary
   (a new topology).

Sentinels that answer without being a majority never decide against the instances. Evidence that
conflicts and that no majority settles gives a conflict, which tasks/topology.yml turns into a failed
play that prints the evidence: the role never picks a side by guessing.
"""

from __future__ import annotations

from collections import Counter


def _results(registered):
    """(host, instance name, reply or None) per item of a registered redis_command loop over
    [host, instance] pairs; an unreachable host or a failed command gives None."""
    for result in (registered or {}).get("results", []):
        item = result.get("item") or []
        if len(item) != 2 or not isinstance(item[1], dict):
            continue
        responses = result.get("responses") or []
        failed = result.get("failed") or result.get("unreachable") or result.get("skipped") or not responses
        yield str(item[0]), item[1].get("name"), None if failed else responses[0]


def _describe_role(reply):
    if reply is None:
        return "no answer"
    if not isinstance(reply, list) or not reply:
        return f"unexpected reply {reply!r}"
    if reply[0] == "master":
        replicas = reply[2] if len(reply) > 2 and isinstance(reply[2], list) else []
        listed = ", ".join(f"{r[0]}:{r[1]}" for r in replicas if isinstance(r, list) and len(r) >= 2)
        return f"master, offset {reply[1]}, replicas [{listed}]"
    if reply[0] == "slave" and len(reply) >= 4:
        return f"replica of {reply[1]}:{reply[2]} (link {reply[3]})"
    return str(reply[0])


def _evidence(name, roles, sentinels, addresses):
    lines = [f"{host} ({addresses.get(host, '?')}): {_describe_role(reply)}" for host, reply in roles]
    lines += [f"Sentinel on {host}: " + (f"primary {reply[0]}:{reply[1]}" if _sentinel_answer(reply) else "no answer")
              for host, reply in sentinels]
    return f"instance {name}: " + "; ".join(lines)


def _sentinel_answer(reply):
    return isinstance(reply, list) and len(reply) == 2 and reply[0] is not None


def _decide(name, port, roles, sentinels, addresses, bootstrap, sentinel_count):
    """(address, port, source) or a conflict message, for one instance."""
    answered = [(str(r[0]), int(r[1])) for _host, r in sentinels if _sentinel_answer(r)]
    votes = Counter(answered)

    masters = {}      # address -> (offset, number of replicas its ROLE lists)
    replicas = {}     # address -> ((primary address, port), link state)
    for host, reply in roles:
        if not isinstance(reply, list) or not reply:
            continue
        address = str(addresses.get(host, host))
        if reply[0] == "master":
            listed = reply[2] if len(reply) > 2 and isinstance(reply[2], list) else []
            masters[address] = (int(reply[1] or 0), len(listed))
        elif reply[0] == "slave" and len(reply) >= 4:
            replicas[address] = ((str(reply[1]), int(reply[2])), str(reply[3]))

    attached = Counter()
    for target, state in replicas.values():
        if state == "connected":
            attached[target] += 1
    live = sorted(address for address, (_offset, listed) in masters.items()
                  if listed > 0 or attached[(address, port)] > 0)

    # 1. A Sentinel majority, checked against what the instances say.
    if votes:
        (address, primary_port), count = votes.most_common(1)[0]
        if count >= sentinel_count // 2 + 1:
            if address in replicas:
                return (f"a majority of Sentinels ({count} of {sentinel_count}) names {address}:{primary_port}, "
                        f"but that instance answers as a replica of {replicas[address][0][0]}")
            others = [other for other in live if other != address]
            if others:
                return (f"a majority of Sentinels ({count} of {sentinel_count}) names {address}:{primary_port}, "
                        f"but {', '.join(others)} is a master with replicas attached")
            return address, primary_port, "sentinel"

    # 2. The instances.
    if len(live) > 1:
        return f"{' and '.join(live)} are both masters with replicas attached (split brain)"
    if live:
        return live[0], port, "instances"
    followed = sorted({target for target, _offset in replicas.values()})
    if len(followed) > 1:
        return ("the replicas follow different primaries (" + ", ".join(f"{a}:{p}" for a, p in followed)
                + ") and none of them has a replica attached")
    if followed:
        address, primary_port = followed[0]
        if address in replicas:
            return f"the replicas follow {address}, which is itself a replica"
        return address, primary_port, "instances"
    if masters:
        newest = max(offset for offset, _replicas in masters.values())
        candidates = sorted(address for address, (offset, _replicas) in masters.items() if offset == newest)
        if len(candidates) == 1:
            return candidates[0], port, "instances"
        if str(bootstrap) in candidates:
            return str(bootstrap), port, "instances"
        return (f"{', '.join(candidates)} are masters without replicas holding the same replication offset "
                f"({newest}), and the inventory's primary {bootstrap} is not among them")

    # 3. Nothing runs: a shared Sentinel view, else the inventory.
    if len(votes) == 1:
        address, primary_port = next(iter(votes))
        return address, primary_port, "sentinel"
    if len(votes) > 1:
        return "no instance answers and the Sentinels that do disagree"
    return str(bootstrap), port, "inventory"


def redis_server_topology(role_results, sentinel_results, addresses, instances, bootstrap_address,
                          sentinel_count=0):
    """The current primary of each instance, as {name: {address, port, source}} or {name: {conflict}}.

    role_results: the registered result of ROLE asked on every Redis host of the topology, a loop over
    [host, instance] pairs. sentinel_results: the same for SENTINEL GET-MASTER-ADDR-BY-NAME on every
    Sentinel host. addresses: {host: the address its instances replicate on}. instances: this host's
    instances (name, port). bootstrap_address: the inventory primary's address. sentinel_count: how many
    Sentinels the group has (a majority of these decides). A conflict carries the evidence.
    """
    roles, sentinels = {}, {}
    for host, name, reply in _results(role_results):
        roles.setdefault(name, []).append((host, reply))
    for host, name, reply in _results(sentinel_results):
        sentinels.setdefault(name, []).append((host, reply))
    addresses = {str(host): str(address) for host, address in (addresses or {}).items()}
    topology = {}
    for instance in instances:
        name, port = instance["name"], int(instance["port"])
        decision = _decide(name, port, roles.get(name, []), sentinels.get(name, []), addresses,
                           bootstrap_address, int(sentinel_count or 0))
        if isinstance(decision, str):
            topology[name] = {"conflict": decision + ". Evidence: "
                              + _evidence(name, roles.get(name, []), sentinels.get(name, []), addresses)}
        else:
            address, primary_port, source = decision
            topology[name] = {"address": address, "port": primary_port, "source": source}
    return topology


def redis_server_topology_conflicts(topology):
    """The conflict messages of a topology, one per instance that has one."""
    return [primary["conflict"] for primary in (topology or {}).values() if "conflict" in primary]


def redis_server_in_sync(role_results, topology):
    """{instance name: [hosts whose replica has its link up to the current primary]} from the ROLE evidence."""
    in_sync = {name: [] for name in topology}
    for host, name, reply in _results(role_results):
        primary = topology.get(name) or {}
        if (isinstance(reply, list) and len(reply) >= 4 and reply[0] == "slave" and reply[3] == "connected"
                and (str(reply[1]), int(reply[2])) == (primary.get("address"), primary.get("port"))):
            in_sync.setdefault(name, []).append(host)
    return in_sync


def redis_server_not_in_sync(in_sync, addresses, topology):
    """["instance: host, host"] for each instance with topology hosts (other than its primary's) not in sync."""
    missing = []
    for name, hosts in sorted((in_sync or {}).items()):
        primary = (topology.get(name) or {}).get("address")
        absent = [host for host, address in addresses.items() if str(address) != primary and host not in hosts]
        if absent:
            missing.append(f"{name}: {', '.join(sorted(absent))}")
    return missing


def redis_server_caught_up(role_reply):
    """From a primary's ROLE reply, how many replicas have acknowledged its whole replication offset.
    (WAIT on a connection that wrote nothing counts every attached replica, whatever its offset.)"""
    if not isinstance(role_reply, list) or len(role_reply) < 3 or role_reply[0] != "master":
        return 0
    offset = int(role_reply[1])
    return sum(1 for replica in role_reply[2] or [] if len(replica) >= 3 and int(replica[2]) >= offset)


def redis_server_address(host_vars):
    """The address a host's instances replicate on, from its variables (tasks/facts.yml's rule)."""
    resolved = host_vars.get("redis_server_replication_model")
    if isinstance(resolved, dict) and resolved.get("address"):
        return str(resolved["address"])
    facts = host_vars.get("ansible_facts") or {}
    default_ipv4 = facts.get("default_ipv4") or {}
    return str(host_vars.get("redis_server_replication_address") or default_ipv4.get("address")
               or host_vars.get("ansible_host") or host_vars.get("inventory_hostname"))


def redis_server_unaddressed(host_vars_list):
    """The hosts among these whose replication address cannot be told without gathering their facts."""
    unknown = []
    for host_vars in host_vars_list:
        resolved = host_vars.get("redis_server_replication_model")
        facts = host_vars.get("ansible_facts") or {}
        if not ((isinstance(resolved, dict) and resolved.get("address"))
                or host_vars.get("redis_server_replication_address")
                or (facts.get("default_ipv4") or {}).get("address")):
            unknown.append(host_vars.get("inventory_hostname"))
    return unknown


def redis_server_replicaof(topology, address, instances):
    """{instance name: "address port"} for each of this host's instances that is a replica."""
    result = {}
    for instance in instances:
        primary = topology.get(instance["name"])
        if primary and "address" in primary and (
                (primary["address"], int(primary["port"])) != (str(address), int(instance["port"]))):
            result[instance["name"]] = f"{primary['address']} {primary['port']}"
    return result


def redis_server_follows(role_reply, replicaof):
    """Whether a ROLE reply shows an instance replicating from "address port" already."""
    if not isinstance(role_reply, list) or len(role_reply) < 3 or role_reply[0] != "slave":
        return False
    address, port = replicaof.split()
    return str(role_reply[1]) == address and int(role_reply[2]) == int(port)


def redis_server_roles_of(role_results, host):
    """{instance name: ROLE reply} of one host's instances that answered, from the ROLE evidence."""
    return {name: reply for asked, name, reply in _results(role_results) if asked == str(host) and reply is not None}


def redis_server_topology_queries(host, role_hosts, sentinel_hosts, instances, admin_user, sentinel_file):
    """The queries one execution on a host makes for tasks/topology_ask.yml (redis_command's queries): ROLE
    of each instance when the host is one of the topology's Redis hosts, then the primary its Sentinel names
    for each instance when it is a Sentinel host."""
    queries = []
    if host in role_hosts:
        queries += [{"connection_file": instance["connection_files"][admin_user], "commands": [["ROLE"]]}
                    for instance in instances]
    if host in sentinel_hosts:
        queries += [{"connection_file": sentinel_file,
                     "commands": [["SENTINEL", "GET-MASTER-ADDR-BY-NAME", instance["name"]]]}
                    for instance in instances]
    return queries


def redis_server_topology_replies(asked, role_hosts, sentinel_hosts, instances):
    """{'role': ..., 'sentinel': ...} from the registered loop of tasks/topology_ask.yml (one item per host,
    each with the answers of redis_server_topology_queries), each shaped as a loop over [host, instance]
    pairs registers ({'results': [{'item', 'responses'} or {'item', 'failed', 'msg'}]}), which the
    topology's filters read. A host that was unreachable or whose execution failed fails all its pairs."""
    by_host = {str(result.get("item")): result for result in (asked or {}).get("results", [])}
    replies = {"role": {"results": []}, "sentinel": {"results": []}}
    for host in dict.fromkeys(list(role_hosts) + list(sentinel_hosts)):
        result = by_host.get(str(host)) or {"failed": True, "msg": "not asked"}
        pairs = ([("role", instance) for instance in instances] if host in role_hosts else []) + \
                ([("sentinel", instance) for instance in instances] if host in sentinel_hosts else [])
        found = result.get("answers") or []
        whole = result.get("unreachable") or result.get("failed") or result.get("skipped") or len(found) != len(pairs)
        for index, (kind, instance) in enumerate(pairs):
            entry = {"failed": True, "msg": result.get("msg") or "no answer"} if whole else dict(found[index])
            entry["item"] = [host, instance]
            if result.get("unreachable"):
                entry["unreachable"] = True
            replies[kind]["results"].append(entry)
    return replies


def redis_server_sentinel_address(host_vars):
    """The address other hosts reach a Sentinel host's Sentinel at: its first non-loopback
    redis_sentinel_bind entry when set, else the host's default IPv4 address (the redis_sentinel role
    listens there), else its ansible_host or name."""
    bind = host_vars.get("redis_sentinel_bind")
    if isinstance(bind, list):
        routable = [str(address).lstrip("-") for address in bind
                    if not str(address).lstrip("-").startswith("127.") and str(address).lstrip("-") != "::1"]
        if routable:
            return routable[0]
    facts = host_vars.get("ansible_facts") or {}
    return str((facts.get("default_ipv4") or {}).get("address") or host_vars.get("ansible_host")
               or host_vars.get("inventory_hostname"))


class FilterModule:
    def filters(self):
        return {
            "redis_server_topology": redis_server_topology,
            "redis_server_topology_conflicts": redis_server_topology_conflicts,
            "redis_server_address": redis_server_address,
            "redis_server_in_sync": redis_server_in_sync,
            "redis_server_caught_up": redis_server_caught_up,
            "redis_server_not_in_sync": redis_server_not_in_sync,
            "redis_server_replicaof": redis_server_replicaof,
            "redis_server_unaddressed": redis_server_unaddressed,
            "redis_server_follows": redis_server_follows,
            "redis_server_roles_of": redis_server_roles_of,
            "redis_server_topology_queries": redis_server_topology_queries,
            "redis_server_topology_replies": redis_server_topology_replies,
            "redis_server_sentinel_address": redis_server_sentinel_address,
        }
