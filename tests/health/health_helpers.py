"""Helpers for the health checker tests (used by conftest.py and the tests): instances that carry
the monitoring ACL user built from REQUIRED_ACL, connection files, checker config files, an HTTP
client for the in-process server, and the CLI run as a subprocess."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:   # the package is not installed in the test venv
    sys.path.insert(0, str(REPO))

from redis_infra.health import REQUIRED_ACL, SENTINEL_REQUIRED_ACL  # noqa: E402

MONITOR_PASSWORD = "monitor-secret"
ACL_LINE = f"user monitor on >{MONITOR_PASSWORD} {REQUIRED_ACL}\n"
# Sentinels: their clients' password (requirepass, also used between them) and the checker's user.
SENTINEL_PASSWORD = "sentinel-secret"
SENTINEL_ACL_LINE = f"user monitor on >{MONITOR_PASSWORD} {SENTINEL_REQUIRED_ACL}\n"
FAST = {"interval": 0.3, "timeout": 0.5}


@dataclass
class Instance:
    name: str
    proc: object           # tests.conftest.RedisProcess
    conn_file: Path
    admin_options: dict = field(default_factory=dict)   # redis-py's TLS arguments for a TLS-only server

    @property
    def port(self) -> int:
        return self.proc.port

    def admin(self, timeout: float = 10.0):
        """A client as the default (all-powerful) user, for setting up test conditions."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout, decode_responses=True,
                           **self.admin_options)


def write_connection_file(path: Path, name: str, port: int, username: str | None = "monitor",
                          password: str | None = MONITOR_PASSWORD, **fields) -> Path:
    """A connection file; `fields` are more of its fields (unix_socket, tls, ...)."""
    lines = [f'name = "{name}"', 'host = "127.0.0.1"', f"port = {port}"]
    if username:
        lines.append(f'username = "{username}"')
    if password:
        lines.append(f'password = "{password}"')
    lines += [f"{key} = {_toml(value)}" for key, value in fields.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def _toml(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def write_health_config(path: Path, instances: list[dict], thresholds: dict | None = None,
                        webhook: dict | None = None, sentinel: dict | None = None, **top) -> Path:
    settings = {**FAST, "listen_port": 9122, **top}
    lines = [f"{key} = {_toml(value)}" for key, value in settings.items()]
    for title, table in (("thresholds", thresholds), ("webhook", webhook), ("sentinel", sentinel)):
        if table:
            lines.append(f"[{title}]")
            lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
    for instance in instances:
        lines.append("[[instances]]")
        lines += [f"{key} = {_toml(value)}" for key, value in instance.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class RunningChecker:
    def __init__(self, monitor, server):
        self.monitor = monitor
        self.server = server
        self.port = server.server_address[1]

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> tuple[int, dict]:
        status, _, body = self.get(path)
        return status, json.loads(body)

    def wait_for(self, predicate, timeout: float = 5.0, what: str = "condition"):
        """Poll /api/health/redis until predicate(detail_json) is true; returns that JSON."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            _, last = self.get_json("/api/health/redis")
            if predicate(last):
                return last
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last result: {json.dumps(last)[:2000]}")


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "redis_infra.health", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def check_of(detail: dict, instance: str, check: str) -> dict | None:
    for entry in detail["instances"]:
        if entry["name"] == instance:
            for item in entry["checks"]:
                if item["name"] == check:
                    return item
    return None


def instance_of(detail: dict, instance: str) -> dict:
    for entry in detail["instances"]:
        if entry["name"] == instance:
            return entry
    raise AssertionError(f"instance {instance} not in {detail}")


@contextlib.contextmanager
def stopped(proc):
    """SIGSTOP a process for the duration of the block; always SIGCONT it."""
    import signal

    os.kill(proc.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.proc.pid, signal.SIGCONT)


class Receiver:
    """Collects POSTed JSON bodies; answers `fail_first` requests with HTTP 500."""

    def __init__(self, fail_first: int = 0, delay: float = 0.0):
        self.events: list[dict] = []
        self.requests = 0
        self.fail_first = fail_first
        self.delay = delay
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(receiver.delay)
                with receiver.lock:
                    receiver.requests += 1
                    failing = receiver.requests <= receiver.fail_first
                    if not failing:
                        receiver.events.append(json.loads(body))
                self.send_response(500 if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, predicate, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                events = list(self.events)
            if predicate(events):
                return events
            time.sleep(0.02)
        raise AssertionError(f"webhook events never matched; got {self.events}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
