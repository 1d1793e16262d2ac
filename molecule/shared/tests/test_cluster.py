"""Redis Cluster, for scenarios with a redis_cluster group (molecule/cluster).

Cluster-wide tests: they reach every host themselves instead of running once per host. The converge
formed the cluster; these check what it made, what clients and the health checker see, that a re-run
after a failover changes nothing, and that a static change rolls node by node with failovers first.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time

import alerting
import checker
import pytest
import testinfra
import tls_setup
from testinfra.utils.ansible_runner import AnsibleRunner
from writers import ThreadedWriter

# Redis hosts only (a scenario may have a monitoring host: test_monitoring.py).
testinfra_hosts = ["ansible://redis"]

INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE")
if not INVENTORY:
    pytest.skip("not run by Molecule", allow_module_level=True)
RUNNER = AnsibleRunner(INVENTORY)
CLUSTER_HOSTS = RUNNER.get_hosts("redis_cluster")
if not CLUSTER_HOSTS:
    pytest.skip("this scenario has no Redis Cluster", allow_module_level=True)
VARIABLES = RUNNER.get_variables(CLUSTER_HOSTS[0])
ENGINE = VARIABLES.get("redis_server_engine", "redis")
PORTS = [int(item["port"]) for item in VARIABLES["redis_server_instances"]]
NAMES = [item["name"] for item in VARIABLES["redis_server_instances"]]
NODE_TIMEOUT = int(VARIABLES.get("redis_server_cluster_node_timeout", 15000)) / 1000
CLI = tls_setup.cli(ENGINE, VARIABLES)
TLS = tls_setup.client_kwargs(VARIABLES, tls_setup.controller_ca())


def deadline(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        yield
        time.sleep(0.25)


@pytest.fixture(scope="module")
def hosts():
    return {name: testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}") for name in CLUSTER_HOSTS}


@pytest.fixture(scope="module")
def addresses(hosts):
    return {name: host.check_output("ip -4 route get 1.1.1.1 | grep -o 'src [0-9.]*' | cut -d' ' -f2")
            for name, host in hosts.items()}


def cli(host, port, *args, user="admin", password=None):
    """The engine's CLI inside a container, as the admin user; the password goes through REDISCLI_AUTH."""
    password = password if password is not None else VARIABLES["redis_server_admin_password"]
    command = f"{CLI} --no-auth-warning -p {port}" + (f" --user {user}" if user else "")
    command += " " + " ".join(shlex.quote(str(arg)) for arg in args)
    result = host.run(f"REDISCLI_AUTH={shlex.quote(password)} {command}")
    return (result.stdout.strip() + "\n" + result.stderr.strip()).strip()


def fields(text):
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def nodes_view(hosts, addresses):
    """From the first node that answers (one may be stopped by a test): {address:port: (role, primary
    address:port or None, slot count)}."""
    text = ""
    for host in hosts.values():
        for port in PORTS:
            text = cli(host, port, "CLUSTER", "NODES")
            if re.match(r"^[0-9a-f]{40} ", text):
                break
        else:
            continue
        break
    entries = [line.split() for line in text.splitlines() if line.strip()]
    by_id = {fields_[0]: fields_[1].split("@")[0] for fields_ in entries}
    view = {}
    for fields_ in entries:
        slots = 0
        for item in fields_[8:]:
            if not item.startswith("["):
                start, _, end = item.partition("-")
                slots += int(end or start) - int(start) + 1
        primary = None if fields_[3] == "-" else by_id[fields_[3]]
        view[fields_[1].split("@")[0]] = ("replica" if primary else "primary", primary, slots)
    return view


def host_of(address_port, addresses):
    address = address_port.rsplit(":", 1)[0]
    return next(name for name, value in addresses.items() if value == address)


def _playbook(path, *args, timeout=900):
    command = ["ansible-playbook", "-i", INVENTORY, str(path), *args]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, env=env)


def _converge(*args):
    converge = os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "..", "shared", "converge.yml")
    return _playbook(converge, *args)


def _why(output):
    """What a failed playbook run says: its first failed tasks (a later play's failure may only follow from an
    earlier one), then its end."""
    failed = [line[:1500] for line in output.splitlines() if line.startswith(("fatal:", "failed:", "[ERROR]"))]
    return "\n".join(failed[:4]) + "\n...\n" + output[-2000:]


