#!/usr/bin/env bash
# nat-peers.sh: skiff's NAT against the NAT engines it is compared with, on this host.
# (skiff's copy of the shared baseline script, with a "skiff" engine added.)
#
# For each engine and MTU it makes a fresh network namespace ($NS, default "client"),
# attaches it to the engine and measures, from inside the namespace, against servers
# that run on the host:
#   tcp_up_gbps / tcp_down_gbps  iperf3 -c ADDR -t $IPERF_TIME, single stream (-R for down)
#   rr_median_us / rr_p99_us      2000 sequential 64-byte request/response over ONE TCP
#                                 connection (TCP_NODELAY both ends), python3 both ends
#   conn_per_s                    500 sequential connect + 1-byte echo + close
#   udp_rr_median_us              1000 sequential 60-byte UDP request/response
#   pinned_*                      the three latency tests again with the client, the engine
#                                 process and the echo servers all pinned to CPU $PIN_CPU:
#                                 no cross-CPU wakeups, so this is closer to "CPU cost per
#                                 transaction" and much less noisy than the unpinned numbers
#                                 (a cross-CPU wakeup costs tens of microseconds in this VM).
# Notes per run: iperf3 retransmits, seconds with <5% of the best 1-s interval ("stalled_s"),
# per-second min..max, UDP p99 and loss, and the effective MTU if it differs.
#
# Engines and the address that reaches the host from inside the namespace:
#   skiff       skiff net serve --tap skb0 --mtu MTU --host-loopback (TAP moved into the
#               namespace, address by busybox udhcpc); the gateway 192.168.122.1 maps to the
#               host's 127.0.0.1 (--host-loopback), like pasta's and slirp4netns' defaults.
#   pasta       pasta --runas 0 --config-net -f -4 -m MTU --netns /run/netns/NS
#                     -t none -u none -T none -U none
#               namespace gets the host's own address (192.0.2.2/24) on a tap "eth0";
#               the gateway address (192.0.2.1 here) is mapped by pasta to the host's
#               127.0.0.1 (default "map gateway" behaviour; --no-map-gw would turn it off).
#   slirp4netns slirp4netns --configure --mtu=MTU --netns-type=path /run/netns/NS tap0
#               namespace 10.0.2.100/24 on tap0; 10.0.2.2 maps to the host's 127.0.0.1
#               (host loopback is allowed because --disable-host-loopback is NOT given).
#   kernel-nat  veth pair (host np-h 10.201.0.1/30, namespace np-c 10.201.0.2/30),
#               ip_forward=1, nft table "ip natpeers": masquerade for the namespace's
#               subnet going out (not exercised: no traffic leaves the host), and DNAT of
#               10.201.0.1:{bench ports} -> 127.0.0.1 with route_localnet=1 on np-h, so
#               the same loopback-bound servers are reached through kernel conntrack NAT
#               (the kernel twin of "gateway -> host loopback").
# All servers listen on 127.0.0.1 only.
#
# Environment knobs: ENGINES ("pasta slirp4netns kernel-nat"), MTUS ("1500 65520"),
# IPERF_TIME (5), NS (client), PORT_BASE (47100), OUT_CSV (unset: no CSV), PYTHON,
# KNET (10.201.0, kernel-nat /30 prefix), PIN_CPU (0; empty = skip the pinned pass).
# Run as root. Needs iperf3, python3, iproute2, util-linux (taskset, flock); pasta
# (package passt), slirp4netns and nft (package nftables; installed with apt if missing)
# for the respective engines.
#
# Everything created (namespace, veth, nft table, processes, sysctls) is recorded in
# /run/nat-peers/state and removed on exit (trap) and, if a previous run was SIGKILLed,
# at the start of the next run. Processes are killed only by recorded PID (+ start time).
set -u -o pipefail

