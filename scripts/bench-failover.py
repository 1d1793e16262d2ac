#!/usr/bin/env python3
"""Failover benchmark for a Sentinel topology of containers (the `ha` Molecule scenario or the lab).

Measures, with the settings the inventory deployed:
  failover   time from the primary stopping (docker pause: it stops answering, as in the failover test)
             to the first successful write on the primary Sentinel then names; median and max over N trials.
  steady     seconds of steady writes with a healthy primary; reports any change of primary (must be none).
  rolling    write-outage window of playbooks/rolling_restart.yml under a steady write load, writes
             acknowledged with WAIT 1; checks that every acknowledged write is on the final primary.
  static     the same for a converge of playbooks/redis.yml that changes a static setting (tcp-backlog,
             alternating between two values each round): the restarts it rolls over every host.
  stress     seconds of steady writes on a primary under stress: a dataset of --dataset-mb loaded first,
             a BGSAVE and an AOF rewrite every --stress-interval seconds, and a CPU hog (one busy loop
             per core of the machine) in the primary's container. Counts the Sentinels' +sdown and
             +odown events for the primary and any failover: both must be zero.

Every Sentinel's events (its Pub/Sub channels) are recorded while the benchmark runs: each failover
trial reports when the Sentinels first published +sdown, +odown, +try-failover, +elected-leader,
+selected-slave, +promoted-slave and +switch-master for the primary, counted from the pause, so that
the failover time is explained, not only measured.

Passwords come from the environment, never argv: REDIS_PASSWORD (the application's), SENTINEL_PASSWORD,
and for --stress REDIS_ADMIN_PASSWORD (BGSAVE and BGREWRITEAOF, sent by redis-cli on the primary's
unix socket inside its container, the password in redis-cli's environment).
Containers are found by address with `docker inspect`; run it on the machine that runs them.
With TLS on (the production profile: the instances' and Sentinels' ports serve TLS only), pass the
CA certificate the hosts' certificates chain to, as on the controller: <inventory dir>/../<inventory
name>-tls/ca.crt, for a Molecule scenario $MOLECULE_EPHEMERAL_DIRECTORY/inventory-tls/ca.crt (`make lab`
prints the lab's). Every connection is then TLS, the certificate checked against the address.

  REDIS_PASSWORD=... SENTINEL_PASSWORD=... scripts/bench-failover.py --sentinel 172.18.0.2 \
      --sentinel 172.18.0.3 --sentinel 172.18.0.4 --tls-ca-file CA --trials 10 --steady 120 \
      --rolling-inventory INVENTORY
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]


def containers_by_address():
    ids = subprocess.run(["docker", "ps", "-q"], capture_output=True, text=True, check=True).stdout.split()
    if not ids:
        return {}
    data = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True).stdout)
    result = {}
    for item in data:
        for network in item["NetworkSettings"]["Networks"].values():
            if network.get("IPAddress"):
                result[network["IPAddress"]] = item["Name"].lstrip("/")
    return result


class Topology:
    def __init__(self, sentinels, port, master, password, sentinel_password, tls_ca_file=None):
        self.sentinels = sentinels
        self.port = port
        self.master = master
        self.password = password
        self.sentinel_password = sentinel_password
        # The hosts' certificates name their addresses, which is what Sentinel hands out: check them.
        self.tls = ({"ssl": True, "ssl_ca_certs": tls_ca_file, "ssl_cert_reqs": "required",
                     "ssl_check_hostname": True} if tls_ca_file else {})

    def sentinel(self, address, timeout):
        return redis.Redis(host=address, port=self.port, password=self.sentinel_password, socket_timeout=timeout,
                           socket_connect_timeout=timeout, decode_responses=True, **self.tls)

    def primary(self, skip=()):
        """The address the first answering Sentinel (not on a skipped address) gives for the primary."""
        for address in self.sentinels:
            if address in skip:
                continue
            try:
                client = self.sentinel(address, 0.5)
                host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)
                return host, int(port)
            except (redis.RedisError, OSError, TypeError, ValueError):
                continue
        return None

    def client(self, address, timeout=0.5):
        host, port = address
        return redis.Redis(host=host, port=port, password=self.password, socket_timeout=timeout,
                           socket_connect_timeout=timeout, decode_responses=True, **self.tls)

    def wait_settled(self, old, timeout=120):
        """Until the old primary is a replica with its link up and no Sentinel flags it down."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                info = self.client(old, 1).info("replication")
                settled = info.get("role") == "slave" and info.get("master_link_status") == "up"
                flags = []
                for address in self.sentinels:
                    sentinel = self.sentinel(address, 1)
                    # A Sentinel that was frozen (paused with its host) stays in TILT mode for 30 s and
                    # takes no part in failovers: the next trial waits until every Sentinel is out of it.
                    if int(sentinel.info("sentinel").get("sentinel_tilt", 0)):
                        flags.append("tilt-down")
                    for replica in sentinel.execute_command("SENTINEL", "REPLICAS", self.master):
                        # redis-py parses the reply into a dict (flags as a set); raw replies are flat lists.
                        fields = replica if isinstance(replica, dict) else dict(
                            zip(replica[::2], replica[1::2], strict=False))
                        if fields["ip"] == old[0]:
                            raw = fields["flags"]
                            flags.append(raw if isinstance(raw, str) else ",".join(sorted(raw)))
                if settled and flags and all("down" not in flag for flag in flags):
                    return True
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.5)
        return False


