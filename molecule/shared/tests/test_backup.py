"""Backups that restore: the scheduled job, a backup taken by playbooks/backup.yml, a round trip of every
data type through playbooks/restore.yml (with AOF on in the production and valkey scenarios), restores
that fail after the data moved aside and put it back, a restore refused while a backup runs, and, in
the ha scenario (tests named test_ha_*), a restore of the replication group and a replica refused."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import time

import pytest
import testinfra
import tls_setup
from preflight_cases import FAILURE_MESSAGE
from testinfra.utils.ansible_runner import AnsibleRunner

# Redis hosts only (a scenario may have a monitoring host: test_monitoring.py).
testinfra_hosts = ["ansible://redis"]

PROJECT = os.path.join(os.path.dirname(__file__), "..", "..", "..")
CRON_FILE = "/etc/cron.d/redis-infra-backup"
STATUS_DIR = "/var/lib/redis-infra/backup-status"
BACKUP_DIR = "/var/backups/redis"
PLAYBOOK_TIMEOUT = 600
LOCK_DIR = "/run/redis-infra-backup"     # the backup tool's default lock directory

# Runs inside the container with Debian's python3-redis, as the admin user of the connection file.
# Prints the number of keys and a SHA-256 over every key's type, value and whether it has a TTL
# (the health checker's short-lived probe keys are left out).
CHECKSUM = r"""
import hashlib, sys, tomllib
import redis
with open(sys.argv[1], "rb") as handle:
    conf = tomllib.load(handle)
def client(db):
    return redis.Redis(unix_socket_path=conf["unix_socket"], username=conf["username"],
                       password=conf["password"], db=db)
values = {"string": lambda r, k: r.get(k), "hash": lambda r, k: sorted(r.hgetall(k).items()),
          "list": lambda r, k: r.lrange(k, 0, -1), "set": lambda r, k: sorted(r.smembers(k)),
          "zset": lambda r, k: r.zrange(k, 0, -1, withscores=True), "stream": lambda r, k: r.xrange(k)}
out = []
for db in sorted(client(0).info("keyspace")):
    r = client(int(db[2:]))
    for key in sorted(r.scan_iter(count=1000)):
        if key.startswith(b"redis-infra:health:"):
            continue
        kind = r.type(key).decode()
        out.append((db, key, kind, values[kind](r, key), r.pttl(key) > 0))
print(len(out), hashlib.sha256(repr(out).encode()).hexdigest())
"""

# A loop's failure says only "One or more items failed": the items' messages are in its results.

# Every data type, keys with and without a TTL, and one in another database.
DATA = [
    ["SET", "backup-test:string", "hello world"],
    ["SET", "backup-test:binary-ish", "caf\u00e9 \u2603"],
    ["HSET", "backup-test:hash", "a", "1", "b", "2", "c", "three"],
    ["RPUSH", "backup-test:list", "x", "y", "z", "x"],
    ["SADD", "backup-test:set", "m", "n", "o"],
    ["ZADD", "backup-test:zset", "1", "a", "2.5", "b", "-3", "c"],
    ["XADD", "backup-test:stream", "1-1", "field", "value"],
    ["XADD", "backup-test:stream", "2-1", "other", "value2"],
    ["SET", "backup-test:ttl-string", "expires", "EX", "7200"],
    ["HSET", "backup-test:ttl-hash", "f", "v"],
    ["EXPIRE", "backup-test:ttl-hash", "7200"],
    ["SELECT", "3"],
    ["SET", "backup-test:db3", "in another database"],
]
CHANGES = [
    ["SET", "backup-test:string", "changed"],
    ["DEL", "backup-test:hash", "backup-test:zset", "backup-test:ttl-string"],
    ["RPUSH", "backup-test:list", "added"],
    ["PERSIST", "backup-test:ttl-hash"],
    ["XADD", "backup-test:stream", "3-1", "late", "write"],
    ["SET", "backup-test:new", "written after the backup"],
]


@pytest.fixture(scope="module")
def env(host):
    variables = host.ansible.get_variables()
    if not variables.get("redis_server_backup_password"):
        pytest.skip("no backup password in this scenario: no backups")
    if "MOLECULE_INVENTORY_FILE" not in os.environ:
        pytest.skip("not run by Molecule")
    engine = variables.get("redis_server_engine", "redis")
    instances = variables.get("redis_server_instances", [{"name": "main", "port": 6379}])
    return {
        "engine": engine,
        "cli": tls_setup.cli(engine, variables),
        "instances": instances,
        "secrets": [variables[name] for name in ("redis_server_password", "redis_server_admin_password",
                                                 "redis_server_monitor_password", "redis_server_backup_password")
                    if variables.get(name)],
        "admin": variables["redis_server_admin_password"],
    }


def playbook(name, *args):
    """Run a project playbook against the scenario's inventory, without a terminal (stdin /dev/null)."""
    command = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
               os.path.join(PROJECT, "playbooks", name), *args]
    # Without colours: the callback colours each line, which would put escape codes between the words
    # of a wrapped message.
    environment = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(command, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT, check=False,
                          stdin=subprocess.DEVNULL, env=environment)


