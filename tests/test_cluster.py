"""The redis_cluster module's decisions (plugins/module_utils/cluster.py) and its run against real
cluster-enabled redis-server processes on loopback: six nodes, TLS on the client port and the cluster bus,
ACL users as the role writes them. "Hosts" are labels here: anti-affinity is checked on them."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.redis_infra.redis.plugins.module_utils import cluster  # noqa: E402
from ansible_collections.redis_infra.redis.plugins.module_utils.resp import connect  # noqa: E402
from ansible_collections.redis_infra.redis.plugins.modules import redis_cluster  # noqa: E402

from .conftest import cluster_port as free_port  # noqa: E402

PASSWORD = "cluster-admin-password-0123456789abcdef"
HOSTS = ("h1", "h2", "h3")


def _nodes(count: int, hosts=HOSTS) -> list[dict]:
    """Nodes spread over the hosts in turns, named a, b, ... per host."""
    return [{"host": hosts[i % len(hosts)], "name": "abcdefgh"[i // len(hosts)], "address": "127.0.0.1",
             "port": free_port()} for i in range(count)]


@pytest.fixture
def start_nodes(redis_factory, tls_files):
    """Start cluster-enabled servers for node dicts; returns (settings for the module, nodes)."""

    def start(nodes: list[dict], extra: str = ""):
        for node in nodes:
            start.processes[node["port"]] = redis_factory(
                tls_files.server_config(node["port"])
                + "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 2000\n"
                "tls-cluster yes\ncluster-announce-ip 127.0.0.1\n"
                f"user default off\nuser admin on >{PASSWORD} ~* &* +@all\n"
                f"masteruser admin\nmasterauth {PASSWORD}\n" + extra, port=node["port"])
        settings = {"name": "main", "username": "admin", "password": PASSWORD, "tls": True,
                    "tls_ca_file": str(tls_files.ca_file)}
        return settings, nodes

    start.processes = {}
    return start


def _call(settings, node, *command):
    conn = connect(dict(settings, host=node["address"], port=node["port"]), 5)
    try:
        return conn.call(*command)
    finally:
        conn.close()


def _by_name(result):
    return {f"{node['host']}/{node['name']}": node for node in result["nodes"]}


# --- Decisions, without servers ---------------------------------------------------------------------------

def test_slot_ranges_cover_every_slot_once():
    for primaries in (3, 4, 5, 7):
        ranges = cluster.slot_ranges(primaries)
        assert ranges[0][0] == 0 and ranges[-1][1] == cluster.SLOTS - 1
        assert all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:], strict=False))
        sizes = [end - start + 1 for start, end in ranges]
        assert max(sizes) - min(sizes) <= 1


def test_replicas_never_share_their_primarys_host():
    nodes = [dict(node, id=f"id{i}") for i, node in enumerate(_nodes(9))]
    primaries, candidates = nodes[:3], nodes[3:]
    placed = cluster.place_replicas([(p, 2, set()) for p in primaries], candidates, list(HOSTS))
    assert len(placed) == 6
    for replica, primary in placed:
        assert replica["host"] != primary["host"]
    # Two replicas of one primary land on two different hosts when the hosts allow it.
    for primary in primaries:
        hosts = [replica["host"] for replica, owner in placed if owner is primary]
        assert len(set(hosts)) == 2


def test_a_placement_that_needs_a_replica_beside_its_primary_is_refused():
    nodes = _nodes(6, hosts=("h1",))
    with pytest.raises(cluster.ClusterRefused, match="another host than its primary"):
        cluster.place_replicas([(p, 1, set()) for p in nodes[:3]], nodes[3:], ["h1"])


def test_parse_nodes_reads_slots_flags_and_open_slots():
    text = ("a1 10.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 6000 [5461->-b2]\n"
            "b2 10.0.0.2:7000@17000,host2 slave a1 0 1700000000 1 connected\n")
    view = cluster.parse_nodes(text)
    assert view["a1"]["slots"] == [(0, 5460), (6000, 6000)] and view["a1"]["migrating"]
    assert view["b2"]["primary"] == "a1" and view["b2"]["address"] == "10.0.0.2" and view["b2"]["port"] == 7000
    assert "myself" in view["a1"]["flags"]


# --- Against real servers -----------------------------------------------------------------------------------

def test_check_mode_creates_nothing_then_a_run_forms_the_cluster_over_tls(start_nodes):
    settings, nodes = start_nodes(_nodes(6))
    preview = redis_cluster.run(settings, nodes, 1, 30, check_mode=True)
    assert preview["changed"] and preview["state"] == "new"
    assert sum("serves slots" in action for action in preview["actions"]) == 3
    assert sum("replicates" in action for action in preview["actions"]) == 3
    # Nothing was sent: every node still knows only itself.
    assert all(len(_call(settings, node, "CLUSTER", "NODES").splitlines()) == 1 for node in nodes)

    result = redis_cluster.run(settings, nodes, 1, 30, check_mode=False)
    assert result["changed"] and result["state"] == "new"
    primaries = [node for node in result["nodes"] if node["role"] == "primary"]
    replicas = [node for node in result["nodes"] if node["role"] == "replica"]
    assert len(primaries) == 3 and len(replicas) == 3
    # One primary per host, and each replica on another host than its primary.
    assert sorted(node["host"] for node in primaries) == list(HOSTS)
    for replica in replicas:
        assert replica["primary"] and replica["primary"].split("/")[0] != replica["host"]
    for node in nodes:
        info = _call(settings, node, "CLUSTER", "INFO")
        assert "cluster_state:ok" in info and "cluster_slots_assigned:16384" in info and "cluster_known_nodes:6" in info

    # A real cluster client writes through every shard, over TLS.
    redis = pytest.importorskip("redis")
    client = redis.RedisCluster(host="127.0.0.1", port=nodes[0]["port"], username="admin", password=PASSWORD,
                                ssl=True, ssl_ca_certs=settings["tls_ca_file"])
    try:
        for i in range(200):
            client.set(f"app:key:{i}", i)
        assert [int(client.get(f"app:key:{i}")) for i in range(200)] == list(range(200))
        holders = {client.keyslot(f"app:key:{i}") // 5462 for i in range(200)}
        assert holders == {0, 1, 2}
    finally:
        client.close()

    # Again: nothing to do.
    again = redis_cluster.run(settings, nodes, 1, 30, check_mode=False)
    assert not again["changed"] and again["state"] == "complete" and again["actions"] == []

    # After a failover the cluster's view wins: the run changes nothing and moves nobody back.
    replica = next(node for node in nodes if _by_name(result)[f"{node['host']}/{node['name']}"]["role"] == "replica")
    assert _call(settings, replica, "CLUSTER", "FAILOVER") == "OK"
    deadline = time.monotonic() + 20
    while _call(settings, replica, "ROLE")[0] != "master":
        assert time.monotonic() < deadline, "the replica did not take over"
        time.sleep(0.2)
    after = redis_cluster.run(settings, nodes, 1, 30, check_mode=False)
    assert not after["changed"], after
    assert _by_name(after)[f"{replica['host']}/{replica['name']}"]["role"] == "primary"

    # A node of the inventory that holds keys outside the cluster is refused, and left alone.
    extra = _nodes(1, hosts=("h4",))
    # A lone cluster node refuses SET for slots it does not serve: the data arrives as an old data set would.
    start_nodes(extra, "enable-debug-command yes\n")
    _call(settings, extra[0], "DEBUG", "POPULATE", 1)
    with pytest.raises(cluster.ClusterRefused, match="holds 1 keys"):
        redis_cluster.run(settings, nodes + extra, 1, 30, check_mode=False)
    assert len(_call(settings, extra[0], "CLUSTER", "NODES").splitlines()) == 1
    assert len(_call(settings, nodes[0], "CLUSTER", "NODES").splitlines()) == 6

    # A node missing from the inventory: the cluster knows it, so the run refuses (no shrink by omission).
    with pytest.raises(cluster.ClusterRefused, match="outside the inventory"):
        redis_cluster.run(settings, nodes[:-1], 1, 30, check_mode=False)


def test_an_empty_node_added_to_the_inventory_becomes_the_missing_replica(start_nodes):
    settings, nodes = start_nodes(_nodes(6))
    # Five nodes cannot make shards of two: refused before anything is sent.
    with pytest.raises(cluster.ClusterRefused, match="cannot make shards"):
        redis_cluster.run(settings, nodes[:5], 1, 30, check_mode=False)
    # Three primaries without replicas, then the inventory gains three nodes: they become the replicas.
    redis_cluster.run(settings, nodes[:3], 0, 30, check_mode=False)
    result = redis_cluster.run(settings, nodes, 1, 30, check_mode=False)
    assert result["changed"] and result["state"] == "completing"
    replicas = [node for node in result["nodes"] if node["role"] == "replica"]
    assert len(replicas) == 3
    assert all(node["primary"].split("/")[0] != node["host"] for node in replicas)


def test_a_run_cut_off_after_the_meeting_is_finished_by_the_next(start_nodes):
    settings, nodes = start_nodes(_nodes(6))
    # What a run cut off after its meetings and one primary's slots leaves behind.
    for node in nodes[1:]:
        assert _call(settings, nodes[0], "CLUSTER", "MEET", node["address"], node["port"]) == "OK"
    _call(settings, nodes[0], "CLUSTER", "ADDSLOTSRANGE", 0, 5461)
    redis_cluster.wait_for(settings, nodes, "known", 30)
    result = redis_cluster.run(settings, nodes, 1, 30, check_mode=False)
    assert result["state"] == "completing"
    assert all("cluster_state:ok" in _call(settings, node, "CLUSTER", "INFO") for node in nodes)
    assert sum(node["role"] == "primary" for node in result["nodes"]) == 3


def test_two_clusters_and_a_silent_node_are_refused_without_a_change(start_nodes, redis_factory):
    settings, nodes = start_nodes(_nodes(6))
    redis_cluster.run(settings, nodes[:3], 0, 30, check_mode=False)
    # The other three as a cluster of their own.
    other = [dict(node, host=host) for node, host in zip(nodes[3:], HOSTS, strict=True)]
    redis_cluster.run(settings, other, 0, 30, check_mode=False)
    with pytest.raises(cluster.ClusterRefused, match="more than one cluster"):
        redis_cluster.run(settings, nodes, 1, 30, check_mode=False)
    silent = {"host": "h4", "name": "a", "address": "127.0.0.1", "port": free_port()}
    with pytest.raises(cluster.ClusterRefused, match="not every node answered"):
        redis_cluster.run(settings, nodes[:3] + [silent], 1, 30, check_mode=False)
    assert len(_call(settings, nodes[0], "CLUSTER", "NODES").splitlines()) == 3


def test_valkeys_tls_port_counts_when_a_plaintext_client_sees_port_0():
    """Valkey 8 answers a client on the unix socket with the plaintext port, 0 when only TLS is served, and
    the TLS port, where it says it, in the aux field tls-port; Valkey 8.1 says only the bus port (port +
    10000). The role's rolling restart reads these through the unix socket. Lines as Valkey 8.1 answered."""
    text = ("1a5ab09 172.21.0.2:0@17000 myself,master - 0 0 1 connected 0-5461\n"
            "9824eba 172.21.0.3:0@17001 slave 1a5ab09 0 1796414411522 1 connected\n")
    view = cluster.parse_nodes(text)
    assert (view["1a5ab09"]["port"], view["9824eba"]["port"]) == (7000, 7001)
    aux = cluster.parse_nodes("a1 10.0.0.1:0@17500,,tls-port=7000,shard-id=abc myself,master - 0 0 1 connected\n")
    assert aux["a1"]["port"] == 7000
    sys.path.insert(0, str(ROOT / "plugins/filter"))
    from redis_instances import redis_server_cluster_successor

    nodes = [{"host": "h1", "name": "a", "address": "172.21.0.2", "port": 7000},
             {"host": "h2", "name": "b", "address": "172.21.0.3", "port": 7001}]
    assert redis_server_cluster_successor([text.splitlines()[1]], nodes) == nodes[1]
    # A failing replica, or one whose link is down, does not take over.
    failing = text.splitlines()[1].replace("slave", "slave,fail")
    assert redis_server_cluster_successor([failing], nodes) is None
    assert redis_server_cluster_successor([text.splitlines()[1].replace("connected", "disconnected")], nodes) is None


