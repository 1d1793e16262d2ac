"""The collection's RESP client (plugins/module_utils/resp.py, used by redis_command) over TLS, against real
redis-server processes that serve only TLS. module_utils imports nothing of redis_infra, so the file is loaded
as it is."""

from __future__ import annotations

import importlib.util
import ssl
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("redis_infra_resp", ROOT / "plugins/module_utils/resp.py")
resp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(resp)


def _settings(port: int, tls_files, **fields) -> dict:
    return {"name": "main", "host": "127.0.0.1", "port": port, "tls": True, "tls_ca_file": str(tls_files.ca_file),
            **fields}


def _ping(settings: dict):
    conn = resp.connect(settings, timeout=5)
    try:
        return conn.call("PING")
    finally:
        conn.close()


def test_tls_over_tcp_with_the_ca_and_a_password(tls_redis_factory, tls_files):
    server = tls_redis_factory("requirepass resp-secret\n")
    conn = resp.connect(_settings(server.port, tls_files, password="resp-secret"), timeout=5)
    try:
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert conn.call("SET", "k", "v" * 100000) == "OK"      # a reply larger than one TLS record
        assert conn.call("GET", "k") == "v" * 100000
    finally:
        conn.close()


def test_the_server_is_verified(tls_redis_factory, tls_files):
    server = tls_redis_factory()
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _ping(_settings(server.port, tls_files, tls_ca_file=str(tls_files.other_ca_file)))
    cert, key = tls_files.issue("resp-elsewhere", names=("redis.example.org",))
    elsewhere = tls_redis_factory(cert_file=cert, key_file=key)
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        _ping(_settings(elsewhere.port, tls_files))
    assert _ping(_settings(elsewhere.port, tls_files, tls_check_hostname=False)) == "PONG"


def test_client_certificate_when_the_server_requires_one(tls_redis_factory, tls_files):
    server = tls_redis_factory(clients="yes")
    assert _ping(_settings(server.port, tls_files, tls_cert_file=str(tls_files.cert_file),
                           tls_key_file=str(tls_files.key_file))) == "PONG"
    with pytest.raises((ssl.SSLError, ConnectionError)):   # refused in the handshake or at the first read
        _ping(_settings(server.port, tls_files))


def test_tls_files_that_cannot_be_loaded_are_named(tls_redis_factory, tls_files):
    server = tls_redis_factory()
    missing = str(tls_files.directory / "missing-ca.crt")
    with pytest.raises(resp.TLSFilesError, match=f"cannot load the TLS files \\(tls_ca_file {missing}\\)"):
        _ping(_settings(server.port, tls_files, tls_ca_file=missing))


def test_the_unix_socket_stays_plain(tls_redis_factory, tls_files, tmp_path):
    path = tmp_path / "resp.sock"
    server = tls_redis_factory(f"unixsocket {path}\nunixsocketperm 700\n")
    settings = _settings(server.port, tls_files, unix_socket=str(path), tls_ca_file=str(tls_files.other_ca_file))
    assert _ping(settings) == "PONG"
