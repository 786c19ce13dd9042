"""The LLM judge: prompt, reply parsing, retries, cache and secrecy, against a real local HTTP server."""
from __future__ import annotations

import email.utils
import logging
import time
from pathlib import Path

import pytest

from src.eval.files import read_jsonl, write_atomic
from src.eval.judge_cache import JudgeCache, cache_key
from src.eval.judge_client import GeminiGenerate, OpenAIChat, RetryPolicy, _retry_after, make_backend
from src.eval.judge_cost import judge_cost_usd
from src.eval.judge_prompt import UnparseableReply, judge_prompt, parse_judgment
from src.eval.judging import judge_records
from tests.judge_server import JudgeServer

KEY = "sk-test-SECRET123"


def record(question: str, said: str = "yes", reference: str = "yes", reasoning: str | None = None, **extra) -> dict:
    """A prediction record as predictions.py writes it (only the fields the judge reads matter)."""
    return {"id": question, "question": question, "reference": reference, "alternatives": [], "choices": [],
            "reasoning_reference": reasoning, "think": "I looked.", "answer": said, **extra}


# ---------------------------------------------------------------- prompt and reply parsing

def test_prompt_carries_reference_reasoning_only_where_it_exists():
    with_reasoning = judge_prompt(record("Is there a mass?", reasoning="A bright round lesion."))
    assert with_reasoning.endswith(
        "Question: Is there a mass?\n"
        "Ground truth: Reasoning: A bright round lesion.\nAnswer: yes\n"
        "Prediction: Reasoning: I looked.\nAnswer: yes")
    plain = judge_prompt(record("Which plane?", said="axial", reference="axial", alternatives=["transverse"],
                                think=None))
    assert "Ground truth: Answer: axial (also correct: transverse)\nPrediction: Reasoning: (none)\nAnswer: axial" in plain
    assert plain.startswith("Task:\nYou are given a question, a ground truth, and a prediction in medical analysis.")
    choice = judge_prompt(record("How many cars?", said="(B)", reference="(B)", choices=["1", "2"]))
    assert "Question: How many cars?\nOptions: (A) 1 (B) 2\n" in choice


@pytest.mark.parametrize("reply, scores", [
    ('{"evaluation": "ok", "reasoning_score": 1, "prediction_score": 0}', (1, 0)),
    ('Sure!\n```json\n{"evaluation": "ok", "reasoning_score": "1", "prediction_score": "yes"}\n```\nDone.', (1, 1)),
    ('{"evaluation": "ok", "reasoning_score": true, "prediction_score": false}', (1, 0)),
    ('{"evaluation": "ok", "reasoning_score": 0.0, "prediction_score": 1.0}', (0, 1)),
    # the paper's own output structure has no commas: read the pairs one by one
    ('{\n "evaluation": "close, but not the same"\n "reasoning_score": 1\n "prediction_score": 0\n}', (1, 0)),
    ('{"prediction_score": 1}', (None, 1)),
])
def test_parse_judgment_reads_scores_in_many_shapes(reply, scores):
    judgment = parse_judgment(reply)
    assert (judgment.reasoning_score, judgment.prediction_score) == scores


def test_parse_judgment_keeps_commas_inside_the_evaluation_of_malformed_json():
    judgment = parse_judgment('{"evaluation": "close, but no" "prediction_score": 0}')
    assert judgment.evaluation == "close, but no" and judgment.prediction_score == 0


@pytest.mark.parametrize("reply", [
    "The prediction is correct.",
    '{"evaluation": "x", "prediction_score": 0.5}',
    '{"evaluation": "x", "prediction_score": "maybe"}',
])
def test_parse_judgment_rejects_replies_without_a_binary_prediction_score(reply):
    with pytest.raises(UnparseableReply):
        parse_judgment(reply)


def test_parse_judgment_requires_reasoning_score_when_asked():
    with pytest.raises(UnparseableReply, match="reasoning_score"):
        parse_judgment('{"prediction_score": 1}', require_reasoning=True)


