"""humaneval-mini: the function-problem generator (split, determinism, format) and the suite end to end."""

from __future__ import annotations

import ast
import doctest
import json
import time
from pathlib import Path

import pytest
import sqlite_utils
from pydantic import ValidationError

from evals.humaneval import (
    OPT_IN_ENV,
    SAMPLE_STRIDE,
    HumanEvalMini,
    MiniConfig,
    generated_problems,
    score,
    score_predictions,
)
from harness.api import EvalContext
from harness.code_completion import STOP_SEQUENCES
from harness.errors import BenchError
from harness.skills import split_of
from harness.skills.functions import FAMILIES, SPLIT_TASK, generate
from tests.conftest import bench
from tests.evals.test_humaneval import ScriptedLM, canonical


@pytest.fixture(autouse=True)
def no_opt_in_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OPT_IN_ENV, raising=False)


def ctx(tmp_path: Path, limit: int | None = None) -> EvalContext:
    return EvalContext(workdir=tmp_path, seed=0, limit=limit)


# --- the generator -------------------------------------------------------------------------------------


def test_train_and_eval_sides_never_share_a_prompt() -> None:
    train = [p.prompt for seed in (0, 1) for p in generate(2000, seed, split="train")]
    evals = [p.prompt for seed in (0, 1) for p in generate(200, seed, split="eval")]
    assert not set(train) & set(evals)
    assert all(split_of(SPLIT_TASK, t) == "train" for t in train)
    assert all(split_of(SPLIT_TASK, e) == "eval" for e in evals)
    assert len(set(train[:2000])) == 2000 and len(set(evals[:200])) == 200  # distinct within a list


def test_generation_is_deterministic_and_the_families_take_turns() -> None:
    first = generate(60, seed=3)
    assert first == generate(60, seed=3)
    assert first != generate(60, seed=4)
    assert generate(60, seed=3, split="train") == generate(60, seed=3, split="train")
    assert [p.task_id for p in first[:3]] == ["HumanEvalMini/0", "HumanEvalMini/1", "HumanEvalMini/2"]
    assert [p.family for p in first[:len(FAMILIES)]] == list(FAMILIES)
    assert 10 <= len(FAMILIES) <= 14
    assert generate(0, seed=3) == []


def test_records_have_humaneval_s_shape_and_true_examples() -> None:
    for problem in generate(200, seed=0):
        record = problem.as_record()
        assert set(record) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
        assert record["prompt"].startswith(f"def {record['entry_point']}(")
        assert record["prompt"].count(">>>") == 1 and record["prompt"].endswith('    """\n')
        assert record["canonical_solution"].startswith("    return ") and record["canonical_solution"].endswith("\n")
        assert record["test"].lstrip().startswith("def check(candidate):")
        assert 3 <= record["test"].count("    assert candidate(") <= 5
        function = problem.training_text()
        assert function == record["prompt"] + record["canonical_solution"]
        ast.parse(function)
        # the >>> example is right: run it as a doctest against the canonical body (our own generated code)
        namespace: dict = {}
        exec(compile(function, problem.task_id, "exec"), namespace)
        finder = doctest.DocTestFinder()
        runner = doctest.DocTestRunner()
        for test in finder.find(namespace[problem.entry_point], problem.entry_point, globs=namespace):
            runner.run(test)
        assert runner.failures == 0, function


