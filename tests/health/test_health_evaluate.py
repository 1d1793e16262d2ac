"""The pure check evaluations, on INFO text written for these tests (Redis 7.0, Redis 8, Valkey 8
shapes), and the metrics built from them. No server needed."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from redis_infra.health import DEGRADED, HEALTHY, UNHEALTHY, worst
from redis_infra.health.checks import (
    CheckResult,
    InstanceResult,
    InstanceState,
    TLSProbe,
    describe_error,
    evaluate_backup,
    evaluate_clients,
    evaluate_counter_delta,
    evaluate_memory,
    evaluate_persistence,
    evaluate_replication,
    evaluate_slowlog,
    evaluate_tls_certificate,
    evaluate_uptime,
    parse_time,
    select_new_slow_entries,
)
from redis_infra.health.config import InstanceConfig, Thresholds
from redis_infra.health.info import SlowEntry, command_name, parse_info, parse_slowlog, server_kind
from redis_infra.health.metrics import build_families

T = Thresholds()


def info(**fields) -> dict[str, str]:
    return {key: str(value) for key, value in fields.items()}


VALKEY8_INFO = """# Server\r
redis_version:7.2.4\r
server_name:valkey\r
valkey_version:8.0.2\r
redis_mode:standalone\r
os:Linux 6.1.0 x86_64\r
process_id:4242\r
run_id:aaaabbbbccccddddeeeeffff0000111122223333\r
tcp_port:6380\r
uptime_in_seconds:3600\r
\r
# Clients\r
connected_clients:12\r
maxclients:100\r
blocked_clients:0\r
\r
# Memory\r
used_memory:900000\r
maxmemory:1000000\r
maxmemory_policy:allkeys-lru\r
\r
# Persistence\r
rdb_last_bgsave_status:ok\r
aof_enabled:1\r
aof_last_write_status:err\r
rdb_last_save_time:1700000000\r
rdb_changes_since_last_save:5\r
\r
# Replication\r
role:master\r
connected_slaves:2\r
slave0:ip=10.0.0.2,port=6380,state=online,offset=1000,lag=0\r
slave1:ip=10.0.0.3,port=6380,state=wait_bgsave,offset=0,lag=45\r
master_replid:0123456789abcdef0123456789abcdef01234567\r
master_repl_offset:1000\r
\r
# Commandstats\r
cmdstat_get:calls=10,usec=20,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r
cmdstat_client|setname:calls=3,usec=3,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r
\r
# Errorstats\r
errorstat_WRONGPASS:count=2\r
\r
# Keyspace\r
db0:keys=5,expires=1,avg_ttl=2000\r
db3:keys=1,expires=0,avg_ttl=0\r
"""


def test_parse_info_and_server_kind():
    fields = parse_info(VALKEY8_INFO)
    assert fields["role"] == "master"
    assert fields["slave1"].startswith("ip=10.0.0.3")
    assert server_kind(fields) == ("valkey", "8.0.2")
    assert server_kind(info(redis_version="7.0.15")) == ("redis", "7.0.15")          # Redis 7.0: no server_name
    assert server_kind(info(redis_version="8.0.2", server_name="redis")) == ("redis", "8.0.2")


def test_memory_thresholds():
    assert evaluate_memory(info(used_memory=100, maxmemory=0), T).status == HEALTHY
    assert evaluate_memory(info(used_memory=100, maxmemory=0), T).value is None
    assert evaluate_memory(info(used_memory=79, maxmemory=100), T).status == HEALTHY
    degraded = evaluate_memory(info(used_memory=80, maxmemory=100), T)
    assert (degraded.status, degraded.value, degraded.threshold) == (DEGRADED, 80.0, {"degraded": 80, "unhealthy": 95})
    assert evaluate_memory(info(used_memory=95, maxmemory=100), T).status == UNHEALTHY
    custom = Thresholds({**T.values, "memory_degraded_percent": 50.0})
    assert evaluate_memory(info(used_memory=60, maxmemory=100), custom).status == DEGRADED


def test_clients_from_info_maxclients():
    fields = parse_info(VALKEY8_INFO)
    result = evaluate_clients(fields, T)
    assert (result.status, result.value) == (HEALTHY, 12.0)
    assert evaluate_clients(info(connected_clients=85, maxclients=100), T).status == DEGRADED
    assert evaluate_clients(info(connected_clients=99, maxclients=100), T).status == UNHEALTHY
    old = evaluate_clients(info(connected_clients=5), T)     # no maxclients reported
    assert old.status == HEALTHY and "not reported" in old.reason


def test_uptime_restart_detection():
    state = InstanceState()
    assert evaluate_uptime(info(uptime_in_seconds=5, run_id="a"), state).status == HEALTHY  # first check
    state.run_id, state.uptime = "a", 5
    assert evaluate_uptime(info(uptime_in_seconds=35, run_id="a"), state).status == HEALTHY
    restarted = evaluate_uptime(info(uptime_in_seconds=2, run_id="b"), state)
    assert restarted.status == DEGRADED and "restarted" in restarted.reason


def test_replication_primary_with_lagging_and_syncing_replica():
    result = evaluate_replication(parse_info(VALKEY8_INFO), T)
    assert result.status == DEGRADED
    assert result.value == 45
    assert "10.0.0.3:6380 lags 45 s" in result.reason and "wait_bgsave" in result.reason
    assert result.details["connected_replicas"] == 2
    unhealthy = evaluate_replication(info(role="master", connected_slaves=1,
                                          slave0="ip=1.2.3.4,port=1,state=online,offset=5,lag=500"), T)
    assert unhealthy.status == UNHEALTHY
    missing = evaluate_replication(info(role="master", connected_slaves=0), T, expected_replicas=1)
    assert missing.status == DEGRADED and "0 of 1 expected replicas" in missing.reason
    alone = evaluate_replication(info(role="master", connected_slaves=0), T)
    assert alone.status == HEALTHY


def test_replication_replica():
    up = evaluate_replication(info(role="slave", master_host="10.0.0.1", master_port=6379, master_link_status="up",
                                   master_last_io_seconds_ago=1, slave_repl_offset=10), T)
    assert (up.status, up.value) == (HEALTHY, 1)
    lagging = evaluate_replication(info(role="slave", master_host="h", master_port=1, master_link_status="up",
                                        master_last_io_seconds_ago=40), T)
    assert lagging.status == DEGRADED and "lagging" in lagging.reason
    down = evaluate_replication(info(role="slave", master_host="h", master_port=1, master_link_status="down",
                                     master_last_io_seconds_ago=-1, master_link_down_since_seconds=12), T)
    assert down.status == UNHEALTHY
    assert "link to primary h:1 is down for 12 s" in down.reason


def test_persistence():
    now = time.time()
    fields = parse_info(VALKEY8_INFO)
    result = evaluate_persistence(fields, T, now)
    assert result.status == UNHEALTHY and "AOF write failed" in result.reason
    ok = evaluate_persistence(info(rdb_last_bgsave_status="ok", rdb_last_save_time=int(now) - 10,
                                   rdb_changes_since_last_save=3, aof_enabled=0), T, now)
    assert ok.status == HEALTHY and 9 <= ok.value <= 11
    assert evaluate_persistence(info(rdb_last_bgsave_status="err"), T, now).status == UNHEALTHY
    strict = Thresholds({**T.values, "last_save_degraded_seconds": 5.0})
    stale = evaluate_persistence(info(rdb_last_bgsave_status="ok", rdb_last_save_time=int(now) - 10,
                                      rdb_changes_since_last_save=3), strict, now)
    assert stale.status == DEGRADED and "not saved" in stale.reason


def test_counter_delta():
    first, delta = evaluate_counter_delta("evicted_keys", "evicted keys", 10, None, False, 1)
    assert (first.status, delta) == (HEALTHY, 0)
    same, delta = evaluate_counter_delta("evicted_keys", "evicted keys", 10, 10, False, 1)
    assert (same.status, delta) == (HEALTHY, 0)
    more, delta = evaluate_counter_delta("evicted_keys", "evicted keys", 13, 10, False, 1)
    assert (more.status, delta, more.value) == (DEGRADED, 3, 3)
    after_restart, delta = evaluate_counter_delta("rejected_connections", "rejected", 2, 10, True, 1)
    assert (after_restart.status, delta) == (DEGRADED, 2)
    disabled, _ = evaluate_counter_delta("evicted_keys", "evicted keys", 13, 10, False, 0)
    assert disabled.status == HEALTHY


def test_slowlog_selection_and_threshold():
    now = int(time.time())
    reply = [[7, now - 1, 250_000, ["DEBUG", "SLEEP", "0.25"], "127.0.0.1:1", ""],
             [6, now - 100, 150_000, ["KEYS", "*"], "127.0.0.1:1", "app"],
             [5, now - 1, 20_000, ["SET", "k", "v"]]]
    entries = parse_slowlog(reply)
    assert [entry.id for entry in entries] == [7, 6, 5]
    assert entries[1].client_name == "app"
    first = select_new_slow_entries(entries, None, now, 30)        # first check: last interval only
    assert {entry.id for entry in first} == {7, 5}
    result = evaluate_slowlog(first, T, first=True)
    assert (result.status, result.value) == (DEGRADED, 1)
    assert "DEBUG SLEEP (250.0 ms)" in result.reason and "0.25" not in result.reason
    assert [entry.command for entry in entries] == ["DEBUG SLEEP", "KEYS", "SET"]      # names, no arguments
    later = select_new_slow_entries(entries, 6, now, 30)
    assert [entry.id for entry in later] == [7]
    assert evaluate_slowlog(select_new_slow_entries(entries, 7, now, 30), T, first=False).status == HEALTHY
    assert parse_slowlog("garbage") == [] and parse_slowlog([[1, 2]]) == []


def test_parse_time_forms():
    assert parse_time(1700000000) == 1700000000
    assert parse_time("1700000000") == 1700000000
    assert parse_time("2023-11-14T22:13:20Z") == 1700000000
    assert parse_time("2023-11-14T22:13:20+00:00") == 1700000000
    assert parse_time("2023-11-14T22:13:20") == 1700000000          # naive means UTC
    assert parse_time("2023-11-15T00:13:20+02:00") == 1700000000
    for bad in ("yesterday", None, True, [1]):
        with pytest.raises((ValueError, TypeError)):
            parse_time(bad)


def _backup(tmp_path, data, **instance) -> tuple[CheckResult, dict]:
    path = tmp_path / "status.json"
    if data is not None:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    config = InstanceConfig(name="main", connection_file="/x", backup_status_file=str(path), **instance)
    return evaluate_backup(config, T, time.time())


def test_backup_status_file(tmp_path):
    now = time.time()
    missing, summary = _backup(tmp_path, None)
    assert missing.status == DEGRADED and "missing" in missing.reason and summary["age"] is None
    fresh, summary = _backup(tmp_path, {"time": now - 60, "result": "ok", "file": "/b/x.rdb", "size": 1234})
    assert fresh.status == HEALTHY and 59 <= fresh.value <= 62
    assert summary == {"age": pytest.approx(60, abs=2), "success": True, "size": 1234, "time": pytest.approx(now - 60)}
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 100000))
    stale, _ = _backup(tmp_path, {"time": iso, "result": "ok"})
    assert stale.status == DEGRADED and "stale" in stale.reason
    very_stale, _ = _backup(tmp_path, {"time": now - 200000, "result": "ok"})
    assert very_stale.status == UNHEALTHY
    per_instance, _ = _backup(tmp_path, {"time": now - 5000, "result": "ok"}, max_backup_age=3600)
    assert per_instance.status == DEGRADED and per_instance.threshold == {"degraded": 3600, "unhealthy": 7200}
    failed, summary = _backup(tmp_path, {"time": now - 10, "result": "failed", "error": "disk full"})
    assert failed.status == DEGRADED and "failed: disk full" in failed.reason and summary["success"] is False
    garbage, _ = _backup(tmp_path, "{not json")
    assert garbage.status == DEGRADED and "not valid JSON" in garbage.reason
    no_time, _ = _backup(tmp_path, {"result": "ok"})
    assert no_time.status == DEGRADED and "'time'" in no_time.reason


def test_tls_certificate_days_left():
    now = 1_800_000_000.0
    day = 86400
    cases = [
        # (days left, status)
        (400, HEALTHY),
        (21, HEALTHY),          # degraded below 21 days, not at 21
        (20.9, DEGRADED),
        (7, DEGRADED),
        (6.9, UNHEALTHY),
        (-2, UNHEALTHY),        # expired since the last handshake
    ]
    for days, status in cases:
        probe = TLSProbe("127.0.0.1:6380", 0.0, now - 60, not_after=now + days * day)
        check = evaluate_tls_certificate(probe, T, now)
        assert (check.name, check.status, check.value, check.unit) == ("tls_certificate", status, days, "d"), days
        assert check.threshold == {"degraded": 21, "unhealthy": 7}
        assert check.details["not_after"] == datetime.fromtimestamp(now + days * day, UTC).isoformat(
            timespec="seconds").replace("+00:00", "Z")
    assert evaluate_tls_certificate(TLSProbe("h:1", 0, now, not_after=now + 45 * day), T, now).reason == \
        "the certificate on h:1 expires in 45.0 d (2027-03-01T08:00:00Z)"
    soon = evaluate_tls_certificate(TLSProbe("h:1", 0, now, not_after=now + 10 * day), T, now)
    assert soon.reason.endswith("expires in 10.0 d (2027-01-25T08:00:00Z), below the degraded threshold of 21 days")
    gone = evaluate_tls_certificate(TLSProbe("h:1", 0, now, not_after=now - 3600), T, now)
    assert gone.reason.startswith("the certificate on h:1 expired 60 min ago") and "unhealthy threshold" in gone.reason
    failed = evaluate_tls_certificate(TLSProbe("h:1", 0, now, error="certificate not accepted: certificate has "
                                                                       "expired"), T, now)
    assert failed.status == UNHEALTHY and failed.value is None
    assert failed.reason == "TLS handshake with h:1 failed: certificate not accepted: certificate has expired"
    lenient = Thresholds({**T.values, "tls_expiry_degraded_days": 5.0, "tls_expiry_unhealthy_days": 1.0})
    assert evaluate_tls_certificate(TLSProbe("h:1", 0, now, not_after=now + 3 * day), lenient, now).status == DEGRADED


def test_describe_error_mentions_auth():
    from redis import exceptions as rex

    assert describe_error(rex.ResponseError("WRONGPASS invalid username-password pair"), 1).startswith("auth failed")
    assert describe_error(rex.AuthenticationError("Authentication required."), 1).startswith("auth failed")
    assert describe_error(rex.ResponseError("NOAUTH Authentication required."), 1).startswith("auth failed")
    assert "permission denied" in describe_error(rex.ResponseError("NOPERM this user has no permissions"), 1)
    assert describe_error(rex.TimeoutError("Timeout reading"), 2).startswith("timed out after 2 s")
    assert describe_error(rex.ConnectionError("Error 111 connecting"), 2).startswith("cannot connect")
    assert describe_error(rex.ConnectionError("Error 1 connecting to h:1. [SSL: CERTIFICATE_VERIFY_FAILED] certificate "
                                              "verify failed"), 2).startswith("TLS failed (the server's certificate")


def test_worst():
    assert worst([]) == HEALTHY
    assert worst([HEALTHY, DEGRADED]) == DEGRADED
    assert worst([DEGRADED, UNHEALTHY, HEALTHY]) == UNHEALTHY


def test_metrics_from_valkey_info_use_exporter_names():
    fields = parse_info(VALKEY8_INFO)
    result = InstanceResult(name="main", address="x", checks=[CheckResult("ping", HEALTHY, 0.1, None, "ok")],
                            time=time.time(), duration=0.01, up=True, info=fields, slowlog_length=3,
                            slowlog_last_id=9, last_slow_duration=0.2, replication_group="grp",
                            counters={"checks": 1, "check_failures": 0, "commands": 9, "slow_queries": 0})
    from prometheus_client.core import CollectorRegistry

    from redis_infra.health.metrics import ResultsCollector, render

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ResultsCollector(lambda: ([result], {"ok": 1})))
    text = render(registry).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name, instance="main", **labels):
        if instance:
            labels["redis_instance"] = instance
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("redis_up") == 1
    assert value("redis_connected_clients") == 12
    assert value("redis_config_maxclients") == 100
    assert value("redis_memory_max_bytes") == 1_000_000
    assert value("redis_aof_last_write_status") == 0
    assert value("redis_rdb_last_bgsave_status") == 1
    assert value("redis_connected_slave_lag_seconds", slave_ip="10.0.0.3", slave_port="6380",
                 slave_state="wait_bgsave") == 45
    assert value("redis_commands_total", cmd="client|setname") == 3
    assert value("redis_commands_duration_seconds_total", cmd="get") == pytest.approx(20e-6)
    assert value("redis_db_keys", db="db3") == 1
    assert value("redis_db_avg_ttl_seconds", db="db0") == 2
    assert value("redis_errors_total", err="WRONGPASS") == 2
    assert value("redis_slowlog_length") == 3
    assert ("redis_infra_tls_certificate_expiry_timestamp_seconds", (("redis_instance", "main"),)) not in samples
    assert value("redis_infra_webhook_deliveries_total", instance=None, result="ok") == 1
    info_sample = [labels for (name, labels) in samples if name == "redis_instance_info"][0]
    labels = dict(info_sample)
    assert labels["valkey_version"] == "8.0.2" and labels["redis_version"] == "7.2.4"
    assert labels["role"] == "master" and labels["replication_group"] == "grp"
    assert labels["maxmemory_policy"] == "allkeys-lru" and labels["tcp_port"] == "6380"
    assert set(labels) >= {"role", "redis_version", "redis_build_id", "redis_mode", "os", "maxmemory_policy",
                           "tcp_port", "run_id", "process_id", "master_replid", "redis_instance"}
    # each family appears once even with several instances
    families = build_families([result, result])
    names = [family.name for family in families]
    assert len(names) == len(set(names))


def test_slow_entry_describe():
    assert SlowEntry(1, 0, 123456, "KEYS").describe() == "KEYS (123.5 ms)"


def test_command_name_drops_every_argument():
    cases = [
        (["GET", "user:secret-token"], "GET"),
        (["set", "k", "hunter2"], "SET"),
        (["EVAL", "return 1", "0"], "EVAL"),
        (["AUTH", "alice", "hunter2"], "AUTH"),
        (["ACL", "SETUSER", "app", ">hunter2"], "ACL SETUSER"),
        (["config", "set", "requirepass", "hunter2"], "CONFIG SET"),
        (["CLIENT", "KILL", "ID", "7"], "CLIENT KILL"),
        (["CLIENT", "s3cr3t value"], "CLIENT"),           # not a subcommand name: left out
        ([b"FT.SEARCH", b"idx", b"@name:secret"], "FT.SEARCH"),
        (["hunter2 with spaces", "x"], "?"),
        ([], "?"),
    ]
    assert [command_name(args) for args, _ in cases] == [name for _, name in cases]
