"""harness.bench, the Python API: each function does what its `bench` command does (the CLI calls it) and returns
typed results; bad input raises BenchError. Runs use the torch-free fake plugins."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest

from harness import bench
from harness.errors import BenchError
from harness.store import Store
from tests.conftest import bench as bench_cli
from tests.harness.test_compare import bbh_samples, record


def _fake_run(env: dict[str, Any], **options: Any) -> bench.RunResult:
    return bench.run("fake", [env["a"], env["b"]], suites=["fakesuite"], db=env["db"], **options)


def test_importing_harness_imports_no_heavy_library():
    code = ("import sys\nimport harness\n"
            "assert callable(harness.bench.run) and callable(harness.bench.leaderboard)\n"
            "heavy = [m for m in ('torch', 'transformers', 'lm_eval', 'pandas') if m in sys.modules]\n"
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_run_returns_the_runs_scores_and_reports_progress(fake_plugins_registered):
    env = fake_plugins_registered
    opened: list[str] = []
    lines: list[str] = []
    result = _fake_run(env, name="api", on_open=opened.append, progress=lines.append)
    assert result.status == "ok" and result.run_ids == (result.run_id,) and opened == [result.run_id]
    assert lines == [f"run {result.run_id} ok"] and result.spec.fuser == "fake" and result.seconds >= 0
    acc = result.scores[result.scores["metric"] == "acc"]
    assert sorted(acc["role"]) == ["fused", "source", "source"]
    assert sorted(acc["value"]) == pytest.approx([0.2, 0.5, 0.8])

    group = _fake_run(env, name="grp", seeds="0,1")  # a seed group: one run per seed, given as on the command line
    assert len(group.run_ids) == 2 and set(group.scores["run_id"]) == set(group.run_ids)
    assert list(group.scores["run_name"].drop_duplicates()) == ["grp@seed0", "grp@seed1"]


def test_run_raises_bench_error_and_records_the_failed_run(fake_plugins_registered):
    env = fake_plugins_registered
    with pytest.raises(BenchError, match="did you mean 'fakesuite'"):
        bench.run("fake", [env["a"], env["b"]], suites=["fakesuit"], db=env["db"])
    assert [r["status"] for r in Store(env["db"]).runs()] == ["error"]


def test_evaluate_returns_the_models_scores(fake_plugins_registered):
    env = fake_plugins_registered
    result = bench.evaluate(env["a"], ["fakesuite"], name="one", db=env["db"])
    assert result.status == "ok" and set(result.scores["role"]) == {"model"}
    assert result.scores.set_index("metric")["value"].to_dict() == pytest.approx({"acc": 0.2, "loss": 0.8})
    with pytest.raises(BenchError, match="no models to evaluate"):
        bench.evaluate([], db=env["db"])


def test_leaderboard_is_the_table_the_command_prints(fake_plugins_registered, capsys):
    env = fake_plugins_registered
    _fake_run(env, name="lb")
    board = bench.leaderboard(all_metrics=True, db=env["db"])
    assert isinstance(board.table, pd.DataFrame) and list(board.table["role"]) == ["fused", "source", "source"]
    assert board.higher_is_better == {"fakesuite/t/acc": True, "fakesuite/t/loss": False}
    assert board.marks["fakesuite/t/acc"] == {2: "best"} and board.notes == []
    capsys.readouterr()
    assert bench_cli("leaderboard", "--db", env["db"], "--format", "json", "--all-metrics") == 0
    assert capsys.readouterr().out == board.render("json") + "\n"


def test_compare_returns_a_row_per_task(tmp_path):
    db = str(tmp_path / "bench.db")
    rng = np.random.default_rng(0)
    small = {"dates": list(rng.integers(0, 2, 40)), "logic": list(rng.integers(0, 2, 40))}
    record(Store(db), "ev", "bbh", {"small": bbh_samples(small), "large": bbh_samples({"dates": [1] * 40,
                                                                                       "logic": small["logic"]})})
    comparison = bench.compare("small@ev", "large@ev", resamples=2000, db=db)
    table = comparison.table.set_index("task")
    assert list(table.index) == ["dates", "logic", "macro", "weighted"]
    assert table.loc["dates", "verdict"] == "B better" and table.loc["logic", "difference"] == 0
    assert comparison.result.a.model == "small" and comparison.result.b.model == "large"
    assert json.loads(comparison.render("json"))["rows"] == comparison.table.to_dict(orient="records")


def test_regress_finds_no_regression_between_equal_runs(fake_plugins_registered):
    env = fake_plugins_registered
    baseline, candidate = _fake_run(env, name="base"), _fake_run(env, name="cand")
    check = bench.regress([baseline.run_id], [candidate.run_id], db=env["db"])
    assert check.regressions == [] and set(check.table["status"]) == {"unchanged"}
    assert set(check.table["model"]) >= {"fused"} and "0 regression(s)" in check.render()
