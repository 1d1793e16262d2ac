"""The run lock, the off-host copy, and config errors."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest

from redis_infra.backup import config as config_module

from .conftest import REPO, fake_backup, sha256, snapshot_files

# ---- lock ------------------------------------------------------------------------------------


def test_lock_held_by_another_run(make_env):
    env = make_env()
    env.status_file.write_text('{"result": "ok", "time": "earlier"}')
    with open(env.lock_file, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        result = env.cli("run")
        assert time.monotonic() - started < 10
    assert result.code == 7
    assert "another backup run holds" in result.stderr
    assert env.finals() == []
    assert env.status_file.read_text() == '{"result": "ok", "time": "earlier"}'    # a locked run writes no status


def test_lock_wait_gets_the_lock_when_released(make_env):
    env = make_env()
    env.admin.set("k", "v")
    holder = open(env.lock_file, "w")  # noqa: SIM115 - released by the timer thread
    fcntl.flock(holder, fcntl.LOCK_EX)
    threading.Timer(0.5, holder.close).start()
    result = env.cli("run", "--lock-wait", "10")
    assert result.code == 0, result.stderr
    assert len(env.finals()) == 1


def test_two_overlapping_runs(make_env):
    """Two real runs started together against a slow BGSAVE: one backs up, the other exits 7."""
    env = make_env()
    for i in range(200):
        env.admin.set(f"k{i}", i)
    env.admin.config_set("rdb-key-save-delay", "5000")          # ~1 s per BGSAVE
    command = [sys.executable, "-m", "redis_infra.backup", "run", "--config", str(env.config_file)]
    procs = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    codes = sorted(proc.wait(timeout=60) for proc in procs)
    for proc in procs:
        proc.stdout.close()
        proc.stderr.close()
    assert codes == [0, 7]
    assert len(env.finals()) == 1 and env.temps() == []


# ---- off-host copy ---------------------------------------------------------------------------


def _offsite_files(env) -> dict:
    return {name: sha256(env.backup_dir / name) for name in os.listdir(env.backup_dir)
            if name.startswith("main-")}


def test_offsite_copy_to_local_directory(make_env):
    env = make_env("appendonly yes\n")
    far = env.tmp / "far"
    far.mkdir()
    env.write_config(f'[offsite]\nmode = "copy"\ndestination = "{far}"\n')
    env.admin.set("k", "v")
    result = env.cli("run")
    assert result.code == 0, result.stderr
    local = _offsite_files(env)
    assert len(local) == 4                              # rdb.gz, aof.tar.gz and their .sha256
    assert {name: sha256(far / name) for name in os.listdir(far)} == local
    assert env.status()["offsite"] == str(far)
    assert subprocess.run(["sha256sum", "-c", *[n for n in local if n.endswith(".sha256")]], cwd=far,
                          capture_output=True).returncode == 0


needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")


@needs_rsync
def test_offsite_rsync_to_local_directory(make_env):
    env = make_env()
    far = env.tmp / "far"
    far.mkdir()
    env.write_config(f'[offsite]\nmode = "rsync"\ndestination = "{far}"\n')
    env.admin.set("k", "v")
    result = env.cli("run")
    assert result.code == 0, result.stderr
    assert {name: sha256(far / name) for name in os.listdir(far)} == _offsite_files(env)


FAKE_SSH = """#!/bin/sh
# Stands in for ssh in tests: drops the options and the host name, runs the remote command locally.
echo "$@" >> "$(dirname "$0")/ssh-calls.log"
while [ $# -gt 0 ]; do
  case "$1" in
    -o|-i|-p|-l) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
