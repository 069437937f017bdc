#!/usr/bin/env python3
"""vm-bench.py: skiff's VMM start-up time and memory overhead (run as root, on /dev/kvm).

Start-up: ROUNDS runs of `skiff run` with a guest whose first instructions reset the machine
(tests/guests/tiny.S): the process's wall time and CPU time (user + system, from
getrusage of the child) are start-up plus tear-down, an upper bound on the time to the
guest's first instruction. With --net none and with --net nat (the NAT opens its sockets,
DNS thread and lease database too).

Memory: a 128 MiB guest that halts forever; skiff's resident memory (smaps Rss) minus what
is resident of the guest-RAM memfd mapping, i.e. what the VMM itself costs.

Prints a Markdown table. Firecracker's published figures are the anchors: < 8 ms CPU to
start a microVM, < 5 MiB memory overhead.
"""
import os, resource, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIFF = os.environ.get("SKIFF", os.path.join(ROOT, "target/release/skiff"))
ROUNDS = int(os.environ.get("ROUNDS", "30"))


def build_guests():
    out = tempfile.mkdtemp(prefix="skiff-vm-bench.")
    subprocess.run([os.path.join(ROOT, "tests/guests/build.sh"), out], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def start_times(kernel, net):
    walls, cpus = [], []
    for _ in range(ROUNDS):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        r = subprocess.run([SKIFF, "run", "--kernel", kernel, "--memory", "128", "--net", net],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30,
                           env=dict(os.environ, RUST_LOG="error"))
        t1 = time.perf_counter()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode != 0:
            sys.exit("skiff run failed with %d" % r.returncode)
        walls.append((t1 - t0) * 1000)
        cpus.append(((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def overhead(kernel, net):
    p = subprocess.Popen([SKIFF, "run", "--kernel", kernel, "--memory", "128", "--net", net],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="error"))
    try:
        time.sleep(1.5)
        total = guest = 0
        cur = None
        with open("/proc/%d/smaps" % p.pid) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 5 and "-" in parts[0] and ":" not in parts[0]:
                    cur = line
                elif parts and parts[0] == "Rss:":
                    kb = int(parts[1])
                    total += kb
                    if cur and "skiff-guest-ram" in cur:
                        guest += kb
        return total / 1024, guest / 1024
    finally:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main():
    g = build_guests()
    rows = []
    for net in ("none", "nat"):
        wall, cpu = start_times(os.path.join(g, "tiny-reset.elf"), net)
        total, guest = overhead(os.path.join(g, "tiny-idle.elf"), net)
        rows.append((net, wall, cpu, total, guest, total - guest))
    print("| --net | start+exit wall ms (median of %d) | CPU ms (user+sys) | RSS MiB | guest RAM resident MiB | VMM overhead MiB |" % ROUNDS)
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| %s | %.1f | %.1f | %.1f | %.1f | %.1f |" % r)
    print()
    print("Anchors (Firecracker, published): < 8 ms CPU to start; < 5 MiB overhead.")


if __name__ == "__main__":
    main()
