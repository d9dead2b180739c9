"""`bench compare` on hand-made results DBs (known per-example values, no models), and its refusals.

Each DB is written with the store's own API: a run per call of ``record``, its models' scores and samples."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from harness.store import Store
from tests.conftest import bench

CONFIG = {"suite_args": {}, "limit": None, "seed": 0}


def record(store: Store, name: str | None, suite: str, models: dict[str, list[dict[str, Any]]], *,
           scores: list[dict[str, Any]] | None = None, config: dict[str, Any] | None = None, version: str = "1",
           roles: dict[str, str] | None = None, kind: str = "eval") -> str:
    """One ok run that evaluated ``models`` (name -> samples) on ``suite``; returns the run id."""
    run_id = store.start_run(kind=kind, name=name, command="test", provenance={}, config=config or CONFIG)
    for position, (model, samples) in enumerate(models.items()):
        model_id = f"id-{model}"
        store.add_model({"id": model_id, "name": model, "kind": "source"}, run_id, (roles or {}).get(model, "model"),
                        position)
        store.add_eval(run_id, model_id, suite, version, f"key-{model}", scores or default_scores(suite), samples)
    store.finish_run(run_id, "ok")
    return run_id


def default_scores(suite: str) -> list[dict[str, Any]]:
    metric, hib = {"perplexity": ("bits_per_byte", False), "mtbench": ("score", True),
                   "humaneval": ("pass@1", True)}.get(suite, ("exact_match", True))
    return [{"task": "any", "metric": metric, "value": 0.0, "higher_is_better": hib}]


def bbh_samples(correct: dict[str, list[int]]) -> list[dict[str, Any]]:
    return [{"task": task, "doc_id": i, "prompt": f"{task} question {i}", "target": "yes",
             "metrics": {"exact_match": float(c)}} for task, values in correct.items() for i, c in enumerate(values)]


def compare_json(db: str, *args: str, capsys) -> dict[str, Any]:
    capsys.readouterr()
    assert bench("compare", *args, "--db", db, "--format", "json", "--resamples", "2000") == 0
    return json.loads(capsys.readouterr().out)


def rows_by_task(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["task"]: r for r in result["rows"]}


@pytest.fixture
def db(tmp_path) -> tuple[str, Store]:
    path = str(tmp_path / "bench.db")
    return path, Store(path)


def test_bbh_tasks_and_aggregates(db, capsys):
    path, store = db
    rng = np.random.default_rng(0)
    a = {"dates": list(rng.integers(0, 2, 40)), "logic": list(rng.integers(0, 2, 160))}
    b = {"dates": [1] * 40, "logic": list(a["logic"])}  # B solves every dates item, the same logic items
    record(store, "ev", "bbh", {"small": bbh_samples(a), "large": bbh_samples(b)})
    result = compare_json(path, "small@ev", "large@ev", capsys=capsys)
    rows = rows_by_task(result)
    assert list(rows) == ["dates", "logic", "macro", "weighted"]
    gain = 1 - np.mean(a["dates"])
    assert rows["dates"]["difference"] == pytest.approx(gain) and rows["dates"]["verdict"] == "B better"
    assert rows["dates"]["ci_low"] > 0 and rows["dates"]["p_value"] < 0.001
    assert rows["logic"]["difference"] == 0 and rows["logic"]["p_value"] == 1.0
    assert rows["logic"]["verdict"] == "no significant difference"
    assert rows["macro"]["difference"] == pytest.approx(gain / 2)
    assert rows["weighted"]["difference"] == pytest.approx(gain * 40 / 200)
    assert rows["weighted"]["n"] == 200 and rows["dates"]["a"] == pytest.approx(np.mean(a["dates"]))
    assert result["a"]["model"] == "small" and result["b"]["model"] == "large"


def test_same_model_twice_is_no_difference(db, capsys):
    path, store = db
    samples = bbh_samples({"dates": [1, 0, 1, 1, 0] * 10})
    first = record(store, "first", "bbh", {"m": samples})
    second = record(store, "second", "bbh", {"m": samples})
    for row in compare_json(path, first, second, capsys=capsys)["rows"]:
        assert row["difference"] == 0 and row["ci_low"] <= 0 <= row["ci_high"] and row["p_value"] == 1.0


def test_table_output_names_both_sides_and_the_method(db, capsys):
    path, store = db
    record(store, "ev", "bbh", {"x": bbh_samples({"dates": [0] * 30}), "y": bbh_samples({"dates": [1] * 30})})
    capsys.readouterr()
    assert bench("compare", "x@ev", "y@ev", "--db", path, "--resamples", "1000") == 0
    out = capsys.readouterr().out
    assert out.startswith("A: x (model) in run ") and "\nB: y (model) in run " in out
    line = next(x for x in out.splitlines() if x.startswith("bbh ") and " dates " in x)
    assert "+1.0000" in line and "<0.001" in line and line.endswith("B better")
    assert "paired bootstrap over examples (1,000 resamples, seed 0)" in out and "sign-flip" in out


def test_perplexity_pairs_documents_and_weights_them_by_bytes(db, capsys):
    path, store = db
    rng = np.random.default_rng(1)

    def docs(bits_per_byte: np.ndarray, n_bytes: np.ndarray, task: str) -> list[dict[str, Any]]:
        return [{"task": task, "doc_id": i, "prompt": "", "target": f"{task} text {i}",
                 "metrics": {"loglikelihood": -b * n * math.log(2), "bytes": float(n)}}
                for i, (b, n) in enumerate(zip(bits_per_byte, n_bytes, strict=True))]

    n_bytes = {t: rng.integers(100, 3000, 12).astype(float) for t in ("code", "docs")}
    bpb_a = {t: rng.uniform(1.0, 2.0, 12) for t in n_bytes}
    bpb_b = {t: bpb_a[t] - 0.1 for t in n_bytes}  # B: 0.1 bits/byte better on every document
    bpb_b["docs"][0] += 5.0  # ... but much worse on one document of docs
    record(store, "a-run", "perplexity", {"alpha": [s for t in n_bytes for s in docs(bpb_a[t], n_bytes[t], t)]})
    record(store, "b-run", "perplexity", {"beta": [s for t in n_bytes for s in docs(bpb_b[t], n_bytes[t], t)]})
    rows = rows_by_task(compare_json(path, "a-run", "b-run", capsys=capsys))
    ratio = lambda bpb, t: (bpb[t] * n_bytes[t]).sum() / n_bytes[t].sum()  # noqa: E731
    for task in ("code", "docs"):
        assert rows[task]["a"] == pytest.approx(ratio(bpb_a, task))
        assert rows[task]["difference"] == pytest.approx(ratio(bpb_b, task) - ratio(bpb_a, task))
    assert rows["code"]["difference"] == pytest.approx(-0.1) and rows["code"]["verdict"] == "B better"
    assert rows["code"]["higher_is_better"] is False and rows["code"]["n"] == 12
    assert rows["avg"]["difference"] == pytest.approx((rows["code"]["difference"] + rows["docs"]["difference"]) / 2)
    assert rows["avg"]["n"] == 24


def test_humaneval_pairs_problems_over_their_samples(db, capsys):
    path, store = db

    def problems(passed: list[list[int]]) -> list[dict[str, Any]]:
        return [{"task": "humaneval", "doc_id": p * 1000 + j, "prompt": f"def f{p}():", "target": f"f{p}",
                 "metrics": {"passed": float(x), "sample": j, "result": "passed" if x else "failed: x"}}
                for p, runs in enumerate(passed) for j, x in enumerate(runs)]

    a = [[1, 0, 0, 0]] * 20 + [[1, 1, 1, 1]] * 10
    b = [[1, 1, 0, 0]] * 20 + [[1, 1, 1, 1]] * 10
    record(store, "he", "humaneval", {"a": problems(a), "b": problems(b)})
    row = rows_by_task(compare_json(path, "a@he", "b@he", capsys=capsys))["humaneval"]
    assert row["n"] == 30 and row["metric"] == "pass@1"
    assert row["a"] == pytest.approx((20 * 0.25 + 10) / 30) and row["difference"] == pytest.approx(20 * 0.25 / 30)


def test_mtbench_pairs_rated_answers_and_questions(db, capsys):
    path, store = db
    rng = np.random.default_rng(2)

    def answers(quality: np.ndarray, fail: set[tuple[int, int]] = frozenset()) -> list[dict[str, Any]]:
        out = []
        for turn in (1, 2):
            for q, value in enumerate(quality):
                metrics: dict[str, float] = {"judge_failures": 0.0, "reference_guided": 0.0}
                if (q, turn) not in fail:
                    repeats = list(np.clip(value + rng.normal(0, 0.5, 3), 1, 10))
                    metrics.update(rating=float(np.mean(repeats)), rating_std=float(np.std(repeats)),
                                   **{f"rating_{k}": float(r) for k, r in enumerate(repeats, start=1)})
                out.append({"task": f"turn{turn}", "doc_id": 100 + q, "prompt": f"<{q}> template of this model",
                            "target": "", "metrics": metrics})
        return out

    quality = rng.uniform(3, 8, 30)
    a, b = answers(quality), answers(quality + 1.0, fail={(4, 2)})
    for s in b:  # another model, another chat template: the prompts differ and must not block the pairing
        s["prompt"] = s["prompt"].replace("template", "TEMPLATE")
    record(store, "mt", "mtbench", {"a": a, "b": b})
    result = compare_json(path, "a@mt", "b@mt", capsys=capsys)
    rows = rows_by_task(result)
    assert list(rows) == ["turn1", "turn2", "overall"]
    assert rows["turn1"]["n"] == 30 and rows["turn2"]["n"] == 29 and rows["turn2"]["dropped"] == 1
    assert rows["overall"]["n"] == 30  # questions, each with its rated turns
    rating = {(s["task"], s["doc_id"]): s["metrics"].get("rating") for s in a}
    rated_b = {(s["task"], s["doc_id"]): s["metrics"]["rating"] for s in b if "rating" in s["metrics"]}
    expected = np.mean([rated_b[k] - rating[k] for k in rated_b])
    assert rows["overall"]["difference"] == pytest.approx(expected)
    assert rows["overall"]["verdict"] == "B better"
    assert any("judge ratings per answer" in n and "included in the interval" in n for n in result["notes"])


def test_a_run_means_its_fused_model(db, capsys):
    path, store = db
    record(store, "fusion", "bbh", {"fusion": bbh_samples({"t": [1] * 20}), "src": bbh_samples({"t": [0] * 20})},
           roles={"fusion": "fused", "src": "source"}, kind="run")
    result = compare_json(path, "src", "fusion", capsys=capsys)  # model name; run name
    assert (result["a"]["model"], result["a"]["role"]) == ("src", "source")
    assert (result["b"]["model"], result["b"]["role"]) == ("fusion", "fused")
    assert compare_json(path, "src@fusion", "fused@fusion", capsys=capsys)["rows"][0]["difference"] == 1.0


def test_a_model_means_its_newest_run_with_samples(db, capsys):
    path, store = db
    record(store, "old", "bbh", {"m": bbh_samples({"t": [0] * 20}), "base": bbh_samples({"t": [0] * 20})})
    newest = record(store, "new", "bbh", {"m": bbh_samples({"t": [1] * 20}), "base": bbh_samples({"t": [0] * 20})})
    result = compare_json(path, "base", "m", capsys=capsys)
    assert result["b"]["run"] == newest and result["rows"][0]["difference"] == 1.0


def _one_line_error(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert bench("compare", *argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(fix: " in lines[0], captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize(("change", "problem"), [
    ({"config": {**CONFIG, "limit": 5}}, "cannot pair A and B on bbh: limit None vs 5"),
    ({"config": {**CONFIG, "seed": 3}}, "cannot pair A and B on bbh: seed 0 vs 3"),
    ({"config": {**CONFIG, "suite_args": {"bbh": {"mode": "direct"}}}},
     "cannot pair A and B on bbh: suite arguments differ: mode=(default) vs 'direct'"),
    ({"version": "2"}, "cannot pair A and B on bbh: suite version 1 vs 2"),
    ({"samples": bbh_samples({"t": [1] * 19})}, "different examples: 1 only in A, 0 only in B (e.g. t doc 19 only in A)"),
    ({"samples": [{**s, "target": "no"} if s["doc_id"] == 7 else s for s in bbh_samples({"t": [1] * 20})]},
     "t doc 7 has a different target in A and B"),
    ({"samples": [{**s, "prompt": "other"} if s["doc_id"] == 3 else s for s in bbh_samples({"t": [1] * 20})]},
     "t doc 3 has a different prompt in A and B"),
])
def test_unpaired_inputs_are_refused_in_one_line(db, capsys, change, problem):
    path, store = db
    record(store, "a", "bbh", {"ma": bbh_samples({"t": [0] * 20})})
    record(store, "b", "bbh", {"mb": change.get("samples", bbh_samples({"t": [1] * 20}))},
           config=change.get("config"), version=change.get("version", "1"))
    assert problem in _one_line_error(capsys, "a", "b", "--db", path)


def test_bad_references_are_refused_in_one_line(db, capsys):
    path, store = db
    record(store, "two", "bbh", {"x": bbh_samples({"t": [0] * 5}), "y": bbh_samples({"t": [1] * 5})})
    record(store, "ppl", "perplexity", {"z": [{"task": "code", "doc_id": 0, "prompt": "", "target": "t",
                                               "metrics": {"loglikelihood": -10.0, "bytes": 8.0}}]})
    assert "run " in _one_line_error(capsys, "two", "x@two", "--db", path)
    assert "evaluated 2 models (x, y)" in _one_line_error(capsys, "two", "x@two", "--db", path)
    assert "unknown model or run 'nope'" in _one_line_error(capsys, "nope", "x@two", "--db", path)
    assert "has no samples of model 'w'" in _one_line_error(capsys, "w@two", "x@two", "--db", path)
    capsys.readouterr()
    assert bench("compare", "x@two", "y@two", "--db", path) == 0
    assert "note: bbh/t: 5 example(s) cannot show a difference at p < 0.05" in capsys.readouterr().out
    assert "share no suite with samples" in _one_line_error(capsys, "z", "x@two", "--db", path)
    assert "has no samples of suite bbh" in _one_line_error(capsys, "z@ppl", "x@two", "--suite", "bbh", "--db", path)
    assert "unknown --format" in _one_line_error(capsys, "x@two", "y@two", "--format", "xml", "--db", path)


def test_compare_reads_only_sqlite(db):
    """No torch, transformers or lm-eval: comparing stored results starts as fast as `bench leaderboard`."""
    import subprocess
    import sys

    path, store = db
    record(store, "ev", "bbh", {"x": bbh_samples({"t": [0, 1] * 10}), "y": bbh_samples({"t": [1] * 20})})
    code = ("import sys\nfrom harness.cli import main\n"
            f"try:\n    main(['compare', 'x@ev', 'y@ev', '--db', {path!r}, '--resamples', '1000'])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "heavy = [m for m in ('torch', 'transformers', 'lm_eval') if m in sys.modules]\n"
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "B better" in done.stdout