# --- Growing ----------------------------------------------------------------------------------------------

def test_rebalance_gives_new_primaries_their_share_from_the_most_loaded():
    holders = {0: list(range(0, 5462)), 1: list(range(5462, 10923)), 2: list(range(10923, 16384)), 3: []}
    moves = cluster.rebalance(holders)
    moved = {target: 0 for target in holders}
    for source, target, low, high in moves:
        assert target == 3 and source in (0, 1, 2) and low <= high
        assert all(slot in holders[source] for slot in (low, high))
        moved[target] += high - low + 1
    assert moved[3] == 4096
    # Each old primary gave about a third, from the top of its range: three runs.
    assert len(moves) == 3
    # A cluster at its shares, or one only a little uneven, is left alone.
    even = {index: [slot for start, end in [run] for slot in range(start, end + 1)]
            for index, run in enumerate(cluster.slot_ranges(4))}
    assert cluster.rebalance(even) == []
    # Within 2 % of the share: left alone. Beyond it (a grow cut off halfway): the rest moves.
    assert cluster.rebalance({**even, 0: even[0] + even[1][:50], 1: even[1][50:]}) == []
    cut_off = {**holders, 0: holders[0][:-700], 1: holders[1][:-700], 3: holders[0][-700:] + holders[1][-700:]}
    moved = sum(high - low + 1 for _, target, low, high in cluster.rebalance(cut_off) if target == 3)
    assert moved == 4096 - 1400