# The failover's steps as Sentinel publishes them, in the order they happen.
FAILOVER_EVENTS = ("+sdown", "+odown", "+try-failover", "+elected-leader", "+selected-slave", "+promoted-slave",
                   "+switch-master")


class SentinelEvents:
    """Every Sentinel's Pub/Sub events (PSUBSCRIBE *), with the monotonic time each arrived.

    One thread per Sentinel; a Sentinel that stops answering (its host paused) is reconnected to when it
    comes back. Events about the primary are those whose message starts with `master <name> `
    (+sdown, +odown) or names the primary (+switch-master <name> ...; the failover's own events carry
    the primary's name after the instance type)."""

    def __init__(self, topology):
        self.topology = topology
        self.events = []  # (monotonic time, sentinel address, event, message)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.listen, args=(address,), daemon=True)
                        for address in topology.sentinels]
        for thread in self.threads:
            thread.start()

    def listen(self, address):
        while not self.stop.is_set():
            try:
                pubsub = self.topology.sentinel(address, 2).pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe("*")
                while not self.stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message:
                        with self.lock:
                            self.events.append((time.monotonic(), address, message["channel"], message["data"]))
            except (redis.RedisError, OSError):
                time.sleep(0.5)
            finally:
                with contextlib.suppress(redis.RedisError, OSError, NameError):
                    pubsub.close()

    def about_primary(self, since, until=None):
        """Events of the primary's group between two moments, oldest first, as (time, sentinel, event,
        subject): subject "master" for the primary itself (`master <name> <ip> <port>`), "replica" for one
        of its replicas (`slave <ip:port> <ip> <port> @ <name> ...`, as +selected-slave and
        +promoted-slave are), "switch" for +switch-master (`<name> <old ip> <old port> <new ip> ...`)."""
        name = self.topology.master
        with self.lock:
            events = list(self.events)
        found = []
        for moment, address, event, data in events:
            if moment < since or (until is not None and moment > until):
                continue
            words = str(data).split()
            if event == "+switch-master" and words[:1] == [name]:
                subject = "switch"
            elif words[:2] == ["master", name]:
                subject = "master"
            elif words[:1] == ["slave"] and "@" in words and words[words.index("@") + 1:][:1] == [name]:
                subject = "replica"
            else:
                continue
            found.append((moment, address, event, subject))
        return found

    def timeline(self, since, until):
        """Seconds from `since` to the first event of each failover step (+sdown and +odown of the primary
        itself, not of a replica)."""
        first = {}
        for moment, _, event, subject in self.about_primary(since, until):
            if event in ("+sdown", "+odown") and subject != "master":
                continue
            if event in FAILOVER_EVENTS and event not in first:
                first[event] = round(moment - since, 2)
        return {event: first[event] for event in FAILOVER_EVENTS if event in first}

    def close(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=3)


