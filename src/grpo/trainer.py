"""The training loop: set a run up once, then step, log and checkpoint until the end.

Each RL step is src/grpo/step.py's grpo_step (sample, score, reference, update, in the paper's order);
`--method sft` / `sft-full` replace it by cross-entropy on the reference answer (src/grpo/sft.py).
Everything cheap is checked before weights load: the dataset's files (fetched from the Hub when no
folder is given, their commit recorded in config.json), rows and images, the model's whereabouts, and
that every training prompt fits the model (check_training_prompts, below).
Shape legend: B prompts, G group size, N = B*G completions, P prompt tokens, L completion tokens.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from src.checks import check_model_source, phase
from src.data.loaders import DataSource, locate_dataset, read_dataset
from src.data.prompts import TRAINING_PROMPTS, assign_training_prompts
from src.data.rows import DatasetError
from src.data.sample import Sample
from src.data.subset import take_subset
from src.files import changed_settings, write_atomic
from src.grpo.checkpoint import (
    checkpoint_step, load_checkpoint, resume_checkpoint, rng_state, save_checkpoint, set_rng_state,
)
from src.grpo.config import TrainConfig
from src.grpo.distributed import (
    barrier, check_batch_split, gather_objects, init_distributed, is_main, rank,
    rank_share, reduce_metrics, sampling_seed, sum_over_ranks,
)
from src.grpo.optim import make_optimizer, make_scheduler
from src.grpo.run_log import MetricsLog, TensorBoardLog, check_run_log
from src.grpo.sft import sft_target
from src.grpo.step import Reference, Run, grpo_step, make_reference
from src.memory import peak_bytes
from src.models.loading import (
    Policy, base_model_name, default_device, enable_gradient_checkpointing, freeze_vision, load_policy, resolve_dtype,
)
from src.models.lora import LoRAConfig, inject_lora, lora_layers, mark_only_lora_as_trainable, merge_and_unload
from src.models.prompt_length import PromptLimit
from src.run_guard import Interrupted, signal_name, stop_requested, stop_signals


def training_source(cfg: TrainConfig) -> DataSource:
    """Where the training set is read from: --data-root, or its files fetched from the Hub (at
    --data-revision) into the Hub cache."""
    return locate_dataset(cfg.data.dataset, cfg.data.data_root, cfg.data.split, cfg.data.revision)


def training_samples(cfg: TrainConfig, source: DataSource) -> list[Sample]:
    samples = read_dataset(source, cfg.data.split, skip_bad_rows=cfg.data.skip_bad_rows)
    check_model_source(cfg.model.model)  # the prompt check reads its tokenizer: say first if it is not there
    samples = check_training_prompts(samples, cfg)  # tokenizer and config only: no weights
    if cfg.data.samples is not None:
        samples = take_subset(samples, cfg.data.samples, seed=cfg.run.seed)
    if not samples:
        raise ValueError(f"no training samples in {cfg.data.dataset}:{cfg.data.split}")
    return samples


def prepare_weights(policy: Policy, cfg: TrainConfig) -> tuple[LoRAConfig | None, Reference | None]:
    """Make the right parameters trainable and build the reference policy (src/grpo/step.py: make_reference).

    LoRA from a base model injects a fresh adapter; from an adapter directory it trains that adapter
    on. The -full methods fold any adapter into the weights and train the whole language model. The
    vision tower and its merger stay frozen in every method.
    """
    model = policy.model
    freeze_vision(model)
    continuing = any(True for _ in lora_layers(model))
    if cfg.uses_lora:
        if not continuing:
            inject_lora(model, cfg.lora)
        mark_only_lora_as_trainable(model)
    else:
        merge_and_unload(model)
        model.requires_grad_(True)
        freeze_vision(model)
    reference = None
    if cfg.loss.beta > 0 and not cfg.is_sft:
        reference = make_reference(model, cfg.uses_lora, continuing)
    return (cfg.lora if cfg.uses_lora else None), reference


def setup(cfg: TrainConfig, source: DataSource | None = None) -> Run:
    """The run before its first step: the data checked, the model loaded and prepared. `source`: the
    training set as `train` located it (default: located here)."""
    rank_device = init_distributed(cfg.run.device)  # None unless launched by torchrun with > 1 process
    torch.manual_seed(cfg.run.seed)  # LoRA A's Kaiming init draws from the global generator: same on every rank
    random.seed(cfg.run.seed)  # no step draws from Python's or numpy's global generator; seeded all the same, so
    np.random.seed(cfg.run.seed)  # that the RNG states a checkpoint saves are the same for the same seed
    device = rank_device or (torch.device(cfg.run.device) if cfg.run.device else None)
    # the data, where the model is, and every prompt's length: every cheap check before any weights load
    with phase(f"dataset {cfg.data.dataset}:{cfg.data.split}", enabled=is_main()):
        samples = training_samples(cfg, source or training_source(cfg))
    check_batch_split(len(samples), cfg.optim.prompts_per_step)
    with phase(f"model {cfg.model.model}", enabled=is_main()):
        policy = load_policy(cfg.model.model, device=device, dtype=resolve_dtype(cfg.model.dtype, device))
    run = prepare_run(policy, cfg, samples, per_rank_sampling=rank_device is not None)
    if not cfg.is_sft:
        from src.rewards.bertscore import load_bertscorer

        with phase("BERTScore model", enabled=is_main()):
            run.scorer = load_bertscorer(cfg.reward.bertscore_model, device=policy.device)
    return run


def prepare_run(policy: Policy, cfg: TrainConfig, samples: list[Sample], per_rank_sampling: bool = False) -> Run:
    """Everything a loaded policy needs before step 1: LoRA (or full fine-tuning), the reference,
    gradient checkpointing, optimizer and schedule (benchmarks/bench_step.py calls it on a policy it built)."""
    lora, reference = prepare_weights(policy, cfg)
    if per_rank_sampling:
        torch.manual_seed(sampling_seed(cfg.run.seed))  # replicas are initialised; each rank samples its own
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(policy.model)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    steps_per_epoch = math.ceil(len(samples) / cfg.optim.prompts_per_step)
    total_steps = cfg.optim.max_steps or steps_per_epoch * cfg.optim.epochs
    optimizer = make_optimizer(params, cfg.learning_rate, cfg.optim.weight_decay)
    updates_per_step = 1 if cfg.is_sft else cfg.loss.num_iterations
    scheduler = make_scheduler(optimizer, total_steps * updates_per_step, cfg.optim.warmup_ratio, cfg.optim.schedule)
    return Run(cfg=cfg, policy=policy, lora=lora, reference=reference, samples=samples, optimizer=optimizer,
               scheduler=scheduler, params=params, steps_per_epoch=steps_per_epoch, total_steps=total_steps)


def batch_for_step(step: int, num_samples: int, batch_size: int, seed: int) -> tuple[int, list[int]]:
    """(epoch, sample indices) of a step: a fresh seeded permutation per epoch, read in order.

    A pure function of the step, so resuming at step S needs nothing but S.
    """
    steps_per_epoch = math.ceil(num_samples / batch_size)
    epoch, offset = divmod(step, steps_per_epoch)
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return epoch, order[offset * batch_size:(offset + 1) * batch_size]


RESUMABLE_CHANGES = ("run.resume", "run.output_dir", "run.save_steps", "run.device", "run.report_to",
                     "optim.max_steps", "optim.epochs", "model.prefix_sharing", "data.data_revision")
"""Settings a resumed run may change: where the run directory now lies, when to save, where to run,
where else metrics go, how long to go on, and whether prompts are shared (the same numbers either way).
The data revision is compared as the commit it gives once fetched (check_same_data)."""


def check_same_settings(saved_path: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a run under other settings: its checkpoints and metrics belong to the saved ones."""
    changed = changed_settings(saved_path, json.loads(cfg.to_json()), RESUMABLE_CHANGES)
    if changed:
        raise ValueError(f"--resume: {saved_path} was written with other settings ({'; '.join(changed)}); "
                         "resume with the saved settings, or start the new run in another --output-dir")


