#!/usr/bin/env bash
# Real Linux guests on `skiff net serve --vhost-user` (TESTING.md, layer 3): QEMU (TCG) boots
# the resources/ kernel and initramfs with a vhost-user-net device whose backend is skiff, so
# a real Linux virtio-net driver meets skiff's virtqueue code (the same NetQueueLogic as the
# in-VMM device). Checked: a guest gets a lease, resolves a name through the gateway and
# fetches a page and 100 MiB (identical sha256) from the remote namespace; two vhost-user
# guests ping each other; a vhost-user guest and a --socket guest ping each other; a guest
# that resets its device (driver unbind/bind) gets a lease and a page again; SIGKILL of one
# QEMU leaves the other guest working and a new QEMU on the same socket gets a lease.
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 setpriv python3 base64 || exit 1
paths=$("$ROOT/resources/build-guest.sh" --print-paths) || { log "guest image build failed"; exit 1; }
eval "$paths"
topology || exit 1

mkdir -p "$WORK/www"
echo "hello from the remote namespace" >"$WORK/www/page.html"
bg_py "$HOST_NS" dns dns-server 127.0.0.1 5353 www.example.test=$REMOTE_IP || exit 1
bg_py "$REMOTE_NS" http http-server $REMOTE_IP 8080 "$WORK/www" || exit 1

MAC_A=52:54:00:5a:00:01; IP_A=192.168.122.11
MAC_B=52:54:00:5a:00:02; IP_B=192.168.122.12
MAC_C=52:54:00:5a:00:03; IP_C=192.168.122.13

# skiff as nobody: its sockets and state live in a directory nobody owns.
RUN=$WORK/run; mkdir -p "$RUN"; chown nobody "$RUN"
SKIFF_AS="setpriv --reuid nobody --regid nogroup --clear-groups" \
  start_skiff skiff --vhost-user "$RUN/vu1.sock" --vhost-user "$RUN/vu2.sock" \
  --socket "$RUN/net.sock" --dns-upstream 127.0.0.1:5353 --state-dir "$RUN/state" \
  --dhcp-host "$MAC_A,$IP_A,guesta" --dhcp-host "$MAC_B,$IP_B,guestb" \
  --dhcp-host "$MAC_C,$IP_C,guestc" || exit 1
wait_for 10 test -S "$RUN/vu1.sock" && wait_for 10 test -S "$RUN/vu2.sock" || { log "no vhost-user sockets"; exit 1; }

# qemu NAME SECS NETDEV-ARGS MAC CMD: a guest in the background (QEMU_PID); console in
# $WORK/NAME.console. NETDEV-ARGS is "vu:SOCK" (vhost-user) or "stream:SOCK".
qemu() {
  local name=$1 secs=$2 net=$3 mac=$4 cmd=$5
  local sock=${net#*:} mach=microvm,x-option-roms=off,rtc=off,acpi=off netdev mem=()
  case $net in
    vu:*)
      mach=$mach,memory-backend=mem
      mem=(-object memory-backend-memfd,id=mem,size=256M,share=on)
      netdev=(-chardev "socket,id=c0,path=$sock" -netdev vhost-user,id=n0,chardev=c0) ;;
    stream:*)
      netdev=(-netdev "stream,id=n0,server=off,addr.type=unix,addr.path=$sock") ;;
  esac
  # virtio-mmio is legacy by default: the backend wants virtio 1 (12-byte headers).
  timeout -k 5 "$secs" qemu-system-x86_64 -M "$mach" -accel tcg -global virtio-mmio.force-legacy=false \
    -nodefaults -no-user-config -display none -no-reboot -m 256 "${mem[@]}" \
    -kernel "$SKIFF_GUEST_VMLINUX" -initrd "$SKIFF_GUEST_INITRAMFS" \
    -append "console=ttyS0 panic=-1 skiff.hostname=$name skiff.cmd=$(printf '%s' "$cmd" | base64 -w0)" \
    -serial "file:$WORK/$name.console" \
    "${netdev[@]}" -device "virtio-net-device,netdev=n0,mac=$mac" \
    </dev/null >"$WORK/$name.qemu.out" 2>&1 &
  QEMU_PID=$!
  track "$QEMU_PID"
}

# done_in NAME SECS: waits for the guest's exit line.
done_in() { wait_for "$2" grep -q "skiff-guest: exit=" "$WORK/$1.console"; }
show() { log "$1 console:"; grep "skiff-guest\|Address\|hello\|bytes from\|tick" "$WORK/$1.console" >&2; }
lease_ok() { grep -q "skiff-guest: lease ip=$2/24 router=192.168.122.1 dns=192.168.122.1 mtu=1500" "$WORK/$1.console"; }

