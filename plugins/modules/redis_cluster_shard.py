#!/usr/bin/python
# Copyright: redis-infra contributors
# MIT License (see LICENSE)
"""One cluster node's shard: what the node says of itself and its replicas; hold or allow their failover."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_cluster_shard
short_description: Read a cluster node's shard, hold its replicas' failover, wait until they hold its data
version_added: 1.2.0
author:
  - redis-infra contributors (@redis-infra)
description:
  - Asks the node of O(connection_file) (C(CLUSTER MYID), C(CLUSTER NODES), C(CLUSTER INFO), C(DBSIZE)) for
    its role, its primary or its replicas, its slots, the slots open on it and the cluster's state. Read-only
    unless O(failover) is given.
  - With O(failover=held), sets C(cluster-replica-no-failover yes) on every replica of the node (a primary), so
    that none takes its slots over while the primary is stopped on purpose (a restore of its data); with
    O(failover=allowed), sets it back to C(no). Each replica is reached over TCP at the address and port the
    cluster knows it by, with the credentials and TLS settings of O(connection_file).
  - With O(wait_replicas), waits until every replica of the node has its link to it up, no sync in progress and
    as many keys as the node itself, and fails naming those that did not.
  - With O(expect_slots), fails unless the node is a primary that serves exactly those slots (a failover since an
    earlier look), before O(failover) or O(wait_replicas) acts.
  - With O(wait_cluster_ok), waits until every node the node lists answers C(cluster_state:ok), and fails naming
    those that did not. The other nodes mark a primary stopped for longer than the node timeout as failing,
    and clear the mark only a while (two node timeouts) after it is back; until then they refuse every client.
  - Reads each replica's C(cluster-replica-no-failover) (RV(held_replicas)); replicas that do not answer are
    listed in RV(unreachable_replicas).
options:
  connection_file:
    description: Connection file of the node on this host, whose user may run C(CLUSTER), C(CONFIG) and C(INFO).
    type: path
    required: true
  failover:
    description: V(held) or V(allowed) for the replicas of the node; omitted, nothing is changed.
    type: str
    choices: [held, allowed]
  wait_replicas:
    description: Seconds to wait for the replicas to hold the node's data (0, the default, does not wait).
    type: int
    default: 0
  expect_slots:
    description: The slots (C(start-end) runs, as RV(slots) gives them) the node must serve as a primary.
    type: list
    elements: str
  wait_cluster_ok:
    description: Seconds to wait for every node of the cluster to say C(cluster_state:ok) (0, the default, does not).
    type: int
    default: 0
  replicas:
    description:
      - The replicas as V(address:port), instead of those the node names (C(replicas) of an earlier run). Lets
        O(failover=allowed) undo a hold while the node itself does not answer (its answers are then empty, with a
        warning).
    type: list
    elements: str
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: In check mode the replicas are asked and C(changed) says whether O(failover) would change one.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - Every node of the cluster must share the credentials of O(connection_file) (the role's admin user).
"""

EXAMPLES = r"""
- name: Keep the shard's replicas from taking over while the primary is stopped
  redis_infra.redis.redis_cluster_shard:
    connection_file: /etc/redis-infra/connections/a-admin.toml
    failover: held
"""

