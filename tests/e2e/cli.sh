#!/usr/bin/env bash
# Bad flags get an error naming the flag, and nothing is left behind.
. "$(dirname "$0")/lib.sh"

# expect_error FLAG ARGS...: skiff net serve ARGS fails, and its message names FLAG.
expect_error() {
  local flag=$1; shift
  local out
  out=$(timeout 10 "$SKIFF" net serve --state-dir "$WORK/state" "$@" 2>&1) && { log "succeeded: $*"; return 1; }
  grep -q -- "$flag" <<<"$out" || { log "no '$flag' in: $out"; return 1; }
}
check "--subnet" expect_error --subnet --subnet 10.0.0.0/33
check "--dhcp-range outside the subnet" expect_error --dhcp-range --dhcp-range 10.0.0.2,10.0.0.9
check "--dhcp-range over the gateway" expect_error --dhcp-range --dhcp-range 192.168.122.1,192.168.122.9
check "--mtu" expect_error --mtu --mtu 70000
check "--mtu too small" expect_error --mtu --mtu 100
check "--forward shape" expect_error --forward --forward tcp:80
check "--forward guest outside the subnet" expect_error --forward --forward tcp:8080:10.1.1.1:80
check "--dhcp-host" expect_error --dhcp-host --dhcp-host 52:54:00:00:00:zz,192.168.122.9
check "--dns-upstream" expect_error --dns-upstream --dns-upstream nowhere
check "--host-address" expect_error --host-address --host-address 1.2.3
check "--domain" expect_error --domain --domain "bad_domain"
check "--max-flows" expect_error --max-flows --max-flows 0
check "--tap name" expect_error --tap --tap "name/with/slash"
check "--socket in a missing directory" expect_error --socket --socket /nonexistent/dir/sock
# A forward whose port is taken fails before anything is opened: no socket file is left.
python3 -c 'import socket,time; s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(30)' >"$WORK/port" &
track $!
wait_for 5 test -s "$WORK/port"
check "--forward on a port in use" expect_error --forward --socket "$WORK/s.sock" --forward "tcp:$(cat "$WORK/port"):192.168.122.9:80"
check "nothing half-applied: no socket file left" test ! -e "$WORK/s.sock"
summary