def test_rebalance_drains_a_leaving_primary_to_those_that_stay():
    four = {index: [slot for start, end in [run] for slot in range(start, end + 1)]
            for index, run in enumerate(cluster.slot_ranges(4))}
    moves = cluster.rebalance(four, leaving=[3])
    assert {source for source, _target, _low, _high in moves} == {3}
    given = {target: sum(high - low + 1 for _s, t, low, high in moves if t == target) for target in (0, 1, 2)}
    assert sum(given.values()) == len(four[3])
    final = sorted(len(four[index]) + given[index] for index in (0, 1, 2))
    assert final == sorted(size for size in (5462, 5461, 5461)), final
    # A leaving primary with a handful of slots is drained although the rest is within the 2 % tolerance;
    # with even=False only its slots move, however uneven the others are.
    few = {0: list(range(0, 5400)), 1: list(range(5400, 10900)), 2: list(range(10900, 16380)), 3: [16380, 16381, 16382,
                                                                                                    16383]}
    assert sum(h - lo + 1 for s, _t, lo, h in cluster.rebalance(few, leaving=[3]) if s == 3) == 4
    uneven = {0: list(range(0, 8000)), 1: list(range(8000, 12000)), 2: list(range(12000, 16000)),
              3: list(range(16000, 16384))}
    only = cluster.rebalance(uneven, leaving=[3], even=False)
    assert {source for source, *_rest in only} == {3} and sum(h - lo + 1 for *_st, lo, h in only) == 384