def failover_trials(topology, trials, pause_seconds, events):
    containers = containers_by_address()
    figures = []
    timelines = []
    for trial in range(1, trials + 1):
        old = topology.primary()
        container = containers[old[0]]
        subprocess.run(["docker", "pause", container], check=True, stdout=subprocess.DEVNULL)
        stopped = time.monotonic()
        try:
            elapsed = None
            while time.monotonic() - stopped < 60:
                new = topology.primary(skip={old[0]})
                if new and new != old:
                    try:
                        if topology.client(new).set("bench:failover", trial):
                            elapsed = time.monotonic() - stopped
                            break
                    except (redis.RedisError, OSError):
                        pass
                time.sleep(0.05)
            # Keep the old primary down as long as the failover test does, then let it rejoin.
            time.sleep(max(0.0, pause_seconds - (time.monotonic() - stopped)))
        finally:
            subprocess.run(["docker", "unpause", container], check=False, stdout=subprocess.DEVNULL)
        if elapsed is None:
            print(f"trial {trial}: no write succeeded on a new primary within 60 s", flush=True)
            return figures, timelines
        figures.append(elapsed)
        timeline = events.timeline(stopped, stopped + elapsed + 1)
        timeline["write"] = round(elapsed, 2)
        timelines.append(timeline)
        steps = ", ".join(f"{event} {seconds:.2f}" for event, seconds in timeline.items())
        print(f"trial {trial}: {old[0]} paused, write on {topology.primary()[0]} after {elapsed:.2f} s ({steps})",
              flush=True)
        if not topology.wait_settled(old):
            print(f"trial {trial}: {old[0]} did not settle as a replica", flush=True)
            return figures, timelines
        time.sleep(3)
    return figures, timelines


class Writer(threading.Thread):
    """Steady writes (SET + WAIT 1) through the primary Sentinel names; records failures and acknowledged keys."""

    def __init__(self, topology, interval=0.01):
        super().__init__(daemon=True)
        self.topology = topology
        self.interval = interval
        self.stop = threading.Event()
        self.acknowledged = []
        self.failures = []  # monotonic times of failed writes
        self.primaries = set()

    def run(self):
        counter = 0
        address, client = None, None
        while not self.stop.is_set():
            counter += 1
            key = f"bench:write:{counter}"
            try:
                if client is None:
                    address = self.topology.primary()
                    self.primaries.add(address)
                    client = self.topology.client(address)
                pipe = client.pipeline(transaction=False)
                pipe.set(key, counter)
                pipe.execute_command("WAIT", 1, 200)
                _, acked = pipe.execute()
                if int(acked) >= 1:
                    self.acknowledged.append(key)
                else:
                    self.failures.append(time.monotonic())
            except (redis.RedisError, OSError, TypeError):
                self.failures.append(time.monotonic())
                client = None
            time.sleep(self.interval)


def longest_outage(failures, gap=0.5):
    """Longest stretch of consecutive failed writes (failures closer than `gap` s belong together)."""
    if not failures:
        return 0.0
    longest, start, last = 0.0, failures[0], failures[0]
    for moment in failures[1:]:
        if moment - last > gap:
            longest, start = max(longest, last - start), moment
        last = moment
    return max(longest, last - start)


