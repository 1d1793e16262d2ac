"""`run` against real redis-server processes, as the backup ACL user: success paths and restores."""

from __future__ import annotations

import contextlib
import gzip
import subprocess
import tarfile

import pytest
import redis

from redis_infra.backup import CONFIG_GET_ACL, REQUIRED_ACL, REQUIRED_ACL_COMMANDS

from .conftest import CHECK_AOF, CHECK_RDB, FINAL_RE, PASSWORD, dump_all, fill, sha256, tmpfs


def test_required_acl_is_the_documented_rule_string(make_env):
    assert REQUIRED_ACL == "+ping +info +bgsave +lastsave +hello +auth"
    assert REQUIRED_ACL.split() == [f"+{command}" for command in REQUIRED_ACL_COMMANDS]
    assert "config|set" not in REQUIRED_ACL and "+config " not in REQUIRED_ACL + " "
    env = make_env()
    assert env.cli("acl").stdout.strip() == REQUIRED_ACL
    # The user built from it (every test's backup user) has no key access and cannot change the config.
    user = redis.Redis(port=env.server.port, username="backup", password=PASSWORD, decode_responses=True)
    env.admin.set("secret", "x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.get("secret")
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.execute_command("FLUSHALL")
    for name, value in (("maxmemory", "1"), ("auto-aof-rewrite-percentage", "0"), ("appendonly", "no")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.config_set(name, value)
    # Nor read it: CONFIG GET would show masterauth and every other setting.
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.config_get("masterauth")


def test_run_success_rdb_only(make_env):
    env = make_env()
    expected = fill(env.admin, 40)
    result = env.cli("run")
    assert result.code == 0, result.stderr

    finals = env.finals()
    assert len(finals) == 1 and FINAL_RE.match(finals[0])
    path = env.backup_dir / finals[0]
    sidecar = (env.backup_dir / (finals[0] + ".sha256")).read_text()
    assert sidecar == f"{sha256(path)}  {finals[0]}\n"                     # sha256sum format
    assert subprocess.run(["sha256sum", "-c", finals[0] + ".sha256"], cwd=env.backup_dir,
                          capture_output=True).returncode == 0
    assert env.temps() == []
    assert not list(env.backup_dir.glob("*.aof.tar.gz"))

    raw = env.tmp / "check.rdb"
    raw.write_bytes(gzip.decompress(path.read_bytes()))
    check = subprocess.run([CHECK_RDB, str(raw)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    assert f"{len(expected)} keys read" in check.stdout

    status = env.status()
    assert status["result"] == "ok" and status["error"] is None and status["exit_code"] == 0
    assert status["instance"] == "main"
    assert status["file"] == str(path)
    assert status["size"] == path.stat().st_size
    assert status["checksum"] == sha256(path)
    assert status["keys"] == len(expected)
    assert status["aof_included"] is False
    assert status["time"].endswith("Z") and status["duration"] >= 0
    assert status["last_success"] == status["time"]
    assert "backup ok" in result.stderr


def test_run_over_tls(make_env, tls_files):
    """A server that serves only TLS and a connection file that names no socket: the tool speaks TLS, and
    says why when the CA it is given did not sign the server's certificate."""
    env = make_env(tls=tls_files)
    expected = fill(env.admin, 20)
    result = env.cli("run")
    assert result.code == 0, result.stderr
    assert env.status()["keys"] == len(expected) and len(env.finals()) == 1
    env.write_connection(tls_ca_file=tls_files.other_ca_file)
    result = env.cli("run")
    assert result.code == 3 and "certificate verify failed" in result.stderr, result.stderr
    assert env.status()["result"] == "failed" and len(env.finals()) == 1


def test_two_runs_in_the_same_second_get_distinct_names(make_env):
    env = make_env()
    fill(env.admin, 5)
    assert env.cli("run").code == 0
    assert env.cli("run").code == 0
    assert len(env.finals()) == 2


def test_restore_round_trip(make_env, redis_factory):
    env = make_env()
    expected = fill(env.admin, 60)
    assert env.cli("run").code == 0
    env.admin.set("written-after-backup", "1")

    target = env.tmp / "restored"
    target.mkdir()
    result = env.cli("restore-prepare", "--rdb-dest", str(target / "dump.rdb"))
    assert result.code == 0, result.stderr
    assert '"backup": "main-' in result.stdout

    fresh = redis_factory(f"dir {target}\ndbfilename dump.rdb\n")
    client = redis.Redis(port=fresh.port, decode_responses=True)
    assert dump_all(client) == expected
    assert client.ttl("ttl:1") > 0


def test_restore_prepare_keeps_only_the_keys_of_a_shards_slots(make_env, redis_factory):
    """A cluster shard's restore: the backup loaded into a scratch server, only the keys of the given slots
    kept (hash tags counted as the cluster does), every type and TTL intact, the server's own save in place."""
    from redis.crc import key_slot

    env = make_env()
    expected = fill(env.admin, 200)
    env.admin.set("{tagged}:one", "1")
    env.admin.set("{tagged}:two", "2")
    assert env.cli("run").code == 0
    ranges = [(0, 5460), (key_slot(b"{tagged}:one"), key_slot(b"{tagged}:one"))]
    spec = ",".join(f"{low}-{high}" for low, high in ranges)

    def owned(key):
        return any(low <= key_slot(key.encode()) <= high for low, high in ranges)

    target = env.tmp / "shard"
    target.mkdir()
    result = env.cli("restore-prepare", "--rdb-dest", str(target / "dump.rdb"), "--slots", spec)
    assert result.code == 0, result.stderr
    import json

    report = json.loads(result.stdout)
    keep = {key: value for key, value in {**expected, "{tagged}:one": "1", "{tagged}:two": "2"}.items() if owned(key)}
    assert report["kept_keys"] == len(keep) and report["dropped_keys"] == len(expected) + 2 - len(keep)
    assert 0 < len(keep) < len(expected) and "{tagged}:two" in keep
    assert [path.name for path in target.iterdir()] == ["dump.rdb"]   # no scratch directory left behind
    fresh = redis_factory(f"dir {target}\ndbfilename dump.rdb\n")
    client = redis.Redis(port=fresh.port, decode_responses=True)
    assert dump_all(client) == keep
    if "ttl:1" in keep:
        assert client.ttl("ttl:1") > 0
    for bad in ("16384", "5-3", "x", ""):
        refused = env.cli("restore-prepare", "--rdb-dest", str(env.tmp / "other.rdb"), "--slots", bad)
        assert refused.code == 2 and "--slots" in refused.stderr, (bad, refused.stderr)
    assert not (env.tmp / "other.rdb").exists()


def test_restore_prepare_refuses_to_overwrite_without_force(make_env):
    env = make_env()
    fill(env.admin, 3)
    assert env.cli("run").code == 0
    dest = env.tmp / "dump.rdb"
    dest.write_bytes(b"old")
    result = env.cli("restore-prepare", "--rdb-dest", str(dest))
    assert result.code == 2 and "--force" in result.stderr
    assert dest.read_bytes() == b"old"
    result = env.cli("restore-prepare", "--rdb-dest", str(dest), "--force")
    assert result.code == 0, result.stderr
    aside = list(env.tmp.glob("dump.rdb.before-restore-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"old"
    assert dest.read_bytes().startswith(b"REDIS")


def test_restore_prepare_named_backup_and_missing_name(make_env):
    env = make_env()
    env.admin.set("gen", "1")
    assert env.cli("run").code == 0
    first = env.finals()[0]
    env.admin.set("gen", "2")
    assert env.cli("run").code == 0
    dest = env.tmp / "one.rdb"
    assert env.cli("restore-prepare", "--backup", first, "--rdb-dest", str(dest)).code == 0
    check = subprocess.run([CHECK_RDB, str(dest)], capture_output=True, text=True)
    assert check.returncode == 0 and "1 keys read" in check.stdout
    missing = env.cli("restore-prepare", "--backup", "main-20000101T000000Z", "--rdb-dest", str(env.tmp / "x.rdb"))
    assert missing.code == 10 and "no backup named" in missing.stderr


@pytest.mark.parametrize("backup_fs", ["same-fs", "tmpfs"])
def test_run_with_aof(make_env, redis_factory, tmp_path, backup_fs):
    """AOF on: the files the manifest names are archived, with the backup dir on the same or another file system."""
    if backup_fs == "tmpfs":
        ctx = tmpfs(tmp_path / "aof-backups", size="64M")
    else:
        (tmp_path / "aof-backups").mkdir()
        ctx = contextlib.nullcontext(tmp_path / "aof-backups")
    with ctx as backup_dir:
        env = make_env("appendonly yes\nauto-aof-rewrite-percentage 77\n", backup_dir=backup_dir)
        expected = fill(env.admin, 30)
        result = env.cli("run")
        assert result.code == 0, result.stderr
        # the server's config is never touched, and no marker is written
        assert env.admin.config_get("auto-aof-rewrite-percentage") == {"auto-aof-rewrite-percentage": "77"}
        assert not (backup_dir / ".main.aof-rewrite-percentage").exists()

        status = env.status()
        assert status["aof_included"] is True and status["result"] == "ok"
        archive = backup_dir / (env.finals()[0].replace(".rdb.gz", ".aof.tar.gz"))
        assert status["aof_file"] == str(archive)
        assert (backup_dir / (archive.name + ".sha256")).read_text() == f"{sha256(archive)}  {archive.name}\n"
        unpacked = tmp_path / "unpacked"
        aof_dir = env.server.workdir / "appendonlydir"
        manifest = (aof_dir / "appendonly.aof.manifest").read_text()
        named = {line.split()[1] for line in manifest.splitlines() if " type h" not in line}
        with tarfile.open(archive) as tar:
            names = tar.getnames()
            # exactly the manifest and the base and incr files it names
            assert sorted(names) == sorted(f"appendonlydir/{name}" for name in named | {"appendonly.aof.manifest"})
            if hasattr(tarfile, "data_filter"):
                tar.extractall(unpacked, filter="data")
            else:                                               # Python < 3.11.4
                tar.extractall(unpacked)  # noqa: S202 - our own archive, names checked above
        check = subprocess.run([CHECK_AOF, str(unpacked / "appendonlydir" / "appendonly.aof.manifest")],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
        assert env.temps() == []

        # verify covers the AOF archive too
        verify = env.cli("verify")
        assert verify.code == 0 and "redis-check-aof ok" in verify.stdout

        # restore the AOF directory and start a fresh AOF server from it
        target = tmp_path / "restored"
        target.mkdir()
        result = env.cli("restore-prepare", "--rdb-dest", str(target / "dump.rdb"),
                         "--aof-dir", str(target / "appendonlydir"))
        assert result.code == 0, result.stderr
        fresh = redis_factory(f"dir {target}\nappendonly yes\n")
        assert dump_all(redis.Redis(port=fresh.port, decode_responses=True)) == expected


def test_aof_backup_during_a_running_rewrite_and_bgsave_is_scheduled(make_env, redis_factory, tmp_path):
    """A slow AOF rewrite (rdb-key-save-delay) is running: BGSAVE SCHEDULE; the AOF copy is consistent."""
    env = make_env("appendonly yes\n")
    expected = fill(env.admin, 200)
    env.admin.config_set("rdb-key-save-delay", "4000")     # ~1 s per rewrite or save of ~200 keys
    env.admin.bgrewriteaof()
    assert env.admin.info("persistence")["aof_rewrite_in_progress"] == 1
    result = env.cli("run")
    assert result.code == 0, result.stderr
    assert "BGSAVE SCHEDULE" in result.stderr
    assert env.status()["aof_included"] is True
    assert env.admin.config_get("auto-aof-rewrite-percentage")["auto-aof-rewrite-percentage"] == "100"
    target = tmp_path / "restored"
    target.mkdir()
    assert env.cli("restore-prepare", "--rdb-dest", str(target / "dump.rdb"),
                   "--aof-dir", str(target / "appendonlydir")).code == 0
    fresh = redis_factory(f"dir {target}\nappendonly yes\n")
    assert dump_all(redis.Redis(port=fresh.port, decode_responses=True)) == expected


def test_bgsave_already_in_progress_is_waited_for(make_env):
    env = make_env()
    fill(env.admin, 200)
    env.admin.config_set("rdb-key-save-delay", "3000")
    env.admin.bgsave()
    result = env.cli("run")
    assert result.code == 0, result.stderr
    assert "already in progress" in result.stderr
    assert env.admin.info("persistence")["rdb_saves"] >= 2     # the tool made its own save after the running one


def test_marker_left_by_an_older_version_is_reported_then_removed(make_env):
    """Older versions set auto-aof-rewrite-percentage 0 during the copy and saved the value in a marker.

    This version cannot (and must not) CONFIG SET: while the setting is still 0 it backs up, says what
    to run and keeps the marker; once an admin has put the value back, the next run removes the marker.
    """
    env = make_env("appendonly yes\n")
    env.admin.config_set("auto-aof-rewrite-percentage", "0")
    marker = env.backup_dir / ".main.aof-rewrite-percentage"
    marker.write_text("55\n")
    # The role's backup user may not read the setting: it says what an admin should check, keeps the marker.
    result = env.cli("run")
    assert result.code == 0, result.stderr
    assert "CONFIG GET auto-aof-rewrite-percentage" in result.stderr and marker.exists()
    # A user with +config|get (the tool used with such a user) tells the value to put back.
    env.admin.execute_command("ACL", "SETUSER", "backup", CONFIG_GET_ACL)
    marker.write_text("55\n")
    result = env.cli("run")
    assert result.code == 0, result.stderr
    assert "WARNING" in result.stderr and "CONFIG SET auto-aof-rewrite-percentage 55" in result.stderr
    assert env.admin.config_get("auto-aof-rewrite-percentage")["auto-aof-rewrite-percentage"] == "0"
    assert marker.exists()
    env.admin.config_set("auto-aof-rewrite-percentage", "55")
    result = env.cli("run")
    assert result.code == 0, result.stderr
    assert "auto-aof-rewrite-percentage" not in result.stderr
    assert not marker.exists()
    assert env.admin.config_get("auto-aof-rewrite-percentage")["auto-aof-rewrite-percentage"] == "55"