@pytest.mark.parametrize(("call", "message"), [
    (lambda: generate(-1, 0), "cannot generate -1 function problems"),
    (lambda: generate(True, 0), "cannot generate True function problems"),
    (lambda: generate(3, 0, split="test"), "unknown split 'test'"),
    (lambda: generate(3, "0"), "seed '0' is not a whole number"),
    (lambda: generate(10**6, 0, split="train"), r"ran out\) \(fix: ask for at most"),
])
def test_bad_requests_are_one_line_bench_errors(call, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        call()


# --- the suite ------------------------------------------------------------------------------------------


def test_canonical_solutions_pass_and_wrong_bodies_fail_in_the_sandbox() -> None:
    problems = generated_problems(2 * len(FAMILIES), seed=0)
    start = time.monotonic()
    result = score(problems, [[p.canonical_solution, "    return None\n"] for p in problems],
                   MiniConfig(allow_code_exec=True))
    print(f"\n{2 * len(problems)} programs sandboxed in {time.monotonic() - start:.1f}s")
    right, wrong = result.samples[0::2], result.samples[1::2]
    assert [(s.doc_id, s.metrics["result"]) for s in right if not s.metrics["passed"]] == []
    assert all(s.metrics["result"] == "failed: AssertionError (tests line 4)" for s in wrong)  # the first assert
    assert [s.doc_id for s in right] == [i * SAMPLE_STRIDE for i in range(len(problems))]
    assert {s.task for s in result.samples} == {"humaneval-mini"}
    (pass_at_1,) = result.scores  # two samples: no pass@10
    assert (pass_at_1.task, pass_at_1.metric, pass_at_1.value, pass_at_1.n) == ("humaneval-mini", "pass@1", 0.5,
                                                                                 len(problems))


def test_config_and_opt_in(tmp_path: Path) -> None:
    cfg = MiniConfig()
    assert (cfg.n_problems, cfg.data_seed, cfg.samples, cfg.temperature, cfg.max_gen_toks) == (40, 0, 1, 0.0, 128)
    assert cfg.pass_at_k_values() == (1, 10, 100)
    assert MiniConfig(pass_at_k=[5, 1, 5]).pass_at_k_values() == (1, 5)
    with pytest.raises(ValidationError, match="temperature"):
        MiniConfig(samples=4)
    with pytest.raises(ValidationError, match="k=0"):
        MiniConfig(pass_at_k=[0, 1])
    with pytest.raises(ValidationError):
        MiniConfig(problems_file="x.jsonl")  # its problems are generated
    lm = ScriptedLM(canonical)
    with pytest.raises(BenchError) as err:
        HumanEvalMini().evaluate(lm, MiniConfig(), ctx(tmp_path, limit=2))
    assert err.value.one_line().startswith("humaneval-mini runs model-generated code (fix: pass --allow-code-exec")
    assert lm.requests == []


def test_sampled_completions_give_the_configured_pass_at_k(tmp_path: Path) -> None:
    def right_then_wrong(request) -> str:
        return canonical(request) if request.idx == 0 else "    return None\n"

    lm = ScriptedLM(right_then_wrong)
    cfg = MiniConfig(allow_code_exec=True, samples=4, temperature=0.7, pass_at_k=[1, 2, 8], data_seed=5)
    result = HumanEvalMini().evaluate(lm, cfg, ctx(tmp_path, limit=3))
    problems = generated_problems(40, seed=5)[:3]
    first = lm.requests[0]
    assert first.args == (problems[0].prompt, {"until": list(STOP_SEQUENCES), "max_gen_toks": 128, "do_sample": True,
                                               "temperature": 0.7})
    assert (first.task_name, first.doc_id, first.repeats) == ("humaneval-mini", 0, 4)
    assert {s.metric: s.value for s in result.scores} == pytest.approx({"pass@1": 0.25, "pass@2": 0.5})  # not @8
    assert all(s.n == 3 and s.task == "humaneval-mini" for s in result.scores)
    assert result.samples[0].output == problems[0].canonical_solution  # cut before the next def


def test_predictions_made_elsewhere_are_scored(tmp_path: Path) -> None:
    problems = generated_problems(40, seed=0)
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("".join(json.dumps({"task_id": p.task_id, "completion": c}) + "\n" for p, c in [
        (problems[1], problems[1].canonical_solution), (problems[7], "    return 0\n")]))
    result = score_predictions(predictions, MiniConfig(allow_code_exec=True))
    assert [(s.task, s.metric, s.value, s.n) for s in result.scores] == [("humaneval-mini", "pass@1", 0.5, 2)]
    assert [s.doc_id for s in result.samples] == [1, 7]


def test_a_micro_model_is_evaluated_and_recorded(micro_llama: Path, tmp_path: Path, single_thread: None) -> None:
    db = tmp_path / "bench.db"
    assert bench("eval", "--model", str(micro_llama), "--suite", "humaneval-mini", "--allow-code-exec",
                 "--limit", "3", "--set", "humaneval-mini.max_gen_toks=16", "--db", str(db)) == 0
    database = sqlite_utils.Database(db)
    (run,) = database.query("select * from runs")
    assert run["status"] == "ok"
    (pass_at_1,) = database.query("select * from scores where suite = 'humaneval-mini'")
    assert (pass_at_1["task"], pass_at_1["metric"], pass_at_1["n"]) == ("humaneval-mini", "pass@1", 3)
    assert 0.0 <= pass_at_1["value"] <= 1.0
    samples = list(database.query("select * from samples where suite = 'humaneval-mini' order by doc_id"))
    assert [s["doc_id"] for s in samples] == [0, 1, 2]


def test_compare_pairs_problems_over_their_samples() -> None:
    from harness.compare import units

    samples = [{"task": "humaneval-mini", "doc_id": p * SAMPLE_STRIDE + j, "metrics": {"passed": float(j < p), "sample": j}}
               for p in range(3) for j in range(2)]
    assert units("humaneval-mini", samples).values == {("humaneval-mini", 0): (0.0, 1.0),
                                                      ("humaneval-mini", SAMPLE_STRIDE): (0.5, 1.0),
                                                      ("humaneval-mini", 2 * SAMPLE_STRIDE): (1.0, 1.0)}
