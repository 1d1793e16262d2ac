"""Compatibility with oliver006/redis_exporter, proven against the real thing: Debian's
prometheus-redis-exporter (bookworm: 1.45) and the health checker read the same redis-server processes
(a primary with a replica, and a one-node Redis Cluster) a few milliseconds apart, and every metric in
CONTRACT must come out of both with the same name, type, label names, identifying label values
(db="db0", cmd="get", master_port, ...) and value, or a value within the difference the two reads
explain (`allowed_difference`). What the checker does differently on purpose is listed below and in
docs/health.md ("Compatibility with redis_exporter")."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from test_health_assets import TARGET_LABELS, alert_usage, dashboard_usage

from tests.conftest import cluster_port, free_port

EXPORTER = shutil.which("prometheus-redis-exporter", path=f"/usr/bin{os.pathsep}{os.environ.get('PATH', '')}")
requires_exporter = pytest.mark.skipif(
    EXPORTER is None, reason="prometheus-redis-exporter is not installed (scripts/bootstrap-host.sh installs it)")

# The exporter's own ACL user: what it sends on a scrape without key checks (CLIENT SETNAME, CONFIG GET *,
# INFO ALL, CLUSTER INFO on a cluster node, LATENCY LATEST, SLOWLOG LEN, SLOWLOG GET 1), after AUTH.
EXPORTER_USER = "exporter"
EXPORTER_PASSWORD = "exporter-secret"
EXPORTER_ACL = (f"user {EXPORTER_USER} on >{EXPORTER_PASSWORD} -@all +auth +client|setname +config|get "
                "+info +cluster|info +latency|latest +slowlog|len +slowlog|get resetkeys resetchannels\n")

# --- the contract ---------------------------------------------------------------------------------
# Metric -> the labels its users select, group by or template on, besides the target labels Prometheus
# adds (instance, job; namespace on Kubernetes) and the checker's own redis_instance.
CONTRACT: dict[str, dict[str, tuple[str, ...]]] = {
    # Grafana dashboard 763, "Redis Dashboard for Prometheus Redis Exporter 1.x" by oliver006: published from
    # oliver006/redis_exporter contrib/grafana_prometheus_redis_dashboard.json (the exporter's README links
    # both), every panel's expr and the template variables (label_values(redis_up, instance)), as of commit
    # 7d4e6fe (2025-12); the file at tag v1.45.0 uses the same metrics. Its targets' "metric":
    # "redis_command_calls_total" is a leftover editor hint that no query uses.
    "grafana-763": {
        "redis_up": (),
        "redis_uptime_in_seconds": (),
        "redis_connected_clients": (),
        "redis_blocked_clients": (),
        "redis_memory_used_bytes": (),
        "redis_memory_max_bytes": (),
        "redis_commands_total": ("cmd",),
        "redis_commands_duration_seconds_total": ("cmd",),
        "redis_keyspace_hits_total": (),
        "redis_keyspace_misses_total": (),
        "redis_net_input_bytes_total": (),
        "redis_net_output_bytes_total": (),
        "redis_db_keys": ("db",),
        "redis_db_keys_expiring": (),
        "redis_expired_keys_total": (),
        "redis_evicted_keys_total": (),
    },
    # awesome-prometheus-alerts (samber/awesome-prometheus-alerts), _data/rules.yml, "Redis" /
    # "oliver006/redis_exporter" (published as dist/rules/redis/oliver006-redis-exporter.yml): all 17 rules
    # as of commit a853318 (2026-08). Older copies of the file use a subset of these.
    "awesome-prometheus-alerts": {
        "redis_up": (),
        "redis_instance_info": ("role",),
        "redis_connected_slaves": (),
        "redis_cluster_state": (),
        "redis_master_link_up": ("master_host", "master_port"),
        "redis_cluster_slots_fail": (),
        "redis_cluster_slots_pfail": (),
        "redis_memory_used_bytes": (),
        "redis_total_system_memory_bytes": (),
        "redis_memory_max_bytes": (),
        "redis_connected_clients": (),
        "redis_config_maxclients": (),
        "redis_rejected_connections_total": (),
        "redis_rdb_last_save_timestamp_seconds": (),
    },
    # This project's rules: files/prometheus/redis-alerts.yml (its redis_infra_* series are the checker's
    # own; test_contract_lists_what_the_project_files_use keeps this group in step with the file).
    "files/prometheus/redis-alerts.yml": {
        "redis_up": (),
        "redis_memory_used_bytes": (),
        "redis_memory_max_bytes": (),
        "redis_config_maxclients": (),
        "redis_connected_clients": (),
        "redis_rejected_connections_total": (),
        "redis_master_link_up": ("master_host", "master_port"),
        "redis_connected_slave_lag_seconds": ("slave_ip", "slave_port"),
        "redis_master_last_io_seconds_ago": ("master_host", "master_port"),
        "redis_instance_info": ("replication_group", "role"),
        "redis_uptime_in_seconds": (),
        "redis_rdb_last_bgsave_status": (),
        "redis_aof_enabled": (),
        "redis_aof_last_write_status": (),
        "redis_evicted_keys_total": (),
        "redis_cluster_state": (),
        "redis_cluster_slots_ok": (),
        "redis_cluster_enabled": (),
        "redis_connected_slaves": (),
        "redis_sentinel_master_ckquorum_status": ("master_name", "message"),
    },
    # This project's dashboard: files/grafana/redis-infra-health.json (likewise kept in step).
    "files/grafana/redis-infra-health.json": {
        "redis_up": (),
        "redis_uptime_in_seconds": (),
        "redis_memory_used_bytes": (),
        "redis_memory_max_bytes": (),
        "redis_memory_used_rss_bytes": (),
        "redis_connected_clients": (),
        "redis_blocked_clients": (),
        "redis_config_maxclients": (),
        "redis_commands_processed_total": (),
        "redis_keyspace_hits_total": (),
        "redis_keyspace_misses_total": (),
        "redis_db_keys": ("db",),
        "redis_db_keys_expiring": ("db",),
        "redis_expired_keys_total": (),
        "redis_evicted_keys_total": (),
        "redis_net_input_bytes_total": (),
        "redis_net_output_bytes_total": (),
        "redis_connected_slaves": (),
        "redis_master_link_up": (),
        "redis_connected_slave_lag_seconds": ("slave_ip", "slave_port"),
        "redis_commands_total": ("cmd",),
        "redis_rdb_last_save_timestamp_seconds": (),
        "redis_rdb_changes_since_last_save": (),
        "redis_cluster_state": (),
        "redis_cluster_slots_assigned": (),
        "redis_cluster_slots_ok": (),
        "redis_cluster_slots_pfail": (),
        "redis_cluster_slots_fail": (),
        "redis_sentinel_master_ckquorum_status": ("master_name",),
        "redis_sentinel_master_ok_slaves": ("master_name",),
        "redis_sentinel_master_ok_sentinels": ("master_name",),
        "redis_sentinel_master_status": ("master_name", "master_status"),
    },
}
ALL_CONTRACT_METRICS = {metric for group in CONTRACT.values() for metric in group}
# A Sentinel's series are compared on a Sentinel (test_checker_matches_redis_exporter_on_a_sentinel), the
# others on the Redis instances of `reads`.
SENTINEL_CONTRACT_METRICS = sorted(metric for metric in ALL_CONTRACT_METRICS if metric.startswith("redis_sentinel_"))
CONTRACT_METRICS = sorted(ALL_CONTRACT_METRICS - set(SENTINEL_CONTRACT_METRICS))

# --- differences on purpose (docs/health.md, "Compatibility with redis_exporter") ------------------
# Labels only the checker has. redis_instance is on every series: one checker serves all the instances
# of a host from one scrape target, where redis_exporter has one target per Redis.
CHECKER_LABELS = frozenset({"redis_instance"})
# On redis_instance_info: master_replid as redis_exporter >= 1.63 has it (1.45 has not), valkey_version
# on Valkey (as recent exporters), replication_group when configured (RedisNoPrimary and
# RedisMultiplePrimaries count primaries per group; with the exporter it is a target label).
CHECKER_INFO_LABELS = frozenset({"master_replid", "valkey_version", "replication_group"})
# Series only the exporter has: it pads redis_db_keys and redis_db_keys_expiring with 0 for every empty
# database (0 .. `databases`-1; db0 on a cluster node); the checker exports the databases INFO keyspace
# lists. sum() and by (db) give the same result; a panel shows no line instead of a line at 0.
EXPORTER_ZERO_SERIES = frozenset({"redis_db_keys", "redis_db_keys_expiring"})
# Contract metrics the checker does not export, and why. The test fails when one appears, so that it
# moves into the comparison.
NOT_IN_CHECKER: dict[str, str] = {}
# Metrics (anywhere in the output, not only the contract) whose TYPE differs: exporter's, checker's.
TYPE_DIFFERENCES = {
    # redis_exporter declares these two cluster-bus counters gauges; the checker, counters (PromQL does not
    # look at TYPE; rate() works on both).
    "redis_cluster_messages_sent_total": ("gauge", "counter"),
    "redis_cluster_messages_received_total": ("gauge", "counter"),
}

# --- how far apart the two values may be ------------------------------------------------------------
# The exporter reads each instance first (AUTH, CLIENT SETNAME, CONFIG GET *, INFO ALL, then LATENCY
# LATEST, SLOWLOG LEN, SLOWLOG GET 1, and CLUSTER INFO on a cluster node); some 10 ms later the checker
# (AUTH or HELLO, CLIENT SETNAME, PING, INFO all; its SET/GET/DEL or EXISTS come after its INFO). The test
# sends nothing in between, so a counter may only have grown by what these readers and replication did.
OBSERVER_CALLS = {   # command -> most calls in the window
    "info": 1,                    # the exporter's INFO: counted in commandstats once it has run
    "latency|latest": 1, "slowlog|len": 1, "slowlog|get": 1, "cluster|info": 1,     # the exporter, after its INFO
    "auth": 1, "hello": 1, "client|setname": 1, "ping": 2,   # the checker's connection, before its INFO
    "replconf": 2,                # REPLCONF ACK, sent by the replica every second
}
# A replica also applies the checker's SET/DEL round trip on its primary, checked at the same time, and
# the primary's PING every repl-ping-replica-period (1 s here; "ping" above has room for it).
REPLICA_CALLS = {"set": 1, "del": 1, "select": 1}
WINDOW = {   # metric -> (lowest, highest) checker - exporter
    # Each reader counts its own connection; the exporter's may not be freed yet when the checker reads.
    "redis_connected_clients": (0, 1),
    # used_memory includes each client's buffers, and the two reads are made on different connections: a
    # query or reply buffer of the reader allocated or freed moves it by some 30-40 KiB (measured: 0,
    # +-30 KiB, +-40 KiB). 128 KiB is about 10% of the ~1.3 MB an idle test instance uses.
    "redis_memory_used_bytes": (-131072, 131072),
    # RSS is sampled from /proc by serverCron every 100 ms; between two samples the pages touched by the
    # connections come and go (measured: 0 or 128 KiB).
    "redis_memory_used_rss_bytes": (-1048576, 1048576),
    # The commands in the window (OBSERVER_CALLS, REPLICA_CALLS); also checked against their sum below.
    "redis_commands_processed_total": (0, 20),
    # Those commands' bytes: a few hundred (measured: about 400; 560 on the replica).
    "redis_net_input_bytes_total": (0, 4096),
    # Their replies, mostly the exporter's INFO ALL (measured: about 8 KiB).
    "redis_net_output_bytes_total": (0, 32768),
}
SECONDS_AGO = frozenset({   # whole seconds since a message that comes every second (reads < 1 s apart)
    "redis_master_last_io_seconds_ago",     # the primary's PING, repl-ping-replica-period 1
    "redis_connected_slave_lag_seconds",    # the replica's REPLCONF ACK
})
REPLICA_WINDOW = {
    # The checker's round-trip key on the primary, replicated between its SET and its DEL.
    "redis_db_keys": (0, 1),
    "redis_db_keys_expiring": (0, 1),
    "redis_rdb_changes_since_last_save": (0, 2),
}


def allowed_difference(metric: str, labels: dict[str, str], role: str, elapsed: float) -> tuple[float, float]:
    """(lowest, highest) checker - exporter for one series; (0, 0) unless explained above."""
    if metric == "redis_uptime_in_seconds":
        return 0, max(1, math.ceil(elapsed))
    if metric in SECONDS_AGO:
        bound = max(2, math.ceil(elapsed) + 1)
        return -bound, bound
    if metric in ("redis_commands_total", "redis_commands_duration_seconds_total"):
        calls = OBSERVER_CALLS.get(labels["cmd"], 0) + (REPLICA_CALLS.get(labels["cmd"], 0) if role == "slave" else 0)
        if metric == "redis_commands_total":
            return 0, calls
        return (0, 0.05) if calls else (0, 0)      # equal calls, equal microseconds
    if role == "slave" and metric in REPLICA_WINDOW:
        return REPLICA_WINDOW[metric]
    return WINDOW.get(metric, (0, 0))


# --- reading the two outputs ------------------------------------------------------------------------
Labels = frozenset[tuple[str, str]]


@dataclass
class Exposition:
    types: dict[str, str]                        # sample name -> TYPE of its family
    series: dict[str, dict[Labels, float]]       # sample name -> labels -> value

    def value(self, metric: str, **labels: str) -> float | None:
        return self.series.get(metric, {}).get(frozenset(labels.items()))


def parse_exposition(text: str, redis_instance: str | None = None) -> Exposition:
    """The redis_* samples of a /metrics text; with redis_instance, only that instance's (the checker's),
    without the labels only the checker has (CHECKER_LABELS, CHECKER_INFO_LABELS)."""
    types: dict[str, str] = {}
    series: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith("redis_"):
                continue
            labels = dict(sample.labels)
            if redis_instance is not None:
                if labels.get("redis_instance") != redis_instance:
                    continue
                drop = CHECKER_LABELS | (CHECKER_INFO_LABELS if sample.name == "redis_instance_info" else set())
                labels = {key: value for key, value in labels.items() if key not in drop}
            types[sample.name] = family.type
            series.setdefault(sample.name, {})[frozenset(labels.items())] = sample.value
    return Exposition(types, series)


def show(metric: str, labels: Labels) -> str:
    return metric + ("{" + ",".join(f'{key}="{value}"' for key, value in sorted(labels)) + "}" if labels else "")


def http_get(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http://127.0.0.1 only)
        return response.read().decode()


# --- the exporter process ---------------------------------------------------------------------------
class ExporterProcess:
    """prometheus-redis-exporter on a free loopback port, as the `exporter` ACL user (password in its
    environment, not on its command line); /metrics scrapes `target`, /scrape?target= any other."""

    def __init__(self, workdir, target_port: int, user: str = EXPORTER_USER, password: str = EXPORTER_PASSWORD):
        self.port = free_port()
        self.log = workdir / f"exporter-{self.port}.log"
        env = {"PATH": "/usr/bin:/bin", "REDIS_PASSWORD": password, **({"REDIS_USER": user} if user else {})}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [EXPORTER, f"--redis.addr=redis://127.0.0.1:{target_port}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--connection-timeout=5s", "--include-system-metrics"],
                env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 10.0) -> ExporterProcess:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the exporter exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if http_get(f"{self.url}/health", timeout=1) == "ok":     # answers without reading Redis
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the exporter did not answer on {self.url} in {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def scrape(self, port: int | None = None) -> str:
        if port is None:
            return http_get(f"{self.url}/metrics")
        target = urllib.parse.quote(f"redis://127.0.0.1:{port}", safe="")
        return http_get(f"{self.url}/scrape?target={target}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture
def start_exporter(tmp_path):
    """Start prometheus-redis-exporter processes for a Redis port; all stopped after the test."""
    started: list[ExporterProcess] = []

    def start(target_port: int, **login) -> ExporterProcess:
        exporter = ExporterProcess(tmp_path, target_port, **login)
        started.append(exporter)
        return exporter.wait_ready()

    yield start
    for exporter in started:
        exporter.stop()


# --- the scenario -----------------------------------------------------------------------------------
@dataclass
class Reads:
    exporter: dict[str, Exposition]     # instance name -> the exporter's view
    checker: dict[str, Exposition]      # instance name -> the checker's view
    roles: dict[str, str]
    elapsed: float                      # seconds from the exporter's first read to the checker's last
    exporter_version: str
    ports: dict[str, int]


def _wait(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def reads(make_instance, health_config, run_checker, start_exporter):
    """A primary (maxmemory, AOF) with a replica and a one-node Redis Cluster, some keys in db0 and db1
    (some with a TTL, one expired), a few commands, a slow-log entry and a client blocked in BLPOP; then
    the exporter's and the checker's reads of the three instances."""
    primary = make_instance(name="primary", extra=EXPORTER_ACL + "maxmemory 64mb\nappendonly yes\n"
                            "enable-debug-command yes\nrepl-diskless-sync-delay 0\nrepl-ping-replica-period 1\n")
    replica = make_instance(name="replica", extra=EXPORTER_ACL + f"replicaof 127.0.0.1 {primary.port}\n")
    node = make_instance(name="node", extra=EXPORTER_ACL + "cluster-enabled yes\ncluster-config-file nodes.conf\n",
                         port=cluster_port())
    node.admin().execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
    admin, cluster = primary.admin(), node.admin()
    db1 = redis.Redis(host="127.0.0.1", port=primary.port, db=1, socket_timeout=10, decode_responses=True)
    _wait(lambda: replica.admin().info("replication").get("master_link_status") == "up", "the replica to sync")
    _wait(lambda: "cluster_state:ok" in cluster.execute_command("CLUSTER", "INFO"), "the cluster state ok")

    # the workload: db0 5 keys (1 with a TTL), db1 2 keys (1 with a TTL), 1 expired key, hits and misses
    admin.set("app:user:1", "alice")
    admin.set("app:user:2", "bob", ex=600)
    admin.incr("app:counter")
    admin.hset("app:hash", "field", "value")
    admin.lpush("app:list", "a", "b")
    admin.get("app:user:1")
    admin.get("app:missing")
    admin.set("app:gone", "x", px=1)
    time.sleep(0.01)
    assert admin.get("app:gone") is None                     # a miss that expires the key
    db1.set("session:1", "s", ex=900)
    db1.set("session:2", "s")
    admin.execute_command("DEBUG", "SLEEP", "0.02")          # a slow-log entry (> 10 ms)
    cluster.set("app:{node}:1", "v", ex=300)
    blocked = primary.admin(timeout=15)
    waiter = threading.Thread(target=blocked.blpop, args=("app:queue",), kwargs={"timeout": 10}, daemon=True)
    waiter.start()
    try:
        _wait(lambda: admin.info("clients")["blocked_clients"] == 1, "the BLPOP client to block")
        offset = admin.info("replication")["master_repl_offset"]
        _wait(lambda: replica.admin().info("replication")["slave_repl_offset"] >= offset, "the replica to catch up")
        instances = {"primary": primary, "replica": replica, "node": node}
        exporter = start_exporter(primary.port)
        config, _ = health_config([
            {"name": "primary", "connection_file": str(primary.conn_file), "replication_group": "main"},
            {"name": "replica", "connection_file": str(replica.conn_file), "replication_group": "main"},
            node,
        ], interval=30)      # one cycle at start, then only the test's run_once
        checker = run_checker(config)
        checker.wait_for(lambda detail: len(detail["instances"]) == 3, what="the checker's first cycle")
        for name, instance in instances.items():     # both readers' commands are now in INFO commandstats
            exporter.scrape(None if name == "primary" else instance.port)

        # the two reads, back to back: the exporter's (via /metrics for its own target, /scrape for the
        # others), then one check cycle, whose /metrics the checker serves over HTTP
        started = time.monotonic()
        texts = {name: exporter.scrape(None if name == "primary" else instance.port)
                 for name, instance in instances.items()}
        checker.monitor.run_once()
        elapsed = time.monotonic() - started
        status, _, body = checker.get("/metrics")
        assert status == 200
    finally:
        admin.lpush("app:queue", "job")                      # releases the BLPOP
        waiter.join(5)

    versions = {dict(sample.labels).get("version") for family in text_string_to_metric_families(texts["primary"])
                for sample in family.samples if sample.name == "redis_exporter_build_info"}
    checker_text = body.decode()
    yield Reads(exporter={name: parse_exposition(text) for name, text in texts.items()},
                checker={name: parse_exposition(checker_text, name) for name in instances},
                roles={name: instance.admin().info("replication")["role"] for name, instance in instances.items()},
                elapsed=elapsed, exporter_version=",".join(sorted(v for v in versions if v)),
                ports={name: instance.port for name, instance in instances.items()})
    for instance in instances.values():
        entries = instance.admin().execute_command("ACL", "LOG")
        denied = [entry for entry in entries if EXPORTER_USER in str(entry) or "monitor" in str(entry)]
        assert denied == [], f"{instance.name}: the exporter or the checker was refused: {denied}"
    exporter.stop()
    assert "level=error" not in exporter.log.read_text(errors="replace"), exporter.log_tail()


# --- the tests --------------------------------------------------------------------------------------
def _project_usage() -> dict[str, dict[str, tuple[str, ...]]]:
    """The redis_* metrics (not redis_infra_*) the project's rules and dashboard use, with their labels."""
    ignored = TARGET_LABELS | CHECKER_LABELS
    found: dict[str, dict[str, tuple[str, ...]]] = {}
    for group, usage in (("files/prometheus/redis-alerts.yml", alert_usage()),
                         ("files/grafana/redis-infra-health.json", dashboard_usage())):
        labels_of: dict[str, set[str]] = {}
        for _, names, pairs, grouping in usage:
            for name in names:
                if name.startswith("redis_") and not name.startswith("redis_infra_"):
                    used = labels_of.setdefault(name, set())
                    used |= {label for metric, label in pairs if metric == name} | set(grouping)
        found[group] = {name: tuple(sorted(labels - ignored)) for name, labels in labels_of.items()}
    return found


