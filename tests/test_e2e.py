"""End to end on the micro zoo: `bench run` for the baseline fusers, caching, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlite_utils

from tests.conftest import bench


@pytest.fixture
def home(private_home: Path) -> Path:
    return private_home


def rows(db: Path, sql: str, params: tuple = ()) -> list[dict]:
    return list(sqlite_utils.Database(db).query(sql, params))


def cache_files(home: Path) -> set[str]:
    return {str(p.relative_to(home)) for p in (home / "cache" / "evals").glob("*.json")} | {
        str(p.relative_to(home)) for p in (home / "artifacts").glob("*") if p.is_dir()}


FAST = ("--set", "perplexity.max_docs=6", "--set", "perplexity.max_chars_per_doc=600")


@pytest.mark.parametrize("fuser", ["merge", "ensemble"])
def test_default_run_scores_fused_model_and_each_source(home, tmp_path, fuser, capsys):
    db = tmp_path / "bench.db"
    assert bench("run", "--fuser", fuser, "--db", str(db), *FAST) == 0
    (run,) = rows(db, "select * from runs")
    assert run["status"] == "ok" and run["fuser"] == fuser and run["git_sha"] is not None
    timings = json.loads(run["timings"])
    assert "fuse" in timings and any(k.startswith("eval:") for k in timings)
    roles = rows(db, "select m.name, rm.role from run_models rm join models m on m.id = rm.model_id order by position")
    expected_sources = {"zoo:llama-code", "zoo:llama-docs", "zoo:llama-math"}
    assert {r["name"] for r in roles if r["role"] == "source"} == expected_sources
    assert [r["role"] for r in roles].count("fused") == 1
    per_model = rows(db, "select model_id, count(*) as n from scores where metric = 'bits_per_byte' group by model_id")
    assert len(per_model) == len(roles) and all(r["n"] == 4 for r in per_model)  # code, docs, math, avg
    bpb = rows(db, "select value from scores where metric = 'bits_per_byte'")
    assert all(0 < r["value"] < 16 for r in bpb)
    out = capsys.readouterr().out
    assert "perplexity/code" in out and "fused" in out

    # the same command again: every costly stage comes from the cache
    before = cache_files(home)
    assert bench("run", "--fuser", fuser, "--db", str(db), *FAST) == 0
    assert cache_files(home) == before
    first, second = rows(db, "select id from runs order by started_at, id")
    scores = [rows(db, "select model_id, task, value from scores where run_id = ? and metric = 'bits_per_byte' "
                       "order by model_id, task", (r["id"],)) for r in (first, second)]
    assert scores[0] == scores[1]


def test_incompatible_merge_is_refused(home, tmp_path, capsys):
    db = tmp_path / "bench.db"
    assert bench("run", "--fuser", "merge", "--sources", "zoo:gpt2-code,zoo:llama-code", "--target", "zoo:llama-base",
                 "--db", str(db)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: cannot merge zoo:gpt2-code and zoo:llama-code")
    (run,) = rows(db, "select * from runs")
    assert run["status"] == "error" and "cannot merge" in run["error"]
    assert rows(db, "select * from scores") == [] and rows(db, "select * from samples") == []
    assert not (home / "artifacts").exists() or not any((home / "artifacts").iterdir())


def test_unknown_and_unbuilt_zoo_members(home, tmp_path, monkeypatch, capsys):
    db = tmp_path / "bench.db"
    assert bench("eval", "--model", "zoo:llama-bse", "--db", str(db)) == 2
    assert "did you mean 'llama-base'" in capsys.readouterr().err
    empty = tmp_path / "empty_home"
    monkeypatch.setenv("BENCH_HOME", str(empty))
    assert bench("eval", "--model", "zoo:llama-base", "--db", str(db)) == 2
    assert "bench zoo build" in capsys.readouterr().err
    assert [r["status"] for r in rows(db, "select status from runs")] == ["error", "error"]


def test_zoo_list_json(home, capsys):
    assert bench("zoo", "list", "--json") == 0
    members = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    hetero = [m for m in members.values() if m["family"] == "heterogeneous"]
    assert len(hetero) >= 3
    assert len({m["architecture"] for m in hetero}) >= 2
    assert len({(m["tokenizer"], m["vocab_size"]) for m in hetero}) >= 2
    assert {"llama-base", "llama-code", "llama-docs", "llama-math"} <= set(members)
    assert all(m["built"] for m in members.values() if m.get("kind") != "external")
    real = members["smollm2-135m"]  # listed before it is added, with the command that adds it
    assert real["kind"] == "external" and real["family"] == "real" and real["built"] is False


def test_eval_all_suites_offline_with_a_loopback_judge(home, tmp_path, capsys):
    from tests.harness.test_judge import serving

    db = tmp_path / "bench.db"
    with serving(lambda body: "Short and mostly relevant.\nRating: [[7]]") as judge:
        code = bench("eval", "--model", "zoo:llama-base", "--suite", "bbh-mini", "--suite", "humaneval",
                     "--suite", "mtbench", "--allow-code-exec", "--judge-url", judge.url, "--judge-model", "judge",
                     "--judge-repeats", "2", "--limit", "2", "--set", "mtbench.max_gen_toks=8",
                     "--set", "humaneval.max_gen_toks=16", "--set", "bbh-mini.max_gen_toks=16", "--db", str(db))
    assert code == 0
    (run,) = rows(db, "select * from runs")
    assert run["status"] == "ok" and run["kind"] == "eval"
    per_suite = {r["suite"]: r["n"] for r in rows(db, "select suite, count(*) as n from samples group by suite")}
    assert per_suite == {"bbh-mini": 8 * 2, "humaneval": 2, "mtbench": 2 * 2}
    scores = {(r["suite"], r["task"], r["metric"]): r["value"] for r in rows(db, "select * from scores")}
    assert scores[("mtbench", "overall", "score")] == 7.0
    assert scores[("mtbench", "overall", "judge_std")] == 0.0
    assert 0.0 <= scores[("humaneval", "humaneval", "pass@1")] <= 1.0
    assert 0.0 <= scores[("bbh-mini", "macro", "exact_match")] <= 1.0
    out = capsys.readouterr().out
    assert "mtbench/overall" in out and "bbh-mini/macro" in out and "humaneval/humaneval" in out


def test_humaneval_refuses_without_opt_in(home, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BENCH_ALLOW_CODE_EXEC", raising=False)
    db = tmp_path / "bench.db"
    assert bench("eval", "--model", "zoo:llama-base", "--suite", "humaneval", "--limit", "1", "--db", str(db)) == 2
    assert "--allow-code-exec" in capsys.readouterr().err
    assert rows(db, "select status from runs") == [{"status": "error"}]
    assert rows(db, "select * from samples") == []