def steady(topology, seconds):
    before = topology.primary()
    writer = Writer(topology)
    writer.start()
    time.sleep(seconds)
    writer.stop.set()
    writer.join()
    after = topology.primary()
    print(f"steady: {seconds} s, {len(writer.acknowledged)} acknowledged writes, {len(writer.failures)} failed, "
          f"primary {before[0]} -> {after[0]}", flush=True)
    return before == after and not writer.failures


def admin_cli(container, instance, *command):
    """redis-cli as the admin user on the instance's unix socket inside its container; the password in
    redis-cli's environment (REDISCLI_AUTH), never in argv."""
    argv = ["docker", "exec", "-e", "REDISCLI_AUTH", container, "redis-cli", "--no-auth-warning", "--user", "admin",
            "-s", f"/run/redis-{instance}/redis-server.sock", *command]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "REDISCLI_AUTH": os.environ.get("REDIS_ADMIN_PASSWORD", "")})
    answer = result.stdout.strip()
    if result.returncode != 0 or answer.startswith(("ERR", "NOPERM", "WRONGPASS", "NOAUTH")):
        raise RuntimeError(f"{' '.join(command)} on {container}: {answer or result.stderr.strip()}")
    return answer


STRESS_PREFIX = "bench:stress:"
STRESS_VALUE_BYTES = 64 * 1024


def load_dataset(topology, megabytes):
    """Random (incompressible) 64 KiB values under bench:stress:* on the primary, until `megabytes` are
    written, then WAIT for both replicas. Returns the number of keys."""
    client = topology.client(topology.primary(), 30)
    count = megabytes * 1024 * 1024 // STRESS_VALUE_BYTES
    for start in range(0, count, 64):
        pipe = client.pipeline(transaction=False)
        for number in range(start, min(start + 64, count)):
            pipe.set(f"{STRESS_PREFIX}{number}", os.urandom(STRESS_VALUE_BYTES))
        pipe.execute()
    replicas = int(client.info("replication").get("connected_slaves", 0))
    client.execute_command("WAIT", replicas, 120000)
    return count


def drop_dataset(topology, count):
    client = topology.client(topology.primary(), 30)
    for start in range(0, count, 500):
        client.unlink(*(f"{STRESS_PREFIX}{number}" for number in range(start, min(start + 500, count))))


def stress(topology, seconds, megabytes, interval, events):
    """Steady writes on a primary under a dataset, forks and a CPU hog; no Sentinel may flag it down."""
    primary = topology.primary()
    container = containers_by_address()[primary[0]]
    instance = topology.master
    started = time.monotonic()
    count = load_dataset(topology, megabytes)
    loaded = time.monotonic() - started
    used = topology.client(primary, 5).info("memory")["used_memory_human"]
    forks_before = int(topology.client(primary, 5).info("stats")["total_forks"])
    print(f"stress: {count} keys ({megabytes} MiB) loaded in {loaded:.1f} s, used_memory {used}", flush=True)
    cores = os.cpu_count() or 1
    # The hogs end by themselves (timeout), whatever happens to this script.
    for _ in range(cores):
        subprocess.run(["docker", "exec", "-d", container, "timeout", str(seconds), "sh", "-c", "while :; do :; done"],
                       check=True)
    writer = Writer(topology)
    writer.start()
    since = time.monotonic()
    end = since + seconds
    rounds, skipped, errors = 0, 0, []
    while time.monotonic() < end:
        for command in (("BGSAVE", "SCHEDULE"), ("BGREWRITEAOF",)):
            try:
                admin_cli(container, instance, *command)
            except RuntimeError as error:
                # A rewrite still running from the round before (a slow disk) is not the benchmark's fault.
                if "already in progress" in str(error):
                    skipped += 1
                else:
                    errors.append(str(error))
        rounds += 1
        time.sleep(max(0.0, min(interval, end - time.monotonic())))
    writer.stop.set()
    writer.join()
    time.sleep(2)
    after = topology.primary()
    info = topology.client(after, 5).info()
    forks = int(info["total_forks"]) - forks_before
    flagged = [(round(moment - since, 2), address, event) for moment, address, event, subject
               in events.about_primary(since) if subject == "master" and event in ("+sdown", "+odown")]
    failovers = [event for _, _, event, _ in events.about_primary(since) if event == "+switch-master"]
    result = {"seconds": seconds, "dataset_mb": megabytes, "load_seconds": round(loaded, 1), "cpu_hogs": cores,
              "bgsave_and_rewrite_rounds": rounds,
              "skipped_already_running": skipped, "forks": forks, "latest_fork_usec": int(info["latest_fork_usec"]),
              "acknowledged": len(writer.acknowledged), "failed": len(writer.failures),
              "longest_outage": round(longest_outage(writer.failures), 2), "primary_sdown_odown": flagged,
              "failovers": len(failovers), "primary_changed": after != primary, "errors": errors}
    print(f"stress: {seconds} s, {rounds} BGSAVE + BGREWRITEAOF rounds ({forks} forks, last fork "
          f"{result['latest_fork_usec']} us), {cores} CPU hogs, {len(writer.acknowledged)} acknowledged writes, "
          f"{len(writer.failures)} failed (longest outage {result['longest_outage']} s), "
          f"+sdown/+odown of the primary: {len(flagged)}, failovers: {len(failovers)}", flush=True)
    drop_dataset(topology, count)
    return result


