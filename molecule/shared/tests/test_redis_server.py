"""Behaviour of a converged host, for every scenario: what the inventory asks for is what runs."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shlex
import subprocess
import time

import pytest
import tls_setup
from preflight_cases import case_tasks
from tls_setup import CA_FILE, tls_on

# Redis hosts only (a scenario may have a monitoring host: test_monitoring.py).
testinfra_hosts = ["ansible://redis"]

PROFILE_SETTINGS = {
    "development": {"maxmemory": "0", "maxmemory-policy": "noeviction", "appendonly": "no",
                    "appendfsync": "everysec", "save": "3600 1 300 100 60 10000"},
    "production": {"maxmemory": str(2 * 1024**3), "maxmemory-policy": "allkeys-lru", "appendonly": "yes",
                   "appendfsync": "everysec", "save": "900 1 300 10 60 10000", "aof-use-rdb-preamble": "yes",
                   "tcp-backlog": "511", "tcp-keepalive": "300", "maxclients": "10000", "protected-mode": "yes",
                   "io-threads": "1"},
}
DISABLED = ["flushdb", "flushall", "keys", "config", "debug", "shutdown", "monitor"]
MEMORY = {"mb": 1024**2, "gb": 1024**3}


@pytest.fixture(scope="module")
def env(host):
    """The scenario's inventory variables with the role's defaults filled in."""
    variables = host.ansible.get_variables()
    engine = variables.get("redis_server_engine", "redis")
    return {
        "engine": engine,
        "cli": tls_setup.cli(engine, variables),
        "tls": tls_on(variables),
        "group": engine,
        "conf_dir": f"/etc/{engine}",
        "profile": variables.get("redis_server_profile", "development"),
        "instances": variables.get("redis_server_instances", [{"name": "main", "port": 6379}]),
        "password": variables.get("redis_server_password", ""),
        "admin": variables["redis_server_admin_password"],
        "monitor": variables.get("redis_server_monitor_password", ""),
    }


def passwords(env):
    return [secret for secret in (env["password"], env["admin"], env["monitor"]) if secret]


def cli(host, env, port, *args, user=None, password=None, check=False):
    """Run the engine's CLI inside the container; the password goes through REDISCLI_AUTH."""
    command = f"{env['cli']} --no-auth-warning -p {port}"
    if user:
        command += f" --user {user}"
    command += " " + " ".join(shlex.quote(str(arg)) for arg in args)
    if password:
        command = f"REDISCLI_AUTH={shlex.quote(password)} {command}"
    result = host.run(command)
    if check:
        assert result.rc == 0, result.stderr
    # redis-cli reports a failed AUTH on stderr and the command's reply on stdout.
    return (result.stdout.strip() + "\n" + result.stderr.strip()).strip()


def app(host, env, port, *args):
    return cli(host, env, port, *args, password=env["password"] or None)


def admin(host, env, port, *args):
    return cli(host, env, port, *args, user="admin", password=env["admin"])


def unit(env, instance):
    return f"{env['engine']}-server@{instance['name']}.service"


# Tests of code that does not depend on the engine's version or the profile run once per distribution
# (Debian 12 with Redis 7.0, Debian 13 with Valkey 8.1), not in each of the four single-host scenarios.
ONCE_PER_DISTRIBUTION = ("default", "valkey")


def once_per_distribution():
    scenario = os.environ.get("MOLECULE_SCENARIO_NAME")
    if scenario and scenario not in ONCE_PER_DISTRIBUTION:
        pytest.skip(f"runs once per distribution, in the {' and '.join(ONCE_PER_DISTRIBUTION)} scenarios")


def journal_on_failure(host, env, instance):
    return host.run(f"journalctl -u {unit(env, instance)} -n 30 --no-pager").stdout


def test_instances_active_enabled_and_listening(host, env):
    for instance in env["instances"]:
        service = host.service(unit(env, instance))
        assert service.is_running, journal_on_failure(host, env, instance)
        assert service.is_enabled
        assert host.socket(f"tcp://127.0.0.1:{instance['port']}").is_listening
        assert admin(host, env, instance["port"], "PING") == "PONG"


def test_distribution_service_is_masked(host, env):
    assert host.file(f"/etc/systemd/system/{env['engine']}-server.service").linked_to == "/dev/null"


def test_application_user_reads_and_writes(host, env):
    for instance in env["instances"]:
        port = instance["port"]
        assert app(host, env, port, "SET", "verify:app", "hello") == "OK"
        assert app(host, env, port, "GET", "verify:app") == "hello"
        assert app(host, env, port, "DEL", "verify:app") == "1"


