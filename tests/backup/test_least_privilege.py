"""Least privilege: no symlink followed, no CONFIG SET, reads as the data directory's owner, a lock only
root can create, and backup_group applied. Against real redis-server processes, as the backup ACL user.

Some tests run the engine in this process so that an AOF rewrite can be started at an exact moment
(between reading the manifest and opening its files, or during the copy); the rewrite is a real one.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import pwd
import shutil
import stat
import tarfile
import threading
import time
from pathlib import Path

import pytest
import redis

from redis_infra.backup import config as config_module
from redis_infra.backup import engine, redisops, source
from redis_infra.backup.lock import RunLock

from .conftest import dump_all, fill

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, and switching the effective user)")


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody on this host")


def _aof_dir(env) -> Path:
    return env.server.workdir / "appendonlydir"


def _manifest(env) -> list[tuple[str, str]]:
    """[(file name, type)] of the live manifest."""
    text = (_aof_dir(env) / "appendonly.aof.manifest").read_text()
    return [(entry.name, entry.kind) for entry in source.parse_manifest(text, "manifest")]


def _named(env, kind: str) -> str:
    return next(name for name, entry_kind in _manifest(env) if entry_kind == kind)


def _run_here(env) -> engine.RunResult:
    return engine.run(config_module.load(str(env.config_file)))


def _rewrite_and_wait(client: redis.Redis, timeout: float = 20) -> None:
    """One real BGREWRITEAOF, finished, and the files it replaced deleted (Redis deletes them in the background)."""
    before = set(os.listdir(_live_aof_dir(client)))
    count = client.info("persistence").get("aof_rewrites", 0)
    client.bgrewriteaof()
    deadline = time.monotonic() + timeout
    while True:
        info = client.info("persistence")
        if info.get("aof_rewrites", 0) > count and not info["aof_rewrite_in_progress"] \
                and not info["aof_rewrite_scheduled"]:
            names = set(os.listdir(_live_aof_dir(client)))
            if before - names:                       # an old file is gone
                return
        assert time.monotonic() < deadline, "the AOF rewrite did not finish"
        time.sleep(0.01)


def _live_aof_dir(client: redis.Redis) -> str:
    return os.path.join(client.config_get("dir")["dir"], client.config_get("appenddirname")["appenddirname"])


def _restored(env, redis_factory, tmp_path, name: str = "restored") -> dict:
    """Restore the newest backup (RDB and AOF archive) and return what a fresh AOF server loads from it."""
    target = tmp_path / name
    target.mkdir()
    result = env.cli("restore-prepare", "--rdb-dest", str(target / "dump.rdb"),
                     "--aof-dir", str(target / "appendonlydir"))
    assert result.code == 0, result.stderr
    fresh = redis_factory(f"dir {target}\nappendonly yes\n")
    return dump_all(redis.Redis(port=fresh.port, decode_responses=True))


def _archive_names(env) -> list[str]:
    archive = env.backup_dir / env.finals()[0].replace(".rdb.gz", ".aof.tar.gz")
    with tarfile.open(archive) as tar:
        return tar.getnames()


# ---- the manifest ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("file appendonly.aof.1.base.rdb seq 1 type b\nfile appendonly.aof.1.incr.aof seq 1 type i\n",
     [("appendonly.aof.1.base.rdb", "b"), ("appendonly.aof.1.incr.aof", "i")]),
    ('file "appendonly.aof.2.base.rdb" seq 2 type b\n# comment\n\nfile appendonly.aof.1.base.rdb seq 1 type h\n'
     "file appendonly.aof.3.incr.aof seq 3 type i\n",
     [("appendonly.aof.2.base.rdb", "b"), ("appendonly.aof.1.base.rdb", "h"), ("appendonly.aof.3.incr.aof", "i")]),
    ("file ../outside.aof seq 1 type i\n", "path separator or is '..'"),
    ("file sub/x.aof seq 1 type i\n", "path separator or is '..'"),
    ("file .. seq 1 type i\n", "path separator or is '..'"),
    ("file /etc/shadow seq 1 type b\n", "path separator or is '..'"),
    ("file appendonly.aof.1.base.rdb seq 1 type b\nfile ../h.aof seq 1 type h\n", "path separator or is '..'"),
    ('file "a b.aof" seq 1 type i\n', "not a plain file name"),
    ("file x.aof seq 1 type z\n", "malformed"),
    ("file x.aof seq\n", "malformed"),
    ('file "x.aof seq 1 type i\n', "malformed"),
    ("file x.aof seq 1 type h\n", "names no base or incr file"),
    ("", "names no base or incr file"),
])
def test_manifest_parsing(text, expected):
    if isinstance(expected, list):
        assert [(entry.name, entry.kind) for entry in source.parse_manifest(text, "m")] == expected
    else:
        with pytest.raises(source.BackupError) as info:
            source.parse_manifest(text, "m")
        assert expected in str(info.value) and info.value.code == 8


# ---- no symlink is followed ------------------------------------------------------------------


def test_planted_symlinks_in_the_aof_dir_are_neither_archived_nor_read(make_env, redis_factory, tmp_path):
    """`zz.aof -> <secret outside>` and a link to a FIFO: not in the manifest, so never opened.

    Opening the FIFO for reading would block the run (the CLI call has a timeout); reading the secret
    would put its bytes in the archive.
    """
    env = make_env("appendonly yes\n")
    expected = fill(env.admin, 30)
    secret = tmp_path / "outside-secret"
    secret.write_text("TOP-SECRET-SHADOW-LINE\n")
    secret.chmod(0o600)
    fifo = tmp_path / "outside-fifo"
    os.mkfifo(fifo)
    (_aof_dir(env) / "zz.aof").symlink_to(secret)
    (_aof_dir(env) / "zz-fifo.aof").symlink_to(fifo)
    (env.server.workdir / "zz.rdb").symlink_to(secret)

    result = env.cli("run", timeout=30)
    assert result.code == 0, result.stderr
    assert "backup ok" in result.stderr
    names = _archive_names(env)
    assert not [name for name in names if "zz" in name]
    assert sorted(names) == sorted([f"appendonlydir/{name}" for name, kind in _manifest(env) if kind != "h"]
                                   + ["appendonlydir/appendonly.aof.manifest"])
    archive = env.backup_dir / env.finals()[0].replace(".rdb.gz", ".aof.tar.gz")
    rdb = env.backup_dir / env.finals()[0]
    assert b"TOP-SECRET" not in gzip.decompress(archive.read_bytes())
    assert b"TOP-SECRET" not in gzip.decompress(rdb.read_bytes())
    assert _restored(env, redis_factory, tmp_path) == expected


@pytest.mark.parametrize("kind", ["b", "i"])
def test_a_symlinked_file_the_manifest_names_fails_the_backup(make_env, tmp_path, kind):
    """The base or incr file replaced by a link (to a copy of itself, so the data would even be valid)."""
    env = make_env("appendonly yes\n")
    fill(env.admin, 10)
    name = _named(env, kind)
    moved = tmp_path / f"moved-{name}"
    shutil.copy2(_aof_dir(env) / name, moved)
    (_aof_dir(env) / name).unlink()
    (_aof_dir(env) / name).symlink_to(moved)

    result = env.cli("run")
    assert result.code == 8, result.stderr
    assert f"{_aof_dir(env) / name} is a symbolic link: not following it" in result.stderr
    assert "backup ok" not in result.stderr
    assert env.finals() == [] and env.temps() == []
    assert env.status()["result"] == "failed" and "symbolic link" in env.status()["error"]


@pytest.mark.parametrize("bad", ["../outside.aof", "sub/inner.aof", ".."])
def test_a_manifest_entry_with_a_path_is_refused(make_env, tmp_path, bad):
    env = make_env("appendonly yes\n")
    fill(env.admin, 10)
    outside = env.server.workdir / "outside.aof"
    outside.write_text("OUTSIDE-DATA\n")
    (_aof_dir(env) / "sub").mkdir()
    (_aof_dir(env) / "sub" / "inner.aof").write_text("INNER-DATA\n")
    manifest = _aof_dir(env) / "appendonly.aof.manifest"
    incr = _named(env, "i")
    manifest.write_text(manifest.read_text().replace(f"file {incr} ", f"file {bad} "))

    result = env.cli("run")
    assert result.code == 8, result.stderr
    assert f"{bad!r} has a path separator or is '..': refusing it" in result.stderr
    assert env.finals() == [] and env.temps() == []
    assert env.status()["result"] == "failed"


def test_a_dump_rdb_swapped_for_a_symlink_after_bgsave_fails(make_env, tmp_path, monkeypatch):
    """The RDB replaced by a link between the tool's BGSAVE and its copy: refused, not followed."""
    env = make_env()
    fill(env.admin, 10)
    secret = tmp_path / "outside-secret"
    secret.write_text("TOP-SECRET\n")
    original = redisops.RedisSession.bgsave_and_wait

    def bgsave_then_swap(self, *args, **kwargs):
        info = original(self, *args, **kwargs)
        rdb = env.server.workdir / "dump.rdb"
        rdb.unlink()
        rdb.symlink_to(secret)
        return info

    monkeypatch.setattr(redisops.RedisSession, "bgsave_and_wait", bgsave_then_swap)
    result = _run_here(env)
    assert result.code == 8
    assert f"{env.server.workdir / 'dump.rdb'} is a symbolic link: not following it" in result.status["error"]
    assert env.finals() == [] and env.temps() == []


