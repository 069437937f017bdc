# Shared helpers for skiff's end-to-end tests: namespaces, TAPs and processes made here are
# recorded and removed on exit, failure included (processes by PID, never by name).
# Every wait is bounded. Traffic goes only to loopback and to namespaces made here.
set -u -o pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$E2E_DIR/../.." && pwd)
SKIFF=${SKIFF:-$ROOT/target/release/skiff}
TAG=${TAG:-sk$$}
WORK=$(mktemp -d "/tmp/skiff-e2e.$TAG.XXXXXX")
chmod 755 "$WORK"
PASSED=0
FAILED=0
FAILED_NAMES=()
_PIDS=()
_NETNS=()

log() { printf '[%s %s] %s\n' "$(basename "$0" .sh)" "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
  local p ns
  for p in "${_PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null
  done
  for p in "${_PIDS[@]}"; do
    for _ in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  for ns in "${_NETNS[@]}"; do
    ip netns del "$ns" 2>/dev/null
    rm -rf "/etc/netns/$ns"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# track PID: kill it on exit.
track() { _PIDS+=("$1"); }

# stop PID: TERM, bounded wait, KILL; returns the exit status if it exited on its own.
stop_pid() {
  local p=$1
  kill -TERM "$p" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null
  wait "$p" 2>/dev/null
}

# netns_add NAME: a namespace with loopback up, removed on exit.
netns_add() {
  ip netns add "$1" || return 1
  _NETNS+=("$1")
  mkdir -p "/etc/netns/$1"
  : >"/etc/netns/$1/resolv.conf"
  ip -n "$1" link set lo up
}

# in NS CMD...: run in a namespace, bounded to 120 s unless T is set.
in_ns() { local ns=$1; shift; timeout -k 5 "${T:-120}" ip netns exec "$ns" "$@"; }

# wait_for SECS CMD...: poll CMD every 0.1 s until it succeeds.
wait_for() {
  local secs=$1; shift
  local i
  for i in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

# check NAME CMD...: run one assertion, count it.
check() {
  local name=$1; shift
  if "$@"; then
    PASSED=$((PASSED + 1)); log "ok: $name"
  else
    FAILED=$((FAILED + 1)); FAILED_NAMES+=("$name"); log "FAIL: $name"
  fi
}

# summary: the closing line the runner reads; exit status 1 on any failure.
summary() {
  local f
  for f in "${FAILED_NAMES[@]}"; do log "failed: $f"; done
  echo "$(basename "$0" .sh): $PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

# The "host" namespace with a veth to a "remote" namespace that stands in for the internet.
# HOST_IP is the host's default-route address; REMOTE_IP serves outward traffic.
HOST_IP=10.77.0.1
REMOTE_IP=10.77.0.2
topology() {
  HOST_NS=$TAG-host; REMOTE_NS=$TAG-remote
  netns_add "$HOST_NS" && netns_add "$REMOTE_NS" || return 1
  ip -n "$HOST_NS" link add veth0 type veth peer name veth1 netns "$REMOTE_NS" || return 1
  ip -n "$HOST_NS" addr add $HOST_IP/24 dev veth0
  ip -n "$HOST_NS" link set veth0 up
  ip -n "$HOST_NS" route add default via $REMOTE_IP
  ip -n "$REMOTE_NS" addr add $REMOTE_IP/24 dev veth1
  ip -n "$REMOTE_NS" link set veth1 up
  # The host's sysctls of interest, set inside its namespace only.
  ip netns exec "$HOST_NS" sysctl -qw net.ipv4.ping_group_range="0 2147483647"
}

# start_skiff LOGNAME ARGS...: skiff net serve in the host namespace; sets SKIFF_PID.
# SKIFF_AS, if set, is a command prefix such as "setpriv --reuid nobody ...".
start_skiff() {
  local name=$1; shift
  ip netns exec "$HOST_NS" ${SKIFF_AS:-} env RUST_LOG=${RUST_LOG:-info} "$SKIFF" net serve "$@" \
    >"$WORK/$name.log" 2>&1 &
  SKIFF_PID=$!
  track "$SKIFF_PID"
  wait_for 10 grep -q ready "$WORK/$name.log" || { log "skiff did not start: $(tail -5 "$WORK/$name.log")"; return 1; }
}

# guest_ns NAME TAP [MAC]: moves skiff's TAP into a new namespace NAME as its interface.
guest_ns() {
  local ns=$1 tap=$2 mac=${3:-}
  netns_add "$ns" || return 1
  wait_for 10 ip -n "$HOST_NS" link show "$tap" || return 1
  ip -n "$HOST_NS" link set "$tap" netns "$ns" || return 1
  [ -n "$mac" ] && ip -n "$ns" link set "$tap" address "$mac"
  ip -n "$ns" link set "$tap" up
}

# dhcp NS IFACE [HOSTNAME]: busybox udhcpc; prints the lease line of udhcpc.script.
dhcp() {
  local ns=$1 ifc=$2 hn=${3:-}
  local extra=()
  [ -n "$hn" ] && extra=(-x "hostname:$hn")
  [ -f "/etc/netns/$ns/resolv.conf" ] || { log "no /etc/netns/$ns/resolv.conf"; return 1; }
  T=30 in_ns "$ns" env RESOLV_CONF=/etc/resolv.conf busybox udhcpc -i "$ifc" -n -q -f -t 5 -T 2 "${extra[@]}" \
    -s "$E2E_DIR/udhcpc.script" 2>&1
}

# guest_ip NS IFACE: the IPv4 address of an interface.
guest_ip() { ip -n "$1" -4 -o addr show dev "$2" | awk '{print $4}' | cut -d/ -f1 | head -1; }

# py NS SCRIPT ARGS...: run one of the helper scripts in a namespace.
py() { local ns=$1; shift; in_ns "$ns" python3 "$E2E_DIR/helpers.py" "$@"; }

# bg_py NS NAME ARGS...: a helper server in the background; waits for its "ready" line.
bg_py() {
  local ns=$1 name=$2; shift 2
  ip netns exec "$ns" python3 "$E2E_DIR/helpers.py" "$@" >"$WORK/$name.out" 2>&1 &
  local p=$!
  track "$p"
  wait_for 10 grep -q ready "$WORK/$name.out" || { log "$name did not start: $(cat "$WORK/$name.out")"; return 1; }
}

need() {
  local t
  for t in "$@"; do command -v "$t" >/dev/null || { log "missing $t"; return 1; }; done
}

# Checks run their commands through `bash -c`; these must be visible there.
export E2E_DIR WORK
export -f in_ns py
