"""Prometheus and Alertmanager on the monitoring host: hardened, scraping the Redis host's health checker
over TLS with basic auth, with the project's alerts loaded, quiet on a healthy host, and paging a webhook
when the Redis host fails, then telling it the fault is gone.

The scenario shortens the delays (scrape every 3 s, RedisDown and RedisHealthCheckerDown after 5 s,
group_wait 1 s), so that each fault reaches the webhook within seconds; scripts/bench-alerts.py measures
the shipped ones. The webhook sink is a small HTTP server run on the monitoring host (alerting.py)."""

from __future__ import annotations

import json
import os
import shlex
import time

import alerting
import pytest
import testinfra
import tls_setup
import yaml
from testinfra.utils.ansible_runner import AnsibleRunner

testinfra_hosts = ["ansible://monitoring"]

INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE")
if not INVENTORY:
    pytest.skip("not run by Molecule", allow_module_level=True)
RUNNER = AnsibleRunner(INVENTORY)
if not RUNNER.get_hosts("monitoring"):
    pytest.skip("this scenario has no monitoring host", allow_module_level=True)
REDIS_HOST = RUNNER.get_hosts("redis")[0]
PROJECT = alerting.PROJECT
api, prometheus, wait_for_targets_up = alerting.api, alerting.prometheus, alerting.wait_for_targets_up


@pytest.fixture(scope="module")
def redis_host():
    return testinfra.get_host(f"ansible://{REDIS_HOST}?ansible_inventory={INVENTORY}")


@pytest.fixture(scope="module")
def sink(host):
    """The webhook receiver Alertmanager posts to (redis_monitoring_webhook_url of the scenario)."""
    alerting.start_sink(host)
    yield host
    alerting.stop_sink(host)


def wait_for_page(host, alertname, status, since):
    """Seconds from `since` until the webhook got `alertname` for the Redis host in `status`."""
    return alerting.wait_for_page(host, alertname, status, since, REDIS_HOST)


def test_prometheus_and_alertmanager_run_hardened_on_loopback(host):
    for unit in ("prometheus", "prometheus-alertmanager"):
        service = host.service(f"{unit}.service")
        assert service.is_running and service.is_enabled, unit
        text = host.check_output(f"systemctl cat {unit}.service")
        for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=", "User=prometheus"):
            assert setting in text, (unit, setting)
    listening = host.check_output("ss -Htlnp")
    for port in ("9090", "9093"):
        assert f"127.0.0.1:{port} " in listening, listening
        assert f"0.0.0.0:{port} " not in listening and f"*:{port} " not in listening, listening
    assert ":9094 " not in listening, "Alertmanager's cluster port must be off for one node"
    # The receivers' secrets and the scrape password: readable by the services' group only.
    for path in ("/etc/prometheus/alertmanager.yml", "/etc/prometheus/secrets/redis-health-password"):
        config = host.file(path)
        assert (config.user, config.group, config.mode) == ("root", "prometheus", 0o640), path
    assert host.file("/etc/prometheus/secrets/redis-health-password").content_string.strip()


def test_prometheus_is_recorded_running_the_files_as_they_are(host):
    """A no-op run asks Prometheus nothing (tasks/service.yml): it was seen running these very files, as the
    record says, and its last reload succeeded. A run that writes anything asks it again first."""
    recorded = host.file("/var/lib/redis-infra/monitoring/prometheus-confirmed").content_string.split()
    for path in ("/etc/prometheus/prometheus.yml", "/etc/prometheus/rules/redis-infra.yml",
                 "/etc/prometheus/alertmanager.yml", "/etc/default/prometheus"):
        assert host.check_output(f"sha1sum {path}").split()[0] in recorded, path
    reload = prometheus(host, "query?query=prometheus_config_last_reload_successful")["result"]
    assert [sample["value"][1] for sample in reload] == ["1"], reload


