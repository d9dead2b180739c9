"""BBH scoring through lm-eval's own task definitions, on the real data when ../shared is present."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from evals import _bbh_generators as gen
from evals.bbh import BBHMini, Config, MiniConfig, all_tasks, load_predictions, score_predictions
from harness.api import EvalContext
from harness.errors import BenchError

BBH_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "bbh" / "tasks"
needs_bbh = pytest.mark.skipif(not BBH_DIR.is_dir(), reason="../shared/data/bbh/tasks not present")


def test_lm_eval_defines_all_27_tasks():
    assert len(all_tasks()) == 27


def _write_predictions(path: Path, tasks: list[str], answer) -> dict[str, list[dict]]:  # noqa: ANN001
    examples = {t: json.loads((BBH_DIR / f"{t}.json").read_text())["examples"] for t in tasks}
    lines = [json.dumps({"task": t, "index": i, "output": answer(ex)}) for t in tasks for i, ex in enumerate(examples[t])]
    path.write_text("\n".join(lines) + "\n")
    return examples


@needs_bbh
def test_gold_cot_predictions_score_100_percent_on_all_tasks(tmp_path):
    tasks = all_tasks()
    _write_predictions(tmp_path / "p.jsonl", tasks, lambda ex: f"Step by step... So the answer is {ex['target']}.")
    res = score_predictions(tmp_path / "p.jsonl", Config(data_dir=str(BBH_DIR)), tmp_path / "work")
    per_task = {s.task: s.value for s in res.scores}
    assert set(per_task) == set(tasks) | {"macro", "weighted"}
    assert all(v == 1.0 for v in per_task.values())
    assert len(res.samples) == 6511


@needs_bbh
def test_constant_answer_scores_the_rate_in_the_data(tmp_path):
    tasks = ["date_understanding", "navigate", "boolean_expressions"]
    examples = _write_predictions(tmp_path / "p.jsonl", tasks, lambda ex: "I think. So the answer is (A).")
    res = score_predictions(tmp_path / "p.jsonl", Config(data_dir=str(BBH_DIR)), tmp_path / "work")
    got = {s.task: s.value for s in res.scores}
    for t in tasks:
        expected = Counter(ex["target"] for ex in examples[t])["(A)"] / len(examples[t])
        assert got[t] == pytest.approx(expected)
    assert got["date_understanding"] > 0  # (A) is a real answer there; the filter really extracts it
    n = sum(len(v) for v in examples.values())
    assert got["weighted"] == pytest.approx(sum(got[t] * len(examples[t]) for t in tasks) / n)
    assert got["macro"] == pytest.approx(sum(got[t] for t in tasks) / 3)


@needs_bbh
def test_direct_mode_scores_raw_answers(tmp_path):
    _write_predictions(tmp_path / "p.jsonl", ["navigate"], lambda ex: ex["target"])
    res = score_predictions(tmp_path / "p.jsonl", Config(data_dir=str(BBH_DIR), mode="direct"), tmp_path / "w")
    assert {s.task: s.value for s in res.scores}["navigate"] == 1.0


def test_bad_prediction_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "navigate", "index": 0, "output": "x"}\nnot json\n')
    with pytest.raises(BenchError, match=r"bad.jsonl:2 is not valid JSON"):
        load_predictions(bad)
    bad.write_text('{"task": "navigate", "output": "x"}\n')
    with pytest.raises(BenchError, match="needs keys"):
        load_predictions(bad)
    with pytest.raises(BenchError, match="not found"):
        load_predictions(tmp_path / "missing.jsonl")


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        from evals.bbh import real_bbh_configs

        real_bbh_configs(Config(data_dir=str(tmp_path / "nope")), tmp_path)


def test_generators_are_deterministic_and_correct():
    for task in gen.GENERATORS:
        a, b = gen.generate(task, 20, seed=3), gen.generate(task, 20, seed=3)
        assert a == b and len({i.input for i in a}) == 20
        assert not {i.input for i in gen.exemplars(task)} & {i.input for i in gen.generate(task, 200, seed=0)}
    for item in gen.generate("multistep_arithmetic_two", 50, seed=1):
        assert eval(item.input.rstrip(" =")) == int(item.target)  # noqa: S307
    for item in gen.generate("boolean_expressions", 50, seed=1):
        assert str(eval(item.input.removesuffix(" is"))) == item.target  # noqa: S307
    for item in gen.generate("word_sorting", 20, seed=1):
        words = item.input.split("List: ")[1].split()
        assert item.target == " ".join(sorted(words))
    for item in gen.generate("dyck_languages", 50, seed=1):
        seq = item.input.split("Input: ")[1].split() + item.target.split()
        stack = []
        for ch in seq:
            if ch in "([{<":
                stack.append(ch)
            else:
                assert "([{<"[")]}>".index(ch)] == stack.pop()
        assert not stack


class _OracleLM:
    """Answers bbh-mini items correctly in CoT form, by regenerating the items."""

    def __new__(cls):
        from lm_eval.api.model import LM

        answers = {i.input: i.cot_target() for t in gen.GENERATORS for i in gen.generate(t, 5, seed=0)}

        class Oracle(LM):
            def generate_until(self, requests):
                return [" " + answers[r.doc["input"]] for r in requests]

            def loglikelihood(self, requests):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

        return Oracle()


def test_bbh_mini_with_an_oracle_is_perfect(tmp_path):
    res = BBHMini().evaluate(_OracleLM(), MiniConfig(n_per_task=5), EvalContext(workdir=tmp_path))
    scores = {s.task: s.value for s in res.scores}
    assert set(scores) == set(gen.GENERATORS) | {"macro", "weighted"}
    assert all(v == 1.0 for v in scores.values()), scores
    assert len(res.samples) == 35 and all(s.extracted == s.target for s in res.samples)
