#!/usr/bin/python
# Copyright: redis-infra contributors
# MIT License (see LICENSE)
"""Run commands on a local Redis/Valkey instance as the user of a connection file."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_command
short_description: Run commands on a local Redis or Valkey instance
version_added: 1.0.0
author:
  - redis-infra contributors (@redis-infra)
description:
  - Connects with the credentials of a connection file written by the P(redis_infra.redis.redis_server#role)
    role (TOML with C(host), C(port), C(unix_socket), C(username), C(password)), so that no password passes
    through task arguments, process lists or logs.
  - Speaks RESP over the instance's unix socket (or TCP when the file names no socket, or the socket
    cannot be reached), with no client library needed on the host.
  - Over TCP it speaks TLS when the file says C(tls = true) (the unix socket is always plain), TLS 1.2 or later.
    The server's certificate is verified against the CA bundle C(tls_ca_file) (the system's CAs when the file
    names none) and, unless C(tls_check_hostname = false), must name C(host). C(tls_cert_file) and
    C(tls_key_file) are the client certificate and its key, for a server that requires one
    (C(tls-auth-clients yes)).
  - A certificate the CA does not verify, or TLS files that cannot be loaded, fail the task at once (no wait).
  - Waits, when asked, for an instance that is starting or still loading its data set.
options:
  connection_file:
    description: Path of the connection file on the host (required unless O(queries) is given).
    type: path
  commands:
    description: Commands to run, in order, each a list of arguments.
    type: list
    elements: list
    default: []
  expect:
    description: Reply every command must return (for example C(OK)); anything else fails the task.
    type: str
  wait:
    description:
      - Seconds to keep retrying until the instance answers C(PING).
      - Connection errors and C(LOADING) or C(BUSY) replies are retried; any other error fails at once.
    type: int
    default: 0
  changed:
    description: Whether running the commands counts as a change.
    type: bool
    default: false
  queries:
    description:
      - Instead of O(connection_file) and O(commands), several read-only queries in one execution, each to the
        node of its own connection file (the instances and the Sentinel of a host, say).
      - Each query answers on its own in RV(answers). A node that cannot be reached or answers an error
        fails its query, not the task. O(expect) and O(changed) do not apply; O(wait) applies to each node.
    type: list
    elements: dict
    default: []
    suboptions:
      connection_file:
        description: Path of the connection file on the host.
        type: path
        required: true
      commands:
        description: Commands to run, in order, each a list of arguments.
        type: list
        elements: list
        required: true
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: partial
    details: In check mode the connection file is read but no command is sent; RV(responses) is empty.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - The connection file is read on the host with Python's C(tomllib) (Python 3.11 or later on the host).
"""

EXAMPLES = r"""
- name: Read the replication state as the admin user
  redis_infra.redis.redis_command:
    connection_file: /etc/redis-infra/connections/main-admin.toml
    commands:
      - [ROLE]
      - [INFO, replication]
    wait: 30
  register: state

- name: Set a live setting and persist it
  redis_infra.redis.redis_command:
    connection_file: /etc/redis-infra/connections/main-admin.toml
    commands:
      - [CONFIG, SET, maxmemory-policy, allkeys-lru]
      - [CONFIG, REWRITE]
    expect: OK
    changed: true
"""

RETURN = r"""
responses:
  description:
    - One reply per command, in order. Simple strings and bulk strings are returned as text, integers as
      numbers, arrays as lists, a null reply as V(null).
  returned: always
  type: list
  elements: raw
  sample: [["master", 1234, []], "OK"]
answers:
  description: With O(queries), one entry per query, in order, with its RV(responses), or V(failed) and V(msg).
  returned: when O(queries) is given
  type: list
  elements: dict
  sample: [{"responses": [["slave", "10.0.0.1", 6379, "connected", 1234]]}, {"failed": true, "msg": "..."}]
"""