def test_contract_lists_what_the_project_files_use():
    for group, usage in _project_usage().items():
        assert {name: tuple(sorted(labels)) for name, labels in CONTRACT[group].items()} == usage, group


def _check_scenario(reads: Reads) -> None:
    """The values compared are the workload's, not zeros: checked on the exporter's side."""
    exp = reads.exporter["primary"]
    assert exp.value("redis_db_keys", db="db0") == 5 and exp.value("redis_db_keys", db="db1") == 2
    assert exp.value("redis_db_keys_expiring", db="db0") == 1 and exp.value("redis_db_keys_expiring", db="db1") == 1
    assert exp.value("redis_commands_total", cmd="hset") == 1 and exp.value("redis_commands_total", cmd="lpush") == 1
    assert exp.value("redis_expired_keys_total") == 1 and exp.value("redis_keyspace_misses_total") >= 2
    assert exp.value("redis_blocked_clients") == 1 and exp.value("redis_connected_slaves") == 1
    assert exp.value("redis_memory_max_bytes") == 64 * 1024 * 1024 and exp.value("redis_aof_enabled") == 1
    (lag_labels,) = exp.series["redis_connected_slave_lag_seconds"]
    assert dict(lag_labels) == {"slave_ip": "127.0.0.1", "slave_port": str(reads.ports["replica"]),
                                "slave_state": "online"}
    replica = reads.exporter["replica"]
    assert replica.value("redis_master_link_up", master_host="127.0.0.1", master_port=str(reads.ports["primary"])) == 1
    node = reads.exporter["node"]
    assert node.value("redis_cluster_state") == 1 and node.value("redis_cluster_slots_ok") == 16384
    assert node.value("redis_db_keys", db="db0") == 1
    roles = {name: {dict(labels)["role"] for labels in exp.series["redis_instance_info"]}
             for name, exp in reads.exporter.items()}
    assert roles == {"primary": {"master"}, "replica": {"slave"}, "node": {"master"}}


