"""Every role's preflight on the controller: bad input is refused naming its variable, good input passes.

One ansible-playbook run for all cases: each case is an inventory host of its own (connection local) with
faked facts (a Debian 12 host with 4 vCPUs and 8 GiB), running the role's argument validation and its
preflight tasks only, which change nothing. The Molecule bad-input cases
(molecule/shared/tests/test_redis_server.py) run here too, so that a case that passes only by accident
of one host shows up before Molecule.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "molecule/shared/tests"))

from preflight_cases import FAILURE_MESSAGE  # noqa: E402
from test_redis_server import BAD_INPUT, DEBIAN12_ONLY  # noqa: E402

from redis_infra.health.config import THRESHOLD_DEFAULTS  # noqa: E402
from tests.role import task_named  # noqa: E402
from tests.role.catalog import PROFILES, RULES  # noqa: E402

ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
FACTS = {"distribution": "Debian", "distribution_major_version": "12", "processor_vcpus": 4, "memtotal_mb": 8192,
         "default_ipv4": {"address": "10.0.0.5"}, "virtualization_role": "host", "virtualization_type": "kvm"}
LONG = "-for-the-fast-preflight-tests-0123456789"
DEVELOPMENT = {"redis_server_profile": "development", "redis_server_admin_password": "admin" + LONG,
               "redis_server_monitor_password": "monitor" + LONG}
PRODUCTION = dict(DEVELOPMENT, redis_server_profile="production", redis_server_password="app" + LONG,
                  redis_server_backup_password="backup" + LONG)
SENTINEL = dict(PRODUCTION, redis_sentinel_password="sentinel-client" + LONG,
                redis_sentinel_auth_password="sentinel-acl" + LONG)
# A topology of the case's host and one replica the plays never reach (fast_primary: the case's host).
TOPOLOGY = {"redis_server_primary_group": "fast_primary", "redis_server_replica_group": "fast_replicas",
            "redis_server_replication_password": "replication" + LONG}

# A Redis Cluster of the case's host alone (fast_cluster: a group of its own), three nodes on it.
CLUSTER = {"redis_server_cluster_group": "fast_cluster", "redis_server_replication_password": "replication" + LONG,
           "redis_server_instances": [{"name": "a", "port": 7000}, {"name": "b", "port": 7001},
                                      {"name": "c", "port": 7002}]}

# Health checkers the monitoring cases scrape: inventory hosts that only say where their checker listens
# (what redis_health's tasks/endpoint.yml publishes).
CHECKERS = {
    "fast-checker": {"redis_health_endpoint": {"address": "10.0.0.7", "port": 9122, "scheme": "https",
                                               "ca": "-----BEGIN CERTIFICATE-----", "users": ["prometheus"]},
                     "redis_health_basic_auth_users": {"prometheus": "health" + LONG}},
    "fast-loopback-checker": {"redis_health_endpoint": {"address": "127.0.0.1", "port": 9122, "scheme": "http",
                                                        "ca": "", "users": []}},
}
MONITORING = {"redis_monitoring_targets": ["fast-checker"]}

# (case, role, variable the message must name, variables, inventory the case runs against)
REFUSED = [
    ("a cluster whose replicas would share their primary's host", "redis_server", "redis_server_cluster_replicas",
     dict(CLUSTER, redis_server_cluster_replicas=1,
          redis_server_instances=[{"name": n, "port": 7000 + i, "maxmemory": "512mb"} for i, n in enumerate("abcdef")]),
     PRODUCTION),
    ("a cluster of three nodes with a replica each", "redis_server", "redis_server_cluster_replicas",
     dict(CLUSTER, redis_server_cluster_replicas=1), PRODUCTION),
    ("a cluster host in the replication topology too", "redis_server", "redis_server_cluster_group",
     dict(CLUSTER, redis_server_cluster_replicas=0, **TOPOLOGY), PRODUCTION),
    ("a cluster node whose bus port would pass 65535", "redis_server", "redis_server_instances",
     dict(CLUSTER, redis_server_cluster_replicas=0,
          redis_server_instances=[{"name": "a", "port": 7000}, {"name": "b", "port": 7001},
                                  {"name": "c", "port": 60000}]), PRODUCTION),
    ("a cluster without a replication password", "redis_server", "redis_server_replication_password",
     dict(CLUSTER, redis_server_cluster_replicas=0, redis_server_replication_password=""), PRODUCTION),
    ("min-replicas above the replica count", "redis_server", "redis_server_min_replicas_to_write",
     dict(TOPOLOGY, redis_server_min_replicas_to_write=2), PRODUCTION),
    ("Sentinel ACL password other than the one Sentinel logs in with", "redis_server", "redis_server_sentinel_password",
     dict(TOPOLOGY, redis_server_sentinel=True, redis_server_sentinel_group="redis_sentinel",
          redis_server_sentinel_password="sentinel-acl" + LONG, redis_sentinel_auth_password="other" + LONG),
     PRODUCTION),
    ("a start hook wait of two minutes", "redis_server", "redis_server_sentinel_start_wait",
     dict(TOPOLOGY, redis_server_sentinel=True, redis_server_sentinel_group="redis_sentinel",
          redis_server_sentinel_password="sentinel-acl" + LONG, redis_server_sentinel_start_wait=120), PRODUCTION),
    ("a Sentinel port above 65535", "redis_server", "redis_server_sentinel_port",
     dict(TOPOLOGY, redis_server_sentinel=True, redis_server_sentinel_group="redis_sentinel",
          redis_server_sentinel_password="sentinel-acl" + LONG, redis_sentinel_port=70000), PRODUCTION),
    ("Sentinel ACL password with a quote", "redis_server", "redis_server_sentinel_password",
     dict(TOPOLOGY, redis_server_sentinel=True, redis_server_sentinel_group="redis_sentinel",
          redis_server_sentinel_password="sentinel-acl-it's" + LONG), PRODUCTION),
    ("maxmemory of two instances above the RAM", "redis_server", "redis_server_maxmemory",
     {"redis_server_instances": [{"name": "main", "port": 6379, "maxmemory": "5gb"},
                                 {"name": "cache", "port": 6380, "maxmemory": "4gb"}]}, PRODUCTION),
    ("an io-threads word", "redis_server", "redis_server_io_threads", {"redis_server_io_threads": "many"}, DEVELOPMENT),
    ("a rename without a value", "redis_server", "redis_server_rename_commands",
     {"redis_server_rename_commands": {"FLUSHALL": None}}, DEVELOPMENT),
    ("config_extra a list", "redis_server", "redis_server_config_extra",
     {"redis_server_config_extra": ["hz 10"]}, DEVELOPMENT),
    ("an ACL user with an unknown field", "redis_server", "redis_server_acl_users",
     {"redis_server_acl_users": [{"name": "app2", "password": "app2" + LONG, "rules": "+@read ~*", "rule": "x"}]},
     DEVELOPMENT),
    ("a short password of the second extra ACL user", "redis_server", "redis_server_acl_users[worker2].password",
     {"redis_server_acl_users": [{"name": "worker1", "password": "worker1" + LONG, "rules": "+@list"},
                                 {"name": "worker2", "password": "short", "rules": "+@list"}]}, PRODUCTION),
    ("a previous password for a user that does not exist", "redis_server", "redis_server_previous_passwords",
     {"redis_server_previous_passwords": {"nobody": "old" + LONG}}, PRODUCTION),
    ("a previous password that is the current one", "redis_server", "redis_server_previous_passwords",
     {"redis_server_previous_passwords": {"admin": "admin" + LONG}}, PRODUCTION),
    ("provided TLS certificates without a key", "redis_server", "redis_server_tls_private_key",
     {"redis_server_tls_certificates": "provided",
      "redis_server_tls_certificate": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----",
      "redis_server_tls_ca_certificates": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----"}, PRODUCTION),
    ("a renewal window longer than a certificate lives", "redis_server", "redis_server_tls_renew_days",
     {"redis_server_tls_renew_days": 400}, PRODUCTION),
    # redis_health
    ("health degraded memory above the default unhealthy", "redis_health", "memory_degraded_percent",
     {"redis_health_thresholds": {"memory_degraded_percent": 97}}, DEVELOPMENT),
    ("health unhealthy ping below the default degraded", "redis_health", "ping_unhealthy_ms",
     {"redis_health_thresholds": {"ping_unhealthy_ms": 20}}, DEVELOPMENT),
    ("health threshold with an unknown name", "redis_health", "redis_health_thresholds",
     {"redis_health_thresholds": {"memory_degraded_pct": 70}}, DEVELOPMENT),
    ("health threshold as a word", "redis_health", "redis_health_thresholds",
     {"redis_health_thresholds": {"memory_degraded_percent": "high"}}, DEVELOPMENT),
    ("health percentage above 100", "redis_health", "redis_health_thresholds",
     {"redis_health_thresholds": {"clients_unhealthy_percent": 120}}, DEVELOPMENT),
    ("health threshold zero", "redis_health", "redis_health_thresholds",
     {"redis_health_thresholds": {"slowlog_threshold_ms": 0}}, DEVELOPMENT),
    ("health port on Sentinel's", "redis_health", "redis_health_listen_port",
     {"redis_health_listen_port": 26379}, DEVELOPMENT),
    ("health port on an instance's", "redis_health", "redis_health_listen_port",
     {"redis_health_listen_port": 6379}, DEVELOPMENT),
    ("health interval negative", "redis_health", "redis_health_interval", {"redis_health_interval": -30}, DEVELOPMENT),
    # redis_backup
    ("maintenance user without its password", "redis_maintenance", "redis_server_maintenance_password",
     {"redis_maintenance_user": "maintenance"}, PRODUCTION),
    ("maintenance as a user without the routine's commands", "redis_maintenance", "redis_maintenance_user",
     {"redis_maintenance_user": "monitor"}, PRODUCTION),
    ("backup minute 60", "redis_backup", "redis_backup_schedule", {"redis_backup_schedule": "60 2 * * *"}, PRODUCTION),
    ("backup hour 24", "redis_backup", "redis_backup_schedule", {"redis_backup_schedule": "0 24 * * *"}, PRODUCTION),
    ("backup day of month 0", "redis_backup", "redis_backup_schedule", {"redis_backup_schedule": "0 2 0 * *"},
     PRODUCTION),
    ("backup month 13", "redis_backup", "redis_backup_schedule", {"redis_backup_schedule": "0 2 * 13 *"}, PRODUCTION),
    ("backup weekday 8", "redis_backup", "redis_backup_schedule", {"redis_backup_schedule": "0 2 * * 8"}, PRODUCTION),
    ("backup range out of range", "redis_backup", "redis_backup_schedule",
     {"redis_backup_schedule": "0 22-25 * * *"}, PRODUCTION),
    ("backup step zero", "redis_backup", "redis_backup_schedule", {"redis_backup_schedule": "*/0 2 * * *"}, PRODUCTION),
    ("backup instance schedule out of range", "redis_backup", "redis_backup_instance_schedules[main]",
     {"redis_backup_instance_schedules": {"main": "0 2 32 * *"}}, PRODUCTION),
    ("backup instance schedules a list", "redis_backup", "redis_backup_instance_schedules",
     {"redis_backup_instance_schedules": ["0 2 * * *"]}, PRODUCTION),
    ("backup compression level with a letter", "redis_backup", "redis_backup_compression_level",
     {"redis_backup_compression_level": "6x"}, PRODUCTION),
    # redis_sentinel
    ("Sentinel bind as a string", "redis_sentinel", "redis_sentinel_bind", {"redis_sentinel_bind": "0.0.0.0"},  # noqa: S104
     SENTINEL),
    ("Sentinel on an instance's port", "redis_sentinel", "redis_sentinel_port", {"redis_sentinel_port": 6379},
     SENTINEL),
    ("Sentinel on the health checker's port", "redis_sentinel", "redis_sentinel_port", {"redis_sentinel_port": 9122},
     SENTINEL),
    ("Sentinel down-after negative", "redis_sentinel", "redis_sentinel_down_after_milliseconds",
     {"redis_sentinel_down_after_milliseconds": -5000}, SENTINEL),
    ("Sentinel parallel syncs zero", "redis_sentinel", "redis_sentinel_parallel_syncs",
     {"redis_sentinel_parallel_syncs": 0}, SENTINEL),
    ("Sentinel quorum zero", "redis_sentinel", "redis_sentinel_quorum", {"redis_sentinel_quorum": 0}, SENTINEL),
    ("Sentinel monitoring user named default", "redis_sentinel", "redis_sentinel_monitor_user",
     {"redis_sentinel_monitor_user": "default"}, SENTINEL),
    ("Sentinel monitoring password short in production", "redis_sentinel", "redis_sentinel_monitor_password",
     {"redis_sentinel_monitor_password": "short"}, SENTINEL),
    ("Sentinel monitoring password Sentinel's own", "redis_sentinel", "redis_sentinel_monitor_password",
     {"redis_sentinel_monitor_password": "sentinel-client" + LONG}, SENTINEL),
]
# The Molecule cases, against the production inventory most scenarios use (each case that needs the
# development profile sets it).
REFUSED += [(name, "redis_server", variable, variables, PRODUCTION)
            for name, variable, variables in BAD_INPUT + DEBIAN12_ONLY]

REFUSED += [
    ("monitoring: an alert duration for an alert that does not exist", "redis_monitoring",
     "redis_monitoring_alert_for", dict(MONITORING, redis_monitoring_alert_for={"RedisNoSuchAlert": "1m"}), {}),
    ("monitoring: a retention size without its unit", "redis_monitoring", "redis_monitoring_retention_size",
     dict(MONITORING, redis_monitoring_retention_size="2"), {}),
    ("monitoring: a route to a receiver that does not exist", "redis_monitoring", "redis_monitoring_routes",
     dict(MONITORING, redis_monitoring_routes=[{"receiver": "nobody"}]), {}),
    ("monitoring: a target whose checker listens on loopback only", "redis_monitoring", "redis_health_listen_address",
     {"redis_monitoring_targets": ["fast-loopback-checker"]}, {}),
]

# (case, role, variables, inventory): each must pass its role's preflight.
ACCEPTED = [
    ("development defaults", "redis_server", {}, DEVELOPMENT),
    ("production defaults", "redis_server", {}, PRODUCTION),
    ("the production inventory's instances and standalone min-replicas", "redis_server",
     {"redis_server_instances": [{"name": "main", "port": 6379, "maxmemory_policy": "noeviction"},
                                 {"name": "cache", "port": 6380, "maxmemory": "1gb", "maxmemory_policy": "allkeys-lru",
                                  "appendonly": False}],
      "redis_server_min_replicas_to_write": 1, "redis_server_min_replicas_max_lag": 10}, PRODUCTION),
    ("the valkey scenario's instances", "redis_server",
     {"redis_server_instances": [{"name": "main", "port": 6379},
                                 {"name": "cache", "port": 6380, "maxmemory": "256mb", "appendonly": False,
                                  "save": []}]}, PRODUCTION),
    ("the template test's overrides", "redis_server",
     {"redis_server_maxmemory": "512mb", "redis_server_appendfsync": "always", "redis_server_save": [],
      "redis_server_io_threads": 1, "redis_server_config_extra": {"hz": 20, "lazyfree-lazy-eviction": True},
      "redis_server_rename_commands": {"FLUSHALL": ""}}, PRODUCTION),
    ("values as -e passes them", "redis_server",
     {"redis_server_maxmemory": "1gb", "redis_server_timeout": "300", "redis_server_appendonly": "yes",
      "redis_server_io_threads": "auto", "redis_server_slowlog_log_slower_than": -1,
      "redis_server_config_extra": {"no-such-directive": "yes"}, "redis_server_start_timeout": 8}, DEVELOPMENT),
    ("an extra ACL user and an instance's own extra", "redis_server",
     {"redis_server_acl_users": [{"name": "app.worker-2", "password": "worker" + LONG, "rules": "~jobs:* +@list"}],
      "redis_server_instances": [{"name": "main", "port": 6379, "extra": {"notify-keyspace-events": "Ex"}}]},
     PRODUCTION),
    ("a rotation in phase 1 and TLS with required client certificates", "redis_server",
     {"redis_server_previous_passwords": {"default": "old-app" + LONG, "monitor": "old-monitor" + LONG},
      "redis_server_tls_auth_clients": "required"}, PRODUCTION),
    ("a cluster of three primaries on one host", "redis_server", dict(CLUSTER, redis_server_cluster_replicas=0,
                                                                     redis_server_cluster_node_timeout=5000),
     PRODUCTION),
    ("health defaults", "redis_health", {}, DEVELOPMENT),
    ("health partial thresholds in order with the defaults", "redis_health",
     {"redis_health_thresholds": {"memory_degraded_percent": 70, "last_save_degraded_seconds": 0,
                                  "ping_unhealthy_ms": 250.5}}, DEVELOPMENT),
    ("backup defaults", "redis_backup", {}, PRODUCTION),
    ("maintenance as the admin user", "redis_maintenance", {}, PRODUCTION),
    ("maintenance as the maintenance user", "redis_maintenance",
     {"redis_server_maintenance_password": "maintenance" + LONG}, PRODUCTION),
    ("backup schedules with ranges, steps, lists and names", "redis_backup",
     {"redis_backup_schedule": "*/15 1-5,22 * jan-mar mon-fri",
      "redis_backup_instance_schedules": {"main": "30 02 1,15 * 7"}}, PRODUCTION),
    ("Sentinel defaults", "redis_sentinel", {}, SENTINEL),
    ("Sentinel without the checker's user", "redis_sentinel", {"redis_sentinel_monitor_password": ""}, SENTINEL),
    ("Sentinel with the checker's user of its own", "redis_sentinel",
     {"redis_sentinel_monitor_user": "sentinel-monitor", "redis_sentinel_monitor_password": "sentinel-monitor" + LONG},
     SENTINEL),
    ("Sentinel with its own addresses and timings", "redis_sentinel",
     {"redis_sentinel_bind": ["127.0.0.1", "10.0.0.5"], "redis_sentinel_quorum": 1,
      "redis_sentinel_down_after_milliseconds": "3000"}, SENTINEL),
    ("monitoring defaults against a checker over TLS with basic auth", "redis_monitoring", MONITORING, {}),
    ("monitoring with alert durations, receivers and routes", "redis_monitoring",
     dict(MONITORING, redis_monitoring_alert_for={"RedisDown": "2m"}, redis_monitoring_webhook_url="https://hooks.example/x",
          redis_monitoring_receivers=[{"name": "mail", "email_configs": [{"to": "oncall@example.org"}]}],
          redis_monitoring_routes=[{"receiver": "mail", "matchers": ['severity="critical"']}]), {}),
]


ROLES = ("redis_server", "redis_health", "redis_backup", "redis_sentinel", "redis_monitoring", "redis_maintenance")


def role_play(role: str) -> dict:
    """The play of one role's cases: its argument validation (as a role run does it), then its preflight."""
    spec = f"{{{{ (lookup('ansible.builtin.file', '{ROOT}/roles/{role}/meta/argument_specs.yml') | from_yaml)" \
           ".argument_specs.main.options }}"
    tasks = [
        {"name": "Validate the arguments", "ansible.builtin.validate_argument_spec": {"argument_spec": spec}},
        {"ansible.builtin.include_role": {"name": f"redis_infra.redis.{role}", "tasks_from": "preflight"}},
        {"ansible.builtin.set_fact": {"__outcome": "accepted"}},
    ]
    if role == "redis_sentinel":
        # What playbooks/sentinel.yml's first play reports from the Redis hosts.
        tasks.insert(0, {"ansible.builtin.set_fact": {"redis_server_topology_model": {
            "main": {"address": "10.0.0.5", "port": 6379, "source": "inventory"}}}})
    rescue = [{"ansible.builtin.set_fact": {"__outcome": "{{ " + FAILURE_MESSAGE + " }}"}}]
    return {"name": f"Cases of {role}", "hosts": f"{role}_cases", "gather_facts": False,
            "vars": {"ansible_facts": FACTS}, "tasks": [{"block": tasks, "rescue": rescue}]}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    """{case: 'accepted' or the failure message}: each case is a host of its own, all run in parallel."""
    tmp = tmp_path_factory.mktemp("preflight")
    saved = tmp / "outcomes.json"
    cases = [(name, role, dict(base, **variables)) for name, role, _variable, variables, base in REFUSED]
    cases += [(name, role, dict(base, **variables)) for name, role, variables, base in ACCEPTED]
    # The host's probe in redis_server's preflight (packages, kernel values, fs.nr_open) runs here too; its
    # read of the distribution's unit needs systemd as PID 1, which this controller does not run.
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
             "redis_server_mask_distribution_service": False}
    hosts = {f"case-{i}": case for i, case in enumerate(cases)}
    # Each topology case is the one primary of a group of its own.
    primaries = {}
    for host, (_name, _role, variables) in hosts.items():
        if variables.get("redis_server_primary_group") == "fast_primary":
            variables["redis_server_primary_group"] = f"primary_{host}".replace("-", "_")
            primaries[variables["redis_server_primary_group"]] = {"hosts": {host: {}}}
    # Each cluster case is the one host of a cluster group of its own.
    for host, (_name, _role, variables) in hosts.items():
        if variables.get("redis_server_cluster_group") == "fast_cluster":
            variables["redis_server_cluster_group"] = f"cluster_{host}".replace("-", "_")
            primaries[variables["redis_server_cluster_group"]] = {"hosts": {host: {}}}
    groups = {f"{role}_cases": {"hosts": {host: dict(variables, **local)
                                          for host, (_name, of, variables) in hosts.items() if of == role}}
              for role in ROLES}
    sentinels = dict.fromkeys(groups["redis_sentinel_cases"]["hosts"], {})
    groups.update(primaries, redis={"hosts": sentinels}, redis_sentinel={"hosts": sentinels},
                  fast_replicas={"hosts": {"fast-replica": {"ansible_host": "10.0.0.6"}}})
    names = json.dumps(list(hosts))
    plays = [role_play(role) for role in ROLES]
    plays.append({"name": "Save the outcomes", "hosts": "localhost", "gather_facts": False, "tasks": [
        {"ansible.builtin.copy": {"content": f"{{{{ dict({names} | zip({names} | map('extract', hostvars,"
                                             " '__outcome'))) | to_json }}",
                                  "dest": str(saved), "mode": "0600"}}]})
    (tmp / "preflight.yml").write_text(json.dumps(plays))
    (tmp / "inventory.yml").write_text(json.dumps({"all": {"children": groups, "hosts": {"localhost": local,
                                                                                        **CHECKERS}}}))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_ROLES_PATH=str(ROOT / "roles"))
    result = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(tmp / "inventory.yml"), str(tmp / "preflight.yml")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    recorded = {hosts[host][0]: message for host, message in json.loads(saved.read_text()).items()}
    for secret in {value for base in (PRODUCTION, SENTINEL) for key, value in base.items() if "password" in key}:
        assert secret not in result.stdout, "a password was printed"
    return recorded


