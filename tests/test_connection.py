"""Connection files (redis_infra/connection.py): the fields and their rules, and TLS over TCP against real
redis-server processes that serve only TLS (certificates from trustme)."""

from __future__ import annotations

import re
import socket
import ssl

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redis_infra import connection

BASE = 'name = "main"\nhost = "127.0.0.1"\nport = 6380\n'


def test_tls_fields_are_read():
    settings = connection.parse(BASE + 'password = "pw"\ntls = true\ntls_ca_file = "/etc/ca.crt"\n'
                                'tls_cert_file = "/etc/c.crt"\ntls_key_file = "/etc/c.key"\n'
                                'tls_check_hostname = false\n')
    assert (settings.tls, settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file,
            settings.tls_check_hostname) == (True, "/etc/ca.crt", "/etc/c.crt", "/etc/c.key", False)
    assert "pw" not in repr(settings) and "/etc/ca.crt" in repr(settings)
    assert settings.tls_kwargs() == {"ssl": True, "ssl_ca_certs": "/etc/ca.crt", "ssl_certfile": "/etc/c.crt",
                                     "ssl_keyfile": "/etc/c.key", "ssl_cert_reqs": "required",
                                     "ssl_check_hostname": False}
    plain = connection.parse(BASE)
    assert plain.tls is False and plain.tls_check_hostname is True and plain.tls_kwargs() == {}
    verified = connection.parse(BASE + "tls = true\n").tls_kwargs()
    assert verified["ssl_cert_reqs"] == "required" and verified["ssl_check_hostname"] is True
    assert verified["ssl_ca_certs"] is None          # the system's CAs


@pytest.mark.parametrize("text, message", [
    ("tls = true\ntls_ca_file = 1\n", "field 'tls_ca_file' must be str, got int"),
    ('tls = true\ntls_check_hostname = "no"\n', "field 'tls_check_hostname' must be bool, got str"),
    ('tls = "yes"\n', "field 'tls' must be bool, got str"),
    ('tls = true\ntls_cert_file = "/c.crt"\n', "fields 'tls_cert_file' and 'tls_key_file' go together (a client "
                                               "certificate and its key): 'tls_cert_file' is given without "
                                               "'tls_key_file'"),
    ('tls = true\ntls_key_file = "/c.key"\n', "'tls_key_file' is given without 'tls_cert_file'"),
    ('tls_ca_file = "/ca.crt"\n', "field(s) tls_ca_file need tls = true"),
    ('tls = false\ntls_ca_file = "/ca.crt"\ntls_check_hostname = true\n',
     "field(s) tls_ca_file, tls_check_hostname need tls = true"),
    ('tls = true\ntls_ca = "/ca.crt"\n', "unknown field(s) tls_ca; allowed:"),
])
def test_bad_tls_fields_are_refused_naming_them(text, message):
    with pytest.raises(connection.ConnectionFileError, match="^main.toml: .*" + re.escape(message)):
        connection.parse(BASE + text, "main.toml")


def _ping(settings: connection.ConnectionSettings, **options) -> bool:
    """PING with no retries (redis-py >= 5 retries with backoff: a refused handshake would take seconds)."""
    client = settings.client(timeout=5, retry=Retry(NoBackoff(), 0), **options)
    try:
        return client.ping()
    finally:
        client.close()


def _settings(port: int, tls_files, **fields) -> connection.ConnectionSettings:
    fields = {"host": "127.0.0.1", "tls": True, "tls_ca_file": str(tls_files.ca_file), **fields}
    return connection.ConnectionSettings(name="main", port=port, **fields)


def test_client_speaks_tls_over_tcp_and_verifies_the_server(tls_redis_factory, tls_files):
    server = tls_redis_factory()
    assert _ping(_settings(server.port, tls_files)) is True
    # The certificate names 127.0.0.1 and localhost: both hosts pass the hostname check.
    assert _ping(_settings(server.port, tls_files, host="localhost")) is True
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        _ping(_settings(server.port, tls_files, tls_ca_file=str(tls_files.other_ca_file)))
    # Plain TCP to a TLS-only server gets no answer it understands.
    with pytest.raises(redis.ConnectionError):
        _ping(connection.ConnectionSettings(name="main", port=server.port))


def test_hostname_check_follows_the_field(tls_redis_factory, tls_files):
    cert, key = tls_files.issue("elsewhere", names=("redis.example.org",))
    server = tls_redis_factory(cert_file=cert, key_file=key)
    with pytest.raises(redis.ConnectionError, match="match|mismatch"):
        _ping(_settings(server.port, tls_files))
    assert _ping(_settings(server.port, tls_files, tls_check_hostname=False)) is True


def test_client_certificate_when_the_server_requires_one(tls_redis_factory, tls_files):
    server = tls_redis_factory(clients="yes")
    with_cert = _settings(server.port, tls_files, tls_cert_file=str(tls_files.cert_file),
                          tls_key_file=str(tls_files.key_file))
    assert _ping(with_cert) is True
    with pytest.raises(redis.ConnectionError):
        _ping(_settings(server.port, tls_files))


def test_unix_socket_is_preferred_and_plain(tls_redis_factory, tls_files, tmp_path):
    path = tmp_path / "tls-server.sock"
    server = tls_redis_factory(f"unixsocket {path}\nunixsocketperm 700\n")
    # A wrong CA does not matter on the socket, and does over TCP.
    settings = _settings(server.port, tls_files, unix_socket=str(path), tls_ca_file=str(tls_files.other_ca_file))
    assert _ping(settings) is True
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        _ping(settings, prefer_socket=False)


def test_ssl_context_for_a_raw_socket(tls_redis_factory, tls_files):
    server = tls_redis_factory(clients="yes")
    settings = _settings(server.port, tls_files, tls_cert_file=str(tls_files.cert_file),
                         tls_key_file=str(tls_files.key_file))
    context = settings.ssl_context()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2 and context.verify_mode == ssl.CERT_REQUIRED
    with socket.create_connection(("127.0.0.1", server.port), 5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"PING\r\n")
        assert tls.recv(64) == b"+PONG\r\n"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    wrong = _settings(server.port, tls_files, tls_ca_file=str(tls_files.other_ca_file)).ssl_context()
    with socket.create_connection(("127.0.0.1", server.port), 5) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        wrong.wrap_socket(raw, server_hostname="127.0.0.1")
    missing = tls_files.directory / "missing.crt"
    with pytest.raises(connection.TLSFilesError, match=re.escape(f"cannot load the TLS files (tls_ca_file {missing}, "
                                                                 f"tls_cert_file {tls_files.cert_file}, tls_key_file")):
        _settings(server.port, tls_files, tls_ca_file=str(missing), tls_cert_file=str(tls_files.cert_file),
                  tls_key_file=str(tls_files.key_file)).ssl_context()
    with pytest.raises(connection.TLSFilesError, match="cannot load the TLS files .*tls_key_file"):
        _settings(server.port, tls_files, tls_cert_file=str(tls_files.cert_file),
                  tls_key_file=str(tls_files.ca_file)).ssl_context()
