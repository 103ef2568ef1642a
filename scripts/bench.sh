#!/usr/bin/env bash
# raftd against etcd, side by side, on this machine.
#
#   scripts/bench.sh [--skip-etcd] [--tls] [--base-port P] [--out FILE] [--etcd-dir DIR]
#
# Starts a fresh 3-node raftd cluster (release build, default flags, fsync on) in a temporary
# directory, runs the four workloads with `raftctl bench --json`, stops it, then runs etcd on
# the same workloads through ../shared/bench/etcd/run.sh (which installs etcd and its Go
# client from Debian's packages the first time), and prints one table: ops/s, p50 and p99 of
# both systems, the ratio, and whether issue 8's target holds. Both run in one invocation,
# one after the other, so the ratio holds on a noisy machine. Values are 256 bytes over
# 10,000 keys; every acknowledged write is fsynced on a quorum; gets are linearizable.
# --out FILE also writes the results as key=value lines. The etcd scripts are looked for in
# --etcd-dir (or $ETCD_BENCH_DIR), else ../shared/bench/etcd next to this checkout or next to
# the repository it was cloned from. --tls runs the raftd workloads again on a cluster with TLS
# on both ports (scripts/cluster.sh start --tls) and prints them beside plaintext (target: put
# with 256 clients within 15% of plaintext).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ETCD_DIR=${ETCD_BENCH_DIR:-}
BASE_PORT=7700
SKIP_ETCD=0
TLS=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-etcd) SKIP_ETCD=1; shift ;;
    --tls) TLS=1; shift ;;
    --base-port) BASE_PORT=${2:?--base-port needs a number}; shift 2 ;;
    --out) OUT=${2:?--out needs a file}; shift 2 ;;
    --etcd-dir) ETCD_DIR=${2:?--etcd-dir needs a directory}; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ "$SKIP_ETCD" = 0 ] && [ -z "$ETCD_DIR" ]; then
  candidates=("$ROOT/../shared/bench/etcd")
  origin=$(git -C "$ROOT" config --get remote.origin.url 2>/dev/null || true)
  [ -n "$origin" ] && [ -d "$origin" ] && candidates+=("$origin/../shared/bench/etcd")
  for c in "${candidates[@]}"; do
    if [ -x "$c/run.sh" ]; then ETCD_DIR=$(cd "$c" && pwd); break; fi
  done
  if [ -z "$ETCD_DIR" ]; then
    echo "bench.sh: no etcd benchmark (run.sh) in ${candidates[*]}; give --etcd-dir DIR or --skip-etcd" >&2
    exit 1
  fi
fi

# name op clients raftd-ops etcd-ops label
WORKLOADS=(
  "put1 put 1 10000 5000 put,_1_client"
  "put256 put 256 300000 100000 put,_256_clients"
  "get256 get 256 1000000 100000 linearizable_get,_256_clients"
  "mixed256 mixed 256 500000 100000 mixed_90/10,_256_clients"
)

