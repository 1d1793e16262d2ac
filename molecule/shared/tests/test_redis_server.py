"""Behaviour of a converged host, for every scenario: what the inventory asks for is what runs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time

import pytest
from preflight_cases import case_tasks

PROFILE_SETTINGS = {
    "development": {"maxmemory": "0", "maxmemory-policy": "noeviction", "appendonly": "no",
                    "appendfsync": "everysec", "save": "3600 1 300 100 60 10000"},
    "production": {"maxmemory": str(2 * 1024**3), "maxmemory-policy": "allkeys-lru", "appendonly": "yes",
                   "appendfsync": "everysec", "save": "900 1 300 10 60 10000", "aof-use-rdb-preamble": "yes",
                   "tcp-backlog": "511", "tcp-keepalive": "300", "maxclients": "10000", "protected-mode": "yes",
                   "io-threads": "1"},
}
DISABLED = ["flushdb", "flushall", "keys", "config", "debug", "shutdown", "monitor"]
MEMORY = {"mb": 1024**2, "gb": 1024**3}


@pytest.fixture(scope="module")
def env(host):
    """The scenario's inventory variables with the role's defaults filled in."""
    variables = host.ansible.get_variables()
    engine = variables.get("redis_server_engine", "redis")
    return {
        "engine": engine,
        "cli": f"{engine}-cli",
        "group": engine,
        "conf_dir": f"/etc/{engine}",
        "profile": variables.get("redis_server_profile", "development"),
        "instances": variables.get("redis_server_instances", [{"name": "main", "port": 6379}]),
        "password": variables.get("redis_server_password", ""),
        "admin": variables["redis_server_admin_password"],
        "monitor": variables.get("redis_server_monitor_password", ""),
    }


def passwords(env):
    return [secret for secret in (env["password"], env["admin"], env["monitor"]) if secret]


def cli(host, env, port, *args, user=None, password=None, check=False):
    """Run the engine's CLI inside the container; the password goes through REDISCLI_AUTH."""
    command = f"{env['cli']} --no-auth-warning -p {port}"
    if user:
        command += f" --user {user}"
    command += " " + " ".join(shlex.quote(str(arg)) for arg in args)
    if password:
        command = f"REDISCLI_AUTH={shlex.quote(password)} {command}"
    result = host.run(command)
    if check:
        assert result.rc == 0, result.stderr
    # redis-cli reports a failed AUTH on stderr and the command's reply on stdout.
    return (result.stdout.strip() + "\n" + result.stderr.strip()).strip()


def app(host, env, port, *args):
    return cli(host, env, port, *args, password=env["password"] or None)


def admin(host, env, port, *args):
    return cli(host, env, port, *args, user="admin", password=env["admin"])


def unit(env, instance):
    return f"{env['engine']}-server@{instance['name']}.service"


def journal_on_failure(host, env, instance):
    return host.run(f"journalctl -u {unit(env, instance)} -n 30 --no-pager").stdout


def test_instances_active_enabled_and_listening(host, env):
    for instance in env["instances"]:
        service = host.service(unit(env, instance))
        assert service.is_running, journal_on_failure(host, env, instance)
        assert service.is_enabled
        assert host.socket(f"tcp://127.0.0.1:{instance['port']}").is_listening
        assert admin(host, env, instance["port"], "PING") == "PONG"


def test_distribution_service_is_masked(host, env):
    assert host.file(f"/etc/systemd/system/{env['engine']}-server.service").linked_to == "/dev/null"


def test_application_user_reads_and_writes(host, env):
    for instance in env["instances"]:
        port = instance["port"]
        assert app(host, env, port, "SET", "verify:app", "hello") == "OK"
        assert app(host, env, port, "GET", "verify:app") == "hello"
        assert app(host, env, port, "DEL", "verify:app") == "1"


def test_authentication_is_required_when_a_password_is_set(host, env):
    for instance in env["instances"]:
        reply = cli(host, env, instance["port"], "GET", "verify:app")
        if env["password"]:
            assert "NOAUTH" in reply
        else:
            # Development without an application password: reachable on loopback only, protected mode on.
            assert admin(host, env, instance["port"], "CONFIG", "GET", "protected-mode").endswith("yes")
            bind = admin(host, env, instance["port"], "CONFIG", "GET", "bind").splitlines()[-1]
            assert set(bind.split()) <= {"127.0.0.1", "-::1", "::1"}
        wrong = cli(host, env, instance["port"], "PING", password="not-the-password-at-all")
        if env["password"]:
            assert "WRONGPASS" in wrong
        else:  # a default user without password answers, whatever password the client sends
            assert wrong.startswith("PONG")


@pytest.mark.parametrize("command", DISABLED)
def test_disabled_commands_refused_for_application_allowed_for_admin(host, env, command):
    port = env["instances"][0]["port"]
    dryrun_args = {"keys": ["*"], "config": ["GET", "maxmemory"], "debug": ["HELP"], "shutdown": ["NOSAVE"]}
    args = dryrun_args.get(command, [])
    refused = admin(host, env, port, "ACL", "DRYRUN", "default", command, *args)
    assert "no permissions" in refused, refused
    assert admin(host, env, port, "ACL", "DRYRUN", "admin", command, *args) == "OK"
    if command in ("flushdb", "flushall", "keys", "config"):  # DEBUG is refused before ACLs are checked
        reply = app(host, env, port, command, *args)
        assert "NOPERM" in reply, reply


