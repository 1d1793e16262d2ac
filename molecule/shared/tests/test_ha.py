"""Replication and Sentinel failover, for scenarios with a Sentinel group (molecule/ha).

Cluster-wide tests: they reach every host themselves instead of running once per host. The failover
test pauses the primary's container (docker pause) and always unpauses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time

import checker
import pytest
import testinfra
import tls_setup
from preflight_cases import case_tasks
from testinfra.utils.ansible_runner import AnsibleRunner
from writers import ApplicationWriter, ThreadedWriter

# Redis hosts only (a scenario may have a monitoring host: test_monitoring.py).
testinfra_hosts = ["ansible://redis"]

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
# The application host (group apps) with one application behind the local proxy (molecule/ha/molecule.yml).
APP_HOSTS = RUNNER.get_hosts("apps")
APP_ENV_FILE = "/etc/redis-infra/apps/shop.env"
SENTINEL_PORT = VARIABLES.get("redis_sentinel_port", 26379)
DOWN_AFTER_MS = tls_setup.role_variable(VARIABLES, "redis_sentinel", "redis_sentinel_down_after_milliseconds")
# TLS on (production): the instances and Sentinels serve TLS only; the CLI inside a host uses the host's CA
# bundle, the controller's clients the private CA's certificate.
CLI = tls_setup.cli("redis", VARIABLES)
TLS = tls_setup.client_kwargs(VARIABLES, tls_setup.controller_ca()) if tls_setup.tls_on(VARIABLES) else {}


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
    command = f"{CLI} --no-auth-warning"
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
    assert "NOAUTH" in host.run(f"{CLI} -p {SENTINEL_PORT} SENTINEL MASTERS").stdout
    assert sentinel(host, "PING") == "PONG"


def test_summary_lists_primary_replicas_and_sentinels(hosts, addresses):
    with open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "topology.json")) as handle:
        summary = json.load(handle)
    primary = current_primary(hosts)
    assert summary[NAME]["primary"] == f"{addresses[primary]}:{PORT}"
    assert sorted(summary[NAME]["replicas"]) == sorted(f"{addresses[n]}:{PORT}" for n in hosts if n != primary)
    assert sorted(summary[NAME]["sentinels"]) == sorted(f"{addresses[n]}:{SENTINEL_PORT}" for n in SENTINELS)



def _checker(host, path="/metrics"):
    """A page of the host's health checker (from inside the container), or '' while it does not answer 200."""
    result = host.run(f"python3 -c {shlex.quote(checker.script(host.ansible.get_variables(), path))}")
    status, _, body = result.stdout.partition("\n")
    return body if result.rc == 0 and status == "200" else ""


def _instance_info(host):
    """The redis_instance_info line of the host's health checker, or ''."""
    return next((line for line in _checker(host).splitlines() if line.startswith("redis_instance_info{")), "")


def test_health_checkers_label_the_replication_group_with_one_primary(hosts):
    """Every checker labels the instance with the same replication group, so that the no-primary and
    split-brain alerts (files/prometheus/redis-alerts.yml) can count the group's primaries."""
    lines = {}
    for _ in deadline(60):
        lines = {name: _instance_info(host) for name, host in hosts.items()}
        if all(f'replication_group="redis_primary.{NAME}"' in line for line in lines.values()):
            break
    else:
        pytest.fail(f"a checker does not label the replication group: {lines}")
    assert sum('role="master"' in line for line in lines.values()) == 1, lines

def _sentinel_view(host) -> dict[str, dict]:
    """The host's checker's redis_sentinel_* series for the primary: {metric: {labels..., value}}."""
    from prometheus_client.parser import text_string_to_metric_families

    view = {}
    for family in text_string_to_metric_families(_checker(host)):
        for sample in family.samples:
            if sample.name.startswith(("redis_sentinel_master_", "redis_infra_sentinel_up")):
                view[sample.name] = dict(sample.labels, value=sample.value)
    return view


