"""The check loop and the HTTP server.

One background thread (`Monitor.loop`) runs a check cycle every `interval` seconds: each instance is
checked in its own short-lived thread, all in parallel, and the cycle waits at most `timeout` (+ a
small grace) for them. An instance whose check has not finished by then is published as unhealthy
("did not finish"), and is not checked again until that check returns (its socket timeout bounds it).

After each cycle the results, the JSON bodies and the /metrics text are rendered once into an
immutable `Snapshot`; HTTP handlers only read the current snapshot, so they never wait on Redis.

The HTTP server is one asyncio event loop, so an idle or slow connection costs a few kilobytes, not a
thread. It is built to face clients that are slow or hostile: each request (TLS handshake, request
head, response) must be complete within `http_request_timeout` seconds of the moment the server
starts waiting for it, or the connection is dropped; at most `http_max_connections` connections are
open at once (more are closed at once); request heads are limited in size; and a problem is one
short log line, the same kind of problem at most once a minute with a count of the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus

from .. import __version__
from . import HEALTHY, STATUS_CODES, UNHEALTHY, UNKNOWN, worst
from .checks import InstanceChecker, InstanceResult, _iso
from .config import Config
from .metrics import CONTENT_TYPE, make_registry, render
from .sentinel import SentinelChecker
from .web import BasicAuth, WebConfig

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
        if config.sentinel is not None:
            self.checkers.append(SentinelChecker(config.sentinel, config))
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

    def _start(self, checker: InstanceChecker | SentinelChecker) -> _Pending:
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

MAX_HEAD_BYTES = 16384          # request line and headers
MAX_BODY_BYTES = 65536          # a GET has no body; a small one is read and ignored
PROBLEM_LOG_INTERVAL = 60.0     # seconds between two log lines about the same kind of problem
SERVER_HEADER = "redis-infra-health/" + __version__
REALM = 'Basic realm="redis-infra-health", charset="UTF-8"'


class ProblemLog:
    """One log line per kind of problem, then at most one a minute with the count of the others:
    a client that misbehaves 10 000 times does not write 10 000 lines (or tracebacks) to the journal."""

    def __init__(self, logger: logging.Logger, interval: float = PROBLEM_LOG_INTERVAL):
        self.log = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def report(self, kind: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return
            self._last[kind] = now
            others = self._suppressed.pop(kind, 0)
        more = f" ({others} more like it in the last {now - last:.0f} s)" if others else ""
        self.log.warning("http: %s%s", message, more)

    def flush(self) -> None:
        """Log the counts nobody has heard of yet (called every interval and at shutdown)."""
        with self._lock:
            pending, self._suppressed = self._suppressed, {}
            now = time.monotonic()
            for kind in pending:
                self._last[kind] = now
        for kind, count in sorted(pending.items()):
            self.log.warning("http: %d more: %s", count, kind)


class _Request:
    __slots__ = ("headers", "keep_alive", "method", "path", "version")

    def __init__(self, method: str, path: str, version: str, headers: dict[str, str]):
        self.method, self.path, self.version, self.headers = method, path, version, headers
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            self.keep_alive = "keep-alive" in connection
        else:
            self.keep_alive = "close" not in connection


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class HealthServer:
    """The HTTP server: `serve_forever()` runs its event loop in the calling thread until `shutdown()`
    (from another thread). The listening sockets are bound in the constructor, so a port in use is an
    OSError there, before anything runs."""

    def __init__(self, address, monitor: Monitor, max_connections: int = 1024, web: WebConfig | None = None,
                 request_timeout: float = 5.0, addresses: tuple[str, ...] | None = None):
        self.monitor = monitor
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.web = web
        self.ssl_context = web.ssl_context() if web is not None and web.tls else None
        self.auth = BasicAuth(web.users) if web is not None and web.users else None
        self.problems = ProblemLog(log)
        self.connections = 0                 # open connections (read by tests)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._bcrypt = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bcrypt") if self.auth else None
        hosts = addresses or (address[0],)
        self.sockets: list[socket.socket] = []
        try:
            for host in hosts:
                self.sockets.append(_listen(host, address[1] or self._port()))
        except OSError:
            self.server_close()
            raise
        self.server_address = self.sockets[0].getsockname()
        _raise_file_limit(max_connections + 64)

    def _port(self) -> int:
        """Port 0 means any free port; with several addresses, the one the first socket got."""
        return self.sockets[0].getsockname()[1] if self.sockets else 0

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.ssl_context else 'http'}://{host}:{port}"

    # --- life cycle ------------------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:  # noqa: ARG002 - socketserver's signature
        self._stopped.clear()
        try:
            asyncio.run(self._serve())
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever() and wait until it returned (like socketserver's shutdown)."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):     # the loop has already ended
                loop.call_soon_threadsafe(stopping.set)
            self._stopped.wait(10)

    def server_close(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self._bcrypt is not None:
            self._bcrypt.shutdown(wait=False)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(self._loop_exception)
        self._stopping = asyncio.Event()
        tasks: set[asyncio.Task] = set()
        acceptors = [asyncio.create_task(self._accept(sock, tasks)) for sock in self.sockets]
        flusher = asyncio.create_task(self._flush_problems())
        try:
            await self._stopping.wait()
        finally:
            for task in (*acceptors, flusher, *tasks):
                task.cancel()
            await asyncio.gather(*acceptors, flusher, *tasks, return_exceptions=True)
            self.problems.flush()
            self._loop = None

    async def _flush_problems(self) -> None:
        while True:
            await asyncio.sleep(self.problems.interval)
            self.problems.flush()

    def _loop_exception(self, _loop, context: dict) -> None:
        exc = context.get("exception")
        detail = f"{type(exc).__name__}: {exc}" if exc else context.get("message", "?")
        self.problems.report("internal", f"event loop: {' '.join(str(detail).split())}")

    async def _accept(self, listener: socket.socket, tasks: set) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                accepted = [await loop.sock_accept(listener)]
                # empty the backlog at once: a burst of connections must not overflow it (the kernel
                # then drops SYNs and a probe waits a second for its retransmission)
                while len(accepted) < 256:
                    try:
                        accepted.append(listener.accept())
                    except (BlockingIOError, InterruptedError):
                        break
            except OSError as exc:        # EMFILE and friends: wait a little instead of spinning
                self.problems.report("accept", f"cannot accept connections: {exc.strerror or exc}")
                await asyncio.sleep(0.1)
                continue
            for sock, peer in accepted:
                sock.setblocking(False)
                if self.connections >= self.max_connections:
                    self.problems.report("limit", f"{self.max_connections} connections open "
                                                  f"(http_max_connections): closed new ones at once, "
                                                  f"e.g. from {_peer(peer)}")
                    _reject(sock)
                    continue
                self.connections += 1
                task = asyncio.create_task(self._connection(sock, peer))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    # --- one connection --------------------------------------------------------------------------

    async def _connection(self, sock: socket.socket, peer) -> None:
        writer = None
        clean = False
        served = 0
        stage = "in the TLS handshake" if self.ssl_context is not None else "waiting for the request"
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with asyncio.timeout(self.request_timeout):
                reader, writer = await self._streams(sock)
            while True:
                stage = "waiting for the request"
                async with asyncio.timeout(self.request_timeout):
                    try:
                        request = await self._read_request(reader)
                    except _BadRequest as bad:
                        self.problems.report("bad request", f"bad request from {_peer(peer)}: {bad}")
                        await self._write(writer, bad.status, "text/plain; charset=utf-8",
                                          f"{bad}\n".encode(), True, keep_alive=False)
                        clean = True
                        return
                    if request is None:
                        return
                    stage = "sending the response"
                    keep_alive = await self._respond(request, writer, peer)
                    served += 1
                if not keep_alive:
                    clean = True
                    return
        except TimeoutError:
            if served and stage == "waiting for the request":
                return      # an idle keep-alive connection: closing it is routine
            self.problems.report("timeout", f"dropped {_peer(peer)}: request not complete within "
                                            f"{self.request_timeout:g} s ({stage}; http_request_timeout)")
        except ssl.SSLError as exc:
            self.problems.report("tls", f"TLS with {_peer(peer)} failed: {exc.reason or exc}")
        except (ConnectionError, asyncio.IncompleteReadError, EOFError):
            pass        # the client went away: nothing anyone can act on
        except OSError as exc:
            self.problems.report("socket", f"connection from {_peer(peer)}: {exc.strerror or exc}")
        except Exception as exc:  # one line, never a traceback per connection
            self.problems.report("internal", f"connection from {_peer(peer)}: {type(exc).__name__}: {exc}")
            log.debug("http: connection from %s", _peer(peer), exc_info=True)
        finally:
            self.connections -= 1
            await self._close(writer, sock, clean)

    async def _streams(self, sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Reader and writer over an accepted socket, after the TLS handshake when TLS is on."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_HEAD_BYTES)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, sock, ssl=self.ssl_context,
            ssl_handshake_timeout=self.request_timeout if self.ssl_context is not None else None)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _close(self, writer: asyncio.StreamWriter | None, sock: socket.socket, clean: bool) -> None:
        """After a complete answer, flush it and close (TLS close_notify included); otherwise abort."""
        if writer is None:
            sock.close()
            return
        if clean:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.request_timeout):
                    writer.close()
                    await writer.wait_closed()
        writer.transport.abort()

    async def _read_request(self, reader: asyncio.StreamReader) -> _Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise _BadRequest(HTTPStatus.BAD_REQUEST, "incomplete request") from None
            return None
        except asyncio.LimitOverrunError:
            raise _BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                              f"request head larger than {MAX_HEAD_BYTES} bytes") from None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "not an HTTP/1.x request line")
        method, path, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed header line")
            headers[name.lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise _BadRequest(HTTPStatus.NOT_IMPLEMENTED, "request bodies are not accepted")
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            raise _BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        if int(length):
            await reader.readexactly(int(length))
        return _Request(method, path, version, headers)

    async def _respond(self, request: _Request, writer: asyncio.StreamWriter, peer) -> bool:
        """Answer one request; returns whether the connection stays open."""
        keep_alive = request.keep_alive
        if request.method not in ("GET", "HEAD"):
            await self._write(writer, HTTPStatus.METHOD_NOT_ALLOWED, "text/plain; charset=utf-8",
                              b"only GET and HEAD\n", True, keep_alive, {"Allow": "GET, HEAD"})
            return keep_alive
        send_body = request.method == "GET"
        if self.auth is not None:
            header = request.headers.get("authorization")
            user, allowed = await asyncio.get_running_loop().run_in_executor(self._bcrypt, self.auth.user_of,
                                                                             header)
            if not allowed:
                if header is not None:
                    who = f"user {user!r}" if user is not None else "a malformed Authorization header"
                    self.problems.report("auth", f"authentication failed for {who} from {_peer(peer)}")
                await self._write(writer, HTTPStatus.UNAUTHORIZED, "text/plain; charset=utf-8",
                                  b"unauthorized\n", send_body, keep_alive, {"WWW-Authenticate": REALM})
                return keep_alive
        code, content_type, body = self.page(request.path)
        await self._write(writer, code, content_type, body, send_body, keep_alive)
        return keep_alive

    def page(self, target: str) -> tuple[int, str, bytes]:
        """(status, content type, body) of a path, from the current snapshot only."""
        monitor = self.monitor
        snapshot = monitor.snapshot
        path = target.split("?", 1)[0].rstrip("/") or "/"
        if path == "/api/health":
            age = time.monotonic() - snapshot.published_monotonic
            if snapshot.results and age > monitor.stale_after():
                body = _json_bytes({"status": UNHEALTHY, "time": _iso(time.time()),
                                    "reason": f"results are stale: last check cycle {age:.0f} s ago",
                                    "instances": snapshot.instances})
                return 503, "application/json", body
            return snapshot.health_code, "application/json", snapshot.health_body
        if path == "/api/health/redis":
            return 200, "application/json", snapshot.detail_body
        if path == "/metrics":
            return 200, CONTENT_TYPE, snapshot.metrics_body
        if path == "/":
            return 200, "text/plain; charset=utf-8", INDEX
        return 404, "text/plain; charset=utf-8", b"not found\n"

    async def _write(self, writer: asyncio.StreamWriter, code: int, content_type: str, body: bytes,
                     send_body: bool, keep_alive: bool, extra: dict[str, str] | None = None) -> None:
        status = HTTPStatus(code)
        headers = {"Server": SERVER_HEADER, "Content-Type": content_type, "Content-Length": str(len(body)),
                   "Cache-Control": "no-store", **(extra or {})}
        if not keep_alive:
            headers["Connection"] = "close"
        head = f"HTTP/1.1 {status.value} {status.phrase}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        writer.write(head.encode("latin-1") + (body if send_body else b""))
        await writer.drain()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024, reuse_port=False)
    sock.setblocking(False)
    return sock


def _reject(sock: socket.socket) -> None:
    """Close a connection over the limit without reading from it."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    sock.close()


def _peer(peer) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
    return str(peer)


def _raise_file_limit(wanted: int) -> None:
    """systemd gives services a soft limit of 1024 open files; raise it (up to the hard limit) so that
    http_max_connections connections, Redis connections and files fit."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def status_code(status: str) -> int:
    return STATUS_CODES.get(status, 2)