def check_same_data(saved_path: Path, source: DataSource) -> None:
    """Refuse to resume on other files than the run started with: the commit config.json records for a
    dataset fetched from the Hub must be the one fetched now."""
    saved = json.loads(saved_path.read_text()).get("data", {}).get("data_revision")
    if saved is None or source.commit is None:  # a folder, then or now: --data-root's own check covers it
        return
    commit = saved.partition("=")[2]
    if commit != source.commit:
        raise DatasetError(f"--resume: {saved_path} trained on {source.name} from {source.repo} at commit {commit}; "
                           f"the Hub now gives commit {source.commit}: resume on the same files with "
                           f"--data-revision {source.name}={commit}, or start a new run in another --output-dir")


def pinned_to(cfg: TrainConfig, source: DataSource) -> TrainConfig:
    """`cfg` with --data-revision set to the commit the training files came from (config.json records it,
    and every later read of the dataset in this run takes exactly those files)."""
    if source.commit is None:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_revision=f"{source.name}={source.commit}"))


def train(cfg: TrainConfig) -> Path:
    """Run the configured method to the end; returns the final checkpoint directory.

    Under torchrun every rank runs this loop on its share of each step (src/grpo/distributed.py);
    only rank 0 writes config.json, metrics.jsonl and checkpoints (and returns the directory; the
    other ranks return None). SIGINT or SIGTERM (src/run_guard.py) lets the current step finish, saves
    a checkpoint of it and raises Interrupted: --resume continues from there.
    """
    cfg = cfg.resolved()  # --dtype auto as what it stands for here: config.json records that
    out = Path(cfg.run.output_dir)
    completion_rows = cfg.optim.prompts_per_step * cfg.rollout.group_size  # completions.jsonl lines per step
    checkpoint = resume_checkpoint(out) if cfg.run.resume else None  # skips (and names) damaged checkpoints
    if checkpoint is not None:  # refuse before any model loads or any file changes
        check_same_settings(out / "config.json", cfg)
        check_run_log(out / "metrics.jsonl", checkpoint_step(checkpoint))
        check_run_log(out / "completions.jsonl", checkpoint_step(checkpoint), completion_rows)
    source = training_source(cfg)  # fetched from the Hub now, if need be: its commit is known before anything loads
    if checkpoint is not None:
        check_same_data(out / "config.json", source)
    cfg = pinned_to(cfg, source)
    with stop_signals(), same_sums_on_cpu(cfg.run.device):
        return _train(cfg, out, checkpoint, completion_rows, source)


