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


# Directives whose CONFIG GET answer is in bytes while the file may use units (2gb).
_MEMORY_DIRECTIVES = {"maxmemory", "repl-backlog-size", "auto-aof-rewrite-min-size", "client-query-buffer-limit",
                      "proto-max-bulk-len", "active-defrag-ignore-bytes"}
# The TLS files an instance reads; a renewed certificate is loaded by setting them again, together.
_TLS_FILES = ("tls-cert-file", "tls-key-file", "tls-ca-cert-file")
# Turning TLS on or off moves the instance's port number between `port` and `tls-port`: a running instance takes
# that live, in one CONFIG SET (its connections, replication links included, stay open).
_TLS_SWITCH = {"port", "tls-port"}
# Never read back or compared: secrets (masterauth has its own file and task).
_NOT_COMPARED = {"masterauth", "requirepass"}


def _normalized(directive, value):
    text = " ".join(str(value if value is not None else "").split())
    if directive in _MEMORY_DIRECTIVES and redis_memory_bytes(text) is not None:
        return str(redis_memory_bytes(text))
    return text.lower() if text.lower() in ("yes", "no") else text


def redis_conf_drift(desired_text, live, runtime_directives):
    """{directive: desired value} for each runtime directive of the desired file whose live value
    (CONFIG GET replies, a list of [name, value] or a flat [name, value, ...]) differs; None when the
    replies hold no value at all."""
    values = {}
    for reply in live or []:
        if isinstance(reply, list) and len(reply) % 2 == 0:
            values.update({str(reply[i]).lower(): reply[i + 1] for i in range(0, len(reply), 2)})
    if not values:
        return None
    drift = {}
    for directive, occurrences in redis_conf_parse(desired_text).items():
        if directive not in runtime_directives or directive in _NOT_COMPARED or directive not in values:
            continue
        wanted = " ".join(" ".join(args) for args in occurrences)
        if _normalized(directive, wanted) != _normalized(directive, values[directive]):
            drift[directive] = wanted
    return drift


def _acl_lines(text):
    """{user name: [rule, ...]} from ACL file text (lines `user NAME rules...`)."""
    users = {}
    for raw in (text or "").splitlines():
        args = _split_args(raw.strip()) if raw.strip() and not raw.strip().startswith("#") else []
        if len(args) >= 2 and args[0] == "user":
            users[args[1]] = args[2:]
    return users


def _ports(text):
    """(port, tls-port) as a config text sets them; tls-port "0" when absent (the server's default)."""
    parsed = redis_conf_parse(text or "")
    return (" ".join(parsed["port"][-1]) if "port" in parsed else "6379",
            " ".join(parsed["tls-port"][-1]) if "tls-port" in parsed else "0")


def _live_ports(live_replies):
    """(port, tls-port) from the instance's CONFIG GET reply (the role asks for both), None when not read."""
    values = {}
    for reply in (live_replies or {}).get("responses") or []:
        if isinstance(reply, list) and len(reply) % 2 == 0:
            values.update({str(reply[i]).lower(): str(reply[i + 1]) for i in range(0, len(reply), 2)})
        break
    return (values["port"], values.get("tls-port", "0")) if "port" in values else None


def _tls_switch(current, desired):
    """The [directive, value] pairs, in the order one CONFIG SET must apply them, that move a running instance's
    port number from plaintext to TLS (port 0 first, then tls-port: the number is free again in between) or back
    (tls-port 0, tls-replication no, then port); None when (port, tls-port) current to desired is not such a
    move of one port number."""
    if current[1] == "0" and desired[0] == "0" and current[0] == desired[1] != "0":
        return [["port", "0"], ["tls-port", desired[1]]]
    if current[0] == "0" and desired[1] == "0" and current[1] == desired[0] != "0":
        return [["tls-port", "0"], ["tls-replication", "no"], ["port", desired[0]]]
    return None


def redis_acl_changes(applied_text, desired_text):
    """The commands that bring a running instance's users from `applied_text` to `desired_text`
    without dropping a connection: ACL SETUSER NAME reset RULES... per new or changed user, ACL
    DELUSER per removed one. applied_text None (unknown): every user of the desired file."""
    desired = _acl_lines(desired_text)
    applied = _acl_lines(applied_text) if applied_text is not None else {}
    commands = [["ACL", "SETUSER", name, "reset", *rules] for name, rules in desired.items()
                if applied_text is None or applied.get(name) != rules]
    commands += [["ACL", "DELUSER", name] for name in applied if name not in desired and name != "default"]
    return commands


