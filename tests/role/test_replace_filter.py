"""The upgrade by replacement's decision (plugins/filter/redis_upgrade.py, playbooks/replace.yml): the engine and
version from real INFO replies, the RDB formats of docs/upgrade.md, and each refusal saying why."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins/filter"))

from redis_upgrade import redis_rdb_format, redis_replace_decision, redis_server_build  # noqa: E402

ENGINES = yaml.safe_load((ROOT / "roles/redis_server/vars/main.yml").read_text())["_redis_server_engines"]
# INFO server as Debian 12's Redis, Debian 13's Redis and Debian 13's Valkey answer it (the lines that matter).
REDIS_70 = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\nos:Linux\r\n"
REDIS_80 = "# Server\r\nredis_version:8.0.2\r\nredis_mode:standalone\r\n"
VALKEY_81 = "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.1.1\r\n"


def test_build_reads_the_engine_and_its_own_version():
    assert redis_server_build(REDIS_70) == ("redis", "7.0.15")
    assert redis_server_build(VALKEY_81) == ("valkey", "8.1.1")  # not the redis_version it shows to clients


@pytest.mark.parametrize(("engine", "version", "reader", "expected"), [
    ("redis", "7.0.15", False, 10), ("redis", "8.0.2", False, 12), ("valkey", "8.1.1", False, 11),
    ("redis", "7.4.0", False, 12), ("redis", "9.1.0", False, None), ("redis", "9.1.0", True, 12),
    ("valkey", "9.0.0", False, None), ("redis", "5.0.7", True, None),
])
def test_rdb_format_is_known_or_none_and_a_newer_reader_reads_the_newest_known(engine, version, reader, expected):
    assert redis_rdb_format(engine, version, {k: v["rdb_formats"] for k, v in ENGINES.items()}, reader) == expected


def _reports(primary, staying, retiring_info=REDIS_70):
    reports = [{"host": "old-1", "retiring": True, "primary": True, "info": primary},
               {"host": "old-2", "retiring": True, "primary": False, "info": retiring_info}]
    return reports + [{"host": f"new-{i}", "retiring": False, "primary": False, "info": info}
                      for i, info in enumerate(staying, 1)]


def test_redis_7_0_moves_to_redis_8_0_or_to_valkey_8_1():
    decision = redis_replace_decision(_reports(REDIS_70, [REDIS_80, REDIS_80]), ENGINES)
    assert decision["errors"] == []
    assert decision["builds"]["new-1"] == "redis 8.0.2 (RDB 12)"
    assert decision["builds"]["old-1"] == "redis 7.0.15 (RDB 10)"
    assert redis_replace_decision(_reports(REDIS_70, [VALKEY_81]), ENGINES)["errors"] == []


def test_redis_8_0_cannot_move_to_valkey_8_1_nor_valkey_back_to_redis_7_0():
    errors = redis_replace_decision(_reports(REDIS_80, [VALKEY_81]), ENGINES)["errors"]
    assert len(errors) == 1 and "writes RDB 12" in errors[0] and "only up to RDB 11" in errors[0]
    errors = redis_replace_decision(_reports(VALKEY_81, [REDIS_70]), ENGINES)["errors"]
    assert len(errors) == 1 and "writes RDB 11" in errors[0]


def test_the_hosts_that_stay_run_one_engine_and_version():
    errors = redis_replace_decision(_reports(REDIS_70, [REDIS_80, VALKEY_81]), ENGINES)["errors"]
    assert len(errors) == 1 and "different engines or versions" in errors[0]
    assert "new-1: redis 8.0.2" in errors[0] and "new-2: valkey 8.1.1" in errors[0]


def test_a_silent_host_that_stays_or_a_silent_primary_is_refused_a_silent_retiring_replica_is_not():
    errors = redis_replace_decision(_reports(REDIS_70, [REDIS_80, ""]), ENGINES)["errors"]
    assert errors == ["new-2 did not answer INFO, so its engine and version are unknown."]
    assert redis_replace_decision(_reports(REDIS_70, [REDIS_80], retiring_info=""), ENGINES)["errors"] == []
    assert "old-1 did not answer" in redis_replace_decision(_reports("", [REDIS_80]), ENGINES)["errors"][0]


def test_an_unknown_format_of_the_primary_is_refused_naming_the_table():
    errors = redis_replace_decision(_reports(REDIS_70.replace("7.0.15", "9.2.0"), [REDIS_80]), ENGINES)["errors"]
    assert len(errors) == 1 and "rdb_formats" in errors[0] and "old-1" in errors[0]


def test_a_host_that_stays_without_a_report_or_an_instance_without_its_primary_is_refused():
    """An unreachable host, or one a --limit left out, has no report at all: the decision must not judge
    without it."""
    reports = _reports(REDIS_70, [REDIS_80])
    for report in reports:
        report["instance"] = "main"
    assert redis_replace_decision(reports, ENGINES, ["new-1"], ["main"])["errors"] == []
    errors = redis_replace_decision(reports, ENGINES, ["new-1", "new-2"], ["main"])["errors"]
    assert errors == ["new-2 gave no report (unreachable, or left out by --limit): every host of the group must be "
                      "in the run."]
    without_primary = [report for report in reports if not report["primary"]]
    errors = redis_replace_decision(without_primary, ENGINES, ["new-1"], ["main"])["errors"]
    assert len(errors) == 1 and "0 reachable hosts run its current primary" in errors[0]


def test_a_primary_that_stays_is_not_judged_by_the_table():
    """After the move (a re-run), the primary runs the staying version, which the table need not list."""
    newer = REDIS_80.replace("8.0.2", "8.2.1")
    reports = [{"host": "old-1", "retiring": True, "primary": False, "info": ""},
               {"host": "new-1", "retiring": False, "primary": True, "info": newer},
               {"host": "new-2", "retiring": False, "primary": False, "info": newer}]
    assert redis_replace_decision(reports, ENGINES)["errors"] == []


def test_nothing_left_to_take_over_is_refused():
    reports = [{"host": "old-1", "retiring": True, "primary": True, "info": REDIS_70}]
    assert "at least one host must stay" in redis_replace_decision(reports, ENGINES)["errors"][0]
