"""The runner, store, leaderboard and CLI end to end with torch-free fake plugins."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sqlite_utils

from harness.cli import main
from harness.store import Store
from tests.conftest import bench
from tests.harness import fake_plugins


def db_rows(path: str, table: str) -> list[dict]:
    return list(sqlite_utils.Database(path)[table].rows)


def test_run_records_fused_model_and_sources(fake_plugins_registered, capsys):
    env = fake_plugins_registered
    code = bench("run", "--fuser", "fake", "--sources", f"{env['a']},{env['b']}", "--suite", "fakesuite",
                 "--db", env["db"], "--name", "first")
    assert code == 0
    runs = db_rows(env["db"], "runs")
    assert [r["status"] for r in runs] == ["ok"]
    run = runs[0]
    assert run["fuser"] == "fake" and run["name"] == "first" and json.loads(run["timings"])["fuse"] >= 0
    assert json.loads(run["versions"])["sqlite-utils"]
    roles = {r["role"] for r in db_rows(env["db"], "run_models")}
    assert roles == {"fused", "source"}
    scores = {(r["model_id"], r["metric"]): r["value"] for r in db_rows(env["db"], "scores")}
    assert len(scores) == 6  # 3 models x 2 metrics
    assert sorted(v for (m, k), v in scores.items() if k == "acc") == pytest.approx([0.2, 0.5, 0.8])
    assert all(isinstance(r["value"], float) for r in db_rows(env["db"], "scores"))
    assert len(db_rows(env["db"], "samples")) == 9
    out = capsys.readouterr().out
    assert "first" in out and "fused" in out and "source" in out


def test_second_run_reuses_cached_stages(fake_plugins_registered):
    env = fake_plugins_registered
    args = ("run", "--fuser", "fake", "--sources", f"{env['a']},{env['b']}", "--suite", "fakesuite", "--db", env["db"])
    assert bench(*args) == 0
    assert fake_plugins.CALLS == {"fuse": 1, "evaluate": 3}
    assert bench(*args) == 0
    assert fake_plugins.CALLS == {"fuse": 1, "evaluate": 3}  # nothing recomputed
    assert len(db_rows(env["db"], "scores")) == 12  # but both runs have their full record
    assert bench(*args, "--set", "bonus=0.1") == 0  # changed config -> new fusion, sources still cached
    assert fake_plugins.CALLS == {"fuse": 2, "evaluate": 4}


def test_stage_models_are_evaluated_beside_the_fused_model_and_cached(fake_plugins_registered, capsys):
    env = fake_plugins_registered
    args = ("run", "--fuser", "fake", "--sources", f"{env['a']},{env['b']}", "--suite", "fakesuite", "--db", env["db"],
            "--set", "stages=true", "--name", "staged")
    assert bench(*args) == 0
    assert fake_plugins.CALLS == {"fuse": 1, "evaluate": 5}  # fused, 2 stages, 2 sources
    models = {r["id"]: r for r in db_rows(env["db"], "models")}
    stage_rows = [r for r in db_rows(env["db"], "run_models") if r["role"] == "stage"]
    assert sorted(models[r["model_id"]]["name"] for r in stage_rows) == ["staged/half-0", "staged/half-1"]
    assert json.loads(models[stage_rows[0]["model_id"]]["details"]) == {"note": "first"}
    acc = {models[r["model_id"]]["name"]: r["value"] for r in db_rows(env["db"], "scores") if r["metric"] == "acc"}
    assert acc["staged/half-0"] == pytest.approx(0.1) and acc["staged/half-1"] == pytest.approx(0.4)
    assert bench(*args) == 0  # from the artifact cache: the stages come back from its card
    assert fake_plugins.CALLS == {"fuse": 1, "evaluate": 5}
    assert len([r for r in db_rows(env["db"], "run_models") if r["role"] == "stage"]) == 4
    assert bench("leaderboard", "--db", env["db"]) == 0
    assert "staged/half-1" in capsys.readouterr().out


def test_limit_is_part_of_the_eval_cache_key(fake_plugins_registered):
    env = fake_plugins_registered
    base = ("run", "--fuser", "fake", "--sources", f"{env['a']},{env['b']}", "--suite", "fakesuite", "--db", env["db"])
    assert bench(*base) == 0
    assert bench(*base, "--limit", "1") == 0
    assert fake_plugins.CALLS["evaluate"] == 6


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--fuser", "fak"), "did you mean 'fake'"),
        (("--fuser", "fake", "--suite", "fakesuit"), "did you mean 'fakesuite'"),
        (("--fuser", "fake", "--sources", "/nonexistent/model"), "not found"),
        (("--fuser", "fake", "--set", "bonus=abc"), "invalid arguments for fuser fake"),
        (("--fuser", "fake", "--set", "bonuss=1"), "did you mean 'bonus'"),
        (("--fuser", "fake", "--set", "nokeyvalue"), "is not key=value"),
    ],
)
def test_bad_input_exits_2_and_closes_run_as_error(fake_plugins_registered, capsys, extra, message):
    env = fake_plugins_registered
    args = ["run", "--db", env["db"], *extra]
    if "--sources" not in extra:
        args += ["--sources", f"{env['a']},{env['b']}"]
    if "--suite" not in extra:
        args += ["--suite", "fakesuite"]
    assert bench(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    runs = db_rows(env["db"], "runs")
    assert [r["status"] for r in runs] == ["error"] and message in runs[0]["error"]
    for table in ("scores", "samples", "models", "run_models"):
        assert db_rows(env["db"], table) == []


def test_malformed_config_file(fake_plugins_registered, capsys):
    env = fake_plugins_registered
    bad = env["tmp"] / "bad.yaml"
    bad.write_text("fuser: fake\nsources: [a, b\n")
    assert bench("run", "--config", str(bad), "--db", env["db"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert [r["status"] for r in db_rows(env["db"], "runs")] == ["error"]


def test_config_file_with_overrides(fake_plugins_registered):
    env = fake_plugins_registered
    cfg = env["tmp"] / "run.yaml"
    cfg.write_text(f"name: from-file\nfuser: {{name: fake, args: {{bonus: 0.05}}}}\n"
                   f"sources: ['{env['a']}', '{env['b']}']\nsuites: [{{name: fakesuite, args: {{items: 2}}}}]\n")
    assert bench("run", "--config", str(cfg), "--set", "fakesuite.items=1", "--db", env["db"]) == 0
    run = db_rows(env["db"], "runs")[0]
    config = json.loads(run["config"])
    assert config["fuser_args"] == {"bonus": 0.05} and config["suite_args"] == {"fakesuite": {"items": 1}}
    assert len(db_rows(env["db"], "samples")) == 3


def test_failing_fuser_marks_run_error_and_resume_completes(fake_plugins_registered, monkeypatch, capsys):
    env = fake_plugins_registered
    args = ("run", "--fuser", "fake", "--sources", f"{env['a']},{env['b']}", "--suite", "fakesuite", "--db", env["db"])
    with pytest.raises(RuntimeError, match="fuser exploded"):
        main([*args, "--set", "fail=true"])
    run = db_rows(env["db"], "runs")[0]
    assert run["status"] == "error" and "fuser exploded" in run["error"]
    assert db_rows(env["db"], "scores") == []
    # an interrupted evaluation: the first source's suite fails once
    calls = {"n": 0}
    real = fake_plugins.FakeSuite.evaluate

    def flaky(self, lm, cfg, ctx):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, lm, cfg, ctx)

    monkeypatch.setattr(fake_plugins.FakeSuite, "evaluate", flaky)
    capsys.readouterr()
    assert bench(*args) == 130
    runs = {r["id"]: r for r in db_rows(env["db"], "runs")}
    interrupted = [r for r in runs.values() if r["error"] and "Interrupt" in r["error"]][0]
    assert interrupted["status"] == "interrupted"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"interrupted: run {interrupted['id']} is recorded as interrupted; "
        f"continue it with `bench run --resume {interrupted['id']} --db {env['db']}`")
    assert len(db_rows(env["db"], "scores")) == 2  # only the fused model's complete suite result
    assert bench("run", "--resume", interrupted["id"], "--db", env["db"]) == 0
    assert sqlite_utils.Database(env["db"])["runs"].get(interrupted["id"])["status"] == "ok"
    assert len(db_rows(env["db"], "scores")) == 6


def test_leaderboard_formats(fake_plugins_registered, capsys):
    env = fake_plugins_registered
    assert bench("run", "--fuser", "fake", "--sources", f"{env['a']},{env['b']}", "--suite", "fakesuite",
                 "--db", env["db"], "--name", "lb") == 0
    capsys.readouterr()
    assert bench("leaderboard", "--db", env["db"], "--format", "json", "--all-metrics") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["columns"]["fakesuite/t/loss"] == {"higher_is_better": False}
    rows = data["rows"]
    assert [r["role"] for r in rows] == ["fused", "source", "source"] and rows[0]["group"] == "lb"
    assert bench("leaderboard", "--db", env["db"], "--format", "markdown", "--all-metrics") == 0
    md = capsys.readouterr().out
    assert "**0.8000**" in md and "**0.2000**" in md  # best acc (higher) and best loss (lower) marked
    assert bench("leaderboard", "--db", env["db"], "--format", "xml") == 2


def test_runs_and_samples_commands(fake_plugins_registered, capsys):
    env = fake_plugins_registered
    assert bench("run", "--fuser", "fake", "--sources", f"{env['a']},{env['b']}", "--suite", "fakesuite",
                 "--db", env["db"]) == 0
    capsys.readouterr()
    assert bench("runs", "--db", env["db"], "--json") == 0
    run_id = json.loads(capsys.readouterr().out)[0]["id"]
    assert bench("samples", run_id, "--db", env["db"], "--failed") == 0
    failed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert failed and all(r["metrics"] and '"acc": 0.0' in r["metrics"] for r in failed)
    assert bench("samples", "nope", "--db", env["db"]) == 2


def test_runs_counts_each_stage_once(tmp_path, capsys):
    """A stage inside another (a fuser's ``fuse:<stage>``, a model's ``load:<model>`` inside its first evaluation) is
    recorded beside it, and its seconds are not added to the run's total again."""
    db = str(tmp_path / "bench.db")
    store = Store(db)
    run_id = store.start_run(kind="run", name="timed", command="test", provenance={})
    store.finish_run(run_id, "ok", timings={"validate": 0.1, "fuse": 3.0, "fuse:train": 2.5, "control": 2.0,
                                            "control:train": 1.5, "load:m": 0.5, "eval:m:ppl": 1.0})
    assert bench("runs", "--db", db) == 0
    assert "    6.1s  timed" in capsys.readouterr().out