def _synthetic(entries, inventory, leaving=()):
    """Observed nodes from a made-up cluster: entries are (id, port, primary id or None, slot tokens); every
    node sees the same table. inventory: (id, host, name) of the nodes of the inventory; leaving: their ids."""
    lines = {node_id: f"{node_id} 127.0.0.1:{port}@{port + 10000} {'slave' if primary else 'master'} "
                      f"{primary or '-'} 0 0 1 connected {' '.join(slots)}".strip()
             for node_id, port, primary, slots in entries}
    ports = {node_id: port for node_id, port, _primary, _slots in entries}

    def view(node_id):
        own = lines[node_id].replace(" slave ", " myself,slave ").replace(" master ", " myself,master ")
        return "\n".join([own] + [line for other, line in lines.items() if other != node_id])

    observed = [{"host": host, "name": name, "address": "127.0.0.1", "port": ports[node_id], "id": node_id,
                 "nodes": view(node_id), "keys": 1} for node_id, host, name in inventory]
    observed += [{"host": "leaving", "name": f"127.0.0.1:{ports[node_id]}", "address": "127.0.0.1",
                  "port": ports[node_id], "id": node_id, "nodes": view(node_id), "keys": 1, "leaving": True}
                 for node_id in leaving]
    return observed


def test_a_removal_is_refused_before_its_failover_when_what_follows_is_refused():
    """Removing a primary whose replica stays, with spare nodes that make no whole shard: the plan refuses
    before the failover instead of failing over and refusing afterwards."""
    ids = [f"{index:040x}" for index in range(8)]
    ranges = [f"{start}-{end}" for start, end in cluster.slot_ranges(3)]
    entries = [(ids[i], 7000 + i, None, [ranges[i]]) for i in range(3)]
    entries += [(ids[3 + i], 7003 + i, ids[i], []) for i in range(3)]
    entries += [(ids[6], 7006, None, []), (ids[7], 7007, None, [])]
    inventory = [(ids[1], "h2", "a"), (ids[2], "h3", "a"), (ids[3], "h2", "b"), (ids[4], "h3", "b"),
                 (ids[5], "h1", "b"), (ids[6], "h1", "c"), (ids[7], "h3", "c")]
    # After the failover one spare node becomes the new primary's replica; the other makes no whole shard.
    with pytest.raises(cluster.ClusterRefused, match="whole shards"):
        cluster.plan(_synthetic(entries, inventory, leaving=[ids[0]]), 1)
    # Without the spare node the failover is planned, and what follows it is listed.
    decided = cluster.plan(_synthetic(entries[:6], inventory[:5], leaving=[ids[0]]), 1)
    assert decided["replan"] and [action["phase"] for action in decided["actions"]] == ["failover"]
    assert decided["actions"][0]["node"] == 2 and any("forgets" in why for why in decided["then"])


def test_a_drain_cut_off_in_the_middle_of_a_slot_is_finished_by_the_next_run():
    ids = [f"{index:040x}" for index in range(8)]
    ranges = cluster.slot_ranges(4)
    entries = [(ids[i], 7000 + i, None, [f"{start}-{end}" for start, end in [ranges[i]]]) for i in range(4)]
    entries += [(ids[4 + i], 7004 + i, ids[i], []) for i in range(4)]
    # The leaving primary (shard 4, whose replica leaves too) is migrating its first slot to the first primary.
    slot = ranges[3][0]
    entries[3] = (ids[3], 7003, None, entries[3][3] + [f"[{slot}->-{ids[0]}]"])
    entries[0] = (ids[0], 7000, None, entries[0][3] + [f"[{slot}-<-{ids[3]}]"])
    inventory = [(ids[i], f"h{i + 1}", "a") for i in range(3)] + [(ids[4 + i], f"h{(i + 1) % 3 + 1}", "b")
                                                                   for i in range(3)]
    decided = cluster.plan(_synthetic(entries, inventory, leaving=[ids[3], ids[7]]), 1)
    whys = [action["why"] for action in decided["actions"]]
    assert f"slot {slot}, left open by a cut-off run, moves on from 127.0.0.1:7003 (leaving the cluster)" in whys[0]
    moved = sum(action["slots"][1] - action["slots"][0] + 1 for action in decided["actions"]
                if action["phase"] == "migrate")
    assert moved == ranges[3][1] - ranges[3][0] + 1
    assert sum("forgets" in why for why in whys) == 12


