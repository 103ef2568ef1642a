#!/usr/bin/env bash
# A newcomer's walkthrough: the README's quick start in order, every raftctl subcommand, and
# the failure cases a new user meets, each checked, against a fresh cluster of its own.
#
#   scripts/walkthrough.sh [--base-port P]
#
# Runs in a temporary directory (the cluster under DIR/.cluster, raftctl run from DIR so that
# its default endpoints are the cluster's), stops everything at the end or on failure, and
# exits non-zero naming the step that failed. raftctl/tests/cli.rs runs it (so CI does).
# Binaries come from $RAFT_BIN_DIR if set, else target/release (built by cluster.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE_PORT=7900
while [ $# -gt 0 ]; do
  case "$1" in
    --base-port) BASE_PORT=${2:?--base-port needs a number}; shift 2 ;;
    *) echo "walkthrough.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
WORK=$(mktemp -d /tmp/raft-walkthrough.XXXXXX)
export CLUSTER_DIR=$WORK/.cluster
unset RAFT_ENDPOINTS RAFT_CACERT RAFT_CERT RAFT_KEY RAFT_TOKEN_FILE
cd "$WORK"

cleanup() {
  bash "$ROOT/scripts/cluster.sh" stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

STEP=""
OUT=""
fail() {
  echo "walkthrough: step '$STEP' failed: $*" >&2
  echo "--- its output:" >&2
  echo "$OUT" >&2
  exit 1
}

cluster() { bash "$ROOT/scripts/cluster.sh" "$@"; }
raftctl() { "${RAFT_BIN_DIR:-$ROOT/target/release}/raftctl" "$@"; }

# step NAME CMD...: runs CMD, which must succeed; its output in $OUT.
step() {
  STEP=$1; shift
  echo "\$ $*"
  if ! OUT=$("$@" 2>&1); then fail "exit code non-zero"; fi
}

# fails CODE NAME CMD...: runs CMD, which must exit with CODE.
fails() {
  local code=$1 rc=0; STEP=$2; shift 2
  echo "\$ $*   (expected to fail with $code)"
  OUT=$("$@" 2>&1) || rc=$?
  [ "$rc" = "$code" ] || fail "exit code $rc, expected $code"
}

expect() { grep -qE -- "$1" <<<"$OUT" || fail "no match for /$1/"; }

# eventually NAME CMD...: CMD succeeds within a minute.
eventually() {
  local name=$1 deadline=$((SECONDS + 60)); shift
  until OUT=$("$@" 2>&1); do
    [ $SECONDS -lt $deadline ] || { STEP=$name; fail "never succeeded"; }
    sleep 0.2
  done
  STEP=$name
}

# Quick start.
step "start" cluster start --base-port "$BASE_PORT" -- --tick-interval-ms 20
expect "cluster: leader"
expect "raftctl is "
step "status" raftctl status
expect "HEALTH"
expect "cluster: leader [0-9]+, term [0-9]+, voters \[1, 2, 3\]"
step "put" raftctl put greeting hello
expect "^OK \(index [0-9]+\)$"
step "get" raftctl get greeting
expect "^hello$"
step "cas" raftctl cas greeting hello bye
expect "^swapped"
fails 1 "cas that fails" raftctl cas greeting hello again
expect "not swapped: the value is bye"
step "cas --absent" raftctl cas --absent motd "welcome"
step "put from stdin" bash -c "printf 'line 1\nline 2' | '${RAFT_BIN_DIR:-$ROOT/target/release}/raftctl' put motd"
step "get from stdin" raftctl get motd
expect "^line 2$"
step "del" raftctl del greeting
expect "^deleted"
fails 1 "get of a deleted key" raftctl get greeting
expect "greeting: not found"
step "status --json" raftctl --json status
leader=$(sed -n 's/.*"cluster":{[^}]*"leader":\([0-9]*\).*/\1/p' <<<"$OUT")
[ -n "$leader" ] || fail "no leader in the JSON"
target=$((leader % 3 + 1))
step "transfer-leader" raftctl transfer-leader "$target"
expect "^node $target leads$"
step "member list" raftctl member list
[ "$(grep -c . <<<"$OUT")" -ge 3 ] || fail "fewer than 3 lines"
step "snapshot" raftctl snapshot
expect "snapshot at index [0-9]+"
step "snapshot --json" raftctl --json snapshot
expect '"index":[0-9]+'
step "bench" raftctl bench --op mixed --clients 8 --ops 500
expect "keys: bench/key0"
step "hashkv" raftctl hashkv
expect "ok: 3 members agree"
step "check" raftctl check
expect "^ok: leader"

# A node killed and restarted; a node added; the whole cluster stopped and started.
step "kill 2" cluster kill 2
fails 1 "check with node 2 down" raftctl --timeout 2s check
expect "127.0.0.1:$((BASE_PORT + 102))"
step "restart 2" cluster restart 2
eventually "check after restart" raftctl --timeout 2s check
step "restart of a running node" cluster restart 2
eventually "check after a second restart" raftctl --timeout 2s check
step "add 4" cluster add 4
eventually "check with node 4" raftctl --timeout 2s check
step "status with node 4" raftctl status
expect "voters \[1, 2, 3, 4\]"
expect "127.0.0.1:$((BASE_PORT + 104))"
step "stop" cluster stop
fails 1 "status with everything stopped" raftctl --timeout 2s status
step "start again" cluster start
expect "voters \[1, 2, 3, 4\]"
step "data kept" raftctl get motd
expect "^line 1$"

# What a newcomer gets wrong.
fails 2 "an unknown subcommand" raftctl frobnicate
fails 2 "a duration without a unit" raftctl --timeout 2 status
expect "no unit"
fails 2 "cas without values" raftctl cas key
fails 1 "a malformed endpoint" raftctl --endpoints localhost --timeout 30s get motd
expect "HOST:PORT"
fails 1 "endpoints where nothing listens" raftctl --endpoints "127.0.0.1:$((BASE_PORT + 99))" --timeout 30s get motd
expect "nothing listens"
fails 1 "a node that is not a member" raftctl member promote 9
expect "not a learner"
step "completion" raftctl completion bash
expect "_raftctl"
step "version" raftctl --version
expect "^raftctl [0-9.]+ \("
step "stop at the end" cluster stop
echo "walkthrough: every step passed"
