"""files/redis.conf.j2 and the ACL template, rendered by the role and loaded by a real redis-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.conftest import REDIS_SERVER, RedisProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
PASSWORDS = {
    "redis_server_password": "app-password-for-the-fast-tests-0123456789",
    "redis_server_admin_password": "admin-password-for-the-fast-tests-0123456789",
    "redis_server_monitor_password": "monitor-password-for-the-fast-tests-0123456789",
    "redis_server_backup_password": "backup-password-for-the-fast-tests-0123456789",
}
CASES = {
    "development-redis": {"redis_server_profile": "development", "redis_server_engine": "redis"},
    "production-redis": {"redis_server_profile": "production", "redis_server_engine": "redis"},
    "production-valkey-two-instances": {
        "redis_server_profile": "production",
        "redis_server_engine": "valkey",
        "redis_server_instances": [
            {"name": "main", "port": 6379},
            {"name": "cache", "port": 6380, "maxmemory": "256mb", "appendonly": False, "save": [],
             "maxmemory_policy": "allkeys-lfu"},
        ],
    },
    "overrides": {
        "redis_server_profile": "production",
        "redis_server_maxmemory": "512mb",
        "redis_server_appendfsync": "always",
        "redis_server_save": [],
        "redis_server_io_threads": 1,
        "redis_server_config_extra": {"hz": 20, "lazyfree-lazy-eviction": True},
        "redis_server_rename_commands": {"FLUSHALL": ""},
    },
}


def render(tmp_path: Path, variables: dict) -> Path:
    out = tmp_path / "rendered"
    out.mkdir()
    extra = dict(PASSWORDS, out_dir=str(out), ansible_python_interpreter=sys.executable, **variables)
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_ROLES_PATH=str(ROOT / "roles"))
    result = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(ROOT / "tests/role/render.yml"), "-e", json.dumps(extra)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return out


HOST_SPECIFIC = ("port", "bind", "dir", "logfile", "pidfile", "unixsocket", "aclfile", "supervised")


def start_rendered(tmp_path: Path, rendered: Path, name: str) -> RedisProcess:
    """Start redis-server on the rendered file, with only the host-specific paths moved into tmp_path."""
    port = free_port()
    workdir = tmp_path / f"run-{name}"
    workdir.mkdir()
    kept = [line for line in (rendered / f"{name}.conf").read_text().splitlines()
            if line.split(" ", 1)[0] not in HOST_SPECIFIC]
    overrides = (
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\nlogfile {workdir / 'redis.log'}\n"
        f"pidfile {workdir / 'redis.pid'}\nunixsocket {workdir / 'redis.sock'}\n"
        f"aclfile {rendered / (name + '.acl')}\nsupervised no\n"
    )
    return RedisProcess(workdir, "\n".join(kept) + "\n" + overrides, port).start()


def expected_settings(instance: dict) -> dict:
    units = {"mb": 1024**2, "gb": 1024**3}
    maxmemory = str(instance["maxmemory"])
    for suffix, factor in units.items():
        if maxmemory.endswith(suffix):
            maxmemory = str(int(maxmemory[: -len(suffix)]) * factor)
    return {
        "maxmemory": maxmemory,
        "maxmemory-policy": instance["maxmemory_policy"],
        "appendonly": "yes" if instance["appendonly"] else "no",
        "appendfsync": instance["appendfsync"],
        "save": " ".join(instance["save"]),
        "aof-use-rdb-preamble": "yes" if instance["aof_use_rdb_preamble"] else "no",
        "tcp-keepalive": str(instance["tcp_keepalive"]),
        "maxclients": str(instance["maxclients"]),
        "io-threads": str(instance["io_threads"]),
        "protected-mode": "yes" if instance["protected_mode"] else "no",
        "slowlog-max-len": str(instance["slowlog_max_len"]),
        "daemonize": "no",
    }


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_config_loads_and_server_reports_the_variables(tmp_path, case):
    rendered = render(tmp_path, CASES[case])
    instances = json.loads((rendered / "instances.json").read_text())
    wanted = CASES[case].get("redis_server_instances", [{"name": "main"}])
    assert [i["name"] for i in instances] == [i["name"] for i in wanted]
    for instance in instances:
        text = (rendered / f"{instance['name']}.conf").read_text()
        assert "supervised systemd" in text and "daemonize no" in text
        assert "requirepass" not in text and "daemonize yes" not in text
        server = start_rendered(tmp_path, rendered, instance["name"])
        try:
            client = redis.Redis(port=server.port, username="admin", password=PASSWORDS["redis_server_admin_password"],
                                 decode_responses=True)
            for directive, value in expected_settings(instance).items():
                assert client.config_get(directive) == {directive: value}, directive
            for directive, value in CASES[case].get("redis_server_config_extra", {}).items():
                shown = {True: "yes", False: "no"}.get(value, str(value))
                assert client.config_get(directive) == {directive: shown}
        finally:
            server.stop()


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_acl_users_application_admin_and_monitor(tmp_path):
    rendered = render(tmp_path, CASES["production-redis"])
    server = start_rendered(tmp_path, rendered, "main")
    try:
        def client(user=None, password=None):
            return redis.Redis(port=server.port, username=user, password=password, decode_responses=True)

        with pytest.raises(redis.AuthenticationError):
            client().get("x")
        app = client(password=PASSWORDS["redis_server_password"])  # redis://:password@host
        assert app.set("k", "v") and app.get("k") == "v"
        for command in (["FLUSHDB"], ["FLUSHALL"], ["KEYS", "*"], ["CONFIG", "GET", "*"],
                        ["MONITOR"], ["ACL", "LIST"], ["REPLICAOF", "NO", "ONE"]):
            with pytest.raises(redis.exceptions.NoPermissionError):
                app.execute_command(*command)
        admin = client("admin", PASSWORDS["redis_server_admin_password"])
        assert admin.keys("*") == ["k"]
        assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
        monitor = client("monitor", PASSWORDS["redis_server_monitor_password"])
        assert monitor.ping() and "redis_version" in monitor.info("server")
        assert monitor.set("redis-infra:health:probe", "1", ex=5)
        for command in (["GET", "k"], ["CONFIG", "GET", "*"], ["FLUSHALL"], ["SET", "k", "x"]):
            with pytest.raises(redis.exceptions.NoPermissionError):
                monitor.execute_command(*command)
        backup = client("backup", PASSWORDS["redis_server_backup_password"])
        assert backup.lastsave() and backup.bgsave()
        for command in (["GET", "k"], ["KEYS", "*"], ["FLUSHALL"], ["CONFIG", "SET", "dir", "/tmp"]):
            with pytest.raises((redis.exceptions.NoPermissionError, redis.exceptions.ResponseError)):
                backup.execute_command(*command)
        acl_text = (rendered / "main.acl").read_text()
        assert not any(secret in acl_text for secret in PASSWORDS.values())
    finally:
        server.stop()


def test_development_without_application_password_leaves_default_user_open_on_loopback(tmp_path):
    rendered = render(tmp_path, dict(CASES["development-redis"], redis_server_password=""))
    text = (rendered / "main.conf").read_text()
    assert "bind 127.0.0.1 -::1\n" in text and "protected-mode yes" in text
    assert "user default on nopass" in (rendered / "main.acl").read_text()


def test_io_threads_auto_is_off_below_four_vcpus(tmp_path):
    rendered = render(tmp_path, {"redis_server_profile": "production", "redis_server_io_threads": "auto"})
    instance = json.loads((rendered / "instances.json").read_text())[0]
    vcpus = os.cpu_count() or 1
    assert instance["io_threads"] == (1 if vcpus < 4 else min(vcpus * 3 // 4, 8))


def test_start_hook_config_names_every_sentinel_and_the_include_file(tmp_path):
    """roles/redis_server/templates/follow.toml.j2 gives redis-infra-follow a config it accepts."""
    from redis_infra import follow

    case = dict(CASES["production-valkey-two-instances"], redis_server_sentinel_group="all",
                redis_sentinel_port=26380, redis_sentinel_password="sentinel-client-password-0123456789")
    rendered = render(tmp_path, case)
    instances = json.loads((rendered / "instances.json").read_text())
    for instance in instances:
        config = follow.parse((rendered / f"{instance['name']}-follow.toml").read_text(), instance["name"])
        assert (config.name, config.port, config.group) == (instance["name"], instance["port"], "valkey")
        assert config.include_file == instance["replicaof_file"] == f"/etc/valkey/replicaof-{instance['name']}.conf"
        assert instance["follow_file"] == f"/etc/redis-infra/follow/{instance['name']}.toml"
        assert [(s.port, s.password) for s in config.sentinels] == [(26380, "sentinel-client-password-0123456789")]
        assert config.wait == 5.0