# 1. One guest: lease, name resolution, a page from the remote namespace.
cmd="nslookup www.example.test && wget -q -O - http://$REMOTE_IP:8080/page.html"
qemu one 150 "vu:$RUN/vu1.sock" "$MAC_A" "$cmd"; P=$QEMU_PID
done_in one 150; stop_pid "$P"; show one
check "vhost-user guest booted to init" grep -q "skiff-guest: init started" "$WORK/one.console"
check "vhost-user guest got a lease" lease_ok one "$IP_A"
check "vhost-user guest resolved a name through the gateway" grep -q "Address.*$REMOTE_IP" "$WORK/one.console"
check "vhost-user guest fetched a page through the NAT" grep -q "hello from the remote namespace" "$WORK/one.console"
check "vhost-user guest's command succeeded" grep -q "skiff-guest: exit=0" "$WORK/one.console"
check "skiff logged the vhost-user frontend" grep -q "vu1.sock: frontend connected" "$WORK/skiff.log"

# 1b. 100 MiB from the remote namespace with an identical sha256: busybox wget piped into
# sha256sum inside the guest, the sum printed on the console. The guest times the fetch with
# /proc/uptime (TCG: about 8 s here, sha256sum included; the whole boot about 11 s);
# bounded at 240 s.
head -c $((100 << 20)) /dev/urandom >"$WORK/www/100m.bin"
WANT=$(sha256sum <"$WORK/www/100m.bin" | cut -d' ' -f1)
bcmd="t0=\$(cut -d' ' -f1 /proc/uptime); s=\$(wget -q -O - http://$REMOTE_IP:8080/100m.bin | sha256sum | cut -d' ' -f1); t1=\$(cut -d' ' -f1 /proc/uptime); echo \"big-sum=\$s\"; echo \"big-secs \$t0 \$t1\"; test \${#s} = 64"
qemu big 240 "vu:$RUN/vu1.sock" "$MAC_A" "$bcmd"; P=$QEMU_PID
done_in big 240; stop_pid "$P"; show big
grep "big-" "$WORK/big.console" >&2
GOT=$(sed -n 's/.*big-sum=\([0-9a-f]*\).*/\1/p' "$WORK/big.console" | head -1)
log "100 MiB: host sha256 $WANT, guest sha256 ${GOT:-none}; $(awk '/big-secs/ {printf "%.2f s in the guest", $3 - $2}' "$WORK/big.console")"
check "vhost-user guest fetched 100 MiB from the remote namespace with an identical sha256" \
  test -n "$GOT" -a "$GOT" = "$WANT"
rm -f "$WORK/www/100m.bin"

# 2. Two guests on one network ping each other: A and B on vhost-user, then A and C
# (vhost-user and --socket). Each pings until the other answers, then stays up a while.
pinger() { echo "for i in \$(seq 60); do ping -c 1 -W 1 $1 >/dev/null && break; done; ping -c 3 -W 2 $1; r=\$?; sleep 10; exit \$r"; }
pair() { # pair TAG NET-A IP-A MAC-A NET-B IP-B MAC-B
  local t=$1
  qemu "$t-a" 180 "$2" "$4" "$(pinger "$6")"; local pa=$QEMU_PID
  qemu "$t-b" 180 "$5" "$7" "$(pinger "$3")"; local pb=$QEMU_PID
  done_in "$t-a" 180; done_in "$t-b" 30
  stop_pid "$pa"; stop_pid "$pb"; show "$t-a"; show "$t-b"
}
pair vv "vu:$RUN/vu1.sock" "$IP_A" "$MAC_A" "vu:$RUN/vu2.sock" "$IP_B" "$MAC_B"
check "two vhost-user guests got their leases" bash -c "$(declare -f lease_ok); lease_ok vv-a $IP_A && lease_ok vv-b $IP_B"
check "vhost-user guest A pinged guest B" grep -q "skiff-guest: exit=0" "$WORK/vv-a.console"
check "vhost-user guest B pinged guest A" grep -q "skiff-guest: exit=0" "$WORK/vv-b.console"
pair vs "vu:$RUN/vu1.sock" "$IP_A" "$MAC_A" "stream:$RUN/net.sock" "$IP_C" "$MAC_C"
check "the --socket guest got its lease" lease_ok vs-b "$IP_C"
check "vhost-user guest pinged the --socket guest" grep -q "skiff-guest: exit=0" "$WORK/vs-a.console"
check "the --socket guest pinged the vhost-user guest" grep -q "skiff-guest: exit=0" "$WORK/vs-b.console"

