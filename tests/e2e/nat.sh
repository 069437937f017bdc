#!/usr/bin/env bash
# The NAT network against real Linux network stacks (TESTING.md, layer 2): skiff in a "host"
# namespace whose veth leads to a "remote" namespace standing in for the internet; two guests
# as namespaces on skiff's TAPs, with busybox as their tools.
. "$(dirname "$0")/lib.sh"
need busybox python3 ip sha256sum || exit 1

G1_MAC=52:54:00:12:34:01
G1_IP=192.168.122.50
DOMAIN=lan.test
topology || { log "topology failed"; exit 1; }

# Servers: DNS upstream on the host's loopback; HTTP, TCP/UDP echo and a half-closing server
# on the remote; host services on all addresses and on 127.0.0.1 only.
mkdir -p "$WORK/www"
head -c $((1 << 20)) /dev/urandom >"$WORK/www/1m.bin"
head -c $((100 << 20)) /dev/urandom >"$WORK/www/100m.bin"
# busybox wget --post-file sends text (it stops at a NUL byte): upload base64.
head -c $((75 << 20)) /dev/urandom | base64 >"$WORK/up.txt"
bg_py "$HOST_NS" dns dns-server 127.0.0.1 5353 www.example.test=$REMOTE_IP || exit 1
bg_py "$REMOTE_NS" http http-server $REMOTE_IP 8080 "$WORK/www" || exit 1
bg_py "$REMOTE_NS" tcpecho tcp-echo $REMOTE_IP 7000 || exit 1
bg_py "$REMOTE_NS" udpecho udp-echo $REMOTE_IP 7001 || exit 1
bg_py "$REMOTE_NS" halfclose halfclose-server $REMOTE_IP 7002 200000 || exit 1
bg_py "$HOST_NS" hostany tcp-echo 0.0.0.0 7100 || exit 1
bg_py "$HOST_NS" hostlo tcp-echo 127.0.0.1 7101 || exit 1

start_skiff skiff --tap tg1 --tap tg2 --dns-upstream 127.0.0.1:5353 --domain $DOMAIN \
  --dhcp-host $G1_MAC,$G1_IP,web --forward tcp:127.0.0.1:8022:$G1_IP:22 \
  --state-dir "$WORK/state" --pcap "$WORK/switch.pcap" || exit 1
guest_ns "$TAG-g1" tg1 $G1_MAC || exit 1
guest_ns "$TAG-g2" tg2 || exit 1
G1=$TAG-g1; G2=$TAG-g2

lease1=$(dhcp "$G1" tg1 web); log "g1: $lease1"
lease2=$(dhcp "$G2" tg2 other); log "g2: $lease2"
check "udhcpc gets the static lease with libvirt's options" \
  grep -q "lease ip=$G1_IP/24 router=192.168.122.1 dns=192.168.122.1 mtu=1500 domain=$DOMAIN lease=3600" <<<"$lease1"
check "a second guest gets a dynamic lease in .2-.254" \
  grep -Eq "lease ip=192\.168\.122\.([2-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-4])/24 " <<<"$lease2"
G2_IP=$(guest_ip "$G2" tg2)
G2_MAC=$(ip -n "$G2" link show tg2 | awk '/ether/ {print $2}')

# DNS: a name through the upstream the test runs, another guest's name, PTR, NXDOMAIN.
check "nslookup resolves through the upstream" \
  bash -c "T=20 in_ns $G1 busybox nslookup www.example.test 2>&1 | grep -q 'Address.*$REMOTE_IP'"
check "nslookup resolves another guest's name (bare)" \
  bash -c "T=20 in_ns $G1 busybox nslookup other 2>&1 | grep -q 'Address.*$G2_IP'"
check "nslookup resolves a guest's name under the domain" \
  bash -c "T=20 in_ns $G2 busybox nslookup web.$DOMAIN 2>&1 | grep -q 'Address.*$G1_IP'"
check "nslookup answers PTR for a guest" \
  bash -c "T=20 in_ns $G2 busybox nslookup $G1_IP 2>&1 | grep -q 'web'"
check "unknown names under the domain are NXDOMAIN" \
  bash -c "! T=20 in_ns $G1 busybox nslookup nobody.$DOMAIN >/dev/null 2>&1"
