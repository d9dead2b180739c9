"""Data-parallel evaluation: `bench eval/run --processes N` splits lm-eval's documents across N processes (accelerate
launch, gloo on CPU) and records exactly the scores and samples of a one-process evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlite_utils

from tests.conftest import bench

SMALL = ("--suite", "perplexity", "--suite", "bbh-mini", "--set", "perplexity.max_docs=4", "--limit", "6")


def _recorded(db: Path) -> tuple[list[dict], list[dict]]:
    rows = sqlite_utils.Database(db)
    scores = list(rows.query("select suite, task, metric, value, stderr, n, eval_key from scores "
                             "order by suite, task, metric"))
    samples = list(rows.query("select task, doc_id, prompt, output, target, metrics, extracted from samples "
                              "order by task, doc_id"))
    return scores, samples


def test_two_processes_record_the_one_process_scores_and_samples(private_home: Path, tmp_path: Path, capsys) -> None:
    import shutil

    assert bench("eval", "--model", "zoo:llama-base", *SMALL, "--db", str(tmp_path / "one.db")) == 0
    shutil.rmtree(private_home / "cache" / "evals")  # the same eval keys: make the second run compute them
    code = bench("eval", "--model", "zoo:llama-base", *SMALL, "--processes", "2", "--db", str(tmp_path / "two.db"))
    assert code == 0, capsys.readouterr().err[-3000:]

    one_scores, one_samples = _recorded(tmp_path / "one.db")
    two_scores, two_samples = _recorded(tmp_path / "two.db")
    assert {s["suite"] for s in two_scores} == {"perplexity", "bbh-mini"} and len(two_samples) > 20
    assert [(s["suite"], s["task"], s["metric"], s["n"], s["eval_key"]) for s in one_scores] == [
        (s["suite"], s["task"], s["metric"], s["n"], s["eval_key"]) for s in two_scores]
    for one, two in zip(one_scores, two_scores, strict=True):  # the same windows, scored the same way
        assert two["value"] == pytest.approx(one["value"], rel=1e-6, abs=1e-9), (one, two)
    assert [(s["task"], s["doc_id"], s["prompt"], s["output"], s["target"], s["extracted"]) for s in one_samples] == [
        (s["task"], s["doc_id"], s["prompt"], s["output"], s["target"], s["extracted"]) for s in two_samples]

    # each process answered its own share of the requests, not all of them
    entries = [json.loads(f.read_text()) for f in (private_home / "cache" / "evals").glob("*.json")]
    assert len(entries) == 2
    for entry in entries:  # one request per document on both suites
        first, second = entry["requests_per_process"]
        documents = len(entry["samples"])
        assert first + second >= documents > first > 0 and second > 0, (documents, entry["requests_per_process"])


def test_processes_apply_to_evaluation_for_a_fuser_that_fuses_in_one_process(private_home: Path, tmp_path: Path,
                                                                           capsys) -> None:
    """`bench run --fuser merge --processes 2`: the merge is made in one process (no refusal) and the evaluations
    reuse the one-process cache entries (processes are not part of what an evaluation computes)."""
    common = ("run", "--fuser", "merge", "--sources", "zoo:llama-base,zoo:llama-code", "--suite", "perplexity",
              "--set", "perplexity.max_docs=1", "--limit", "1")
    assert bench(*common, "--db", str(tmp_path / "one.db")) == 0
    capsys.readouterr()
    assert bench(*common, "--processes", "2", "--db", str(tmp_path / "two.db")) == 0
    err = capsys.readouterr().err
    assert "fuses in one process" in err and "cached" in err and "via accelerate launch" not in err
    one, _ = _recorded(tmp_path / "one.db")
    two, _ = _recorded(tmp_path / "two.db")
    assert one == two


def test_which_evaluations_are_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only models loaded with transformers on suites that go through lm-eval's evaluator; the vllm backend gets
    --processes as its own data_parallel_size."""
    from harness import runner
    from harness.config import RunConfig
    from harness.model import Placement
    from harness.registry import suites

    spec = RunConfig(suites=["perplexity"], processes=2)
    model = runner.Evaluand(id="m", name="m", role="model", kind="source", content_hash="h")
    monkeypatch.setattr(runner, "_placement_of", lambda ev: Placement(backend="hf"))
    assert runner._data_parallel(spec, model, suites().get("perplexity"))  # type: ignore[arg-type]
    assert runner._data_parallel(spec, model, suites().get("bbh-mini"))  # type: ignore[arg-type]
    assert not runner._data_parallel(spec, model, suites().get("humaneval-mini"))  # type: ignore[arg-type]
    assert not runner._data_parallel(spec.model_copy(update={"processes": 1}), model,  # type: ignore[arg-type]
                                     suites().get("perplexity"))
    runtime = runner.Evaluand(id="e", name="e", role="fused", kind="runtime", content_hash="h", runtime=lambda: None)
    assert not runner._data_parallel(spec, runtime, suites().get("perplexity"))  # type: ignore[arg-type]
    monkeypatch.setattr(runner, "_placement_of", lambda ev: Placement(backend="vllm"))
    assert not runner._data_parallel(spec, model, suites().get("perplexity"))  # type: ignore[arg-type]

    vllm = RunConfig(suites=["perplexity"], processes=2, backend="vllm")
    assert runner._backend(vllm)["engine_args"] == {"data_parallel_size": 2}  # type: ignore[arg-type]
    given = vllm.model_copy(update={"vllm": {"data_parallel_size": 4, "tensor_parallel_size": 2}})
    assert runner._backend(given)["engine_args"] == {"data_parallel_size": 4, "tensor_parallel_size": 2}  # type: ignore[arg-type]
    assert runner._backend(vllm.model_copy(update={"backend": "hf"}))["engine_args"] == {}  # type: ignore[arg-type]
