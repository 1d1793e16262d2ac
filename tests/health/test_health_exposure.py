"""What the checker exposes and to whom: no command arguments anywhere, no webhook secret in the logs,
slow and idle clients dropped without blocking a probe, basic auth and TLS in the exporter-toolkit
convention (web config file with bcrypt hashes)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
from health_helpers import REPO, Receiver, write_health_config

from redis_infra.health import DEGRADED
from redis_infra.health.config import ConfigError, WebhookConfig, parse_config
from redis_infra.health.web import load_web_config, parse_web_config
from redis_infra.health.webhook import WebhookNotifier, redact_url

bcrypt = pytest.importorskip("bcrypt")

SECRET = "tok-7f3a9c-SECRET-d41d8c"
PASSWORD = "scrape-pass-5b2e"


def _dead_instance(tmp_path) -> dict:
    return {"name": "ghost", "connection_file": str(tmp_path / "no-such-connection-file.toml")}


# --- no command arguments ------------------------------------------------------------------------

def test_slow_command_arguments_never_leave_the_checker(make_instance, health_config, run_checker, caplog):
    instance = make_instance(extra="slowlog-log-slower-than 0\n")       # every command is logged
    hook = Receiver()
    try:
        config, _ = health_config([instance], thresholds={"slowlog_threshold_ms": 1},
                                  webhook={"url": hook.url, "timeout": 2, "retries": 0})
        notifier = WebhookNotifier(config.webhook).start()
        checker = run_checker(config, notifier)
        checker.wait_for(lambda d: d["instances"], what="first cycle")
        admin = instance.admin()
        admin.set(f"session:{SECRET}", f"value-{SECRET}")
        # The marker stands for the script's body: a number such as the loop's bound can also appear in a
        # metric's value (process_cpu_seconds_total 3.1300000000000003).
        script = "local marker = 'lua-body-marker' local i = 0 while i < 3000000 do i = i + 1 end return ARGV[1]"
        assert admin.eval(script, 0, SECRET) == SECRET                  # a slow command with a secret
        admin.hset(f"user:{SECRET}", "token", SECRET)

        detail = checker.wait_for(
            lambda d: any(c["name"] == "slowlog" and c["status"] == DEGRADED for c in d["instances"][0]["checks"]),
            what="the slow EVAL reported")
        slowlog = next(c for c in detail["instances"][0]["checks"] if c["name"] == "slowlog")
        assert "EVAL (" in slowlog["reason"]                               # the name and the duration
        assert any(command.startswith("EVAL (") for command in slowlog["details"]["commands"])
        events = hook.wait_for(lambda ev: any(e["check"] == "slowlog" for e in ev))
        bodies = {path: checker.get(path)[2].decode() for path in ("/api/health", "/api/health/redis", "/metrics")}
        assert "EVAL (" in bodies["/api/health"]
        exposed = {**bodies, "webhook": json.dumps(events), "log": caplog.text}
        for where, text in exposed.items():
            assert SECRET not in text, f"{where} carries a command argument"
            assert "lua-body-marker" not in text, f"{where} carries the script"
    finally:
        hook.close()


# --- the webhook URL -----------------------------------------------------------------------------

def test_webhook_url_is_redacted_in_every_log_line(caplog):
    caplog.set_level(logging.WARNING, logger="redis_infra.health")
    failing = Receiver(fail_first=1000)                     # answers HTTP 500
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    refused_port = refused.getsockname()[1]
    refused.close()                                         # nothing listens there: connection refused
    port = failing.server.server_address[1]
    urls = [f"http://127.0.0.1:{port}/services/T0001/B0002/{SECRET}?token={SECRET}x",
            f"http://hook-user:{SECRET}@127.0.0.1:{refused_port}/hooks/{SECRET}"]
    try:
        for url in urls:
            notifier = WebhookNotifier(WebhookConfig(url=url, timeout=1, retries=1, backoff=0.01)).start()
            notifier.notify({"instance": "main", "check": "ping", "old_status": "healthy", "new_status": "degraded"})
            deadline = time.monotonic() + 5
            while notifier.stats["failed"] < 1:
                assert time.monotonic() < deadline, "the delivery never failed"
                time.sleep(0.02)
            notifier.stop()
    finally:
        failing.close()
    lines = [record.getMessage() for record in caplog.records if "webhook" in record.getMessage()]
    assert len(lines) == 4, lines                          # two attempts per URL, one line each
    assert SECRET not in caplog.text and "T0001" not in caplog.text and "hook-user" not in caplog.text
    assert sum(f"http://127.0.0.1:{port}/…" in line for line in lines) == 2
    assert sum(f"http://127.0.0.1:{refused_port}/…" in line for line in lines) == 2
    assert "500" in lines[0]                               # the error is still said
    assert redact_url("https://[::1]:8443/a/b?c=d") == "https://[::1]:8443/…"


def test_a_bad_webhook_url_is_not_echoed_in_the_config_error():
    text = f'[webhook]\nurl = "ftp://hooks.example.org/{SECRET}"\n[[instances]]\nname = "m"\nconnection_file = "/x"\n'
    with pytest.raises(ConfigError) as error:
        parse_config(text, "health.toml")
    assert "key 'webhook.url' must be an http:// or https:// URL" in str(error.value)
    assert SECRET not in str(error.value)


# --- slow and abusive clients --------------------------------------------------------------------

def test_300_slow_and_idle_connections_do_not_block_a_probe(health_config, run_checker, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="redis_infra.health")
    config, _ = health_config([_dead_instance(tmp_path)], http_request_timeout=3)
    assert config.http_max_connections == 1024                       # the default
    checker = run_checker(config)
    checker.wait_for(lambda d: d["instances"], what="first cycle")
    idle, tricklers, readers = [], [], []
    try:
        for index in range(300):
            sock = socket.create_connection(("127.0.0.1", checker.port), timeout=2)
            if index % 3 == 1:          # starts a request and never finishes it
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                tricklers.append(sock)
            elif index % 3 == 2:        # asks for a lot and never reads the answer
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 200)
                readers.append(sock)
            else:                       # connects and says nothing
                idle.append(sock)
        opened = time.monotonic()
        deadline = time.monotonic() + 5
        while checker.server.connections < 300:
            assert time.monotonic() < deadline, f"only {checker.server.connections} connections accepted"
            time.sleep(0.01)

        t0 = time.monotonic()
        status, _, body = checker.get("/api/health", timeout=1)
        assert time.monotonic() - t0 < 1.0
        assert status == 503 and json.loads(body)["instances"] == {"ghost": "unhealthy"}

        # tricklers keep sending a byte now and then; all are dropped once their request is overdue
        alive = set(range(len(tricklers)))
        while alive and time.monotonic() < opened + config.http_request_timeout + 3:
            for index in list(alive):
                try:
                    tricklers[index].sendall(b"a")
                except OSError:
                    alive.discard(index)
            time.sleep(0.2)
        assert not alive, f"{len(alive)} trickling clients were never dropped"
        assert time.monotonic() - opened < config.http_request_timeout + 3
        for sock in idle:
            sock.settimeout(2)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(100) == b""       # closed by the server, with no answer
        deadline = time.monotonic() + 5
        while checker.server.connections > 0:
            assert time.monotonic() < deadline, f"{checker.server.connections} connections still open"
            time.sleep(0.05)
    finally:
        for sock in idle + tricklers + readers:
            sock.close()
    http_lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("http:")]
    assert 1 <= len(http_lines) <= 3, http_lines             # one line per kind of problem, not 300
    assert "request not complete within 3 s" in http_lines[0]
    assert "Traceback" not in caplog.text


def test_bad_requests_get_one_short_answer(health_config, run_checker, tmp_path):
    config, _ = health_config([_dead_instance(tmp_path)])
    checker = run_checker(config)
    for request, code in ((b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab", b"405"),
                          (b"GARBAGE\r\n\r\n", b"400"),
                          (b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
                          (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"501")):
        with socket.create_connection(("127.0.0.1", checker.port), timeout=3) as sock:
            sock.sendall(request)
            assert sock.recv(100).split(b" ")[1] == code, request[:30]
    assert checker.get("/metrics")[0] == 200


# --- basic auth and TLS --------------------------------------------------------------------------

def _hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def _web_config(tmp_path, text: str):
    path = tmp_path / "web.yml"
    path.write_text(text)
    return load_web_config(str(path))


def _auth(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _request(port: int, path: str, headers: dict | None = None, context: ssl.SSLContext | None = None):
    conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context) if context
            else http.client.HTTPConnection("127.0.0.1", port, timeout=5))
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_basic_auth(health_config, run_checker, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="redis_infra.health")
    hashed = _hash(PASSWORD).replace("$2b$", "$2y$")        # htpasswd -B writes $2y$
    web = _web_config(tmp_path, f"basic_auth_users:\n  prometheus: '{hashed}'\n  other: '{_hash('x')}'\n")
    config, _ = health_config([_dead_instance(tmp_path)])
    checker = run_checker(config, web=web)
    for path in ("/metrics", "/api/health", "/api/health/redis", "/"):
        status, headers, body = _request(checker.port, path)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=") and b"redis" not in body
    for headers in (_auth("prometheus", "wrong"), _auth("nobody", PASSWORD), _auth("other", PASSWORD),
                    _auth("prometheus", PASSWORD + "x"), {"Authorization": "Basic !!!"},
                    {"Authorization": "Bearer " + PASSWORD}, _auth("prometheus", "x" * 100)):
        assert _request(checker.port, "/metrics", headers)[0] == 401, headers
    status, _, body = _request(checker.port, "/metrics", _auth("prometheus", PASSWORD))
    assert status == 200 and b"redis_up" in body
    t0 = time.monotonic()
    for _ in range(20):                                      # verified once, then from the cache
        assert _request(checker.port, "/api/health/redis", _auth("prometheus", PASSWORD))[0] == 200
    assert time.monotonic() - t0 < 2
    assert "authentication failed for user 'prometheus'" in caplog.text
    assert PASSWORD not in caplog.text


def _make_certificates(tmp_path) -> tuple[str, str, str]:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it: (ca, cert, key)."""
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (tmp_path / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "server.ext")
    return str(tmp_path / "ca.crt"), str(tmp_path / "server.crt"), str(tmp_path / "server.key")


