#!/usr/bin/env python3
"""The disk's own fsync tail: writes 2 KiB and fdatasyncs it, about 1,000
times a second for SECONDS, in a scratch file under DIR, and prints the
latency quantiles, how many took over 50 and 200 ms, and the CPU each
write and fdatasync took. A node's send waits for its batch's fdatasync,
so this bounds the p99 a durable run can show on the machine. A
measurement, not a test:

    scripts/fsync-tail.py [DIR (default $TMPDIR or /tmp)] [SECONDS (default 20)] [FILE]

FILE says what the writes go into: `append` (default) grows the file;
`sparse`, `written` and `fallocated` write from the start of a 64 MiB file
made with a hole, with zeros written, or with `posix_fallocate`. A log
segment is the sparse kind, and the node writes zeros ahead of its end
(`ZERO_AHEAD` in `storage/src/msglog/log.rs`), which `written` models.
"""
import os
import resource
import sys
import tempfile
import time

directory = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TMPDIR", "/tmp")
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
kind = sys.argv[3] if len(sys.argv) > 3 else "append"
SIZE = 64 << 20
fd, path = tempfile.mkstemp(prefix="fsync-tail.", dir=directory)
try:
    if kind == "sparse":
        os.ftruncate(fd, SIZE)
    elif kind == "fallocated":
        os.posix_fallocate(fd, 0, SIZE)
    elif kind == "written":
        zeros = b"\0" * (1 << 20)
        for at in range(0, SIZE, len(zeros)):
            os.pwrite(fd, zeros, at)
    elif kind != "append":
        sys.exit(f"FILE is append, sparse, written or fallocated, not {kind}")
    os.fsync(fd)
    chunk = b"x" * 2048
    latencies = []
    at = 0
    used = resource.getrusage(resource.RUSAGE_SELF)
    end = time.monotonic() + seconds
    while time.monotonic() < end and at + len(chunk) <= SIZE:
        if kind == "append":
            os.write(fd, chunk)
        else:
            os.pwrite(fd, chunk, at)
        at += len(chunk)
        started = time.perf_counter()
        os.fdatasync(fd)
        latencies.append(time.perf_counter() - started)
        time.sleep(0.0005)
    after = resource.getrusage(resource.RUSAGE_SELF)
finally:
    os.close(fd)
    os.unlink(path)
latencies.sort()
n = len(latencies)
ms = lambda q: latencies[min(n - 1, int(q * n))] * 1000
cpu = (after.ru_utime - used.ru_utime + after.ru_stime - used.ru_stime) / n * 1e6
print(f"{n} fdatasyncs ({kind}) in {seconds:g} s under {directory}: p50 {ms(0.5):.2f} ms, p99 {ms(0.99):.2f}, "
      f"p99.9 {ms(0.999):.2f}, max {latencies[-1] * 1000:.1f}; "
      f"over 50 ms: {sum(x > 0.05 for x in latencies)}, over 200 ms: {sum(x > 0.2 for x in latencies)}; "
      f"{cpu:.1f} µs CPU per write and fdatasync")
