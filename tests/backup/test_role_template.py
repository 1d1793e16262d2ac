"""The role's backup.toml.j2, rendered by Ansible and loaded by the tool: redis_backup_dir_group reaches
the tool as backup_group, and the lock stays at its root-only default."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from redis_infra.backup import PATH_KEYS
from redis_infra.backup import config as config_module

from .conftest import REPO

ANSIBLE = shutil.which("ansible-playbook", path=str(REPO / ".venv" / "bin")) or shutil.which("ansible-playbook")


@pytest.mark.skipif(ANSIBLE is None, reason="ansible-playbook is not installed")
def test_role_template_loads_in_the_tool_with_the_group(tmp_path):
    instance = {"name": "main", "connection_file": "/etc/redis-infra/connections/main-backup.toml",
                "backup_dir": "/var/backups/redis/main", "status_file": "/var/lib/redis-infra/backup-status/main.json",
                "dir": "/var/lib/redis/main", "check_rdb": "/usr/bin/redis-check-rdb",
                "check_aof": "/usr/bin/redis-check-aof"}
    variables = {
        "instance": instance, "redis_backup_dir_group": "backupreaders", "redis_backup_keep_last": 7,
        "redis_backup_keep_daily_days": 14, "redis_backup_compression_level": 6,
        "redis_backup_offsite_destination": "",
    }
    playbook = tmp_path / "render.yml"
    task = {"name": "Render backup.toml",
            "ansible.builtin.template": {"src": str(REPO / "roles/redis_backup/templates/backup.toml.j2"),
                                         "dest": str(tmp_path / "backup.toml"), "mode": "0600"}}
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "connection": "local",
                                     "vars_files": [str(REPO / "roles/redis_backup/vars/main.yml")],
                                     "vars": variables, "tasks": [task]}]))
    env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    result = subprocess.run([ANSIBLE, "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
                             str(playbook)], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    cfg = config_module.load(str(tmp_path / "backup.toml"))
    assert cfg.backup_group == "backupreaders"
    assert cfg.data_dir == "/var/lib/redis/main" and cfg.aof == "auto"
    assert cfg.lock_file == "/run/redis-infra-backup/main.lock"
    # The paths the backup user would otherwise need CONFIG GET for, as the one config template sets them.
    template = (REPO / "files/redis.conf.j2").read_text()
    for key in PATH_KEYS[1:]:
        line = re.search(rf"^{key} (.+)$", template, re.MULTILINE)
        assert line, f"files/redis.conf.j2 sets no {key}"
        assert getattr(cfg, key) == line.group(1).strip('"'), key
