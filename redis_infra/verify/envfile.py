"""The env file of playbooks/app_settings.yml, read the way a dotenv reader does, and the clients it
describes."""

from __future__ import annotations

from dataclasses import dataclass


class EnvFileError(Exception):
    """The env file is missing, unreadable or lacks a variable; the message says which."""


def parse(text: str, source: str) -> dict[str, str]:
    """KEY=value lines; a value in single quotes is literal. Comments and blank lines are skipped."""
    values = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise EnvFileError(f"{source}:{number}: not a KEY=value line")
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as handle:
            values = parse(handle.read(), path)
    except OSError as exc:
        raise EnvFileError(f"{path}: cannot read the env file: {exc.strerror}") from None
    if not values.get("REDIS_URL"):
        raise EnvFileError(f"{path}: REDIS_URL is missing or empty")
    return values


def _flag(values: dict, key: str) -> bool:
    return values.get(key, "false").strip().lower() in ("true", "1", "yes")


def _addresses(text: str) -> list[tuple[str, int]]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    return [(host, int(port)) for host, port in (item.rsplit(":", 1) for item in items)]


@dataclass
class Settings:
    url: str
    username: str | None
    password: str | None
    db: int
    tls: bool
    ca_file: str | None
    connect_timeout: float
    command_timeout: float
    cluster_nodes: list
    sentinels: list
    sentinel_master: str
    sentinel_password: str | None
    replica_urls: list
    proxy: bool = False
    sentinel_tls: bool = False

    @classmethod
    def from_env(cls, values: dict) -> Settings:
        return cls(
            url=values["REDIS_URL"], username=values.get("REDIS_USERNAME") or None,
            password=values.get("REDIS_PASSWORD") or None, db=int(values.get("REDIS_DB") or 0),
            tls=_flag(values, "REDIS_TLS"), ca_file=values.get("REDIS_TLS_CA_FILE") or None,
            connect_timeout=int(values.get("REDIS_CONNECTION_TIMEOUT") or 5000) / 1000.0,
            command_timeout=int(values.get("REDIS_COMMAND_TIMEOUT") or 5000) / 1000.0,
            cluster_nodes=_addresses(values.get("REDIS_CLUSTER_NODES", "")) if _flag(values, "REDIS_CLUSTER_MODE")
            else [],
            sentinels=_addresses(values.get("REDIS_SENTINELS", "")),
            sentinel_master=values.get("REDIS_SENTINEL_MASTER", ""),
            sentinel_password=values.get("REDIS_SENTINEL_PASSWORD") or None,
            replica_urls=[url.strip() for url in values.get("REDIS_READ_REPLICA_URLS", "").split(",") if url.strip()],
            proxy=_flag(values, "REDIS_PROXY"),
            # The Sentinels speak TLS when the servers do, also where REDIS_URL is a local proxy in plaintext.
            sentinel_tls=_flag(values, "REDIS_SENTINEL_TLS" if "REDIS_SENTINEL_TLS" in values else "REDIS_TLS"))

    @property
    def topology(self) -> str:
        return "cluster" if self.cluster_nodes else ("sentinel" if self.sentinels else "standalone")

    def tls_kwargs(self, sentinel: bool = False) -> dict:
        tls = self.sentinel_tls if sentinel else self.tls
        return {"ssl": True, "ssl_ca_certs": self.ca_file, "ssl_cert_reqs": "required"} if tls else {}

    def common(self) -> dict:
        return {"socket_connect_timeout": self.connect_timeout, "socket_timeout": self.command_timeout}

    def sentinel(self):
        from redis.sentinel import Sentinel

        return Sentinel(self.sentinels, sentinel_kwargs={"password": self.sentinel_password,
                                                         **self.tls_kwargs(sentinel=True), **self.common()},
                        **self.tls_kwargs(sentinel=True), **self.common())

    def client(self, decode: bool = True):
        """The application's client, as the application makes it: cluster, Sentinel or URL (the URL also when it
        names a local proxy, which is why the application has one)."""
        import redis
        from redis.cluster import ClusterNode, RedisCluster

        if self.cluster_nodes:
            return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in self.cluster_nodes],
                                username=self.username, password=self.password, decode_responses=decode,
                                **self.tls_kwargs(), **self.common())
        if self.sentinels and not self.proxy:
            return self.sentinel().master_for(self.sentinel_master, username=self.username, password=self.password,
                                              db=self.db, decode_responses=decode)
        extra = {"ssl_ca_certs": self.ca_file} if self.tls and self.ca_file else {}
        return redis.from_url(self.url, decode_responses=decode, **extra, **self.common())

    def primary_address(self) -> tuple[str, int]:
        """Where writes go: the URL's host (a local proxy's too), the Sentinels' primary, or the first cluster
        node."""
        from urllib.parse import urlsplit

        if self.cluster_nodes:
            return self.cluster_nodes[0]
        if self.sentinels and not self.proxy:
            return self.sentinel().discover_master(self.sentinel_master)
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 6379

    def node_client(self, host: str, port: int, password: str | None, username: str | None = None):
        """A plain client of one node, e.g. with a wrong password: no retries (newer redis-py retries a
        refused authentication with backoff, which only delays the answer)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis(host=host, port=port, username=username if username is not None else self.username,
                           password=password, decode_responses=True, retry=Retry(NoBackoff(), 0),
                           **self.tls_kwargs(), **self.common())
