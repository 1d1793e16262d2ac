#!/usr/bin/env bash
# Run Molecule scenarios in parallel lanes: each argument is a lane, its scenarios separated by commas
# and run one after another; the lanes run side by side. One scenario keeps about one of this
# machine's two cores busy, so two lanes make use of both (a third lane made every scenario much slower:
# docs/benchmarks.md; scenarios have their own containers and networks and can run side by side). Each scenario's output goes to $MOLECULE_LOG_DIR/<scenario>.log;
# this prints one line per scenario as it ends, then the whole log of every scenario that failed.
#   scripts/test-molecule.sh ha,cluster-valkey,default production,valkey,cluster,redis8
set -uo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/.."

log_dir=${MOLECULE_LOG_DIR:-.molecule-logs}
mkdir -p "$log_dir"
molecule=${MOLECULE:-molecule}

lane() {
  local scenario start rc
  for scenario in ${1//,/ }; do
    start=$(date +%s)
    "$molecule" test -s "$scenario" >"$log_dir/$scenario.log" 2>&1
    rc=$?
    # One write per scenario, so that the lanes' lines do not mix: the outcome, then pytest's summary.
    printf 'molecule: %-12s %s in %d s (log: %s)\n%s\n' "$scenario" \
      "$([ "$rc" = 0 ] && echo passed || echo "FAILED (rc=$rc)")" "$(($(date +%s) - start))" \
      "$log_dir/$scenario.log" \
      "$(sed 's/\x1b\[[0-9;]*m//g' "$log_dir/$scenario.log" | grep -E '^\s*│?\s*=+ .*(passed|failed|error)' | sed 's/^/  /')"
    if [ "$rc" != 0 ]; then
      echo "$scenario" >>"$log_dir/failed"
      return "$rc"
    fi
  done
}

if [ "${1:-}" = --lane ]; then
  lane "$2"
  exit
fi

stop_lanes() {
  # Each lane is a process group of its own (setsid): stop it with everything it started.
  trap - INT TERM
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
  exit 143
}

rm -f "$log_dir/failed"
pids=()
trap stop_lanes INT TERM
[ $# -gt 0 ] || { echo "usage: $0 LANE... (a lane: scenario[,scenario...])" >&2; exit 2; }
started=$(date +%s)
for spec in "$@"; do
  setsid "$self" --lane "$spec" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
echo "molecule: every lane ended in $(($(date +%s) - started)) s"
if [ -s "$log_dir/failed" ]; then
  while read -r scenario; do
    echo "=============== molecule $scenario: the whole log ==============="
    sed 's/\x1b\[[0-9;]*m//g' "$log_dir/$scenario.log"
  done <"$log_dir/failed"
fi
exit "$status"
