"""`bench compare` end to end on the micro zoo: two `bench eval` runs on perplexity, then the paired comparison
(its differences are those of the stored scores), a model against itself, and a refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlite_utils

from tests.conftest import bench

FAST = ("--suite", "perplexity", "--set", "perplexity.max_docs=8", "--set", "perplexity.max_chars_per_doc=400")


def stored_bpb(db: Path, run_id: str) -> dict[str, float]:
    return {r["task"]: r["value"] for r in sqlite_utils.Database(db).query(
        "select task, value from scores where run_id = ? and metric = 'bits_per_byte'", [run_id])}


def newest_run(db: Path) -> str:
    return next(sqlite_utils.Database(db).query("select id from runs order by rowid desc limit 1"))["id"]


def test_compare_two_zoo_models_on_perplexity(private_home: Path, tmp_path: Path, capsys):
    db = tmp_path / "bench.db"
    assert bench("eval", "--model", "zoo:llama-code", *FAST, "--name", "code-expert", "--db", str(db)) == 0
    code_run = newest_run(db)
    assert bench("eval", "--model", "zoo:llama-docs", *FAST, "--name", "docs-expert", "--db", str(db)) == 0
    docs_run = newest_run(db)
    capsys.readouterr()

    assert bench("compare", "code-expert", "docs-expert", "--format", "json", "--db", str(db)) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["task"]: r for r in result["rows"]}
    assert list(rows) == ["code", "docs", "math", "avg"]
    a, b = stored_bpb(db, code_run), stored_bpb(db, docs_run)
    for task, row in rows.items():  # the per-document ratio of sums reproduces the suite's own bits/byte
        assert row["a"] == pytest.approx(a[task], rel=1e-9) and row["b"] == pytest.approx(b[task], rel=1e-9)
        assert row["difference"] == pytest.approx(b[task] - a[task], rel=1e-9)
        assert row["ci_low"] <= row["difference"] <= row["ci_high"] and 0 < row["p_value"] <= 1
        assert row["n"] == (24 if task == "avg" else 8) and row["higher_is_better"] is False
    # the code expert models code better than the docs expert (8 documents: a two-sided p can reach 2/256;
    # with 4 it could not go below 2/16, and no verdict would be possible)
    assert rows["code"]["difference"] > 0 and rows["code"]["verdict"] == "A better"

    # the same model evaluated again (a cache hit, the same samples): no difference at all
    assert bench("eval", "--model", "zoo:llama-code", *FAST, "--name", "code-again", "--db", str(db)) == 0
    capsys.readouterr()
    assert bench("compare", "code-expert", "code-again", "--format", "json", "--db", str(db)) == 0
    for row in json.loads(capsys.readouterr().out)["rows"]:
        assert row["difference"] == 0 and row["p_value"] == 1.0 and row["ci_low"] <= 0 <= row["ci_high"]

    # other documents: refused in one line
    assert bench("eval", "--model", "zoo:llama-docs", "--suite", "perplexity", "--set", "perplexity.max_docs=3",
                 "--set", "perplexity.max_chars_per_doc=400", "--name", "docs-3", "--db", str(db)) == 0
    capsys.readouterr()
    assert bench("compare", "code-expert", "docs-3", "--db", str(db)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot pair A and B on perplexity: suite arguments differ: max_docs=8 vs 3")
    assert len(err.splitlines()) == 1
