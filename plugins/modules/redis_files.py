#!/usr/bin/python
# Copyright: redis-infra contributors
# MIT License (see LICENSE)
"""Write a role's files and directories, and read the files it needs, in one round trip."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_files
short_description: Put many small files and directories in place and read others, in one execution on the host
version_added: 1.1.0
author:
  - redis-infra contributors (@redis-infra)
description:
  - Each entry of O(files) is a directory or a file whose content was rendered on the controller (with the
    C(ansible.builtin.template) lookup, for example). The module compares every entry with what is on the host
    (content by SHA-1, owner, group, mode) and changes only what differs. A file is written to a temporary
    file beside it, flushed to disk and renamed over the old one, so a run cut off halfway leaves either the old
    or the new file, never half of one.
  - Entries are handled in order. A directory's missing parents are created root:root 0755 (list them
    before it for another owner or mode); a file's directory must exist or come earlier in the list.
  - O(read) lists files whose content is returned (base64), or nothing when they are missing; so what the role
    needs to decide what to do next comes back in the same round trip.
  - This replaces a C(template) or C(copy) task per file, which costs two executions on the host when nothing
    changes (a stat, then the comparison), and a C(file) or C(slurp) task per directory or read.
options:
  files:
    description: Directories and files, in the order they are made.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      state:
        description: V(file), V(directory), or V(absent) (a file that must not exist, removed when it does).
        type: str
        choices: [file, directory, absent]
        default: file
      content_base64:
        description: The content in base64, for a binary file (instead of O(files[].content)). Never logged.
        type: str
      content:
        description: The file's whole content (for V(file)). Never logged (the host's journal, the module's
          invocation); the diff shows it only when O(files[].diff) is true.
        type: str
      owner:
        description: Owner's name.
        type: str
        default: root
      group:
        description: Group's name.
        type: str
        default: root
      mode:
        description: Mode, an octal string such as V('0640') (required but for V(absent)).
        type: str
      create:
        description: Only create the file when it is missing; an existing one keeps its content (owner, group
          and mode are still corrected).
        type: bool
        default: false
      diff:
        description: Whether the diff may show the file's old and new content (false for anything holding a
          secret).
        type: bool
        default: true
      before:
        description: Return the file's content before this run in RV(files[].before) (base64; only for files
          without secrets).
        type: bool
        default: false
      validate:
        description:
          - A command that checks the new content before it replaces the file, as C(ansible.builtin.template)'s
            C(validate) does. C(%s) stands for the path of the new content (a temporary file beside the
            file, so relative paths in it resolve as in the file). The command runs without a shell. When it
            fails the file stays as it was and the task fails with the command's output. Not run in check mode.
        type: str
  lines:
    description:
      - Settings lines to keep in files that another program also writes (Sentinel rewrites its config file),
        handled after O(files). For each setting, the last line that starts with its key and a space is
        replaced by C(key value), or the line is put at the top of the file when there is none; a setting
        without a value removes every line of its key. The rest of the file is kept as it is, and so are its
        owner and mode. The file must exist.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      settings:
        description: The settings, each C({key, value}); without a C(value) the key is removed.
        type: list
        elements: dict
        required: true
  read:
    description: Files to read (after the writes). Missing files are reported as missing, not as errors.
    type: list
    elements: path
    default: []
  units:
    description:
      - systemd units whose state is returned in RV(units), read with one C(systemctl show) after the writes
        (instead of C(ansible.builtin.service_facts), which lists every unit of the host).
    type: list
    elements: str
    default: []
  packages:
    description:
      - Debian packages whose installed version is returned in RV(packages), read with one C(dpkg-query), so that a
        role runs C(ansible.builtin.apt) (about 1.5 s even when nothing is missing) only for packages that are not
        installed.
    type: list
    elements: str
    default: []
  users:
    description:
      - System users (and their groups of the same name) made before O(files), so that files can be theirs in the
        same execution.
      - A missing one is created with C(useradd --system --no-create-home); an existing one gets its home and shell
        corrected with C(usermod). Its home directory is not created.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The user's name.
        type: str
        required: true
      home:
        description: Its home directory (not created).
        type: path
        default: /nonexistent
      shell:
        description: Its shell.
        type: path
        default: /usr/sbin/nologin
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Check mode changes nothing and reports, per entry, what would change.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: Entries with O(files[].diff=false) show only that they change.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
"""

