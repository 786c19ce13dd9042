"""Peak memory of a stretch of code: CUDA allocator peak on GPU, peak resident set size on CPU.

On CUDA the figure is torch.cuda.max_memory_allocated (tensors only, not the allocator's cache).
On CPU torch's allocations are invisible to tracemalloc, so the figure is the process's VmHWM (peak
resident set size, Linux), whose high-water mark `reset_peak` sets back to the current size. The
trainer logs the process's peak (metrics.jsonl's peak_memory_mb); the benchmarks reset it per phase.
Without /proc (macOS) the CPU peak is getrusage's, which cannot be reset.
"""
from __future__ import annotations

import resource
import sys

import torch


def resident_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in bytes."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer or a peak reading covers it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> int:
    """Start a new peak measurement; returns the bytes in use now."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current resident size
    return resident_bytes("VmRSS")


def peak_bytes(device: torch.device) -> int:
    """Peak bytes in use since the last `reset_peak` (allocated tensors on CUDA, resident set on CPU)."""
    synchronize(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        return resident_bytes("VmHWM")
    except FileNotFoundError:  # no /proc: the process's lifetime peak (bytes on macOS, kilobytes elsewhere)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
