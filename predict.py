"""Ask a model one question about one image; print its reasoning (the <think> text) and its answer.

    python predict.py --model runs/rarl/checkpoint-500 --image scan.png --question "Is the lung healthy?"
    python predict.py --model models/rarl-merged --image scan.png --question "..." --prompt non-reasoning --json

--model is a hub id or local base model, an adapter directory written by train.py, a full fine-tuned
or merged model (export.py), or 'tiny'. --prompt picks the system prompt: the paper's inference
prompts (reasoning, non-reasoning; sec. 3.3) or one of its training prompts (explanation, short,
open-ended; App. A). Decoding is greedy unless --temperature > 0. Before the model loads, the image
is read and checked, and the prompt counted as evaluate.py counts it: a question or image too large
for the model's positions with --max-new-tokens more, or an image whose sides the processor refuses
(more than 200:1), is refused with one line.
"""
from __future__ import annotations

from src.cli.threads import configure_cpu_threads

configure_cpu_threads()  # before torch loads its OpenMP runtime: see docs/CPU.md

import argparse  # noqa: E402
import json  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

from src.checks import check_model_source, phase  # noqa: E402
from src.cli.checks import number  # noqa: E402
from src.cli.config_file import add_config_option, parse_args  # noqa: E402
from src.cli.errors import run_main  # noqa: E402
from src.cli.help import HelpFormatter  # noqa: E402
from src.data.prompts import INFERENCE_PROMPTS, TRAINING_PROMPTS  # noqa: E402
from src.data.sample import Sample  # noqa: E402
from src.errors import UserError  # noqa: E402
from src.models.inputs import load_image  # noqa: E402
from src.rewards.answers import parse_completion  # noqa: E402

PROMPTS = {**INFERENCE_PROMPTS, **TRAINING_PROMPTS}


@dataclass(frozen=True)
class Prediction:
    think: str | None     # the <think> text; None when the model wrote no complete think block
    answer: str           # the <answer> text, or the whole reply without tags when it has no answer block
    completion: str       # the reply as generated


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_option(p)
    p.add_argument("--model", required=True, help="hub id, local model, adapter directory, merged model, or 'tiny'")
    p.add_argument("--image", type=Path, required=True, help="the image file (any format Pillow reads)")
    p.add_argument("--question", required=True, help="the question about the image")
    p.add_argument("--prompt", choices=list(PROMPTS), default="reasoning", help="system prompt")
    p.add_argument("--max-new-tokens", type=number(int, min=1), default=512, help="longest reply, in tokens")
    p.add_argument("--temperature", type=number(float, min=0), default=0.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",  # loading.DTYPES, without torch
                   help="the weights' dtype: auto (bfloat16 on CUDA, float32 on CPU), bfloat16 or float32")
    p.add_argument("--json", action="store_true", help="print one JSON object {think, answer, completion}")
    return p


def predict(policy, image: Path, question: str, prompt: str, max_new_tokens: int = 512,
            temperature: float = 0.0) -> Prediction:
    """The model's reply to `question` about `image` under the named system prompt."""
    from src.models.generation import generate_completions

    sample = Sample(id="input", dataset="predict", image=str(image), question=question, answer="", answer_type="open")
    completion = generate_completions(policy, [sample], PROMPTS[prompt], max_new_tokens=max_new_tokens,
                                      temperature=temperature, batch_size=1)[0]
    parsed = parse_completion(completion)
    return Prediction(think=parsed.think, answer=parsed.answer_text, completion=completion)


def check_fits(args) -> None:
    """Refuse, before the model loads, a question and image the model cannot take with --max-new-tokens
    more (what evaluate.py checks of every dataset sample): config, tokenizer and image processor only."""
    from src.models.prompt_length import PromptLimit

    sample = Sample(id="input", dataset="predict", image=str(args.image), question=args.question, answer="",
                    answer_type="open")
    refused = PromptLimit.from_model(args.model).refusals([sample], [PROMPTS[args.prompt]],
                                                          lambda sample: args.max_new_tokens)
    if refused:
        raise UserError(f"--question and --image do not fit {args.model}: {refused[0][1]}; shorten the question, "
                        "use a smaller image or lower --max-new-tokens")


def main(argv: list[str] | None = None) -> Prediction:
    args = parse_args(build_parser(), argv)
    if not args.question.strip():
        raise UserError("--question is empty")
    load_image(args.image)  # a missing or unreadable image fails here, before the model loads
    check_model_source(args.model)
    check_fits(args)
    import torch

    from src.models.loading import load_policy, resolve_dtype

    with phase(f"model {args.model}"):
        policy = load_policy(args.model, device=torch.device(args.device) if args.device else None,
                             dtype=resolve_dtype(args.dtype, args.device))
    result = predict(policy, args.image, args.question, args.prompt, args.max_new_tokens, args.temperature)
    if args.json:
        print(json.dumps({"think": result.think, "answer": result.answer, "completion": result.completion},
                         ensure_ascii=False))
    else:
        print(f"think:  {result.think if result.think is not None else '(no <think> block in the reply)'}")
        print(f"answer: {result.answer}")
    return result


if __name__ == "__main__":
    run_main(main)