def admin_commands(host, env, instance, commands):
    """Run commands in one redis-cli session as admin; the password goes through REDISCLI_AUTH."""
    script = "\n".join(" ".join(shlex.quote(arg) for arg in command) for command in commands)
    result = host.run(f"printf '%s\\n' {shlex.quote(script)} | REDISCLI_AUTH={shlex.quote(env['admin'])} "
                      f"{env['cli']} --no-auth-warning --user admin -p {instance['port']}")
    assert result.rc == 0, result.stderr
    assert "ERR" not in result.stdout, result.stdout
    return result.stdout


def checksum(host, instance):
    result = host.run(f"python3 -c {shlex.quote(CHECKSUM)} /etc/redis-infra/connections/{instance['name']}-admin.toml")
    assert result.rc == 0, result.stderr
    count, digest = result.stdout.split()
    return int(count), digest


def info(host, env, instance, section):
    return admin_commands(host, env, instance, [["INFO", section]])


def run_id(host, env, instance):
    return re.search(r"run_id:(\w+)", info(host, env, instance, "server")).group(1)


def appendonly(host, env, instance):
    return admin_commands(host, env, instance, [["CONFIG", "GET", "appendonly"]]).split()[-1]


def unit(env, instance):
    return f"{env['engine']}-server@{instance['name']}.service"


def side_dirs(host, env, instance, kind="before-restore"):
    return host.run(f"ls -d /var/lib/{env['engine']}/{instance['name']}.{kind}-* 2>/dev/null").stdout.split()


def newest_valid_backup(host, instance):
    config = f"/etc/redis-infra/backup/{instance['name']}.toml"
    listing = host.check_output(f"redis-infra-backup --config {config} list --json")
    return next(item for item in json.loads(listing) if item["status"] == "ok")


class Background:
    """A command run on the host as a transient systemd unit, stopped (with all it started) on exit."""

    def __init__(self, host, name, command):
        self.host, self.name, self.command = host, name, command

    def __enter__(self):
        self.host.run(f"systemctl stop {self.name} 2>/dev/null; systemctl reset-failed {self.name} 2>/dev/null")
        self.host.run_test(f"systemd-run --quiet --collect --unit={self.name} /bin/sh -c {shlex.quote(self.command)}")
        return self

    def __exit__(self, *exc):
        self.host.run(f"systemctl stop {self.name}")


def test_each_instance_has_a_cron_entry_without_a_secret(host, env):
    cron = host.file(CRON_FILE)
    assert cron.exists and cron.user == "root" and not cron.mode & 0o022
    text = cron.content_string
    for instance in env["instances"]:
        line = f"redis-infra-backup --config /etc/redis-infra/backup/{instance['name']}.toml run"
        assert re.search(rf"^0 2 \* \* \* root systemd-cat --identifier=redis-backup-{instance['name']} "
                         rf"/usr/local/bin/{re.escape(line)}$", text, re.M), text
        connection = host.file(f"/etc/redis-infra/connections/{instance['name']}-backup.toml")
        assert (connection.mode, connection.user, connection.group) == (0o600, "root", "root")
        config = host.file(f"/etc/redis-infra/backup/{instance['name']}.toml")
        assert config.mode == 0o640 and config.user == "root"
        backups = host.file(f"{BACKUP_DIR}/{instance['name']}")
        assert backups.is_directory and backups.mode in (0o700, 0o750) and backups.user == "root"
        for secret in env["secrets"]:
            assert secret not in config.content_string
    for secret in env["secrets"]:
        assert secret not in text, "a password appears in the crontab"
    assert host.file(STATUS_DIR).mode == 0o755
    assert host.service("cron").is_running