EXAMPLES = r"""
- name: Write the instance's configuration and read its state file
  redis_infra.redis.redis_files:
    files:
      - {path: /etc/redis/main, state: directory, group: redis, mode: "0750"}
      - path: /etc/redis/main/redis.conf
        content: "{{ lookup('ansible.builtin.template', 'redis.conf.j2') }}"
        group: redis
        mode: "0640"
    read: [/var/lib/redis-infra/state/main.json]
  register: written
"""

RETURN = r"""
files:
  description: One entry per O(files) entry, in the same order.
  returned: always
  type: list
  elements: dict
  contains:
    path: {description: The path., type: str, returned: always}
    changed:
      description: Whether anything of the entry changed (or would change in check mode).
      type: bool
      returned: always
    created: {description: Whether the entry did not exist., type: bool, returned: always}
    content_changed: {description: Whether the file's content changed., type: bool, returned: always}
    checksum:
      description: SHA-1 of the file's content once the run is done (files only).
      type: str
      returned: success
    before:
      description: The file's content before the run (base64) when asked and the file existed.
      type: str
      returned: success
lines:
  description: One entry per O(lines) entry, in the same order.
  returned: always
  type: list
  elements: dict
  contains:
    path: {description: The path., type: str, returned: always}
    changed: {description: Whether the file changed (or would change in check mode)., type: bool, returned: always}
read:
  description: One entry per O(read) path, in the same order.
  returned: always
  type: list
  elements: dict
  contains:
    path: {description: The path., type: str, returned: always}
    exists: {description: Whether the file exists., type: bool, returned: always}
    content: {description: Its content (base64)., type: str, returned: when it exists}
    checksum: {description: SHA-1 of its content., type: str, returned: when it exists}
    writable:
      description: Whether this user may write it (false on a read-only file system, such as a container's /proc/sys).
      type: bool
      returned: always
units:
  description:
    - One entry per O(units) name, in the shape of C(ansible_facts.services) entries.
    - C(state) is V(running) when its process runs, V(failed), V(stopped) when inactive, else systemd's active
      state (V(activating), V(deactivating), V(reloading)); C(status) is its unit file state (V(enabled),
      V(disabled), V(static), empty for an unknown unit).
  returned: always
  type: dict
packages:
  description:
    - One entry per O(packages) name, its installed version, or V(null) when it is not installed (unknown, removed,
      or only its configuration files are left).
  returned: always
  type: dict
missing_packages:
  description: The O(packages) that are not installed, in their order (what C(ansible.builtin.apt) has to install).
  returned: always
  type: list
  elements: str
users:
  description: One entry per O(users) entry, C(name), C(changed) and C(created).
  returned: always
  type: list
  elements: dict
changed_paths:
  description: The paths that changed (or would change in check mode).
  returned: always
  type: list
  elements: str
"""

import base64
import difflib
import grp
import hashlib
import os
import pwd
import shlex
import stat
import subprocess
import tempfile

from ansible.module_utils.basic import AnsibleModule


def _mode(value):
    try:
        return int(str(value), 8)
    except ValueError:
        raise ValueError(f"mode {value!r} is not an octal number such as '0640'") from None


def _ids(owner, group, check_mode):
    """(uid, gid); None for a name that does not exist yet in check mode (a package would create it)."""
    try:
        uid = pwd.getpwnam(owner).pw_uid
    except KeyError:
        if not check_mode:
            raise ValueError(f"user {owner!r} does not exist") from None
        uid = None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        if not check_mode:
            raise ValueError(f"group {group!r} does not exist") from None
        gid = None
    return uid, gid


def _read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _validate(command, temporary):
    """Run a validate command on the new content; ValueError with its output when it fails."""
    argv = [part.replace("%s", temporary) for part in shlex.split(command)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ValueError(f"the check `{command}` could not run: {error}") from None
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip()).replace(temporary, "<new content>")
        raise ValueError(f"the new content fails `{command}` (exit {done.returncode}), the file is unchanged: {output}")


