"""BBH scoring through lm-eval's own task definitions, on the real data when ../shared is present."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import yaml

from evals.bbh import (
    BBH,
    STOP,
    BBHMini,
    Config,
    MiniConfig,
    all_tasks,
    extract_answer,
    load_predictions,
    score_predictions,
)
from harness.api import EvalContext
from harness.errors import BenchError
from harness.skills import bbh_items as gen

BBH_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "bbh" / "tasks"
needs_bbh = pytest.mark.skipif(not BBH_DIR.is_dir(), reason="../shared/data/bbh/tasks not present")
# The BBH authors' recorded outputs (the `code-davinci-002-outputs` folder of their repository), if given.
OUTPUTS_DIR = Path(os.environ.get("BBH_OUTPUTS_DIR", "/nonexistent"))

# --- the answer rule: the BBH authors', not lm-eval's regex ------------------------------------------

# (output, extracted). The first four are what lm-eval's `(?<=the answer is )(.*)(?=.)` gets wrong:
# "N", "(A", "2" and "True." respectively.
COT_CASES = [
    ("Let's think. So the answer is No", "No"),
    ("Let's think. So the answer is (A)", "(A)"),
    ("4 * 6 = 24. So the answer is 24", "24"),
    ("So the answer is True.   ", "True"),
    ("(A) fits. So the answer is (C).\n\nQ: Which of the following", "(C)"),  # the next exemplar follows
    ("Both hold. So the answer is Yes.", "Yes"),  # Yes/No
    ("not False = True. So the answer is True.", "True"),  # True/False
    ("Count: 3 + 4 = 7. So the answer is -12.", "-12"),  # numbers
    ("So the answer is 3.5.", "3.5"),  # one trailing period only
    ("So the answer is True..", "True."),
    ("We close them in order. So the answer is ) ] }.", ") ] }"),  # dyck sequences
    ("So the answer is apple banana cherry.", "apple banana cherry"),  # sorted words, final period
    ("So the answer is apple banana cherry", "apple banana cherry"),  # ... and without
    ("So the answer is    valid  \nbecause the premises", "valid"),  # to the end of that line only
    ("I think the answer is (B).\nSo the answer is (C).", "(C)"),  # "So the answer is" comes first
    ("Therefore THE ANSWER IS invalid.", "invalid"),  # the case-insensitive fallback
    ("So the answer is (A). Hmm, So the answer is (B).", "(A). Hmm, So the answer is (B)"),  # the whole line
    ("The Queen moves first. Quickly: So the answer is Yes.", "Yes"),  # capital Q is nothing special
    ("I do not know.", ""),  # no answer phrase at all
    ("", ""),
]
DIRECT_CASES = [
    ("No", "No"),
    ("(A)", "(A)"),
    ("24", "24"),
    ("True.   ", "True"),
    (" Yes\n\nQ: Is the following sentence plausible?", "Yes"),
    ("(B)\nbecause the second option", "(B)"),
    (") ] }", ") ] }"),
    ("apple banana cherry.", "apple banana cherry"),
    ("apple banana cherry", "apple banana cherry"),
    ("\n\nvalid.", "valid"),
    ("-3", "-3"),
    ("True..", "True."),
    ("Queen", "Queen"),
    ("", ""),
]


@pytest.mark.parametrize(("output", "expected"), COT_CASES)
def test_cot_answer_follows_the_bbh_authors_rule(output, expected):
    assert extract_answer(output, "cot") == expected


@pytest.mark.parametrize(("output", "expected"), DIRECT_CASES)
def test_direct_answer_is_the_first_line(output, expected):
    assert extract_answer(output, "direct") == expected


def test_lm_eval_pipeline_uses_the_rule_and_the_stops(tmp_path):
    """Through lm-eval's task machinery (`bench score`'s path): the registered filter extracts, the task
    YAML stops at EOS / "\n\nQ:" / "</s>" only, and the suite versions moved on from lm-eval's rule."""
    examples = [{"input": f"question {i}", "target": target} for i, target in enumerate(["No", "(A)", "24", "True"])]
    data = tmp_path / "data"
    data.mkdir()
    (data / "navigate.json").write_text(json.dumps({"examples": examples}))
    outputs = [c[0] for c in COT_CASES[:4]]
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"task": "navigate", "index": i, "output": o}) + "\n" for i, o in enumerate(outputs)))
    res = score_predictions(preds, Config(data_dir=str(data)), tmp_path / "work")
    assert [s.extracted for s in res.samples] == ["No", "(A)", "24", "True"]
    assert {s.task: s.value for s in res.scores}["navigate"] == 1.0
    written = yaml.safe_load((tmp_path / "work" / "tasks" / "fb_bbh_cot_navigate.yaml").read_text())
    assert written["generation_kwargs"]["until"] == STOP == ["\n\nQ:", "</s>"]
    assert written["generation_kwargs"]["max_gen_toks"] == 1024
    assert BBH.version == "2" and BBHMini.version == "3"


