"""The redis_checks action (the roles' preflight): checks run in order in one task, a check's loop, conditions
and message are evaluated only once the checks before it passed, and a message only when its check fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")

# Each case: the task's checks (and vars), and what its result must hold.
CASES = {
    "all pass": {
        "checks": [{"name": "list", "that": ["numbers is sequence", "numbers | length == 3"], "fail_msg": "never"},
                   {"name": "each", "loop": "numbers", "that": "item > 0", "fail_msg": "{{ item }} is not positive"}],
    },
    "the first failing check speaks": {
        "checks": [{"name": "list", "that": "numbers | length == 3", "fail_msg": "never"},
                   {"name": "each", "loop": "numbers", "label": "number {{ item }}",
                    "that": ["item is number", "item < 3"],
                    "fail_msg": "{{ item }} is 3 or more ({{ numbers | sum }} in all)."},
                   {"name": "later", "that": "false", "fail_msg": "not reached"}],
    },
    "every failing element of a loop is reported": {
        "checks": [{"name": "each", "loop": "numbers", "that": "item < 2", "fail_msg": "{{ item }} is 2 or more."}],
    },
    # A guard: the later check's loop, conditions and message would fail on what the first refuses.
    "a later check relies on an earlier one": {
        "vars": {"numbers": "not a list"},
        "checks": [{"name": "list", "that": "numbers is sequence and numbers is not string",
                    "fail_msg": "numbers must be a list, got {{ numbers | type_debug }}"},
                   {"name": "each", "loop": "numbers | map('int') | list", "that": "item.missing.attribute",
                    "fail_msg": "{{ undefined_variable.anything }}"}],
    },
    # A message is rendered only for a check that fails: here it could not be.
    "a passing check's message is not rendered": {
        "checks": [{"name": "ok", "that": "true", "fail_msg": "{{ undefined_variable.anything }}"}],
    },
    "a check whose condition is false is skipped": {
        "checks": [{"name": "off", "when": "numbers | length > 5", "that": "false", "fail_msg": "off ran"},
                   {"name": "on", "when": "numbers | length == 3", "that": "numbers[0] == 9", "fail_msg": "on ran"}],
    },
    "task variables reach every check": {
        "vars": {"__limit": 2, "__over": "{{ numbers | select('gt', __limit) | list }}"},
        "checks": [{"name": "limit", "that": "__over | length == 0", "fail_msg": "over {{ __limit }}: {{ __over }}"}],
    },
    "a check without a message is refused": {
        "checks": [{"name": "bad", "that": "true"}],
    },
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("checks")
    tasks = [{"name": case, "redis_infra.redis.redis_checks": {"checks": spec["checks"]},
              "vars": spec.get("vars", {}), "ignore_errors": True} for case, spec in CASES.items()]
    play = [{"hosts": "localhost", "gather_facts": False, "vars": {"numbers": [1, 2, 3]}, "tasks": tasks}]
    (tmp / "play.yml").write_text(json.dumps(play))
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    run = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local", str(tmp / "play.yml")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    tasks = json.loads(run.stdout)["plays"][0]["tasks"]
    return {task["task"]["name"]: task["hosts"]["localhost"] for task in tasks}


def test_checks_that_all_pass_pass(results):
    assert not results["all pass"].get("failed"), results["all pass"]
    assert results["all pass"]["msg"] == "All checks passed (2)"


def test_the_first_failing_check_fails_the_task_with_its_message_and_element(results):
    result = results["the first failing check speaks"]
    assert result["failed"]
    assert result["check"] == "each"
    assert result["msg"] == "3 is 3 or more (6 in all)."
    assert result["item"] == "number 3"
    assert result["items"] == ["number 3"]
    assert result["assertion"] == "item < 3"


def test_every_failing_element_of_a_loop_is_reported_as_a_loop_of_asserts_would(results):
    result = results["every failing element of a loop is reported"]
    assert result["failed"]
    assert result["msg"] == "2 is 2 or more. 3 is 2 or more."
    assert result["items"] == [2, 3]


def test_a_later_check_is_not_evaluated_once_an_earlier_one_failed(results):
    result = results["a later check relies on an earlier one"]
    assert result["failed"]
    assert result["check"] == "list"
    assert result["msg"] == "numbers must be a list, got str"


def test_a_passing_checks_message_is_never_rendered(results):
    assert not results["a passing check's message is not rendered"].get("failed"), \
        results["a passing check's message is not rendered"]


def test_a_check_runs_only_when_its_condition_holds(results):
    result = results["a check whose condition is false is skipped"]
    assert result["check"] == "on"
    assert result["msg"] == "on ran"


def test_task_variables_reach_the_checks(results):
    assert results["task variables reach every check"]["msg"] == "over 2: [3]"


def test_a_malformed_check_is_refused_naming_what_is_missing(results):
    result = results["a check without a message is refused"]
    assert result["failed"]
    assert "missing keys ['fail_msg']" in result["msg"]
