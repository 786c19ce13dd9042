"""The training loop. One GRPO step on B prompts (grpo_step, in the paper's order):

    sample     G completions per prompt from the current policy (pi_old)
    rewards    r_i of each completion; advantages A_i normalised within its group (eq. 2)
    reference  log pi_ref of every completion token, only when beta > 0 (eq. 3)
    old        log pi_old, only when num_iterations > 1 (with one update the ratio is exactly 1)
    update     num_iterations times: the loss of eq. 1 accumulated over mini-batches, weighted over the
               global batch (loss.token_weights), then one clipped AdamW step

`--method sft` / `sft-full` replace sampling-to-update by cross-entropy on the reference answer (src/grpo/sft.py).
Shape legend: B prompts, G group size, N = B*G completions, P prompt tokens, L completion tokens.
"""
from __future__ import annotations

import json
import math
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from src.checks import check_model_source, phase
from src.data.loaders import load_dataset
from src.data.prompts import assign_training_prompts
from src.data.sample import Sample
from src.data.subset import take_subset
from src.grpo.loss import (
    group_advantages, grpo_loss, sampler_mismatch, tied_group_rows, token_weights, zero_std_fraction,
)
from src.grpo.checkpoint import (
    checkpoint_step, load_checkpoint, resume_checkpoint, rng_state, save_checkpoint, set_rng_state,
)
from src.grpo.config import TrainConfig
from src.grpo.distributed import (
    barrier, check_batch_split, gather_objects, gather_rows, init_distributed, is_main, rank,
    rank_share, reduce_metrics, sampling_seed, sum_over_ranks,
)
from src.grpo.forward import completion_logprobs, minibatches, rollout_logprobs
from src.grpo.optim import make_optimizer, make_scheduler, optimizer_step
from src.grpo.preflight import check_training_prompts
from src.grpo.reference import Reference, make_reference
from src.grpo.rollout import Rollout, sample_rollout
from src.grpo.run_log import MetricsLog, PhaseTimer, TensorBoardLog, check_run_log, grpo_metrics
from src.files import changed_settings, write_atomic
from src.memory import peak_bytes
from src.models.loading import (
    Policy, base_model_name, enable_gradient_checkpointing, freeze_vision, load_policy, resolve_dtype,
)
from src.models.lora import LoRAConfig, inject_lora, lora_layers, mark_only_lora_as_trainable, merge_and_unload
from src.rewards.total import score_completions
from src.run_guard import Interrupted, signal_name, stop_requested, stop_signals


@dataclass
class Run:
    """Everything a run sets up once."""

    cfg: TrainConfig
    policy: Policy
    lora: LoRAConfig | None          # None for the -full methods
    reference: Reference | None      # pi_ref of eq. 3; None when beta = 0 (and for SFT)
    samples: list[Sample]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    params: list[torch.nn.Parameter]
    steps_per_epoch: int
    total_steps: int
    scorer: object = None            # BERTScore scorer (None for sft)


def training_samples(cfg: TrainConfig) -> list[Sample]:
    samples = load_dataset(cfg.data.dataset, cfg.data.data_root, cfg.data.split, skip_bad_rows=cfg.data.skip_bad_rows)
    check_model_source(cfg.model.model)  # the prompt check reads its tokenizer: say first if it is not there
    samples = check_training_prompts(samples, cfg)  # tokenizer and config only: no weights
    if cfg.data.samples is not None:
        samples = take_subset(samples, cfg.data.samples, seed=cfg.run.seed)
    if not samples:
        raise ValueError(f"no training samples in {cfg.data.dataset}:{cfg.data.split}")
    return samples


