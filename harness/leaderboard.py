"""The leaderboard: one row per model, one column per (suite, task, metric), fused models beside their sources.

One builder (:func:`board`) makes every leaderboard FuseBench shows, from the results DB's ``score_rows`` view (reads
only SQLite and pandas, never torch). Two kinds:

* over every ``ok`` run (`bench leaderboard`, and what `bench run` / `eval` / `score` print: :func:`build`): for each
  model and column the newest value wins; rows are each seed group as one block, each other fusion run's fused model
  followed by its target and sources, then lone models;
* over chosen runs (`bench report`): each run is a block of its own, its members (fused first, then the control,
  target and sources) with the run's own values.

Columns are each suite's primary metric on its summary tasks (every metric and task on request), keyed by suite
*version* too, so scores of a changed suite are never ranked together with old ones.

Each value is shown as ``mean ± half-width`` of its 95% confidence interval when it has a standard error:
the suite's stored stderr (``1.96 · stderr``), or, for a seed group (the runs of ``bench run --seeds``, which
share a ``group_id``), the mean over the group's runs with the seed-to-seed spread added
(:func:`harness.stats.mean_over_seeds`): a seed group is one block, its fused model (and control) one row whose
value is the mean over the seeds' fused models. Without run groups every value is one run's.

The best mark goes only to values not significantly worse than the best value of their column (a
two-sided Welch test of the difference, :func:`harness.stats.not_worse`; a missing stderr counts as 0,
so then only equal values tie): ``best`` when that is one model, ``tied`` for each when several, and no
mark at all when every model of the column is such a value (nothing tells them apart: a column where
every model scores 0, or a single model).

Under the table, one ``note:`` line per caveat of the runs whose values it shows (a suite's ``caveats`` hook on
the run's stored suite arguments; MT-Bench rated by a local judge, say): in the table and Markdown footers and as
``notes`` in JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness import markdown as md
from harness import stats
from harness.store import Store

#: The runs column that ties the runs of one run group (the same evaluation over several seeds) together.
GROUP_COLUMN = "group_id"
LEVEL = stats.DEFAULT_LEVEL
#: Suites in the order a report shows them (others follow by name).
SUITE_ORDER = ("perplexity", "bbh", "bbh-mini", "humaneval", "humaneval-mini", "mtbench")
#: Tasks that summarise a suite: shown before its other tasks, in this order.
AGGREGATE_TASKS = ("avg", "macro", "weighted", "overall", "turn1", "turn2")
#: Members of a run in the order a run's block shows them.
ROLE_ORDER = {"fused": 0, "control": 1, "target": 2, "source": 3, "model": 4}


@dataclass(frozen=True)
class Column:
    suite: str
    version: str
    task: str
    metric: str
    higher_is_better: bool
    label: str  # ``suite/task`` (see :func:`column_name`)


@dataclass(frozen=True)
class Cell:
    """A value the leaderboard shows: a score, or a seed group's mean over its runs."""

    estimate: stats.Estimate
    n: int | None = None  # how many examples the score is over (None: not recorded, or a mean over seeds)

    @property
    def value(self) -> float:
        return self.estimate.value

    @property
    def stderr(self) -> float | None:
        return self.estimate.se


@dataclass(frozen=True)
class Row:
    group: str  # the block it belongs to
    model: str
    role: str
    key: str  # what its values estimate: a model (its newest value), a role in a seed group, or a run's member
    run_id: str | None = None  # on a board of chosen runs: the run and the model of the member
    model_id: str | None = None


@dataclass
class Board:
    columns: list[Column]  # suites in SUITE_ORDER, then versions, then each suite's tasks in summary order
    rows: list[Row]
    cells: dict[str, dict[str, Cell]]  # column label -> row key -> value
    sources: set[tuple[str, str]]  # (run_id, suite) of the runs whose values it shows

    def cell(self, row: Row, column: Column) -> Cell | None:
        return self.cells.get(column.label, {}).get(row.key)


