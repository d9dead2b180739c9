"""`bench export` (a fused model with its card; lm-eval's and FastChat's files) and `bench import` (lm-eval's and
FastChat's files into the DB), end to end on the micro zoo: the files are in the other tools' structure, and a round
trip through them into a fresh DB gives the same leaderboard."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

from tests.conftest import _OFFLINE_ENV, bench

LM_EVAL_OUTPUT = Path(__file__).parent / "harness" / "data" / "lm_eval_output"


@pytest.fixture(scope="module")
def fusion_run(micro_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A results DB holding one merge run (fused model, target, two sources) on perplexity and two bbh-mini tasks."""
    folder = tmp_path_factory.mktemp("fusion_run")
    (folder / "home").mkdir()
    (folder / "home" / "zoo").symlink_to(micro_home / "zoo")
    db = folder / "bench.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENCH_HOME", str(folder / "home"))
        for key, value in _OFFLINE_ENV.items():
            patch.setenv(key, value)
        assert bench("run", "--fuser", "merge", "--sources", "zoo:llama-code,zoo:llama-docs", "--suite", "perplexity",
                     "--suite", "bbh-mini", "--limit", "2", "--set", "perplexity.max_chars_per_doc=400",
                     "--set", "bbh-mini.tasks=[hyperbaton,object_counting]", "--set", "bbh-mini.max_gen_toks=8",
                     "--name", "fx", "--db", str(db)) == 0
    yield db


def board(db: Path) -> dict[tuple[str, str], float]:
    """Every value of `bench leaderboard --all-metrics --per-task` (and each ± half-width), by model and column."""
    from harness import bench as api

    table = api.leaderboard(all_metrics=True, per_task=True, db=db).table
    values = {(row["model"], column): row[column] for _, row in table.iterrows()
              for column in table.columns if column not in ("group", "model", "role")}
    return {key: value for key, value in values.items() if not (isinstance(value, float) and math.isnan(value))}


def stored_scores(db: Path) -> set[tuple]:
    """Every score of the DB by model name, suite, version, task and metric, with its value, stderr and n."""
    return {(r["model"], r["suite"], r["suite_version"], r["task"], r["metric"], r["value"], r["stderr"], r["n"],
             r["higher_is_better"]) for r in sqlite_utils.Database(db).query("select * from score_rows")}


def runs(db: Path) -> list[dict]:
    return list(sqlite_utils.Database(db).query("select * from runs order by started_at, rowid"))


def last_error(capsys: pytest.CaptureFixture[str]) -> str:
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "(fix: " in line
    return line


# --- the fused model with its card ---------------------------------------------------------------------------


def test_export_copies_the_fused_model_with_a_card_of_the_run_scores(fusion_run, zoo_home, tmp_path, capsys):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    out = tmp_path / "fx-model"
    assert bench("export", "fx", "--out", str(out), "--db", str(fusion_run)) == 0
    assert {"model.safetensors", "config.json", "tokenizer.json", "fusebench.json", "README.md"} <= {
        p.name for p in out.iterdir()}
    AutoModelForCausalLM.from_pretrained(out)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and {"fusion", "merge", "mergekit"} <= set(card.data.tags)
    scores = card.text.split("## Scores", 1)[1].split("## Use", 1)[0]
    member_rows = [line for line in scores.splitlines() if line.startswith("| ") and "role" not in line]
    assert [row.split(" | ")[1] for row in member_rows] == ["fused", "target", "source", "source"]
    database = sqlite_utils.Database(fusion_run)
    avg = next(database.query("select value, stderr from score_rows where model = 'fx' and suite = 'perplexity' "
                              "and task = 'avg' and metric = 'bits_per_byte'"))
    half = 1.96 * avg["stderr"]
    assert f"{avg['value']:.4f} [{avg['value'] - half:.4f}, {avg['value'] + half:.4f}]" in member_rows[0]
    assert "bbh-mini/macro (exact\\_match, ↑)" in scores
    # the artifact's own card, written when it was built, holds no scores
    artifact = Path(next(database.query("select model_path from run_members where role = 'fused'"))["model_path"])
    assert "Not in this card" in (artifact / "README.md").read_text()

    assert bench("export", "fx", "--out", str(out), "--db", str(fusion_run)) == 2
    assert "is not an empty folder" in last_error(capsys)