def test_left_over_nodes_that_make_no_whole_shard_are_refused():
    # Three formed shards of two (no replicas missing) and one more empty node: half a shard.
    observed = []
    ids = [f"{index:040x}" for index in range(7)]
    lines = []
    for index, (start, end) in enumerate(cluster.slot_ranges(3)):
        lines.append(f"{ids[index]} 127.0.0.1:{7000 + index}@{17000 + index} master - 0 0 {index + 1} connected "
                     f"{start}-{end}")
        lines.append(f"{ids[index + 3]} 127.0.0.1:{7003 + index}@{17003 + index} slave {ids[index]} 0 0 1 connected")
    for index in range(6):
        own = lines[[0, 2, 4, 1, 3, 5][index]]
        text = "\n".join([own.replace(" master", " myself,master").replace(" slave", " myself,slave")]
                         + [line for line in lines if line != own])
        observed.append({"host": HOSTS[index % 3], "name": "ab"[index // 3], "address": "127.0.0.1",
                         "port": 7000 + index, "id": ids[index], "nodes": text, "keys": 1})
    observed.append({"host": "h1", "name": "c", "address": "127.0.0.1", "port": 7006, "id": ids[6],
                     "nodes": f"{ids[6]} 127.0.0.1:7006@17006 myself,master - 0 0 0 connected", "keys": 0})
    with pytest.raises(cluster.ClusterRefused, match="cannot make whole shards"):
        cluster.plan(observed, 1)
    assert cluster.plan(observed[:6], 1)["actions"] == []


def _writer(settings, nodes, prefix, stop, errors, written):
    redis = pytest.importorskip("redis")
    client = redis.RedisCluster(host="127.0.0.1", port=nodes[0]["port"], username="admin", password=PASSWORD,
                                ssl=True, ssl_ca_certs=settings["tls_ca_file"])
    try:
        number = 0
        while not stop.is_set():
            try:
                client.set(f"{prefix}{number}", number)
                written.append(number)
            except redis.RedisError as exc:
                errors.append(repr(exc))
            number += 1
    finally:
        client.close()


def _read_back(client, prefix, numbers, batch=500):
    """The values of `<prefix><number>` as ints, read through the cluster client in pipelines of `batch`."""
    numbers, values = list(numbers), []
    for start in range(0, len(numbers), batch):
        pipe = client.pipeline()
        for number in numbers[start:start + batch]:
            pipe.get(f"{prefix}{number}")
        values += pipe.execute()
    return [int(value) for value in values]


def test_two_nodes_added_to_the_inventory_become_a_shard_under_writes_and_removing_them_drains_it(start_nodes):
    import threading

    redis = pytest.importorskip("redis")
    settings, nodes = start_nodes(_nodes(8))
    redis_cluster.run(settings, nodes[:6], 1, 30, check_mode=False)
    client = redis.RedisCluster(host="127.0.0.1", port=nodes[0]["port"], username="admin", password=PASSWORD,
                                ssl=True, ssl_ca_certs=settings["tls_ca_file"])
    try:
        for start in range(0, 10000, 500):
            pipe = client.pipeline()
            for number in range(start, start + 500):
                pipe.set(f"grow:key:{number}", number)
            pipe.execute()

        preview = redis_cluster.run(settings, nodes, 1, 30, check_mode=True)
        assert preview["changed"] and any("move from" in action for action in preview["actions"])
        assert all(len(_call(settings, node, "CLUSTER", "NODES").splitlines()) == 1 for node in nodes[6:])

        stop, errors, written = threading.Event(), [], []
        writer = threading.Thread(target=_writer, args=(settings, nodes, "grow:live:", stop, errors, written))
        writer.start()
        try:
            result = redis_cluster.run(settings, nodes, 1, 60, check_mode=False)
        finally:
            stop.set()
            writer.join(30)
        assert result["changed"] and result["state"] == "completing"
        assert not errors, errors[:5]
        assert len(written) > 50
        primaries = [node for node in result["nodes"] if node["role"] == "primary"]
        assert len(primaries) == 4
        counts = {f"{node['host']}/{node['name']}": sum(int(run.split("-")[1]) - int(run.split("-")[0]) + 1
                                                      for run in node["slots"]) for node in primaries}
        assert sum(counts.values()) == cluster.SLOTS and all(4095 <= count <= 4097 for count in counts.values()), counts
        for replica in (node for node in result["nodes"] if node["role"] == "replica"):
            assert replica["primary"].split("/")[0] != replica["host"], replica
        for node in nodes:
            info = _call(settings, node, "CLUSTER", "INFO")
            assert "cluster_state:ok" in info and "cluster_known_nodes:8" in info and "cluster_size:4" in info
        # Every key written before and during the growth reads back, through the cluster client.
        assert _read_back(client, "grow:key:", range(10000)) == list(range(10000))
        assert _read_back(client, "grow:live:", written) == written
        again = redis_cluster.run(settings, nodes, 1, 30, check_mode=False)
        assert not again["changed"], again["actions"]

        # Shrinking back: the shard taken out of the inventory is refused until its removal is confirmed, then
        # drained under writes (its slots to the three others), forgotten by every node and reset.
        staying, leaving = nodes[:6], nodes[6:]
        endpoints = [f"127.0.0.1:{node['port']}" for node in leaving]
        with pytest.raises(cluster.ClusterRefused, match="redis_server_cluster_remove") as refused:
            redis_cluster.run(settings, staying, 1, 30, check_mode=False)
        assert all(endpoint in str(refused.value) for endpoint in endpoints), refused.value
        with pytest.raises(cluster.ClusterRefused, match="in the inventory"):
            redis_cluster.run(settings, staying, 1, 30, check_mode=False, remove=[f"127.0.0.1:{nodes[0]['port']}"])
        preview = redis_cluster.run(settings, staying, 1, 30, check_mode=True, remove=endpoints)
        assert any("move from 127.0.0.1" in action and "(leaving the cluster)" in action
                   for action in preview["actions"]), preview["actions"]
        assert all(len(_call(settings, node, "CLUSTER", "NODES").splitlines()) == 8 for node in nodes)
        stop, errors, shrink_written = threading.Event(), [], []
        writer = threading.Thread(target=_writer, args=(settings, staying, "shrink:live:", stop, errors,
                                                        shrink_written))
        writer.start()
        try:
            result = redis_cluster.run(settings, staying, 1, 60, check_mode=False, remove=endpoints)
        finally:
            stop.set()
            writer.join(30)
        assert result["changed"] and not errors, errors[:5]
        assert len(shrink_written) > 50
        assert sum(f"forgets 127.0.0.1:{leaving[0]['port']}" in action for action in result["actions"]) == 6
        primaries = [node for node in result["nodes"] if node["role"] == "primary"]
        assert len(primaries) == 3 and len(result["nodes"]) == 6
        counts = sorted(sum(int(run.split("-")[1]) - int(run.split("-")[0]) + 1 for run in node["slots"])
                        for node in primaries)
        assert counts == [5461, 5461, 5462], counts
        for replica in (node for node in result["nodes"] if node["role"] == "replica"):
            assert replica["primary"].split("/")[0] != replica["host"], replica
        for node in staying:
            info = _call(settings, node, "CLUSTER", "INFO")
            assert "cluster_state:ok" in info and "cluster_known_nodes:6" in info and "cluster_size:3" in info
        assert sum("is reset" in action for action in result["actions"]) == 2, result["actions"]
        for node in leaving:  # reset: it knows no node and holds no key
            assert len(_call(settings, node, "CLUSTER", "NODES").splitlines()) == 1
            assert int(_call(settings, node, "DBSIZE")) == 0
        # A client whose slot map still named a leaving node refreshes it (a reset node answers CLUSTERDOWN).
        client.close()
        client = redis.RedisCluster(host="127.0.0.1", port=nodes[0]["port"], username="admin", password=PASSWORD,
                                    ssl=True, ssl_ca_certs=settings["tls_ca_file"])
        assert _read_back(client, "grow:key:", range(10000)) == list(range(10000))
        for prefix, numbers in (("grow:live:", written), ("shrink:live:", shrink_written)):
            assert _read_back(client, prefix, numbers) == numbers, prefix
        # The same confirmation again finds nothing to remove; without it the forgotten nodes are no strangers.
        assert not redis_cluster.run(settings, staying, 1, 30, check_mode=False, remove=endpoints)["changed"]
        assert not redis_cluster.run(settings, staying, 1, 30, check_mode=False)["changed"]
    finally:
        client.close()


def test_a_removed_primary_hands_its_slots_to_its_replica_and_a_removed_replica_that_is_down_is_forgotten(
        start_nodes, redis_factory):
    """A primary taken out of the inventory while its replica stays: the replica takes over by a failover
    (no key moves) and the old primary is forgotten; so is a replica taken out whose process is gone. Three
    primaries are left, with replicas missing: a warning, not a failure."""
    settings, nodes, primaries, _ids, client, _owner = _formed_cluster(start_nodes)
    try:
        for number in range(2000):
            client.set(f"handover:{number}", number)
        by_name = _by_name(redis_cluster.run(settings, nodes, 1, 30, check_mode=False))
        primary = primaries[0]
        label = f"{primary['host']}/{primary['name']}"
        heir = next(node for node in nodes if by_name[f"{node['host']}/{node['name']}"]["primary"] == label)
        staying = [node for node in nodes if node is not primary]
        endpoint = f"127.0.0.1:{primary['port']}"
        preview = redis_cluster.run(settings, staying, 1, 30, check_mode=True, remove=[endpoint])
        # Check mode: the failover, then what follows it as planned on the views after it.
        assert "a failover" in preview["actions"][0], preview["actions"]
        assert preview["actions"][1:] and all(why.startswith("then: ") for why in preview["actions"][1:])
        assert any("forgets 127.0.0.1" in why for why in preview["actions"][1:])
        assert _call(settings, primary, "ROLE")[0] == "master"   # check mode changed nothing
        result = redis_cluster.run(settings, staying, 1, 60, check_mode=False, remove=[endpoint])
        assert not any("move from" in action for action in result["actions"]), result["actions"]
        assert result["warnings"] and "1 replicas are missing" in result["warnings"][0]
        after = _by_name(result)
        assert after[f"{heir['host']}/{heir['name']}"]["role"] == "primary"
        old_id = _call(settings, primary, "CLUSTER", "MYID")
        assert all(old_id not in _call(settings, node, "CLUSTER", "NODES") for node in staying)
        assert len(_call(settings, primary, "CLUSTER", "NODES").splitlines()) == 1   # reset
        assert [int(client.get(f"handover:{number}")) for number in range(2000)] == list(range(2000))

        # A replica of the five, its process stopped, then taken out of the inventory.
        replica = next(node for node in staying if after[f"{node['host']}/{node['name']}"]["role"] == "replica")
        replica_id = _call(settings, replica, "CLUSTER", "MYID")
        start_nodes.processes[replica["port"]].stop()
        rest = [node for node in staying if node is not replica]
        gone = f"127.0.0.1:{replica['port']}"
        result = redis_cluster.run(settings, rest, 1, 60, check_mode=False, remove=[gone])
        assert not any("is reset" in action for action in result["actions"]), result["actions"]   # it is down
        assert sum(f"forgets {gone}" in action for action in result["actions"]) == 4, result["actions"]
        assert "2 replicas are missing" in result["warnings"][0]
        for node in rest:
            assert replica_id not in _call(settings, node, "CLUSTER", "NODES")
            assert "cluster_known_nodes:4" in _call(settings, node, "CLUSTER", "INFO")
        assert [int(client.get(f"handover:{number}")) for number in range(2000)] == list(range(2000))
        assert not redis_cluster.run(settings, rest, 1, 30, check_mode=False)["changed"]
    finally:
        client.close()


def _formed_cluster(start_nodes):
    """Six nodes formed into three shards over TLS: (settings, nodes, primaries, their ids by port, a cluster
    client as the admin user, owner_and_other(slot) -> (the primary serving it, another primary))."""
    redis = pytest.importorskip("redis")
    settings, nodes = start_nodes(_nodes(6))
    by_name = _by_name(redis_cluster.run(settings, nodes, 1, 30, check_mode=False))
    primaries = [node for node in nodes if by_name[f"{node['host']}/{node['name']}"]["role"] == "primary"]
    ids = {node["port"]: _call(settings, node, "CLUSTER", "MYID") for node in primaries}
    client = redis.RedisCluster(host="127.0.0.1", port=nodes[0]["port"], username="admin", password=PASSWORD,
                                ssl=True, ssl_ca_certs=settings["tls_ca_file"])

    def owner_and_other(slot):
        for node in primaries:
            runs = by_name[f"{node['host']}/{node['name']}"]["slots"]
            if any(int(run.split("-")[0]) <= slot <= int(run.split("-")[1]) for run in runs):
                return node, next(other for other in primaries if other is not node)
        raise AssertionError(slot)

    return settings, nodes, primaries, ids, client, owner_and_other


def test_a_slot_left_open_by_a_cut_off_run_is_finished_by_the_next(start_nodes):
    settings, nodes, _primaries, ids, client, owner_and_other = _formed_cluster(start_nodes)
    try:
        keys = [f"{{open}}:{number}" for number in range(50)]
        slot = client.keyslot(keys[0])
        source, target = owner_and_other(slot)
        for key in keys:
            client.set(key, key)
        # What a run cut off in the middle of the slot leaves: both sides open, part of the keys moved.
        assert _call(settings, target, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source["port"]]) == "OK"
        assert _call(settings, source, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target["port"]]) == "OK"
        assert _call(settings, source, "MIGRATE", "127.0.0.1", target["port"], "", 0, 5000, "AUTH2", "admin",
                     PASSWORD, "KEYS", *keys[:20]) == "OK"
        result = redis_cluster.run(settings, nodes, 1, 30, check_mode=False)
        assert any(f"slot {slot}, left open" in action for action in result["actions"]), result["actions"]
        assert int(_call(settings, target, "CLUSTER", "COUNTKEYSINSLOT", slot)) == 50
        assert "[" not in _call(settings, source, "CLUSTER", "NODES")
        assert [client.get(key).decode() for key in keys] == keys
    finally:
        client.close()