def _changed_counts(result):
    return re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", result.stdout, re.MULTILINE)


def cluster_client(addresses):
    import redis

    startup = [redis.cluster.ClusterNode(address, PORTS[0]) for address in addresses.values()]
    return redis.RedisCluster(startup_nodes=startup, password=VARIABLES["redis_server_password"],
                              socket_timeout=3, socket_connect_timeout=3, **TLS)


def test_cluster_formed_with_one_primary_per_host_and_replicas_elsewhere(hosts, addresses):
    for name, host in hosts.items():
        for port in PORTS:
            state = fields(cli(host, port, "CLUSTER", "INFO"))
            assert state["cluster_state"] == "ok", (name, port, state)
            assert state["cluster_slots_assigned"] == "16384" and state["cluster_slots_ok"] == "16384"
            assert state["cluster_known_nodes"] == str(len(hosts) * len(PORTS))
            assert state["cluster_size"] == str(len(hosts) * len(PORTS) // 2)
    view = nodes_view(hosts, addresses)
    primaries = [node for node, (role, _, _) in view.items() if role == "primary"]
    replicas = {node: primary for node, (role, primary, _) in view.items() if role == "replica"}
    assert len(primaries) == len(replicas) == len(hosts)
    assert sorted(host_of(node, addresses) for node in primaries) == sorted(hosts), "not one primary per host"
    for replica, primary in replicas.items():
        assert host_of(replica, addresses) != host_of(primary, addresses), f"{replica} shares a host with {primary}"
    assert sorted(view[node][2] for node in primaries) == [5461, 5461, 5462]
    # Every link of the cluster speaks TLS: plaintext is off on the client port and the bus.
    host = next(iter(hosts.values()))
    for directive, value in (("tls-cluster", "yes"), ("tls-replication", "yes"), ("port", "0")):
        assert cli(host, PORTS[0], "CONFIG", "GET", directive).splitlines()[-1] == value
    assert host.file(f"/var/lib/{ENGINE}/{NAMES[0]}/nodes.conf").user == ENGINE
    check = cli(host, PORTS[0], "--cluster", "check", f"{addresses[CLUSTER_HOSTS[0]]}:{PORTS[0]}")
    assert "All nodes agree about slots configuration" in check and "All 16384 slots covered" in check, check


KEYS = 10_000


def assert_keys_intact(addresses):
    """The 10,000 keys the client test wrote are all there, with their values."""
    client = cluster_client(addresses)
    try:
        names = [f"app:cluster:{i}" for i in range(KEYS)]
        values = client.mget_nonatomic(names)
        missing = [name for name, value in zip(names, values, strict=True) if value is None]
        assert missing == [], f"{len(missing)} keys lost, e.g. {missing[:5]}"
        assert [int(value) for value in values] == list(range(KEYS))
    finally:
        client.close()


def test_cluster_client_writes_through_every_shard_from_the_controller(addresses):
    client = cluster_client(addresses)
    try:
        for start in range(0, KEYS, 1000):
            client.mset_nonatomic({f"app:cluster:{i}": i for i in range(start, start + 1000)})
        owners = {client.get_node_from_key(f"app:cluster:{i}").name for i in range(300)}
        assert len(owners) == 3
    finally:
        client.close()
    assert_keys_intact(addresses)


def http_get(host, path):
    """The body of an HTTP GET on the health checker, from inside the container (503 bodies too)."""
    return checker.get(host, path)[1]


def test_cluster_backups_run_on_every_shard_and_health_checkers_report_the_cluster_ok(hosts):
    backup = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "backup.yml")
    result = _playbook(backup)
    assert result.returncode == 0, _why(result.stdout + result.stderr)
    for name, host in hosts.items():
        for instance in NAMES:
            status = json.loads(host.file(f"/var/lib/redis-infra/backup-status/{instance}.json").content_string)
            assert status["result"] == "ok", (name, instance, status)
        body = ""
        for _ in deadline(30):
            body = http_get(host, "/api/health/redis")
            detail = json.loads(body)
            checks = {(item["name"], check["name"]): check for item in detail["instances"] for check in item["checks"]}
            if all(checks.get((instance, check), {}).get("status") == "healthy"
                   for instance in NAMES for check in ("cluster", "backup", "roundtrip")):
                break
        else:
            pytest.fail(f"{name}: the cluster, backup or round-trip check is not healthy: {body[:3000]}")
        metrics = http_get(host, "/metrics")
        for instance in NAMES:
            assert f'redis_cluster_state{{redis_instance="{instance}"}} 1.0' in metrics
            assert f'redis_cluster_slots_ok{{redis_instance="{instance}"}} 16384.0' in metrics