def test_direct_mode_and_the_length_cap_are_configurable(tmp_path):
    from evals.bbh import _task_yaml

    direct = _task_yaml("t", "navigate", "direct", None, None)
    assert direct["generation_kwargs"]["max_gen_toks"] == 128
    assert direct["filter_list"][0]["filter"][0] == {"function": "fusebench_bbh_answer", "mode": "direct"}
    assert _task_yaml("t", "navigate", "cot", None, 300)["generation_kwargs"]["max_gen_toks"] == 300
    with pytest.raises(ValueError):
        Config(max_gen_toks=0)


@pytest.mark.skipif(not (OUTPUTS_DIR.is_dir() and BBH_DIR.is_dir()),
                    reason="set BBH_OUTPUTS_DIR to the BBH authors' code-davinci-002-outputs folder")
@pytest.mark.parametrize("mode", ["cot", "direct"])
def test_recorded_outputs_reproduce_the_published_accuracies(tmp_path, mode):
    """The authors' recorded code-davinci-002 outputs, scored through `bench score`'s path, give exactly
    the per-task accuracy they published beside them, on all 27 tasks."""
    published, lines = {}, []
    for task in all_tasks():
        stem = OUTPUTS_DIR / f"code-davinci-002-{mode}" / f"{task}_few_shot_template_0-255000"
        outputs = json.loads(stem.with_suffix(".json").read_text())["outputs"]
        examples = json.loads((BBH_DIR / f"{task}.json").read_text())["examples"]
        assert [o["target"] for o in outputs] == [e["target"] for e in examples]  # same items, same order
        lines += [json.dumps({"task": task, "index": i, "output": o["prediction"]}) for i, o in enumerate(outputs)]
        metrics = Path(f"{stem}_eval_metrics.jsonl").read_text().splitlines()[0]
        published[task] = json.loads(metrics)["accuracy"]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    res = score_predictions(tmp_path / "p.jsonl", Config(data_dir=str(BBH_DIR), mode=mode), tmp_path / "work")
    ours = {s.task: 100 * s.value for s in res.scores if s.task in published}
    assert ours == pytest.approx(published, abs=1e-9)


def test_lm_eval_defines_all_27_tasks():
    assert len(all_tasks()) == 27


def _write_predictions(path: Path, tasks: list[str], answer) -> dict[str, list[dict]]:
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
        assert eval(item.input.rstrip(" =")) == int(item.target)
    for item in gen.generate("boolean_expressions", 50, seed=1):
        assert str(eval(item.input.removesuffix(" is"))) == item.target
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
    """Answers bbh-mini items correctly in ``mode``'s form, by regenerating the items."""

    def __new__(cls, mode: str = "cot"):
        from lm_eval.api.model import LM

        answers = {i.input: i.cot_target() if mode == "cot" else i.target
                   for t in gen.GENERATORS for i in gen.generate(t, 5, seed=0)}

        class Oracle(LM):
            def generate_until(self, requests):
                return [" " + answers[r.doc["input"]] for r in requests]

            def loglikelihood(self, requests):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

        return Oracle()


@pytest.mark.parametrize("mode", ["direct", "cot"])
def test_bbh_mini_with_an_oracle_is_perfect(tmp_path, mode):
    assert MiniConfig().mode == "direct"  # what the zoo learns
    res = BBHMini().evaluate(_OracleLM(mode), MiniConfig(n_per_task=5, mode=mode), EvalContext(workdir=tmp_path))
    scores = {s.task: s.value for s in res.scores}
    assert set(scores) == set(gen.GENERATORS) | {"macro", "weighted"}
    assert all(v == 1.0 for v in scores.values()), scores
    assert len(res.samples) == 5 * len(gen.GENERATORS) and all(s.extracted == s.target for s in res.samples)
