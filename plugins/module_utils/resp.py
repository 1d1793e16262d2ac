# Copyright: redis-infra contributors
# MIT License (see LICENSE)
"""A minimal RESP2 client for the collection's modules: no client library is needed on the hosts.

`settings` is a parsed connection file (redis_infra/connection.py documents its fields). The unix
socket is plain; TCP speaks TLS when `tls` is true: TLS 1.2 or later, the server's certificate
verified against `tls_ca_file` (the system's CAs when absent) and, unless `tls_check_hostname` is
false, for `host`; `tls_cert_file` and `tls_key_file` are the client certificate, when one is asked.
"""

from __future__ import annotations

import socket
import ssl
import tomllib


class RedisReplyError(Exception):
    pass


class TLSFilesError(Exception):
    """The CA bundle or the client certificate of the settings cannot be loaded."""


def tls_context(settings):
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.get("tls_ca_file"))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = settings.get("tls_check_hostname", True)
        if settings.get("tls_cert_file"):
            context.load_cert_chain(settings["tls_cert_file"], settings.get("tls_key_file"))
    except OSError as exc:
        files = ", ".join(f"{key} {settings[key]}" for key in ("tls_ca_file", "tls_cert_file", "tls_key_file")
                          if settings.get(key))
        raise TLSFilesError(f"cannot load the TLS files ({files or 'the system CAs'}): {exc}") from None
    return context


class Connection:
    def __init__(self, settings, timeout):
        path = settings.get("unix_socket")
        if path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(path)
            except OSError:
                self.sock.close()
                path = None
        if not path:
            context = tls_context(settings) if settings.get("tls") else None
            host = settings.get("host", "127.0.0.1")
            self.sock = socket.create_connection((host, settings.get("port", 6379)), timeout)
            if context is not None:
                try:
                    self.sock = context.wrap_socket(self.sock, server_hostname=host)
                except Exception:
                    self.sock.close()
                    raise
        self.buffer = b""

    def close(self):
        self.sock.close()

    def _line(self):
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _exact(self, size):
        while len(self.buffer) < size + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size + 2:]
        return data

    def read(self):
        line = self._line()
        kind, rest = line[:1], line[1:].decode("utf-8", "replace")
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RedisReplyError(rest)
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exact(size).decode("utf-8", "replace")
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.read() for _item in range(size)]
        raise ConnectionError(f"unexpected reply from the server: {line[:80]!r}")

    def call(self, *args):
        payload = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = str(arg).encode()
            payload.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(payload))
        return self.read()


class SettingsError(Exception):
    """A connection file that cannot be read or parsed; the message names it."""


def load_settings(path):
    """The parsed connection file at path."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"cannot read connection file {path}: {exc}") from exc


def read_settings(module):
    """The parsed connection file of the module's option connection_file; fails the module, naming the file,
    when it cannot be read."""
    try:
        return load_settings(module.params["connection_file"])
    except SettingsError as exc:
        module.fail_json(msg=str(exc))
        raise  # not reached: fail_json exits


def at_node(settings, address, port):
    """The same credentials and TLS settings, for another node reached over TCP at address:port."""
    node_settings = {key: value for key, value in settings.items() if key != "unix_socket"}
    node_settings.update(host=address, port=port)
    return node_settings


def connect(settings, timeout):
    conn = Connection(settings, timeout)
    try:
        if settings.get("password"):
            conn.call("AUTH", settings.get("username") or "default", settings["password"])
        return conn
    except Exception:
        conn.close()
        raise
