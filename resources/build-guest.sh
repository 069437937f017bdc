#!/bin/bash
# Build skiff's test guest: a small Linux 6.1 kernel and a busybox initramfs,
# both from Debian packages, cached outside the clone.
#
# Usage: resources/build-guest.sh [--force] [--print-paths | --print-dir | --no-build | --key]
#   (none)         build if not cached (progress on stderr), then print the paths
#   --print-paths  same, but the build log goes to a file, not stderr; stdout
#                  carries only the KEY=VALUE lines below
#   --print-dir    like --print-paths, but print only the artifact directory
#   --no-build     print the paths if already cached, else exit 3 (for tests
#                  that skip instead of spending minutes building)
#   --key          print the cache key and exit
#   --force        rebuild (kernel too) even if cached; combines with the
#                  --print-* options
#
# Output on stdout (shell-evaluable; a test does
#   eval "$(resources/build-guest.sh --print-paths)"):
#   SKIFF_GUEST_DIR=<dir>
#   SKIFF_GUEST_VMLINUX=<dir>/vmlinux               ELF with a PVH note
#   SKIFF_GUEST_BZIMAGE=<dir>/bzImage
#   SKIFF_GUEST_INITRAMFS=<dir>/initramfs.cpio.gz
# The file names inside <dir> are fixed, so <dir> alone is enough too.
#
# Cache: ${SKIFF_CACHE:-$HOME/.cache/skiff}/guest/<key>/, where <key> is the
# first 16 hex digits of a SHA-256 over this script, guest-kernel.config,
# guest-init.sh, guest-udhcpc.script and the Debian versions of
# linux-source-6.1 and busybox-static (apt's candidates, or pinned with
# SKIFF_GUEST_LINUX_VERSION / SKIFF_GUEST_BUSYBOX_VERSION). A directory there
# is complete (it is renamed into place at the end); concurrent callers wait
# on a lock. Also in <dir>: kernel.config (the final .config), System.map,
# inputs.txt, build.log, build-info.txt. The kernel is also cached on its own
# under .../guest/kernel/<kernel key> (the kernel part of this script, the
# fragment, the linux-source version), so changing only guest-init.sh or
# guest-udhcpc.script rebuilds only the initramfs, in seconds.
#
# Environment: SKIFF_CACHE, SKIFF_GUEST_JOBS (make -j, default: nproc),
# SKIFF_GUEST_LINUX_VERSION, SKIFF_GUEST_BUSYBOX_VERSION.
# Needs Debian/apt. Installs its build dependencies with apt-get if missing
# (as root, or through `sudo -n`).
set -euo pipefail

mode=build force=
for arg in "$@"; do
	case "$arg" in
	--print-paths) mode=print-paths ;;
	--print-dir) mode=print-dir ;;
	--no-build) mode=no-build ;;
	--key) mode=key ;;
	--force) force=1 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "build-guest.sh: unknown argument: $arg (see --help)" >&2; exit 2 ;;
	esac
