"""Package upgrades of the engine (playbooks/upgrade.yml): what apt reports, Debian's version order,
and each host's decision, made on the controller from what the host reported."""

from __future__ import annotations

import re


def _order(char):
    """dpkg's weight of one character of a non-digit part: the end and digits 0, '~' before
    everything (even the end), letters by their code, anything else after the letters."""
    if not char or char.isdigit():
        return 0
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_part(left, right):
    """dpkg's comparison of two upstream versions or two revisions: alternating non-digit parts
    (compared character by character by _order) and digit parts (compared as numbers)."""
    i = j = 0
    while i < len(left) or j < len(right):
        while (i < len(left) and not left[i].isdigit()) or (j < len(right) and not right[j].isdigit()):
            a = _order(left[i] if i < len(left) else "")
            b = _order(right[j] if j < len(right) else "")
            if a != b:
                return -1 if a < b else 1
            i, j = i + 1, j + 1
        start_i, start_j = i, j
        while i < len(left) and left[i].isdigit():
            i += 1
        while j < len(right) and right[j].isdigit():
            j += 1
        a = int(left[start_i:i] or 0)
        b = int(right[start_j:j] or 0)
        if a != b:
            return -1 if a < b else 1
    return 0


def _split(version):
    version = str(version).strip()
    epoch, rest = version.split(":", 1) if ":" in version else ("0", version)
    upstream, revision = rest.rsplit("-", 1) if "-" in rest else (rest, "")
    return int(epoch or 0), upstream, revision


def redis_debian_version_compare(left, right):
    """-1, 0 or 1 as the Debian version left sorts before, equal to or after right
    (what `dpkg --compare-versions` decides)."""
    left_epoch, left_upstream, left_revision = _split(left)
    right_epoch, right_upstream, right_revision = _split(right)
    if left_epoch != right_epoch:
        return -1 if left_epoch < right_epoch else 1
    return _compare_part(left_upstream, right_upstream) or _compare_part(left_revision, right_revision)


def redis_upstream_version(version):
    """The upstream part of a Debian version: '5:7.0.15-1~deb12u10' gives '7.0.15'."""
    return _split(version)[1].split("+", maxsplit=1)[0]


def redis_apt_policy(text):
    """`apt-cache policy PACKAGE...` as {package: {installed, candidate, versions}}: installed and
    candidate are None when apt says (none); versions lists every version the sources (or dpkg) know."""
    packages = {}
    current = None
    in_table = False
    for line in str(text or "").splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            current = packages.setdefault(line.rstrip()[:-1], {"installed": None, "candidate": None, "versions": []})
            in_table = False
            continue
        if current is None:
            continue
        stripped = line.strip()
        field = re.match(r"(Installed|Candidate):\s*(\S+)", stripped)
        if field and not in_table:
            value = None if field.group(2) == "(none)" else field.group(2)
            current[field.group(1).lower()] = value
        elif stripped == "Version table:":
            in_table = True
        elif in_table:
            entry = re.match(r"(?:\*\*\*\s+)?(\S+)\s+-?\d+$", stripped)
            if entry and not stripped.startswith(("http", "/")) and entry.group(1) not in current["versions"]:
                current["versions"].append(entry.group(1))
    return packages


def redis_upgrade_decision(policy, packages, required, requested=""):
    """One host's upgrade: policy from redis_apt_policy; packages, the engine's packages that upgrade
    together (they depend on each other's exact version); required, those this host must have (its
    server and, on a Sentinel host, its Sentinel); requested, the version asked for ('' for apt's
    candidate). Returns {installed, target, upgrade (apt's name=version list), error}; error is ''
    when the host may go on, else a sentence naming the variable or the way to go."""
    decision = {"installed": {}, "target": "", "upgrade": [], "error": ""}
    missing = [name for name in required if not (policy.get(name) or {}).get("installed")]
    if missing:
        decision["error"] = (
            f"{', '.join(missing)} is not installed on this host, so playbooks/upgrade.yml has nothing of "
            "redis_server_engine to upgrade here: a host that is new, or one whose engine is changing "
            "(an engine or distribution change is an upgrade by replacement, docs/upgrade.md), "
            "converges with site.yml first.")
        return decision
    installed = {name: policy[name]["installed"] for name in packages if (policy.get(name) or {}).get("installed")}
    decision["installed"] = installed
    if not installed:
        decision["error"] = f"None of {', '.join(packages)} is installed on this host: nothing to upgrade."
        return decision
    anchor = (list(required) + list(installed))[0]
    target = str(requested or "").strip() or policy[anchor].get("candidate") or installed[anchor]
    decision["target"] = target
    for name in installed:
        if target not in policy[name]["versions"]:
            decision["error"] = (
                f"redis_server_upgrade_version {target}: {name} {target} is not in this host's package sources "
                f"(they have {', '.join(policy[name]['versions']) or 'nothing'}).")
            return decision
    older = [f"{name} {version}" for name, version in installed.items()
             if redis_debian_version_compare(target, version) < 0]
    if older:
        decision["error"] = (
            f"redis_server_upgrade_version {target} is older than the installed {', '.join(older)}: a downgrade "
            "is refused, because data written by a newer version may not load in an older one (docs/upgrade.md).")
        return decision
    decision["upgrade"] = [f"{name}={target}" for name, version in installed.items()
                           if redis_debian_version_compare(target, version) > 0]
    return decision


def redis_upgrade_disagreement(decisions):
    """{host: decision} of every host of the play: '' when all end on one version, else a sentence
    naming each target (a replication group or cluster must not end on mixed versions)."""
    targets = {}
    for host, decision in sorted((decisions or {}).items()):
        targets.setdefault(decision.get("target", ""), []).append(host)
    if len(targets) <= 1:
        return ""
    listed = "; ".join(f"{target or 'nothing'} on {', '.join(hosts)}" for target, hosts in sorted(targets.items()))
    return (f"The hosts would end on different versions ({listed}): their package sources differ. Set "
            "redis_server_upgrade_version to one version that every host's sources have.")


class FilterModule:
    def filters(self):
        return {
            "redis_debian_version_compare": redis_debian_version_compare,
            "redis_upstream_version": redis_upstream_version,
            "redis_apt_policy": redis_apt_policy,
            "redis_upgrade_decision": redis_upgrade_decision,
            "redis_upgrade_disagreement": redis_upgrade_disagreement,
        }
