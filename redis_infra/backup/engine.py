"""The subcommands' work: run (back up now), verify, list, restore-prepare."""

from __future__ import annotations

import contextlib
import errno
import grp
import gzip
import json
import logging
import os
import re
import shutil
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from .. import connection
from . import CONFIG_GET_ACL, BackupError, ExitCode, retention, storage
from .config import BackupConfig, ConfigError
from .lock import RunLock
from .offsite import copy_offsite
from .source import SAFE_NAME, AofSet, DataDir, OpenFile
from .storage import AOF_SUFFIX, RDB_SUFFIX, SUM_SUFFIX, Backup, SourceReadError

log = logging.getLogger("redis_infra.backup")
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- run ---------------------------------------------------------------------------------------


@dataclass
class RunResult:
    code: ExitCode
    status: dict


def check_backup_dir(path: str) -> None:
    if not os.path.exists(path):
        raise BackupError(ExitCode.BACKUP_DIR, f"backup directory {path} does not exist (backup_dir)")
    if not os.path.isdir(path):
        raise BackupError(ExitCode.BACKUP_DIR, f"backup directory {path} is not a directory (backup_dir)")
    if not os.access(path, os.W_OK | os.X_OK):
        reason = "is on a read-only file system" if _read_only_fs(path) else "is not writable by this user"
        raise BackupError(ExitCode.BACKUP_DIR, f"backup directory {path} {reason} (uid {os.geteuid()})")
    probe = os.path.join(path, f".tmp-probe-{os.getpid()}")
    try:
        storage.write_text_durably(probe, "probe\n")
    except OSError as exc:
        raise storage.write_error(exc, f"backup directory {path}") from None
    finally:
        storage.remove_quietly(probe)


