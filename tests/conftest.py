"""Fixtures that start real redis-server processes on loopback (no mocks of Redis)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or shutil.which("valkey-server")
REDIS_CLI = shutil.which("redis-cli") or shutil.which("valkey-cli")

requires_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


# Modules whose module-scoped fixture costs a minute or more (a whole ansible-playbook run, a lab of servers): their
# tests go to one pytest-xdist worker, or each worker that gets one of them would build the fixture again. The
# other tests are spread one by one, as with --dist load. (xdist's own --dist loadgroup does not group under
# pytest 9, whose nodes no longer take the group suffix it adds to their ids.)
ONE_WORKER_MODULES = frozenset({
    "tests/role/test_preflight.py",
    "tests/role/test_app_settings.py",
    "tests/role/test_sentinel_monitor_user.py",
    "tests/role/test_sentinel_own_password.py",
    "tests/test_collection.py",
})


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "load":
        return None  # another --dist asked for: xdist's own scheduler
    from xdist.scheduler import LoadScopeScheduling

    class ModuleFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    return ModuleFixtureScheduling(config, log)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too. Both stay below the kernel's ephemeral range
    (32768 up), where free_port() and every outgoing connection take theirs: a bus port taken there after
    this check made a node exit once it had answered. Each pytest-xdist worker has a range of its own."""
    import random

    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % workers
    span = 10000 // workers  # ports 10000 to 19999, their bus ports 20000 to 29999: the two never overlap
    low = 10000 + worker * span
    while True:
        port = random.randint(low, low + span - 1)  # noqa: S311
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


class RedisProcess:
    """A redis-server started from a config file, stopped by the fixture that made it."""

    def __init__(self, workdir: Path, config_text: str, port: int, args: tuple[str, ...] = ()):
        self.workdir = workdir
        self.port = port
        self.args = args        # ("--sentinel",) for a Sentinel
        self.config = workdir / "redis.conf"
        self.config.write_text(config_text)
        self.log = workdir / "redis.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> RedisProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([REDIS_SERVER, str(self.config), *self.args], cwd=self.workdir,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not listen on {self.port}:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture
def redis_factory(tmp_path):
    """Start redis-server processes: `redis_factory(extra_config_lines)` returns a running RedisProcess.

    Each server gets its own directory, a free loopback port, and is stopped after the test.
    """
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    started: list[RedisProcess] = []

    def make(extra: str = "", port: int | None = None) -> RedisProcess:
        port = port or free_port()
        workdir = tmp_path / f"redis-{port}"
        workdir.mkdir()
        base = (f"port {port}\nbind 127.0.0.1\ndir {workdir}\nsave \"\"\nappendonly no\n"
                f"daemonize no\nlogfile {workdir / 'redis.log'}\n")
        proc = RedisProcess(workdir, base + extra, port)
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture
def sentinel_factory(tmp_path):
    """Start Sentinels (redis-server --sentinel): `sentinel_factory(extra_config_lines)` returns a running
    RedisProcess; each in its own directory on a free loopback port, stopped after the test."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    started: list[RedisProcess] = []

    def make(extra: str = "") -> RedisProcess:
        port = free_port()
        workdir = tmp_path / f"sentinel-{port}"
        workdir.mkdir()
        base = f"port {port}\nbind 127.0.0.1\ndir {workdir}\ndaemonize no\nlogfile {workdir / 'redis.log'}\n"
        proc = RedisProcess(workdir, base + extra, port, args=("--sentinel",))
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture
def redis_env():
    """Environment for redis-cli with no inherited password."""
    env = dict(os.environ)
    env.pop("REDISCLI_AUTH", None)
    return env


@dataclass(frozen=True)
class TLSFiles:
    """A test CA (trustme) and a certificate it signed for 127.0.0.1 and localhost, as PEM files; the
    certificate serves the servers and, as on the hosts, the clients that must show one."""
    ca: object              # trustme.CA, to issue more certificates
    directory: Path
    ca_file: Path
    cert_file: Path
    key_file: Path
    other_ca_file: Path     # a CA that signed nothing here: "the wrong CA"

    def issue(self, name: str, not_after: datetime | None = None,
              names: tuple[str, ...] = ("127.0.0.1", "localhost")) -> tuple[Path, Path]:
        """Another certificate for `names` (ending at not_after): (cert file, key file)."""
        leaf = self.ca.issue_cert(*names, not_after=not_after)
        cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key

    def server_config(self, port: int, clients: str = "optional", cert_file: Path | None = None,
                      key_file: Path | None = None) -> str:
        """Config lines that make a redis-server (or a Sentinel) serve TLS only, on `port`, as the roles
        configure it; clients: optional, or yes to require client certificates."""
        return (f"port 0\ntls-port {port}\ntls-cert-file {cert_file or self.cert_file}\n"
                f"tls-key-file {key_file or self.key_file}\ntls-ca-cert-file {self.ca_file}\n"
                f"tls-auth-clients {clients}\ntls-protocols \"TLSv1.2 TLSv1.3\"\ntls-replication yes\n")


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> TLSFiles:
    trustme = pytest.importorskip("trustme")
    directory = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.crt"))
    other.cert_pem.write_to_path(str(directory / "other-ca.crt"))
    files = TLSFiles(ca, directory, directory / "ca.crt", directory / "server.crt", directory / "server.key",
                     directory / "other-ca.crt")
    files.issue("server")
    return files


@pytest.fixture
def tls_redis_factory(redis_factory, tls_files):
    """Start redis-server processes that serve only TLS: `tls_redis_factory(extra_config_lines, clients=...)`
    (see TLSFiles.server_config); the fixture's plain TCP connect finds the TLS port listening."""
    def make(extra: str = "", **tls) -> RedisProcess:
        port = free_port()
        return redis_factory(tls_files.server_config(port, **tls) + extra, port=port)

    return make
