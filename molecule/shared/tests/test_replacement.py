"""Upgrade by replacement (playbooks/replace.yml, docs/upgrade.md) on the Sentinel group (molecule/ha), last of
its tests because the Debian 12 hosts leave (the file's name sorts after every other module of the scenario, whose
tests need them): two Debian 13 hosts (Redis 8.0) join the group of three Debian 12
hosts (Redis 7.0) as replicas with site.yml, take it over by a failover, and the old hosts leave, under a writer
through Sentinel and the application's writer through its proxied REDIS_URL. Run on whatever primary and
passwords test_ha.py left, after its verify.yml test (which gives the application host redis-py, for its writer)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time

import pytest
import test_ha as ha
import testinfra
import yaml

hosts, addresses = ha.hosts, ha.addresses  # test_ha.py's fixtures
NEW_HOSTS = ["redis-infra-ha-trixie-1", "redis-infra-ha-trixie-2"]
PROJECT = os.environ.get("MOLECULE_PROJECT_DIRECTORY", "")
GROUPS = ("redis", "redis_replicas", "redis_sentinel")
UNITS = ("redis-server@main.service", "redis-sentinel.service", "redis-health.service")
DUMP = "/var/lib/redis/main/dump.rdb"

if not set(NEW_HOSTS) <= set(ha.RUNNER.get_hosts("all")) or not ha.APP_HOSTS:
    pytest.skip("this scenario has no Debian 13 hosts to move the group to", allow_module_level=True)


@pytest.fixture(scope="module")
def passwords(hosts):
    with ha.working_passwords(hosts) as changed:
        yield changed


def _inventory(directory, stage):
    """The scenario's inventory for one stage of the replacement: "join" adds the new hosts to the groups and puts
    the old ones in redis_retiring; "final" has the new hosts only (the old ones removed, as an operator does
    after the playbook). The scenario's group_vars come along (a link beside the file)."""
    with open(ha.INVENTORY) as source:
        data = yaml.safe_load(source)
    old = list(data["redis"]["hosts"])
    connection = {"ansible_connection": "community.docker.docker"}
    data.pop("ungrouped", None)
    if stage == "join":
        for group in GROUPS:
            data[group]["hosts"].update(dict.fromkeys(NEW_HOSTS, connection))
        data["redis_retiring"] = {"hosts": dict.fromkeys(old, connection)}
    else:
        for group in ("redis", "redis_primary", "redis_replicas", "redis_sentinel"):
            data[group]["hosts"] = {}
        data["redis"]["hosts"] = dict.fromkeys(NEW_HOSTS, connection)
        data["redis_primary"]["hosts"] = dict.fromkeys(NEW_HOSTS[:1], connection)
        data["redis_replicas"]["hosts"] = dict.fromkeys(NEW_HOSTS[1:], connection)
        data["redis_sentinel"]["hosts"] = dict.fromkeys(NEW_HOSTS, connection)
        for name in old:
            data["all"]["hosts"].pop(name, None)
    # The scenario's private CA (the default sits beside the inventory's directory).
    data["all"].setdefault("vars", {})["redis_server_tls_ca_dir"] = os.path.join(
        os.path.dirname(os.path.dirname(ha.INVENTORY)), "inventory-tls")
    path = directory / stage
    path.mkdir()
    (path / "group_vars").symlink_to(os.path.join(os.path.dirname(ha.INVENTORY), "group_vars"))
    (path / "hosts.yml").write_text(yaml.safe_dump(data))
    return str(path)


def _run(inventory, playbook, extra, *args):
    command = ["ansible-playbook", "-i", inventory, os.path.join(PROJECT, playbook), *extra, *args]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False, env=env)
    return result, result.stdout + result.stderr


def _extra_vars(passwords, directory):
    """The passwords that work now (test_ha.py's rotation may have changed them) as playbook extra vars."""
    if not passwords:
        return []
    secrets = directory / "passwords.yml"
    secrets.write_text(yaml.safe_dump(passwords))
    secrets.chmod(0o600)
    return ["-e", f"@{secrets}"]


