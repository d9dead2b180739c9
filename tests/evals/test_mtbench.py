"""MT-Bench suite: question files, two-turn generation, judge prompts, scores and samples.

Judges are real HTTP servers on 127.0.0.1 (see ``tests/harness/test_judge.py``); answering models are a
recording lm-eval ``LM`` stub and, once, a tiny random Llama with a chat template behind lm-eval's ``HFLM``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import statistics
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from lm_eval.api.model import LM

from evals.mtbench import (
    PLAIN_STOP,
    REFERENCE_CATEGORIES,
    Config,
    MTBench,
    load_questions,
    select,
)
from harness.api import EvalContext, EvalResult
from harness.errors import BenchError
from harness.judge_prompts import DEFAULT_PROMPTS, FASTCHAT_PROMPTS, load_judge_prompts
from tests.harness.test_judge import closed_port_url, serving

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mt_bench"
CATEGORIES = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}


class RecordingLM(LM):
    """Answers ``A<qid>-t<turn>`` and records every ``generate_until`` call."""

    def __init__(self, tokenizer: Any = None):
        super().__init__()
        if tokenizer is not None:
            self.tokenizer = tokenizer
        self.calls: list[list[Any]] = []

    def generate_until(self, requests, disable_tqdm: bool = False):
        self.calls.append(list(requests))
        return [f" A{r.doc['question_id']}-t{r.doc['turn']} " for r in requests]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def run(lm: LM, tmp_path: Path, limit: int | None = None, **cfg: Any) -> EvalResult:
    return MTBench().evaluate(lm, Config(**cfg), EvalContext(workdir=tmp_path, limit=limit))


def scores(result: EvalResult) -> dict[tuple[str, str], Any]:
    return {(s.task, s.metric): s for s in result.scores}


def user_text(body: dict[str, Any]) -> str:
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


# --- questions ----------------------------------------------------------------------------------


def test_embedded_questions() -> None:
    qs = load_questions()
    counts = Counter(q.category for q in qs)
    assert set(counts) == CATEGORIES and min(counts.values()) >= 3 and len(qs) >= 24
    assert len({q.qid for q in qs}) == len(qs)
    for q in qs:
        assert len(q.turns) == 2 and all(q.turns)
        if q.category in REFERENCE_CATEGORIES:
            assert q.reference_for(1) and q.reference_for(2), q.qid


@pytest.mark.parametrize(("content", "message"), [
    (None, "not found"),
    ('{"question_id": 1, "category": "math", "turns": ["a", "b"]}\n{oops\n', ":2: not valid JSON"),
    ('{"question_id": 1, "category": "math", "turns": ["only one"]}\n', ":1: turns must be a list of two"),
    ('{"question_id": "x", "category": "math", "turns": ["a", "b"]}\n', ":1: question_id must be an integer"),
    ('{"question_id": 1, "turns": ["a", "b"]}\n', ":1: category"),
    ('{"question_id": 1, "category": "m", "turns": ["a", "b"], "reference": "r"}\n', ":1: reference"),
    ('{"question_id": 1, "category": "m", "turns": ["a", "b"]}\n' * 2, ":2: duplicate question_id 1"),
    ("\n\n", "holds no questions"),
])
def test_bad_question_file_is_one_line_error(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "q.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BenchError) as e:
        run(RecordingLM(), tmp_path, questions=str(path))
    text = str(e.value)
    assert message in text and str(path) in text and "fix:" in text and "\n" not in text


def test_categories_and_limit(tmp_path: Path) -> None:
    qs = select(load_questions(), ["math", "coding"], limit=4)
    assert [q.category for q in qs] == ["math"] * 3 + ["coding"]
    with pytest.raises(BenchError, match="did you mean 'math'"):
        select(load_questions(), ["maths"], None)
    result = run(RecordingLM(), tmp_path, limit=2, categories=["stem"])
    stem_ids = [q.qid for q in load_questions() if q.category == "stem"][:2]
    assert len(result.samples) == 4 and sorted({s.doc_id for s in result.samples}) == stem_ids
    assert {s.task for s in result.samples} == {"turn1", "turn2"}


def test_references_file_overrides_inline(tmp_path: Path) -> None:
    (tmp_path / "q.jsonl").write_text(
        '{"question_id": 5, "category": "math", "turns": ["1+1?", "times 3?"], "reference": ["2", "6"]}\n'
        '{"question_id": 6, "category": "math", "turns": ["2+2?", "times 3?"], "reference": ["4", "12"]}\n')
    (tmp_path / "ref.jsonl").write_text(
        '{"question_id": 5, "model_id": "m", "choices": [{"index": 0, "turns": ["two", "six"]}]}\n')
    result = run(RecordingLM(), tmp_path, questions=str(tmp_path / "q.jsonl"), references=str(tmp_path / "ref.jsonl"))
    targets = {(s.doc_id, s.task): s.target for s in result.samples}
    assert targets == {(5, "turn1"): "two", (5, "turn2"): "six", (6, "turn1"): "4", (6, "turn2"): "12"}
    (tmp_path / "bad.jsonl").write_text('{"question_id": 5, "choices": []}\n')
    with pytest.raises(BenchError, match=r"bad.jsonl:1: needs question_id and choices\[0\].turns"):
        run(RecordingLM(), tmp_path, references=str(tmp_path / "bad.jsonl"))


# --- generation ---------------------------------------------------------------------------------


def test_two_turn_plain_rendering(tmp_path: Path) -> None:
    lm = RecordingLM()
    result = run(lm, tmp_path, limit=3, max_gen_toks=17)
    assert len(lm.calls) == 2 and [len(c) for c in lm.calls] == [3, 3]  # all turn 1, then all turn 2
    qs = load_questions()[:3]
    for q, first, second in zip(qs, lm.calls[0], lm.calls[1], strict=True):
        assert first.request_type == "generate_until" and first.metadata == ("mtbench", q.qid, 1)
        prompt, kwargs = first.arguments
        assert prompt == f"User: {q.turns[0]}\nAssistant:"
        assert kwargs == {"until": [PLAIN_STOP], "max_gen_toks": 17, "do_sample": False}
        assert second.arguments[0] == (f"User: {q.turns[0]}\nAssistant: A{q.qid}-t1\n"
                                       f"User: {q.turns[1]}\nAssistant:")
    by_key = {(s.doc_id, s.task): s for s in result.samples}
    assert len(result.samples) == 6
    s = by_key[(qs[0].qid, "turn2")]
    assert s.output == f"A{qs[0].qid}-t2" and s.prompt == lm.calls[1][0].arguments[0]


def test_chat_template_rendering_and_stop(tmp_path: Path, tiny_chat_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_chat_model)
    lm = RecordingLM(tokenizer=tok)
    run(lm, tmp_path, limit=1)
    q = load_questions()[0]
    (first,), (second,) = lm.calls
    assert first.arguments[0] == tok.apply_chat_template([{"role": "user", "content": q.turns[0]}], tokenize=False,
                                                         add_generation_prompt=True)
    assert first.arguments[0] == f"<s><|user|>\n{q.turns[0]}<|end|>\n<|assistant|>\n"
    assert second.arguments[0].endswith(f"<|assistant|>\nA{q.qid}-t1<|end|>\n<|user|>\n{q.turns[1]}<|end|>\n"
                                        "<|assistant|>\n")
    assert first.arguments[1]["until"] == ["<|end|>"]


def test_tiny_hf_llama_end_to_end(tmp_path: Path, tiny_chat_model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.model import as_lm

    lm = as_lm(AutoModelForCausalLM.from_pretrained(tiny_chat_model), AutoTokenizer.from_pretrained(tiny_chat_model),
               batch_size=4)
    with serving(lambda body: "Rating: [[5]]") as server:
        result = run(lm, tmp_path, limit=2, max_gen_toks=8, judge_url=server.url)
    assert len(result.samples) == 4
    assert all(s.prompt.startswith("<s><|user|>\n") and isinstance(s.output, str) for s in result.samples)
    assert scores(result)[("overall", "score")].value == 5.0
    answers = {(s.doc_id, s.task): s.output for s in result.samples}
    turn2_prompts = [s.prompt for s in result.samples if s.task == "turn2"]
    for s, p in zip([s for s in result.samples if s.task == "turn1"], turn2_prompts, strict=True):
        assert f"<|assistant|>\n{answers[(s.doc_id, 'turn1')]}<|end|>" in p


# --- judging ------------------------------------------------------------------------------------


def test_constant_judge_with_repeats(tmp_path: Path) -> None:
    with serving(lambda body: "The answer is fine.\nRating: [[7]]") as server:
        result = run(RecordingLM(), tmp_path, judge_url=server.url, judge_model="j", judge_repeats=3)
        n_requests = len(server.requests)
        temps = {r["temperature"] for r in server.requests}
    n_questions = len(load_questions())
    assert n_requests == 2 * n_questions * 3 and temps == {0.0}
    sc = scores(result)
    tasks = {"turn1", "turn2", "overall"} | {f"category/{c}" for c in CATEGORIES}
    assert {t for t, m in sc if m == "score"} == tasks
    for task in tasks:
        assert sc[(task, "score")].value == 7.0 and sc[(task, "score")].stderr in (0.0, None)
        assert sc[(task, "judge_std")].value == 0.0 and sc[(task, "judge_failures")].value == 0
        assert sc[(task, "judged")].value == 1.0
    assert sc[("overall", "score")].n == 2 * n_questions and sc[("turn1", "score")].n == n_questions
    assert sc[("category/math", "score")].n == 6
    s = result.samples[0]
    assert s.metrics["rating"] == 7.0 and s.metrics["rating_std"] == 0.0
    assert [s.metrics[f"rating_{k}"] for k in (1, 2, 3)] == [7.0] * 3
    assert s.extracted == "The answer is fine.\nRating: [[7]]"


def _reference_aware(refs: list[str]):
    """[[9]] when the judge prompt contains a reference answer, else [[3]]."""
    return lambda body: "[[9]]" if any(r in user_text(body) for r in refs) else "[[3]]"


@pytest.mark.parametrize("fastchat_prompts", [False, True])
def test_reference_guided_only_for_math_reasoning_coding(tmp_path: Path, fastchat_prompts: bool) -> None:
    if fastchat_prompts and not (SHARED / "judge_prompts.jsonl").is_file():
        pytest.skip("FastChat judge prompts not available")
    qs = load_questions()
    refs = [r for q in qs for r in q.reference if r]
    extra = {"judge_prompts": str(SHARED / "judge_prompts.jsonl")} if fastchat_prompts else {}
    with serving(_reference_aware(refs)) as server:
        result = run(RecordingLM(), tmp_path, judge_url=server.url, **extra)
        texts = server.user_texts()
    sc = scores(result)
    for cat in CATEGORIES:
        assert sc[(f"category/{cat}", "score")].value == (9.0 if cat in REFERENCE_CATEGORIES else 3.0), cat
    # Every turn-2 judge prompt shows the whole conversation: both questions and both answers.
    for q in qs:
        a1, a2 = f"A{q.qid}-t1", f"A{q.qid}-t2"
        turn2 = [t for t in texts if a2 in t]
        assert len(turn2) == 1 and all(x in turn2[0] for x in (q.turns[0], q.turns[1], a1, a2))
        turn1 = [t for t in texts if a1 in t and a2 not in t]
        assert len(turn1) == 1 and q.turns[0] in turn1[0] and q.turns[1] not in turn1[0]
    category = {q.qid: q.category for q in qs}
    for s in result.samples:
        assert s.metrics["reference_guided"] == float(category[s.doc_id] in REFERENCE_CATEGORIES)


def test_math_without_references_falls_back_to_plain_prompt(tmp_path: Path) -> None:
    (tmp_path / "q.jsonl").write_text('{"question_id": 1, "category": "math", "turns": ["1+1?", "and 2+2?"]}\n')
    with serving(lambda body: "[[4]]") as server:
        run(RecordingLM(), tmp_path, questions=str(tmp_path / "q.jsonl"), judge_url=server.url)
        texts = server.user_texts()
    fields = {"question_1": "1+1?", "answer_1": "A1-t1", "question_2": "and 2+2?", "answer_2": "A1-t2"}
    expected = {DEFAULT_PROMPTS["single"].messages({"question": "1+1?", "answer": "A1-t1"})[1]["content"],
                DEFAULT_PROMPTS["multi"].messages(fields)[1]["content"]}
    assert set(texts) == expected  # (requests run concurrently: arrival order is not fixed)


def test_garbage_judge_counts_failures_and_makes_up_nothing(tmp_path: Path) -> None:
    (tmp_path / "q.jsonl").write_text(
        '{"question_id": 1, "category": "writing", "turns": ["GARBAGE please", "more"]}\n'
        '{"question_id": 2, "category": "writing", "turns": ["fine", "more"]}\n'
        '{"question_id": 3, "category": "stem", "turns": ["GARBAGE too", "more"]}\n')
    reply = lambda body: "I cannot decide." if "GARBAGE" in user_text(body) else "Rating: [[8]]"  # noqa: E731
    with serving(reply) as server:
        result = run(RecordingLM(), tmp_path, questions=str(tmp_path / "q.jsonl"), judge_url=server.url,
                     judge_repeats=2)
    sc = scores(result)
    assert sc[("overall", "score")].value == 8.0 and sc[("overall", "score")].n == 2
    assert sc[("overall", "judge_failures")].value == 8 and sc[("overall", "judge_failures")].n == 12
    assert sc[("category/writing", "score")].value == 8.0 and sc[("category/writing", "judge_failures")].value == 4
    assert ("category/stem", "score") not in sc and ("category/stem", "judge_std") not in sc
    assert sc[("category/stem", "judge_failures")].value == 4 and sc[("category/stem", "judged")].n == 0
    failed = [s for s in result.samples if s.doc_id == 3]
    assert all("rating" not in s.metrics and s.metrics["judge_failures"] == 2 for s in failed)
    assert failed[0].extracted == "I cannot decide."


def test_random_judge_std(tmp_path: Path) -> None:
    rng, lock = random.Random(0), threading.Lock()

    def reply(body):
        with lock:
            return f"Rating: [[{rng.randint(1, 10)}]]"

    with serving(reply) as server:
        result = run(RecordingLM(), tmp_path, limit=6, judge_url=server.url, judge_repeats=4)
    sc = scores(result)
    per_answer = [[s.metrics[f"rating_{k}"] for k in range(1, 5)] for s in result.samples]
    for s, ratings in zip(result.samples, per_answer, strict=True):
        assert s.metrics["rating"] == pytest.approx(statistics.fmean(ratings))
        assert s.metrics["rating_std"] == pytest.approx(statistics.pstdev(ratings))
    means = [statistics.fmean(r) for r in per_answer]
    overall = sc[("overall", "score")]
    assert overall.value == pytest.approx(statistics.fmean(means)) and overall.n == 12
    assert overall.stderr == pytest.approx(statistics.stdev(means) / math.sqrt(12))
    assert sc[("overall", "judge_std")].value == pytest.approx(statistics.fmean(statistics.pstdev(r) for r in per_answer))
    assert sc[("overall", "judge_std")].value > 0
    turn1 = [m for m, s in zip(means, result.samples, strict=True) if s.task == "turn1"]
    assert sc[("turn1", "score")].value == pytest.approx(statistics.fmean(turn1))


def test_no_judge_stores_answers_and_no_score(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import evals.mtbench

    evals.mtbench._say_not_judged.cache_clear()  # the hint is said once per process
    with caplog.at_level(logging.WARNING, logger="evals.mtbench"):
        result = run(RecordingLM(), tmp_path)
    n = len(load_questions())
    assert len(result.samples) == 2 * n and all(s.metrics == {} and s.extracted is None for s in result.samples)
    assert all(s.output.startswith("A") for s in result.samples)
    assert {s.metric for s in result.scores} == {"judged"} and all(s.value == 0.0 for s in result.scores)
    assert scores(result)[("overall", "judged")].n == 2 * n
    hints = [r.getMessage() for r in caplog.records if "not judged" in r.getMessage()]
    assert len(hints) == 1 and "--judge-url" in hints[0] and "\n" not in hints[0]


def test_connection_refused_fails_before_generation(tmp_path: Path) -> None:
    lm = RecordingLM()
    with pytest.raises(BenchError, match="refused the connection") as e:
        run(lm, tmp_path, judge_url=closed_port_url())
    assert "\n" not in str(e.value) and lm.calls == []


def test_local_judge_tiny_model(tmp_path: Path, tiny_chat_model: Path) -> None:
    """A random tiny judge writes no [[rating]]: every answer is a counted failure, none is scored."""
    result = run(RecordingLM(), tmp_path, limit=1, judge_model=str(tiny_chat_model), judge_max_tokens=4,
                 judge_repeats=2, judge_temperature=0.8)
    sc = scores(result)
    assert sc[("overall", "judge_failures")].n == 4 and all(isinstance(s.extracted, str) for s in result.samples)
    assert sc[("overall", "judge_failures")].value == sum(s.metrics["judge_failures"] for s in result.samples)
    unrated = [s for s in result.samples if "rating" not in s.metrics]
    assert all(s.metrics["judge_failures"] == 2 for s in unrated)
    assert sc[("overall", "judged")].n == 2 - len(unrated)
    if len(unrated) == 2:
        assert ("overall", "score") not in sc


def test_a_local_judge_counts_its_tokens_with_its_own_tokenizer(tmp_path: Path, tiny_chat_model: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompt tokens: each rendered judge prompt tokenized as the judge feeds it; completion tokens: what it generated,
    at most judge_max_tokens a reply."""
    from transformers import AutoTokenizer

    from harness.judge import LocalJudge, starts_with_bos

    rendered: list[str] = []
    render = LocalJudge.render
    monkeypatch.setattr(LocalJudge, "render", lambda self, messages: rendered.append(render(self, messages))
                        or rendered[-1])
    result = run(RecordingLM(), tmp_path, limit=1, judge_model=str(tiny_chat_model), judge_max_tokens=4)
    (usage,) = result.judge_usage
    tok = AutoTokenizer.from_pretrained(tiny_chat_model)
    expected = sum(len(tok(p, add_special_tokens=not starts_with_bos(tok, p))["input_ids"]) for p in rendered)
    assert len(rendered) == usage["requests"] == 2 and usage["unmetered"] == 0
    assert usage["prompt_tokens"] == expected and 2 <= usage["completion_tokens"] <= 2 * 4
    assert usage["judge"] == f"local model {tiny_chat_model.name}"


