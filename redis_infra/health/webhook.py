"""Webhook notifications of status changes, sent from their own thread through a bounded queue.

The check loop only calls `notify()`, which never blocks: when the queue is full the event is
dropped (and counted). The sender thread POSTs each event as JSON, retrying with exponential
backoff (backoff, 2*backoff, 4*backoff ... seconds) up to `retries` times.

A webhook URL usually carries its secret in the path or the query (Slack, Teams, Mattermost hooks),
so it is never logged: log lines name `scheme://host:port/…` only, and the text of an error is
scrubbed of the URL and its parts before it is logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from .config import WebhookConfig

log = logging.getLogger("redis_infra.health.webhook")


def redact_url(url: str) -> str:
    """`scheme://host[:port]/…`: what may be logged of a URL (no user, password, path or query)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme or '?'}://{host}{port}/…"


def scrub(text: str, url: str) -> str:
    """`text` with the URL, its path, query and credentials replaced by the redacted URL."""
    parts = urlsplit(url)
    secrets = [url, parts.path, parts.query, parts.fragment, parts.password or "", parts.username or ""]
    for secret in sorted((item for item in secrets if len(item) > 1), key=len, reverse=True):
        text = text.replace(secret, redact_url(url))
    return " ".join(text.split())


class WebhookNotifier:
    def __init__(self, config: WebhookConfig, user_agent: str = "redis-infra-health"):
        self.config = config
        self.user_agent = user_agent
        self.queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
        self.stats = {"ok": 0.0, "failed": 0.0, "dropped": 0.0, "retried": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)

    def start(self) -> WebhookNotifier:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(None)
        self._thread.join(timeout)

    def notify(self, event: dict) -> bool:
        """Queue one event; False (and counted as dropped) when the queue is full."""
        try:
            self.queue.put_nowait(event)
            return True
        except queue.Full:
            self.stats["dropped"] += 1
            log.warning("webhook queue full (%d events): dropped %s/%s %s -> %s", self.config.queue_size,
                        event.get("instance"), event.get("check"), event.get("old_status"), event.get("new_status"))
            return False

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self.queue.get()
            if event is None:
                continue
            self._deliver(event)

    def _deliver(self, event: dict) -> None:
        body = json.dumps(event).encode("utf-8")
        delay = self.config.backoff
        for attempt in range(self.config.retries + 1):
            if attempt:
                self.stats["retried"] += 1
                if self._stop.wait(delay):
                    break
                delay *= 2
            try:
                self._post(body)
                self.stats["ok"] += 1
                return
            except Exception as exc:
                log.warning("webhook %s attempt %d/%d failed: %s", redact_url(self.config.url), attempt + 1,
                            self.config.retries + 1, scrub(str(exc) or type(exc).__name__, self.config.url))
        self.stats["failed"] += 1

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(  # noqa: S310 - the URL is validated as http(s) in config.py
            self.config.url, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": self.user_agent})
        with urllib.request.urlopen(request, timeout=self.config.timeout) as response:  # noqa: S310
            response.read(65536)
            if not 200 <= response.status < 300:
                raise urllib.error.HTTPError(redact_url(self.config.url), response.status, "unexpected status",
                                             None, None)
