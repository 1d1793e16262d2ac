#!/usr/bin/env bash
# Benchmarks of issue "foundation", on the lab's primary (make lab first; `make bench` does both):
#  1. redis-benchmark, unpipelined SET and GET with 50 clients, against the production instance and
#     against the distribution's stock config started on the same container; reported as a ratio.
#     When the instance serves TLS (the production profile), the stock server serves TLS too, with the
#     instance's certificate and TLS settings: the ratio is the configuration's cost, not TLS's
#     (scripts/bench-tls.py measures that).
#  2. Wall time of a fresh converge (new container) and of a no-op re-converge of the lab host
#     (BENCH_CONVERGE=0 skips it: it destroys and recreates the lab).
# Figures go to stdout; docs/benchmarks.md records them with the date and this command.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"
host=redis-infra-lab-1
requests=${BENCH_REQUESTS:-200000}
rounds=${BENCH_ROUNDS:-3}
converge=${BENCH_CONVERGE:-1}
set -a; . .lab/secrets.env; set +a

in_lab() { docker exec -i "$host" "$@"; }
# As the admin user; the password goes through the environment, never argv. Bounded: a TLS client on
# a plaintext port waits for an answer that never comes.
admin() {
  REDISCLI_AUTH="$LAB_REDIS_ADMIN_PASSWORD" docker exec -i -e REDISCLI_AUTH "$host" \
    timeout 10 redis-cli --no-auth-warning --user admin "${tls[@]}" "$@"
}

# The port serves TLS only when the profile turns TLS on: ask the port, then talk to it the same way.
tls=()
if admin --tls --cacert /etc/redis-infra/tls/ca.crt PING 2>/dev/null | grep -qx PONG; then
  tls=(--tls --cacert /etc/redis-infra/tls/ca.crt)
fi
# The benchmark writes: it runs on the lab's primary, wherever a failover has moved it.
for name in $(docker ps --filter label=owner=molecule --filter name=redis-infra-lab --format '{{.Names}}' | sort); do
  if [ "$(host=$name; admin ROLE | head -1)" = master ]; then host=$name; break; fi
done

# A throwaway benchmark user: redis-benchmark takes a password only on its command line, so it gets a
# random one that is removed at the end, never a real one.
bench_password=$(openssl rand -hex 24)
admin ACL SETUSER bench on ">$bench_password" '~key:*' '&*' +@all >/dev/null
cleanup() {
  admin ACL DELUSER bench >/dev/null 2>&1 || true
  in_lab redis-cli -p 6390 "${tls[@]}" shutdown nosave >/dev/null 2>&1 || true
  in_lab rm -rf /tmp/stock || true
}
trap cleanup EXIT

# The distribution's stock config, on port 6390, with only what must differ to run beside the instance;
# with TLS, the instance's tls-* settings (its certificate, protocols, ciphers) and the port TLS only.
in_lab redis-cli -p 6390 "${tls[@]}" shutdown nosave >/dev/null 2>&1 || true
stock_tls=""
if [ ${#tls[@]} -gt 0 ]; then
  stock_tls=$(admin --raw CONFIG GET 'tls-*' | paste - - \
    | awk -F'\t' '$2 != "" && $1 != "tls-port" {printf "%s \"%s\"\n", $1, $2} END {print "port 0\ntls-port 6390"}')
fi
in_lab sh -c 'mkdir -p /tmp/stock && chown redis: /tmp/stock &&
  sed -e "s/^port .*/port 6390/" -e "s|^dir .*|dir /tmp/stock|" -e "s|^logfile .*|logfile /tmp/stock/redis.log|" \
      -e "s|^pidfile .*|pidfile /tmp/stock/redis.pid|" -e "s/^daemonize .*/daemonize yes/" -e "s/^supervised .*/supervised no/" \
      /etc/redis/redis.conf > /tmp/stock/redis.conf && cat >> /tmp/stock/redis.conf && chown redis: /tmp/stock/redis.conf &&
  setpriv --reuid=redis --regid=redis --init-groups redis-server /tmp/stock/redis.conf' <<<"$stock_tls"
sleep 1

rps() {  # port, test, [auth args...] -> requests per second
  local port=$1 test=$2; shift 2
  in_lab redis-benchmark -p "$port" -c 50 -n "$requests" -t "$test" -r 100000 --csv "${tls[@]}" "$@" 2>/dev/null \
    | awk -F'","' 'NR==2 {print $2}'
}

echo "== redis-benchmark: $requests requests, 50 clients, unpipelined, $rounds rounds (alternating order)${tls:+, TLS on both} =="
declare -A sums
for round in $(seq "$rounds"); do
  for test in set get; do
    if (( round % 2 )); then
      prod=$(rps 6379 "$test" --user bench -a "$bench_password"); stock=$(rps 6390 "$test")
    else
      stock=$(rps 6390 "$test"); prod=$(rps 6379 "$test" --user bench -a "$bench_password")
    fi
    ratio=$(awk -v p="$prod" -v s="$stock" 'BEGIN {printf "%.3f", p / s}')
    echo "round $round $test: production ${prod} rps, stock ${stock} rps, ratio ${ratio}"
    sums[$test]="${sums[$test]:-} $ratio"
  done
done
for test in set get; do
  median=$(tr ' ' '\n' <<<"${sums[$test]}" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "median ratio $test (production / stock): $median (target >= 0.95)"
done

[ "$converge" = 0 ] && exit 0
echo "== converge wall time =="
start=$(date +%s.%N); molecule converge -s lab >/dev/null; noop=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
echo "no-op re-converge (molecule converge, lab host): ${noop} s (target < 10 s)"
molecule destroy -s lab >/dev/null
start=$(date +%s.%N); molecule create -s lab >/dev/null; created=$(date +%s.%N)
molecule converge -s lab >/dev/null; done_at=$(date +%s.%N)
awk -v s="$start" -v c="$created" -v d="$done_at" 'BEGIN {printf "fresh: create %.1f s, converge %.1f s (packages from the mirror included)\n", c - s, d - c}'
start=$(date +%s.%N); molecule converge -s lab >/dev/null; noop=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
echo "no-op re-converge after the fresh one: ${noop} s"
