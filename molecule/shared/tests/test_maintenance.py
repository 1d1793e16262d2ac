"""The weekly maintenance routine on real hosts: the cron file and configs site.yml deploys, the scheduled
command itself (backup drill included, its scratch server run as the instance's account), the report's
sections on data seeded in the guide's key namespaces, a drill that fails on a truncated backup, and, in
the scenario with a monitoring host, playbooks/maintenance.yml run with tags and the health checker
serving the drill's result."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import time

import pytest
import tls_setup
from checker import get

testinfra_hosts = ["ansible://redis"]

PROJECT = os.path.join(os.path.dirname(__file__), "..", "..", "..")
CRON_FILE = "/etc/cron.d/redis-infra-maintenance"
MAINTENANCE_DIR = "/var/lib/redis-infra/maintenance"
SCRATCH_DIR = f"{MAINTENANCE_DIR}/scratch"
PLAYBOOK_TIMEOUT = 600
# Keys of the guide's namespaces: with their TTLs, and a few sessions without one.
SEED = (["SET", "cache:ai:maint-1", "answer", "EX", "3600"], ["SET", "session:web:maint-1", "s", "EX", "86400"],
        ["SET", "session:web:maint-forever", "s"], ["SET", "ratelimit:api:maint-1", "1", "EX", "900"])


@pytest.fixture(scope="module")
def env(host):
    variables = host.ansible.get_variables()
    if "MOLECULE_INVENTORY_FILE" not in os.environ:
        pytest.skip("not run by Molecule")
    instances = variables.get("redis_server_instances", [{"name": "main", "port": 6379}])
    engine = variables.get("redis_server_engine", "redis")
    return {"variables": variables, "instances": instances, "engine": engine,
            "backups": bool(variables.get("redis_server_backup_password")),
            "cli": tls_setup.cli(engine, variables), "admin": variables["redis_server_admin_password"],
            "secrets": [variables[name] for name in ("redis_server_password", "redis_server_admin_password",
                                                     "redis_server_monitor_password", "redis_server_backup_password",
                                                     "redis_server_maintenance_password")
                        if variables.get(name)]}


def first_host(host) -> bool:
    """The routine's runs are checked on one host per scenario (every host has the same cron line)."""
    variables = host.ansible.get_variables()
    return variables["inventory_hostname"] == sorted(variables["groups"]["redis"])[0]


def cron_job(host, name: str) -> str:
    return next(line.split(" root ", 1)[1] for line in host.file(CRON_FILE).content_string.splitlines()
                if f"--identifier=redis-maintenance-{name} " in line)


def run_as_cron(host, job: str):
    return host.run(f"env -i PATH=/usr/bin:/bin HOME=/root SHELL=/bin/sh /bin/sh -c {shlex.quote(job)}")


def admin(host, env, instance, *commands):
    script = "\n".join(" ".join(shlex.quote(part) for part in command) for command in commands)
    return host.run(f"printf '%s\\n' {shlex.quote(script)} | REDISCLI_AUTH={shlex.quote(env['admin'])} "
                    f"{env['cli']} --user admin -p {instance.get('port', 6379)}")


def test_cron_file_and_configs_hold_no_secret(host, env):
    cron = host.file(CRON_FILE)
    assert cron.exists and cron.user == "root" and cron.mode == 0o644
    sections = "slowlog,memory,latency,keys" + (",drill" if env["backups"] else "")
    for instance in env["instances"]:
        name = instance["name"]
        assert cron_job(host, name) == (f"systemd-cat --identifier=redis-maintenance-{name} /usr/local/bin/"
                                        f"redis-infra-maintenance --config /etc/redis-infra/maintenance/{name}.toml "
                                        f"--sections {sections}")
        config = host.file(f"/etc/redis-infra/maintenance/{name}.toml")
        assert (config.mode, config.user) == (0o640, "root")
        # The least-privilege maintenance user where its password is set, else the admin user.
        user = "maintenance" if env["variables"].get("redis_server_maintenance_password") else "admin"
        connection = f"/etc/redis-infra/connections/{name}-{user}.toml"
        assert f'connection_file = "{connection}"' in config.content_string
        assert (host.file(connection).mode, host.file(connection).user) == (0o600, "root")
        assert host.file(f"{MAINTENANCE_DIR}/{name}").mode == 0o700
        for secret in env["secrets"]:
            assert secret not in config.content_string and secret not in cron.content_string
    assert host.file(SCRATCH_DIR).mode == 0o711
    assert host.service("cron").is_running