def test_authentication_is_required_when_a_password_is_set(host, env):
    for instance in env["instances"]:
        reply = cli(host, env, instance["port"], "GET", "verify:app")
        if env["password"]:
            assert "NOAUTH" in reply
        else:
            # Development without an application password: reachable on loopback only, protected mode on.
            assert admin(host, env, instance["port"], "CONFIG", "GET", "protected-mode").endswith("yes")
            bind = admin(host, env, instance["port"], "CONFIG", "GET", "bind").splitlines()[-1]
            assert set(bind.split()) <= {"127.0.0.1", "-::1", "::1"}
        wrong = cli(host, env, instance["port"], "PING", password="not-the-password-at-all")
        if env["password"]:
            assert "WRONGPASS" in wrong
        else:  # a default user without password answers, whatever password the client sends
            assert wrong.startswith("PONG")


@pytest.mark.parametrize("command", DISABLED)
def test_disabled_commands_refused_for_application_allowed_for_admin(host, env, command):
    port = env["instances"][0]["port"]
    dryrun_args = {"keys": ["*"], "config": ["GET", "maxmemory"], "debug": ["HELP"], "shutdown": ["NOSAVE"]}
    args = dryrun_args.get(command, [])
    refused = admin(host, env, port, "ACL", "DRYRUN", "default", command, *args)
    assert "no permissions" in refused, refused
    assert admin(host, env, port, "ACL", "DRYRUN", "admin", command, *args) == "OK"
    if command in ("flushdb", "flushall", "keys", "config"):  # DEBUG is refused before ACLs are checked
        reply = app(host, env, port, command, *args)
        assert "NOPERM" in reply, reply


# The seed's six uses of Redis, run through redis-py as the application's user, then the commands that
# would let it disrupt other clients, the replicas or the operators' evidence.
APPLICATION_USES = r"""
import json, os, sys, time
import redis
tls = {"ssl": True, "ssl_ca_certs": os.environ["TLS_CA"]} if os.environ.get("TLS_CA") else {}
r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), password=os.environ.get("REDISCLI_AUTH") or None,
                decode_responses=True, socket_timeout=5, **tls)
done = []
assert r.set("cache:user:1", "cached", ex=60) and 0 < r.ttl("cache:user:1") <= 60 and r.get("cache:user:1") == "cached"
done.append("cache")
r.hset("session:web:abc", mapping={"user": "1", "role": "reader"}); r.expire("session:web:abc", 1800)
assert r.hgetall("session:web:abc") == {"user": "1", "role": "reader"}
done.append("sessions")
limiter = r.register_script("local n = redis.call('INCR', KEYS[1]) "
                            "if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return n")
assert [limiter(keys=["ratelimit:api:1"], args=[1000]) for _ in range(3)] == [1, 2, 3]
assert r.evalsha(limiter.sha, 1, "ratelimit:api:1", 1000) == 4
done.append("rate limit")
sub = r.pubsub(); sub.subscribe("events:orders")
sub.get_message(timeout=2)
assert r.publish("events:orders", "created") == 1
message = sub.get_message(timeout=2)
assert message and message["data"] == "created"; sub.close()
done.append("pub/sub")
assert r.set("lock:job:7", "token-1", nx=True, px=5000) and not r.set("lock:job:7", "token-2", nx=True, px=5000)
release = r.register_script("if redis.call('GET', KEYS[1]) == ARGV[1] then "
                            "return redis.call('DEL', KEYS[1]) end return 0")
assert release(keys=["lock:job:7"], args=["token-2"]) == 0 and release(keys=["lock:job:7"], args=["token-1"]) == 1
done.append("locks")
r.lpush("queue:mail", "job-1"); assert r.brpop("queue:mail", timeout=1) == ("queue:mail", "job-1")
r.delete("stream:orders"); r.xadd("stream:orders", {"id": "1"}); r.xgroup_create("stream:orders", "workers", id="0")
entries = r.xreadgroup("workers", "worker-1", {"stream:orders": ">"}, count=1)
assert r.xack("stream:orders", "workers", entries[0][1][0][0]) == 1
done.append("queues")
r.delete("cache:user:1", "session:web:abc", "ratelimit:api:1", "queue:mail", "stream:orders")
refused = {}
for command in (["CLIENT", "PAUSE", "10"], ["CLIENT", "KILL", "TYPE", "replica"], ["CLIENT", "NO-EVICT", "on"],
                ["FUNCTION", "FLUSH"], ["SCRIPT", "FLUSH"], ["SLOWLOG", "RESET"], ["LATENCY", "RESET"],
                ["FLUSHALL"], ["CONFIG", "SET", "maxmemory", "1"], ["ACL", "LIST"], ["REPLICAOF", "NO", "ONE"]):
    try:
        r.execute_command(*command)
        refused[" ".join(command)] = "ALLOWED"
    except redis.exceptions.NoPermissionError:
        refused[" ".join(command)] = "NOPERM"
    except redis.exceptions.ResponseError as exc:
        refused[" ".join(command)] = str(exc)
print(json.dumps({"done": done, "refused": refused}))
"""


