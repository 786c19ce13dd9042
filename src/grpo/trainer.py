"""The training loop. One step = one batch of B prompts:

    rollout   sample G completions per prompt, score them, group-normalise the rewards (eq. 2)
    reference log pi_ref of every completion token, only when beta > 0 (eq. 3)
    old       log pi_old, only when num_iterations > 1 (with one update the ratio is exactly 1)
    update    num_iterations times: accumulate the GRPO loss (eq. 1) over mini-batches, clip the
              gradient norm, one AdamW step, one schedule step

`--method sft` / `sft-full` replace rollout-to-update by cross-entropy on the reference answer (src/grpo/sft.py).
Shape legend: B prompts, G group size, N = B*G completions, P prompt tokens, L completion tokens.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from src.cli.checks import check_model_source
from src.cli.progress import phase
from src.data.loaders import load_dataset
from src.data.prompts import assign_training_prompts
from src.data.sample import Sample
from src.data.subset import take_subset
from src.grpo.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from src.grpo.config import TrainConfig
from src.grpo.distributed import (
    all_reduce_gradients, barrier, check_batch_split, gather_objects, gather_rows, init_distributed, is_main, rank,
    rank_share, reduce_metrics, sampling_seed, sum_over_ranks,
)
from src.grpo.loss import grpo_loss
from src.grpo.optim import make_optimizer, make_scheduler
from src.grpo.policy_logprobs import completion_logprobs, logprobs_no_grad, minibatches, rows_of
from src.grpo.rollout import Rollout, collect_rollout
from src.eval.files import write_atomic
from src.grpo.run_log import MetricsLog, peak_memory_mb
from src.grpo.tensorboard_log import TensorBoardLog
from src.models.inputs import select_rows
from src.models.loading import Policy, base_model_name, enable_gradient_checkpointing, freeze_vision, load_policy
from src.models.lora import (
    LoRAConfig, disabled_adapters, inject_lora, lora_layers, lora_state_dict, mark_only_lora_as_trainable,
    merge_and_unload, swapped_adapters,
)
from src.rewards.total import RewardWeights


@dataclass
class Run:
    """Everything a run sets up once."""

    cfg: TrainConfig
    policy: Policy
    lora: LoRAConfig | None          # None for grpo-full
    reference: object                # how to evaluate pi_ref: see `reference_context`
    samples: list[Sample]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    params: list[torch.nn.Parameter]
    steps_per_epoch: int
    total_steps: int
    scorer: object                   # BERTScore scorer (None for sft)
    output_dir: Path


def training_samples(cfg: TrainConfig) -> list[Sample]:
    samples = load_dataset(cfg.data.dataset, cfg.data.data_root, cfg.data.split, skip_bad_rows=cfg.data.skip_bad_rows)
    if cfg.data.samples is not None:
        samples = take_subset(samples, cfg.data.samples, seed=cfg.run.seed)
    if not samples:
        raise ValueError(f"no training samples in {cfg.data.dataset}:{cfg.data.split}")
    return samples


def prepare_weights(policy: Policy, cfg: TrainConfig) -> tuple[LoRAConfig | None, object]:
    """Make the right parameters trainable and decide what the reference policy is.

    The reference is the policy the run starts from (the pretrained model in the paper):
    - LoRA from a base model: the same model with adapters disabled (no second copy);
    - LoRA continuing an existing adapter (--model ADAPTER_DIR): that adapter's starting weights,
      swapped in for the reference pass (only the adapter is kept twice);
    - grpo-full: a frozen copy of the starting model, or nothing when beta = 0 (sft-full: none).
    """
    model = policy.model
    freeze_vision(model)
    continuing = any(True for _ in lora_layers(model))
    if cfg.uses_lora:
        lora = LoRAConfig(cfg.model.lora_r, cfg.model.lora_alpha, cfg.model.lora_dropout, cfg.model.lora_targets)
        if not continuing:
            inject_lora(model, lora)
        mark_only_lora_as_trainable(model)
        reference = {k: v.detach().clone() for k, v in lora_state_dict(model).items()} if continuing else "disabled"
        return lora, reference
    merge_and_unload(model)
    model.requires_grad_(True)
    freeze_vision(model)
    reference = None
    if cfg.loss.beta > 0 and not cfg.is_sft:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    return None, reference


def reference_context(run: Run):
    """A context in which `run.policy.model` computes pi_ref (or a separate frozen model for grpo-full)."""
    if run.reference == "disabled":
        return disabled_adapters(run.policy.model)
    if isinstance(run.reference, dict):
        return swapped_adapters(run.policy.model, run.reference)
    return contextlib.nullcontext()


def reference_logprobs(run: Run, rollout: Rollout) -> torch.Tensor:
    mb, temp = run.cfg.optim.mini_batch_size, run.cfg.rollout.temperature
    model = run.reference if isinstance(run.reference, torch.nn.Module) else run.policy.model
    model.eval()
    with reference_context(run):
        return logprobs_no_grad(model, rollout.prompts, rollout.completion_ids, rollout.completion_mask, temp, mb)


def setup(cfg: TrainConfig) -> Run:
    rank_device = init_distributed(cfg.run.device)  # None unless launched by torchrun with > 1 process
    torch.manual_seed(cfg.run.seed)  # LoRA A's Kaiming init draws from the global generator: same on every rank
    device = rank_device or (torch.device(cfg.run.device) if cfg.run.device else None)
    # the data, then where the model is: every cheap check before any weights load
    with phase(f"dataset {cfg.data.dataset}:{cfg.data.split}", enabled=is_main()):
        samples = training_samples(cfg)
    check_batch_split(len(samples), cfg.optim.prompts_per_step)
    check_model_source(cfg.model.model)
    with phase(f"model {cfg.model.model}", enabled=is_main()):
        policy = load_policy(cfg.model.model, device=device)
    lora, reference = prepare_weights(policy, cfg)
    if rank_device is not None:
        torch.manual_seed(sampling_seed(cfg.run.seed))  # replicas are initialised; each rank samples its own
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(policy.model)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    steps_per_epoch = math.ceil(len(samples) / cfg.optim.prompts_per_step)
    total_steps = cfg.optim.max_steps or steps_per_epoch * cfg.optim.epochs
    optimizer = make_optimizer(params, cfg.learning_rate, cfg.optim.weight_decay)
    updates_per_step = 1 if cfg.is_sft else cfg.loss.num_iterations
    scheduler = make_scheduler(optimizer, total_steps * updates_per_step, cfg.optim.warmup_ratio, cfg.optim.schedule)
    scorer = None
    if not cfg.is_sft:
        from src.rewards.bertscore import load_bertscorer

        with phase("BERTScore model", enabled=is_main()):
            scorer = load_bertscorer(cfg.reward.bertscore_model, device=policy.device)
    return Run(cfg=cfg, policy=policy, lora=lora, reference=reference, samples=samples, optimizer=optimizer,
               scheduler=scheduler, params=params, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
               scorer=scorer, output_dir=Path(cfg.run.output_dir))


def batch_for_step(step: int, num_samples: int, batch_size: int, seed: int) -> tuple[int, list[int]]:
    """(epoch, sample indices) of a step: a fresh seeded permutation per epoch, read in order.

    A pure function of the step, so resuming at step S needs nothing but S.
    """
    steps_per_epoch = math.ceil(num_samples / batch_size)
    epoch, offset = divmod(step, steps_per_epoch)
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return epoch, order[offset * batch_size:(offset + 1) * batch_size]


def micro_weight(aggregation: str, rows: list[int], mask: torch.Tensor, max_length: int,
                 batch_rows: float, batch_tokens: float) -> float:
    """Scale of one mini-batch's loss so that the accumulated gradient equals the whole batch's.

    grpo_loss normalises by what it sees: its completions ("sequence"), its tokens ("token"), or its
    completions x padded length ("dr_grpo"). Re-weighting by this mini-batch's share of the batch
    (batch_rows completions, batch_tokens completion tokens: over all ranks when distributed) gives
    the whole-batch normaliser; for dr_grpo the length is the generation budget, as Dr. GRPO
    intends, rather than the batch's longest completion.
    """
    if aggregation == "token":
        return mask[rows].sum().item() / max(1, batch_tokens)
    share = len(rows) / batch_rows
    if aggregation == "dr_grpo":
        return share * mask.shape[1] / max_length
    return share


def grpo_update(run: Run, rollout: Rollout, ref_logp: torch.Tensor | None,
                old_logp: torch.Tensor | None) -> dict[str, float]:
    """num_iterations optimizer updates on one rollout; returns the last update's statistics."""
    cfg, model = run.cfg, run.policy.model
    n = rollout.completion_ids.shape[0]
    mask = rollout.completion_mask
    batch = sum_over_ranks({"rows": n, "tokens": mask.sum().item()})  # the global batch, over all ranks
    model.train()
    for _ in range(cfg.loss.num_iterations):
        run.optimizer.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "kl": 0.0, "ratio_mean": 0.0, "clipfrac_low": 0.0, "clipfrac_high": 0.0}
        for rows in minibatches(n, cfg.optim.mini_batch_size):
            logp = completion_logprobs(model, select_rows(rollout.prompts, rows), rollout.completion_ids[rows],
                                       mask[rows], cfg.rollout.temperature)                       # [n, L]
            loss, stats = grpo_loss(logp, rows_of(old_logp, rows), rows_of(ref_logp, rows), rollout.advantages[rows],
                                    mask[rows], epsilon_low=cfg.loss.epsilon_low, epsilon_high=cfg.loss.epsilon_high,
                                    beta=cfg.loss.beta, aggregation=cfg.loss.aggregation)
            weight = micro_weight(cfg.loss.aggregation, rows, mask, cfg.rollout.max_completion_length,
                                  batch["rows"], batch["tokens"])
            (loss * weight).backward()
            token_share = mask[rows].sum().item() / max(1, batch["tokens"])  # stats are token means
            totals["loss"] += loss.item() * weight
            for name, value in stats.as_floats().items():
                totals[name] += value * token_share
        all_reduce_gradients(run.params)  # each rank's share was weighted against the global batch: sum them
        grad_norm = torch.nn.utils.clip_grad_norm_(run.params, cfg.optim.max_grad_norm).item()
        run.optimizer.step()
        run.scheduler.step()
    totals = sum_over_ranks(totals)
    totals["grad_norm"] = grad_norm
    return totals


