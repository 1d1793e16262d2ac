#!/usr/bin/python
# Copyright: redis-infra contributors
# MIT License (see LICENSE)
"""Form or complete a Redis Cluster from what every node says."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_cluster
short_description: Form or complete a Redis or Valkey cluster from the observed state of every node
version_added: 1.1.0
author:
  - redis-infra contributors (@redis-infra)
description:
  - Asks every node (C(CLUSTER MYID), C(CLUSTER NODES), C(DBSIZE), C(CLUSTER INFO), C(INFO replication)) and
    decides from all the answers. Nothing is sent before every node has answered and the plan is known to be safe.
  - With no cluster among the nodes and every node empty, creates one; the primaries are spread over the hosts
    in turns, the 16384 slots are split evenly among them, and each primary gets O(replicas) replicas, none on
    its primary's host (anti-affinity over hosts).
  - With a formed cluster, completes it; nodes of the inventory outside it are met and attached as replicas
    where a primary has fewer than O(replicas); an empty cluster a run left unfinished gets its missing
    slots. The cluster's own view of who is a primary wins over the inventory.
  - Grows it. Empty nodes beyond the missing replicas make new shards (whole ones only, each new primary on
    the host with the fewest primaries, its replicas on other hosts), and once every node says
    C(cluster_state:ok) each new primary gets its even share of the slots from the primaries above theirs
    (C(CLUSTER SETSLOT) IMPORTING and MIGRATING, C(MIGRATE) in batches, C(SETSLOT NODE) on every primary).
    A slot a cut-off run left open between two nodes of the inventory is finished first.
  - Shrinks it. A node outside the inventory that the cluster knows is removed only when O(remove) names it.
    A leaving primary whose replica is in the inventory hands its slots over by a C(CLUSTER FAILOVER) of that
    replica; one without such a replica has its slots migrated to the primaries that stay (evenly, under
    client load). Replicas of the inventory left without a primary are attached to another one. Then every
    node forgets the leaving nodes (C(CLUSTER FORGET)), each leaving node that answers is reset (C(CLUSTER RESET
    SOFT)), and a leaving node that a node learned again meanwhile is forgotten again.
  - Refuses, without changing anything, when a node does not answer, a node outside the cluster holds keys,
    the nodes form more than one cluster, a node knows nodes outside the inventory that O(remove) does not
    name, O(remove) names a node of the inventory, a leaving primary that serves slots does not answer and
    has no replica in the inventory, fewer than 3 primaries would stay, a slot is open in another way, slots
    are unassigned in a cluster with keys, or new nodes make no whole shard. A node is never reset.
  - Connects to each node over TCP at its O(nodes[].address) and O(nodes[].port) with the credentials and
    TLS settings of O(connection_file) (a connection file of the redis_server role, an admin user's).
options:
  connection_file:
    description: Connection file on the host the module runs on, whose user may run C(CLUSTER) commands.
    type: path
    required: true
  nodes:
    description: Every node the cluster is made of.
    type: list
    elements: dict
    required: true
    suboptions:
      host:
        description: Inventory name of the node's host (the unit of anti-affinity).
        type: str
        required: true
      name:
        description: Instance name on that host.
        type: str
        required: true
      address:
        description: Address the node announces and is reached at.
        type: str
        required: true
      port:
        description: The node's client port (the bus port is this plus 10000).
        type: int
        required: true
  replicas:
    description: Replicas per primary.
    type: int
    default: 1
  timeout:
    description: Seconds to wait for the nodes to agree after each step, and at the end for C(cluster_state:ok)
      everywhere and every replica synchronized with its primary.
    type: int
    default: 60
  rebalance:
    description:
      - Move slots to every primary that holds less than its even share (16384 / primaries) by more than 2 % of
        it, from those above theirs. With V(false) only a slot a cut-off run left open is finished, and new
        primaries stay without slots.
    type: bool
    default: true
  remove:
    description:
      - Nodes outside O(nodes) that may leave the cluster, each as V(address:port) (as the refusal names it) or
        as its node id. The operator's confirmation that they are to be drained and forgotten. A name that no
        node knows (already removed) is ignored, so the same value may stay for a re-run.
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: In check mode the nodes are asked and RV(actions) lists what would be done.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - Every node must share the credentials of O(connection_file) (the role's admin user and password).
"""

EXAMPLES = r"""
- name: Form the cluster (or complete it)
  redis_infra.redis.redis_cluster:
    connection_file: /etc/redis-infra/connections/a-admin.toml
    nodes:
      - {host: redis-1, name: a, address: 10.0.0.1, port: 7000}
      - {host: redis-2, name: a, address: 10.0.0.2, port: 7000}
      - {host: redis-3, name: a, address: 10.0.0.3, port: 7000}
      - {host: redis-1, name: b, address: 10.0.0.1, port: 7001}
      - {host: redis-2, name: b, address: 10.0.0.2, port: 7001}
      - {host: redis-3, name: b, address: 10.0.0.3, port: 7001}
    replicas: 1
  run_once: true
"""