def _read_only_fs(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _temp_re(instance: str) -> re.Pattern:
    return re.compile(rf"^\.tmp-{re.escape(instance)}-\d{{8}}T\d{{6}}Z")


def clean_stale_temps(cfg: BackupConfig, now: float | None = None) -> None:
    """Remove what an interrupted earlier run left behind (we hold the lock: no run is active).

    Leftovers of `verify` (which takes no lock) and of the directory probe are removed only once
    they are a day old, so that a verify running right now is not disturbed.
    """
    pattern = _temp_re(cfg.instance)
    other = re.compile(rf"^\.tmp-(?:verify-{re.escape(cfg.instance)}-\d{{8}}T\d{{6}}Z|probe-\d+$)")
    now = time.time() if now is None else now
    for name in os.listdir(cfg.backup_dir):
        path = os.path.join(cfg.backup_dir, name)
        if pattern.match(name):
            log.warning("removing leftover %s from an interrupted run", name)
            storage.remove_quietly(path)
        elif other.match(name):
            with contextlib.suppress(OSError):
                if now - os.lstat(path).st_mtime > 86400:
                    log.warning("removing leftover %s from an interrupted verify", name)
                    storage.remove_quietly(path)


def _marker_path(cfg: BackupConfig) -> str:
    return os.path.join(cfg.backup_dir, f".{cfg.instance}.aof-rewrite-percentage")


def report_stale_marker(cfg: BackupConfig, session) -> None:
    """Handle the marker that versions before this one left when killed during the AOF copy.

    Those versions set auto-aof-rewrite-percentage to 0 while copying and saved the old value in the
    marker. This version never changes the server's config (the backup user has no CONFIG SET), so
    it cannot put the value back: while the setting is still 0 it says what to run and keeps the
    marker; once it is no longer 0 it removes the marker.
    """
    marker = _marker_path(cfg)
    try:
        with open(marker, encoding="ascii") as handle:
            saved = handle.read(32).strip()
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read %s: %s", marker, getattr(exc, "strerror", None) or exc)
        return
    allowed, current = session.config_get_if_allowed("auto-aof-rewrite-percentage")
    if not allowed:
        log.warning("an earlier version of this tool left %s: it may have left auto-aof-rewrite-percentage at 0 "
                    "(it was %s), and the backup user may not read it (no %s); an admin should check it with "
                    "CONFIG GET auto-aof-rewrite-percentage and then remove %s", marker, saved, CONFIG_GET_ACL,
                    marker)
        return
    if current == "0" and saved.isdigit() and saved != "0":
        log.warning("an earlier version of this tool was stopped during an AOF copy and left "
                    "auto-aof-rewrite-percentage at 0 (it was %s): automatic AOF rewrites stay off until an "
                    "admin runs CONFIG SET auto-aof-rewrite-percentage %s (this tool no longer changes the "
                    "server's config; %s is removed once the setting is back)", saved, saved, marker)
        return
    storage.remove_quietly(marker)


def unique_id(cfg: BackupConfig, when: datetime) -> str:
    seq = 0
    while True:
        candidate = storage.backup_id(cfg.instance, when, seq)
        if not any(os.path.exists(os.path.join(cfg.backup_dir, candidate + suffix))
                   for suffix in (RDB_SUFFIX, AOF_SUFFIX, RDB_SUFFIX + SUM_SUFFIX)):
            return candidate
        seq += 1


def run(cfg: BackupConfig, clock: Clock = utcnow, lock_wait: float | None = None) -> RunResult:
    """Take one backup and write the status file.

    Raises BackupError only before the lock is held (LOCKED, or the lock file cannot be opened); the
    status file is then left alone. Every later failure is returned as RunResult(code, status).
    """
    lock = RunLock(cfg.lock_file, cfg.timeouts.lock_wait if lock_wait is None else lock_wait).acquire()
    started = clock()
    t0 = time.monotonic()
    status: dict = {"version": 1, "instance": cfg.instance, "started": iso(started), "result": "failed",
                    "error": None, "file": None, "size": None, "keys": None, "checksum": None,
                    "checksum_type": "sha256", "aof_included": False, "aof_file": None, "aof_size": None,
                    "aof_checksum": None, "rdb_size": None, "offsite": None, "deleted": [], "corrupt": [],
                    "phases": {}, "exit_code": int(ExitCode.INTERNAL)}
    code = ExitCode.OK
    try:
        _run_locked(cfg, clock, started, status)
        status["result"] = "ok"
        log.info("backup ok: %s (%d bytes, %s keys) in %.1fs", status["file"], status["size"], status["keys"],
                 time.monotonic() - t0)
    except BackupError as exc:
        code = exc.code
        status["error"] = exc.message
        log.error("backup failed: %s", exc.message)
    except Exception as exc:  # a bug: still write a failed status, then let the caller report it
        code = ExitCode.INTERNAL
        status["error"] = f"internal error: {type(exc).__name__}: {exc}"
        log.exception("backup failed with an internal error")
    except BaseException:     # KeyboardInterrupt and the like: record it, then let it propagate
        code = ExitCode.INTERNAL
        status["error"] = "interrupted"
        raise
    finally:
        status["exit_code"] = int(code)
        status["time"] = iso(clock())
        status["duration"] = round(time.monotonic() - t0, 3)
        previous = read_status(cfg.status_file)
        if status["result"] == "ok":
            status["last_success"] = status["time"]
            status["last_success_file"] = status["file"]
        else:
            status["last_success"] = previous.get("last_success") if previous else None
            status["last_success_file"] = previous.get("last_success_file") if previous else None
        try:
            storage.atomic_write_text(cfg.status_file, json.dumps(status, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            log.error("cannot write status file %s: %s", cfg.status_file, exc.strerror)
            if code == ExitCode.OK:
                code = ExitCode.BACKUP_DIR
        lock.release()
    return RunResult(code, status)


def read_status(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _load_connection(cfg: BackupConfig):
    try:
        return connection.load(cfg.connection_file)
    except connection.ConnectionFileError as exc:
        raise ConfigError(f"{cfg.source}: connection_file: {exc}") from None


@contextlib.contextmanager
def _timed(phases: dict, name: str):
    """Record how long a step took (seconds) in the status file's `phases`."""
    start = time.monotonic()
    try:
        yield
    finally:
        phases[name] = round(time.monotonic() - start, 3)


def _run_locked(cfg: BackupConfig, clock: Clock, started: datetime, status: dict) -> None:
    from .redisops import RedisSession

    phases = status["phases"]

    check_backup_dir(cfg.backup_dir)
    clean_stale_temps(cfg)
    gid = backup_gid(cfg)
    check_rdb = cfg.tool("rdb")
    settings = _load_connection(cfg)
    session = RedisSession(settings, cfg.timeouts.connect)
    try:
        session.ping()
        report_stale_marker(cfg, session)
        facts = session.facts(cfg)
        with_aof = facts.aof_enabled and cfg.aof == "auto"
        check_aof = cfg.tool("aof") if with_aof else None
        log.info("instance %s: %s %s at %s, %d keys, data %s/%s, AOF %s", cfg.instance, facts.server_name,
                 facts.version, session.address, facts.keys, facts.data_dir, facts.dbfilename,
                 "on" if facts.aof_enabled else "off")
        status["keys"] = facts.keys
        snapshot_time = clock()
        bid = unique_id(cfg, snapshot_time)
        with _timed(phases, "bgsave"):
            session.bgsave_and_wait(cfg.timeouts.bgsave)
        with _open_sources(cfg, facts, with_aof) as (rdb_source, aof_set):
            if cfg.space_check:
                check_free_space(cfg, rdb_source.size + (sum(f.size for f in aof_set.files) if aof_set else 0))
            finals: list[str] = []
            try:
                with storage.temp_paths() as temps:
                    rdb_digest, rdb_size, raw_size = _stage_rdb(
                        cfg, facts, rdb_source, bid, snapshot_time, check_rdb, temps, phases)
                    staged = [(f".tmp-{bid}{RDB_SUFFIX}{SUM_SUFFIX}", bid + RDB_SUFFIX + SUM_SUFFIX),
                              (f".tmp-{bid}{RDB_SUFFIX}", bid + RDB_SUFFIX)]
                    if aof_set is not None:
                        with _timed(phases, "aof"):
                            aof_digest, aof_size = _stage_aof(cfg, facts, aof_set, bid, snapshot_time, check_aof,
                                                              temps)
                        staged = [(f".tmp-{bid}{AOF_SUFFIX}{SUM_SUFFIX}", bid + AOF_SUFFIX + SUM_SUFFIX),
                                  (f".tmp-{bid}{AOF_SUFFIX}", bid + AOF_SUFFIX)] + staged
                    for tmp_name, _final_name in staged:
                        _set_backup_group(os.path.join(cfg.backup_dir, tmp_name), gid)
                    # Sidecars first, the .rdb.gz last: a backup exists once its .rdb.gz has its final name.
                    for tmp_name, final_name in staged:
                        final = os.path.join(cfg.backup_dir, final_name)
                        try:
                            os.rename(os.path.join(cfg.backup_dir, tmp_name), final)
                        except OSError as exc:
                            raise storage.write_error(exc, final) from None
                        finals.append(final)
                    try:
                        storage.fsync_dir(cfg.backup_dir)
                    except OSError as exc:
                        raise storage.write_error(exc, cfg.backup_dir) from None
            except BaseException:
                for final in finals:       # a half-renamed backup must not remain under final names
                    storage.remove_quietly(final)
                raise
    finally:
        session.close()

    rdb_final = os.path.join(cfg.backup_dir, bid + RDB_SUFFIX)
    status.update(file=rdb_final, size=rdb_size, checksum=rdb_digest, rdb_size=raw_size, backup_id=bid,
                  snapshot_time=iso(snapshot_time))
    files = {rdb_final: rdb_digest, rdb_final + SUM_SUFFIX: storage.sha256_file(rdb_final + SUM_SUFFIX)}
    if with_aof:
        aof_final = os.path.join(cfg.backup_dir, bid + AOF_SUFFIX)
        status.update(aof_included=True, aof_file=aof_final, aof_size=aof_size, aof_checksum=aof_digest)
        files[aof_final] = aof_digest
        files[aof_final + SUM_SUFFIX] = storage.sha256_file(aof_final + SUM_SUFFIX)
    log.info("wrote %s (%d bytes from a %d-byte RDB)%s", rdb_final, rdb_size, raw_size,
             f" and {bid + AOF_SUFFIX} ({aof_size} bytes)" if with_aof else "")

    if cfg.offsite:
        try:
            with _timed(phases, "offsite"):
                where = copy_offsite(cfg.offsite, files, cfg.timeouts.offsite, gid)
        except SourceReadError as exc:
            raise BackupError(ExitCode.OFFSITE, f"off-host copy failed: {exc}") from None
        status["offsite"] = where
        log.info("copied to %s and verified by checksum there", where)

    with _timed(phases, "retention"):
        deleted, corrupt = apply_retention(cfg, clock(), new_id=bid)
    status["deleted"] = deleted
    status["corrupt"] = corrupt


def backup_gid(cfg: BackupConfig) -> int:
    """The group of the files the tool writes: backup_group, or else the backup directory's group."""
    if cfg.backup_group is None:
        return os.stat(cfg.backup_dir).st_gid
    if isinstance(cfg.backup_group, int):
        return cfg.backup_group
    try:
        return grp.getgrnam(cfg.backup_group).gr_gid
    except KeyError:
        raise ConfigError(f"{cfg.source}: backup_group: no group named {cfg.backup_group!r} on this host") from None


def _set_backup_group(path: str, gid: int) -> None:
    try:
        storage.set_group(path, gid)
    except OSError as exc:
        raise BackupError(ExitCode.BACKUP_DIR, f"cannot give {path} the group {gid} (backup_group): "
                                               f"{exc.strerror}") from None


@contextlib.contextmanager
def _open_sources(cfg: BackupConfig, facts, with_aof: bool):
    """The RDB file and the AOF set, opened without following symlinks, as the data directory's owner."""
    aof = None
    if with_aof:
        if not facts.appenddirname:
            raise BackupError(ExitCode.SNAPSHOT, "AOF is on but the server has no appenddirname (Redis < 7 "
                                                 "single-file AOF is not supported); set aof = \"off\"")
        aof = (facts.appenddirname, facts.appendfilename + ".manifest")
    with DataDir(facts.data_dir) as data:
        rdb, aof_set = data.open_sources(facts.dbfilename, aof, time.monotonic() + cfg.timeouts.aof_rewrite)
        if data.owner.st_uid != os.geteuid():
            log.info("read the data directory %s as its owner (uid %d)", facts.data_dir, data.owner.st_uid)
        yield rdb, aof_set


def check_free_space(cfg: BackupConfig, source_bytes: int) -> None:
    """Refuse to start when the backup file system cannot hold the worst case (raw copy + an equally large
    gzip, the same for the AOF): filling it up could hurt Redis itself if it shares the file system."""
    need = 2 * source_bytes
    stat = os.statvfs(cfg.backup_dir)
    free = stat.f_bavail * stat.f_frsize
    if free < need:
        mib = 1024 * 1024
        raise BackupError(ExitCode.WRITE, f"not enough free space in {cfg.backup_dir} (disk full?): a backup "
                                          f"may need {need / mib:.1f} MiB, {free / mib:.1f} MiB are free "
                                          f"(space_check = false skips this estimate)")


def _stage_rdb(cfg: BackupConfig, facts, rdb_source: OpenFile, bid: str, when: datetime, check_rdb: str,
               temps: list, phases: dict) -> tuple:
    source = os.path.join(facts.data_dir, facts.dbfilename)
    raw = os.path.join(cfg.backup_dir, f".tmp-{bid}.rdb")
    temps.append(raw)
    try:
        with _timed(phases, "copy"):
            raw_size = storage.copy_fd(rdb_source.fd, source, raw, rdb_source.size)
    except SourceReadError as exc:
        raise BackupError(ExitCode.SNAPSHOT, f"{exc} (data_dir/dbfilename)") from None
    except OSError as exc:
        raise storage.write_error(exc, f"{raw} (copying {source})") from None
    with _timed(phases, "check_rdb"):
        passed, output = storage.run_check(check_rdb, raw, cfg.timeouts.check)
    if not passed:
        raise BackupError(ExitCode.VERIFY, f"{os.path.basename(check_rdb)} rejected the copy of {source}: {output}")
    gz = os.path.join(cfg.backup_dir, f".tmp-{bid}{RDB_SUFFIX}")
    temps.append(gz)
    try:
        with _timed(phases, "compress"):
            digest, size = storage.gzip_file(raw, gz, cfg.compression_level, facts.dbfilename, when.timestamp())
        storage.remove_quietly(raw)           # free the space before the AOF copy
        sidecar = gz + SUM_SUFFIX
        temps.append(sidecar)
        storage.write_text_durably(sidecar, storage.sidecar_text(digest, bid + RDB_SUFFIX))
    except OSError as exc:
        raise storage.write_error(exc, gz) from None
    return digest, size, raw_size


def _stage_aof(cfg: BackupConfig, facts, aof_set: AofSet, bid: str, when: datetime, check_aof: str,
               temps: list) -> tuple:
    """Copy the open AOF set (see source.py: no CONFIG SET needed), check it, archive it."""
    aof_dir = os.path.join(facts.data_dir, facts.appenddirname)
    stage = os.path.join(cfg.backup_dir, f".tmp-{bid}-aof")
    copy_root = os.path.join(stage, facts.appenddirname)
    temps.append(stage)
    try:
        os.mkdir(stage, 0o750)
        os.mkdir(copy_root, 0o750)
        storage.write_bytes_durably(os.path.join(copy_root, aof_set.manifest_name), aof_set.manifest)
    except OSError as exc:
        raise storage.write_error(exc, stage) from None
    for opened in aof_set.files:
        _copy_aof_file(opened, os.path.join(aof_dir, opened.name), os.path.join(copy_root, opened.name))
    log.info("AOF: copied %s", ", ".join(f"{opened.name} ({opened.size} bytes)" for opened in aof_set.files))

    passed, output = storage.run_check(check_aof, os.path.join(copy_root, aof_set.manifest_name), cfg.timeouts.check)
    if not passed:
        raise BackupError(ExitCode.VERIFY, f"{os.path.basename(check_aof)} rejected the copy of {aof_dir}: {output}")

    archive = os.path.join(cfg.backup_dir, f".tmp-{bid}{AOF_SUFFIX}")
    temps.append(archive)
    names = sorted([aof_set.manifest_name] + [opened.name for opened in aof_set.files])
    try:
        digest, size = _tar_gz(copy_root, facts.appenddirname, names, archive, cfg.compression_level, when)
        sidecar = archive + SUM_SUFFIX
        temps.append(sidecar)
        storage.write_text_durably(sidecar, storage.sidecar_text(digest, bid + AOF_SUFFIX))
    except OSError as exc:
        raise storage.write_error(exc, archive) from None
    storage.remove_quietly(stage)
    return digest, size


def _copy_aof_file(source: OpenFile, source_path: str, target: str) -> None:
    try:
        storage.copy_fd(source.fd, source_path, target, source.size)
    except SourceReadError as exc:
        raise BackupError(ExitCode.SNAPSHOT, str(exc)) from None
    except OSError as exc:
        raise storage.write_error(exc, target) from None


def _tar_gz(root: str, arc_dir: str, names: list[str], archive: str, level: int, when: datetime) -> tuple:
    fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "wb") as raw:
        hashing = storage.HashingWriter(raw)
        with gzip.GzipFile(filename="", mode="wb", compresslevel=level, fileobj=hashing,
                           mtime=int(when.timestamp())) as zipped, \
                tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in names:
                info = tar.gettarinfo(os.path.join(root, name), arcname=f"{arc_dir}/{name}")
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(os.path.join(root, name), "rb") as handle:
                    tar.addfile(info, handle)
        raw.flush()
        os.fsync(raw.fileno())
    return hashing.digest.hexdigest(), hashing.size


# --- retention ---------------------------------------------------------------------------------


def apply_retention(cfg: BackupConfig, now: datetime, new_id: str | None = None) -> tuple[list, list]:
    """Delete valid backups outside the policy (only called after a successful run)."""
    backups = storage.list_backups(cfg.backup_dir, cfg.instance)
    corrupt = []
    for backup in backups:
        if backup.id == new_id:
            backup.status = "ok"          # just written and checked
        else:
            storage.check_sums(backup)
        if not backup.valid:
            corrupt.append(backup.id)
            log.warning("backup %s is not valid (%s): kept for inspection, not counted", backup.id,
                        backup.detail or backup.status)
    _keep, delete = retention.plan(backups, now, cfg.retention.keep_last, cfg.retention.keep_daily_days)
    deleted = []
    for backup in delete:
        for path in (backup.rdb_path, backup.rdb_path + SUM_SUFFIX, backup.aof_path, backup.aof_path + SUM_SUFFIX):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("retention: cannot delete %s: %s", path, exc.strerror)
        deleted.append(backup.id)
        log.info("retention: deleted %s", backup.id)
    _remove_orphans(cfg)
    return deleted, corrupt


def _remove_orphans(cfg: BackupConfig) -> None:
    """Sidecars and AOF archives whose .rdb.gz is gone (e.g. deleted by hand) are removed."""
    pattern = storage.id_pattern(cfg.instance)
    present = {backup.id for backup in storage.list_backups(cfg.backup_dir, cfg.instance)}
    for name in os.listdir(cfg.backup_dir):
        for suffix in (RDB_SUFFIX + SUM_SUFFIX, AOF_SUFFIX, AOF_SUFFIX + SUM_SUFFIX):
            if name.endswith(suffix):
                bid = name[: -len(suffix)]
                if pattern.match(bid) and bid not in present:
                    log.info("retention: removing orphan %s", name)
                    storage.remove_quietly(os.path.join(cfg.backup_dir, name))
                break


# --- list and verify ---------------------------------------------------------------------------


def list_backups(cfg: BackupConfig, verify_sums: bool = True) -> list[Backup]:
    if not os.path.isdir(cfg.backup_dir):
        raise BackupError(ExitCode.BACKUP_DIR, f"backup directory {cfg.backup_dir} does not exist (backup_dir)")
    backups = storage.list_backups(cfg.backup_dir, cfg.instance)
    if verify_sums:
        for backup in backups:
            storage.check_sums(backup)
    return backups


def backup_record(backup: Backup) -> dict:
    def size(path):
        with contextlib.suppress(OSError):
            return os.path.getsize(path)
        return None

    return {"id": backup.id, "time": iso(backup.time), "file": backup.rdb_path, "size": size(backup.rdb_path),
            "status": backup.status or "unchecked", "aof": backup.has_aof,
            "aof_status": backup.aof_status if backup.has_aof else None,
            "aof_size": size(backup.aof_path) if backup.has_aof else None, "detail": backup.detail or None}


def _scratch_dir(preferred: str | None, backup: Backup) -> str:
    return preferred or backup.directory


def verify_backup(cfg: BackupConfig, backup: Backup, tmp_dir: str | None = None) -> tuple[bool, str]:
    """Checksum(s), then redis-check-rdb on the decompressed RDB and redis-check-aof on the AOF archive."""
    storage.check_sums(backup)
    if not backup.valid:
        return False, backup.detail or backup.status
    if backup.has_aof and backup.aof_status != "ok":
        return False, backup.detail or f"AOF archive: {backup.aof_status}"
    scratch = _scratch_dir(tmp_dir, backup)
    with storage.temp_paths() as temps:
        raw = os.path.join(scratch, f".tmp-verify-{backup.id}.rdb.{os.getpid()}")
        temps.append(raw)
        try:
            storage.gunzip_file(backup.rdb_path, raw)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise storage.write_error(exc, f"{raw} (use --tmp-dir to decompress elsewhere)") from None
            return False, f"{os.path.basename(backup.rdb_path)}: not a valid gzip file: {exc}"
        passed, output = storage.run_check(cfg.tool("rdb"), raw, cfg.timeouts.check)
        if not passed:
            return False, f"redis-check-rdb failed: {output}"
        if backup.has_aof:
            stage = os.path.join(scratch, f".tmp-verify-{backup.id}-aof.{os.getpid()}")
            temps.append(stage)
            ok, detail = _check_aof_archive(cfg, backup.aof_path, stage)
            if not ok:
                return False, detail
    # The restore play checks the restored data against these figures (docs/backup-runbook.md):
    # redis-check-rdb's last lines count the keys of the RDB.
    figures = [re.search(rf"(\d+) {what}", output) for what in ("keys read", "expires", "already expired")]
    counts = (f"; {figures[0][1]} keys read, {figures[1][1]} expires, {figures[2][1]} already expired"
              if all(figures) else "")
    return True, ("checksum ok, redis-check-rdb ok" + (", redis-check-aof ok" if backup.has_aof else "")
                  + f"; sha256 {storage.read_sidecar(backup.rdb_path)}" + counts)


def extract_aof_archive(archive: str, target: str) -> str:
    """Unpack an AOF archive (flat: <appenddirname>/<file>) into the new directory `target`.

    Only regular files with plain names are accepted, so a tampered archive cannot write elsewhere.
    Returns the manifest file name. Raises ValueError on a malformed archive, OSError on write errors.
    """
    os.mkdir(target, 0o750)
    manifest = None
    top = None
    with tarfile.open(archive, mode="r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 2 or not all(SAFE_NAME.match(part) for part in parts):
                raise ValueError(f"unexpected member {member.name!r} in {os.path.basename(archive)}")
            if top not in (None, parts[0]):
                raise ValueError(f"more than one directory in {os.path.basename(archive)}")
            top = parts[0]
            source = tar.extractfile(member)
            fd = os.open(os.path.join(target, parts[1]), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            with os.fdopen(fd, "wb") as out, source:
                shutil.copyfileobj(source, out, storage.CHUNK)
                out.flush()
                os.fsync(out.fileno())
            if parts[1].endswith(".manifest"):
                manifest = parts[1]
    if manifest is None:
        raise ValueError(f"no manifest in {os.path.basename(archive)}")
    storage.fsync_dir(target)
    return manifest


def _check_aof_archive(cfg: BackupConfig, archive: str, stage: str) -> tuple[bool, str]:
    try:
        manifest = extract_aof_archive(archive, stage)
    except (ValueError, tarfile.TarError, EOFError, gzip.BadGzipFile) as exc:
        return False, f"AOF archive: {exc}"
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM):
            raise storage.write_error(exc, stage) from None
        return False, f"AOF archive: {exc}"
    passed, output = storage.run_check(cfg.tool("aof"), os.path.join(stage, manifest), cfg.timeouts.check)
    return (True, "") if passed else (False, f"redis-check-aof failed: {output}")


# --- restore-prepare ---------------------------------------------------------------------------


def _set_owner_like(path: str, reference: os.stat_result) -> None:
    if os.geteuid() == 0:        # the target directory belongs to the Redis user: never chown through a link
        os.chown(path, reference.st_uid, reference.st_gid, follow_symlinks=False)


def parse_slots(text: str) -> list[tuple[int, int]]:
    """"0-5460,10923" -> [(0, 5460), (10923, 10923)]; BackupError for anything else."""
    ranges = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        start, _dash, end = item.partition("-")
        if not (start.isdigit() and (end or start).isdigit()) or not 0 <= int(start) <= int(end or start) < 16384:
            raise BackupError(ExitCode.CONFIG, f"--slots: {item!r} is not a slot or a range of slots (0-16383)")
        ranges.append((int(start), int(end or start)))
    if not ranges:
        raise BackupError(ExitCode.CONFIG, "--slots: no slot given")
    return ranges


def _server_binary(cfg: BackupConfig) -> str:
    """The redis-server (or valkey-server) beside the configured redis-check-rdb (Debian links them)."""
    check_rdb = cfg.tool("rdb")
    candidates = (check_rdb.replace("-check-rdb", "-server"), shutil.which("redis-server"),
                  shutil.which("valkey-server"))
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise BackupError(ExitCode.CONFIG, f"no redis-server or valkey-server beside {check_rdb} or in PATH")


def keep_slots(cfg: BackupConfig, rdb_path: str, ranges: list[tuple[int, int]], parent: str = "/var/tmp") -> dict:
    """Keep in the RDB at rdb_path only the keys of the given cluster slots (a shard's restore: the keys of
    slots its node no longer serves would otherwise be dropped by Valkey, or left open as importing slots by
    Redis). A copy of the RDB is loaded into a scratch server (no TCP port, run as the owner of the RDB's
    directory) in a directory of root's own under `parent`, never in the data directory, which the server's
    account could change under root's feet; the other keys are deleted there and the scratch server's own
    save replaces the file (written beside it, then renamed). Returns the keys kept and dropped; keys that had
    expired are not loaded, so they count in neither."""
    import pwd
    import tempfile

    import redis
    from redis.crc import key_slot

    from ..maintenance import MaintenanceError
    from ..maintenance.scratch import ScratchServer

    owned = bytearray(16384)
    for start, end in ranges:
        owned[start:end + 1] = b"\x01" * (end - start + 1)
    directory = os.path.dirname(rdb_path)
    owner = pwd.getpwuid(os.stat(directory).st_uid).pw_name if os.geteuid() == 0 else ""
    filtered = f"{rdb_path}.slots"
    try:
        # Root's own directory, which the server's account may only pass through to its scratch directory.
        home = tempfile.mkdtemp(prefix="redis-infra-slots-", dir=parent)
    except OSError as exc:
        raise storage.write_error(exc, parent) from None
    try:
        os.chmod(home, 0o711)  # noqa: S103 - root's own directory, passable (not readable) to the server's account
        with ScratchServer(_server_binary(cfg), home, owner, prefix="s-") as scratch:
            _copy_nofollow(rdb_path, scratch.path("dump.rdb"))
            scratch.start(timeout=cfg.timeouts.check)
            client = scratch.client(decode=False, timeout=cfg.timeouts.check)
            other_dbs = [db for db in client.info("keyspace") if db != "db0"]
            if other_dbs:
                raise BackupError(ExitCode.VERIFY, f"the backup holds keys in {', '.join(other_dbs)}: a cluster "
                                                   "node has only database 0")
            dropped = 0
            for batch in _batches(client.scan_iter(count=1000), 1000):
                foreign = [key for key in batch if not owned[key_slot(key)]]
                if foreign:
                    dropped += client.unlink(*foreign)
            kept = client.dbsize()
            client.save()
            client.close()
            scratch.stop()
            _copy_nofollow(scratch.path("dump.rdb"), filtered)
        os.replace(filtered, rdb_path)
    except (MaintenanceError, redis.RedisError) as exc:
        raise BackupError(ExitCode.VERIFY, f"the backup could not be loaded to keep slots {_ranges_text(ranges)}: "
                                           f"{exc}") from None
    except OSError as exc:
        raise storage.write_error(exc, home) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(filtered)
        shutil.rmtree(home, ignore_errors=True)
    log.info("kept %d keys of slots %s, dropped %d of other slots", kept, _ranges_text(ranges), dropped)
    return {"slots": _ranges_text(ranges), "kept_keys": kept, "dropped_keys": dropped}


def _copy_nofollow(source: str, target: str) -> None:
    """Copy a file without following a link at either end; the target must not exist yet."""
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            while True:
                chunk = os.read(src, 1 << 20)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view):]
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _batches(items, size):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _ranges_text(ranges):
    return ",".join(f"{start}-{end}" if end != start else str(start) for start, end in ranges)


def restore_prepare(cfg: BackupConfig, name: str | None, rdb_dest: str, aof_dest: str | None, force: bool,
                    lock_wait: float | None = None, clock: Clock = utcnow, slots: str | None = None) -> dict:
    """Verify a backup (default: the newest valid one) and unpack it to rdb_dest (and aof_dest); with
    `slots` ("0-5460,..."), keep only the keys of those cluster slots (keep_slots; not with aof_dest).

    Existing targets are only replaced with force, and are then renamed to `<path>.before-restore-<time>`,
    never deleted. New files get the owner of the file they replace, or of the target directory.
    """
    ranges = parse_slots(slots) if slots is not None else None
    if ranges and aof_dest:
        raise BackupError(ExitCode.CONFIG, "--slots keeps keys in the RDB only: restore without --aof-dir")
    rdb_dest = os.path.abspath(rdb_dest)
    aof_dest = os.path.abspath(aof_dest) if aof_dest else None
    for target in filter(None, (rdb_dest, aof_dest)):
        parent = os.path.dirname(target)
        if not os.path.isdir(parent):
            raise BackupError(ExitCode.BACKUP_DIR, f"target directory {parent} does not exist")
        if os.path.lexists(target) and not force:
            raise BackupError(ExitCode.CONFIG, f"{target} exists; pass --force to replace it (it is kept as "
                                               f"{os.path.basename(target)}.before-restore-<time>)")
    with RunLock(cfg.lock_file, cfg.timeouts.lock_wait if lock_wait is None else lock_wait):
        if name:
            found = storage.find_backup(cfg.backup_dir, cfg.instance, name)
            if found is None:
                raise BackupError(ExitCode.NOT_FOUND, f"no backup named {name!r} of instance {cfg.instance} "
                                                      f"in {cfg.backup_dir}")
            candidates = [found]
        else:
            candidates = list_backups(cfg, verify_sums=False)
        for backup in candidates:
            result = _try_restore(cfg, backup, rdb_dest, aof_dest, clock, ranges)
            if isinstance(result, dict):
                return result
            if name:
                raise BackupError(result[0], f"backup {backup.id} cannot be restored: {result[1]}")
            log.warning("skipping backup %s: %s", backup.id, result[1])
        raise BackupError(ExitCode.NOT_FOUND, f"no valid backup of instance {cfg.instance} in {cfg.backup_dir}"
                                              + (" with an AOF archive" if aof_dest else ""))


def _try_restore(cfg: BackupConfig, backup: Backup, rdb_dest: str, aof_dest: str | None, clock: Clock,
                 ranges: list[tuple[int, int]] | None = None):
    storage.check_sums(backup)
    if not backup.valid:
        return ExitCode.VERIFY, backup.detail or backup.status
    if aof_dest:
        if not backup.has_aof:
            return ExitCode.NOT_FOUND, "it has no AOF archive"
        if backup.aof_status != "ok":
            return ExitCode.VERIFY, backup.detail or f"AOF archive: {backup.aof_status}"
    pid = os.getpid()
    with storage.temp_paths() as temps:
        rdb_tmp = os.path.join(os.path.dirname(rdb_dest), f".tmp-restore-{os.path.basename(rdb_dest)}.{pid}")
        temps.append(rdb_tmp)
        try:
            size = storage.gunzip_file(backup.rdb_path, rdb_tmp)
        except (EOFError, gzip.BadGzipFile) as exc:
            return ExitCode.VERIFY, f"not a valid gzip file: {exc}"
        except OSError as exc:
            raise storage.write_error(exc, rdb_tmp) from None
        passed, output = storage.run_check(cfg.tool("rdb"), rdb_tmp, cfg.timeouts.check)
        if not passed:
            return ExitCode.VERIFY, f"redis-check-rdb failed: {output}"
        kept = keep_slots(cfg, rdb_tmp, ranges) if ranges else {}
        if kept:
            size = os.path.getsize(rdb_tmp)
        aof_tmp = None
        if aof_dest:
            aof_tmp = os.path.join(os.path.dirname(aof_dest), f".tmp-restore-{os.path.basename(aof_dest)}.{pid}")
            temps.append(aof_tmp)
            ok, detail = _check_aof_archive(cfg, backup.aof_path, aof_tmp)
            if not ok:
                return ExitCode.VERIFY, detail

        stamp = clock().strftime(storage.TIMESTAMP_FORMAT)
        moved = {}
        try:
            for tmp, target in ((rdb_tmp, rdb_dest), (aof_tmp, aof_dest)):
                if tmp is None:
                    continue
                reference = os.lstat(target) if os.path.lexists(target) else os.stat(os.path.dirname(target))
                for path in [tmp] + ([os.path.join(tmp, n) for n in os.listdir(tmp)] if os.path.isdir(tmp) else []):
                    _set_owner_like(path, reference)
                if os.path.lexists(target):
                    aside = f"{target}.before-restore-{stamp}"
                    os.rename(target, aside)
                    moved[target] = aside
                    log.info("kept the previous %s as %s", target, aside)
                os.rename(tmp, target)
                storage.fsync_dir(os.path.dirname(target))
        except OSError as exc:
            raise storage.write_error(exc, os.path.dirname(rdb_dest)) from None
    log.info("restored %s to %s%s", backup.id, rdb_dest, f" and its AOF to {aof_dest}" if aof_dest else "")
    return {"backup": backup.id, "time": iso(backup.time), "rdb": rdb_dest, "rdb_size": size,
            "aof_dir": aof_dest, "previous": moved, **kept}
