"""Before the slow work and around it: checks that cost milliseconds, run before anything that costs
minutes (loading weights, reaching the hub), each raising a UserError that names the flag and what to
change; and `phase`, one line on stderr as a slow phase starts and one with its duration as it ends,
for the phases whose own progress bar (if any) does not say what is being loaded: datasets, models,
the BERTScore model."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from src.errors import UserError


def check_writable(path: str | Path, flag: str = "--output-dir") -> None:
    """`path` is a directory we can write into, or can be created under its nearest existing parent."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: exists and is not a directory")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {existing} is not writable")


def check_model_source(name: str, flag: str = "--model") -> None:
    """`name` is a tiny model ('tiny', 'tiny-qwen3-vl', ...), a model or adapter directory (whose base is
    usable), or a hub id; with HF_HUB_OFFLINE set, a hub id must already be in the local cache. A model
    whose config.json is here is of a supported family (src/models/families.py)."""
    from src.models.families import checkpoint_family
    from src.models.loading import base_model_name, is_hub_id
    from src.models.tiny import is_tiny

    if is_tiny(name):
        return
    path = Path(name)
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            base = base_model_name(name)
            if not Path(base).is_dir() and not is_hub_id(base):
                raise UserError(f"{flag} {name}: its base model {base} (base_model_name_or_path in "
                                "adapter_config.json) is not a directory here; put the base model there or "
                                "edit that field")
            return check_model_source(base, f"{flag} {name}: base model")
        if not (path / "config.json").is_file():
            raise UserError(f"{flag} {name}: holds neither a model (config.json) nor an adapter (adapter_config.json)")
        checkpoint_family(name, f"{flag} {name}")
        return
    if not is_hub_id(name):
        raise UserError(f"{flag} {name}: no such directory, and not a hub id like Qwen/Qwen2-VL-2B-Instruct")
    from src.data.hub import offline

    if offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise UserError(f"{flag} {name}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                            f"download it (hf download {name}) or pass a local directory")
        checkpoint_family(name, f"{flag} {name}")


def check_installed(module: str, what: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{what} needs the {module} package: pip install -e '.[{extra}]'")


@contextlib.contextmanager
def phase(what: str, enabled: bool = True) -> Iterator[None]:
    """Print "WHAT ..." as the phase starts and "WHAT: done in S s" as it ends (rank 0 only: `enabled`)."""
    if enabled:
        print(f"{what} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    if enabled:
        print(f"{what}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
