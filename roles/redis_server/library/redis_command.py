#!/usr/bin/python
"""Run commands on a local Redis/Valkey instance as the user of a connection file."""

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_command
short_description: Run commands on a local Redis or Valkey instance
description:
  - Connects with the credentials of a connection file written by the redis_server role (TOML with
    host, port, unix_socket, username, password), so that no password passes through task arguments,
    process lists or logs.
  - Speaks RESP over the instance's unix socket (or TCP), with no client library needed on the host.
options:
  connection_file:
    description: Path of the connection file on the host.
    type: path
    required: true
  commands:
    description: Commands to run, each a list of arguments.
    type: list
    elements: list
    default: []
  expect:
    description: Reply every command must return (e.g. OK); anything else fails the task.
    type: str
  wait:
    description: Seconds to keep retrying until the instance answers PING (it may be starting or loading).
    type: int
    default: 0
  changed:
    description: Whether running the commands counts as a change.
    type: bool
    default: false
"""

import socket
import time
import tomllib

from ansible.module_utils.basic import AnsibleModule


class RedisReplyError(Exception):
    pass


class Connection:
    def __init__(self, settings, timeout):
        path = settings.get("unix_socket")
        if path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(path)
            except OSError:
                self.sock.close()
                path = None
        if not path:
            address = (settings.get("host", "127.0.0.1"), settings.get("port", 6379))
            self.sock = socket.create_connection(address, timeout)
        self.buffer = b""

    def close(self):
        self.sock.close()

    def _line(self):
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _exact(self, size):
        while len(self.buffer) < size + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size + 2:]
        return data

    def read(self):
        line = self._line()
        kind, rest = line[:1], line[1:].decode("utf-8", "replace")
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RedisReplyError(rest)
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exact(size).decode("utf-8", "replace")
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.read() for _ in range(size)]
        raise ConnectionError(f"unexpected reply from the server: {line[:80]!r}")

    def call(self, *args):
        payload = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = str(arg).encode()
            payload.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(payload))
        return self.read()


def connect(settings, timeout):
    conn = Connection(settings, timeout)
    try:
        if settings.get("password"):
            conn.call("AUTH", settings.get("username") or "default", settings["password"])
        return conn
    except Exception:
        conn.close()
        raise


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
    try:
        with open(params["connection_file"], "rb") as handle:
            settings = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        module.fail_json(msg=f"cannot read connection file {params['connection_file']}: {exc}")
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
        except (OSError, ConnectionError, RedisReplyError) as exc:
            last_error = str(exc)
            retryable = not isinstance(exc, RedisReplyError) or exc.args[0].startswith(("LOADING", "BUSY"))
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