def test_application_user_does_its_job_and_cannot_disrupt(host, env):
    for instance in env["instances"]:
        script = f"python3 - {instance['port']} <<'PYTHON'\n{APPLICATION_USES}\nPYTHON"
        tls = f"TLS_CA={CA_FILE} " if env["tls"] else ""
        result = host.run(f"{tls}REDISCLI_AUTH={shlex.quote(env['password'])} {script}")
        assert result.rc == 0, result.stderr
        outcome = json.loads(result.stdout.strip().splitlines()[-1])
        assert outcome["done"] == ["cache", "sessions", "rate limit", "pub/sub", "locks", "queues"]
        assert set(outcome["refused"].values()) == {"NOPERM"}, outcome["refused"]


def test_monitoring_user_is_read_only(host, env):
    if not env["monitor"]:
        pytest.skip("no monitoring password in this scenario")
    port = env["instances"][0]["port"]
    monitor = {"user": "monitor", "password": env["monitor"]}
    assert cli(host, env, port, "PING", **monitor) == "PONG"
    assert "redis_version" in cli(host, env, port, "INFO", "server", **monitor)
    assert cli(host, env, port, "SET", "redis-infra:health:probe", "1", "EX", "5", **monitor) == "OK"
    assert "NOPERM" in cli(host, env, port, "GET", "someone:else", **monitor)
    assert "NOPERM" in cli(host, env, port, "CONFIG", "GET", "*", **monitor)
    assert "NOPERM" in cli(host, env, port, "FLUSHALL", **monitor)


def test_profile_settings_are_live(host, env):
    for instance in env["instances"]:
        expected = dict(PROFILE_SETTINGS[env["profile"]])
        if "maxmemory" in instance:
            number, unit_name = re.match(r"(\d+)([a-z]+)", instance["maxmemory"]).groups()
            expected["maxmemory"] = str(int(number) * MEMORY[unit_name])
        if "appendonly" in instance:
            expected["appendonly"] = "yes" if instance["appendonly"] else "no"
        if "save" in instance:
            expected["save"] = " ".join(instance["save"])
        for directive, value in expected.items():
            reply = admin(host, env, instance["port"], "CONFIG", "GET", directive).splitlines()
            reply += [""] * (2 - len(reply))  # an empty value (save "") prints as nothing
            assert reply == [directive, value], f"{instance['name']}: {directive}"


def test_key_written_before_a_restart_is_there_after_it(host, env):
    instance = env["instances"][0]
    port = instance["port"]
    assert app(host, env, port, "SET", "verify:durable", "still-here") == "OK"
    host.run_test(f"systemctl restart {unit(env, instance)}")
    for _ in range(50):
        if admin(host, env, port, "PING") == "PONG":
            break
        time.sleep(0.2)
    assert app(host, env, port, "GET", "verify:durable") == "still-here", journal_on_failure(host, env, instance)


def test_secret_files_are_not_world_readable(host, env):
    for instance in env["instances"]:
        for path in (f"{env['conf_dir']}/{env['engine']}-{instance['name']}.conf",
                     f"{env['conf_dir']}/users-{instance['name']}.acl"):
            file = host.file(path)
            assert file.mode == 0o640, path
            assert (file.user, file.group) == ("root", env["group"]), path
        connection = host.file(f"/etc/redis-infra/connections/{instance['name']}-admin.toml")
        assert connection.mode == 0o600 and connection.user == "root"
    acl = host.file(f"{env['conf_dir']}/users-{env['instances'][0]['name']}.acl").content_string
    for secret in passwords(env):
        assert secret not in acl  # only SHA-256 hashes


def test_no_password_in_processes_units_or_logs(host, env):
    places = {
        "ps": host.run("ps -eo args").stdout,
        "units": host.run(f"systemctl cat '{env['engine']}-server@*' --no-pager").stdout,
        "journal": host.run("journalctl --no-pager -o cat").stdout,
        "logs": host.run(f"cat /var/log/{env['engine']}/*.log").stdout,
        "config": host.run(f"cat {env['conf_dir']}/{env['engine']}-*.conf").stdout,
    }
    for secret in passwords(env):
        for place, text in places.items():
            assert secret not in text, f"a password appears in {place}"


def test_tls_only_on_tcp_tls_1_3_with_the_ca(host, env):
    """TLS on: the port serves TLS only; a client needs the CA; TLS 1.3 is negotiated, TLS 1.1 refused;
    the key is root:<engine group> 0640."""
    if not env["tls"]:
        pytest.skip("TLS is off in this scenario")
    plain = f"{env['engine']}-cli"
    for instance in env["instances"]:
        port = instance["port"]
        result = host.run(f"{plain} -p {port} PING")
        assert "PONG" not in result.stdout and "NOAUTH" not in result.stdout, "plaintext TCP answered"
        assert "NOAUTH" in cli(host, env, port, "GET", "verify:app")
        result = host.run(f"{plain} --tls -p {port} PING")
        assert "certificate verify failed" in result.stdout + result.stderr, result.stdout + result.stderr
        result = host.run(f"openssl s_client -brief -connect 127.0.0.1:{port} -CAfile {CA_FILE} </dev/null")
        assert "Protocol version: TLSv1.3" in result.stderr and "Verification: OK" in result.stderr, result.stderr
        assert host.run(f"openssl s_client -brief -connect 127.0.0.1:{port} -tls1_1 </dev/null").rc != 0
    key, certificate = host.file(tls_setup.KEY_FILE), host.file(tls_setup.CERT_FILE)
    assert (key.mode, key.user, key.group) == (0o640, "root", env["group"])
    assert (certificate.mode, certificate.user) == (0o644, "root")
    assert "PRIVATE KEY" not in host.file(CA_FILE).content_string + certificate.content_string


