"""--seeds: one run per seed in a run group; unchanged models evaluated once; the leaderboard's mean over seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlite_utils

from tests.conftest import bench

SUITE = ["--suite", "perplexity", "--set", "perplexity.max_docs=2", "--set", "perplexity.max_chars_per_doc=300"]
TINY = ["--set", "fuser.steps=2", "--set", "fuser.batch_size=2", "--set", "fuser.seq_len=48",
        "--set", "fuser.corpus_chars=3000", "--set", "fuser.top_k=4", "--set", "fuser.warmup_steps=1"]


@pytest.fixture(autouse=True)
def _one_core():
    from tests.fusers.test_distill import one_core

    with one_core():
        yield


def test_a_seed_group_runs_once_per_seed_and_evaluates_sources_once(private_home: Path, tmp_path: Path,
                                                                     capsys) -> None:
    db = tmp_path / "b.db"
    args = ["--fuser", "fusellm", "--sources", "zoo:llama-code,zoo:llama-docs", "--target", "zoo:llama-base"]
    code = bench("run", *args, *TINY, *SUITE, "--seeds", "0,1,2", "--control", "--name", "grp", "--db", str(db))
    out = capsys.readouterr().out
    assert code == 0 and "run group" in out
    database = sqlite_utils.Database(db)
    runs = list(database.query("select id, name, group_id, status, config from runs order by started_at"))
    assert [r["name"] for r in runs] == ["grp@seed0", "grp@seed1", "grp@seed2"]
    assert {r["group_id"] for r in runs} == {runs[0]["id"]} and {r["status"] for r in runs} == {"ok"}
    rows = list(database.query(
        "select rm.role, s.eval_key, s.model_id, s.run_id from scores s join run_models rm "
        "on rm.run_id = s.run_id and rm.model_id = s.model_id where s.metric = 'bits_per_byte' and s.task = 'avg'"))
    fused = {r["model_id"] for r in rows if r["role"] == "fused"}
    assert len(fused) == 3  # each seed trained its own model
    for role in ("target", "source"):
        assert len({r["eval_key"] for r in rows if r["role"] == role}) == (1 if role == "target" else 2)
    assert "grp (3 seeds)" in out and "±" in out  # one block: the fused model's mean over seeds with its spread
    # the fusion term beyond the data, seed by seed (hierarchical bootstrap)
    assert bench("compare", "control@grp", "fused@grp", "--db", str(db), "--format", "json") == 0
    import json

    result = json.loads(capsys.readouterr().out)
    avg = next(r for r in result["rows"] if r["task"] == "avg")
    assert avg["seeds"] == 3 and avg["ci_low"] <= avg["difference"] <= avg["ci_high"]
    # a group's runs evaluate with its first seed, so any of them pairs with any other run evaluated at seed 0
    assert bench("compare", "zoo:llama-code", "fused@grp", "--db", str(db)) == 0, capsys.readouterr().err
    # MODEL@RUN where the run's name holds an "@" itself
    assert bench("compare", "zoo:llama-code@grp@seed1", "fused@grp@seed1", "--db", str(db)) == 0, capsys.readouterr().err
    # the report states the fused model's gains with their intervals: over the best source, and over the control
    assert bench("report", "--db", str(db), "--format", "markdown", "--out", str(tmp_path / "rep")) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "gain over the best source" in text and "beyond the data on perplexity/avg" in text and "3 seeds" in text
    # seed and seeds together are a contradiction
    assert bench("run", *args, *SUITE, "--seeds", "0,1", "--seed", "3", "--db", str(db)) == 2
    assert "both a seed and seeds" in capsys.readouterr().err
    assert bench("run", *args, *SUITE, "--seeds", "0,x", "--db", str(db)) == 2
