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
    description: Path of the connection file on the host.
    type: path
    required: true
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
"""

import ssl
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.redis_infra.redis.plugins.module_utils.resp import (
    RedisReplyError,
    TLSFilesError,
    connect,
    read_settings,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "connection_file": {"type": "path", "required": True},
            "commands": {"type": "list", "elements": "list", "default": []},
            "expect": {"type": "str"},
            "wait": {"type": "int", "default": 0},
            "changed": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    settings = read_settings(module)
    if module.check_mode:
        module.exit_json(changed=params["changed"] and bool(params["commands"]), responses=[])

    deadline = time.monotonic() + params["wait"]
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
                module.fail_json(msg=f"instance {settings.get('name', '?')} does not answer PING: {last_error}")
            time.sleep(0.5)

    responses = []
    try:
        for command in params["commands"]:
            reply = conn.call(*command)
            responses.append(reply)
            if params["expect"] is not None and reply != params["expect"]:
                shown = " ".join(map(str, command[:3]))
                module.fail_json(msg=f"{shown} returned {reply!r}, expected {params['expect']!r}", responses=responses)
    except RedisReplyError as exc:
        module.fail_json(msg=f"{' '.join(map(str, command[:3]))} failed: {exc}", responses=responses)
    finally:
        conn.close()
    module.exit_json(changed=params["changed"] and bool(params["commands"]), responses=responses)


if __name__ == "__main__":
    main()
