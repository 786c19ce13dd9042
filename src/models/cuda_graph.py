"""One decode step captured as a CUDA graph, then replayed for every token.

Eager decoding of a 2B model launches hundreds of small kernels per token, and the GPU idles while Python
issues them. A CUDA graph records the launches once and replays them with one call. That requires a
step whose every input and output lives in tensors allocated before capture (the static KV cache, the
decode state) and that never waits on the host: src/models/engine.py's decode step is written that way.
Random numbers inside the graph come from the default CUDA generator, which advances on each replay.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


class CapturedStep:
    """`step()` captured once; calling the object replays it. Run before the state is initialised: the
    warm-up call executes `step` for real on whatever the state holds (capture itself executes nothing)."""

    def __init__(self, step: Callable[[], None]):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the capture: lazy cuBLAS/allocator initialisation
            step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step()

    def __call__(self) -> None:
        self.graph.replay()