def test_tls_clients_from_the_network_need_the_ca(host, env):
    """redis-py with rediss:// from the controller: works with the private CA, fails without it."""
    if not env["tls"] or "MOLECULE_EPHEMERAL_DIRECTORY" not in os.environ:
        pytest.skip("TLS is off in this scenario")
    import redis

    address = host.check_output("hostname -I").split()[0]
    port = env["instances"][0]["port"]
    url = f"rediss://:{env['password']}@{address}:{port}/0"
    client = redis.Redis.from_url(url, ssl_ca_certs=tls_setup.controller_ca(), socket_timeout=5)
    assert client.set("verify:tls", "1") and client.get("verify:tls") == b"1" and client.delete("verify:tls") == 1
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis.Redis.from_url(url, socket_timeout=5).ping()
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host=address, port=port, password=env["password"], socket_timeout=5).ping()


def _playbook(*args, server_only=False):
    """Run the converge playbook again from the controller, as Molecule does; with server_only, only
    playbooks/redis.yml (the server role and its rolling plays), for tests of the server's own behaviour:
    the other plays take half of a converge's time and change nothing those tests look at. A scenario
    with a converge playbook of its own (default: the installed collection's) runs that one."""
    scenario = os.environ["MOLECULE_SCENARIO_DIRECTORY"]
    if server_only:
        playbook = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "redis.yml")
    elif os.path.exists(os.path.join(scenario, "converge.yml")):
        playbook = os.path.join(scenario, "converge.yml")
    else:
        playbook = os.path.join(scenario, "..", "shared", "converge.yml")
    command = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], playbook, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def reconverge():
    if "MOLECULE_INVENTORY_FILE" not in os.environ:
        pytest.skip("not run by Molecule")
    return _playbook


def test_check_mode_and_rerun_change_nothing_and_print_no_secret(host, env, reconverge):
    for args in (["--check", "--diff"], ["--diff", "-v"]):
        result = reconverge(*args)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-3000:]
        assert re.search(r"changed=0\s", output), output[-3000:]
        for secret in passwords(env):
            assert secret not in output, f"a password appears in the output of ansible-playbook {' '.join(args)}"