work=$(mktemp -d /tmp/raft-bench.XXXXXX)
results=$work/results
: >"$results"
cleanup() {
  for c in "$work"/cluster-*; do
    [ -d "$c" ] && CLUSTER_DIR=$c "$ROOT/scripts/cluster.sh" stop >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# key=value pairs from raftctl's JSON ({"ops_per_sec":1.5,"p50_us":3,...}).
json_to_kv() { tr -d '{}"' | tr ',' '\n' | sed 's/:/=/' | tr '\n' ' '; }
field() { tr ' ' '\n' | sed -n "s/^$1=//p" | head -1; }

echo "building (release)..." >&2
(cd "$ROOT" && cargo build --release -q -p raftd -p raftctl)

# run_raftd PREFIX [--tls]: the workloads on a fresh cluster, results under PREFIX.
run_raftd() {
  local prefix=$1 tls=${2:-} cluster=$work/cluster-$1 flags=()
  echo "$prefix: starting a fresh 3-node cluster${tls:+ with TLS} on 127.0.0.1:$((BASE_PORT + 101))-$((BASE_PORT + 103))" >&2
  CLUSTER_DIR=$cluster "$ROOT/scripts/cluster.sh" start --base-port "$BASE_PORT" $tls >/dev/null
  endpoints=$(CLUSTER_DIR=$cluster "$ROOT/scripts/cluster.sh" endpoints)
  [ -n "$tls" ] && flags=(--cacert "$cluster/certs/ca.pem")
  for w in "${WORKLOADS[@]}"; do
    read -r name op clients ops _ _ <<<"$w"
    echo "$prefix: $op, $clients clients, $ops ops" >&2
    line=$("$ROOT/target/release/raftctl" --endpoints "$endpoints" "${flags[@]}" bench --op "$op" \
      --clients "$clients" --ops "$ops" --json | json_to_kv)
    echo "$prefix.$name $line" >>"$results"
  done
  CLUSTER_DIR=$cluster "$ROOT/scripts/cluster.sh" stop >/dev/null
}
run_raftd raftd
[ "$TLS" = 1 ] && run_raftd raftdtls --tls

if [ "$SKIP_ETCD" = 0 ]; then
  plain=()
  for w in "${WORKLOADS[@]}"; do
    read -r name op clients _ ops _ <<<"$w"
    [ "$op" = mixed ] || plain+=("$op:$clients:$ops")
  done
  echo "etcd: ${plain[*]} (../shared/bench/etcd/run.sh)" >&2
  bash "$ETCD_DIR/run.sh" "${plain[@]}" >"$work/etcd.out"
  # The shared load generator has no mixed workload: run.sh runs this repository's copy of
  # it (scripts/etcd/etcdload.go, the same plus -op mixed), with its own build cache.
  mixed=$(printf '%s\n' "${WORKLOADS[@]}" | awk '$2 == "mixed" {print $2 ":" $3 ":" $5}')
  if [ -n "$mixed" ]; then
    mkdir -p "$work/etcd-mixed"
    cp "$ETCD_DIR/run.sh" "$work/etcd-mixed/run.sh"
    cp "$ROOT/scripts/etcd/etcdload.go" "$work/etcd-mixed/etcdload.go"
    echo "etcd: $mixed (run.sh with scripts/etcd/etcdload.go)" >&2
    XDG_CACHE_HOME=${XDG_CACHE_HOME:-$HOME/.cache}/raft-bench-mixed \
      bash "$work/etcd-mixed/run.sh" "$mixed" >>"$work/etcd.out"
  fi
  for w in "${WORKLOADS[@]}"; do
    read -r name op clients _ _ _ <<<"$w"
    line=$(grep "op=$op clients=$clients " "$work/etcd.out" | head -1 || true)
    [ -n "$line" ] && echo "etcd.$name $line" >>"$results"
  done
fi

commit=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
echo
echo "$(date -u +%Y-%m-%d) commit $commit; $(nproc) cores ($cpu); 3 nodes on 127.0.0.1, fsync on"
printf '%-30s %11s %9s %9s | %11s %9s %9s | %7s  %s\n' \
  workload "raftd op/s" p50 p99 "etcd op/s" p50 p99 ratio "target"
ms() { awk -v us="$1" 'BEGIN { if (us == "") print "-"; else printf "%.2f ms", us / 1000 }'; }
all_met=1
for w in "${WORKLOADS[@]}"; do
  read -r name _ _ _ _ label <<<"$w"
  r=$(grep "^raftd.$name " "$results" | cut -d' ' -f2- || true)
  e=$(grep "^etcd.$name " "$results" | cut -d' ' -f2- || true)
  r_ops=$(echo "$r" | field ops_per_sec); r_p50=$(echo "$r" | field p50_us); r_p99=$(echo "$r" | field p99_us)
  r_err=$(echo "$r" | field errors)
  e_ops=$(echo "$e" | field ops_per_sec); e_p50=$(echo "$e" | field p50_us); e_p99=$(echo "$e" | field p99_us)
  verdict=$(awk -v n="$name" -v ro="$r_ops" -v rp50="$r_p50" -v rp99="$r_p99" -v rerr="$r_err" \
    -v eo="$e_ops" -v ep50="$e_p50" -v ep99="$e_p99" 'BEGIN {
      if (eo == "" || eo == 0) { print "- (no etcd figure)"; exit }
      ratio = ro / eo
      if (n == "put1") { ok = ratio >= 3 && rp50 <= ep50 / 3; t = ">=3x, p50 <= 1/3" }
      else if (n == "put256") { ok = ratio >= 10 && rp99 < ep99; t = ">=10x, p99 below" }
      else { ok = ratio >= 10; t = ">=10x" }
      if (rerr != "" && rerr != 0) { ok = 0; t = t ", errors: " rerr }
      printf "%6.1fx  %-19s %s\n", ratio, t, ok ? "met" : "NOT met"
    }')
  case "$verdict" in *"NOT met"*|-*) all_met=0 ;; esac
  printf '%-30s %11.0f %9s %9s | %11s %9s %9s | %s\n' "${label//_/ }" "${r_ops:-0}" \
    "$(ms "$r_p50")" "$(ms "$r_p99")" "$(printf '%.0f' "${e_ops:-0}")" "$(ms "$e_p50")" \
    "$(ms "$e_p99")" "$verdict"
done
if [ "$TLS" = 1 ]; then
  echo
  echo "raftd with TLS on both ports (TLS 1.3, ECDSA P-256 certificates) beside plaintext"
  printf '%-30s %11s %9s %9s | %11s %9s %9s | %7s  %s\n' \
    workload "TLS op/s" p50 p99 "plain op/s" p50 p99 ratio "target"
  for w in "${WORKLOADS[@]}"; do
    read -r name _ _ _ _ label <<<"$w"
    t=$(grep "^raftdtls.$name " "$results" | cut -d' ' -f2- || true)
    r=$(grep "^raftd.$name " "$results" | cut -d' ' -f2- || true)
    t_ops=$(echo "$t" | field ops_per_sec); r_ops=$(echo "$r" | field ops_per_sec)
    verdict=$(awk -v n="$name" -v to="$t_ops" -v ro="$r_ops" -v terr="$(echo "$t" | field errors)" 'BEGIN {
      if (ro == "" || ro == 0) { print "-"; exit }
      ratio = to / ro
      if (n == "put256") { ok = ratio >= 0.85; t = ">=0.85x" } else { ok = 1; t = "" }
      if (terr != "" && terr != 0) { ok = 0; t = t " errors: " terr }
      printf "%6.2fx  %-19s %s\n", ratio, t, ok ? (t == "" ? "" : "met") : "NOT met"
    }')
    case "$verdict" in *"NOT met"*) all_met=0 ;; esac
    printf '%-30s %11.0f %9s %9s | %11.0f %9s %9s | %s\n' "${label//_/ }" "${t_ops:-0}" \
      "$(ms "$(echo "$t" | field p50_us)")" "$(ms "$(echo "$t" | field p99_us)")" "${r_ops:-0}" \
      "$(ms "$(echo "$r" | field p50_us)")" "$(ms "$(echo "$r" | field p99_us)")" "$verdict"
  done
fi
if [ -n "$OUT" ]; then
  { echo "date=$(date -u +%FT%TZ) commit=$commit"; cat "$results"; } >"$OUT"
fi
[ "$all_met" = 1 ] && echo "every target met" || echo "not every target met (or etcd skipped)"
