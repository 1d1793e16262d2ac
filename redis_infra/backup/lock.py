"""One run at a time per instance: an exclusive flock on the lock file, held until the process ends.

The lock decides whether backups and restores run, so nobody but root (or the tool's own user) may
be able to create or replace it: its directory must be owned by root or this user and writable by
nobody else, and the file itself must be a regular file owned by root or this user. The default
directory (/run/redis-infra-backup) is created here with mode 0700 when it is missing.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from . import BackupError, ExitCode


def _refuse(message: str) -> BackupError:
    return BackupError(ExitCode.BACKUP_DIR, f"{message} (lock_file)")


def _owner_ok(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _check_directory(directory: str) -> None:
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise _refuse(f"cannot create the lock directory {directory}: {exc.strerror}") from None
    info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise _refuse(f"the lock directory {directory} is not a directory")
    if not _owner_ok(info.st_uid):
        raise _refuse(f"the lock directory {directory} is owned by uid {info.st_uid}, not by root or this user "
                      f"(uid {os.geteuid()}): its owner could replace the lock")
    if info.st_mode & 0o022:
        raise _refuse(f"the lock directory {directory} is writable by others (mode {stat.S_IMODE(info.st_mode):04o}): "
                      f"any local user could create the lock file first and stop every backup and restore; "
                      f"use a directory only root can write, such as the default /run/redis-infra-backup")


def open_lock_file(path: str) -> int:
    """The lock file's fd, after the checks above; BackupError (exit 4) naming lock_file otherwise."""
    _check_directory(os.path.dirname(path) or ".")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(f"the lock file {path} is a symbolic link: not following it") from None
        raise _refuse(f"cannot open lock file {path}: {exc.strerror}") from None
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif not _owner_ok(info.st_uid):
        problem = (f"is owned by uid {info.st_uid}, not by root or this user (uid {os.geteuid()}): someone else "
                   f"created it; remove it")
    if problem:
        os.close(fd)
        raise _refuse(f"the lock file {path} {problem}")
    return fd


class RunLock:
    def __init__(self, path: str, wait: float = 0.0):
        self.path = path
        self.wait = wait
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        self.fd = open_lock_file(self.path)
        deadline = time.monotonic() + self.wait
        delay = 0.05
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._holder()
                    self.release()
                    raise BackupError(ExitCode.LOCKED, f"another backup run holds {self.path}"
                                                       f"{f' (pid {holder})' if holder else ''}; not starting") \
                        from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def _holder(self) -> str:
        try:
            return os.pread(self.fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)      # closing drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
