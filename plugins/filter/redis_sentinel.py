"""What SENTINEL SET must change for one primary, from what Sentinel reports and has saved."""

from __future__ import annotations


def redis_sentinel_changes(master_reply, settings, saved_text, name, auth_user, auth_pass):
    """Flat [key, value, ...] for SENTINEL SET: the settings whose value differs, and the credentials.

    master_reply: the SENTINEL MASTER reply (flat list of field, value), or nothing for a primary just
    added; settings: {field: wanted value}; saved_text: Sentinel's config file, where the credentials
    are saved (SENTINEL MASTER does not show them).
    """
    reply = list(master_reply or [])
    known = dict(zip(reply[::2], reply[1::2], strict=False))
    changes = []
    for key, value in sorted(settings.items()):
        if str(known.get(key)) != str(value):
            changes += [key, str(value)]
    saved = {line.strip() for line in (saved_text or "").splitlines()}
    if f"sentinel auth-user {name} {auth_user}" not in saved:
        changes += ["auth-user", auth_user]
    if f"sentinel auth-pass {name} {auth_pass}" not in saved:
        changes += ["auth-pass", auth_pass]
    return changes


def redis_sentinel_summary(topology, redis_addresses, sentinel_addresses, sentinel_port):
    """{name: {primary, replicas, sentinels}} as host:port strings, for applications."""
    summary = {}
    for name, primary in sorted(topology.items()):
        port = int(primary["port"])
        replicas = sorted(set(redis_addresses) - {primary["address"]})
        summary[name] = {
            "primary": f"{primary['address']}:{port}",
            "replicas": [f"{address}:{port}" for address in replicas],
            "sentinels": [f"{address}:{int(sentinel_port)}" for address in sorted(set(sentinel_addresses))],
            "sentinel_master_name": name,
        }
    return summary


def redis_sentinel_peers_heard(sentinels_reply, within_ms):
    """From SENTINEL SENTINELS <name>, how many other Sentinels this one has had a hello message from in
    the last within_ms milliseconds. (Right after a start, Sentinel counts every peer of its config as
    reachable until down-after-milliseconds passes: CKQUORUM proves nothing then.)"""
    heard = 0
    for peer in sentinels_reply or []:
        fields = dict(zip(peer[::2], peer[1::2], strict=False)) if isinstance(peer, list) else {}
        last = str(fields.get("last-hello-message", ""))
        if last.isdigit() and int(last) <= int(within_ms):
            heard += 1
    return heard


class FilterModule:
    def filters(self):
        return {"redis_sentinel_changes": redis_sentinel_changes, "redis_sentinel_summary": redis_sentinel_summary,
                "redis_sentinel_peers_heard": redis_sentinel_peers_heard}
