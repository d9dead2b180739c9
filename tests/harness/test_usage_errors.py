"""Bad input of every kind ends the same way: one line on stderr, ``error: <problem> (fix: <hint>)``, exit code 2,
no traceback, and no run row left ``running`` (a run's progress lines may come before the error line).

One table covers command-line usage (click's checks), parameter ranges (flags and ``--set``), damaged files
(weights, tokenizer, config, YAML, JSONL, non-UTF-8), BBH predictions of the wrong shape, a ``--db`` path
through a regular file and ``--resume`` of a run that never validated. Each case is an argv with ``{names}``
filled from the environment (``db``, ``a``, ``b``, ``tmp``) and from what its optional setup returns.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlite_utils

from tests.conftest import bench
from tests.harness import fake_plugins

Env = dict[str, str]


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    problem: str  # must appear in the error line
    setup: Callable[[Env], Env] | None = None
    closes_run: bool = False  # the failure comes after the run row was opened: the row must end as error


def _run_ids(db: str) -> list[str]:
    return [r["id"] for r in sqlite_utils.Database(db)["runs"].rows]


# --- setups: each writes the damaged file or state its case needs -------------------------------


def truncated_weights(env: Env) -> Env:
    import numpy as np
    from safetensors.numpy import save_file

    model = fake_plugins.make_model(Path(env["tmp"]) / "truncated", 0.5)
    save_file({"w": np.zeros((64, 64), dtype=np.float32)}, str(model / "model.safetensors"))
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return {"model": str(model)}


def corrupt_tokenizer(env: Env) -> Env:
    model = fake_plugins.make_model(Path(env["tmp"]) / "bad_tokenizer", 0.5)
    (model / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": ')
    return {"model": str(model)}


def non_utf8_config_json(env: Env) -> Env:
    model = fake_plugins.make_model(Path(env["tmp"]) / "latin1", 0.5)
    (model / "config.json").write_bytes('{"model_type": "fake", "quality": 0.5, "name": "caf\xe9"}'.encode("latin-1"))
    return {"model": str(model)}


def non_utf8_yaml(env: Env) -> Env:
    config = Path(env["tmp"]) / "run.yaml"
    config.write_bytes("fuser: fake\nname: caf\xe9\n".encode("latin-1"))
    return {"config": str(config)}


def bbh_predictions(lines: list[str] | bytes) -> Callable[[Env], Env]:
    def setup(env: Env) -> Env:
        data = Path(env["tmp"]) / "bbh"
        data.mkdir(exist_ok=True)
        (data / "navigate.json").write_text(json.dumps({"examples": [{"input": "q", "target": "No"}]}))
        predictions = Path(env["tmp"]) / "predictions.jsonl"
        if isinstance(lines, bytes):
            predictions.write_bytes(lines)
        else:
            predictions.write_text("".join(line + "\n" for line in lines))
        return {"predictions": str(predictions), "data": str(data)}

    return setup


def damaged_bbh_task_file(env: Env) -> Env:
    found = bbh_predictions(['{"task": "navigate", "index": 0, "output": "So the answer is No."}'])(env)
    (Path(found["data"]) / "navigate.json").write_text('{"examples": [{"input": "q", "target": ')
    return found


def db_under_a_file(env: Env) -> Env:
    blocker = Path(env["tmp"]) / "not_a_folder"
    blocker.write_text("a regular file")
    return {"db_path": str(blocker / "bench.db")}


def run_that_never_validated(env: Env) -> Env:
    assert bench("run", "--fuser", "nope", "--db", env["db"]) == 2
    (run_id,) = _run_ids(env["db"])
    return {"run_id": run_id}


def non_utf8_questions(env: Env) -> Env:
    questions = Path(env["tmp"]) / "questions.jsonl"
    questions.write_bytes('{"question_id": 1, "category": "writing", "turns": ["caf\xe9", "b"]}\n'.encode("latin-1"))
    return {"questions": str(questions)}


def accelerate_config_with_a_typo(env: Env) -> Env:
    config = Path(env["tmp"]) / "accelerate.yaml"
    config.write_text("distributed_type: MULTI_GPU\nnum_processez: 2\n")
    return {"accelerate": str(config)}


def fsdp_example(env: Env) -> Env:
    return {"accelerate": str(Path(__file__).parents[2] / "configs" / "accelerate" / "fsdp.yaml")}


EVAL = ("eval", "--model", "{a}", "--suite", "fakesuite", "--db", "{db}")
RUN = ("run", "--fuser", "fake", "--sources", "{a},{b}", "--suite", "fakesuite", "--db", "{db}")
SCORE = ("score", "--suite", "bbh", "--predictions", "{predictions}", "--data-dir", "{data}", "--db", "{db}")

CASES = {
    # the command line itself (click's checks, before any run row exists)
    "limit -1": Case((*EVAL, "--limit", "-1"), "'--limit'"),
    "limit 0": Case((*EVAL, "--limit", "0"), "'--limit'"),
    "unknown option": Case(("runs", "--bogus", "--db", "{db}"), "no such option: --bogus"),
    "missing --model": Case(("eval", "--db", "{db}"), "missing option '--model'"),
    "seed x": Case((*RUN, "--seed", "x"), "'--seed'"),
    "seed -1": Case((*RUN, "--seed", "-1"), "'--seed'"),
    "seed 2**32": Case((*RUN, "--seed", str(2**32)), "'--seed'"),
    "unknown command": Case(("nosuch",), "no such command 'nosuch'"),
    "extra argument": Case(("runs", "extra", "--db", "{db}"), "unexpected extra argument"),
    # values that only the config can check (the run row exists and is closed as error)
    "set limit=-1": Case((*EVAL, "--set", "limit=-1"), "limit: Input should be greater than or equal to 1",
                         closes_run=True),
    "set limit=0 (run)": Case((*RUN, "--set", "limit=0"), "limit: Input should be greater than or equal to 1",
                              closes_run=True),
    "set seed=-1": Case((*RUN, "--set", "seed=-1"), "seed: Input should be greater than or equal to 0",
                        closes_run=True),
    # how the fusion's training is launched (harness/launch.py)
    "accelerate config missing": Case((*RUN, "--accelerate-config", "{tmp}/nope.yaml"),
                                      "nope.yaml not found", closes_run=True),
    "accelerate config with a typo": Case((*RUN, "--accelerate-config", "{accelerate}"),
                                          "is not valid: The config file at", accelerate_config_with_a_typo,
                                          closes_run=True),
    "accelerate config, one-process fuser": Case((*RUN, "--accelerate-config", "{accelerate}"),
                                                 "fuser fake does not train, so it has nothing to launch", fsdp_example, closes_run=True),
    # damaged files
    "truncated model.safetensors": Case(("eval", "--model", "{model}", "--suite", "fakesuite", "--db", "{db}"),
                                        "model.safetensors is damaged or truncated", truncated_weights,
                                        closes_run=True),
    "corrupt tokenizer.json": Case(("eval", "--model", "{model}", "--suite", "fakesuite", "--db", "{db}"),
                                   "tokenizer.json is not valid JSON", corrupt_tokenizer, closes_run=True),
    "non-UTF-8 config.json": Case(("eval", "--model", "{model}", "--suite", "fakesuite", "--db", "{db}"),
                                  "config.json is not UTF-8 text", non_utf8_config_json, closes_run=True),
    "non-UTF-8 YAML": Case(("run", "--config", "{config}", "--db", "{db}"), "is not UTF-8 text (byte 0xe9 on line 2)",
                           non_utf8_yaml, closes_run=True),
    "non-UTF-8 predictions": Case(SCORE, "is not UTF-8 text", bbh_predictions(
        '{"task": "navigate", "index": 0, "output": "caf\xe9"}\n'.encode("latin-1")), closes_run=True),
    "non-UTF-8 questions": Case(("eval", "--model", "{a}", "--suite", "mtbench", "--questions", "{questions}",
                                 "--db", "{db}"), "is not UTF-8 text", non_utf8_questions, closes_run=True),
    "bbh index abc": Case(SCORE, "index must be a whole number", bbh_predictions(
        ['{"task": "navigate", "index": "abc", "output": "So the answer is No."}']), closes_run=True),
    "bbh task list": Case(SCORE, "task must be a BBH task name", bbh_predictions(
        ['{"task": ["navigate"], "index": 0, "output": "So the answer is No."}']), closes_run=True),
    "bbh damaged task file": Case(SCORE, "navigate.json is not valid JSON", damaged_bbh_task_file, closes_run=True),
    # the results DB and the runs in it
    "db under a regular file": Case(("runs", "--db", "{db_path}"), "not_a_folder is a file, not a folder",
                                    db_under_a_file),
    "db under a regular file (eval)": Case(("eval", "--model", "{a}", "--db", "{db_path}"),
                                           "not_a_folder is a file, not a folder", db_under_a_file),
    "resume a run that never validated": Case(("run", "--resume", "{run_id}", "--db", "{db}"),
                                              "its configuration never passed validation", run_that_never_validated,
                                              closes_run=True),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_error_line_with_exit_2(case: Case, fake_plugins_registered, capsys):
    env: Env = {k: str(v) for k, v in fake_plugins_registered.items()}
    if case.setup:
        env |= case.setup(env)
    capsys.readouterr()
    code = bench(*(arg.format(**env) for arg in case.argv))
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.strip().endswith(errors[0]) and "Traceback" not in err, err
    assert case.problem in errors[0] and "(fix: " in errors[0], errors[0]
    statuses = [r["status"] for r in sqlite_utils.Database(env["db"])["runs"].rows] if Path(env["db"]).is_file() else []
    assert "running" not in statuses
    if case.closes_run:
        assert statuses and set(statuses) == {"error"}


def test_a_run_that_fails_after_its_row_opened_is_closed_as_error(fake_plugins_registered):
    """The run row exists before the config is read; the damaged weights are found while resolving models."""
    env = {k: str(v) for k, v in fake_plugins_registered.items()}
    model = truncated_weights(env)["model"]
    assert bench("run", "--fuser", "fake", "--sources", f"{env['a']},{model}", "--suite", "fakesuite",
                 "--db", env["db"]) == 2
    (run,) = sqlite_utils.Database(env["db"])["runs"].rows
    assert run["status"] == "error" and run["finished_at"] and "model.safetensors is damaged" in run["error"]


# --- damaged real checkpoints (micro zoo): found before or while transformers loads them ----------


def _copy_member(home: Path, tmp: Path, name: str) -> Path:
    folder = tmp / name
    shutil.copytree(home / "zoo" / name, folder)
    return folder


def _cut_weights(folder: Path) -> str:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size - 1000])
    return "model.safetensors is damaged or truncated"


def _unusable_tokenizer(folder: Path) -> str:
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')  # valid JSON, not a tokenizer
    return "cannot load the tokenizer of model"


@pytest.mark.parametrize("damage", [_cut_weights, _unusable_tokenizer], ids=["truncated weights", "not a tokenizer"])
def test_damaged_zoo_checkpoint_is_one_error_line(damage, private_home, tmp_path, capsys):
    folder = _copy_member(private_home, tmp_path, "llama-base")
    problem = damage(folder)
    db = str(tmp_path / "bench.db")
    assert bench("eval", "--model", str(folder), "--limit", "1", "--db", db) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and problem in lines[0], lines
    assert [r["status"] for r in sqlite_utils.Database(db)["runs"].rows] == ["error"]


# --- a results DB on a read-only filesystem -----------------------------------------------------


def _mount_read_only(folder: Path) -> str:
    """A shell prefix that runs what follows with ``folder`` mounted read-only (user and mount namespaces, so
    even root cannot write there); skips the test where such namespaces are not allowed."""
    prefix = f"mount -o bind,ro {folder} {folder} &&"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"{prefix} ! touch {folder}/probe"], capture_output=True) \
        if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("needs `unshare -rm` (user namespaces) to mount a folder read-only")
    return prefix


def test_listing_commands_read_a_db_on_a_read_only_filesystem(fake_plugins_registered, tmp_path):
    env = fake_plugins_registered
    assert bench("run", "--fuser", "fake", "--sources", f"{env['a']},{env['b']}", "--suite", "fakesuite",
                 "--db", env["db"], "--name", "ro") == 0
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    live, copy = sqlite3.connect(env["db"]), sqlite3.connect(shelf / "bench.db")
    live.backup(copy)  # a consistent copy, still in WAL mode, with no -wal/-shm beside it: as on a copied medium
    live.close()
    copy.close()
    db, out = shelf / "bench.db", tmp_path / "report"
    read_only = _mount_read_only(shelf)
    commands = [["runs"], ["leaderboard"], ["report", "--format", "markdown", "--out", str(out)],
                ["eval", "--model", env["a"], "--suite", "fakesuite"]]
    bench_cli = " ".join(["'" + sys.executable + "'", "-m", "harness.cli"])
    script = "; ".join(f"{bench_cli} {' '.join(c)} --db {db}; echo \"rc=$?\" >&2" for c in commands)
    done = subprocess.run(["unshare", "-rm", "sh", "-c", f"{read_only} {script}"],
                          capture_output=True, text=True, cwd=Path(__file__).parents[2],
                          env={**os.environ, "BENCH_HOME": str(tmp_path / "home")}, timeout=300)
    codes = [line for line in done.stderr.splitlines() if line.startswith("rc=")]
    assert codes == ["rc=0", "rc=0", "rc=0", "rc=2"], done.stderr
    assert "ok" in done.stdout and " ro" in done.stdout  # bench runs listed the run
    assert "fakesuite/t/acc" in done.stdout  # bench leaderboard
    assert (out / "report.md").is_file()
    assert "results DB" in done.stderr and "is read-only here" in done.stderr  # a writing command says so
    assert sorted(p.name for p in shelf.iterdir()) == ["bench.db"]