def test_cluster_shard_restore_brings_back_its_keys_and_leaves_the_other_shards_alone(hosts, addresses):
    """playbooks/restore.yml on one primary of the cluster: its replica is held from taking over while it is
    down, it keeps its identity (nodes.conf) and slots, gets the backup's keys of its own slots only, its
    replica resyncs, and the keys of the other shards keep the writes made after the backup."""
    view = nodes_view(hosts, addresses)
    node = sorted(endpoint for endpoint, (role, _, _) in view.items() if role == "primary")[0]
    name = host_of(node, addresses)
    port = int(node.rsplit(":", 1)[1])
    instance = NAMES[PORTS.index(port)]
    host = hosts[name]
    node_id = cli(host, port, "CLUSTER", "MYID").splitlines()[-1]
    own = next(line.split() for line in cli(host, port, "CLUSTER", "NODES").splitlines() if node_id in line.split()[0])
    ranges = [tuple(int(part) for part in (item.split("-") * 2)[:2]) for item in own[8:] if not item.startswith("[")]
    backup = host.run(f"redis-infra-backup --config /etc/redis-infra/backup/{instance}.toml run")
    assert backup.rc == 0, backup.stderr

    client = cluster_client(addresses)
    try:
        def restored(key):
            return any(low <= client.keyslot(key) <= high for low, high in ranges)

        for start in range(0, KEYS, 1000):
            client.mset_nonatomic({f"app:cluster:{i}": f"changed-{i}" for i in range(start, start + 1000)})
        client.mset_nonatomic({f"after:restore:{i}": i for i in range(300)})
        restore = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "restore.yml")
        result = _playbook(restore, "--limit", name, "-e", f"redis_backup_restore_instance={instance}",
                           "-e", "confirm=yes")
        output = result.stdout + result.stderr
        assert result.returncode == 0, _why(output)
        assert "Cluster shard: kept the backup" in output, _why(output)
        names = [f"app:cluster:{i}" for i in range(KEYS)]
        values = client.mget_nonatomic(names)
        wrong = [(key, value) for i, (key, value) in enumerate(zip(names, values, strict=True))
                 if value != (str(i) if restored(key) else f"changed-{i}").encode()]
        assert wrong == [], f"{len(wrong)} keys wrong, e.g. {wrong[:5]}"
        assert 0 < sum(map(restored, names)) < KEYS
        later = client.mget_nonatomic([f"after:restore:{i}" for i in range(300)])
        assert [value is None for value in later] == [restored(f"after:restore:{i}") for i in range(300)]
        # The same node, still the shard's primary with its slots; its replica holds its keys and may take over.
        assert cli(host, port, "CLUSTER", "MYID").splitlines()[-1] == node_id
        after = nodes_view(hosts, addresses)
        assert after[node][0] == "primary" and after[node][2] == view[node][2]
        replica = next(endpoint for endpoint, (role, primary, _) in after.items() if primary == node)
        replica_host, replica_port = hosts[host_of(replica, addresses)], int(replica.rsplit(":", 1)[1])
        assert cli(replica_host, replica_port, "DBSIZE").splitlines()[-1] == cli(host, port, "DBSIZE").splitlines()[-1]
        assert cli(replica_host, replica_port, "CONFIG", "GET", "cluster-replica-no-failover").splitlines()[-1] == "no"
        for each in hosts.values():
            for each_port in PORTS:
                assert fields(cli(each, each_port, "CLUSTER", "INFO"))["cluster_state"] == "ok"
    finally:
        # Back to the data the later tests expect, whatever happened.
        for start in range(0, KEYS, 1000):
            client.mset_nonatomic({f"app:cluster:{i}": i for i in range(start, start + 1000)})
        for i in range(300):
            client.delete(f"after:restore:{i}")
        client.close()


