# Copyright: redis-infra contributors
# MIT License (see LICENSE)
"""Redis Cluster from observed state: what every node says, and the plan that forms or completes the cluster.

Pure functions (no I/O) for the redis_cluster module and its tests. A node of the inventory is a dict
with `host` (inventory name), `name` (instance name), `address` and `port`; its observation adds what
it answered: `id` (CLUSTER MYID), `nodes` (CLUSTER NODES text), `keys` (DBSIZE), `info` (CLUSTER INFO),
`replication` (INFO replication) or `error`.

The rules (docs/cluster.md): a cluster is created only when no node belongs to one and every node is
empty; a formed cluster is completed (missing nodes met, missing replicas attached, unassigned slots
of an empty cluster assigned) but never re-created; empty nodes beyond its missing replicas make new
shards (whole ones only), which get their share of the slots from the primaries that hold more than
theirs; a slot a cut-off run left open between two nodes is finished first; a node that holds keys or
knows nodes outside the inventory is never reset; anything else is refused before a single command is
sent.
"""

from __future__ import annotations

SLOTS = 16384


class ClusterRefused(Exception):
    """The evidence does not allow a safe decision: nothing is changed."""


def parse_nodes(text):
    """CLUSTER NODES text -> {id: entry}; entry: address, port, flags (set), primary (id or None), slots
    (list of (start, end)), epoch, link."""
    entries = {}
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        node_id, address, flags, primary, _ping, _pong, epoch, link = fields[:8]
        main, _sep, aux = address.partition(",")
        address_port, _at, bus = main.partition("@")
        host, _colon, port = address_port.rpartition(":")
        # Valkey 8 names the plaintext port to a plaintext client: 0 with TLS only. The TLS port is then the
        # aux field tls-port where there is one, else the bus port less 10000 (cluster-port's default).
        extras = dict(item.split("=", 1) for item in aux.split(",") if "=" in item)
        if port in ("", "0"):
            port = extras.get("tls-port") or (str(int(bus) - 10000) if bus.isdigit() else port)
        slots, opened = [], []
        for item in fields[8:]:
            if item.startswith("["):  # a slot being migrated ([slot->-target]) or imported ([slot-<-source])
                slot, arrow, other = item.strip("[]").partition("->-")
                if not arrow:
                    slot, arrow, other = item.strip("[]").partition("-<-")
                if arrow and slot.isdigit():
                    opened.append((int(slot), "migrating" if arrow == "->-" else "importing", other))
                continue
            start, _dash, end = item.partition("-")
            slots.append((int(start), int(end or start)))
        entries[node_id] = {
            "id": node_id, "address": host, "port": int(port) if port.isdigit() else 0,
            "flags": set(flags.split(",")), "primary": None if primary == "-" else primary,
            "slots": slots, "epoch": int(epoch), "link": link,
            "migrating": any(item.startswith("[") for item in fields[8:]), "open": opened,
        }
    return entries


def _label(node):
    if node.get("leaving"):
        return f"{node['address']}:{node['port']} (leaving the cluster)"
    return f"{node['host']}/{node['name']} ({node['address']}:{node['port']})"


def leaving_nodes(observed, remove):
    """The nodes outside the inventory that the operator confirmed for removal (`remove`: "address:port" or
    node ids), as node dicts for observe(): address, port, the id the cluster knows them by, `leaving`. An
    entry naming a node of the inventory is refused; one no node knows (already removed) is ignored."""
    ours = {node["id"] for node in observed if node.get("id")}
    wanted = {str(item).strip() for item in remove or ()}
    for node in observed:
        if wanted & {node.get("id"), f"{node['address']}:{node['port']}"}:
            raise ClusterRefused(f"{_label(node)} is to be removed but is in the inventory: take it out of the "
                                 "inventory first; nothing was changed")
    found = {}
    for node in observed:
        for entry_id, entry in parse_nodes(node.get("nodes")).items():
            endpoint = f"{entry['address']}:{entry['port']}"
            if entry_id not in ours and "handshake" not in entry["flags"] and wanted & {entry_id, endpoint}:
                found.setdefault(entry_id, {"host": "leaving", "name": endpoint, "address": entry["address"],
                                            "port": entry["port"], "id": entry_id, "leaving": True})
    return list(found.values())


