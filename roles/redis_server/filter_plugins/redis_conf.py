"""Filters that read Redis/Valkey config text and memory sizes the way the server does."""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
_MEMORY = re.compile(r"^\s*(\d+)\s*([a-z]*)\s*$")


def redis_memory_bytes(value):
    """Bytes for a Redis memory value (2gb, 512mb, 100k, 1024), or None when Redis would refuse it."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    match = _MEMORY.match(str(value).lower())
    if not match or match.group(2) not in _UNITS:
        return None
    return int(match.group(1)) * _UNITS[match.group(2)]


def _split_args(line):
    """Split one config line into arguments as the server does (double and single quotes)."""
    args, current, quote, i, in_arg = [], [], None, 0, False
    escapes = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "a": "\a", '"': '"', "\\": "\\"}
    while i < len(line):
        char = line[i]
        if quote:
            if quote == '"' and char == "\\" and i + 1 < len(line):
                current.append(escapes.get(line[i + 1], line[i + 1]))
                i += 1
            elif char == quote:
                quote = None
            else:
                current.append(char)
        elif char in "\"'":
            quote, in_arg = char, True
        elif char.isspace():
            if in_arg:
                args.append("".join(current))
                current, in_arg = [], False
        else:
            current.append(char)
            in_arg = True
        i += 1
    if quote:
        raise AnsibleFilterError(f"unbalanced quotes in config line: {line!r}")
    if in_arg:
        args.append("".join(current))
    return args


def redis_conf_parse(text):
    """Directive -> list of argument lists, one per occurrence, from config file text."""
    settings = {}
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        args = _split_args(line)
        if args:
            settings.setdefault(args[0].lower(), []).append(args[1:])
    return settings


def redis_conf_changes(old_text, new_text):
    """What differs between two config texts.

    Returns {directive: value} for each directive that is new or changed, where value is what
    CONFIG SET takes (arguments joined by spaces, occurrences joined by spaces), and None for a
    directive the new text no longer has.
    """
    old, new = redis_conf_parse(old_text), redis_conf_parse(new_text)
    changes = {}
    for directive in sorted(set(old) | set(new)):
        if old.get(directive) == new.get(directive):
            continue
        if directive not in new:
            changes[directive] = None
        else:
            changes[directive] = " ".join(" ".join(args) for args in new[directive])
    return changes


def redis_server_plan(instances, results, runtime_directives, connection_file):
    """How each instance takes this run's changes: live (CONFIG SET, ACL LOAD), restart, or nothing.

    results holds the service facts (services) and the registered loop results of the tasks before,
    aligned with instances: before and after (slurped config), conf, dropin and acl (templates).
    A running instance restarts when its unit drop-in changed, when it had no config file before,
    or when a directive changed that CONFIG SET cannot change (or was removed). A stopped instance
    just starts with the new files.
    """
    import base64

    def text(result):
        content = result.get("content")
        return base64.b64decode(content).decode("utf-8", "replace") if content else ""

    plan = []
    for i, instance in enumerate(instances):
        running = results["services"].get(instance["unit"], {}).get("state") == "running"
        had_conf = "content" in results["before"][i]
        changes = {}
        if results["conf"][i].get("changed"):
            changes = redis_conf_changes(text(results["before"][i]), text(results["after"][i]))
        static = sorted(key for key, value in changes.items() if value is None or key not in runtime_directives)
        restart = running and (bool(results["dropin"][i].get("changed")) or not had_conf or bool(static))
        live = running and not restart
        plan.append({
            "name": instance["name"],
            "unit": instance["unit"],
            "log_file": instance["log_file"],
            "running": running,
            "restart": restart,
            "why": static or (["unit drop-in"] if results["dropin"][i].get("changed") else ["first configuration"]),
            "runtime": [["CONFIG", "SET", key, value] for key, value in sorted(changes.items())] if live else [],
            "acl_load": live and bool(results["acl"][i].get("changed")),
            "connection_file": connection_file.format(name=instance["name"]),
        })
    return plan


class FilterModule:
    def filters(self):
        return {
            "redis_memory_bytes": redis_memory_bytes,
            "redis_conf_parse": redis_conf_parse,
            "redis_conf_changes": redis_conf_changes,
            "redis_server_plan": redis_server_plan,
        }
