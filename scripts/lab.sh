#!/usr/bin/env bash
# The lab: local containers converged with the production profile (Molecule scenario `lab`).
#   scripts/lab.sh up     create or update the lab, then print how to reach it (safe to re-run)
#   scripts/lab.sh down   remove the lab containers
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"
secrets=.lab/secrets.env

case "${1:-up}" in
  up)
    if [ ! -f "$secrets" ] || ! grep -q LAB_SENTINEL_PASSWORD "$secrets"; then
      mkdir -p .lab && chmod 700 .lab
      umask 077
      # URL-safe, 48 characters: usable as-is in redis://:password@host URLs.
      for name in LAB_REDIS_PASSWORD LAB_REDIS_ADMIN_PASSWORD LAB_REDIS_MONITOR_PASSWORD LAB_REDIS_BACKUP_PASSWORD \
                  LAB_REDIS_REPLICATION_PASSWORD LAB_REDIS_SENTINEL_ACL_PASSWORD LAB_SENTINEL_PASSWORD; do
        echo "$name=$(openssl rand -base64 36 | tr '+/' '-_')"
      done > "$secrets"
    fi
    set -a; . "$secrets"; set +a
    molecule converge -s lab
    echo
    echo "Lab ready (production profile, $(docker exec redis-infra-lab-1 redis-server --version | cut -d' ' -f1-3)):"
    for host in $(docker ps --filter label=owner=molecule --filter name=redis-infra-lab --format '{{.Names}}' | sort); do
      ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$host")
      role=$(docker exec "$host" env REDISCLI_AUTH="$LAB_REDIS_ADMIN_PASSWORD" redis-cli --no-auth-warning --user admin ROLE | head -1)
      echo "  $host  $ip  redis :6379 ($role)  sentinel :26379  health 127.0.0.1:9122 inside the container"
    done
    echo "  Topology (primary, replicas, Sentinels): .lab/topology.json"
    echo "  Applications: ask a Sentinel for 'main' (SENTINEL GET-MASTER-ADDR-BY-NAME main), then redis://:<LAB_REDIS_PASSWORD>@<primary>:6379"
    echo "  Passwords: $secrets (application = default user, admin, monitor, backup, replication, Sentinel)."
    echo "  Try:  docker exec -it redis-infra-lab-1 redis-cli --user admin --askpass INFO replication"
    echo "        docker exec redis-infra-lab-1 python3 -c 'import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:9122/api/health\").read().decode())'"
    echo "  Set up: AOF everysec + RDB snapshots, maxmemory 2gb allkeys-lru, ACL users (FLUSHALL, KEYS, CONFIG, ..."
    echo "          refused for the application), nightly verified backups, health checker on loopback :9122 (no auth or TLS set in the lab), Sentinel"
    echo "          failover; kernel settings saved (a container cannot apply them)."
    echo "  Remove it with: make lab-destroy"
    ;;
  down)
    if [ -f "$secrets" ]; then set -a; . "$secrets"; set +a; fi
    molecule destroy -s lab
    ;;
  *)
    echo "usage: $0 up|down" >&2; exit 2 ;;
esac