def _label_names(series: dict[Labels, float]) -> set[str]:
    return {key for labels in series for key, _ in labels}


def _contract_problems(reads: Reads) -> list[str]:
    """Every CONTRACT metric: the same TYPE, label names, series and values (allowed_difference)."""
    problems: list[str] = []
    compared: set[str] = set()
    for name, exp in reads.exporter.items():
        chk, role = reads.checker[name], reads.roles[name]
        for metric in CONTRACT_METRICS:
            ours, theirs = chk.series.get(metric, {}), exp.series.get(metric, {})
            if metric in NOT_IN_CHECKER:
                if ours:
                    problems.append(f"{name}: {metric} is exported now: move it from NOT_IN_CHECKER to the comparison")
                continue
            if not ours and not theirs:
                continue
            compared.add(metric)
            if not ours or not theirs:
                problems.append(f"{name}: {metric} only from the {'exporter' if theirs else 'checker'}")
                continue
            if exp.types[metric] != chk.types[metric]:
                problems.append(f"{name}: {metric} is a {exp.types[metric]} for the exporter, a {chk.types[metric]} "
                                "for the checker")
            if _label_names(theirs) != _label_names(ours):
                problems.append(f"{name}: {metric} labels: exporter {sorted(_label_names(theirs))}, checker "
                                f"{sorted(_label_names(ours))}")
                continue
            for labels in sorted(theirs.keys() | ours.keys(), key=sorted):
                if labels not in ours:
                    if not (metric in EXPORTER_ZERO_SERIES and theirs[labels] == 0):
                        problems.append(f"{name}: {show(metric, labels)} = {theirs[labels]:g} only from the exporter")
                    continue
                if labels not in theirs:
                    problems.append(f"{name}: {show(metric, labels)} = {ours[labels]:g} only from the checker")
                    continue
                low, high = allowed_difference(metric, dict(labels), role, reads.elapsed)
                difference = ours[labels] - theirs[labels]
                if not low <= difference <= high:
                    problems.append(f"{name}: {show(metric, labels)}: exporter {theirs[labels]:g}, checker "
                                    f"{ours[labels]:g} (checker - exporter {difference:g}, allowed {low:g}..{high:g})")
        # the processed-commands difference is exactly the calls counted in the window
        ours, theirs = chk.series.get("redis_commands_total", {}), exp.series.get("redis_commands_total", {})
        calls = sum(value - theirs[labels] for labels, value in ours.items() if labels in theirs)
        processed = ((chk.value("redis_commands_processed_total") or 0)
                     - (exp.value("redis_commands_processed_total") or 0))
        if calls != processed:
            problems.append(f"{name}: commands processed grew by {processed:g} between the two reads, the "
                            f"per-command calls by {calls:g}")
    for metric in sorted(set(CONTRACT_METRICS) - set(NOT_IN_CHECKER) - compared):
        problems.append(f"{metric}: on no instance, by neither reader (the scenario must produce it)")
    for metric in NOT_IN_CHECKER:
        if not any(exp.series.get(metric) for exp in reads.exporter.values()):
            problems.append(f"{metric}: not from the exporter either (NOT_IN_CHECKER is stale)")
    return problems


