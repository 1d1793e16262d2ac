"""A throwaway redis-server (or valkey-server) on the host: no TCP port, a unix socket in a private
directory, no persistence, run as an unprivileged account when the tool runs as root. The backup drill
loads a backup into one; the memory section asks one whether the build can defragment.

As root, the tool writes everything the server needs (its config, the RDB) while the directory is still
its own (0700 root), then hands the files and the directory to the account and starts the server. From
then on it touches nothing inside: the server logs to a pipe the tool reads (never to a file the account
could replace with a link), and the directory goes with a removal that follows no link."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time

from . import MaintenanceError

LOG_TAIL = 3


class ScratchServer:
    """`with ScratchServer(binary, parent) as scratch:` makes the private directory; write into it with
    `path()`, then `start()`; leaving the block stops the server and removes the directory."""

    def __init__(self, binary: str, parent: str | None = None, user: str = "", prefix: str = ".tmp-scratch-"):
        self.binary = binary
        self.parent = parent
        self.user = user
        self.prefix = prefix
        self.dir = ""
        self.proc: subprocess.Popen | None = None
        # The server's stdout: the tool's own file, outside the directory (closed in __exit__).
        self.log = tempfile.TemporaryFile()  # noqa: SIM115

    def __enter__(self) -> ScratchServer:
        self.dir = tempfile.mkdtemp(prefix=self.prefix, dir=self.parent)   # 0700, the tool's own
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.log.close()

    def _account(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        name = self.user or "nobody"
        try:
            return pwd.getpwnam(name)
        except KeyError:
            raise MaintenanceError(f"drill.scratch_user: no account {name!r} on this host") from None

    @property
    def socket(self) -> str:
        return os.path.join(self.dir, "scratch.sock")

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _hand_over(self) -> pwd.struct_passwd | None:
        """Give the files the tool wrote, then the directory, to the account (as root)."""
        account = self._account()
        if account:
            for name in os.listdir(self.dir):
                os.lchown(self.path(name), account.pw_uid, account.pw_gid)
            os.chown(self.dir, account.pw_uid, account.pw_gid)
        return account

    def start(self, dbfilename: str = "dump.rdb", timeout: float = 600.0) -> float:
        """Start the server on the RDB named dbfilename in its directory (if present) and wait until it
        has loaded it; return the seconds that took. MaintenanceError with the log's last lines when the
        server exits or does not answer in time."""
        with open(self.path("scratch.conf"), "x", encoding="utf-8") as handle:
            handle.write("\n".join([
                "port 0", f'unixsocket "{self.socket}"', "unixsocketperm 700", f'dir "{self.dir}"',
                f'dbfilename "{dbfilename}"', "appendonly no", 'save ""', "daemonize no", "protected-mode yes",
                'logfile ""', "maxmemory 0", "latency-monitor-threshold 0", ""]))
        account = self._hand_over()
        started = time.monotonic()
        self.proc = subprocess.Popen(  # noqa: S603 - a fixed binary and arguments
            [self.binary, self.path("scratch.conf")], stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT, cwd="/", user=account.pw_uid if account else None,
            group=account.pw_gid if account else None, extra_groups=[] if account else None)
        deadline = started + timeout
        client = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MaintenanceError(f"the scratch server exited with code {self.proc.returncode}: {self.log_tail()}")
            if os.path.exists(self.socket):
                client = client or self.client()
                with contextlib.suppress(Exception):
                    if int(client.info("persistence").get("loading", 1)) == 0:
                        return time.monotonic() - started
            time.sleep(0.05)
        raise MaintenanceError(f"the scratch server did not load within {timeout:g}s: {self.log_tail()}")

    def client(self, decode: bool = True, timeout: float = 60.0, db: int = 0):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries: newer redis-py retries a refused connection with backoff, which only slows the polling.
        return redis.Redis(unix_socket_path=self.socket, decode_responses=decode, socket_timeout=timeout, db=db,
                           retry=Retry(NoBackoff(), 0))

    def log_text(self) -> str:
        self.log.flush()
        self.log.seek(0)
        text = self.log.read().decode("utf-8", "replace")
        self.log.seek(0, os.SEEK_END)
        return text

    def log_tail(self) -> str:
        lines = [line.strip() for line in self.log_text().splitlines() if line.strip()]
        return " | ".join(lines[-LOG_TAIL:]) or "(no log)"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()        # SIGTERM: a clean shutdown, and no save ("save" is off)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def probe_active_defrag(binary: str, parent: str | None = None, user: str = "") -> tuple[bool, str]:
    """Whether this build of the server can defragment (CONFIG SET activedefrag yes on a scratch
    server): (supported, the server's answer)."""
    import redis

    with ScratchServer(binary, parent, user, prefix=".tmp-defrag-probe-") as scratch:
        scratch.start(timeout=30)
        try:
            scratch.client().config_set("activedefrag", "yes")
        except redis.ResponseError as exc:
            return False, str(exc).rsplit(" - ", maxsplit=1)[-1]
        return True, "CONFIG SET activedefrag yes accepted"
