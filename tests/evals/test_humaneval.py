"""HumanEval: bundled data, pass@k, the opt-in, generation through lm-eval's LM, prediction files."""

from __future__ import annotations

import itertools
import json
import math
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from lm_eval.api.model import LM
from pydantic import ValidationError

from evals.humaneval import (
    OPT_IN_ENV,
    SAMPLE_STRIDE,
    Config,
    HumanEval,
    load_problems,
    pass_at_k,
    score,
    score_predictions,
)
from harness.api import EvalContext
from harness.code_completion import STOP_SEQUENCES, truncate_at_stop
from harness.errors import BenchError

OPT_IN_MESSAGE = ("humaneval runs model-generated code (fix: pass --allow-code-exec "
                  "(or set BENCH_ALLOW_CODE_EXEC=1) to run it in the sandbox)")


@pytest.fixture(autouse=True)
def no_opt_in_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OPT_IN_ENV, raising=False)


@pytest.fixture(scope="module")
def problems() -> list:
    return load_problems()


def ctx(tmp_path: Path, limit: int | None = None, seed: int = 0) -> EvalContext:
    return EvalContext(workdir=tmp_path, seed=seed, limit=limit)


class ScriptedLM(LM):
    """An lm-eval LM that answers each request with ``answer(request)`` and records what it was asked."""

    def __init__(self, answer: Any) -> None:
        super().__init__()
        self.answer = answer
        self.requests: list[Any] = []

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        self.requests.extend(requests)
        return [self.answer(r) for r in requests]

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        raise NotImplementedError

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError


def canonical(request: Any) -> str:
    # Followed by the next top-level def, as a real model would ramble on: the stop sequence cuts it.
    return request.doc["canonical_solution"] + "\ndef unrelated():\n    raise SystemExit(0)\n"


# --- data and the estimator --------------------------------------------------------------------------


def test_the_164_bundled_problems_load_offline(problems: list) -> None:
    assert len(problems) == 164
    assert problems[0].task_id == "HumanEval/0" and problems[0].index == 0
    assert problems[163].task_id == "HumanEval/163"
    assert all(p.prompt and p.test and p.entry_point and p.canonical_solution for p in problems)


def test_canonical_solutions_pass_all_164(problems: list) -> None:
    start = time.monotonic()
    result = score(problems, [[p.canonical_solution] for p in problems], Config(allow_code_exec=True))
    seconds = time.monotonic() - start
    print(f"\n164 canonical solutions sandboxed in {seconds:.1f}s")
    (s,) = result.scores
    assert (s.task, s.metric, s.value, s.n, s.stderr, s.higher_is_better) == ("humaneval", "pass@1", 1.0, 164, 0.0, True)
    failed = [(x.doc_id, x.metrics["result"]) for x in result.samples if not x.metrics["passed"]]
    assert failed == []
    assert [x.doc_id for x in result.samples] == list(range(164))
    assert seconds < 40


