"""The backup drill: restore the latest backup into a scratch server on the host and compare it with
the source.

1. The newest backup of the instance, its SHA-256 sidecar checked (the drill drills what a restore
   would take: a newest backup that is corrupt fails the drill, an older good one does not save it).
2. Enough memory for the scratch server (twice the RDB) and a private directory (the backup
   directory unless drill.scratch_dir says otherwise), where the RDB is unpacked.
3. A scratch server (no TCP port, no persistence) loads it; its log says how many keys it loaded and
   how many had expired since the backup.
4. Key count: loaded + expired against the count the backup tool recorded when it took the backup
   (drill.max_key_drift percent apart at most).
5. Values: up to drill.sample keys of the restored data, read on both sides and hashed. A key whose
   value differs is expected when the source changed it since the backup; one that differs although
   the source has not touched it since (OBJECT IDLETIME longer than the backup's age) means the backup
   does not hold what the instance held: the drill fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import time
from datetime import UTC, datetime

from . import ERROR, FAILED, OK, WARNING, MaintenanceError
from .config import MaintenanceConfig
from .scratch import ScratchServer
from .sections import as_text, section

MAX_ELEMENTS = 10000          # a key with more elements (or a longer string, in bytes x 100) is not compared
LENGTH = {"string": "STRLEN", "hash": "HLEN", "list": "LLEN", "set": "SCARD", "zset": "ZCARD", "stream": "XLEN"}
LOADED = re.compile(r"keys loaded: (\d+), keys expired: (\d+)", re.IGNORECASE)
SLACK_SECONDS = 5             # OBJECT IDLETIME's clock against the backup's name
SUSPECT_MIN = 10              # sampled keys that must look corrupt (and half the sample) to fail the drill
LOCK_WAIT = 3 * 3600          # seconds a drill waits for another instance's drill on the host


@contextlib.contextmanager
def _host_lock(directory: str):
    import fcntl

    fd = os.open(os.path.join(directory, ".drill.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise MaintenanceError(f"another drill held {directory}/.drill.lock for {LOCK_WAIT} s") from None
                time.sleep(1)
        yield
    finally:
        os.close(fd)


def mem_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def value_digest(conn, name, kind: str) -> str | None:
    """A hash of the key's value that does not depend on its encoding; None when the key is too big to
    compare or of a type (a module's) the drill does not read."""
    if kind not in LENGTH:
        return None
    length = int(conn.execute_command(LENGTH[kind], name))
    if length > (MAX_ELEMENTS * 100 if kind == "string" else MAX_ELEMENTS):
        return None
    if kind == "string":
        parts = [conn.get(name) or b""]
    elif kind == "hash":
        parts = [b"%s=%s" % pair for pair in sorted(conn.hgetall(name).items())]
    elif kind == "list":
        parts = conn.lrange(name, 0, -1)
    elif kind == "set":
        parts = sorted(conn.smembers(name))
    elif kind == "zset":
        parts = [b"%s=%r" % (member, score) for member, score in conn.zrange(name, 0, -1, withscores=True)]
    else:
        parts = [b"%s:%s" % (_id, repr(sorted(fields.items())).encode()) for _id, fields in conn.xrange(name)]
    digest = hashlib.sha256(kind.encode())
    for part in parts:
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def drill(cfg: MaintenanceConfig, connect, now=None) -> dict:
    """`connect(db)` gives a bytes client of the source's database db. Returns the report section."""
    from redis_infra.backup import BackupError, engine, storage
    from redis_infra.backup import config as backup_config

    started = time.monotonic()
    now = now or datetime.now(UTC)
    if not cfg.backup_config:
        raise MaintenanceError(f"{cfg.source}: backup_config is not set: the drill needs the backup tool's config")
    try:
        bcfg = backup_config.load(cfg.backup_config)
        backups = engine.list_backups(bcfg, verify_sums=False)
    except BackupError as exc:
        return section(ERROR, f"cannot read the backups: {exc}", [str(exc)])
    if not backups:
        return section(FAILED, f"no backup of {bcfg.instance} in {bcfg.backup_dir}",
                       [f"no backup of {bcfg.instance} in {bcfg.backup_dir}: nothing to restore"])
    backup = storage.check_sums(backups[0])
    figures = {"backup_id": backup.id, "backup_time": engine.iso(backup.time),
               "backup_age_s": round((now - backup.time).total_seconds(), 1), "checksum": backup.status}
    if not backup.valid:
        message = f"the newest backup {backup.id} is {backup.status}: {backup.detail}"
        return section(FAILED, message, [message], **figures)
    recorded = engine.read_status(bcfg.status_file) or {}
    recorded_keys = recorded.get("keys") if recorded.get("backup_id") == backup.id else None
    server = cfg.server_binary(bcfg.check_rdb)
    parent = cfg.drill.scratch_dir or bcfg.backup_dir
    try:
        # One drill at a time on the host: each instance's cron line starts at the same minute, and two
        # scratch servers would each have checked the memory for one.
        with _host_lock(parent), ScratchServer(server, parent, cfg.drill.scratch_user, prefix=".tmp-drill-") as scratch:
            rdb = scratch.path("dump.rdb")
            unpack_started = time.monotonic()
            try:
                size = storage.gunzip_file(backup.rdb_path, rdb)
            except (OSError, EOFError) as exc:
                message = f"cannot unpack {backup.id}: {getattr(exc, 'strerror', None) or exc}"
                return section(FAILED if isinstance(exc, EOFError) else ERROR, message, [message], **figures)
            figures.update(rdb_size=size, unpack_s=round(time.monotonic() - unpack_started, 2))
            available = mem_available()
            if available is not None and available < 2 * size:
                message = (f"not enough memory for the scratch server: the RDB is {size} bytes, the drill needs "
                           f"about {2 * size}, MemAvailable is {available}")
                return section(ERROR, message, [message], **figures)
            try:
                figures["load_s"] = round(scratch.start("dump.rdb", cfg.drill.timeout), 2)
            except MaintenanceError as exc:
                message = f"the backup {backup.id} does not load: {exc}"
                return section(FAILED, message, [message], **figures)
            result = _compare(cfg, scratch, connect, figures, recorded_keys, now, backup.time)
    except MaintenanceError as exc:
        return section(ERROR, str(exc), [str(exc)], **figures)
    except OSError as exc:
        message = f"scratch directory in {parent}: {exc.strerror or exc}"
        return section(ERROR, message, [message], **figures)
    result["duration_s"] = round(time.monotonic() - started, 2)
    return result


def _compare(cfg: MaintenanceConfig, scratch: ScratchServer, connect, figures: dict, recorded_keys, now,
             backup_time) -> dict:
    keyspace = scratch.client().info("keyspace")
    restored_keys = sum(int(value.get("keys", 0)) for value in keyspace.values() if isinstance(value, dict))
    loaded = LOADED.search(scratch.log_text())
    expired = int(loaded.group(2)) if loaded else 0
    figures.update(restored_keys=restored_keys, expired_at_load=expired, recorded_keys=recorded_keys)
    findings = []
    failed = False
    if recorded_keys is not None:
        counted = restored_keys + expired
        allowed = math.ceil(recorded_keys * cfg.drill.max_key_drift / 100.0)
        figures["key_drift_percent"] = round(100.0 * abs(counted - recorded_keys) / max(recorded_keys, 1), 2)
        if abs(counted - recorded_keys) > allowed:
            failed = True
            findings.append(f"the backup holds {counted} keys ({restored_keys} loaded, {expired} expired since), "
                            f"the backup tool counted {recorded_keys} when it took it "
                            f"(more than {cfg.drill.max_key_drift:g}% apart)")
    else:
        findings.append("the backup tool's status no longer describes this backup (a later run replaced it): the key "
                        "count was not compared")
    sample = _sample(cfg, scratch, connect, keyspace, (now - backup_time).total_seconds())
    figures["sample"] = sample
    # OBJECT IDLETIME is a hint, not proof: the server does not update it while a save or an AOF rewrite runs,
    # and a write then leaves a key looking untouched. A few such keys are a warning; most of the sample
    # means the backup does not hold this instance's data.
    if sample["corrupt"] and sample["corrupt"] >= max(SUSPECT_MIN, sample["compared"] / 2):
        failed = True
        findings.append(f"{sample['corrupt']} of {sample['compared']} sampled keys differ from the source although "
                        "the source has not touched them since the backup: the backup does not hold this instance's "
                        "data (their names: sample.corrupt_examples in the report)")
    elif sample["corrupt"]:
        findings.append(f"{sample['corrupt']} of {sample['compared']} sampled keys differ from the source and look "
                        "untouched since the backup (idle time; writes during a save keep it); their names: "
                        "sample.corrupt_examples in the report")
    summary = (f"{figures['backup_id']} restored in {figures['load_s']}s: {restored_keys} keys"
               + (f" (+{expired} expired since)" if expired else "")
               + (f", {recorded_keys} recorded" if recorded_keys is not None else "")
               + f"; {sample['same']} of {sample['compared']} sampled values equal to the source, "
               f"{sample['changed_since']} changed since, {sample['gone']} gone")
    return section(FAILED if failed else (WARNING if findings else OK), summary, findings, **figures)


def _sample(cfg: MaintenanceConfig, scratch: ScratchServer, connect, keyspace: dict, age: float) -> dict:
    counts = {"compared": 0, "same": 0, "changed_since": 0, "gone": 0, "corrupt": 0, "skipped": 0,
              "corrupt_examples": []}
    dbs = sorted(int(name[2:]) for name in keyspace if name.startswith("db"))
    for db in dbs:
        scratch_db = scratch.client(decode=False, db=db)
        source = connect(db)
        cursor = 0
        while _examined(counts) < cfg.drill.sample:
            cursor, names = scratch_db.scan(cursor, count=100)
            for name in names[:cfg.drill.sample - _examined(counts)]:
                _compare_key(scratch_db, source, name, age, counts)
            if cursor == 0:
                break
    return counts


def _examined(counts: dict) -> int:
    return counts["compared"] + counts["skipped"] + counts["gone"]


def _compare_key(scratch_db, source, name, age: float, counts: dict) -> None:
    import redis

    kind = as_text(scratch_db.type(name))
    try:
        idle = int(source.object("idletime", name) or 0)
    except redis.ResponseError:        # an LFU maxmemory-policy keeps no idle time
        idle = None
    source_kind = as_text(source.type(name))
    if source_kind == "none":
        counts["gone"] += 1
        return
    mine = value_digest(scratch_db, name, kind)
    if mine is None:
        counts["skipped"] += 1
        return
    counts["compared"] += 1
    theirs = value_digest(source, name, source_kind) if source_kind == kind else "type changed"
    if mine == theirs:
        counts["same"] += 1
    elif idle is not None and idle > age + SLACK_SECONDS:
        counts["corrupt"] += 1
        if len(counts["corrupt_examples"]) < 3:
            counts["corrupt_examples"].append(as_text(name))
    else:
        counts["changed_since"] += 1
