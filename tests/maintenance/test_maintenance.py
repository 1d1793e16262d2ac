"""redis-infra-maintenance against real redis-server processes: the report's sections on a seeded
instance, key sampling on a replica, and the backup drill on good, truncated and wrong backups.

The drill's scratch server runs as `nobody` when the tests run as root, as on the hosts (the role's
scratch directory is the only path it needs)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from redis_infra.connection import load as load_connection
from redis_infra.maintenance import REQUIRED_ACL
from redis_infra.maintenance import config as maintenance_config
from redis_infra.maintenance import drill as drill_module
from tests.backup.conftest import fill
from tests.conftest import cluster_port

REPO = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "Maint-admin-s3cret-0815"
SECRET_VALUE = "argument-that-must-not-reach-the-report"
MAINT_PASSWORD = "Maint-user-s3cret-4711"
# The routine runs as the least-privilege maintenance user, as the role deploys it; the tests seed as admin.
ADMIN = (f"user admin on >{ADMIN_PASSWORD} ~* &* +@all\n"
         f"user maintenance on >{MAINT_PASSWORD} {REQUIRED_ACL}\n")
SERVER_EXTRA = ADMIN + "enable-debug-command yes\nlatency-monitor-threshold 50\nmaxmemory 64mb\n"


@pytest.fixture
def scratch_dir():
    """The drill's scratch parent as the role makes it: reachable by the scratch server's account."""
    path = tempfile.mkdtemp(prefix="maint-scratch-", dir="/tmp")
    os.chmod(path, 0o711)  # noqa: S103 - traversable, as the role makes it
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


class Maint:
    def __init__(self, env, scratch: Path, port: int | None = None):
        self.env = env
        self.tmp = env.tmp
        self.port = port or env.server.port
        self.connection = self.tmp / f"connection-{self.port}.toml"
        self.connection.write_text(f'name = "main"\nhost = "127.0.0.1"\nport = {self.port}\n'
                                   f'username = "maintenance"\npassword = "{MAINT_PASSWORD}"\n')
        self.connection.chmod(0o600)
        self.report_dir = self.tmp / f"report-{self.port}"
        self.status_file = self.tmp / f"maintenance-{self.port}.json"
        self.config = self.tmp / f"maintenance-{self.port}.toml"
        self.scratch = scratch
        self.write()

    def write(self, extra: str = "", drill: str = "") -> None:
        # The role writes the instance's latency-monitor-threshold (the maintenance user may not CONFIG GET).
        admin = redis.Redis(port=self.port, username="admin", password=ADMIN_PASSWORD, decode_responses=True)
        threshold = admin.config_get("latency-monitor-threshold")["latency-monitor-threshold"]
        self.config.write_text(
            f'instance = "main"\nconnection_file = "{self.connection}"\nreport_dir = "{self.report_dir}"\n'
            f'latency_threshold_ms = {threshold}\n'
            f'status_file = "{self.status_file}"\nbackup_config = "{self.env.config_file}"\n{extra}\n'
            f'[keys]\nscan_count = 20\npause_ms = 1\n\n[drill]\nscratch_dir = "{self.scratch}"\n{drill}\n')

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "redis_infra.maintenance", "--config", str(self.config), *args],
                              cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert ADMIN_PASSWORD not in proc.stdout + proc.stderr and MAINT_PASSWORD not in proc.stdout + proc.stderr
        return proc

    def report(self) -> dict:
        return json.loads((self.report_dir / "report.json").read_text())

    def status(self) -> dict:
        return json.loads(self.status_file.read_text())

    def drill(self, now: datetime | None = None) -> dict:
        cfg = maintenance_config.load(str(self.config))
        settings = load_connection(str(self.connection))
        return drill_module.drill(cfg, lambda db=0: settings.client(decode_responses=False, db=db), now=now)


def seed(client: redis.Redis) -> None:
    """Keys of the guide's namespaces, with and without the TTLs it asks for."""
    pipe = client.pipeline(transaction=False)
    for i in range(50):
        pipe.set(f"cache:ai:{i}", "x" * 100, ex=3600)
    for i in range(30):
        pipe.set(f"session:web:{i}", "s", ex=86400)
    for i in range(5):
        pipe.set(f"session:web:forever-{i}", "s")
    for i in range(20):
        pipe.set(f"ratelimit:api:{i}", 1, ex=900)
    for i in range(3):
        pipe.set(f"ratelimit:api:long-{i}", 1, ex=5000)
    pipe.rpush("queue:jobs:big", *range(5000))
    pipe.set("plainkey", SECRET_VALUE)
    pipe.execute()


