"""Backup files on disk: names, SHA-256 sidecars, atomic writes, listing and verification.

A backup of instance `main` taken at 2026-11-25 02:00:00 UTC is:

    main-20261125T020000Z.rdb.gz            gzip of the RDB file
    main-20261125T020000Z.rdb.gz.sha256     "<hex>  main-20261125T020000Z.rdb.gz" (sha256sum format)
    main-20261125T020000Z.aof.tar.gz        only with AOF on: the AOF directory (tar.gz)
    main-20261125T020000Z.aof.tar.gz.sha256

A second backup within the same second gets `_1`, `_2`, ... after the timestamp (so that `ls` keeps
the order). Work in progress lives under names starting with `.tmp-<instance>-`, which never match a backup.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from . import BackupError, ExitCode

CHUNK = 1 << 20
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
RDB_SUFFIX = ".rdb.gz"
AOF_SUFFIX = ".aof.tar.gz"
SUM_SUFFIX = ".sha256"

# errno values that mean "the disk is full or failing", as opposed to "not allowed / not there".
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG}
_DIR_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR}


def write_error(exc: OSError, what: str) -> BackupError:
    """Map an OSError raised while writing `what` to the exit code an operator can act on."""
    reason = exc.strerror or str(exc)
    if exc.errno in _WRITE_ERRNOS:
        hint = " (disk full?)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        return BackupError(ExitCode.WRITE, f"write error on {what}: {reason}{hint}")
    if exc.errno in _DIR_ERRNOS:
        return BackupError(ExitCode.BACKUP_DIR, f"cannot write {what}: {reason}")
    return BackupError(ExitCode.WRITE, f"write error on {what}: {reason}")


def backup_id(instance: str, when: datetime, seq: int = 0) -> str:
    stamp = when.astimezone(UTC).strftime(TIMESTAMP_FORMAT)
    return f"{instance}-{stamp}" + (f"_{seq}" if seq else "")


def id_pattern(instance: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(instance)}-(\d{{8}}T\d{{6}}Z)(?:_(\d+))?$")


@dataclass
class Backup:
    """One backup in a directory; `status` is filled by `check_sums` (None: not checked)."""

    directory: str
    id: str
    time: datetime
    seq: int = 0
    status: str | None = None          # "ok", "corrupt", "no-checksum", "missing"
    aof_status: str | None = None      # None: no AOF archive; else like status
    detail: str = ""

    @property
    def rdb_path(self) -> str:
        return os.path.join(self.directory, self.id + RDB_SUFFIX)

    @property
    def aof_path(self) -> str:
        return os.path.join(self.directory, self.id + AOF_SUFFIX)

    @property
    def has_aof(self) -> bool:
        return os.path.exists(self.aof_path)

    @property
    def valid(self) -> bool:
        return self.status == "ok"

    def sort_key(self) -> tuple:
        return (self.time, self.seq)


def list_backups(directory: str, instance: str) -> list[Backup]:
    """Backups of `instance` in `directory`, newest first (by the UTC time in their name)."""
    pattern = id_pattern(instance)
    found = []
    for name in os.listdir(directory):
        if not name.endswith(RDB_SUFFIX):
            continue
        match = pattern.match(name[: -len(RDB_SUFFIX)])
        if not match:
            continue
        when = datetime.strptime(match.group(1), TIMESTAMP_FORMAT).replace(tzinfo=UTC)
        found.append(Backup(directory, name[: -len(RDB_SUFFIX)], when, int(match.group(2) or 0)))
    found.sort(key=Backup.sort_key, reverse=True)
    return found


def find_backup(directory: str, instance: str, name: str) -> Backup | None:
    """A backup by id, file name or path (the file may be in another directory, e.g. an off-host copy)."""
    if os.sep in name:
        directory, name = os.path.split(os.path.abspath(name))
    for suffix in (SUM_SUFFIX, RDB_SUFFIX, AOF_SUFFIX):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    for backup in list_backups(directory, instance):
        if backup.id == name:
            return backup
    return None


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_text(digest: str, basename: str) -> str:
    return f"{digest}  {basename}\n"


def read_sidecar(path: str) -> str:
    """The hex digest in `<path>.sha256`; ValueError when it is missing or malformed."""
    try:
        with open(path + SUM_SUFFIX, encoding="ascii") as handle:
            line = handle.readline()
    except FileNotFoundError:
        raise ValueError("no checksum file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"unreadable checksum file: {exc}") from None
    match = re.match(r"^([0-9a-f]{64})[ \t][ *]?(.+)$", line.rstrip("\n"))
    if not match or match.group(2) != os.path.basename(path):
        raise ValueError("malformed checksum file")
    return match.group(1)


def check_sum(path: str) -> tuple[str, str]:
    """("ok" | "corrupt" | "no-checksum" | "missing", detail) for one file and its sidecar."""
    try:
        expected = read_sidecar(path)
    except ValueError as exc:
        return ("no-checksum", f"{os.path.basename(path)}: {exc}")
    try:
        actual = sha256_file(path)
    except FileNotFoundError:
        return ("missing", f"{os.path.basename(path)}: file vanished")
    except OSError as exc:
        return ("corrupt", f"{os.path.basename(path)}: read error: {exc.strerror}")
    if actual != expected:
        return ("corrupt", f"{os.path.basename(path)}: checksum mismatch (expected {expected[:12]}..., "
                           f"got {actual[:12]}...)")
    return ("ok", "")


def check_sums(backup: Backup) -> Backup:
    backup.status, backup.detail = check_sum(backup.rdb_path)
    if backup.has_aof:
        backup.aof_status, aof_detail = check_sum(backup.aof_path)
        if aof_detail:
            backup.detail = "; ".join(filter(None, [backup.detail, aof_detail]))
    return backup


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            for entry in os.listdir(path):
                remove_quietly(os.path.join(path, entry))
            os.rmdir(path)
        else:
            os.unlink(path)


def write_text_durably(path: str, text: str, mode: int = 0o640) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        remove_quietly(path)
        raise


def write_bytes_durably(path: str, data: bytes, mode: int = 0o640) -> None:
    """Write a new file (never an existing one, never through a symlink) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: str, text: str, mode: int = 0o644) -> None:
    """Write `path` via a temporary file in the same directory, fsync, rename, fsync the directory."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".tmp-{os.path.basename(path)}.{os.getpid()}")
    write_text_durably(tmp, text, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    fsync_dir(directory)


class HashingWriter:
    """A write-only file wrapper that hashes and counts what goes through it."""

    def __init__(self, handle):
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


class SourceReadError(Exception):
    """Reading the source of a copy failed (as opposed to writing the copy)."""

    def __init__(self, path: str, exc: OSError):
        super().__init__(f"cannot read {path}: {exc.strerror or exc}")
        self.path = path
        self.error = exc


def copy_file(src: str, dst: str, limit: int | None = None, mode: int = 0o640) -> int:
    """Copy src to a new file dst (at most `limit` bytes), fsync it; return the bytes copied.

    Errors reading src raise SourceReadError; errors writing dst raise OSError.
    """
    copied = 0
    try:
        reader = open(src, "rb")  # noqa: SIM115 - closed below; open errors must be told apart
    except OSError as exc:
        raise SourceReadError(src, exc) from None
    with reader:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as writer:
            remaining = limit
            while remaining is None or remaining > 0:
                try:
                    chunk = reader.read(CHUNK if remaining is None else min(CHUNK, remaining))
                except OSError as exc:
                    raise SourceReadError(src, exc) from None
                if not chunk:
                    break
                writer.write(chunk)
                copied += len(chunk)
                if remaining is not None:
                    remaining -= len(chunk)
            writer.flush()
            os.fsync(writer.fileno())
    return copied


def copy_fd(src_fd: int, src_name: str, dst: str, limit: int, mode: int = 0o640) -> int:
    """Copy the first `limit` bytes of the open file src_fd to a new file dst, fsync it; return the bytes copied.

    pread leaves the source's offset alone. Errors reading raise SourceReadError; errors writing raise OSError.
    """
    copied = 0
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as writer:
        while copied < limit:
            try:
                chunk = os.pread(src_fd, min(CHUNK, limit - copied), copied)
            except OSError as exc:
                raise SourceReadError(src_name, exc) from None
            if not chunk:
                break
            writer.write(chunk)
            copied += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return copied


def set_group(path: str, gid: int | None, mode: int = 0o640) -> None:
    """Give a file the tool wrote the backup group (backup_group) and its mode; never follows a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if gid is not None and os.fstat(fd).st_gid != gid:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def gzip_file(src: str, dst: str, level: int, inner_name: str, mtime: float) -> tuple[str, int]:
    """Compress src into a new file dst; fsync; return (sha256 of dst, size of dst)."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "wb") as raw:
        hashing = HashingWriter(raw)
        with open(src, "rb") as reader, gzip.GzipFile(filename=inner_name, mode="wb", compresslevel=level,
                                                      fileobj=hashing, mtime=int(mtime)) as zipped:
            while chunk := reader.read(CHUNK):
                zipped.write(chunk)
        raw.flush()
        os.fsync(raw.fileno())
    return hashing.digest.hexdigest(), hashing.size


def gunzip_file(src: str, dst: str) -> int:
    """Decompress src into a new file dst (fsynced); return its size. Raises OSError/EOFError on bad data."""
    size = 0
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "wb") as writer, gzip.open(src, "rb") as reader:
        while chunk := reader.read(CHUNK):
            writer.write(chunk)
            size += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return size


def run_check(tool: str, target: str, timeout: float, cwd: str | None = None) -> tuple[bool, str]:
    """Run redis-check-rdb/-aof on target: (passed, last lines of its output)."""
    try:
        proc = subprocess.run([tool, target], cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"{os.path.basename(tool)} timed out after {timeout:g}s"
    except OSError as exc:
        return False, f"cannot run {tool}: {exc.strerror}"
    output = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    # Five lines: the key figures (keys read, expires, already expired), and since Redis 7.4 "subexpires".
    tail = " | ".join(line.strip() for line in output[-5:])
    return proc.returncode == 0, tail or f"exit code {proc.returncode}"


@contextlib.contextmanager
def temp_paths() -> Iterator[list[str]]:
    """Collect temporary paths; every one still present is removed when the block ends (success or not)."""
    paths: list[str] = []
    try:
        yield paths
    finally:
        for path in reversed(paths):
            remove_quietly(path)