def test_the_cron_command_backs_up_to_the_journal(host, env):
    """The scheduled command itself, as cron runs it (cron's PATH), logs to the journal and exits 0."""
    instance = env["instances"][-1]
    job = next(line.split(" root ", 1)[1] for line in host.file(CRON_FILE).content_string.splitlines()
               if f"redis-backup-{instance['name']} " in line)
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    result = host.run(f"env -i PATH=/usr/bin:/bin HOME=/root SHELL=/bin/sh /bin/sh -c {shlex.quote(job)}")
    assert result.rc == 0, result.stdout + result.stderr
    for _ in range(20):  # the journal may take a moment to show the last line
        journal = host.run(f"journalctl --no-pager -o cat -t redis-backup-{instance['name']} "
                           f"--since {shlex.quote(since)}").stdout
        if "backup ok" in journal:
            break
        time.sleep(0.5)
    assert "backup ok" in journal, journal
    status = json.loads(host.file(f"{STATUS_DIR}/{instance['name']}.json").content_string)
    assert status["result"] == "ok"
    assert host.file(f"{STATUS_DIR}/{instance['name']}.json").mode & 0o004, "the health checker cannot read it"


@pytest.fixture(scope="module")
def backed_up(host, env):
    """Writes every data type into the first instance, then backs it up with playbooks/backup.yml."""
    instance = env["instances"][0]
    admin_commands(host, env, instance, DATA)
    before = checksum(host, instance)
    started = time.monotonic()
    result = playbook("backup.yml", "-e", json.dumps({"redis_backup_now_instances": [instance["name"]]}))
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return {"instance": instance, "checksum": before, "output": output, "seconds": elapsed}


def test_backup_playbook_takes_a_backup_and_fetches_an_ok_status(host, env, backed_up):
    instance = backed_up["instance"]
    status = json.loads(host.file(f"{STATUS_DIR}/{instance['name']}.json").content_string)
    assert status["result"] == "ok", status
    assert status["keys"] >= backed_up["checksum"][0]
    assert host.file(status["file"]).exists
    assert status["aof_included"] == (appendonly(host, env, instance) == "yes")
    fetched = os.path.join(PROJECT, "artifacts", "backups", f"{host.backend.get_hostname()}-{instance['name']}.json")
    assert json.loads(pathlib.Path(fetched).read_text())["backup_id"] == status["backup_id"]
    for secret in env["secrets"]:
        assert secret not in backed_up["output"], "a password appears in the output of playbooks/backup.yml"


def test_restore_without_confirmation_or_terminal_changes_nothing(host, env, backed_up):
    instance = backed_up["instance"]
    before = run_id(host, env, instance)
    result = playbook("restore.yml", "-e", f"redis_backup_restore_instance={instance['name']}")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "Restore not confirmed" in output, output[-3000:]
    assert host.service(unit(env, instance)).is_running
    assert run_id(host, env, instance) == before, "the instance was restarted without confirmation"
    assert checksum(host, instance) == backed_up["checksum"]


def test_restore_round_trip_brings_back_every_key_value_and_ttl(host, env, backed_up):
    instance = backed_up["instance"]
    aof = appendonly(host, env, instance)
    admin_commands(host, env, instance, CHANGES)
    assert checksum(host, instance) != backed_up["checksum"]

    started = time.monotonic()
    result = playbook("restore.yml", "-e", f"redis_backup_restore_instance={instance['name']}", "-e", "confirm=yes")
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "answers PONG" in output and "Keys now:" in output
    # The report may be wrapped by the callback: any whitespace between words.
    verified = re.search(r"Verified:\s+backup\s+\S+\s+sha256\s+[0-9a-f]{64}\s.*?(\d+)\s+keys\s+in\s+the\s+RDB,"
                         r"\s+(\d+)\s+of\s+them\s+expired\s+since,\s+so\s+(\d+)\s+expected;\s+\S+:\s+(\d+)\s+keys",
                         output, re.S)
    assert verified, output[-3000:]
    assert int(verified[3]) == int(verified[4]) >= backed_up["checksum"][0]
    for secret in env["secrets"]:
        assert secret not in output, "a password appears in the output of playbooks/restore.yml"
    print(f"backup playbook {backed_up['seconds']:.1f} s, restore playbook {elapsed:.1f} s")

    assert checksum(host, instance) == backed_up["checksum"]
    assert appendonly(host, env, instance) == aof, "the instance did not get its managed appendonly back"
    assert "appendonly " + aof in host.file(
        f"/etc/{env['engine']}/{env['engine']}-{instance['name']}.conf").content_string
    side = host.run(f"ls -d /var/lib/{env['engine']}/{instance['name']}.before-restore-*").stdout.split()
    assert side, "the replaced data was not kept"
    # The data must come back from the instance's own files: with AOF on, from the AOF just rewritten.
    host.run_test(f"systemctl restart {unit(env, instance)}")
    for _ in range(50):
        if "loading:0" in info(host, env, instance, "persistence"):
            break
        time.sleep(0.2)
    assert checksum(host, instance) == backed_up["checksum"], "the restored data did not survive a restart"
    if aof == "yes":
        assert "aof_enabled:1" in info(host, env, instance, "persistence")


