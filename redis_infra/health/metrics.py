"""Prometheus metrics rendered from the last check results (never from Redis at scrape time).

Series about Redis itself use oliver006/redis_exporter's metric names, types and labels, plus one
label `redis_instance` (the configured instance name) because one checker serves several instances
on a host. The checker's own series are prefixed `redis_infra_`.
"""

from __future__ import annotations

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

from . import STATUS_CODES
from .checks import TLS_PROBE_INTERVAL
from .info import commandstats, errorstats, keyspace, replicas, to_float

INSTANCE_LABEL = "redis_instance"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# INFO field -> (metric name, type, help). Same names as redis_exporter.
INFO_METRICS: dict[str, tuple[str, str, str]] = {
    # Server
    "uptime_in_seconds": ("redis_uptime_in_seconds", "gauge", "Seconds since the server started"),
    "process_id": ("redis_process_id", "gauge", "Process id of the server"),
    # Clients
    "connected_clients": ("redis_connected_clients", "gauge", "Connected clients"),
    "blocked_clients": ("redis_blocked_clients", "gauge", "Clients blocked in a blocking call"),
    "tracking_clients": ("redis_tracking_clients", "gauge", "Clients being tracked"),
    "maxclients": ("redis_config_maxclients", "gauge", "maxclients setting (from INFO clients)"),
    "client_recent_max_input_buffer": ("redis_client_recent_max_input_buffer_bytes", "gauge",
                                       "Biggest recent client input buffer"),
    "client_recent_max_output_buffer": ("redis_client_recent_max_output_buffer_bytes", "gauge",
                                        "Biggest recent client output buffer"),
    # Memory
    "used_memory": ("redis_memory_used_bytes", "gauge", "Memory used by Redis (used_memory)"),
    "used_memory_rss": ("redis_memory_used_rss_bytes", "gauge", "Resident memory of the server process"),
    # redis_exporter only with --include-system-metrics; awesome-prometheus-alerts' RedisOutOfSystemMemory
    "total_system_memory": ("redis_total_system_memory_bytes", "gauge", "Memory of the host (total_system_memory)"),
    "used_memory_peak": ("redis_memory_used_peak_bytes", "gauge", "Peak memory used"),
    "used_memory_lua": ("redis_memory_used_lua_bytes", "gauge", "Memory used by the Lua engine"),
    "used_memory_overhead": ("redis_memory_used_overhead_bytes", "gauge", "Memory overhead"),
    "used_memory_startup": ("redis_memory_used_startup_bytes", "gauge", "Memory used at startup"),
    "used_memory_dataset": ("redis_memory_used_dataset_bytes", "gauge", "Memory used by the dataset"),
    "used_memory_scripts": ("redis_memory_used_scripts_bytes", "gauge", "Memory used by scripts"),
    "maxmemory": ("redis_memory_max_bytes", "gauge", "maxmemory setting (0: no limit)"),
    "mem_fragmentation_ratio": ("redis_mem_fragmentation_ratio", "gauge", "RSS / used memory"),
    "mem_fragmentation_bytes": ("redis_mem_fragmentation_bytes", "gauge", "RSS - used memory"),
    "mem_clients_slaves": ("redis_mem_clients_slaves", "gauge", "Memory used by replica clients"),
    "mem_clients_normal": ("redis_mem_clients_normal", "gauge", "Memory used by normal clients"),
    "mem_not_counted_for_evict": ("redis_mem_not_counted_for_eviction_bytes", "gauge",
                                  "Memory not counted for eviction"),
    "lazyfree_pending_objects": ("redis_lazyfree_pending_objects", "gauge", "Objects waiting to be freed"),
    "active_defrag_running": ("redis_active_defrag_running", "gauge", "Active defragmentation running"),
    # Persistence
    "loading": ("redis_loading_dump_file", "gauge", "Loading the dataset from disk"),
    "rdb_changes_since_last_save": ("redis_rdb_changes_since_last_save", "gauge", "Changes since the last save"),
    "rdb_bgsave_in_progress": ("redis_rdb_bgsave_in_progress", "gauge", "RDB background save running"),
    "rdb_last_save_time": ("redis_rdb_last_save_timestamp_seconds", "gauge", "Time of the last RDB save"),
    "rdb_last_bgsave_status": ("redis_rdb_last_bgsave_status", "gauge", "Last RDB background save ok (1) or not"),
    "rdb_last_bgsave_time_sec": ("redis_rdb_last_bgsave_duration_sec", "gauge", "Duration of the last RDB save"),
    "rdb_current_bgsave_time_sec": ("redis_rdb_current_bgsave_duration_sec", "gauge",
                                    "Duration of the running RDB save"),
    "rdb_last_cow_size": ("redis_rdb_last_cow_size_bytes", "gauge", "Copy-on-write size of the last RDB save"),
    "aof_enabled": ("redis_aof_enabled", "gauge", "AOF enabled"),
    "aof_rewrite_in_progress": ("redis_aof_rewrite_in_progress", "gauge", "AOF rewrite running"),
    "aof_rewrite_scheduled": ("redis_aof_rewrite_scheduled", "gauge", "AOF rewrite scheduled"),
    "aof_last_rewrite_time_sec": ("redis_aof_last_rewrite_duration_sec", "gauge", "Duration of the last AOF rewrite"),
    "aof_current_rewrite_time_sec": ("redis_aof_current_rewrite_duration_sec", "gauge",
                                     "Duration of the running AOF rewrite"),
    "aof_last_cow_size": ("redis_aof_last_cow_size_bytes", "gauge", "Copy-on-write size of the last AOF rewrite"),
    "aof_last_bgrewrite_status": ("redis_aof_last_bgrewrite_status", "gauge", "Last AOF rewrite ok (1) or not"),
    "aof_last_write_status": ("redis_aof_last_write_status", "gauge", "Last AOF write ok (1) or not"),
    "aof_current_size": ("redis_aof_current_size_bytes", "gauge", "AOF size"),
    "aof_base_size": ("redis_aof_base_size_bytes", "gauge", "AOF size at the last rewrite"),
    "aof_delayed_fsync": ("redis_aof_delayed_fsync", "gauge", "Delayed AOF fsyncs"),
    # Stats
    "total_connections_received": ("redis_connections_received_total", "counter", "Connections accepted"),
    "total_commands_processed": ("redis_commands_processed_total", "counter", "Commands processed"),
    "rejected_connections": ("redis_rejected_connections_total", "counter", "Connections rejected (maxclients)"),
    "total_net_input_bytes": ("redis_net_input_bytes_total", "counter", "Bytes read from the network"),
    "total_net_output_bytes": ("redis_net_output_bytes_total", "counter", "Bytes written to the network"),
    "expired_keys": ("redis_expired_keys_total", "counter", "Keys expired"),
    "evicted_keys": ("redis_evicted_keys_total", "counter", "Keys evicted because of maxmemory"),
    "keyspace_hits": ("redis_keyspace_hits_total", "counter", "Successful key lookups"),
    "keyspace_misses": ("redis_keyspace_misses_total", "counter", "Failed key lookups"),
    "pubsub_channels": ("redis_pubsub_channels", "gauge", "Pub/sub channels with subscribers"),
    "pubsub_patterns": ("redis_pubsub_patterns", "gauge", "Pub/sub pattern subscriptions"),
    "expired_stale_perc": ("redis_expired_stale_percentage", "gauge", "Estimated stale keys, percent"),
    "expired_time_cap_reached_count": ("redis_expired_time_cap_reached_total", "gauge",
                                       "Expire cycles stopped by the time limit"),
    # Cluster (INFO cluster, then CLUSTER INFO's fields on cluster nodes)
    "cluster_enabled": ("redis_cluster_enabled", "gauge", "Cluster mode enabled"),
    "cluster_state": ("redis_cluster_state", "gauge", "Cluster state ok (1) or not"),
    "cluster_slots_assigned": ("redis_cluster_slots_assigned", "gauge", "Slots assigned to a node"),
    "cluster_slots_ok": ("redis_cluster_slots_ok", "gauge", "Slots served by a node that is not failing"),
    "cluster_slots_pfail": ("redis_cluster_slots_pfail", "gauge", "Slots of nodes this node thinks are failing"),
    "cluster_slots_fail": ("redis_cluster_slots_fail", "gauge", "Slots of nodes the cluster agrees are failing"),
    "cluster_known_nodes": ("redis_cluster_known_nodes", "gauge", "Nodes this node knows"),
    "cluster_size": ("redis_cluster_size", "gauge", "Primaries serving at least one slot"),
    "cluster_current_epoch": ("redis_cluster_current_epoch", "gauge", "Current epoch of the cluster"),
    "cluster_my_epoch": ("redis_cluster_my_epoch", "gauge", "Config epoch of this node"),
    "cluster_stats_messages_sent": ("redis_cluster_messages_sent_total", "counter", "Cluster bus messages sent"),
    "cluster_stats_messages_received": ("redis_cluster_messages_received_total", "counter",
                                        "Cluster bus messages received"),
    # Replication
    "connected_slaves": ("redis_connected_slaves", "gauge", "Connected replicas"),
    "master_repl_offset": ("redis_master_repl_offset", "gauge", "Replication offset"),
    "second_repl_offset": ("redis_second_repl_offset", "gauge", "Offset up to which replication ids are accepted"),
    "repl_backlog_size": ("redis_replication_backlog_bytes", "gauge", "Replication backlog size"),
    "repl_backlog_active": ("redis_repl_backlog_is_active", "gauge", "Replication backlog active"),
    "repl_backlog_first_byte_offset": ("redis_repl_backlog_first_byte_offset", "gauge",
                                       "First byte offset of the replication backlog"),
    "repl_backlog_histlen": ("redis_repl_backlog_history_bytes", "gauge", "Bytes in the replication backlog"),
    "slave_priority": ("redis_slave_priority", "gauge", "Replica priority"),
    "sync_full": ("redis_replica_resyncs_full", "gauge", "Full resynchronisations"),
    "sync_partial_ok": ("redis_replica_partial_resync_accepted", "gauge", "Partial resyncs accepted"),
    "sync_partial_err": ("redis_replica_partial_resync_denied", "gauge", "Partial resyncs denied"),
    # CPU
    "used_cpu_sys": ("redis_cpu_sys_seconds_total", "counter", "System CPU time"),
    "used_cpu_user": ("redis_cpu_user_seconds_total", "counter", "User CPU time"),
    "used_cpu_sys_children": ("redis_cpu_sys_children_seconds_total", "counter", "System CPU time of children"),
    "used_cpu_user_children": ("redis_cpu_user_children_seconds_total", "counter", "User CPU time of children"),
}

