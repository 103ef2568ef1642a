#!/usr/bin/env bash
# Start, stop and operate a local raftd cluster.
#
#   scripts/cluster.sh start [--nodes N] [--dir DIR] [--base-port P] [--tls] [-- extra raftd flags]
#   scripts/cluster.sh stop | status | endpoints
#   scripts/cluster.sh kill ID | restart ID | add ID
#
# Every subcommand takes --dir DIR (or CLUSTER_DIR). start over a stopped cluster's DIR starts
# its nodes again (those added included) with the flags they had; --nodes and the flags after
# -- apply to a new cluster only.
# Node ID listens for peers on P+ID and for clients on P+100+ID (default P=7000, so node 1 is
# 127.0.0.1:7001 / 127.0.0.1:7101, raftctl's defaults). Logs, pid files and data live under
# DIR (default ./.cluster). Binaries come from $RAFT_BIN_DIR if set, else target/release,
# built (or rebuilt when stale) by cargo. --tls makes a throwaway CA and node certificates
# under DIR/certs (raftctl certs) and runs both ports with TLS; use raftctl with
# RAFT_CACERT=DIR/certs/ca.pem.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${CLUSTER_DIR:-$ROOT/.cluster}
NODES=3
BASE_PORT=7000
EXTRA=()
TLS=0
LEADER_WAIT_SECS=${LEADER_WAIT_SECS:-30}

die() { echo "cluster.sh: $*" >&2; exit 1; }

usage() {
  # The header comment, without the code after it.
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 2
}

parse_start_flags() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) NODES=${2:?--nodes needs a number}; shift 2 ;;
      --dir) DIR=${2:?--dir needs a path}; shift 2 ;;
      --base-port) BASE_PORT=${2:?--base-port needs a number}; shift 2 ;;
      --tls) TLS=1; shift ;;
      --) shift; EXTRA=("$@"); break ;;
      *) echo "cluster.sh: unknown flag $1" >&2; usage ;;
    esac
  done
  [[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive number"
  [[ "$BASE_PORT" =~ ^[0-9]+$ ]] || die "--base-port must be a number"
}

# The cluster's settings, saved by start for the other subcommands.
load_env() {
  [ -f "$DIR/cluster.env" ] || die "no cluster under $DIR (run start first)"
  # shellcheck disable=SC1091
  . "$DIR/cluster.env"
}

bin_dir() {
  if [ -n "${RAFT_BIN_DIR:-}" ]; then
    echo "$RAFT_BIN_DIR"
  else
    echo "$ROOT/target/release"
  fi
}

build() {
  if [ -z "${RAFT_BIN_DIR:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p raftd -p raftctl) || die "build failed"
  fi
  [ -x "$(bin_dir)/raftd" ] && [ -x "$(bin_dir)/raftctl" ] || die "no raftd/raftctl in $(bin_dir)"
}

peer_addr() { echo "127.0.0.1:$((BASE_PORT + $1))"; }
client_addr() { echo "127.0.0.1:$((BASE_PORT + 100 + $1))"; }

endpoints() {
  local out="" id
  for id in $(node_ids); do out="$out${out:+,}$(client_addr "$id")"; done
  echo "$out"
}

node_ids() {
  local f
  for f in "$DIR"/node-*.args; do
    [ -e "$f" ] || continue
    basename "$f" .args | sed 's/node-//'
  done | sort -n
}

# Whether node $1's process runs (a zombie, killed and not yet reaped, does not).
alive() {
  local pid
  [ -f "$DIR/node-$1.pid" ] || return 1
  pid=$(cat "$DIR/node-$1.pid")
  kill -0 "$pid" 2>/dev/null || return 1
  ! grep -qE '^[0-9]+ \(.*\) Z' "/proc/$pid/stat" 2>/dev/null
}

# SIGKILL node $1 and wait until it is gone (its ports free).
kill_node() {
  local pid
  alive "$1" || { rm -f "$DIR/node-$1.pid"; return 0; }
  pid=$(cat "$DIR/node-$1.pid")
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do alive "$1" || break; sleep 0.05; done
  alive "$1" && die "node $1 (pid $pid) did not die"
  rm -f "$DIR/node-$1.pid"
}

launch() {
  local id=$1
  alive "$id" && die "node $id is already running"
  # shellcheck disable=SC2046
  nohup "$(bin_dir)/raftd" $(cat "$DIR/node-$id.args") >>"$DIR/node-$id.log" 2>&1 &
  echo $! >"$DIR/node-$id.pid"
}

# The cluster id given in the extra flags (raftd's default otherwise): certificates name it.
cluster_id() {
  local id
  id=$(extra_flag --cluster-id)
  echo "${id:-raft}"
}

# With --tls: node ID's certificate (and the CA, the first time).
make_certs() {
  "$(bin_dir)/raftctl" certs --dir "$DIR/certs" --cluster-id "$(cluster_id)" --nodes "$1" >/dev/null \
    || die "could not make certificates in $DIR/certs"
}

tls_flags() {
  [ "${TLS:-0}" = 1 ] || return 0
  local c=$DIR/certs
  echo "--peer-cert-file $c/node-$1.pem --peer-key-file $c/node-$1-key.pem --peer-trusted-ca-file $c/ca.pem --cert-file $c/node-$1.pem --key-file $c/node-$1-key.pem"
}

write_args() {
  local id=$1; shift
  {
    echo "--id $id --data-dir $DIR/data-$id --listen-peer $(peer_addr "$id") --listen-client $(client_addr "$id") $(tls_flags "$id")"
    echo "$*"
  } | tr '\n' ' ' >"$DIR/node-$id.args"
}

# The value of raftd flag $1 in the extra flags, if given.
extra_flag() {
  local prev="" f
  for f in ${EXTRA_FLAGS:-}; do
    [ "$prev" = "$1" ] && { echo "$f"; return; }
    case "$f" in "$1"=*) echo "${f#"$1"=}"; return ;; esac
    prev=$f
  done
}

# The client endpoints, for raftctl run from the repository's root (its default).
save_endpoints() { endpoints >"$DIR/endpoints"; }

raftctl() {
  local flags=(--endpoints "$(endpoints)") token
  [ "${TLS:-0}" = 1 ] && flags+=(--cacert "$DIR/certs/ca.pem")
  token=$(extra_flag --token-file)
  [ -n "$token" ] && flags+=(--token-file "$token")
  "$(bin_dir)/raftctl" "${flags[@]}" "$@"
}

wait_for_leader() {
  local deadline=$((SECONDS + LEADER_WAIT_SECS))
  until raftctl --timeout 1s check >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

stop_all() {
  local id pid
  for id in $(node_ids); do
    alive "$id" || continue
    pid=$(cat "$DIR/node-$id.pid")
    kill -TERM "$pid" 2>/dev/null || true
  done
  for id in $(node_ids); do
    [ -f "$DIR/node-$id.pid" ] || continue
    pid=$(cat "$DIR/node-$id.pid")
    for _ in $(seq 1 100); do alive "$id" || break; sleep 0.1; done
    kill_node "$id"
  done
}

cmd=${1:-}; [ -n "$cmd" ] || usage; shift
# --dir DIR, for every subcommand.
if [ "$cmd" != start ]; then
  rest=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) DIR=${2:?--dir needs a path}; shift 2 ;;
      *) rest+=("$1"); shift ;;
    esac
  done
  set -- "${rest[@]+"${rest[@]}"}"