def board(store: Store, suites: list[str] | None = None, *, runs: Mapping[str, str] | None = None,
          all_metrics: bool = False, per_task: bool = False, only_runs: Sequence[str] | None = None) -> Board:
    """The leaderboard of every ``ok`` run (``only_runs``: of those runs only, laid out the same way: what a command
    prints of the runs it made), or of the chosen ``runs`` (run id -> the label of its block, in the order shown).
    A board of chosen runs shows one metric per suite: an unregistered suite's first by name."""
    df = store.score_frame(list(runs) if runs is not None else None if only_runs is None else list(only_runs))
    if not df.empty and suites:
        df = df[df["suite"].isin(suites)]
    df = _shown_scores(df, all_metrics, per_task, one_metric_per_suite=runs is not None)
    if df.empty:
        return Board([], [], {}, set())
    df = df.assign(key=df["model_id"] if runs is None else df["run_id"] + "\t" + df["model_id"])
    latest = df.sort_values(["started_at", "created_at"]).groupby(["key", "column"]).tail(1)
    hib = latest.groupby("column")["higher_is_better"].first().astype(bool).to_dict()
    columns = sorted((Column(s, str(v), t, m, hib[c], c) for s, v, t, m, c in latest[
        ["suite", "suite_version", "task", "metric", "column"]].drop_duplicates("column").itertuples(index=False)),
        key=_column_rank)
    cells = _cells(latest)
    if runs is None:
        members = store.members_frame()
        if only_runs is not None:
            members = members[members["run_id"].isin(list(only_runs))]
        rows = _rows_over_all_runs(members, df, latest, cells)
    else:
        rows = _rows_of_runs(store, runs, cells)
    shown = latest[latest["key"].isin({r.key for r in rows})]
    grouped = df[df[GROUP_COLUMN].notna()]  # a seed group's row is the mean over all its runs
    sources = set(zip(shown["run_id"], shown["suite"], strict=True)) | set(zip(grouped["run_id"], grouped["suite"],
                                                                              strict=True))
    return Board(columns, rows, cells, sources)


def _shown_scores(df: pd.DataFrame, all_metrics: bool, per_task: bool, one_metric_per_suite: bool) -> pd.DataFrame:
    """The scores a board shows, each with its ``column`` label."""
    from harness.registry import FALLBACK_METRIC, PRIMARY_METRIC, SUMMARY_TASKS

    if df.empty:
        return df
    if not all_metrics:
        primary = df["suite"].map(PRIMARY_METRIC)
        if one_metric_per_suite:
            primary = primary.fillna(df["suite"].map(df.groupby("suite")["metric"].min()))
        # an evaluation without the primary metric (MT-Bench judged pairwise) shows its suite's fallback headline
        has_primary = (df["metric"] == primary).groupby([df["run_id"], df["model_id"], df["suite"]]).transform("any")
        fallback = (df["metric"] == df["suite"].map(FALLBACK_METRIC)) & ~has_primary
        df = df[primary.isna() | (df["metric"] == primary) | fallback]
    if not per_task:
        keep = [SUMMARY_TASKS.get(s) is None or t in SUMMARY_TASKS[s] for s, t in zip(df["suite"], df["task"], strict=True)]
        df = df[keep]
    if df.empty:
        return df
    versions = df.groupby("suite")["suite_version"].agg(lambda v: set(v)).to_dict()
    return df.assign(column=[column_name(s, t, m, v, versions[s]) for s, t, m, v in
                             zip(df["suite"], df["task"], df["metric"], df["suite_version"], strict=True)])


def column_name(suite: str, task: str, metric: str, version: str, all_versions: set[str]) -> str:
    """``suite/task`` for the suite's primary metric, ``suite/task/metric`` otherwise (+ ``@vN`` when versions mix)."""
    from harness.registry import PRIMARY_METRIC

    v = f"@v{version}" if len(all_versions) > 1 else ""
    tail = "" if PRIMARY_METRIC.get(suite) == metric else f"/{metric}"
    return f"{suite}{v}/{task}{tail}"


def ordered_suites(suites: Iterable[str]) -> list[str]:
    """Suites in :data:`SUITE_ORDER`, then the others by name."""
    found = set(suites)
    return [s for s in SUITE_ORDER if s in found] + sorted(found - set(SUITE_ORDER))