def _write(path, data, uid, gid, mode, validate=None):
    """Atomically replace path with data, owned uid:gid with mode, flushed before the rename (and checked with the
    validate command first, when there is one)."""
    directory = os.path.dirname(path)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchown(handle.fileno(), uid, gid)
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if validate:
            _validate(validate, temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def apply(entry, check_mode):
    """Bring one entry to its wanted state; returns (result, diff or None)."""
    path, state = entry["path"], entry["state"]
    result = {"path": path, "changed": False, "created": False, "content_changed": False}
    try:
        current = os.lstat(path)
    except FileNotFoundError:
        current = None
    if state == "absent":
        if current is None:
            return result, None
        if stat.S_ISDIR(current.st_mode):
            raise ValueError(f"{path} is a directory; only files are removed")
        result.update(changed=True, content_changed=True)
        if not check_mode:
            os.unlink(path)
        return result, {"prepared": f"{path}: removed\n"}
    if entry["mode"] is None:
        raise ValueError("a mode is required")
    mode = _mode(entry["mode"])
    uid, gid = _ids(entry["owner"], entry["group"], check_mode)
    if state == "directory":
        if current is not None and not stat.S_ISDIR(current.st_mode):
            raise ValueError(f"{path} exists and is not a directory")
        if current is None:
            result.update(changed=True, created=True)
            if not check_mode:
                # Missing parents are made root:root 0755 (not with this entry's mode, as mkdir -p would).
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                os.mkdir(path, mode)
                os.chown(path, uid, gid)
                os.chmod(path, mode)
            return result, None
    else:
        if (entry.get("content") is None) == (entry.get("content_base64") is None):
            raise ValueError("a file needs content or content_base64 (one of them)")
        if current is not None and not stat.S_ISREG(current.st_mode):
            raise ValueError(f"{path} exists and is not a regular file")
        wanted = (entry["content"].encode("utf-8") if entry.get("content") is not None
                  else base64.b64decode(entry["content_base64"]))
        old = _read(path) if current is not None else None
        if entry["before"] and old is not None:
            result["before"] = base64.b64encode(old).decode("ascii")
        if old is None or (old != wanted and not entry["create"]):
            result.update(changed=True, created=old is None, content_changed=True)
            result["checksum"] = hashlib.sha1(wanted, usedforsecurity=False).hexdigest()
            if entry["diff"] and entry.get("content") is not None:
                lines = difflib.unified_diff((old or b"").decode("utf-8", "replace").splitlines(keepends=True),
                                             entry["content"].splitlines(keepends=True),
                                             fromfile=f"{path} (before)" if old is not None else "/dev/null",
                                             tofile=f"{path} (after)")
                diff = {"prepared": "".join(lines)}
            else:
                diff = {"prepared": f"{path}: {'changed' if old is not None else 'created'} (content not shown)\n"}
            if not check_mode:
                if not os.path.isdir(os.path.dirname(path)):
                    raise ValueError(f"the directory of {path} does not exist (list it before)")
                _write(path, wanted, uid, gid, mode, entry.get("validate"))
            return result, diff
        result["checksum"] = hashlib.sha1(old, usedforsecurity=False).hexdigest()
    # The entry exists with the right content: owner, group and mode.
    wrong_owner = (uid is None or current.st_uid != uid) or (gid is None or current.st_gid != gid)
    wrong_mode = stat.S_IMODE(current.st_mode) != mode
    if wrong_owner or wrong_mode:
        result["changed"] = True
        if not check_mode:
            if wrong_owner:
                os.lchown(path, uid, gid)
            if wrong_mode:
                os.chmod(path, mode)
    return result, None


def set_lines(entry, check_mode):
    """Apply one O(lines) entry; returns (result, diff or None)."""
    path = entry["path"]
    try:
        current = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    old = _read(path)
    lines = old.decode("utf-8").splitlines(keepends=True)
    for setting in entry["settings"]:
        if not isinstance(setting, dict) or not str(setting.get("key") or "").strip():
            raise ValueError(f"{path}: each setting needs a key, got {setting!r}")
        key, value = str(setting["key"]), setting.get("value")
        matches = [i for i, line in enumerate(lines) if line.startswith(key + " ")]
        if value is None:
            lines = [line for i, line in enumerate(lines) if i not in matches]
            continue
        wanted = f"{key} {value}\n"
        if matches:
            lines[matches[-1]] = wanted
        else:
            lines.insert(0, wanted)
    new = "".join(lines).encode("utf-8")
    result = {"path": path, "changed": new != old}
    if not result["changed"]:
        return result, None
    diff = difflib.unified_diff(old.decode("utf-8").splitlines(keepends=True), "".join(lines).splitlines(keepends=True),
                                fromfile=f"{path} (before)", tofile=f"{path} (after)")
    if not check_mode:
        _write(path, new, current.st_uid, current.st_gid, stat.S_IMODE(current.st_mode))
    return result, {"prepared": "".join(diff)}


class FilesModule(AnsibleModule):
    """AnsibleModule that writes only the paths of an invocation to the host's journal: the contents hold
    passwords, and AnsibleModule masks no_log suboptions in its result but not in that log line."""

    def _log_invocation(self):
        paths = [entry["path"] for key in ("files", "lines") for entry in self.params.get(key) or []]
        self.log(f"Invoked with paths={paths} read={self.params.get('read') or []}")


UNIT_PROPERTIES = ("ActiveState", "SubState", "UnitFileState", "LoadState")


def parse_unit_states(units: list[str], text: str) -> dict:
    """`systemctl show --property=... UNIT...` prints one block of KEY=VALUE lines per unit, in the order of
    the arguments, the blocks separated by an empty line."""
    blocks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
              for block in text.strip("\n").split("\n\n")] if text.strip() else []
    if len(blocks) != len(units):
        raise ValueError(f"systemctl show gave {len(blocks)} blocks for {len(units)} units")
    states = {}
    for unit, block in zip(units, blocks):  # noqa: B905 - the lengths are checked above; targets before 3.10
        active, sub = block.get("ActiveState", ""), block.get("SubState", "")
        state = ("running" if sub == "running" else "failed" if active == "failed"
                 else "stopped" if active == "inactive" else active or "unknown")
        states[unit] = {"name": unit, "state": state, "status": block.get("UnitFileState", ""),
                        "active_state": active, "sub_state": sub, "load_state": block.get("LoadState", "")}
    return states


