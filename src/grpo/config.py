"""Training settings: one frozen dataclass per concern, each field a CLI flag with its help text.

Derived values (the learning rate a method defaults to, which rewards a method uses, ...) are
computed in one visible place: the properties of `TrainConfig`.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field

from src.data.hub import parse_revisions
from src.data.loaders import DATASETS
from src.data.rows import DatasetError
from src.grpo.loss import AGGREGATIONS, IMPORTANCE_LEVELS
from src.models.loading import DEFAULT_MODEL, DTYPES, default_device, resolve_dtype
from src.models.lora import LoRAConfig
from src.rewards.open_answers import METHODS as OPEN_ANSWER_SCORES
from src.rewards.total import RewardWeights
from src.models.generation import ENGINES

METHODS = ("sft", "sft-full", "grpo", "rarl", "grpo-full")
SCHEDULES = ("cosine", "linear", "constant")
REPORT_TO = ("none", "tensorboard")


# Upper bounds, checked as the command line or a config file is parsed, before any work: each is far
# beyond any real run and keeps a typo (an extra digit or ten) from reaching an allocator or an overflow.
MAX_SEED = 2**32 - 1          # numpy's and most tools' seed range; the derived seeds (seed * 100_003 + epoch) fit int64
MAX_GROUP_SIZE = 1024         # G; DeepSeekMath's GRPO samples 64
MAX_BATCH = 65_536            # prompts per step, completions per forward pass
MAX_LORA_R = 4096             # and at most the smaller side of each targeted layer (checked against the model)
MAX_NEW_TOKENS = 131_072      # tokens of a completion; with its prompt also within the model's positions
MAX_ITERATIONS = 1024         # policy updates per batch of rollouts
MAX_STEPS = 10**9             # steps, epochs, samples, save interval


def flag(default, help: str, **kwargs):
    """A config field and its CLI flag: help text, and optionally `choices` or a numeric range (min, gt,
    max, lt), which the command line and --config files are checked against (train.py builds the flags)."""
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass(frozen=True)
class ModelConfig:
    model: str = flag(DEFAULT_MODEL, "hub id, local model directory, or 'tiny' (the embedded test model)")
    lora_r: int = flag(LoRAConfig.r, "LoRA rank r (paper: 8); at most the smaller side of every targeted layer",
                       min=1, max=MAX_LORA_R)
    lora_alpha: float = flag(LoRAConfig.alpha, "LoRA alpha; the update is scaled by alpha / r (paper: 16)", gt=0)
    lora_dropout: float | None = flag(None, "dropout on the LoRA input path (default: 0.05 for sft; the RL "
                                            "methods refuse dropout, so that every RL pass sees the same policy)",
                                       min=0, lt=1)
    lora_targets: tuple[str, ...] = flag(LoRAConfig.targets, "language-model linear layers that get an adapter")
    gradient_checkpointing: bool = flag(True, "recompute activations in backward (less memory, ~30% slower)")
    prefix_sharing: bool = flag(True, "compute each prompt once per mini-batch in the update, reference and old-policy "
                                      "passes, its completions attending to it (--no-prefix-sharing: every completion "
                                      "with its own copy of the prompt, the reference path; docs/PREFIX_SHARING.md)")
    dtype: str = flag("auto", "the weights' dtype: bfloat16, float32, or auto (bfloat16 on CUDA, float32 on CPU; "
                              "config.json records what it resolved to, and --resume keeps it). LoRA factors and "
                              "the -full methods' optimizer copies are float32 in any case", choices=DTYPES)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = flag("silvar-med", "training dataset: silvar-med, vqa-rad, slake, vqa-med-2019, path-vqa, "
                                      "cv-bench or synthetic (the embedded default)", choices=tuple(DATASETS))
    data_root: str | None = flag(None, "folder holding the dataset's files; without it the dataset is fetched from "
                                       "the Hugging Face Hub into HF_HOME (docs/DATA.md; vqa-med-2019 needs a folder, "
                                       "synthetic is generated)")
    data_revision: str | None = flag(None, "NAME=REV: fetch the dataset from this commit, tag or branch of its Hub "
                                           "repository (default: main); config.json records the commit its files "
                                           "came from, and --resume refuses another")
    split: str = flag("train", "split to train on")
    samples: int | None = flag(None, "train on a seeded subset of N samples, stratified by modality/task", min=1,
                               max=MAX_STEPS)
    skip_bad_rows: bool = flag(False, "skip rows with a missing image or empty question/answer instead of stopping")

    @property
    def revision(self) -> str | None:
        """The REV of --data-revision NAME=REV; a malformed value, or one naming another dataset, is refused
        when the run reads its data."""
        if self.data_revision is None:
            return None
        [(name, revision)] = parse_revisions([self.data_revision]).items()
        if name != self.dataset:
            raise DatasetError(f"--data-revision {self.data_revision} names {name!r}, but the training dataset is "
                               f"{self.dataset!r}")
        return revision


@dataclass(frozen=True)
class RolloutConfig:
    group_size: int = flag(8, "G: completions sampled per prompt (eq. 1-2); eq. 2 compares at least 2", min=2,
                           max=MAX_GROUP_SIZE)
    temperature: float = flag(1.0, "sampling temperature for rollouts (log-probs use the same temperature)", gt=0)
    max_completion_length: int = flag(512, "maximum tokens per completion; with the prompt, within the model's "
                                           "positions", min=1, max=MAX_NEW_TOKENS)
    mask_truncated: bool = flag(False, "leave completions that hit the length limit out of the loss")
    rollout_engine: str = flag("engine", "sampler: 'engine' (static KV cache, each prompt prefilled once, "
                                         "src/models/engine.py) or 'hf' (transformers' generate, the reference)",
                               choices=ENGINES)


@dataclass(frozen=True)
class LossConfig:
    beta: float = flag(0.04, "weight of the k3 KL penalty to the reference policy (eq. 1, 3); 0 skips the "
                             "reference forward", min=0)
    epsilon_low: float = flag(0.2, "clip range below 1 for the probability ratio (eq. 1)", min=0, lt=1)
    epsilon_high: float = flag(0.2, "clip range above 1 for the probability ratio (eq. 1)", min=0)
    aggregation: str = flag("sequence", "how token losses become one number: sequence (paper eq. 1: mean per "
                                        "completion, then over completions), token (DAPO), dr_grpo",
                            choices=tuple(AGGREGATIONS))
    importance_level: str = flag("token", "the ratio pi / pi_old of eq. 1: token (the paper: one per token) or "
                                          "sequence (GSPO: exp of the completion's mean token log-ratio, one clip per "
                                          "completion; GSPO's clip range is 3e-4 below and 4e-4 above 1). With one "
                                          "update per rollout both give the same gradient", choices=IMPORTANCE_LEVELS)
    drop_tied_groups: bool = flag(False, "leave groups whose G rewards all tie (zero advantage) out of the loss and its "
                                         "normaliser, so that they do not dilute the others' gradient (their KL term "
                                         "goes with them)")
    num_iterations: int = flag(1, "policy updates per batch of rollouts (mu); > 1 caches old log-probs", min=1,
                               max=MAX_ITERATIONS)
    advantage_scale: str = flag("group", "advantages: group (paper eq. 2: divide by the group's reward std) or "
                                         "none (Dr. GRPO: reward minus the group mean)", choices=("group", "none"))


@dataclass(frozen=True)
class OptimConfig:
    learning_rate: float | None = flag(None, "AdamW learning rate (default: 1e-5 with LoRA, 1e-6 for full "
                                             "fine-tuning)", gt=0)
    weight_decay: float = flag(0.0, "AdamW weight decay", min=0)
    warmup_ratio: float = flag(0.05, "fraction of the optimizer steps spent warming the learning rate up from 0",
                               min=0, max=1)
    schedule: str = flag("cosine", "learning-rate schedule after warm-up", choices=SCHEDULES)
    max_grad_norm: float = flag(1.0, "clip the gradient norm to this value", gt=0)
    prompts_per_step: int = flag(4, "B: prompts per training step (B * G completions per step), over all processes "
                                     "under torchrun (each takes B / processes)", min=1, max=MAX_BATCH)
    mini_batch_size: int = flag(8, "completions per forward/backward pass of each process (gradients are "
                                    "accumulated)", min=1, max=MAX_BATCH)
    epochs: int = flag(5, "passes over the training set (paper: 5)", min=1, max=MAX_STEPS)
    max_steps: int | None = flag(None, "stop after this many steps (overrides epochs)", min=1, max=MAX_STEPS)


@dataclass(frozen=True)
class RewardConfig:
    format_weight: float = flag(1.0, "weight of the format reward")
    length_weight: float = flag(1.0, "weight of the length reward")
    accuracy_weight: float = flag(1.0, "weight of the accuracy reward")
    reasoning_weight: float = flag(1.0, "weight of the reasoning reward (rarl only)")
    bertscore_model: str | None = flag(None, "BERTScore model: roberta-large or all-MiniLM-L6-v2 (default: "
                                             "roberta-large when available offline, else the embedded "
                                             "all-MiniLM-L6-v2)")
    open_answer_score: str = flag("bertscore", "accuracy reward of open answers: bertscore (the paper's BERTScore F1) "
                                               "or clinical (wrong side, position, size, modality or number scores 0; "
                                               "docs/REWARDS.md)", choices=OPEN_ANSWER_SCORES)

    @property
    def weights(self) -> RewardWeights:
        return RewardWeights(self.format_weight, self.length_weight, self.accuracy_weight, self.reasoning_weight)


@dataclass(frozen=True)
class RunConfig:
    method: str = flag("rarl", "sft (LoRA), sft-full (full fine-tuning), grpo (RL + LoRA), rarl (grpo + reasoning "
                               "reward + prompt diversity), grpo-full (RL, full fine-tuning)", choices=METHODS)
    output_dir: str = flag("runs/train", "where metrics, config and checkpoints are written")
    save_steps: int = flag(100, "checkpoint every N steps (and at the end)", min=1, max=MAX_STEPS)
    resume: bool = flag(False, "continue from the latest checkpoint in --output-dir")
    seed: int = flag(0, "seed for data order, prompt choice, sampling and initialisation", min=0, max=MAX_SEED)
    device: str | None = flag(None, "cpu or cuda (default: cuda when available)")
    report_to: str = flag("none", "also log every metric to TensorBoard (OUTPUT/tensorboard/, the names of "
                                  "metrics.jsonl; needs pip install -e '.[tensorboard]')", choices=REPORT_TO)


@dataclass(frozen=True)
class TrainConfig:
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    reward: RewardConfig = RewardConfig()

    def __post_init__(self):
        if not self.is_sft and self.model.lora_dropout:
            raise ValueError(f"--lora-dropout {self.model.lora_dropout} with --method {self.run.method}: RL runs "
                             "without dropout, so that sampling, the reference, the old policy and the update all "
                             "see the same policy (the first ratio of an update is then exactly 1)")

    # ---- derived values, all in one place -------------------------------------------------------
    @property
    def uses_lora(self) -> bool:
        return self.run.method not in ("sft-full", "grpo-full")

    @property
    def is_sft(self) -> bool:
        return self.run.method in ("sft", "sft-full")

    @property
    def uses_reasoning_reward(self) -> bool:
        return self.run.method == "rarl"

    @property
    def prompt_diversity(self) -> bool:
        return self.run.method == "rarl"

    @property
    def lora(self) -> LoRAConfig:
        """The adapter's shape; dropout LoRAConfig's default for SFT unless set, none in RL (__post_init__)."""
        dropout = self.model.lora_dropout if self.model.lora_dropout is not None else \
            LoRAConfig.dropout if self.is_sft else 0.0
        return LoRAConfig(self.model.lora_r, self.model.lora_alpha, dropout, self.model.lora_targets)

    @property
    def learning_rate(self) -> float:
        if self.optim.learning_rate is not None:
            return self.optim.learning_rate
        return 1e-5 if self.uses_lora else 1e-6

    def resolved(self) -> TrainConfig:
        """This config with `--dtype auto` replaced by the dtype it stands for on the run's device, so
        that config.json records what the run computes in and a resume on another kind of device
        cannot change it silently (--resume refuses a changed dtype)."""
        if self.model.dtype != "auto":
            return self
        dtype = resolve_dtype("auto", self.run.device or default_device())
        return dataclasses.replace(self, model=dataclasses.replace(self.model, dtype=str(dtype).removeprefix("torch.")))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


SECTIONS = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def section_class(name: str) -> type:
    """The dataclass of section `name` of TrainConfig (ModelConfig for "model", ...)."""
    return typing.get_type_hints(TrainConfig)[name]


def config_from_dict(raw: dict) -> TrainConfig:
    """A TrainConfig from its to_dict() form (a run's config.json)."""
    return TrainConfig(**{name: section_class(name)(**{k: tuple(v) if isinstance(v, list) else v
                                                       for k, v in raw[name].items()})
                          for name in SECTIONS})