def task_rank(task: str) -> tuple[int, str]:
    """Sorts aggregates first (avg, macro, overall, turns), then the other tasks by name."""
    return (AGGREGATE_TASKS.index(task), "") if task in AGGREGATE_TASKS else (len(AGGREGATE_TASKS), task)


def _column_rank(column: Column) -> tuple[Any, ...]:
    from harness.registry import SUMMARY_TASKS

    suite = (SUITE_ORDER.index(column.suite), "") if column.suite in SUITE_ORDER else (len(SUITE_ORDER), column.suite)
    summary = SUMMARY_TASKS.get(column.suite, ())
    task = (summary.index(column.task), 0, "") if column.task in summary else (len(summary), *task_rank(column.task))
    return suite, column.version, task, column.metric


def _cells(latest: pd.DataFrame) -> dict[str, dict[str, Cell]]:
    """column -> row key -> the newest value, its stderr and n (seed groups add their own rows' cells)."""
    out: dict[str, dict[str, Cell]] = {}
    for row in latest.itertuples(index=False):
        if pd.isna(row.value):
            continue
        estimate = stats.Estimate(float(row.value), None if pd.isna(row.stderr) else float(row.stderr))
        out.setdefault(row.column, {})[row.key] = Cell(estimate, None if pd.isna(row.n) else int(row.n))
    return out


def _rows_over_all_runs(membership: pd.DataFrame, df: pd.DataFrame, latest: pd.DataFrame,
                        cells: dict[str, dict[str, Cell]]) -> list[Row]:
    """Each seed group as one block (its fused and control models as the mean over seeds); each other fusion run's
    fused model followed by its target and sources; then lone models."""
    rows: list[Row] = []
    placed: set[str] = set()
    scored = set(latest["key"])
    grouped = membership[membership[GROUP_COLUMN].notna()]
    for group_id, runs in grouped.groupby(GROUP_COLUMN, sort=False):
        rows += _seed_group_rows(str(group_id), runs, df, cells)
        placed.update(runs["model_id"])
    solo = membership[membership[GROUP_COLUMN].isna()]
    fused = solo[solo["role"] == "fused"]
    for _, f in fused.drop_duplicates("model_id", keep="last").iterrows():
        group = solo[solo["run_id"] == f["run_id"]].sort_values("position")
        for _, m in group.iterrows():
            if m["model_id"] in scored:
                rows.append(Row(f["model"], m["model"], m["role"], m["model_id"]))
                placed.add(m["model_id"])
    for model_id in sorted(scored):
        if model_id not in placed:
            rows.append(Row("-", latest[latest["key"] == model_id]["model"].iloc[0], "model", model_id))
    return rows


def _seed_group_rows(group_id: str, runs: pd.DataFrame, df: pd.DataFrame,
                     cells: dict[str, dict[str, Cell]]) -> list[Row]:
    """One block for the runs of a seed group: a row per role of its first run (the fused model, the control,
    each stage, the target, each source), valued at the mean over the group's runs with the seed-to-seed
    spread (:func:`harness.stats.mean_over_seeds`). Adds those values to ``cells``."""
    first = runs[runs["run_id"] == runs["run_id"].iloc[0]].sort_values("position")
    label = re.sub(r"@seed\d+$", "", str(first[first["role"] == "fused"]["model"].iloc[0])
                   if (first["role"] == "fused").any() else str(first["run_name"].iloc[0]))
    n_runs = runs["run_id"].nunique()
    label = f"{label} ({n_runs} seeds)"
    rows = []
    for _, m in first.iterrows():
        same = runs["role"] == m["role"]
        if m["role"] in ("source", "target", "model"):  # the same model in every run
            same &= runs["model_id"] == m["model_id"]
            name = m["model"]
        elif m["role"] == "stage":
            stage = str(m["model"]).rsplit("/", 1)[-1]
            same &= runs["model"].astype(str).str.endswith(f"/{stage}")
            name = f"{label}/{stage}"
        else:
            name = label if m["role"] == "fused" else f"{label} {m['role']}"
        pairs = set(zip(runs[same]["run_id"], runs[same]["model_id"], strict=True))
        key = f"{group_id}:{m['role']}:{name}"
        mine = df[[(r, k) in pairs for r, k in zip(df["run_id"], df["model_id"], strict=True)]]
        for column, per_run in mine.groupby("column"):
            per_run = per_run[per_run["value"].notna()].drop_duplicates("run_id")
            if len(per_run):
                cells.setdefault(str(column), {})[key] = Cell(stats.mean_over_seeds(
                    per_run["value"].astype(float).tolist(),
                    [None if pd.isna(x) else float(x) for x in per_run["stderr"]]))
        rows.append(Row(label, name, m["role"], key))
    return rows