def test_runtime_settings_apply_live_and_static_ones_restart(host, env, reconverge):
    # production runs Redis 7.0 on Debian 12 as default does; its live changes are in
    # test_apply_converges_on_what_the_instance_runs, its static ones in ha's rolling static change.
    if os.environ.get("MOLECULE_SCENARIO_NAME") == "production":
        pytest.skip("default covers this engine; production's own apply test covers the profile")
    instance = env["instances"][0]
    port = instance["port"]

    def run_id():
        return re.search(r"run_id:(\w+)", admin(host, env, port, "INFO", "server")).group(1)

    before = run_id()
    result = reconverge("-e", "redis_server_maxmemory=1gb", "-e", "redis_server_slowlog_max_len=99", server_only=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert admin(host, env, port, "CONFIG", "GET", "maxmemory").splitlines()[-1] == str(1024**3)
    assert admin(host, env, port, "CONFIG", "GET", "slowlog-max-len").splitlines()[-1] == "99"
    assert run_id() == before, "a runtime-changeable setting restarted the instance"
    result = reconverge("-e", "redis_server_tcp_backlog=400", server_only=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert admin(host, env, port, "CONFIG", "GET", "tcp-backlog").splitlines()[-1] == "400"
    assert run_id() != before, "tcp-backlog changed without a restart"
    result = reconverge(server_only=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert admin(host, env, port, "CONFIG", "GET", "tcp-backlog").splitlines()[-1] == "511"


def test_apply_converges_on_what_the_instance_runs(host, env, reconverge):
    """Convergent apply and the phase tags, on the production scenario (one host, standalone): a CONFIG SET
    by hand is reverted and a CONFIG REWRITE by hand restarts nothing; a run cut off between the file
    and CONFIG SET (only the configure phase ran) is applied by the next run of the service phase alone."""
    if os.environ.get("MOLECULE_SCENARIO_NAME") != "production":
        pytest.skip("runs in the production scenario")
    port = env["instances"][0]["port"]
    conf = f"{env['conf_dir']}/{env['engine']}-{env['instances'][0]['name']}.conf"

    def run_id():
        return re.search(r"run_id:(\w+)", admin(host, env, port, "INFO", "server")).group(1)

    def live(directive):
        return admin(host, env, port, "CONFIG", "GET", directive).splitlines()[-1]

    before, managed = run_id(), host.file(conf).content_string
    for extra, expected in ((["-e", "redis_server_maxmemory=1gb", "-e", "redis_server_password=" + "p" * 40],
                             "main would take: CONFIG SET maxmemory; ACL users default"),
                            (["-e", "redis_server_tcp_backlog=400"], "main would take: restart (tcp-backlog)")):
        preview = reconverge("--check", *extra, server_only=True)
        said = " ".join((preview.stdout + preview.stderr).split())
        assert preview.returncode == 0, said[-3000:]
        assert expected in said, said[-3000:]
        assert "p" * 40 not in said and hashlib.sha256(b"p" * 40).hexdigest() not in said, "a secret in the preview"
    assert host.file(conf).content_string == managed and run_id() == before, "check mode changed something"
    assert admin(host, env, port, "CONFIG", "SET", "maxmemory", "12345") == "OK"
    assert admin(host, env, port, "CONFIG", "SET", "slowlog-max-len", "7") == "OK"
    assert admin(host, env, port, "CONFIG", "REWRITE") == "OK"
    assert host.file(conf).content_string != managed
    result = reconverge(server_only=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (live("maxmemory"), live("slowlog-max-len")) == (str(2 * 1024**3), "256"), "hand-made settings stayed"
    assert host.file(conf).content_string == managed, "the rewritten file was not put back"
    assert run_id() == before, "a CONFIG REWRITE by hand caused a restart"

    cut_off = reconverge("--tags", "redis_server_configure", "-e", "redis_server_maxmemory=1gb", server_only=True)
    assert cut_off.returncode == 0, cut_off.stdout[-3000:]
    assert "maxmemory 1gb" in host.file(conf).content_string and live("maxmemory") == str(2 * 1024**3)
    resumed = reconverge("--tags", "redis_server_service", "-e", "redis_server_maxmemory=1gb", server_only=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert live("maxmemory") == str(1024**3), "the next run did not apply what the cut-off run wrote"
    assert run_id() == before
    result = reconverge(server_only=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert live("maxmemory") == str(2 * 1024**3) and run_id() == before


def test_a_restart_that_fails_shows_the_log_and_fails_the_play(host, env, reconverge):
    once_per_distribution()
    bad = {"redis_server_config_extra": {"no-such-directive": "yes"}, "redis_server_start_timeout": 8}
    result = reconverge("-e", json.dumps(bad), server_only=True)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "does not answer PING" in output
    assert "no-such-directive" in output, "the failure does not show the instance's log"
    assert reconverge(server_only=True).returncode == 0  # back to the inventory's config
    assert admin(host, env, env["instances"][0]["port"], "PING") == "PONG"


BAD_INPUT = [
    ("port out of range", "redis_server_instances", {"redis_server_instances": [{"name": "main", "port": 70000}]}),
    ("port zero", "redis_server_instances", {"redis_server_instances": [{"name": "main", "port": 0}]}),
    ("unparseable maxmemory", "redis_server_maxmemory", {"redis_server_maxmemory": "2 gigs"}),
    ("unknown eviction policy", "redis_server_maxmemory_policy", {"redis_server_maxmemory_policy": "lru-ish"}),
    ("unknown appendfsync", "redis_server_appendfsync", {"redis_server_appendfsync": "sometimes"}),
    ("unknown profile", "redis_server_profile", {"redis_server_profile": "staging"}),
    ("unknown engine", "redis_server_engine", {"redis_server_engine": "keydb"}),
    ("two instances with one name", "redis_server_instances",
     {"redis_server_instances": [{"name": "main", "port": 6379}, {"name": "main", "port": 6390}]}),
    ("two instances with one port", "redis_server_instances",
     {"redis_server_instances": [{"name": "main", "port": 6379}, {"name": "other", "port": 6379}]}),
    ("io-threads above the vCPUs", "redis_server_io_threads", {"redis_server_io_threads": 512}),
    ("unknown instance override", "redis_server_instances",
     {"redis_server_instances": [{"name": "main", "port": 6379, "maxmem": "1gb"}]}),
    ("production without passwords", "redis_server_password",
     {"redis_server_profile": "production", "redis_server_password": ""}),
    ("production with a short password", "redis_server_admin_password",
     {"redis_server_profile": "production", "redis_server_admin_password": "short-password"}),
    ("production with the placeholder", "redis_server_monitor_password",
     {"redis_server_profile": "production",
      "redis_server_monitor_password": "CHANGE-ME-generate-with-openssl-rand-base64-32"}),
    ("no admin password", "redis_server_admin_password", {"redis_server_admin_password": ""}),
    ("a disabled command with a space", "redis_server_disabled_commands",
     {"redis_server_disabled_commands": ["flushall", "client kill"]}),
    ("a disabled command with a typo", "redis_server_disabled_commands",
     {"redis_server_disabled_commands": ["flushall;"]}),
    ("production with every command allowed", "redis_server_disabled_commands",
     {"redis_server_profile": "production", "redis_server_disabled_commands": []}),
    # A string where a list is expected: argument validation lets it through, the template splits it.
    ("bind as a string", "redis_server_bind", {"redis_server_bind": "0.0.0.0"}),  # noqa: S104
    ("bind with two addresses in one entry", "redis_server_bind", {"redis_server_bind": ["127.0.0.1 10.0.0.1"]}),
    ("save as a string", "redis_server_save", {"redis_server_save": "900 1"}),
    ("disabled commands as a string", "redis_server_disabled_commands", {"redis_server_disabled_commands": "flushall"}),
    ("maxmemory with an inner space", "redis_server_maxmemory", {"redis_server_maxmemory": "2 gb"}),
    ("an instance's maxmemory with an inner space", "redis_server_instances[main].maxmemory",
     {"redis_server_instances": [{"name": "main", "port": 6379, "maxmemory": "512 mb"}]}),
    ("negative timeout", "redis_server_timeout", {"redis_server_timeout": -5}),
    ("timeout with a unit", "redis_server_timeout", {"redis_server_timeout": "30s"}),
    ("negative tcp-keepalive", "redis_server_tcp_keepalive", {"redis_server_tcp_keepalive": -1}),
    ("negative slow log length", "redis_server_slowlog_max_len", {"redis_server_slowlog_max_len": -10}),
    ("slow log threshold below -1", "redis_server_slowlog_log_slower_than",
     {"redis_server_slowlog_log_slower_than": -2}),
    ("an instance's io-threads zero", "redis_server_instances[main].io_threads",
     {"redis_server_instances": [{"name": "main", "port": 6379, "io_threads": 0}]}),
    ("appendonly neither true nor false", "redis_server_appendonly", {"redis_server_appendonly": "sometimes"}),
    ("negative start timeout", "redis_server_start_timeout", {"redis_server_start_timeout": -1}),
    ("negative min-replicas", "redis_server_min_replicas_to_write", {"redis_server_min_replicas_to_write": -1}),
    ("config_extra value a list", "redis_server_config_extra",
     {"redis_server_config_extra": {"notify-keyspace-events": ["K", "E"]}}),
    ("config_extra value empty", "redis_server_config_extra", {"redis_server_config_extra": {"hz": ""}}),
    ("config_extra value null", "redis_server_config_extra", {"redis_server_config_extra": {"hz": None}}),
    ("config_extra value with a line break", "redis_server_config_extra",
     {"redis_server_config_extra": {"hz": "10\nprotected-mode no"}}),
    ("config_extra naming a managed directive in capitals", "redis_server_config_extra",
     {"redis_server_config_extra": {"MAXMEMORY": "1gb"}}),
    ("config_extra with an underscore in a name", "redis_server_config_extra",
     {"redis_server_config_extra": {"lazyfree_lazy_eviction": "yes"}}),
    ("an instance's extra not a mapping", "redis_server_instances",
     {"redis_server_instances": [{"name": "main", "port": 6379, "extra": ["hz 10"]}]}),
    ("an ACL user without rules", "redis_server_acl_users",
     {"redis_server_acl_users": [{"name": "worker", "password": "worker-password-0123456789abcdef0123456789abcdef"}]}),
    ("an ACL user with rule syntax in its name", "redis_server_acl_users",
     {"redis_server_acl_users": [{"name": ">worker", "password": "worker-password-0123456789abcdef0123456789abcdef",
                                  "rules": "~jobs:* +@list"}]}),
    ("an ACL user name with a space", "redis_server_acl_users",
     {"redis_server_acl_users": [{"name": "job worker", "password": "worker-password-0123456789abcdef0123456789abcdef",
                                  "rules": "+@list"}]}),
    ("an ACL user's rules as a list", "redis_server_acl_users",
     {"redis_server_acl_users": [{"name": "worker", "password": "worker-password-0123456789abcdef0123456789abcdef",
                                  "rules": ["~jobs:*", "+@list"]}]}),
    ("an admin user name with rule syntax", "redis_server_admin_user", {"redis_server_admin_user": "admin +@all"}),
    ("an instance on Sentinel's port", "redis_server_instances",
     {"redis_server_instances": [{"name": "main", "port": 26379}]}),
    ("an instance on the health checker's port", "redis_server_instances",
     {"redis_server_instances": [{"name": "main", "port": 9122}]}),
    ("Sentinel's port moved onto an instance's", "redis_sentinel_port", {"redis_sentinel_port": 6379}),
    ("maxclients above what the unit can open", "redis_server_maxclients", {"redis_server_maxclients": 4000000000}),
    ("maxmemory of the instances above the RAM", "redis_server_maxmemory",
     {"redis_server_instances": [{"name": "main", "port": 6379, "maxmemory": "4096gb"},
                                 {"name": "cache", "port": 6380, "maxmemory": "4096gb"}]}),
    ("a command renamed to a name with a space", "redis_server_rename_commands",
     {"redis_server_rename_commands": {"FLUSHALL": "no flush"}}),
]
DEBIAN12_ONLY = [("engine the distribution does not ship", "redis_server_engine", {"redis_server_engine": "valkey"})]


def test_bad_input_fails_in_preflight_naming_the_variable_and_changes_nothing(host, env, reconverge, tmp_path):
    once_per_distribution()
    cases = BAD_INPUT + (DEBIAN12_ONLY if host.system_info.release.startswith("12") else [])
    files = "find /etc/redis /etc/valkey /etc/redis-infra /etc/systemd/system /etc/sysctl.d -type f 2>/dev/null"
    checksums = f"{files} | sort | xargs sha256sum"
    before = host.check_output(checksums)
    outcomes = tmp_path / "outcomes.json"
    # One play per case, so that each case's variables are play variables of their own; the role runs
    # up to its preflight, which must fail; the rescue records the message.
    plays = []
    for name, _variable, variables in cases:
        plays.append({
            "name": f"Case: {name}", "hosts": "redis", "become": True, "gather_facts": not plays,
            "vars": variables,
            "tasks": case_tasks(name, "redis_server"),
        })
    plays.append({"name": "Save the outcomes", "hosts": "redis", "gather_facts": False, "tasks": [
        {"ansible.builtin.copy": {"content": "{{ __outcomes | to_json }}", "dest": str(outcomes), "mode": "0600"},
         "delegate_to": "localhost"}]})
    playbook = tmp_path / "bad-input.yml"
    playbook.write_text(json.dumps(plays))
    result = subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(playbook)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    recorded = {item["case"]: item["msg"] for item in json.loads(outcomes.read_text())}
    for name, variable, _ in cases:
        assert recorded[name] != "accepted", f"bad input was accepted: {name}"
        assert variable in recorded[name], f"{name}: the message does not name {variable}: {recorded[name]}"
    assert host.check_output(checksums) == before, "a failed preflight changed files on the host"
    for secret in passwords(env):
        assert secret not in result.stdout


def test_a_renewed_certificate_is_served_live_without_a_client_error(host, env, reconverge):
    """Renewal on a running instance under a client load: the next run issues a new certificate (one that
    ends within redis_server_tls_renew_days is renewed), the instance serves it after one CONFIG SET, its
    run_id is unchanged, the clients see no error, and a re-run changes nothing."""
    if not env["tls"] or os.environ.get("MOLECULE_SCENARIO_NAME") != "production":
        pytest.skip("runs in the production scenario, with TLS")
    import threading

    import redis

    port = env["instances"][0]["port"]
    address = host.check_output("hostname -I").split()[0]

    def served_serial():
        return host.check_output(f"openssl s_client -connect 127.0.0.1:{port} -CAfile {CA_FILE} </dev/null 2>/dev/null"
                                 " | openssl x509 -noout -serial")

    def run_id():
        return re.search(r"run_id:(\w+)", admin(host, env, port, "INFO", "server")).group(1)

    counts, stop = {"ok": 0, "errors": []}, threading.Event()

    def load():
        options = {"host": address, "port": port, "password": env["password"], "socket_timeout": 5,
                   "ssl": True, "ssl_ca_certs": tls_setup.controller_ca()}
        held = redis.Redis(single_connection_client=True, **options)
        end = time.monotonic() + 300
        while not stop.is_set() and time.monotonic() < end:
            try:
                held.set("verify:tls-load", counts["ok"])
                with redis.Redis(**options) as fresh:  # a new connection and handshake each round
                    fresh.get("verify:tls-load")
                counts["ok"] += 1
            except redis.RedisError as exc:
                counts["errors"].append(repr(exc))
            time.sleep(0.02)

    serial, started = served_serial(), run_id()
    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        # With a renewal window longer than the served certificate has left (365 days after a first converge,
        # more when the controller's CA directory is an earlier run's), this run must renew it, for longer.
        end = host.check_output(f"openssl s_client -connect 127.0.0.1:{port} -CAfile {CA_FILE} </dev/null 2>/dev/null"
                                " | openssl x509 -noout -enddate").split("=", 1)[1]
        left = (datetime.datetime.strptime(end, "%b %d %H:%M:%S %Y %Z") - datetime.datetime.utcnow()).days
        result = reconverge("-e", f"redis_server_tls_certificate_days={left + 135}", "-e",
                            f"redis_server_tls_renew_days={left + 35}", server_only=True)
        assert result.returncode == 0, result.stdout[-3000:]
        assert "new TLS certificate, taken live" in result.stdout, result.stdout[-3000:]
    finally:
        stop.set()
        worker.join(30)
    assert served_serial() != serial
    assert run_id() == started, "the instance restarted for a new certificate"
    assert counts["ok"] > 10 and counts["errors"] == [], counts
    result = reconverge(server_only=True)
    assert result.returncode == 0 and re.search(r"changed=0\s", result.stdout), result.stdout[-3000:]


def test_client_certificates_required_on_demand(host, env, reconverge):
    """redis_server_tls_auth_clients=required is applied live: a TLS client without a certificate is refused,
    one with a certificate the CA signed (the host's, as root) gets in; back to optional afterwards."""
    if not env["tls"] or os.environ.get("MOLECULE_SCENARIO_NAME") != "production":
        pytest.skip("runs in the production scenario, with TLS")
    port = env["instances"][0]["port"]
    with_certificate = dict(env, cli=f"{env['cli']} --cert {tls_setup.CERT_FILE} --key {tls_setup.KEY_FILE}")

    def run_id():
        return re.search(r"run_id:(\w+)", admin(host, with_certificate, port, "INFO", "server")).group(1)

    started = run_id()
    try:
        result = reconverge("-e", "redis_server_tls_auth_clients=required", server_only=True)
        assert result.returncode == 0, result.stdout[-3000:]
        assert "CONFIG SET tls-auth-clients" in result.stdout, result.stdout[-3000:]
        assert admin(host, with_certificate, port, "CONFIG", "GET", "tls-auth-clients").splitlines()[-1] == "yes"
        assert "PONG" not in cli(host, env, port, "PING", password=env["password"])
        assert cli(host, with_certificate, port, "PING", password=env["password"]) == "PONG"
        assert run_id() == started, "the instance restarted to require client certificates"
    finally:
        result = reconverge(server_only=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert admin(host, env, port, "CONFIG", "GET", "tls-auth-clients").splitlines()[-1] == "optional"


def test_a_user_added_by_hand_is_removed_by_the_next_run(host, env, reconverge):
    """ACL SETUSER by hand (an intruder's backdoor, or a forgotten test user): the next run removes it."""
    if os.environ.get("MOLECULE_SCENARIO_NAME") != "production":
        pytest.skip("runs in the production scenario")
    port = env["instances"][0]["port"]
    assert admin(host, env, port, "ACL", "SETUSER", "intruder", "on", ">intruder-password-0123456789", "~*",
                 "+@all") == "OK"
    result = reconverge(server_only=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "ACL users intruder" in result.stdout, result.stdout[-3000:]
    assert "intruder" not in admin(host, env, port, "ACL", "USERS").split()


def test_a_standalone_upgrade_backs_up_then_restarts_in_place(host, env):
    """playbooks/upgrade.yml on a standalone instance (production, Debian 12, with its security archive in
    the sources): a backup first, the packages upgraded, the instance restarted once on the new binary (its
    restart is the write outage, measured from the controller), the data kept; a re-run changes nothing."""
    if os.environ.get("MOLECULE_SCENARIO_NAME") != "production":
        pytest.skip("runs in the production scenario (Debian 12, whose security archive has a newer build)")
    import redis
    from writers import ThreadedWriter

    port = env["instances"][0]["port"]
    upgrade = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "playbooks", "upgrade.yml")
    status = f"/var/lib/redis-infra/backup-status/{env['instances'][0]['name']}.json"

    def run_playbook():
        # Without colours (Molecule forces them), so that the recap's lines start with the host's name.
        return subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--limit", "redis",
                               upgrade], capture_output=True, text=True, timeout=600, check=False,
                              env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"))

    def version():
        return host.check_output("dpkg-query -W -f '${Version}' redis-server")

    def run_id():
        return re.search(r"run_id:(\w+)", admin(host, env, port, "INFO", "server")).group(1)

    host.run("echo 'deb http://deb.debian.org/debian-security bookworm-security main' "
             ">/etc/apt/sources.list.d/security.list")
    before, started = version(), run_id()
    backed_up = int(host.run(f"stat -c %Y {status} || echo 0").stdout.split()[0])
    assert app(host, env, port, "SET", "verify:upgrade", "kept") == "OK"
    address = host.check_output("hostname -I").split()[0]
    client = redis.Redis(host=address, port=port, password=env["password"], socket_timeout=2, socket_connect_timeout=2,
                         ssl=env["tls"], ssl_ca_certs=tls_setup.controller_ca() if env["tls"] else None)
    with ThreadedWriter(client) as writer:
        result = run_playbook()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert version() != before, f"nothing was upgraded from {before}"
    upgraded = run_id()
    assert upgraded != started, "the instance still runs the old binary"
    assert int(host.run(f"stat -c %Y {status} || echo 0").stdout.split()[0]) > backed_up, "no backup first"
    assert app(host, env, port, "GET", "verify:upgrade") == "kept"
    assert writer.acknowledged > 50, writer.errors[:5]
    print(f"standalone upgrade: longest time between two acknowledged writes {writer.longest:.1f} s")
    assert writer.longest < 15, (writer.longest, writer.errors[:5])
    for secret in passwords(env):
        assert secret not in output
    rerun = run_playbook()
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert re.search(r"^\S+\s+: ok=\d+\s+changed=0\s", rerun.stdout, re.MULTILINE), rerun.stdout[-2000:]
    assert run_id() == upgraded, "the re-run restarted the instance"
