"""Peak resident memory of this process, resettable (Linux), for memory checks in tests and benches.

``reset_peak_rss()`` clears the kernel's high-water mark (``/proc/self/clear_refs``, value 5);
``peak_rss_mb()`` then reads it (``VmHWM``) and so gives the peak since the reset.  Where
/proc is missing, ``reset_peak_rss()`` returns False and ``peak_rss_mb()`` falls back to
``ru_maxrss``, the peak of the whole process life.
"""
from __future__ import annotations

import resource


def reset_peak_rss() -> bool:
    """Reset the peak-RSS mark; False where the system cannot (then peaks are since start-up)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size in MiB since the last successful reset (else since start-up)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