def parse_package_versions(packages: list[str], text: str) -> dict:
    """`dpkg-query -W -f '${Package}\\t${db:Status-Abbrev}\\t${Version}\\n' PACKAGE...` -> {package: version or
    None}. A package is installed when its status abbreviation starts with "ii" (wanted and installed) or
    "hi" (held); architecture-qualified names (name:amd64) count for their name."""
    versions = dict.fromkeys(packages)
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 3:
            continue
        name, status, version = fields[0].split(":")[0], fields[1], fields[2]
        if name in versions and status[:2] in ("ii", "hi") and version:
            versions[name] = version
    return versions


def package_versions(module, packages: list[str]) -> dict:
    if not packages:
        return {}
    dpkg_query = module.get_bin_path("dpkg-query", required=True)
    # Exit code 1 with "no packages found matching" for a package dpkg has never heard of: not an error here.
    rc, out, err = module.run_command([dpkg_query, "-W", "-f", "${Package}\t${db:Status-Abbrev}\t${Version}\n",
                                       "--", *packages])
    if rc not in (0, 1):
        module.fail_json(msg=f"dpkg-query -W {' '.join(packages)} failed: {err.strip() or out.strip()}")
    return parse_package_versions(packages, out)


def unit_states(module, units: list[str]) -> dict:
    if not units:
        return {}
    systemctl = module.get_bin_path("systemctl", required=True)
    rc, out, err = module.run_command([systemctl, "show", "--property=" + ",".join(UNIT_PROPERTIES), "--", *units])
    if rc != 0:
        module.fail_json(msg=f"systemctl show {' '.join(units)} failed: {err.strip() or out.strip()}")
    try:
        return parse_unit_states(units, out)
    except ValueError as error:
        module.fail_json(msg=str(error))