def test_a_symlinked_aof_dir_or_data_dir_is_not_followed(make_env, tmp_path):
    env = make_env("appendonly yes\n")
    fill(env.admin, 10)
    link = tmp_path / "data-link"
    link.symlink_to(env.server.workdir)
    env.write_config(data_dir=str(link))
    result = env.cli("run")
    assert result.code == 8, result.stderr
    assert f"{link} is a symbolic link: not following it (data directory" in result.stderr
    assert "data_dir" in result.stderr

    env.write_config()
    moved = tmp_path / "moved-appendonlydir"
    shutil.copytree(_aof_dir(env), moved)
    shutil.rmtree(_aof_dir(env))
    _aof_dir(env).symlink_to(moved)
    result = env.cli("run")
    assert result.code == 8, result.stderr
    assert f"AOF directory {_aof_dir(env)} is a symbolic link: not following it" in result.stderr
    assert env.finals() == [] and env.temps() == []


# ---- no CONFIG SET: consistent while rewrites run ---------------------------------------------


def test_backups_while_aof_rewrites_run_restore_the_same_keys(make_env, redis_factory, tmp_path):
    """Real BGREWRITEAOFs back to back (bounded) during three runs: each run succeeds, the newest
    restores to exactly the data, and auto-aof-rewrite-percentage is never changed."""
    env = make_env("appendonly yes\nauto-aof-rewrite-percentage 41\n")
    expected = fill(env.admin, 3000)
    stop = threading.Event()
    rewrites: list[int] = []
    seen: set[str] = set()

    def rewriter():
        client = redis.Redis(port=env.server.port, decode_responses=True)
        while not stop.is_set() and len(rewrites) < 60:
            info = client.info("persistence")
            seen.add(client.config_get("auto-aof-rewrite-percentage")["auto-aof-rewrite-percentage"])
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"] \
                    and not info["rdb_bgsave_in_progress"]:
                client.bgrewriteaof()
                rewrites.append(1)
            time.sleep(0.01)

    thread = threading.Thread(target=rewriter, daemon=True)
    thread.start()
    try:
        for _ in range(3):
            result = env.cli("run")
            assert result.code == 0, result.stderr
    finally:
        stop.set()
        thread.join(10)
    assert len(rewrites) >= 3
    assert seen == {"41"}
    assert env.admin.config_get("auto-aof-rewrite-percentage")["auto-aof-rewrite-percentage"] == "41"
    assert all(env.status()[key] for key in ("aof_included", "aof_file"))
    assert _restored(env, redis_factory, tmp_path) == expected