def test_tls_with_basic_auth(health_config, run_checker, tmp_path):
    ca, cert, key = _make_certificates(tmp_path)
    web = _web_config(tmp_path, f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                                f"basic_auth_users:\n  prometheus: '{_hash(PASSWORD)}'\n")
    config, _ = health_config([_dead_instance(tmp_path)])
    checker = run_checker(config, web=web)
    trusting = ssl.create_default_context(cafile=ca)
    # The first round of checks may still be running when the server answers (a loaded machine): its
    # series appear within a few seconds.
    deadline = time.monotonic() + 15
    while True:
        status, _, body = _request(checker.port, "/metrics", _auth("prometheus", PASSWORD), trusting)
        if status != 200 or b"redis_up" in body or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 200 and b"redis_up" in body
    assert _request(checker.port, "/metrics", None, trusting)[0] == 401
    with pytest.raises(ssl.SSLCertVerificationError):       # a client that does not trust the CA
        _request(checker.port, "/metrics", _auth("prometheus", PASSWORD), ssl.create_default_context())
    with socket.create_connection(("127.0.0.1", checker.port), timeout=3) as plain:   # HTTP to the TLS port
        plain.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            assert b"redis_up" not in plain.recv(65536)
    assert _request(checker.port, "/api/health", _auth("prometheus", PASSWORD), trusting)[0] == 503