NS=${NS:-client}
ENGINES=${ENGINES:-"skiff pasta slirp4netns kernel-nat"}
SKIFF=${SKIFF:-$(cd "$(dirname "$0")/.." && pwd)/target/release/skiff}
UDHCPC_SCRIPT=$(cd "$(dirname "$0")/.." && pwd)/tests/e2e/udhcpc.script
MTUS=${MTUS:-"1500 65520"}
IPERF_TIME=${IPERF_TIME:-5}
PORT_BASE=${PORT_BASE:-47100}
KNET=${KNET:-10.201.0}
PIN_CPU=${PIN_CPU-0}   # CPU for the pinned latency pass; empty string skips it
RR_N=2000; RR_SIZE=64; CONN_N=500; UDP_N=1000; UDP_SIZE=60
STATE_DIR=/run/nat-peers
STATE=$STATE_DIR/state
NFT_TABLE=natpeers

log() { printf '[nat-peers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
for t in ip timeout iperf3 flock; do command -v "$t" >/dev/null || die "missing $t"; done
if [ -z "${PYTHON:-}" ]; then
  if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=$(command -v python3) || die "no python3"; fi
fi

mkdir -p "$STATE_DIR"
exec 9>"$STATE_DIR/lock"
flock -n 9 || die "another nat-peers.sh holds $STATE_DIR/lock"

WORK=$(mktemp -d /tmp/nat-peers.XXXXXX) || die "mktemp failed"
CUR_PID=""          # bounded foreground step in flight
ENGINE_PID=""       # engine process of the current config
SERVER_PIDS=()      # echo servers
IPERF_PID=""
declare -a NOTES=()

# ---------- state / process helpers -------------------------------------------------
st_add() { echo "$*" >>"$STATE"; }
st_del() { [ -f "$STATE" ] && { grep -vxF -- "$*" "$STATE" >"$STATE.tmp"; mv -f "$STATE.tmp" "$STATE"; }; return 0; }

proc_field() { # pid n -> nth field after "(comm)" (1 = state, 20 = starttime)
  local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }; set -- "$2" $s; shift "$1"; echo "$1"
}
proc_start() { proc_field "$1" 20; }
proc_alive() { local st; st=$(proc_field "$1" 1) || return 1; [ "$st" != Z ] && [ "$st" != X ]; }

track_pid() { local p=$1 s; s=$(proc_start "$p") || s=gone; st_add "pid $p $s"; }

kill_pid() { # pid [expected-starttime]: TERM, bounded wait, KILL; only if the PID's start
             # time matches the one recorded when we started it (guards against PID reuse)
  local p=$1 want=${2:-} s i
  [ -n "$p" ] || return 0
  s=$(proc_start "$p") || s=""
  if [ -z "$want" ]; then want=$(grep -m1 "^pid $p " "$STATE" 2>/dev/null | cut -d' ' -f3); fi
  if [ -n "$s" ] && [ "$s" = "$want" ]; then   # same PID *and* same start time: still ours
    kill -TERM "$p" 2>/dev/null
    for i in $(seq 30); do proc_alive "$p" || break; sleep 0.1; done
    proc_alive "$p" && kill -KILL "$p" 2>/dev/null
  fi
  wait "$p" 2>/dev/null
  [ -f "$STATE" ] && { grep -v "^pid $p " "$STATE" >"$STATE.tmp"; mv -f "$STATE.tmp" "$STATE"; }
  return 0
}

# Run a step with a hard time bound, in the background so traps fire promptly.
bounded() { local t=$1; shift; timeout -k 3 "$t" "$@" 9>&- & CUR_PID=$!; wait "$CUR_PID"; local rc=$?; CUR_PID=""; return $rc; }

sysctl_set() { # key value; remember the original once
  local k=$1 v=$2 o
  o=$(sysctl -n "$k" 2>/dev/null) || return 1
  grep -q "^sysctl $k " "$STATE" 2>/dev/null || st_add "sysctl $k $o"
  sysctl -qw "$k=$v"
}

