from pathlib import Path as _Path

import yaml as _yaml

ROOT = _Path(__file__).resolve().parents[2]


def task_named(path: str, name: str) -> dict | None:
    """The task of a role's tasks file (relative to the repository) with this name, blocks searched too."""
    def find(tasks):
        for task in tasks:
            if task.get("name") == name:
                return task
            found = find(task.get("block", []))
            if found:
                return found
        return None

    return find(_yaml.safe_load((ROOT / path).read_text()))