@pytest.mark.parametrize(("name", "variable"), [(case[0], case[2]) for case in REFUSED])
def test_bad_input_is_refused_naming_the_variable(outcomes, name, variable):
    assert outcomes[name] != "accepted", f"bad input was accepted: {name}"
    assert variable in outcomes[name], f"the message does not name {variable}: {outcomes[name]}"


@pytest.mark.parametrize("name", [case[0] for case in ACCEPTED])
def test_good_input_passes(outcomes, name):
    assert outcomes[name] == "accepted", outcomes[name]


def _task_vars(path: str, task_name: str) -> dict:
    return task_named(path, task_name)["vars"]


def test_every_setting_has_a_rule():
    assert set(RULES) == set(PROFILES["production"]) == set(PROFILES["development"])
    for name, rule in RULES.items():
        assert rule.get("type") in ("list", "bool", "memory", "choice", "int"), f"{name}: rule without a known type"


def test_health_preflight_knows_the_checkers_threshold_defaults():
    defaults = THRESHOLD_DEFAULTS
    role = _task_vars("roles/redis_health/tasks/preflight.yml",
                      "Check the health checker's settings, thresholds and exposure")
    assert role["__redis_health_defaults"] == defaults
    spec = yaml.safe_load((ROOT / "roles/redis_health/meta/argument_specs.yml").read_text())
    assert set(spec["argument_specs"]["main"]["options"]["redis_health_thresholds"]["options"]) == set(defaults)