def test_restore_refuses_while_a_backup_runs_and_changes_nothing(host, env, backed_up):
    """A process holding the backup lock (as a running backup does): the play waits
    redis_backup_restore_lock_wait seconds, then stops before the instance is touched."""
    instance = backed_up["instance"]
    lock = f"{LOCK_DIR}/{instance['name']}.lock"
    before, started, asides = checksum(host, instance), run_id(host, env, instance), side_dirs(host, env, instance)
    with Background(host, "restore-test-backup-running", f"exec flock {lock} sleep 300"):
        for _ in range(50):
            if host.run(f"flock --nonblock {lock} true").rc != 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the test could not take the backup lock")
        result = playbook("restore.yml", "-e", f"redis_backup_restore_instance={instance['name']}", "-e", "confirm=yes",
                          "-e", "redis_backup_restore_lock_wait=2")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    flat = " ".join(output.split())     # the callback may wrap the message
    assert f"A backup of instance {instance['name']} is running" in flat and "Nothing was changed" in flat, \
        output[-3000:]
    assert run_id(host, env, instance) == started, "the instance was restarted"
    assert checksum(host, instance) == before
    assert side_dirs(host, env, instance) == asides


@pytest.mark.parametrize("failure", ["backup lock taken", "backup deleted"])
def test_restore_failing_after_the_data_moved_aside_puts_it_back(host, env, backed_up, failure):
    """restore-prepare fails once the instance is stopped and its data moved aside: a backup took the
    lock (exit 7), or retention deleted the chosen backup (exit 10). The rescue must bring the instance
    back up with the data it had, not the backup's, and say where the restore failed."""
    instance = backed_up["instance"]
    admin_commands(host, env, instance, [["SET", "backup-test:written-before-a-failed-restore", failure],
                                         ["RPUSH", "backup-test:list", failure]])
    before = checksum(host, instance)
    assert before != backed_up["checksum"]
    started, asides, aof = run_id(host, env, instance), side_dirs(host, env, instance), appendonly(host, env, instance)
    chosen = newest_valid_backup(host, instance)
    held = f"/root/restore-test-held-{instance['name']}"
    if failure == "backup lock taken":
        action, code = f"exec flock {LOCK_DIR}/{instance['name']}.lock sleep 300", 7
    else:
        action, code = f"mkdir -p {held} && mv {chosen['file']} {held}/ && exec sleep 300", 10
    # Acts as soon as the restore creates its side directory, before restore-prepare runs.
    watcher = (f"while [ $(ls -d /var/lib/{env['engine']}/{instance['name']}.before-restore-* 2>/dev/null | wc -l) "
               f"-le {len(asides)} ]; do sleep 0.05; done; {action}")
    try:
        with Background(host, "restore-test-failure", watcher):
            result = playbook("restore.yml", "-e", f"redis_backup_restore_instance={instance['name']}",
                              "-e", "confirm=yes", "-e", "redis_backup_restore_lock_wait=2")
    finally:
        host.run(f"[ -d {held} ] && mv {held}/* {BACKUP_DIR}/{instance['name']}/ && rmdir {held}")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-4000:]
    flat = " ".join(output.split())     # the callback may wrap the message
    # Quotes may come escaped (YAML or JSON output): match around them.
    assert re.search(r"failed at step \W+Put the backup\W+s RDB in place\W", flat), output[-4000:]
    assert f"(exit code {code})" in flat, output[-4000:]
    assert "The previous data is back" in flat and "the instance is up" in flat, output[-4000:]
    for secret in env["secrets"]:
        assert secret not in output, "a password appears in the output of playbooks/restore.yml"

    assert host.service(unit(env, instance)).is_running
    assert run_id(host, env, instance) != started, "the instance did not go through the restore's stop"
    assert checksum(host, instance) == before, "the instance did not get its own data back"
    assert appendonly(host, env, instance) == aof
    assert side_dirs(host, env, instance) == asides, "the emptied side directory was left behind"
    host.run_test(f"systemctl restart {unit(env, instance)}")
    for _ in range(50):
        if "loading:0" in info(host, env, instance, "persistence"):
            break
        time.sleep(0.2)
    assert checksum(host, instance) == before, "the data put back did not survive a restart"