# Labels of redis_instance_info, in redis_exporter's order (valkey_version only when reported).
INSTANCE_INFO_LABELS = ("role", "redis_version", "redis_build_id", "redis_mode", "os", "maxmemory_policy",
                        "tcp_port", "run_id", "process_id", "master_replid")


def _value(raw: str) -> float | None:
    if raw in ("ok", "true"):
        return 1.0
    if raw in ("err", "fail", "false"):
        return 0.0
    return to_float(raw)


class _Families:
    """Metric families built across all instances (each family appears once in the output)."""

    def __init__(self):
        self.families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}

    def add(self, name: str, kind: str, doc: str, labels: dict[str, str], value: float | None) -> None:
        if value is None:
            return
        family = self.families.get(name)
        if family is None:
            family = CounterMetricFamily(name, doc) if kind == "counter" else GaugeMetricFamily(name, doc)
            self.families[name] = family
        sample = family.name + "_total" if kind == "counter" else family.name
        family.add_sample(sample, labels, float(value))

    def gauge(self, name: str, doc: str, labels: dict[str, str], value: float | None) -> None:
        self.add(name, "gauge", doc, labels, value)

    def counter(self, name: str, doc: str, labels: dict[str, str], value: float | None) -> None:
        self.add(name, "counter", doc, labels, value)


