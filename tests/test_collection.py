"""The repository as the collection redis_infra.redis: built, installed into an empty path and used from
there by fully qualified names, with no file of the checkout on Ansible's paths."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ROLES = sorted(path.name for path in (ROOT / "roles").iterdir() if (path / "meta/argument_specs.yml").exists())


def _tool(name: str) -> str:
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The collection built from this checkout and installed by scripts/install-collection.sh."""
    base = tmp_path_factory.mktemp("collection")
    dest = base / "collections"
    env = dict(os.environ, ANSIBLE_GALAXY=_tool("ansible-galaxy"))
    result = subprocess.run([str(ROOT / "scripts/install-collection.sh"), str(dest)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    config = base / "ansible.cfg"
    config.write_text("[defaults]\n")
    work = base / "work"
    work.mkdir()
    # Only the installed copy: no checkout on the collection or role paths, and not the checkout's config.
    env = dict(os.environ, ANSIBLE_CONFIG=str(config), ANSIBLE_COLLECTIONS_PATH=str(dest),
               ANSIBLE_ROLES_PATH=str(base / "no-roles"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    env.pop("ANSIBLE_LIBRARY", None)
    env.pop("ANSIBLE_FILTER_PLUGINS", None)
    return {"root": dest / "ansible_collections/redis_infra/redis", "env": env, "work": work}


def _run(installed, *command, timeout=120):
    return subprocess.run(list(command), cwd=installed["work"], env=installed["env"], capture_output=True,
                          text=True, timeout=timeout)


def test_the_artifact_holds_what_users_run_and_nothing_of_the_development_tree(installed):
    root = installed["root"]
    manifest = json.loads((root / "MANIFEST.json").read_text())
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    assert manifest["collection_info"]["namespace"] == "redis_infra"
    assert manifest["collection_info"]["name"] == "redis"
    assert manifest["collection_info"]["version"] == galaxy["version"]
    for wanted in ("plugins/modules/redis_command.py", "plugins/module_utils/resp.py", "files/redis.conf.j2",
                   "playbooks/site.yml", "site.yml", "meta/runtime.yml", "CHANGELOG.rst", "changelogs/changelog.yaml",
                   "redis_infra/health/__init__.py", "requirements.yml", "README.md",
                   *(f"roles/{role}/meta/argument_specs.yml" for role in ROLES)):
        assert (root / wanted).is_file(), f"{wanted} is missing from the installed collection"
    for unwanted in ("molecule", "tests", "scripts", ".venv", ".ci", "collections", "Makefile", ".git",
                     "requirements.txt"):
        assert not (root / unwanted).exists(), f"{unwanted} does not belong in the artifact"
    assert not list(root.rglob("__pycache__")), "compiled Python in the artifact"
    assert not [path for path in root.rglob("*") if path.is_symlink()], "a symlink in the artifact"


def test_the_module_and_every_role_are_documented_under_their_fully_qualified_names(installed):
    result = _run(installed, _tool("ansible-doc"), "--json", "redis_infra.redis.redis_command")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)["redis_infra.redis.redis_command"]
    assert set(doc["doc"]["options"]) == {"connection_file", "commands", "expect", "wait", "changed", "queries"}
    assert doc["examples"].strip() and {"responses", "answers"} <= set(doc["return"])

    result = _run(installed, _tool("ansible-doc"), "-t", "role", "--json", "-l", "redis_infra.redis")
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads(result.stdout)) == [f"redis_infra.redis.{role}" for role in ROLES]


def test_a_playbook_using_the_installed_collection_by_name_passes_the_syntax_check(installed):
    playbook = installed["work"] / "uses-collection.yml"
    playbook.write_text(yaml.safe_dump([
        {"name": "Everything, from the collection", "ansible.builtin.import_playbook": "redis_infra.redis.site"},
        {"name": "One role by name", "hosts": "redis", "gather_facts": False,
         "roles": [{"role": "redis_infra.redis.redis_server"}]},
        {"name": "Rolling restart from the collection",
         "ansible.builtin.import_playbook": "redis_infra.redis.rolling_restart"},
    ], sort_keys=False))
    inventory = installed["work"] / "hosts.yml"
    inventory.write_text("redis:\n  hosts:\n    redis-1:\nredis_sentinel:\n  hosts:\n    redis-1:\n")
    result = _run(installed, _tool("ansible-playbook"), "-i", str(inventory), "--syntax-check", str(playbook))
    assert result.returncode == 0, result.stdout + result.stderr


def _run_module(installed, arguments):
    """The installed redis_command module run once on localhost: (the process, the task's result)."""
    installed = dict(installed, env=dict(installed["env"], ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
                                         ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json"))
    result = _run(installed, _tool("ansible"), "localhost", "-c", "local", "-i", "localhost,",
                  "-e", f"ansible_python_interpreter={sys.executable}", "-m", "redis_infra.redis.redis_command",
                  "-a", json.dumps(arguments))
    return result, json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_the_installed_module_runs_commands_on_a_real_server(installed, redis_factory, tmp_path):
    """The module and its module_utils as Ansible ships them to a host (AnsiballZ), against redis-server."""
    server = redis_factory("requirepass installed-collection-secret\n")
    connection = tmp_path / "main-admin.toml"
    connection.write_text(f'name = "main"\nhost = "127.0.0.1"\nport = {server.port}\n'
                          'username = "default"\npassword = "installed-collection-secret"\n')
    connection.chmod(0o600)
    result, outcome = _run_module(installed, {"connection_file": str(connection),
                                              "commands": [["SET", "k", "v"], ["GET", "k"]]})
    assert result.returncode == 0, result.stdout + result.stderr
    assert outcome["responses"] == ["OK", "v"]
    assert "installed-collection-secret" not in result.stdout


def test_the_installed_module_answers_several_queries_in_one_execution_each_on_its_own(installed, redis_factory,
                                                                                        tmp_path):
    """queries (tasks/topology_ask.yml): each node answers, or fails, on its own; the task itself does not fail
    and no password shows."""
    server = redis_factory("requirepass installed-collection-secret\n")
    good, refused = tmp_path / "main-admin.toml", tmp_path / "down-admin.toml"
    good.write_text(f'name = "main"\nhost = "127.0.0.1"\nport = {server.port}\n'
                    'username = "default"\npassword = "installed-collection-secret"\n')
    refused.write_text('name = "down"\nhost = "127.0.0.1"\nport = 1\nusername = "default"\npassword = "x"\n')
    for path in (good, refused):
        path.chmod(0o600)
    result, outcome = _run_module(installed, {"queries": [
        {"connection_file": str(good), "commands": [["ROLE"]]},
        {"connection_file": str(tmp_path / "missing.toml"), "commands": [["ROLE"]]},
        {"connection_file": str(refused), "commands": [["ROLE"]]},
        {"connection_file": str(good), "commands": [["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "main"]]},
        # The server drops the connection between two commands: this query fails, the next one answers.
        {"connection_file": str(good), "commands": [["CLIENT", "KILL", "SKIPME", "no"], ["PING"]]},
        {"connection_file": str(good), "commands": [["PING"]]},
    ]})
    assert result.returncode == 0, result.stdout + result.stderr
    answers = outcome["answers"]
    assert answers[0]["responses"][0][0] == "master" and not answers[0].get("failed")
    assert answers[1]["failed"] and "cannot read connection file" in answers[1]["msg"]
    assert answers[2]["failed"] and "does not answer PING" in answers[2]["msg"]
    assert answers[3]["failed"] and "SENTINEL GET-MASTER-ADDR-BY-NAME main failed" in answers[3]["msg"]
    assert answers[4]["failed"] and "PING got no answer" in answers[4]["msg"], answers[4]
    assert answers[5] == {"responses": ["PONG"]}
    assert "installed-collection-secret" not in result.stdout


def test_the_installed_module_speaks_tls_and_fails_at_once_on_a_certificate_it_does_not_trust(
        installed, tls_redis_factory, tls_files, tmp_path):
    """A TLS-only server (port 0, tls-port) and a connection file that names no socket: the module speaks TLS
    with the CA; with the wrong CA it fails at once although it was told to wait."""
    server = tls_redis_factory("requirepass installed-collection-secret\n")
    installed = dict(installed, env=dict(installed["env"], ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
                                         ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json"))

    def run(ca_file):
        connection = tmp_path / "main-admin-tls.toml"
        connection.write_text(f'name = "main"\nhost = "127.0.0.1"\nport = {server.port}\nunix_socket = ""\n'
                              'username = "default"\npassword = "installed-collection-secret"\n'
                              f'tls = true\ntls_ca_file = "{ca_file}"\ntls_check_hostname = true\n')
        connection.chmod(0o600)
        args = json.dumps({"connection_file": str(connection), "commands": [["SET", "k", "tls"], ["GET", "k"]],
                           "wait": 30})
        result = _run(installed, _tool("ansible"), "localhost", "-c", "local", "-i", "localhost,",
                      "-e", f"ansible_python_interpreter={sys.executable}", "-m", "redis_infra.redis.redis_command",
                      "-a", args)
        assert "installed-collection-secret" not in result.stdout
        return result, json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]

    result, outcome = run(tls_files.ca_file)
    assert result.returncode == 0, result.stdout + result.stderr
    assert outcome["responses"] == ["OK", "tls"]
    started = time.monotonic()
    result, outcome = run(tls_files.other_ca_file)
    assert result.returncode != 0 and outcome["failed"], result.stdout
    assert "does not answer PING" in outcome["msg"] and "certificate verify failed" in outcome["msg"], outcome["msg"]
    assert time.monotonic() - started < 20, "it waited for a certificate to change"