def test_backup_preflight_names_the_bad_variable_and_changes_nothing(host, env, tmp_path):
    cases = [
        ("no backup password", "redis_server_backup_password", {"redis_server_backup_password": ""}),
        ("keep_last zero", "redis_backup_keep_last", {"redis_backup_keep_last": 0}),
        ("keep_daily_days negative", "redis_backup_keep_daily_days", {"redis_backup_keep_daily_days": -1}),
        ("schedule with 4 fields", "redis_backup_schedule", {"redis_backup_schedule": "0 2 * *"}),
        ("schedule with junk", "redis_backup_schedule", {"redis_backup_schedule": "0 2 * * * rm"}),
        ("remote copy without a key", "redis_backup_offsite_ssh_identity",
         {"redis_backup_offsite_destination": "backup@vault.example:/srv/redis"}),
    ]
    checksums = "find /etc/redis-infra /etc/cron.d -type f | sort | xargs sha256sum"
    before = host.check_output(checksums)
    outcomes = tmp_path / "outcomes.json"
    plays = []
    for name, _variable, variables in cases:
        plays.append({
            "name": f"Case: {name}", "hosts": "redis", "become": True, "gather_facts": not plays, "vars": variables,
            "tasks": [{"block": [{"ansible.builtin.include_role": {"name": "redis_infra.redis.redis_backup"}},
                                 {"ansible.builtin.set_fact": {"__outcomes": "{{ __outcomes | default([]) + "
                                                               f"[[{json.dumps(name)}, 'accepted']] }}}}"}}],
                       "rescue": [{"ansible.builtin.set_fact": {
                           "__outcomes": "{{ __outcomes | default([]) + "
                                         f"[[{json.dumps(name)}, {FAILURE_MESSAGE}]] }}}}"}}]}],
        })
    plays.append({"name": "Save the outcomes", "hosts": "redis", "gather_facts": False, "tasks": [
        {"ansible.builtin.copy": {"content": "{{ __outcomes | to_json }}", "dest": str(outcomes), "mode": "0600"},
         "delegate_to": "localhost"}]})
    path = tmp_path / "bad-backup-input.yml"
    path.write_text(json.dumps(plays))
    result = subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(path)],
                            capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT, check=False,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:]
    recorded = dict(json.loads(outcomes.read_text()))
    for name, variable, _ in cases:
        assert recorded[name] != "accepted", f"bad input was accepted: {name}"
        assert variable in recorded[name], f"{name}: the message does not name {variable}: {recorded[name]}"
    assert host.check_output(checksums) == before, "a failed preflight changed files on the host"
    for secret in env["secrets"]:
        assert secret not in result.stdout


# --- The replication group (molecule/ha): cluster-wide tests, run once, not once per host ----------

HA_INSTANCE = {"name": "main", "port": 6379}


@pytest.fixture(scope="module")
def group():
    """The Redis hosts of a replication topology with Sentinel, and what the tests need to reach them."""
    if "MOLECULE_INVENTORY_FILE" not in os.environ:
        pytest.skip("not run by Molecule")
    runner = AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])
    if not runner.get_hosts("redis_replicas") or not runner.get_hosts("redis_sentinel"):
        pytest.skip("no replication with Sentinel in this scenario")
    names = runner.get_hosts("redis")
    variables = runner.get_variables(names[0])
    hosts = {name: testinfra.get_host(f"ansible://{name}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")
             for name in names}
    env = {"engine": "redis", "cli": tls_setup.cli("redis", variables),
           "admin": variables["redis_server_admin_password"],
           "secrets": [variables[name] for name in ("redis_server_password", "redis_server_admin_password",
                                                    "redis_server_backup_password", "redis_sentinel_password")]}
    roles = {name: admin_commands(host, env, HA_INSTANCE, [["ROLE"]]).split()[0] for name, host in hosts.items()}
    primaries = [name for name, role in roles.items() if role == "master"]
    assert len(primaries) == 1, roles
    return {"hosts": hosts, "env": env, "primary": primaries[0], "variables": variables,
            "replicas": [name for name in names if name != primaries[0]],
            "address": {name: host.check_output("ip -4 route get 1.1.1.1 | grep -o 'src [0-9.]*' | cut -d' ' -f2")
                        for name, host in hosts.items()}}