# 2b. A device reset: the guest unbinds and rebinds its virtio-net driver (QEMU stops the
# rings with GET_VRING_BASE and sets them up again), then gets a lease and a page again.
rcmd="d=\$(basename \$(readlink /sys/class/net/eth0/device)); echo \$d > /sys/bus/virtio/drivers/virtio_net/unbind && echo \$d > /sys/bus/virtio/drivers/virtio_net/bind && sleep 1 && ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -T 2 -s /etc/udhcpc.script && wget -q -O - http://$REMOTE_IP:8080/page.html"
qemu reset 150 "vu:$RUN/vu1.sock" "$MAC_A" "$rcmd"; P=$QEMU_PID
done_in reset 150; stop_pid "$P"; show reset
check "after a device reset the guest gets a lease again" \
  bash -c "grep -c 'skiff-guest: lease ip=$IP_A/' '$WORK/reset.console' | grep -qx 2"
check "after a device reset the guest fetches a page" grep -q "hello from the remote namespace" "$WORK/reset.console"

# 3. SIGKILL of one QEMU: the other guest keeps fetching pages, and a new QEMU on the killed
# one's socket gets a lease.
qemu victim 180 "vu:$RUN/vu1.sock" "$MAC_A" "sleep 170"; PV=$QEMU_PID
ticker="for i in \$(seq 120); do wget -q -O /dev/null http://$REMOTE_IP:8080/page.html && echo tick-ok; sleep 1; done"
qemu survivor 180 "vu:$RUN/vu2.sock" "$MAC_B" "$ticker"; PS=$QEMU_PID
wait_for 120 lease_ok victim "$IP_A"; wait_for 120 grep -q tick-ok "$WORK/survivor.console"
# $PV is timeout(1): SIGKILL goes to the QEMU process itself, its child.
QV=$(ps -o pid= --ppid "$PV" | tr -d ' ')
log "SIGKILL to QEMU $QV"
[ -n "$QV" ] && kill -KILL "$QV"; wait "$PV" 2>/dev/null
before=$(grep -c tick-ok "$WORK/survivor.console")
sleep 8
after=$(grep -c tick-ok "$WORK/survivor.console")
log "survivor ticks: $before before and $after 8 s after the SIGKILL"
check "the other guest keeps working after a SIGKILLed QEMU" test "$after" -gt "$before"
check "skiff is still running" kill -0 "$SKIFF_PID"
qemu again 150 "vu:$RUN/vu1.sock" "$MAC_A" "$cmd"; PA=$QEMU_PID
done_in again 150; stop_pid "$PA"; show again
lease_ok again "$IP_A" || { log "qemu: $(cat "$WORK/again.qemu.out")"; log "skiff: $(tail -20 "$WORK/skiff.log")"; }
check "a new QEMU on the same socket got a lease" lease_ok again "$IP_A"
check "the new QEMU fetched a page" grep -q "hello from the remote namespace" "$WORK/again.console"
after2=$(grep -c tick-ok "$WORK/survivor.console")
check "the other guest still works" test "$after2" -gt "$after"
stop_pid "$PS"
check "skiff survived all of it" kill -0 "$SKIFF_PID"

# 5. Jumbo frames with mergeable RX buffers: a second network with MTU 9000; Linux posts
# receive buffers of about a page, so the NAT's 9014-byte frames span several of them
# (VIRTIO_NET_F_MRG_RXBUF, num_buffers > 1). 20 MiB fetched with an identical sha256.
stop_pid "$SKIFF_PID"
SKIFF_AS="setpriv --reuid nobody --regid nogroup --clear-groups" \
  start_skiff skiff-jumbo --vhost-user "$RUN/vuj.sock" --mtu 9000 --state-dir "$RUN/state-j" \
  --dns-upstream 127.0.0.1:5353 || exit 1
wait_for 10 test -S "$RUN/vuj.sock" || { log "no vhost-user socket"; exit 1; }
head -c $((20 << 20)) /dev/urandom >"$WORK/www/20m.bin"
WANT=$(sha256sum <"$WORK/www/20m.bin" | cut -d' ' -f1)
jcmd="ip link show eth0 | grep -o 'mtu [0-9]*'; s=\$(wget -q -O - http://$REMOTE_IP:8080/20m.bin | sha256sum | cut -d' ' -f1); echo \"jumbo-sum=\$s\"; test \${#s} = 64"
qemu jumbo 180 "vu:$RUN/vuj.sock" "$MAC_A" "$jcmd"; PJ=$QEMU_PID
done_in jumbo 180; stop_pid "$PJ"; show jumbo
GOT=$(sed -n 's/.*jumbo-sum=\([0-9a-f]*\).*/\1/p' "$WORK/jumbo.console" | head -1)
check "a guest on an MTU 9000 network has MTU 9000" grep -q "mtu 9000" "$WORK/jumbo.console"
check "20 MiB in 9000-byte frames over mergeable buffers arrive with an identical sha256" \
  test -n "$GOT" -a "$GOT" = "$WANT"
rm -f "$WORK/www/20m.bin"
summary