def redis_server_plan(instances, results, runtime_directives, connection_file):
    """How each instance takes this run's changes: live (CONFIG SET, ACL), restart, or nothing.

    results holds the service facts (services) and the registered loop results of the tasks before,
    aligned with instances: before and after (slurped config), conf, dropin and acl (templates),
    dropin_now (a stat of the drop-in, for runs where its template did not run).
    Optional, for a plan from what the instance runs rather than from this run's file diff:
    state (slurped state file: the config text, drop-in checksum and ACL text the instance last
    took), desired (config texts), acl_desired (ACL texts), live (CONFIG GET replies), and with TLS on
    tls (a checksum of the host's TLS files) and tls_files (the certificate, key and CA bundle paths):
    a running instance that last took other TLS files reloads them with one CONFIG SET of the three
    paths, which makes it serve the new certificate without a restart.
    A running instance restarts when its unit drop-in changed, when it had no config file before,
    or when a directive changed that CONFIG SET cannot change (or was removed). A stopped instance
    just starts with the new files.
    """
    import base64
    import json

    def text(result):
        content = (result or {}).get("content")
        return base64.b64decode(content).decode("utf-8", "replace") if content else ""

    def state_of(i):
        states = results.get("state") or []
        raw = text(states[i]) if i < len(states) else ""
        try:
            state = json.loads(raw) if raw else None
        except ValueError:
            state = None
        return state if isinstance(state, dict) else None

    def at(name, i):
        """Item i of a registered loop, {} when that phase did not run (a tag run: --tags redis_server_service)."""
        items = results.get(name) or []
        return items[i] if i < len(items) and isinstance(items[i], dict) else {}

    plan = []
    for i, instance in enumerate(instances):
        running = results["services"].get(instance["unit"], {}).get("state") == "running"
        state = state_of(i)
        desired = (results.get("desired") or [None] * len(instances))[i]
        if desired is None:
            desired = text(at("after", i))
        # The drop-in as it is on disk: the template's result, or (a run of the service phase alone, the
        # template did not run) a stat of the file. An unknown checksum must not reach the state file: the
        # next run would take it for a changed drop-in and restart.
        dropin_sum = at("dropin", i).get("checksum") or (at("dropin_now", i).get("stat") or {}).get("checksum")
        if state is not None:
            had_conf = True
            changes = redis_conf_changes(state.get("conf", ""), desired)
            dropin_changed = dropin_sum is not None and state.get("dropin") != dropin_sum
        else:
            had_conf = "content" in at("before", i) or not results.get("before")
            changes = {}
            if at("conf", i).get("changed"):
                changes = redis_conf_changes(text(at("before", i)), desired)
            dropin_changed = bool(at("dropin", i).get("changed"))
        live_replies = (results.get("live") or [None] * len(instances))[i]
        answered = isinstance(live_replies, dict) and not live_replies.get("failed") and live_replies.get("responses")
        # The ports: what the running instance serves decides (a switch applied by a run cut off before it
        # recorded it, then reverted in the inventory, shows only there), else what it last took.
        current = (_live_ports(live_replies) if running and answered else None) or (
            _ports(state.get("conf", "")) if state is not None else None)
        switch = None
        if current is not None:
            changes = {key: value for key, value in changes.items() if key not in _TLS_SWITCH}
            wanted = _ports(desired)
            if current != wanted:
                if current[0] != wanted[0]:
                    changes["port"] = wanted[0]
                if current[1] != wanted[1]:
                    changes["tls-port"] = None if wanted[1] == "0" else wanted[1]
                # TLS turned on or off for the same port number is taken live, in one CONFIG SET, also ahead of
                # a restart that other changes need (so that a rolled replica comes back as its primary speaks).
                switch = _tls_switch(current, wanted) if running else None
        static = sorted(key for key, value in changes.items() if value is None or key not in runtime_directives)
        if switch:
            # (Turning TLS off removes the tls-* lines: their live values stay, unused once tls-port is 0.)
            static = [key for key in static
                      if key not in _TLS_SWITCH and not (key.startswith("tls-") and key in runtime_directives)]
        restart = running and (dropin_changed or not had_conf or bool(static))
        live = running and not restart
        # What the running instance would take live, computed also when it restarts: a restart that
        # waits for the rolling plays (tasks/service.yml) applies these first, so that new passwords
        # work at once and the connection files the role writes next are right.
        runtime = {key: value for key, value in changes.items() if value is not None and key in runtime_directives}
        # The replies: CONFIG GET, then (when asked) ACL USERS, the users the instance has now.
        drift = redis_conf_drift(desired, live_replies["responses"][:1], runtime_directives) if answered else None
        live_users = (live_replies["responses"][1] if answered and len(live_replies["responses"]) > 1
                      and isinstance(live_replies["responses"][1], list) else None)
        if running and drift is not None:
            # What the instance runs decides: an apply that failed or was cut off, or a CONFIG SET by
            # hand, shows here; a value already live needs nothing. (No readable answer: the file diff.)
            runtime = drift
        acl_desired = (results.get("acl_desired") or [None] * len(instances))[i]
        if acl_desired is not None and running:
            applied = state.get("acl") if state is not None else None
            known = state is not None or at("acl", i).get("changed")
            acl_now = redis_acl_changes(applied, acl_desired) if known else []
            if live_users is not None:
                # A user made by hand (ACL SETUSER) is in no file: it goes, whatever the state file says.
                wanted = set(_acl_lines(acl_desired)) | {"default"}
                acl_now += [["ACL", "DELUSER", name] for name in sorted(map(str, live_users))
                            if name not in wanted and ["ACL", "DELUSER", name] not in acl_now]
        else:
            acl_now = [["ACL", "LOAD"]] if running and at("acl", i).get("changed") else []
        tls_sum = results.get("tls")
        tls_applied = state.get("tls") if state is not None else None
        reload_tls = running and tls_sum is not None and tls_applied != tls_sum
        if reload_tls:
            # One command for the three: the server loads them together or keeps what it has.
            runtime = {key: value for key, value in runtime.items() if key not in _TLS_FILES}
        if switch:
            # One command: the TLS settings (and files) first, then the port numbers in switch's order.
            tls_pairs = {key: value for key, value in runtime.items() if key.startswith("tls-")}
            if reload_tls:
                tls_pairs.update(zip(_TLS_FILES, results["tls_files"], strict=True))
            if switch[0][0] == "tls-port":
                tls_pairs = {}
            runtime = {key: value for key, value in runtime.items() if not key.startswith("tls-")}
            switch_command = ["CONFIG", "SET", *[part for pair in sorted(tls_pairs.items()) for part in pair],
                              *[part for pair in switch for part in pair]]
        runtime_now = [["CONFIG", "SET", key, value] for key, value in sorted(runtime.items())] if running else []
        if switch:
            runtime_now.append(switch_command)
            reload_tls = False
        if reload_tls:
            runtime_now.append(["CONFIG", "SET", *[part for pair in zip(_TLS_FILES, results["tls_files"], strict=True)
                                                   for part in pair]])
        acl = acl_now if live else []
        runtime_commands = runtime_now if live else []
        acl_users = [command[2] for command in acl_now if len(command) > 2]
        why = static or (["unit drop-in"] if dropin_changed else ["first configuration"])
        summary = "; ".join(part for part in (
            ("CONFIG SET " + ", ".join(command[2] for command in runtime_commands
                                       if len(command) == 4 and command[2] not in _TLS_FILES))
            if any(len(command) == 4 and command[2] not in _TLS_FILES for command in runtime_commands) else "",
            "new TLS certificate, taken live" if reload_tls and live else "",
            ("TLS turned " + ("off" if switch[0][0] == "tls-port" else "on") + " live") if switch else "",
            ("ACL users " + ", ".join(acl_users)) if acl_users and (live or not restart) else "",
            ("restart (" + ", ".join(why) + ")") if restart else "",
            "start" if not running else "") if part)
        taken = {"conf": desired, "dropin": dropin_sum, "acl": acl_desired}
        if tls_sum is not None or tls_applied is not None:
            taken["tls"] = tls_sum if tls_sum is not None else tls_applied
        plan.append({
            "name": instance["name"],
            "unit": instance["unit"],
            "log_file": instance["log_file"],
            "running": running,
            # It answered the runtime read (CONFIG GET, ACL USERS) with its admin connection file.
            "answered": bool(answered),
            "restart": restart,
            "why": why,
            "runtime": runtime_commands,
            "acl": acl,
            "acl_users": acl_users,
            "summary": summary,
            "acl_load": bool(acl),
            # For a restart that waits: what it takes live now (ACL users first, then CONFIG SET).
            "live_first": (acl_now + runtime_now) if restart else [],
            "live_first_users": acl_users if restart else [],
            "connection_file": connection_file.format(name=instance["name"]),
            # What the instance runs once this plan is carried out (tasks/state.yml writes it).
            "state": json.dumps(taken, sort_keys=True),
            "state_current": state == taken,
        })
    return plan


class FilterModule:
    def filters(self):
        return {
            "redis_memory_bytes": redis_memory_bytes,
            "redis_conf_parse": redis_conf_parse,
            "redis_conf_changes": redis_conf_changes,
            "redis_server_plan": redis_server_plan,
            "redis_conf_drift": redis_conf_drift,
            "redis_acl_changes": redis_acl_changes,
        }