def grpo_step(run: Run, samples: list[Sample], prompt_names: list[str]) -> tuple[dict[str, float], list[dict]]:
    """One GRPO step; returns the step's metrics and one record per sampled completion (completions.jsonl)."""
    cfg = run.cfg
    rollout = collect_rollout(
        run.policy, samples, prompt_names, group_size=cfg.rollout.group_size,
        max_completion_length=cfg.rollout.max_completion_length, temperature=cfg.rollout.temperature,
        mask_truncated=cfg.rollout.mask_truncated, scorer=run.scorer,
        weights=RewardWeights(cfg.reward.format_weight, cfg.reward.length_weight, cfg.reward.accuracy_weight,
                              cfg.reward.reasoning_weight),
        use_reasoning=cfg.uses_reasoning_reward, scale_rewards=cfg.loss.scale_rewards == "group")
    start = time.perf_counter()
    ref_logp = reference_logprobs(run, rollout) if cfg.loss.beta > 0 else None
    old_logp = None
    if cfg.loss.num_iterations > 1:
        run.policy.model.eval()
        old_logp = logprobs_no_grad(run.policy.model, rollout.prompts, rollout.completion_ids,
                                    rollout.completion_mask, cfg.rollout.temperature, cfg.optim.mini_batch_size)
    seconds_reference = time.perf_counter() - start
    start = time.perf_counter()
    stats = grpo_update(run, rollout, ref_logp, old_logp)
    lengths = rollout.completion_mask.sum(1).float()
    rewards = gather_rows(rollout.rewards)                                       # [N] of the global batch
    metrics = {
        **stats,
        "clip_ratio": stats["clipfrac_low"] + stats["clipfrac_high"],
        "reward": rewards.mean().item(),
        "reward_std": rewards.std().item() if len(rewards) > 1 else 0.0,
        **rollout.reward_means,
        "completion_length": lengths.mean().item(),
        "frac_truncated": rollout.truncated.float().mean().item(),
        "frac_zero_std": rollout.frac_zero_std,
        "time/generate": rollout.seconds_generate,
        "time/score": rollout.seconds_score,
        "time/reference": seconds_reference,
        "time/update": time.perf_counter() - start,
        "sample_completion": rollout.texts[0][:300],
    }
    return metrics, completion_records(rollout, samples, prompt_names, cfg.rollout.group_size)