def _rows_of_runs(store: Store, runs: Mapping[str, str], cells: dict[str, dict[str, Cell]]) -> list[Row]:
    """Per run, its members with a value: fused first, then the control, target and sources (:data:`ROLE_ORDER`)."""
    rows = []
    for run_id, label in runs.items():
        members = sorted(store.run_members(run_id), key=lambda m: (ROLE_ORDER.get(m["role"], 9), m["position"]))
        for m in members:
            key = f"{run_id}\t{m['model_id']}"
            if any(key in by_key for by_key in cells.values()):
                rows.append(Row(label, m["model"], m["role"], key, run_id, m["model_id"]))
    return rows


# --- the table of `bench leaderboard` ---------------------------------------------------------------


def build(store: Store, suites: list[str] | None = None, all_metrics: bool = False,
          per_task: bool = False, runs: Sequence[str] | None = None) -> tuple[pd.DataFrame, dict[str, bool]]:
    """The leaderboard of every ``ok`` run (``runs``: of those only) as a table, and higher_is_better per column.
    Table columns: group, model, role, then each value (by column name) and the half-width of its interval beside it
    when it has one; its ``attrs`` hold the best / tied ``marks`` per column and row, and the runs' caveats as
    ``notes``."""
    shown = board(store, suites, all_metrics=all_metrics, per_task=per_task, only_runs=runs)
    if not shown.columns:
        return pd.DataFrame(), {}
    columns = sorted(shown.columns, key=lambda c: c.label)
    keys = [r.key for r in shown.rows]
    on_rows = set(keys)  # a seed group's models are shown (and ranked) as the group's means only
    data: dict[str, list[Any]] = {"group": [r.group for r in shown.rows], "model": [r.model for r in shown.rows],
                                  "role": [r.role for r in shown.rows]}
    marks = {}
    for c in columns:  # each value, and the half-width of its interval beside it when it has one
        by_key = shown.cells.get(c.label, {})
        marks[c.label] = mark({k: e.estimate for k, e in by_key.items() if k in on_rows}, c.higher_is_better)
        estimates = [by_key[k].estimate if k in by_key else None for k in keys]
        data[c.label] = [math.nan if e is None else e.value for e in estimates]
        half = [_half_width(e) for e in estimates]
        if any(h is not None for h in half):
            data[f"{c.label} ±"] = [math.nan if h is None else h for h in half]
    table = pd.DataFrame(data)
    table.attrs["marks"] = {c: {i: marks[c][k] for i, k in enumerate(keys) if k in marks[c]} for c in marks}
    table.attrs["notes"] = _caveats(store, shown.sources)
    return table, {c.label: c.higher_is_better for c in columns}


def _caveats(store: Store, sources: set[tuple[str, str]]) -> list[str]:
    """The caveats (:func:`harness.registry.run_caveats`) of the runs whose values the table shows, each line once."""
    from harness.registry import run_caveats

    configs = store.run_configs(sorted({run_id for run_id, _ in sources})) if sources else {}
    notes: list[str] = []
    for run_id, suite in sorted(sources):
        for line in run_caveats(configs.get(run_id), suite):
            if line not in notes:
                notes.append(line)
    return notes


def _half_width(estimate: stats.Estimate | None) -> float | None:
    return None if estimate is None else estimate.half_width(LEVEL)