def test_a_rewrite_between_reading_the_manifest_and_opening_its_files_is_retried(
        make_env, redis_factory, tmp_path, monkeypatch, caplog):
    env = make_env("appendonly yes\n")
    expected = fill(env.admin, 100)
    original = source.open_aof_files
    calls = []

    def rewrite_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            _rewrite_and_wait(env.admin)     # the files just read from the manifest are replaced
        return original(*args, **kwargs)

    monkeypatch.setattr(source, "open_aof_files", rewrite_first)
    caplog.set_level(logging.INFO, logger="redis_infra.backup")
    result = _run_here(env)
    assert result.code == 0, result.status["error"]
    assert len(calls) == 2
    assert "the manifest changed while its files were being opened" in caplog.text
    assert _restored(env, redis_factory, tmp_path) == expected


def test_a_rewrite_during_the_copy_changes_nothing(make_env, redis_factory, tmp_path, monkeypatch):
    """The rewrite deletes the files being copied: the open descriptors keep them, the copy is whole."""
    env = make_env("appendonly yes\n")
    expected = fill(env.admin, 200)
    original = engine._copy_aof_file
    gone = []

    def rewrite_then_copy(opened, source_path, target):
        if not gone:
            _rewrite_and_wait(env.admin)
            gone.append(not os.path.exists(source_path))
        original(opened, source_path, target)

    monkeypatch.setattr(engine, "_copy_aof_file", rewrite_then_copy)
    result = _run_here(env)
    assert result.code == 0, result.status["error"]
    assert gone == [True], "the rewrite should have deleted the first file before it was copied"
    assert _restored(env, redis_factory, tmp_path) == expected


