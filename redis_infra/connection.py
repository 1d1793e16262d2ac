"""Connection settings for one Redis/Valkey instance, read from a connection file.

The Ansible roles write one connection file per instance and ACL user (mode 0600 or 0640), so that
no tool ever takes a password from its command line or environment. The file is TOML:

    name = "main"                                # instance name
    host = "127.0.0.1"
    port = 6379
    unix_socket = "/run/redis-main/redis-server.sock"   # optional; preferred when readable
    username = "monitor"                         # optional; "default" when absent
    password = "..."                             # optional
    tls = false                                  # optional: TLS over TCP (never on the unix socket)
    tls_ca_file = "/etc/redis-infra/tls/ca.crt"  # optional: the CA bundle that verifies the server
    tls_cert_file = "/etc/redis-infra/tls/server.crt"   # optional, with tls_key_file: a client
    tls_key_file = "/etc/redis-infra/tls/server.key"    # certificate, for tls-auth-clients yes
    tls_check_hostname = true                    # optional: the certificate must name `host`

The tls_* fields need `tls = true`, and a client certificate needs its key (and the other way
round). With TLS on, the server's certificate is always verified: against tls_ca_file, or the
system's CAs when the file names none (redis-py also trusts the system's CAs next to tls_ca_file).
TLS 1.2 is the oldest version spoken: Python's default since 3.10, which redis-py 4.3.4 (Debian 12)
relies on, as it has no setting for it.

Every tool (health checker, backup tool, redis-infra-follow) reads its instances through `load()`;
`client()` connects with redis-py, `ssl_context()` serves code that speaks TLS on a socket itself.
"""

from __future__ import annotations

import os
import ssl
import stat
import tomllib
from dataclasses import dataclass


class ConnectionFileError(Exception):
    """A connection file is missing, unreadable or malformed; the message says which and why."""


class TLSFilesError(ConnectionFileError):
    """The CA bundle or the client certificate a connection file names cannot be loaded."""


@dataclass(frozen=True)
class ConnectionSettings:
    name: str
    host: str = "127.0.0.1"
    port: int = 6379
    unix_socket: str | None = None
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_check_hostname: bool = True

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:  # never print the password
        return (f"ConnectionSettings(name={self.name!r}, host={self.host!r}, port={self.port}, "
                f"unix_socket={self.unix_socket!r}, username={self.username!r}, tls={self.tls}, "
                f"tls_ca_file={self.tls_ca_file!r}, tls_cert_file={self.tls_cert_file!r}, "
                f"tls_key_file={self.tls_key_file!r}, tls_check_hostname={self.tls_check_hostname})")

    def client(self, timeout: float = 5.0, prefer_socket: bool = True, **options):
        """A redis-py client for these settings (imported lazily: the package must import without it);
        `options` go to redis.Redis as they are (e.g. retry)."""
        import redis

        common = {
            "username": self.username,
            "password": self.password,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "decode_responses": True,
            **options,
        }
        if prefer_socket and self.unix_socket and os.access(self.unix_socket, os.R_OK | os.W_OK):
            return redis.Redis(unix_socket_path=self.unix_socket, **common)
        return redis.Redis(host=self.host, port=self.port, **self.tls_kwargs(), **common)

    def tls_kwargs(self) -> dict:
        """redis-py's keyword arguments for TCP: TLS as the tls_* fields say, or none when tls is off.
        Only arguments redis-py 4.3.4 knows (it has no ssl_min_version: see the module's docstring)."""
        if not self.tls:
            return {}
        return {"ssl": True, "ssl_ca_certs": self.tls_ca_file, "ssl_certfile": self.tls_cert_file,
                "ssl_keyfile": self.tls_key_file, "ssl_cert_reqs": "required",
                "ssl_check_hostname": self.tls_check_hostname}

    def ssl_context(self) -> ssl.SSLContext:
        """A client context for a socket of one's own (wrap it with server_hostname=host): TLS 1.2 or
        later, the server verified against tls_ca_file, the client certificate when there is one.
        Raises TLSFilesError, naming the files, when one cannot be read or loaded."""
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca_file)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.check_hostname = self.tls_check_hostname
            if self.tls_cert_file:
                context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        except OSError as exc:  # ssl.SSLError included
            files = ", ".join(f"{key} {getattr(self, key)}" for key in ("tls_ca_file", "tls_cert_file", "tls_key_file")
                              if getattr(self, key))
            raise TLSFilesError(f"cannot load the TLS files ({files or 'the system CAs'}): {exc}") from None
        return context


TLS_FIELDS = {"tls": bool, "tls_ca_file": str, "tls_cert_file": str, "tls_key_file": str,
              "tls_check_hostname": bool}
_FIELDS = {"name": str, "host": str, "port": int, "unix_socket": str, "username": str,
           "password": str, **TLS_FIELDS}


def check_tls(data: dict, source: str, error: type[Exception] = ConnectionFileError) -> None:
    """The rules between the TLS fields of a parsed file (their types are checked with the others'):
    `error` names the source and the fields."""
    given = [key for key in TLS_FIELDS if key != "tls" and key in data]
    if given and data.get("tls") is not True:
        raise error(f"{source}: field(s) {', '.join(given)} need tls = true")
    if ("tls_cert_file" in data) != ("tls_key_file" in data):
        present, missing = ("tls_cert_file", "tls_key_file") if "tls_cert_file" in data else \
            ("tls_key_file", "tls_cert_file")
        raise error(f"{source}: fields 'tls_cert_file' and 'tls_key_file' go together (a client certificate and "
                    f"its key): '{present}' is given without '{missing}'")


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
    check_tls(data, source)
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
