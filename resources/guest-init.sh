#!/bin/sh
# /init of skiff's test guest initramfs (built by resources/build-guest.sh).
#
# Contract with the kernel command line (read from /proc/cmdline; the kernel
# does not pass dotted parameters to init itself):
#   skiff.hostname=NAME  hostname, also sent as DHCP option 12 (default: skiff-guest)
#   skiff.dhcp=0         do not run udhcpc on eth0 (default: run it)
#   skiff.cmd=BASE64     run the base64-decoded text with `sh -c`, print
#                        "skiff-guest: exit=N", then end the VM (skiff.exit).
#                        Make it with: printf '%s' "$cmd" | base64 -w0
#                        Without skiff.cmd: a shell on the console; the VM ends
#                        when that shell exits.
#   skiff.exit=poweroff|reboot
#                        how the VM ends: default poweroff when ACPI is up,
#                        otherwise reboot (the i8042 reset or a triple fault;
#                        give QEMU -no-reboot); skiff.exit=reboot always reboots.
# Console lines a test can wait for (each at the start of a line):
#   skiff-guest: init started
#   skiff-guest: lease ip=A.B.C.D/NN router=R dns=D1[,D2] mtu=M domain=DOM
#                (a field the server did not send is "-")
#   skiff-guest: lease failed        (no lease within about 10 s)
#   skiff-guest: no eth0             (no network device)
#   skiff-guest: exit=N              (status of skiff.cmd)
#   skiff-guest: shell               (no skiff.cmd: shell starts)

echo "skiff-guest: init started"

export PATH=/bin HOME=/root TERM=linux
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /dev/shm && mount -t tmpfs -o mode=1777 tmpfs /dev/shm
exec </dev/console >/dev/console 2>&1

hn= cmd64= dhcp=1 exitmode=poweroff
set -f
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	skiff.hostname=*) hn=${arg#*=} ;;
	skiff.cmd=*) cmd64=${arg#*=} ;;
	skiff.dhcp=*) dhcp=${arg#*=} ;;
	skiff.exit=*) exitmode=${arg#*=} ;;
	esac
done
set +f
[ -n "$hn" ] || hn=skiff-guest
hostname "$hn"

ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
	ip link set eth0 up
	if [ "$dhcp" != 0 ]; then
		# -O: request MTU (26) and domain search (119), which busybox does
		# not ask for by default. The script prints the lease line.
		udhcpc -i eth0 -n -q -t 5 -T 2 -x "hostname:$hn" -O mtu -O search \
			-s /etc/udhcpc.script ||
			echo "skiff-guest: lease failed"
	fi
else
	echo "skiff-guest: no eth0"
fi

finish() {
	sync
	# Without a power-off method (no ACPI, as in skiff's VMM or QEMU microvm
	# with acpi=off) the kernel turns power-off into halt, which never
	# returns and never exits the VMM; reboot (i8042 reset, or triple fault)
	# does. So power off only if ACPI is up.
	if [ "$exitmode" = poweroff ] && [ -d /sys/firmware/acpi ]; then
		poweroff -f
	fi
	reboot -f
	sleep 10
}

if [ -n "$cmd64" ]; then
	if cmd=$(echo "$cmd64" | base64 -d); then
		sh -c "$cmd"
		echo "skiff-guest: exit=$?"
	else
		echo "skiff-guest: skiff.cmd is not valid base64"
		echo "skiff-guest: exit=127"
	fi
	finish
fi

echo "skiff-guest: shell"
setsid cttyhack sh
finish
