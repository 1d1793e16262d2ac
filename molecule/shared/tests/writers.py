"""A client load for the tests that change a live topology: writes from a thread of the controller until
stopped, counting what was acknowledged and what failed."""

from __future__ import annotations

import json
import subprocess
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


# An application on its own host, as the platform's guide has one: reads REDIS_URL from its env file and writes
# through it every 50 ms (redis-py from Debian, 1 s timeouts, no retries) until the stop file appears or the
# limit passes; then prints what went through and the longest time between two acknowledged writes.
APPLICATION_WRITER = r'''
import json, os, sys, time
import redis
env_file, stop_file, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
values = {}
for line in open(env_file):
    key, _, value = line.rstrip("\n").partition("=")
    if key and not key.startswith("#"):
        values[key] = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == "'" else value
client = redis.Redis.from_url(values["REDIS_URL"], socket_timeout=1, socket_connect_timeout=1)
started = last = time.monotonic()
acknowledged, errors, longest = 0, {}, 0.0
while time.monotonic() - started < limit and not os.path.exists(stop_file):
    try:
        client.set("verify:application:%d" % acknowledged, "x")
        acknowledged += 1
        now = time.monotonic()
        longest, last = max(longest, now - last), now
    except redis.RedisError as exc:
        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
    time.sleep(0.05)
longest = max(longest, time.monotonic() - last)     # a writer that never recovered shows it here too
print(json.dumps({"acknowledged": acknowledged, "errors": errors, "longest": round(longest, 2)}))
'''


class ApplicationWriter:
    """APPLICATION_WRITER in a container of the scenario (docker exec), as a context manager: result holds
    its figures once stopped."""

    def __init__(self, container, env_file, limit=300):
        self.container, self.env_file, self.limit, self.result = container, env_file, limit, None

    def _exec(self, *command, **options):
        return subprocess.run(["docker", "exec", *command], capture_output=True, text=True, check=False,
                              timeout=60, **options)

    def __enter__(self):
        self._exec("-i", self.container, "sh", "-c", "cat > /root/application-writer.py", input=APPLICATION_WRITER)
        self._exec(self.container, "rm", "-f", "/root/application-writer.stop", "/root/application-writer.json")
        self._exec("-d", self.container, "sh", "-c",
                   f"python3 /root/application-writer.py {self.env_file} /root/application-writer.stop {self.limit}"
                   " > /root/application-writer.json 2> /root/application-writer.err")
        return self

    def __exit__(self, *exc):
        self._exec(self.container, "touch", "/root/application-writer.stop")
        output = ""
        for _ in range(40):
            output = self._exec(self.container, "cat", "/root/application-writer.json").stdout.strip()
            if output:
                break
            time.sleep(0.5)
        if output:
            self.result = json.loads(output)
        else:
            self.result = {"failed": self._exec(self.container, "cat", "/root/application-writer.err").stdout[-2000:]}
