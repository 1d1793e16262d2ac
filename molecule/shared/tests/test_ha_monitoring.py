"""Prometheus and Alertmanager watching a Sentinel group (molecule/ha): every host's checker scraped with its
Sentinel's series, every dashboard panel of replication and Sentinel with data, and the alerts of replication
and Sentinel paging a webhook and resolving, on the real group.

The monitoring stack goes on the scenario's application host only here: this module adds that host to a
`monitoring` group with an inventory of its own and runs playbooks/monitoring.yml once, so that the scenario's
many converges do not run the monitoring role each time (molecule/production and molecule/cluster-valkey prove
its converge, idempotence and check mode). The delays are short, as there (scrape every 3 s, the alerts that
have a `for:` after 5 s), and the scenarios' checkers refresh every 3 s (redis_health_interval). Run after
test_ha.py, on whatever primary its failovers left and with the passwords its rotation test left."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

import alerting
import pytest
import test_ha as ha
import testinfra
import yaml

if not ha.APP_HOSTS:
    pytest.skip("this scenario has no application host for the monitoring stack", allow_module_level=True)

hosts, addresses = ha.hosts, ha.addresses  # test_ha.py's fixtures
MONITORING_HOST = ha.APP_HOSTS[0]
# The alerts driven here: those with a shipped `for:` get 5 s; the two without one keep none (the rules say why).
SHORTENED = ("RedisSentinelDown", "RedisSentinelQuorumLost", "RedisNoPrimary", "RedisMultiplePrimaries")
WITHOUT_FOR = ("RedisReplicationLag", "RedisReplicaMasterSilent")
MONITORING_VARS = {
    "redis_monitoring_webhook_url": f"http://127.0.0.1:{alerting.SINK_PORT}/hook",
    "redis_monitoring_scrape_interval": "3s",
    "redis_monitoring_evaluation_interval": "2s",
    "redis_monitoring_group_wait": "1s",
    "redis_monitoring_group_interval": "2s",
    "redis_monitoring_alert_for": dict.fromkeys(SHORTENED, "5s"),
}
GROUP = f"redis_primary.{ha.NAME}"
# Each side of a replication link drops it after hearing nothing from the other for this long (repl-timeout).
REPL_TIMEOUT = 60
# With the Sentinels stopped and no client writing, a primary's only traffic to its replicas is a PING every
# 10 s (repl-ping-replica-period): the last I/O may be that old when a pause starts.
PING_PERIOD = 10
# The series of the dashboard's replication and Sentinel panels.
REPLICATION_SERIES = ("redis_master_link_up", "redis_connected_slave_lag_seconds", "redis_connected_slaves",
                      "redis_sentinel_master_", "redis_infra_sentinel_up")


@pytest.fixture(scope="module", autouse=True)
def passwords(hosts):
    with ha.working_passwords(hosts):
        yield


@pytest.fixture(scope="module")
def monitor(tmp_path_factory):
    """The application host, with Prometheus and Alertmanager deployed by playbooks/monitoring.yml, and the
    webhook receiver the scenario's Alertmanager posts to."""
    inventory = tmp_path_factory.mktemp("monitoring") / "monitoring.yml"
    inventory.write_text(yaml.safe_dump({"monitoring": {"hosts": {MONITORING_HOST: None}, "vars": MONITORING_VARS}}))
    playbook = os.path.join(alerting.PROJECT, "playbooks", "monitoring.yml")
    result = ha._playbook(playbook, "-i", str(inventory))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    host = testinfra.get_host(f"ansible://{MONITORING_HOST}?ansible_inventory={ha.INVENTORY}")
    alerting.start_sink(host)
    yield host
    alerting.stop_sink(host)


def sentinels(hosts, names, action):
    """systemctl `action` of the Sentinel on each of `names`; every host is tried before a failure is raised."""
    failed = [name for name in names if hosts[name].run(f"systemctl {action} redis-sentinel.service").rc != 0]
    assert not failed, f"systemctl {action} redis-sentinel failed on {failed}"


