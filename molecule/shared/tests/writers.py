"""A client load for the tests that change a live topology: writes from a thread of the controller until
stopped, counting what was acknowledged and what failed."""

from __future__ import annotations

import threading
import time


class ThreadedWriter:
    """SETs `<prefix>:<n>` through `client` every 20 ms until stopped or `limit` seconds have passed.

    acknowledged: writes that went through; errors: each failure's type and message; error_times: when
    each failed; last_acks: for each failure, when the last write before it went through; longest: the
    longest time between two acknowledged writes. After a failure the writer waits `error_pause`
    seconds. Use as a context manager around the change under test."""

    prefix = "verify:writer"
    limit = 600
    error_pause = 0.0

    def __init__(self, client):
        self.client = client
        self.acknowledged, self.errors, self.error_times, self.longest, self.stop = 0, [], [], 0.0, False
        self.last_acks = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        end = time.monotonic() + self.limit
        last = time.monotonic()
        while not self.stop and time.monotonic() < end:
            try:
                self.client.set(f"{self.prefix}:{self.acknowledged}", "x")
                self.acknowledged += 1
                now = time.monotonic()
                self.longest, last = max(self.longest, now - last), now
            except Exception as exc:  # noqa: BLE001 (every failure counts)
                self.errors.append(type(exc).__name__ + ": " + str(exc)[:80])
                self.error_times.append(time.monotonic())
                self.last_acks.append(last)
                time.sleep(self.error_pause)
            time.sleep(0.02)

    def outages(self):
        """The spans of time in which writes failed, split where writes went through for over a second.
        Failures with no acknowledged write between them are one span, however far apart (writes that
        hang until their timeout, as under a CLIENT PAUSE, fail a timeout apart)."""
        spans = []
        for moment, last_ack in zip(self.error_times, self.last_acks, strict=True):
            if spans and (moment - spans[-1][1] <= 1 or last_ack <= spans[-1][1]):
                spans[-1][1] = moment
            else:
                spans.append([moment, moment])
        return spans

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join(10)
