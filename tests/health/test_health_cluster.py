"""The health checker on Redis Cluster nodes: real cluster-enabled redis-server processes formed by the
collection's redis_cluster module, the checker as the monitoring user of REQUIRED_ACL."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from health_helpers import ACL_LINE, Instance, write_connection_file
from prometheus_client.parser import text_string_to_metric_families

from redis_infra.health import DEGRADED, HEALTHY, UNHEALTHY
from redis_infra.health.checks import CLUSTER_SLOTS, _crc16, cluster_key
from redis_infra.health.service import Monitor
from tests.conftest import cluster_port as free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "collections"))
from ansible_collections.redis_infra.redis.plugins.modules import redis_cluster  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def cluster_nodes(redis_factory, tmp_path):
    """Start `count` cluster nodes on three "hosts", form the cluster; returns Instances in node order."""

    def make(count: int, replicas: int) -> list[Instance]:
        nodes, instances = [], []
        for index in range(count):
            port = free_port()
            proc = redis_factory(ACL_LINE + "cluster-enabled yes\ncluster-config-file nodes.conf\n"
                                 "cluster-node-timeout 1500\n", port=port)
            conn = write_connection_file(tmp_path / f"conn-{port}.toml", f"n{index}", port)
            instances.append(Instance(f"n{index}", proc, conn))
            nodes.append({"host": f"h{index % 3}", "name": f"n{index}", "address": "127.0.0.1", "port": port})
        redis_cluster.run({}, nodes, replicas, 30, check_mode=False)
        return instances

    return make


def test_cluster_key_lands_in_the_nodes_slots():
    nodes = ("a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 5461-10922\n"
             "b 127.0.0.1:7001@17001 slave a 0 0 1 connected\n")
    key = cluster_key("redis-infra:health:x:main", nodes)
    tag = key.rsplit("{", 1)[1].rstrip("}")
    assert 5461 <= _crc16(tag.encode()) % CLUSTER_SLOTS <= 10922
    # A replica uses its primary's slots; a node without slots keeps the plain key.
    replica = nodes.replace("myself,master", "master").replace("slave a", "myself,slave a")
    assert cluster_key("k", replica).startswith("k:{")
    assert cluster_key("k", "a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected\n") == "k"
    # The same CRC16 as Redis: the documented example slot of "123456789" is 0x31C3 % 16384.
    assert _crc16(b"123456789") == 0x31C3


def test_primary_and_replica_of_a_cluster_are_healthy_with_cluster_metrics(cluster_nodes, health_config):
    instances = cluster_nodes(6, 1)
    config, _ = health_config(instances)
    snapshot = Monitor(config).run_once()
    for result in snapshot.results:
        assert result.status == HEALTHY, [c.to_dict() for c in result.checks if c.status != HEALTHY]
        cluster = result.check("cluster")
        assert cluster.status == HEALTHY and "16384 of 16384 slots assigned" in cluster.reason
        assert result.check("roundtrip").status == HEALTHY
    roles = sorted(result.info["role"] for result in snapshot.results)
    assert roles == ["master"] * 3 + ["slave"] * 3
    # Nothing was refused to the monitoring user, on any node.
    for instance in instances:
        denied = [entry for entry in instance.admin().execute_command("ACL", "LOG") if "monitor" in str(entry)]
        assert denied == []

    from prometheus_client.core import CollectorRegistry

    from redis_infra.health.metrics import ResultsCollector, render

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ResultsCollector(lambda: (snapshot.results, {})))
    samples = {(s.name, s.labels.get("redis_instance")): s.value
               for family in text_string_to_metric_families(render(registry).decode()) for s in family.samples}
    for instance in instances:
        assert samples[("redis_cluster_enabled", instance.name)] == 1
        assert samples[("redis_cluster_state", instance.name)] == 1
        assert samples[("redis_cluster_slots_ok", instance.name)] == CLUSTER_SLOTS
        assert samples[("redis_cluster_known_nodes", instance.name)] == 6
        assert samples[("redis_cluster_size", instance.name)] == 3


def test_a_cluster_that_lost_a_primary_without_replica_is_unhealthy(cluster_nodes, health_config):
    instances = cluster_nodes(3, 0)
    config, _ = health_config(instances[:1])
    monitor = Monitor(config)
    assert monitor.run_once().results[0].check("cluster").status == HEALTHY
    instances[2].proc.stop()
    deadline = time.monotonic() + 20
    statuses = []
    while time.monotonic() < deadline:
        check = monitor.run_once().results[0].check("cluster")
        statuses.append(check.status)
        if check.status == UNHEALTHY:
            break
        time.sleep(0.3)
    assert statuses[-1] == UNHEALTHY, statuses
    assert "cluster_state fail" in check.reason
    # On the way, the failing node's slots were reported as pfail (degraded) or went straight to fail.
    assert set(statuses) <= {HEALTHY, DEGRADED, UNHEALTHY}