def build_families(results, webhook_stats: dict[str, float] | None = None) -> list:
    """All metric families for the given InstanceResults (an iterable)."""
    out = _Families()
    for result in results:
        _instance_families(out, result)
    for outcome, count in sorted((webhook_stats or {}).items()):
        out.counter("redis_infra_webhook_deliveries_total", "Webhook notifications by outcome",
                    {"result": outcome}, count)
    return list(out.families.values())


def _instance_families(out: _Families, result) -> None:
    base = {INSTANCE_LABEL: result.name}
    if result.kind == "sentinel":
        _checker_families(out, result, base)
        _sentinel_families(out, result, base)
        return
    out.gauge("redis_up", "Whether the last check could connect, authenticate and read INFO", base,
              1 if result.up else 0)
    _checker_families(out, result, base)
    _redis_families(out, result, base)


def _checker_families(out: _Families, result, base: dict[str, str]) -> None:
    """The checker's own series about one instance (or the Sentinel)."""
    for check in result.checks:
        out.gauge("redis_infra_health_status", "Check status: 0 healthy, 1 degraded, 2 unhealthy",
                  {**base, "check": check.name}, STATUS_CODES.get(check.status, 2))
    out.gauge("redis_infra_health_status", "Check status: 0 healthy, 1 degraded, 2 unhealthy",
              {**base, "check": "overall"}, STATUS_CODES.get(result.status, 2))
    out.gauge("redis_infra_check_duration_seconds", "Duration of the last check cycle of the instance", base,
              result.duration)
    out.gauge("redis_infra_last_check_timestamp_seconds", "When the last check of the instance started", base,
              result.time)
    out.gauge("redis_infra_ping_latency_seconds", "PING round trip of the last check", base, result.ping_seconds)
    out.gauge("redis_infra_roundtrip_seconds", "SET/GET/DEL (EXISTS on a replica) round trip of the last check",
              base, result.roundtrip_seconds)
    counters = result.counters
    out.counter("redis_infra_checks_total", "Check cycles run", base, counters.get("checks"))
    out.counter("redis_infra_check_failures_total", "Check cycles that ended unhealthy", base,
                counters.get("check_failures"))
    out.counter("redis_infra_check_commands_total", "Commands the checker sent to the instance", base,
                counters.get("commands"))
    out.counter("redis_infra_slow_queries_total", "Slow-log entries at or above the slow query threshold", base,
                counters.get("slow_queries"))