@pytest.mark.parametrize(("text", "message"), [
    ("- a\n", "must be a YAML mapping"),
    ("tls_server_config:\n  cert_file: /x\n", "key 'tls_server_config.key_file' is required"),
    ("tls_server_config:\n  cert_file: /x\n  key_file: /y\n  min_version: TLS10\n",
     "key 'tls_server_config.min_version' must be one of TLS12, TLS13"),
    ("tls_server_config:\n  cert_file: /x\n  key_file: /y\n  client_ca_file: /z\n",
     "unknown key 'tls_server_config.client_ca_file'"),
    ("http_server_config: {}\n", "unknown key 'http_server_config'"),
    ("basic_auth_users: [a]\n", "key 'basic_auth_users' must be a mapping"),
    (f"basic_auth_users:\n  prometheus: {PASSWORD}\n", "key 'basic_auth_users.prometheus' must be a bcrypt hash"),
    ("basic_auth_users:\n  'a:b': x\n", "without ':'"),
])
def test_web_config_errors_name_the_key(text, message):
    import yaml

    with pytest.raises(ConfigError) as error:
        parse_web_config(yaml.safe_load(text), "/etc/redis-infra/health-web.yml")
    assert message in str(error.value) and str(error.value).startswith("/etc/redis-infra/health-web.yml: ")
    assert PASSWORD not in str(error.value)                  # a password put there by mistake stays secret


def test_web_config_certificate_that_cannot_load(tmp_path):
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="key 'tls_server_config.cert_file'/'key_file': cannot load"):
        _web_config(tmp_path, f"tls_server_config:\n  cert_file: {tmp_path}/bad.pem\n  key_file: {tmp_path}/bad.pem\n")
    with pytest.raises(ConfigError, match="web config file not found"):
        load_web_config(str(tmp_path / "missing.yml"))


