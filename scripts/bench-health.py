#!/usr/bin/env python3
"""Benchmark of the redis-infra health checker (python3 -m redis_infra.health serve).

Starts a redis-server (or valkey-server) on a free loopback port with the monitoring ACL user, starts
the checker on another free loopback port (check interval 1 s, so cycles run during the load), then:

  1. counts the commands the checker sends to Redis per check cycle (INFO commandstats delta on the
     server over several idle cycles, minus this script's own INFO calls);
  2. paced load: 50 concurrent keep-alive HTTP clients, each sending one request every 1/rate s,
     alternating /api/health and /metrics, for --duration seconds: p50/p99/max latency, requests/s;
  3. closed-loop load: the same 50 clients sending back to back (capacity; latency = queueing);
  4. resident memory (VmRSS, VmHWM) of the checker process.

Everything runs on 127.0.0.1, is bounded in time, and both servers are stopped at the end.
Run from the repository root:  .venv/bin/python scripts/bench-health.py [--duration 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from redis_infra.health import REQUIRED_ACL  # noqa: E402

PATHS = ("/api/health", "/metrics")
MONITOR_PASSWORD = secrets.token_hex(16)       # throwaway, for this run only


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def checker_counter(port: int, name: str) -> float:
    _, body = http_get(port, "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- load generation (worker processes, so the clients do not share the checker's GIL) ------------

def _client_thread(port: int, rate: float | None, stop_at: float, start_at: float, offset: int, out: dict) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    period = 1.0 / rate if rate else 0.0
    next_at = start_at + (offset % 50) * period / 50 if period else start_at
    i = offset
    errors = 0
    while True:
        if period:
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += period
        now = time.monotonic()
        if now >= stop_at:
            break
        path = PATHS[i % 2]
        i += 1
        t0 = time.perf_counter()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            ok = response.status in (200, 503)
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        elapsed = time.perf_counter() - t0
        if ok:
            out["latencies"].append(elapsed)
        else:
            errors += 1
    conn.close()
    out["errors"] = errors


def _worker(port: int, threads: int, first: int, rate: float | None, start_at: float, stop_at: float, queue) -> None:
    results: list[dict] = [{"latencies": [], "errors": 0} for _ in range(threads)]
    workers = [threading.Thread(target=_client_thread, args=(port, rate, stop_at, start_at, first + n, results[n]))
               for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    latencies = [value for result in results for value in result["latencies"]]
    queue.put((latencies, sum(result["errors"] for result in results)))


def run_load(port: int, clients: int, processes: int, duration: float, rate: float | None) -> dict:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start_at = time.monotonic() + 0.5
    stop_at = start_at + duration
    per = [clients // processes + (1 if n < clients % processes else 0) for n in range(processes)]
    procs, first = [], 0
    for n in range(processes):
        proc = ctx.Process(target=_worker, args=(port, per[n], first, rate, start_at, stop_at, queue), daemon=True)
        first += per[n]
        proc.start()
        procs.append(proc)
    latencies: list[float] = []
    errors = 0
    for _ in procs:
        part, errs = queue.get(timeout=duration + 60)
        latencies += part
        errors += errs
    for proc in procs:
        proc.join(10)
    latencies.sort()
    count = len(latencies)
    if not count:
        return {"requests": 0, "errors": errors}
    return {
        "requests": count,
        "errors": errors,
        "requests_per_second": round(count / duration, 1),
        "p50_ms": round(latencies[count // 2] * 1000, 3),
        "p90_ms": round(latencies[int(count * 0.90)] * 1000, 3),
        "p99_ms": round(latencies[min(int(count * 0.99), count - 1)] * 1000, 3),
        "max_ms": round(latencies[-1] * 1000, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3),
    }


def rss_kib(pid: int) -> dict:
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each load phase (default 10)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent HTTP clients (default 50)")
    parser.add_argument("--rate", type=float, default=10.0,
                        help="requests per second per client in the paced phase (default 10: 500 req/s in all)")
    parser.add_argument("--processes", type=int, default=5, help="client processes (default 5)")
    parser.add_argument("--interval", type=float, default=1.0, help="checker interval during the run (default 1 s)")
    parser.add_argument("--no-closed-loop", action="store_true", help="skip the closed-loop (capacity) phase")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    if not 0 < args.duration <= 120 or not 1 <= args.clients <= 500:
        parser.error("--duration must be in (0, 120] and --clients in [1, 500]")

    server_bin = shutil.which("redis-server") or shutil.which("valkey-server")
    if not server_bin:
        print("redis-server (or valkey-server) is not installed", file=sys.stderr)
        return 2
    import redis

    work = Path(tempfile.mkdtemp(prefix="bench-health-"))
    redis_port, http_port = free_port(), free_port()
    (work / "redis.conf").write_text(
        f"port {redis_port}\nbind 127.0.0.1\ndir {work}\nsave \"\"\nappendonly no\ndaemonize no\n"
        f"logfile {work / 'redis.log'}\nuser monitor on >{MONITOR_PASSWORD} {REQUIRED_ACL}\n")
    conn_file = work / "monitor.toml"
    conn_file.write_text(f'name = "main"\nhost = "127.0.0.1"\nport = {redis_port}\n'
                         f'username = "monitor"\npassword = "{MONITOR_PASSWORD}"\n')
    conn_file.chmod(0o600)
    config = work / "health.toml"
    config.write_text(f"listen_address = \"127.0.0.1\"\nlisten_port = {http_port}\ninterval = {args.interval}\n"
                      f"timeout = {min(args.interval, 2.0)}\nlog_level = \"warning\"\n"
                      f"[[instances]]\nname = \"main\"\nconnection_file = \"{conn_file}\"\n")
    redis_proc = checker = None
    results: dict = {"server": "", "python": sys.version.split()[0], "interval_s": args.interval,
                     "clients": args.clients}
    try:
        redis_proc = subprocess.Popen([server_bin, str(work / "redis.conf")], cwd=work,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(redis_port)
        admin = redis.Redis(host="127.0.0.1", port=redis_port, decode_responses=True, socket_timeout=5)
        server_info = admin.info("server")
        results["server"] = (f"{server_info.get('server_name', 'redis')} "
                             f"{server_info.get('valkey_version', server_info['redis_version'])}")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        checker = subprocess.Popen([sys.executable, "-m", "redis_infra.health", "serve", "--config", str(config)],
                                   cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_port(http_port)
        deadline = time.monotonic() + 10
        while http_get(http_port, "/api/health")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("checker never became healthy")
            time.sleep(0.1)

        # 1. commands per check cycle, while idle
        before_stats = admin.info("commandstats")
        before_cycles = checker_counter(http_port, "redis_infra_checks_total")
        before_sent = checker_counter(http_port, "redis_infra_check_commands_total")
        time.sleep(args.interval * 5 + 0.2)
        after_stats = admin.info("commandstats")
        after_cycles = checker_counter(http_port, "redis_infra_checks_total")
        after_sent = checker_counter(http_port, "redis_infra_check_commands_total")
        cycles = after_cycles - before_cycles
        per_command = {}
        for key, value in after_stats.items():
            calls = value["calls"] - before_stats.get(key, {}).get("calls", 0)
            if key == "cmdstat_info":
                calls -= 1          # this script's first INFO commandstats
            if calls:
                per_command[key.removeprefix("cmdstat_")] = round(calls / cycles, 2) if cycles else calls
        results["cycles_measured"] = int(cycles)
        results["commands_per_cycle_server"] = round(sum(per_command.values()), 2)
        results["commands_per_cycle_by_command"] = per_command
        sent = after_sent - before_sent
        results["commands_per_cycle_checker_counter"] = round(sent / cycles, 2) if cycles else None

        results["rss_kib_idle"] = rss_kib(checker.pid)
        # 2. paced load, 3. closed loop
        results["paced"] = run_load(http_port, args.clients, args.processes, args.duration, args.rate)
        results["paced"]["offered_rps"] = args.clients * args.rate
        if not args.no_closed_loop:
            results["closed_loop"] = run_load(http_port, args.clients, args.processes, args.duration, None)
        results["rss_kib_after_load"] = rss_kib(checker.pid)
        results["checker_cycles_during_run"] = int(checker_counter(http_port, "redis_infra_checks_total")
                                                   - after_cycles)
        status, _ = http_get(http_port, "/api/health")
        results["final_health_http_status"] = status
    finally:
        for proc in (checker, redis_proc):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        shutil.rmtree(work, ignore_errors=True)

    paced = results["paced"]
    print(f"server: {results['server']}, checker on Python {results['python']}, interval {args.interval:g} s")
    print(f"commands per check cycle (INFO commandstats delta over {results['cycles_measured']} cycles): "
          f"{results['commands_per_cycle_server']}  {results['commands_per_cycle_by_command']}")
    print(f"  checker's own count: {results['commands_per_cycle_checker_counter']} per cycle")
    print(f"paced load: {args.clients} keep-alive clients x {args.rate:g} req/s for {args.duration:g} s "
          f"(/api/health and /metrics alternately)")
    print(f"  requests {paced['requests']}, errors {paced['errors']}, {paced['requests_per_second']} req/s, "
          f"p50 {paced['p50_ms']} ms, p90 {paced['p90_ms']} ms, p99 {paced['p99_ms']} ms, max {paced['max_ms']} ms")
    if "closed_loop" in results:
        closed = results["closed_loop"]
        print(f"closed loop: {args.clients} clients back to back for {args.duration:g} s")
        print(f"  requests {closed['requests']}, errors {closed['errors']}, {closed['requests_per_second']} req/s, "
              f"p50 {closed['p50_ms']} ms, p99 {closed['p99_ms']} ms, max {closed['max_ms']} ms")
    idle, loaded = results["rss_kib_idle"], results["rss_kib_after_load"]
    print(f"checker RSS: idle {idle['VmRSS'] / 1024:.1f} MiB, after load {loaded['VmRSS'] / 1024:.1f} MiB, "
          f"peak {loaded['VmHWM'] / 1024:.1f} MiB")
    print(f"check cycles during the load: {results['checker_cycles_during_run']}, "
          f"final /api/health: {results['final_health_http_status']}")
    ok_latency = paced["p99_ms"] < 5
    ok_rss = loaded["VmHWM"] / 1024 < 40
    print(f"targets: p99 < 5 ms {'met' if ok_latency else 'MISSED'}, RSS < 40 MB {'met' if ok_rss else 'MISSED'}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0 if ok_latency and ok_rss else 1


if __name__ == "__main__":
    sys.exit(main())
