"""Resolve the effective settings and paths of each instance: profile, role variables, overrides."""

from __future__ import annotations

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
    name, profile, vcpus, extra directives, rename commands.
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
            dir=f"{engine['data_root']}/{name}",
            log_file=engine["log_file"].format(name=name),
            run_dir=run_dir,
            pidfile=f"{run_dir}/{server}.pid",
            unixsocket=f"{run_dir}/{server}.sock",
            dropin_dir=f"/etc/systemd/system/{engine['unit'].format(name=name)}.d",
            extra=dict(context.get("extra") or {}, **(raw.get("extra") or {})),
            rename_commands=dict(context.get("rename_commands") or {}),
        )
        result.append(item)
    return result


class FilterModule:
    def filters(self):
        return {"redis_server_instances": redis_server_instances}
