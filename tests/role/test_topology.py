"""The topology resolver's table of situations: who is the primary, decided from every node's evidence."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins/filter"))

from redis_topology import (  # noqa: E402
    redis_server_address,
    redis_server_follows,
    redis_server_in_sync,
    redis_server_not_in_sync,
    redis_server_replicaof,
    redis_server_roles_of,
    redis_server_sentinel_address,
    redis_server_topology,
    redis_server_topology_conflicts,
    redis_server_topology_queries,
    redis_server_topology_replies,
)

INSTANCES = [{"name": "main", "port": 6379}]
ADDRESSES = {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3", "d": "10.0.0.4"}
DOWN = object()


def master(offset, *replicas):
    return ["master", offset, [[ADDRESSES[r], "6379", str(offset)] for r in replicas]]


def replica(of, state="connected", offset=100):
    return ["slave", ADDRESSES[of], 6379, state, offset]


def registered(replies):
    """A registered redis_command loop over [host, instance]; DOWN is an unreachable host."""
    results = []
    for host, reply in replies.items():
        item = [host, INSTANCES[0]]
        if reply is DOWN:
            results.append({"item": item, "unreachable": True, "msg": "Failed to connect"})
        elif reply is None:
            results.append({"item": item, "failed": True, "msg": "Connection refused"})
        else:
            results.append({"item": item, "responses": [reply]})
    return {"results": results}


def sentinel(of):
    return [ADDRESSES[of], "6379"] if of else None


def resolve(roles, sentinels=None, bootstrap="a", count=None):
    sentinels = sentinels or {}
    return redis_server_topology(registered(roles), registered(sentinels), ADDRESSES, INSTANCES, ADDRESSES[bootstrap],
                                 len(sentinels) if count is None else count)["main"]


def primary(roles, sentinels=None, **kwargs):
    decision = resolve(roles, sentinels, **kwargs)
    assert "conflict" not in decision, decision
    return next(host for host, address in ADDRESSES.items() if address == decision["address"]), decision["source"]


def conflict(roles, sentinels=None, **kwargs):
    decision = resolve(roles, sentinels, **kwargs)
    assert "conflict" in decision, decision
    return decision["conflict"]


SITUATIONS = [
    # (situation, ROLE replies, Sentinel replies, expected primary, expected source)
    ("a new topology: nothing runs yet",
     {"a": None, "b": None, "c": None}, {}, "a", "inventory"),
    ("a new topology with Sentinel: nothing runs, the Sentinels know nothing",
     {"a": None, "b": None, "c": None}, {"a": None, "b": None, "c": None}, "a", "inventory"),
    ("healthy, every Sentinel agrees",
     {"a": master(100, "b", "c"), "b": replica("a"), "c": replica("a")},
     {"a": sentinel("a"), "b": sentinel("a"), "c": sentinel("a")}, "a", "sentinel"),
    ("after a failover, the new primary's own Sentinel down (partial batch)",
     {"a": replica("b"), "b": master(500, "a", "c"), "c": replica("b")},
     {"a": sentinel("b"), "b": None, "c": sentinel("b")}, "b", "sentinel"),
    ("after a failover, every Sentinel unreachable (Sentinels on hosts of their own)",
     {"a": replica("b"), "b": master(500, "a", "c"), "c": replica("b")},
     {"s1": DOWN, "s2": DOWN, "s3": DOWN}, "b", "instances"),
    ("after a failover with Sentinel turned off: no Sentinel at all",
     {"a": replica("b"), "b": master(500, "a", "c"), "c": replica("b")}, {}, "b", "instances"),
    ("a stale local Sentinel against the majority",
     {"a": replica("b"), "b": master(500, "a", "c"), "c": replica("b")},
     {"a": sentinel("b"), "b": sentinel("b"), "c": sentinel("a")}, "b", "sentinel"),
    ("a stale Sentinel alone answering is outweighed by a primary with replicas",
     {"a": replica("b"), "b": master(500, "a", "c"), "c": replica("b")},
     {"a": None, "b": None, "c": sentinel("a")}, "b", "instances"),
    ("a replica's link is up but the master's list is momentarily empty",
     {"a": master(100), "b": replica("a"), "c": replica("a", state="sync")}, {}, "a", "instances"),
    ("two masters without replicas: the newer data wins over the inventory",
     {"a": master(100), "b": master(900), "c": DOWN}, {}, "b", "instances"),
    ("every instance a master after a full restart, same offset: the inventory breaks the tie",
     {"a": master(0), "b": master(0), "c": master(0)}, {"a": None, "b": None, "c": None}, "a", "instances"),
    ("the primary's host is down: the replicas still name it",
     {"a": DOWN, "b": replica("a", state="connect"), "c": replica("a", state="connect")}, {}, "a", "instances"),
    ("the primary down and a replica restarted as a master: the other replica's primary stands",
     {"a": DOWN, "b": master(40), "c": replica("a", state="connect")}, {}, "a", "instances"),
    ("only the new primary answers (every other host down)",
     {"a": DOWN, "b": master(500), "c": DOWN}, {}, "b", "instances"),
    ("nothing answers but the Sentinels agree",
     {"a": DOWN, "b": DOWN, "c": DOWN}, {"a": sentinel("c"), "b": DOWN, "c": DOWN}, "c", "sentinel"),
    ("a Sentinel majority names a primary that is down: no new primary is made",
     {"a": replica("b", state="connect"), "b": DOWN, "c": replica("b", state="connect")},
     {"a": sentinel("b"), "b": DOWN, "c": sentinel("b")}, "b", "sentinel"),
    ("a returning old primary, still a lone master, after Sentinel moved on",
     {"a": master(300), "b": master(900, "c"), "c": replica("b")},
     {"a": sentinel("b"), "b": sentinel("b"), "c": sentinel("b")}, "b", "sentinel"),
]


@pytest.mark.parametrize(("roles", "sentinels", "expected", "source"),
                         [case[1:] for case in SITUATIONS], ids=[case[0] for case in SITUATIONS])
def test_resolver_decides_from_every_node(roles, sentinels, expected, source):
    assert primary(roles, sentinels) == (expected, source)


CONFLICTS = [
    ("two masters each with replicas attached (split brain)",
     {"a": master(100, "b"), "c": master(100, "d"), "b": replica("a"), "d": replica("c")}, {}, "split brain"),
    ("a Sentinel majority names a node that answers as a replica",
     {"a": replica("b"), "b": master(100, "a", "c"), "c": replica("b")},
     {"a": sentinel("a"), "b": sentinel("a"), "c": None}, "answers as a replica"),
    ("a Sentinel majority against a master with replicas",
     {"a": master(100, "b"), "b": replica("a"), "c": master(50)},
     {"a": sentinel("c"), "b": sentinel("c"), "c": sentinel("c")}, "master with replicas attached"),
    ("replicas follow different primaries, none with a link up",
     {"a": DOWN, "b": replica("a", state="connect"), "c": replica("d", state="connect")}, {}, "different primaries"),
    ("masters tied on offset without the inventory's primary among them",
     {"a": DOWN, "b": master(700), "c": master(700)}, {}, "same replication offset"),
    ("nothing answers and the Sentinels disagree",
     {"a": DOWN, "b": DOWN, "c": DOWN}, {"a": sentinel("b"), "b": sentinel("c"), "c": DOWN},
     "Sentinels that do disagree"),
]


@pytest.mark.parametrize(("roles", "sentinels", "words"), [case[1:] for case in CONFLICTS],
                         ids=[case[0] for case in CONFLICTS])
def test_resolver_fails_closed_with_the_evidence(roles, sentinels, words):
    message = conflict(roles, sentinels)
    assert words in message
    # The evidence names every node that was asked and what it said.
    for host in roles:
        assert f"{host} (" in message
    for host in sentinels:
        assert f"Sentinel on {host}" in message


def test_conflicts_are_listed_and_never_become_replicaof():
    topology = redis_server_topology(registered({"a": master(1, "b"), "c": master(1, "d"), "b": replica("a"),
                                                 "d": replica("c")}), {}, ADDRESSES, INSTANCES, ADDRESSES["a"])
    assert len(redis_server_topology_conflicts(topology)) == 1
    assert redis_server_replicaof(topology, ADDRESSES["b"], INSTANCES) == {}


def test_every_instance_is_decided_on_its_own():
    instances = [{"name": "main", "port": 6379}, {"name": "cache", "port": 6380}]
    results = {"results": [
        {"item": ["a", instances[0]], "responses": [master(10, "b")]},
        {"item": ["b", instances[0]], "responses": [replica("a")]},
        {"item": ["a", instances[1]], "responses": [["slave", ADDRESSES["b"], 6380, "connected", 5]]},
        {"item": ["b", instances[1]], "responses": [["master", 5, [[ADDRESSES["a"], "6380", "5"]]]]},
    ]}
    topology = redis_server_topology(results, {}, ADDRESSES, instances, ADDRESSES["a"])
    assert topology == {"main": {"address": ADDRESSES["a"], "port": 6379, "source": "instances"},
                        "cache": {"address": ADDRESSES["b"], "port": 6380, "source": "instances"}}
    assert redis_server_replicaof(topology, ADDRESSES["a"], instances) == {"cache": f"{ADDRESSES['b']} 6380"}
    assert redis_server_replicaof(topology, ADDRESSES["b"], instances) == {"main": f"{ADDRESSES['a']} 6379"}


def test_a_second_interface_does_not_matter():
    """The primary lists its replicas by the address they connect from (another interface); the decision
    counts them and names the primary by its replication address."""
    roles = {"a": ["master", 100, [["192.168.9.2", "6379", "100"], ["192.168.9.3", "6379", "100"]]],
             "b": replica("a"), "c": replica("a")}
    assert primary(roles, {}, bootstrap="b") == ("a", "instances")


def test_follows_and_address_helpers():
    assert redis_server_follows(replica("a"), f"{ADDRESSES['a']} 6379")
    assert not redis_server_follows(replica("a"), f"{ADDRESSES['b']} 6379")
    assert not redis_server_follows(master(1), f"{ADDRESSES['a']} 6379")
    resolved = {"redis_server_replication_model": {"address": "10.1.1.1"}, "ansible_host": "x"}
    assert redis_server_address(resolved) == "10.1.1.1"
    assert redis_server_address({"redis_server_replication_address": "10.2.2.2",
                                 "ansible_facts": {"default_ipv4": {"address": "10.3.3.3"}}}) == "10.2.2.2"
    facts = {"ansible_facts": {"default_ipv4": {"address": "10.3.3.3"}}, "ansible_host": "h"}
    assert redis_server_address(facts) == "10.3.3.3"
    assert redis_server_address({"ansible_host": "h", "inventory_hostname": "n"}) == "h"
    assert redis_server_address({"inventory_hostname": "n"}) == "n"


def test_in_sync_lists_the_replicas_whose_link_is_up():
    roles = registered({"a": master(9, "b"), "b": replica("a"), "c": replica("a", state="connect"), "d": DOWN})
    topology = redis_server_topology(roles, {}, ADDRESSES, INSTANCES, ADDRESSES["a"])
    in_sync = redis_server_in_sync(roles, topology)
    assert in_sync == {"main": ["b"]}
    assert redis_server_not_in_sync(in_sync, ADDRESSES, topology) == ["main: c, d"]
    assert redis_server_not_in_sync({"main": ["b", "c", "d"]}, ADDRESSES, topology) == []


def test_hosts_whose_address_needs_their_facts():
    from redis_topology import redis_server_unaddressed
    assert redis_server_unaddressed([
        {"inventory_hostname": "ran", "redis_server_replication_model": {"address": "10.0.0.1"}},
        {"inventory_hostname": "set", "redis_server_replication_address": "10.0.0.2"},
        {"inventory_hostname": "gathered", "ansible_facts": {"default_ipv4": {"address": "10.0.0.3"}}},
        {"inventory_hostname": "unknown", "ansible_host": "10.0.0.4"},
    ]) == ["unknown"]


def test_the_start_hook_reaches_each_sentinel_where_it_listens():
    facts = {"ansible_facts": {"default_ipv4": {"address": "10.0.0.7"}}, "inventory_hostname": "s1"}
    assert redis_server_sentinel_address(facts) == "10.0.0.7"
    assert redis_server_sentinel_address(dict(facts, redis_sentinel_bind=["127.0.0.1", "192.168.5.7"])) == "192.168.5.7"
    assert redis_server_sentinel_address(dict(facts, redis_sentinel_bind=["127.0.0.1"])) == "10.0.0.7"
    assert redis_server_sentinel_address({"ansible_host": "s1.example", "inventory_hostname": "s1"}) == "s1.example"
    assert redis_server_sentinel_address({"inventory_hostname": "s1"}) == "s1"


def test_caught_up_counts_replicas_that_acknowledged_the_whole_offset():
    from redis_topology import redis_server_caught_up

    reply = ["master", 3129659, [["10.0.0.2", "6379", "3129659"], ["10.0.0.3", "6379", "3129242"]]]
    assert redis_server_caught_up(reply) == 1
    assert redis_server_caught_up(["master", 0, []]) == 0
    assert redis_server_caught_up(["slave", "10.0.0.1", 6379, "connected", 5]) == 0
    assert redis_server_caught_up(None) == 0


TWO = [{"name": "main", "port": 6379, "connection_files": {"admin": "/c/main-admin.toml"}},
       {"name": "cache", "port": 6380, "connection_files": {"admin": "/c/cache-admin.toml"}}]


def test_one_execution_per_host_asks_its_instances_and_its_sentinel():
    """A Redis host with a Sentinel: ROLE of each instance, then its Sentinel's answer for each; a Sentinel-only
    host asks only its Sentinel, a Redis host without one only its instances."""
    queries = redis_server_topology_queries("a", ["a", "b"], ["a", "s"], TWO, "admin", "/c/sentinel.toml")
    assert queries == [
        {"connection_file": "/c/main-admin.toml", "commands": [["ROLE"]]},
        {"connection_file": "/c/cache-admin.toml", "commands": [["ROLE"]]},
        {"connection_file": "/c/sentinel.toml", "commands": [["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "main"]]},
        {"connection_file": "/c/sentinel.toml", "commands": [["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "cache"]]},
    ]
    sentinel_only = redis_server_topology_queries("s", ["a", "b"], ["a", "s"], TWO, "admin", "/x")
    assert [q["connection_file"] for q in sentinel_only] == ["/x", "/x"]
    assert len(redis_server_topology_queries("b", ["a", "b"], ["a", "s"], TWO, "admin", "/x")) == 2


def test_the_answers_per_host_become_the_evidence_per_host_and_instance():
    """Each answer lands on its [host, instance] pair; a failed query fails its pair only; an unreachable host,
    a failed execution or a host with a missing or short list of answers fails all its pairs. The resolver
    decides from the shaped replies as it did from a loop per pair."""
    role_hosts, sentinel_hosts = ["a", "b", "c"], ["a", "b", "s"]
    asked = {"results": [
        {"item": "a", "answers": [{"responses": [master(100, "b")]}, {"responses": [master(50)]},
                                  {"responses": [["10.0.0.1", "6379"]]}, {"responses": [["10.0.0.1", "6380"]]}]},
        {"item": "b", "answers": [{"responses": [replica("a")]}, {"failed": True, "msg": "LOADING"},
                                  {"responses": [["10.0.0.1", "6379"]]}, {"responses": [["10.0.0.1", "6380"]]}]},
        {"item": "c", "unreachable": True, "msg": "Failed to connect"},
        {"item": "s", "answers": [{"responses": [["10.0.0.1", "6379"]]}]},
    ]}
    replies = redis_server_topology_replies(asked, role_hosts, sentinel_hosts, TWO)
    role = replies["role"]["results"]
    assert [(r["item"][0], r["item"][1]["name"]) for r in role] == [
        ("a", "main"), ("a", "cache"), ("b", "main"), ("b", "cache"), ("c", "main"), ("c", "cache")]
    assert role[0]["responses"] == [master(100, "b")] and not role[0].get("failed")
    assert role[3]["failed"] and not role[2].get("failed")
    assert role[4]["failed"] and role[4]["unreachable"] and role[5]["unreachable"]
    sentinel = replies["sentinel"]["results"]
    assert [(r["item"][0], r["item"][1]["name"]) for r in sentinel] == [
        ("a", "main"), ("a", "cache"), ("b", "main"), ("b", "cache"), ("s", "main"), ("s", "cache")]
    # s answered one query of two: its answers are not trusted at all.
    assert sentinel[4]["failed"] and sentinel[5]["failed"]
    assert redis_server_roles_of(replies["role"], "b") == {"main": replica("a")}
    assert redis_server_roles_of(replies["role"], "c") == {}
    # A host the loop did not reach (skipped, or left out) fails its pairs too.
    assert all(r["failed"] for r in redis_server_topology_replies({"results": []}, ["a"], [], TWO)["role"]["results"])
