"""The redis_files module (many files in one execution) run by Ansible on real files: writes, no-op,
owner and mode fixes, create-only files, check and diff mode, secrets kept out of the output, reads,
and errors that name the path and write nothing for the entry in error."""

from __future__ import annotations

import base64
import grp
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = Path(sys.executable).with_name("ansible")
SECRET = "a-secret-for-the-files-module-test-0123456789"
GROUP = "daemon"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owner and group changes need root")


def run(files, read=(), *flags):
    return module({"files": files, "read": list(read)}, *flags)


def run_lines(lines):
    return module({"lines": lines})


def module(arguments, *flags):
    args = json.dumps(arguments)
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_NOCOLOR="1")
    result = subprocess.run(
        [str(ANSIBLE), "localhost", "-c", "local", "-i", "localhost,", "-e",
         f"ansible_python_interpreter={sys.executable}", "-m", "redis_infra.redis.redis_files", "-a", args, *flags],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False)
    outcome = json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return outcome, result.stdout + result.stderr


def entries(base: Path, conf="port 6379\n", secret=SECRET):
    return [
        {"path": str(base / "etc"), "state": "directory", "mode": "0750", "group": GROUP},
        {"path": str(base / "etc/redis.conf"), "mode": "0640", "group": GROUP, "content": conf, "before": True},
        {"path": str(base / "etc/users.acl"), "mode": "0600", "diff": False, "content": f"user x on >{secret}\n"},
        {"path": str(base / "etc/replicaof.conf"), "mode": "0640", "create": True, "content": "# empty\n"},
    ]


def test_writes_every_file_once_then_changes_nothing(tmp_path):
    result, output = run(entries(tmp_path), [str(tmp_path / "etc/redis.conf"), str(tmp_path / "missing.json")])
    assert not result.get("failed"), output
    assert result["changed"] and len(result["changed_paths"]) == 4
    conf = tmp_path / "etc/redis.conf"
    assert conf.read_text() == "port 6379\n"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640 and conf.stat().st_gid == grp.getgrnam(GROUP).gr_gid
    assert stat.S_IMODE((tmp_path / "etc").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "etc/users.acl").stat().st_mode) == 0o600
    assert result["files"][1]["checksum"] == hashlib.sha1(b"port 6379\n", usedforsecurity=False).hexdigest()
    assert result["files"][1]["created"] and "before" not in result["files"][1]
    # Reads come after the writes: the new file's content, and a missing one is no error.
    conf_sum = hashlib.sha1(b"port 6379\n", usedforsecurity=False).hexdigest()
    assert result["read"][0]["exists"] and result["read"][0]["checksum"] == conf_sum
    assert result["read"][0]["writable"]
    assert result["read"][1] == {"path": str(tmp_path / "missing.json"), "exists": False, "writable": False}
    assert SECRET not in output, "a secret file's content reached the output"
    # No temporary file is left beside the written ones.
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == ["redis.conf", "replicaof.conf", "users.acl"]

    again, output = run(entries(tmp_path))
    assert not again["changed"] and again["changed_paths"] == [], output
    assert again["files"][1]["before"]  # asked for: the content before this run (base64)


def test_fixes_mode_and_group_keeps_a_create_only_file_and_replaces_content(tmp_path):
    run(entries(tmp_path))
    conf, replicaof = tmp_path / "etc/redis.conf", tmp_path / "etc/replicaof.conf"
    conf.chmod(0o644)
    os.chown(conf, 0, 0)
    replicaof.write_text("replicaof 10.0.0.1 6379\n")
    result, output = run(entries(tmp_path, conf="port 6380\n"))
    assert result["changed_paths"] == [str(conf)], output
    assert conf.read_text() == "port 6380\n" and stat.S_IMODE(conf.stat().st_mode) == 0o640
    assert conf.stat().st_gid == grp.getgrnam(GROUP).gr_gid
    assert replicaof.read_text() == "replicaof 10.0.0.1 6379\n", "a create-only file was overwritten"
    assert result["files"][1]["content_changed"] and not result["files"][1]["created"]


