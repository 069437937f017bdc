#!/usr/bin/env bash
# skiff's VMM on this machine's KVM (TESTING.md, layer 4): small guests built here with gcc
# check the boot protocol from the inside (command line and e820 map where boot_params says),
# write to the serial port, and end the VM through the i8042 reset, for an ELF and a bzImage.
. "$(dirname "$0")/lib.sh"
need gcc objcopy python3 || exit 1
[ -c /dev/kvm ] || { log "no /dev/kvm"; exit 1; }
GUESTS=$("$ROOT/tests/guests/build.sh" "$WORK/guests") || exit 1

# The ELF on the default network (the virtio-mmio device is announced on the command line),
# the bzImage without a network card (the command line is exactly the one given).
for k in boot64.elf boot64.bzImage; do
  line="skiff-boot-test root=none k=$k"
  if [ $k = boot64.elf ]; then net=(--net nat); want="$line virtio_mmio.device=4K@0xd0000000:5"
  else net=(--net none); want=$line; fi
  timeout -k 5 60 "$SKIFF" run --kernel "$GUESTS/$k" --cmdline "$line" --memory 128 "${net[@]}" \
    </dev/null >"$WORK/$k.out" 2>"$WORK/$k.err"
  rc=$?
  log "$k: exit $rc"; cat "$WORK/$k.out" "$WORK/$k.err" >&2
  check "$k: the guest's i8042 reset ends skiff with 0" test "$rc" = 0
  check "$k: serial output reaches stdout" grep -q "^boot: hello" "$WORK/$k.out"
  check "$k: the guest finds its command line" grep -qxF "boot: cmdline=$want" "$WORK/$k.out"
  check "$k: e820 has low RAM below the EBDA" \
    grep -qx "boot: e820 0000000000000000 000000000009fc00 0000000000000001" "$WORK/$k.out"
  check "$k: e820 reserves the EBDA and BIOS area" \
    grep -qx "boot: e820 000000000009fc00 0000000000060400 0000000000000002" "$WORK/$k.out"
  check "$k: e820 has RAM from 1 MiB to the end of 128 MiB" \
    grep -qx "boot: e820 0000000000100000 0000000007f00000 0000000000000001" "$WORK/$k.out"
done

# A triple fault ends skiff with a non-zero status and says so.
timeout -k 5 60 "$SKIFF" run --kernel "$GUESTS/tiny-fault.elf" --net none --memory 64 </dev/null >"$WORK/fault.out" 2>"$WORK/fault.err"
rc=$?
cat "$WORK/fault.err" >&2
check "a triple fault ends skiff non-zero with a message" bash -c "[ $rc != 0 ] && [ $rc != 124 ] && grep -q 'triple fault' $WORK/fault.err"

# Bad configuration: errors name the flag or file, nothing runs.
out=$(timeout 10 "$SKIFF" run --kernel "$WORK/missing" 2>&1); rc=$?
check "a missing kernel is an error naming the file" bash -c "[ $rc != 0 ] && grep -q '$WORK/missing' <<<'$out'"
out=$(timeout 10 "$SKIFF" run --kernel "$GUESTS/boot64.elf" --cpus 0 2>&1); rc=$?
check "--cpus 0 is an error naming the flag" bash -c "[ $rc != 0 ] && grep -q -- '--cpus' <<<'$out'"
out=$(timeout 10 "$SKIFF" run --kernel "$GUESTS/boot64.elf" --memory 1 2>&1); rc=$?
check "--memory 1 is an error naming the flag" bash -c "[ $rc != 0 ] && grep -q -- '--memory' <<<'$out'"
head -c 4096 /dev/urandom >"$WORK/garbage"
out=$(timeout 10 "$SKIFF" run --kernel "$WORK/garbage" 2>&1); rc=$?
check "a kernel that is neither ELF nor bzImage is refused" bash -c "[ $rc != 0 ]"
summary
