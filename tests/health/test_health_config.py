"""Config file validation: every bad file is one clear line naming the key, exit code 2, no traceback."""

from __future__ import annotations

import pytest
from health_helpers import run_cli

from redis_infra.health import DEFAULT_LISTEN_PORT
from redis_infra.health.config import THRESHOLD_DEFAULTS, ConfigError, load_config, parse_config

MINIMAL = '[[instances]]\nname = "main"\nconnection_file = "/etc/redis-infra/main.toml"\n'


def test_defaults():
    config = parse_config(MINIMAL)
    assert config.listen_address == "127.0.0.1"
    assert config.listen_port == DEFAULT_LISTEN_PORT == 9122
    assert config.interval == 30
    assert config.timeout == 5
    assert config.webhook is None
    assert config.thresholds.memory_degraded_percent == 80
    assert config.thresholds.memory_unhealthy_percent == 95
    assert config.thresholds.slowlog_threshold_ms == 100
    assert config.thresholds.values == THRESHOLD_DEFAULTS
    (instance,) = config.instances
    assert (instance.name, instance.backup_status_file, instance.max_backup_age) == ("main", None, None)


def test_full_config():
    config = parse_config("""
listen_address = "::1"
listen_port = 9200
interval = 10
timeout = 2.5
log_level = "debug"
[thresholds]
memory_degraded_percent = 70
ping_unhealthy_ms = 250
[webhook]
url = "http://127.0.0.1:9999/hook"
timeout = 2
retries = 5
[[instances]]
name = "main"
connection_file = "/a.toml"
backup_status_file = "/b.json"
max_backup_age = 3600
replication_group = "grp"
expected_replicas = 2
[[instances]]
name = "cache"
connection_file = "/c.toml"
""")
    assert (config.listen_address, config.listen_port, config.interval, config.timeout) == ("::1", 9200, 10, 2.5)
    assert config.thresholds.memory_degraded_percent == 70
    assert config.thresholds.memory_unhealthy_percent == 95
    assert config.webhook.url == "http://127.0.0.1:9999/hook"
    assert (config.webhook.timeout, config.webhook.retries) == (2, 5)
    assert [i.name for i in config.instances] == ["main", "cache"]
    assert config.instances[0].max_backup_age == 3600
    assert config.instances[0].expected_replicas == 2


def test_timeout_defaults_to_interval_when_shorter():
    assert parse_config("interval = 2\n" + MINIMAL).timeout == 2


@pytest.mark.parametrize(("text", "expected"), [
    ("listen_port = 70000\n" + MINIMAL, "key 'listen_port' must be at most 65535, got 70000"),
    ('listen_port = "9122"\n' + MINIMAL, "key 'listen_port' must be an integer, got string"),
    ("interval = 0\n" + MINIMAL, "key 'interval' must be greater than 0"),
    ("interval = true\n" + MINIMAL, "key 'interval' must be a number, got boolean"),
    ('log_level = "loud"\n' + MINIMAL, "key 'log_level' must be one of"),
    ("colour = 1\n" + MINIMAL, "unknown key 'colour'"),
    ("[thresholds]\nmemory_degraded_pct = 1\n" + MINIMAL, "unknown key 'thresholds.memory_degraded_pct'"),
    ('[thresholds]\nmemory_degraded_percent = "80"\n' + MINIMAL,
     "key 'thresholds.memory_degraded_percent' must be a number, got string"),
    ("[thresholds]\nmemory_degraded_percent = 120\n" + MINIMAL,
     "key 'thresholds.memory_degraded_percent' must be at most 100"),
    ("[thresholds]\nmemory_degraded_percent = 96\n" + MINIMAL,
     "key 'thresholds.memory_degraded_percent' (96) must not be greater than 'thresholds.memory_unhealthy_percent'"),
    ("[thresholds]\nping_degraded_ms = -1\n" + MINIMAL, "key 'thresholds.ping_degraded_ms' must be"),
    ("[thresholds]\ntls_expiry_unhealthy_days = 30\n" + MINIMAL,           # fewer days left is worse
     "key 'thresholds.tls_expiry_unhealthy_days' (30) must not be greater than 'thresholds.tls_expiry_degraded_days' "
     "(21)"),
    ("[thresholds]\ntls_expiry_degraded_days = 0\n" + MINIMAL,
     "key 'thresholds.tls_expiry_degraded_days' must be greater than 0"),
    ('[webhook]\nurl = "ftp://x/"\n' + MINIMAL, "key 'webhook.url' must be an http:// or https:// URL"),
    ("[webhook]\ntimeout = 3\n" + MINIMAL, "key 'webhook.url' is required"),
    ('[webhook]\nurl = "http://x/"\nretries = 1.5\n' + MINIMAL, "key 'webhook.retries' must be an integer"),
    ('[webhook]\nurl = "http://x/"\nsecret = "s"\n' + MINIMAL, "unknown key 'webhook.secret'"),
    ("interval = 3\n", "key 'instances' is required"),
    ("instances = []\n", "key 'instances' must list at least one instance"),
    ('instances = "main"\n', "key 'instances' must be an array of tables"),
    ('[[instances]]\nname = "main"\n', "key 'instances[0].connection_file' is required"),
    ('[[instances]]\nconnection_file = "/x"\n', "key 'instances[0].name' is required"),
    ('[[instances]]\nname = "a b"\nconnection_file = "/x"\n', "key 'instances[0].name' must be"),
    (MINIMAL + MINIMAL, "key 'instances[1].name' duplicates instance 'main'"),
    (MINIMAL + "port = 6379\n", "unknown key 'instances[0].port'"),
    (MINIMAL + "max_backup_age = 0\n", "key 'instances[0].max_backup_age' must be greater than 0"),
    (MINIMAL + 'expected_replicas = "1"\n', "key 'instances[0].expected_replicas' must be an integer"),
    ("interval = = 3\n", "not valid TOML"),
])
def test_bad_values_name_the_key(text, expected):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "/etc/health.toml")
    message = str(caught.value)
    assert expected in message
    assert message.startswith("/etc/health.toml: ")
    assert "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.toml"))


@pytest.mark.parametrize("command", ["check", "serve"])
@pytest.mark.parametrize(("content", "expected"), [
    (None, "config file not found"),
    ("interval = [\n", "not valid TOML"),
    ("bogus = 1\n" + MINIMAL, "unknown key 'bogus'"),
    ('interval = "30"\n' + MINIMAL, "key 'interval' must be a number, got string"),
    ("[thresholds]\nclients_unhealthy_percent = 0\n" + MINIMAL, "key 'thresholds.clients_unhealthy_percent'"),
])
def test_cli_bad_config_is_one_line_and_exit_2(tmp_path, command, content, expected):
    path = tmp_path / "health.toml"
    if content is not None:
        path.write_text(content)
    result = run_cli(command, "--config", str(path))
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "config error" in lines[0] and str(path) in lines[0] and expected in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_acl_prints_required_acl():
    from redis_infra.health import REQUIRED_ACL

    result = run_cli("acl")
    assert result.returncode == 0
    assert result.stdout.strip() == REQUIRED_ACL
    assert "+slowlog|get" in REQUIRED_ACL and "~redis-infra:health:*" in REQUIRED_ACL


def test_cli_unknown_instance_filter(tmp_path):
    path = tmp_path / "health.toml"
    path.write_text(MINIMAL)
    result = run_cli("check", "--config", str(path), "--instance", "other")
    assert result.returncode == 2
    assert "--instance 'other' is not configured" in result.stderr