@contextlib.contextmanager
def same_sums_on_cpu(device: str | None) -> Iterator[None]:
    """Inside, on a CPU run: torch's deterministic kernels, so that two runs with the same seed, settings
    and thread count end with bit-identical weights and metrics (docs/TRAINING.md, Reproducibility).

    The shared-prefix forward (src/models/shared_prefix.py) hands each prompt's keys and values to its
    completions by an expand when a mini-batch holds each prompt's completions in equal runs (whole groups,
    the default), whose backward is an ordered sum; in any other mini-batch by an index, `k_p[owner]`,
    whose backward adds the completions' gradients into the prompt's with index_put_(accumulate=True),
    which torch runs on CPU, from 32,768 values and 2 threads up, as parallel atomic float adds: the order
    of the adds, and so the last bits of the sums, changes from run to run. In deterministic mode torch
    adds them in order; the other CPU kernels a step uses are deterministic already. The mode's
    fill_uninitialized_memory (every new tensor filled with NaN first) is left off: no kernel of a step
    reads memory it did not write (a run gives the same weights with it on), and it costs time. CUDA runs
    are left as they are (deterministic mode there also constrains cuBLAS).
    warn_only: a kernel without a deterministic version warns, naming itself, rather than stopping the run.
    """
    if torch.device(device or default_device()).type != "cpu":
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.utils.deterministic.fill_uninitialized_memory = saved[2]