undo_state() { # tear down every resource listed in $STATE (ours, or a dead previous run's)
  [ -f "$STATE" ] || return 0
  local kind a b
  while read -r kind a b; do
    case $kind in
      pid) local s; s=$(proc_start "$a") && [ "$s" = "$b" ] && kill_pid "$a" "$b" ;;
    esac
  done <"$STATE"
  while read -r kind a b; do
    case $kind in
      ns) ip netns del "$a" 2>/dev/null ;;
      link) ip link del "$a" 2>/dev/null ;;
      nft) command -v nft >/dev/null && nft delete table "$a" "$b" 2>/dev/null ;;
    esac
  done <"$STATE"
  while read -r kind a b; do
    [ "$kind" = sysctl ] && sysctl -qw "$a=$b" 2>/dev/null
  done <"$STATE"
  rm -f "$STATE" "$STATE.tmp"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  [ -n "$CUR_PID" ] && kill -TERM "$CUR_PID" 2>/dev/null && wait "$CUR_PID" 2>/dev/null
  engine_down
  stop_servers
  undo_state
  rm -rf "$WORK"
  exit $rc
}

# ---------- python helpers ----------------------------------------------------------
cat >"$WORK/nb.py" <<'PYEOF'
import json, math, socket, socketserver, statistics, sys, time

def pct(v, p):
    s = sorted(v)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]

def tcp_server(host, port):
    class H(socketserver.BaseRequestHandler):
        def handle(self):
            s = self.request
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                try:
                    d = s.recv(65536)
                    if not d:
                        return
                    s.sendall(d)
                except OSError:
                    return
    class S(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        block_on_close = False
        request_queue_size = 1024
    srv = S((host, int(port)), H)
    print("ready", flush=True)
    srv.serve_forever()

def udp_server(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, int(port)))
    print("ready", flush=True)
    while True:
        try:
            d, a = s.recvfrom(65536)
            s.sendto(d, a)
        except OSError:
            pass

def recv_exact(s, n):
    got = 0
    while got < n:
        d = s.recv(n - got)
        if not d:
            raise OSError("eof")
        got += len(d)

def probe(host, port, deadline):
    end = time.time() + float(deadline)
    while True:
        try:
            s = socket.create_connection((host, int(port)), timeout=2)
            s.sendall(b"p"); recv_exact(s, 1); s.close()
            print("ok"); return
        except OSError as e:
            if time.time() > end:
                print("fail %s" % e); sys.exit(1)
            time.sleep(0.2)

def tcp_rr(host, port, n, size, warm=50):
    n, size = int(n), int(size)
    s = socket.create_connection((host, int(port)), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"r" * size
    lat = []
    pc = time.perf_counter_ns
    for i in range(warm + n):
        t0 = pc(); s.sendall(msg); recv_exact(s, size); t1 = pc()
        if i >= warm:
            lat.append((t1 - t0) / 1000)
    s.close()
    print(json.dumps({"median_us": statistics.median(lat), "p99_us": pct(lat, 99), "n": n}))

def conn_rate(host, port, n):
    n = int(n); fails = 0; err = ""
    t0 = time.perf_counter()
    for _ in range(n):
        try:
            s = socket.create_connection((host, int(port)), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(b"c"); recv_exact(s, 1); s.close()
        except OSError as e:
            fails += 1; err = str(e)
    dt = time.perf_counter() - t0
    print(json.dumps({"conn_per_s": (n - fails) / dt, "fails": fails, "elapsed_s": dt, "err": err}))

def udp_rr(host, port, n, size, warm=20, tmo=0.5):
    n, size = int(n), int(size)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host, int(port))); s.settimeout(tmo)
    lat = []; lost = 0
    pc = time.perf_counter_ns
    for i in range(warm + n):
        msg = i.to_bytes(4, "big") + b"u" * (size - 4)
        t0 = pc(); s.send(msg)
        while True:
            try:
                d = s.recv(2048)
            except OSError:  # timeout or ICMP refusal
                if i >= warm: lost += 1
                break
            if d[:4] == msg[:4]:
                if i >= warm: lat.append((pc() - t0) / 1000)
                break
        if lost > 50:
            break
    out = {"lost": lost, "n": n}
    if lat:
        out.update(median_us=statistics.median(lat), p99_us=pct(lat, 99))
    print(json.dumps(out))

