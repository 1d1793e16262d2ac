"""Webhook notifications: a local http.server receives them; status changes of real instances."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from redis_infra.health import HEALTHY, UNHEALTHY
from redis_infra.health.config import WebhookConfig
from redis_infra.health.webhook import WebhookNotifier


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


@pytest.fixture
def receiver():
    made = []

    def make(**kwargs) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for item in made:
        item.close()


def test_status_changes_are_posted(make_instance, health_config, run_checker, receiver):
    hook = receiver()
    instance = make_instance()
    config, _ = health_config([instance], webhook={"url": hook.url, "timeout": 2, "retries": 2, "backoff": 0.05})
    notifier = WebhookNotifier(config.webhook).start()
    checker = run_checker(config, notifier)
    checker.wait_for(lambda d: d["status"] == HEALTHY, what="healthy")
    time.sleep(config.interval * 2)
    assert hook.events == []          # healthy from the start: nothing to report

    instance.proc.stop()

    def has(events, check, new):
        return any(e["check"] == check and e["new_status"] == new for e in events)

    events = hook.wait_for(lambda ev: has(ev, "connection", UNHEALTHY) and has(ev, "overall", UNHEALTHY))
    event = next(e for e in events if e["check"] == "connection")
    assert event["instance"] == "main"
    assert (event["old_status"], event["new_status"]) == (HEALTHY, UNHEALTHY)
    assert "cannot connect" in event["reason"]
    assert event["time"].endswith("Z") and event["source"] == "redis-infra-health"
    assert set(event) >= {"instance", "check", "old_status", "new_status", "reason", "time"}

    instance.proc.start()
    events = hook.wait_for(lambda ev: has(ev, "connection", HEALTHY))
    back = next(e for e in events if e["check"] == "connection" and e["new_status"] == HEALTHY)
    assert back["old_status"] == UNHEALTHY
    assert notifier.stats["ok"] >= 3


def test_retries_with_backoff():
    hook = Receiver(fail_first=2)
    try:
        notifier = WebhookNotifier(WebhookConfig(url=hook.url, timeout=2, retries=3, backoff=0.05)).start()
        notifier.notify({"instance": "main", "check": "ping", "old_status": "healthy", "new_status": "degraded"})
        events = hook.wait_for(lambda ev: len(ev) == 1)
        assert events[0]["check"] == "ping"
        assert hook.requests == 3
        assert notifier.stats["retried"] == 2 and notifier.stats["ok"] == 1
        notifier.stop()
    finally:
        hook.close()


def test_gives_up_after_retries_and_never_blocks_the_caller():
    # a listening socket that never answers: every attempt times out
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        notifier = WebhookNotifier(WebhookConfig(url=url, timeout=0.2, retries=1, backoff=0.01, queue_size=2)).start()
        t0 = time.monotonic()
        accepted = [notifier.notify({"instance": "main", "check": str(i)}) for i in range(10)]
        assert time.monotonic() - t0 < 0.1           # notify() never waits on the network
        assert accepted.count(True) <= 3 and notifier.stats["dropped"] >= 7
        deadline = time.monotonic() + 5
        while notifier.stats["failed"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert notifier.stats["failed"] >= 1 and notifier.stats["ok"] == 0
        notifier.stop(timeout=3)
    finally:
        silent.close()