def test_the_scheduled_routine_reports_every_section(host, env):
    """The cron line, run as cron runs it, on seeded keys (and a fresh backup for the drill): each section
    in the report, the drill ok, the status file readable by the health checker, nothing left behind."""
    if not first_host(host):
        pytest.skip("checked on the scenario's first host")
    instance = env["instances"][0]
    name = instance["name"]
    assert admin(host, env, instance, *SEED).rc == 0
    if env["backups"]:
        backup = host.run(f"redis-infra-backup --config /etc/redis-infra/backup/{name}.toml run")
        assert backup.rc == 0, backup.stderr
    result = run_as_cron(host, cron_job(host, name))
    assert result.rc == 0, result.stdout + result.stderr
    report = json.loads(host.file(f"{MAINTENANCE_DIR}/{name}/report.json").content_string)
    sections = report["sections"]
    assert sections["slowlog"]["status"] in ("ok", "warning")
    assert sections["memory"]["doctor"] and "used_memory" in sections["memory"]["info"]
    if sections["memory"]["info"]["maxmemory"] == 0:     # the development profile sets none: a finding says so
        assert any("maxmemory is 0" in finding for finding in sections["memory"]["findings"])
    # Debian links its Redis and Valkey to the system jemalloc: active defragmentation is not available.
    assert sections["memory"]["active_defrag"]["supported"] is False, sections["memory"]["active_defrag"]
    if env["variables"].get("redis_server_profile") == "production":
        assert sections["latency"]["threshold_ms"] == 100, "production records latency events from 100 ms"
    keys = sections["keys"]
    if keys["status"] != "skipped":      # a primary with replicas leaves the sampling to them
        prefixes = {row["prefix"]: row for row in keys["prefixes"]}
        assert prefixes["session:web"]["no_ttl"] >= 1 and prefixes["cache:ai"]["expected_ttl_s"] == 3600
    if env["backups"]:
        drill = sections["drill"]
        assert drill["status"] == "ok", drill
        assert drill["restored_keys"] > 0 and drill["sample"]["corrupt"] == 0
    status = host.file(f"{MAINTENANCE_DIR}/{name}.json")
    assert status.mode == 0o644 and json.loads(status.content_string)["result"] == "ok"
    assert host.file(f"{MAINTENANCE_DIR}/{name}/report.md").mode == 0o600
    assert host.run(f"ls -A {SCRATCH_DIR}").stdout.split() in ([], [".drill.lock"]), "a scratch directory is left"
    assert "scratch.conf" not in host.run("ps -eo args").stdout
    for secret in env["secrets"]:
        assert secret not in host.file(f"{MAINTENANCE_DIR}/{name}/report.json").content_string


def test_the_drill_fails_on_a_truncated_backup_then_passes_again(host, env):
    if not env["backups"] or not first_host(host):
        pytest.skip("no backups in this scenario, or not its first host")
    name = env["instances"][0]["name"]
    newest = host.run(f"ls -1t /var/backups/redis/{name}/*.rdb.gz | head -1").stdout.strip()
    host.run(f"truncate -s 100 {shlex.quote(newest)}")
    try:
        result = host.run(f"redis-infra-maintenance --config /etc/redis-infra/maintenance/{name}.toml --sections drill")
        assert result.rc == 1, result.stderr
        assert "drill: failed" in result.stderr and "checksum mismatch" in result.stderr
        status = json.loads(host.file(f"{MAINTENANCE_DIR}/{name}.json").content_string)
        assert status["drill"]["result"] == "failed" and status["result"] == "failed"
    finally:
        host.run(f"rm -f {shlex.quote(newest)} {shlex.quote(newest)}.sha256")
        assert host.run(f"redis-infra-backup --config /etc/redis-infra/backup/{name}.toml run").rc == 0
    assert host.run(f"redis-infra-maintenance --config /etc/redis-infra/maintenance/{name}.toml "
                    f"--sections drill").rc == 0


def monitoring_scenario(host) -> bool:
    return bool(host.ansible.get_variables().get("groups", {}).get("monitoring"))


def test_maintenance_playbook_runs_the_tagged_sections_and_fetches_the_report(host, env):
    if not monitoring_scenario(host):
        pytest.skip("run in the scenario with a monitoring host only (one playbook run is enough)")
    name = env["instances"][0]["name"]
    command = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
               os.path.join(PROJECT, "playbooks", "maintenance.yml"), "--tags", "slowlog,drill"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT, check=False,
                            stdin=subprocess.DEVNULL, env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    fetched = pathlib.Path(PROJECT, "artifacts", "maintenance", f"{host.backend.get_hostname()}-{name}.json")
    report = json.loads(fetched.read_text())
    # The tagged sections ran now; the report keeps the other sections of the last full run.
    assert report["ran"] == ["slowlog", "drill"] and report["result"] == "ok"
    assert {section["time"] for name, section in report["sections"].items() if name in report["ran"]} != {
        section["time"] for name, section in report["sections"].items() if name not in report["ran"]}
    assert fetched.stat().st_mode & 0o077 == 0
    assert fetched.with_suffix(".md").read_text().startswith(f"# Maintenance report: {name}")
    for secret in env["secrets"]:
        assert secret not in output


def test_the_health_checker_serves_the_drill_result(host, env):
    if not env["backups"] or not monitoring_scenario(host):
        pytest.skip("the monitoring scenario checks the health checker's maintenance metrics")
    name = env["instances"][0]["name"]
    assert host.run(f"redis-infra-maintenance --config /etc/redis-infra/maintenance/{name}.toml "
                    f"--sections drill").rc == 0
    config = host.file("/etc/redis-infra/health.toml").content_string
    assert f'maintenance_status_file = "{MAINTENANCE_DIR}/{name}.json"' in config
    pattern = re.compile(rf'^redis_infra_backup_drill_success{{[^}}]*redis_instance="{name}"[^}}]*}} 1(\.0)?$', re.M)
    for _ in range(30):       # the checker reads the status file at its next check (every 3 s here)
        status, body = get(host, "/metrics")
        if status == 200 and pattern.search(body):
            break
        time.sleep(1)
    assert pattern.search(body), body[-3000:]
