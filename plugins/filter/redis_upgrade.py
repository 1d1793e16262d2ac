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


def _info_fields(text):
    return dict(line.split(":", 1) for line in str(text or "").splitlines() if ":" in line and not line.startswith("#"))


def _numbers(version):
    return tuple(int(part) for part in re.findall(r"\d+", str(version))[:3])


def redis_server_build(info_server):
    """(engine, version) of the server that answered INFO server: Valkey names itself in server_name and
    gives valkey_version (its redis_version stays 7.2.4 for clients); Redis gives redis_version only."""
    fields = _info_fields(info_server)
    if fields.get("server_name", "").strip() == "valkey" or "valkey_version" in fields:
        return "valkey", fields.get("valkey_version", "").strip()
    return "redis", fields.get("redis_version", "").strip()


def redis_rdb_format(engine, version, formats, reader=False):
    """The RDB format version that engine at version writes, from formats: {engine: {"major.minor": format}}
    (the engines' table in the redis_server role's vars). None when the table does not have it; with reader,
    a version newer than every entry counts as reading the table's highest format (a server reads every
    format up to its own), which never allows more than it can do."""
    table = {_numbers(key)[:2]: int(number) for key, number in ((formats or {}).get(engine) or {}).items()}
    wanted = _numbers(version)[:2]
    if wanted in table:
        return table[wanted]
    if reader and table and wanted > max(table):
        return table[max(table)]
    return None


def redis_replace_reports(info_results, host, retiring, address, topology):
    """One host's part of redis_replace_decision: from the registered results of INFO server on each of its
    instances, {host: 'host instance', retiring, primary (the instance's current primary is this host), info}."""
    reports = []
    for result in (info_results or {}).get("results", []):
        name = result["item"]["name"]
        responses = result.get("responses") or [""]
        reports.append({"host": f"{host} {name}", "instance": name, "retiring": bool(retiring),
                        "primary": str(((topology or {}).get(name) or {}).get("address", "")) == str(address),
                        "info": responses[0] if isinstance(responses[0], str) else ""})
    return reports


def redis_replace_decision(reports, engines, staying_hosts=(), instances=()):
    """Whether playbooks/replace.yml may move a replication group onto the hosts that stay. reports: one per
    host, {host, retiring (bool), primary (bool: runs a current primary), info (INFO server, '' when the
    host did not answer)}. Every host that stays must answer, all of them must run one engine and version (any
    of them can become the primary, and each must read what the others write), and that version must read
    the current primary's RDB format (replicas load it at their first sync). Returns {errors: [sentences],
    builds: {host: 'engine version (RDB n)'}}. engines: the engines' table, each with its rdb_formats."""
    formats = {name: (spec or {}).get("rdb_formats") or {} for name, spec in (engines or {}).items()}
    errors, builds = [], {}
    # Every host that stays must have reported (an unreachable one, or one a --limit left out, has no report),
    # and each instance must have its current primary among the reports, with an answer: else the checks
    # below would judge without the evidence that matters.
    reported = {str(report["host"]).split(" ", maxsplit=1)[0] for report in reports or []}
    silent = [host for host in staying_hosts or [] if host not in reported]
    if silent:
        errors.append(f"{', '.join(silent)} gave no report (unreachable, or left out by --limit): every host of "
                      "the group must be in the run.")
    for name in instances or []:
        primaries = [r for r in reports or [] if r.get("instance") == name and r.get("primary") and r.get("info")]
        if len(primaries) != 1:
            errors.append(f"Instance {name}: {len(primaries)} reachable hosts run its current primary, so the move "
                          "cannot be judged; every host of the group must be in the run, its primary answering.")
    staying = [report for report in reports or [] if not report.get("retiring")]
    if not staying:
        errors.append("Every host of the redis group is in redis_retiring: at least one host must stay and take "
                      "the group over.")
    read = {}
    for report in reports or []:
        if not report.get("info"):
            if not report.get("retiring") or report.get("primary"):
                errors.append(f"{report['host']} did not answer INFO, so its engine and version are unknown.")
            continue
        engine, version = redis_server_build(report["info"])
        number = redis_rdb_format(engine, version, formats, reader=not report.get("primary"))
        read[report["host"]] = (engine, ".".join(str(n) for n in _numbers(version)[:2]), number)
        builds[report["host"]] = f"{engine} {version} (RDB {number if number is not None else 'unknown'})"
    kinds = {read[report["host"]][:2] for report in staying if report["host"] in read}
    if len(kinds) > 1:
        errors.append("The hosts that stay run different engines or versions ("
                      + "; ".join(f"{host}: {build}" for host, build in sorted(builds.items())
                                  if host in {r["host"] for r in staying})
                      + "): each of them can become the primary, so each must read what the others write. "
                      "Give them one engine and version.")
    staying_formats = [read[r["host"]][2] for r in staying if r["host"] in read]
    # Only a primary that leaves hands its data to another version; one that stays runs the staying version.
    for report in reports or []:
        if not report.get("primary") or not report.get("retiring") or report["host"] not in read:
            continue
        engine, version, number = read[report["host"]]
        if number is None or any(theirs is None for theirs in staying_formats):
            errors.append(f"The RDB format of {', '.join(sorted(h for h, b in builds.items() if 'unknown' in b))} "
                          "is unknown: add the version to the rdb_formats of its engine (redis_server role, "
                          "vars/main.yml) before a replacement.")
        elif any(theirs < number for theirs in staying_formats):
            errors.append(f"The primary on {report['host']} runs {engine} {version}, which writes RDB {number}; "
                          "the hosts that stay read only up to RDB "
                          f"{min(staying_formats)}, so they could not load its data (docs/upgrade.md, data "
                          "formats). Replace it with hosts of a newer version or of an engine that reads it.")
    return {"errors": errors, "builds": builds}


class FilterModule:
    def filters(self):
        return {
            "redis_debian_version_compare": redis_debian_version_compare,
            "redis_upstream_version": redis_upstream_version,
            "redis_apt_policy": redis_apt_policy,
            "redis_upgrade_decision": redis_upgrade_decision,
            "redis_upgrade_disagreement": redis_upgrade_disagreement,
            "redis_server_build": redis_server_build,
            "redis_rdb_format": redis_rdb_format,
            "redis_replace_reports": redis_replace_reports,
            "redis_replace_decision": redis_replace_decision,
        }