def rolling(topology, inventory):
    writer = Writer(topology)
    writer.start()
    time.sleep(2)
    started = time.monotonic()
    playbook = Path(sys.executable).with_name("ansible-playbook")
    command = str(playbook) if playbook.exists() else "ansible-playbook"
    result = subprocess.run([command, "-i", inventory, str(ROOT / "playbooks/rolling_restart.yml")],
                            capture_output=True, text=True, check=False)
    took = time.monotonic() - started
    time.sleep(2)
    writer.stop.set()
    writer.join()
    if result.returncode != 0:
        print(result.stdout[-3000:], file=sys.stderr)
        return None
    primary = topology.client(topology.primary(), 2)
    lost = [key for key in writer.acknowledged if primary.get(key) is None]
    outage = longest_outage(writer.failures)
    print(f"rolling restart: {took:.1f} s, {len(writer.acknowledged)} acknowledged writes, {len(lost)} lost, "
          f"{len(writer.failures)} failed writes, longest write outage {outage:.2f} s", flush=True)
    return {"seconds": took, "acknowledged": len(writer.acknowledged), "lost": len(lost),
            "failed": len(writer.failures), "outage": outage}


def static_change(topology, inventory, rounds):
    """Converges that change tcp-backlog (a restart of every instance, rolled) under a write load."""
    playbook = Path(sys.executable).with_name("ansible-playbook")
    command = str(playbook) if playbook.exists() else "ansible-playbook"
    figures = []
    for round_number in range(rounds):
        backlog = 511 + 16 * ((round_number % 2) + 1)
        writer = Writer(topology)
        writer.start()
        time.sleep(2)
        started = time.monotonic()
        result = subprocess.run([command, "-i", inventory, str(ROOT / "playbooks/redis.yml"),
                                 "-e", f"redis_server_tcp_backlog={backlog}"],
                                capture_output=True, text=True, check=False)
        took = time.monotonic() - started
        time.sleep(2)
        writer.stop.set()
        writer.join()
        if result.returncode != 0:
            print(result.stdout[-3000:], file=sys.stderr)
            return None
        primary = topology.client(topology.primary(), 2)
        lost = [key for key in writer.acknowledged if primary.get(key) is None]
        outage = longest_outage(writer.failures)
        print(f"static change round {round_number + 1} (tcp-backlog {backlog}): converge {took:.1f} s, "
              f"{len(writer.acknowledged)} acknowledged writes, {len(lost)} lost, {len(writer.failures)} failed, "
              f"longest write outage {outage:.2f} s", flush=True)
        figures.append({"seconds": round(took, 1), "acknowledged": len(writer.acknowledged), "lost": len(lost),
                        "failed": len(writer.failures), "outage": round(outage, 2)})
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentinel", action="append", required=True, help="address of a Sentinel (repeat)")
    parser.add_argument("--sentinel-port", type=int, default=26379)
    parser.add_argument("--master", default="main", help="Sentinel's name of the primary (the instance's name)")
    parser.add_argument("--tls-ca-file", help="CA certificate: connect with TLS (the ports serve TLS only)")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--pause", type=float, default=10.0, help="seconds the primary stays paused")
    parser.add_argument("--steady", type=int, default=0, help="seconds of steady load with a healthy primary")
    parser.add_argument("--rolling-inventory", help="inventory for playbooks/rolling_restart.yml")
    parser.add_argument("--static-inventory", help="inventory for converges of playbooks/redis.yml (static change)")
    parser.add_argument("--static-rounds", type=int, default=3)
    parser.add_argument("--stress", type=int, default=0,
                        help="seconds of steady load on a primary under a dataset, forks and a CPU hog")
    parser.add_argument("--dataset-mb", type=int, default=1024, help="size of the dataset --stress loads first")
    parser.add_argument("--stress-interval", type=float, default=30.0,
                        help="seconds between the BGSAVE + BGREWRITEAOF rounds of --stress")
    args = parser.parse_args()
    if args.stress and not os.environ.get("REDIS_ADMIN_PASSWORD"):
        parser.error("--stress sends BGSAVE and BGREWRITEAOF as the admin user: set REDIS_ADMIN_PASSWORD")
    if args.tls_ca_file and not os.access(args.tls_ca_file, os.R_OK):
        parser.error(f"--tls-ca-file {args.tls_ca_file}: not a readable file")
    topology = Topology(args.sentinel, args.sentinel_port, args.master,
                        os.environ.get("REDIS_PASSWORD") or None, os.environ.get("SENTINEL_PASSWORD") or None,
                        args.tls_ca_file)
    if topology.primary() is None:
        try:
            topology.sentinel(args.sentinel[0], 2).ping()
            reason = f"no Sentinel names a primary for {args.master!r}"
        except (redis.RedisError, OSError) as error:
            reason = f"Sentinel {args.sentinel[0]}:{args.sentinel_port}: {error}"
            if not args.tls_ca_file:
                reason += " (a port that serves TLS only needs --tls-ca-file)"
        sys.exit(f"bench-failover: {reason}")
    report = {}
    events = SentinelEvents(topology)
    try:
        report.update(run_measures(topology, args, events))
    finally:
        events.close()
    print(json.dumps(report, indent=2))
    return 0


def run_measures(topology, args, events):
    report = {}
    if args.stress:
        report["stress"] = stress(topology, args.stress, args.dataset_mb, args.stress_interval, events)
    if args.trials:
        figures, timelines = failover_trials(topology, args.trials, args.pause, events)
        if figures:
            report["failover"] = {"trials": len(figures), "median": round(statistics.median(figures), 2),
                                  "max": round(max(figures), 2), "all": [round(f, 2) for f in figures],
                                  "median_steps": {event: round(statistics.median(t[event] for t in timelines
                                                                                  if event in t), 2)
                                                   for event in (*FAILOVER_EVENTS, "write")
                                                   if any(event in t for t in timelines)},
                                  "timelines": timelines}
    if args.steady:
        report["steady_no_failover"] = steady(topology, args.steady)
    if args.rolling_inventory:
        report["rolling_restart"] = rolling(topology, args.rolling_inventory)
    if args.static_inventory:
        report["static_change"] = static_change(topology, args.static_inventory, args.static_rounds)
    return report


if __name__ == "__main__":
    sys.exit(main())