def iperf(path):
    try:
        j = json.load(open(path))
    except Exception as e:
        print("NA parse-error"); return
    if "error" in j and "end" not in j:
        print("NA %s" % j["error"].replace(" ", "_")); return
    try:
        e = j["end"]
        bps = e["sum_received"]["bits_per_second"]
        rt = e.get("sum_sent", {}).get("retransmits", "?")
        iv = [i["sum"]["bits_per_second"] / 1e9 for i in j.get("intervals", [])
              if i["sum"].get("seconds", 1) > 0.5]
        mx = max(iv) if iv else 0
        stalls = sum(1 for v in iv if v < 0.05 * mx)
        print("%.2f retr=%s,stalled_s=%d,per_s=%.2f..%.2f" % (bps / 1e9, rt, stalls,
              min(iv) if iv else 0, mx))
    except Exception as ex:
        print("NA %s" % j.get("error", "no-end").replace(" ", "_"))

def get(path, key, fmt):
    try:
        v = json.load(open(path))[key]
        print(fmt % v)
    except Exception:
        print("NA")

if __name__ == "__main__":
    f = globals()[sys.argv[1].replace("-", "_")]
    f(*sys.argv[2:])
PYEOF

# ---------- servers -----------------------------------------------------------------
port_free() { # proto port
  local o; o=$(ss -Hn -l"${1}" "sport = :$2" 2>/dev/null) || return 0; [ -z "$o" ]
}
pick_ports() {
  local b=$PORT_BASE i
  for i in $(seq 0 50); do
    IPERF_PORT=$((b+1)); TCP_PORT=$((b+2)); UDP_PORT=$((b+3))
    if port_free t $IPERF_PORT && port_free t $TCP_PORT && port_free u $UDP_PORT; then return 0; fi
    b=$((b+10))
  done
  die "no free port triple near $PORT_BASE"
}

wait_file_ready() { # file pid secs
  local i; for i in $(seq $(( $3 * 10 ))); do
    grep -q ready "$1" 2>/dev/null && return 0
    proc_alive "$2" || return 1
    sleep 0.1
  done; return 1
}

start_servers() {
  "$PYTHON" "$WORK/nb.py" tcp-server 127.0.0.1 "$TCP_PORT" >"$WORK/tcpsrv.out" 2>&1 9>&- &
  local p=$!; SERVER_PIDS+=("$p"); track_pid "$p"
  wait_file_ready "$WORK/tcpsrv.out" "$p" 10 || die "tcp echo server failed: $(cat "$WORK/tcpsrv.out")"
  "$PYTHON" "$WORK/nb.py" udp-server 127.0.0.1 "$UDP_PORT" >"$WORK/udpsrv.out" 2>&1 9>&- &
  p=$!; SERVER_PIDS+=("$p"); track_pid "$p"
  wait_file_ready "$WORK/udpsrv.out" "$p" 10 || die "udp echo server failed: $(cat "$WORK/udpsrv.out")"
}
stop_servers() { local p; for p in "${SERVER_PIDS[@]}"; do kill_pid "$p"; done; SERVER_PIDS=(); stop_iperf; }

start_iperf() {
  iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" --idle-timeout 60 >"$WORK/iperf-srv.log" 2>&1 9>&- &
  IPERF_PID=$!; track_pid "$IPERF_PID"
  local i; for i in $(seq 50); do
    [ -n "$(ss -Hntl "sport = :$IPERF_PORT" 2>/dev/null)" ] && return 0
    proc_alive "$IPERF_PID" || break; sleep 0.1
  done
  log "iperf3 server did not come up: $(tail -3 "$WORK/iperf-srv.log")"; return 1
}
stop_iperf() { [ -n "$IPERF_PID" ] && kill_pid "$IPERF_PID"; IPERF_PID=""; }