done
[ -z "$force" ] || [ "$mode" != no-build ] || { echo "build-guest.sh: --force with --no-build" >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script="$here/$(basename "${BASH_SOURCE[0]}")"
fragment="$here/guest-kernel.config"
init="$here/guest-init.sh"
udhcpc_script="$here/guest-udhcpc.script"
cache="${SKIFF_CACHE:-$HOME/.cache/skiff}/guest"
jobs="${SKIFF_GUEST_JOBS:-$(nproc)}"
build_deps=(bc flex bison libelf-dev libssl-dev cpio busybox-static xz-utils gcc make)

log() { echo "build-guest.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
	else die "need root to run: $*"
	fi
}

candidates() { # "package version" lines, apt's candidates (one apt-cache call: ~1 s)
	apt-cache policy linux-source-6.1 busybox-static 2>/dev/null | awk '
		/^[^ ]/ { pkg = $1; sub(/:$/, "", pkg) }
		/Candidate:/ { if ($2 != "(none)") print pkg, $2 }'
}

linux_ver="${SKIFF_GUEST_LINUX_VERSION:-}"
bb_ver="${SKIFF_GUEST_BUSYBOX_VERSION:-}"
if [ -z "$linux_ver" ] || [ -z "$bb_ver" ]; then
	command -v apt-cache >/dev/null || die "apt-cache not found (this script needs Debian's apt)"
	cands=$(candidates)
	if [ "$(echo "$cands" | grep -c .)" != 2 ]; then
		log "apt does not know linux-source-6.1/busybox-static: running apt-get update"
		as_root apt-get -o DPkg::Lock::Timeout=600 update >&2
		cands=$(candidates)
	fi
	: "${linux_ver:=$(echo "$cands" | awk '$1 == "linux-source-6.1" { print $2 }')}"
	: "${bb_ver:=$(echo "$cands" | awk '$1 == "busybox-static" { print $2 }')}"
	[ -n "$linux_ver" ] || die "no candidate version of linux-source-6.1"
	[ -n "$bb_ver" ] || die "no candidate version of busybox-static"
fi

inputs() {
	local f
	for f in "$script" "$fragment" "$init" "$udhcpc_script"; do
		echo "$(sha256sum <"$f" | cut -d' ' -f1) $(basename "$f")"
	done
	echo "linux-source-6.1 $linux_ver"
	echo "busybox-static $bb_ver"
}
key=$(inputs | sha256sum | cut -c1-16)
dir="$cache/$key"

if [ "$mode" = key ]; then echo "$key"; exit 0; fi

print() {
	if [ "$mode" = print-dir ]; then echo "$dir"; return; fi
	echo "SKIFF_GUEST_DIR=$dir"
	echo "SKIFF_GUEST_VMLINUX=$dir/vmlinux"
	echo "SKIFF_GUEST_BZIMAGE=$dir/bzImage"
	echo "SKIFF_GUEST_INITRAMFS=$dir/initramfs.cpio.gz"
}

complete() { [ -s "$dir/vmlinux" ] && [ -s "$dir/bzImage" ] && [ -s "$dir/initramfs.cpio.gz" ]; }

if [ -z "$force" ] && complete; then print; exit 0; fi
if [ "$mode" = no-build ]; then
	log "guest image $key is not built (run resources/build-guest.sh)"
	exit 3
fi

mkdir -p "$cache"
exec 9>"$cache/$key.lock"
if ! flock -n 9; then
	log "another build of $key is running; waiting (up to 1 hour)"
	flock -w 3600 9 || die "timed out waiting for the lock $cache/$key.lock"
fi
if [ -z "$force" ] && complete; then print; exit 0; fi

work="$cache/.build-$key-$$"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------- build
# The kernel is cached on its own under $cache/kernel/<kernel key>, so
# changing only the init scripts or busybox rebuilds only the initramfs.

install_deps() {
	local missing=() p
	for p in "${build_deps[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing build dependencies: ${missing[*]}"
		as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
			install -y --no-install-recommends "${missing[@]}"
	fi
}

download() { # download and unpack one package version into $work/$1
	mkdir -p "$work/deb-$1"
	(cd "$work/deb-$1" && apt-get -o APT::Sandbox::User=root download "$1=$2")
	dpkg -x "$work/deb-$1"/*.deb "$work/$1"
	rm -rf "$work/deb-$1"
}

kernel_cached() { [ -s "$kdir/vmlinux" ] && [ -s "$kdir/bzImage" ] && [ -x "$kdir/gen_init_cpio" ]; }

build_kernel() {
	local start end
	start=$(date +%s)
	log "building kernel $kkey (linux-source-6.1 $linux_ver)"
	download linux-source-6.1 "$linux_ver"
	log "extracting the kernel source"
	local tarball src="$work/linux-source-6.1-tree/linux-source-6.1"
	tarball=$(ls "$work"/linux-source-6.1/usr/src/linux-source-6.1*.tar.xz)
	mkdir -p "$work/linux-source-6.1-tree"
	tar -C "$work/linux-source-6.1-tree" -xf "$tarball"
	rm -rf "$work/linux-source-6.1"
	[ -d "$src" ] || die "unexpected tarball layout in $tarball"

	local kmake=(make -C "$src" KBUILD_BUILD_USER=skiff KBUILD_BUILD_HOST=skiff)
	"${kmake[@]}" tinyconfig
	cat "$fragment" >>"$src/.config"
	"${kmake[@]}" olddefconfig
	# Every "CONFIG_X=y" of the fragment must be =y now, every
	# "# CONFIG_X is not set" must not be set.
	local opt bad=()
	while read -r opt; do
		if ! grep -qx "$opt=y" "$src/.config"; then
			log "error: $opt was requested =y but is '$(grep -E "^$opt=|^# $opt is not set" "$src/.config" || echo absent)' after olddefconfig (a dependency is missing)"
			bad+=("$opt")
		fi
	done < <(sed -n 's/^\(CONFIG_[A-Za-z0-9_]*\)=y[[:space:]]*$/\1/p' "$fragment")
	while read -r opt; do
		if grep -q "^$opt=" "$src/.config"; then
			log "error: $opt was requested off but is '$(grep "^$opt=" "$src/.config")' after olddefconfig (something selects it)"
			bad+=("$opt")
		fi
	done < <(sed -n 's/^# \(CONFIG_[A-Za-z0-9_]*\) is not set[[:space:]]*$/\1/p' "$fragment")
	[ ${#bad[@]} = 0 ] || die "kernel config: ${#bad[@]} requested option(s) not as asked: ${bad[*]}"
	log "kernel config ok; building with -j$jobs"
	nice -n 10 "${kmake[@]}" -j"$jobs" bzImage
	# gen_init_cpio makes device nodes without root and with a fixed mtime.
	gcc -O2 -o "$src/gen_init_cpio.bin" "$src/usr/gen_init_cpio.c"

	local kout="$work/kernel-out"
	mkdir -p "$kout"
	cp "$src/vmlinux" "$kout/vmlinux"
	cp "$src/arch/x86/boot/bzImage" "$kout/bzImage"
	cp "$src/.config" "$kout/kernel.config"
	cp "$src/System.map" "$kout/System.map"
	cp "$src/gen_init_cpio.bin" "$kout/gen_init_cpio"
	rm -rf "$work/linux-source-6.1-tree"
	end=$(date +%s)
	{
		echo "kernel_key=$kkey"
		echo "linux-source-6.1=$linux_ver"
		echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
		echo "seconds=$((end - start))"
		echo "jobs=$jobs"
		echo "gcc=$(gcc -dumpfullversion)"
	} >"$kout/build-info.txt"
	mkdir -p "$cache/kernel"
	rm -rf "$kdir"
	mv "$kout" "$kdir"
	log "kernel built in $((end - start)) s"
}

# Kernel key: the kernel's recipe (these two functions' text), the fragment,
# the linux-source version.
kkey=$( { declare -f download build_kernel; sha256sum <"$fragment"; echo "linux-source-6.1 $linux_ver"; } |
	sha256sum | cut -c1-16)
kdir="$cache/kernel/$kkey"

build_initramfs() {
	log "building the initramfs (busybox-static $bb_ver)"
	download busybox-static "$bb_ver"
	local bb="$work/busybox-static/bin/busybox" list="$work/initramfs.list" a d
	[ -x "$bb" ] || die "busybox not found in busybox-static_$bb_ver"
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$work/passwd"
	printf 'root:x:0:\n' >"$work/group"
	cp "$init" "$work/init"
	cp "$udhcpc_script" "$work/udhcpc.script"
	# gen_init_cpio takes regular files' mtimes from the files: fix them,
	# so the same inputs give the same bytes.
	touch -d @0 "$work/passwd" "$work/group" "$work/init" "$work/udhcpc.script" "$bb"
	{
		echo "dir /dev 0755 0 0"
		echo "nod /dev/console 0600 0 0 c 5 1"
		echo "nod /dev/null 0666 0 0 c 1 3"
		for d in proc sys tmp etc bin usr; do echo "dir /$d 0755 0 0"; done
		echo "dir /root 0700 0 0"
		echo "slink /sbin bin 0777 0 0"
		echo "slink /usr/bin ../bin 0777 0 0"
		echo "slink /usr/sbin ../bin 0777 0 0"
		echo "file /bin/busybox $bb 0755 0 0"
		for a in $("$bb" --list | sort -u); do
			case "$a" in busybox | linuxrc | init) continue ;; esac
			echo "slink /bin/$a busybox 0777 0 0"
		done
		echo "file /init $work/init 0755 0 0"
		echo "file /etc/udhcpc.script $work/udhcpc.script 0755 0 0"
		echo "file /etc/passwd $work/passwd 0644 0 0"
		echo "file /etc/group $work/group 0644 0 0"
	} >"$list"
	"$kdir/gen_init_cpio" -t 0 "$list" | gzip -9 -n >"$work/out/initramfs.cpio.gz"
}

build() {
	local start end f
	start=$(date +%s)
	log "building guest image $key in $work"
	inputs | sed 's/^/  input: /' >&2
	install_deps
	mkdir -p "$work/out" "$cache/kernel"
	(
		exec 8>"$cache/kernel/$kkey.lock"
		flock -w 3600 8 || die "timed out waiting for the lock $cache/kernel/$kkey.lock"
		if [ -n "$force" ] || ! kernel_cached; then build_kernel; fi
	)
	for f in vmlinux bzImage kernel.config System.map; do
		ln "$kdir/$f" "$work/out/$f" 2>/dev/null || cp "$kdir/$f" "$work/out/$f"
	done
	build_initramfs
	inputs >"$work/out/inputs.txt"
	end=$(date +%s)
	{
		echo "key=$key"
		echo "kernel_key=$kkey"
		echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
		echo "seconds=$((end - start))"
	} >"$work/out/build-info.txt"
	log "built in $((end - start)) s"
}

logfile="$work/build.log"
# errexit is ignored inside `if ! (...)`, so run the subshell unchecked and
# look at its status afterwards.
set +e
if [ "$mode" = print-paths ] || [ "$mode" = print-dir ]; then
	log "building guest image $key (minutes if the kernel is not cached; log: $cache/$key.log)"
	(set -e; build) >"$logfile" 2>&1
	rc=$?
	[ $rc = 0 ] || tail -n 30 "$logfile" >&2
else
	(set -e; build) 2>&1 | tee "$logfile" >&2
	rc=${PIPESTATUS[0]}
fi
set -e
if [ "$rc" != 0 ]; then
	cp "$logfile" "$cache/$key.log" 2>/dev/null || true
	die "build failed; full log: $cache/$key.log"
fi
cp "$logfile" "$work/out/build.log"
cp "$logfile" "$cache/$key.log"
rm -rf "$dir"
mv "$work/out" "$dir"
print