def test_slots_cut_off_at_every_other_step_are_finished_by_the_next_run(start_nodes):
    """A run cut off before the owner's MIGRATING (the target imports only), after a MIGRATE that copied keys
    without deleting them (keys on both sides: the owner's copies win), and after the target took the slot
    but before the owner learned it (migrating only): the next run finishes each, and every key reads back."""
    settings, nodes, primaries, ids, client, owner_and_other = _formed_cluster(start_nodes)
    try:
        cases = {}
        for tag in ("importing", "copied", "taken"):
            keys = [f"{{{tag}}}:{number}" for number in range(30)]
            for key in keys:
                client.set(key, key)
            slot = client.keyslot(keys[0])
            source, target = owner_and_other(slot)
            cases[tag] = (keys, slot, source, target)
            assert _call(settings, target, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source["port"]]) == "OK"
            if tag == "importing":
                continue
            assert _call(settings, source, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target["port"]]) == "OK"
            if tag == "copied":
                # On both sides, the target's copies stale: the owner's must win.
                assert _call(settings, source, "MIGRATE", "127.0.0.1", target["port"], "", 0, 5000, "COPY", "AUTH2",
                             "admin", PASSWORD, "KEYS", *keys) == "OK"
                for key in keys:
                    client.set(key, key + ":latest")
                continue
            assert _call(settings, source, "MIGRATE", "127.0.0.1", target["port"], "", 0, 5000, "AUTH2", "admin",
                         PASSWORD, "KEYS", *keys) == "OK"
            assert _call(settings, target, "CLUSTER", "SETSLOT", slot, "NODE", ids[target["port"]]) == "OK"
        redis_cluster.wait_for(settings, nodes, "slots", 30)
        result = redis_cluster.run(settings, nodes, 1, 30, check_mode=False)
        assert sum("left open by a cut-off run" in action for action in result["actions"]) == 3, result["actions"]
        for tag, (keys, slot, _source, target) in cases.items():
            assert int(_call(settings, target, "CLUSTER", "COUNTKEYSINSLOT", slot)) == len(keys), tag
            expected = [key + ":latest" for key in keys] if tag == "copied" else keys
            assert [client.get(key).decode() for key in keys] == expected, tag
        for node in primaries:
            assert "[" not in _call(settings, node, "CLUSTER", "NODES")
        assert not redis_cluster.run(settings, nodes, 1, 30, check_mode=False)["changed"]
    finally:
        client.close()


