"""Every managed setting is one thing across the role: a key of both profiles, a role variable with an
argument spec, an instance override, and a directive in the rendered file that a real redis-server
loads with the value asked. Adding a setting without its test value here fails, naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
import yaml

from tests.conftest import REDIS_SERVER
from tests.role.catalog import PROFILES, RUNTIME_DIRECTIVES
from tests.role.catalog import SETTINGS as CATALOG
from tests.role.test_config_template import PASSWORDS, render, start_rendered

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = sorted(CATALOG)

# For every setting, a value unlike the development profile's (the one the test renders with) and
# what CONFIG GET returns for it (None: checked in the rendered file only, as bind, which the test moves).
DISTINCT = {
    "bind": (["127.0.0.1", "-::1", "127.0.0.2"], None),
    "protected_mode": (False, "no"),
    "maxmemory": ("123mb", str(123 * 1024**2)),
    "maxmemory_policy": ("volatile-ttl", "volatile-ttl"),
    "appendonly": (True, "yes"),
    "appendfsync": ("no", "no"),
    "save": (["1234 5", "77 8"], "1234 5 77 8"),
    "aof_use_rdb_preamble": (False, "no"),
    "tcp_backlog": (123, "123"),
    "tcp_keepalive": (77, "77"),
    "timeout": (33, "33"),
    "maxclients": (1234, "1234"),
    "io_threads": (2, "2"),
    "loglevel": ("warning", "warning"),
    "slowlog_log_slower_than": (4321, "4321"),
    "slowlog_max_len": (99, "99"),
    "latency_monitor_threshold": (77, "77"),
}


def test_both_profiles_manage_the_same_settings():
    """A key added to one profile only would be ignored (the settings are the production profile's keys)."""
    assert sorted(PROFILES["development"]) == SETTINGS


def test_the_catalog_and_the_argument_specs_agree():
    """The argument spec of each setting has the catalog's type and description (the catalog is the source)."""
    options = yaml.safe_load((ROOT / "roles/redis_server/meta/argument_specs.yml").read_text())[
        "argument_specs"]["main"]["options"]
    for setting, entry in CATALOG.items():
        spec = options[f"redis_server_{setting}"]
        assert spec["type"] == entry["type"], f"redis_server_{setting}: the spec's type is not the catalog's"
        assert spec["description"] == entry["description"], (
            f"redis_server_{setting}: the spec's description is not the catalog's: {entry['description']!r}")
        if entry["type"] == "list":
            assert spec.get("elements") == "str", f"redis_server_{setting}: a list of strings"
        assert set(entry) == {"type", "description", "rule", "live", "development", "production"}, setting
        assert isinstance(entry["live"], bool), f"{setting}: live is true or false"


def test_the_role_derives_from_the_catalog_what_the_tests_read(tmp_path):
    """Profiles, runtime directives, rules and names as Ansible derives them from the catalog."""
    rendered = render(tmp_path, {"redis_server_profile": "development"})
    derived = json.loads((rendered / "catalog.json").read_text())
    assert derived["profiles"]["development"] == PROFILES["development"]
    assert sorted(derived["profiles"]["production"]) == SETTINGS
    assert derived["runtime_directives"] == RUNTIME_DIRECTIVES
    assert derived["setting_names"] == list(CATALOG)
    assert sorted(derived["rules"]) == SETTINGS
    assert derived["rules"]["maxmemory_policy"]["choices"][0] == "noeviction", "the rule's choices are templated"
    # The instance model names each user's connection file: the one place its path is made.
    instance = json.loads((rendered / "instances.json").read_text())[0]
    assert instance["connection_files"] == {user: f"/etc/redis-infra/connections/main-{user}.toml"
                                            for user in ("admin", "monitor", "backup", "maintenance")}
    assert instance["backup_status_file"] == "/var/lib/redis-infra/backup-status/main.json"
    assert instance["replication_group"] is None and instance["expected_replicas"] is None, "not replicated"


def test_every_setting_is_a_role_variable_with_a_spec_that_defaults_to_the_profile():
    defaults = yaml.safe_load((ROOT / "roles/redis_server/defaults/main.yml").read_text())
    options = yaml.safe_load((ROOT / "roles/redis_server/meta/argument_specs.yml").read_text())[
        "argument_specs"]["main"]["options"]
    for setting in SETTINGS:
        variable = f"redis_server_{setting}"
        assert variable in defaults, f"{variable} is not in defaults/main.yml"
        assert defaults[variable] is None, f"{variable} must default to null (the profile's value)"
        assert variable in options, f"{variable} has no argument spec"
        description = options[variable]["description"]
        text = " ".join(description) if isinstance(description, list) else description
        assert "profile" in text, f"{variable}'s description does not say that null takes the profile's value"


def test_every_setting_has_a_distinct_test_value():
    assert sorted(DISTINCT) == SETTINGS, "add the new setting's test value to DISTINCT"
    for setting, (value, _shown) in DISTINCT.items():
        assert PROFILES["development"][setting] != value, f"{setting}: the test value is the development profile's"


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
@pytest.mark.parametrize("how", ["role variables", "instance overrides"])
def test_every_setting_reaches_the_rendered_file_and_the_server(tmp_path, how):
    values = {setting: value for setting, (value, _shown) in DISTINCT.items()}
    if how == "role variables":
        variables = {f"redis_server_{setting}": value for setting, value in values.items()}
    else:
        variables = {"redis_server_instances": [dict(name="main", port=6379, **values)]}
    rendered = render(tmp_path, {"redis_server_profile": "development", **variables})
    instance = json.loads((rendered / "instances.json").read_text())[0]
    text = (rendered / "main.conf").read_text()
    for setting, value in values.items():
        assert instance[setting] == value, f"{setting} did not reach the instance ({how})"
    assert "\nbind 127.0.0.1 -::1 127.0.0.2\n" in text, "bind did not reach the rendered file"
    server = start_rendered(tmp_path, rendered, "main")
    try:
        client = redis.Redis(port=server.port, username="admin", password=PASSWORDS["redis_server_admin_password"],
                             decode_responses=True)
        for setting, (_value, shown) in DISTINCT.items():
            if shown is None:
                continue
            directive = setting.replace("_", "-")
            assert client.config_get(directive) == {directive: shown}, f"{directive} ({how})"
    finally:
        server.stop()


def test_the_model_names_the_replication_group_and_the_replicas_to_expect(tmp_path):
    """A host of the replication groups (here the only host, as primary): what the health checker reports."""
    rendered = render(tmp_path, {"redis_server_profile": "development", "redis_server_primary_group": "all"})
    instance = json.loads((rendered / "instances.json").read_text())[0]
    assert (instance["replication_group"], instance["expected_replicas"]) == ("all.main", 0)
