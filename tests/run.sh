#!/usr/bin/env bash
# skiff's whole test suite, from a fresh machine: installs what the tests need (Debian
# packages), builds, runs the unit tests, lint, and the end-to-end tests against real Linux
# network stacks and a real Linux guest under QEMU, and the VMM on /dev/kvm. Prints
# "N passed, N failed, N skipped" last (a step is skipped when the host cannot run it, e.g.
# real Linux in skiff without hardware virtualization, and says why).
# Needs root (network namespaces, TAP devices).
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
log() { printf '[run %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

PKGS=(iproute2 busybox-static python3 iperf3 qemu-system-x86 util-linux procps
      bc flex bison libelf-dev libssl-dev cpio xz-utils make gcc binutils)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
    timeout 300 apt-get update -qq >/dev/null 2>&1
    timeout 900 apt-get install -y -qq "${missing[@]}" >/dev/null || { log "apt-get install failed"; exit 1; }
  }
fi

passed=0; failed=0; skipped=0; failures=()
STEP_LOG=$(mktemp /tmp/skiff-run.XXXXXX)
trap 'rm -f "$STEP_LOG"' EXIT
step() { # step NAME CMD...: one pass/fail/skip per step; a test that only skipped is a skip
  local name=$1; shift
  log "=== $name"
  if "$@" 2>&1 | tee "$STEP_LOG"; then
    if tail -n 1 "$STEP_LOG" | grep -Eq ': 0 passed, 0 failed, [1-9][0-9]* skipped$'; then
      skipped=$((skipped + 1)); log "SKIPPED: $name"
    else
      passed=$((passed + 1)); log "passed: $name"
    fi
  else failed=$((failed + 1)); failures+=("$name"); log "FAILED: $name"; fi
}

step "cargo build --release" cargo build --release --workspace --all-targets
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy -D warnings" cargo clippy --workspace --all-targets --release -- -D warnings
step "unit tests (cargo test)" cargo test --release --workspace
step "guest image (resources/build-guest.sh)" resources/build-guest.sh
for t in tests/e2e/cli.sh tests/e2e/nat.sh tests/e2e/flow-limit.sh tests/e2e/hostile.sh tests/e2e/qemu-guest.sh tests/e2e/vhost-user.sh \
         tests/e2e/vm-boot.sh tests/e2e/vm-virtio.sh tests/e2e/vm-linux-early.sh tests/e2e/vm-linux.sh; do
  step "$t" bash "$t"
done

for f in "${failures[@]}"; do log "failed: $f"; done
echo "skiff tests: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
