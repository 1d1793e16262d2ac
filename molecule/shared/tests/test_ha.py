"""Replication and Sentinel failover, for scenarios with a Sentinel group (molecule/ha).

Cluster-wide tests: they reach every host themselves instead of running once per host. The failover
test pauses the primary's container (docker pause) and always unpauses it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time

import pytest
import testinfra
from preflight_cases import case_tasks
from testinfra.utils.ansible_runner import AnsibleRunner

INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE")
if not INVENTORY:
    pytest.skip("not run by Molecule", allow_module_level=True)
RUNNER = AnsibleRunner(INVENTORY)
SENTINELS = RUNNER.get_hosts("redis_sentinel")
if not SENTINELS:
    pytest.skip("this scenario has no Sentinel group", allow_module_level=True)
REDIS_HOSTS = RUNNER.get_hosts("redis")
VARIABLES = RUNNER.get_variables(REDIS_HOSTS[0])
NAME = "main"
PORT = 6379
SENTINEL_PORT = VARIABLES.get("redis_sentinel_port", 26379)
DOWN_AFTER_MS = VARIABLES.get("redis_sentinel_down_after_milliseconds", 5000)


def deadline(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        yield
        time.sleep(0.25)


@pytest.fixture(scope="module")
def hosts():
    return {name: testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}") for name in REDIS_HOSTS}


@pytest.fixture(scope="module")
def addresses(hosts):
    """Inventory name -> the address replicas and Sentinels use (the host's default IPv4 address)."""
    return {name: host.check_output("ip -4 route get 1.1.1.1 | grep -o 'src [0-9.]*' | cut -d' ' -f2")
            for name, host in hosts.items()}


def cli(host, *args, user="admin", password=None, port=PORT, address=None):
    """The engine's CLI inside a container; the password goes through REDISCLI_AUTH, never argv."""
    password = password if password is not None else VARIABLES["redis_server_admin_password"]
    command = "redis-cli --no-auth-warning"
    if address:
        command += f" -h {address}"
    command += f" -p {port}"
    if user:
        command += f" --user {user}"
    command += " " + " ".join(shlex.quote(str(arg)) for arg in args)
    result = host.run(f"REDISCLI_AUTH={shlex.quote(password)} {command}")
    return (result.stdout.strip() + "\n" + result.stderr.strip()).strip()


def app(host, *args, address=None):
    return cli(host, *args, user=None, password=VARIABLES["redis_server_password"], address=address)


def sentinel(host, *args):
    return cli(host, *args, user=None, password=VARIABLES["redis_sentinel_password"], port=SENTINEL_PORT)


def info(host, section="replication"):
    text = cli(host, "INFO", section)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def roles(hosts):
    return {name: cli(host, "ROLE").splitlines()[0] for name, host in hosts.items()}


def current_primary(hosts):
    masters = [name for name, role in roles(hosts).items() if role == "master"]
    assert len(masters) == 1, f"expected one primary, got {roles(hosts)}"
    return masters[0]


def journal(host, unit):
    return host.run(f"journalctl -u {unit} -n 30 --no-pager -o cat").stdout


def test_replication_links_up_and_offsets_equal(hosts):
    primary = current_primary(hosts)
    replicas = [name for name in hosts if name != primary]
    assert len(replicas) == 2
    for name in replicas:
        state = info(hosts[name])
        assert state["role"] == "slave" and state["master_link_status"] == "up", \
            journal(hosts[name], "redis-server@main.service")
    # Sentinels publish on the primary every 2 s, so its offset keeps moving: a replica is caught up
    # when its own offset has reached the primary's offset read before WAIT returned.
    target = int(info(hosts[primary])["master_repl_offset"])
    assert cli(hosts[primary], "WAIT", 2, 5000) == "2"
    offsets = {}
    for _ in deadline(10):
        offsets = {name: int(info(hosts[name])["slave_repl_offset"]) for name in replicas}
        if all(offset >= target for offset in offsets.values()):
            break
    else:
        pytest.fail(f"replicas did not reach the primary's offset {target}: {offsets}")
    snapshot = info(hosts[primary])
    assert snapshot["connected_slaves"] == "2" and snapshot["min_slaves_good_slaves"] == "2", snapshot


def test_write_on_primary_is_read_on_both_replicas(hosts):
    primary = current_primary(hosts)
    value = f"written-{time.time()}"
    assert app(hosts[primary], "SET", "verify:ha", value) == "OK"
    assert cli(hosts[primary], "WAIT", 2, 5000) == "2"
    for name, host in hosts.items():
        assert app(host, "GET", "verify:ha") == value, name


def test_replicas_refuse_writes(hosts):
    primary = current_primary(hosts)
    for name, host in hosts.items():
        if name != primary:
            assert "READONLY" in app(host, "SET", "verify:ha:replica", "x"), name


def test_replication_and_sentinel_users_are_minimal(hosts):
    host = hosts[current_primary(hosts)]
    assert cli(host, "ACL", "DRYRUN", "replication", "PING") == "OK"
    for command in (["GET", "k"], ["SET", "k", "v"], ["CONFIG", "GET", "*"], ["FLUSHALL"]):
        assert "no permissions" in cli(host, "ACL", "DRYRUN", "replication", *command), command
    assert cli(host, "ACL", "DRYRUN", "sentinel", "INFO") == "OK"
    for command in (["GET", "k"], ["FLUSHALL"], ["CONFIG", "SET", "dir", "/tmp"]):
        assert "no permissions" in cli(host, "ACL", "DRYRUN", "sentinel", *command), command


def test_each_sentinel_knows_primary_replicas_and_other_sentinels(hosts, addresses):
    primary = current_primary(hosts)
    for name in SENTINELS:
        reply = sentinel(hosts[name], "SENTINEL", "MASTER", NAME).splitlines()
        master = dict(zip(reply[::2], reply[1::2], strict=False))
        assert master.get("ip") == addresses[primary], (name, master)
        assert master["flags"] == "master", (name, master)
        assert master["num-slaves"] == "2", (name, master)
        assert master["num-other-sentinels"] == str(len(SENTINELS) - 1), (name, master)
        assert master["down-after-milliseconds"] == str(DOWN_AFTER_MS)


def test_sentinel_requires_its_password(hosts):
    host = hosts[SENTINELS[0]]
    assert "NOAUTH" in host.run(f"redis-cli -p {SENTINEL_PORT} SENTINEL MASTERS").stdout
    assert sentinel(host, "PING") == "PONG"


def test_summary_lists_primary_replicas_and_sentinels(hosts, addresses):
    with open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "topology.json")) as handle:
        summary = json.load(handle)
    primary = current_primary(hosts)
    assert summary[NAME]["primary"] == f"{addresses[primary]}:{PORT}"
    assert sorted(summary[NAME]["replicas"]) == sorted(f"{addresses[n]}:{PORT}" for n in hosts if n != primary)
    assert sorted(summary[NAME]["sentinels"]) == sorted(f"{addresses[n]}:{SENTINEL_PORT}" for n in SENTINELS)


