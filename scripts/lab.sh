#!/usr/bin/env bash
# The lab: local containers converged with the production profile (Molecule scenario `lab`).
#   scripts/lab.sh up     create or update the lab, then print how to reach it (safe to re-run)
#   scripts/lab.sh down   remove the lab containers
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"
secrets=.lab/secrets.env

# redis-cli as the admin user in a lab container; the password goes through the environment, never argv.
# Bounded: a TLS client on a plaintext port waits for an answer that never comes.
admin_cli() {
  local host=$1; shift
  REDISCLI_AUTH="$LAB_REDIS_ADMIN_PASSWORD" docker exec -e REDISCLI_AUTH "$host" \
    timeout 10 redis-cli --no-auth-warning --user admin "$@"
}

# The private CA's certificate on this machine. The role keeps it beside the inventory, which Molecule
# writes in the scenario's ephemeral directory: <that directory>/inventory-tls/ca.crt. Of the lab
# directories found (other checkouts have their own), the one whose CA signed this lab's certificate.
controller_ca() {
  local host=$1 server_crt ca
  server_crt=$(docker exec "$host" cat /etc/redis-infra/tls/server.crt)
  for ca in ${MOLECULE_EPHEMERAL_DIRECTORY:+"$MOLECULE_EPHEMERAL_DIRECTORY/inventory-tls/ca.crt"} \
            "$HOME"/.ansible/tmp/molecule.*.lab/inventory-tls/ca.crt "$PWD"/.venv/.ansible/tmp/molecule.*.lab/inventory-tls/ca.crt; do
    if [ -f "$ca" ] && openssl verify -CAfile "$ca" <<<"$server_crt" >/dev/null 2>&1; then
      echo "$ca"
      return
    fi
  done
}

case "${1:-up}" in
  up)
    # The passwords a lab needs; those missing from an older lab's file are added, the others kept.
    mkdir -p .lab && chmod 700 .lab
    (
      umask 077
      touch "$secrets"
      # URL-safe, 48 characters: usable as-is in redis://:password@host URLs.
      for name in LAB_REDIS_PASSWORD LAB_REDIS_ADMIN_PASSWORD LAB_REDIS_MONITOR_PASSWORD LAB_REDIS_BACKUP_PASSWORD \
                  LAB_REDIS_REPLICATION_PASSWORD LAB_REDIS_SENTINEL_ACL_PASSWORD LAB_SENTINEL_PASSWORD LAB_HEALTH_PASSWORD \
                  LAB_REDIS_MAINTENANCE_PASSWORD; do
        grep -q "^$name=" "$secrets" || echo "$name=$(openssl rand -base64 36 | tr '+/' '-_')" >> "$secrets"
      done
    )
    set -a; . "$secrets"; set +a
    # Molecule remembers a lab it created; when its containers are gone (removed by hand, or by a test
    # run's clean-up), it would converge hosts that do not exist: forget them first.
    if [ -z "$(docker ps -aq --filter label=owner=molecule --filter name=redis-infra-lab)" ]; then
      molecule destroy -s lab >/dev/null
    fi
    molecule converge -s lab
    echo
    hosts=$(docker ps --filter label=owner=molecule --filter name=redis-infra-lab --format '{{.Names}}' | grep -v -- -mon | sort)
    monitor=redis-infra-lab-mon
    first=${hosts%%$'\n'*}
    # The production profile serves the ports with TLS only; a lab converged without it serves plaintext.
    # Ask the port itself rather than the inventory, so the commands below are the ones that work.
    host_ca=/etc/redis-infra/tls/ca.crt
    tls=()
    if admin_cli "$first" --tls --cacert "$host_ca" PING 2>/dev/null | grep -qx PONG; then
      tls=(--tls --cacert "$host_ca")
    fi
    if [ ${#tls[@]} -gt 0 ]; then
      over=" TLS" scheme=rediss ca=$(controller_ca "$first")
    else
      over="" scheme=redis
    fi
    cli="redis-cli${over:+ ${tls[*]}}"
    echo "Lab ready (production profile, $(docker exec "$first" redis-server --version | cut -d' ' -f1-3)):"
    for host in $hosts; do
      ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$host")
      role=$(admin_cli "$host" "${tls[@]}" ROLE | head -1)
      echo "  $host  $ip  redis :6379$over ($role)  sentinel :26379$over  health https://$ip:9122"
    done
    echo "  $monitor  Prometheus 127.0.0.1:9090 and Alertmanager 127.0.0.1:9093 inside the container"
    echo "  Topology (primary, replicas, Sentinels): .lab/topology.json"
    echo "  Applications: ask a Sentinel for 'main' (SENTINEL GET-MASTER-ADDR-BY-NAME main), then $scheme://:<LAB_REDIS_PASSWORD>@<primary>:6379"
    if [ -n "$over" ]; then
      echo "          verifying with the lab's CA: ${ca:-not found under the Molecule ephemeral directory; copy $host_ca from a lab container}"
      echo "          (redis-py: ssl=True, ssl_ca_certs=<that file>; each host's certificate names its IP)"
    fi
    echo "  Passwords: $secrets (application = default user, admin, monitor, backup, replication, Sentinel,"
    echo "             health = the checkers' basic-auth user prometheus)."
    echo "  Try:  docker exec -it $first $cli --user admin --askpass INFO replication"
    echo "        docker exec -it $first $cli -p 26379 --askpass SENTINEL GET-MASTER-ADDR-BY-NAME main"
    echo "        docker exec $first redis-infra-health check      (the health checks once: exit 0, 1 or 2)"
    echo "        docker exec $monitor python3 -c 'import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:9090/api/v1/alerts\").read().decode())'"
    echo "        scripts/bench-alerts.py --inventory <the lab's Molecule inventory>   (fault-to-webhook delays)"
    echo "  Set up: AOF everysec + RDB snapshots, maxmemory 2gb allkeys-lru, ACL users (FLUSHALL, KEYS, CONFIG, ..."
    echo "          refused for the application), nightly verified backups, health checker on :9122 (TLS with the"
    echo "          host's certificate, basic auth) scraped by Prometheus with the project's alerts, Sentinel failover;"
    echo "          kernel settings saved (a container cannot apply them)."
    if [ -n "$over" ]; then
      echo "  TLS:    the Redis and Sentinel ports serve TLS only (TLS 1.2/1.3, the lab's private CA); the unix socket"
      echo "          /run/redis-main/redis-server.sock inside each container stays plain."
    else
      echo "  TLS:    off: the Redis and Sentinel ports serve plaintext."
    fi
    echo "  Remove it with: make lab-destroy"
    ;;
  down)
    if [ -f "$secrets" ]; then set -a; . "$secrets"; set +a; fi
    molecule destroy -s lab
    ;;
  *)
    echo "usage: $0 up|down" >&2; exit 2 ;;
esac
