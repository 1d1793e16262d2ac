"""Fixtures of the health checker tests; the helpers live in health_helpers.py."""

from __future__ import annotations

import threading

import pytest
from health_helpers import (
    ACL_LINE,
    MONITOR_PASSWORD,
    SENTINEL_ACL_LINE,
    SENTINEL_PASSWORD,
    Instance,
    RunningChecker,
    write_connection_file,
    write_health_config,
)

from redis_infra.health.config import load_config


@pytest.fixture
def make_instance(redis_factory, tmp_path):
    """Start a redis-server with the monitoring user; returns an Instance with its connection file."""
    def make(name: str = "main", extra: str = "", username: str | None = "monitor",
             password: str | None = MONITOR_PASSWORD, port: int | None = None) -> Instance:
        proc = redis_factory(ACL_LINE + extra, port=port)
        conn_file = write_connection_file(tmp_path / f"conn-{name}-{proc.port}.toml", name, proc.port,
                                          username, password)
        return Instance(name, proc, conn_file)
    return make


@pytest.fixture
def make_sentinels(sentinel_factory, tmp_path):
    """Start Sentinels watching a primary as `main` (requirepass, and the checker's user from
    SENTINEL_REQUIRED_ACL); returns Instances whose connection files log in as that user."""
    def make(primary_port: int, count: int = 2, quorum: int = 2, down_after: int = 1000) -> list[Instance]:
        sentinels = []
        for _ in range(count):
            proc = sentinel_factory(f'requirepass "{SENTINEL_PASSWORD}"\n{SENTINEL_ACL_LINE}'
                                    f"sentinel monitor main 127.0.0.1 {primary_port} {quorum}\n"
                                    f"sentinel down-after-milliseconds main {down_after}\n")
            conn_file = write_connection_file(tmp_path / f"conn-sentinel-{proc.port}.toml", "sentinel", proc.port)
            sentinels.append(Instance("sentinel", proc, conn_file, {"password": SENTINEL_PASSWORD}))
        return sentinels
    return make


@pytest.fixture
def make_tls_instance(tls_redis_factory, tls_files, tmp_path):
    """Start a redis-server that serves only TLS, with the monitoring user; its connection file names no
    socket and says tls = true with the test CA. `tls` goes to tls_redis_factory (clients, cert_file,
    key_file); `fields` add or replace connection-file fields."""
    def make(name: str = "main", extra: str = "", tls: dict | None = None, **fields) -> Instance:
        proc = tls_redis_factory(ACL_LINE + extra, **(tls or {}))
        fields = {"tls": True, "tls_ca_file": str(tls_files.ca_file), **fields}
        conn_file = write_connection_file(tmp_path / f"conn-{name}-{proc.port}.toml", name, proc.port, **fields)
        return Instance(name, proc, conn_file, {"ssl": True, "ssl_ca_certs": str(tls_files.ca_file)})
    return make


@pytest.fixture
def health_config(tmp_path):
    """Write a checker config for some Instances (or instance dicts) and load it: returns (Config, path)."""
    counter = iter(range(1000))

    def make(instances, thresholds=None, webhook=None, **top):
        tables = []
        for item in instances:
            if isinstance(item, Instance):
                tables.append({"name": item.name, "connection_file": str(item.conn_file)})
            else:
                tables.append(item)
        path = write_health_config(tmp_path / f"health-{next(counter)}.toml", tables, thresholds, webhook, **top)
        return load_config(str(path)), path
    return make


@pytest.fixture
def run_checker():
    """Start the check loop and the HTTP server (port 0) for a Config; both stopped after the test."""
    from redis_infra.health.service import HealthServer, Monitor

    started = []

    def start(config, notifier=None, web=None) -> RunningChecker:
        monitor = Monitor(config, notifier)
        server = HealthServer(("127.0.0.1", 0), monitor, config.http_max_connections, web=web,
                              request_timeout=config.http_request_timeout)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        thread.start()
        monitor.start()
        started.append((monitor, server, thread, notifier))
        return RunningChecker(monitor, server)

    yield start
    for monitor, server, thread, notifier in started:
        monitor.stop()
        server.shutdown()
        server.server_close()
        thread.join(5)
        if notifier is not None:
            notifier.stop()