def test_listen_address_list_and_new_keys():
    base = '[[instances]]\nname = "m"\nconnection_file = "/x"\n'
    config = parse_config('listen_address = ["127.0.0.1", "::1"]\nhttp_request_timeout = 2.5\n'
                          'web_config_file = "/etc/redis-infra/health-web.yml"\n' + base)
    assert config.listen_addresses == ("127.0.0.1", "::1") and config.listen_address == "127.0.0.1"
    assert config.http_request_timeout == 2.5 and config.web_config_file == "/etc/redis-infra/health-web.yml"
    assert parse_config(base).listen_addresses == ("127.0.0.1",) and parse_config(base).web_config_file is None
    for text, message in (("listen_address = []\n", "key 'listen_address' must be an address or a non-empty list"),
                          ('listen_address = ["a", "a"]\n', "key 'listen_address' lists an address twice"),
                          ("http_request_timeout = 0\n", "key 'http_request_timeout' must be greater than 0"),
                          ("web_config_file = 1\n", "key 'web_config_file' must be a string")):
        with pytest.raises(ConfigError, match=message):
            parse_config(text + base)


def test_serve_process_with_tls_and_auth(tmp_path):
    ca, cert, key = _make_certificates(tmp_path)
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                   f"basic_auth_users:\n  prometheus: '{_hash(PASSWORD)}'\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = write_health_config(tmp_path / "health.toml", [_dead_instance(tmp_path)], listen_port=port,
                               web_config_file=str(web))
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-m", "redis_infra.health", "serve", "--config", str(path)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        context = ssl.create_default_context(cafile=ca)
        deadline = time.monotonic() + 10
        while True:
            try:
                status, _, _ = _request(port, "/metrics", _auth("prometheus", PASSWORD), context)
                break
            except OSError:
                assert time.monotonic() < deadline, "serve never answered"
                time.sleep(0.1)
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr
        assert "(TLS, basic auth (1 user(s)))" in stderr and "Traceback" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    web.write_text("basic_auth_users:\n  prometheus: plain-text\n")
    result = subprocess.run([sys.executable, "-m", "redis_infra.health", "serve", "--config", str(path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=20)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "key 'basic_auth_users.prometheus'" in result.stderr
    assert "plain-text" not in result.stderr


def test_problem_log_summarises():
    from redis_infra.health.service import ProblemLog

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("test-problem-log")
    logger.addHandler(handler)
    try:
        problems = ProblemLog(logger, interval=0.2)
        for _ in range(500):
            problems.report("timeout", "dropped a client")
        problems.report("tls", "TLS failed")
        assert [r.getMessage() for r in records] == ["http: dropped a client", "http: TLS failed"]
        time.sleep(0.25)
        problems.report("timeout", "dropped a client")
        assert records[-1].getMessage() == "http: dropped a client (499 more like it in the last 0 s)"
        problems.report("timeout", "dropped a client")
        problems.flush()
        assert records[-1].getMessage() == "http: 1 more: timeout"
    finally:
        logger.removeHandler(handler)


def test_threads_stay_few_under_many_connections(health_config, run_checker, tmp_path):
    config, _ = health_config([_dead_instance(tmp_path)])
    checker = run_checker(config)
    before = threading.active_count()
    socks = [socket.create_connection(("127.0.0.1", checker.port), timeout=2) for _ in range(100)]
    try:
        time.sleep(0.2)
        assert threading.active_count() <= before + 2         # one event loop, not a thread per client
    finally:
        for sock in socks:
            sock.close()


def test_hash_passwords_keeps_a_hash_that_still_matches(tmp_path):
    import io

    from redis_infra.health.cli import hash_passwords

    def run(users: dict, keep=None) -> dict:
        out = io.StringIO()
        assert hash_passwords(keep, io.StringIO(json.dumps(users)), out) == 0
        return json.loads(out.getvalue())

    first = run({"prometheus": PASSWORD, "grafana": "other-pass"})
    assert bcrypt.checkpw(PASSWORD.encode(), first["prometheus"].encode())
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n" + "".join(f"  {u}: '{h}'\n" for u, h in first.items()))
    again = run({"prometheus": PASSWORD, "grafana": "changed-pass"}, str(web))
    assert again["prometheus"] == first["prometheus"]               # unchanged: the file stays the same
    assert again["grafana"] != first["grafana"] and bcrypt.checkpw(b"changed-pass", again["grafana"].encode())
    assert run({"prometheus": PASSWORD}, str(tmp_path / "missing.yml"))["prometheus"].startswith("$2b$12$")
