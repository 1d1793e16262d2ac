"""Resolve the effective settings and paths of each instance: profile, role variables, overrides."""

from __future__ import annotations

import json
import re

from ansible.errors import AnsibleFilterError


def _io_threads(value, vcpus):
    # The Redis docs: threads help from 4 cores on, leaving a core or more to the main thread.
    # Below that they only add contention (measured here: io-threads 4 on 2 vCPUs, ~45x slower).
    if str(value) != "auto":
        return int(value)
    return 1 if vcpus < 4 else min(vcpus * 3 // 4, 8)


def redis_server_instances(instances, settings, engine, context):
    """One dict per instance with every setting resolved and every path filled in.

    instances: the redis_server_instances list; settings: profile values combined with the role
    variables that are set; engine: the engine's entry of _redis_server_engines; context: engine
    name, profile, vcpus, extra directives, rename commands, the follow, connection and backup-status
    directories, the role's user names, whether TLS is on, whether the host is a cluster node, and the
    replication group with its replica count (or none).
    """
    result = []
    for raw in instances:
        if not isinstance(raw, dict) or "name" not in raw:
            raise AnsibleFilterError(f"redis_server_instances: each item needs a name, got {raw!r}")
        name = str(raw["name"])
        item = dict(settings)
        item.update({key: value for key, value in raw.items() if key not in ("name", "port")})
        item["io_threads"] = _io_threads(item["io_threads"], int(context["vcpus"]))
        bind = [str(address) for address in item["bind"]]
        plain = [address.lstrip("-") for address in bind]
        run_dir = engine["run_dir"].format(name=name)
        server = engine["server"].rsplit("/", 1)[-1]
        item.update(
            name=name,
            port=int(raw.get("port", 6379)),
            bind=bind,
            engine=context["engine"],
            profile=context["profile"],
            client_host="127.0.0.1" if {"127.0.0.1", "*", "0.0.0.0"} & set(plain) else plain[0],  # noqa: S104
            unit=engine["unit"].format(name=name),
            conf=engine["conf"].format(name=name),
            acl_file=f"{engine['conf_dir']}/users-{name}.acl",
            masterauth_file=f"{engine['conf_dir']}/masterauth-{name}.conf",
            # Sentinel mode: the primary to follow at start (written by redis-infra-follow) and its config.
            replicaof_file=f"{engine['conf_dir']}/replicaof-{name}.conf",
            follow_file=f"{context['follow_dir']}/{name}.toml",
            # The connection file of each of the role's users (admin, monitor, backup), by user name: the
            # one place its path is made (tasks/connection_files.yml writes them, every tool reads them).
            connection_files={user: f"{context['connection_dir']}/{name}-{user}.toml"
                              for user in context.get("users") or []},
            # In a replication group: the name every host of it reports for this instance (the no-primary and
            # split-brain alerts count its primaries) and how many replicas its primary should have.
            replication_group=f"{context['replication_group']}.{name}" if context.get("replication_group") else None,
            expected_replicas=int(context.get("expected_replicas", 0)) if context.get("replication_group") else None,
            # Written by the backup tool, read by the health checker.
            backup_status_file=f"{context['backup_status_dir']}/{name}.json",
            # Written by the maintenance routine (redis-infra-maintenance), read by the health checker.
            maintenance_status_file=f"{context['maintenance_status_dir']}/{name}.json",
            dir=f"{engine['data_root']}/{name}",
            log_file=engine["log_file"].format(name=name),
            run_dir=run_dir,
            pidfile=f"{run_dir}/{server}.pid",
            unixsocket=f"{run_dir}/{server}.sock",
            dropin_dir=f"/etc/systemd/system/{engine['unit'].format(name=name)}.d",
            # The engine's account and tools, as the other roles need them (the backup tool, restores).
            user=engine["user"],
            group=engine["group"],
            server=engine["server"],
            cli=engine["cli"],
            check_rdb=engine["check_rdb"],
            check_aof=engine["check_aof"],
            extra=dict(context.get("extra") or {}, **(raw.get("extra") or {})),
            rename_commands=dict(context.get("rename_commands") or {}),
            # TLS on: the port serves TLS only (plaintext TCP off); the unix socket stays plain.
            tls=bool(context.get("tls", False)),
            # A node of the Redis Cluster (docs/cluster.md): cluster-enabled, its state in nodes.conf in dir.
            cluster=bool(context.get("cluster", False)),
        )
        result.append(item)
    return result


_TRUTH = ("yes", "no", "true", "false", "on", "off")
_WHOLE = re.compile(r"^-?[0-9]+$")
# A size as the server reads it: digits and an optional unit, nothing between them.
_SIZE = re.compile(r"^[0-9]+([kmg]b?|b)?$", re.IGNORECASE)


def _setting_problem(value, rule):
    """Why value breaks rule (a dict: type list, bool, memory, int, choice; and its limits), or None."""
    kind = rule["type"]
    if kind == "list":
        if not isinstance(value, list | tuple) or not all(isinstance(entry, str) for entry in value):
            return f"must be a list of strings, e.g. {rule['example']} (a single string renders one character each)"
        if len(value) < int(rule.get("min_length", 0)):
            return f"must list at least {rule['min_length']}, e.g. {rule['example']}"
        bad = [entry for entry in value if not re.match(rule["pattern"], entry)]
        return f"has entries that are not {rule['what']}: {bad}, e.g. {rule['example']}" if bad else None
    if kind == "bool":
        if isinstance(value, bool) or str(value).lower() in _TRUTH:
            return None
        return "must be true or false"
    if kind == "memory":
        if (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
                isinstance(value, str) and _SIZE.match(value)):
            return None
        return "must be a size without spaces: digits and an optional unit (b, k, kb, m, mb, g, gb), e.g. 2gb or 0"
    if kind == "int":
        if str(value) in [str(word) for word in rule.get("words", [])]:
            return None
        words = "".join(f'"{word}" or ' for word in rule.get("words", []))
        if isinstance(value, bool) or not isinstance(value, int | str) or not _WHOLE.match(str(value)):
            return f"must be {words}a whole number of at least {rule['min']}"
        if int(value) < int(rule["min"]):
            return f"must be {words}at least {rule['min']}{rule.get('why', '')}"
        return None
    if kind == "choice":
        return None if value in rule["choices"] else f"must be one of {', '.join(map(str, rule['choices']))}"
    raise AnsibleFilterError(f"unknown setting rule type {kind!r}")


def redis_server_setting_problems(instances, role_values, rules):
    """One message per bad value, naming its variable: the role variables that are set (role_values,
    setting -> value) and each instance's overrides, against rules (setting -> rule)."""
    sources = [(f"redis_server_{name}", name, value) for name, value in (role_values or {}).items()]
    for raw in instances if isinstance(instances, list) else []:
        if isinstance(raw, dict):
            sources += [(f"redis_server_instances[{raw.get('name', '?')}].{name}", name, value)
                        for name, value in raw.items() if name in rules]
    problems = []
    for variable, name, value in sources:
        problem = _setting_problem(value, rules[name]) if name in rules else None
        if problem:
            problems.append(f"{variable}={json.dumps(value, default=str)} {problem}")
    return problems


def redis_server_cluster_nodes(host_vars):
    """The nodes of the Redis Cluster from the cluster hosts' variables (hostvars of each, in inventory order):
    {'nodes': [{host, name, address, port}], 'missing': hosts whose facts this run has not resolved}."""
    nodes, missing = [], []
    for variables in host_vars:
        host = variables["inventory_hostname"]
        model = variables.get("redis_server_instance_model")
        cluster = variables.get("redis_server_cluster_model")
        if not model or not cluster:
            missing.append(host)
            continue
        nodes += [{"host": host, "name": item["name"], "address": str(cluster["address"]), "port": int(item["port"])}
                  for item in model]
    return {"nodes": nodes, "missing": missing}


def redis_server_cluster_successor(replica_lines, nodes):
    """The node (an item of redis_server_cluster_nodes' list) of the first replica in CLUSTER REPLICAS'
    answer that is linked to its primary and not failing, or None. The lines are read by the redis_cluster
    module's parser (plugins/module_utils/cluster.py), which knows Valkey's port 0 for TLS-only nodes."""
    from ansible_collections.redis_infra.redis.plugins.module_utils.cluster import parse_nodes

    for entry in parse_nodes("\n".join(str(line) for line in replica_lines or [])).values():
        if entry["link"] != "connected" or {"fail", "fail?"} & entry["flags"]:
            continue
        for node in nodes:
            if node["address"] == entry["address"] and int(node["port"]) == entry["port"]:
                return node
    return None


class FilterModule:
    def filters(self):
        return {"redis_server_instances": redis_server_instances,
                "redis_server_setting_problems": redis_server_setting_problems,
                "redis_server_cluster_nodes": redis_server_cluster_nodes,
                "redis_server_cluster_successor": redis_server_cluster_successor}
