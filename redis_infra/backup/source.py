"""Reading the Redis data directory without following anything the server's user could plant there.

The data directory belongs to the Redis user, and the backup runs as root. Resolving a path in it
would follow a symlink planted there (`zz.aof -> /etc/shadow`), so:

- the data directory is opened one component at a time with O_DIRECTORY|O_NOFOLLOW, the AOF directory
  relative to it in the same way, and each file relative to its directory with O_NOFOLLOW;
- only the files the AOF manifest names (base and incr) and the dbfilename are opened, never a
  directory listing; a name with a path separator or `..` is refused;
- when run as root, every open inside the data directory happens with the uid, gid and groups of the
  data directory's owner, so nothing is read that the Redis user could not read itself (a hard link
  to a file it may not read fails as it would for that user).

An open file keeps its inode: an AOF rewrite that deletes a file after it was opened changes nothing
of what is copied from it. So the AOF needs no CONFIG SET: once the manifest read before and after
opening the files it names is the same, the open files are one consistent set (the base and history
files never change, the last incr file only grows, and it is copied up to its size when opened).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pwd
import re
import shlex
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import BackupError, ExitCode

log = logging.getLogger("redis_infra.backup")

# The names the tool reads and archives (and extract_aof_archive accepts on restore).
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
AOF_ATTEMPTS = 5                 # manifest reads before giving up when rewrites keep changing it
_RETRY_PAUSE = 0.2
_MAX_MANIFEST = 1 << 20          # a manifest is a few lines; refuse to slurp anything large
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC   # NONBLOCK: a FIFO cannot hang us


def _unsafe(message: str) -> BackupError:
    return BackupError(ExitCode.SNAPSHOT, message)


def check_name(name: str, where: str) -> str:
    """A plain file name, or BackupError: no separator, not `.`/`..`, only [A-Za-z0-9._-]."""
    if "/" in name or name in (".", ".."):
        raise _unsafe(f"{where}: {name!r} has a path separator or is '..': refusing it (only plain file names "
                      f"in the directory are read)")
    if not SAFE_NAME.match(name):
        raise _unsafe(f"{where}: {name!r} is not a plain file name ([A-Za-z0-9][A-Za-z0-9._-]*): refusing it")
    return name


@dataclass(frozen=True)
class ManifestEntry:
    name: str
    kind: str                    # "b" base, "i" incr, "h" history


def parse_manifest(text: str, where: str) -> list[ManifestEntry]:
    """The entries of a multi-part AOF manifest (`file <name> seq <n> type <b|i|h>` per line).

    Every name is checked with check_name, history entries too: Redis would act on them (delete).
    """
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            tokens = shlex.split(line)
        except ValueError as exc:
            raise _unsafe(f"{where} line {number}: malformed ({exc})") from None
        if len(tokens) % 2:
            raise _unsafe(f"{where} line {number}: malformed (odd number of fields)")
        fields = dict(zip(tokens[::2], tokens[1::2], strict=True))
        if "file" not in fields or fields.get("type") not in ("b", "i", "h"):
            raise _unsafe(f"{where} line {number}: malformed (needs file and type b, i or h)")
        entries.append(ManifestEntry(check_name(fields["file"], f"{where} line {number}"), fields["type"]))
    if not any(entry.kind in ("b", "i") for entry in entries):
        raise _unsafe(f"{where}: names no base or incr file")
    return entries


@dataclass
class OpenFile:
    name: str
    fd: int
    size: int                    # at open time: what is copied (an incr file may grow meanwhile)


@dataclass
class AofSet:
    manifest_name: str
    manifest: bytes
    files: list[OpenFile] = field(default_factory=list)   # base and incr files, manifest order


def _owner_identity(owner: os.stat_result) -> tuple[str, int, list[int]]:
    try:
        entry = pwd.getpwuid(owner.st_uid)
    except KeyError:
        return f"uid {owner.st_uid}", owner.st_gid, [owner.st_gid]
    return entry.pw_name, entry.pw_gid, os.getgrouplist(entry.pw_name, entry.pw_gid)


@contextlib.contextmanager
def running_as(owner: os.stat_result) -> Iterator[str]:
    """Inside the block the effective uid, gid and groups are those of `owner` (when root and owner is not).

    Yields the name of the user the block runs as. Saved root ids let the block end switch back.
    """
    if os.geteuid() != 0 or owner.st_uid == 0:
        yield "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        return
    name, gid, groups = _owner_identity(owner)
    saved_groups, saved_egid = os.getgroups(), os.getegid()
    os.setgroups(groups)
    os.setegid(gid)
    os.seteuid(owner.st_uid)
    try:
        yield name
    finally:
        os.seteuid(0)
        os.setegid(saved_egid)
        os.setgroups(saved_groups)


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def open_dir_nofollow(path: str, what: str) -> int:
    """An O_DIRECTORY fd of the absolute `path`, no component of which may be a symlink."""
    if not os.path.isabs(path) or any(part in (".", "..") for part in path.split("/")):
        raise _unsafe(f"{what} {path!r} must be an absolute path without '.' or '..'")
    fd = os.open("/", _DIR_FLAGS)
    walked = ""
    try:
        for part in filter(None, path.split("/")):
            walked += "/" + part
            try:
                new = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(part, fd):
                    raise _unsafe(f"{walked} is a symbolic link: not following it ({what} {path}); set "
                                  f"data_dir to the real path if the link is yours") from None
                raise _unsafe(f"cannot open {walked} ({what} {path}): {exc.strerror}") from None
            os.close(fd)
            fd = new
    except BaseException:
        os.close(fd)
        raise
    return fd


class DataDir:
    """The instance's data directory, opened without following symlinks; opens files inside it safely."""

    def __init__(self, path: str):
        self.path = path
        self.fd = open_dir_nofollow(path, "data directory")
        self.owner = os.fstat(self.fd)
        self._opened: list[int] = []

    def close(self) -> None:
        for fd in self._opened + [self.fd]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._opened = []

    def __enter__(self) -> DataDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def track(self, fd: int) -> int:
        self._opened.append(fd)
        return fd

    def release(self, fds: list[int]) -> None:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
            if fd in self._opened:
                self._opened.remove(fd)

    def open_sources(self, dbfilename: str, aof: tuple[str, str] | None, deadline: float,
                     attempts: int = AOF_ATTEMPTS) -> tuple[OpenFile, AofSet | None]:
        """Open the RDB file and, with aof=(appenddirname, manifest name), a consistent set of AOF files.

        Retrying a changed manifest stops after `attempts` reads or at `deadline` (time.monotonic()).
        """
        with running_as(self.owner) as user:
            try:
                rdb = open_file(self, self.fd, dbfilename, self.path, user)
            except FileNotFoundError:
                raise _unsafe(f"{os.path.join(self.path, dbfilename)} does not exist after BGSAVE "
                              f"(data_dir/dbfilename)") from None
            if aof is None:
                return rdb, None
            appenddirname, manifest_name = aof
            check_name(appenddirname, "appenddirname")
            where = os.path.join(self.path, appenddirname)
            try:
                aof_fd = self.track(os.open(appenddirname, _DIR_FLAGS, dir_fd=self.fd))
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(appenddirname, self.fd):
                    raise _unsafe(f"AOF directory {where} is a symbolic link: not following it") from None
                raise _unsafe(f"cannot open the AOF directory {where} as user {user}: {exc.strerror}") from None
            return rdb, open_aof_set(self, aof_fd, where, manifest_name, user, attempts, deadline)


