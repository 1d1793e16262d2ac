#!/usr/bin/python
# Copyright: redis-infra contributors
# MIT License (see LICENSE)
"""Documentation of the redis_checks action plugin (it runs on the controller; there is no module code)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_checks
short_description: Check a role's variables in one task, in order, each check with its own message
version_added: 1.2.0
author:
  - redis-infra contributors (@redis-infra)
description:
  - The preflight of the collection's roles. Each check is what an M(ansible.builtin.assert) task would check
    (its conditions, its message, optionally its own condition and a loop), and the checks run one after
    the other in one task on the controller. The first check that fails fails the task with that check's
    message, which is rendered then and only then; for a check with a loop, every element is checked and
    the message of each element that fails is given.
  - A later check (its condition, its loop, its conditions and its message) is only evaluated once every
    check before it passed, so it may rely on what an earlier check made sure of, as with consecutive tasks
    of M(ansible.builtin.assert).
  - An M(ansible.builtin.assert) task costs a task of its own (about 20 to 40 ms on the controller, also when
    it passes, as its message is rendered first); a preflight of twenty checks costs one task here.
  - Conditions, O(checks[].when) and O(checks[].loop) are Jinja expressions without delimiters, as in C(when)
    and C(that); O(checks[].fail_msg) is a template. Task variables (C(vars)) are available to every check.
options:
  checks:
    description: The checks, in the order they run.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: What the check checks, returned as RV(check) when it fails.
        type: str
      that:
        description: Conditions that must all be true (an expression or a list of expressions).
        type: raw
        required: true
      fail_msg:
        description: The message of the failure (a template), rendered only when the check fails.
        type: str
        required: true
      when:
        description: The check runs only when this expression is true.
        type: str
      loop:
        description: An expression giving a list; the conditions are checked for each element in turn.
        type: str
      loop_var:
        description: The name of the element in the conditions and the message.
        type: str
        default: item
      label:
        description: A template naming the failed element, returned as RV(item) (default the element itself).
        type: str
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    support: full
    platforms: all
notes:
  - Needs ansible-core 2.19 or later, whose task argument finalization leaves O(checks) to the plugin.
seealso:
  - module: ansible.builtin.assert
"""

EXAMPLES = r"""
- name: Check the variables before changing anything
  redis_infra.redis.redis_checks:
    checks:
      - name: the instance list
        that:
          - redis_server_instances is sequence and redis_server_instances is not string
          - redis_server_instances | length > 0
        fail_msg: redis_server_instances must be a non-empty list, got {{ redis_server_instances | to_json }}
      # Runs only once the list above is known to be a list.
      - name: each instance's port
        loop: redis_server_instances
        that: item.port | default(6379) | int > 0
        fail_msg: "Instance {{ item.name }}: bad port {{ item.port }}"
"""

RETURN = r"""
check:
  description: The name (or number) of the check that failed.
  returned: failure
  type: str
assertion:
  description: The condition that was false.
  returned: failure
  type: str
item:
  description: The first element of the loop a condition was false for (its label when the check has one).
  returned: failure of a check with a loop
  type: raw
items:
  description: Every element of the loop a condition was false for (their labels when the check has one).
  returned: failure of a check with a loop
  type: list
  elements: raw
msg:
  description: The failed check's message (each failed element's, for a check with a loop), or that all passed.
  returned: always
  type: str
"""