def _redis_families(out: _Families, result, base: dict[str, str]) -> None:
    if result.backup is not None:
        backup = result.backup
        out.gauge("redis_infra_backup_age_seconds", "Age of the last successful backup", base, backup.get("age"))
        if backup.get("success") is not None:
            out.gauge("redis_infra_backup_success", "Whether the last backup succeeded", base,
                      1 if backup["success"] else 0)
        out.gauge("redis_infra_backup_size_bytes", "Size of the last backup", base, backup.get("size"))
        out.gauge("redis_infra_backup_timestamp_seconds", "Time of the last backup attempt", base, backup.get("time"))
    if result.maintenance is not None:      # the maintenance status file exists and follows its contract
        maintenance = result.maintenance
        out.gauge("redis_infra_maintenance_timestamp_seconds", "End of the last maintenance run", base,
                  maintenance["time"])
        out.gauge("redis_infra_maintenance_success", "Whether the last maintenance run succeeded", base,
                  1 if maintenance["success"] else 0)
        out.gauge("redis_infra_maintenance_warnings", "Warnings in the report of the last maintenance run", base,
                  maintenance["warnings"])
        if maintenance["drill_success"] is not None:     # the drill ran (not skipped, not left out)
            out.gauge("redis_infra_backup_drill_success",
                      "Whether the last restore drill restored the backup into a scratch server", base,
                      1 if maintenance["drill_success"] else 0)
            out.gauge("redis_infra_backup_drill_timestamp_seconds", "Time of the last restore drill", base,
                      maintenance["drill_time"])
            out.gauge("redis_infra_backup_drill_duration_seconds", "Duration of the last restore drill", base,
                      maintenance["drill_duration"])
    # like blackbox_exporter's probe_ssl_earliest_cert_expiry; only for instances with tls = true
    out.gauge("redis_infra_tls_certificate_expiry_timestamp_seconds",
              "When the certificate served on the instance's TLS port expires (notAfter, epoch seconds), as read "
              f"by the last TLS handshake (one every {TLS_PROBE_INTERVAL / 60:g} minutes at most)", base,
              result.tls_certificate_expiry)

    info = result.info
    if not info:
        return

    labels = {name: info.get(name, "") for name in INSTANCE_INFO_LABELS}
    if not labels["redis_mode"]:
        labels["redis_mode"] = info.get("server_mode", "")
    if "valkey_version" in info:
        labels["valkey_version"] = info["valkey_version"]
    if result.replication_group:
        labels["replication_group"] = result.replication_group
    out.gauge("redis_instance_info", "Information about the Redis instance", {**base, **labels}, 1)

    for field, (name, kind, doc) in INFO_METRICS.items():
        if field in info:
            out.add(name, kind, doc, base, _value(info[field]))
    uptime = to_float(info.get("uptime_in_seconds"))
    if uptime is not None:
        out.gauge("redis_start_time_seconds", "Start time of the instance (epoch seconds)", base,
                  int(result.time - uptime))
    fork = to_float(info.get("latest_fork_usec"))
    if fork is not None:
        out.gauge("redis_latest_fork_seconds", "Duration of the latest fork", base, fork / 1e6)

    # replication, per role
    if info.get("role") == "slave":
        master = {**base, "master_host": info.get("master_host", ""), "master_port": info.get("master_port", "")}
        out.gauge("redis_master_link_up", "Link to the primary up (replica)", master,
                  1 if info.get("master_link_status") == "up" else 0)
        for field in ("master_last_io_seconds_ago", "master_sync_in_progress", "slave_repl_offset"):
            if field in info:
                out.gauge(f"redis_{field}", f"{field} (replica)", master, to_float(info[field]))
        out.gauge("redis_slave_info", "Information about the replica",
                  {**master, "read_only": info.get("slave_read_only", info.get("replica_read_only", ""))}, 1)
    for entry in replicas(info):
        slave = {**base, "slave_ip": entry.get("ip", ""), "slave_port": entry.get("port", ""),
                 "slave_state": entry.get("state", "")}
        out.gauge("redis_connected_slave_offset_bytes", "Replication offset of a connected replica", slave,
                  to_float(entry.get("offset")))
        if "lag" in entry:
            out.gauge("redis_connected_slave_lag_seconds", "Lag of a connected replica", slave,
                      to_float(entry.get("lag")))

    for db, fields in sorted(keyspace(info).items()):
        labels = {**base, "db": db}
        out.gauge("redis_db_keys", "Keys per database", labels, to_float(fields.get("keys")))
        out.gauge("redis_db_keys_expiring", "Keys with an expiry per database", labels, to_float(fields.get("expires")))
        avg_ttl = to_float(fields.get("avg_ttl"))
        if avg_ttl is not None:
            out.gauge("redis_db_avg_ttl_seconds", "Average TTL per database", labels, avg_ttl / 1000)

    for cmd, (calls, usec) in sorted(commandstats(info).items()):
        labels = {**base, "cmd": cmd}
        out.counter("redis_commands_total", "Calls per command", labels, calls)
        out.counter("redis_commands_duration_seconds_total", "Time spent per command", labels, usec / 1e6)
    for err, count in sorted(errorstats(info).items()):
        out.counter("redis_errors_total", "Error replies per error prefix", {**base, "err": err}, count)

    out.gauge("redis_slowlog_length", "Entries in the slow log", base, result.slowlog_length)
    out.gauge("redis_slowlog_last_id", "Id of the newest slow-log entry", base, result.slowlog_last_id)
    out.gauge("redis_last_slow_execution_duration_seconds", "Duration of the newest slow-log entry", base,
              result.last_slow_duration)


