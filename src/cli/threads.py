"""How CPU runs share the machine: OpenMP threads that spin only while the machine is theirs.

torch runs its CPU kernels on an OpenMP team of one thread per core. Between kernels, GNU OpenMP
(the runtime torch's CPU wheels ship) keeps idle team threads spinning for a while, which is what
makes a lone run fast. When two such runs share the cores, each one's spinning threads take the
cores the other's working threads need: on 2 cores the demo's RL step went from ~2 s to ~11 s.
Threads that wait passively (sleep until woken) share well but slow a lone run down by 1.2-2x on
the tiny model's many small kernels, and one thread per run is 1.5x slower alone (docs/CPU.md).

So the policy is chosen once per process, before torch loads OpenMP. The run's threads wait
passively (OMP_WAIT_POLICY=PASSIVE) when the machine is not free as it starts:
- another run of this project is going (each entry point registers itself in a folder under the
  temporary directory; the processes this one descends from do not count: pytest waits idle on
  the train.py it started), which also settles two runs started in the same instant;
- or other processes used more CPU over a quarter of a second than leaves this run's threads a core
  each.
Otherwise nothing changes. The thread count is never changed: results do not depend on the choice,
only speed does (a different thread count changes the order of floating-point reductions). An
explicit OMP_WAIT_POLICY or GOMP_SPINCOUNT in the environment is left alone; children inherit the
choice through it.
"""
from __future__ import annotations

import atexit
import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path

SAMPLE_SECONDS = 0.25
REGISTRY = Path(tempfile.gettempdir()) / "rarl-cpu-runs"


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


def ancestors() -> set[int]:
    """The process ids this process descends from (its parent, the parent's parent, ...)."""
    found, pid = set(), os.getppid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def register_run(registry: Path = REGISTRY) -> list[int]:
    """Record this process as a running CPU run until it exits; returns the other live runs it is
    not descended from. Checking and registering happen under one lock, so of two runs started in
    the same instant the second sees the first."""
    try:
        registry.mkdir(parents=True, exist_ok=True)
        with open(registry / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            others = []
            for entry in registry.glob("[0-9]*"):
                pid = int(entry.name)
                if not is_alive(pid):
                    entry.unlink(missing_ok=True)
                elif pid != os.getpid():
                    others.append(pid)
            (registry / str(os.getpid())).touch()
    except OSError:  # no writable temporary directory: the load measurement alone decides
        return []
    atexit.register(lambda: (registry / str(os.getpid())).unlink(missing_ok=True))
    return [pid for pid in others if pid not in ancestors()]


def configure_cpu_threads() -> None:
    """Call at the top of an entry point, before anything imports torch."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ or "torch" in sys.modules:
        return
    others = register_run()
    load = other_cpu_load()
    if load is None:
        return
    cores = len(os.sched_getaffinity(0))
    threads = int(os.environ.get("OMP_NUM_THREADS", cores))
    if others or should_wait_passively(load, cores, threads):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        if not {"-h", "--help"} & set(sys.argv[1:]):
            why = f"{len(others)} other run(s) of this project" if others else \
                f"other processes use {load:.1f} of {cores} cores"
            print(f"CPU shared ({why}): threads wait passively (docs/CPU.md)", file=sys.stderr)