def test_monitoring_user_is_read_only(host, env):
    if not env["monitor"]:
        pytest.skip("no monitoring password in this scenario")
    port = env["instances"][0]["port"]
    monitor = {"user": "monitor", "password": env["monitor"]}
    assert cli(host, env, port, "PING", **monitor) == "PONG"
    assert "redis_version" in cli(host, env, port, "INFO", "server", **monitor)
    assert cli(host, env, port, "SET", "redis-infra:health:probe", "1", "EX", "5", **monitor) == "OK"
    assert "NOPERM" in cli(host, env, port, "GET", "someone:else", **monitor)
    assert "NOPERM" in cli(host, env, port, "CONFIG", "GET", "*", **monitor)
    assert "NOPERM" in cli(host, env, port, "FLUSHALL", **monitor)


def test_profile_settings_are_live(host, env):
    for instance in env["instances"]:
        expected = dict(PROFILE_SETTINGS[env["profile"]])
        if "maxmemory" in instance:
            number, unit_name = re.match(r"(\d+)([a-z]+)", instance["maxmemory"]).groups()
            expected["maxmemory"] = str(int(number) * MEMORY[unit_name])
        if "appendonly" in instance:
            expected["appendonly"] = "yes" if instance["appendonly"] else "no"
        if "save" in instance:
            expected["save"] = " ".join(instance["save"])
        for directive, value in expected.items():
            reply = admin(host, env, instance["port"], "CONFIG", "GET", directive).splitlines()
            reply += [""] * (2 - len(reply))  # an empty value (save "") prints as nothing
            assert reply == [directive, value], f"{instance['name']}: {directive}"


def test_key_written_before_a_restart_is_there_after_it(host, env):
    instance = env["instances"][0]
    port = instance["port"]
    assert app(host, env, port, "SET", "verify:durable", "still-here") == "OK"
    host.run_test(f"systemctl restart {unit(env, instance)}")
    for _ in range(50):
        if admin(host, env, port, "PING") == "PONG":
            break
        time.sleep(0.2)
    assert app(host, env, port, "GET", "verify:durable") == "still-here", journal_on_failure(host, env, instance)


def test_secret_files_are_not_world_readable(host, env):
    for instance in env["instances"]:
        for path in (f"{env['conf_dir']}/{env['engine']}-{instance['name']}.conf",
                     f"{env['conf_dir']}/users-{instance['name']}.acl"):
            file = host.file(path)
            assert file.mode == 0o640, path
            assert (file.user, file.group) == ("root", env["group"]), path
        connection = host.file(f"/etc/redis-infra/connections/{instance['name']}-admin.toml")
        assert connection.mode == 0o600 and connection.user == "root"
    acl = host.file(f"{env['conf_dir']}/users-{env['instances'][0]['name']}.acl").content_string
    for secret in passwords(env):
        assert secret not in acl  # only SHA-256 hashes


def test_no_password_in_processes_units_or_logs(host, env):
    places = {
        "ps": host.run("ps -eo args").stdout,
        "units": host.run(f"systemctl cat '{env['engine']}-server@*' --no-pager").stdout,
        "journal": host.run("journalctl --no-pager -o cat").stdout,
        "logs": host.run(f"cat /var/log/{env['engine']}/*.log").stdout,
        "config": host.run(f"cat {env['conf_dir']}/{env['engine']}-*.conf").stdout,
    }
    for secret in passwords(env):
        for place, text in places.items():
            assert secret not in text, f"a password appears in {place}"


def _playbook(*args):
    """Run the converge playbook again from the controller, as Molecule does."""
    converge = os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "..", "shared", "converge.yml")
    command = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], converge, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def reconverge():
    if "MOLECULE_INVENTORY_FILE" not in os.environ:
        pytest.skip("not run by Molecule")
    return _playbook


def test_check_mode_and_rerun_change_nothing_and_print_no_secret(host, env, reconverge):
    for args in (["--check", "--diff"], ["--diff", "-v"]):
        result = reconverge(*args)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-3000:]
        assert re.search(r"changed=0\s", output), output[-3000:]
        for secret in passwords(env):
            assert secret not in output, f"a password appears in the output of ansible-playbook {' '.join(args)}"