# ---------- engines -----------------------------------------------------------------
HOST_ADDR=""; ENGINE_DESC=""
ns_create() {
  if [ -e "/run/netns/$NS" ]; then
    die "namespace $NS exists and was not made by this script (delete it or set NS=...)"
  fi
  ip netns add "$NS" || return 1
  st_add "ns $NS"
}
ns_wait_route() { # engine pid (or empty), secs -> sets NS_IF
  local i r; for i in $(seq $(( $2 * 10 ))); do
    r=$(ip -n "$NS" -4 route show default 2>/dev/null)
    if [ -n "$r" ] && ip -n "$NS" -4 -o addr show scope global 2>/dev/null | grep -q inet; then
      NS_IF=$(awk '{for(i=1;i<NF;i++) if($i=="dev") print $(i+1)}' <<<"$r" | head -1)
      NS_GW=$(awk '{for(i=1;i<NF;i++) if($i=="via") print $(i+1)}' <<<"$r" | head -1)
      return 0
    fi
    [ -n "$1" ] && ! proc_alive "$1" && return 1
    sleep 0.1
  done; return 1
}

up_skiff() {
  local mtu=$1 i
  [ -x "$SKIFF" ] || { NOTES+=("skiff: $SKIFF missing (cargo build --release)"); return 1; }
  command -v busybox >/dev/null || { NOTES+=("skiff: busybox missing"); return 1; }
  ip link show skb0 >/dev/null 2>&1 && die "interface skb0 exists and was not made by this run"
  ns_create || return 1
  local cmd=("$SKIFF" net serve --tap skb0 --mtu "$mtu" --host-loopback --state-dir "$WORK/skiff-state")
  ENGINE_DESC="${cmd[*]}"
  RUST_LOG=warn "${cmd[@]}" >"$WORK/skiff.out" 2>&1 9>&- &
  ENGINE_PID=$!; track_pid "$ENGINE_PID"
  for i in $(seq 50); do ip link show skb0 >/dev/null 2>&1 && break; sleep 0.1; done
  ip link set skb0 netns "$NS" || { log "skiff: no tap: $(tail -3 "$WORK/skiff.out")"; return 1; }
  ip -n "$NS" link set skb0 up
  bounded 30 ip netns exec "$NS" busybox udhcpc -i skb0 -n -q -f -t 5 -T 2 -s "$UDHCPC_SCRIPT" >/dev/null 2>&1 \
    || { log "skiff: no lease: $(tail -3 "$WORK/skiff.out")"; return 1; }
  ns_wait_route "$ENGINE_PID" 10 || return 1
  HOST_ADDR=$NS_GW
}

up_pasta() {
  local mtu=$1
  command -v pasta >/dev/null || { NOTES+=("pasta: not installed"); return 1; }
  ns_create || return 1
  local cmd=(pasta --runas 0 --config-net -f -4 -m "$mtu" --netns "/run/netns/$NS"
             -t none -u none -T none -U none -l "$WORK/pasta.log")
  ENGINE_DESC="${cmd[*]}"
  "${cmd[@]}" >"$WORK/pasta.out" 2>&1 9>&- &
  ENGINE_PID=$!; track_pid "$ENGINE_PID"
  ns_wait_route "$ENGINE_PID" 10 || { log "pasta failed: $(grep -v syslog "$WORK/pasta.out" | tail -3)"; return 1; }
  HOST_ADDR=$NS_GW   # pasta maps its gateway address to the host's loopback
}

up_slirp4netns() {
  local mtu=$1
  command -v slirp4netns >/dev/null || { NOTES+=("slirp4netns: not installed"); return 1; }
  ns_create || return 1
  local cmd=(slirp4netns --configure "--mtu=$mtu" --netns-type=path "/run/netns/$NS" tap0)
  ENGINE_DESC="${cmd[*]}"
  "${cmd[@]}" >"$WORK/slirp.out" 2>&1 9>&- &
  ENGINE_PID=$!; track_pid "$ENGINE_PID"
  ns_wait_route "$ENGINE_PID" 10 || { log "slirp4netns failed: $(tail -3 "$WORK/slirp.out")"; return 1; }
  HOST_ADDR=10.0.2.2  # slirp's host alias -> 127.0.0.1 unless --disable-host-loopback
}

ensure_nft() {
  command -v nft >/dev/null && return 0
  log "nft missing; trying apt-get install nftables"
  bounded 180 apt-get install -y -qq nftables >/dev/null 2>&1 \
    || { bounded 120 apt-get update -qq >/dev/null 2>&1; bounded 180 apt-get install -y -qq nftables >/dev/null 2>&1; }
  command -v nft >/dev/null
}

