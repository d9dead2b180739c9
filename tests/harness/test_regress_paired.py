"""`bench regress --paired`: the noise of a score from its paired difference over shared examples.

A hand-made DB: one model on 400 BBH items. The candidate run gets 8 items wrong that the baseline got right
and nothing else changes: exact match drops by 0.02. The stored binomial stderrs (about 0.025 per side) hide
that under the 2-sigma rule; the paired difference (8 of 400 items differ, se about 0.007) does not."""

from __future__ import annotations

import math

import pytest

from harness.store import Store
from tests.conftest import bench

N = 400


def bbh_run(store: Store, name: str, correct: list[int]) -> str:
    run_id = store.start_run(kind="eval", name=name, command="test", provenance={}, config={})
    store.add_model({"id": "id-m", "name": "m", "kind": "source"}, run_id, "model", 0)
    acc = sum(correct) / len(correct)
    se = math.sqrt(acc * (1 - acc) / (len(correct) - 1))
    scores = [{"task": task, "metric": "exact_match", "value": acc, "stderr": se, "n": len(correct)}
              for task in ("logic", "weighted")]
    samples = [{"task": "logic", "doc_id": i, "prompt": f"q{i}", "target": "yes", "metrics": {"exact_match": float(c)}}
               for i, c in enumerate(correct)]
    store.add_eval(run_id, "id-m", "bbh", "1", "key", scores, samples)
    store.finish_run(run_id, "ok")
    return run_id


@pytest.fixture
def runs(tmp_path) -> dict[str, str]:
    path = str(tmp_path / "bench.db")
    store = Store(path)
    baseline = [1 if i % 5 else 0 for i in range(N)]  # 80% right
    candidate = list(baseline)
    for i in [j for j in range(N) if baseline[j]][:8]:
        candidate[i] = 0
    return {"db": path, "base": bbh_run(store, "base", baseline), "cand": bbh_run(store, "cand", candidate),
            "same": bbh_run(store, "same", list(baseline)), "file": str(tmp_path / "base.json")}


def test_paired_noise_finds_the_drop_the_stored_stderrs_hide(runs, capsys):
    args = ("regress", "--baseline", runs["base"], "--candidate", runs["cand"], "--db", runs["db"])
    assert bench(*args) == 0
    out = capsys.readouterr().out
    assert "0 regression(s)" in out and "paired" not in out
    assert bench(*args, "--paired") == 1
    out = capsys.readouterr().out
    assert "2 regression(s), 0 improvement(s), 0 unchanged" in out
    line = next(x for x in out.splitlines() if "bbh/logic" in x)
    assert "-0.0200" in line and line.endswith("(paired)")
    threshold = float(line.split()[-2])
    assert threshold == pytest.approx(2 * math.sqrt(8 / N * (1 - 8 / N) / N), rel=0.05)  # 2 x bootstrap se
    assert "paired: 2 of 2 compared score(s)" in out


def test_paired_identical_runs_are_unchanged(runs, capsys):
    assert bench("regress", "--baseline", runs["base"], "--candidate", runs["same"], "--paired", "--db", runs["db"]) == 0
    assert "0 regression(s), 0 improvement(s), 2 unchanged" in capsys.readouterr().out


def test_paired_needs_samples_on_both_sides(runs, capsys):
    assert bench("regress", "--save-baseline", runs["base"], runs["file"], "--db", runs["db"]) == 0
    capsys.readouterr()
    # a baseline file keeps no samples: the stored stderrs decide, and the report says so
    assert bench("regress", "--baseline", runs["file"], "--candidate", runs["cand"], "--paired", "--db", runs["db"]) == 0
    assert "--paired: no score could be paired" in capsys.readouterr().out
    # only files: there is nothing to pair at all
    assert bench("regress", "--baseline", runs["file"], "--candidate", runs["file"], "--paired") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --paired needs runs from the results DB") and len(err.splitlines()) == 1