RETURN = r"""
id:
  description: The node's id.
  returned: always
  type: str
role:
  description: V(primary) or V(replica), from the node's own view.
  returned: always
  type: str
primary:
  description: For a replica, V(address:port) of its primary; otherwise null.
  returned: always
  type: str
replicas:
  description: V(address:port) of each replica of the node.
  returned: always
  type: list
  elements: str
slots:
  description: The node's slots, as C(start-end) runs.
  returned: always
  type: list
  elements: str
open_slots:
  description: Slots open on the node, as C(slot importing from id) or C(slot migrating to id).
  returned: always
  type: list
  elements: str
cluster_state:
  description: C(cluster_state) of C(CLUSTER INFO) (V(ok) or V(fail)).
  returned: always
  type: str
keys:
  description: The node's key count (C(DBSIZE)).
  returned: always
  type: int
replica_keys:
  description: With O(wait_replicas), each replica's key count once it holds the node's data.
  returned: when O(wait_replicas) is set
  type: dict
cluster_ok_nodes:
  description: With O(wait_cluster_ok), every node (V(address:port)) that said C(cluster_state:ok).
  returned: when O(wait_cluster_ok) is set
  type: list
  elements: str
held_replicas:
  description: V(address:port) of the replicas whose C(cluster-replica-no-failover) is C(yes) (before O(failover) acts).
  returned: always
  type: list
  elements: str
unreachable_replicas:
  description: V(address:port) of the replicas that did not answer, each with the error.
  returned: always
  type: list
  elements: str
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.redis_infra.redis.plugins.module_utils.cluster import parse_nodes
from ansible_collections.redis_infra.redis.plugins.module_utils.resp import (
    RedisReplyError,
    TLSFilesError,
    at_node,
    connect,
    read_settings,
)

ERRORS = (OSError, ConnectionError, RedisReplyError, TLSFilesError)


class ShardError(Exception):
    pass


def _call(settings, *command, address=None, port=None):
    node_settings = settings if address is None else at_node(settings, address, port)
    try:
        conn = connect(node_settings, 10)
        try:
            return conn.call(*command)
        finally:
            conn.close()
    except ERRORS as exc:
        where = f"{address}:{port}" if address is not None else f"instance {settings.get('name', '?')}"
        shown = " ".join(str(part) for part in command[:3])
        raise ShardError(f"{shown} on {where}: {exc or type(exc).__name__}") from None


def inspect(settings):
    """The node's own view: id, role, primary, replicas (with address and port), slots, open slots, state, keys."""
    node_id = _call(settings, "CLUSTER", "MYID")
    view = parse_nodes(_call(settings, "CLUSTER", "NODES"))
    info = _call(settings, "CLUSTER", "INFO")
    own = view.get(node_id)
    if own is None:
        raise ShardError(f"instance {settings.get('name', '?')} does not list itself in CLUSTER NODES")
    primary = view.get(own["primary"] or "")
    replicas = [entry for entry in view.values() if entry["primary"] == node_id and "handshake" not in entry["flags"]]
    state = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("cluster_state:")), "")
    return {
        "id": node_id, "role": "replica" if own["primary"] else "primary",
        "primary": f"{primary['address']}:{primary['port']}" if primary else None,
        "replicas": [f"{entry['address']}:{entry['port']}" for entry in replicas],
        "slots": [f"{start}-{end}" for start, end in own["slots"]],
        "open_slots": [f"{slot} {direction} {'to' if direction == 'migrating' else 'from'} {other}"
                       for slot, direction, other in own["open"]],
        "cluster_state": state, "keys": int(_call(settings, "DBSIZE")),
        "_replicas": [(entry["address"], entry["port"]) for entry in replicas],
    }


def _no_failover(settings, address, port):
    reply = _call(settings, "CONFIG", "GET", "cluster-replica-no-failover", address=address, port=port)
    return dict(zip(reply[::2], reply[1::2], strict=True)).get("cluster-replica-no-failover") if reply else None


def holds(settings, replicas):
    """(replicas whose cluster-replica-no-failover is yes, replicas that did not answer with the error)."""
    held, unreachable = [], []
    for address, port in replicas:
        try:
            if _no_failover(settings, address, port) == "yes":
                held.append(f"{address}:{port}")
        except ShardError as exc:
            unreachable.append(str(exc))
    return held, unreachable


def set_failover(settings, replicas, held, check_mode):
    """cluster-replica-no-failover on each replica; returns whether one was (or would be) changed. Every replica
    is tried; those that failed are named at the end."""
    wanted = "yes" if held else "no"
    changed, errors = False, []
    for address, port in replicas:
        try:
            if _no_failover(settings, address, port) == wanted:
                continue
            changed = True
            if not check_mode:
                answer = _call(settings, "CONFIG", "SET", "cluster-replica-no-failover", wanted, address=address,
                               port=port)
                if answer != "OK":
                    errors.append(f"CONFIG SET cluster-replica-no-failover {wanted} on {address}:{port} answered "
                                  f"{answer!r}")
        except ShardError as exc:
            errors.append(str(exc))
    if errors:
        raise ShardError(f"cluster-replica-no-failover {wanted} was not set on every replica: " + "; ".join(errors))
    return changed


