"""docs/roles/*.md is generated from the roles' argument specs and must be current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_the_variable_reference_of_every_role_is_current():
    result = subprocess.run([sys.executable, str(ROOT / "scripts/role-docs.py"), "--check"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_every_variable_of_every_spec_is_on_its_role_page():
    for spec_file in sorted(ROOT.glob("roles/*/meta/argument_specs.yml")):
        role = spec_file.parent.parent.name
        page = (ROOT / "docs/roles" / f"{role}.md").read_text()
        for entry, spec in yaml.safe_load(spec_file.read_text())["argument_specs"].items():
            for name in spec.get("options") or {}:
                assert f"| `{name}` |" in page, f"{name} ({role}, {entry}) is missing from docs/roles/{role}.md"