def test_health_checker_scraped_over_tls_with_basic_auth(host):
    assert wait_for_targets_up(host), "Prometheus never scraped the health checker"
    targets = [t for t in prometheus(host, "targets")["activeTargets"] if t["labels"]["job"] == "redis-infra-health"]
    assert len(targets) == 1, targets
    target = targets[0]
    assert target["health"] == "up", target
    assert target["labels"]["instance"] == REDIS_HOST
    assert target["scrapeUrl"].startswith("https://") and not target["scrapeUrl"].startswith("https://127."), target
    # What the checker reports arrives: the Redis host's instance is up, with its own labels.
    up = prometheus(host, "query?query=redis_up")["result"]
    assert [(s["metric"]["instance"], s["metric"]["redis_instance"], s["value"][1]) for s in up] == [
        (REDIS_HOST, "main", "1")], up
    # The password is not in Prometheus' config (a file holds it), and the checker refuses a scrape without it
    # or with a wrong one, over a TLS connection verified with the CA Prometheus uses.
    config = host.check_output("cat /etc/prometheus/prometheus.yml")
    password = RUNNER.get_variables(REDIS_HOST)["redis_health_basic_auth_users"]["prometheus"]
    assert password not in config and "password_file:" in config
    probe = (
        "import base64, ssl, sys, urllib.request, urllib.error\n"
        "ctx = ssl.create_default_context(cafile='/etc/prometheus/tls/redis-infra-health-ca.crt')\n"
        "for auth in (None, 'prometheus:wrong'):\n"
        "    req = urllib.request.Request(sys.argv[1])\n"
        "    if auth:\n"
        "        req.add_header('Authorization', 'Basic ' + base64.b64encode(auth.encode()).decode())\n"
        "    try:\n"
        "        print(urllib.request.urlopen(req, timeout=5, context=ctx).status)\n"
        "    except urllib.error.HTTPError as e:\n"
        "        print(e.code)\n"
    )
    assert host.check_output(f"python3 -c {shlex.quote(probe)} {target['scrapeUrl']}").split() == ["401", "401"]


def test_project_alerts_loaded_with_the_inventory_durations(host):
    with open(os.path.join(PROJECT, "files", "prometheus", "redis-alerts.yml"), encoding="utf-8") as handle:
        shipped = {rule["alert"]: rule for group in yaml.safe_load(handle)["groups"] for rule in group["rules"]}
    loaded = {rule["name"]: rule for group in prometheus(host, "rules")["groups"] for rule in group["rules"]
              if rule["type"] == "alerting"}
    assert set(loaded) == set(shipped)
    # redis_monitoring_alert_for of the scenario: RedisDown and RedisHealthCheckerDown after 5 s
    assert loaded["RedisDown"]["duration"] == 5 and loaded["RedisHealthCheckerDown"]["duration"] == 5
    assert loaded["RedisMemoryCritical"]["duration"] == 120, "the other alerts keep the shipped durations"


def test_no_alert_fires_on_the_healthy_host(host):
    wait_for_targets_up(host)
    time.sleep(6)  # two evaluations after the first scrape
    firing = [a for a in prometheus(host, "alerts")["alerts"] if a["state"] == "firing"]
    # RedisRestarted is true on a host whose Redis started less than 5 minutes ago (this one, just converged,
    # and restarted by test_health.py): the only one allowed, and only while that is so.
    unexpected = [a for a in firing if a["labels"]["alertname"] != "RedisRestarted"]
    assert not unexpected, unexpected
    for alert in firing:
        uptime = prometheus(host, "query?query=redis_uptime_in_seconds")["result"]
        assert all(float(s["value"][1]) < 300 for s in uptime), (alert, uptime)


def page_and_resolve(sink, alertname, break_it, repair):
    return alerting.page_and_resolve(sink, alertname, REDIS_HOST, break_it, repair)


@pytest.mark.parametrize(("unit", "alertname"), [("redis-server@main.service", "RedisDown"),
                                                 ("redis-health.service", "RedisHealthCheckerDown")])
def test_a_stopped_service_pages_the_webhook_and_resolves(sink, redis_host, unit, alertname):
    page_and_resolve(sink, alertname, lambda: redis_host.run_test(f"systemctl stop {unit}"),
                     lambda: redis_host.run_test(f"systemctl start {unit}"))