def mark(estimates: dict[str, stats.Estimate], higher_is_better: bool) -> dict[str, str]:
    """key -> "best" or "tied" for the values not significantly worse than the best one (see the module
    docstring); empty when that is every value (no winner) or there are none."""
    if not estimates:
        return {}
    best = (max if higher_is_better else min)(estimates.values(), key=lambda e: e.value)
    top = [k for k, e in estimates.items() if stats.not_worse(best, e, higher_is_better, LEVEL)]
    if len(top) == len(estimates):
        return {}
    return {top[0]: "best"} if len(top) == 1 else dict.fromkeys(top, "tied")


def render(table: pd.DataFrame, hib: dict[str, bool], fmt: str = "table") -> str:
    if table.empty:
        return "no scores yet: run `bench run --fuser merge` or `bench eval --model zoo:llama-base`"
    marks: dict[str, dict[int, str]] = table.attrs.get("marks", {})
    notes: list[str] = table.attrs.get("notes", [])
    if fmt == "json":
        records = json.loads(table.to_json(orient="records"))
        # marks: per column, the positions in "rows" of the best value, or of the values tied for best
        marked = {c: {kind: sorted(i for i, m in marks.get(c, {}).items() if m == kind) for kind in ("best", "tied")}
                  for c in hib}
        return json.dumps({"columns": {c: {"higher_is_better": h} for c, h in hib.items()}, "rows": records,
                           "marks": marked, "level": LEVEL, "notes": notes}, indent=1)
    if fmt == "csv":
        out = table.copy()
        for c in hib:
            if marks.get(c):
                out[f"{c} mark"] = [marks[c].get(i, "") for i in out.index]
        return out.to_csv(index=False)

    def cell(i: int, col: str) -> str:
        v = table.at[i, col]
        if pd.isna(v):
            return "-"
        half = table.at[i, f"{col} ±"] if f"{col} ±" in table.columns else math.nan
        spread = "" if pd.isna(half) else f" ± {half:.4f}"
        how = marks.get(col, {}).get(i)
        if fmt == "markdown":
            return f"**{v:.4f}**{spread}" + (" (tie)" if how == "tied" else "") if how else f"{v:.4f}{spread}"
        return f"{v:.4f}{spread}" + {"best": "*", "tied": "="}.get(how or "", " ")

    headers = ["group", "model", "role"] + [f"{c} {'↑' if hib[c] else '↓'}" for c in hib]
    body = [[str(table.at[i, "group"]), str(table.at[i, "model"]), str(table.at[i, "role"])]
            + [cell(i, c) for c in hib] for i in table.index]
    if fmt == "markdown":  # names and column labels come from the DB: escaped, so they stay text in one cell
        lines = ["| " + " | ".join(md.escape(h) for h in headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join([*(md.escape(x) for x in r[:3]), *r[3:]]) + " |" for r in body]
        return "\n".join(lines) + ("\n\n(value ± half-width of its 95% interval; in bold: the best per column, "
                                   "\"(tie)\" when several are not significantly worse than the best; no bold: "
                                   "nothing tells the column's models apart; ↑ higher is better, ↓ lower is better)"
                                   + "".join(f"\n\nnote: {md.escape(n)}" for n in notes))
    widths = [max(len(h), *(len(r[j]) for r in body)) for j, h in enumerate(headers)]
    fmt_row = lambda r: "  ".join(x.ljust(w) if j < 3 else x.rjust(w) for j, (x, w) in enumerate(zip(r, widths, strict=True)))  # noqa: E731
    out = [fmt_row(headers), "  ".join("-" * w for w in widths)]
    prev_group = None
    for r in body:
        if prev_group is not None and r[0] != prev_group:
            out.append("")
        prev_group = r[0]
        out.append(fmt_row(r))
    return "\n".join(out) + ("\n\n± half-width of the 95% interval; * best per column (every other value "
                             "significantly worse), = tied for best (not significantly worse than the best),\n"
                             "no mark: nothing tells the column's models apart; ↑ higher is better, ↓ lower is better"
                             + "".join(f"\nnote: {n}" for n in notes))