# ---------------------------------------------------------------- small pieces

def test_retry_after_reads_seconds_and_http_dates_and_caps_them():
    assert _retry_after("3", cap=60) == 3.0
    assert _retry_after("120", cap=60) == 60.0
    in_ten_seconds = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= _retry_after(in_ten_seconds, cap=60) <= 10.0
    assert _retry_after(email.utils.formatdate(time.time() - 100, usegmt=True), cap=60) == 0.0
    assert _retry_after(None, cap=60) is None and _retry_after("soon", cap=60) is None


def test_backoff_doubles_with_jitter_within_bounds():
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0)
    # attempt 2: min(5, 1 * 2**2) = 4 -> uniform in [2, 4]; attempt 5: capped at 5 -> [2.5, 5]
    assert all(2.0 <= policy.backoff(2) <= 4.0 for _ in range(50))
    assert all(2.5 <= policy.backoff(5) <= 5.0 for _ in range(50))


def test_cost_uses_the_family_price_of_dated_snapshots():
    # gpt-4o-mini: $0.15 / M input, $0.60 / M output -> 2M in + 1M out = 0.30 + 0.60
    assert judge_cost_usd("gpt-4o-mini-2024-07-18", 2_000_000, 1_000_000) == pytest.approx(0.90)
    # gemini-1.5-flash: $0.075 / M in, $0.30 / M out -> 1M + 1M = 0.375
    assert judge_cost_usd("gemini-1.5-flash", 1_000_000, 1_000_000) == pytest.approx(0.375)
    assert judge_cost_usd("qwen2.5-7b-instruct", 10, 10) is None