check "DNS over TCP to the gateway" \
  bash -c "T=20 in_ns $G1 python3 -c '
import socket,struct
q=struct.pack(\"!HHHHHH\",7,0x100,1,0,0,0)+b\"\x03www\x07example\x04test\x00\"+struct.pack(\"!HH\",1,1)
s=socket.create_connection((\"192.168.122.1\",53),timeout=10); s.sendall(struct.pack(\"!H\",len(q))+q)
n=struct.unpack(\"!H\",s.recv(2))[0]; r=b\"\"
while len(r)<n: r+=s.recv(n-len(r))
assert r[-4:]==socket.inet_aton(\"$REMOTE_IP\"), r'"

# TCP through the NAT: downloads with checksums, upload.
for f in 1m 100m; do
  check "wget fetches $f from the remote with an identical checksum" bash -c "
    T=300 in_ns $G1 busybox wget -q -O - http://$REMOTE_IP:8080/$f.bin | sha256sum | cut -d' ' -f1 >$WORK/$f.got
    sha256sum <$WORK/www/$f.bin | cut -d' ' -f1 | cmp -s - $WORK/$f.got"
done
check "wget uploads 100 MiB with an identical checksum" bash -c "
  T=300 in_ns $G1 busybox wget -q -O - --post-file=$WORK/up.txt http://$REMOTE_IP:8080/ >$WORK/up.got
  sha256sum <$WORK/up.txt | cut -d' ' -f1 | cmp -s - $WORK/up.got"
check "a server that sends 200 KB and closes its side is received whole" \
  py "$G1" read-all $REMOTE_IP 7002 200000
check "TCP round trips to the remote" py "$G1" tcp-rr $REMOTE_IP 7000 50

# UDP and ping, to the remote and to the gateway.
check "UDP round trips to the remote" py "$G1" udp-rr $REMOTE_IP 7001 20
check "ping the remote" bash -c "T=20 in_ns $G1 busybox ping -c 3 -W 3 $REMOTE_IP >/dev/null"
check "ping the gateway" bash -c "T=20 in_ns $G1 busybox ping -c 3 -W 3 192.168.122.1 >/dev/null"

# The gateway is the host: services on all addresses answer, loopback-only ones do not.
check "the gateway reaches a host service bound to all addresses" py "$G1" tcp-rr 192.168.122.1 7100 5
check "the gateway does not reach a host service bound to 127.0.0.1" py "$G1" connect-fails 192.168.122.1 7101
check "127.0.0.1 in the guest is the guest's own loopback" py "$G1" connect-fails 127.0.0.1 7100

# Port forward from the host into a guest; the guest sees the gateway as the client.
bg_py "$G1" g1srv tcp-echo 0.0.0.0 22 || true
check "a port forward from the host reaches a server in the guest" \
  bash -c "T=20 in_ns $HOST_NS python3 $E2E_DIR/helpers.py tcp-rr 127.0.0.1 8022 5"
check "the forwarded connection comes from the gateway" \
  grep -q "peer 192.168.122.1:" "$WORK/g1srv.out"

# Guests reach each other across the switch.
check "two guests ping each other" bash -c "T=20 in_ns $G2 busybox ping -c 2 -W 3 $G1_IP >/dev/null"
check "two guests talk TCP" py "$G2" tcp-rr $G1_IP 22 5

# Leases survive a restart: the same MAC gets the same address again.
stop_pid "$SKIFF_PID"
check "skiff exits cleanly on SIGTERM" grep -q "network stopped" "$WORK/skiff.log"
check "the lease database holds both guests" bash -c "grep -q '$G2_IP' $WORK/state/leases.json"
check "the capture holds the DHCP exchange" bash -c "[ \$(stat -c %s $WORK/switch.pcap) -gt 1000 ]"
start_skiff skiff2 --tap tg3 --dns-upstream 127.0.0.1:5353 --state-dir "$WORK/state" || exit 1
guest_ns "$TAG-g3" tg3 "$G2_MAC" || exit 1
lease3=$(dhcp "$TAG-g3" tg3); log "g3 (g2's MAC): $lease3"
check "after a restart a MAC gets its old address" grep -q "lease ip=$G2_IP/" <<<"$lease3"

summary
