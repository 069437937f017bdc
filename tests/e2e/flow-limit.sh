#!/usr/bin/env bash
# Bounded state: with --max-flows 3, three held TCP connections fill the flow table; a new TCP
# connection is refused with a RST and a new UDP flow is dropped, while the held connections
# keep carrying data; once they close, new flows work again.
. "$(dirname "$0")/lib.sh"
need busybox python3 ip || exit 1
topology || exit 1
bg_py "$REMOTE_NS" tcpecho tcp-echo $REMOTE_IP 7000 || exit 1
bg_py "$REMOTE_NS" udpecho udp-echo $REMOTE_IP 7001 || exit 1
start_skiff skiff --tap tg1 --max-flows 3 --state-dir "$WORK/state" || exit 1
guest_ns "$TAG-g1" tg1 || exit 1
G1=$TAG-g1
dhcp "$G1" tg1 >/dev/null

bg_py "$G1" hold hold $REMOTE_IP 7000 3 8 || exit 1
check "a new TCP connection is refused while the table is full" py "$G1" connect-fails $REMOTE_IP 7000
check "a new UDP flow is dropped while the table is full" bash -c "! T=20 py $G1 udp-rr $REMOTE_IP 7001 2"
check "the held connections kept carrying data" wait_for 30 grep -q "^ok" "$WORK/hold.out"
# The held connections are closed now; their flows go once both FINs are acknowledged.
check "new flows work once the old ones closed" wait_for 10 py "$G1" tcp-rr $REMOTE_IP 7000 3
stop_pid "$SKIFF_PID"
check "refusals are counted" grep -Eq "tcp_refused_full: [1-9]" "$WORK/skiff.log"
check "dropped flows are counted" grep -Eq "dropped_full: [1-9]" "$WORK/skiff.log"
summary