def test_cluster_stopped_primary_is_replaced_and_a_rerun_changes_nothing(hosts, addresses):
    """Stopping a primary's instance: its replica takes over within about the node timeout and writes to
    its slots resume; started again, it rejoins as a replica; a converge then changes nothing."""
    view = nodes_view(hosts, addresses)
    primary = next(node for node, (role, _, _) in view.items() if role == "primary")
    successor = next(node for node, (role, owner, _) in view.items() if owner == primary)
    name = host_of(primary, addresses)
    instance = NAMES[PORTS.index(int(primary.rsplit(":", 1)[1]))]
    client = cluster_client(addresses)
    key = next(f"app:cluster:{i}" for i in range(KEYS)
               if client.get_node_from_key(f"app:cluster:{i}").name == primary)
    stopped = time.monotonic()
    hosts[name].run(f"systemctl stop {ENGINE}-server@{instance}.service")
    try:
        resumed = None
        for _ in deadline(NODE_TIMEOUT + 30):
            try:
                client.set(key, "after-failover")
                resumed = time.monotonic() - stopped
                break
            except Exception:  # noqa: BLE001, S112 (the outage itself)
                continue
        assert resumed is not None, f"writes to {primary}'s slots did not resume"
        assert nodes_view(hosts, addresses)[successor][0] == "primary"
        assert resumed < NODE_TIMEOUT + 10, f"writes resumed after {resumed:.1f} s"
    finally:
        hosts[name].run(f"systemctl start {ENGINE}-server@{instance}.service")
        client.close()
    port = int(primary.rsplit(":", 1)[1])
    for _ in deadline(60):
        state = fields(cli(hosts[name], port, "INFO", "replication"))
        if state.get("role") == "slave" and state.get("master_link_status") == "up":
            break
    else:
        pytest.fail(f"{primary} did not rejoin as a replica: {state}")
    result = _converge()
    assert result.returncode == 0, _why(result.stdout + result.stderr)
    counts = _changed_counts(result)  # the cluster's hosts, and a monitoring host where the scenario has one
    assert set(hosts) <= {name for name, _ in counts} and all(count == "0" for _, count in counts), \
        (counts, [line for line in result.stdout.splitlines() if line.startswith("changed:")])
    assert nodes_view(hosts, addresses)[successor][0] == "primary", "the converge moved the primary back"
    for secret in ("redis_server_admin_password", "redis_server_replication_password", "redis_server_password"):
        assert VARIABLES[secret] not in result.stdout + result.stderr
    assert_keys_intact_except(addresses, {key: "after-failover"})


CLUSTER_ALERTS = ("RedisClusterDown", "RedisClusterSlotsNotOk", "RedisClusterShardWithoutReplica",
                  "RedisReplicationBroken", "RedisDown")


def _active_alerts(monitoring, names=CLUSTER_ALERTS):
    """(alertname, host, instance, state) of the alerts of `names` that are pending or firing in Prometheus."""
    return [(a["labels"]["alertname"], a["labels"].get("instance"), a["labels"].get("redis_instance"), a["state"])
            for a in alerting.prometheus(monitoring, "alerts")["alerts"] if a["labels"]["alertname"] in names]


def _wait_cluster_ok(hosts, seconds=60):
    """The nodes that do not say cluster_state:ok once every node does or `seconds` have passed."""
    waiting = []
    for _ in deadline(seconds):
        waiting = [(name, port) for name, host in hosts.items() for port in PORTS
                   if fields(cli(host, port, "CLUSTER", "INFO")).get("cluster_state") != "ok"]
        if not waiting:
            break
    return waiting