shift
exec sh -c "$*"
"""


def _fake_ssh(env) -> tuple:
    tools = env.tmp / "tools"
    tools.mkdir()
    ssh = tools / "ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(0o755)
    identity = tools / "id_ed25519"
    identity.write_text("not a key; the fake ssh ignores it\n")
    identity.chmod(0o600)
    return ssh, identity


@needs_rsync
def test_offsite_rsync_over_ssh_is_verified_on_the_far_side(make_env):
    """The remote code path (rsync -e ssh, then sha256sum over ssh) with ssh replaced by a local shim."""
    env = make_env()
    ssh, identity = _fake_ssh(env)
    far = env.tmp / "far"
    far.mkdir()
    env.write_config(f'[offsite]\nmode = "rsync"\ndestination = "backuphost:{far}"\nssh = "{ssh}"\n'
                     f'ssh_identity = "{identity}"\n')
    env.admin.set("k", "v")
    result = env.cli("run")
    assert result.code == 0, result.stderr
    assert {name: sha256(far / name) for name in os.listdir(far)} == _offsite_files(env)
    calls = (ssh.parent / "ssh-calls.log").read_text()
    assert "rsync --server" in calls and "sha256sum --" in calls
    assert f"-i {identity}" in calls and "BatchMode=yes" in calls
    assert env.status()["offsite"] == f"backuphost:{far}"


@needs_rsync
def test_offsite_checksum_mismatch_fails_and_skips_retention(make_env):
    env = make_env()
    ssh, identity = _fake_ssh(env)
    liar = ssh.parent / "lying-sha256sum"
    liar.write_text(f'#!/bin/sh\nshift\nfor f in "$@"; do echo "{"0" * 64}  $f"; done\n')
    liar.chmod(0o755)
    far = env.tmp / "far"
    far.mkdir()
    env.write_config(f'[retention]\nkeep_last = 1\nkeep_daily_days = 0\n'
                     f'[offsite]\nmode = "rsync"\ndestination = "backuphost:{far}"\nssh = "{ssh}"\n'
                     f'ssh_identity = "{identity}"\nremote_sha256sum = "{liar}"\n')
    old = fake_backup(env.backup_dir, datetime(2026, 1, 1, tzinfo=UTC))
    env.admin.set("k", "v")
    result = env.cli("run")
    assert result.code == 9
    assert "checksum mismatch on backuphost" in result.stderr
    status = env.status()
    assert status["result"] == "failed" and status["file"]               # the local backup is there and named
    assert os.path.exists(status["file"])
    assert f"{old}.rdb.gz" in os.listdir(env.backup_dir)                  # retention did not run


def test_offsite_destination_missing(make_env):
    env = make_env()
    env.write_config(f'[offsite]\nmode = "copy"\ndestination = "{env.tmp / "nowhere"}"\n')
    env.admin.set("k", "v")
    before = snapshot_files(env.backup_dir)
    result = env.cli("run")
    assert result.code == 9 and "does not exist" in result.stderr
    assert len(snapshot_files(env.backup_dir)) == len(before) + 2        # the local backup was kept


# ---- config ----------------------------------------------------------------------------------

BASE = ('instance = "main"\nconnection_file = "/etc/c.toml"\nbackup_dir = "/var/backups/redis"\n'
        'status_file = "/var/lib/redis-infra/backup-main.json"\n')


@pytest.mark.parametrize(("text", "key"), [
    (BASE + "retention_days = 3\n", "retention_days: unknown key"),
    (BASE + "[retention]\nkeep_last = \"seven\"\n", "retention.keep_last: must be an integer >= 1"),
    (BASE + "[retention]\nkeep_last = 0\n", "retention.keep_last: must be an integer >= 1"),
    (BASE + "[retention]\nkeep_weekly = 2\n", "retention.keep_weekly: unknown key"),
    (BASE + "[compression]\nlevel = 10\n", "compression.level: must be an integer 0..9"),
    (BASE + "[timeouts]\nbgsave = -1\n", "timeouts.bgsave: must be a number > 0"),
    (BASE.replace('backup_dir = "/var/backups/redis"\n', ""), "backup_dir: is required"),
    (BASE.replace("/var/backups/redis", "relative/dir"), "backup_dir: must be an absolute path"),
    (BASE.replace('"main"', '"../evil"'), "instance: must match"),
    (BASE + 'aof = "yes"\n', "aof: must be"),
    (BASE + '[offsite]\ndestination = "host:/srv/b"\n', "offsite.ssh_identity: is required"),
    (BASE + '[offsite]\nmode = "copy"\ndestination = "host:/srv/b"\n', "offsite.destination: must be an absolute"),
    (BASE + "[tools]\ncheck_rdb = 5\n", "tools.check_rdb: must be a non-empty string"),
    (BASE + "backup_group = true\n", "backup_group: must be a group name or a gid >= 0"),
    (BASE + 'backup_group = ""\n', "backup_group: must be a group name or a gid >= 0"),
    (BASE + "backup_group = -1\n", "backup_group: must be a group name or a gid >= 0"),
    ("instance = \n", "not valid TOML"),
])
def test_config_errors_name_the_key(tmp_path, text, key):
    path = tmp_path / "backup.toml"
    path.write_text(text)
    with pytest.raises(config_module.ConfigError) as info:
        config_module.load(str(path))
    assert key in str(info.value)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_config_defaults():
    cfg = config_module.parse(BASE)
    assert cfg.retention.keep_last == 7 and cfg.retention.keep_daily_days == 14
    assert cfg.compression_level == 6 and cfg.aof == "auto" and cfg.offsite is None
    assert cfg.lock_file == "/run/redis-infra-backup/main.lock"
    assert cfg.backup_group is None
    assert cfg.timeouts.lock_wait == 0


def test_bad_config_cli_exit_2_one_line(tmp_path):
    path = tmp_path / "backup.toml"
    path.write_text(BASE + "[retention]\nkeep_last = \"x\"\n")
    for command in ("run", "verify", "list"):
        proc = subprocess.run([sys.executable, "-m", "redis_infra.backup", command, "--config", str(path)],
                              cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "retention.keep_last" in lines[0], proc.stderr
    missing = subprocess.run([sys.executable, "-m", "redis_infra.backup", "run", "--config", str(tmp_path / "no")],
                             cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert missing.returncode == 2 and "cannot read config file" in missing.stderr


def test_check_tool_path_must_exist(make_env):
    env = make_env()
    env.write_config('[tools]\ncheck_rdb = "/nonexistent/redis-check-rdb"\n')
    result = env.cli("run")
    assert result.code == 2 and "tools.check_rdb" in result.stderr
