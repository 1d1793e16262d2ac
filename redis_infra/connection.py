"""Connection settings for one Redis/Valkey instance, read from a connection file.

The Ansible roles write one connection file per instance and ACL user (mode 0600 or 0640), so that
no tool ever takes a password from its command line or environment. The file is TOML:

    name = "main"                                # instance name
    host = "127.0.0.1"
    port = 6379
    unix_socket = "/run/redis-main/redis-server.sock"   # optional; preferred when readable
    username = "monitor"                         # optional; "default" when absent
    password = "..."                             # optional
    tls = false                                  # optional

Every tool (health checker, backup tool) reads its instances through `load()`.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass


class ConnectionFileError(Exception):
    """A connection file is missing, unreadable or malformed; the message says which and why."""


@dataclass(frozen=True)
class ConnectionSettings:
    name: str
    host: str = "127.0.0.1"
    port: int = 6379
    unix_socket: str | None = None
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:  # never print the password
        return (f"ConnectionSettings(name={self.name!r}, host={self.host!r}, port={self.port}, "
                f"unix_socket={self.unix_socket!r}, username={self.username!r}, tls={self.tls})")

    def client(self, timeout: float = 5.0, prefer_socket: bool = True):
        """A redis-py client for these settings (imported lazily: the package must import without it)."""
        import redis

        common = {
            "username": self.username,
            "password": self.password,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "decode_responses": True,
        }
        if prefer_socket and self.unix_socket and os.access(self.unix_socket, os.R_OK | os.W_OK):
            return redis.Redis(unix_socket_path=self.unix_socket, **common)
        return redis.Redis(host=self.host, port=self.port, ssl=self.tls, **common)


_FIELDS = {"name": str, "host": str, "port": int, "unix_socket": str, "username": str,
           "password": str, "tls": bool}


def parse(text: str, source: str = "<string>") -> ConnectionSettings:
    """Parse connection-file text; raise ConnectionFileError naming the source and the bad field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConnectionFileError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConnectionFileError(f"{source}: unknown field(s) {', '.join(unknown)}; "
                                  f"allowed: {', '.join(_FIELDS)}")
    for key, kind in _FIELDS.items():
        if key in data and not (isinstance(data[key], kind) and not (kind is int and isinstance(data[key], bool))):
            raise ConnectionFileError(f"{source}: field '{key}' must be {kind.__name__}, "
                                      f"got {type(data[key]).__name__}")
    if "name" not in data:
        raise ConnectionFileError(f"{source}: field 'name' is required")
    port = data.get("port", 6379)
    if not 1 <= port <= 65535:
        raise ConnectionFileError(f"{source}: field 'port' must be 1-65535, got {port}")
    return ConnectionSettings(**data)


def read_private(path: str, error: type[Exception] = ConnectionFileError,
                 what: str = "connection file") -> tuple[str, int]:
    """The text and mode of a small file that may hold a secret, read through one descriptor (so the
    mode is the file's that was read); `error` names the path and the cause when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            text = handle.read().decode("utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text") from None
    return text, mode


def load(path: str) -> ConnectionSettings:
    """Read a connection file. A file holding a password must not be readable by others."""
    text, mode = read_private(path)
    settings = parse(text, path)
    if settings.password and mode & stat.S_IROTH:
        raise ConnectionFileError(f"{path}: holds a password but is world-readable; chmod 0600 or 0640")
    return settings
