#!/usr/bin/env bash
# skiff's virtio-net device on this machine's KVM (TESTING.md, layer 4): a small guest built
# here with gcc (tests/guests/virtio-net.S) probes the virtio-mmio device, negotiates
# features, sets up its queues, posts receive buffers, transmits a DHCP DISCOVER and takes
# the NAT's OFFER through the device's interrupt (IOAPIC pin 5, an IDT, `sti; hlt`), then
# resets the device and the machine. Also: `--mac` and `--dhcp-range` reach the card and the
# NAT's DHCP server, and `--net none` leaves no device and no virtio_mmio.device= on the
# command line. The guest bounds its own wait (150 ticks of a 100 ms local-APIC timer) and
# prints "virtio: FAIL ..." on any failure; every run is bounded to 60 s as well.
. "$(dirname "$0")/lib.sh"
need gcc python3 || exit 1
[ -c /dev/kvm ] || { log "no /dev/kvm"; exit 1; }
GUESTS=$("$ROOT/tests/guests/build.sh" "$WORK/guests") || exit 1
GUEST=$GUESTS/virtio-net.elf
CMDLINE="skiff-virtio-test root=none"

# run NAME ARGS...: the guest under skiff (bounded), stdout to $WORK/NAME.out; sets RC.
run() {
  local name=$1; shift
  timeout -k 5 60 "$SKIFF" run --kernel "$GUEST" --cmdline "$CMDLINE" --memory 128 \
    --state-dir "$WORK/state-$name" "$@" </dev/null >"$WORK/$name.out" 2>"$WORK/$name.err"
  RC=$?
  log "$name: exit $RC"; cat "$WORK/$name.out" "$WORK/$name.err" >&2
}
# has NAME LINE: the guest printed exactly LINE.
has() { grep -qxF -- "$2" "$WORK/$1.out"; }
# features_have NAME BIT...: the device features the guest read have every BIT set.
features_have() {
  local f b
  f=$(sed -n 's/^virtio: device features \([0-9a-f]\{16\}\)$/\1/p' "$WORK/$1.out")
  [ -n "$f" ] || return 1
  shift
  for b in "$@"; do (( (0x$f >> b) & 1 )) || return 1; done
}
# yiaddr NAME: the address the OFFER the guest received holds.
yiaddr() { sed -n 's/^virtio: offer yiaddr=\([0-9.]*\)$/\1/p' "$WORK/$1.out"; }
in_pool() {
  local a=$1
  [[ $a =~ ^192\.168\.122\.([0-9]+)$ ]] && (( BASH_REMATCH[1] >= 2 && BASH_REMATCH[1] <= 254 ))
}
export -f has features_have yiaddr in_pool

# The default network (--net nat), a fixed MAC.
MAC=52:54:00:12:34:56
run nat --mac $MAC
check "nat: the guest's i8042 reset ends skiff with 0" test "$RC" = 0
check "nat: the command line announces the device" \
  grep -qx "virtio: cmdline=$CMDLINE virtio_mmio.device=4K@0xd0000000:5" "$WORK/nat.out"
check "nat: magic, version 2, device id 1 (network card)" has nat "virtio: magic ok version 2 device 1"
check "nat: device offers VERSION_1, MAC, MTU and STATUS" features_have nat 32 5 3 16
check "nat: FEATURES_OK sticks with VERSION_1 | MAC" \
  has nat "virtio: features ok (driver features 0000000100000020)"
check "nat: the MAC in config space is --mac's" has nat "virtio: mac $MAC"
check "nat: config space: link up, MTU 1500" has nat "virtio: config status 0001 mtu 1500"
check "nat: RX queue set up (QueueNumMax 256)" has nat "virtio: queue 0 size 8 max 256"
check "nat: TX queue set up (QueueNumMax 256)" has nat "virtio: queue 1 size 8 max 256"
check "nat: DRIVER_OK accepted" has nat "virtio: driver ok"
check "nat: DHCP DISCOVER sent" grep -q "^virtio: discover sent xid 736b6966" "$WORK/nat.out"
check "nat: the TX chain came back on the used ring" has nat "virtio: tx used"
check "nat: the RX used buffer was signalled by the interrupt" has nat "virtio: rx interrupt"
check "nat: an OFFER with an address of the pool (192.168.122.2-254)" \
  bash -c "in_pool \"\$(yiaddr nat)\""
check "nat: the OFFER names the gateway as DHCP server" has nat "virtio: offer server=192.168.122.1"
check "nat: the OFFER comes from the gateway's MAC" has nat "virtio: offer from 52:54:00:5c:1f:01"
check "nat: the device resets (Status 0)" has nat "virtio: device reset"
check "nat: the guest finished" has nat "virtio: done"
check "nat: no failure reported by the guest" bash -c "! grep -q 'FAIL\|timeout' '$WORK/nat.out'"

# Another MAC and a DHCP range of our own: the card and the DHCP server both see the flags.
MAC2=52:54:00:ab:cd:ef
run range --mac $MAC2 --dhcp-range 192.168.122.50,192.168.122.60
check "range: exit 0" test "$RC" = 0
check "range: the MAC in config space is --mac's" has range "virtio: mac $MAC2"
check "range: the OFFER holds an address of --dhcp-range" \
  bash -c "[[ \$(yiaddr range) =~ ^192\.168\.122\.(5[0-9]|60)$ ]]"
check "range: the guest finished" has range "virtio: done"

# No network card: nothing at 0xd0000000 and nothing announced.
run none --net none
check "none: exit 0" test "$RC" = 0
check "none: no virtio_mmio.device= on the command line" has none "virtio: cmdline=$CMDLINE"
check "none: no device at 0xd0000000" \
  has none "virtio: no device at 0xd0000000, magic 00000000"
summary
