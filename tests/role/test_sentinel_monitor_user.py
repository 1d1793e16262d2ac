"""What the redis_sentinel role sends to give the health checker its user on Sentinel, decided by the role's
own task (roles/redis_sentinel/tasks/service.yml, run through Ansible on localhost) from what Sentinel's file
and the role's state file hold: nothing on a re-run, the user on a first run, after a password or rules
change and in each phase of a rotation, and its removal (also under an old name)."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from tests.role import run_cases, task_named

ROOT = Path(__file__).resolve().parents[2]
TASK = "Work out what the health checker's user on Sentinel needs"
ACL = yaml.safe_load((ROOT / "roles/redis_sentinel/vars/main.yml").read_text())["_redis_sentinel_monitor_acl"]
PASSWORD = "monitor-password-0123456789abcdefghijkl"
OLD = "old-monitor-password-0123456789abcdefgh"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def state(user: str, *passwords: str) -> str:
    hashes = " ".join("#" + sha256(p) for p in passwords)
    return f"{user}:" + hashlib.sha1(f"{ACL} {hashes}".encode(), usedforsecurity=False).hexdigest()


def conf(*lines: str) -> str:
    return "port 26379\n" + "".join(line + "\n" for line in lines)


def saved(user: str, *passwords: str) -> str:
    """The user line as Sentinel 7.0 saves it (its own words for the rules, sanitize-payload)."""
    hashes = " ".join("#" + sha256(p) for p in passwords)
    return (f"user {user} on sanitize-payload {hashes} resetchannels -@all +@fast +info -role -publish "
            "+client|setname +sentinel|ckquorum +sentinel|replicas +sentinel|sentinels")


def _task() -> dict:
    task = copy.deepcopy(task_named("roles/redis_sentinel/tasks/service.yml", TASK))
    task.pop("no_log", None)
    return task


CASES = {
    # name: (variables, Sentinel's file, the state file, what is sent)
    "first run": ({}, conf(), "", "setuser"),
    "re-run": ({}, conf(saved("monitor", PASSWORD)), state("monitor", PASSWORD), []),
    "new password": ({}, conf(saved("monitor", OLD)), state("monitor", OLD), "setuser"),
    "rules changed since": ({}, conf(saved("monitor", PASSWORD)), "monitor:0123", "setuser"),
    "user lost from the file": ({}, conf(), state("monitor", PASSWORD), "setuser"),
    "rotation phase 1": ({"redis_server_previous_passwords": {"monitor": OLD}},
                         conf(saved("monitor", OLD)), state("monitor", OLD), "setuser+old"),
    "rotation phase 1 re-run": ({"redis_server_previous_passwords": {"monitor": OLD}},
                                conf(saved("monitor", PASSWORD, OLD)), state("monitor", PASSWORD, OLD), []),
    "rotation phase 2": ({}, conf(saved("monitor", PASSWORD, OLD)), state("monitor", PASSWORD, OLD), "setuser"),
    "renamed": ({"redis_sentinel_monitor_user": "checker"}, conf(saved("monitor", PASSWORD)),
                state("monitor", PASSWORD), "deluser monitor+setuser checker"),
    "password emptied": ({"redis_sentinel_monitor_password": ""}, conf(saved("monitor", PASSWORD)),
                         state("monitor", PASSWORD), "deluser"),
    "password emptied, re-run": ({"redis_sentinel_monitor_password": ""}, conf(), "", []),
}


@pytest.fixture(scope="module")
def decided(tmp_path_factory) -> dict:
    """{case: the commands the role's task decided}, every case a host of one play."""
    cases = [{
        "redis_sentinel_monitor_user": "monitor", "redis_sentinel_monitor_password": PASSWORD,
        "_redis_sentinel_monitor_acl": ACL,
        "__redis_sentinel_monitor_enabled": "{{ redis_sentinel_monitor_password | length > 0 }}",
        "__redis_sentinel_conf_before": {"content": base64.b64encode(text.encode()).decode()},
        "__redis_sentinel_monitor_taken": taken, **variables}
        for variables, text, taken, _ in CASES.values()]
    tasks = [
        {"name": "The bootstrap template was skipped (the file is Sentinel's)",
         "ansible.builtin.debug": {"msg": ""}, "when": False, "register": "__redis_sentinel_bootstrap"},
        _task()]
    return dict(zip(CASES, run_cases(tmp_path_factory.mktemp("sentinel-monitor"), cases, tasks,
                                     "__redis_sentinel_monitor_commands"), strict=True))


def _expected(kind, variables) -> list:
    if kind == []:
        return []
    user = variables.get("redis_sentinel_monitor_user", "monitor")
    setuser = ["ACL", "SETUSER", user, "reset", "on", "#" + sha256(PASSWORD)]
    if kind == "setuser+old":
        setuser.append("#" + sha256(OLD))
    setuser += ACL.split()
    flush = ["SENTINEL", "FLUSHCONFIG"]
    return {"setuser": [setuser, flush], "setuser+old": [setuser, flush],
            "deluser monitor+setuser checker": [["ACL", "DELUSER", "monitor"], setuser, flush],
            "deluser": [["ACL", "DELUSER", "monitor"], flush]}[kind]


@pytest.mark.parametrize("name", list(CASES))
def test_the_role_sends_only_what_the_user_needs(decided, name):
    variables, _, _, kind = CASES[name]
    assert decided[name] == _expected(kind, variables)


def test_no_password_is_sent_only_its_hash(decided):
    sent = json.dumps(decided)
    assert PASSWORD not in sent and OLD not in sent and sha256(PASSWORD) in sent