def completion_records(rollout: Rollout, samples: list[Sample], prompt_names: list[str],
                       group_size: int) -> list[dict]:
    """What each sampled completion was and what it earned: the question it answers (sample id,
    training prompt), its text, its total reward and each component, its advantage, and whether it
    was cut off. Row b*G+g is completion g of prompt b."""
    return [{"id": samples[i // group_size].id, "prompt": prompt_names[i // group_size], "completion": text,
             "reward": rollout.rewards[i].item(),
             **{f"reward/{name}": values[i] for name, values in rollout.reward_components.items()},
             "advantage": rollout.advantages[i].item(), "truncated": bool(rollout.truncated[i])}
            for i, text in enumerate(rollout.texts)]


RESUMABLE_CHANGES = ("run.resume", "run.output_dir", "run.save_steps", "run.device", "run.report_to",
                     "optim.max_steps", "optim.epochs")
"""Settings a resumed run may change: where the run directory now lies, when to save, where to run,
where else metrics go, and how long to go on."""


def check_same_settings(saved_path: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a run under other settings: its checkpoints and metrics belong to the saved ones.

    Fields that a config.json written by an older version lacks are taken as unchanged.
    """
    if not saved_path.is_file():
        return
    saved, current = json.loads(saved_path.read_text()), json.loads(cfg.to_json())
    changed = [f"{section}.{name}: {saved[section][name]!r} -> {value!r}"
               for section, values in current.items() for name, value in values.items()
               if f"{section}.{name}" not in RESUMABLE_CHANGES and name in saved.get(section, {})
               and saved[section][name] != value]
    if changed:
        raise ValueError(f"--resume: {saved_path} was written with other settings ({'; '.join(changed)}); "
                         "resume with the saved settings, or start the new run in another --output-dir")


def train(cfg: TrainConfig) -> Path:
    """Run the configured method to the end; returns the final checkpoint directory.

    Under torchrun every rank runs this loop on its share of each step (src/grpo/distributed.py);
    only rank 0 writes config.json, metrics.jsonl and checkpoints (and returns the directory; the
    other ranks return None).
    """
    from src.grpo.sft import sft_step

    out = Path(cfg.run.output_dir)
    checkpoint = latest_checkpoint(out) if cfg.run.resume else None
    if checkpoint is not None:
        check_same_settings(out / "config.json", cfg)
    run = setup(cfg)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "config.json", cfg.to_json() + "\n")
        print(cfg.to_json())
    start_step = 0
    if checkpoint is not None:
        start_step, rng_states = load_checkpoint(checkpoint, run.policy, cfg.uses_lora, run.optimizer, run.scheduler)
        if rank() < len(rng_states):  # a rank the checkpoint did not know keeps its fresh seeded stream
            set_rng_state(rng_states[rank()])
        if is_main():
            print(f"resumed from {checkpoint} at step {start_step}")
    log = MetricsLog(out / "metrics.jsonl", resume_step=start_step) if is_main() else None
    board = None  # --report-to tensorboard: the same records, as TensorBoard scalars
    if is_main() and cfg.run.report_to == "tensorboard":
        board = TensorBoardLog(out / "tensorboard", start_step)
    completions_log = None  # RL only: one line per sampled completion
    if is_main() and not cfg.is_sft:
        completions_log = MetricsLog(out / "completions.jsonl", resume_step=start_step)
    last = latest_checkpoint(out) if start_step == run.total_steps else None
    progress = tqdm(range(start_step, run.total_steps), desc=cfg.run.method, initial=start_step, unit="step",
                    total=run.total_steps, dynamic_ncols=True, disable=not is_main())  # steps/s, time left
    for step in progress:
        epoch, indices = batch_for_step(step, len(run.samples), cfg.optim.prompts_per_step, cfg.run.seed)
        names = assign_training_prompts(len(run.samples), cfg.run.method, seed=cfg.run.seed * 1_000 + epoch)
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
                                 "peak_memory_mb": peak_memory_mb(run.policy.device)})
        if is_main():
            log.write(record)
            if board is not None:
                board.write(record)
            for completion in completions:
                completions_log.write({"step": step + 1, **completion})
        progress.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "reward") if k in record})
        if (step + 1) % cfg.run.save_steps == 0 or step + 1 == run.total_steps:
            rng_states = gather_objects(rng_state())  # every rank's, so a resume on as many ranks is exact
            if is_main():
                last = save_checkpoint(out, step + 1, run.policy, run.lora, base_model_name(cfg.model.model),
                                       run.optimizer, run.scheduler, rng_states)
            barrier()  # no rank runs ahead (or ends) before the checkpoint is complete
    if board is not None:
        board.close()
    return last
