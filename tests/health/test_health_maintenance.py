"""The maintenance check: the status file redis-infra-maintenance writes after each run (its config keys,
every outcome, the metrics and alerts' series), and that it only ever degrades an instance: /api/health
stays HTTP 200, so nothing that waits for a healthy checker is held up by a failed weekly run."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from health_helpers import check_of, run_cli
from prometheus_client.core import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from redis_infra.health import DEGRADED, HEALTHY, UNHEALTHY
from redis_infra.health.checks import CheckResult, InstanceChecker, InstanceResult, evaluate_maintenance
from redis_infra.health.config import THRESHOLD_DEFAULTS, ConfigError, InstanceConfig, Thresholds, parse_config
from redis_infra.health.metrics import ResultsCollector, render
from redis_infra.health.service import Monitor

DAY = 86400
MINIMAL = '[[instances]]\nname = "main"\nconnection_file = "/etc/redis-infra/main.toml"\n'
MAINTENANCE_SERIES = ("redis_infra_maintenance_timestamp_seconds", "redis_infra_maintenance_success",
                      "redis_infra_maintenance_warnings")
DRILL_SERIES = ("redis_infra_backup_drill_success", "redis_infra_backup_drill_timestamp_seconds",
                "redis_infra_backup_drill_duration_seconds")


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def status_file(ended: float, **changes) -> dict:
    """A status file as the maintenance tool writes it: a run that passed, with `changes` applied."""
    data = {
        "instance": "main",
        "time": iso(ended),
        "result": "ok",
        "sections": {"slowlog": "ok", "memory": "warning", "latency": "ok", "keys": "skipped", "drill": "ok"},
        "drill": {"result": "ok", "time": iso(ended - 2), "backup_id": "main-20261205T020000Z",
                  "duration_seconds": 3.2, "error": None},
        "warnings": 2,
    }
    data.update(changes)
    return data


def drill_failed(ended: float) -> dict:
    sections = {"slowlog": "ok", "memory": "ok", "latency": "ok", "keys": "skipped", "drill": "failed"}
    return status_file(ended, result="failed", sections=sections,
                       drill={"result": "failed", "time": iso(ended - 2), "backup_id": "main-20261205T020000Z",
                              "duration_seconds": 3.2, "error": "restored 0 keys, the backup recorded 1000"})


def evaluate(tmp_path, data, now: float | None = None, thresholds: Thresholds | None = None,
             **instance) -> tuple[CheckResult, dict | None]:
    path = tmp_path / "main.json"
    if data is not None:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    config = InstanceConfig(name="main", connection_file="/x", maintenance_status_file=str(path), **instance)
    return evaluate_maintenance(config, thresholds or Thresholds(), time.time() if now is None else now)


# --- config -----------------------------------------------------------------------------------------

def test_config_keys_and_their_defaults():
    config = parse_config(MINIMAL + 'maintenance_status_file = "/var/lib/redis-infra/maintenance/main.json"\n'
                                    "max_maintenance_age = 1209600\n")
    (instance,) = config.instances
    assert instance.maintenance_status_file == "/var/lib/redis-infra/maintenance/main.json"
    assert instance.max_maintenance_age == 1209600
    (plain,) = parse_config(MINIMAL).instances
    assert (plain.maintenance_status_file, plain.max_maintenance_age) == (None, None)
    assert THRESHOLD_DEFAULTS["maintenance_age_degraded_seconds"] == 8 * DAY
    assert parse_config(MINIMAL).thresholds.maintenance_age_degraded_seconds == 8 * DAY
    assert parse_config("[thresholds]\nmaintenance_age_degraded_seconds = 86400\n" + MINIMAL
                        ).thresholds.maintenance_age_degraded_seconds == DAY


@pytest.mark.parametrize(("text", "expected"), [
    (MINIMAL + "maintenance_status_file = 1\n",
     "key 'instances[0].maintenance_status_file' must be a string, got integer"),
    (MINIMAL + 'maintenance_status_file = ""\n', "key 'instances[0].maintenance_status_file' must not be empty"),
    (MINIMAL + 'max_maintenance_age = "8d"\n', "key 'instances[0].max_maintenance_age' must be a number, got string"),
    (MINIMAL + "max_maintenance_age = 0\n", "key 'instances[0].max_maintenance_age' must be greater than 0"),
    (MINIMAL + "max_maintenance_age = true\n", "key 'instances[0].max_maintenance_age' must be a number, got boolean"),
    (MINIMAL + 'maintenance_file = "/x.json"\n', "unknown key 'instances[0].maintenance_file'"),
    ("[thresholds]\nmaintenance_age_degraded_seconds = 0\n" + MINIMAL,
     "key 'thresholds.maintenance_age_degraded_seconds' must be greater than 0"),
    # never unhealthy: there is no such threshold
    ("[thresholds]\nmaintenance_age_unhealthy_seconds = 1\n" + MINIMAL,
     "unknown key 'thresholds.maintenance_age_unhealthy_seconds'"),
])
def test_bad_config_names_the_key(text, expected):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "/etc/health.toml")
    assert expected in str(caught.value) and str(caught.value).startswith("/etc/health.toml: ")


def test_unknown_key_message_lists_the_new_keys():
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL + "colour = 1\n")
    assert "maintenance_status_file" in str(caught.value) and "max_maintenance_age" in str(caught.value)


# --- the check ----------------------------------------------------------------------------------------

def test_no_run_recorded_yet_is_healthy(tmp_path):
    check, summary = evaluate(tmp_path, None)
    assert check.status == HEALTHY and check.value is None and summary is None
    assert check.reason == f"no maintenance run recorded yet ({tmp_path / 'main.json'} does not exist)"


def test_a_run_that_passed(tmp_path):
    now = time.time()
    check, summary = evaluate(tmp_path, status_file(now - 3600), now)
    assert check.status == HEALTHY and check.name == "maintenance" and check.unit == "s"
    assert check.value == pytest.approx(3600, abs=1)
    assert check.threshold == {"degraded": 8 * DAY}
    assert "last maintenance run 60 min ago" in check.reason and "ok, 2 warnings" in check.reason
    assert "backup drill (main-20261205T020000Z) ok" in check.reason
    assert check.details["sections"]["memory"] == "warning" and check.details["drill"]["result"] == "ok"
    assert summary["success"] is True and summary["warnings"] == 2
    assert summary["time"] == pytest.approx(now - 3600, abs=1)
    assert summary["drill_success"] is True and summary["drill_duration"] == 3.2
    assert summary["drill_time"] == pytest.approx(now - 3602, abs=1)


def test_a_failed_run_names_the_failed_sections(tmp_path):
    now = time.time()
    data = status_file(now - 60, result="failed", warnings=0,
                       sections={"slowlog": "failed", "memory": "ok", "latency": "ok", "keys": "error", "drill": "ok"})
    check, summary = evaluate(tmp_path, data, now)
    assert check.status == DEGRADED
    assert check.reason == f"last maintenance run at {iso(now - 60).replace('+00:00', 'Z')} failed: failed sections: " \
                           "slowlog, keys (error)"
    assert summary["success"] is False and summary["drill_success"] is True


def test_a_failed_drill_names_the_backup_and_the_error(tmp_path):
    now = time.time()
    check, summary = evaluate(tmp_path, drill_failed(now - 60), now)
    assert check.status == DEGRADED
    assert "failed sections: drill" in check.reason
    assert "backup drill of main-20261205T020000Z failed: restored 0 keys, the backup recorded 1000" in check.reason
    assert summary["success"] is False and summary["drill_success"] is False


def test_a_failed_drill_degrades_even_when_the_result_says_ok(tmp_path):
    now = time.time()
    data = drill_failed(now - 60)
    data["result"] = "ok"
    data["drill"]["error"] = "checksum\nmismatch"           # one line in the reason
    check, summary = evaluate(tmp_path, data, now)
    assert check.status == DEGRADED
    assert "backup drill of main-20261205T020000Z failed: checksum mismatch" in check.reason
    assert summary["success"] is True and summary["drill_success"] is False


def test_a_stale_run(tmp_path):
    now = time.time()
    check, summary = evaluate(tmp_path, status_file(now - 9 * DAY), now)
    assert check.status == DEGRADED
    assert check.reason.startswith("maintenance is stale: last run 9.0 d ago")
    assert "at or above the degraded threshold 8.0 d" in check.reason
    assert summary is not None and summary["success"] is True       # the metrics still tell when it ran
    fresh, _ = evaluate(tmp_path, status_file(now - 7 * DAY), now)
    assert fresh.status == HEALTHY


def test_max_age_per_instance_and_from_the_threshold(tmp_path):
    now = time.time()
    per_instance, _ = evaluate(tmp_path, status_file(now - 2 * DAY), now, max_maintenance_age=DAY)
    assert per_instance.status == DEGRADED and per_instance.threshold == {"degraded": DAY}
    threshold, _ = evaluate(tmp_path, status_file(now - 2 * DAY), now,
                            thresholds=Thresholds({**THRESHOLD_DEFAULTS, "maintenance_age_degraded_seconds": DAY}))
    assert threshold.status == DEGRADED
    longer, _ = evaluate(tmp_path, status_file(now - 10 * DAY), now, max_maintenance_age=14 * DAY)
    assert longer.status == HEALTHY


def test_failed_and_stale_says_both(tmp_path):
    now = time.time()
    check, _ = evaluate(tmp_path, drill_failed(now - 30 * DAY), now)
    assert check.status == DEGRADED
    assert "backup drill of" in check.reason and "maintenance is stale: last run 30.0 d ago" in check.reason


@pytest.mark.parametrize("age_days", [9, 100, 1000])
@pytest.mark.parametrize("failed", [False, True])
def test_never_unhealthy(tmp_path, age_days, failed):
    now = time.time()
    data = drill_failed(now - age_days * DAY) if failed else status_file(now - age_days * DAY)
    check, _ = evaluate(tmp_path, data, now)
    assert check.status == DEGRADED != UNHEALTHY


def test_no_drill_and_a_skipped_drill(tmp_path):
    now = time.time()
    none, summary = evaluate(tmp_path, status_file(now - 60, drill=None), now)
    assert none.status == HEALTHY and "drill" not in none.reason
    assert (summary["drill_success"], summary["drill_time"], summary["drill_duration"]) == (None, None, None)
    skipped, summary = evaluate(tmp_path, status_file(now - 60, drill={"result": "skipped", "time": None,
                                                                      "backup_id": None, "duration_seconds": None,
                                                                      "error": "no backup yet"}), now)
    assert skipped.status == HEALTHY and "backup drill skipped" in skipped.reason
    assert summary["drill_success"] is None and summary["drill_result"] == "skipped"


def test_a_run_in_the_future_is_not_negative(tmp_path):
    now = time.time()
    check, _ = evaluate(tmp_path, status_file(now + 120), now)     # the host's clock went back
    assert check.status == HEALTHY and check.value == 0


@pytest.mark.parametrize(("content", "expected"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    (b"\xff\xfe", "not valid JSON"),
    ("x" * 70000, "larger than 65536 bytes"),
])
def test_unreadable_file_is_degraded_naming_the_path(tmp_path, content, expected):
    path = tmp_path / "main.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
        content = None
    check, summary = evaluate(tmp_path, content)
    assert check.status == DEGRADED and summary is None
    assert check.reason.startswith(f"cannot read maintenance status file {path}: ") and expected in check.reason


def test_a_directory_in_place_of_the_file(tmp_path):
    (tmp_path / "main.json").mkdir()
    check, summary = evaluate(tmp_path, None)
    assert check.status == DEGRADED and summary is None
    assert check.reason.startswith(f"cannot read maintenance status file {tmp_path / 'main.json'}: ")


@pytest.mark.parametrize("field", ["instance", "time", "result", "sections", "drill", "warnings"])
def test_missing_field_is_degraded_naming_the_path_and_the_field(tmp_path, field):
    data = status_file(time.time() - 60)
    del data[field]
    check, summary = evaluate(tmp_path, data)
    assert check.status == DEGRADED and summary is None
    assert check.reason.startswith(f"maintenance status file {tmp_path / 'main.json'}: field '{field}' is missing")


@pytest.mark.parametrize(("changes", "expected"), [
    ({"instance": "cache"}, "field 'instance' is \"cache\", not \"main\""),
    ({"time": "last week"}, "field 'time' is not ISO-8601"),
    ({"time": None}, "field 'time' is not ISO-8601"),
    ({"result": "passed"}, "field 'result' must be ok or failed, got \"passed\""),
    ({"sections": ["slowlog"]}, "field 'sections' must be an object"),
    ({"sections": {"memory": "great"}}, "field 'sections.memory' must be one of ok, warning, failed, skipped, error"),
    ({"warnings": -1}, "field 'warnings' must be a whole number"),
    ({"warnings": True}, "field 'warnings' must be a whole number"),
    ({"warnings": "2"}, "field 'warnings' must be a whole number"),
    ({"drill": "ok"}, "field 'drill' must be an object, or null"),
    ({"drill": {"result": "passed"}}, "field 'drill.result' must be one of ok, failed, skipped"),
    ({"drill": {"result": "ok", "time": "soon"}}, "field 'drill.time' is not ISO-8601"),
    ({"drill": {"result": "ok", "duration_seconds": "3 s"}}, "field 'drill.duration_seconds' must be a number"),
    ({"drill": {"result": "ok", "duration_seconds": -1}}, "field 'drill.duration_seconds' must be a number"),
    ({"drill": {"result": "failed", "error": {"code": 1}}}, "field 'drill.error' must be a string or null"),
    ({"result": "x" * 500}, "got \"xxxxx"),
    ({"time": 1e20}, "field 'time' is not ISO-8601"),                   # past the year 9999
    ({"time": "NaN"}, "field 'time' is not ISO-8601"),
    ({"drill": {"result": "ok", "duration_seconds": float("inf")}}, "field 'drill.duration_seconds' must be a number"),
])
def test_malformed_field_is_degraded_naming_the_path_and_the_field(tmp_path, changes, expected):
    check, summary = evaluate(tmp_path, status_file(time.time() - 60, **changes))
    assert check.status == DEGRADED and summary is None
    assert check.reason.startswith(f"maintenance status file {tmp_path / 'main.json'}: ")
    assert expected in check.reason
    assert len(check.reason) < 300


def test_epoch_seconds_are_accepted_for_the_times(tmp_path):
    now = time.time()
    data = status_file(0, time=now - 60)
    data["drill"]["time"] = now - 62
    check, summary = evaluate(tmp_path, data, now)
    assert check.status == HEALTHY and summary["drill_time"] == pytest.approx(now - 62)


def test_a_long_drill_error_is_cut_short(tmp_path):
    now = time.time()
    data = drill_failed(now - 60)
    data["drill"]["error"] = "key mismatch " * 1000
    check, _ = evaluate(tmp_path, data, now)
    assert check.status == DEGRADED and check.reason.endswith("...") and len(check.reason) < 500


def test_a_file_the_check_cannot_handle_is_still_only_degraded(tmp_path, monkeypatch):
    from redis_infra.health import checks

    def broken(*_args):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(checks, "evaluate_maintenance", broken)
    config = parse_config(MINIMAL + f"maintenance_status_file = {json.dumps(str(tmp_path / 'main.json'))}\n")
    check, summary = InstanceChecker(config.instances[0], config).maintenance_check(time.time())
    assert check.status == DEGRADED and "internal error: RuntimeError: unexpected" in check.reason and summary is None


def test_the_check_is_on_only_with_a_status_file(tmp_path):
    config = parse_config(MINIMAL)
    checker = InstanceChecker(config.instances[0], config)
    assert checker.maintenance_check(time.time()) == (None, None)


def test_a_timed_out_check_still_reports_the_maintenance(tmp_path):
    path = tmp_path / "main.json"
    path.write_text(json.dumps(drill_failed(time.time() - 60)))
    config = parse_config(MINIMAL + f"maintenance_status_file = {json.dumps(str(path))}\n")
    result = InstanceChecker(config.instances[0], config).timed_out_result(time.time(), 5.0)
    assert result.check("maintenance").status == DEGRADED and result.maintenance["drill_success"] is False
    assert result.status == UNHEALTHY                   # from the connection, not from the maintenance


# --- metrics ------------------------------------------------------------------------------------------

def scrape(*results: InstanceResult) -> dict[str, dict[tuple, float]]:
    """metric name -> {sorted label items: value}, through the checker's collector and renderer."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ResultsCollector(lambda: (list(results), None)))
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(render(registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def result_for(tmp_path, name: str, data) -> InstanceResult:
    path = tmp_path / f"{name}.json"
    if data is not None:
        path.write_text(json.dumps(data))
    config = InstanceConfig(name=name, connection_file="/x", maintenance_status_file=str(path))
    check, summary = evaluate_maintenance(config, Thresholds(), time.time())
    backup = {"age": 60.0, "success": True, "size": 10, "time": time.time() - 60}
    return InstanceResult(name=name, address="x", checks=[check], time=time.time(), duration=0.01, up=True,
                          backup=backup, maintenance=summary)


def test_metrics_of_a_run_that_passed(tmp_path):
    now = time.time()
    data = status_file(now - 3600)
    data["instance"] = "main"
    samples = scrape(result_for(tmp_path, "main", data))
    labels = (("redis_instance", "main"),)
    assert samples["redis_infra_maintenance_timestamp_seconds"] == {labels: pytest.approx(now - 3600, abs=1)}
    assert samples["redis_infra_maintenance_success"] == {labels: 1}
    assert samples["redis_infra_maintenance_warnings"] == {labels: 2}
    assert samples["redis_infra_backup_drill_success"] == {labels: 1}
    assert samples["redis_infra_backup_drill_timestamp_seconds"] == {labels: pytest.approx(now - 3602, abs=1)}
    assert samples["redis_infra_backup_drill_duration_seconds"] == {labels: 3.2}
    assert samples["redis_infra_health_status"][(("check", "maintenance"), *labels)] == 0
    # the same labels as the backup series
    for name in MAINTENANCE_SERIES + DRILL_SERIES:
        assert set(samples[name]) == set(samples["redis_infra_backup_success"]), name


def test_metrics_of_a_failed_drill_and_of_runs_without_a_drill(tmp_path):
    now = time.time()
    failed = drill_failed(now - 60)
    no_drill = dict(status_file(now - 60, drill=None), instance="nodrill")
    skipped = dict(status_file(now - 60, drill={"result": "skipped", "time": None, "backup_id": None,
                                                "duration_seconds": None, "error": None}), instance="skipped")
    samples = scrape(result_for(tmp_path, "main", failed), result_for(tmp_path, "nodrill", no_drill),
                     result_for(tmp_path, "skipped", skipped))

    def value(metric, instance):
        return samples[metric].get((("redis_instance", instance),))

    assert value("redis_infra_maintenance_success", "main") == 0
    assert value("redis_infra_backup_drill_success", "main") == 0
    assert value("redis_infra_backup_drill_duration_seconds", "main") == 3.2
    assert samples["redis_infra_health_status"][(("check", "maintenance"), ("redis_instance", "main"))] == 1
    for instance in ("nodrill", "skipped"):
        assert value("redis_infra_maintenance_success", instance) == 1
        for metric in DRILL_SERIES:
            assert value(metric, instance) is None, (metric, instance)


@pytest.mark.parametrize("content", [None, "{not json", json.dumps({"result": "ok"})])
def test_no_maintenance_series_without_a_file_that_follows_the_contract(tmp_path, content):
    path = tmp_path / "main.json"
    if content is not None:
        path.write_text(content)
    config = InstanceConfig(name="main", connection_file="/x", maintenance_status_file=str(path))
    check, summary = evaluate_maintenance(config, Thresholds(), time.time())
    result = InstanceResult(name="main", address="x", checks=[check], time=time.time(), duration=0.01, up=True,
                            maintenance=summary)
    samples = scrape(result)
    for metric in MAINTENANCE_SERIES + DRILL_SERIES:
        assert metric not in samples
    status = samples["redis_infra_health_status"][(("check", "maintenance"), ("redis_instance", "main"))]
    assert status == (0 if content is None else 1)


# --- against a real server: readiness and the command line ------------------------------------------------

def test_degraded_maintenance_keeps_the_health_endpoint_at_200(make_instance, health_config, run_checker, tmp_path):
    instance = make_instance()
    path = tmp_path / "main-maintenance.json"
    path.write_text(json.dumps(drill_failed(time.time() - 60)))
    config, config_path = health_config([{"name": "main", "connection_file": str(instance.conn_file),
                                          "maintenance_status_file": str(path)}])
    checker = run_checker(config)
    detail = checker.wait_for(lambda d: d["instances"] and check_of(d, "main", "maintenance") is not None,
                              what="the maintenance check")
    assert check_of(detail, "main", "maintenance")["status"] == DEGRADED
    assert check_of(detail, "main", "connection")["status"] == HEALTHY
    status, health = checker.get_json("/api/health")
    assert status == 200 and health["status"] == DEGRADED and health["instances"] == {"main": DEGRADED}
    assert any(reason.startswith("main: maintenance degraded (last maintenance run at") for reason in health["reasons"])
    status, _, body = checker.get("/metrics")
    text = body.decode()
    assert status == 200
    assert 'redis_infra_backup_drill_success{redis_instance="main"} 0.0' in text
    assert 'redis_infra_maintenance_success{redis_instance="main"} 0.0' in text
    assert 'redis_infra_health_status{check="maintenance",redis_instance="main"} 1.0' in text

    # a file that cannot be read is degraded too, never more
    path.write_text("{not json")
    checker.wait_for(lambda d: "cannot read" in check_of(d, "main", "maintenance")["reason"], what="the bad file")
    status, health = checker.get_json("/api/health")
    assert status == 200 and health["status"] == DEGRADED
    assert "redis_infra_maintenance_success" not in checker.get("/metrics")[2].decode()

    # the check command: WARNING (exit 1), as for any degraded check
    path.write_text(json.dumps(drill_failed(time.time() - 60)))
    result = run_cli("check", "--config", str(config_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "main maintenance: degraded - last maintenance run at" in result.stdout


def test_no_run_yet_keeps_a_fresh_instance_healthy(make_instance, health_config, tmp_path):
    instance = make_instance()
    config, _ = health_config([{"name": "main", "connection_file": str(instance.conn_file),
                                "maintenance_status_file": str(tmp_path / "never-written.json")}])
    snapshot = Monitor(config).run_once()
    (result,) = snapshot.results
    assert result.status == HEALTHY and snapshot.health_code == 200, [c.to_dict() for c in result.checks]
    assert result.check("maintenance").reason.startswith("no maintenance run recorded yet")
    assert result.maintenance is None
