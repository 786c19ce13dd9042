"""How CPU runs share the machine: OpenMP threads that spin only while the machine is theirs.

torch runs its CPU kernels on an OpenMP team of one thread per core. Between kernels, GNU OpenMP
(the runtime torch's CPU wheels ship) keeps idle team threads spinning for a while, which is what
makes a lone run fast. When two such runs share the cores, each one's spinning threads take the
cores the other's working threads need: on 2 cores the demo's RL step went from ~2 s to ~11 s.
Threads that wait passively (sleep until woken) share well but slow a lone run down by 1.5-2x on
the tiny model's many small kernels, and one thread per run is 1.5x slower alone (docs/CPU.md).

So the policy is chosen once per process, before torch loads OpenMP: the CPU time other processes
used over a quarter of a second is measured, and when they leave fewer cores free than this run's
threads need, its threads wait passively (OMP_WAIT_POLICY=PASSIVE); otherwise nothing changes. The
thread count is never changed: results do not depend on the choice, only speed does (a different
thread count changes the order of floating-point reductions). An explicit OMP_WAIT_POLICY or
GOMP_SPINCOUNT in the environment is left alone; children inherit the choice through it.
"""
from __future__ import annotations

import os
import sys
import time

SAMPLE_SECONDS = 0.25


def cpu_busy_seconds() -> float | None:
    """CPU seconds all processes have run since boot (/proc/stat), None where there is no /proc."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:9]]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def other_cpu_load(seconds: float = SAMPLE_SECONDS) -> float | None:
    """Cores' worth of CPU the other processes use, averaged over `seconds` (this one sleeps meanwhile)."""
    start_busy, start_own, start = cpu_busy_seconds(), time.process_time(), time.monotonic()
    if start_busy is None:
        return None
    time.sleep(seconds)
    busy, own = cpu_busy_seconds() - start_busy, time.process_time() - start_own
    return max(0.0, (busy - own) / (time.monotonic() - start))


def should_wait_passively(other_load: float, cores: int, threads: int) -> bool:
    """Spinning threads help only while every one of them has a core: passive once others leave
    fewer than `threads` cores free (half a core of slack for the odd background task)."""
    return other_load + threads > cores + 0.5


def configure_cpu_threads() -> None:
    """Call at the top of an entry point, before anything imports torch."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ or "torch" in sys.modules:
        return
    load = other_cpu_load()
    if load is None:
        return
    cores = len(os.sched_getaffinity(0))
    threads = int(os.environ.get("OMP_NUM_THREADS", cores))
    if should_wait_passively(load, cores, threads):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        print(f"CPU shared: other processes use {load:.1f} of {cores} cores, so this run's threads wait "
              "passively instead of spinning (docs/CPU.md)", file=sys.stderr)
