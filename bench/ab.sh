#!/usr/bin/env bash
# Two grantd builds, alternated: runs loadgen against each in turn, ROUNDS
# times, and prints every round's ops/s and p99 with the median of each.
# Run to run the same build moves by 10-15% on a shared 2-core machine;
# alternating and taking medians is how bench/README.md compares builds.
#   bench/ab.sh BEFORE_GRANTD AFTER_GRANTD [ROUNDS] [-- loadgen options]
#   bench/ab.sh /tmp/a/grantd target/release/grantd 4 -- --clients 64 --ops issue
# Default loadgen options: --clients 16,64 --seconds 10 --ops issue,check --insecure
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
before=$(realpath "$1")
after=$(realpath "$2")
shift 2
rounds=4
if [ $# -gt 0 ] && [ "$1" != "--" ]; then rounds=$1; shift; fi
[ "${1:-}" = "--" ] && shift
opts=("$@")
[ ${#opts[@]} -eq 0 ] && opts=(--clients 16,64 --seconds 10 --ops issue,check --insecure)
for b in "$before" "$after"; do
  [ -x "$b" ] || { echo "ab: $b is not an executable" >&2; exit 2; }
done
cd "$(dirname "$0")/.."
cargo build --release -q --bin loadgen
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq 1 "$rounds"); do
  for side in before after; do
    bin=$before; [ $side = after ] && bin=$after
    echo "ab: round $r/$rounds, $side ($bin)" >&2
    # loadgen prints: op clients ops/s p50 p99 errors
    GRANTD_BIN="$bin" target/release/loadgen "${opts[@]}" |
      awk -v s=$side 'NF == 6 && $3 ~ /^[0-9]+$/ { print s, $1 "@" $2, $3, $5 }' >> "$out/runs"
  done
done
# Per op@clients and side: every round, then the median.
awk '
  { key = $2; side = $1; n[key, side]++; ops[key, side, n[key, side]] = $3; p99[key, side, n[key, side]] = $4; keys[key] = 1 }
  function median(arr, k, s, m,    i, j, t, v) {
    for (i = 1; i <= m; i++) v[i] = arr[k, s, i]
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
    return (m % 2) ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
  }
  END {
    printf "%-12s %-7s %-40s %9s %9s\n", "op@clients", "build", "ops/s per round", "median", "p99 med"
    for (k in keys) for (si = 1; si <= 2; si++) {
      s = (si == 1) ? "before" : "after"; m = n[k, s]; line = ""
      for (i = 1; i <= m; i++) line = line ops[k, s, i] " "
      printf "%-12s %-7s %-40s %9.0f %9.2f\n", k, s, line, median(ops, k, s, m), median(p99, k, s, m)
    }
  }' "$out/runs" | { IFS= read -r h; echo "$h"; sort -k1,1 -k2,2r; }