RETURN = r"""
actions:
  description: What was done (or, in check mode, would be done), in order, one sentence each.
  returned: always
  type: list
  elements: str
state:
  description: V(new) (no cluster was there), V(completing) (a formed cluster was completed) or V(complete).
  returned: always
  type: str
nodes:
  description: Each node as it sees itself at the end, with C(host), C(name), C(address), C(port), C(id), C(role)
    (V(primary) or V(replica)), C(primary) (host/name of its primary) and C(slots).
  returned: always
  type: list
  elements: dict
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.redis_infra.redis.plugins.module_utils.cluster import (
    ClusterRefused,
    agreement,
    leaving_nodes,
    parse_nodes,
    plan,
    settled,
    summary,
)
from ansible_collections.redis_infra.redis.plugins.module_utils.resp import (
    RedisReplyError,
    TLSFilesError,
    at_node,
    connect,
    read_settings,
)


def observe(settings, nodes, timeout=5):
    """Each node with what it answered (id, nodes, keys, info) or an error."""
    result = []
    for node in nodes:
        item = dict(node)
        try:
            conn = connect(at_node(settings, node["address"], node["port"]), timeout)
            try:
                item["id"] = conn.call("CLUSTER", "MYID")
                item["nodes"] = conn.call("CLUSTER", "NODES")
                item["keys"] = conn.call("DBSIZE")
                item["info"] = conn.call("CLUSTER", "INFO")
                item["replication"] = conn.call("INFO", "replication")
            finally:
                conn.close()
        except (OSError, ConnectionError, RedisReplyError, TLSFilesError) as exc:
            item["error"] = str(exc) or type(exc).__name__
        result.append(item)
    return result


def wait_for(settings, nodes, what, timeout):
    deadline = time.monotonic() + timeout
    while True:
        observed = observe(settings, nodes)
        errors = [f"{node['host']}/{node['name']}: {node['error']}" for node in observed if node.get("error")]
        done, reason = (False, "; ".join(errors)) if errors else agreement(observed, what)
        if done:
            return observed
        if time.monotonic() >= deadline:
            raise ClusterRefused(f"the nodes did not agree within {timeout} s ({what}): {reason}")
        time.sleep(0.5)


def _owns(entry, slot):
    return entry is not None and any(start <= slot <= end for start, end in entry["slots"])


def migrate_slots(settings, observed, action, done, batch=100):
    """Move a run of slots from one primary to another, as the cluster specification describes: the target
    imports and the source migrates each slot, MIGRATE moves its keys in batches (clients meanwhile follow
    ASK redirections), then the target, the source and every other primary learn the new owner. A slot
    left open by a cut-off run (importing and migrating between the same nodes) is taken up where it stopped."""
    source, target = observed[action["node"]], observed[action["target"]]
    others = [node for node in observed if node is not source and node is not target and not node.get("error")
              and not parse_nodes(node.get("nodes")).get(node["id"], {}).get("primary")]
    auth = []
    if settings.get("password"):
        auth = (["AUTH2", settings["username"], settings["password"]] if settings.get("username")
                else ["AUTH", settings["password"]])
    conns = {}

    def call(node, *command):
        key = node["id"]
        try:
            if key not in conns:
                conns[key] = connect(at_node(settings, node["address"], node["port"]), 60)
            return conns[key].call(*command)
        except (RedisReplyError, OSError, ConnectionError, TLSFilesError) as exc:
            if not isinstance(exc, RedisReplyError):  # the connection is gone; a refused command leaves it usable
                conns.pop(key, None)
            error = ClusterRefused(f"{' '.join(str(part) for part in command[:3])} on {node['host']}/{node['name']} "
                                   f"failed ({exc or type(exc).__name__}) after: {'; '.join(done[-3:]) or 'nothing'}; "
                                   "the next run finishes the slot it left open")
            error.reply = str(exc) if isinstance(exc, RedisReplyError) else ""
            raise error from None

    def migrate(keys):
        try:
            call(source, "MIGRATE", target["address"], target["port"], "", 0, 10000, *auth, "KEYS", *keys)
        except ClusterRefused as exc:
            # Keys on both sides: a MIGRATE cut off after the target restored them. The slot is still the
            # source's, so its copies win, as `redis-cli --cluster fix` decides.
            if "BUSYKEY" not in exc.reply:
                raise
            call(source, "MIGRATE", target["address"], target["port"], "", 0, 10000, "REPLACE", *auth, "KEYS", *keys)

    low, high = action["slots"]
    try:
        for slot in range(low, high + 1):
            if not action.get("settle"):
                call(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source["id"])
                call(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target["id"])
                while True:
                    keys = call(source, "CLUSTER", "GETKEYSINSLOT", slot, batch)
                    if not keys:
                        break
                    migrate(keys)
                call(target, "CLUSTER", "SETSLOT", slot, "NODE", target["id"])
            try:
                call(source, "CLUSTER", "SETSLOT", slot, "NODE", target["id"])
            except ClusterRefused as exc:
                # A source that gives its last slot away becomes a replica of the target. Valkey 8 answers once
                # its replicas have the change, and the wait ends with UNBLOCKED (and the server closes that
                # connection). On Redis 7.0 the target's announcement of the new owner may reach the source
                # first: it is a replica already, and refuses SETSLOT ("only with masters"). Either way the slot
                # is moved once the source, asked on a new connection, says the target owns it.
                if not (exc.reply.startswith("UNBLOCKED") or "Please use SETSLOT only with" in exc.reply):
                    raise
                stale = conns.pop(source["id"], None)
                if stale is not None:
                    stale.close()
                if not _owns(parse_nodes(call(source, "CLUSTER", "NODES")).get(target["id"]), slot):
                    raise
            for node in list(others):
                # The cluster bus spreads the new owner anyway; telling every primary now shortens the window of
                # redirections. A node that refuses (it became a replica) or does not answer is left to the bus.
                try:
                    call(node, "CLUSTER", "SETSLOT", slot, "NODE", target["id"])
                except ClusterRefused:
                    others.remove(node)
    finally:
        for conn in conns.values():
            conn.close()


def _observe_settled(settings, nodes, timeout, remove):
    """Every node's answers once their views agree (or the last ones), the leaving nodes (confirmed by
    `remove`) observed after them. A leaving node that answers with another id than the cluster knows it by
    is not the node to remove: it is forgotten, never reset."""
    # Views that differ (a failover or a meeting still spreading) settle within a few cluster pings: the
    # plan is made from views that agree, or from the last ones, which it refuses when slots differ.
    deadline = time.monotonic() + min(timeout, 15)
    observed = observe(settings, nodes)
    while not settled(observed) and time.monotonic() < deadline:
        time.sleep(0.5)
        observed = observe(settings, nodes)
    leaving = leaving_nodes(observed, remove)
    for node, seen in zip(leaving, observe(settings, leaving), strict=True):
        if not seen.get("error") and seen.get("id") != node["id"]:
            seen["error"] = f"answers as node {seen['id']}, not as {node['id']}"
        seen["id"] = node["id"]
        observed.append(seen)
    return observed


def _send(settings, node, command, done, tolerate=()):
    try:
        conn = connect(at_node(settings, node["address"], node["port"]), 10)
        try:
            reply = conn.call(*command)
        finally:
            conn.close()
    except (RedisReplyError, OSError, ConnectionError, TLSFilesError) as exc:
        if isinstance(exc, RedisReplyError) and any(text in str(exc) for text in tolerate):
            return
        raise ClusterRefused(f"{' '.join(command[:2])} on {node['host']}/{node['name']} failed "
                             f"({exc or type(exc).__name__}) after: {'; '.join(done) or 'nothing'}") from None
    if reply != "OK":
        raise ClusterRefused(f"{' '.join(command[:2])} on {node['host']}/{node['name']} answered {reply!r}")


def _forgotten_everywhere(settings, nodes, gone, timeout, done):
    """Until no node of the inventory lists a leaving node (a node may learn one again from a peer's gossip that
    crossed its FORGET): FORGET again where one shows up."""
    ids = {node["id"] for node in gone}
    endpoints = {(node["address"], node["port"]) for node in gone}
    deadline = time.monotonic() + timeout
    while True:
        seen = observe(settings, nodes)
        # By id, or by address for a handshake with one (a new, random id).
        again = [(node, entry_id) for node in seen if not node.get("error")
                 for entry_id, entry in parse_nodes(node.get("nodes")).items()
                 if entry_id in ids or (entry["address"], entry["port"]) in endpoints]
        if not again:
            return
        if time.monotonic() >= deadline:
            listed = ", ".join(f"{node['host']}/{node['name']} lists {entry_id}" for node, entry_id in again)
            raise ClusterRefused(f"nodes still list the leaving nodes after {timeout} s: {listed} "
                                 f"(after: {'; '.join(done[-3:])})")
        for node, entry_id in again:
            _send(settings, node, ["CLUSTER", "FORGET", entry_id], done, tolerate=("Unknown node",))
        time.sleep(1)


def _failover(settings, observed, actions, timeout, done):
    """CLUSTER FAILOVER on each heir, then wait until it says it is a primary with slots."""
    for action in actions:
        heir = observed[action["node"]]
        _send(settings, heir, action["command"], done)
        deadline = time.monotonic() + timeout
        while True:
            seen = observe(settings, [heir])[0]
            own = parse_nodes(seen.get("nodes")).get(seen.get("id"), {})
            if not seen.get("error") and not own.get("primary") and own.get("slots"):
                break
            if time.monotonic() >= deadline:
                raise ClusterRefused(f"{heir['host']}/{heir['name']} did not take over within {timeout} s "
                                     f"after: {'; '.join(done) or 'nothing'}")
            time.sleep(0.5)
        done.append(action["why"])


def run(settings, nodes, replicas, timeout, check_mode, rebalance=True, remove=()):
    """Observe, plan and (unless check_mode) act; returns the module's result. Raises ClusterRefused."""
    observed = _observe_settled(settings, nodes, timeout, remove)
    decided = plan(observed, replicas, rebalance)
    done, before = [], []
    if decided.get("replan") and not check_mode:
        # A leaving primary's replica took over: what is left is planned from the cluster's new view.
        _failover(settings, observed, decided["actions"], timeout, done)
        before = [action["why"] for action in decided["actions"]]
        try:
            wait_for(settings, nodes, "slots", timeout)
            observed = _observe_settled(settings, nodes, timeout, remove)
            decided = plan(observed, replicas, rebalance)
        except ClusterRefused as exc:
            raise ClusterRefused(f"{exc} (after: {'; '.join(done)})") from None
        if decided.get("replan"):
            raise ClusterRefused(f"a leaving node still serves slots after: {'; '.join(done)}")
    actions = decided["actions"]
    resets_failed = []
    if not check_mode and actions:
        for phase in ("epoch", "meet", "slots", "replicate", "migrate", "reattach", "forget", "reset"):
            steps = [action for action in actions if action["phase"] == phase]
            if steps and phase in ("slots", "replicate", "migrate") and any(a["phase"] == "meet" for a in actions):
                wait_for(settings, nodes, "known", timeout)
            if phase == "migrate":
                # A node that was just met says CLUSTERDOWN (and refuses imported keys) until it has learned
                # every slot's owner: the slots move once every node says cluster_state:ok.
                if steps:
                    wait_for(settings, nodes, "ok", timeout)
                for action in steps:
                    migrate_slots(settings, observed, action, done)
                    done.append(action["why"])
                continue
            for action in steps:
                # A node that was met during this run may not have heard of a leaving node: nothing to forget.
                # A leaving node that cannot be reset (keys on a primary) is forgotten all the same: a warning.
                try:
                    _send(settings, observed[action["node"]], action["command"], done,
                          tolerate=("Unknown node",) if phase == "forget" else ())
                except ClusterRefused as exc:
                    if phase != "reset":
                        raise
                    resets_failed.append(str(exc).split(" after: ", maxsplit=1)[0])
                    continue
                done.append(action["why"])
        gone = [node for node in observed if node.get("leaving")]
        if gone:
            _forgotten_everywhere(settings, nodes, gone, timeout, done)
        observed = wait_for(settings, nodes, "ok", timeout)
    warnings = [f"{failure}: the node is forgotten by the cluster; stop its service" for failure in resets_failed]
    if decided["replicas_short"]:
        warnings.append(f"{decided['replicas_short']} replicas are missing: not enough nodes on other hosts than "
                        "their primaries")
    listed = before + [action["why"] for action in actions]
    if check_mode and decided.get("replan"):
        listed += [f"then: {why}" for why in decided["then"]]
    return {"changed": bool(before or actions), "actions": listed,
            "state": decided["state"], "nodes": summary([node for node in observed if not node.get("leaving")]),
            "warnings": warnings}


def main():
    module = AnsibleModule(
        argument_spec={
            "connection_file": {"type": "path", "required": True},
            "nodes": {"type": "list", "elements": "dict", "required": True, "options": {
                "host": {"type": "str", "required": True},
                "name": {"type": "str", "required": True},
                "address": {"type": "str", "required": True},
                "port": {"type": "int", "required": True},
            }},
            "replicas": {"type": "int", "default": 1},
            "timeout": {"type": "int", "default": 60},
            "rebalance": {"type": "bool", "default": True},
            "remove": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    params = module.params
    settings = read_settings(module)
    try:
        result = run(settings, params["nodes"], params["replicas"], params["timeout"], module.check_mode,
                     params["rebalance"], params["remove"])
    except ClusterRefused as exc:
        module.fail_json(msg=str(exc))
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
