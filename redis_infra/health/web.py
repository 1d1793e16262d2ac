"""TLS and basic authentication for the HTTP server, in the Prometheus exporter-toolkit convention.

The health config names a `web_config_file` (YAML, like the `--web.config.file` of node_exporter and
redis_exporter):

    tls_server_config:
      cert_file: /etc/redis-infra/tls/health.crt     # PEM, the chain after the certificate
      key_file: /etc/redis-infra/tls/health.key
      min_version: TLS12                             # optional: TLS12 (default) or TLS13
    basic_auth_users:                                # optional: user -> bcrypt hash ($2y$, $2b$, $2a$)
      prometheus: $2b$12$...

Only these keys are read; anything else is an error that names the file and the key, as in the TOML
config. bcrypt (Debian's python3-bcrypt) is needed only when users are configured, PyYAML
(python3-yaml) only when the file is used.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import ssl
import threading
from dataclasses import dataclass, field

from .config import ConfigError, _type_name

_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
_USER_NAME = re.compile(r"^[^:\s]{1,64}$")
_TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_TOP_KEYS = ("tls_server_config", "basic_auth_users")
_TLS_KEYS = ("cert_file", "key_file", "min_version")
_CACHE_SIZE = 64


@dataclass(frozen=True)
class WebConfig:
    source: str
    cert_file: str | None = None
    key_file: str | None = None
    min_version: str = "TLS12"
    users: dict[str, bytes] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.cert_file is not None

    def ssl_context(self) -> ssl.SSLContext:
        """A server context with the certificate loaded; ConfigError naming the key when it cannot be."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = _TLS_VERSIONS[self.min_version]
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"{self.source}: key 'tls_server_config.cert_file'/'key_file': cannot load "
                              f"{self.cert_file} and {self.key_file}: {' '.join(text.split())}") from None
        return context


def load_web_config(path: str) -> WebConfig:
    """Read and validate the web config file at `path` (and load its certificate, when it has one)."""
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"{path}: reading the web config needs PyYAML (Debian package python3-yaml)") from None
    try:
        with open(path, "rb") as handle:
            raw = handle.read(1048576)
    except FileNotFoundError:
        raise ConfigError(f"{path}: web config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read web config file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: web config file is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    config = parse_web_config(data if data is not None else {}, path)
    if config.tls:
        config.ssl_context()
    return config


def parse_web_config(data, source: str = "<web config>") -> WebConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a YAML mapping, got {_type_name(data)}")
    _no_unknown(source, data, _TOP_KEYS, "")
    tls = data.get("tls_server_config")
    cert = key = None
    min_version = "TLS12"
    if tls is not None:
        if not isinstance(tls, dict):
            raise ConfigError(f"{source}: key 'tls_server_config' must be a mapping, got {_type_name(tls)}")
        _no_unknown(source, tls, _TLS_KEYS, "tls_server_config.")
        cert = _path(source, tls, "cert_file")
        key = _path(source, tls, "key_file")
        min_version = tls.get("min_version", "TLS12")
        if min_version not in _TLS_VERSIONS:
            raise ConfigError(f"{source}: key 'tls_server_config.min_version' must be one of "
                              f"{', '.join(_TLS_VERSIONS)}, got '{min_version}'")
    users_table = data.get("basic_auth_users")
    users: dict[str, bytes] = {}
    if users_table is not None:
        if not isinstance(users_table, dict):
            raise ConfigError(f"{source}: key 'basic_auth_users' must be a mapping of user to bcrypt hash, "
                              f"got {_type_name(users_table)}")
        for name, hashed in users_table.items():
            if not isinstance(name, str) or not _USER_NAME.match(name):
                raise ConfigError(f"{source}: key 'basic_auth_users': user names are 1-64 characters without "
                                  f"':' or spaces, got {name!r}")
            # the value is not shown: a plain password put here by mistake must not reach the journal
            if not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed):
                raise ConfigError(f"{source}: key 'basic_auth_users.{name}' must be a bcrypt hash "
                                  f"($2y$/$2b$/$2a$, cost 4-31; the value is not shown)")
            # $2y$ (htpasswd -B) is the same algorithm as $2b$; old bcrypt modules know only $2b$/$2a$
            users[name] = hashed.replace("$2y$", "$2b$", 1).encode("ascii")
        if users:
            try:
                import bcrypt  # noqa: F401 - only checked here, used by BasicAuth
            except ImportError:
                raise ConfigError(f"{source}: key 'basic_auth_users' needs the bcrypt module "
                                  f"(Debian package python3-bcrypt)") from None
    return WebConfig(source=source, cert_file=cert, key_file=key, min_version=min_version, users=users)


def _no_unknown(source: str, table: dict, allowed: tuple[str, ...], prefix: str) -> None:
    unknown = sorted(str(key) for key in table if key not in allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}' (supported here: {', '.join(allowed)})")


def _path(source: str, table: dict, name: str) -> str:
    value = table.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{source}: key 'tls_server_config.{name}' is required (a file path)")
    return value


class BasicAuth:
    """Checks `Authorization: Basic` headers against bcrypt hashes.

    bcrypt is slow on purpose, so a verified (user, password, hash) triple is remembered (as a
    SHA-256 digest, never the password) and a scrape every 15 s costs one bcrypt per process, not
    one per request. Unknown users are checked against a dummy hash so that they take as long as
    known ones; bcrypt's own comparison is constant-time.
    """

    def __init__(self, users: dict[str, bytes]):
        import bcrypt

        self.users = dict(users)
        self._verified: dict[bytes, None] = {}
        self._lock = threading.Lock()
        cost = max((int(hashed[4:6]) for hashed in self.users.values()), default=10)
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))

    def user_of(self, header: str | None) -> tuple[str | None, bool]:
        """(user name or None, allowed) for an Authorization header value."""
        user, password = _parse_basic(header)
        if user is None:
            return None, False
        hashed = self.users.get(user)
        key = hashlib.sha256(b"\0".join((user.encode(), password, hashed or b""))).digest()
        with self._lock:
            if hashed is not None and key in self._verified:
                return user, True
        import bcrypt

        try:
            ok = bcrypt.checkpw(password, hashed or self._dummy) and hashed is not None
        except ValueError:          # bcrypt >= 5 refuses passwords over 72 bytes
            ok = False
        if ok:
            with self._lock:
                self._verified[key] = None
                while len(self._verified) > _CACHE_SIZE:
                    self._verified.pop(next(iter(self._verified)))
        return user, ok


def _parse_basic(header: str | None) -> tuple[str | None, bytes]:
    if not header:
        return None, b""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None, b""
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except ValueError:
        return None, b""
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None, b""
    return user.decode("utf-8", "replace"), password