def _sentinel_families(out: _Families, result, base: dict[str, str]) -> None:
    """A Sentinel's series, with redis_exporter's names and labels for a Sentinel target."""
    out.gauge("redis_infra_sentinel_up", "Whether the last check could connect to the host's Sentinel, "
              "authenticate and read INFO", base, 1 if result.up else 0)
    info = result.info
    if not info:
        return
    for field in ("sentinel_masters", "sentinel_tilt", "sentinel_running_scripts", "sentinel_scripts_queue_length",
                  "sentinel_simulate_failure_flags"):
        if field in info:
            out.gauge(f"redis_{field}", f"{field} (Sentinel's INFO)", base, _value(info[field]))
    for master in (result.sentinel or {}).get("masters", []):
        labels = {**base, "master_name": master["name"], "master_address": master["address"]}
        out.gauge("redis_sentinel_master_status",
                  "Status of the primary in this Sentinel's view: 1 ok, 0 sdown or odown",
                  {**labels, "master_status": master["status"]}, 1 if master["status"] == "ok" else 0)
        out.gauge("redis_sentinel_master_slaves", "Replicas of the primary known to Sentinel", labels, master["slaves"])
        out.gauge("redis_sentinel_master_sentinels", "Sentinels watching the primary (this one included)", labels,
                  master["sentinels"])
        out.gauge("redis_sentinel_master_ok_slaves", "Replicas of the primary not down in Sentinel's view", labels,
                  master["ok_slaves"])
        out.gauge("redis_sentinel_master_ok_sentinels", "Sentinels watching the primary not down (this one included)",
                  labels, master["ok_sentinels"])
        out.gauge("redis_sentinel_master_ckquorum_status",
                  "Whether Sentinel can reach the quorum and authorise a failover of the primary (SENTINEL CKQUORUM)",
                  {**base, "master_name": master["name"], "message": master["ckquorum_message"]},
                  1 if master["ckquorum_ok"] else 0)


class ResultsCollector:
    """A prometheus_client collector over a callable returning (results, webhook stats)."""

    def __init__(self, source):
        self.source = source

    def describe(self):
        return []

    def collect(self):
        results, webhook_stats = self.source()
        yield from build_families(results, webhook_stats)


def make_registry(source, process_metrics: bool = True) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ResultsCollector(source))
    if process_metrics:
        from prometheus_client import ProcessCollector

        ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(registry)
