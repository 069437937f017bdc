#!/usr/bin/env bash
# A real Linux guest (TESTING.md, layer 3): QEMU (TCG) boots the resources/ kernel and
# initramfs on the --socket of a skiff that runs as an unprivileged user; the guest gets a
# lease, resolves a name through the gateway and fetches a page from the remote namespace.
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 setpriv python3 base64 || exit 1
paths=$("$ROOT/resources/build-guest.sh" --print-paths) || { log "guest image build failed"; exit 1; }
eval "$paths"
topology || exit 1

mkdir -p "$WORK/www"
echo "hello from the remote namespace" >"$WORK/www/page.html"
bg_py "$HOST_NS" dns dns-server 127.0.0.1 5353 www.example.test=$REMOTE_IP || exit 1
bg_py "$REMOTE_NS" http http-server $REMOTE_IP 8080 "$WORK/www" || exit 1

# skiff as nobody: its socket and state live in a directory nobody owns.
RUN=$WORK/run; mkdir -p "$RUN"; chown nobody "$RUN"
SKIFF_AS="setpriv --reuid nobody --regid nogroup --clear-groups" \
  start_skiff skiff --socket "$RUN/net.sock" --dns-upstream 127.0.0.1:5353 --state-dir "$RUN/state" || exit 1
check "skiff runs unprivileged" bash -c "grep -q '^Uid:[[:space:]]*65534' /proc/$SKIFF_PID/status"

cmd="nslookup www.example.test && wget -q -O - http://$REMOTE_IP:8080/page.html"
timeout -k 5 150 qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off,acpi=off -accel tcg \
  -nodefaults -no-user-config -display none -no-reboot -m 256 \
  -kernel "$SKIFF_GUEST_VMLINUX" -initrd "$SKIFF_GUEST_INITRAMFS" \
  -append "console=ttyS0 panic=-1 skiff.hostname=qguest skiff.cmd=$(printf '%s' "$cmd" | base64 -w0)" \
  -serial "file:$WORK/console.log" \
  -netdev stream,id=n0,server=off,addr.type=unix,addr.path="$RUN/net.sock" \
  -device virtio-net-device,netdev=n0 </dev/null >"$WORK/qemu.out" 2>&1
log "qemu exited with $?; console:"
grep "skiff-guest\|Address\|hello" "$WORK/console.log" >&2

check "the guest booted to init" grep -q "skiff-guest: init started" "$WORK/console.log"
check "the guest got a lease from skiff" \
  grep -q "skiff-guest: lease ip=192.168.122.[0-9]*/24 router=192.168.122.1 dns=192.168.122.1 mtu=1500" "$WORK/console.log"
check "the guest resolved a name through the gateway" grep -q "Address.*$REMOTE_IP" "$WORK/console.log"
check "the guest fetched a page through the NAT" grep -q "hello from the remote namespace" "$WORK/console.log"
check "the guest's command succeeded" grep -q "skiff-guest: exit=0" "$WORK/console.log"
check "skiff logged the lease" grep -q "lease 192.168.122.* (qguest)" "$WORK/skiff.log"
summary