def _train(cfg: TrainConfig, out: Path, checkpoint: Path | None, completion_rows: int, source: DataSource) -> Path:
    """`train` once its checks passed: set up, restore the checkpoint, then the steps."""
    from src.grpo.sft import sft_step

    run = setup(cfg, source)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "config.json", cfg.to_json() + "\n")
        print(cfg.to_json())
    start_step = 0
    if checkpoint is not None:
        start_step, rng_states = load_checkpoint(checkpoint, run.policy, cfg.uses_lora, run.optimizer, run.scheduler)
        if rank() < len(rng_states):  # a rank the checkpoint did not know keeps its fresh seeded stream
            set_rng_state(rng_states[rank()], run.policy.device)
        if is_main():
            print(f"resumed from {checkpoint} at step {start_step}")
    if stop_signal() is not None:  # a signal while the model loaded: nothing new to save
        raise Interrupted(stop_signal(), f"{signal_name(stop_signal())}: stopped before step {start_step + 1}; "
                                         f"nothing new was trained or written to {out}")
    log = MetricsLog(out / "metrics.jsonl", resume_step=start_step) if is_main() else None
    board = None  # --report-to tensorboard: the same records, as TensorBoard scalars
    if is_main() and cfg.run.report_to == "tensorboard":
        board = TensorBoardLog(out / "tensorboard", start_step)
    completions_log = None  # RL only: one line per sampled completion
    if is_main() and not cfg.is_sft:
        completions_log = MetricsLog(out / "completions.jsonl", resume_step=start_step, rows_per_step=completion_rows)
    last = checkpoint if start_step == run.total_steps else None
    progress = tqdm(range(start_step, run.total_steps), desc=cfg.run.method, initial=start_step, unit="step",
                    total=run.total_steps, dynamic_ncols=True, disable=not is_main())  # steps/s, time left
    for step in progress:
        epoch, indices = batch_for_step(step, len(run.samples), cfg.optim.prompts_per_step, cfg.run.seed)
        names = assign_training_prompts(len(run.samples), cfg.prompt_diversity, seed=cfg.run.seed * 1_000 + epoch)
        indices = rank_share(indices)  # this rank's contiguous share of the step's prompts (all of them on one)
        batch, prompt_names = [run.samples[i] for i in indices], [names[i] for i in indices]
        lr = run.scheduler.get_last_lr()[0]
        if cfg.is_sft:
            metrics, completions = sft_step(run, batch), []
        else:
            metrics, completions = grpo_step(run, batch, prompt_names)
            completions = [c for part in gather_objects(completions) for c in part]  # every rank's, in rank order
        progress_in_epoch = (step % run.steps_per_epoch + 1) / run.steps_per_epoch
        record = reduce_metrics({"step": step + 1, "epoch": epoch + progress_in_epoch, "lr": lr, **metrics,
                                 "peak_memory_mb": peak_bytes(run.policy.device) / 2**20})
        if is_main():
            log.write([record])
            if board is not None:
                board.write(record)
            if completions_log is not None:
                completions_log.write([{"step": step + 1, **completion} for completion in completions])
        progress.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "reward") if k in record})
        stopping = stop_signal()  # the same answer on every rank
        if (step + 1) % cfg.run.save_steps == 0 or step + 1 == run.total_steps or stopping is not None:
            rng_states = gather_objects(rng_state(run.policy.device))  # every rank's: a resume on as many is exact
            if is_main():
                last = save_checkpoint(out, step + 1, run.policy, run.lora, base_model_name(cfg.model.model),
                                       run.optimizer, run.scheduler, rng_states)
            barrier()  # no rank runs ahead (or ends) before the checkpoint is complete
        if stopping is not None:
            progress.close()
            raise Interrupted(stopping, f"{signal_name(stopping)}: stopped after step {step + 1} of "
                                        f"{run.total_steps}, saved as {out / f'checkpoint-{step + 1}'}; continue "
                                        "with the same command and --resume")
    if board is not None:
        board.close()
    return last


def stop_signal() -> int | None:
    """The signal that stops the run at the end of this step: any rank's stops every rank (one all-reduce)."""
    received = stop_requested()
    if sum_over_ranks({"stop": float(received is not None)})["stop"] == 0:
        return None
    return received or signal.SIGTERM  # a rank that got none stops with the others


# ----------------------------------------------------------------------------------------------------
# What a training run checks about its samples before any weights load: each prompt fits the model.
#
# RL samples up to max_completion_length tokens after the prompt; SFT appends the reference target
# (src/grpo/sft.py). The prompts are the method's training prompts (all three for rarl). See
# src/models/prompt_length.py for how a prompt is counted.
# ----------------------------------------------------------------------------------------------------

def check_training_prompts(samples: list[Sample], cfg: TrainConfig) -> list[Sample]:
    """The samples that fit the model; the others raise a DatasetError (or with --skip-bad-rows are left out)."""
    limit = PromptLimit.from_model(cfg.model.model)
    prompts = list(TRAINING_PROMPTS.values()) if cfg.prompt_diversity else [TRAINING_PROMPTS["explanation"]]
    if cfg.is_sft:
        def completion_tokens(sample: Sample) -> int:
            return limit.text_tokens(sft_target(sample) + "<|im_end|>")
    else:
        def completion_tokens(sample: Sample) -> int:
            return cfg.rollout.max_completion_length
    return limit.check(samples, prompts, completion_tokens, cfg.data.skip_bad_rows)
