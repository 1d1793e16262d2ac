#!/usr/bin/env python3
"""Benchmark of TLS against plaintext on the same redis-server (issue #11).

Generates a throwaway CA and server certificate (EC P-256, SAN IP:127.0.0.1) with the openssl CLI
in a temp dir, then starts two redis-servers on 127.0.0.1 (free ports, save "", appendonly no), each
serving both `port` and `tls-port` from the same process:
  - io-threads 1 (the default): plaintext and TLS are measured against this one process;
  - io-threads 2 with io-threads-do-reads yes: its TLS port only, against the TLS port of the first.
`tls-auth-clients no`: redis-benchmark verifies the server's certificate against the CA but presents
none, so the figures leave out client-certificate checks (a handshake cost, paid once per connection).

Each round runs `redis-benchmark -t set,get -r 100000` with --clients connections, unpipelined (-P 1,
--requests requests) and pipelined (-P 16, ten times as many), against the three sides in an order
rotated every round, so that the noise of a shared machine falls on every side alike. The keyspace is
filled before the first round so that every GET finds its key. Reported: the median requests/s of
each side, the median of the per-round ratios TLS / plaintext and io-threads 2 / io-threads 1, and
the CPU each server used during its runs (what explains the io-threads figure on a small machine).

Every run of redis-benchmark has a timeout and the rounds stop at --budget seconds; the servers and
the temp dir are removed on exit, Ctrl-C and SIGTERM included.

    .venv/bin/python scripts/bench-tls.py [--rounds 5] [--requests 50000] [--clients 50] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

KEYSPACE = 100_000              # redis-benchmark -r: the keys are key:000000000000 to key:000000099999
PIPELINE = 16
PIPELINED_REQUEST_FACTOR = 10   # pipelined runs of --requests would last a tenth of a second
TARGET_UNPIPELINED = 0.6        # issue #11: TLS at least 0.6x plaintext, unpipelined
SIDES = ("plaintext", "tls", "tls_io2")
SIDE_LABELS = {"plaintext": "plaintext", "tls": "TLS", "tls_io2": "TLS io-threads 2"}
TESTS = ("SET", "GET")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if result.returncode:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def make_certificates(work: Path) -> None:
    """ca.crt, server.crt and server.key in work: EC P-256, valid one day, server SAN IP:127.0.0.1."""
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=work)
    openssl("req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "1", "-subj", "/CN=bench-tls CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
            "-out", "ca.crt", cwd=work)
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "server.key", cwd=work)
    openssl("req", "-new", "-key", "server.key", "-subj", "/CN=127.0.0.1", "-out", "server.csr", cwd=work)
    (work / "server.ext").write_text("subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n"
                                     "keyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-sha256", "-extfile", "server.ext", "-out", "server.crt", cwd=work)
    for key in ("ca.key", "server.key"):
        (work / key).chmod(0o600)


class Server:
    """A redis-server on 127.0.0.1 with a plaintext port and a TLS port in the same process."""

    def __init__(self, work: Path, name: str, io_threads: int):
        self.dir = work / name
        self.dir.mkdir()
        self.port, self.tls_port = free_port(), free_port()
        self.log = self.dir / "redis.log"
        threads = f"io-threads {io_threads}\n" + ("io-threads-do-reads yes\n" if io_threads > 1 else "")
        config = self.dir / "redis.conf"
        config.write_text(
            f"bind 127.0.0.1\nport {self.port}\ntls-port {self.tls_port}\n"
            f"tls-cert-file {work / 'server.crt'}\ntls-key-file {work / 'server.key'}\n"
            f"tls-ca-cert-file {work / 'ca.crt'}\ntls-auth-clients no\n"
            f"save \"\"\nappendonly no\ndaemonize no\ndir {self.dir}\nlogfile {self.log}\n{threads}")
        # Its own session: Ctrl-C reaches this script, which stops the server itself in order.
        self.proc = subprocess.Popen(["redis-server", str(config)], cwd=self.dir, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, self.proc, self.log)
        wait_port(self.tls_port, self.proc, self.log)

    def cli(self, *args: str, stdin: bytes | None = None) -> str:
        result = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args], input=stdin,
                                capture_output=True, timeout=60)
        if result.returncode:
            raise RuntimeError(f"redis-cli {' '.join(args)}: {result.stderr.decode().strip()}")
        return result.stdout.decode()

    def fill_keyspace(self) -> None:
        """SET every key redis-benchmark -r KEYSPACE can pick (3-byte values, as its default -d 3)."""
        commands = b"".join(b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$3\r\nxxx\r\n" % n for n in range(KEYSPACE))
        self.cli("--pipe", stdin=commands)
        size = int(self.cli("DBSIZE"))
        if size != KEYSPACE:
            raise RuntimeError(f"keyspace fill left {size} keys, expected {KEYSPACE}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_benchmark(args: list[str], pipeline: int, requests: int, clients: int, timeout: float) -> dict[str, float]:
    """requests/s of SET and GET from one redis-benchmark run."""
    command = ["redis-benchmark", "-h", "127.0.0.1", "-c", str(clients), "-n", str(requests), "-P", str(pipeline),
               "-r", str(KEYSPACE), "-t", "set,get", "--csv", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    rows = {row["test"]: float(row["rps"]) for row in csv.DictReader(result.stdout.splitlines())
            if row.get("test") in TESTS}
    if result.returncode or set(rows) != set(TESTS):
        raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}: "
                           f"{(result.stderr or result.stdout).strip()[-500:]}")
    return rows


def measure(target: list[str], busy: Server, idle: Server, pipeline: int, requests: int, clients: int,
            timeout: float) -> dict[str, float]:
    """requests/s of SET and GET, and the CPU the benchmarked and the other server used (1.0 = one vCPU)."""
    busy_before, idle_before, start = cpu_seconds(busy.proc.pid), cpu_seconds(idle.proc.pid), time.monotonic()
    result: dict[str, float] = run_benchmark(target, pipeline, requests, clients, timeout)
    wall = time.monotonic() - start
    result["server_cpu"] = round((cpu_seconds(busy.proc.pid) - busy_before) / wall, 2)
    result["idle_server_cpu"] = round((cpu_seconds(idle.proc.pid) - idle_before) / wall, 2)
    return result


def median_ratio(rounds: list[dict], case: str, test: str, numerator: str, denominator: str) -> float:
    return statistics.median(r[case][numerator][test] / r[case][denominator][test] for r in rounds)


def summarize(rounds: list[dict], cases: dict[str, int]) -> dict:
    summary = {}
    for case in cases:
        summary[f"{case} server CPU"] = {
            side: statistics.median(r[case][side]["server_cpu"] for r in rounds) for side in SIDES}
        summary[f"{case} server CPU"]["idle_server_max"] = max(
            r[case][side]["idle_server_cpu"] for r in rounds for side in SIDES)
        for test in TESTS:
            entry = {f"{side}_rps_median": round(statistics.median(r[case][side][test] for r in rounds))
                     for side in SIDES}
            entry["tls_over_plaintext"] = round(median_ratio(rounds, case, test, "tls", "plaintext"), 3)
            entry["io2_over_io1_tls"] = round(median_ratio(rounds, case, test, "tls_io2", "tls"), 3)
            summary[f"{case} {test}"] = entry
    return summary


def print_report(results: dict) -> None:
    print(f"{results['server']}, {results['clients']} clients, {len(results['rounds'])} round(s) "
          f"(order of the sides rotated each round), {results['date']}, load average "
          f"{results['loadavg_before']} before, {results['loadavg_after']} after")
    print("requests/s are medians over the rounds; ratios are medians of the per-round ratios\n")
    print("| case | plaintext rps | TLS rps | TLS / plaintext | TLS io-threads 2 rps | io-threads 2 / 1 (TLS) |")
    print("|---|---|---|---|---|---|")
    for case, entry in results["summary"].items():
        if case.endswith(" server CPU"):
            continue
        print(f"| {case} | {entry['plaintext_rps_median']} | {entry['tls_rps_median']} | "
              f"{entry['tls_over_plaintext']:.3f} | {entry['tls_io2_rps_median']} | {entry['io2_over_io1_tls']:.3f} |")
    print("\nserver CPU during the runs (median, 1.00 = one vCPU busy; the machine has "
          f"{results['cpus']}; redis-benchmark needs about one of them too):\n")
    print("| case | plaintext | TLS | TLS io-threads 2 | the other, idle server (max) |")
    print("|---|---|---|---|---|")
    for case, entry in results["summary"].items():
        if case.endswith(" server CPU"):
            print(f"| {case.removesuffix(' server CPU')} | {entry['plaintext']:.2f} | {entry['tls']:.2f} | "
                  f"{entry['tls_io2']:.2f} | {entry['idle_server_max']:.2f} |")
    verdict = "met" if results["target_met"] else "NOT met"
    print(f"\ntarget: TLS at least {TARGET_UNPIPELINED}x plaintext unpipelined (SET and GET): {verdict}")


def on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every case and side (default 5)")
    parser.add_argument("--requests", type=int, default=50_000,
                        help=f"requests per unpipelined run (default 50000; pipelined runs do "
                             f"{PIPELINED_REQUEST_FACTOR}x as many)")
    parser.add_argument("--clients", type=int, default=50, help="redis-benchmark connections (default 50)")
    parser.add_argument("--budget", type=float, default=170.0,
                        help="seconds after which no new round starts (default 170)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 50 or not 1000 <= args.requests <= 10_000_000 or not 1 <= args.clients <= 1000:
        parser.error("--rounds must be in [1, 50], --requests in [1000, 10000000], --clients in [1, 1000]")
    for tool in ("redis-server", "redis-benchmark", "redis-cli", "openssl"):
        if not shutil.which(tool):
            print(f"{tool} is not installed", file=sys.stderr)
            return 2

    signal.signal(signal.SIGTERM, on_sigterm)
    started = time.monotonic()
    cases = {"unpipelined (-P 1)": 1, f"pipelined (-P {PIPELINE})": PIPELINE}
    version = re.search(r"v=(\S+)", subprocess.run(["redis-server", "--version"], capture_output=True,
                                                   text=True, check=True).stdout)
    results: dict = {"server": f"redis-server {version.group(1) if version else 'unknown'}",
                     "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
                     "clients": args.clients, "requests_unpipelined": args.requests,
                     "requests_pipelined": args.requests * PIPELINED_REQUEST_FACTOR, "keyspace": KEYSPACE,
                     "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()), "rounds": []}
    work = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    servers: list[Server] = []
    try:
        make_certificates(work)
        io1 = Server(work, "io-threads-1", 1)
        servers.append(io1)
        io2 = Server(work, "io-threads-2", 2)
        servers.append(io2)
        if io2.cli("CONFIG", "GET", "io-threads").split() != ["io-threads", "2"]:
            raise RuntimeError("the second server does not run with io-threads 2")
        for server in servers:
            server.fill_keyspace()
        tls_args = ["--tls", "--cacert", str(work / "ca.crt")]
        targets = {"plaintext": ["-p", str(io1.port)], "tls": ["-p", str(io1.tls_port), *tls_args],
                   "tls_io2": ["-p", str(io2.tls_port), *tls_args]}
        servers_of = {"plaintext": (io1, io2), "tls": (io1, io2), "tls_io2": (io2, io1)}
        # An unpipelined run of 50000 takes 1 to 5 s here; the timeout only stops a hung run.
        timeout = 30 + args.requests / 2000
        for number in range(args.rounds):
            elapsed = time.monotonic() - started
            if results["rounds"] and elapsed + elapsed / len(results["rounds"]) > args.budget:
                print(f"stopping after {len(results['rounds'])} rounds: the next would pass --budget "
                      f"{args.budget:g} s", file=sys.stderr)
                break
            order = SIDES[number % len(SIDES):] + SIDES[:number % len(SIDES)]
            measured: dict = {"order": list(order)}
            for case, pipeline in cases.items():
                requests = args.requests * (PIPELINED_REQUEST_FACTOR if pipeline > 1 else 1)
                measured[case] = {side: measure(targets[side], *servers_of[side], pipeline, requests, args.clients,
                                                timeout)
                                  for side in order}
                line = ", ".join(f"{SIDE_LABELS[side]} SET {measured[case][side]['SET']:.0f} "
                                 f"GET {measured[case][side]['GET']:.0f}" for side in SIDES)
                print(f"round {number + 1} {case}: {line}", file=sys.stderr)
            results["rounds"].append(measured)
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    results["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results["seconds"] = round(time.monotonic() - started, 1)
    results["summary"] = summarize(results["rounds"], cases)
    results["target_met"] = all(results["summary"][f"unpipelined (-P 1) {test}"]["tls_over_plaintext"]
                                >= TARGET_UNPIPELINED for test in TESTS)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_report(results)
    return 0 if results["target_met"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
