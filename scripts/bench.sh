#!/usr/bin/env bash
# Benchmarks of issue "foundation", on the lab container (make lab first; `make bench` does both):
#  1. redis-benchmark, unpipelined SET and GET with 50 clients, against the production instance and
#     against the distribution's stock config started on the same container; reported as a ratio.
#  2. Wall time of a fresh converge (new container) and of a no-op re-converge of the lab host.
# Figures go to stdout; docs/benchmarks.md records them with the date and this command.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"
host=redis-infra-lab-1
requests=${BENCH_REQUESTS:-200000}
rounds=${BENCH_ROUNDS:-3}
set -a; . .lab/secrets.env; set +a

in_lab() { docker exec -i "$host" "$@"; }

# A throwaway benchmark user: redis-benchmark takes a password only on its command line, so it gets a
# random one that is removed at the end, never a real one.
bench_password=$(openssl rand -hex 24)
admin() { in_lab env REDISCLI_AUTH="$LAB_REDIS_ADMIN_PASSWORD" redis-cli --no-auth-warning --user admin "$@"; }
admin ACL SETUSER bench on ">$bench_password" '~key:*' '&*' +@all >/dev/null
cleanup() {
  admin ACL DELUSER bench >/dev/null 2>&1 || true
  in_lab sh -c "redis-cli -p 6390 shutdown nosave; rm -rf /tmp/stock" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# The distribution's stock config, on port 6390, with only what must differ to run beside the instance.
in_lab sh -c 'redis-cli -p 6390 shutdown nosave' >/dev/null 2>&1 || true
in_lab sh -c 'mkdir -p /tmp/stock && chown redis: /tmp/stock &&
  sed -e "s/^port .*/port 6390/" -e "s|^dir .*|dir /tmp/stock|" -e "s|^logfile .*|logfile /tmp/stock/redis.log|" \
      -e "s|^pidfile .*|pidfile /tmp/stock/redis.pid|" -e "s/^daemonize .*/daemonize yes/" -e "s/^supervised .*/supervised no/" \
      /etc/redis/redis.conf > /tmp/stock/redis.conf && chown redis: /tmp/stock/redis.conf &&
  setpriv --reuid=redis --regid=redis --init-groups redis-server /tmp/stock/redis.conf'
sleep 1

rps() {  # port, test, [auth args...] -> requests per second
  local port=$1 test=$2; shift 2
  in_lab redis-benchmark -p "$port" -c 50 -n "$requests" -t "$test" -r 100000 --csv "$@" 2>/dev/null \
    | awk -F'","' 'NR==2 {print $2}'
}

echo "== redis-benchmark: $requests requests, 50 clients, unpipelined, $rounds rounds (alternating order) =="
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

echo "== converge wall time =="
start=$(date +%s.%N); molecule converge -s lab >/dev/null; noop=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
echo "no-op re-converge (molecule converge, lab host): ${noop} s (target < 10 s)"
molecule destroy -s lab >/dev/null
start=$(date +%s.%N); molecule create -s lab >/dev/null; created=$(date +%s.%N)
molecule converge -s lab >/dev/null; done_at=$(date +%s.%N)
awk -v s="$start" -v c="$created" -v d="$done_at" 'BEGIN {printf "fresh: create %.1f s, converge %.1f s (packages from the mirror included)\n", c - s, d - c}'
start=$(date +%s.%N); molecule converge -s lab >/dev/null; noop=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
echo "no-op re-converge after the fresh one: ${noop} s"