up_kernel-nat() {
  local mtu=$1
  ensure_nft || { NOTES+=("kernel-nat: nft not available"); return 1; }
  ip link show np-h >/dev/null 2>&1 && die "interface np-h exists and was not made by this run"
  ns_create || return 1
  ip link add np-h mtu "$mtu" type veth peer name np-c mtu "$mtu" netns "$NS" || return 1
  st_add "link np-h"
  ip addr add "$KNET.1/30" dev np-h && ip link set np-h up || return 1
  ip -n "$NS" addr add "$KNET.2/30" dev np-c && ip -n "$NS" link set np-c up \
    && ip -n "$NS" link set lo up && ip -n "$NS" route add default via "$KNET.1" || return 1
  sysctl_set net.ipv4.ip_forward 1 || return 1
  sysctl_set "net.ipv4.conf.np-h.route_localnet" 1 || return 1
  nft delete table ip $NFT_TABLE 2>/dev/null
  st_add "nft ip $NFT_TABLE"
  timeout 20 nft -f - <<EOF || return 1
table ip $NFT_TABLE {
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "np-h" ip daddr $KNET.1 tcp dport { $IPERF_PORT, $TCP_PORT } dnat to 127.0.0.1
    iifname "np-h" ip daddr $KNET.1 udp dport $UDP_PORT dnat to 127.0.0.1
  }
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr $KNET.0/30 oifname != "np-h" masquerade
  }
}
EOF
  ENGINE_DESC="veth np-h/np-c mtu $mtu, ip_forward=1, route_localnet=1 on np-h, nft ip $NFT_TABLE: dnat $KNET.1:{ports}->127.0.0.1 + masquerade $KNET.0/30"
  ENGINE_PID=""
  ns_wait_route "" 5 || return 1
  HOST_ADDR=$KNET.1
}

engine_down() {
  [ -n "$ENGINE_PID" ] && kill_pid "$ENGINE_PID"; ENGINE_PID=""
  if grep -qx "ns $NS" "$STATE" 2>/dev/null; then ip netns del "$NS" 2>/dev/null; st_del "ns $NS"; fi
  if grep -qx "link np-h" "$STATE" 2>/dev/null; then
    ip link del np-h 2>/dev/null; st_del "link np-h"
    # route_localnet on np-h went away with the link
    grep -v "^sysctl net.ipv4.conf.np-h.route_localnet " "$STATE" >"$STATE.tmp"; mv -f "$STATE.tmp" "$STATE"
  fi
  if grep -qx "nft ip $NFT_TABLE" "$STATE" 2>/dev/null; then nft delete table ip $NFT_TABLE 2>/dev/null; st_del "nft ip $NFT_TABLE"; fi
  local k v
  while read -r _ k v; do sysctl -qw "$k=$v" 2>/dev/null; st_del "sysctl $k $v"; done < <(grep "^sysctl " "$STATE" 2>/dev/null)
  HOST_ADDR=""; return 0
}

# ---------- measurement -------------------------------------------------------------
nsrun() { local t=$1; shift; bounded "$t" ip netns exec "$NS" "$@"; }
pyget() { "$PYTHON" "$WORK/nb.py" get "$@"; }