def test_check_mode_changes_nothing_and_diff_hides_secret_files(tmp_path):
    run(entries(tmp_path))
    before = {p.name: p.read_bytes() for p in (tmp_path / "etc").iterdir()}
    # (A one-line content would show masked: contents are no_log values, and such a diff line is all of it.)
    changed = entries(tmp_path, conf="port 6381\nsave 60 1\n", secret=SECRET + "-new")
    result, output = run(changed, (), "--check", "--diff")
    assert result["changed"] and sorted(result["changed_paths"]) == sorted(
        [str(tmp_path / "etc/redis.conf"), str(tmp_path / "etc/users.acl")]), output
    assert {p.name: p.read_bytes() for p in (tmp_path / "etc").iterdir()} == before
    conf, acl = (d["prepared"] for d in result["diff"])
    assert "-port 6379\n+port 6381\n+save 60 1\n" in conf and str(tmp_path / "etc/redis.conf") in conf
    assert SECRET not in output and acl == f"{tmp_path / 'etc/users.acl'}: changed (content not shown)\n"


def test_errors_name_the_path_and_write_nothing_for_the_entry(tmp_path):
    run(entries(tmp_path))
    files = [{"path": str(tmp_path / "nowhere/sub"), "state": "directory", "mode": "0700"},
             {"path": str(tmp_path / "elsewhere/file"), "mode": "0640", "content": "port 1\n"}]
    result, output = run(files)
    assert result.get("failed") and "elsewhere/file" in result["msg"] and "directory" in result["msg"], output
    # A directory's missing parents are made 0755, the directory itself with its own mode.
    assert stat.S_IMODE((tmp_path / "nowhere").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "nowhere/sub").stat().st_mode) == 0o700
    wrong_group = [{"path": str(tmp_path / "etc/other"), "mode": "0640", "group": "no-such-group-here",
                    "content": "x\n"}]
    result, output = run(wrong_group)
    assert result.get("failed") and "no-such-group-here" in result["msg"], output
    assert not (tmp_path / "etc/other").exists()
    result, output = run([{"path": str(tmp_path / "etc/redis.conf"), "mode": "rw", "content": "x\n"}])
    assert result.get("failed") and "octal" in result["msg"], output
    result, output = run([{"path": str(tmp_path / "etc"), "mode": "0640", "content": "x\n"}])
    assert result.get("failed") and "not a regular file" in result["msg"], output


def test_removes_an_absent_file_and_writes_binary_content(tmp_path):
    run(entries(tmp_path))
    blob = bytes(range(256))
    files = [{"path": str(tmp_path / "etc/replicaof.conf"), "state": "absent"},
             {"path": str(tmp_path / "etc/tools.zip"), "mode": "0644", "diff": False,
              "content_base64": base64.b64encode(blob).decode()}]
    result, output = run(files)
    assert result["changed_paths"] == [f["path"] for f in files], output
    assert not (tmp_path / "etc/replicaof.conf").exists() and (tmp_path / "etc/tools.zip").read_bytes() == blob
    again, output = run(files)
    assert not again["changed"], output


def test_sets_lines_of_a_file_another_program_rewrites(tmp_path):
    conf = tmp_path / "sentinel.conf"
    conf.write_text("port 26379\nsentinel myid abc\ntls-port 26380\ntls-port 26381\n")
    conf.chmod(0o640)
    settings = [{"key": "port", "value": 0}, {"key": "bind", "value": "127.0.0.1 ::1"}, {"key": "tls-port"}]
    result, output = run_lines([{"path": str(conf), "settings": settings}])
    assert result["changed_paths"] == [str(conf)], output
    assert conf.read_text() == "bind 127.0.0.1 ::1\nport 0\nsentinel myid abc\n"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    again, output = run_lines([{"path": str(conf), "settings": settings}])
    assert not again["changed"], output
    missing, output = run_lines([{"path": str(tmp_path / "none.conf"), "settings": settings}])
    assert missing.get("failed") and "does not exist" in missing["msg"], output



