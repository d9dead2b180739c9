"""MT-Bench ratings by a local judge carry a one-line caveat wherever they are shown: `bench leaderboard` (table,
Markdown, JSON) and `bench report` (HTML and Markdown, in the MT-Bench part); unjudged and URL-judged runs carry none.

Runs are written through the store by hand, as the runner writes them: a run's config keeps the suite arguments
(``suite_args.mtbench``) under which its scores were made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evals.mtbench import local_judge_note
from harness import markdown as md
from harness.store import Store
from tests.conftest import bench
from tests.test_report import by_id, parse

LOCAL = {"judge_model": "zoo:smollm2-135m"}
URL = {"judge_url": "http://judge.invalid/v1", "judge_model": "gpt-4"}
NOTE = ("mtbench rated by zoo:smollm2-135m, a 135K-parameter local model: far weaker than the GPT-4 judge behind "
        "published MT-Bench scores; read these ratings as a check that answers are generated and graded, not as "
        "their quality")


@pytest.fixture
def judge_in_zoo(isolated_env: Path) -> Path:
    """A stand-in for zoo:smollm2-135m with 135,000 parameters (the note reads the count from the safetensors
    header)."""
    from safetensors.numpy import save_file

    folder = isolated_env / "zoo" / "smollm2-135m"
    folder.mkdir(parents=True)
    save_file({"embed": np.zeros((1000, 100), np.float32), "head": np.zeros((350, 100), np.float32)},
              str(folder / "model.safetensors"))
    return folder


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "bench.db")


def mtbench_run(store: Store, judge: dict[str, Any] | None, ratings: dict[str, float], *,
                perplexity: bool = False) -> str:
    """One ok eval run: each model (name -> its rating) on mtbench, rated when ``judge`` names a judge (then the
    run's config holds it as ``suite_args.mtbench``), else stored "not judged"; optionally perplexity too."""
    suites = ["mtbench", *(["perplexity"] if perplexity else [])]
    config = {"suites": suites, "suite_args": {"mtbench": judge} if judge else {}}
    run = store.start_run(kind="eval", name=None, command="bench eval", provenance={}, config=config)
    for position, (model, rating) in enumerate(ratings.items()):
        store.add_model({"id": f"id-{model}", "name": model, "kind": "source"}, run, "model", position)
        tasks = ("overall", "turn1", "turn2", "category/writing")
        if judge:
            scores = [{"task": t, "metric": "score", "value": rating, "stderr": 0.4, "n": 6} for t in tasks]
            scores += [{"task": t, "metric": "judged", "value": 1.0, "n": 6} for t in tasks]
        else:
            scores = [{"task": t, "metric": "judged", "value": 0.0, "n": 6} for t in tasks]
        store.add_eval(run, f"id-{model}", "mtbench", "2", f"{run}-{model}", scores, [])
        if perplexity:
            store.add_eval(run, f"id-{model}", "perplexity", "1", f"{run}-{model}-ppl", [
                {"task": "code", "metric": "bits_per_byte", "value": 2.0, "stderr": 0.1, "n": 10,
                 "higher_is_better": False}], [])
    store.finish_run(run, "ok")
    return run


def leaderboard(store: Store, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert bench("leaderboard", "--db", str(store.path), *args) == 0
    return capsys.readouterr().out


def notes_of(table_text: str) -> list[str]:
    return [line.removeprefix("note: ") for line in table_text.splitlines() if line.startswith("note: ")]


def test_the_note_names_the_judge_and_its_size(judge_in_zoo: Path) -> None:
    assert local_judge_note("zoo:smollm2-135m") == NOTE
    assert "\n" not in NOTE
    assert "zoo:other, a local model of unknown size:" in local_judge_note("zoo:other")  # not on this machine


def test_leaderboard_notes_a_local_judge_in_every_format(judge_in_zoo: Path, store: Store, capsys) -> None:
    mtbench_run(store, LOCAL, {"chatty": 6.0, "terse": 4.0})
    table = leaderboard(store, capsys)
    assert "mtbench/overall" in table and notes_of(table) == [NOTE]
    markdown = leaderboard(store, capsys, "--format", "markdown")
    assert markdown.rstrip().endswith(f"note: {md.escape(NOTE)}")
    assert json.loads(leaderboard(store, capsys, "--format", "json"))["notes"] == [NOTE]
    assert "rated by" not in leaderboard(store, capsys, "--format", "csv")  # CSV stays one table


@pytest.mark.parametrize("judge", [None, URL], ids=["not-judged", "url-judge"])
def test_no_note_for_unjudged_or_url_judged_runs(judge_in_zoo: Path, store: Store, capsys,
                                                 judge: dict[str, Any] | None) -> None:
    mtbench_run(store, judge, {"chatty": 6.0})
    table = leaderboard(store, capsys, "--all-metrics")  # "not judged" runs have only the judged metric
    assert "mtbench/overall" in table and notes_of(table) == []
    assert json.loads(leaderboard(store, capsys, "--all-metrics", "--format", "json"))["notes"] == []


def test_the_note_goes_with_the_values_shown(judge_in_zoo: Path, store: Store, capsys) -> None:
    mtbench_run(store, LOCAL, {"chatty": 6.0}, perplexity=True)
    assert notes_of(leaderboard(store, capsys, "--suite", "perplexity")) == []  # no mtbench column shown
    mtbench_run(store, URL, {"chatty": 7.0})  # newer: the leaderboard shows this run's rating of chatty
    table = leaderboard(store, capsys, "--suite", "mtbench")
    assert "7.0000" in table and "6.0000" not in table and notes_of(table) == []
    mtbench_run(store, LOCAL, {"terse": 3.0})  # another model, newest value rated locally
    assert notes_of(leaderboard(store, capsys, "--suite", "mtbench")) == [NOTE]


def test_report_mtbench_part_names_the_local_judge(judge_in_zoo: Path, store: Store, tmp_path: Path) -> None:
    mtbench_run(store, LOCAL, {"chatty": 6.0})
    assert bench("report", "--db", str(store.path), "--out", str(tmp_path / "r")) == 0
    section = by_id(parse((tmp_path / "r" / "report.html").read_text()), "suite-mtbench")
    caveats = [p.all_text() for p in section.iter("p") if "caveat" in p.classes()]
    assert caveats == [f"⚠ {NOTE}"]
    assert bench("report", "--db", str(store.path), "--out", str(tmp_path / "m"), "--format", "markdown") == 0
    text = (tmp_path / "m" / "report.md").read_text()
    assert text.count(f"**Note:** {md.escape(NOTE)}") == 1
    assert text.index("## mtbench") < text.index("**Note:**")


@pytest.mark.parametrize("judge", [None, URL], ids=["not-judged", "url-judge"])
def test_report_has_no_note_for_unjudged_or_url_judged_runs(judge_in_zoo: Path, store: Store, tmp_path: Path,
                                                            judge: dict[str, Any] | None) -> None:
    mtbench_run(store, judge, {"chatty": 6.0})
    assert bench("report", "--db", str(store.path), "--out", str(tmp_path / "r")) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert 'id="suite-mtbench"' in page and 'class="caveat"' not in page and "rated by" not in page
    assert bench("report", "--db", str(store.path), "--out", str(tmp_path / "m"), "--format", "markdown") == 0
    assert "rated by" not in (tmp_path / "m" / "report.md").read_text()
