"""The checker's view of the host's Sentinel ([sentinel] in its config, redis_infra/health/sentinel.py),
against a real primary with a replica and real Sentinels (redis-server --sentinel) on loopback, as the
Sentinel ACL user built from SENTINEL_REQUIRED_ACL."""

from __future__ import annotations

import time

import pytest
import redis
from health_helpers import MONITOR_PASSWORD

from redis_infra.health import SENTINEL_REQUIRED_ACL
from redis_infra.health.config import ConfigError, parse_config
from redis_infra.health.service import Monitor


def _wait(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _knows(sentinel, replicas: int, sentinels: int) -> bool:
    """Whether a Sentinel has found the replicas and the other Sentinels (hello messages every 2 s)."""
    master = sentinel.admin().execute_command("SENTINEL", "MASTER", "main")
    fields = master if isinstance(master, dict) else dict(zip(master[::2], master[1::2], strict=False))
    return int(fields["num-slaves"]) >= replicas and int(fields["num-other-sentinels"]) >= sentinels


@pytest.fixture
def group(make_instance, make_sentinels):
    """A primary, its replica, and two Sentinels (quorum 2) that have found both and each other."""
    primary = make_instance(name="main", extra="repl-diskless-sync-delay 0\n")
    replica = make_instance(name="replica", extra=f"replicaof 127.0.0.1 {primary.port}\n")
    _wait(lambda: replica.admin().info("replication").get("master_link_status") == "up", "the replica to sync")
    sentinels = make_sentinels(primary.port)
    _wait(lambda: all(_knows(sentinel, 1, 1) for sentinel in sentinels), "the Sentinels to find each other")
    return primary, replica, sentinels


def _monitor(health_config, instance, sentinel, masters=("main",)) -> Monitor:
    config, _ = health_config([instance], sentinel={"connection_file": str(sentinel.conn_file),
                                                     "masters": list(masters)})
    return Monitor(config)


def _series(snapshot, prefix: str) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(snapshot.metrics_body.decode()):
        for sample in family.samples:
            if sample.name.startswith(prefix):
                found[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return found


def test_the_sentinel_user_may_read_and_nothing_else(group):
    """The rules Sentinel accepts from its file, and what they allow: the checker's reads, no failover,
    no reconfiguration, no ACLs, no clients, no shutdown, no votes, no pub/sub."""
    _, _, (sentinel, _) = group
    user = redis.Redis(port=sentinel.port, username="monitor", password=MONITOR_PASSWORD, socket_timeout=5,
                       decode_responses=True)
    assert user.ping() is True
    assert user.info("sentinel")["sentinel_masters"] == 1
    assert user.execute_command("SENTINEL", "CKQUORUM", "main").startswith("OK 2 usable Sentinels")
    assert len(user.execute_command("SENTINEL", "REPLICAS", "main")) == 1
    assert len(user.execute_command("SENTINEL", "SENTINELS", "main")) == 1
    refused = [
        ("SENTINEL", "FAILOVER", "main"), ("SENTINEL", "SET", "main", "quorum", "1"), ("SENTINEL", "RESET", "*"),
        ("SENTINEL", "REMOVE", "main"), ("SENTINEL", "MONITOR", "x", "127.0.0.1", "1", "1"),
        ("SENTINEL", "FLUSHCONFIG"), ("SENTINEL", "CONFIG", "GET", "*"), ("SENTINEL", "MASTERS"),
        ("SENTINEL", "MASTER", "main"), ("SENTINEL", "IS-MASTER-DOWN-BY-ADDR", "127.0.0.1", "1", "0", "*"),
        ("SENTINEL", "DEBUG"), ("ACL", "LIST"), ("ACL", "SETUSER", "x"), ("CLIENT", "LIST"),
        ("CLIENT", "KILL", "ID", "1"),
        ("SHUTDOWN",), ("PUBLISH", "__sentinel__:hello", "x"), ("ROLE",),
    ]
    allowed = []
    for command in refused:
        try:
            user.execute_command(*command)
            allowed.append(command)
        except redis.exceptions.NoPermissionError:
            pass
        except redis.exceptions.ResponseError as exc:    # a command this Sentinel does not have is refused too
            assert "unknown" in str(exc).lower() or "NOPERM" in str(exc), (command, exc)
    assert allowed == []
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.execute_command("SUBSCRIBE", "__sentinel__:hello")
    # and the same rules applied live, as the role does, are accepted
    admin = sentinel.admin()
    assert admin.execute_command("ACL", "SETUSER", "other", "reset", "on", ">x", *SENTINEL_REQUIRED_ACL.split()) == "OK"


def test_a_healthy_group_reads_healthy_with_redis_exporters_series(group, make_instance, health_config):
    primary, _, (sentinel, _) = group
    snapshot = _monitor(health_config, primary, sentinel).run_once()
    assert snapshot.status == "healthy", snapshot.health_body
    result = next(r for r in snapshot.results if r.name == "sentinel")
    assert result.up and result.kind == "sentinel"
    assert result.check("sentinel").status == "healthy"
    assert "main at 127.0.0.1" in result.check("sentinel").reason
    address = f"127.0.0.1:{primary.port}"
    series = _series(snapshot, "redis_sentinel_")
    base = (("master_address", address), ("master_name", "main"), ("redis_instance", "sentinel"))
    assert series[("redis_sentinel_master_status", *base[:2], ("master_status", "ok"), base[2])] == 1
    assert series[("redis_sentinel_master_ok_slaves", *base)] == 1
    assert series[("redis_sentinel_master_ok_sentinels", *base)] == 2
    assert series[("redis_sentinel_master_slaves", *base)] == 1
    assert series[("redis_sentinel_master_sentinels", *base)] == 2
    quorum = [key for key in series if key[0] == "redis_sentinel_master_ckquorum_status"]
    assert len(quorum) == 1 and series[quorum[0]] == 1 and dict(quorum[0][1:])["message"].startswith("OK 2 usable")
    assert series[("redis_sentinel_masters", base[2])] == 1
    assert series[("redis_sentinel_tilt", base[2])] == 0
    assert _series(snapshot, "redis_infra_sentinel_up")[("redis_infra_sentinel_up", base[2])] == 1
    # no Redis series for the Sentinel: RedisDown and the Redis alerts never name it
    assert not [key for key in _series(snapshot, "redis_") if key[0] in ("redis_up", "redis_instance_info")
                and ("redis_instance", "sentinel") in key]


def test_a_lost_quorum_a_missing_primary_and_a_stopped_sentinel_degrade_but_never_fail(group, health_config):
    primary, _, (sentinel, other) = group
    monitor = _monitor(health_config, primary, sentinel, masters=("main", "cache"))
    snapshot = monitor.run_once()
    reason = next(r for r in snapshot.results if r.name == "sentinel").check("sentinel").reason
    assert snapshot.status == "degraded" and "does not watch cache" in reason
    assert snapshot.health_code == 200

    other.proc.stop()      # one of two Sentinels: no majority, no failover can be authorised
    _wait(lambda: "NOQUORUM" in (monitor.run_once().results[-1].check("sentinel").reason), "CKQUORUM to fail", 15)
    snapshot = monitor.snapshot
    series = _series(snapshot, "redis_sentinel_master_")
    assert [value for key, value in series.items() if key[0] == "redis_sentinel_master_ckquorum_status"] == [0]
    assert [value for key, value in series.items() if key[0] == "redis_sentinel_master_ok_sentinels"] == [1]

    sentinel.proc.stop()
    snapshot = monitor.run_once()
    result = snapshot.results[-1]
    assert not result.up and result.check("connection").status == "degraded"
    assert f"127.0.0.1:{sentinel.port} as monitor" in result.check("connection").reason
    assert snapshot.health_code == 200 and snapshot.instances["main"] == "healthy"
    up = _series(snapshot, "redis_infra_sentinel_up")
    assert up[("redis_infra_sentinel_up", ("redis_instance", "sentinel"))] == 0
    assert not _series(snapshot, "redis_sentinel_")


def test_a_primary_sentinel_sees_down_degrades_it(make_instance, make_sentinels, health_config):
    primary = make_instance(name="main")
    (sentinel,) = make_sentinels(primary.port, count=1, quorum=2, down_after=500)   # sdown, never odown
    monitor = _monitor(health_config, make_instance(name="other"), sentinel)
    assert monitor.run_once().results[-1].check("sentinel").status == "degraded"   # quorum 2 of 1 Sentinel
    primary.proc.stop()
    _wait(lambda: "is sdown" in monitor.run_once().results[-1].check("sentinel").reason, "the primary's sdown", 10)
    series = _series(monitor.snapshot, "redis_sentinel_master_status")
    assert [(dict(key[1:])["master_status"], value) for key, value in series.items()] == [("sdown", 0)]


@pytest.mark.parametrize(("table", "message"), [
    ('[sentinel]\nname = "sentinel"\n', "key 'sentinel.connection_file' is required"),
    ('[sentinel]\nconnection_file = "/x"\nname = "main"\n', "'main' is also an instance's name"),
    ('[sentinel]\nconnection_file = "/x"\nmasters = "main"\n', "key 'sentinel.masters' must be a list"),
    ('[sentinel]\nconnection_file = "/x"\nmasters = ["a", "a"]\n', "lists a name twice"),
    ('[sentinel]\nconnection_file = "/x"\nport = 1\n', "unknown key 'sentinel.port'"),
    ('[sentinel]\nconnection_file = "/x"\nname = "no spaces"\n', "key 'sentinel.name' must be 1-64"),
])
def test_bad_sentinel_tables_are_refused_naming_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        parse_config('[[instances]]\nname = "main"\nconnection_file = "/c"\n' + table, "h.toml")


def test_a_sentinel_table_is_read():
    config = parse_config('[[instances]]\nname = "main"\nconnection_file = "/c"\n'
                          '[sentinel]\nconnection_file = "/s"\nmasters = ["main"]\n', "h.toml")
    assert (config.sentinel.name, config.sentinel.connection_file, config.sentinel.masters) == \
        ("sentinel", "/s", ("main",))
    assert parse_config('[[instances]]\nname = "main"\nconnection_file = "/c"\n', "h.toml").sentinel is None



def test_the_sentinel_role_gives_the_checkers_user_exactly_these_rules():
    import yaml
    from health_helpers import REPO

    rules = yaml.safe_load((REPO / "roles/redis_sentinel/vars/main.yml").read_text())["_redis_sentinel_monitor_acl"]
    assert " ".join(rules.split()) == SENTINEL_REQUIRED_ACL


def test_a_sentinel_that_watches_nothing_is_degraded_when_it_must_watch_a_primary(make_instance, sentinel_factory,
                                                                                 health_config):
    from health_helpers import SENTINEL_ACL_LINE, write_connection_file

    proc = sentinel_factory(SENTINEL_ACL_LINE)
    conn = write_connection_file(proc.workdir / "conn.toml", "sentinel", proc.port)
    config, _ = health_config([make_instance(name="main")], sentinel={"connection_file": str(conn),
                                                                       "masters": ["main"]})
    result = Monitor(config).run_once().results[-1]
    assert result.up and result.check("sentinel").status == "degraded"
    assert result.check("sentinel").reason == "does not watch main"
    assert result.sentinel == {"masters": []}


def test_check_of_one_instance_leaves_the_sentinel_out_unless_named(group, health_config):
    """`check --instance main` answers for main alone; naming the Sentinel too (or alone) checks it."""
    from health_helpers import run_cli

    primary, _, (sentinel, other) = group
    other.proc.stop()
    sentinel.proc.stop()        # a Sentinel down: degraded, but only where it is asked for
    _, path = health_config([primary], sentinel={"connection_file": str(sentinel.conn_file)})
    alone = run_cli("check", "--config", str(path), "--instance", "main")
    assert alone.returncode == 0 and "sentinel" not in alone.stdout, alone.stdout
    both = run_cli("check", "--config", str(path), "--instance", "main", "--instance", "sentinel")
    assert both.returncode == 1 and "sentinel connection: degraded" in both.stdout, both.stdout
    only = run_cli("check", "--config", str(path), "--instance", "sentinel")
    assert only.returncode == 1 and "main" not in only.stdout.split("|")[0], only.stdout
    assert run_cli("acl", "--sentinel").stdout.strip() == SENTINEL_REQUIRED_ACL
