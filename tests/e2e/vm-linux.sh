#!/usr/bin/env bash
# Real Linux in skiff (TESTING.md, layer 5): the resources/ guest boots to init in skiff's VM,
# gets its lease from the built-in NAT and fetches a page from the host through it.
# This needs hardware virtualization: on a host whose KVM emulates guest kernel code
# (kvm_pvm), the test is reported as skipped, with the reason, never as passed.
. "$(dirname "$0")/lib.sh"
if [ -d /sys/module/kvm_pvm ] || ! grep -Eqw 'vmx|svm' /proc/cpuinfo; then
  log "skipped: booting Linux to init needs hardware virtualization (VT-x/AMD-V); this host's KVM is kvm_pvm, which emulates guest kernel code (see vm-linux-early.sh for what runs here)"
  echo "vm-linux: 0 passed, 0 failed, 1 skipped"
  exit 0
fi
[ -c /dev/kvm ] || { log "no /dev/kvm"; exit 1; }
paths=$("$ROOT/resources/build-guest.sh" --print-paths) || exit 1
eval "$paths"
topology || exit 1
mkdir -p "$WORK/www"; echo "hello from the host" >"$WORK/www/page.html"
bg_py "$HOST_NS" http http-server 0.0.0.0 8080 "$WORK/www" || exit 1
cmd="wget -q -O - http://192.168.122.1:8080/page.html"
T=180 in_ns "$HOST_NS" "$SKIFF" run --kernel "$SKIFF_GUEST_BZIMAGE" --initrd "$SKIFF_GUEST_INITRAMFS" \
  --cmdline "console=ttyS0 reboot=k panic=1 skiff.cmd=$(printf '%s' "$cmd" | base64 -w0)" \
  --state-dir "$WORK/state" </dev/null >"$WORK/out" 2>"$WORK/err"
rc=$?
tail -20 "$WORK/out" >&2
check "the guest reached init" grep -q "skiff-guest: init started" "$WORK/out"
check "the guest got its lease from the NAT" grep -q "skiff-guest: lease ip=192.168.122.2/24" "$WORK/out"
check "the guest fetched a page from the host" grep -q "hello from the host" "$WORK/out"
check "skiff exits 0 when the guest reboots" test "$rc" = 0
summary
