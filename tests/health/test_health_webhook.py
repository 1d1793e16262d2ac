"""Webhook notifications: a local http.server receives them; status changes of real instances."""

from __future__ import annotations

import socket
import time

import pytest
from health_helpers import Receiver

from redis_infra.health import HEALTHY, UNHEALTHY
from redis_infra.health.config import WebhookConfig
from redis_infra.health.webhook import WebhookNotifier


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
    deadline = time.monotonic() + 2      # the receiver stores an event before it answers the POST
    while notifier.stats["ok"] < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
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