def _playbook(path, *args, timeout=900):
    command = ["ansible-playbook", "-i", INVENTORY, str(path), *args]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, env=env)


def _converge(*args):
    converge = os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "..", "shared", "converge.yml")
    return _playbook(converge, *args)


# {host: [outcomes]} for every host that ran a case.
SAVED_OUTCOMES = ("{{ dict(groups['redis'] | map('extract', hostvars) | selectattr('__outcomes', 'defined')"
                  " | map(attribute='inventory_hostname') | zip(groups['redis'] | map('extract', hostvars)"
                  " | selectattr('__outcomes', 'defined') | map(attribute='__outcomes'))) | to_json }}")
# (case, hosts, role, variable the message must name, variables)
BAD_TOPOLOGY = [
    ("replica with no primary in the inventory", "redis_replicas", "redis_server", "redis_server_primary_group",
     {"redis_server_primary_group": "no_such_group"}),
    ("Sentinel group empty while Sentinel is enabled", "redis", "redis_server", "redis_server_sentinel_group",
     {"redis_server_sentinel_group": "no_such_group"}),
    ("quorum above the Sentinel count", "redis_sentinel", "redis_sentinel", "redis_sentinel_quorum",
     {"redis_sentinel_quorum": len(SENTINELS) + 1}),
]