def test_backend_choice_and_keys(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        make_backend("gpt-4o-mini")
    assert make_backend("gpt-4o-mini", base_url="http://localhost:8000/v1").secret is None  # local: no key
    gemini = make_backend("gemini-1.5-flash")
    assert isinstance(gemini, GeminiGenerate) and gemini.secret == KEY
    url, headers, _ = gemini.request("hi")
    assert KEY not in url and headers == {"x-goog-api-key": KEY}
    assert isinstance(make_backend("llama3", base_url="http://x/v1"), OpenAIChat)


def test_jsonl_drops_a_torn_last_line_and_rejects_corruption_elsewhere(tmp_path):
    path = tmp_path / "p.jsonl"
    write_atomic(path, '{"id": 1}\n{"id": 2}\n{"id": 3, "comp')
    assert read_jsonl(path) == [{"id": 1}, {"id": 2}]
    assert path.read_text() == '{"id": 1}\n{"id": 2}\n'      # the file itself is repaired
    write_atomic(path, '{"id": 1}\nnot json\n{"id": 3}\n')
    with pytest.raises(ValueError, match=r"p.jsonl: line 2"):
        read_jsonl(path)


def test_cache_survives_reload(tmp_path):
    cache = JudgeCache(tmp_path / "cache.jsonl")
    key = cache_key("gpt-4o-mini", "prompt")
    assert key != cache_key("gemini-1.5-flash", "prompt") and key != cache_key("gpt-4o-mini", "prompt ")
    cache.put({"key": key, "reply": "r", "prompt_tokens": 1, "completion_tokens": 2})
    assert JudgeCache(tmp_path / "cache.jsonl").get(key)["reply"] == "r"


# ---------------------------------------------------------------- against the local server

TAGGED = ["[429] q", "[500] q", "[slow] q", "[fence] q", "[garbled] q", "[never] q", "[down] q"]


def _counts_by_question(server: JudgeServer) -> dict[str, int]:
    return {prompt.split("Question: ")[1].split("\n")[0]: n for (_, prompt), n in server.requests.items()}


def _all_text_under(root: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("model, env", [("gpt-4o-mini", "OPENAI_API_KEY"), ("gemini-1.5-flash", "GEMINI_API_KEY")])
def test_every_record_ends_judged_or_failed_and_nothing_is_asked_twice(tmp_path, monkeypatch, caplog, model, env):
    monkeypatch.setenv(env, KEY)
    caplog.set_level(logging.DEBUG)
    records = [record("plain right"), record("plain wrong", said="no"), record("plain right"),  # same prompt twice
               record("with reasoning", reasoning="Because."), *(record(q) for q in TAGGED)]
    retry = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=2.0, timeout=0.3)
    with JudgeServer(KEY, slow_s=1.0) as server:
        version = "v1beta" if model.startswith("gemini") else "v1"
        backend = make_backend(model, base_url=f"{server.url}/{version}")
        cache = JudgeCache(tmp_path / "cache.jsonl")
        started = time.monotonic()
        run = judge_records(records, backend, cache, retry, concurrency=4, parse_attempts=2)
        elapsed = time.monotonic() - started
        first_counts = _counts_by_question(server)

        rerun = judge_records(records, backend, JudgeCache(tmp_path / "cache.jsonl"), retry, 4, 2)
        second_counts = _counts_by_question(server)

    status = {r["question"]: (v.status, v.prediction_score, v.reasoning_score) for r, v in zip(records, run.verdicts)}
    assert status == {
        "plain right": ("ok", 1, None), "plain wrong": ("ok", 0, None),
        "with reasoning": ("ok", 1, 1),          # reasoning read only where a reference reasoning exists
        "[429] q": ("ok", 1, None), "[500] q": ("ok", 1, None), "[slow] q": ("ok", 1, None),
        "[fence] q": ("ok", 1, None), "[garbled] q": ("ok", 1, None),
        "[never] q": ("unparseable", None, None), "[down] q": ("failed", None, None),
    }
    # one request per distinct prompt, plus exactly the retries each behaviour calls for
    assert first_counts == {"plain right": 1, "plain wrong": 1, "with reasoning": 1, "[429] q": 2, "[500] q": 2,
                            "[slow] q": 2, "[fence] q": 1, "[garbled] q": 2, "[never] q": 2, "[down] q": 3}
    assert elapsed >= 1.0                       # Retry-After: 1 was honoured
    # 11 replies received (3 plain + 1 each for 429/500/slow/fence + 2 garbled + 2 never), 100 + 20 tokens each
    assert run.new_replies == 11 and (run.prompt_tokens, run.completion_tokens) == (1100, 220)
    # the re-run asks only what failed; cached judgments (even unparseable ones) are not paid for again
    assert second_counts == {**first_counts, "[down] q": 6}
    assert rerun.new_replies == 0 and rerun.verdicts == run.verdicts
    failed = run.verdicts[-1]
    assert "503" in failed.error and "***" in failed.error and KEY not in failed.error
    assert KEY not in _all_text_under(tmp_path) and KEY not in caplog.text
    assert "retry in" in caplog.text           # retries are logged, scrubbed


def test_a_wrong_key_fails_without_retrying_or_leaking(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-WRONG999")
    with JudgeServer(KEY) as server:
        backend = make_backend("gpt-4o-mini", base_url=f"{server.url}/v1")
        run = judge_records([record("q")], backend, JudgeCache(tmp_path / "c.jsonl"),
                            RetryPolicy(max_attempts=3, base_delay=0.01), 1, 2)
        assert server.rejected == 1 and not server.requests    # a 401 is not retried
    assert run.verdicts[0].status == "failed" and "HTTP 401" in run.verdicts[0].error
    assert "WRONG999" not in run.verdicts[0].error + caplog.text


def test_backends_never_show_the_key_in_their_repr():
    from src.eval.judge_client import GeminiGenerate, OpenAIChat

    for backend in (OpenAIChat("gpt-4o-mini", "sk-test-SECRET123"), GeminiGenerate("gemini-1.5-flash", "sk-test-SECRET123")):
        assert "SECRET123" not in repr(backend) and "SECRET123" not in str(backend)