def test_health_checkers_read_their_sentinel_as_its_read_only_user(hosts, addresses):
    """Every host's checker reads its own Sentinel: the primary ok, both replicas and the three Sentinels
    up, a failover can be authorised. The user it logs in as may read, not fail over or reconfigure."""
    primary = f"{addresses[current_primary(hosts)]}:{PORT}"
    want = {"redis_infra_sentinel_up": 1, "redis_sentinel_master_ok_slaves": 2,
            "redis_sentinel_master_ok_sentinels": len(SENTINELS), "redis_sentinel_master_ckquorum_status": 1,
            "redis_sentinel_master_status": 1}
    views = {}
    for _ in deadline(60):
        views = {name: _sentinel_view(hosts[name]) for name in SENTINELS}
        if all({metric: view.get(metric, {}).get("value") for metric in want} == want for view in views.values()):
            break
    else:
        pytest.fail(f"a checker does not see its Sentinel healthy: {views}")
    for name, view in views.items():
        assert view["redis_sentinel_master_status"]["master_address"] == primary, (name, view)
        assert view["redis_sentinel_master_status"]["master_name"] == NAME
        health = json.loads(_checker(hosts[name], "/api/health"))
        # (the instance's own status depends on what the tests before did to it: a restart is degraded)
        assert set(health["instances"]) == {NAME, "sentinel"} and health["instances"]["sentinel"] == "healthy", \
            (name, health)
        connection = hosts[name].file("/etc/redis-infra/connections/sentinel-monitor.toml")
        assert (connection.user, connection.group, connection.mode) == ("root", "redis-health", 0o640), name
        assert 'username = "monitor"' in connection.content_string
    host = hosts[SENTINELS[0]]
    password = VARIABLES["redis_server_monitor_password"]
    def as_monitor(*command):
        return cli(host, *command, user="monitor", password=password, port=SENTINEL_PORT)

    assert as_monitor("SENTINEL", "CKQUORUM", NAME).startswith("OK")
    for command in (["SENTINEL", "FAILOVER", NAME], ["SENTINEL", "SET", NAME, "quorum", "1"],
                    ["SENTINEL", "RESET", "*"], ["SENTINEL", "FLUSHCONFIG"], ["SENTINEL", "MASTER", NAME],
                    ["ACL", "LIST"], ["SHUTDOWN"]):
        reply = as_monitor(*command)
        assert "NOPERM" in reply, (command, reply)
    # Sentinel saved the user with the password's hash, never the password
    conf = host.file("/etc/redis/sentinel.conf").content_string
    assert re.search(r"^user monitor on .*#[0-9a-f]{64}", conf, re.M) and password not in conf


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
    ("a hostname as the replication address", "redis", "redis_server", "redis_server_replication_address",
     {"redis_server_replication_address": "redis.example.internal"}),
    ("a Sentinel password with a quote", "redis_sentinel", "redis_sentinel", "redis_sentinel_password",
     {"redis_sentinel_password": "molecule-sentinel-client-password-it's-0123456789"}),
    ("a short Sentinel password in production", "redis_sentinel", "redis_sentinel", "redis_sentinel_auth_password",
     {"redis_sentinel_auth_password": "short-sentinel-password"}),
    ("min-replicas above the replica count", "redis", "redis_server", "redis_server_min_replicas_to_write",
     {"redis_server_min_replicas_to_write": 3}),
    ("Sentinel ACL password differs from Sentinel's", "redis", "redis_server", "redis_server_sentinel_password",
     {"redis_sentinel_auth_password": "molecule-other-sentinel-acl-password-0123456789"}),
    ("Sentinel bind as a string", "redis_sentinel", "redis_sentinel", "redis_sentinel_bind",
     {"redis_sentinel_bind": "0.0.0.0"}),  # noqa: S104
    ("Sentinel on an instance's port", "redis_sentinel", "redis_sentinel", "redis_sentinel_port",
     {"redis_sentinel_port": 6379}),
    ("Sentinel down-after negative", "redis_sentinel", "redis_sentinel", "redis_sentinel_down_after_milliseconds",
     {"redis_sentinel_down_after_milliseconds": -5000}),
    ("Sentinel quorum zero", "redis_sentinel", "redis_sentinel", "redis_sentinel_quorum", {"redis_sentinel_quorum": 0}),
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


def _app_host():
    return testinfra.get_host(f"ansible://{APP_HOSTS[0]}?ansible_inventory={INVENTORY}")


def _env(host, path=APP_ENV_FILE):
    values = {}
    for line in host.file(path).content_string.splitlines():
        key, _, value = line.partition("=")
        if key and not key.startswith("#"):
            values[key] = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == "'" else value
    return values


@pytest.mark.skipif(not APP_HOSTS, reason="this scenario has no application host")
def test_ha_app_settings_route_the_application_through_the_local_proxy_and_verify_passes(hosts):
    """playbooks/app_settings.yml with an application behind the local proxy (HAProxy on its host), run twice;
    then playbooks/verify.yml on the application's host, through the proxy's primary and replica ports."""
    playbooks = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks")
    secrets = [VARIABLES[name] for name in ("redis_server_password", "redis_server_proxy_password",
                                            "redis_server_admin_password")]
    # The first run installs and starts the proxy (checks every 1.5 s); the second, with the default interval,
    # reloads it under systemd (its ExecReload saves the checks' results first); the third, in check mode with a
    # diff, has nothing to change and prints no secret.
    first = _playbook(os.path.join(playbooks, "app_settings.yml"), "-e",
                      "redis_app_settings_proxy_check_interval_ms=1500")
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    second = _playbook(os.path.join(playbooks, "app_settings.yml"))
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert "(item=redis-infra-ha-app (reloaded))" in second.stdout, second.stdout[-3000:]
    again = _playbook(os.path.join(playbooks, "app_settings.yml"), "--check", "--diff")
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", again.stdout, re.MULTILINE)
    assert recap and all(count == "0" for _, count in recap), recap
    app = _app_host()
    env = _env(app)
    assert env["REDIS_URL"].endswith("@127.0.0.1:6379/0") and env["REDIS_PROXY"] == "true", env["REDIS_URL"][-20:]
    assert env["REDIS_TLS"] == "false" and env["REDIS_READ_REPLICAS"] == "true"
    assert env["REDIS_READ_REPLICA_URLS"].endswith("@127.0.0.1:7379/0")
    env_file = app.file(APP_ENV_FILE)
    assert (env_file.user, env_file.group, env_file.mode) == ("nobody", "nogroup", 0o600)
    config = app.file("/etc/redis-infra/proxy/haproxy.cfg")
    assert (config.user, config.group, config.mode) == ("root", "haproxy", 0o640)
    assert app.service("redis-infra-proxy").is_running and app.service("redis-infra-proxy").is_enabled
    # The proxy runs as haproxy; the distribution's haproxy.service, which the package started, is stopped.
    main_pid = app.check_output("systemctl show -p MainPID --value redis-infra-proxy")
    assert set(app.check_output(f"ps -o user= -p {main_pid} --ppid {main_pid}").split()) == {"haproxy"}
    assert not app.service("haproxy").is_running and not app.service("haproxy").is_enabled
    # The proxy speaks TLS to the servers (production), and the check user's password is in no file in clear.
    assert "ssl verify required" in config.content_string
    for secret in secrets:
        assert secret not in config.content_string
        assert secret not in first.stdout + first.stderr + second.stdout + again.stdout
    # The running proxy loaded the file as it is (the reload recorded its checksum), and checks every second.
    loaded = app.file("/run/redis-infra-proxy/loaded-config").content_string.split()[0]
    assert loaded == app.check_output("sha256sum /etc/redis-infra/proxy/haproxy.cfg").split()[0]
    assert "inter 1000ms" in config.content_string
    verify = _playbook(os.path.join(playbooks, "verify.yml"))
    output = verify.stdout + verify.stderr
    assert verify.returncode == 0, output[-4000:]
    for check in ("connection", "basic", "advanced", "uses", "performance", "replica-reads", "readiness"):
        assert f"OK      {check}:" in output, (check, output[-3000:])
    # Molecule's YAML callback wraps long lines and doubles the apostrophe of "primary's": read it flattened.
    flat = " ".join(output.split())
    assert "1 replica URL(s) read the primary" in flat and "write and refuse writes" in flat, flat[-3000:]
    assert "FAILED" not in output.replace("failed=0", "")
    for secret in secrets:
        assert secret not in output