def test_the_invocation_logged_on_the_host_holds_no_content(tmp_path, monkeypatch):
    """AnsibleModule writes each invocation to the host's journal: contents are masked there."""
    from ansible.module_utils import basic
    from ansible.module_utils.common.text.converters import to_bytes

    # Loaded by path, under a name of its own: plugins/filter has a redis_files.py too (tests/role/test_filters.py).
    redis_files = _module_source()
    logged = []
    monkeypatch.setattr(basic.AnsibleModule, "log", lambda self, msg, log_args=None: logged.append(msg))
    args = {"ANSIBLE_MODULE_ARGS": {"files": [
        {"path": str(tmp_path / "conf"), "mode": "0640", "content": f"port 6379\nrequirepass {SECRET}\n"},
        {"path": str(tmp_path / "zip"), "mode": "0644", "content_base64": base64.b64encode(SECRET.encode()).decode()}]}}
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", to_bytes(json.dumps(args)))
    monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy")
    results = []

    def stop(self, **result):
        results.append(result)
        raise SystemExit(0)

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", stop)
    with pytest.raises(SystemExit):
        redis_files.main()
    assert results and results[0]["changed"] and (tmp_path / "conf").read_text().endswith(f"{SECRET}\n")
    assert logged and all(SECRET not in msg and base64.b64encode(SECRET.encode()).decode() not in msg
                          for msg in logged), logged


# `systemctl show --property=ActiveState,SubState,UnitFileState,LoadState` on a lab container (Debian 12's
# systemd 252) for a running instance, a stopped one, a failed one and a unit that does not exist.
SYSTEMCTL_SHOW = """LoadState=loaded
ActiveState=active
SubState=running
UnitFileState=enabled

LoadState=loaded
ActiveState=inactive
SubState=dead
UnitFileState=disabled

LoadState=loaded
ActiveState=failed
SubState=failed
UnitFileState=enabled

LoadState=not-found
ActiveState=inactive
SubState=dead
UnitFileState=
"""


