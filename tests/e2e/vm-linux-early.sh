#!/usr/bin/env bash
# The real resources/ kernel on this machine's emulating KVM (TESTING.md, layer 5): it stops
# early under the emulator, but first prints the command line, the e820 map and the CPUs
# skiff gave it; then skiff reports the emulation failure and exits non-zero.
# Booting it to init needs hardware virtualization: that test is reported as skipped here.
. "$(dirname "$0")/lib.sh"
[ -c /dev/kvm ] || { log "no /dev/kvm"; exit 1; }
paths=$("$ROOT/resources/build-guest.sh" --print-paths) || { log "guest image build failed"; exit 1; }
eval "$paths"
line="console=ttyS0 noxsave earlyprintk=serial skiff.test=early"
timeout -k 5 180 "$SKIFF" run --kernel "$SKIFF_GUEST_VMLINUX" --cmdline "$line" --cpus 2 --memory 256 \
  </dev/null >"$WORK/out" 2>"$WORK/err"
rc=$?
log "skiff exited with $rc"; tail -5 "$WORK/out" >&2; cat "$WORK/err" >&2
check "the kernel prints the command line skiff gave it" grep -q "Command line: $line" "$WORK/out"
check "the kernel prints skiff's e820 map (low RAM)" \
  grep -q "BIOS-e820: \[mem 0x0000000000000000-0x000000000009fbff\] usable" "$WORK/out"
check "the kernel prints skiff's e820 map (RAM up to 256 MiB)" \
  grep -q "BIOS-e820: \[mem 0x0000000000100000-0x000000000fffffff\] usable" "$WORK/out"
check "the kernel sees the 2 CPUs of the MP table" grep -Eq "Allowing 2 (present )?CPUs|smpboot: .*2 CPUs|Processors: 2" "$WORK/out"
check "skiff exits non-zero within the bound" bash -c "[ $rc != 0 ] && [ $rc != 124 ] && [ $rc != 137 ]"
check "skiff reports the emulation failure" grep -q "could not emulate" "$WORK/err"
if [ -d /sys/module/kvm_pvm ]; then
  echo "vm-linux-early: SKIPPED: booting Linux to init in skiff needs hardware virtualization; this host's KVM is kvm_pvm (emulating)"
fi
summary