def prepare_weights(policy: Policy, cfg: TrainConfig) -> tuple[LoRAConfig | None, Reference | None]:
    """Make the right parameters trainable and build the reference policy (src/grpo/reference.py).

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


def setup(cfg: TrainConfig) -> Run:
    rank_device = init_distributed(cfg.run.device)  # None unless launched by torchrun with > 1 process
    torch.manual_seed(cfg.run.seed)  # LoRA A's Kaiming init draws from the global generator: same on every rank
    device = rank_device or (torch.device(cfg.run.device) if cfg.run.device else None)
    # the data, where the model is, and every prompt's length: every cheap check before any weights load
    with phase(f"dataset {cfg.data.dataset}:{cfg.data.split}", enabled=is_main()):
        samples = training_samples(cfg)
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


def grpo_step(run: Run, samples: list[Sample], prompt_names: list[str]) -> tuple[dict[str, float], list[dict]]:
    """One GRPO step (eq. 1-3) on B prompts; returns the step's metrics and one record per completion."""
    cfg, model, G, timer = run.cfg, run.policy.model, run.cfg.rollout.group_size, PhaseTimer()
    with timer("generate"):  # G completions per prompt from the current policy, pi_old
        rollout = sample_rollout(run.policy, samples, prompt_names, group_size=G,
                                 max_completion_length=cfg.rollout.max_completion_length,
                                 temperature=cfg.rollout.temperature,
                                 engine=cfg.rollout.rollout_engine)                   # ids, mask [N, L]
    with timer("score"):  # eq. 2: rewards r_i, advantages A_i = (r_i - mean) / std within each group
        scores = score_completions(rollout.texts, [s for s in samples for _ in range(G)],
                                   rollout.completion_mask.sum(1).tolist(), run.scorer, cfg.reward.weights,
                                   cfg.uses_reasoning_reward, cfg.reward.open_answer_score)
        rewards = torch.tensor(scores.total)                                                   # [N]
        advantages = group_advantages(rewards, G, scale=cfg.loss.advantage_scale == "group")   # [N]
    with timer("reference"):  # eq. 3's pi_ref; pi_old only if the policy moves between updates
        passes = (cfg.rollout.temperature, cfg.optim.mini_batch_size, cfg.model.prefix_sharing)
        ref_logp = run.reference.logprobs(rollout, *passes) if run.reference else None        # [N, L]
        old_logp = rollout_logprobs(model, rollout, *passes) if cfg.loss.num_iterations > 1 else None  # [N, L]
    with timer("update"):
        stats = grpo_update(run, rollout, advantages.to(run.policy.device), ref_logp, old_logp)
    metrics = grpo_metrics(stats, gather_rows(rewards), scores.means(), rollout, zero_std_fraction(rewards, G),
                           timer.seconds)
    return metrics, completion_records(rollout, samples, prompt_names, G, rewards, advantages, scores.components)