def test_a_source_that_learns_of_its_last_slots_new_owner_first_is_left_a_replica_and_the_move_is_done(
        start_nodes, monkeypatch):
    """A primary that gives its last slot away becomes the new owner's replica. When the owner's announcement
    reaches it before the module's SETSLOT ... NODE does (a race the fast shrink test lost once under load),
    Redis 7.0 refuses that SETSLOT ("only with masters"): the move is done all the same. The race is forced:
    the module's SETSLOT to the source waits until the source says it is a replica."""
    settings, nodes = start_nodes(_nodes(4))
    redis_cluster.run(settings, nodes[:3], 0, 30, check_mode=False)
    redis_cluster.run(settings, nodes, 0, 30, check_mode=False, rebalance=False)  # the fourth: an empty primary
    owner, newcomer = nodes[0], nodes[3]
    slot = int(_call(settings, owner, "CLUSTER", "SLOTS")[0][0])
    observed = redis_cluster.observe(settings, nodes)
    redis_cluster.migrate_slots(settings, observed, {"node": 0, "target": 3, "slots": (slot, slot)}, [])
    redis_cluster.wait_for(settings, nodes, "slots", 30)

    def myself(node):
        return next(line.split() for line in _call(settings, node, "CLUSTER", "NODES").splitlines() if "myself" in line)

    real_connect = redis_cluster.connect

    def connect_late(node_settings, timeout):
        conn = real_connect(node_settings, timeout)
        if node_settings["port"] == newcomer["port"]:
            real_call = conn.call

            def call(*command):
                if command[:2] == ("CLUSTER", "SETSLOT") and command[3] == "NODE":
                    for _ in range(100):
                        if "slave" in myself(newcomer)[2]:
                            break
                        time.sleep(0.1)
                return real_call(*command)

            conn.call = call
        return conn

    monkeypatch.setattr(redis_cluster, "connect", connect_late)
    observed = redis_cluster.observe(settings, nodes)
    done = []
    redis_cluster.migrate_slots(settings, observed, {"node": 3, "target": 0, "slots": (slot, slot)}, done)
    owner_id = _call(settings, owner, "CLUSTER", "MYID")
    assert myself(newcomer)[2:4] == ["myself,slave", owner_id], myself(newcomer)
    assert [entry[2][2] for entry in _call(settings, owner, "CLUSTER", "SLOTS")
            if int(entry[0]) <= slot <= int(entry[1])] == [owner_id]