# Latency tests; $1 = CPU to pin the client to ("" = unpinned). Sets rrm rrp cps udpm, appends to note.
lat_tests() {
  local cpu=$1 pre=() a tag=""
  [ -n "$cpu" ] && { pre=(taskset -c "$cpu"); tag="pin$cpu-"; }
  rrm=NA rrp=NA cps=NA udpm=NA
  if nsrun 60 "${pre[@]}" "$PYTHON" "$WORK/nb.py" tcp-rr "$HOST_ADDR" "$TCP_PORT" $RR_N $RR_SIZE >"$WORK/rr.json" 2>"$WORK/rr.err"; then
    rrm=$(pyget "$WORK/rr.json" median_us %.1f); rrp=$(pyget "$WORK/rr.json" p99_us %.1f)
  else note+=" ${tag}tcp-rr-failed($(tail -1 "$WORK/rr.err"))"; fi
  if nsrun 90 "${pre[@]}" "$PYTHON" "$WORK/nb.py" conn-rate "$HOST_ADDR" "$TCP_PORT" $CONN_N >"$WORK/cr.json" 2>"$WORK/cr.err"; then
    cps=$(pyget "$WORK/cr.json" conn_per_s %.0f)
    a=$(pyget "$WORK/cr.json" fails %d); [ "$a" != 0 ] && note+=" ${tag}conn-fails=$a($(pyget "$WORK/cr.json" err %s))"
  else note+=" ${tag}conn-rate-failed($(tail -1 "$WORK/cr.err"))"; fi
  if nsrun 90 "${pre[@]}" "$PYTHON" "$WORK/nb.py" udp-rr "$HOST_ADDR" "$UDP_PORT" $UDP_N $UDP_SIZE >"$WORK/udp.json" 2>"$WORK/udp.err"; then
    udpm=$(pyget "$WORK/udp.json" median_us %.1f)
    a=$(pyget "$WORK/udp.json" lost %d); [ "$a" != 0 ] && note+=" ${tag}udp-lost=$a"
    note+=" ${tag}udp-p99=$(pyget "$WORK/udp.json" p99_us %.1f)us"
  else note+=" ${tag}udp-rr-failed($(tail -1 "$WORK/udp.err"))"; fi
}

# Pin (or with "" unpin) the engine and the echo servers, all threads.
pin_all() {
  local cpus=${1:-0-$(( $(nproc) - 1 ))} p
  for p in $ENGINE_PID "${SERVER_PIDS[@]}"; do
    [ -n "$p" ] && taskset -a -p -c "$cpus" "$p" >/dev/null 2>&1
  done
  return 0
}

measure() { # engine mtu -> appends CSV row
  local eng=$1 mtu=$2 up=NA down=NA rrm=NA rrp=NA cps=NA udpm=NA note="" r a rt
  local tag="$eng/$mtu"
  local eff; eff=$(ip -n "$NS" -o link show dev "$NS_IF" 2>/dev/null | sed -n 's/.* mtu \([0-9]*\).*/\1/p')
  [ "$eff" = "$mtu" ] || note+=" effective-mtu=$eff"
  if ! nsrun 15 "$PYTHON" "$WORK/nb.py" probe "$HOST_ADDR" "$TCP_PORT" 8 >"$WORK/probe.out" 2>&1; then
    NOTES+=("$tag: no TCP connectivity to $HOST_ADDR:$TCP_PORT ($(tail -1 "$WORK/probe.out")); skipped")
    echo "$eng,$mtu,NA,NA,NA,NA,NA,NA,NA,NA,NA,NA" >>"$WORK/results.csv"; return
  fi
  if start_iperf; then
    for d in up down; do
      local extra=(); [ $d = down ] && extra=(-R)
      nsrun $((IPERF_TIME + 25)) iperf3 -c "$HOST_ADDR" -p "$IPERF_PORT" -t "$IPERF_TIME" "${extra[@]}" \
        -J --connect-timeout 5000 >"$WORK/iperf-$d.json" 2>"$WORK/iperf-$d.err"
      read -r r rt < <("$PYTHON" "$WORK/nb.py" iperf "$WORK/iperf-$d.json")
      if [ "$r" = NA ]; then note+=" iperf-$d:$rt"; else note+=" $d[$rt]"; fi
      [ $d = up ] && up=$r || down=$r
      sleep 0.5
    done
    stop_iperf
  else
    note+=" iperf-server-failed"
  fi
  lat_tests ""
  local u_rrm=$rrm u_rrp=$rrp u_cps=$cps u_udpm=$udpm p_rrm=NA p_rrp=NA p_cps=NA p_udpm=NA
  if [ -n "$PIN_CPU" ]; then
    pin_all "$PIN_CPU"
    lat_tests "$PIN_CPU"
    p_rrm=$rrm p_rrp=$rrp p_cps=$cps p_udpm=$udpm
    pin_all ""
  fi
  rrm=$u_rrm rrp=$u_rrp cps=$u_cps udpm=$u_udpm
  echo "$eng,$mtu,$up,$down,$rrm,$rrp,$cps,$udpm,$p_rrm,$p_rrp,$p_cps,$p_udpm" >>"$WORK/results.csv"
  NOTES+=("$tag: host via $HOST_ADDR (ns if $NS_IF);$note")
  log "$tag: up=$up down=$down rr=$rrm/$rrp us conn/s=$cps udp=$udpm us; pinned: rr=$p_rrm/$p_rrp conn/s=$p_cps udp=$p_udpm;$note"
}

