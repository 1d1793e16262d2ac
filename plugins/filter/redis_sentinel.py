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


def _entries(reply):
    return [dict(zip(entry[::2], entry[1::2], strict=False)) for entry in reply or [] if isinstance(entry, list)]


def redis_sentinel_forgotten(sentinels_reply, replicas_reply, sentinels, replicas, within_ms):
    """After playbooks/replace.yml's SENTINEL RESET: what this Sentinel still gets wrong about one primary, from
    SENTINEL SENTINELS and SENTINEL REPLICAS, against the Sentinels and replicas that stay ([] when nothing):
    it must know exactly the other Sentinels that stay, each heard within within_ms, and exactly the replicas
    that stay, none of them down (a retired host it still lists could count in a failover's majority)."""
    wrong = []
    peers, listed = _entries(sentinels_reply), _entries(replicas_reply)
    heard = redis_sentinel_peers_heard(sentinels_reply, within_ms)
    if len(peers) != sentinels - 1 or heard != sentinels - 1:
        wrong.append(f"knows {len(peers)} other Sentinels and heard {heard}, expects {sentinels - 1}")
    down = [f"{entry.get('ip')}:{entry.get('port')}" for entry in listed
            if {"s_down", "o_down", "disconnected"} & set(str(entry.get("flags", "")).split(","))]
    if len(listed) != replicas or down:
        wrong.append(f"lists {len(listed)} replicas ({', '.join(down) or 'none'} down), expects {replicas}")
    return wrong


def redis_sentinel_choosable(replicas_reply, addresses):
    """From SENTINEL REPLICAS <name>: the replicas at one of addresses ("ip:port" list) that this Sentinel could
    still promote (not down, not disconnected, replica-priority above 0)."""
    return [f"{entry.get('ip')}:{entry.get('port')}" for entry in _entries(replicas_reply)
            if f"{entry.get('ip')}:{entry.get('port')}" in set(map(str, addresses or []))
            and not {"s_down", "o_down", "disconnected"} & set(str(entry.get("flags", "")).split(","))
            and str(entry.get("slave-priority", "1")) != "0"]


def redis_sentinel_no_choice(registered, addresses):
    """From the registered loop of SENTINEL REPLICAS over the instances (item: the instance, with its port): the
    instance names for which the Sentinel did not answer or could promote none of addresses (plain IPs)."""
    names = []
    for result in (registered or {}).get("results", []):
        item = result.get("item") or {}
        responses = result.get("responses")
        port = item.get("port", 6379)
        if result.get("failed") or not responses or not redis_sentinel_choosable(
                responses[0], [f"{address}:{port}" for address in addresses or []]):
            names.append(item.get("name"))
    return names


class FilterModule:
    def filters(self):
        return {"redis_sentinel_changes": redis_sentinel_changes, "redis_sentinel_summary": redis_sentinel_summary,
                "redis_sentinel_forgotten": redis_sentinel_forgotten,
                "redis_sentinel_choosable": redis_sentinel_choosable,
                "redis_sentinel_no_choice": redis_sentinel_no_choice,
                "redis_sentinel_peers_heard": redis_sentinel_peers_heard}
