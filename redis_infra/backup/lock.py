"""One run at a time per instance: an exclusive flock on the lock file, held until the process ends."""

from __future__ import annotations

import fcntl
import os
import time

from . import BackupError, ExitCode


class RunLock:
    def __init__(self, path: str, wait: float = 0.0):
        self.path = path
        self.wait = wait
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise BackupError(ExitCode.BACKUP_DIR, f"cannot open lock file {self.path}: {exc.strerror} "
                                                   f"(lock_file)") from None
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
