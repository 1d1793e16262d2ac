"""What `verify` reports for the restore play's final check: the RDB's SHA-256 and its key counts."""

from __future__ import annotations

import re

import redis


def test_verify_reports_the_checksum_and_the_key_counts_of_the_rdb(make_env):
    env = make_env()
    env.admin.set("plain", "1")
    env.admin.set("with-ttl", "2", ex=3600)
    env.admin.hset("hash", mapping={"a": "1"})
    redis.Redis(host="127.0.0.1", port=env.server.port, db=2).set("in-db-2", "3")
    assert env.cli("run").code == 0
    (final,) = env.finals()
    sidecar = (env.backup_dir / (final + ".sha256")).read_text().split()[0]

    verify = env.cli("verify")
    assert verify.code == 0, verify.stderr
    backup_id, state, detail = verify.stdout.strip().split("\t")
    assert (backup_id, state) == (final[:-7], "ok")
    assert f"sha256 {sidecar}" in detail
    assert re.search(r"; 4 keys read, 1 expires, 0 already expired$", detail), detail
