"""The HTTP server on its own: stale results, the connection bound, HEAD, and `serve` as a process."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time

from health_helpers import REPO, write_health_config

from redis_infra.health import UNHEALTHY


def _dead_instance(tmp_path) -> dict:
    return {"name": "ghost", "connection_file": str(tmp_path / "no-such-connection-file.toml")}


def test_unknown_before_first_cycle_and_stale_results(health_config, run_checker, tmp_path):
    from redis_infra.health.service import Monitor

    config, _ = health_config([_dead_instance(tmp_path)], interval=30)
    fresh = Monitor(config)
    assert fresh.snapshot.status == "unknown" and fresh.snapshot.health_code == 503
    assert json.loads(fresh.snapshot.health_body)["reason"] == "no check cycle completed yet"

    checker = run_checker(config)
    checker.wait_for(lambda d: d["instances"], what="first cycle")
    status, health = checker.get_json("/api/health")
    assert status == 503 and health["status"] == UNHEALTHY
    assert any("connection file" in reason for reason in health["reasons"])
    checker.monitor.stale_after = lambda: -1.0          # pretend the loop stopped long ago
    status, health = checker.get_json("/api/health")
    assert status == 503 and "stale" in health["reason"]


def test_head_and_keep_alive(health_config, run_checker, tmp_path):
    config, _ = health_config([_dead_instance(tmp_path)])
    checker = run_checker(config)
    checker.wait_for(lambda d: d["instances"], what="first cycle")
    conn = http.client.HTTPConnection("127.0.0.1", checker.port, timeout=5)
    try:
        for method, path in (("HEAD", "/metrics"), ("GET", "/api/health"), ("GET", "/"), ("GET", "/metrics?x=1")):
            conn.request(method, path)           # the same connection: keep-alive
            response = conn.getresponse()
            body = response.read()
            assert response.status in (200, 503)
            if method == "HEAD":
                assert body == b"" and int(response.getheader("Content-Length")) > 0
    finally:
        conn.close()


def test_connection_limit(health_config, run_checker, tmp_path):
    config, _ = health_config([_dead_instance(tmp_path)], http_max_connections=2)
    checker = run_checker(config)
    checker.wait_for(lambda d: d["instances"], what="first cycle")
    deadline = time.monotonic() + 5
    while checker.server.connections > 0:       # the connections of earlier requests are closed
        assert time.monotonic() < deadline
        time.sleep(0.02)
    held = [socket.create_connection(("127.0.0.1", checker.port), timeout=2) for _ in range(2)]
    try:
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", checker.port), timeout=2)
        extra.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert extra.recv(100) == b""        # closed without an answer
        extra.close()
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while True:       # the slots come back once the held connections are gone
        try:
            assert checker.get("/api/health", timeout=1)[0] == 503
            break
        except (OSError, http.client.HTTPException):
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_serve_process_answers_and_stops_on_sigterm(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = write_health_config(tmp_path / "health.toml", [_dead_instance(tmp_path)], listen_port=port, interval=1)
    proc = subprocess.Popen([sys.executable, "-m", "redis_infra.health", "serve", "--config", str(path)],
                            cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/api/health")
                response = conn.getresponse()
                body = json.loads(response.read())
                conn.close()
                if body["status"] != "unknown":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "serve never answered"
            time.sleep(0.1)
        assert response.status == 503 and body["status"] == UNHEALTHY
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr
        assert "serving on 127.0.0.1 port" in stderr and "Traceback" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_serve_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        path = write_health_config(tmp_path / "health.toml", [_dead_instance(tmp_path)], listen_port=port)
        result = subprocess.run([sys.executable, "-m", "redis_infra.health", "serve", "--config", str(path)],
                                cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                                capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
