#!/usr/bin/env bash
# qemu-net.sh: one QEMU (TCG) guest booting the resources/ image, on three network
# attachments: skiff `--vhost-user`, skiff `--socket` (QEMU `-netdev stream`) and QEMU's own
# `-netdev user` (libslirp). Per boot the guest measures, with /proc/uptime:
#   fetch  wget of MIB MiB from an HTTP server on the host's 127.0.0.1, MiB/s (guest <- host)
#   ping   PINGS pings of the gateway at 10 ms intervals: median rtt of the replies and avg
#          rtt from ping's summary, ms
#          (skiff's gateway and slirp's 10.0.2.2 both answer echo requests themselves)
#   gets   GETS sequential HTTP GETs of a 100-byte file from the host, ms per request
# The host side is the same for all three: skiff runs with --host-loopback, so its gateway
# reaches 127.0.0.1 as slirp's 10.0.2.2 does. Everything (skiff, the HTTP server, QEMU)
# runs inside a network namespace made here: traffic stays on that namespace's loopback.
# Guest clock: the guest's kernel starts on jiffies (4 ms steps: rtts of 0.000 or 4/8 ms)
# and switches to the TSC a few seconds into the boot; the guest waits for that switch
# before it measures. Under TCG the kernel's TSC calibration against the PIT fails now
# and then ("Marking TSC unstable due to could not calculate TSC khz") and the guest stays
# on jiffies. So the guest is told the TSC's rate, tsc_early_khz=TSC_KHZ (TCG's guest TSC is
# the host's TSC; default: /proc/cpuinfo's "cpu MHz"), and a boot whose clocksource is not
# the TSC at the end is still not counted and is repeated (up to 3 boots per measurement).
# Attachments are interleaved within a round; ROUNDS rounds; prints a Markdown table of
# the medians and the ratios against -netdev user. Not a test.
# Usage (root): bench/qemu-net.sh [OUT.md]   env: ROUNDS (3) MIB (100) PINGS (200) GETS (200)
#   BOOT_SECS (240, the bound of one guest)
set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SKIFF=${SKIFF:-$ROOT/target/release/skiff}
ROUNDS=${ROUNDS:-3} MIB=${MIB:-100} PINGS=${PINGS:-200} GETS=${GETS:-200} BOOT_SECS=${BOOT_SECS:-240}
OUT=${1:-/dev/stdout}
[ "$(id -u)" = 0 ] || { echo "qemu-net.sh: run as root" >&2; exit 1; }
for t in qemu-system-x86_64 python3 ip base64; do
  command -v "$t" >/dev/null || { echo "qemu-net.sh: missing $t" >&2; exit 1; }
done
[ -x "$SKIFF" ] || { echo "qemu-net.sh: no $SKIFF" >&2; exit 1; }
paths=$("$ROOT/resources/build-guest.sh" --print-paths) || { echo "guest image build failed" >&2; exit 1; }
eval "$paths"
TSC_KHZ=${TSC_KHZ:-$(awk -F: '/^cpu MHz/ {printf "%d", $2 * 1000; exit}' /proc/cpuinfo)}