def admin(redis_host, *args):
    """The engine's CLI as the admin user on the Redis host; the password goes through REDISCLI_AUTH."""
    variables = RUNNER.get_variables(REDIS_HOST)
    cli = tls_setup.cli(variables.get("redis_server_engine", "redis"), variables)
    password = shlex.quote(variables["redis_server_admin_password"])
    command = f"{cli} --no-auth-warning --user admin -p 6379 " + " ".join(shlex.quote(str(a)) for a in args)
    return redis_host.check_output(f"REDISCLI_AUTH={password} {command}")


def test_memory_above_80_percent_pages_the_webhook_and_resolves(sink, redis_host):
    maxmemory = admin(redis_host, "CONFIG", "GET", "maxmemory").splitlines()[-1]
    used = int(next(line.split(":")[1] for line in admin(redis_host, "INFO", "memory").splitlines()
                    if line.startswith("used_memory:")))
    # maxmemory just above what is used: about 90 % full, nothing evicted.
    page_and_resolve(sink, "RedisMemoryHigh", lambda: admin(redis_host, "CONFIG", "SET", "maxmemory", int(used / 0.9)),
                     lambda: admin(redis_host, "CONFIG", "SET", "maxmemory", maxmemory))


def test_stale_backup_pages_the_webhook_and_resolves(sink, redis_host):
    """The backup status file says the last good backup is two days old (the file, owner and mode kept)."""
    path = "/var/lib/redis-infra/backup-status/main.json"
    original = redis_host.file(path).content_string
    age = (
        "import json, sys, time\n"
        "path = sys.argv[1]\n"
        "data = json.load(open(path))\n"
        "old = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(time.time() - 2 * 86400))\n"
        "data['time'] = data['last_success'] = old\n"
        "open(path, 'w').write(json.dumps(data))\n"
    )
    page_and_resolve(sink, "RedisBackupStale", lambda: redis_host.run_test(f"python3 -c {shlex.quote(age)} {path}"),
                     lambda: redis_host.run_test(f"printf %s {shlex.quote(original)} > {path}"))


def test_slow_command_pages_the_webhook(sink, redis_host):
    # A Lua loop of a few hundred milliseconds, above the checker's 100 ms slow-query threshold.
    script = "local i = 0 while i < 30000000 do i = i + 1 end return i"
    fault = time.time()
    admin(redis_host, "EVAL", script, 0)
    fired = wait_for_page(sink, "RedisSlowQueries", "firing", fault)
    print(f"RedisSlowQueries: fired {fired:.1f} s after the command (it resolves once the 10-minute window has passed)")


# Panels whose series exist only where an instance is a replica or has replicas, or is a cluster node: this
# scenario has one standalone instance. The metrics contract test (tests/health/test_health_assets.py) shows
# that the checker exports each of them where it applies.
NEEDS_REPLICATION = ("redis_master_link_up", "redis_connected_slave_lag_seconds", "redis_cluster_", "redis_sentinel_",
                     "redis_infra_sentinel_")


def test_grafana_provisioning_and_every_dashboard_query_returns_data(host):
    installed = json.loads(host.file("/var/lib/grafana/dashboards/redis-infra/redis-infra-health.json").content_string)
    assert installed == alerting.dashboard()
    provider = yaml.safe_load(host.file("/etc/grafana/provisioning/dashboards/redis-infra.yml").content_string)
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/redis-infra"
    source = yaml.safe_load(host.file("/etc/grafana/provisioning/datasources/redis-infra.yml").content_string)
    url = source["datasources"][0]["url"]
    assert source["datasources"][0]["type"] == "prometheus"
    assert api(host, f"{url}/api/v1/status/buildinfo")["status"] == "success", "the data source's URL answers"

    wait_for_targets_up(host)
    time.sleep(4)  # rate() over the panels' interval needs two samples

    queries = alerting.dashboard_queries({"$instance": REDIS_HOST, "$redis_instance": ".*", "$__rate_interval": "1m"})
    assert len(queries) > 25
    # Every query is sent (Prometheus refuses one that does not parse); only those of NEEDS_REPLICATION may be empty.
    empty = [(title, expr) for title, expr in queries
             if not alerting.query(host, expr) and not any(metric in expr for metric in NEEDS_REPLICATION)]
    assert not empty, f"dashboard queries without data: {empty}"