def test_eval_command(fake_plugins_registered):
    env = fake_plugins_registered
    assert bench("eval", "--model", env["a"], "--suite", "fakesuite", "--db", env["db"]) == 0
    assert {r["role"] for r in db_rows(env["db"], "run_models")} == {"model"}
    assert bench("eval", "--model", env["a"], "--suite", "fakesuite", "--set", "nope.x=1", "--db", env["db"]) == 2


def test_the_code_exec_opt_in_variable_does_not_break_runs_without_code_suites(fake_plugins_registered, monkeypatch,
                                                                               capsys):
    """BENCH_ALLOW_CODE_EXEC=1 is permission for the code that executes, not a flag every suite must accept."""
    env = fake_plugins_registered
    monkeypatch.setenv("BENCH_ALLOW_CODE_EXEC", "1")
    assert bench("eval", "--model", env["a"], "--suite", "fakesuite", "--db", env["db"]) == 0
    assert bench("run", "--fuser", "fake", "--sources", f"{env['a']},{env['b']}", "--suite", "fakesuite",
                 "--db", env["db"]) == 0
    runs = db_rows(env["db"], "runs")
    assert [r["status"] for r in runs] == ["ok", "ok"]
    assert all("allow_code_exec" not in r["config"] for r in runs)
    # the explicit flag still says where it belongs
    assert bench("eval", "--model", env["a"], "--suite", "fakesuite", "--allow-code-exec", "--db", env["db"]) == 2
    assert "--allow-code-exec applies to suite(s) humaneval" in capsys.readouterr().err


def test_db_that_is_not_sqlite(tmp_path, capsys):
    bad = tmp_path / "x.db"
    bad.write_text("this is not a database" * 100)
    assert bench("runs", "--db", str(bad)) == 2
    assert "cannot open results DB" in capsys.readouterr().err


def test_help_does_not_import_torch():
    code = ("import sys; from harness.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "bench" in out.stdout


@pytest.mark.parametrize("command", [[], ["run"], ["eval"], ["leaderboard"], ["runs"], ["samples"], ["zoo", "build"],
                                     ["zoo", "list"]])
def test_every_command_has_help(command, capsys):
    assert bench(*command, "--help") == 0
    out = capsys.readouterr().out
    assert "Usage:" in out and len(out) > 100
