#!/usr/bin/env bash
# A hostile guest on the stream socket (hostile.py): garbage and truncated frames at every
# layer, impossible length prefixes, stalled and slow clients, floods of SYNs, UDP flows, DNS
# queries, DHCP DISCOVERs and MAC addresses. After every phase skiff must still be running,
# serve a fresh guest (ARP, ping, DHCP, DNS) and keep its RSS bounded; at the end it exits 0 on
# SIGTERM and its counters show the drops. skiff runs as a normal process: NAT traffic goes
# only to the gateway address (this host's own address), to ports hostile.py listens on or
# found closed; DNS upstream is 127.0.0.1:9, which answers nothing. PHASES="a b" runs only
# those phases of the main instance (the descriptor-limit instance always runs).
. "$(dirname "$0")/lib.sh"
need python3 || exit 1

STATIC=52:54:00:aa:bb:cc,192.168.122.30,statichost
DOMAIN=hostile.test
MAX_FLOWS=64
RSS_MIB=${RSS_MIB:-64}
FWD_GUEST=192.168.122.50
# Free ports for the forwards (command substitution: the sockets are closed on return).
PORTS=$(python3 -c '
import socket
t = socket.socket(); t.bind(("127.0.0.1", 0))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
ports = (t.getsockname()[1], u.getsockname()[1])
t.close(); u.close()
print(*ports)')
read -r FWD_TCP FWD_UDP <<<"$PORTS"

RUST_LOG=info "$SKIFF" net serve --socket "$WORK/net.sock" --state-dir "$WORK/state" \
  --dns-upstream 127.0.0.1:9 --max-flows $MAX_FLOWS --dhcp-range 192.168.122.2,192.168.122.20 \
  --dhcp-host "$STATIC" --domain $DOMAIN --forward "tcp:127.0.0.1:$FWD_TCP:$FWD_GUEST:80" \
  --forward "udp:127.0.0.1:$FWD_UDP:$FWD_GUEST:81" >"$WORK/skiff.log" 2>&1 &
SKIFF_PID=$!
track "$SKIFF_PID"
wait_for 10 grep -q ready "$WORK/skiff.log" && kill -0 "$SKIFF_PID" ||
  { log "skiff did not start: $(tail -5 "$WORK/skiff.log")"; exit 1; }

# hostile PHASE [ARGS]: one attack and the health checks after it, bounded in time.
hostile() {
  local phase=$1; shift
  timeout -k 5 "${T:-120}" python3 "$E2E_DIR/hostile.py" --socket "${SOCK:-$WORK/net.sock}" \
    --pid "$SKIFF_PID" --static "$STATIC" --domain $DOMAIN --max-flows $MAX_FLOWS \
    --fwd-tcp "$FWD_TCP" --fwd-udp "$FWD_UDP" --max-rss-mib "$RSS_MIB" "$@" "$phase" 2>&1 |
    tee -a "$WORK/phases.out"
}

log "skiff RSS at start: $(awk '/VmRSS/ {print $2, $3}' /proc/$SKIFF_PID/status)"
# The order matters: flows, leases and queues a phase leaves are undone by it, except the UDP
# flows of the last one (they idle out after minutes).
ALL="lengths huge-length half-frame arp ipv4 icmp tcp-malformed tcp-state syn-flood udp dns
     dns-tcp dns-cpu dhcp-malformed dhcp-others dhcp-exhaust multicast-src mac-flood many-clients
     stalled-reader slow-reader many-stalled forward udp-flood"
for p in ${PHASES:-$ALL}; do
  check "$p: skiff survives and serves a fresh guest" hostile "$p"
  check "$p: skiff still running" kill -0 "$SKIFF_PID"
done

log "RSS after each phase (KiB):"
grep -E '^phase [a-z0-9-]+: rss ' "$WORK/phases.out" | sed 's/^phase //' >&2
grep -E 'rss (peak|during|with)' "$WORK/phases.out" >&2

stop_pid "$SKIFF_PID"
rc=$?
check "exits 0 on SIGTERM after all that" test "$rc" -eq 0
STATS=$(grep -a 'stats:' "$WORK/skiff.log" | sed 's/\x1b\[[0-9;]*m//g')
log "$STATS"
check "stats are logged at exit" test -n "$STATS"
counter() { grep -Eq "$1" <<<"$STATS"; }
if [ -z "${PHASES:-}" ]; then
  check "runts counted" counter 'runts: [1-9]'
  check "malformed IP/TCP/UDP counted" counter 'NatStats \{[^}]*dropped_malformed: [1-9]'
  check "martian destinations counted" counter 'dropped_martian: [1-9]'
  check "SYNs refused while full counted" counter 'tcp_refused_full: [1-9]'
  check "UDP flows dropped while full counted" counter 'NatStats \{[^}]*dropped_full: [1-9]'
  check "segments without a flow counted" counter 'no_flow: [1-9]'
  check "malformed DHCP counted" counter 'DhcpStats \{[^}]*malformed: [1-9]'
  check "spoofed/relayed DHCP ignored and counted" counter 'DhcpStats \{[^}]*ignored: [1-9]'
  check "DHCP exhaustion counted" counter 'exhausted: [1-9]'
  check "DNS queries over the pending bound counted" counter 'DnsStats \{[^}]*dropped_full: [1-9]'
  check "group source MACs counted" counter 'bad_source: [1-9]'
  check "MAC table overflow counted" counter 'table_full: [1-9]'
  check "bad length prefixes detach the client" grep -aq 'is not a frame: detaching' "$WORK/skiff.log"
  check "clients over the limit are refused" grep -aq 'refusing a client' "$WORK/skiff.log"
fi
check "no panic" bash -c "! grep -aqi panick '$WORK/skiff.log'"

# Descriptors run out before flows do: the default --max-flows (4096) under the usual soft
# limit of 1024 descriptors. A guest holding connections up to that limit must not stop skiff
# from serving guests, attached or attaching, nor make it spin or flood its log.
if (ulimit -Sn 1024) 2>/dev/null; then
  SOCK=$WORK/fd.sock
  (ulimit -Sn 1024 && RUST_LOG=info exec "$SKIFF" net serve --socket "$SOCK" \
    --state-dir "$WORK/state-fd" --dns-upstream 127.0.0.1:9 --dhcp-host "$STATIC" \
    --domain $DOMAIN >"$WORK/skiff-fd.log" 2>&1) &
  SKIFF_PID=$!
  track "$SKIFF_PID"
  if wait_for 10 grep -q ready "$WORK/skiff-fd.log"; then
    check "fd-exhaust: skiff keeps serving at its descriptor limit" \
      hostile fd-exhaust --flood 1100 --log "$WORK/skiff-fd.log"
    stop_pid "$SKIFF_PID"
    rc=$?
    check "fd-exhaust: exits 0 on SIGTERM" test "$rc" -eq 0
    log "fd-exhaust: skiff's log: $(wc -c <"$WORK/skiff-fd.log") bytes; most frequent lines:"
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/skiff-fd.log" | cut -d' ' -f2- | sort | uniq -c |
      sort -rn | head -3 >&2
  else
    check "fd-exhaust: skiff starts" false
  fi
fi
summary