def test_a_runtime_or_eval_run_has_no_weights_to_export(tmp_path, capsys):
    from harness.store import Store

    db = tmp_path / "bench.db"
    with Store(db) as store:
        ids = []
        for kind, model in (("run", {"id": "rt-1", "name": "ens", "kind": "runtime"}),
                            ("eval", {"id": "m-1", "name": "zoo:llama-code", "kind": "source"})):
            run_id = store.start_run(kind=kind, name=None, command="bench", provenance={})
            store.add_model(model, run_id, "fused" if kind == "run" else "model", 0)
            store.update_run(run_id, fuser="ensemble" if kind == "run" else None)
            store.finish_run(run_id, "ok")
            ids.append(run_id)
    assert bench("export", ids[0], "--out", str(tmp_path / "a"), "--db", str(db)) == 2
    assert "is a runtime model of fuser ensemble: it has no weights to export" in last_error(capsys)
    assert bench("export", ids[1], "--out", str(tmp_path / "b"), "--db", str(db)) == 2
    assert "has no fused model (it is a `bench eval` run)" in last_error(capsys)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --- lm-eval --------------------------------------------------------------------------------------------------


def test_lm_eval_export_and_import_round_trip(fusion_run, tmp_path, capsys):
    from lm_eval.utils import make_table

    out = tmp_path / "lm-eval"
    assert bench("export", "fx", "--out", str(out), "--format", "lm-eval", "--db", str(fusion_run)) == 0
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["fx", "zoo__llama-base", "zoo__llama-code", "zoo__llama-docs"]  # lm-eval's sanitised names
    (results_file,) = (out / "fx").glob("results_*.json")
    results = json.loads(results_file.read_text())
    assert {"results", "versions", "n-shot", "configs", "higher_is_better", "n-samples", "config", "model_name",
            "task_hashes"} <= set(results)
    assert results["model_name"] == "fx"
    assert results["results"]["perplexity_avg"]["bits_per_byte,none"] > 0
    assert results["higher_is_better"]["perplexity_avg"]["bits_per_byte"] is False
    assert "bbh-mini_hyperbaton" in make_table(results)  # lm-eval's own table of a results file
    date = results_file.stem.removeprefix("results_")
    sample_file = out / "fx" / f"samples_bbh-mini_hyperbaton_{date}.jsonl"
    lines = [json.loads(line) for line in sample_file.read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["metrics"] == ["exact_match"]
    assert {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "doc_hash", "prompt_hash",
            "target_hash", "exact_match"} <= set(lines[0])
    stored = next(sqlite_utils.Database(fusion_run).query(
        "select prompt, output from samples s join run_members m on m.run_id = s.run_id and m.model_id = s.model_id "
        "where m.model = 'fx' and s.task = 'hyperbaton' and s.doc_id = ?", [lines[0]["doc_id"]]))
    assert lines[0]["arguments"]["gen_args_0"]["arg_0"] == stored["prompt"]
    assert lines[0]["resps"] == [[stored["output"]]]

    fresh = tmp_path / "fresh.db"
    assert bench("import", str(out), "--db", str(fresh)) == 0
    assert board(fresh) == board(fusion_run)
    assert stored_scores(fresh) == stored_scores(fusion_run)
    imported = runs(fresh)
    assert [r["kind"] for r in imported] == ["import"] * 4
    assert json.loads(imported[0]["config"])["import"]["format"] == "lm-eval"
    samples = list(sqlite_utils.Database(fresh).query("select count(*) as n from samples"))[0]["n"]
    assert samples == list(sqlite_utils.Database(fusion_run).query("select count(*) as n from samples"))[0]["n"]
    capsys.readouterr()

    # the same files again: recognised, nothing written twice
    assert bench("import", str(out / "fx" / results_file.name), "--db", str(fresh)) == 0
    assert "already imported, skipped" in capsys.readouterr().out
    assert len(runs(fresh)) == 4


def test_import_of_lm_eval_output(tmp_path):
    """A results file and its samples as lm-eval 0.4.13 wrote them (two inline tasks on the micro llama-code)."""
    db = tmp_path / "bench.db"
    assert bench("import", str(LM_EVAL_OUTPUT), "--db", str(db)) == 0
    database = sqlite_utils.Database(db)
    scores = {(r["model"], r["suite"], r["task"], r["metric"]): (r["value"], r["stderr"], r["n"], r["suite_version"])
              for r in database.query("select * from score_rows")}
    model = "/tmp/fb-test-zoo/zoo/llama-code"
    assert scores == {(model, "fb_gen", "fb_gen", "exact_match"): (0.0, 0.0, 3, "Yaml"),
                      (model, "fb_mc", "fb_mc", "acc"): (2 / 3, 0.33333333333333337, 3, "Yaml")}
    samples = list(database.query("select task, doc_id, prompt, output, extracted, target, metrics from samples "
                                  "order by task, doc_id"))
    assert len(samples) == 6
    assert samples[0] == {"task": "fb_gen", "doc_id": 0, "prompt": "x = 0 + 1\n# x is", "output": " retu",
                          "extracted": " retu", "target": "1", "metrics": '{"exact_match": 0.0}'}


def test_lm_eval_task_names_map_onto_suites(tmp_path):
    """lm-eval's BBH tasks are FuseBench's bbh at version 1; other tasks keep their names (prefixed where a FuseBench
    suite has the name); filters other than none stay in the metric's name."""
    results = {
        "results": {
            "bbh_cot_fewshot": {"exact_match,get-answer": 0.4, "exact_match_stderr,get-answer": 0.05},
            "bbh_cot_fewshot_navigate": {"exact_match,get-answer": 0.5, "exact_match_stderr,get-answer": 0.1},
            "bbh_fewshot_snarks": {"exact_match,none": 0.25, "exact_match_stderr,none": "N/A"},
            "humaneval": {"pass@1,create_test": 0.1, "pass@1_stderr,create_test": 0.02},
            "mmlu_anatomy": {"acc,none": 0.3, "acc_stderr,none": 0.04},
            "gsm8k": {"exact_match,strict-match": 0.2, "exact_match,flexible-extract": 0.3},
        },
        "group_subtasks": {"mmlu": ["mmlu_anatomy"], "bbh_cot_fewshot": ["bbh_cot_fewshot_navigate"]},
        "versions": {"bbh_cot_fewshot_navigate": 3.0, "humaneval": 4.0, "mmlu_anatomy": 1.0, "gsm8k": 3.0},
        "higher_is_better": {"gsm8k": {"exact_match": True}},
        "config": {"model": "hf", "model_args": "pretrained=org/model-7b,dtype=bfloat16"},
    }
    file = tmp_path / "out" / "org__model-7b" / "results_2026-01-02T03-04-05.678901.json"
    file.parent.mkdir(parents=True)
    file.write_text(json.dumps(results))
    db = tmp_path / "bench.db"
    assert bench("import", str(file), "--db", str(db)) == 0
    got = {(r["model"], r["suite"], r["suite_version"], r["task"], r["metric"]): (r["value"], r["stderr"])
           for r in sqlite_utils.Database(db).query("select * from score_rows")}
    model = "org/model-7b"  # from model_args, as lm-eval names it
    assert got == {
        (model, "bbh", "1", "weighted", "exact_match"): (0.4, 0.05),
        (model, "bbh", "1", "navigate", "exact_match"): (0.5, 0.1),
        (model, "bbh", "1", "snarks", "exact_match"): (0.25, None),
        (model, "lm-eval:humaneval", "4.0", "humaneval", "pass@1,create_test"): (0.1, 0.02),
        (model, "mmlu", "1.0", "anatomy", "acc"): (0.3, 0.04),
        (model, "gsm8k", "3.0", "gsm8k", "exact_match,strict-match"): (0.2, None),
        (model, "gsm8k", "3.0", "gsm8k", "exact_match,flexible-extract"): (0.3, None),
    }


def test_an_import_is_all_or_nothing(fusion_run, tmp_path, capsys):
    out = tmp_path / "lm-eval"
    assert bench("export", "fx", "--out", str(out), "--format", "lm-eval", "--db", str(fusion_run)) == 0
    (samples,) = (out / "zoo__llama-docs").glob("samples_bbh-mini_hyperbaton_*.jsonl")
    samples.write_text(samples.read_text() + "{not json\n")
    db = tmp_path / "bench.db"
    assert bench("import", str(out), "--db", str(db)) == 2
    assert f"{samples}:3: not valid JSON" in last_error(capsys)
    assert runs(db) == []  # the three good results files were not written either
    (out / "broken").mkdir()
    (out / "broken" / "results_x.json").write_text('{"results": [1]}')
    samples.unlink()
    assert bench("import", str(out), "--db", str(db)) == 2
    assert "is not an lm-eval results file" in last_error(capsys) and runs(db) == []


# --- FastChat's MT-Bench files ------------------------------------------------------------------------------


@pytest.fixture
def judge_replies() -> Iterator:
    """A judge whose ratings vary from reply to reply; every seventh reply carries none (a judge failure)."""
    from tests.harness.test_judge import serving

    counter = itertools.count()

    def reply(body: dict) -> str:
        k = next(counter)
        return "No rating here." if k % 7 == 6 else f"Fine.\nRating: [[{1 + (k * 3) % 10}]]"

    with serving(reply) as server:
        yield server


def test_fastchat_export_and_import_round_trip(zoo_home, judge_replies, tmp_path, capsys):
    db = tmp_path / "bench.db"
    assert bench("eval", "--model", "zoo:llama-code", "--model", "zoo:llama-docs", "--suite", "mtbench",
                 "--limit", "3", "--judge-url", judge_replies.url, "--judge-model", "judge-x", "--judge-repeats", "2",
                 "--set", "mtbench.max_gen_toks=8", "--name", "mt", "--db", str(db)) == 0
    out = tmp_path / "mt_bench"
    assert bench("export", "mt", "--out", str(out), "--format", "fastchat", "--db", str(db)) == 0
    questions = [json.loads(line) for line in (out / "question.jsonl").read_text().splitlines()]
    assert [q["question_id"] for q in questions] == [1, 2, 3] and all(len(q["turns"]) == 2 for q in questions)
    answers = [json.loads(line) for line in (out / "model_answer" / "zoo_llama-code.jsonl").read_text().splitlines()]
    assert len(answers) == 3 and set(answers[0]) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    assert answers[0]["model_id"] == "zoo:llama-code" and len(answers[0]["choices"][0]["turns"]) == 2
    judgments = [json.loads(line) for line in (out / "model_judgment" / "judge-x_single.jsonl").read_text().splitlines()]
    assert set(judgments[0]) == {"question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"}
    assert len(judgments) == 2 * 3 * 2 * 2  # models x questions x turns x repeats
    assert judgments[0]["judge"] == ["judge-x", "fusebench-single"] and -1 in {j["score"] for j in judgments}
    # the user prompt is the one the judge was sent
    sent = {next(m["content"] for m in r["messages"] if m["role"] == "user") for r in judge_replies.requests}
    assert {j["user_prompt"] for j in judgments} == sent

    fresh = tmp_path / "fresh.db"
    assert bench("import", str(out), "--db", str(fresh)) == 0
    assert board(fresh) == board(db)  # every metric of every task: score, judge_std, judge_failures, judged
    assert stored_scores(fresh) == stored_scores(db)
    capsys.readouterr()
    assert bench("import", str(out), "--db", str(fresh)) == 0
    assert "already imported, skipped" in capsys.readouterr().out and len(runs(fresh)) == 1


def test_fastchat_answers_without_a_judge(zoo_home, tmp_path):
    db = tmp_path / "bench.db"
    assert bench("eval", "--model", "zoo:llama-code", "--suite", "mtbench", "--limit", "2",
                 "--set", "mtbench.max_gen_toks=4", "--name", "mt", "--db", str(db)) == 0
    out = tmp_path / "mt_bench"
    assert bench("export", "mt", "--out", str(out), "--format", "fastchat", "--db", str(db)) == 0
    assert not (out / "model_judgment").exists()
    fresh = tmp_path / "fresh.db"
    answer_file = out / "model_answer" / "zoo_llama-code.jsonl"
    assert bench("import", str(answer_file), "--db", str(fresh)) == 0  # one file: its questions are beside it
    assert board(fresh) == board(db)
    judged = {r["task"]: r["value"] for r in sqlite_utils.Database(fresh).query(
        "select task, value from scores where metric = 'judged'")}
    assert judged["overall"] == 0.0 and "category/writing" in judged
