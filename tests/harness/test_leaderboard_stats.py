"""`bench leaderboard`: values with the half-width of their 95% interval, best and tied marks in every format,
and the run-group hook (runs sharing a ``group_id``: the mean over seeds)."""

from __future__ import annotations

import json

import pytest

from harness import leaderboard, stats
from harness.store import Store
from tests.conftest import bench


def scored(store: Store, values: dict[str, tuple[float, float | None]], *, name: str = "ev",
           suite: str = "bbh", task: str = "macro", metric: str = "exact_match", higher: bool = True) -> str:
    """One ok eval run scoring each model (name -> (value, stderr)); returns the run id."""
    run_id = store.start_run(kind="eval", name=name, command="test", provenance={}, config={})
    for position, (model, (value, stderr)) in enumerate(values.items()):
        store.add_model({"id": f"id-{model}", "name": model, "kind": "source"}, run_id, "model", position)
        store.add_eval(run_id, f"id-{model}", suite, "1", "key", [
            {"task": task, "metric": metric, "value": value, "stderr": stderr, "n": 100, "higher_is_better": higher}], [])
    store.finish_run(run_id, "ok")
    return run_id


def show(db: str, fmt: str, capsys) -> str:
    capsys.readouterr()
    assert bench("leaderboard", "--db", db, "--format", fmt) == 0
    return capsys.readouterr().out


def cells(table_text: str) -> dict[str, str]:
    """model -> its cell in the one metric column of a table-format leaderboard."""
    rows = [line for line in table_text.splitlines()[2:] if line.startswith("-  ")]
    return {line.split()[1]: line.split("model", 1)[1].strip() for line in rows}


@pytest.fixture
def db(tmp_path) -> tuple[str, Store]:
    path = str(tmp_path / "bench.db")
    return path, Store(path)


def test_a_column_where_every_model_scores_zero_has_no_winner(db, capsys):
    path, store = db
    scored(store, {"a": (0.0, 0.0), "b": (0.0, 0.0), "c": (0.0, None)})
    assert set(cells(show(path, "table", capsys)).values()) == {"0.0000 ± 0.0000", "0.0000"}
    assert "**" not in show(path, "markdown", capsys)
    assert json.loads(show(path, "json", capsys))["marks"]["bbh/macro"] == {"best": [], "tied": []}
    assert "mark" not in show(path, "csv", capsys)


def test_a_model_within_the_interval_of_the_best_is_tied(db, capsys):
    path, store = db
    # best 0.60 ± 1.96·0.02; 0.57 is 0.03 below it (< 1.96·√2·0.02 = 0.055): tied; 0.40 is far below.
    scored(store, {"top": (0.60, 0.02), "close": (0.57, 0.02), "far": (0.40, 0.02)})
    table = cells(show(path, "table", capsys))
    assert table == {"top": "0.6000 ± 0.0392=", "close": "0.5700 ± 0.0392=", "far": "0.4000 ± 0.0392"}
    md = show(path, "markdown", capsys)
    assert "| **0.6000** ± 0.0392 (tie) |" in md and "| **0.5700** ± 0.0392 (tie) |" in md
    assert "| 0.4000 ± 0.0392 |" in md
    data = json.loads(show(path, "json", capsys))
    models = [r["model"] for r in data["rows"]]
    assert data["marks"]["bbh/macro"] == {"best": [], "tied": sorted([models.index("top"), models.index("close")])}
    assert data["rows"][models.index("top")]["bbh/macro ±"] == pytest.approx(1.959964 * 0.02)
    csv_lines = show(path, "csv", capsys).strip().splitlines()
    assert csv_lines[0] == "group,model,role,bbh/macro,bbh/macro ±,bbh/macro mark"
    assert {line.split(",")[1]: line.split(",")[-1] for line in csv_lines[1:]} == {"top": "tied", "close": "tied",
                                                                                  "far": ""}


def test_a_clear_best_is_marked_best_and_lower_is_better_counts(db, capsys):
    path, store = db
    scored(store, {"x": (1.10, 0.01), "y": (1.30, 0.01), "z": (1.31, 0.01)}, suite="perplexity", task="avg",
           metric="bits_per_byte", higher=False)
    table = cells(show(path, "table", capsys))
    assert table["x"].endswith("*") and not table["y"].endswith(("*", "=")) and not table["z"].endswith(("*", "="))
    assert "| **1.1000** ± 0.0196 |" in show(path, "markdown", capsys)


def test_without_stderr_only_equal_values_tie(db, capsys):
    path, store = db
    scored(store, {"p": (0.5, None), "q": (0.5, None), "r": (0.499, None)})
    assert cells(show(path, "table", capsys)) == {"p": "0.5000=", "q": "0.5000=", "r": "0.4990"}


def test_one_model_in_two_groups_does_not_tie_with_itself(db, capsys):
    path, store = db
    for fused, quality in (("fusion-1", 0.30), ("fusion-2", 0.35)):
        run_id = store.start_run(kind="run", name=fused, command="test", provenance={}, config={})
        for position, (model, role, value) in enumerate([(fused, "fused", quality), ("expert", "source", 0.9)]):
            store.add_model({"id": f"id-{model}", "name": model, "kind": "source"}, run_id, role, position)
            store.add_eval(run_id, f"id-{model}", "bbh", "1", "key", [
                {"task": "macro", "metric": "exact_match", "value": value, "stderr": 0.01, "n": 100}], [])
        store.finish_run(run_id, "ok")
    data = json.loads(show(path, "json", capsys))
    experts = [i for i, r in enumerate(data["rows"]) if r["model"] == "expert"]
    assert len(experts) == 2 and data["marks"]["bbh/macro"] == {"best": experts, "tied": []}


def test_run_group_shows_the_mean_over_its_seeds(db, capsys):
    """Runs that share a ``group_id`` (a seed group): a model's value is the mean over its group's runs and the
    interval adds the seed-to-seed spread (t quantile, Welch–Satterthwaite df)."""
    path, store = db
    scored(store, {"base": (0.55, 0.01)}, name="base")
    seeds = [0.56, 0.70, 0.63]
    for value in seeds:
        run_id = scored(store, {"fused": (value, 0.01)}, name="fused-seeds")
        store.db["runs"].update(run_id, {leaderboard.GROUP_COLUMN: "g1"})
    table, _ = leaderboard.build(store)
    fused = table[table["model"] == "fused"].iloc[0]
    expected = stats.mean_over_seeds(seeds, [0.01] * 3)
    assert fused["bbh/macro"] == pytest.approx(0.63)
    assert fused["bbh/macro ±"] == pytest.approx(expected.half_width())
    assert expected.half_width() > 1.96 * expected.se  # a t quantile: three seeds are few
    # the seeds' spread leaves 0.63 not significantly better than the base's 0.55: no winner
    assert table.attrs["marks"]["bbh/macro"] == {}
    # without the group the newest run alone is shown, with its own stderr: then 0.63 wins
    store.db.execute(f"update runs set {leaderboard.GROUP_COLUMN} = null")
    table, _ = leaderboard.build(store)
    fused_row = table.index[table["model"] == "fused"][0]
    assert table.at[fused_row, "bbh/macro"] == pytest.approx(0.63)
    assert table.at[fused_row, "bbh/macro ±"] == pytest.approx(1.959964 * 0.01)
    assert table.attrs["marks"]["bbh/macro"] == {fused_row: "best"}
