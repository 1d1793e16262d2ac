"""Filters around the redis_files module: the entries of many groups of files in one list, and each
group's results back by name; which of the controller's own files are missing or have another mode; and a
Python package packed as the zip the hosts run it from."""

from __future__ import annotations

import base64
import io
import os
import stat
import zipfile

from ansible.errors import AnsibleFilterError


def _entries(value):
    if value is None or value == "":
        return []
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [entry for item in value for entry in _entries(item)]
    raise AnsibleFilterError(f"redis_files_entries: {value!r} is not a file entry, a list of them or none")


def redis_files_entries(groups):
    """One list of redis_files entries from groups (a dict or a list of dicts, each {name: entry, a list
    of entries, or none}), in the order of the groups and of their names; none is skipped."""
    groups = [groups] if isinstance(groups, dict) else groups or []
    return [entry for group in groups for value in group.values() for entry in _entries(value)]


def redis_files_results(written, groups):
    """Each group's results, by the same names as its entries: {name: result} (a list of results for a
    list of entries, {} for none). A result is the module's entry (path, changed, created, checksum),
    and `content` is the content the file had before the run when `before` was asked (the shape of a
    slurp's result)."""
    by_path = {item["path"]: dict(item) for item in (written or {}).get("files", [])}
    for item in by_path.values():
        if "before" in item:
            item["content"] = item.pop("before")

    def result(value):
        if isinstance(value, list):
            return [result(item) for item in value]
        if isinstance(value, dict):
            return by_path.get(value.get("path"), {})
        return {}

    single = isinstance(groups, dict)
    found = [{name: result(value) for name, value in group.items()} for group in ([groups] if single else groups or [])]
    return found[0] if single else found


def redis_local_paths_to_fix(wanted):
    """The paths of `wanted` ({path: octal mode string}; a path that ends with / is a directory) that are missing
    on the controller, are of the other kind, or have another mode. The templating runs on the controller, so
    this costs no module run: the tasks that make or correct these files run only when it is not empty."""
    if not isinstance(wanted, dict):
        raise AnsibleFilterError(f"redis_local_paths_to_fix: {wanted!r} is not a mapping of paths to modes")
    found = []
    for raw, mode in wanted.items():
        directory = str(raw).endswith("/")
        path = os.path.expanduser(str(raw).rstrip("/") or "/")
        try:
            info = os.stat(path)
        except OSError:
            found.append(path)
            continue
        if stat.S_ISDIR(info.st_mode) != directory or stat.S_IMODE(info.st_mode) != int(str(mode), 8):
            found.append(path)
    return found


def redis_python_package_zip(source):
    """A Python package (the directory `source`, its .py files) as a zip archive whose bytes depend only on the
    sources (fixed timestamps and order; no compiled files or caches), in base64, the form redis_files takes
    binary content in. Packed in the controller's own process, so that a run starts no command for it; the
    same sources give the same bytes, so that the copy on the hosts changes only when a source does."""
    source = os.path.abspath(str(source))
    if not os.path.isdir(source):
        raise AnsibleFilterError(f"redis_python_package_zip: {source} is not a directory")
    parent = os.path.dirname(source)
    files = []
    for root, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        files += [os.path.join(root, name) for name in names if name.endswith(".py")]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(files):
            info = zipfile.ZipInfo(os.path.relpath(path, parent), date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as handle:
                archive.writestr(info, handle.read())
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class FilterModule:
    def filters(self):
        return {
            "redis_files_entries": redis_files_entries,
            "redis_files_results": redis_files_results,
            "redis_local_paths_to_fix": redis_local_paths_to_fix,
            "redis_python_package_zip": redis_python_package_zip,
        }
