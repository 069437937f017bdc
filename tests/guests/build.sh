#!/usr/bin/env bash
# Builds the test guests into OUT (default: a temp dir printed on stdout):
#   boot64.elf    ELF entered at its 64-bit entry (no PVH note)
#   boot64.bzImage  the same code as a bzImage (boot protocol 2.15, XLF_KERNEL_64)
#   virtio-net.elf  a virtio-net driver that gets a DHCP OFFER from the NAT, interrupt-driven
#   tiny-reset.elf  resets at once; tiny-idle.elf halts forever (the VMM benchmark's guests)
set -eu -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$(mktemp -d /tmp/skiff-guests.XXXXXX)}
mkdir -p "$OUT"
gcc -nostdlib -static -no-pie -Wl,--build-id=none -Wl,-Ttext=0x100000 -Wl,-z,noexecstack -Wl,-N -Wl,--no-warn-rwx-segments \
  -o "$OUT/boot64.elf" "$HERE/boot64.S"
gcc -nostdlib -static -no-pie -Wl,--build-id=none -Wl,-Ttext=0x100000 -Wl,-z,noexecstack -Wl,-N -Wl,--no-warn-rwx-segments \
  -DBZIMAGE -o "$OUT/boot64-flat.elf" "$HERE/boot64.S"
gcc -nostdlib -static -no-pie -Wl,--build-id=none -Wl,-Ttext=0x100000 -Wl,-z,noexecstack -Wl,-N -Wl,--no-warn-rwx-segments \
  -o "$OUT/virtio-net.elf" "$HERE/virtio-net.S"
objcopy -O binary "$OUT/boot64-flat.elf" "$OUT/boot64-flat.bin"
python3 - "$OUT/boot64-flat.bin" "$OUT/boot64.bzImage" <<'PY'
import struct, sys
payload = open(sys.argv[1], "rb").read()
setup_sects = 4
setup = bytearray(512 * (setup_sects + 1))
def put(off, fmt, v): struct.pack_into("<" + fmt, setup, off, v)
put(0x1f1, "B", setup_sects)
put(0x1fe, "H", 0xAA55)
setup[0x202:0x206] = b"HdrS"
put(0x206, "H", 0x020F)          # boot protocol 2.15
put(0x211, "B", 0x01)            # loadflags: LOADED_HIGH
put(0x214, "I", 0x100000)        # code32_start
put(0x230, "I", 0x200000)        # kernel_alignment
put(0x234, "B", 0)               # not relocatable
put(0x236, "H", 0x0001)          # xloadflags: XLF_KERNEL_64
put(0x238, "I", 4095)            # cmdline_size
put(0x258, "Q", 0x1000000)       # pref_address
put(0x260, "I", max(len(payload), 0x100000))  # init_size
put(0x1f4, "I", (len(payload) + 15) // 16)    # syssize
open(sys.argv[2], "wb").write(bytes(setup) + payload)
PY
rm -f "$OUT/boot64-flat.elf" "$OUT/boot64-flat.bin"
for v in reset idle fault; do
  def=(); [ $v = idle ] && def=(-DIDLE); [ $v = fault ] && def=(-DFAULT)
  gcc -nostdlib -static -no-pie -Wl,--build-id=none -Wl,-Ttext=0x100000 -Wl,-z,noexecstack \
    -Wl,-N -Wl,--no-warn-rwx-segments "${def[@]}" -o "$OUT/tiny-$v.elf" "$HERE/tiny.S"
done
echo "$OUT"
