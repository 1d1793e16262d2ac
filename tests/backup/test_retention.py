"""Retention, corrupted backups, verify and list."""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import UTC, datetime, timedelta

from redis_infra.backup import retention
from redis_infra.backup.storage import Backup

from .conftest import fake_backup, flip_byte, free_port, snapshot_files

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _b(when: datetime, status: str = "ok") -> Backup:
    return Backup("/x", f"main-{when.strftime('%Y%m%dT%H%M%SZ')}", when, status=status)


def _ids(backups) -> list[str]:
    return sorted(b.id[5:] for b in backups)


def test_plan_keeps_last_n_and_one_per_day():
    backups = [_b(NOW - timedelta(days=d, hours=h)) for d in range(10) for h in (1, 9)]
    keep, delete = retention.plan(backups, NOW, keep_last=3, keep_daily_days=5)
    # last 3: today 11:00, today 03:00, yesterday 11:00; daily: newest of each of the 5 days
    assert _ids(keep) == sorted(["20261125T110000Z", "20261125T030000Z", "20261124T110000Z", "20261123T110000Z",
                                 "20261122T110000Z", "20261121T110000Z"])
    assert len(keep) + len(delete) == 20
    assert not {b.id for b in keep} & {b.id for b in delete}


def test_plan_corrupt_backups_never_count_and_are_never_deleted():
    good_old = _b(NOW - timedelta(days=3))
    corrupt_new = _b(NOW - timedelta(hours=1), status="corrupt")
    unchecked = _b(NOW - timedelta(hours=2), status="no-checksum")
    keep, delete = retention.plan([good_old, corrupt_new, unchecked], NOW, keep_last=1, keep_daily_days=0)
    assert good_old in keep and corrupt_new in keep and unchecked in keep     # the last good one survives
    assert delete == []


def test_plan_always_keeps_the_newest_valid_even_with_keep_daily_zero():
    backups = [_b(NOW - timedelta(days=40)), _b(NOW - timedelta(days=50))]
    keep, delete = retention.plan(backups, NOW, keep_last=1, keep_daily_days=0)
    assert [b.id for b in keep] == [backups[0].id] and delete == [backups[1]]


def test_rotation_on_disk_after_a_successful_run(make_env):
    env = make_env()
    env.write_config("[retention]\nkeep_last = 2\nkeep_daily_days = 4\n")
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    made = {}
    for days in range(1, 10):
        for hour in (3, 15):
            made[(days, hour)] = fake_backup(env.backup_dir, today - timedelta(days=days) + timedelta(hours=hour))
    # newest of the fakes is corrupt (one flipped byte) and one has lost its checksum file
    corrupt = fake_backup(env.backup_dir, today - timedelta(days=1) + timedelta(hours=20))
    flip_byte(env.backup_dir / f"{corrupt}.rdb.gz")
    no_sum = fake_backup(env.backup_dir, today - timedelta(days=2) + timedelta(hours=20))
    (env.backup_dir / f"{no_sum}.rdb.gz.sha256").unlink()
    orphan = env.backup_dir / "main-20200101T000000Z.aof.tar.gz.sha256"
    orphan.write_text("x")

    env.admin.set("k", "v")
    result = env.cli("run")
    assert result.code == 0, result.stderr
    new = env.status()["backup_id"]
    kept = {name[: -len(".rdb.gz")] for name in env.finals()}
    expected = {new, made[(1, 15)], made[(2, 15)], made[(3, 15)], corrupt, no_sum}
    assert kept == expected
    assert sorted(env.status()["corrupt"]) == sorted([corrupt, no_sum])
    assert len(env.status()["deleted"]) == 18 - 3
    for bid in kept - {no_sum}:
        assert (env.backup_dir / f"{bid}.rdb.gz.sha256").exists()
    assert not orphan.exists()
    assert "not valid" in result.stderr


def test_failed_run_deletes_nothing(make_env):
    env = make_env()
    env.write_config("[retention]\nkeep_last = 1\nkeep_daily_days = 0\n")
    for days in range(1, 6):
        fake_backup(env.backup_dir, datetime.now(UTC) - timedelta(days=days))
    before = snapshot_files(env.backup_dir)
    env.write_connection(port=free_port())
    assert env.cli("run").code == 3
    assert snapshot_files(env.backup_dir) == before


def test_corrupted_backup_is_detected_and_skipped_for_restore(make_env):
    env = make_env()
    env.admin.set("gen", "old")
    assert env.cli("run").code == 0
    env.admin.set("gen", "new")
    assert env.cli("run").code == 0
    older, newer = env.finals()
    flip_byte(env.backup_dir / newer)

    verify = env.cli("verify")                                       # the newest
    assert verify.code == 6
    assert "checksum mismatch" in verify.stdout and "verification failed" in verify.stderr
    verify_all = env.cli("verify", "--all")
    assert verify_all.code == 6
    lines = dict(line.split("\t")[:2] for line in verify_all.stdout.splitlines())
    assert lines == {older[:-7]: "ok", newer[:-7]: "FAILED"}
    assert env.cli("verify", older).code == 0
    assert env.cli("verify", str(env.backup_dir / older)).code == 0

    listing = json.loads(env.cli("list", "--json").stdout)
    assert {item["id"]: item["status"] for item in listing} == {older[:-7]: "ok", newer[:-7]: "corrupt"}
    table = env.cli("list").stdout
    assert "corrupt" in table and "checksum mismatch" in table

    dest = env.tmp / "dump.rdb"
    restore = env.cli("restore-prepare", "--rdb-dest", str(dest))
    assert restore.code == 0 and json.loads(restore.stdout)["backup"] == older[:-7]
    assert "skipping backup" in restore.stderr
    named = env.cli("restore-prepare", "--backup", newer, "--rdb-dest", str(env.tmp / "other.rdb"))
    assert named.code == 6 and "checksum mismatch" in named.stderr
    assert not (env.tmp / "other.rdb").exists()

    # a later good run keeps the corrupt file for inspection and does not count it
    env.write_config("[retention]\nkeep_last = 2\nkeep_daily_days = 0\n")
    assert env.cli("run").code == 0
    assert len(env.finals()) == 3 and newer in env.finals() and older in env.finals()


def test_checksum_ok_but_rdb_invalid_fails_verify(make_env):
    """A backup whose checksum matches but whose content is no RDB: redis-check-rdb catches it."""
    env = make_env()
    payload = gzip.compress(b"REDIS0009 this is not an rdb file")
    bid = "main-20261101T000000Z"
    (env.backup_dir / f"{bid}.rdb.gz").write_bytes(payload)
    (env.backup_dir / f"{bid}.rdb.gz.sha256").write_text(f"{hashlib.sha256(payload).hexdigest()}  {bid}.rdb.gz\n")
    result = env.cli("verify", bid)
    assert result.code == 6 and "redis-check-rdb failed" in result.stdout
    assert env.temps() == []
    restore = env.cli("restore-prepare", "--rdb-dest", str(env.tmp / "dump.rdb"))
    assert restore.code == 10 and "no valid backup" in restore.stderr
    assert not (env.tmp / "dump.rdb").exists()


def test_verify_and_list_with_no_backups(make_env):
    env = make_env()
    assert env.cli("verify").code == 10
    result = env.cli("list")
    assert result.code == 0 and result.stdout.strip() == "no backups"
