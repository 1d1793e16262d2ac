"""The Sentinel role's filters (plugins/filter/redis_sentinel.py): what SENTINEL SET must change, proven
to converge against a real Sentinel (redis-server --sentinel), and the topology summary."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import REDIS_SERVER, free_port

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins/filter"))

from redis_sentinel import (  # noqa: E402
    redis_sentinel_changes,
    redis_sentinel_choosable,
    redis_sentinel_forgotten,
    redis_sentinel_no_choice,
    redis_sentinel_peers_heard,
    redis_sentinel_summary,
)

SETTINGS = {"down-after-milliseconds": "5000", "failover-timeout": "60000", "parallel-syncs": "1", "quorum": "1"}
SAVED = "sentinel auth-user main sentinel-user\nsentinel auth-pass main sentinel-password-0123456789\n"


def _reply(**fields):
    flat = []
    for key, value in fields.items():
        flat += [key.replace("_", "-"), value]
    return flat


def test_nothing_changes_when_sentinel_already_has_the_values_and_the_credentials():
    reply = _reply(name="main", down_after_milliseconds="5000", failover_timeout=60000, parallel_syncs="1",
                   quorum="1")
    assert redis_sentinel_changes(reply, SETTINGS, SAVED, "main", "sentinel-user",
                                  "sentinel-password-0123456789") == []


def test_each_value_that_differs_is_set_and_credentials_not_saved_are_sent():
    reply = _reply(down_after_milliseconds="30000", failover_timeout="60000", parallel_syncs="2", quorum="1")
    changes = redis_sentinel_changes(reply, SETTINGS, "", "main", "sentinel-user", "new-password")
    assert changes == ["down-after-milliseconds", "5000", "parallel-syncs", "1",
                       "auth-user", "sentinel-user", "auth-pass", "new-password"]


def test_a_rotated_password_is_sent_though_the_user_is_saved():
    changes = redis_sentinel_changes(_reply(**{k.replace("-", "_"): v for k, v in SETTINGS.items()}), SETTINGS,
                                     SAVED, "main", "sentinel-user", "rotated-password")
    assert changes == ["auth-pass", "rotated-password"]


def test_a_primary_just_added_gets_every_setting():
    changes = redis_sentinel_changes(None, SETTINGS, None, "main", "u", "p")
    assert changes[:8] == ["down-after-milliseconds", "5000", "failover-timeout", "60000", "parallel-syncs", "1",
                           "quorum", "1"]


def test_the_summary_lists_the_primary_the_replicas_and_the_sentinels():
    topology = {"main": {"address": "10.0.0.2", "port": 6379}, "cache": {"address": "10.0.0.1", "port": "6380"}}
    summary = redis_sentinel_summary(topology, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], ["10.0.0.3", "10.0.0.1"], 26379)
    assert summary["main"] == {"primary": "10.0.0.2:6379", "replicas": ["10.0.0.1:6379", "10.0.0.3:6379"],
                               "sentinels": ["10.0.0.1:26379", "10.0.0.3:26379"], "sentinel_master_name": "main"}
    assert summary["cache"]["primary"] == "10.0.0.1:6380"
    assert list(summary) == ["cache", "main"]


@pytest.fixture
def sentinel(redis_factory, tmp_path):
    """A primary with the Sentinel's ACL user, and one real Sentinel monitoring it (quorum 1)."""
    primary = redis_factory("user sentinel-user on >sentinel-password-0123456789 allchannels +@all\n")
    port = free_port()
    workdir = tmp_path / "sentinel"
    workdir.mkdir()
    conf = workdir / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                    f"sentinel monitor main 127.0.0.1 {primary.port} 1\n"
                    "sentinel down-after-milliseconds main 30000\nsentinel parallel-syncs main 2\n")
    proc = subprocess.Popen([REDIS_SERVER, str(conf), "--sentinel"], cwd=workdir, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, decode_responses=True, socket_timeout=2)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.RedisError:
                time.sleep(0.05)
        yield client, conf
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_the_changes_applied_with_sentinel_set_converge_on_a_real_sentinel(sentinel):
    client, conf = sentinel

    def changes():
        reply = client.execute_command("SENTINEL", "MASTER", "main")
        flat = [item for pair in reply.items() for item in pair] if isinstance(reply, dict) else reply
        return redis_sentinel_changes(flat, SETTINGS, conf.read_text(), "main", "sentinel-user",
                                      "sentinel-password-0123456789")

    first = changes()
    # Sentinel's own failover-timeout default (180000) differs too; the quorum of the monitor line does not.
    assert first[:6] == ["down-after-milliseconds", "5000", "failover-timeout", "60000", "parallel-syncs", "1"]
    assert "auth-pass" in first
    assert client.execute_command("SENTINEL", "SET", "main", *first) in ("OK", b"OK", True)
    # Sentinel saved the credentials in its config and reports the values: the next run changes nothing.
    assert changes() == []
    assert client.execute_command("SENTINEL", "MASTER", "main")


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_peers_heard_counts_only_sentinels_that_sent_a_hello_lately(redis_factory, tmp_path):
    """Two real Sentinels of one primary: each hears the other within a few seconds; a peer written into
    the config but not running is never counted, though CKQUORUM counts it at first."""
    primary = redis_factory("")
    ports, procs, clients = [free_port(), free_port()], [], []
    ghost = "0123456789abcdef0123456789abcdef01234567"
    try:
        for index, port in enumerate(ports):
            workdir = tmp_path / f"sentinel{index}"
            workdir.mkdir()
            conf = workdir / "sentinel.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                            f"sentinel monitor main 127.0.0.1 {primary.port} 2\n"
                            f"sentinel known-sentinel main 127.0.0.1 {free_port()} {ghost}\n")
            procs.append(subprocess.Popen([REDIS_SERVER, str(conf), "--sentinel"], cwd=workdir,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            clients.append(redis.Redis(port=port, decode_responses=True, socket_timeout=2))

        def heard(client):
            reply = client.execute_command("SENTINEL", "SENTINELS", "main")
            flat = [[item for pair in peer.items() for item in pair] if isinstance(peer, dict) else peer
                    for peer in reply]
            return redis_sentinel_peers_heard([[str(item) for item in peer] for peer in flat], 5000)

        counts = []
        for _ in range(100):
            try:
                counts = [heard(client) for client in clients]
            except redis.RedisError:
                counts = []
            if counts == [1, 1]:
                break
            time.sleep(0.1)
        assert counts == [1, 1], counts
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    assert redis_sentinel_peers_heard([["name", "x", "last-hello-message", "6000"]], 5000) == 0
    assert redis_sentinel_peers_heard(None, 5000) == 0


def _replica(ip, flags="slave", priority="100"):
    return _reply(name=f"{ip}:6379", ip=ip, port="6379", flags=flags, slave_priority=priority)


def test_forgotten_asks_for_exactly_the_sentinels_and_replicas_that_stay():
    """playbooks/replace.yml's wait after SENTINEL RESET: one other Sentinel heard and one replica up is right for
    two hosts that stay; a left Sentinel still known, one not heard lately, or a down replica still listed is not."""
    peer = _reply(ip="10.0.0.5", port="26379", last_hello_message="800")
    silent = _reply(ip="10.0.0.1", port="26379", last_hello_message="40000")
    assert redis_sentinel_forgotten([peer], [_replica("10.0.0.6")], 2, 1, 5000) == []
    assert redis_sentinel_forgotten([peer, silent], [_replica("10.0.0.6")], 2, 1, 5000) == [
        "knows 2 other Sentinels and heard 1, expects 1"]
    assert redis_sentinel_forgotten([silent], [_replica("10.0.0.6")], 2, 1, 5000) == [
        "knows 1 other Sentinels and heard 0, expects 1"]
    left = _replica("10.0.0.2", flags="s_down,slave,disconnected")
    assert redis_sentinel_forgotten([peer], [_replica("10.0.0.6"), left], 2, 1, 5000) == [
        "lists 2 replicas (10.0.0.2:6379 down), expects 1"]


def test_choosable_leaves_out_replicas_down_disconnected_or_of_priority_0():
    replies = [_replica("10.0.0.2", flags="slave,disconnected"), _replica("10.0.0.3", priority="0"),
               _replica("10.0.0.4", flags="s_down,slave"), _replica("10.0.0.5")]
    every = [f"10.0.0.{n}:6379" for n in range(2, 7)]
    assert redis_sentinel_choosable(replies, every) == ["10.0.0.5:6379"]
    assert redis_sentinel_choosable(replies, ["10.0.0.2:6379", "10.0.0.3:6379"]) == []


def test_no_choice_names_the_instances_a_sentinel_cannot_move_to_a_host_that_stays():
    up = {"item": {"name": "main", "port": 6379}, "responses": [[_replica("10.0.0.5")]]}
    only_old = {"item": {"name": "cache", "port": 6380}, "responses": [[_replica("10.0.0.2")]]}
    silent = {"item": {"name": "jobs", "port": 6381}, "failed": True, "msg": "connection refused"}
    assert redis_sentinel_no_choice({"results": [up, only_old, silent]}, ["10.0.0.5"]) == ["cache", "jobs"]