def _common_metric_problems(reads: Reads) -> list[str]:
    """Beyond the contract: every redis_* metric both export has the same TYPE (but TYPE_DIFFERENCES) and
    label names, and the checker exports no redis_* metric the exporter does not know."""
    problems = []
    for name, exp in reads.exporter.items():
        chk = reads.checker[name]
        for metric in sorted(set(chk.series) - set(exp.series)):
            if not metric.startswith("redis_infra_"):
                problems.append(f"{name}: {metric} only from the checker")
        for metric in sorted(set(chk.series) & set(exp.series)):
            types = (exp.types[metric], chk.types[metric])
            if types[0] != types[1] and TYPE_DIFFERENCES.get(metric) != types:
                problems.append(f"{name}: {metric} is a {types[0]} for the exporter, a {types[1]} for the checker")
            if _label_names(exp.series[metric]) != _label_names(chk.series[metric]):
                problems.append(f"{name}: {metric} labels: exporter {sorted(_label_names(exp.series[metric]))}, "
                                f"checker {sorted(_label_names(chk.series[metric]))}")
    return problems


@requires_exporter
def test_checker_matches_redis_exporter(reads):
    assert reads.elapsed < 5, f"the two reads took {reads.elapsed:.2f} s"
    _check_scenario(reads)
    problems = _contract_problems(reads) + _common_metric_problems(reads)
    assert problems == [], (f"redis_exporter {reads.exporter_version}, reads {reads.elapsed * 1000:.0f} ms apart:\n"
                            + "\n".join(problems))