@contextlib.contextmanager
def sentinels_stopped(hosts):
    """Every Sentinel stopped (no failover can start), and started again whatever happens."""
    try:
        sentinels(hosts, ha.SENTINELS, "stop")
        yield
    finally:
        sentinels(hosts, ha.SENTINELS, "start")


@contextlib.contextmanager
def paused(name):
    """A host's container paused (its Redis, Sentinel and checker all stop answering), and always unpaused."""
    subprocess.run(["docker", "pause", name], check=True, timeout=30, stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        subprocess.run(["docker", "unpause", name], check=True, timeout=30, stdout=subprocess.DEVNULL)


def firing(monitor):
    return [a for a in alerting.prometheus(monitor, "alerts")["alerts"] if a["state"] == "firing"]


def test_ha_monitoring_scrapes_every_checker_with_its_sentinel_and_no_alert_of_the_group_fires(monitor, hosts):
    up = alerting.wait_for_targets_up(monitor, count=len(ha.REDIS_HOSTS))
    assert sorted(s["metric"]["instance"] for s in up if s["value"][1] == "1") == sorted(ha.REDIS_HOSTS), up
    # Each checker reads its own Sentinel: three Sentinels, two good replicas and a quorum, seen by each host.
    for _ in ha.deadline(60):
        ok = alerting.query(monitor, "redis_sentinel_master_ok_sentinels == 3"
                                     " and on (instance) redis_sentinel_master_ok_slaves == 2"
                                     " and on (instance) redis_sentinel_master_ckquorum_status == 1")
        if len(ok) == len(ha.SENTINELS):
            break
    else:
        seen = alerting.query(monitor, "redis_sentinel_master_ok_sentinels")
        pytest.fail(f"Prometheus does not see every Sentinel healthy: {seen}")
    masters = alerting.query(monitor, f'redis_instance_info{{replication_group="{GROUP}", role="master"}}')
    assert [s["metric"]["instance"] for s in masters] == [ha.current_primary(hosts)], masters
    time.sleep(6)  # two evaluations after every target answered
    loaded = {rule["name"]: rule for group in alerting.prometheus(monitor, "rules")["groups"]
              for rule in group["rules"] if rule["type"] == "alerting"}
    durations = {name: loaded[name]["duration"] for name in SHORTENED + WITHOUT_FOR}
    assert durations == {**dict.fromkeys(SHORTENED, 5), **dict.fromkeys(WITHOUT_FOR, 0)}, durations
    # The alerts driven here (and every other of replication and Sentinel) are quiet on the healthy group.
    group_alerts = {*SHORTENED, *WITHOUT_FOR, "RedisReplicationBroken", "RedisDown"}
    assert not [a for a in firing(monitor) if a["labels"]["alertname"] in group_alerts], firing(monitor)


def test_ha_every_replication_and_sentinel_panel_of_the_dashboard_has_data(monitor):
    """test_monitoring.py runs every query of the dashboard on a standalone host, where the replication and
    Sentinel panels have no series (a backup's or a key's panels need data this module does not make); here
    each replication and Sentinel query must return data, on every host it applies to."""
    alerting.wait_for_targets_up(monitor, count=len(ha.REDIS_HOSTS))
    queries = alerting.dashboard_queries({"$instance": ".*", "$redis_instance": ".*", "$__rate_interval": "1m"})
    replication = [(title, expr) for title, expr in queries if any(m in expr for m in REPLICATION_SERIES)]
    assert {m for m in REPLICATION_SERIES if any(m in expr for _, expr in replication)} == set(REPLICATION_SERIES)
    empty = [(title, expr) for title, expr in replication if not alerting.query(monitor, expr)]
    assert not empty, f"dashboard queries without data: {empty}"
    # The link's and the Sentinels' panels: a series from each replica, and from each host's Sentinel.
    instances = {metric: {s["metric"]["instance"] for s in alerting.query(monitor, metric)}
                 for metric in ("redis_master_link_up", "redis_infra_sentinel_up", "redis_sentinel_master_status")}
    assert len(instances["redis_master_link_up"]) == len(ha.REDIS_HOSTS) - 1, instances
    assert instances["redis_infra_sentinel_up"] == instances["redis_sentinel_master_status"] == set(ha.SENTINELS)


def test_ha_a_stopped_sentinel_pages_the_webhook_and_resolves(monitor, hosts):
    name = sorted(n for n in ha.SENTINELS if n != ha.current_primary(hosts))[0]
    alerting.page_and_resolve(monitor, "RedisSentinelDown", name, lambda: sentinels(hosts, [name], "stop"),
                     lambda: sentinels(hosts, [name], "start"))


def test_ha_sentinels_without_a_majority_page_quorum_lost_and_resolve(monitor, hosts):
    """Two of the three Sentinels stopped: the third can no longer get a failover authorised (the primary stays
    up, so none starts)."""
    target = ha.SENTINELS[0]
    others = [n for n in ha.SENTINELS if n != target]
    alerting.page_and_resolve(monitor, "RedisSentinelQuorumLost", target, lambda: sentinels(hosts, others, "stop"),
                     lambda: sentinels(hosts, others, "start"))


def test_ha_a_replica_silent_for_30_seconds_pages_replication_lag_and_resolves(monitor, hosts):
    """A replica's container paused: the primary hears nothing from it (a healthy replica acknowledges every
    second) and its checker reports the lag growing; the pause ends before the primary drops the replica
    (repl-timeout). The primary's other replica keeps the group writable and the Sentinels do not fail over
    (the primary answers them)."""
    primary = ha.current_primary(hosts)
    replica = sorted(n for n in hosts if n != primary)[0]
    with contextlib.ExitStack() as stack:
        alerting.page_and_resolve(monitor, "RedisReplicationLag", primary,
                         lambda: stack.enter_context(paused(replica)), stack.close, seconds=REPL_TIMEOUT - 8)
    assert ha.current_primary(hosts) == primary
    assert ha._healed(hosts) == primary


def test_ha_two_primaries_no_primary_and_a_silent_primary_page_the_webhook_and_resolve(monitor, hosts, addresses):
    """With every Sentinel stopped (so that none repairs it or fails over first): a replica promoted by hand
    makes two primaries; then the primary's container paused leaves the group with none, and its replicas hear
    nothing from it. The first two alerts count the group's primaries by its replication_group label, from
    every checker; the third is a replica's own view (the one whose link the first fault left alone), and must
    fire before the replica gives up on the link: repl-timeout after the primary's last ping, which may be a
    ping period old when the pause starts. The pause ends within that."""
    primary = ha.current_primary(hosts)
    promoted, watched = sorted(n for n in hosts if n != primary)
    with sentinels_stopped(hosts):
        alerting.page_and_resolve(monitor, "RedisMultiplePrimaries", None,
                         lambda: ha.cli(hosts[promoted], "REPLICAOF", "NO", "ONE"),
                         lambda: ha.cli(hosts[promoted], "REPLICAOF", addresses[primary], ha.PORT))
        assert ha._healed(hosts) == primary
        fault = time.time()
        with paused(primary):
            fired = {"RedisNoPrimary": alerting.wait_for_page(monitor, "RedisNoPrimary", "firing", fault, None)}
            fired["RedisReplicaMasterSilent"] = alerting.wait_for_page(
                monitor, "RedisReplicaMasterSilent", "firing", fault, watched,
                seconds=max(REPL_TIMEOUT - PING_PERIOD - 5 - (time.time() - fault), 1))
            repaired = time.time()
        for alertname, instance in (("RedisNoPrimary", None), ("RedisReplicaMasterSilent", watched)):
            resolved = alerting.wait_for_page(monitor, alertname, "resolved", repaired, instance)
            print(f"{alertname}: fired {fired[alertname]:.1f} s after the pause, resolved {resolved:.1f} s after it")
    assert ha._healed(hosts) == primary
    # The Sentinels are back, agree on the same primary, and can authorise a failover again.
    for _ in ha.deadline(60):
        if all(ha.sentinel(hosts[n], "SENTINEL", "CKQUORUM", ha.NAME).startswith("OK") for n in ha.SENTINELS):
            break
    else:
        pytest.fail("the Sentinels did not see a quorum again")
    assert {ha._sentinel_primary(hosts[n]) for n in ha.SENTINELS} == {addresses[primary]}
