"""The monitoring assets: promtool checks the alert rules and runs their unit tests, and every metric
and label the rules and the Grafana dashboard use is present in a real /metrics scrape."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from health_helpers import REPO
from prometheus_client.parser import text_string_to_metric_families

from redis_infra.health.service import Monitor
from tests.conftest import cluster_port

RULES = REPO / "files" / "prometheus" / "redis-alerts.yml"
RULE_TESTS = REPO / "files" / "prometheus" / "redis-alerts.test.yml"
DASHBOARD = REPO / "files" / "grafana" / "redis-infra-health.json"
PROMTOOL = shutil.which("promtool")
TARGET_LABELS = {"instance", "job"}          # added by Prometheus from the scrape config
CHECKER_LABEL = "redis_instance"


def load_yaml(path: Path):
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(path.read_text())


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_promtool_check_and_test_rules():
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    test = subprocess.run([PROMTOOL, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120,
                          cwd=RULE_TESTS.parent)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    rules = load_yaml(RULES)
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    tests = load_yaml(RULE_TESTS)
    firing, quiet = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested quiet"
    assert len(alerts) >= 15


# --- which metrics and labels the assets use ------------------------------------------------------

_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_NAME = re.compile(r"\b(redis_[a-z0-9_]+)\b")


def parse_expr(expr: str) -> tuple[set[str], set[tuple[str, str]], set[str]]:
    """(metric names, (metric, label) pairs from selectors, labels used in by/on clauses)."""
    pairs = set()
    for metric, matchers in _SELECTOR.findall(expr):
        for label, _ in _MATCHER.findall(matchers):
            pairs.add((metric, label))
    grouping = {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",") if label.strip()}
    bare = re.sub(r"\{[^}]*\}", "", expr)
    bare = _GROUPING.sub("", bare)
    names = {name for name in _NAME.findall(bare) if name != CHECKER_LABEL}
    return names, pairs, grouping


def alert_usage():
    rules = load_yaml(RULES)
    usage = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            names, pairs, grouping = parse_expr(rule["expr"])
            templated = set(re.findall(r"\$labels\.([a-zA-Z_]+)", json.dumps(rule.get("annotations", {}))))
            usage.append((rule["alert"], names, pairs, grouping | templated))
    return usage


def dashboard_usage():
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [(target["expr"], target.get("legendFormat", ""))
               for panel in dashboard["panels"] for target in panel.get("targets", [])]
    queries += [(variable["definition"], "") for variable in dashboard["templating"]["list"]
                if variable.get("definition")]
    usage = []
    for expr, legend in queries:
        names, pairs, grouping = parse_expr(expr.replace("label_values(", "(").replace("$", "x"))
        legend_labels = set(re.findall(r"\{\{\s*([a-zA-Z_]+)\s*\}\}", legend))
        usage.append((expr, names, pairs, grouping | legend_labels))
    return usage


def test_dashboard_is_valid_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "redis-infra-health" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    names = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "instance", "redis_instance"} <= names
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
    used = set().union(*(names for _, names, _, _ in dashboard_usage()))
    assert {"redis_infra_health_status", "redis_infra_check_duration_seconds", "redis_infra_backup_age_seconds"} <= used


# --- a real scrape with everything present --------------------------------------------------------

@pytest.fixture
def scrape(make_instance, make_tls_instance, make_sentinels, health_config, tmp_path):
    """/metrics of a checker watching a primary and its replica (same replication group), each with a
    backup and a maintenance status file, after a slow query and a few keys; an instance that serves
    only TLS; a one-node cluster; and a Sentinel that watches the primary."""
    primary = make_instance(name="primary", extra="repl-diskless-sync-delay 0\nenable-debug-command yes\n"
                                                  "maxmemory 64mb\nappendonly yes\n")
    replica = make_instance(name="replica", extra=f"replicaof 127.0.0.1 {primary.port}\n")
    deadline = time.monotonic() + 10
    while replica.admin().info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "replica never synced"
        time.sleep(0.05)
    admin = primary.admin()
    admin.set("app:a", 1)
    admin.set("app:b", 2, ex=600)
    admin.get("app:a")
    admin.get("app:missing")
    ok = tmp_path / "primary-backup.json"
    ok.write_text(json.dumps({"time": time.time() - 60, "result": "ok", "file": "/backups/primary.rdb", "size": 42}))
    failed = tmp_path / "replica-backup.json"
    failed.write_text(json.dumps({"time": time.time() - 60, "result": "failed", "error": "disk full"}))
    # the maintenance tool's status files: a run that passed, and one whose restore drill failed
    ended = datetime.now(UTC) - timedelta(hours=1)
    maintenance = {}
    for name, result in (("primary", "ok"), ("replica", "failed")):
        maintenance[name] = tmp_path / f"{name}-maintenance.json"
        maintenance[name].write_text(json.dumps({
            "instance": name, "time": ended.isoformat(), "result": result,
            "sections": {"slowlog": "ok", "memory": "ok", "latency": "ok", "keys": "skipped", "drill": result},
            "drill": {"result": result, "time": ended.isoformat(), "backup_id": f"{name}-20261205T020000Z",
                      "duration_seconds": 3.2, "error": None if result == "ok" else "restored 0 keys"},
            "warnings": 0}))
    # A Redis Cluster node that serves every slot by itself: the cluster series.
    node = make_instance(name="node", extra="cluster-enabled yes\ncluster-config-file nodes.conf\n",
                         port=cluster_port())
    node.admin().execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
    while "cluster_state:ok" not in node.admin().execute_command("CLUSTER", "INFO"):
        assert time.monotonic() < deadline + 10, "the one-node cluster never got ok"
        time.sleep(0.05)
    (sentinel,) = make_sentinels(primary.port, count=1, quorum=1)
    config, _ = health_config([
        {"name": "primary", "connection_file": str(primary.conn_file), "backup_status_file": str(ok),
         "maintenance_status_file": str(maintenance["primary"]), "replication_group": "main"},
        {"name": "replica", "connection_file": str(replica.conn_file), "backup_status_file": str(failed),
         "maintenance_status_file": str(maintenance["replica"]), "replication_group": "main"},
        make_tls_instance(name="secure"),
        node,
    ], sentinel={"connection_file": str(sentinel.conn_file), "masters": ["main"]})
    monitor = Monitor(config)
    monitor.run_once()
    admin.execute_command("DEBUG", "SLEEP", "0.15")
    snapshot = monitor.run_once()
    families = list(text_string_to_metric_families(snapshot.metrics_body.decode()))
    samples: dict[str, list[dict]] = {}
    for family in families:
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels, __value__=sample.value))
    return samples


def _labels_of(samples, metric) -> set[str]:
    return {key for sample in samples.get(metric, []) for key in sample if key != "__value__"}


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_and_label_used_is_exported(scrape, source):
    usage = alert_usage() if source == "alerts" else dashboard_usage()
    problems = []
    for where, names, pairs, labels in usage:
        for name in names:
            if name not in scrape:
                problems.append(f"{where}: metric {name} not exported")
        for metric, label in pairs:
            if label not in TARGET_LABELS and label not in _labels_of(scrape, metric):
                problems.append(f"{where}: {metric} has no label {label}")
        available = set().union(*(_labels_of(scrape, name) for name in names)) if names else set()
        for label in labels - TARGET_LABELS:
            if label not in available:
                problems.append(f"{where}: label {label} not on any of {sorted(names)}")
    assert problems == []
    assert sum(len(names) for _, names, _, _ in usage) >= 15


def test_scrape_has_exporter_compatible_series(scrape):
    def one(metric, **labels):
        found = [s for s in scrape[metric] if all(s.get(k) == v for k, v in labels.items())]
        assert len(found) == 1, (metric, labels, scrape.get(metric))
        return found[0]

    assert one("redis_up", redis_instance="primary")["__value__"] == 1
    info = one("redis_instance_info", redis_instance="primary")
    assert info["role"] == "master" and info["replication_group"] == "main" and info["redis_version"]
    assert one("redis_instance_info", redis_instance="replica")["role"] == "slave"
    link = one("redis_master_link_up", redis_instance="replica")
    assert link["__value__"] == 1 and link["master_host"] == "127.0.0.1"
    lag = one("redis_connected_slave_lag_seconds", redis_instance="primary")
    assert {"slave_ip", "slave_port", "slave_state"} <= set(lag)
    assert one("redis_connected_slaves", redis_instance="primary")["__value__"] == 1
    assert one("redis_db_keys", redis_instance="primary", db="db0")["__value__"] >= 2
    assert one("redis_db_keys_expiring", redis_instance="primary", db="db0")["__value__"] >= 1
    assert one("redis_commands_total", redis_instance="primary", cmd="set")["__value__"] >= 2
    assert one("redis_keyspace_misses_total", redis_instance="primary")["__value__"] >= 1
    assert one("redis_aof_enabled", redis_instance="primary")["__value__"] == 1
    assert one("redis_memory_max_bytes", redis_instance="primary")["__value__"] == 64 * 1024 * 1024
    assert one("redis_infra_slow_queries_total", redis_instance="primary")["__value__"] == 1
    assert one("redis_infra_backup_success", redis_instance="primary")["__value__"] == 1
    assert one("redis_infra_backup_success", redis_instance="replica")["__value__"] == 0
    assert 50 < one("redis_infra_backup_age_seconds", redis_instance="primary")["__value__"] < 120
    assert one("redis_infra_health_status", redis_instance="replica", check="backup")["__value__"] == 1
    assert one("redis_infra_maintenance_success", redis_instance="primary")["__value__"] == 1
    assert one("redis_infra_backup_drill_success", redis_instance="replica")["__value__"] == 0
    assert one("redis_infra_health_status", redis_instance="replica", check="maintenance")["__value__"] == 1
    assert one("redis_infra_health_status", redis_instance="secure", check="tls_certificate")["__value__"] == 0
    assert one("redis_infra_tls_certificate_expiry_timestamp_seconds", redis_instance="secure")["__value__"] > \
        time.time() + 21 * 86400
    assert "redis_infra_tls_certificate_expiry_timestamp_seconds" not in {
        name for name, samples in scrape.items() for sample in samples if sample.get("redis_instance") == "primary"}
    assert one("redis_infra_health_status", redis_instance="primary", check="overall")["__value__"] == 1  # slow query
    commands = one("redis_infra_check_commands_total", redis_instance="primary")["__value__"]
    assert 14 <= commands <= 20        # two cycles of ~9 commands
