# Copyright: redis-infra contributors
# MIT License (see LICENSE)
"""The checks of a role's preflight, in order, in one task: each is what an ansible.builtin.assert task
would check, and the first that fails fails the task with its own message."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

KEYS = {"name", "that", "fail_msg", "when", "loop", "loop_var", "label"}


class ActionModule(ActionBase):
    """Evaluates the checks one after the other and renders a check's message only when it fails."""

    _requires_connection = False
    TRANSFERS_FILES = False

    @classmethod
    def finalize_task_arg(cls, name, value, templar, context):
        # The checks are rendered in run(), each only once the checks before it passed: a later check (its
        # loop, its conditions, its message) may rely on what an earlier one made sure of.
        if name == "checks":
            return value
        return super().finalize_task_arg(name, value, templar, context)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        checks = self._task.args.get("checks")
        if not isinstance(checks, Sequence) or isinstance(checks, (str, bytes)) or not checks:
            raise AnsibleActionFail("checks must be a non-empty list of checks")
        base = self._templar.available_variables
        for number, check in enumerate(checks, 1):
            self._validate(number, check)
            name = check.get("name", f"check {number}")
            if "when" in check and not self._templar.evaluate_conditional(check["when"]):
                continue
            thats = check["that"] if isinstance(check["that"], list) else [check["that"]]
            if "loop" in check:
                items = self._templar.evaluate_expression(check["loop"])
                if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
                    raise AnsibleActionFail(f"{name}: its loop ({check['loop']}) is not a list")
                loop_var = check.get("loop_var", "item")
                scopes = [(item, {**base, loop_var: item}) for item in items]
            else:
                scopes = [(None, None)]
            # Like a loop of assert tasks, every element of a check's loop is checked, and each that fails is
            # reported (the elements of one check do not rely on each other); the next check does not run.
            failures = []
            for item, variables in scopes:
                templar = self._templar if variables is None else self._templar.copy_with_new_env(
                    available_variables=variables)
                that = next((that for that in thats if not templar.evaluate_conditional(that)), None)
                if that is not None:
                    label = None if variables is None else (
                        to_text(templar.template(check["label"])) if "label" in check else item)
                    failures.append((that, label, to_text(templar.template(check["fail_msg"]))))
            if failures:
                assertions, labels, messages = zip(*failures, strict=True)
                result.update(failed=True, check=name, assertion=assertions[0], msg=" ".join(messages))
                if "loop" in check:
                    result.update(item=labels[0], items=list(labels))
                return result
        result.update(changed=False, msg=f"All checks passed ({len(checks)})")
        return result

    @staticmethod
    def _validate(number, check):
        if not isinstance(check, Mapping):
            raise AnsibleActionFail(f"check {number} must be a mapping")
        unknown = set(check) - KEYS
        missing = {"that", "fail_msg"} - set(check)
        if unknown or missing:
            raise AnsibleActionFail(f"check {number} ({check.get('name', '')}): unknown keys {sorted(unknown)}, "
                                    f"missing keys {sorted(missing)}")
