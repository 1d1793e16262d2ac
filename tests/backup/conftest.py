"""Fixtures for the backup tool: a real redis-server with the backup ACL user, config files, tmpfs mounts."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:        # pytest run from anywhere without installing the package
    sys.path.insert(0, str(REPO))

from redis_infra.backup import REQUIRED_ACL  # noqa: E402

PASSWORD = "Backup-s3cret-Pw-4711"           # distinctive, so tests can assert it never shows up
CHECK_RDB = shutil.which("redis-check-rdb") or shutil.which("valkey-check-rdb")
CHECK_AOF = shutil.which("redis-check-aof") or shutil.which("valkey-check-aof")
FINAL_RE = re.compile(r"^main-\d{8}T\d{6}Z(_\d+)?\.rdb\.gz$")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@dataclass
class BackupEnv:
    tmp: Path
    server: object                                   # tests/conftest.py RedisProcess
    backup_dir: Path
    status_file: Path
    lock_file: Path
    connection_file: Path
    config_file: Path
    extra: dict = field(default_factory=dict)
    tls: object = None                               # tests/conftest.py TLSFiles: the server serves only TLS

    @property
    def admin(self) -> redis.Redis:
        secure = {"ssl": True, "ssl_ca_certs": str(self.tls.ca_file)} if self.tls else {}
        return redis.Redis(host="127.0.0.1", port=self.server.port, decode_responses=True, **secure)

    def server_paths(self) -> dict:
        """What the role writes into the tool's config: the server's paths, read from its config file."""
        found = {"dir": "", "dbfilename": "dump.rdb", "appenddirname": "appendonlydir",
                 "appendfilename": "appendonly.aof"}
        for line in self.server.config.read_text().splitlines():
            key, _, value = line.strip().partition(" ")
            if key in found:
                found[key] = value.strip().strip('"')
        return {"data_dir": found.pop("dir"), **found}

    def write_config(self, text_extra: str = "", paths: bool = True, **top) -> Path:
        """The tool's config; with paths (as the role writes it) the backup user needs no CONFIG GET."""
        if paths:
            top = {**self.server_paths(), **top}
        lines = [
            'instance = "main"',
            f'connection_file = "{self.connection_file}"',
            f'backup_dir = "{self.backup_dir}"',
            f'status_file = "{self.status_file}"',
            f'lock_file = "{self.lock_file}"',
        ]
        lines += [f"{key} = {json.dumps(value)}" for key, value in top.items()]
        body = "\n".join(lines) + "\n" + text_extra + "\n"
        body += f'[tools]\ncheck_rdb = "{CHECK_RDB}"\ncheck_aof = "{CHECK_AOF}"\n' if "[tools]" not in text_extra \
            else ""
        self.config_file.write_text(body)
        return self.config_file

    def write_connection(self, port: int | None = None, password: str = PASSWORD, username: str = "backup",
                         tls_ca_file: Path | None = None):
        """The connection file; with a TLS-only server, TLS with the test CA (or tls_ca_file)."""
        tls = f'tls = true\ntls_ca_file = "{tls_ca_file or self.tls.ca_file}"\n' if self.tls else ""
        self.connection_file.write_text(
            f'name = "main"\nhost = "127.0.0.1"\nport = {port or self.server.port}\n'
            f'username = "{username}"\npassword = "{password}"\n' + tls)
        self.connection_file.chmod(0o600)

    def cli(self, *args: str, timeout: float = 60) -> Result:
        proc = subprocess.run([sys.executable, "-m", "redis_infra.backup", *args, "--config", str(self.config_file)],
                              cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert PASSWORD not in proc.stdout + proc.stderr, "the password must never be printed"
        if self.status_file.exists():
            assert PASSWORD not in self.status_file.read_text()
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def status(self) -> dict:
        return json.loads(self.status_file.read_text())

    def finals(self) -> list[str]:
        return sorted(name for name in os.listdir(self.backup_dir) if FINAL_RE.match(name))

    def temps(self) -> list[str]:
        return sorted(name for name in os.listdir(self.backup_dir) if name.startswith(".tmp-"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot_files(directory: Path) -> dict[str, tuple[str, int]]:
    """{name: (sha256, mtime_ns)} of every file in directory: "older backups untouched" compares these."""
    return {entry.name: (sha256(entry), entry.stat().st_mtime_ns)
            for entry in sorted(Path(directory).iterdir()) if entry.is_file()}


@pytest.fixture
def make_env(redis_factory, tmp_path):
    """make_env(extra_redis_config="") -> BackupEnv with a running server that has the backup ACL user;
    make_env(tls=tls_files): one that serves only TLS."""
    if not (CHECK_RDB and CHECK_AOF):
        pytest.skip("redis-check-rdb / redis-check-aof are not installed")

    def make(extra: str = "", backup_dir: Path | None = None, tls=None, port: int | None = None) -> BackupEnv:
        port = port or free_port()
        if tls:
            extra = tls.server_config(port) + extra
        server = redis_factory(f"user backup on >{PASSWORD} {REQUIRED_ACL}\n" + extra, port=port)
        env = BackupEnv(tmp=tmp_path, server=server,
                        backup_dir=backup_dir or tmp_path / "backups",
                        status_file=tmp_path / "status.json", lock_file=tmp_path / "backup.lock",
                        connection_file=tmp_path / "backup.conn.toml", config_file=tmp_path / "backup.toml", tls=tls)
        env.backup_dir.mkdir(exist_ok=True)
        env.write_connection()
        env.write_config()
        return env

    return make


def fill(client: redis.Redis, count: int = 50) -> dict:
    """Write keys of every basic type; return what `dump_all` should read back."""
    pipe = client.pipeline()
    for i in range(count):
        pipe.set(f"str:{i}", f"value-{i}")
    pipe.hset("hash:1", mapping={"a": "1", "b": "2"})
    pipe.rpush("list:1", "x", "y", "z")
    pipe.sadd("set:1", "p", "q")
    pipe.zadd("zset:1", {"m": 1.5, "n": 2.5})
    pipe.set("ttl:1", "expires-later", ex=3600)
    pipe.execute()
    return dump_all(client)


def dump_all(client: redis.Redis) -> dict:
    out = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            out[key] = client.get(key)
        elif kind == "hash":
            out[key] = client.hgetall(key)
        elif kind == "list":
            out[key] = client.lrange(key, 0, -1)
        elif kind == "set":
            out[key] = sorted(client.smembers(key))
        elif kind == "zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = kind
    return out


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1M", options: str = ""):
    """Mount a small tmpfs on path (skip the test when mounting is not permitted); always unmounted."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (f",{options}" if options else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def remount_ro(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


def fake_backup(directory: Path, when: datetime, payload: bytes = b"not a real rdb", instance: str = "main",
                seq: int = 0) -> str:
    """A backup file pair with a correct checksum (content is not a real RDB: for retention tests)."""
    bid = f"{instance}-{when.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}" + (f"_{seq}" if seq else "")
    data = gzip.compress(payload)
    (directory / f"{bid}.rdb.gz").write_bytes(data)
    (directory / f"{bid}.rdb.gz.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {bid}.rdb.gz\n")
    return bid


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))