def _fields(text):
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def wait_replicas(settings, replicas, timeout):
    """Until every replica's link is up, no sync runs and it has applied the node's replication stream up to
    where it stood when the wait began (clients writing meanwhile do not keep the wait going): {endpoint: keys}."""
    deadline = time.monotonic() + timeout
    target = int(_fields(_call(settings, "INFO", "replication")).get("master_repl_offset", 0))
    while True:
        keys = int(_call(settings, "DBSIZE"))
        counts, behind = {}, []
        for address, port in replicas:
            endpoint = f"{address}:{port}"
            try:
                text = _call(settings, "INFO", "replication", address=address, port=port)
                count = int(_call(settings, "DBSIZE", address=address, port=port))
            except ShardError as exc:
                behind.append(f"{endpoint}: {exc}")
                continue
            fields = _fields(text)
            offset = int(fields.get("slave_repl_offset", -1))
            if fields.get("master_link_status") != "up" or fields.get("master_sync_in_progress", "0") != "0" \
                    or offset < target:
                behind.append(f"{endpoint}: link {fields.get('master_link_status', '?')}, "
                              f"sync in progress {fields.get('master_sync_in_progress', '?')}, offset {offset} of "
                              f"{target}, {count} keys (the node has {keys})")
            counts[endpoint] = count
        if not behind:
            return counts
        if time.monotonic() >= deadline:
            raise ShardError(f"the replicas did not hold the node's {keys} keys within {timeout} s: "
                             + "; ".join(behind))
        time.sleep(1)


def wait_cluster_ok(settings, timeout):
    """Until every node this node lists (its own view, read again each round) answers cluster_state:ok over TCP:
    the endpoints that were waited for, sorted."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = [entry for entry in parse_nodes(_call(settings, "CLUSTER", "NODES")).values()
                 if not entry["flags"] & {"handshake", "noaddr"}]
        waiting = []
        for entry in nodes:
            endpoint = f"{entry['address']}:{entry['port']}"
            try:
                state = _fields(_call(settings, "CLUSTER", "INFO", address=entry["address"], port=entry["port"]))
            except ShardError as exc:
                waiting.append(str(exc))
                continue
            if state.get("cluster_state", "").strip() != "ok":
                waiting.append(f"{endpoint}: cluster_state {state.get('cluster_state', '?').strip()}")
        if not waiting:
            return sorted(f"{entry['address']}:{entry['port']}" for entry in nodes)
        if time.monotonic() >= deadline:
            raise ShardError(f"the cluster was not ok on every node within {timeout} s: " + "; ".join(waiting))
        time.sleep(1)


def main():
    module = AnsibleModule(
        argument_spec={
            "connection_file": {"type": "path", "required": True},
            "failover": {"type": "str", "choices": ["held", "allowed"]},
            "wait_replicas": {"type": "int", "default": 0},
            "wait_cluster_ok": {"type": "int", "default": 0},
            "replicas": {"type": "list", "elements": "str"},
            "expect_slots": {"type": "list", "elements": "str"},
        },
        supports_check_mode=True,
    )
    params = module.params
    settings = read_settings(module)
    given = params["replicas"]
    try:
        try:
            result = inspect(settings)
            replicas = result.pop("_replicas")
        except ShardError as exc:
            if given is None:
                raise
            module.warn(f"the node does not answer ({exc}); the replicas given are used")
            result = {"id": None, "role": None, "primary": None, "replicas": given, "slots": [], "open_slots": [],
                      "cluster_state": None, "keys": None}
        if given is not None:
            bad = [item for item in given if not item.rpartition(":")[2].isdigit() or not item.rpartition(":")[0]]
            if bad:
                module.fail_json(msg=f"replicas: not address:port: {', '.join(bad)}")
            replicas = [(item.rpartition(":")[0], int(item.rpartition(":")[2])) for item in given]
        expected = params["expect_slots"]
        if expected is not None and (result["role"] != "primary" or result["slots"] != expected):
            module.fail_json(msg=f"the node is no longer the primary of slots {','.join(expected)}: it is a "
                                 f"{result['role'] or 'node that does not answer'}"
                                 + (f" of {result['primary']}" if result["primary"] else "")
                                 + (f" serving {','.join(result['slots'])}" if result["slots"] else "")
                                 + "; a failover or a slot move happened meanwhile", **result)
        result["held_replicas"], result["unreachable_replicas"] = holds(settings, replicas)
        changed = False
        if params["failover"]:
            changed = set_failover(settings, replicas, params["failover"] == "held", module.check_mode)
        if params["wait_replicas"] and not module.check_mode:
            result["replica_keys"] = wait_replicas(settings, replicas, params["wait_replicas"])
        if params["wait_cluster_ok"] and not module.check_mode:
            result["cluster_ok_nodes"] = wait_cluster_ok(settings, params["wait_cluster_ok"])
    except ShardError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
