"""The upgrade's decisions (plugins/filter/redis_upgrade.py): Debian's version order checked against
the real dpkg, apt-cache's output as apt prints it, and each refusal naming its variable."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins/filter"))

from redis_upgrade import (  # noqa: E402
    redis_apt_policy,
    redis_debian_version_compare,
    redis_upgrade_decision,
    redis_upgrade_disagreement,
    redis_upstream_version,
)

VERSIONS = [
    "5:7.0.15-1~deb12u7", "5:7.0.15-1~deb12u10", "5:7.0.15-1~deb12u1", "5:7.0.15-1", "5:7.0.15-1+b1",
    "5:7.0.15", "5:7.0.15-0", "5:7.0.9-1", "5:8.0.2-3", "7.0.15-1", "8.1.1+dfsg1-3", "8.1.1+dfsg1-3~bpo12+1",
    "8.0.1+dfsg1-1~bpo12+1", "1.0~rc1-1", "1.0-1", "1.0a-1", "1.0.0-1", "1:0.9-1", "2.0-1.1", "2.0-1a",
]

POLICY = """redis-server:
  Installed: 5:7.0.15-1~deb12u7
  Candidate: 5:7.0.15-1~deb12u10
  Version table:
     5:7.0.15-1~deb12u10 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
 *** 5:7.0.15-1~deb12u7 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
        100 /var/lib/dpkg/status
redis-tools:
  Installed: 5:7.0.15-1~deb12u7
  Candidate: 5:7.0.15-1~deb12u10
  Version table:
     5:7.0.15-1~deb12u10 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
 *** 5:7.0.15-1~deb12u7 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
        100 /var/lib/dpkg/status
redis-sentinel:
  Installed: (none)
  Candidate: 5:7.0.15-1~deb12u10
  Version table:
     5:7.0.15-1~deb12u10 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
     5:7.0.15-1~deb12u7 500
        500 http://deb.debian.org/debian bookworm/main amd64 Packages
"""
PACKAGES = ["redis-server", "redis-tools", "redis-sentinel"]


@pytest.mark.skipif(not shutil.which("dpkg"), reason="needs dpkg")
def test_version_order_is_dpkg_order():
    for left, right in itertools.product(VERSIONS, repeat=2):
        expected = next(result for op, result in (("lt", -1), ("eq", 0), ("gt", 1))
                        if subprocess.run(["dpkg", "--compare-versions", left, op, right], check=False).returncode == 0)
        assert redis_debian_version_compare(left, right) == expected, (left, right)


def test_upstream_version_drops_epoch_revision_and_repack_suffix():
    assert redis_upstream_version("5:7.0.15-1~deb12u10") == "7.0.15"
    assert redis_upstream_version("8.1.1+dfsg1-3") == "8.1.1"


def test_apt_policy_reads_installed_candidate_and_every_version():
    policy = redis_apt_policy(POLICY)
    assert policy["redis-server"] == {"installed": "5:7.0.15-1~deb12u7", "candidate": "5:7.0.15-1~deb12u10",
                                      "versions": ["5:7.0.15-1~deb12u10", "5:7.0.15-1~deb12u7"]}
    assert policy["redis-sentinel"]["installed"] is None
    assert redis_apt_policy("") == {}


def test_decision_upgrades_the_installed_packages_to_the_candidate():
    decision = redis_upgrade_decision(redis_apt_policy(POLICY), PACKAGES, ["redis-server"])
    assert decision == {"installed": {"redis-server": "5:7.0.15-1~deb12u7", "redis-tools": "5:7.0.15-1~deb12u7"},
                        "target": "5:7.0.15-1~deb12u10", "error": "",
                        "upgrade": ["redis-server=5:7.0.15-1~deb12u10", "redis-tools=5:7.0.15-1~deb12u10"]}
    same = redis_upgrade_decision(redis_apt_policy(POLICY), PACKAGES, ["redis-server"], "5:7.0.15-1~deb12u7")
    assert same["upgrade"] == [] and same["error"] == "", "the installed version asked for is not a change"


@pytest.mark.parametrize(("required", "requested", "words"), [
    (["redis-server"], "5:7.0.15-1~deb12u1", ["redis_server_upgrade_version", "not in this host's package sources"]),
    (["redis-server", "redis-sentinel"], "", ["redis-sentinel is not installed", "upgrade by replacement"]),
    (["valkey-server"], "", ["valkey-server is not installed", "redis_server_engine"]),
])
def test_decision_refuses_with_a_reason(required, requested, words):
    decision = redis_upgrade_decision(redis_apt_policy(POLICY), PACKAGES, required, requested)
    assert decision["upgrade"] == []
    for word in words:
        assert word in decision["error"]


def test_decision_refuses_a_downgrade():
    newer = POLICY.replace("Installed: 5:7.0.15-1~deb12u7", "Installed: 5:7.0.15-1~deb12u10")
    decision = redis_upgrade_decision(redis_apt_policy(newer), PACKAGES, ["redis-server"], "5:7.0.15-1~deb12u7")
    assert decision["upgrade"] == [] and "downgrade is refused" in decision["error"]
    assert "redis_server_upgrade_version" in decision["error"]


def test_hosts_ending_on_different_versions_fail_closed():
    assert redis_upgrade_disagreement({"a": {"target": "1"}, "b": {"target": "1"}}) == ""
    said = redis_upgrade_disagreement({"a": {"target": "1"}, "b": {"target": "2"}, "c": {"target": "2"}})
    assert "1 on a" in said and "2 on b, c" in said and "redis_server_upgrade_version" in said