def test_pass_bodies_score_zero(problems: list) -> None:
    result = score(problems, [["    pass\n"] for _ in problems], Config(allow_code_exec=True))
    assert result.scores[0].value == 0.0
    assert all(x.metrics["result"].startswith(("failed: ", "timed out")) for x in result.samples)


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """The fraction of k-subsets of n samples (the first c correct) holding at least one correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_brute_force_enumeration(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n() -> None:
    for n, c, k in [(200, 37, 100), (1000, 1, 10), (1000, 999, 100), (100, 0, 100), (500, 3, 1)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


def test_stop_sequences_cut_completions() -> None:
    assert truncate_at_stop("    return 1\n\ndef g():\n    pass") == "    return 1\n"
    assert truncate_at_stop("    if x:\n        return 1\nprint(2)") == "    if x:\n        return 1"
    assert truncate_at_stop("    return 1") == "    return 1"


# --- configuration and the opt-in -----------------------------------------------------------------------


def test_config_rejects_unknown_fields_and_greedy_multi_sampling() -> None:
    with pytest.raises(ValidationError):
        Config(allow_code_exec=True, sample=3)
    with pytest.raises(ValidationError, match="temperature"):
        Config(samples=5)
    assert Config(samples=5, temperature=0.8).samples == 5


def test_without_opt_in_nothing_is_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lm = ScriptedLM(canonical)
    for value in (None, "0", "true", "yes"):
        if value is not None:
            monkeypatch.setenv(OPT_IN_ENV, value)
        with pytest.raises(BenchError) as err:
            HumanEval().evaluate(lm, Config(), ctx(tmp_path, limit=2))
        assert err.value.one_line() == OPT_IN_MESSAGE
    assert lm.requests == []
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    pass\n"}) + "\n")
    with pytest.raises(BenchError, match="model-generated code"):
        score_predictions(predictions, Config())


def test_the_environment_variable_opts_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OPT_IN_ENV, "1")
    result = HumanEval().evaluate(ScriptedLM(canonical), Config(), ctx(tmp_path, limit=2))
    assert result.scores[0].value == 1.0


# --- generation through the LM interface ----------------------------------------------------------------


def test_end_to_end_with_a_stub_lm(tmp_path: Path, problems: list) -> None:
    lm = ScriptedLM(canonical)
    result = HumanEval().evaluate(lm, Config(allow_code_exec=True), ctx(tmp_path, limit=5))
    (s,) = result.scores
    assert (s.metric, s.value, s.n) == ("pass@1", 1.0, 5)
    assert len(lm.requests) == 5
    first = lm.requests[0]
    assert first.request_type == "generate_until"
    context, gen_kwargs = first.args
    assert context == problems[0].prompt
    assert gen_kwargs == {"until": list(STOP_SEQUENCES), "max_gen_toks": 512, "do_sample": False}
    assert (first.task_name, first.doc_id, first.repeats) == ("humaneval", 0, 1)
    sample = result.samples[2]
    assert (sample.task, sample.doc_id, sample.target) == ("humaneval", 2, problems[2].entry_point)
    assert sample.prompt == problems[2].prompt
    assert sample.output == problems[2].canonical_solution  # cut before "\ndef unrelated"
    assert sample.extracted == problems[2].prompt + problems[2].canonical_solution  # the solution that ran
    assert sample.metrics == {"passed": 1.0, "result": "passed", "sample": 0}


def test_several_samples_give_pass_at_k(tmp_path: Path) -> None:
    def every_other_right(request: Any) -> str:
        return request.doc["canonical_solution"] if request.idx % 2 == 0 else "    return None\n"

    lm = ScriptedLM(every_other_right)
    cfg = Config(allow_code_exec=True, samples=10, temperature=0.8)
    result = HumanEval().evaluate(lm, cfg, ctx(tmp_path, limit=3))
    values = {s.metric: s.value for s in result.scores}
    assert values == pytest.approx({"pass@1": 0.5, "pass@10": 1.0})  # no pass@100 from 10 samples
    assert all(s.n == 3 for s in result.scores)
    assert lm.requests[0].args[1] == {"until": list(STOP_SEQUENCES), "max_gen_toks": 512, "do_sample": True,
                                      "temperature": 0.8}
    assert [x.doc_id for x in result.samples[:12]] == [*range(10), SAMPLE_STRIDE, SAMPLE_STRIDE + 1]
    assert [x.metrics["passed"] for x in result.samples[:4]] == [1.0, 0.0, 1.0, 0.0]
    assert result.samples[11].metrics["sample"] == 1


def test_hostile_completions_are_contained(tmp_path: Path) -> None:
    hostile = ["    import os\n    os._exit(0)\n", "    import sys\n    sys.exit(0)\n", "    while True:\n        pass\n",
               "    import os\n    os.kill(os.getppid(), 9)\n"]
    lm = ScriptedLM(lambda r: hostile[r.doc_id])
    result = HumanEval().evaluate(lm, Config(allow_code_exec=True, timeout_s=1.0), ctx(tmp_path, limit=4))
    assert result.scores[0].value == 0.0
    assert [x.metrics["result"].split(":")[0] for x in result.samples] == ["failed", "failed", "timed out", "failed"]


# Each returns a wrong answer that would pass if the tests ran in the completion's process.
FORGING_COMPLETIONS = {
    "always-equal": "    class Yes:\n        def __eq__(self, other):\n            return True\n    return Yes()\n",
    "frame nonce theft": ("    import sys\n    frame = sys._getframe()\n"
                          "    while frame is not None and 'nonce' not in frame.f_locals:\n"
                          "        frame = frame.f_back\n"
                          "    if frame is not None:\n"
                          "        frame.f_locals['report']('ok', frame.f_locals['nonce'])\n"
                          "        frame.f_locals['exit_now'](0)\n"
                          "    return None\n"),
}


@pytest.mark.parametrize("forgery", list(FORGING_COMPLETIONS))
def test_completions_that_forge_a_pass_in_one_process_score_zero(tmp_path: Path, problems: list, forgery: str) -> None:
    from harness.sandbox import run_program

    completion = FORGING_COMPLETIONS[forgery]
    first = problems[0]
    joined = f"{first.prompt}{completion}\n\n{first.test}\n\ncheck({first.entry_point})\n"
    assert run_program(joined).passed  # one process, as HumanEval ran before: the forgery works
    result = HumanEval().evaluate(ScriptedLM(lambda r: completion), Config(allow_code_exec=True), ctx(tmp_path, limit=3))
    assert result.scores[0].value == 0.0
    assert all(x.metrics["result"].startswith("failed: ") for x in result.samples)


def test_a_custom_problems_file(tmp_path: Path) -> None:
    rows = [{"task_id": "t/0", "prompt": "def inc(x):\n", "entry_point": "inc",
             "test": "def check(f):\n    assert f(1) == 2\n", "canonical_solution": "    return x + 1\n"},
            {"task_id": "t/1", "prompt": "def neg(x):\n", "entry_point": "neg",
             "test": "def check(f):\n    assert f(1) == -1\n", "canonical_solution": "    return x\n"}]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = Config(allow_code_exec=True, problems_file=str(path))
    result = HumanEval().evaluate(ScriptedLM(canonical), cfg, ctx(tmp_path))
    assert result.scores[0].value == 0.5 and result.scores[0].n == 2
    assert result.samples[1].metrics["result"] == "failed: AssertionError (tests line 2)"
    path.write_text(json.dumps({"task_id": "t/0", "prompt": "x"}) + "\n")
    with pytest.raises(BenchError, match="entry_point, test"):
        HumanEval().evaluate(ScriptedLM(canonical), cfg, ctx(tmp_path))
    with pytest.raises(BenchError, match="not found"):
        HumanEval().evaluate(ScriptedLM(canonical), cfg.model_copy(update={"problems_file": "/nope.jsonl"}),
                             ctx(tmp_path))


# --- bench score: prediction files ---------------------------------------------------------------------


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_score_predictions(tmp_path: Path, problems: list) -> None:
    preds = write_lines(tmp_path / "p.jsonl", [
        {"task_id": "HumanEval/0", "completion": problems[0].canonical_solution},
        {"task_id": "HumanEval/0", "completion": "    return False\n"},
        "",
        {"task_id": "HumanEval/2", "completion": problems[2].canonical_solution},
        {"task_id": "HumanEval/2", "completion": problems[2].canonical_solution},
    ])
    result = score_predictions(preds, Config(allow_code_exec=True))
    (s,) = result.scores
    assert (s.metric, s.n) == ("pass@1", 2)
    assert s.value == pytest.approx((0.5 + 1.0) / 2)
    assert [x.doc_id for x in result.samples] == [0, 1, 2 * SAMPLE_STRIDE, 2 * SAMPLE_STRIDE + 1]
    assert [x.metrics["passed"] for x in result.samples] == [1.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize(("lines", "message"), [
    ([{"task_id": "HumanEval/0", "completion": "    pass"}, "{not json"], r"p\.jsonl:2 is not valid JSON"),
    ([{"task_id": "HumanEval/0"}], r"p\.jsonl:1 needs string keys task_id and completion"),
    (["[1, 2]"], r"p\.jsonl:1 is not a JSON object"),
    ([{"task_id": "HumanEval/0", "completion": "x"}, {"task_id": "HumanEval/1000", "completion": "x"}],
     r"p\.jsonl:2 has unknown task_id 'HumanEval/1000'"),
    ([""], "is empty"),
])
def test_bad_prediction_files_are_bench_errors(tmp_path: Path, lines: list[Any], message: str) -> None:
    preds = write_lines(tmp_path / "p.jsonl", lines)
    with pytest.raises(BenchError, match=message):
        score_predictions(preds, Config(allow_code_exec=True))


def test_a_missing_predictions_file(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="not found"):
        score_predictions(tmp_path / "absent.jsonl", Config(allow_code_exec=True))


# --- a real (tiny, random) HF model through HFLM ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_hflm(problems: list) -> Any:
    """A 1-layer GPT-2 with a 400-token byte-level BPE trained on the prompts: random, but real plumbing."""
    import torch
    from lm_eval.models.huggingface import HFLM
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<eos>"], show_progress=False)
    tok.train_from_iterator([p.prompt + p.canonical_solution for p in problems], trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    eos = hf_tok.eos_token_id
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(hf_tok), n_embd=32, n_layer=1, n_head=2, n_positions=1024,
                                       bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)).eval()
    return HFLM(pretrained=model, tokenizer=hf_tok, batch_size=2, device="cpu", max_length=1024)


def test_a_tiny_hf_model_generates_and_is_scored(tmp_path: Path, tiny_hflm: Any) -> None:
    result = HumanEval().evaluate(tiny_hflm, Config(allow_code_exec=True, max_gen_toks=16), ctx(tmp_path, limit=2))
    (s,) = result.scores
    assert (s.metric, s.value, s.n) == ("pass@1", 0.0, 2)
    assert len(result.samples) == 2
    for sample in result.samples:
        assert sample.output and not any(stop in sample.output for stop in STOP_SEQUENCES)
        assert sample.metrics["result"] != "passed"


def test_sampling_with_hflm_is_seeded(tmp_path: Path, tiny_hflm: Any) -> None:
    cfg = Config(allow_code_exec=True, max_gen_toks=8, samples=2, temperature=1.0)
    first = HumanEval().evaluate(tiny_hflm, cfg, ctx(tmp_path, limit=1, seed=7))
    again = HumanEval().evaluate(tiny_hflm, cfg, ctx(tmp_path, limit=1, seed=7))
    outputs = [x.output for x in first.samples]
    assert outputs == [x.output for x in again.samples]
    assert outputs[0] != outputs[1]  # do_sample reached the model: two different draws