def test_failover_elects_a_new_primary_and_the_old_one_rejoins(hosts, addresses):
    """With an application host: an application writes through its local proxy all along, and its writes go
    through again within one failover window."""
    application = ApplicationWriter(APP_HOSTS[0], APP_ENV_FILE) if APP_HOSTS else None
    if application:
        application.__enter__()
        time.sleep(2)
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
    if application:
        time.sleep(2)
        application.__exit__(None, None, None)
        figures = application.result
        print(f"application through the local proxy across the failover: {figures}")
        assert figures.get("acknowledged", 0) > 100, figures
        # One failover window: Sentinel's down-after and election, then two checks of the proxy (rise 2).
        assert figures["longest"] <= DOWN_AFTER_MS / 1000 + 8, figures
        # Its last write went through the proxy to the new primary.
        assert app(hosts[new], "GET", f"verify:application:{figures['acknowledged'] - 1}") == "x"

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


class Writer(ThreadedWriter):
    """Writes through the current primary's address from the controller and counts what failed."""

    def __init__(self, address):
        import redis
        super().__init__(redis.Redis(host=address, port=PORT, password=VARIABLES["redis_server_password"],
                                     socket_timeout=2, socket_connect_timeout=2, **TLS))


def test_limit_run_on_the_new_primary_keeps_it_with_its_own_sentinel_down(hosts, addresses):
    """After the failover above the primary is not the inventory's; with that host's Sentinel stopped, a
    --limit run on it must decide from the other nodes, not fall back to the inventory."""
    primary = current_primary(hosts)
    assert primary != RUNNER.get_hosts("redis_primary")[0], "the failover test should have moved the primary"
    hosts[primary].run("systemctl stop redis-sentinel.service")
    try:
        with Writer(addresses[primary]) as writer:
            result = _playbook(os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "redis.yml"),
                               "--limit", primary)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-3000:]
        assert re.search(rf"^{primary}\s+: ok=\d+\s+changed=0 ", result.stdout, re.MULTILINE), result.stdout[-2000:]
        assert current_primary(hosts) == primary
        assert writer.acknowledged > 0 and not writer.errors, writer.errors[:5]
    finally:
        hosts[primary].run("systemctl start redis-sentinel.service")


def _offset(host):
    return int(info(host)["master_repl_offset"])


def _tie(hosts, addresses, first, second):
    """Leave the primary `first` and its replica `second` masters without replicas holding the same
    replication offset: `second` is detached once it has caught up, between two of the primary's
    replication pings (retried if one slips in between)."""
    for _ in range(5):
        cli(hosts[second], "REPLICAOF", addresses[first], PORT)
        for _ in deadline(30):
            state = info(hosts[second])
            if state.get("master_link_status") == "up" and _offset(hosts[second]) == _offset(hosts[first]):
                break
        cli(hosts[second], "REPLICAOF", "NO", "ONE")
        if _offset(hosts[second]) == _offset(hosts[first]):
            return
    pytest.fail(f"could not give {first} and {second} the same offset")


def test_ha_masters_that_tie_fail_closed_and_the_newest_data_wins(hosts, addresses):
    """Every Sentinel down and every instance a master without replicas (as after a split): when the two
    with the newest data tie and the inventory's primary is not one of them, the converge refuses to
    choose, prints the evidence and changes nothing; once one holds newer data, it becomes the primary,
    whatever the inventory says."""
    inventory = RUNNER.get_hosts("redis_primary")[0]
    primary = current_primary(hosts)
    assert primary != inventory, "the failover test should have moved the primary"
    other = next(name for name in hosts if name not in (primary, inventory))
    redis_yml = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "redis.yml")
    # The Sentinels would undo the split; the health checkers write on masters (SET/DEL), which moves
    # their offsets apart.
    for host in hosts.values():
        assert host.run("systemctl stop redis-sentinel.service redis-health.service").rc == 0
    try:
        # The inventory's primary leaves first, so the write after it puts the other two ahead.
        assert cli(hosts[inventory], "REPLICAOF", "NO", "ONE") == "OK"
        assert app(hosts[primary], "SET", "verify:tie", "same") == "OK"
        _tie(hosts, addresses, primary, other)
        assert _offset(hosts[primary]) == _offset(hosts[other]) > _offset(hosts[inventory])
        # A setting changed by hand, which a refused run must leave as it is.
        assert cli(hosts[other], "CONFIG", "SET", "min-replicas-to-write", "0") == "OK"
        refused = _playbook(redis_yml)
        said = " ".join((refused.stdout + refused.stderr).split())
        assert refused.returncode != 0, said[-3000:]
        evidence = f"{', '.join(sorted([addresses[primary], addresses[other]]))} are masters without replicas"
        assert evidence in said and "nothing was changed" in said, said[-3000:]
        assert set(roles(hosts).values()) == {"master"}, roles(hosts)
        assert cli(hosts[other], "CONFIG", "GET", "min-replicas-to-write").splitlines()[-1] == "0", \
            "the refused run changed a setting"
        # Newer data on the Sentinels' last primary (writable by hand: it has no replica): it wins, and
        # the inventory's primary follows it.
        assert cli(hosts[primary], "CONFIG", "SET", "min-replicas-to-write", "0") == "OK"
        assert cli(hosts[primary], "SET", "verify:newest", primary) == "OK"
        result = _playbook(redis_yml)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        assert _healed(hosts) == primary
        for name, host in hosts.items():
            for _ in deadline(10):
                if app(host, "GET", "verify:newest") == primary:
                    break
            assert app(host, "GET", "verify:newest") == primary, name
            assert cli(host, "CONFIG", "GET", "min-replicas-to-write").splitlines()[-1] == "1", name
    finally:
        for host in hosts.values():
            host.run("systemctl start redis-sentinel.service redis-health.service")
    # The Sentinels come back to the primary they knew, with its replicas.
    for _ in deadline(30):
        if all(_sentinel_primary(host) == addresses[primary] for host in hosts.values()):
            break
    assert current_primary(hosts) == primary