import ssl
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.redis_infra.redis.plugins.module_utils.resp import (
    RedisReplyError,
    SettingsError,
    TLSFilesError,
    connect,
    load_settings,
    read_settings,
)


class CommandError(Exception):
    """A node that does not answer, or a command's error reply or unexpected reply (the message says which)."""

    def __init__(self, msg, responses=()):
        super().__init__(msg)
        self.responses = list(responses)


def answer(settings, commands, expect=None, wait=0):
    """The node's replies to the commands, after a PING, retried for up to `wait` seconds while it starts."""
    deadline = time.monotonic() + wait
    while True:
        try:
            conn = connect(settings, timeout=10)
            try:
                conn.call("PING")
                break
            except Exception:
                conn.close()
                raise
        except (OSError, ConnectionError, RedisReplyError, TLSFilesError) as exc:
            last_error = str(exc)
            if isinstance(exc, RedisReplyError):
                retryable = exc.args[0].startswith(("LOADING", "BUSY"))
            else:  # waiting does not change a certificate or the files that verify it
                retryable = not isinstance(exc, ssl.SSLCertVerificationError | TLSFilesError)
            if not retryable or time.monotonic() >= deadline:
                raise CommandError(f"instance {settings.get('name', '?')} does not answer PING: {last_error}") from exc
            time.sleep(0.5)

    responses = []
    try:
        for command in commands:
            reply = conn.call(*command)
            responses.append(reply)
            if expect is not None and reply != expect:
                shown = " ".join(map(str, command[:3]))
                raise CommandError(f"{shown} returned {reply!r}, expected {expect!r}", responses)
    except RedisReplyError as exc:
        raise CommandError(f"{' '.join(map(str, command[:3]))} failed: {exc}", responses) from exc
    except (OSError, ConnectionError, ValueError) as exc:  # the connection dropped, or a reply it cannot read
        raise CommandError(f"{' '.join(map(str, command[:3]))} got no answer: {exc}", responses) from exc
    finally:
        conn.close()
    return responses


def answers(queries, wait):
    """One entry per query: its replies, or why it failed (a file that cannot be read, a node that does not answer)."""
    result = []
    for query in queries:
        try:
            result.append({"responses": answer(load_settings(query["connection_file"]), query["commands"], wait=wait)})
        except SettingsError as exc:
            result.append({"failed": True, "msg": str(exc)})
        except CommandError as exc:
            result.append({"failed": True, "msg": str(exc), "responses": exc.responses})
        except Exception as exc:  # noqa: BLE001 - one query's failure never costs the others their answers
            result.append({"failed": True, "msg": f"{type(exc).__name__}: {exc}"})
    return result


def main():
    module = AnsibleModule(
        argument_spec={
            "connection_file": {"type": "path"},
            "commands": {"type": "list", "elements": "list", "default": []},
            "expect": {"type": "str"},
            "wait": {"type": "int", "default": 0},
            "changed": {"type": "bool", "default": False},
            "queries": {"type": "list", "elements": "dict", "default": [], "options": {
                "connection_file": {"type": "path", "required": True},
                "commands": {"type": "list", "elements": "list", "required": True},
            }},
        },
        required_one_of=[("connection_file", "queries")],
        mutually_exclusive=[("connection_file", "queries")],
        supports_check_mode=True,
    )
    params = module.params
    if params["queries"]:
        if module.check_mode:
            module.exit_json(changed=False, answers=[])
        module.exit_json(changed=False, answers=answers(params["queries"], params["wait"]))
    settings = read_settings(module)
    if module.check_mode:
        module.exit_json(changed=params["changed"] and bool(params["commands"]), responses=[])
    try:
        responses = answer(settings, params["commands"], params["expect"], params["wait"])
    except CommandError as exc:
        module.fail_json(msg=str(exc), responses=exc.responses)
    module.exit_json(changed=params["changed"] and bool(params["commands"]), responses=responses)


if __name__ == "__main__":
    main()