@pytest.mark.skipif(not RUNNER.get_hosts("monitoring"), reason="this scenario has no monitoring host")
def test_the_dashboards_cluster_and_replication_panels_return_data(hosts):
    """The Grafana dashboard's panels that a standalone host leaves empty (test_monitoring.py), queried against the
    monitoring host's Prometheus with the cluster's nodes chosen: cluster state and slots, connected replicas,
    link state and replication lag (which exist only where a node is a replica or has one). Every panel but
    Sentinel's returns data; the Sentinel panels stay unproven here. Runs after the module's earlier tests,
    which leave keys and a backup on every node (the keyspace and backup-age panels need them)."""
    monitoring = testinfra.get_host(f"ansible://{RUNNER.get_hosts('monitoring')[0]}?ansible_inventory={INVENTORY}")
    up = alerting.wait_for_targets_up(monitoring, count=len(hosts))
    assert sum(sample["value"][1] == "1" for sample in up) == len(hosts), up
    time.sleep(4)  # rate() over the panels' interval needs two samples
    queries = alerting.dashboard_queries({"$instance": "|".join(hosts), "$redis_instance": ".*",
                                          "$__rate_interval": "1m"})
    queries = [(title, expr) for title, expr in queries if "sentinel" not in expr]
    for metric in ("redis_cluster_state", "redis_cluster_slots_ok", "redis_master_link_up",
                   "redis_connected_slave_lag_seconds"):
        assert any(metric in expr for _, expr in queries), f"the dashboard has no panel on {metric}"
    empty = [(title, expr) for title, expr in queries if not alerting.query(monitoring, expr)]
    assert not empty, f"dashboard queries without data: {empty}"


@pytest.mark.skipif(not RUNNER.get_hosts("monitoring"), reason="this scenario has no monitoring host")
def test_cluster_alerts_page_the_webhook_when_a_shard_loses_its_primary_or_its_replica(hosts, addresses):
    """The monitoring host scrapes every node's health checker (molecule/cluster-valkey). On the healthy cluster
    none of the cluster's alerts fires. A primary stopped while its replica is held from taking over
    (cluster-replica-no-failover, as a shard restore holds it) leaves its slots unserved: RedisClusterDown (from
    the held replica) and RedisReplicationBroken (its link) reach the webhook, and resolve once the primary is
    back. A stopped replica leaves its primary alone: RedisClusterShardWithoutReplica, resolved when it is back."""
    monitoring = testinfra.get_host(f"ansible://{RUNNER.get_hosts('monitoring')[0]}?ansible_inventory={INVENTORY}")
    up = alerting.wait_for_targets_up(monitoring, count=len(hosts))
    assert sum(sample["value"][1] == "1" for sample in up) == len(hosts), up
    time.sleep(8)  # a few evaluations after the scrapes
    firing = [alert for alert in _active_alerts(monitoring) if alert[3] == "firing"]
    assert not firing, firing

    view = nodes_view(hosts, addresses)
    primary = next(node for node, (role, _, _) in view.items() if role == "primary")
    replica = next(node for node, (_, owner, _) in view.items() if owner == primary)
    (primary_host, primary_name), (replica_host, replica_name) = (
        (host_of(node, addresses), NAMES[PORTS.index(int(node.rsplit(":", 1)[1]))]) for node in (primary, replica))
    replica_port = int(replica.rsplit(":", 1)[1])

    def service(host, name, action):
        """systemctl on a node's unit; a failure is returned, not raised, so that a cleanup never hides the
        test's own failure (the checks after it find what did not come back)."""
        result = hosts[host].run(f"systemctl {action} {ENGINE}-server@{name}.service")
        return result.rc == 0 or f"systemctl {action} {name} on {host}: {result.stderr.strip()}"

    alerting.start_sink(monitoring)
    released = False
    try:
        assert cli(hosts[replica_host], replica_port, "CONFIG", "SET", "cluster-replica-no-failover", "yes") == "OK"
        fault = time.time()
        assert service(primary_host, primary_name, "stop") is True
        try:
            down = alerting.wait_for_page(monitoring, "RedisClusterDown", "firing", fault, replica_host, replica_name)
            broken = alerting.wait_for_page(monitoring, "RedisReplicationBroken", "firing", fault, replica_host,
                                            replica_name)
            assert nodes_view(hosts, addresses)[replica][0] == "replica", "the held replica took over"
        finally:
            repaired = time.time()
            started = service(primary_host, primary_name, "start")
        assert started is True, started
        for alertname, fired in (("RedisClusterDown", down), ("RedisReplicationBroken", broken)):
            resolved = alerting.wait_for_page(monitoring, alertname, "resolved", repaired, replica_host, replica_name)
            print(f"{alertname}: fired {fired:.1f} s after the primary stopped, "
                  f"resolved {resolved:.1f} s after it started")
        assert nodes_view(hosts, addresses)[primary][0] == "primary", "the primary did not come back as the primary"
        assert cli(hosts[replica_host], replica_port, "CONFIG", "SET", "cluster-replica-no-failover", "no") == "OK"
        released = True

        # The restarted primary had no replica until its replica reconnected: its alert must be inactive before
        # the replica stops, or Alertmanager would not send a new firing notification.
        for _ in deadline(60):
            if not _active_alerts(monitoring, ("RedisClusterShardWithoutReplica",)):
                break
        else:
            pytest.fail(f"RedisClusterShardWithoutReplica stays active: {_active_alerts(monitoring)}")
        fault = time.time()
        assert service(replica_host, replica_name, "stop") is True
        try:
            alone = alerting.wait_for_page(monitoring, "RedisClusterShardWithoutReplica", "firing", fault,
                                           primary_host, primary_name)
        finally:
            repaired = time.time()
            started = service(replica_host, replica_name, "start")
        assert started is True, started
        resolved = alerting.wait_for_page(monitoring, "RedisClusterShardWithoutReplica", "resolved", repaired,
                                          primary_host, primary_name)
        print(f"RedisClusterShardWithoutReplica: fired {alone:.1f} s after the replica stopped, "
              f"resolved {resolved:.1f} s after it started")
    finally:
        alerting.stop_sink(monitoring)
        if not released:  # the hold goes in every case; a failure here shows in the checks below or the next test
            for _ in deadline(30):
                if cli(hosts[replica_host], replica_port, "CONFIG", "SET", "cluster-replica-no-failover", "no") == "OK":
                    break
        waiting = _wait_cluster_ok(hosts)
    assert not waiting, f"not cluster_state:ok after the test: {waiting}"
    assert_keys_intact(addresses)


