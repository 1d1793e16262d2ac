"""The role's filters, and its list of runtime-changeable directives checked against a real server."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest
import redis
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins/filter"))

from redis_conf import redis_conf_changes, redis_conf_parse, redis_memory_bytes, redis_server_plan  # noqa: E402

from tests.role.catalog import RUNTIME_DIRECTIVES  # noqa: E402


@pytest.mark.parametrize(("value", "expected"), [
    ("2gb", 2 * 1024**3), ("2GB", 2 * 1024**3), ("512mb", 512 * 1024**2), ("1g", 10**9), ("100k", 100_000),
    ("0", 0), (1024, 1024), ("2 gigs", None), ("lots", None), ("-1", None), ("", None), (True, None),
])
def test_memory_sizes_parse_like_redis(value, expected):
    assert redis_memory_bytes(value) == expected


def test_config_parse_handles_quotes_and_repeats():
    parsed = redis_conf_parse('# comment\nsave ""\nbind 127.0.0.1 -::1\nrename-command FLUSHALL ""\n'
                              'rename-command KEYS "hidden keys"\n')
    assert parsed["save"] == [[""]]
    assert parsed["bind"] == [["127.0.0.1", "-::1"]]
    assert parsed["rename-command"] == [["FLUSHALL", ""], ["KEYS", "hidden keys"]]


def test_config_changes_name_new_changed_and_removed_directives():
    old = "port 6379\nmaxmemory 1gb\nsave 900 1\n"
    new = "maxmemory 2gb\nsave 900 1 300 10\nappendonly yes\n"
    assert redis_conf_changes(old, new) == {"port": None, "maxmemory": "2gb", "save": "900 1 300 10",
                                           "appendonly": "yes"}
    assert redis_conf_changes(old, old) == {}


def _results(changed_conf, before, after, active=True, dropin=False, acl=False):
    b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    return {
        "services": {"redis-server@main.service": {"state": "running" if active else "stopped"}},
        "before": [{"content": b64(before)} if before is not None else {}],
        "after": [{"content": b64(after)}],
        "conf": [{"changed": changed_conf}],
        "dropin": [{"changed": dropin}],
        "acl": [{"changed": acl}],
    }


INSTANCE = [{"name": "main", "unit": "redis-server@main.service", "log_file": "/var/log/redis/x.log"}]
RUNTIME = ["maxmemory", "save"]


def test_plan_applies_runtime_changes_live():
    results = _results(True, "maxmemory 1gb\n", "maxmemory 2gb\n", acl=True)
    plan = redis_server_plan(INSTANCE, results, RUNTIME, "/c/{name}.toml")
    assert plan[0]["restart"] is False
    assert plan[0]["runtime"] == [["CONFIG", "SET", "maxmemory", "2gb"]]
    assert plan[0]["acl_load"] is True
    assert plan[0]["connection_file"] == "/c/main.toml"


def test_plan_restarts_for_static_changes_removals_and_unit_changes():
    results = _results(True, "port 1\nmaxmemory 1gb\n", "port 2\nmaxmemory 2gb\n")
    static = redis_server_plan(INSTANCE, results, RUNTIME, "{name}")
    assert static[0]["restart"] and static[0]["runtime"] == [] and static[0]["why"] == ["port"]
    removed = redis_server_plan(INSTANCE, _results(True, "maxmemory 1gb\nhz 5\n", "maxmemory 1gb\n"), RUNTIME, "{name}")
    assert removed[0]["restart"] and removed[0]["why"] == ["hz"]
    unit = redis_server_plan(INSTANCE, _results(False, "x 1\n", "x 1\n", dropin=True), RUNTIME, "{name}")
    assert unit[0]["restart"]


def test_plan_leaves_stopped_instances_to_start_with_the_new_files():
    results = _results(True, "port 1\n", "port 2\n", active=False, acl=True)
    plan = redis_server_plan(INSTANCE, results, RUNTIME, "{name}")
    assert plan[0] | {"restart": False, "runtime": [], "acl_load": False} == plan[0]


def test_runtime_directives_are_settable_at_runtime(redis_factory):
    runtime = RUNTIME_DIRECTIVES
    server = redis_factory()
    client = redis.Redis(port=server.port, decode_responses=True)
    for directive in runtime:
        current = client.config_get(directive)
        assert directive in current, f"{directive} is not a directive of this server"
        assert client.config_set(directive, current[directive]), directive


def test_argument_specs_and_defaults_list_the_same_variables():
    defaults = yaml.safe_load((ROOT / "roles/redis_server/defaults/main.yml").read_text())
    specs = yaml.safe_load((ROOT / "roles/redis_server/meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options)
    for name, spec in options.items():
        assert spec.get("description"), f"{name} has no description"


def test_tool_users_get_exactly_what_the_tools_declare():
    from redis_infra import backup, health, maintenance

    defaults = yaml.safe_load((ROOT / "roles/redis_server/defaults/main.yml").read_text())
    assert defaults["redis_server_monitor_acl"].split() == health.REQUIRED_ACL.split()
    assert defaults["redis_server_backup_acl"].split() == backup.REQUIRED_ACL.split()
    assert defaults["redis_server_maintenance_acl"].split() == maintenance.REQUIRED_ACL.split()


@pytest.mark.parametrize(("facts", "expected"), [
    ({"virtualization_role": "guest", "virtualization_type": "docker"}, True),
    ({"virtualization_role": "guest", "virtualization_type": "systemd-nspawn"}, True),
    ({"virtualization_role": "guest", "virtualization_type": "kvm"}, False),
    ({"virtualization_role": "host", "virtualization_type": "docker"}, False),
    ({}, False),
    (None, False),
])
def test_container_detection_is_one_filter_both_roles_use(facts, expected):
    from redis_host import redis_is_container

    assert redis_is_container(facts) is expected


def test_certificate_names_are_dns_or_ip_entries_each_once():
    from redis_host import redis_tls_subject_alt_names

    names = ["redis-1", "Redis-1.example.org", "", None, "127.0.0.1", "::1", "-::1", "10.0.0.5", "10.0.0.5",
             "redis-1", "localhost"]
    assert redis_tls_subject_alt_names(names) == [
        "DNS:redis-1", "DNS:redis-1.example.org", "IP:127.0.0.1", "IP:::1", "IP:10.0.0.5", "DNS:localhost"]


@pytest.mark.parametrize(("units", "expected"), [
    ({"redis-server@main.service": {"state": "running", "status": "enabled"}}, False),
    ({"redis-server@main.service": {"state": "running", "status": "disabled"}}, True),
    ({"redis-server@main.service": {"state": "stopped", "status": "enabled"}}, True),
    ({"redis-server@main.service": {"state": "failed", "status": "enabled"}}, True),
    ({"redis-server@main.service": {}}, True),
    ({"other.service": {"state": "running", "status": "enabled"}}, True),
    ({}, True),
    (None, True),
])
def test_a_unit_needs_a_start_unless_it_runs_and_is_enabled(units, expected):
    """The one test that the server, Sentinel, health and backup roles make before systemd_service."""
    from redis_host import redis_unit_needs_start

    assert redis_unit_needs_start(units, "redis-server@main.service") is expected


def test_local_paths_to_fix_names_what_is_missing_of_the_other_kind_or_of_another_mode(tmp_path):
    """What the private CA's tasks test before they run (roles/redis_server/tasks/tls.yml)."""
    # Loaded under a name of its own: plugins/modules has a redis_files.py too (tests/role/test_files_module.py).
    import importlib.util

    spec = importlib.util.spec_from_file_location("redis_files_filter_plugin", ROOT / "plugins/filter/redis_files.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    redis_local_paths_to_fix = loaded.redis_local_paths_to_fix
    ca = tmp_path / "ca"
    wanted = {f"{ca}/": "0700", f"{ca}/hosts/": "0700", f"{ca}/ca.key": "0600", f"{ca}/ca.crt": "0644"}
    assert redis_local_paths_to_fix(wanted) == [str(ca), f"{ca}/hosts", f"{ca}/ca.key", f"{ca}/ca.crt"]
    (ca / "hosts").mkdir(parents=True)
    ca.chmod(0o700)
    (ca / "hosts").chmod(0o700)
    (ca / "ca.key").write_text("key")
    (ca / "ca.key").chmod(0o600)
    (ca / "ca.crt").write_text("cert")
    (ca / "ca.crt").chmod(0o644)
    assert redis_local_paths_to_fix(wanted) == []
    (ca / "ca.key").chmod(0o644)  # a key copied back with the wrong mode is corrected by the next run
    assert redis_local_paths_to_fix(wanted) == [f"{ca}/ca.key"]
    assert redis_local_paths_to_fix({f"{ca}/ca.crt/": "0644", f"{ca}/hosts": "0700"}) == [f"{ca}/ca.crt", f"{ca}/hosts"]
    with pytest.raises(Exception, match="not a mapping"):
        redis_local_paths_to_fix([str(ca)])
