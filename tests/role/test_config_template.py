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
    "redis_server_maintenance_password": "maintenance-password-for-the-fast-tests-0123456789",
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


HOST_SPECIFIC = ("port", "bind", "dir", "logfile", "pidfile", "unixsocket", "aclfile", "supervised",
                 "tls-port", "tls-cert-file", "tls-key-file", "tls-ca-cert-file")


def make_certificates(directory: Path, names: str = "IP:127.0.0.1,DNS:localhost") -> dict:
    """A CA and a server/client certificate for `names` (subjectAltName entries; default 127.0.0.1 and
    localhost), with openssl, EC P-256."""
    directory.mkdir(exist_ok=True)
    paths = {name: directory / name for name in ("ca.crt", "ca.key", "server.crt", "server.key", "server.csr")}
    if paths["server.crt"].exists():
        return paths
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    subprocess.run(["openssl", "req", "-x509", *ec, "-keyout", paths["ca.key"], "-out", paths["ca.crt"],
                    "-subj", "/CN=fast-test CA", "-days", "2"], check=True, capture_output=True)
    subprocess.run(["openssl", "req", *ec, "-keyout", paths["server.key"], "-out", paths["server.csr"],
                    "-subj", "/CN=localhost"], check=True, capture_output=True)
    extensions = directory / "ext.cnf"
    extensions.write_text(f"subjectAltName={names}\nextendedKeyUsage=serverAuth,clientAuth\n")
    subprocess.run(["openssl", "x509", "-req", "-in", paths["server.csr"], "-CA", paths["ca.crt"], "-CAkey",
                    paths["ca.key"], "-CAcreateserial", "-out", paths["server.crt"], "-days", "2",
                    "-extfile", extensions], check=True, capture_output=True)
    return paths


def start_rendered(tmp_path: Path, rendered: Path, name: str) -> RedisProcess:
    """Start redis-server on the rendered file, with only the host-specific paths moved into tmp_path.
    With TLS, a plaintext port is opened beside the TLS one for the tests' clients (server.tls_port)."""
    port = free_port()
    workdir = tmp_path / f"run-{name}"
    workdir.mkdir()
    lines = (rendered / f"{name}.conf").read_text().splitlines()
    kept = [line for line in lines if line.split(" ", 1)[0] not in HOST_SPECIFIC]
    overrides = (
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\nlogfile {workdir / 'redis.log'}\n"
        f"pidfile {workdir / 'redis.pid'}\nunixsocket {workdir / 'redis.sock'}\n"
        f"aclfile {rendered / (name + '.acl')}\nsupervised no\n"
    )
    tls_port = None
    if any(line.startswith("tls-port ") for line in lines):
        certificates = make_certificates(tmp_path / "tls")
        tls_port = free_port()
        overrides += (f"tls-port {tls_port}\ntls-cert-file {certificates['server.crt']}\n"
                      f"tls-key-file {certificates['server.key']}\ntls-ca-cert-file {certificates['ca.crt']}\n")
    server = RedisProcess(workdir, "\n".join(kept) + "\n" + overrides, port).start()
    server.tls_port = tls_port
    return server


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
        "latency-monitor-threshold": str(instance["latency_monitor_threshold"]),
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
        maintenance = client("maintenance", PASSWORDS["redis_server_maintenance_password"])
        assert maintenance.get("k") == "v" and maintenance.type("k") == "string"
        for command in (["SET", "k", "x"], ["KEYS", "*"], ["FLUSHALL"], ["CONFIG", "GET", "masterauth"]):
            with pytest.raises(redis.exceptions.NoPermissionError):
                maintenance.execute_command(*command)
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


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
@pytest.mark.parametrize("auth_clients", ["optional", "required"])
def test_production_serves_tls_only_on_its_port(tmp_path, auth_clients):
    """Production: the port serves TLS 1.2/1.3 only (port 0), replication uses TLS, and a client needs
    the CA (and, when required, a certificate of its own)."""
    rendered = render(tmp_path, dict(CASES["production-redis"], redis_server_tls_auth_clients=auth_clients))
    text = (rendered / "main.conf").read_text()
    assert "\nport 0\ntls-port 6379\n" in text
    for line in ("tls-replication yes", 'tls-protocols "TLSv1.2 TLSv1.3"',
                 f"tls-auth-clients {'yes' if auth_clients == 'required' else 'optional'}",
                 "tls-cert-file /etc/redis-infra/tls/server.crt", "tls-key-file /etc/redis-infra/tls/server.key",
                 "tls-ca-cert-file /etc/redis-infra/tls/ca.crt"):
        assert f"\n{line}\n" in text, line
    assert "\nport 6379\n" not in text
    certificates = make_certificates(tmp_path / "tls")
    server = start_rendered(tmp_path, rendered, "main")
    try:
        common = {"port": server.tls_port, "password": PASSWORDS["redis_server_password"], "ssl": True,
                  "ssl_ca_certs": str(certificates["ca.crt"]), "socket_timeout": 5}
        mine = {"ssl_certfile": str(certificates["server.crt"]), "ssl_keyfile": str(certificates["server.key"])}
        assert redis.Redis(**common, **mine).ping()
        anonymous = redis.Redis(**common)
        if auth_clients == "required":
            with pytest.raises(redis.ConnectionError):
                anonymous.ping()
        else:
            assert anonymous.ping()
        with pytest.raises(redis.ConnectionError):
            redis.Redis(**dict(common, ssl_ca_certs=None, ssl_cert_reqs="required")).ping()
    finally:
        server.stop()


def test_development_has_no_tls_unless_asked(tmp_path):
    text = (render(tmp_path, CASES["development-redis"]) / "main.conf").read_text()
    assert "\nport 6379\n" in text and "tls-" not in text


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_a_user_under_rotation_accepts_its_previous_password_beside_the_new_one(tmp_path):
    """Phase 1 of a rotation: the old and the new password both work; the others are unchanged."""
    previous = {"default": "old-app-password-0123456789abcdef", "admin": "old-admin-password-0123456789abcdef"}
    rendered = render(tmp_path, dict(CASES["development-redis"], redis_server_previous_passwords=previous))
    acl = (rendered / "main.acl").read_text()
    assert not any(secret in acl for secret in [*previous.values(), *PASSWORDS.values()])
    server = start_rendered(tmp_path, rendered, "main")
    try:
        def works(user, password):
            try:
                return redis.Redis(port=server.port, username=user, password=password).ping()
            except redis.AuthenticationError:
                return False

        assert works(None, PASSWORDS["redis_server_password"]) and works(None, previous["default"])
        assert works("admin", PASSWORDS["redis_server_admin_password"]) and works("admin", previous["admin"])
        assert works("monitor", PASSWORDS["redis_server_monitor_password"])
        assert not works("monitor", previous["admin"])
    finally:
        server.stop()
