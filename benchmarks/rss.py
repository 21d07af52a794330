"""Memory figures of the benchmark process itself, for the benchmarks' worker processes.

`peak_rss_mb()` reads VmHWM, the high-water mark of this process's own memory, which starts afresh at
exec. Not `ru_maxrss`: Linux carries a parent's RSS at fork over into the child's `ru_maxrss` (the
pre-exec mark is kept), so a worker started by a parent that holds a generated corpus would report at
least the parent's size. `ru_maxrss` is only the fallback where /proc is unavailable.
"""

from __future__ import annotations

import resource


def _status_mb(field: str) -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Resident memory now (MB)."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident memory of this process since its exec (MB)."""
    return _status_mb("VmHWM")