def assert_keys_intact_except(addresses, changed):
    client = cluster_client(addresses)
    try:
        for key, value in changed.items():
            assert client.get(key).decode() == value
            client.set(key, key.rsplit(":", 1)[1])
    finally:
        client.close()
    assert_keys_intact(addresses)


class ClusterWriter(ThreadedWriter):
    """Writes through a cluster client from the controller until stopped; redirections are the client's."""

    prefix = "verify:roll"
    limit = 900
    error_pause = 0.05

    def __init__(self, addresses):
        super().__init__(cluster_client(addresses))

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.client.close()


def test_cluster_static_change_rolls_node_by_node_with_failovers_first(hosts, addresses):
    """A converge that needs restarts (tcp-backlog) restarts one node at a time, replicas first and each
    primary after CLUSTER FAILOVER on one of its replicas: no write fails beyond the client's retries."""
    def uptimes():
        return {(name, port): int(fields(cli(host, port, "INFO", "server"))["uptime_in_seconds"])
                for name, host in hosts.items() for port in PORTS}

    before, started = uptimes(), time.monotonic()
    primaries_before = sorted(node for node, (role, _, _) in nodes_view(hosts, addresses).items() if role == "primary")
    with ClusterWriter(addresses) as writer:
        result = _converge("-e", "redis_server_tcp_backlog=1024")
    assert result.returncode == 0, _why(result.stdout + result.stderr)
    elapsed = time.monotonic() - started
    after = uptimes()
    restarted = [node for node in before if after[node] < before[node] + elapsed - 2]
    assert sorted(restarted) == sorted(before), f"not every node restarted: {after}"
    starts = sorted(time.time() - seconds for seconds in after.values())
    assert all(later - earlier >= 1 for earlier, later in zip(starts, starts[1:], strict=False)), \
        f"nodes restarted together: {starts}"
    for host in hosts.values():
        for port in PORTS:
            assert cli(host, port, "CONFIG", "GET", "tcp-backlog").splitlines()[-1] == "1024"
            assert fields(cli(host, port, "CLUSTER", "INFO"))["cluster_state"] == "ok"
    assert writer.acknowledged > 100
    assert writer.errors == [], sorted(set(writer.errors))[:5]
    # Every primary was failed over before its restart: the primaries are now the former replicas.
    view = nodes_view(hosts, addresses)
    primaries_after = sorted(node for node, (role, _, _) in view.items() if role == "primary")
    assert set(primaries_after).isdisjoint(primaries_before), (primaries_before, primaries_after)
    for node, (role, primary, _) in view.items():
        if role == "replica":
            assert host_of(node, addresses) != host_of(primary, addresses)
    assert_keys_intact(addresses)