def test_bad_topology_fails_in_preflight_naming_the_variable_and_changes_nothing(hosts, tmp_path):
    files = ("find /etc/redis /etc/redis-infra /etc/systemd/system -type f ! -name sentinel.conf"
             " 2>/dev/null | sort | xargs sha256sum")
    before = {name: host.check_output(files) for name, host in hosts.items()}
    outcomes = tmp_path / "outcomes.json"
    plays = [{"name": "Gather facts", "hosts": "all", "gather_facts": True, "tasks": []}]
    for case, group, role, _variable, variables in BAD_TOPOLOGY:
        plays.append({
            "name": f"Case: {case}", "hosts": group, "become": True, "gather_facts": False, "vars": variables,
            "tasks": case_tasks(case, role),
        })
    plays.append({"name": "Save the outcomes", "hosts": "redis", "gather_facts": False, "tasks": [
        {"ansible.builtin.copy": {"content": SAVED_OUTCOMES,
                                  "dest": str(outcomes), "mode": "0600"},
         "delegate_to": "localhost", "run_once": True}]})
    playbook = tmp_path / "bad-topology.yml"
    playbook.write_text(json.dumps(plays))
    result = _playbook(playbook, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    recorded = json.loads(outcomes.read_text())
    for case, group, _role, variable, _ in BAD_TOPOLOGY:
        for host_name in RUNNER.get_hosts(group):
            messages = {item["case"]: item["msg"] for item in recorded[host_name]}
            assert messages[case] != "accepted", f"{case} was accepted on {host_name}"
            assert variable in messages[case], f"{case}: the message does not name {variable}: {messages[case]}"
    for name, host in hosts.items():
        assert host.check_output(files) == before[name], f"a failed preflight changed files on {name}"
    for secret in (VARIABLES["redis_server_replication_password"], VARIABLES["redis_sentinel_password"]):
        assert secret not in result.stdout


def _sentinel_primary(host):
    return sentinel(host, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", NAME).splitlines()[0]


def test_failover_elects_a_new_primary_and_the_old_one_rejoins(hosts, addresses):
    old = current_primary(hosts)
    others = [name for name in hosts if name != old]
    witness = hosts[others[0]]
    by_address = {address: name for name, address in addresses.items()}
    paused_at = time.monotonic()
    subprocess.run(["docker", "pause", old], check=True, timeout=30)
    try:
        new_address = None
        for _ in deadline(DOWN_AFTER_MS / 1000 + 30):
            address = _sentinel_primary(witness)
            if address != addresses[old]:
                new_address = address
                break
        assert new_address in by_address, f"no new primary elected; Sentinel says {_sentinel_primary(witness)}"
        # A write through the address Sentinel returns, from another host, as an application does.
        written = False
        for _ in deadline(20):
            if app(witness, "SET", "verify:failover", "after", address=new_address) == "OK":
                written = True
                break
        elapsed = time.monotonic() - paused_at
        assert written, app(witness, "SET", "verify:failover", "after", address=new_address)
        assert elapsed > DOWN_AFTER_MS / 1000, "failed over before down-after-milliseconds"
    finally:
        subprocess.run(["docker", "unpause", old], check=False, timeout=30)
    new = by_address[new_address]
    rejoined = ""
    for _ in deadline(60):
        state = info(hosts[old])
        rejoined = state
        if (state.get("role") == "slave" and state.get("master_host") == new_address
                and state.get("master_link_status") == "up"):
            break
    else:
        pytest.fail(f"the old primary did not rejoin as a replica of {new}: {rejoined}")
    for _ in deadline(10):
        if app(hosts[old], "GET", "verify:failover") == "after":
            break
    assert app(hosts[old], "GET", "verify:failover") == "after"
    assert current_primary(hosts) == new

    result = _converge()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", re.sub(r"\x1b\[[0-9;]*m", "", result.stdout), re.MULTILINE)
    changed = [line for line in result.stdout.splitlines() if line.startswith("changed:")]
    assert len(recap) == len(REDIS_HOSTS) and all(count == "0" for _, count in recap), (recap, changed)
    assert current_primary(hosts) == new, "the converge after the failover moved the primary"
    for secret in (VARIABLES["redis_server_replication_password"], VARIABLES["redis_sentinel_password"],
                   VARIABLES["redis_sentinel_auth_password"]):
        assert secret not in output