def _uptimes(hosts):
    return {name: (time.monotonic(), int(info(host, "server")["uptime_in_seconds"])) for name, host in hosts.items()}


def _restarted(before, hosts, names):
    """The names among `names` whose instance restarted since `before` was taken."""
    now = _uptimes({name: hosts[name] for name in names})
    return sorted(name for name in names if now[name][1] + 2 < before[name][1] + (now[name][0] - before[name][0]))


def test_rolling_restart_goes_on_without_a_replica_that_is_down(hosts):
    rolling = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "rolling_restart.yml")
    primary = current_primary(hosts)
    down = sorted(name for name in hosts if name != primary)[0]
    up = [name for name in hosts if name != down]
    hosts[down].run("systemctl stop redis-server@main.service")
    try:
        before = _uptimes({name: hosts[name] for name in up})
        refused = _playbook(rolling, "-e", "redis_server_rolling_require_all_replicas=true")
        # ansible-core prints a failed task's message on stderr, folded over lines.
        said = " ".join((refused.stdout + refused.stderr).split())
        assert refused.returncode != 0 and "redis_server_rolling_require_all_replicas is true" in said, said[-3000:]
        assert _restarted(before, hosts, up) == [], "the refused rolling restart restarted something"
        result = _playbook(rolling)
        assert result.returncode == 0, result.stdout[-3000:]
        said = " ".join(result.stdout.split())
        assert f"Not in sync, restarted without waiting for them: main: {down}" in said, said[-3000:]
        assert _restarted(before, hosts, up) == sorted(up)
    finally:
        hosts[down].run("systemctl start redis-server@main.service")
    for _ in deadline(60):
        states = {name: info(host) for name, host in hosts.items()}
        masters = [name for name, state in states.items() if state.get("role") == "master"]
        if len(masters) == 1 and all(state.get("master_link_status") == "up" for name, state in states.items()
                                     if name != masters[0]):
            break
    else:
        pytest.fail(f"the topology did not heal after the rolling restart: {roles(hosts)}")


class SentinelWriter(ThreadedWriter):
    """Writes through whatever primary the Sentinels name, as a Sentinel-aware application does, and
    records the longest time between two acknowledged writes and when writes failed."""

    prefix = "verify:rolling"
    limit = 900
    error_pause = 0.05

    def __init__(self, addresses, sentinels=None):
        from redis.sentinel import Sentinel
        sentinels = Sentinel([(addresses[name], SENTINEL_PORT) for name in sentinels or SENTINELS], socket_timeout=1,
                             sentinel_kwargs={"password": VARIABLES["redis_sentinel_password"], "socket_timeout": 1,
                                              **TLS})
        super().__init__(sentinels.master_for(NAME, password=VARIABLES["redis_server_password"], socket_timeout=1,
                                              socket_connect_timeout=1, **TLS))


class DurableWriter(SentinelWriter):
    """A Sentinel-aware writer that notes when each write was acknowledged, and whether a replica
    acknowledged it too (WAIT 1) when asked to."""

    def __init__(self, addresses, prefix, wait=False, sentinels=None):
        super().__init__(addresses, sentinels)
        self.prefix, self.wait, self.acked = prefix, wait, []

    def run(self):
        end = time.monotonic() + self.limit
        sequence = 0
        while not self.stop and time.monotonic() < end:
            key = f"{self.prefix}:{sequence}"
            sequence += 1
            try:
                self.client.set(key, "x")
                if not self.wait or int(self.client.execute_command("WAIT", 1, 200)) >= 1:
                    self.acked.append((key, time.monotonic()))
            except Exception as exc:  # noqa: BLE001 (every failure counts)
                self.errors.append(type(exc).__name__ + ": " + str(exc)[:80])
                time.sleep(0.05)
            time.sleep(0.005)


MISSING = "local m = {} for _, k in ipairs(KEYS) do if redis.call('EXISTS', k) == 0 then m[#m+1] = k end end return m"


def _missing(hosts, keys):
    """The keys that the current primary does not have."""
    host = hosts[current_primary(hosts)]
    missing = []
    for start in range(0, len(keys), 500):
        batch = keys[start:start + 500]
        missing += [line for line in cli(host, "EVAL", MISSING, len(batch), *batch).splitlines() if line.strip()]
    return missing


def _healed(hosts):
    for _ in deadline(90):
        states = {name: info(host) for name, host in hosts.items()}
        masters = [name for name, state in states.items() if state.get("role") == "master"]
        if len(masters) == 1 and all(state.get("master_link_status") == "up"
                                     for name, state in states.items() if name != masters[0]):
            return masters[0]
    pytest.fail(f"the topology did not heal: {roles(hosts)}")


def test_ha_kill_9_of_the_primary_loses_at_most_a_second_of_writes(hosts, addresses):
    primary = current_primary(hosts)
    with DurableWriter(addresses, "verify:kill9") as writer:
        time.sleep(3)
        killed_at = time.monotonic()
        killed = hosts[primary].run("kill -9 $(systemctl show -p MainPID --value redis-server@main.service)")
        assert killed.rc == 0, killed.stderr
        time.sleep(2)
        _healed(hosts)
        time.sleep(2)
    assert writer.acked, writer.errors[:5]
    acked_at = dict(writer.acked)
    lost = _missing(hosts, [key for key, _ in writer.acked])
    assert all(acked_at[key] >= killed_at - 1.5 for key in lost), \
        f"{len(lost)} acknowledged writes lost, some acknowledged more than a second before the kill"
    assert len(lost) < len(writer.acked)


