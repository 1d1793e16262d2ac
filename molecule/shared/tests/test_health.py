"""The health checker on a converged host: a hardened service that reports what Redis does."""

from __future__ import annotations

import json
import time

import pytest
import tls_setup
from checker import get

# Redis hosts only (a scenario may have a monitoring host: test_monitoring.py).
testinfra_hosts = ["ansible://redis"]


@pytest.fixture(scope="module")
def instances(host):
    return host.ansible.get_variables().get("redis_server_instances", [{"name": "main", "port": 6379}])


def wait_for(host, path, wanted, seconds=30):
    deadline = time.monotonic() + seconds
    while True:
        status, body = get(host, path)
        if status == wanted or time.monotonic() > deadline:
            return status, body
        time.sleep(1)


def test_checker_runs_hardened_as_its_own_user(host):
    service = host.service("redis-health.service")
    assert service.is_running and service.is_enabled
    users = host.check_output("ps -o user= -C python3").split()
    assert "redis-he+" in users or "redis-health" in users
    assert host.user("redis-health").shell == "/usr/sbin/nologin"
    unit = host.check_output("systemctl cat redis-health.service")
    for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "User=redis-health"):
        assert setting in unit
    assert "Environment=" not in unit
    config = host.file("/etc/redis-infra/health.toml")
    assert config.mode == 0o640 and config.group == "redis-health"


def test_health_endpoints_answer(host, instances):
    status, body = wait_for(host, "/api/health", 200)
    assert status == 200, body
    assert json.loads(body)["status"] in ("healthy", "degraded")
    status, body = get(host, "/api/health/redis")
    detail = json.loads(body)
    assert status == 200
    assert {i["name"] for i in instances} <= {i["name"] for i in detail["instances"]}
    assert all(check["reason"] for i in detail["instances"] for check in i["checks"])
    status, metrics = get(host, "/metrics")
    assert status == 200
    for instance in instances:
        assert f'redis_up{{redis_instance="{instance["name"]}"}} 1.0' in metrics


def test_health_endpoints_answer_on_backups_and_certificates(host, instances):
    """The checks that read what other parts of the host made: the backup status files (the checker, not
    root, must be able to read them) and, with TLS, the certificate the port serves."""
    variables = host.ansible.get_variables()
    _, body = get(host, "/api/health/redis")
    checks = {(i["name"], check["name"]): check for i in json.loads(body)["instances"] for check in i["checks"]}
    for instance in instances:
        backup = checks.get((instance["name"], "backup"))
        if backup is not None:
            assert "Permission denied" not in backup["reason"] and "cannot read" not in backup["reason"], backup
        if tls_setup.tls_on(variables):
            certificate = checks[(instance["name"], "tls_certificate")]
            assert certificate["status"] == "healthy" and certificate["value"] > 300, certificate


def test_stopped_redis_turns_health_unhealthy_and_back(host, instances):
    unit = f"{host.ansible.get_variables().get('redis_server_engine', 'redis')}-server@{instances[0]['name']}.service"
    host.run_test(f"systemctl stop {unit}")
    try:
        status, body = wait_for(host, "/api/health", 503)
        assert status == 503, body
        assert json.loads(body)["status"] == "unhealthy"
    finally:
        host.run_test(f"systemctl start {unit}")
    status, body = wait_for(host, "/api/health", 200)
    assert status == 200, body