def test_a_local_judge_run_warns_in_one_line_and_the_leaderboard_notes_it(tmp_path: Path, tiny_chat_model: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`bench eval` with a local judge ends with one warning line naming the judge and its parameter count, also when
    the evaluation is reused from the cache; without a judge there is none. `bench leaderboard` carries the line."""
    from evals.mtbench import local_judge_note
    from tests.conftest import bench

    db, model = str(tmp_path / "bench.db"), str(tiny_chat_model)
    common = ("eval", "--model", model, "--suite", "mtbench", "--limit", "1", "--set", "mtbench.max_gen_toks=2",
              "--db", db)
    judged = (*common, "--set", f"mtbench.judge_model={model}", "--set", "mtbench.judge_max_tokens=2")
    note = local_judge_note(model)
    assert re.search(r", a \d+(\.\d+)?K-parameter local model: far weaker than the GPT-4 judge", note)

    def warnings(*args: str) -> list[str]:
        capsys.readouterr()
        assert bench(*args) == 0
        return [line for line in capsys.readouterr().err.splitlines() if "rated by" in line]

    assert warnings(*judged) == [f"warning: {note}"]
    assert warnings(*judged) == [f"warning: {note}"]  # reused from the eval cache: still rated by that judge
    capsys.readouterr()
    assert bench("leaderboard", "--all-metrics", "--db", db) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")] == [f"note: {note}"]
    assert warnings(*common) == []


# --- judge prompt files -------------------------------------------------------------------------


def test_judge_prompt_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "jp.jsonl"
    rows = [{"name": n, "system_prompt": "", "prompt_template": "{question} {answer}"}
            for n in ("single-v1", "single-math-v1", "single-v1-multi-turn")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BenchError, match="no entry named 'single-math-v1-multi-turn'"):
        load_judge_prompts(path)
    rows.append({"name": "single-math-v1-multi-turn", "system_prompt": "", "prompt_template": "{answer_3}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BenchError, match=r"jp.jsonl:4: .*unknown placeholder.*answer_3"):
        load_judge_prompts(path)


@pytest.mark.skipif(not (SHARED / "question.jsonl").is_file(), reason="FastChat MT-Bench data not available")
def test_fastchat_mt_bench_files(tmp_path: Path) -> None:
    qs = load_questions(SHARED / "question.jsonl")
    assert len(qs) == 80 and Counter(q.category for q in qs) == {c: 10 for c in CATEGORIES}
    prompts = load_judge_prompts(SHARED / "judge_prompts.jsonl")
    assert [p.name for p in prompts.values()] == ["single-v1", "single-math-v1", "single-v1-multi-turn",
                                                  "single-math-v1-multi-turn"]
    refs_file = SHARED / "reference_answer_gpt-4.jsonl"
    refs = [t for line in refs_file.read_text().splitlines() for t in json.loads(line)["choices"][0]["turns"]]
    with serving(_reference_aware(refs)) as server:
        result = run(RecordingLM(), tmp_path, questions=str(SHARED / "question.jsonl"), references=str(refs_file),
                     judge_prompts=str(SHARED / "judge_prompts.jsonl"), judge_url=server.url)
        systems = {r["messages"][0]["content"] for r in server.requests}
    sc = scores(result)
    assert len(result.samples) == 160
    for cat in CATEGORIES:
        assert sc[(f"category/{cat}", "score")].value == (9.0 if cat in REFERENCE_CATEGORIES else 3.0), cat
    assert systems == {p.system for p in prompts.values()}


# --- FastChat's rating rule ----------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "fastchat_rating", "own_rating"), [
    ("Like [[2]] it is weak. Rating: [[8]]", 2.0, 8.0),  # FastChat: the first; own: the last
    ("Rating: [6]", 6.0, None),                          # FastChat's single-bracket fallback
    ("Rating: [[ 8 ]]", None, 8.0),                      # FastChat allows no spaces
    ("Rating: [[11]]", 11.0, None),                      # FastChat checks no range
    ("no rating here", None, None),                      # unrated under both, never a number
])
def test_fastchat_prompts_are_read_with_fastchat_rule(tmp_path: Path, reply: str, fastchat_rating: float | None,
                                                      own_rating: float | None) -> None:
    """The same judge reply, read side by side: with FastChat's judge_prompts.jsonl by FastChat's rule,
    with FuseBench's own prompts by FuseBench's."""
    path = tmp_path / "judge_prompts.jsonl"
    path.write_text("".join(json.dumps({"name": n, "system_prompt": "Grade it.", "prompt_template": "{question} {answer}"})
                            + "\n" for n in FASTCHAT_PROMPTS.values()))
    with serving(lambda body: reply) as server:
        fastchat = run(RecordingLM(), tmp_path / "a", limit=1, judge_url=server.url, judge_prompts=str(path))
        own = run(RecordingLM(), tmp_path / "b", limit=1, judge_url=server.url)
    assert [s.metrics.get("rating") for s in fastchat.samples] == [fastchat_rating] * 2
    assert [s.metrics.get("rating") for s in own.samples] == [own_rating] * 2