def test_ha_writes_a_replica_acknowledged_survive_a_failover(hosts, addresses):
    old = current_primary(hosts)
    with DurableWriter(addresses, "verify:wait1", wait=True) as writer:
        time.sleep(2)
        subprocess.run(["docker", "pause", old], check=True, timeout=30)
        try:
            for _ in deadline(DOWN_AFTER_MS / 1000 + 30):
                if _sentinel_primary(hosts[[n for n in hosts if n != old][0]]) != addresses[old]:
                    break
            time.sleep(3)
        finally:
            subprocess.run(["docker", "unpause", old], check=False, timeout=30)
    assert len(writer.acked) > 10, writer.errors[:5]
    assert _healed(hosts) != old
    lost = _missing(hosts, [key for key, _ in writer.acked])
    assert lost == [], f"{len(lost)} writes a replica had acknowledged were lost in the failover"


def test_ha_replica_restarted_outside_ansible_never_takes_writes(hosts, addresses):
    """A replica restarted by hand (or a crash, a reboot) asks the Sentinels before it starts
    (redis-infra-follow) and comes back a replica of the current primary from its first moment; it
    never takes a write (min-replicas-to-write would refuse them too)."""
    primary = current_primary(hosts)
    name = sorted(n for n in hosts if n != primary)[0]
    unit = "redis-server@main.service"
    assert hosts[name].run(f"systemctl restart {unit}").rc == 0
    # systemctl returns once the server is ready (Type=notify): its first answer is already a replica's.
    first = cli(hosts[name], "ROLE").splitlines()
    assert first[:3] == ["slave", addresses[primary], str(PORT)], f"{name} came back as {first}"
    assert f"starts as replica of {addresses[primary]}:{PORT}" in journal(hosts[name], unit)
    accepted = []
    for _ in deadline(60):
        reply = app(hosts[name], "SET", "verify:restarted-replica", "x")
        if reply == "OK":
            accepted.append(reply)
        if info(hosts[name]).get("master_link_status") == "up":
            break
    else:
        pytest.fail(f"{name} did not become a replica again: {info(hosts[name])}")
    assert not accepted, f"{name} accepted writes as a master after its restart"
    assert current_primary(hosts) == primary
    # A crash: systemd starts it again by itself (Restart=always), through the hook as well.
    pid = hosts[name].check_output(f"systemctl show -p MainPID --value {unit}")
    assert hosts[name].run(f"kill -9 {pid}").rc == 0
    for _ in deadline(30):
        now = hosts[name].run(f"systemctl show -p MainPID --value {unit}").stdout.strip()
        if now not in ("0", pid) and cli(hosts[name], "PING") == "PONG":
            break
    else:
        pytest.fail(f"systemd did not restart {name}'s instance: {journal(hosts[name], unit)}")
    after_crash = cli(hosts[name], "ROLE").splitlines()
    assert after_crash[:3] == ["slave", addresses[primary], str(PORT)], f"{name} came back as {after_crash}"
    assert app(hosts[name], "SET", "verify:crashed-replica", "x").startswith("READONLY")
    assert current_primary(hosts) == primary
    # Back in sync before the next test counts on every replica (its WAIT 2).
    assert _healed(hosts) == primary


def _switches(hosts):
    """How many +switch-master events each Sentinel has logged so far (its failovers seen)."""
    return {name: int(hosts[name].run("grep -c +switch-master /var/log/redis/redis-sentinel.log").stdout.strip() or 0)
            for name in SENTINELS}


def test_ha_full_restart_of_every_host_converges_to_one_primary_with_the_data(hosts, addresses):
    """Every Redis and Sentinel restarted at once (as after a power cut): the Sentinels remember the
    primary and each instance's start hook asks them (without a majority in time it follows nobody and
    comes up a master without replicas); a converge settles on the primary the Sentinels name and the data
    is on every host. On a loaded machine the old primary can stay down longer than down-after while the
    others are back, and the Sentinels then fail over on their own: a new primary is right only then, when
    the Sentinels logged the failover, never chosen by the converge against them."""
    before = current_primary(hosts)
    switches = _switches(hosts)
    assert app(hosts[before], "SET", "verify:full-restart", "kept") == "OK"
    assert cli(hosts[before], "WAIT", 2, 5000) == "2"
    # Every service of every host at the same moment (restarting the containers would change their addresses).
    restarts = [subprocess.Popen(["docker", "exec", name, "systemctl", "restart", "redis-sentinel.service",
                                  "redis-server@main.service"]) for name in hosts]
    assert [process.wait(timeout=120) for process in restarts] == [0] * len(hosts)
    for name, host in hosts.items():
        for _ in deadline(60):
            if cli(host, "PING") == "PONG":
                break
        else:
            pytest.fail(f"{name} did not come back: {journal(host, 'redis-server@main.service')}")
    result = _converge()
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    after = _healed(hosts)
    views = {}
    for _ in deadline(30):
        views = {name: _sentinel_primary(hosts[name]) for name in SENTINELS}
        if set(views.values()) == {addresses[after]}:
            break
    else:
        pytest.fail(f"the converge settled on {after} ({addresses[after]}), the Sentinels name {views}")
    if after != before:
        failed_over = [name for name, count in _switches(hosts).items() if count > switches[name]]
        assert len(failed_over) * 2 > len(SENTINELS), \
            f"the primary moved from {before} to {after} without a Sentinel failover (logged by {failed_over})"
    for name, host in hosts.items():
        assert app(host, "GET", "verify:full-restart") == "kept", name


