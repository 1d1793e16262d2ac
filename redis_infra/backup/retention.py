"""Which backups to keep: the newest N valid ones, plus the newest valid one of each of the last D days.

Only backups whose checksum verified ("ok") count; a corrupt or unchecked backup never counts as
valid, is never chosen to be kept in place of a good one, and is never deleted by retention (the
operator sees it in `list` and in the status file).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from .storage import Backup


def plan(backups: Iterable[Backup], now: datetime, keep_last: int, keep_daily_days: int) -> tuple[list, list]:
    """Return (keep, delete): `delete` holds only valid backups outside the policy, oldest last."""
    ordered = sorted(backups, key=Backup.sort_key, reverse=True)
    valid = [backup for backup in ordered if backup.valid]
    keep_ids = {backup.id for backup in valid[:max(keep_last, 1)]}   # the newest valid one is always kept
    today = now.date()
    days_seen = set()
    for backup in valid:                                              # newest first: first of a day wins
        day = backup.time.date()
        if (today - day).days < keep_daily_days and day not in days_seen:
            days_seen.add(day)
            keep_ids.add(backup.id)
    keep = [backup for backup in ordered if backup.id in keep_ids or not backup.valid]
    delete = [backup for backup in valid if backup.id not in keep_ids]
    return keep, delete