# ---------- main --------------------------------------------------------------------
trap cleanup EXIT
trap 'exit 130' INT; trap 'exit 143' TERM; trap 'exit 129' HUP

for eng in $ENGINES; do
  declare -F "up_$eng" >/dev/null || die "unknown engine '$eng' (known: skiff pasta slirp4netns kernel-nat)"
done
for mtu in $MTUS; do [[ $mtu =~ ^[0-9]+$ ]] && [ "$mtu" -ge 576 ] && [ "$mtu" -le 65520 ] || die "bad MTU '$mtu'"; done
[[ $IPERF_TIME =~ ^[0-9]+$ ]] || die "bad IPERF_TIME"
[ -z "$PIN_CPU" ] || [[ $PIN_CPU =~ ^[0-9]+$ && $PIN_CPU -lt $(nproc) ]] || die "bad PIN_CPU '$PIN_CPU'"
if [ -s "$STATE" ]; then log "cleaning up after a previous run that did not finish"; undo_state; fi
: >"$STATE"
[ -e "/run/netns/$NS" ] && die "namespace $NS exists and was not made by this script (delete it or set NS=...)"
pick_ports
start_servers
echo "engine,mtu,tcp_up_gbps,tcp_down_gbps,rr_median_us,rr_p99_us,conn_per_s,udp_rr_median_us,pinned_rr_median_us,pinned_rr_p99_us,pinned_conn_per_s,pinned_udp_rr_median_us" >"$WORK/results.csv"

log "host: $(uname -r), $(nproc) CPUs; python $(timeout 5 "$PYTHON" -V 2>&1 | cut -d' ' -f2); iperf3 $(timeout 5 iperf3 -v 2>/dev/null | head -1 | cut -d' ' -f2)"
log "passt $(timeout 5 dpkg-query -W -f='${Version}' passt 2>/dev/null); $(timeout 5 slirp4netns --version 2>/dev/null 9>&- | head -1)"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average $LOAD0"
log "servers on 127.0.0.1: iperf3 tcp/$IPERF_PORT, echo tcp/$TCP_PORT, echo udp/$UDP_PORT"

for eng in $ENGINES; do
  for mtu in $MTUS; do
    log "=== $eng mtu $mtu"
    if "up_$eng" "$mtu"; then
      log "engine: $ENGINE_DESC; host reached at $HOST_ADDR"
      measure "$eng" "$mtu"
    else
      NOTES+=("$eng/$mtu: engine setup failed")
      echo "$eng,$mtu,NA,NA,NA,NA,NA,NA,NA,NA,NA,NA" >>"$WORK/results.csv"
    fi
    engine_down
  done
done

echo
echo "Notes:"
for n in "${NOTES[@]}"; do echo "  $n"; done
echo
echo "pinned_* columns: latency tests repeated with client, engine and echo servers all pinned to CPU ${PIN_CPU:-(skipped)} (no cross-CPU wakeups)."
echo "Load average at start: $LOAD0; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "Summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, iperf3 -t $IPERF_TIME single stream; rr=${RR_N}x${RR_SIZE}B over one TCP conn; conn=${CONN_N}x connect+1B echo+close; udp=${UDP_N}x${UDP_SIZE}B):"
awk -F, '{printf "%-12s %6s %12s %14s %13s %10s %11s %17s | %19s %16s %17s %23s\n", $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12}' "$WORK/results.csv"
if [ -n "${OUT_CSV:-}" ]; then
  cp "$WORK/results.csv" "$OUT_CSV" && log "CSV written to $OUT_CSV"
fi