def open_file(data: DataDir, dir_fd: int, name: str, where: str, user: str) -> OpenFile:
    """Open the regular file `name` in dir_fd without following a symlink; FileNotFoundError if absent."""
    check_name(name, where)
    path = os.path.join(where, name)
    try:
        fd = data.track(os.open(name, _FILE_FLAGS, dir_fd=dir_fd))
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _unsafe(f"{path} is a symbolic link: not following it (only regular files in the data "
                          f"directory are backed up; who planted it?)") from None
        raise _unsafe(f"cannot open {path} as user {user}: {exc.strerror} (can the data directory's owner "
                      f"read it?)") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        data.release([fd])
        raise _unsafe(f"{path} is not a regular file: refusing it")
    return OpenFile(name, fd, info.st_size)


def _read_manifest(data: DataDir, dir_fd: int, name: str, where: str, user: str) -> bytes:
    try:
        handle = open_file(data, dir_fd, name, where, user)
    except FileNotFoundError:
        raise _unsafe(f"AOF directory {where} has no {name}") from None
    try:
        content = os.pread(handle.fd, _MAX_MANIFEST + 1, 0)
    finally:
        data.release([handle.fd])
    if len(content) > _MAX_MANIFEST:
        raise _unsafe(f"{os.path.join(where, name)} is larger than {_MAX_MANIFEST} bytes: not an AOF manifest")
    return content


def open_aof_files(data: DataDir, dir_fd: int, where: str, names: list[str], user: str) -> list[OpenFile]:
    """Open each named file; FileNotFoundError when one is gone (a rewrite finished meanwhile)."""
    opened: list[OpenFile] = []
    try:
        for name in names:
            opened.append(open_file(data, dir_fd, name, where, user))
    except BaseException:
        data.release([handle.fd for handle in opened])
        raise
    return opened


def open_aof_set(data: DataDir, dir_fd: int, where: str, manifest_name: str, user: str, attempts: int,
                 deadline: float) -> AofSet:
    """Read the manifest, open what it names, read it again: the same manifest means a consistent set."""
    for attempt in range(1, attempts + 1):
        manifest = _read_manifest(data, dir_fd, manifest_name, where, user)
        try:
            text = manifest.decode("utf-8")
        except UnicodeDecodeError:
            raise _unsafe(f"{os.path.join(where, manifest_name)} is not UTF-8 text") from None
        entries = parse_manifest(text, os.path.join(where, manifest_name))
        names = [entry.name for entry in entries if entry.kind in ("b", "i")]
        try:
            files = open_aof_files(data, dir_fd, where, names, user)
        except FileNotFoundError:
            files = None
        if files is not None:
            if _read_manifest(data, dir_fd, manifest_name, where, user) == manifest:
                log.debug("AOF: opened %s as user %s (attempt %d)", ", ".join(names), user, attempt)
                return AofSet(manifest_name, manifest, files)
            data.release([handle.fd for handle in files])
        if attempt < attempts and time.monotonic() < deadline:
            log.info("AOF: the manifest changed while its files were being opened (an AOF rewrite finished); "
                     "reading it again")
            time.sleep(_RETRY_PAUSE)
        else:
            break
    raise _unsafe(f"the AOF manifest {os.path.join(where, manifest_name)} changed on each of {attempt} attempts "
                  f"to open the files it names (AOF rewrites back to back?; timeouts.aof_rewrite); try the "
                  f"backup again later")