def _changed(output):
    return dict(re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", output, re.MULTILINE))


def test_ha_replace_moves_the_group_to_debian_13_hosts_under_load(hosts, addresses, passwords, tmp_path):
    """The new hosts join as replicas with site.yml --limit; replace.yml in check mode says what moves and changes
    nothing; the run moves the primary to a new host and retires the old ones (stopped and disabled, data kept);
    no write a replica acknowledged is lost, the application's REDIS_URL works through the move unchanged, one
    primary remains and the Sentinels that stay know only each other; a re-run changes nothing; site.yml and
    app_settings.yml on the inventory without the old hosts converge."""
    extra = _extra_vars(passwords, tmp_path)
    join = _inventory(tmp_path, "join")
    new = {name: testinfra.get_host(f"ansible://{name}?ansible_inventory={join}") for name in NEW_HOSTS}
    old_primary = ha.current_primary(hosts)

    # A host that does not follow the primary yet is refused before anything changes.
    early, said = _run(join, "playbooks/replace.yml", extra)
    assert early.returncode != 0 and "Nothing was changed" in " ".join(said.split()), said[-3000:]
    assert ha.current_primary(hosts) == old_primary

    joined, said = _run(join, "site.yml", extra, "--limit", ",".join(NEW_HOSTS))
    assert joined.returncode == 0, said[-4000:]
    settings, said = _run(join, "playbooks/app_settings.yml", extra)
    assert settings.returncode == 0, said[-4000:]
    for host in new.values():
        assert ha.cli(host, "INFO", "server").count("redis_version:8.0") == 1
        assert ha.info(host).get("master_link_status") == "up"
    app = ha._app_host()
    url = ha._env(app)["REDIS_URL"]

    preview, said = _run(join, "playbooks/replace.yml", extra, "--check")
    flat = " ".join(said.split())
    assert preview.returncode == 0, said[-4000:]
    assert "redis 8.0" in flat and "(RDB 12)" in flat and "redis 7.0.15 (RDB 10)" in flat, flat[-3000:]
    assert ha.current_primary(hosts) == old_primary

    route = "ip -4 route get 1.1.1.1 | grep -o 'src [0-9.]*' | cut -d' ' -f2"
    everyone = {**addresses, **{name: host.check_output(route) for name, host in new.items()}}
    with ha.DurableWriter(everyone, "verify:replace", wait=True, sentinels=list(everyone)) as writer, \
            ha.ApplicationWriter(ha.APP_HOSTS[0], ha.APP_ENV_FILE) as application:
        time.sleep(2)
        started = time.monotonic()
        result, said = _run(join, "playbooks/replace.yml", extra)
        took = time.monotonic() - started
        time.sleep(2)
    assert result.returncode == 0, said[-4000:]

    new_primary = ha.current_primary(new)
    assert ha.info(new[[n for n in NEW_HOSTS if n != new_primary][0]]).get("master_link_status") == "up"
    for name, host in hosts.items():
        for unit in UNITS:
            assert not host.service(unit).is_running and not host.service(unit).is_enabled, (name, unit)
    # The old primary stopped with its data on disk: the way back until the host is removed.
    assert hosts[old_primary].file(DUMP).exists and hosts[old_primary].file(DUMP).size > 0
    for host in hosts.values():
        assert not host.file("/etc/cron.d/redis-infra-backup").exists
    for host in new.values():
        master = dict(zip(*[iter(ha.sentinel(host, "SENTINEL", "MASTER", ha.NAME).splitlines())] * 2, strict=False))
        assert (master["num-other-sentinels"], master["num-slaves"], master["flags"]) == ("1", "1", "master"), master
    lost = ha._missing(new, [key for key, _ in writer.acked])
    assert len(writer.acked) > 100, writer.errors[:5]
    assert lost == [], f"{len(lost)} writes a replica had acknowledged were lost in the replacement"
    moments = [moment for _, moment in writer.acked]
    longest = max(later - earlier for earlier, later in zip(moments, moments[1:], strict=False))
    app_result = application.result or {}
    print(f"replace: playbook {took:.1f} s; longest time between two acknowledged writes {longest:.1f} s "
          f"(through Sentinel, WAIT 1); the application through its proxy: {json.dumps(app_result)}")
    assert longest < 15, f"longest write outage {longest:.1f} s (errors: {writer.errors[:5]})"
    assert app_result.get("acknowledged", 0) > 100 and app_result.get("longest", 99) < 15, app_result

    rerun, said = _run(join, "playbooks/replace.yml", extra)
    assert rerun.returncode == 0, said[-4000:]
    assert set(_changed(said).values()) == {"0"}, _changed(said)
    assert ha.current_primary(new) == new_primary

    final = _inventory(tmp_path, "final")
    converged, said = _run(final, "site.yml", extra)
    assert converged.returncode == 0, said[-4000:]
    settings, said = _run(final, "playbooks/app_settings.yml", extra)
    assert settings.returncode == 0, said[-4000:]
    assert ha._env(app)["REDIS_URL"] == url
    assert "redis-infra-ha-1" not in app.file("/etc/redis-infra/proxy/haproxy.cfg").content_string
    assert ha.current_primary(new) == new_primary
    with ha.ApplicationWriter(ha.APP_HOSTS[0], ha.APP_ENV_FILE) as after:
        time.sleep(3)
    assert (after.result or {}).get("acknowledged", 0) > 10 and not (after.result or {}).get("errors"), after.result


def _local(host, *args):
    """The engine's CLI on the instance's unix socket, as admin: works whether TCP speaks TLS or not."""
    socket = host.check_output("awk '$1 == \"unixsocket\" {print $2}' /etc/redis/redis-main.conf")
    command = f"redis-cli --no-auth-warning -s {socket} --user admin " + " ".join(shlex.quote(str(a)) for a in args)
    return host.check_output(f"REDISCLI_AUTH={shlex.quote(ha.VARIABLES['redis_server_admin_password'])} {command}")


def _state(host):
    server, replication, stats = (_local(host, "INFO", section) for section in ("server", "replication", "stats"))
    fields = dict(line.split(":", 1) for text in (server, replication, stats)
                  for line in text.splitlines() if ":" in line)
    return {key: fields.get(key, "").strip() for key in ("run_id", "role", "master_link_status", "sync_full")}


def test_ha_tls_turned_off_and_on_again_live_on_the_new_hosts(passwords, tmp_path):
    """After the move, on the two Debian 13 hosts (Redis 8.0): site.yml with TLS off, then with TLS on again, takes
    each switch live. No instance restarts (its run_id stays), the replication link stays up with no new full
    sync, data written between is on the replica, the port speaks only the new way, and the Sentinels (which
    restart for it, one at a time) see their quorum."""
    final = _inventory(tmp_path, "final")
    new = {name: testinfra.get_host(f"ansible://{name}?ansible_inventory={final}") for name in NEW_HOSTS}
    extra = _extra_vars(passwords, tmp_path)
    before = {name: _state(host) for name, host in new.items()}
    primary = next(name for name, state in before.items() if state["role"] == "master")
    replica = next(name for name in new if name != primary)
    for step, tls in enumerate(("false", "true")):
        # (The checkers' own certificate is the servers': without TLS they serve plain HTTP.)
        result, said = _run(final, "site.yml", extra, "-e", f"redis_server_tls={tls}",
                            "-e", f"redis_health_tls_server_certificate={tls}")
        assert result.returncode == 0, said[-4000:]
        assert f"TLS turned {'off' if tls == 'false' else 'on'} live" in " ".join(said.split()), said[-3000:]
        _local(new[primary], "SET", f"verify:tls-switch:{step}", "1")
        for _ in ha.deadline(30):
            after = {name: _state(host) for name, host in new.items()}
            copied = _local(new[replica], "GET", f"verify:tls-switch:{step}") == "1"
            if after[replica]["master_link_status"] == "up" and copied:
                break
        assert after[replica]["master_link_status"] == "up" and copied, (tls, after)
        assert {name: state["run_id"] for name, state in after.items()} == {n: s["run_id"] for n, s in before.items()}
        assert after[primary]["sync_full"] == before[primary]["sync_full"], (before, after)
        ports = _local(new[primary], "CONFIG", "GET", "port").splitlines()[-1], _local(
            new[primary], "CONFIG", "GET", "tls-port").splitlines()[-1]
        assert ports == (("6379", "0") if tls == "false" else ("0", "6379")), ports
        address = new[replica].check_output("hostname -i").split()[0]
        plain = new[replica].run(f"redis-cli --no-auth-warning -h {address} -p 6379 PING")
        assert ("NOAUTH" in plain.stdout + plain.stderr or "PONG" in plain.stdout) == (tls == "false"), plain.stdout
        sentinel_tls = "" if tls == "false" else " --tls --cacert /etc/redis-infra/tls/ca.crt"
        for host in new.values():
            quorum = host.run(f"REDISCLI_AUTH={shlex.quote(ha.VARIABLES['redis_sentinel_password'])} redis-cli "
                              f"--no-auth-warning{sentinel_tls} -p {ha.SENTINEL_PORT} SENTINEL CKQUORUM {ha.NAME}")
            assert quorum.stdout.startswith("OK"), quorum.stdout + quorum.stderr
    again, said = _run(final, "site.yml", extra)
    assert again.returncode == 0 and set(_changed(said).values()) == {"0"}, _changed(said)