WORK=$(mktemp -d /tmp/qemu-net.XXXXXX)
NS=qnb$$
_PIDS=()
log() { printf '[qemu-net %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
cleanup() {
  local p
  for p in "${_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${_PIDS[@]}"; do
    for _ in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null
  done
  ip netns del "$NS" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
wait_for() { local s=$1; shift; for _ in $(seq $((s * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
stop_pid() {
  kill -TERM "$1" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null; wait "$1" 2>/dev/null
}

ip netns add "$NS" || exit 1
ip -n "$NS" link set lo up
mkdir -p "$WORK/www" "$WORK/state"
head -c $((MIB << 20)) /dev/urandom >"$WORK/www/data.bin"
head -c 100 /dev/urandom >"$WORK/www/small.bin"
PORT=8080
ip netns exec "$NS" python3 "$ROOT/tests/e2e/helpers.py" http-server 127.0.0.1 $PORT "$WORK/www" \
  >"$WORK/http.out" 2>&1 &
_PIDS+=($!)
wait_for 10 grep -q ready "$WORK/http.out" || { log "http server: $(cat "$WORK/http.out")"; exit 1; }
# DNS upstream: a closed port on the namespace's loopback (nothing here resolves names).
ip netns exec "$NS" env RUST_LOG=warn "$SKIFF" net serve --host-loopback \
  --vhost-user "$WORK/vu.sock" --socket "$WORK/net.sock" --dns-upstream 127.0.0.1:9 \
  --state-dir "$WORK/state" >"$WORK/skiff.log" 2>&1 &
SKIFF_PID=$!
_PIDS+=("$SKIFF_PID")
wait_for 10 test -S "$WORK/vu.sock" && wait_for 10 test -S "$WORK/net.sock" \
  || { log "skiff did not start: $(tail -5 "$WORK/skiff.log")"; exit 1; }

# guest_cmd GATEWAY: what the guest runs.
guest_cmd() {
  local gw=$1
  cat <<EOF
u() { cut -d' ' -f1 /proc/uptime; }
cs=/sys/devices/system/clocksource/clocksource0/current_clocksource
for i in \$(seq 50); do [ "\$(cat \$cs)" = tsc ] && break; sleep 0.1; done
t0=\$(u); wget -q -O /dev/null http://$gw:$PORT/data.bin || echo "bench: fetch failed"; t1=\$(u)
echo "bench: fetch \$t0 \$t1"
ping -c $PINGS -i 0.01 $gw >/tmp/ping.out
sed -n 's/^round-trip/bench: ping round-trip/p' /tmp/ping.out
echo "bench: ping median \$(sed -n 's/.* time=\([0-9.]*\) ms/\1/p' /tmp/ping.out | sort -n | sed -n "\$(( ($PINGS + 1) / 2 ))p")"
t2=\$(u); n=0; for i in \$(seq $GETS); do wget -q -O /dev/null http://$gw:$PORT/small.bin && n=\$((n+1)); done; t3=\$(u)
echo "bench: gets \$t2 \$t3 \$n"
echo "bench: clocksource \$(cat \$cs)"
EOF
}

# run_one KIND ROUND: one guest on KIND (vu|stream|user); appends a CSV row.
run_one() {
  local kind=$1 round=$2 mach=microvm,x-option-roms=off,rtc=off,acpi=off mem=() netdev=() gw=192.168.122.1
  local con="$WORK/$kind.$round.console"
  case $kind in
    vu)
      mach=$mach,memory-backend=mem
      mem=(-object memory-backend-memfd,id=mem,size=256M,share=on)
      netdev=(-chardev "socket,id=c0,path=$WORK/vu.sock" -netdev vhost-user,id=n0,chardev=c0) ;;
    stream) netdev=(-netdev "stream,id=n0,server=off,addr.type=unix,addr.path=$WORK/net.sock") ;;
    user) netdev=(-netdev user,id=n0); gw=10.0.2.2 ;;
  esac
  local start=$SECONDS attempt p
  for attempt in 1 2 3; do
  rm -f "$con"
  ip netns exec "$NS" timeout -k 5 "$BOOT_SECS" qemu-system-x86_64 -M "$mach" -accel tcg \
    -global virtio-mmio.force-legacy=false \
    -nodefaults -no-user-config -display none -no-reboot -m 256 "${mem[@]}" \
    -kernel "$SKIFF_GUEST_VMLINUX" -initrd "$SKIFF_GUEST_INITRAMFS" \
    -append "console=ttyS0 panic=-1 tsc_early_khz=$TSC_KHZ skiff.hostname=bench skiff.cmd=$(guest_cmd $gw | base64 -w0)" \
    -serial "file:$con" "${netdev[@]}" -device "virtio-net-device,netdev=n0,mac=52:54:00:5b:00:01" \
    </dev/null >"$WORK/$kind.$round.qemu.out" 2>&1 &
  p=$!
  _PIDS+=("$p")
  wait_for "$BOOT_SECS" grep -q "skiff-guest: exit=" "$con"
  stop_pid "$p"
  python3 - "$con" "$kind" "$round" "$MIB" "$((SECONDS - start))" >>"$WORK/rows.csv" <<'PY' && break

import re, sys
con, kind, rnd, mib, wall = sys.argv[1:]
t = open(con, errors="replace").read()
f = re.search(r"bench: fetch ([\d.]+) ([\d.]+)", t)
p = re.search(r"bench: ping round-trip min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+)", t)
pm = re.search(r"bench: ping median ([\d.]+)", t)
g = re.search(r"bench: gets ([\d.]+) ([\d.]+) (\d+)", t)
cs = re.search(r"bench: clocksource (\S+)", t)
if cs and cs.group(1) not in ("tsc", "tsc-early"):
    print("guest clocksource %s: times not trusted" % cs.group(1), file=sys.stderr)
    sys.exit(1)
if not f or "fetch failed" in t:
    sys.exit(1)
mibs = int(mib) / max(float(f.group(2)) - float(f.group(1)), 0.01)
ping = p.group(2) if p else "NA"
pmed = pm.group(1) if pm else "NA"
gets = "%.2f" % (1000 * (float(g.group(2)) - float(g.group(1))) / int(g.group(3))) if g and int(g.group(3)) else "NA"
print("%s,%s,%.2f,%s,%s,%s,%s" % (kind, rnd, mibs, pmed, ping, gets, wall))
PY
  log "$kind round $round, boot $attempt: no result"
  grep "skiff-guest\|bench\|tsc:" "$con" >&2; tail -3 "$WORK/$kind.$round.qemu.out" >&2
  done
  log "$kind round $round: $(grep "^$kind,$round," "$WORK/rows.csv" || echo "no result in 3 boots") ($((SECONDS - start)) s)"
}

echo "kind,round,fetch_mibs,ping_median_ms,ping_avg_ms,get_ms,wall_s" >"$WORK/rows.csv"
for r in $(seq "$ROUNDS"); do
  for k in vu stream user; do run_one "$k" "$r"; done
done
cp "$WORK/rows.csv" "${CSV:-/dev/null}" 2>/dev/null
python3 - "$WORK/rows.csv" "$ROUNDS" "$MIB" "$PINGS" "$GETS" >"$OUT" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
rounds, mib, pings, gets = sys.argv[2:]
names = {"vu": "skiff --vhost-user", "stream": "skiff --socket (-netdev stream)", "user": "QEMU -netdev user"}
cols = [("fetch_mibs", "fetch %s MiB, MiB/s" % mib),
        ("ping_median_ms", "ping gateway median rtt, ms (%s pings)" % pings),
        ("ping_avg_ms", "ping gateway avg rtt, ms"),
        ("get_ms", "HTTP GET, ms/request (%s sequential)" % gets)]
def med(kind, c):
    v = [float(r[c]) for r in rows if r["kind"] == kind and r[c] not in ("NA", "")]
    return (statistics.median(v), len(v)) if v else (None, 0)
print("| attachment | " + " | ".join(h for _, h in cols) + " | rounds |")
print("|---|" + "---|" * len(cols) + "---|")
for k in ("vu", "stream", "user"):
    vals = [med(k, c) for c, _ in cols]
    print("| %s | %s | %d |" % (names[k], " | ".join("NA" if m is None else "%.2f" % m for m, _ in vals),
                                 max(n for _, n in vals)))
print()
print("Ratios against QEMU -netdev user (medians; throughput: higher is better, times: lower is better):")
for k in ("vu", "stream"):
    parts = []
    for c, h in cols:
        a, _ = med(k, c); b, _ = med("user", c)
        parts.append("%s %s" % (c, "NA" if a is None or not b else "%.2fx" % (a / b)))
    print("- %s / -netdev user: %s" % (names[k], ", ".join(parts)))
PY