def test_runtime_settings_apply_live_and_static_ones_restart(host, env, reconverge):
    instance = env["instances"][0]
    port = instance["port"]

    def run_id():
        return re.search(r"run_id:(\w+)", admin(host, env, port, "INFO", "server")).group(1)

    before = run_id()
    result = reconverge("-e", "redis_server_maxmemory=1gb", "-e", "redis_server_slowlog_max_len=99")
    assert result.returncode == 0, result.stdout[-3000:]
    assert admin(host, env, port, "CONFIG", "GET", "maxmemory").splitlines()[-1] == str(1024**3)
    assert admin(host, env, port, "CONFIG", "GET", "slowlog-max-len").splitlines()[-1] == "99"
    assert run_id() == before, "a runtime-changeable setting restarted the instance"
    result = reconverge("-e", "redis_server_tcp_backlog=400")
    assert result.returncode == 0, result.stdout[-3000:]
    assert admin(host, env, port, "CONFIG", "GET", "tcp-backlog").splitlines()[-1] == "400"
    assert run_id() != before, "tcp-backlog changed without a restart"
    result = reconverge()
    assert result.returncode == 0, result.stdout[-3000:]
    assert admin(host, env, port, "CONFIG", "GET", "tcp-backlog").splitlines()[-1] == "511"


def test_a_restart_that_fails_shows_the_log_and_fails_the_play(host, env, reconverge):
    bad = {"redis_server_config_extra": {"no-such-directive": "yes"}, "redis_server_start_timeout": 8}
    result = reconverge("-e", json.dumps(bad))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "does not answer PING" in output
    assert "no-such-directive" in output, "the failure does not show the instance's log"
    assert reconverge().returncode == 0  # back to the inventory's config
    assert admin(host, env, env["instances"][0]["port"], "PING") == "PONG"


BAD_INPUT = [
    ("port out of range", "redis_server_instances", {"redis_server_instances": [{"name": "main", "port": 70000}]}),
    ("port zero", "redis_server_instances", {"redis_server_instances": [{"name": "main", "port": 0}]}),
    ("unparseable maxmemory", "redis_server_maxmemory", {"redis_server_maxmemory": "2 gigs"}),
    ("unknown eviction policy", "redis_server_maxmemory_policy", {"redis_server_maxmemory_policy": "lru-ish"}),
    ("unknown appendfsync", "redis_server_appendfsync", {"redis_server_appendfsync": "sometimes"}),
    ("unknown profile", "redis_server_profile", {"redis_server_profile": "staging"}),
    ("unknown engine", "redis_server_engine", {"redis_server_engine": "keydb"}),
    ("two instances with one name", "redis_server_instances",
     {"redis_server_instances": [{"name": "main", "port": 6379}, {"name": "main", "port": 6390}]}),
    ("two instances with one port", "redis_server_instances",
     {"redis_server_instances": [{"name": "main", "port": 6379}, {"name": "other", "port": 6379}]}),
    ("io-threads above the vCPUs", "redis_server_io_threads", {"redis_server_io_threads": 512}),
    ("unknown instance override", "redis_server_instances",
     {"redis_server_instances": [{"name": "main", "port": 6379, "maxmem": "1gb"}]}),
    ("production without passwords", "redis_server_password",
     {"redis_server_profile": "production", "redis_server_password": ""}),
    ("production with a short password", "redis_server_admin_password",
     {"redis_server_profile": "production", "redis_server_admin_password": "short-password"}),
    ("production with the placeholder", "redis_server_monitor_password",
     {"redis_server_profile": "production",
      "redis_server_monitor_password": "CHANGE-ME-generate-with-openssl-rand-base64-32"}),
    ("no admin password", "redis_server_admin_password", {"redis_server_admin_password": ""}),
]
DEBIAN12_ONLY = [("engine the distribution does not ship", "redis_server_engine", {"redis_server_engine": "valkey"})]


def test_bad_input_fails_in_preflight_naming_the_variable_and_changes_nothing(host, env, reconverge, tmp_path):
    cases = BAD_INPUT + (DEBIAN12_ONLY if host.system_info.release.startswith("12") else [])
    files = "find /etc/redis /etc/valkey /etc/redis-infra /etc/systemd/system /etc/sysctl.d -type f 2>/dev/null"
    checksums = f"{files} | sort | xargs sha256sum"
    before = host.check_output(checksums)
    outcomes = tmp_path / "outcomes.json"
    # One play per case, so that each case's variables are play variables of their own; the role runs
    # up to its preflight, which must fail; the rescue records the message.
    plays = []
    for name, _variable, variables in cases:
        plays.append({
            "name": f"Case: {name}", "hosts": "redis", "become": True, "gather_facts": not plays,
            "vars": variables,
            "tasks": case_tasks(name, "redis_server"),
        })
    plays.append({"name": "Save the outcomes", "hosts": "redis", "gather_facts": False, "tasks": [
        {"ansible.builtin.copy": {"content": "{{ __outcomes | to_json }}", "dest": str(outcomes), "mode": "0600"},
         "delegate_to": "localhost"}]})
    playbook = tmp_path / "bad-input.yml"
    playbook.write_text(json.dumps(plays))
    result = subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(playbook)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    recorded = {item["case"]: item["msg"] for item in json.loads(outcomes.read_text())}
    for name, variable, _ in cases:
        assert recorded[name] != "accepted", f"bad input was accepted: {name}"
        assert variable in recorded[name], f"{name}: the message does not name {variable}: {recorded[name]}"
    assert host.check_output(checksums) == before, "a failed preflight changed files on the host"
    for secret in passwords(env):
        assert secret not in result.stdout