def ensure_user(module, spec) -> tuple[dict, dict | None]:
    """Create a missing system user, or correct an existing one's home and shell; (result, diff or None)."""
    name, home, shell = spec["name"], spec["home"], spec["shell"]
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        entry = None
    if entry is None:
        try:
            grp.getgrnam(name)
            group = ["--gid", name]  # its group is there already (useradd would refuse to make it)
        except KeyError:
            group = []
        command = [module.get_bin_path("useradd", required=True), "--system", "--no-create-home",
                   "--home-dir", home, "--shell", shell, *group, name]
    else:
        changes = ((["--home", home] if entry.pw_dir != home else [])
                   + (["--shell", shell] if entry.pw_shell != shell else []))
        if not changes:
            return {"name": name, "changed": False, "created": False}, None
        command = [module.get_bin_path("usermod", required=True), *changes, name]
    if not module.check_mode:
        rc, out, err = module.run_command(command)
        if rc != 0:
            raise ValueError(f"{' '.join(command)} failed: {err.strip() or out.strip()}")
    verb = "created" if entry is None else "changed"
    return {"name": name, "changed": True, "created": entry is None}, {"prepared": f"user {name}: {verb}\n"}


def main():
    module = FilesModule(
        argument_spec={
            "files": {"type": "list", "elements": "dict", "default": [], "options": {
                "path": {"type": "path", "required": True},
                "state": {"type": "str", "choices": ["file", "directory", "absent"], "default": "file"},
                # Contents hold passwords (connection files, ACL files, masterauth): never in the host's
                # journal, where the module logs its invocation, nor in the result.
                "content": {"type": "str", "no_log": True},
                "content_base64": {"type": "str", "no_log": True},
                "owner": {"type": "str", "default": "root"},
                "group": {"type": "str", "default": "root"},
                "mode": {"type": "str"},
                "create": {"type": "bool", "default": False},
                "diff": {"type": "bool", "default": True},
                "before": {"type": "bool", "default": False},
                "validate": {"type": "str"},
            }},
            "lines": {"type": "list", "elements": "dict", "default": [], "options": {
                "path": {"type": "path", "required": True},
                "settings": {"type": "list", "elements": "dict", "required": True},
            }},
            "read": {"type": "list", "elements": "path", "default": []},
            "units": {"type": "list", "elements": "str", "default": []},
            "packages": {"type": "list", "elements": "str", "default": []},
            "users": {"type": "list", "elements": "dict", "default": [], "options": {
                "name": {"type": "str", "required": True},
                "home": {"type": "path", "default": "/nonexistent"},
                "shell": {"type": "path", "default": "/usr/sbin/nologin"},
            }},
        },
        supports_check_mode=True,
    )
    results, diffs, users = [], [], []
    for spec in module.params["users"]:
        try:
            result, diff = ensure_user(module, spec)
        except ValueError as error:
            module.fail_json(msg=f"user {spec['name']}: {error}", users=users, changed=bool(users))
        users.append(result)
        if diff is not None:
            diffs.append(diff)
    for entry in module.params["files"]:
        try:
            result, diff = apply(entry, module.check_mode)
        except (ValueError, OSError) as error:
            module.fail_json(msg=f"{entry['path']}: {error}", files=results, users=users,
                             changed=any(item["changed"] for item in results + users))
        results.append(result)
        if diff is not None:
            diffs.append(diff)
    lines = []
    for entry in module.params["lines"]:
        try:
            result, diff = set_lines(entry, module.check_mode)
        except (ValueError, OSError, UnicodeDecodeError) as error:
            module.fail_json(msg=f"{entry['path']}: {error}", files=results, lines=lines, users=users,
                             changed=any(item["changed"] for item in results + lines + users))
        lines.append(result)
        if diff is not None:
            diffs.append(diff)
    read = []
    for path in module.params["read"]:
        data = _read(path)
        found = {"path": path, "exists": data is not None, "writable": data is not None and os.access(path, os.W_OK)}
        if data is not None:
            found["content"] = base64.b64encode(data).decode("ascii")
            found["checksum"] = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        read.append(found)
    changed_paths = [item["path"] for item in results + lines if item["changed"]]
    packages = package_versions(module, module.params["packages"])
    users_changed = any(user["changed"] for user in users)
    output = {"changed": bool(changed_paths) or users_changed, "files": results, "lines": lines, "read": read,
              "units": unit_states(module, module.params["units"]),
              "packages": packages, "missing_packages": [name for name, version in packages.items() if not version],
              "users": users, "changed_paths": changed_paths}
    if module._diff and diffs:
        output["diff"] = diffs
    module.exit_json(**output)


if __name__ == "__main__":
    main()