# --- One shard: a restore's hold on its replicas --------------------------------------------------------------

def test_a_held_shard_keeps_its_replica_from_taking_over_while_its_primary_is_down(start_nodes):
    """redis_cluster_shard: the node's view of its shard; `failover: held` sets cluster-replica-no-failover on
    its replica, which then stays a replica although its primary is down for longer than the node timeout;
    the primary comes back with its slots, `allowed` undoes the hold, and the wait sees the replica in sync."""
    from ansible_collections.redis_infra.redis.plugins.modules import redis_cluster_shard as shard

    settings, nodes, _primaries, _ids, client, owner_and_other = _formed_cluster(start_nodes)
    try:
        for number in range(300):
            client.set(f"{{held}}:{number}", number)
        primary, _other = owner_and_other(client.keyslot("{held}:0"))
        local = dict(settings, host="127.0.0.1", port=primary["port"])
        seen = shard.inspect(local)
        assert seen["role"] == "primary" and seen["cluster_state"] == "ok" and seen["open_slots"] == []
        assert len(seen["replicas"]) == 1 and seen["keys"] >= 300
        address, port = seen["_replicas"][0]
        replica = next(node for node in nodes if node["port"] == port)
        assert shard.inspect(dict(settings, host=address, port=port))["primary"] == f"127.0.0.1:{primary['port']}"
        assert shard.set_failover(local, seen["_replicas"], True, check_mode=True)
        assert _call(settings, replica, "CONFIG", "GET", "cluster-replica-no-failover")[1] == "no"
        assert shard.holds(local, seen["_replicas"]) == ([], [])
        assert shard.set_failover(local, seen["_replicas"], True, check_mode=False)
        assert not shard.set_failover(local, seen["_replicas"], True, check_mode=False)
        assert shard.holds(local, seen["_replicas"]) == ([f"{address}:{port}"], [])

        process = start_nodes.processes[primary["port"]]
        assert _call(settings, primary, "SAVE") == "OK"   # the test servers persist nothing by themselves
        process.stop()
        time.sleep(5)   # 2.5 node timeouts: without the hold the replica would have taken over
        assert "cluster_state:fail" in _call(settings, replica, "CLUSTER", "INFO")
        assert _call(settings, replica, "ROLE")[0] == "slave"
        # Asked from the replica while its primary is down: the nodes say fail, and the wait says so in time.
        with pytest.raises(shard.ShardError, match="not ok on every node within 1 s"):
            shard.wait_cluster_ok(dict(settings, host="127.0.0.1", port=replica["port"]), 1)
        process.start()
        assert len(shard.wait_cluster_ok(local, 30)) == len(nodes)   # what the restore waits for
        redis_cluster.wait_for(settings, nodes, "ok", 30)
        assert shard.inspect(local)["role"] == "primary"
        assert shard.set_failover(local, seen["_replicas"], False, check_mode=False)
        assert _call(settings, replica, "CONFIG", "GET", "cluster-replica-no-failover")[1] == "no"
        counts = shard.wait_replicas(local, seen["_replicas"], 30)
        assert counts == {f"{address}:{port}": shard.inspect(local)["keys"]}
        assert [int(client.get(f"{{held}}:{number}")) for number in range(300)] == list(range(300))
    finally:
        client.close()
