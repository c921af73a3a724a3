#!/usr/bin/env python3
"""A node's slowest store commit, from a saved /metrics page: the bound of
the commit-latency histogram's first bucket that holds every commit, and
how many commits took over 10 ms. A send waits for its batch's fsync, so
one slow commit holds every send behind it (BENCHMARKS.md, "Where the rare
p99 outliers come from").

    scripts/commits.py METRICS_FILE      # "slowest commit ≤25 ms, 1 over 10 ms"
"""
import os
import sys


def slowest(path):
    """("≤25", 1) for a run whose slowest commit took 10-25 ms and one
    commit over 10 ms; None without the file or without commits."""
    if not os.path.exists(path):
        return None
    buckets = []
    for line in open(path):
        if line.startswith("ourchat_store_commit_latency_us_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    if not buckets or not buckets[-1][1]:
        return None
    total = buckets[-1][1]
    bound = next(le for le, count in buckets if count >= total)
    within_10ms = max((count for le, count in buckets if le <= 10_000), default=0)
    return ("≤" + (f"{bound / 1000:g}" if bound != float("inf") else "inf"), int(total - within_10ms))


if __name__ == "__main__":
    found = slowest(sys.argv[1])
    print(f"slowest commit {found[0]} ms, {found[1]} over 10 ms" if found else "no commits recorded")
