#!/usr/bin/env python3
"""The disk's own fsync tail: appends 2 KiB and fdatasyncs it, about 1,000
times a second for SECONDS, in a scratch file under DIR, and prints the
latency quantiles and how many took over 50 and 200 ms. A node's send
waits for its batch's fdatasync, so this bounds the p99 a durable run can
show on the machine. A measurement, not a test:

    scripts/fsync-tail.py [DIR (default $TMPDIR or /tmp)] [SECONDS (default 20)]
"""
import os
import sys
import tempfile
import time

directory = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TMPDIR", "/tmp")
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
fd, path = tempfile.mkstemp(prefix="fsync-tail.", dir=directory)
try:
    chunk = b"x" * 2048
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        os.write(fd, chunk)
        started = time.perf_counter()
        os.fdatasync(fd)
        latencies.append(time.perf_counter() - started)
        time.sleep(0.0005)
finally:
    os.close(fd)
    os.unlink(path)
latencies.sort()
n = len(latencies)
ms = lambda q: latencies[min(n - 1, int(q * n))] * 1000
print(f"{n} fdatasyncs in {seconds:g} s under {directory}: p50 {ms(0.5):.2f} ms, p99 {ms(0.99):.2f}, "
      f"p99.9 {ms(0.999):.2f}, max {latencies[-1] * 1000:.1f}; "
      f"over 50 ms: {sum(x > 0.05 for x in latencies)}, over 200 ms: {sum(x > 0.2 for x in latencies)}")
