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
ANSIBLE = shutil.which("ansible-playbook", path=str(REPO / ".venv" / "bin")) or shutil.which("ansible-playbook")


@pytest.mark.skipif(ANSIBLE is None, reason="ansible-playbook is not installed")
def test_role_templates_load_in_the_checker(tmp_path):
    hashed = bcrypt.hashpw(b"scrape-pass", bcrypt.gensalt(rounds=4)).decode()
    variables = {
        "redis_health_listen_address": "10.0.0.5", "redis_health_listen_port": 9122, "redis_health_interval": 30,
        "redis_health_thresholds": {"memory_degraded_percent": 80}, "redis_health_webhook_url": "",
        "redis_health_backup_check": False,
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
