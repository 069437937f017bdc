#!/usr/bin/env bash
# nat-bench.sh: runs nat-peers.sh ROUNDS times (engines interleaved within each round) and
# prints, per engine and MTU, the median of the rounds for every column as a Markdown table.
# Usage (root): bench/nat-bench.sh [OUT.md]     env: ROUNDS (3), and nat-peers.sh's knobs.
set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROUNDS=${ROUNDS:-3}
OUT=${1:-/dev/stdout}
TMP=$(mktemp -d /tmp/nat-bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
for r in $(seq "$ROUNDS"); do
  echo "[nat-bench] round $r of $ROUNDS" >&2
  OUT_CSV="$TMP/round$r.csv" bash "$HERE/nat-peers.sh" >"$TMP/round$r.log" 2>&1 \
    || { echo "[nat-bench] round $r failed:" >&2; tail -20 "$TMP/round$r.log" >&2; exit 1; }
  sed -n '/^Notes:/,/^$/p' "$TMP/round$r.log" >&2
done
python3 - "$TMP" "$ROUNDS" >"$OUT" <<'PY'
import csv, glob, os, statistics, sys, platform, subprocess
tmp, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
cols = None
for f in sorted(glob.glob(os.path.join(tmp, "round*.csv"))):
    with open(f) as fh:
        r = csv.DictReader(fh)
        cols = r.fieldnames
        for row in r:
            rows.setdefault((row["engine"], row["mtu"]), []).append(row)
def med(vals):
    v = [float(x) for x in vals if x not in ("NA", "")]
    return statistics.median(v) if v else None
show = ["tcp_up_gbps", "tcp_down_gbps", "rr_median_us", "conn_per_s", "udp_rr_median_us",
        "pinned_rr_median_us", "pinned_conn_per_s", "pinned_udp_rr_median_us"]
print("| engine | MTU | " + " | ".join(show) + " |")
print("|---|---|" + "---|" * len(show))
order = ["skiff", "pasta", "slirp4netns", "kernel-nat"]
for (eng, mtu) in sorted(rows, key=lambda k: (int(k[1]), order.index(k[0]) if k[0] in order else 9)):
    vals = []
    for c in show:
        m = med(r[c] for r in rows[(eng, mtu)])
        vals.append("NA" if m is None else ("%.2f" % m if "gbps" in c else "%.0f" % m if "conn" in c else "%.1f" % m))
    print("| %s | %s | %s |" % (eng, mtu, " | ".join(vals)))
print()
print("Medians of %d rounds; within a round the engines run one after another (interleaved)." % rounds)
for mtu in sorted({k[1] for k in rows}, key=int):
    s, l = rows.get(("skiff", mtu)), rows.get(("slirp4netns", mtu))
    if s and l:
        for c in ("tcp_up_gbps", "tcp_down_gbps"):
            a, b = med(r[c] for r in s), med(r[c] for r in l)
            if a and b:
                print("- MTU %s %s: skiff / slirp4netns = %.2f" % (mtu, c, a / b))
    s, p = rows.get(("skiff", mtu)), rows.get(("pasta", mtu))
    if s and p:
        for c in ("tcp_up_gbps", "tcp_down_gbps"):
            a, b = med(r[c] for r in s), med(r[c] for r in p)
            if a and b:
                print("- MTU %s %s: skiff / pasta = %.2f" % (mtu, c, a / b))
PY