def sentinel_command(group, name, *args):
    password = group["variables"]["redis_sentinel_password"]
    port = group["variables"].get("redis_sentinel_port", 26379)
    quoted = " ".join(shlex.quote(str(arg)) for arg in args)
    command = f"{group['env']['cli']} --no-auth-warning -p {port} {quoted}"
    return group["hosts"][name].check_output(f"REDISCLI_AUTH={shlex.quote(password)} {command}").splitlines()


def test_ha_restore_onto_a_replica_is_refused_before_anything_changes(group):
    replica = group["replicas"][0]
    host, env = group["hosts"][replica], group["env"]
    started, asides = run_id(host, env, HA_INSTANCE), side_dirs(host, env, HA_INSTANCE)
    result = playbook("restore.yml", "--limit", replica, "-e", "confirm=yes")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    flat = " ".join(output.split())     # the callback may wrap the message
    assert "is a replica of" in flat and f"--limit {group['primary']}" in flat, output[-3000:]
    assert "Nothing was changed" in flat
    assert run_id(host, env, HA_INSTANCE) == started, "the replica was restarted"
    assert admin_commands(host, env, HA_INSTANCE, [["ROLE"]]).split()[0] == "slave"
    assert side_dirs(host, env, HA_INSTANCE) == asides


def test_ha_restore_brings_the_backup_to_every_host_and_sentinel_agrees(group):
    primary, env = group["primary"], group["env"]
    hosts = group["hosts"]
    down_after = tls_setup.role_variable(group["variables"], "redis_sentinel", "redis_sentinel_down_after_milliseconds")
    try:
        admin_commands(hosts[primary], env, HA_INSTANCE, DATA + [["WAIT", "2", "5000"]])
        before = checksum(hosts[primary], HA_INSTANCE)
        backup = playbook("backup.yml", "--limit", primary, "-e", json.dumps({"redis_backup_now_instances": ["main"]}))
        assert backup.returncode == 0, (backup.stdout + backup.stderr)[-3000:]
        admin_commands(hosts[primary], env, HA_INSTANCE, CHANGES + [["WAIT", "2", "5000"]])
        assert checksum(hosts[group["replicas"][0]], HA_INSTANCE) != before

        started = time.monotonic()
        result = playbook("restore.yml", "--limit", primary, "-e", "confirm=yes")
        elapsed = time.monotonic() - started
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-5000:]
        assert re.search(r"Verified:\s+backup\s+main-", output), output[-3000:]
        for secret in env["secrets"]:
            assert secret not in output, "a password appears in the output of playbooks/restore.yml"
        print(f"restore of the group: {elapsed:.1f} s")

        for name, host in hosts.items():
            assert checksum(host, HA_INSTANCE) == before, f"{name} does not hold the restored data"
        roles = {name: admin_commands(host, env, HA_INSTANCE, [["ROLE"]]).split()[0] for name, host in hosts.items()}
        assert roles == {name: "master" if name == primary else "slave" for name in hosts}, roles
        for name in hosts:
            assert sentinel_command(group, name, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "main") == \
                [group["address"][primary], "6379"], f"the Sentinel on {name} names another primary"
            master = sentinel_command(group, name, "SENTINEL", "MASTER", "main")
            settings = dict(zip(master[::2], master[1::2], strict=False))
            assert settings["down-after-milliseconds"] == str(down_after), f"Sentinel on {name}: {settings}"
    finally:
        admin_commands(hosts[primary], env, HA_INSTANCE, [
            ["DEL", *sorted({command[1] for command in DATA + CHANGES if command[0] not in ("SELECT", "WAIT")})],
            ["SELECT", "3"], ["DEL", "backup-test:db3"]])