def test_rewrites_on_every_attempt_fail_clearly(make_env, monkeypatch):
    env = make_env("appendonly yes\n")
    fill(env.admin, 20)
    original = source.open_aof_files

    def rewrite_each_time(*args, **kwargs):
        _rewrite_and_wait(env.admin)
        return original(*args, **kwargs)

    monkeypatch.setattr(source, "open_aof_files", rewrite_each_time)
    result = _run_here(env)
    assert result.code == 8
    assert f"changed on each of {source.AOF_ATTEMPTS} attempts" in result.status["error"]
    assert env.finals() == [] and env.temps() == []


# ---- reading as the data directory's owner ----------------------------------------------------


@needs_root
def test_running_as_switches_to_the_owner_and_back(tmp_path):
    """In a forked child (so this process's ids are never at stake): inside the block the effective ids
    and groups are nobody's, after it (also after an exception) root's again."""
    nobody = _nobody()
    owned = tmp_path / "owned"
    owned.mkdir()
    os.chown(owned, nobody.pw_uid, nobody.pw_gid)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                          # child
        try:
            report = {}
            with source.running_as(os.stat(owned)) as user:
                report["inside"] = [os.geteuid(), os.getegid(), sorted(os.getgroups()), user]
                report["reads_root_only"] = os.access("/etc/shadow", os.R_OK, effective_ids=True)
            report["after"] = [os.geteuid(), os.getegid()]
            try:
                with source.running_as(os.stat(owned)):
                    raise RuntimeError("boom")
            except RuntimeError:
                report["after_error"] = [os.geteuid(), os.getegid()]
            os.write(write, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as handle:
        report = json.loads(handle.read() or "{}")
    os.waitpid(pid, 0)
    groups = sorted(os.getgrouplist("nobody", nobody.pw_gid))
    assert report["inside"] == [nobody.pw_uid, nobody.pw_gid, groups, "nobody"]
    assert report["reads_root_only"] is False
    assert report["after"] == [0, os.getegid()] and report["after_error"] == [0, os.getegid()]


@needs_root
def test_the_data_directory_is_read_as_its_owner(make_env, redis_factory, tmp_path):
    """Data directory owned by nobody: a file only root may read fails the backup (so root did not read
    it); readable by nobody, the backup works and restores."""
    nobody = _nobody()
    env = make_env("appendonly yes\n")
    expected = fill(env.admin, 20)
    os.chown(env.server.workdir, nobody.pw_uid, nobody.pw_gid)
    incr = _aof_dir(env) / _named(env, "i")
    incr.chmod(0o600)                                     # root-owned: nobody may not read it

    result = env.cli("run")
    assert result.code == 8, result.stderr
    assert f"cannot open {incr} as user nobody: Permission denied" in result.stderr
    assert env.finals() == []

    incr.chmod(0o644)
    result = env.cli("run")
    assert result.code == 0, result.stderr
    assert f"read the data directory {env.server.workdir} as its owner (uid {nobody.pw_uid})" in result.stderr
    assert _restored(env, redis_factory, tmp_path) == expected


# ---- the lock --------------------------------------------------------------------------------


def test_the_default_lock_is_in_a_directory_only_root_can_write(tmp_path):
    cfg = config_module.parse('instance = "main"\nconnection_file = "/c"\nbackup_dir = "/b"\nstatus_file = "/s"\n')
    assert cfg.lock_file == f"{config_module.LOCK_DIR}/main.lock"
    assert os.path.dirname(cfg.lock_file) == "/run/redis-infra-backup"
    # The tool creates that directory itself (mode 0700) where it is missing, as on every boot.
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    path = run / "redis-infra-backup" / "main.lock"
    with RunLock(str(path)):
        info = os.stat(path.parent)
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()
        assert path.stat().st_uid == os.geteuid() and not path.stat().st_mode & 0o022


def _use_lock(env, path: Path) -> None:
    env.lock_file = path
    env.write_config()


@needs_root
def test_a_lock_file_pre_created_by_another_user_in_a_world_writable_dir_is_refused(make_env, tmp_path):
    nobody = _nobody()
    env = make_env()
    env.admin.set("k", "v")
    sticky = tmp_path / "lock"                           # like /run/lock: 1777
    sticky.mkdir()
    sticky.chmod(0o1777)
    planted = sticky / "main.lock"
    planted.write_text("")
    os.chown(planted, nobody.pw_uid, nobody.pw_gid)
    _use_lock(env, planted)
    env.status_file.write_text('{"result": "ok"}')
    for args in (["run"], ["restore-prepare", "--rdb-dest", str(tmp_path / "x.rdb")]):
        result = env.cli(*args)
        assert result.code == 4, result.stderr
        assert f"the lock directory {sticky} is writable by others (mode 1777)" in result.stderr
        assert "(lock_file)" in result.stderr
    assert env.finals() == [] and env.status_file.read_text() == '{"result": "ok"}'
    assert not (tmp_path / "x.rdb").exists()


@needs_root
def test_a_lock_file_owned_by_another_user_or_a_symlink_is_refused(make_env, tmp_path):
    nobody = _nobody()
    env = make_env()
    env.admin.set("k", "v")
    safe = tmp_path / "locks"
    safe.mkdir(mode=0o755)
    planted = safe / "main.lock"
    planted.write_text("")
    os.chown(planted, nobody.pw_uid, nobody.pw_gid)
    _use_lock(env, planted)
    result = env.cli("run")
    assert result.code == 4, result.stderr
    assert f"the lock file {planted} is owned by uid {nobody.pw_uid}, not by root or this user" in result.stderr
    assert "(lock_file)" in result.stderr

    planted.unlink()
    target = tmp_path / "elsewhere"
    target.write_text("")
    planted.symlink_to(target)
    result = env.cli("run")
    assert result.code == 4 and f"the lock file {planted} is a symbolic link" in result.stderr

    planted.unlink()
    result = env.cli("run")
    assert result.code == 0, result.stderr
    assert planted.stat().st_uid == 0 and stat.S_IMODE(planted.stat().st_mode) == 0o600


# ---- backup_group ----------------------------------------------------------------------------


def _gid_of(name: str) -> int:
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        pytest.skip(f"no group {name} on this host")


@needs_root
def test_backup_group_is_given_to_every_file_written(make_env):
    gid = _gid_of("daemon")
    env = make_env("appendonly yes\n")
    env.admin.set("k", "v")
    far = env.tmp / "far"
    far.mkdir()
    env.write_config(f'[offsite]\nmode = "copy"\ndestination = "{far}"\n', backup_group="daemon")
    result = env.cli("run")
    assert result.code == 0, result.stderr
    written = [env.backup_dir / name for name in os.listdir(env.backup_dir) if name.startswith("main-")]
    written += [far / name for name in os.listdir(far)]
    assert len(written) == 8                              # rdb.gz, aof.tar.gz, 2 sidecars; here and far
    for path in written:
        info = path.stat()
        assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (gid, 0o640), path


@needs_root
def test_without_backup_group_files_get_the_backup_directorys_group(make_env):
    gid = _gid_of("nogroup")
    env = make_env()
    env.admin.set("k", "v")
    os.chown(env.backup_dir, 0, gid)
    result = env.cli("run")
    assert result.code == 0, result.stderr
    for name in os.listdir(env.backup_dir):
        info = (env.backup_dir / name).stat()
        assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (gid, 0o640), name


def test_an_unknown_backup_group_is_a_config_error_before_any_bgsave(make_env):
    env = make_env()
    env.write_config(backup_group="no-such-group-x")
    saves = env.admin.info("persistence")["rdb_saves"]
    result = env.cli("run")
    assert result.code == 2, result.stderr
    assert "backup_group: no group named 'no-such-group-x'" in result.stderr
    assert env.admin.info("persistence")["rdb_saves"] == saves
