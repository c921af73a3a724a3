#!/usr/bin/env python3
"""Per-thread CPU time, context switches and time spent runnable but
waiting for a CPU (the scheduler's run queue), of a process, from /proc.

  threads.py snap PID FILE        record every thread's counters
  threads.py diff A B MESSAGES    per message between two records,
                                      summed by thread name
"""
import json
import os
import sys


def snap(pid, path):
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            stat = open(f"{base}/stat").read()
            status = open(f"{base}/status").read().splitlines()
            name = open(f"{base}/comm").read().strip()
            waited_ns = int(open(f"{base}/schedstat").read().split()[1])
        except OSError:
            continue  # the thread ended meanwhile
        fields = stat[stat.rfind(")") + 2:].split()
        switches = {l.split(":")[0]: int(l.split()[1]) for l in status if "ctxt_switches" in l}
        threads[tid] = [name, int(fields[11]), int(fields[12]),
                        switches["voluntary_ctxt_switches"], switches["nonvoluntary_ctxt_switches"], waited_ns]
    json.dump(threads, open(path, "w"))


def diff(before, after, messages):
    a, b = json.load(open(before)), json.load(open(after))
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    by_name = {}
    for tid, (name, *counters) in b.items():
        if tid in a:
            row = by_name.setdefault(name, [0, 0, 0, 0, 0])
            for i, (now, then) in enumerate(zip(counters, a[tid][1:])):
                row[i] += now - then
    total = [0, 0, 0, 0, 0]
    # Queued: µs runnable but not running, per message and per time the
    # thread was switched in (a wake-up or a preemption's end).
    print(f"{'thread':20s} {'user µs':>8s} {'sys µs':>8s} {'sleeps':>7s} {'preempted':>9s}"
          f" {'queued µs':>9s} {'per switch':>10s}  (per message)")
    row_line = lambda name, row: (
        f"{name:20s} {row[0] * tick_us / messages:8.1f} {row[1] * tick_us / messages:8.1f}"
        f" {row[2] / messages:7.2f} {row[3] / messages:9.2f} {row[4] / 1e3 / messages:9.1f}"
        f" {row[4] / 1e3 / max(row[2] + row[3], 1):10.1f}")
    for name, row in sorted(by_name.items()):
        if any(row):
            total = [t + r for t, r in zip(total, row)]
            print(row_line(name, row))
    print(row_line("total", total))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "snap":
        snap(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "diff":
        diff(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        sys.exit(__doc__)