def test_ha_static_change_rolls_one_host_at_a_time_under_load(hosts, addresses):
    """A converge that needs restarts (tcp-backlog) restarts one host at a time, replicas first and the
    primary after a Sentinel failover: writes fail in one window only, the failover, and briefly."""
    before = _uptimes(hosts)
    # What a run cut off during a change of Sentinel's password leaves: the copy of Sentinel's old connection
    # file (mode 0600) that the run reaches the Sentinel with. The next run removes it.
    leftover = "/etc/redis-infra/connections/sentinel.toml.previous"
    planted = hosts[SENTINELS[-1]]
    planted.run_test(f"install -m 0600 /etc/redis-infra/connections/sentinel.toml {leftover}")
    with SentinelWriter(addresses) as writer:
        result = _converge("-e", "redis_server_tcp_backlog=1024")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert not planted.file(leftover).exists, "the copy of Sentinel's old connection file was left behind"
    assert _restarted(before, hosts, list(hosts)) == sorted(hosts), "not every instance restarted"
    started = sorted(time.time() - int(info(host, "server")["uptime_in_seconds"]) for host in hosts.values())
    assert all(later - earlier >= 1 for earlier, later in zip(started, started[1:], strict=False)), \
        f"instances restarted together: {started}"
    assert all(cli(host, "CONFIG", "GET", "tcp-backlog").splitlines()[-1] == "1024" for host in hosts.values())
    assert writer.acknowledged > 100
    # One outage, the failover (right after it the new primary has no replica attached for a moment,
    # so min-replicas-to-write answers NOREPLICAS); the replicas' restarts cost no write.
    assert len(writer.outages()) <= 1, (writer.outages(), sorted(set(writer.errors))[:5])
    # A SENTINEL FAILOVER plus the other replica's reattachment (NOREPLICAS meanwhile): 10.0 s measured.
    assert writer.longest < 15, f"longest write outage {writer.longest:.1f} s (errors: {writer.errors[:5]})"
    current_primary(hosts)


# A newer point release in every host's sources: Debian's security archive (Debian 12's Redis has
# fixes there that the release's main archive lacks).
SECURITY_SOURCES = "deb http://deb.debian.org/debian-security bookworm-security main"
UPGRADED = ("redis-server", "redis-tools", "redis-sentinel")
UNITS = ("redis-server@main.service", "redis-sentinel.service")


def _installed(host):
    shown = host.run("dpkg-query -W -f '${db:Status-Abbrev}\\t${Package}\\t${Version}\\n' " + " ".join(UPGRADED)).stdout
    rows = (line.split("\t") for line in shown.splitlines())
    return {fields[1]: fields[2] for fields in rows if fields[0].startswith("ii")}


def _started(host, unit):
    """When a unit's process started (monotonic clock of the host: comparable between its units)."""
    return int(host.check_output(f"systemctl show -p ExecMainStartTimestampMonotonic --value {unit}"))


def _stale(host):
    """Units of the host that started before dpkg last installed one of the engine's packages (the mtime of
    its file list): they run a binary that the upgrade replaced."""
    lists = " ".join(f"/var/lib/dpkg/info/{package}.list" for package in UPGRADED)
    installed = int(host.check_output(f"stat -c %Y {lists} | sort -n | tail -1"))
    start = 'date -d "$(systemctl show -p ExecMainStartTimestamp --value {})" +%s'
    started = {unit: int(host.check_output(start.format(unit))) for unit in UNITS}
    return [unit for unit, moment in started.items() if moment < installed]


