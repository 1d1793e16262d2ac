"""The checker and instances that speak TLS (connection file tls = true), against real redis-server processes
that serve only TLS (port 0, tls-port): the check over TLS, and the days left on the served certificate."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta

import pytest
from health_helpers import MONITOR_PASSWORD, write_connection_file
from prometheus_client.parser import text_string_to_metric_families

from redis_infra.health import DEGRADED, HEALTHY, UNHEALTHY, checks
from redis_infra.health.service import Monitor

EXPIRY_METRIC = "redis_infra_tls_certificate_expiry_timestamp_seconds"


def _not_after(days: float) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


def test_tls_over_tcp_is_healthy_and_the_certificate_is_read(make_tls_instance, health_config, tls_files):
    end = _not_after(400)
    cert, key = tls_files.issue("health-400d", not_after=end)
    instance = make_tls_instance(tls={"cert_file": cert, "key_file": key})
    config, _ = health_config([instance])
    snapshot = Monitor(config).run_once()
    (result,) = snapshot.results
    assert result.up and result.status == HEALTHY, [check.to_dict() for check in result.checks]
    assert result.address == f"127.0.0.1:{instance.port}"
    assert f"at 127.0.0.1:{instance.port} as monitor" in result.check("connection").reason
    tls = result.check("tls_certificate")
    assert tls.status == HEALTHY and tls.unit == "d" and 399.9 < tls.value <= 400
    assert tls.reason.startswith(f"the certificate on 127.0.0.1:{instance.port} expires in 400.0 d")
    assert result.tls_certificate_expiry == end.timestamp()
    detail = result.to_dict()["checks"][-1]
    assert detail["name"] == "tls_certificate" and detail["details"]["not_after"] == \
        end.isoformat().replace("+00:00", "Z")
    samples = [sample for family in text_string_to_metric_families(snapshot.metrics_body.decode())
               for sample in family.samples if sample.name == EXPIRY_METRIC]
    assert [(sample.labels, sample.value) for sample in samples] == [({"redis_instance": "main"},
                                                                      end.timestamp())]


def test_a_ca_that_did_not_sign_the_server_is_unhealthy_saying_tls(make_tls_instance, health_config, tls_files):
    instance = make_tls_instance(tls_ca_file=str(tls_files.other_ca_file))
    config, _ = health_config([instance])
    result = Monitor(config).run_once().results[0]
    assert result.status == UNHEALTHY and not result.up
    reason = result.check("connection").reason
    assert "TLS failed" in reason and "certificate verify failed" in reason, reason
    missing = make_tls_instance(name="missing", tls_ca_file=str(tls_files.directory / "gone.crt"))
    config, _ = health_config([missing])
    result = Monitor(config).run_once().results[0]
    assert result.status == UNHEALTHY
    assert f"cannot load the TLS files (tls_ca_file {tls_files.directory / 'gone.crt'})" in \
        result.check("connection").reason


def test_a_client_certificate_when_the_server_requires_one(make_tls_instance, health_config, tls_files):
    instance = make_tls_instance(tls={"clients": "yes"}, tls_cert_file=str(tls_files.cert_file),
                                 tls_key_file=str(tls_files.key_file))
    config, _ = health_config([instance])
    result = Monitor(config).run_once().results[0]
    assert result.status == HEALTHY, [check.to_dict() for check in result.checks]


@pytest.mark.parametrize(("days", "status", "words"), [
    (10, DEGRADED, "expires in 10.0 d"),
    (3, UNHEALTHY, "expires in 3.0 d"),
])
def test_a_certificate_near_its_end(make_tls_instance, health_config, tls_files, days, status, words):
    cert, key = tls_files.issue(f"health-{days}d", not_after=_not_after(days))
    instance = make_tls_instance(tls={"cert_file": cert, "key_file": key})
    config, _ = health_config([instance])
    result = Monitor(config).run_once().results[0]
    tls = result.check("tls_certificate")
    assert tls.status == status and words in tls.reason and f"below the {status} threshold" in tls.reason
    assert result.status == status and result.check("connection").status == HEALTHY
    config, _ = health_config([instance], thresholds={"tls_expiry_degraded_days": 2, "tls_expiry_unhealthy_days": 1})
    assert Monitor(config).run_once().results[0].check("tls_certificate").status == HEALTHY


def test_the_certificate_is_read_every_few_minutes_and_again_after_a_restart(make_tls_instance, health_config,
                                                                             tls_files, monkeypatch):
    cert, key = tls_files.issue("health-before", not_after=_not_after(30))
    instance = make_tls_instance(tls={"cert_file": cert, "key_file": key})
    config, _ = health_config([instance])
    monitor = Monitor(config)
    first = monitor.run_once().results[0].check("tls_certificate")
    # A renewed certificate, loaded without a restart: seen only when the next handshake is due.
    renewed, renewed_key = tls_files.issue("health-renewed", not_after=_not_after(90))
    instance.admin().execute_command("CONFIG", "SET", "tls-cert-file", str(renewed), "tls-key-file", str(renewed_key))
    second = monitor.run_once().results[0].check("tls_certificate")
    assert second.details == first.details and 29.9 < second.value <= 30
    monkeypatch.setattr(checks, "TLS_PROBE_INTERVAL", 0.0)
    third = monitor.run_once().results[0].check("tls_certificate")
    assert 89.9 < third.value <= 90 and third.details["probed_at"] >= first.details["probed_at"]
    monkeypatch.undo()
    # A restart with another certificate: read at the next check.
    instance.proc.stop()
    text = instance.proc.config.read_text().replace(str(renewed), str(cert)).replace(str(renewed_key), str(key))
    instance.proc.config.write_text(text)
    instance.proc.start()
    restarted = monitor.run_once().results[0]
    assert restarted.check("uptime").status == DEGRADED
    assert 29.9 < restarted.check("tls_certificate").value <= 30


def test_a_tls_port_that_never_answers_costs_no_more_than_the_timeout(make_tls_instance, health_config, tls_files,
                                                                      tmp_path):
    """The check itself goes through the unix socket (plain); the handshake to a port that accepts and then says
    nothing ends within what is left of the instance's timeout."""
    path = tmp_path / "health-tls.sock"
    instance = make_tls_instance(extra=f"unixsocket {path}\nunixsocketperm 700\n")
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        conn_file = write_connection_file(tmp_path / "silent.toml", "main", port, "monitor", MONITOR_PASSWORD,
                                          unix_socket=str(path), tls=True, tls_ca_file=str(tls_files.ca_file))
        config, _ = health_config([{"name": "main", "connection_file": str(conn_file)}])
        started = time.monotonic()
        result = Monitor(config).checkers[0].run()
        took = time.monotonic() - started
    assert took < config.timeout + 0.2, took
    assert result.up and result.address == str(path)
    tls = result.check("tls_certificate")
    assert tls.status == UNHEALTHY and f"TLS handshake with 127.0.0.1:{port} failed: no answer within" in tls.reason
    assert result.tls_certificate_expiry is None
    assert instance.port != port


def test_certificate_read_without_a_client_certificate_where_the_server_requires_one(make_tls_instance, health_config,
                                                                                     tmp_path):
    """tls-auth-clients yes, and the monitoring user's connection file has no client certificate (the roles give one
    only to root's files): the check goes through the socket, and the handshake still reads the certificate (in
    TLS 1.3 the server verifies the client after the client has verified the server)."""
    path = tmp_path / "health-mtls.sock"
    instance = make_tls_instance(extra=f"unixsocket {path}\nunixsocketperm 700\n", tls={"clients": "yes"},
                                 unix_socket=str(path))
    config, _ = health_config([instance])
    result = Monitor(config).run_once().results[0]
    assert result.status == HEALTHY and result.address == str(path), [check.to_dict() for check in result.checks]
    assert result.check("tls_certificate").status == HEALTHY and result.tls_certificate_expiry is not None