def _module_source():
    import importlib.util

    spec = importlib.util.spec_from_file_location("redis_files_module", ROOT / "plugins/modules/redis_files.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def test_unit_states_in_the_shape_of_service_facts():
    units = ["redis-server@main.service", "redis-server@cache.service", "redis-sentinel.service", "gone.service"]
    states = _module_source().parse_unit_states(units, SYSTEMCTL_SHOW)
    assert {unit: (state["state"], state["status"]) for unit, state in states.items()} == {
        "redis-server@main.service": ("running", "enabled"), "redis-server@cache.service": ("stopped", "disabled"),
        "redis-sentinel.service": ("failed", "enabled"), "gone.service": ("stopped", "")}
    with pytest.raises(ValueError, match="3 blocks for 4 units"):
        _module_source().parse_unit_states(units, SYSTEMCTL_SHOW.rsplit("\n\n", 1)[0])


def test_units_are_read_or_the_module_says_why_not():
    """Where systemd runs, the state comes back; where it does not (this machine, CI's), the module fails
    naming systemctl instead of guessing a state."""
    result, output = module({"units": ["redis-infra-no-such.service"]})
    if os.path.isdir("/run/systemd/system"):
        assert not result.get("failed"), output
        assert result["units"]["redis-infra-no-such.service"]["state"] == "stopped"
    else:
        assert result.get("failed"), output
        assert "systemctl show redis-infra-no-such.service failed" in result["msg"]


def test_package_versions_count_installed_and_held_packages_only():
    text = ("redis-server\tii \t5:7.0.15-1~deb12u10\n"
            "redis-tools\thi \t5:7.0.15-1~deb12u10\n"
            "redis-sentinel\trc \t5:7.0.15-1~deb12u10\n"     # removed, its configuration left
            "libfoo:amd64\tii \t1.2\n"
            "valkey-server\tun \t\n")
    versions = _module_source().parse_package_versions(
        ["redis-server", "redis-tools", "redis-sentinel", "libfoo", "valkey-server", "never-heard-of"], text)
    assert versions == {"redis-server": "5:7.0.15-1~deb12u10", "redis-tools": "5:7.0.15-1~deb12u10",
                        "redis-sentinel": None, "libfoo": "1.2", "valkey-server": None, "never-heard-of": None}


def test_packages_are_read_with_one_dpkg_query_and_an_unknown_one_is_not_an_error():
    """This machine is Debian: dpkg-query knows python3, and has never heard of the other package."""
    result, output = module({"packages": ["python3", "redis-infra-no-such-package"]})
    assert not result.get("failed"), output
    assert result["packages"]["python3"].startswith("3.")
    assert result["packages"]["redis-infra-no-such-package"] is None
    assert result["missing_packages"] == ["redis-infra-no-such-package"]
    assert result["changed"] is False


def test_a_new_content_that_fails_its_check_leaves_the_file_as_it_was(tmp_path):
    """validate runs on the new content beside the file; a failure keeps the old file and leaves no temporary
    file; a content that passes replaces it; check mode runs no check."""
    config = tmp_path / "app.yml"
    config.write_text("good: 1\n")
    config.chmod(0o644)
    script = "import sys; sys.exit('bad content' if 'bad' in open(sys.argv[1]).read() else 0)"
    check = f'{sys.executable} -c "{script}" %s'
    bad = [{"path": str(config), "mode": "0644", "content": "bad: 2\n", "validate": check}]
    result, output = run(bad)
    assert result.get("failed") and "bad content" in result["msg"] and "unchanged" in result["msg"], output
    assert config.read_text() == "good: 1\n" and sorted(p.name for p in tmp_path.iterdir()) == ["app.yml"]
    result, output = run(bad, (), "--check")
    assert not result.get("failed") and result["changed"], output
    result, output = run([dict(bad[0], content="good: 2\n")])
    assert not result.get("failed") and result["changed"] and config.read_text() == "good: 2\n", output


def test_a_system_user_is_made_before_the_files_that_are_its_own_and_corrected_after(tmp_path):
    """users: check mode only says so; a missing user is created (with its group) before the files owned by it, in
    the same execution; a second run changes nothing; another shell is corrected."""
    import pwd

    name = "redis-infra-files-test"
    subprocess.run(["userdel", name], capture_output=True, check=False)
    try:
        user = {"name": name, "home": "/var/lib/" + name, "shell": "/usr/sbin/nologin"}
        files = [{"path": str(tmp_path / "own"), "mode": "0640", "group": name, "content": "x\n"}]
        result, output = module({"users": [user], "files": files}, "--check")
        assert not result.get("failed") and result["changed"] and result["users"][0]["created"], output
        assert subprocess.run(["id", name], capture_output=True, check=False).returncode != 0
        result, output = module({"users": [user], "files": files})
        created = [{"name": name, "changed": True, "created": True}]
        assert not result.get("failed") and result["users"] == created, output
        account = pwd.getpwnam(name)
        assert account.pw_uid < 1000 and account.pw_dir == user["home"] and account.pw_shell == user["shell"]
        assert (tmp_path / "own").stat().st_gid == grp.getgrnam(name).gr_gid
        assert not os.path.exists(user["home"]), "a system user's home is not created"
        result, output = module({"users": [user], "files": files})
        assert not result.get("failed") and result["changed"] is False, output
        result, output = module({"users": [{**user, "shell": "/bin/false"}]})
        assert result["changed"] and pwd.getpwnam(name).pw_shell == "/bin/false", output
        # A group of its name left behind (a package's, say): the user is made in it.
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupadd", "--system", name], capture_output=True, check=True)
        result, output = module({"users": [user]})
        assert not result.get("failed") and pwd.getpwnam(name).pw_gid == grp.getgrnam(name).gr_gid, output
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)


def test_the_tools_package_is_packed_the_same_from_the_same_sources(tmp_path):
    """redis_python_package_zip: the same bytes on every run (so the hosts' copy changes only with a source), .py
    files only, and a module that imports from the archive."""
    sys.path.insert(0, str(ROOT / "plugins/filter"))
    from redis_files import redis_python_package_zip

    first, second = redis_python_package_zip(ROOT / "redis_infra"), redis_python_package_zip(ROOT / "redis_infra")
    assert first == second
    archive = tmp_path / "redis_infra.zip"
    archive.write_bytes(base64.b64decode(first))
    import zipfile
    names = zipfile.ZipFile(archive).namelist()
    assert names == sorted(names) and all(name.endswith(".py") for name in names) and "redis_infra/__init__.py" in names
    done = subprocess.run([sys.executable, "-c", "import redis_infra.connection"], env={"PYTHONPATH": str(archive)},
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
