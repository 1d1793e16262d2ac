"""Each failure: the right exit code, a clear message, no partial file, earlier backups untouched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from redis_infra.backup import CONFIG_GET_ACL, PATH_KEYS, REQUIRED_ACL, REQUIRED_ACL_COMMANDS

from .conftest import REPO, free_port, remount_ro, snapshot_files, tmpfs


def _prepare_with_one_backup(env) -> dict:
    """One good backup first, so each failure can prove it left earlier backups alone."""
    env.admin.set("k", "v")
    assert env.cli("run").code == 0
    return snapshot_files(env.backup_dir)


def _assert_failed_cleanly(env, result, code: int, before: dict, *phrases: str) -> dict:
    assert result.code == code, (result.code, result.stderr)
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert errors, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    assert snapshot_files(env.backup_dir) == before if before is not None else True
    assert env.temps() == []
    status = env.status()
    assert status["result"] == "failed" and status["exit_code"] == code
    assert status["error"] and all(phrase in status["error"] for phrase in phrases)
    assert status["last_success"] is not None        # carried over from the good run
    return status


def test_redis_down(make_env):
    env = make_env()
    before = _prepare_with_one_backup(env)
    env.write_connection(port=free_port())
    result = env.cli("run")
    _assert_failed_cleanly(env, result, 3, before, "cannot connect to Redis")


def test_wrong_password(make_env):
    env = make_env()
    before = _prepare_with_one_backup(env)
    env.write_connection(password="wrong-password")
    result = env.cli("run")
    _assert_failed_cleanly(env, result, 3, before, "refused authentication for user 'backup'")


@pytest.mark.parametrize("missing", ["ping", "info", "bgsave", "lastsave"])
def test_missing_acl_permission_is_named(make_env, missing):
    """A user without one of the rules on an AOF instance: exit 3, the message names the rules needed."""
    rules = " ".join(f"+{command}" for command in REQUIRED_ACL_COMMANDS if command != missing)
    env = make_env(f"appendonly yes\nuser weak on >weakpw {rules}\n")
    before = _prepare_with_one_backup(env)
    env.write_connection(username="weak", password="weakpw")
    result = env.cli("run")
    status = _assert_failed_cleanly(env, result, 3, before, "ACL user 'weak' may not", REQUIRED_ACL)
    assert status["file"] is None
    assert env.admin.config_get("auto-aof-rewrite-percentage")["auto-aof-rewrite-percentage"] == "100"


@pytest.mark.parametrize("left_out", PATH_KEYS)
def test_a_path_left_out_of_the_config_needs_config_get(make_env, left_out):
    """Without a path in its config the tool asks CONFIG GET: refused, the message names the key to set."""
    env = make_env("appendonly yes\n")
    before = _prepare_with_one_backup(env)
    paths = env.server_paths()
    paths.pop(left_out)
    env.write_config(paths=False, **paths)
    result = env.cli("run")
    status = _assert_failed_cleanly(env, result, 3, before, "may not run CONFIG GET", f"Set {left_out} in the")
    assert CONFIG_GET_ACL in result.stderr and status["file"] is None
    # A user with +config|get (the tool used without the role) backs up from that config.
    env.admin.execute_command("ACL", "SETUSER", "backup", CONFIG_GET_ACL)
    result = env.cli("run")
    assert result.code == 0, result.stderr


def test_backup_dir_missing(make_env):
    env = make_env()
    os.rmdir(env.backup_dir)
    result = env.cli("run")
    assert result.code == 4
    assert f"backup directory {env.backup_dir} does not exist" in result.stderr
    assert not env.backup_dir.exists()
    assert env.status()["result"] == "failed"


def test_backup_dir_not_writable(make_env, tmp_path):
    with tmpfs(tmp_path / "ro-backups", size="4M") as backup_dir:
        env = make_env(backup_dir=backup_dir)
        before = _prepare_with_one_backup(env)
        remount_ro(backup_dir)
        result = env.cli("run")
        _assert_failed_cleanly(env, result, 4, before, "read-only file system")


def _fill_incompressible(client, kib: int) -> None:
    chunk = 100 * 1024
    pipe = client.pipeline()
    for i in range(kib * 1024 // chunk):
        pipe.set(f"blob:{i}", os.urandom(chunk))
    pipe.execute()


@pytest.mark.parametrize("rdb_kib", [2400, 700], ids=["full-during-copy", "full-during-compress"])
def test_disk_full_mid_write(make_env, tmp_path, rdb_kib):
    """A 1 MiB tmpfs: the raw copy (2.4 MB RDB) or the gzip after it (0.7 MB RDB) runs out of space.

    The free-space estimate is off here, as when something else fills the disk during the run.
    """
    with tmpfs(tmp_path / "small-backups", size="1M") as backup_dir:
        env = make_env(backup_dir=backup_dir)
        env.write_config(space_check=False)
        before = _prepare_with_one_backup(env)
        _fill_incompressible(env.admin, rdb_kib)
        result = env.cli("run")
        _assert_failed_cleanly(env, result, 5, before, "No space left on device", "disk full")
        assert len(env.finals()) == 1


def test_not_enough_space_is_refused_before_writing(make_env, tmp_path):
    with tmpfs(tmp_path / "small-backups", size="1M") as backup_dir:
        env = make_env(backup_dir=backup_dir)
        before = _prepare_with_one_backup(env)
        _fill_incompressible(env.admin, 700)
        result = env.cli("run")
        _assert_failed_cleanly(env, result, 5, before, "not enough free space", "disk full")


def test_bgsave_timeout(make_env):
    env = make_env()
    before = _prepare_with_one_backup(env)
    for i in range(300):
        env.admin.set(f"k{i}", i)
    env.admin.config_set("rdb-key-save-delay", "10000")            # ~3 s save
    env.write_config("[timeouts]\nbgsave = 0.5\n")
    result = env.cli("run")
    _assert_failed_cleanly(env, result, 8, before, "timed out after 0.5s waiting for BGSAVE")


def test_unreadable_connection_file_is_a_config_error(make_env):
    env = make_env()
    env.connection_file.unlink()
    result = env.cli("run")
    assert result.code == 2
    assert "connection_file" in result.stderr and "cannot read connection file" in result.stderr


def test_stale_temp_files_of_a_killed_run_are_removed(make_env):
    env = make_env()
    leftover = env.backup_dir / ".tmp-main-20200101T000000Z.rdb"
    leftover.write_bytes(b"partial")
    other_instance = env.backup_dir / ".tmp-main-2-20200101T000000Z.rdb"
    other_instance.write_bytes(b"not ours")
    old_verify = env.backup_dir / ".tmp-verify-main-20200101T000000Z.rdb.123"
    old_verify.write_bytes(b"old")
    os.utime(old_verify, (time.time() - 2 * 86400,) * 2)
    recent_verify = env.backup_dir / ".tmp-verify-main-20200102T000000Z.rdb.124"
    recent_verify.write_bytes(b"maybe running")
    result = env.cli("run")
    assert result.code == 0, result.stderr
    assert not leftover.exists() and other_instance.exists()
    assert not old_verify.exists() and recent_verify.exists()
    assert "leftover" in result.stderr


def test_sigterm_during_an_aof_backup_leaves_nothing_and_the_config_alone(make_env):
    """SIGTERM while the tool waits for its BGSAVE (a rewrite scheduled behind it): exit 1, nothing left,
    and the server's config is what it was all along (the tool never sets it)."""
    env = make_env("appendonly yes\nauto-aof-rewrite-percentage 63\n")
    before = _prepare_with_one_backup(env)
    for i in range(300):
        env.admin.set(f"k{i}", i)
    env.admin.config_set("rdb-key-save-delay", "5000")                 # ~1.5 s per save or rewrite
    proc = subprocess.Popen([sys.executable, "-m", "redis_infra.backup", "run", "--config", str(env.config_file)],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    seen = set()
    try:
        deadline = time.monotonic() + 20
        while not env.admin.info("persistence")["rdb_bgsave_in_progress"]:   # the tool's BGSAVE
            assert time.monotonic() < deadline
            seen.add(env.admin.config_get("auto-aof-rewrite-percentage")["auto-aof-rewrite-percentage"])
            time.sleep(0.02)
        env.admin.bgrewriteaof()                     # scheduled: starts when the BGSAVE is done
        time.sleep(0.3)
        seen.add(env.admin.config_get("auto-aof-rewrite-percentage")["auto-aof-rewrite-percentage"])
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(20) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert "interrupted by SIGTERM" in rest
    assert seen == {"63"}
    assert env.admin.config_get("auto-aof-rewrite-percentage")["auto-aof-rewrite-percentage"] == "63"
    assert not (env.backup_dir / ".main.aof-rewrite-percentage").exists()
    assert snapshot_files(env.backup_dir) == before and env.temps() == []
    assert env.status()["result"] == "failed" and "SIGTERM" in env.status()["error"]
