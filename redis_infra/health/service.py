"""The check loop and the HTTP server.

One background thread (`Monitor.loop`) runs a check cycle every `interval` seconds: each instance is
checked in its own short-lived thread, all in parallel, and the cycle waits at most `timeout` (+ a
small grace) for them. An instance whose check has not finished by then is published as unhealthy
("did not finish"), and is not checked again until that check returns (its socket timeout bounds it).

After each cycle the results, the JSON bodies and the /metrics text are rendered once into an
immutable `Snapshot`; HTTP handlers only read the current snapshot, so they never wait on Redis.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .. import __version__
from . import HEALTHY, STATUS_CODES, UNHEALTHY, UNKNOWN, worst
from .checks import InstanceChecker, InstanceResult, _iso
from .config import Config
from .metrics import CONTENT_TYPE, make_registry, render

log = logging.getLogger("redis_infra.health")

GRACE_SECONDS = 0.5


@dataclass(frozen=True)
class Snapshot:
    results: tuple[InstanceResult, ...]
    status: str
    published: float            # epoch
    published_monotonic: float
    health_body: bytes = b""
    detail_body: bytes = b""
    metrics_body: bytes = b""
    instances: dict = field(default_factory=dict)

    @property
    def health_code(self) -> int:
        return 503 if self.status in (UNHEALTHY, UNKNOWN) else 200


class _Pending:
    __slots__ = ("done", "result", "started", "started_wall")

    def __init__(self):
        self.done = threading.Event()
        self.result: InstanceResult | None = None
        self.started = time.monotonic()
        self.started_wall = time.time()


class Monitor:
    def __init__(self, config: Config, notifier=None):
        self.config = config
        self.notifier = notifier
        self.checkers = [InstanceChecker(instance, config) for instance in config.instances]
        self._pending: dict[str, _Pending] = {}
        self._last_status: dict[tuple[str, str], str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._publish_lock = threading.Lock()
        self._registry_results: tuple[InstanceResult, ...] = ()
        self.registry = make_registry(self._metrics_source)
        self.snapshot = self._build_snapshot((), UNKNOWN)

    # --- the loop --------------------------------------------------------------------------------

    def start(self) -> Monitor:
        self._thread = threading.Thread(target=self.loop, name="check-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.run_once()
            except Exception:  # the loop must survive anything
                log.exception("check cycle failed")
            self._stop.wait(max(self.config.interval - (time.monotonic() - began), 0.05))

    def run_once(self) -> Snapshot:
        """One check cycle of every instance; publishes and returns the new snapshot."""
        for checker in self.checkers:
            pending = self._pending.get(checker.instance.name)
            if pending is None or pending.done.is_set():
                self._pending[checker.instance.name] = self._start(checker)
        deadline = time.monotonic() + self.config.timeout + GRACE_SECONDS
        results = []
        for checker in self.checkers:
            name = checker.instance.name
            pending = self._pending[name]
            pending.done.wait(max(deadline - time.monotonic(), 0))
            if pending.done.is_set():
                results.append(pending.result)
            else:
                waited = time.monotonic() - pending.started
                log.warning("check of %s still running after %.1f s", name, waited)
                results.append(checker.timed_out_result(pending.started_wall, waited))
        return self.publish(results)

    def _start(self, checker: InstanceChecker) -> _Pending:
        pending = _Pending()

        def work():
            try:
                pending.result = checker.run()
            finally:
                pending.done.set()

        threading.Thread(target=work, name=f"check-{checker.instance.name}", daemon=True).start()
        return pending

    # --- publishing ------------------------------------------------------------------------------

    def publish(self, results: list[InstanceResult]) -> Snapshot:
        with self._publish_lock:
            self._notify_changes(results)
            status = worst(result.status for result in results) if results else UNKNOWN
            self.snapshot = self._build_snapshot(tuple(results), status)
            return self.snapshot

    def _metrics_source(self):
        stats = dict(self.notifier.stats) if self.notifier is not None else None
        return self._registry_results, stats

    def _build_snapshot(self, results: tuple[InstanceResult, ...], status: str) -> Snapshot:
        now = time.time()
        instances = {result.name: result.status for result in results}
        health = {"status": status, "time": _iso(now), "version": __version__, "instances": instances}
        if not results:
            health["reason"] = "no check cycle completed yet"
        else:
            bad = [f"{result.name}: {check.name} {check.status} ({check.reason})"
                   for result in results for check in result.checks if check.status != HEALTHY]
            if bad:
                health["reasons"] = bad[:20]
        detail = {"status": status, "time": _iso(now), "version": __version__, "interval": self.config.interval,
                  "instances": [result.to_dict() for result in results]}
        self._registry_results = results
        metrics = render(self.registry)
        return Snapshot(results=results, status=status, published=now, published_monotonic=time.monotonic(),
                        health_body=_json_bytes(health), detail_body=_json_bytes(detail), metrics_body=metrics,
                        instances=instances)

    def _notify_changes(self, results: list[InstanceResult]) -> None:
        for result in results:
            entries = [(check.name, check.status, check.reason) for check in result.checks]
            overall_reason = "; ".join(f"{c.name}: {c.reason}" for c in result.checks if c.status != HEALTHY)
            entries.append(("overall", result.status, overall_reason or "all checks healthy"))
            for check_name, status, reason in entries:
                key = (result.name, check_name)
                old = self._last_status.get(key)
                self._last_status[key] = status
                if old == status or (old is None and status == HEALTHY):
                    continue
                event = {"instance": result.name, "check": check_name, "old_status": old or UNKNOWN,
                         "new_status": status, "reason": reason, "time": _iso(time.time()),
                         "host": socket.gethostname(), "source": "redis-infra-health"}
                level = logging.INFO if status == HEALTHY else logging.WARNING
                log.log(level, "%s %s: %s -> %s: %s", result.name, check_name, old or UNKNOWN, status, reason)
                if self.notifier is not None:
                    self.notifier.notify(event)

    def stale_after(self) -> float:
        return 3 * self.config.interval + self.config.timeout + GRACE_SECONDS


def _json_bytes(data) -> bytes:
    return (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8")


# --- HTTP --------------------------------------------------------------------------------------------

INDEX = b"""redis-infra health checker
  /api/health          overall status (200 healthy/degraded, 503 unhealthy)
  /api/health/redis    every check of every instance (JSON)
  /metrics             Prometheus metrics