def grpo_update(run: Run, rollout: Rollout, advantages: torch.Tensor, ref_logp: torch.Tensor | None,
                old_logp: torch.Tensor | None) -> dict[str, float]:
    """num_iterations optimizer updates on one rollout (eq. 1); returns the last update's statistics,
    and how far the first update's log-probs are from the sampler's (rollout_logp_diff, rollout_kl:
    token means over the completion tokens, src/grpo/loss.py: sampler_mismatch), measured on the update's own forward pass.

    Every token's weight in the loss is fixed up front over the global batch (all mini-batches, all
    ranks), so each mini-batch's loss is its weighted sum and the accumulated gradient is the batch's.
    Cut-off completions (--mask-truncated) and tied groups (--drop-tied-groups) get weight 0; tied groups
    also leave the count of completions the normaliser divides by.
    """
    cfg, model = run.cfg, run.policy.model
    mask = rollout.completion_mask                                                         # [N, L] in the loss
    if cfg.rollout.mask_truncated:  # a cut-off completion was never judged on a finished answer
        mask = mask & ~rollout.truncated.unsqueeze(1)                                       # [N, L]
    kept = torch.ones(mask.shape[0], dtype=torch.bool, device=mask.device)                  # [N] rows in the loss
    if cfg.loss.drop_tied_groups:  # a tied group has A = 0: out of the normaliser too, not just the numerator
        kept = ~tied_group_rows(advantages, cfg.rollout.group_size)                         # [N]
        mask = mask & kept.unsqueeze(1)                                                     # [N, L]
    batch = sum_over_ranks({"completions": kept.sum().item(), "tokens": mask.sum().item(),
                            "sampled_tokens": rollout.completion_mask.sum().item()})        # the global batch
    weights = token_weights(mask, cfg.loss.aggregation, batch["completions"], batch["tokens"],
                            cfg.rollout.max_completion_length)                              # [N, L]
    mismatch = torch.zeros(2, device=mask.device)  # summed |log p_sampler - log p_train| and k3, first update
    model.train()  # for gradient checkpointing; RL has no dropout (TrainConfig), so every pass sees one policy
    for iteration in range(cfg.loss.num_iterations):
        run.optimizer.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "kl": 0.0, "ratio_mean": 0.0, "clipfrac_low": 0.0, "clipfrac_high": 0.0}
        for rows in minibatches(mask.shape[0], cfg.optim.mini_batch_size):
            logp = completion_logprobs(model, rollout.prompts, *rollout.rows(rows), cfg.rollout.temperature,
                                       rollout.banned, cfg.model.prefix_sharing)           # [n, L]
            if iteration == 0:  # the weights that sampled: the trainer's log-probs against the sampler's
                mismatch += sampler_mismatch(logp.detach(), rollout.sampler_logp[rows], rollout.completion_mask[rows])
            # eq. 1 with eq. 3: ratio = exp(logp - old_logp), min(ratio A, clip(ratio) A) - beta k3(logp, ref_logp)
            loss, stats = grpo_loss(logp, None if old_logp is None else old_logp[rows],
                                    None if ref_logp is None else ref_logp[rows], advantages[rows], weights[rows],
                                    epsilon_low=cfg.loss.epsilon_low, epsilon_high=cfg.loss.epsilon_high,
                                    beta=cfg.loss.beta, importance_level=cfg.loss.importance_level)
            loss.backward()
            token_share = mask[rows].sum().item() / max(1, batch["tokens"])  # stats are token means
            totals["loss"] += loss.item()
            for name, value in stats.as_floats().items():
                totals[name] += value * token_share
        grad_norm = optimizer_step(run.params, run.optimizer, run.scheduler, cfg.optim.max_grad_norm)
    logp_diff, rollout_kl = (mismatch / max(1, batch["sampled_tokens"])).tolist()
    totals = sum_over_ranks({**totals, "rollout_logp_diff": logp_diff, "rollout_kl": rollout_kl})
    totals["grad_norm"] = grad_norm
    return totals


def completion_records(rollout: Rollout, samples: list[Sample], prompt_names: list[str], group_size: int,
                       rewards: torch.Tensor, advantages: torch.Tensor,
                       components: dict[str, list[float | None]]) -> list[dict]:
    """What each sampled completion was and what it earned: the question it answers (sample id,
    training prompt), its text, its total reward and each component, its advantage, and whether it
    was cut off. Row b*G+g is completion g of prompt b."""
    return [{"id": samples[i // group_size].id, "prompt": prompt_names[i // group_size], "completion": text,
             "reward": rewards[i].item(),
             **{f"reward/{name}": values[i] for name, values in components.items()},
             "advantage": advantages[i].item(), "truncated": bool(rollout.truncated[i])}
            for i, text in enumerate(rollout.texts)]


RESUMABLE_CHANGES = ("run.resume", "run.output_dir", "run.save_steps", "run.device", "run.report_to",
                     "optim.max_steps", "optim.epochs", "model.prefix_sharing")
"""Settings a resumed run may change: where the run directory now lies, when to save, where to run,
where else metrics go, how long to go on, and whether prompts are shared (the same numbers either way)."""


def check_same_settings(saved_path: Path, cfg: TrainConfig) -> None:
    """Refuse to resume a run under other settings: its checkpoints and metrics belong to the saved ones."""
    changed = changed_settings(saved_path, json.loads(cfg.to_json()), RESUMABLE_CHANGES)
    if changed:
        raise ValueError(f"--resume: {saved_path} was written with other settings ({'; '.join(changed)}); "
                         "resume with the saved settings, or start the new run in another --output-dir")


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
    with stop_signals():
        return _train(cfg, out, checkpoint, completion_rows)


def _train(cfg: TrainConfig, out: Path, checkpoint: Path | None, completion_rows: int) -> Path:
    """`train` once its checks passed: set up, restore the checkpoint, then the steps."""
    from src.grpo.sft import sft_step

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
            rng_states = gather_objects(rng_state())  # every rank's, so a resume on as many ranks is exact
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