def test_cluster_grows_by_a_shard_added_to_the_inventory_under_writes(hosts, addresses, tmp_path):
    """A third instance on two hosts (the inventory's redis_server_instances of those hosts): the converge
    starts them, the module meets them, makes one the other's replica on another host and moves a quarter of
    the slots to the new primary from the three others, while a cluster client writes; no write fails beyond
    the client's redirections and no key is lost. Runs last: the scenario's other tests expect three shards."""
    grown = [*VARIABLES["redis_server_instances"], {"name": "c", "port": max(PORTS) + 1}]
    extra = tmp_path / "grown.yml"
    extra.write_text(json.dumps({"all": {"hosts": {name: {"redis_server_instances": grown}
                                                   for name in CLUSTER_HOSTS[:2]}}}))
    with ClusterWriter(addresses) as writer:
        result = _playbook(os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "..", "shared", "converge.yml"),
                           "-i", str(extra))
    output = result.stdout + result.stderr
    assert result.returncode == 0, _why(output)
    assert re.search(r"slots \d+-\d+ move from", output), _why(output)
    assert writer.acknowledged > 100
    assert writer.errors == [], sorted(set(writer.errors))[:5]
    view = nodes_view(hosts, addresses)
    assert len(view) == 8, view
    counts = sorted(slots for role, _, slots in view.values() if role == "primary")
    assert len(counts) == 4 and sum(counts) == 16384 and counts[0] >= 4095, counts
    for node, (role, primary, _) in view.items():
        if role == "replica":
            assert host_of(node, addresses) != host_of(primary, addresses)
    for name in CLUSTER_HOSTS[:2]:
        info = fields(cli(hosts[name], max(PORTS) + 1, "CLUSTER", "INFO"))
        assert info["cluster_state"] == "ok" and info["cluster_size"] == "4", (name, info)
    assert_keys_intact(addresses)


def test_cluster_shrinks_back_when_the_operator_confirms_the_removal_under_writes(hosts, addresses):
    """The shard the previous test added, taken out of the inventory again (the scenario's own inventory):
    the cluster step refuses, naming the nodes and the variable that confirms their removal; confirmed, it
    drains them (no replica of theirs stays, so their slots move to the three primaries that stay) while a
    cluster client writes, and every node forgets them. Only the cluster step runs (its tag), as an
    operator would after a full run. Runs after the grow."""
    leaving = [f"{addresses[name]}:{max(PORTS) + 1}" for name in CLUSTER_HOSTS[:2]]
    assert all(node in nodes_view(hosts, addresses) for node in leaving), "the grow test did not run first"
    refused = _converge("--tags", "redis_server_cluster")
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "redis_server_cluster_remove" in output, _why(output)
    assert all(node in output for node in leaving), _why(output)
    with ClusterWriter(addresses) as writer:
        result = _converge("--tags", "redis_server_cluster", "-e", json.dumps({"redis_server_cluster_remove": leaving}))
    output = result.stdout + result.stderr
    assert result.returncode == 0, _why(output)
    assert re.search(r"slots \d+-\d+ move from [0-9.:]+ \(leaving the cluster\)", output), _why(output)
    assert writer.acknowledged > 100
    assert writer.errors == [], sorted(set(writer.errors))[:5]
    view = nodes_view(hosts, addresses)
    assert len(view) == 6 and not set(leaving) & set(view), view
    counts = sorted(slots for role, _, slots in view.values() if role == "primary")
    assert counts == [5461, 5461, 5462], counts
    for node, (role, primary, _) in view.items():
        if role == "replica":
            assert host_of(node, addresses) != host_of(primary, addresses)
    for host in hosts.values():
        for port in PORTS:
            info = fields(cli(host, port, "CLUSTER", "INFO"))
            assert info["cluster_state"] == "ok" and info["cluster_known_nodes"] == "6", info
    assert_keys_intact(addresses)
