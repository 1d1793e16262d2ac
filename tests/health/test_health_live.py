"""Against real redis-server processes, with the checker running as the monitoring ACL user built
from REQUIRED_ACL (so every passing test also proves the ACL list is sufficient)."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time

import pytest
from health_helpers import MONITOR_PASSWORD, check_of, instance_of, run_cli, stopped, write_connection_file

from redis_infra.health import DEGRADED, HEALTHY, UNHEALTHY, worst
from redis_infra.health.service import Monitor

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def assert_no_acl_denials(instance):
    """The monitoring user was never refused a command or key."""
    entries = instance.admin().execute_command("ACL", "LOG")
    denied = [entry for entry in entries if "monitor" in json.dumps(entry, default=str)]
    assert denied == [], denied


def test_healthy_instance_as_monitor_user(make_instance, health_config):
    instance = make_instance()
    instance.admin().set("app:key", "v")
    config, _ = health_config([instance])
    monitor = Monitor(config)
    snapshot = monitor.run_once()
    (result,) = snapshot.results
    assert result.up and result.status == HEALTHY, [c.to_dict() for c in result.checks]
    names = [check.name for check in result.checks]
    assert names == ["connection", "ping", "roundtrip", "memory", "clients", "uptime", "replication", "persistence",
                     "slowlog", "rejected_connections", "evicted_keys"]
    for check in result.checks:
        assert check.status == HEALTHY and check.reason
    assert "as monitor" in result.check("connection").reason
    assert result.check("roundtrip").reason.startswith("SET/GET/DEL")
    assert result.info["role"] == "master"
    # a second cycle: still healthy, the health key was removed again
    assert monitor.run_once().status == HEALTHY
    admin = instance.admin()
    assert admin.keys("redis-infra:health:*") == []
    clients = admin.execute_command("CLIENT", "LIST")
    assert "redis-infra-health" not in str(clients)       # connection closed after each cycle
    stats = admin.info("commandstats")
    assert stats["cmdstat_ping"]["calls"] == 2
    assert_no_acl_denials(instance)


def test_http_endpoints_and_stop_start(make_instance, health_config, run_checker):
    instance = make_instance()
    config, _ = health_config([instance])
    checker = run_checker(config)
    checker.wait_for(lambda d: d["status"] == HEALTHY, what="first healthy cycle")
    status, headers, body = checker.get("/api/health")
    assert status == 200 and headers["Content-Type"] == "application/json"
    health = json.loads(body)
    assert health["status"] == HEALTHY and health["instances"] == {"main": HEALTHY}
    status, detail = checker.get_json("/api/health/redis")
    entry = instance_of(detail, "main")
    server = instance.admin().info("server")
    assert entry["server"] == server.get("server_name", "redis")       # valkey reports server_name
    assert entry["version"] == server.get("valkey_version", server["redis_version"])
    assert entry["role"] == "master" and entry["up"] is True
    for check in entry["checks"]:
        assert set(check) >= {"name", "status", "value", "threshold", "reason"}
    status, headers, body = checker.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b'redis_up{redis_instance="main"} 1.0' in body
    assert checker.get("/nope")[0] == 404

    # the server goes away: unhealthy and 503 within about one interval
    instance.proc.stop()
    stopped_at = time.monotonic()
    detail = checker.wait_for(lambda d: d["status"] == UNHEALTHY, timeout=config.interval + config.timeout + 2,
                              what="unhealthy after stop")
    assert time.monotonic() - stopped_at < config.interval + 1.0     # within about one interval
    connection = check_of(detail, "main", "connection")
    assert connection["status"] == UNHEALTHY and "cannot connect" in connection["reason"]
    status, health = checker.get_json("/api/health")
    assert status == 503 and health["status"] == UNHEALTHY
    assert b'redis_up{redis_instance="main"} 0.0' in checker.get("/metrics")[2]

    # it comes back: no longer unhealthy (the restart is reported as degraded first), then healthy
    instance.proc.start()
    detail = checker.wait_for(lambda d: d["status"] != UNHEALTHY, what="recovery")
    status, _ = checker.get_json("/api/health")
    assert status == 200
    checker.wait_for(lambda d: d["status"] == HEALTHY, what="healthy again")


def test_unix_socket_connection(make_instance, health_config, tmp_path):
    sock_path = tmp_path / "redis.sock"
    instance = make_instance(extra=f"unixsocket {sock_path}\nunixsocketperm 700\n")
    conn_file = tmp_path / "socket-conn.toml"
    conn_file.write_text(f'name = "main"\nport = {instance.port}\nunix_socket = "{sock_path}"\n'
                         f'username = "monitor"\npassword = "{MONITOR_PASSWORD}"\n')
    conn_file.chmod(0o600)
    config, _ = health_config([{"name": "main", "connection_file": str(conn_file)}])
    result = Monitor(config).run_once().results[0]
    assert result.status == HEALTHY, [c.to_dict() for c in result.checks]
    assert result.address == str(sock_path)
    assert str(sock_path) in result.check("connection").reason


def test_restart_between_checks_is_degraded(make_instance, health_config):
    instance = make_instance()
    config, _ = health_config([instance])
    monitor = Monitor(config)
    assert monitor.run_once().status == HEALTHY
    instance.proc.stop()
    instance.proc.start()
    result = monitor.run_once().results[0]
    uptime = result.check("uptime")
    assert uptime.status == DEGRADED and "restarted" in uptime.reason
    assert monitor.run_once().status == HEALTHY


@pytest.mark.parametrize(("username", "password", "extra"), [
    ("monitor", "wrong-password", ""),            # WRONGPASS
    (None, None, "requirepass adminpw\n"),        # NOAUTH
])
def test_wrong_password_is_unhealthy_auth(make_instance, health_config, username, password, extra):
    instance = make_instance(username=username, password=password, extra=extra)
    config, _ = health_config([instance])
    result = Monitor(config).run_once().results[0]
    assert result.status == UNHEALTHY and not result.up
    connection = result.check("connection")
    assert connection.status == UNHEALTHY
    assert "auth" in connection.reason.lower(), connection.reason
    assert [check.name for check in result.checks] == ["connection"]


def test_missing_connection_file_is_unhealthy(make_instance, health_config, tmp_path):
    config, _ = health_config([{"name": "main", "connection_file": str(tmp_path / "missing.toml")}])
    result = Monitor(config).run_once().results[0]
    assert result.status == UNHEALTHY
    assert "connection file" in result.check("connection").reason


def test_memory_near_maxmemory(make_instance, health_config):
    instance = make_instance(extra="maxmemory 4mb\nmaxmemory-policy noeviction\n")
    config, _ = health_config([instance])
    monitor = Monitor(config)
    assert monitor.run_once().results[0].check("memory").status == HEALTHY
    admin = instance.admin()
    value = "x" * 8192
    index = 0

    def used_percent():
        memory = admin.info("memory")
        return memory["used_memory"] * 100 / memory["maxmemory"]

    while used_percent() < 85:
        pipe = admin.pipeline(transaction=False)
        for _ in range(10):
            pipe.set(f"fill:{index}", value)
            index += 1
        pipe.execute()
    result = monitor.run_once().results[0]
    memory = result.check("memory")
    assert memory.status == DEGRADED, memory
    assert 80 <= memory.value < 95
    assert result.status == DEGRADED

    import redis

    with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
        while True:
            admin.set(f"fill:{index}", value)
            index += 1
    result = monitor.run_once().results[0]
    memory = result.check("memory")
    assert memory.status == UNHEALTHY and memory.value >= 95, memory
    roundtrip = result.check("roundtrip")
    assert roundtrip.status == UNHEALTHY and "maxmemory" in roundtrip.reason
    assert result.status == UNHEALTHY


def test_replica_whose_primary_is_gone(make_instance, health_config):
    primary = make_instance(name="primary", extra="repl-diskless-sync-delay 0\n")
    replica = make_instance(name="replica", extra=f"replicaof 127.0.0.1 {primary.port}\n")
    deadline = time.monotonic() + 10
    while replica.admin().info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "replica never synced"
        time.sleep(0.05)
    config, _ = health_config([primary, replica])
    monitor = Monitor(config)
    snapshot = monitor.run_once()
    by_name = {result.name: result for result in snapshot.results}
    assert by_name["replica"].status == HEALTHY, [c.to_dict() for c in by_name["replica"].checks]
    repl = by_name["replica"].check("replication")
    assert repl.details["role"] == "replica" and repl.details["master_link_status"] == "up"
    assert by_name["replica"].check("roundtrip").reason.startswith("EXISTS")
    assert by_name["primary"].check("replication").details["connected_replicas"] == 1

    primary.proc.stop()
    deadline = time.monotonic() + 10
    while replica.admin().info("replication").get("master_link_status") == "up":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    snapshot = monitor.run_once()
    by_name = {result.name: result for result in snapshot.results}
    repl = by_name["replica"].check("replication")
    assert repl.status == UNHEALTHY
    assert f"link to primary 127.0.0.1:{primary.port} is down" in repl.reason
    assert by_name["primary"].check("connection").status == UNHEALTHY
    assert_no_acl_denials(replica)


def test_slow_command_is_reported_once(make_instance, health_config):
    instance = make_instance(extra="enable-debug-command yes\n")
    config, _ = health_config([instance])
    monitor = Monitor(config)
    assert monitor.run_once().results[0].check("slowlog").status == HEALTHY
    instance.admin().execute_command("DEBUG", "SLEEP", "0.2")
    result = monitor.run_once().results[0]
    slowlog = result.check("slowlog")
    assert slowlog.status == DEGRADED and slowlog.value == 1
    assert "DEBUG SLEEP (" in slowlog.reason and "0.2 (" not in slowlog.reason    # the name, not the argument
    assert result.counters["slow_queries"] == 1
    assert b'redis_infra_slow_queries_total{redis_instance="main"} 1.0' in monitor.snapshot.metrics_body
    # the same entry is not counted twice; a fast command is not a slow query
    instance.admin().execute_command("DEBUG", "SLEEP", "0.02")
    result = monitor.run_once().results[0]
    assert result.check("slowlog").status == HEALTHY
    assert result.counters["slow_queries"] == 1
    assert result.slowlog_length >= 2


def _hammer(checker, seconds: float) -> list[float]:
    """Request /api/health and /metrics for `seconds`; returns every latency (seconds)."""
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for path in ("/api/health", "/metrics"):
            t0 = time.monotonic()
            status, _, _ = checker.get(path, timeout=2)
            latencies.append(time.monotonic() - t0)
            assert status in (200, 503)
    return latencies


def test_http_stays_fast_while_redis_hangs_in_debug_sleep(make_instance, health_config, run_checker):
    instance = make_instance(extra="enable-debug-command yes\n")
    config, _ = health_config([instance], interval=0.3, timeout=0.4)
    checker = run_checker(config)
    checker.wait_for(lambda d: d["status"] == HEALTHY, what="healthy")
    sleeper = threading.Thread(target=lambda: instance.admin().execute_command("DEBUG", "SLEEP", "2"))
    sleeper.start()
    try:
        latencies = _hammer(checker, 1.2)
        detail = checker.wait_for(lambda d: d["status"] == UNHEALTHY, timeout=2, what="unhealthy while hung")
        reason = check_of(detail, "main", "connection")["reason"]
        assert "timed out" in reason or "did not finish" in reason, reason
    finally:
        sleeper.join(10)
    assert max(latencies) < 0.5, max(latencies)        # Redis hangs for 2 s (1.2 s stopped)
    checker.wait_for(lambda d: d["status"] != UNHEALTHY, timeout=5, what="recovery after DEBUG SLEEP")


def test_http_stays_fast_while_redis_is_stopped_with_sigstop(make_instance, health_config, run_checker):
    instance = make_instance()
    config, _ = health_config([instance], interval=0.3, timeout=0.4)
    checker = run_checker(config)
    checker.wait_for(lambda d: d["status"] == HEALTHY, what="healthy")
    with stopped(instance.proc):
        latencies = _hammer(checker, 1.2)
        status, health = checker.get_json("/api/health")
        assert status == 503 and health["status"] == UNHEALTHY
    assert max(latencies) < 0.5, max(latencies)        # Redis hangs for 2 s (1.2 s stopped)
    checker.wait_for(lambda d: d["status"] == HEALTHY, timeout=5, what="healthy after SIGCONT")


def test_fifty_concurrent_http_clients(make_instance, health_config, run_checker):
    instance = make_instance()
    config, _ = health_config([instance])
    checker = run_checker(config)
    checker.wait_for(lambda d: d["status"] == HEALTHY, what="healthy")

    def client(n):
        codes = []
        for i in range(10):
            codes.append(checker.get("/api/health" if (n + i) % 2 else "/metrics")[0])
        return codes

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        codes = [code for result in pool.map(client, range(50)) for code in result]
    assert codes == [200] * 500


def test_check_command_exit_codes_and_json(make_instance, health_config, tmp_path):
    instance = make_instance()
    _, healthy_path = health_config([instance])
    result = run_cli("check", "--config", str(healthy_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("REDIS-HEALTH OK - healthy")
    assert "main ping: healthy" in result.stdout

    # degraded: the configured backup status file does not exist
    _, degraded_path = health_config([{"name": "main", "connection_file": str(instance.conn_file),
                                       "backup_status_file": str(tmp_path / "no-backup.json")}])
    result = run_cli("check", "--config", str(degraded_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("REDIS-HEALTH WARNING - degraded")
    assert "main backup: degraded" in result.stdout

    result = run_cli("check", "--json", "--config", str(degraded_path))
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["status"] == DEGRADED and data["exit_code"] == 1
    assert check_of(data, "main", "backup")["status"] == DEGRADED

    # unhealthy: nothing listens on the port
    dead = write_connection_file(tmp_path / "dead.toml", "dead", instance.port, "monitor", "x")
    instance.proc.stop()
    _, unhealthy_path = health_config([{"name": "dead", "connection_file": str(dead)}])
    result = run_cli("check", "--json", "--config", str(unhealthy_path))
    assert result.returncode == 2, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == UNHEALTHY and data["exit_code"] == 2
    assert check_of(data, "dead", "connection")["status"] == UNHEALTHY


def test_several_instances_overall_is_worst(make_instance, health_config, tmp_path):
    good = make_instance(name="good")
    bad = make_instance(name="bad", username="monitor", password="nope")
    config, _ = health_config([good, bad])
    snapshot = Monitor(config).run_once()
    statuses = {result.name: result.status for result in snapshot.results}
    assert statuses == {"good": HEALTHY, "bad": UNHEALTHY}
    assert snapshot.status == worst(statuses.values()) == UNHEALTHY
    assert snapshot.health_code == 503
