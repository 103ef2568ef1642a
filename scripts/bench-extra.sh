#!/usr/bin/env bash
# The measurements issue 8 asks for besides throughput, on fresh local clusters:
#
#   1. resident memory per node after 1,000,000 puts over 100,000 keys (default flags),
#   2. CPU seconds per 1,000 writes per node, over those puts,
#   3. restart-to-serving time with a 1,000,000-entry WAL (snapshots off, so the whole log
#      is replayed): the cluster is stopped and started, and timed until a linearizable get
#      succeeds and until every node has applied everything,
#   4. time for an empty (wiped) node to catch up through a ~100 MB snapshot.
#
#   scripts/bench-extra.sh [--base-port P] [--only N]
#
# Release build; 256-byte values unless said; fsync on. Prints one line per figure.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE_PORT=7800
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --base-port) BASE_PORT=${2:?}; shift 2 ;;
    --only) ONLY=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-extra.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d /tmp/raft-bench-extra.XXXXXX)
export CLUSTER_DIR=$work/cluster
cleanup() { "$ROOT/scripts/cluster.sh" stop >/dev/null 2>&1 || true; [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
CTL=$ROOT/target/release/raftctl
(cd "$ROOT" && cargo build --release -q -p raftd -p raftctl)

now_ms() { date +%s%3N; }
pid_of() { cat "$CLUSTER_DIR/node-$1.pid"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
endpoint() { echo "127.0.0.1:$((BASE_PORT + 100 + $1))"; }
# One number from a node's `status --json` line, or empty when it does not answer.
status_field() {
  "$CTL" --endpoints "$(endpoint "$1")" --timeout 1s status --json 2>/dev/null |
    grep -o "\"$2\":[0-9]*" | head -1 | cut -d: -f2 || true
}
fresh_cluster() {
  "$ROOT/scripts/cluster.sh" stop >/dev/null 2>&1 || true
  rm -rf "$CLUSTER_DIR"
  "$ROOT/scripts/cluster.sh" start --base-port "$BASE_PORT" -- "$@" >/dev/null
}
endpoints() { "$ROOT/scripts/cluster.sh" endpoints; }
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

echo "$(date -u +%Y-%m-%d) commit $(cd "$ROOT" && git rev-parse --short HEAD); $(nproc) cores"

if want 1 || want 2; then
  fresh_cluster
  declare -A before
  for id in 1 2 3; do before[$id]=$(cpu_ticks "$(pid_of "$id")"); done
  hz=$(getconf CLK_TCK)
  "$CTL" --endpoints "$(endpoints)" bench --op put --clients 256 --ops 1000000 --keys 100000 \
    --json >"$work/million.json"
  echo "1M puts over 100k keys: $(tr -d '{}"' <"$work/million.json" | tr ',' ' ')"
  for id in 1 2 3; do
    pid=$(pid_of "$id")
    role=$("$CTL" --endpoints "$(endpoint "$id")" status --json | grep -o '"role":"[a-z-]*"' | cut -d'"' -f4)
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    anon=$(awk '/^RssAnon/ {print $2}' "/proc/$pid/status")
    file=$(awk '/^RssFile/ {print $2}' "/proc/$pid/status")
    ticks=$(( $(cpu_ticks "$pid") - before[$id] ))
    awk -v id="$id" -v role="$role" -v rss="$rss" -v anon="$anon" -v file="$file" \
      -v t="$ticks" -v hz="$hz" 'BEGIN {
        printf "node %s (%s): RSS %.0f MiB (anonymous %.0f MiB, file-backed %.0f MiB); CPU %.2f s = %.2f CPU ms per 1,000 writes\n",
          id, role, rss / 1024, anon / 1024, file / 1024, t / hz, t / hz }'
  done
fi

if want 3; then
  fresh_cluster --snapshot-entries 0
  "$CTL" --endpoints "$(endpoints)" bench --op put --clients 256 --ops 1000000 --keys 100000 \
    --json >/dev/null
  last=$(status_field 1 last_index)
  echo "restart: WAL of $last entries per node ($(du -sh "$CLUSTER_DIR/data-1/wal" | cut -f1) on disk)"
  "$ROOT/scripts/cluster.sh" stop >/dev/null
  start=$(now_ms)
  for id in 1 2 3; do
    nohup "$ROOT/target/release/raftd" $(cat "$CLUSTER_DIR/node-$id.args") >>"$CLUSTER_DIR/node-$id.log" 2>&1 &
    echo $! >"$CLUSTER_DIR/node-$id.pid"
  done
  served=""
  caught=""
  deadline=$(( $(now_ms) + 120000 ))
  while [ -z "$served" ] || [ -z "$caught" ]; do
    [ "$(now_ms)" -lt "$deadline" ] || { echo "restart: not serving within 120 s" >&2; exit 1; }
    if [ -z "$served" ] && "$CTL" --endpoints "$(endpoints)" --timeout 1s get key1 >/dev/null 2>&1; then
      served=$(( $(now_ms) - start ))
    fi
    if [ -z "$caught" ]; then
      all=1
      for id in 1 2 3; do
        a=$(status_field "$id" applied)
        [ -n "$a" ] && [ "$a" -ge "$last" ] || all=0
      done
      [ "$all" = 1 ] && caught=$(( $(now_ms) - start ))
    fi
    sleep 0.05
  done
  echo "restart of all 3 nodes: first linearizable get after ${served} ms (includes an election);" \
    "every node has replayed all $last entries after ${caught} ms"
fi

if want 4; then
  fresh_cluster
  # ~100 MB of state: 1,000-byte values over 120,000 keys, each written ~2.5 times.
  "$CTL" --endpoints "$(endpoints)" bench --op put --clients 256 --ops 300000 --keys 120000 \
    --value-size 1000 --json >/dev/null
  leader_id=$(status_field 1 leader)
  "$CTL" --endpoints "$(endpoints)" snapshot >/dev/null
  target=$(status_field "$leader_id" applied)
  start=$(now_ms)
  "$ROOT/scripts/cluster.sh" add 4 >/dev/null
  deadline=$(( $(now_ms) + 300000 ))
  until a=$(status_field 4 applied) && [ -n "$a" ] && [ "$a" -ge "$target" ]; do
    [ "$(now_ms)" -lt "$deadline" ] || { echo "catch-up: node 4 not caught up within 300 s" >&2; exit 1; }
    sleep 0.05
  done
  took=$(( $(now_ms) - start ))
  bytes=$(grep -o 'received snapshot from [0-9]*: [0-9]* bytes' "$CLUSTER_DIR/node-4.log" | tail -1 | awk '{print $5}')
  awk -v ms="$took" -v b="${bytes:-0}" 'BEGIN {
    printf "an empty node caught up through a %.0f MB snapshot in %.2f s (%.0f MB/s), from joining to applied\n",
      b / 1e6, ms / 1000, (ms > 0 ? b / 1e6 / (ms / 1000) : 0) }'
fi
