"""Off-host copy of a finished backup, checked by SHA-256 on the far side.

Modes:
- rsync to `[user@]host:/path` over SSH with an identity file (BatchMode, strict host key checking),
  then `sha256sum` run on the far side over the same SSH;
- rsync to a local directory (e.g. a mounted share), checksummed locally;
- copy to a local directory (no rsync needed): temp name, fsync, checksum, rename.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess

from . import BackupError, ExitCode
from .config import Offsite
from .storage import copy_file, fsync_dir, remove_quietly, set_group, sha256_file

log = logging.getLogger("redis_infra.backup")


def _fail(message: str) -> BackupError:
    return BackupError(ExitCode.OFFSITE, f"off-host copy failed: {message}")


def ssh_command(offsite: Offsite) -> list[str]:
    command = [offsite.ssh, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
    if offsite.ssh_identity:
        command += ["-i", offsite.ssh_identity, "-o", "IdentitiesOnly=yes"]
    if offsite.ssh_known_hosts:
        command += ["-o", f"UserKnownHostsFile={offsite.ssh_known_hosts}"]
    if offsite.ssh_port:
        command += ["-p", str(offsite.ssh_port)]
    return command


def _run(command: list[str], timeout: float, what: str) -> str:
    try:
        proc = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise _fail(f"{what} timed out after {timeout:g}s (timeouts.offsite)") from None
    except OSError as exc:
        raise _fail(f"cannot run {command[0]}: {exc.strerror} (offsite.rsync / offsite.ssh)") from None
    if proc.returncode != 0:
        error = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise _fail(f"{what} exited with {proc.returncode}: {' | '.join(error[-3:]) or 'no message'}")
    return proc.stdout.decode("utf-8", "replace")


def copy_offsite(offsite: Offsite, files: dict[str, str], timeout: float, gid: int | None = None) -> str:
    """Copy `files` ({local path: sha256}) to the destination and verify them there; return where.

    Local copies get the group `gid` (backup_group); a remote host has its own groups.
    """
    if offsite.mode == "copy":
        _copy_local(offsite.destination, files)
        _set_groups(offsite.destination, files, gid)
        return offsite.destination
    dest = offsite.destination.rstrip("/") + "/"
    command = [offsite.rsync, "--times", "--chmod=F0640"]
    if offsite.is_remote:
        command += ["-e", shlex.join(ssh_command(offsite))]
    elif not os.path.isdir(offsite.destination):
        raise _fail(f"destination directory {offsite.destination} does not exist")
    _run(command + ["--", *files, dest], timeout, "rsync")
    if offsite.is_remote:
        _verify_remote(offsite, files, timeout)
    else:
        _verify_local(offsite.destination, files)
        _set_groups(offsite.destination, files, gid)
    return offsite.destination


def _set_groups(directory: str, files: dict[str, str], gid: int | None) -> None:
    for path in files:
        far = os.path.join(directory, os.path.basename(path))
        try:
            set_group(far, gid)
        except OSError as exc:
            raise _fail(f"cannot give {far} the group {gid} (backup_group): {exc.strerror}") from None


def _verify_local(directory: str, files: dict[str, str]) -> None:
    for path, digest in files.items():
        far = os.path.join(directory, os.path.basename(path))
        try:
            actual = sha256_file(far)
        except OSError as exc:
            raise _fail(f"cannot read back {far}: {exc.strerror}") from None
        if actual != digest:
            raise _fail(f"checksum mismatch on the far side for {far}")


def _verify_remote(offsite: Offsite, files: dict[str, str], timeout: float) -> None:
    host, remote_dir = offsite.destination.split(":", 1)
    far = {remote_dir.rstrip("/") + "/" + os.path.basename(path): digest for path, digest in files.items()}
    remote = f"{offsite.remote_sha256sum} -- " + " ".join(shlex.quote(path) for path in far)
    output = _run(ssh_command(offsite) + [host, remote], timeout, f"{offsite.remote_sha256sum} on {host}")
    seen = {}
    for line in output.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            seen[parts[1].lstrip("*")] = parts[0]
    for path, digest in far.items():
        if seen.get(path) != digest:
            raise _fail(f"checksum mismatch on {host} for {path} (far side: {seen.get(path, 'missing')})")


def _copy_local(directory: str, files: dict[str, str]) -> None:
    if not os.path.isdir(directory):
        raise _fail(f"destination directory {directory} does not exist")
    for path, digest in files.items():
        name = os.path.basename(path)
        tmp = os.path.join(directory, f".tmp-{name}.{os.getpid()}")
        try:
            copy_file(path, tmp)
            if sha256_file(tmp) != digest:
                raise _fail(f"checksum mismatch after copying {name} to {directory}")
            os.replace(tmp, os.path.join(directory, name))
        except OSError as exc:
            raise _fail(f"cannot write {os.path.join(directory, name)}: {exc.strerror}") from None
        finally:
            remove_quietly(tmp)
    try:
        fsync_dir(directory)
    except OSError as exc:
        raise _fail(f"cannot fsync {directory}: {exc.strerror}") from None