fi
case "$cmd" in
  start)
    parse_start_flags "$@"
    if [ -f "$DIR/cluster.env" ]; then
      for id in $(node_ids); do alive "$id" && die "a cluster is already running under $DIR (stop it first)"; done
    fi
    build
    if [ -f "$DIR/cluster.env" ] && [ -n "$(node_ids)" ]; then
      # A stopped cluster: every node again, with the flags it had.
      load_env
      for id in $(node_ids); do launch "$id"; done
      if ! wait_for_leader; then
        echo "cluster.sh: no leader within ${LEADER_WAIT_SECS}s; stopping what was started (logs in $DIR)" >&2
        stop_all
        exit 1
      fi
      raftctl status
      exit 0
    fi
    mkdir -p "$DIR"
    printf 'NODES=%q\nBASE_PORT=%q\nEXTRA_FLAGS=%q\nTLS=%q\n' "$NODES" "$BASE_PORT" "${EXTRA[*]:-}" "$TLS" >"$DIR/cluster.env"
    EXTRA_FLAGS="${EXTRA[*]:-}"
    if [ "$TLS" = 1 ]; then make_certs "$(seq -s, 1 "$NODES")"; fi
    initial=""
    for id in $(seq 1 "$NODES"); do initial="$initial${initial:+,}$id=$(peer_addr "$id")"; done
    for id in $(seq 1 "$NODES"); do
      write_args "$id" "--initial-cluster $initial ${EXTRA[*]:-}"
      launch "$id"
    done
    save_endpoints
    if ! wait_for_leader; then
      echo "cluster.sh: no leader within ${LEADER_WAIT_SECS}s; stopping what was started (logs in $DIR)" >&2
      stop_all
      exit 1
    fi
    raftctl status
    if [ "$TLS" = 1 ]; then
      echo "TLS on both ports; for raftctl: export RAFT_CACERT=$DIR/certs/ca.pem"
    fi
    if [ "$DIR" != "$ROOT/.cluster" ]; then echo "stop it with: $0 stop --dir $DIR"; fi
    echo "raftctl is $(bin_dir)/raftctl (or put it on your PATH: cargo install --path $ROOT/raftctl)"
    ;;
  stop) load_env; stop_all; echo "stopped" ;;
  status) load_env; raftctl status ;;
  endpoints) load_env; endpoints ;;
  kill)
    load_env; id=${1:?kill needs a node id}
    alive "$id" || die "node $id is not running"
    kill_node "$id"; echo "killed node $id"
    ;;
  restart)
    load_env; id=${1:?restart needs a node id}
    [ -f "$DIR/node-$id.args" ] || die "no node $id in this cluster"
    kill_node "$id"
    launch "$id"; echo "restarted node $id"
    ;;
  add)
    load_env; id=${1:?add needs a node id}
    [ -f "$DIR/node-$id.args" ] && die "node $id already exists"
    if [ "${TLS:-0}" = 1 ]; then make_certs "$id"; fi
    write_args "$id" "--join ${EXTRA_FLAGS:-}"
    launch "$id"
    save_endpoints
    # Added as a learner, promoted once the leader recorded its data dir incarnation
    # (raftctl member add retries the promotion until then).
    # (A node just launched may take a while to start: a generous timeout.)
    raftctl --timeout 30s member add "$id" "$(peer_addr "$id")"
    ;;
  *) usage ;;
esac