def _count(ranges):
    return sum(end - start + 1 for start, end in ranges)


def slot_ranges(primaries):
    """The 16384 slots split evenly over `primaries` primaries, in order: a list of (start, end)."""
    base, extra = divmod(SLOTS, primaries)
    ranges, start = [], 0
    for index in range(primaries):
        size = base + (1 if index < extra else 0)
        ranges.append((start, start + size - 1))
        start += size
    return ranges


def _missing(ranges):
    """Slots not in ranges, as (start, end) runs."""
    taken = [False] * SLOTS
    for start, end in ranges:
        for slot in range(start, end + 1):
            taken[slot] = True
    runs, start = [], None
    for slot, used in enumerate(taken + [True]):
        if not used and start is None:
            start = slot
        elif used and start is not None:
            runs.append((start, slot - 1))
            start = None
    return runs


def _interleaved(nodes):
    """Nodes ordered host by host in turns: the first instance of each host, then the second of each..."""
    hosts = []
    for node in nodes:
        if node["host"] not in hosts:
            hosts.append(node["host"])
    per_host = {host: [node for node in nodes if node["host"] == host] for host in hosts}
    result = []
    for turn in range(max(len(items) for items in per_host.values())):
        result += [per_host[host][turn] for host in hosts if turn < len(per_host[host])]
    return result


def place_replicas(needs, candidates, hosts_order):
    """Anti-affinity over hosts: assign candidates to primaries' missing replicas, none on its primary's host.

    needs: list of (primary node, count, hosts already holding one of its replicas); candidates: nodes.
    Returns [(replica, primary)], or raises ClusterRefused when no placement keeps every replica off its
    primary's host. A replica on a host that already holds one of the same primary's replicas is avoided
    while another placement exists.
    """
    # One set per primary, shared by its slots: the hosts holding one of its replicas so far.
    shared = [(primary, count, set(taken)) for primary, count, taken in needs]
    slots = [(primary, taken) for primary, count, taken in shared for _copy in range(count)]

    def order(primary, pool):
        # Prefer the host that follows the primary's host (a rotation: h1->h2, h2->h3, h3->h1), then the
        # host with the most candidates left.
        position = hosts_order.index(primary["host"]) if primary["host"] in hosts_order else 0
        rotation = {host: (hosts_order.index(host) - position) % max(len(hosts_order), 1) for host in hosts_order}
        left = {}
        for node in pool:
            left[node["host"]] = left.get(node["host"], 0) + 1
        return sorted(pool, key=lambda node: (rotation.get(node["host"], 0), -left[node["host"]]))

    def solve(index, pool, strict, skips):
        if index == len(slots):
            return []
        primary, taken = slots[index]
        for node in order(primary, pool):
            if node["host"] == primary["host"] or (strict and node["host"] in taken):
                continue
            taken.add(node["host"])
            rest = solve(index + 1, [other for other in pool if other is not node], strict, skips)
            taken.discard(node["host"])
            if rest is not None:
                return [(node, primary)] + rest
        # Fewer candidates than missing replicas: some primaries stay short (the caller says so).
        return solve(index + 1, pool, strict, skips - 1) if skips > 0 else None

    for strict in (True, False):
        found = solve(0, list(candidates), strict, max(len(slots) - len(candidates), 0))
        if found is not None:
            return found
    wanted = ", ".join(f"{_label(primary)} needs {count}" for primary, count, _taken in needs if count)
    raise ClusterRefused(
        f"no placement puts every replica on another host than its primary ({wanted}; candidates: "
        f"{', '.join(_label(node) for node in candidates) or 'none'}): add hosts or lower the replicas per shard")