def test_maintenance_user_reads_and_may_not_write_configure_or_list(make_env):
    """REQUIRED_ACL (redis_server_maintenance_acl): the reads the routine needs and nothing that writes,
    reconfigures, reads the config (masterauth) or blocks the server."""
    env = make_env(ADMIN)
    admin = redis.Redis(port=env.server.port, username="admin", password=ADMIN_PASSWORD)
    admin.set("cache:ai:1", "answer", ex=60)
    maint = redis.Redis(port=env.server.port, username="maintenance", password=MAINT_PASSWORD)
    assert maint.get("cache:ai:1") == b"answer" and maint.type("cache:ai:1") == b"string"
    assert 0 < maint.pttl("cache:ai:1") <= 60_000 and maint.memory_usage("cache:ai:1") > 0
    assert maint.info("memory")["used_memory"] > 0
    for command in (("SET", "k", "v"), ("DEL", "cache:ai:1"), ("EXPIRE", "cache:ai:1", "1"), ("FLUSHALL",),
                    ("CONFIG", "GET", "masterauth"), ("CONFIG", "SET", "maxmemory", "1"), ("KEYS", "*"),
                    ("SLOWLOG", "RESET"), ("ACL", "LIST"), ("PUBLISH", "c", "m"),
                    ("SHUTDOWN",), ("BGSAVE",), ("CLIENT", "LIST"), ("MONITOR",)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            maint.execute_command(*command)
    assert admin.get("cache:ai:1") == b"answer"


def test_acl_command_prints_the_users_rules_and_report_needs_a_config():
    """`redis-infra-maintenance acl` gives what to build the user from by hand (as the health checker's and the
    backup tool's `acl` do); a report without --config says so in one line."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "redis_infra.maintenance", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    acl = run("acl")
    assert acl.returncode == 0 and acl.stdout.strip() == REQUIRED_ACL
    report = run()
    assert report.returncode == 2 and "--config is required for report" in report.stderr


def test_report_sections_on_a_seeded_instance(make_env, scratch_dir):
    env = make_env(SERVER_EXTRA)
    admin = redis.Redis(port=env.server.port, username="admin", password=ADMIN_PASSWORD, decode_responses=True)
    seed(admin)
    admin.execute_command("DEBUG", "SLEEP", "0.12")
    maint = Maint(env, scratch_dir)
    proc = maint.cli("--sections", "slowlog,memory,latency,keys")
    assert proc.returncode == 0, proc.stderr
    report = maint.report()
    assert SECRET_VALUE not in json.dumps(report)
    assert sorted(report["sections"]) == ["keys", "latency", "memory", "slowlog"]

    slowlog = report["sections"]["slowlog"]
    assert slowlog["status"] == "warning"
    assert slowlog["top"][0]["command"] == "debug|sleep"
    assert 120_000 <= slowlog["top"][0]["duration_us"] < 1_000_000

    memory = report["sections"]["memory"]
    assert memory["info"]["maxmemory"] == 64 * 1024 * 1024
    assert 0 < memory["used_share_percent"] < 80
    assert memory["doctor"]
    # Debian's build links the system jemalloc: no active defragmentation (Valkey's own build may differ).
    if "jemalloc" in memory["info"]["mem_allocator"]:
        assert memory["active_defrag"]["supported"] is False
        assert "Jemalloc" in memory["active_defrag"]["detail"]

    latency = report["sections"]["latency"]
    assert latency["threshold_ms"] == 50
    assert any(event["event"] == "command" and event["max_ms"] >= 120 for event in latency["events"])
    assert latency["status"] == "warning"

    keys = report["sections"]["keys"]
    assert keys["keys_sampled"] == keys["keys_total"] == 110
    prefixes = {row["prefix"]: row for row in keys["prefixes"]}
    assert prefixes["cache:ai"]["keys"] == 50 and prefixes["cache:ai"]["no_ttl"] == 0
    assert prefixes["cache:ai"]["expected_ttl_s"] == 3600 and prefixes["cache:ai"]["over_expected"] == 0
    assert prefixes["session:web"]["no_ttl"] == 5 and prefixes["session:web"]["no_ttl_share_percent"] == 14.3
    assert prefixes["ratelimit:api"]["over_expected"] == 3
    assert prefixes["(no namespace)"]["keys"] == 1
    assert keys["big_keys"][0]["key"] == "queue:jobs:big" and keys["big_keys"][0]["type"] == "list"
    assert any("session:web: 5 of 35" in finding for finding in keys["findings"])
    assert any("ratelimit:api: 3 sampled keys live longer than 900 s" in f for f in keys["findings"])

    status = maint.status()
    assert status["result"] == "ok" and status["drill"] is None
    assert status["sections"] == {"slowlog": "warning", "memory": "ok", "latency": "warning", "keys": "warning"}
    assert status["warnings"] == report["warnings"] >= 4
    assert stat.S_IMODE(maint.status_file.stat().st_mode) == 0o644
    for name in ("report.json", "report.md"):
        assert stat.S_IMODE((maint.report_dir / name).stat().st_mode) == 0o600
    markdown = (maint.report_dir / "report.md").read_text()
    assert "## keys: warning" in markdown and "| session:web | 35 |" in markdown


def test_keys_are_sampled_on_the_replica_not_the_primary(make_env, redis_factory, scratch_dir):
    env = make_env(ADMIN + "repl-diskless-sync-delay 0\n")
    admin = redis.Redis(port=env.server.port, username="admin", password=ADMIN_PASSWORD)
    seed(admin)
    replica = redis_factory(ADMIN + f"replicaof 127.0.0.1 {env.server.port}\nmasteruser admin\n"
                                    f"masterauth {ADMIN_PASSWORD}\n")
    client = redis.Redis(port=replica.port, username="admin", password=ADMIN_PASSWORD)
    deadline = time.monotonic() + 10
    while client.dbsize() < 110 and time.monotonic() < deadline:
        time.sleep(0.05)
    on_primary, on_replica = Maint(env, scratch_dir), Maint(env, scratch_dir, port=replica.port)
    assert on_primary.cli("--sections", "keys").returncode == 0
    assert on_primary.report()["sections"]["keys"]["status"] == "skipped"
    assert on_replica.cli("--sections", "keys").returncode == 0
    keys = on_replica.report()["sections"]["keys"]
    assert keys["role"] == "slave" and keys["keys_sampled"] == 110


def test_drill_restores_the_latest_backup_and_compares_it(make_env, scratch_dir):
    env = make_env(ADMIN)
    admin = redis.Redis(port=env.server.port, username="admin", password=ADMIN_PASSWORD, decode_responses=True)
    fill(admin, 300)
    admin.select(3)
    admin.set("in-db3", "three")
    assert env.cli("run").code == 0
    admin.select(0)
    admin.set("str:1", "changed after the backup")
    admin.delete("str:2")
    maint = Maint(env, scratch_dir)
    proc = maint.cli("--sections", "drill")
    assert proc.returncode == 0, proc.stderr
    drill = maint.report()["sections"]["drill"]
    assert drill["status"] == "ok", drill
    assert drill["restored_keys"] == drill["recorded_keys"] == 306
    assert drill["key_drift_percent"] == 0
    sample = drill["sample"]
    assert sample["compared"] + sample["gone"] == 200 and sample["corrupt"] == 0 and sample["gone"] <= 1
    assert sample["same"] + sample["changed_since"] == sample["compared"]
    status = maint.status()
    assert status["result"] == "ok"
    assert status["drill"]["result"] == "ok" and status["drill"]["backup_id"] == drill["backup_id"]
    assert status["drill"]["error"] is None and status["drill"]["duration_seconds"] > 0
    assert not [name for name in os.listdir(scratch_dir) if name.startswith(".tmp-")], "a scratch directory is left"


def test_drill_compares_every_key_when_the_sample_covers_them(make_env, scratch_dir):
    env = make_env(ADMIN)
    admin = redis.Redis(port=env.server.port, username="admin", password=ADMIN_PASSWORD, decode_responses=True)
    fill(admin, 20)
    assert env.cli("run").code == 0
    admin.set("str:1", "changed after the backup")
    admin.delete("str:2")
    maint = Maint(env, scratch_dir)
    drill = maint.drill()
    assert drill["status"] == "ok", drill
    assert drill["sample"] | {"corrupt_examples": []} == {
        "compared": 24, "same": 23, "changed_since": 1, "gone": 1, "corrupt": 0, "skipped": 0,
        "corrupt_examples": []}


@pytest.mark.parametrize("damage", ["truncated-with-its-checksum", "truncated", "key-count"])
def test_drill_fails_on_a_bad_backup(make_env, scratch_dir, damage):
    env = make_env(ADMIN)
    admin = redis.Redis(port=env.server.port, username="admin", password=ADMIN_PASSWORD)
    fill(admin, 2000)
    assert env.cli("run").code == 0
    (archive,) = env.backup_dir.glob("*.rdb.gz")
    if damage.startswith("truncated"):
        data = archive.read_bytes()
        archive.write_bytes(data[: len(data) // 2])
        if damage == "truncated-with-its-checksum":   # cut before the checksum was taken: only a restore sees it
            import hashlib

            Path(f"{archive}.sha256").write_text(f"{hashlib.sha256(data[: len(data) // 2]).hexdigest()}  "
                                                 f"{archive.name}\n")
    else:
        recorded = env.status()
        recorded["keys"] += 100
        env.status_file.write_text(json.dumps(recorded))
    maint = Maint(env, scratch_dir)
    proc = maint.cli("--sections", "drill")
    assert proc.returncode == 1
    drill = maint.report()["sections"]["drill"]
    status = maint.status()
    assert drill["status"] == "failed" and status["result"] == "failed" and status["drill"]["result"] == "failed"
    expected = {"truncated-with-its-checksum": "cannot unpack", "truncated": "checksum mismatch",
                "key-count": "the backup tool counted 2105"}[damage]
    assert expected in status["drill"]["error"], status
    assert "drill: failed" in proc.stderr
    # A run of other sections keeps the failed drill, in the status and in the report.
    assert maint.cli("--sections", "slowlog").returncode == 0     # its own sections passed
    status = maint.status()
    assert status["drill"]["result"] == "failed" and status["result"] == "failed"
    assert set(status["sections"]) == {"slowlog", "drill"}
    assert "## drill: failed (from the run of" in (maint.report_dir / "report.md").read_text()
    assert not [name for name in os.listdir(scratch_dir) if name.startswith(".tmp-")]


def test_drill_fails_when_untouched_keys_differ_from_the_backup(make_env, scratch_dir):
    """Values in the backup that are not the instance's, for keys the source has not touched since the
    backup: the drill fails naming one. (The clock: the drill runs "before" the backup's time, so that any
    idle time of the source's keys is longer than the backup's age.)"""
    env = make_env(ADMIN)
    admin = redis.Redis(port=env.server.port, username="admin", password=ADMIN_PASSWORD)
    admin.mset({f"k:{i}": "in the backup" for i in range(10)})
    assert env.cli("run").code == 0
    admin.mset({f"k:{i}": "on the source" for i in range(10)})
    maint = Maint(env, scratch_dir)
    backup_time = datetime.strptime(env.status()["backup_id"].split("-", 1)[1][:16], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=UTC)
    drill = maint.drill(now=backup_time - timedelta(seconds=10))
    assert drill["status"] == "failed"
    assert drill["sample"]["corrupt"] == 10
    assert any("differ from the source although the source has not touched them" in f for f in drill["findings"])
    # With the real clock the same keys count as changed since the backup.
    drill = maint.drill()
    assert drill["status"] == "ok" and drill["sample"]["changed_since"] == 10


def test_bad_config_and_a_server_down_are_one_line_and_exit_2(make_env, scratch_dir):
    env = make_env(ADMIN)
    maint = Maint(env, scratch_dir)
    maint.write(extra="slow_ms = 'fast'")
    proc = maint.cli()
    assert proc.returncode == 2 and "slow_ms must be number" in proc.stderr
    maint.write(drill="surprise = 1")
    proc = maint.cli()
    assert proc.returncode == 2 and "unknown key(s) drill.surprise" in proc.stderr
    maint.write()
    assert maint.cli("--sections", "keys,vacuum").returncode == 2
    env.server.stop()
    proc = maint.cli()
    assert proc.returncode == 2 and "ConnectionError" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not maint.status_file.exists()


def test_a_cluster_replica_is_sampled_and_drilled_with_readonly(make_env, redis_factory, scratch_dir):
    """A replica of a Redis Cluster answers reads only after READONLY (else MOVED): the key sampling and the
    drill's comparison read it so."""
    cluster = ADMIN + "cluster-enabled yes\ncluster-config-file nodes.conf\nrepl-diskless-sync-delay 0\n"
    env = make_env(cluster, port=cluster_port())
    primary = redis.Redis(port=env.server.port, username="admin", password=ADMIN_PASSWORD, decode_responses=True)
    primary.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
    node = redis_factory(cluster + f"masteruser admin\nmasterauth {ADMIN_PASSWORD}\n", port=cluster_port())
    replica = redis.Redis(port=node.port, username="admin", password=ADMIN_PASSWORD, decode_responses=True)
    replica.execute_command("CLUSTER", "MEET", "127.0.0.1", env.server.port)
    primary_id = primary.execute_command("CLUSTER", "MYID")
    deadline = time.monotonic() + 20
    while True:
        try:
            replica.execute_command("CLUSTER", "REPLICATE", primary_id)
            break
        except redis.ResponseError:
            assert time.monotonic() < deadline, "the replica never learned the primary"
            time.sleep(0.1)
    while "cluster_state:ok" not in primary.execute_command("CLUSTER", "INFO"):
        assert time.monotonic() < deadline, "the cluster never became ok"
        time.sleep(0.1)
    seed(primary)
    while replica.info("replication").get("master_link_status") != "up" or replica.dbsize() < 110:
        assert time.monotonic() < deadline + 20, "the replica never synced"
        time.sleep(0.1)
    assert env.cli("run").code == 0
    maint = Maint(env, scratch_dir, port=node.port)
    proc = maint.cli("--sections", "keys,drill")
    assert proc.returncode == 0, proc.stderr
    sections = maint.report()["sections"]
    assert sections["keys"]["role"] == "slave" and sections["keys"]["keys_sampled"] == 110
    assert {row["prefix"] for row in sections["keys"]["prefixes"]} >= {"cache:ai", "session:web", "ratelimit:api"}
    assert sections["drill"]["status"] == "ok", sections["drill"]
    assert sections["drill"]["sample"]["same"] == sections["drill"]["sample"]["compared"] == 110
