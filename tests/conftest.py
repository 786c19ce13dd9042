"""Shared fixtures: the tiny model is built once per test session into a temporary cache."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image


# Before anything imports huggingface_hub, which reads these once: no test may wait on the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

# Before anything imports torch: the CPU thread policy of every entry point (docs/CPU.md); the
# subprocesses the tests start inherit it.
from src.cli.threads import configure_cpu_threads  # noqa: E402

configure_cpu_threads()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every cached artefact (tiny model, synthetic data) goes to a fresh directory for the session."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RARL_CACHE", str(tmp_path_factory.mktemp("rarl-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_path(_isolated_cache):
    from src.models.tiny import ensure_tiny

    return ensure_tiny(seed=0)


@pytest.fixture
def tiny_policy(tiny_path):
    """A fresh fp32 CPU copy of the tiny model for each test (loading takes ~0.1 s)."""
    import torch

    from src.models.loading import load_policy

    policy = load_policy(str(tiny_path), device=torch.device("cpu"))
    policy.model.eval()
    return policy


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def chat(question: str, system: str = "You are a Medical Assistant.") -> list[dict]:
    return [{"role": "system", "content": system},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