def _unit_started_now(name, unit):
    shown = subprocess.run(["docker", "exec", name, "systemctl", "show", "-p", "ExecMainStartTimestampMonotonic",
                            "--value", unit], capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    return int(shown) if shown.isdigit() else 0


def _playbook_cut_off(path, names, unit, started, timeout=600):
    """Runs a playbook and kills it with everything it started (SIGKILL to its process group: a controller
    that died or lost its terminal) as soon as `unit` restarted on one of the hosts `names`. Returns that
    host (None if none did), the playbook's exit status and its output."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(["ansible-playbook", "-i", INVENTORY, str(path)], stdout=out, stderr=subprocess.STDOUT,
                                text=True, env=env, start_new_session=True)
        cut, deadline = None, time.monotonic() + timeout
        try:
            while cut is None and proc.poll() is None and time.monotonic() < deadline:
                cut = next((name for name in names if _unit_started_now(name, unit) > started[name]), None)
                time.sleep(0.3)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        out.seek(0)
        return cut, proc.returncode, out.read()


def test_ha_upgrade_rolls_the_new_packages_replicas_first_under_load(hosts, addresses):
    """playbooks/upgrade.yml once a newer point release is in the sources: check mode says what it would
    do and changes nothing; the run takes a backup, installs the packages on every host with every
    service running on, restarts the replicas first and the primary after a Sentinel failover, then the
    Sentinels one at a time: one write outage, no write a replica acknowledged lost, one primary, and
    nothing runs a replaced binary. A run killed after the first replica's restart is finished by the
    next one, which restarts nothing twice. A downgrade is refused before anything changes; a re-run
    changes nothing."""
    upgrade = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "upgrade.yml")
    for name in hosts:
        subprocess.run(["docker", "exec", name, "sh", "-c",
                        f"echo '{SECURITY_SOURCES}' >/etc/apt/sources.list.d/security.list"], check=True, timeout=30)
    before = {name: _installed(host) for name, host in hosts.items()}
    assert all(set(packages) == set(UPGRADED) for packages in before.values()), before
    units = UNITS
    started = {name: {unit: _started(host, unit) for unit in units} for name, host in hosts.items()}

    preview = _playbook(upgrade, "--check")
    said = re.sub(r"\s+", " ", preview.stdout + preview.stderr)
    assert preview.returncode == 0, said[-3000:]
    assert said.count("Upgrades redis-server=") == len(hosts), said[-3000:]
    assert {name: _installed(host) for name, host in hosts.items()} == before, "check mode installed packages"
    assert {name: {unit: _started(host, unit) for unit in units} for name, host in hosts.items()} == started

    primary = current_primary(hosts)
    status = "/var/lib/redis-infra/backup-status/main.json"
    def backup_time(host):
        return int(host.run(f"stat -c %Y {status} || echo 0").stdout.split()[0])

    backed_up = {name: backup_time(host) for name, host in hosts.items()}
    replicas = [name for name in hosts if name != primary]
    with DurableWriter(addresses, "verify:upgrade", wait=True) as writer:
        # The first run is cut off (killed) once a replica has restarted: the next run finishes the upgrade
        # from what the hosts have and run, and restarts nothing twice.
        cut, cut_rc, said = _playbook_cut_off(upgrade, replicas, units[0],
                                              {name: started[name][units[0]] for name in replicas})
        assert cut and cut_rc == -signal.SIGKILL, f"the run was not cut off after a replica's restart: {said[-3000:]}"
        restarted_before_cut = _unit_started_now(cut, units[0])
        result = _playbook(upgrade)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert _unit_started_now(cut, units[0]) == restarted_before_cut, f"{cut} restarted again after the cut"
    after = {name: _installed(host) for name, host in hosts.items()}
    target = after[primary]["redis-server"]
    assert all(set(packages.values()) == {target} for packages in after.values()), after
    assert target != before[primary]["redis-server"], f"nothing was upgraded: {after}"
    assert all(backup_time(host) > backed_up[name] for name, host in hosts.items()), "no backup taken"
    assert not any(_stale(host) for host in hosts.values()), "something still runs a replaced binary"
    restarted = {name: {unit: _started(host, unit) for unit in units} for name, host in hosts.items()}
    assert all(restarted[name][unit] > started[name][unit] for name in hosts for unit in units), restarted
    # Replicas first, the old primary last, then the Sentinels (the containers share the kernel's
    # monotonic clock, so the hosts' start times compare).
    servers = sorted(hosts, key=lambda name: restarted[name][units[0]])
    assert servers[-1] == primary, f"restart order {servers}, the primary was {primary}"
    assert min(times[units[1]] for times in restarted.values()) > max(times[units[0]] for times in restarted.values())
    new_primary = current_primary(hosts)
    assert new_primary != primary, "the primary restarted in place"
    assert len(writer.acked) > 100, writer.errors[:5]
    lost = _missing(hosts, [key for key, _ in writer.acked])
    assert lost == [], f"{len(lost)} writes a replica had acknowledged were lost in the upgrade"
    moments = [moment for _, moment in writer.acked]
    longest = max(later - earlier for earlier, later in zip(moments, moments[1:], strict=False))
    print(f"upgrade: longest time between two acknowledged writes {longest:.1f} s")
    assert longest < 15, f"longest write outage {longest:.1f} s (errors: {writer.errors[:5]})"

    refused = _playbook(upgrade, "-e", f"redis_server_upgrade_version={before[primary]['redis-server']}")
    said = re.sub(r"\s+", " ", refused.stdout + refused.stderr)
    assert refused.returncode != 0 and "a downgrade is refused" in said, said[-2000:]
    assert {name: _installed(host) for name, host in hosts.items()} == after
    rerun = _playbook(upgrade)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", rerun.stdout, re.MULTILINE)
    assert len(recap) == len(hosts) and all(count == "0" for _, count in recap), recap
    assert current_primary(hosts) == new_primary


ROTATED = {
    "redis_server_password": "rotated-app-password-0123456789abcdefgh",
    "redis_server_admin_password": "rotated-admin-password-0123456789abcdefgh",
    "redis_server_monitor_password": "rotated-monitor-password-0123456789abcdefgh",
    "redis_server_backup_password": "rotated-backup-password-0123456789abcdefgh",
    "redis_server_replication_password": "rotated-replication-password-0123456789abcdefgh",
    "redis_server_sentinel_password": "rotated-sentinel-acl-password-0123456789abcdefgh",
    "redis_sentinel_auth_password": "rotated-sentinel-acl-password-0123456789abcdefgh",
    "redis_sentinel_password": "rotated-sentinel-client-password-0123456789abcdefgh",
}


@contextlib.contextmanager
def working_passwords(hosts):
    """The rotation test below leaves every user on its rotated password: the helpers (cli, sentinel, info) read
    the passwords from VARIABLES, so the modules that run after it get the ones that work, and the old ones back
    after. Yields the passwords that differ from the inventory's ({} when none): playbooks need them as extra vars."""
    saved = dict(VARIABLES)
    host = hosts[REDIS_HOSTS[0]]
    rotated = ROTATED["redis_server_admin_password"]
    if cli(host, "PING") != "PONG" and cli(host, "PING", password=rotated) == "PONG":
        VARIABLES.update(ROTATED)
    try:
        yield {name: value for name, value in VARIABLES.items() if saved.get(name) != value}
    finally:
        VARIABLES.clear()
        VARIABLES.update(saved)


class HealthWatch:
    """Polls every host's health checker (on its loopback, through docker exec) until stopped: the
    statuses seen, so that a test can say none turned unhealthy."""

    QUERY = checker.script(VARIABLES, "/api/health")  # 503: unhealthy; the body says so as well

    def __init__(self):
        import threading
        self.seen, self.stop = {name: set() for name in REDIS_HOSTS}, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        end = time.monotonic() + 900
        while not self.stop.is_set() and time.monotonic() < end:
            for name in REDIS_HOSTS:
                result = subprocess.run(["docker", "exec", name, "python3", "-c", self.QUERY],
                                        capture_output=True, text=True, timeout=10, check=False)
                body = result.stdout.partition("\n")[2]
                try:
                    status = json.loads(body).get("status")
                except ValueError:
                    status = None
                self.seen[name].add(status or f"no answer: {result.stderr.strip()[-80:]}")
            self.stop.wait(2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(20)


def test_ha_password_rotation_in_two_phases_keeps_clients_and_replication_connected(hosts, addresses):
    """playbooks/rotate_credentials.yml under a writer: phase 1 (every user keeps its old password beside
    the new one on every node, the project's clients move to the new one), then phase 2 (the old ones
    removed). Connections made before stay connected, the old password works in phase 1 and is refused
    after phase 2, the replication links never go down, no health checker turns unhealthy, and a re-run
    changes nothing."""
    import redis
    rotate = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "rotate_credentials.yml")
    primary = current_primary(hosts)
    replicas = [name for name in hosts if name != primary]
    held = redis.Redis(host=addresses[primary], port=PORT, password=VARIABLES["redis_server_password"],
                       single_connection_client=True, decode_responses=True, socket_timeout=5, **TLS)
    held_id = held.client_id()
    full_syncs = info(hosts[primary], "stats")["sync_full"]
    previous = {"default": VARIABLES["redis_server_password"], "admin": VARIABLES["redis_server_admin_password"],
                "monitor": VARIABLES["redis_server_monitor_password"],
                "backup": VARIABLES["redis_server_backup_password"],
                "replication": VARIABLES["redis_server_replication_password"],
                "sentinel": VARIABLES["redis_server_sentinel_password"]}
    # Passwords only: the static-change test left tcp-backlog at 1024, and a rotation in the same run as rolling
    # restarts is not supported yet (Sentinel would lose the restarted replicas until sentinel.yml runs).
    phase_1 = dict(ROTATED, redis_server_tcp_backlog=1024, redis_server_previous_passwords=previous,
                   redis_sentinel_previous_password=VARIABLES["redis_sentinel_password"], rotate_phase="add")
    phase_2 = dict(phase_1, redis_server_previous_passwords={}, redis_sentinel_previous_password="",
                   rotate_phase="finish")

    def new(host, *args, **kwargs):
        return cli(host, *args, password=ROTATED["redis_server_admin_password"], **kwargs)

    with Writer(addresses[primary]) as writer, HealthWatch() as health:
        result = _playbook(rotate, "-e", json.dumps(phase_1))
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-3000:]
        # Phase 1: both passwords of every user work on every node.
        for name, host in hosts.items():
            assert app(host, "PING") == "PONG", f"{name}: the old application password stopped working in phase 1"
            assert cli(host, "PING", user=None, password=ROTATED["redis_server_password"]) == "PONG", name
            assert cli(host, "PING") == "PONG" and new(host, "PING") == "PONG", f"{name}: admin's old or new password"
        for name in SENTINELS:
            assert sentinel(hosts[name], "PING") == "PONG", f"{name}: Sentinel's old password refused in phase 1"
            assert cli(hosts[name], "PING", user=None, password=ROTATED["redis_sentinel_password"],
                       port=SENTINEL_PORT) == "PONG", f"{name}: Sentinel's new password does not work in phase 1"
        result = _playbook(rotate, "-e", json.dumps(phase_2))
        output += result.stdout + result.stderr
        assert result.returncode == 0, output[-3000:]
    for secret in ROTATED.values():
        assert secret not in output, "a new password appears in the output"
    assert held.client_id() == held_id and held.set("verify:rotation", "held"), "the open connection was dropped"
    assert not writer.errors, writer.errors[:5]
    assert all(seen and "unhealthy" not in seen for seen in health.seen.values()), health.seen
    assert new(hosts[primary], "INFO", "stats").split("sync_full:")[1].split()[0] == full_syncs, "a replica resynced"
    for name in replicas:
        state = new(hosts[name], "INFO", "replication")
        assert "master_link_status:up" in state and "master_link_down_since" not in state, (name, state)
    for name, host in hosts.items():
        assert "WRONGPASS" in app(host, "PING"), f"{name}: the old application password works after phase 2"
        assert "WRONGPASS" in cli(host, "PING"), f"{name}: the old admin password works after phase 2"
    assert cli(hosts[primary], "PING", user=None, password=ROTATED["redis_server_password"]) == "PONG"
    for name in SENTINELS:
        assert "WRONGPASS" in sentinel(hosts[name], "PING"), f"{name}: the old Sentinel password still works"
        # The copy of the connection file that reached the Sentinel with its old password is gone.
        left = hosts[name].run("ls /etc/redis-infra/connections/ | grep '^sentinel\\.toml.' || true").stdout.split()
        assert not left, f"{name}: copies of Sentinel's connection file left behind: {left}"
        assert cli(hosts[name], "PING", user=None, password=ROTATED["redis_sentinel_password"],
                   port=SENTINEL_PORT) == "PONG"
    # The Sentinels still reach each other once their links are made again: each presents the new password
    # (sentinel-pass), not the requirepass it started with, which the old password stays in until a restart.
    for name in SENTINELS:
        cli(hosts[name], "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes", user=None,
            password=ROTATED["redis_sentinel_password"], port=SENTINEL_PORT)
    time.sleep(DOWN_AFTER_MS / 1000 + 3)
    for name in SENTINELS:
        peers = cli(hosts[name], "SENTINEL", "SENTINELS", NAME, user=None,
                    password=ROTATED["redis_sentinel_password"], port=SENTINEL_PORT)
        quorum = cli(hosts[name], "SENTINEL", "CKQUORUM", NAME, user=None,
                     password=ROTATED["redis_sentinel_password"], port=SENTINEL_PORT)
        assert "s_down" not in peers and f"OK {len(SENTINELS)} usable" in quorum, (name, peers, quorum)
    wrong_phase = _playbook(rotate, "-e", json.dumps(dict(phase_2, rotate_phase="add")))
    said = re.sub(r"\s+", " ", wrong_phase.stdout + wrong_phase.stderr)
    assert wrong_phase.returncode != 0 and "rotate_phase must be add" in said, said[-2000:]
    rerun = _playbook(rotate, "-e", json.dumps(phase_2))
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", rerun.stdout, re.MULTILINE)
    assert recap and all(count == "0" for _, count in recap), recap