"""


class HealthHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "redis-infra-health/" + __version__
    disable_nagle_algorithm = True
    timeout = 15        # idle keep-alive connections are closed after this

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._respond(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        monitor: Monitor = self.server.monitor
        snapshot = monitor.snapshot
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/api/health":
            age = time.monotonic() - snapshot.published_monotonic
            if snapshot.results and age > monitor.stale_after():
                body = _json_bytes({"status": UNHEALTHY, "time": _iso(time.time()),
                                    "reason": f"results are stale: last check cycle {age:.0f} s ago",
                                    "instances": snapshot.instances})
                self._send(503, "application/json", body, send_body)
            else:
                self._send(snapshot.health_code, "application/json", snapshot.health_body, send_body)
        elif path == "/api/health/redis":
            self._send(200, "application/json", snapshot.detail_body, send_body)
        elif path == "/metrics":
            self._send(200, CONTENT_TYPE, snapshot.metrics_body, send_body)
        elif path == "/":
            self._send(200, "text/plain; charset=utf-8", INDEX, send_body)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n", send_body)

    def _send(self, code: int, content_type: str, body: bytes, send_body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self.address_string(), format % args)


class HealthServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a bound on concurrent connections (extra ones are closed at once)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], monitor: Monitor, max_connections: int = 256):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.monitor = monitor
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, HealthHandler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def status_code(status: str) -> int:
    return STATUS_CODES.get(status, 2)