def plan(observed, replicas, balance=True):
    """What to do with the observed nodes: a dict with `actions` (in order, each a dict with `node` (index
    into observed), `phase` (epoch, meet, slots, replicate, migrate), `command` and `why`; a migration also
    `target` and `slots`; balance=False moves no slot but those a cut-off run left open), `state` (new, complete,
    completing), `primaries` and `replicas_short` (replicas the nodes cannot provide: a warning, the cluster
    works without them); raises ClusterRefused. The caller waits for agreement() after the meetings
    ("known") and after everything ("ok").

    Nodes marked `leaving` (leaving_nodes(), observed after the inventory's) leave the cluster: one whose shard
    keeps a replica of the inventory hands its slots over by a failover first (the plan is then only that
    phase, `failover`, and says `replan`: the caller plans again from the new view); one without drains its
    slots to the primaries that stay (`migrate`); replicas of the inventory left without a primary are
    attached elsewhere (`reattach`); then every node of the inventory forgets the leaving nodes (`forget`) and
    each leaving node that answers is reset (`reset`, CLUSTER RESET SOFT), as `redis-cli --cluster del-node`
    does: a leaving node that kept its view kept pinging the cluster, and a node that had just forgotten it
    could learn it again."""
    every = observed
    observed = [node for node in every if not node.get("leaving")]
    if every[:len(observed)] != observed:
        raise ValueError("leaving nodes come after the inventory's")
    leaving = list(range(len(observed), len(every)))
    gone = {every[index]["id"]: index for index in leaving}
    down = [node for node in observed if node.get("error")]
    if down:
        raise ClusterRefused("not every node answered, and the cluster is decided from every node's view: "
                             + "; ".join(f"{_label(node)}: {node['error']}" for node in down))
    ours = {node["id"]: index for index, node in enumerate(observed)}
    views = [parse_nodes(node["nodes"]) for node in observed]
    foreign = []
    for node, view in zip(observed, views, strict=True):
        strangers = [entry for entry_id, entry in view.items()
                     if entry_id not in ours and entry_id not in gone and "handshake" not in entry["flags"]]
        if strangers:
            foreign.append(f"{_label(node)} knows {', '.join(e['address'] + ':' + str(e['port']) for e in strangers)}")
    if foreign:
        raise ClusterRefused(
            "nodes outside the inventory belong to the cluster (" + "; ".join(foreign) + "): add them to the "
            "inventory, or confirm their removal (the module's option remove, the role's "
            "redis_server_cluster_remove, with their address:port as above) to have them drained and forgotten "
            "(docs/cluster.md); nothing was changed")

    # Who knows whom: nodes that know each other are one cluster (union of the views).
    parent = list(range(len(observed)))

    def root(index):
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for index, view in enumerate(views):
        for entry_id in view:
            if entry_id in ours:
                parent[root(ours[entry_id])] = root(index)
    groups = {}
    for index in range(len(observed)):
        groups.setdefault(root(index), []).append(index)
    assigned = {root_index: [slot for index in members for slot in views[index][observed[index]["id"]]["slots"]]
                for root_index, members in groups.items()}
    formed = [members for root_index, members in groups.items() if assigned[root_index] or len(members) > 1]
    if len(formed) > 1:
        raise ClusterRefused(
            "the nodes form more than one cluster ("
            + " | ".join(", ".join(_label(observed[i]) for i in members) for members in formed)
            + "): merging clusters loses data, so it is left to you (docs/cluster.md); nothing was changed")
    cluster = formed[0] if formed else []
    outsiders = [index for index in range(len(observed)) if index not in cluster]
    for index in outsiders:
        if int(observed[index].get("keys") or 0) > 0:
            raise ClusterRefused(
                f"{_label(observed[index])} is not in the cluster and holds {observed[index]['keys']} keys: the "
                "role never resets a node with data; empty it (or move its data into the cluster) by hand; "
                "nothing was changed")

    hosts_order = []
    for node in observed:
        if node["host"] not in hosts_order:
            hosts_order.append(node["host"])
    actions = []

    def act(index, phase, command, why):
        actions.append({"node": index, "phase": phase, "command": [str(part) for part in command], "why": why})

    # The view of the cluster: the first member's (every member must agree before anything changes).
    if cluster:
        reference = views[cluster[0]]
        known = set(ours) | set(gone)
        for index in cluster[1:]:
            mine = {entry_id: sorted(entry["slots"]) for entry_id, entry in views[index].items() if entry_id in known}
            theirs = {entry_id: sorted(entry["slots"]) for entry_id, entry in reference.items() if entry_id in known}
            if mine != theirs:
                raise ClusterRefused(
                    f"{_label(observed[index])} and {_label(observed[cluster[0]])} disagree about the slots: the "
                    "cluster is still settling or needs `redis-cli --cluster fix` (docs/cluster.md); "
                    "nothing was changed")
        resumed = open_slots(every, views + [parse_nodes(every[index].get("nodes")) for index in leaving],
                             {**ours, **gone}, reference)
        keys_in_cluster = sum(int(observed[index].get("keys") or 0) for index in cluster)
    else:
        reference, keys_in_cluster, resumed = {}, 0, []
    draining, failovers = _leaving_shards(every, leaving, reference, ours)
    if failovers:
        # Nothing is sent unless what comes after the failovers is allowed too: the rest is planned now on the
        # views as they will be (this raises ClusterRefused before the first failover when it is refused).
        rest = plan(_after_failovers(every, failovers), replicas, balance)
        return {"actions": failovers, "state": "completing", "primaries": [], "replicas_short": 0, "replan": True,
                "then": [action["why"] for action in rest["actions"]]}

    # Masters with slots are the primaries; a member without slots and without a primary is free.
    primaries = [index for index in cluster
                 if "master" in reference.get(observed[index]["id"], {}).get("flags", ())
                 and reference[observed[index]["id"]]["slots"]]
    # Free: neither the reference nor the node itself names a primary for it (a primary that was just
    # failed over learns its new role first).
    members_free = [index for index in cluster if index not in primaries
                    and not reference.get(observed[index]["id"], {}).get("primary")
                    and not views[index][observed[index]["id"]]["primary"]]
    missing = _missing([slot for entry in reference.values() for slot in entry["slots"]]) if primaries else []
    # The creation plan: primaries spread over the hosts in turns, the slots split evenly among them in
    # that order. A new cluster is made from it; so is the rest of an empty one a run left unfinished.
    creating = not primaries or bool(missing)
    if creating:
        if keys_in_cluster:
            raise ClusterRefused(
                f"{_count(missing) if primaries else SLOTS} slots are not assigned and the cluster holds keys: assign "
                "them with `redis-cli --cluster fix` (docs/cluster.md); nothing was changed")
        if len(observed) % (replicas + 1):
            raise ClusterRefused(f"{len(observed)} nodes cannot make shards of 1 primary and {replicas} replicas")
        chosen = [observed.index(node) for node in _interleaved(observed)[:len(observed) // (replicas + 1)]]
        if len(chosen) < 3:
            raise ClusterRefused(f"a cluster needs at least 3 primaries; {len(observed)} nodes with {replicas} "
                                 f"replicas per shard give {len(chosen)}")
        if not set(primaries) <= set(chosen):
            raise ClusterRefused("the slots a cut-off run assigned do not follow the creation plan: assign the rest "
                                 "with `redis-cli --cluster fix` (docs/cluster.md); nothing was changed")
        # A fresh node's config epoch is 0: distinct epochs before the meeting avoid the collisions the
        # cluster would otherwise resolve one by one.
        for index in outsiders:
            if views[index][observed[index]["id"]]["epoch"] == 0 and len(views[index]) == 1:
                act(index, "epoch", ["CLUSTER", "SET-CONFIG-EPOCH", index + 1],
                    "distinct config epoch before the meeting")
    else:
        chosen = primaries
    if leaving and len(chosen) < 3:
        raise ClusterRefused(f"a cluster needs at least 3 primaries; without the leaving nodes "
                             f"({', '.join(_label(every[index]) for index in leaving)}) {len(chosen)} would be left; "
                             "nothing was changed")
    anchor = cluster[0] if cluster else chosen[0]
    for index in outsiders:
        if index != anchor:
            act(anchor, "meet", ["CLUSTER", "MEET", observed[index]["address"], observed[index]["port"]],
                f"{_label(observed[index])} joins the cluster")

    # Slots: a new cluster gets them all; an empty one with unassigned slots gets the missing ones.
    if creating:
        for index, (start, end) in zip(chosen, slot_ranges(len(chosen)), strict=True):
            for low, high in (missing if primaries else [(start, end)]):
                low, high = max(low, start), min(high, end)
                if low <= high:
                    act(index, "slots", ["CLUSTER", "ADDSLOTSRANGE", low, high],
                        f"{_label(observed[index])} serves slots {low}-{high}")

    # Replicas: every primary gets `replicas` of them, each on another host than its primary.
    # Replicas of the inventory whose primary leaves are attached anew once the slots have moved.
    orphans = [index for index in cluster if reference.get(observed[index]["id"], {}).get("primary") in gone]
    candidates = [index for index in range(len(observed)) if index not in chosen
                  and (index in outsiders or index in members_free or index in orphans)]

    def replicas_of(index):
        return [other for other, entry in reference.items()
                if entry.get("primary") == observed[index]["id"] and other in ours]

    # Growing: an empty primary that already has a replica is a new shard a cut-off run started; the
    # other empty nodes beyond the missing replicas make new shards, whole ones only.
    growing = [index for index in candidates if not creating and replicas_of(index)]
    free = [index for index in candidates if index not in growing]
    wanted = sum(max(replicas - len(replicas_of(index)), 0) for index in chosen + growing)
    surplus = len(free) - wanted
    if surplus > 0:
        if creating or surplus % (replicas + 1):
            raise ClusterRefused(
                f"{surplus} nodes have no place in the cluster ({wanted} replicas missing) and "
                + ("the cluster is still being formed" if creating else
                   f"cannot make whole shards of 1 primary and {replicas} replicas")
                + ": nodes " + ", ".join(_label(observed[index]) for index in free) + "; nothing was changed")
        growing += _new_primaries(observed, [observed[index]["host"] for index in chosen + growing], free,
                                  surplus // (replicas + 1), hosts_order)
        free = [index for index in free if index not in growing]
        wanted += replicas * (surplus // (replicas + 1))
    needs = []
    for index in chosen + growing:
        have = replicas_of(index)
        taken = {observed[ours[other]]["host"] for other in have}
        needs.append((observed[index], max(replicas - len(have), 0), taken))
    placement = place_replicas(needs, [observed[index] for index in free], hosts_order) if free else []
    for replica, primary in placement:
        index = observed.index(replica)
        act(index, "reattach" if index in orphans else "replicate", ["CLUSTER", "REPLICATE", primary["id"]],
            f"{_label(replica)} replicates {_label(primary)}")

    # Slots: an open slot a cut-off run left is finished first; then new primaries, and primaries a cut-off
    # run left below half their share, get slots from those that hold more than theirs.
    for source, target, slot, settle in resumed:
        actions.append({"node": source, "target": target, "phase": "migrate", "slots": [slot, slot], "settle": settle,
                        "command": ["MIGRATE-SLOTS", str(slot), str(slot)],
                        "why": f"slot {slot}, left open by a cut-off run, moves on from {_label(every[source])} to "
                               f"{_label(every[target])}"})
    if not creating and (balance or draining):
        holders = {index: _slot_list(reference[observed[index]["id"]]["slots"]) for index in chosen}
        holders.update({index: [] for index in growing})
        holders.update({index: _slot_list(reference[every[index]["id"]]["slots"]) for index in draining})
        for source, target, slot, settle in resumed:
            if not settle and slot in holders.get(source, []) and target in holders:
                holders[source].remove(slot)
                holders[target].append(slot)
        for source, target, low, high in rebalance(holders, leaving=draining, even=balance):
            actions.append({"node": source, "target": target, "phase": "migrate", "slots": [low, high],
                            "command": ["MIGRATE-SLOTS", str(low), str(high)],
                            "why": f"slots {low}-{high} move from {_label(every[source])} to "
                                   f"{_label(every[target])}"})
    for index in leaving:
        node = every[index]
        for other in range(len(observed)):
            act(other, "forget", ["CLUSTER", "FORGET", node["id"]], f"{_label(observed[other])} forgets {_label(node)}")
        if not node.get("error"):
            act(index, "reset", ["CLUSTER", "RESET", "SOFT"],
                f"{_label(node)} is reset (it knows no node, holds no key and no longer pings the cluster; stop its "
                "service)")
    short = wanted - len(placement)
    return {"actions": actions, "state": "new" if not primaries else ("complete" if not actions else "completing"),
            "primaries": [observed[index] for index in chosen + growing], "replicas_short": short}


def _leaving_shards(every, leaving, reference, ours):
    """(leaving nodes whose slots are drained to the primaries that stay, failover actions): a leaving
    primary with slots and a replica in the inventory hands them over by a failover of that replica (no key
    moves); without one its slots are migrated; one that does not answer is refused (its slots would be lost
    until the cluster fails it over)."""
    draining, failovers = [], []
    for index in leaving:
        node = every[index]
        entry = reference.get(node["id"])
        if not entry or not entry["slots"] or "master" not in entry["flags"]:
            continue
        linked_first = sorted(reference.items(), key=lambda pair: pair[1]["link"] != "connected")
        heirs = [ours[other] for other, item in linked_first
                 if item.get("primary") == node["id"] and other in ours and not {"fail", "fail?"} & item["flags"]]
        if heirs:
            heir = every[heirs[0]]
            failovers.append({"node": heirs[0], "phase": "failover", "command": ["CLUSTER", "FAILOVER"],
                              "why": f"{_label(heir)} takes over the slots of {_label(node)} (a failover; "
                                     "the rest is planned from the new view)"})
        elif node.get("error"):
            raise ClusterRefused(
                f"{_label(node)} serves {_count(entry['slots'])} slots, has no replica in the inventory and does "
                f"not answer ({node['error']}): its slots cannot be moved; start it again (or let the cluster fail "
                "it over to a replica) and run again; nothing was changed")
        else:
            draining.append(index)
    return draining, failovers


def _after_failovers(every, failovers):
    """The observed nodes as they will be once each failover is done: in every view the heir is a primary
    with its old primary's slots, and the old primary and its other replicas replicate the heir."""
    swaps = {every[action["node"]]["id"]: None for action in failovers}
    for node in every:
        for entry_id, entry in parse_nodes(node.get("nodes")).items():
            if entry_id in swaps and entry["primary"]:
                swaps[entry_id] = entry["primary"]

    def rewrite(text):
        lines = [line.split() for line in (text or "").splitlines()]
        slots_of = {fields[0]: [item for item in fields[8:] if not item.startswith("[")] for fields in lines
                    if len(fields) >= 8}
        result = []
        for fields in lines:
            if len(fields) < 8:
                continue
            for heir, old in swaps.items():
                if old is None:
                    continue
                flags = fields[2].split(",")
                if fields[0] == heir:
                    flags = ["master" if flag == "slave" else flag for flag in flags]
                    fields = fields[:2] + [",".join(flags), "-"] + fields[4:8] + slots_of.get(old, [])
                elif fields[0] == old:
                    flags = ["slave" if flag == "master" else flag for flag in flags]
                    fields = fields[:2] + [",".join(flags), heir] + fields[4:8]
                elif fields[3] == old:
                    fields = fields[:3] + [heir] + fields[4:]
            result.append(" ".join(fields))
        return "\n".join(result)

    return [dict(node, nodes=rewrite(node["nodes"])) if node.get("nodes") else dict(node) for node in every]


def _slot_list(ranges):
    return [slot for start, end in sorted(ranges) for slot in range(start, end + 1)]


def _new_primaries(observed, primary_hosts, free, count, hosts_order):
    """`count` of the free nodes as new primaries, each on the host with the fewest primaries so far."""
    load = {host: primary_hosts.count(host) for host in hosts_order}
    chosen, pool = [], list(free)
    for _turn in range(count):
        best = min(pool, key=lambda index: (load[observed[index]["host"]], hosts_order.index(observed[index]["host"])))
        chosen.append(best)
        pool.remove(best)
        load[observed[best]["host"]] += 1
    return chosen


def rebalance(holders, tolerance=0.02, leaving=(), even=True):
    """Slot moves that give every primary of `holders` ({index: its slots}) its even share where it holds
    less than that share by more than `tolerance` of it (new shards, a grow that was cut off, a cluster that
    was left uneven): the slots come from the primaries above their share, in proportion to their surplus,
    from the top of their ranges. The `leaving` ones have a share of 0: every slot of theirs moves (the
    tolerance is then 0); with even=False only theirs move. Returns [(source, target, first slot, last
    slot)], runs of consecutive slots."""
    staying = [index for index in holders if index not in leaving]
    if not staying:
        return []
    sizes = [end - start + 1 for start, end in slot_ranges(len(staying))]
    order = sorted(staying, key=lambda index: (-len(holders[index]), index))
    share = dict(zip(order, sizes, strict=True))
    share.update({index: 0 for index in leaving})
    slack = 0 if any(holders[index] for index in leaving) else tolerance
    receivers = [index for index in sorted(staying) if len(holders[index]) < share[index] * (1 - slack)]
    if not receivers:
        return []
    slots = {index: sorted(values) for index, values in holders.items()}
    excess = {index: len(slots[index]) - share[index] for index in holders
              if len(slots[index]) > share[index] and (even or index in leaving)}
    moves = []
    for target in receivers:
        need = min(share[target] - len(slots[target]), sum(excess.values()))
        if need <= 0:
            continue
        # In proportion to what each primary holds above its share, the remainder to the most loaded.
        total = sum(excess.values())
        take = {index: need * left // total for index, left in excess.items()}
        for index in sorted(excess, key=lambda index: (-(excess[index] - take[index]), index)):
            if sum(take.values()) >= need:
                break
            if take[index] < excess[index]:
                take[index] += 1
        for source in sorted(take):
            if not take[source]:
                continue
            given = slots[source][-take[source]:]
            del slots[source][-take[source]:]
            excess[source] -= take[source]
            slots[target] += given
            start = previous = given[0]
            for slot in given[1:] + [None]:
                if slot != (previous + 1 if previous is not None else None):
                    moves.append((source, target, start, previous))
                    start = slot
                previous = slot
    return moves


def open_slots(observed, views, ours, reference):
    """Slots a cut-off migration left open, as [(source index, target index, slot, settle)] to finish, where
    source is the slot's owner in every view: migrating on the owner and importing on the target from it
    (both steps done), importing only (cut off before the owner's MIGRATING) or migrating only on a node that
    no longer owns it (cut off after the target took the slot: `settle`, only SETSLOT NODE is left). Anything
    else (a node outside the inventory, an owner that is neither side) is refused: `redis-cli --cluster fix`."""
    owner = {}
    for entry_id, entry in reference.items():
        for start, end in entry["slots"]:
            for slot in range(start, end + 1):
                owner[slot] = entry_id
    migrating, importing = {}, {}
    for index, (node, view) in enumerate(zip(observed, views, strict=True)):
        for slot, direction, other in view.get(node["id"], {}).get("open", []):
            (migrating if direction == "migrating" else importing)[slot] = (index, other)
    resumed = []
    for slot in sorted(set(migrating) | set(importing)):
        source, target_id = migrating.get(slot, (None, None))
        target, source_id = importing.get(slot, (None, None))
        held_by = owner.get(slot)
        if source is not None and target is not None:
            fine = target_id == observed[target]["id"] and source_id == observed[source]["id"] == held_by
            plan_step = (source, target, slot, False)
        elif target is not None:
            fine = source_id in ours and source_id == held_by
            plan_step = (ours.get(source_id), target, slot, False)
        else:
            fine = target_id in ours and target_id == held_by
            plan_step = (source, ours.get(target_id), slot, True)
        if not fine:
            raise ClusterRefused(
                f"slot {slot} is left open in a way the role does not finish by itself (migrating on "
                f"{_label(observed[source]) if source is not None else 'no node'}, importing on "
                f"{_label(observed[target]) if target is not None else 'no node'}): settle it with "
                "`redis-cli --cluster fix` (docs/cluster.md); nothing was changed")
        resumed.append(plan_step)
    return resumed


def agreement(observed, what):
    """Whether the observed views satisfy a wait of plan(): `known` (every node knows every node, none
    in handshake), `slots` (every node sees every primary's slots as the others do) or `ok`
    (cluster_state ok everywhere, `info` holding CLUSTER INFO text, and every replica synchronized with its
    primary, `replication` holding INFO replication text). Returns (bool, reason)."""
    ids = {node["id"] for node in observed}
    views = [parse_nodes(node.get("nodes")) for node in observed]
    for node, view in zip(observed, views, strict=True):
        known = {entry_id for entry_id, entry in view.items() if "handshake" not in entry["flags"]}
        if not ids <= known:
            return False, f"{_label(node)} does not know every node yet"
    if what == "known":
        return True, ""
    maps = [{entry_id: sorted(entry["slots"]) for entry_id, entry in view.items() if entry_id in ids} for view in views]
    if any(mapping != maps[0] for mapping in maps[1:]):
        return False, "the nodes do not agree about the slots yet"
    if what == "slots":
        return True, ""
    for node in observed:
        if "cluster_state:ok" not in (node.get("info") or ""):
            return False, f"{_label(node)} does not say cluster_state:ok yet"
    for node, view in zip(observed, views, strict=True):
        own = view.get(node["id"], {})
        if own.get("primary") and "master_link_status:up" not in (node.get("replication") or ""):
            return False, f"{_label(node)} has not synchronized with its primary yet"
    return True, ""


def settled(observed):
    """Whether every node that answered sees the same primary and slots for every node of the inventory
    (after a failover the views converge within a few cluster pings)."""
    ids = {node["id"] for node in observed if node.get("id")}
    maps = [{entry_id: (entry["primary"], sorted(entry["slots"]))
             for entry_id, entry in parse_nodes(node["nodes"]).items()
             if entry_id in ids and "handshake" not in entry["flags"]}
            for node in observed if not node.get("error")]
    # Compared on the nodes both know: a node outside the cluster knows only itself.
    return all(mine[key] == theirs[key] for mine in maps for theirs in maps for key in mine.keys() & theirs.keys())


def summary(observed):
    """One dict per node from its own view: host, name, address, port, id, role, primary (host/name), slots."""
    by_id = {node["id"]: node for node in observed}
    result = []
    for node in observed:
        own = parse_nodes(node.get("nodes")).get(node["id"], {})
        primary = by_id.get(own.get("primary") or "")
        result.append({
            "host": node["host"], "name": node["name"], "address": node["address"], "port": node["port"],
            "id": node["id"], "role": "replica" if own.get("primary") else "primary",
            "primary": f"{primary['host']}/{primary['name']}" if primary else None,
            "slots": [f"{start}-{end}" for start, end in own.get("slots", [])],
        })
    return result
