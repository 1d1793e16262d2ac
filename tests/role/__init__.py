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


def run_cases(tmp: _Path, cases: list[dict], tasks: list[dict], result: str) -> list:
    """Runs `tasks` on one local host per case (its variables: the case's dict), in one play, and returns each
    case's value of the variable `result`, in the order of `cases`."""
    import json
    import subprocess
    import sys

    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {f"case-{index}": dict(local, **variables) for index, variables in enumerate(cases)}
    names = json.dumps(list(hosts))
    out = tmp / "decided.json"
    plays = [
        {"hosts": "cases", "gather_facts": False, "tasks": tasks},
        {"hosts": "localhost", "gather_facts": False, "tasks": [{"ansible.builtin.copy": {
            "content": f"{{{{ dict({names} | zip({names} | map('extract', hostvars, '{result}'))) | to_json }}}}",
            "dest": str(out), "mode": "0600"}}]},
    ]
    (tmp / "play.yml").write_text(json.dumps(plays))
    (tmp / "inventory.yml").write_text(json.dumps({"all": {"hosts": {"localhost": local},
                                                           "children": {"cases": {"hosts": hosts}}}}))
    playbook = _Path(sys.executable).with_name("ansible-playbook")
    completed = subprocess.run([str(playbook), "-i", str(tmp / "inventory.yml"), str(tmp / "play.yml")],
                               capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-2000:]
    decided = json.loads(out.read_text())
    return [decided[name] for name in hosts]
