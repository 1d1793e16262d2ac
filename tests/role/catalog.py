"""The settings catalog of roles/redis_server/vars/main.yml, read as the tests need it.

What Ansible derives from it (profiles, runtime directives, preflight rules) is derived here the same
way; tests/role/test_settings.py checks that both derivations agree, through the role itself."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLE_VARS = yaml.safe_load((ROOT / "roles/redis_server/vars/main.yml").read_text())
SETTINGS: dict[str, dict] = ROLE_VARS["_redis_server_settings"]
PROFILES = {profile: {name: entry[profile] for name, entry in SETTINGS.items()}
            for profile in ("development", "production")}
RULES = {name: entry["rule"] for name, entry in SETTINGS.items()}
RUNTIME_DIRECTIVES = ([name.replace("_", "-") for name, entry in SETTINGS.items() if entry["live"]]
                      + ROLE_VARS["_redis_server_runtime_other"])
