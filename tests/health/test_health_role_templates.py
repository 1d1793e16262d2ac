"""The role's templates, rendered by Ansible and loaded by the checker: loopback plus the scrape
address, the web config file with bcrypt hashes that verify."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from health_helpers import REPO

from redis_infra.health.config import load_config

bcrypt = pytest.importorskip("bcrypt")
DEFAULTS = REPO / "roles/redis_health/defaults/main.yml"
ANSIBLE = shutil.which("ansible-playbook", path=str(REPO / ".venv" / "bin")) or shutil.which("ansible-playbook")


def _default(name: str) -> str:
    """A variable of the role's defaults/main.yml, as written (a template is evaluated where it is used)."""
    import yaml

    return yaml.safe_load(DEFAULTS.read_text())[name]


def _render(tmp_path, **overrides) -> None:
    """Render health.toml and health-web.yml with the role's vars and these variables into tmp_path."""
    hashed = bcrypt.hashpw(b"scrape-pass", bcrypt.gensalt(rounds=4)).decode()
    variables = {
        "redis_health_listen_address": "10.0.0.5", "redis_health_listen_port": 9122, "redis_health_interval": 30,
        "redis_health_thresholds": {"memory_degraded_percent": 80}, "redis_health_webhook_url": "",
        "redis_health_backup_check": False, "redis_health_maintenance_check": False,
        "redis_health_sentinel_check": False,
        "redis_health_tls_cert_file": "/etc/redis-infra/tls/health.crt",
        "redis_health_tls_key_file": "/etc/redis-infra/tls/health.key",
        "redis_health_basic_auth_users": {"prometheus": "scrape-pass"},
        "redis_health_web_config_file": "/etc/redis-infra/health-web.yml",
        "__redis_health_hashes": {"prometheus": hashed},
        "redis_server_instance_model": [{"name": "main", "connection_files": {
            "monitor": "/etc/redis-infra/connections/main-monitor.toml"},
            "replication_group": "redis_primary.main", "expected_replicas": 2}],
        "redis_server_connection_dir": "/etc/redis-infra/connections",
        "redis_server_monitor_user": "monitor",
        "redis_server_primary_group": "redis_primary",
        "redis_server_replication_model": {"enabled": True, "hosts": ["redis-1", "redis-2", "redis-3"]},
        **overrides,
    }
    playbook = tmp_path / "render.yml"
    templates = REPO / "roles/redis_health/templates"
    tasks = [{"name": f"Render {name}",
              "ansible.builtin.template": {"src": str(templates / f"{name}.j2"), "dest": str(tmp_path / name),
                                           "mode": "0600"}}
             for name in ("health.toml", "health-web.yml")]
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "connection": "local",
                                     "vars_files": [str(REPO / "roles/redis_health/vars/main.yml")],
                                     "vars": {**variables, "redis_tools_bin_dir": "/usr/local/bin"}, "tasks": tasks}]))
    env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    result = subprocess.run([ANSIBLE, "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
                             str(playbook)], capture_output=True, text=True, env=env,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(ANSIBLE is None, reason="ansible-playbook is not installed")
def test_role_templates_load_in_the_checker(tmp_path):
    # the role's default for the maintenance check: off without an admin password (no routine deployed)
    _render(tmp_path, redis_health_maintenance_check=_default("redis_health_maintenance_check"))
    toml = (tmp_path / "health.toml").read_text()
    config = load_config(str(tmp_path / "health.toml"))
    assert config.listen_addresses == ("127.0.0.1", "10.0.0.5")
    assert config.web_config_file == "/etc/redis-infra/health-web.yml"
    # The group every host of it reports, so that the no-primary and split-brain alerts can fire.
    assert [(i.replication_group, i.expected_replicas) for i in config.instances] == [("redis_primary.main", 2)]
    assert [i.connection_file for i in config.instances] == ["/etc/redis-infra/connections/main-monitor.toml"]
    import yaml

    from redis_infra.health.web import parse_web_config

    web = parse_web_config(yaml.safe_load((tmp_path / "health-web.yml").read_text()), "web")
    assert web.cert_file == "/etc/redis-infra/tls/health.crt" and web.key_file == "/etc/redis-infra/tls/health.key"
    assert bcrypt.checkpw(b"scrape-pass", web.users["prometheus"])
    assert "scrape-pass" not in (tmp_path / "health-web.yml").read_text()
    assert toml.startswith("#")        # ansible_managed
    assert [(i.backup_status_file, i.maintenance_status_file) for i in config.instances] == [(None, None)]


@pytest.mark.skipif(ANSIBLE is None, reason="ansible-playbook is not installed")
def test_role_template_names_the_status_files_when_the_checks_are_on(tmp_path):
    # on by default where playbooks/maintenance.yml deploys the routine: an admin password is set
    _render(tmp_path, redis_health_backup_check=True, redis_server_admin_password="admin-secret",
            redis_health_maintenance_check=_default("redis_health_maintenance_check"),
            redis_server_instance_model=[{
                "name": "main", "connection_files": {"monitor": "/etc/redis-infra/connections/main-monitor.toml"},
                "replication_group": None, "backup_status_file": "/var/lib/redis-infra/backup-status/main.json",
                "maintenance_status_file": "/var/lib/redis-infra/maintenance/main.json"}])
    (instance,) = load_config(str(tmp_path / "health.toml")).instances
    assert instance.backup_status_file == "/var/lib/redis-infra/backup-status/main.json"
    assert instance.maintenance_status_file == "/var/lib/redis-infra/maintenance/main.json"
    assert instance.max_maintenance_age is None        # the checker's default: 8 days


@pytest.mark.skipif(ANSIBLE is None, reason="ansible-playbook is not installed")
def test_role_template_names_the_sentinel_and_the_primaries_it_must_watch(tmp_path):
    # the default: off on a host outside the Sentinel group (localhost here), whatever the password
    _render(tmp_path, redis_health_sentinel_check=_default("redis_health_sentinel_check"),
            redis_server_monitor_password="monitor-secret")
    assert load_config(str(tmp_path / "health.toml")).sentinel is None
    _render(tmp_path, redis_health_sentinel_check=True, redis_server_instance_model=[
        {"name": "main", "connection_files": {"monitor": "/c/main.toml"}, "replication_group": "redis_primary.main",
         "expected_replicas": 2},
        {"name": "cache", "connection_files": {"monitor": "/c/cache.toml"}, "replication_group": None}])
    sentinel = load_config(str(tmp_path / "health.toml")).sentinel
    assert sentinel.connection_file == "/etc/redis-infra/connections/sentinel-monitor.toml"
    assert (sentinel.name, sentinel.masters) == ("sentinel", ("main",))