@requires_exporter
def test_checker_matches_redis_exporter_on_a_sentinel(make_instance, make_sentinels, health_config, start_exporter):
    """The exporter (as Sentinel's default user) and the checker (as its read-only user) read one of two
    Sentinels that watch a primary with a replica: every redis_sentinel_* series of either, with the same
    TYPE, labels and value; the contract's Sentinel metrics among them."""
    primary = make_instance(name="main", extra="repl-diskless-sync-delay 0\n")
    replica = make_instance(name="replica", extra=f"replicaof 127.0.0.1 {primary.port}\n")
    _wait(lambda: replica.admin().info("replication").get("master_link_status") == "up", "the replica to sync")
    sentinel, _ = make_sentinels(primary.port)

    def settled() -> bool:
        master = sentinel.admin().execute_command("SENTINEL", "MASTER", "main")
        return int(master["num-slaves"]) == 1 and int(master["num-other-sentinels"]) == 1
    _wait(settled, "the Sentinel to find the replica and the other Sentinel", 20)
    exporter = start_exporter(sentinel.port, user="", password=sentinel.admin_options["password"])
    config, _ = health_config([primary], sentinel={"connection_file": str(sentinel.conn_file)}, interval=30)
    from redis_infra.health.service import Monitor

    theirs = parse_exposition(exporter.scrape())
    ours = parse_exposition(Monitor(config).run_once().metrics_body.decode(), "sentinel")
    exporter.stop()
    names = sorted(name for name in theirs.series.keys() | ours.series.keys() if name.startswith("redis_sentinel_"))
    problems = []
    for metric in names:
        if metric not in ours.series or metric not in theirs.series:
            problems.append(f"{metric} only from the {'exporter' if metric in theirs.series else 'checker'}")
        elif theirs.types[metric] != ours.types[metric]:
            problems.append(f"{metric} is a {theirs.types[metric]} for the exporter, a {ours.types[metric]} for us")
        elif theirs.series[metric] != ours.series[metric]:
            problems.append(f"{metric}: exporter {theirs.series[metric]}, checker {ours.series[metric]}")
    assert problems == []
    assert set(SENTINEL_CONTRACT_METRICS) <= set(names)
    address = f"127.0.0.1:{primary.port}"
    assert ours.value("redis_sentinel_master_ok_slaves", master_name="main", master_address=address) == 1
    assert ours.value("redis_sentinel_master_ok_sentinels", master_name="main", master_address=address) == 2
    assert ours.value("redis_sentinel_master_status", master_name="main", master_address=address,
                      master_status="ok") == 1
    # the exporter asks a Sentinel for LATENCY LATEST too, which Sentinel does not have; nothing else failed
    errors = [line for line in exporter.log.read_text(errors="replace").splitlines()
              if "level=error" in line and "unknown command 'LATENCY'" not in line]
    assert errors == [], exporter.log_tail()
