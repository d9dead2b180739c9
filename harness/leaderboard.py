"""The leaderboard: one row per model, one column per (suite, task, metric), fused models beside their sources.

Reads only SQLite (pandas), never torch. Scores come from runs with status ``ok``; for each model and
column the newest value wins. Columns are keyed by suite *version* too, so scores of a changed
suite are never ranked together with old ones.

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
from typing import Any

import pandas as pd

from harness import markdown as md
from harness import stats
from harness.store import Store

#: The runs column that ties the runs of one run group (the same evaluation over several seeds) together;
#: read when the results DB has it, otherwise every run stands alone.
GROUP_COLUMN = "group_id"
LEVEL = stats.DEFAULT_LEVEL

_SQL = """
select s.run_id, s.model_id, s.suite, s.suite_version, s.task, s.metric, s.value, s.stderr, s.n,
       s.higher_is_better, s.created_at, m.name as model, m.kind as model_kind, rm.role,
       r.name as run_name, r.kind as run_kind, r.fuser, r.started_at, {group} as group_id
from scores s
join runs r on r.id = s.run_id
join models m on m.id = s.model_id
join run_models rm on rm.run_id = s.run_id and rm.model_id = s.model_id
where r.status = 'ok'
"""


def scores_frame(store: Store, suites: list[str] | None = None) -> pd.DataFrame:
    grouped = GROUP_COLUMN in store.db["runs"].columns_dict
    df = pd.DataFrame(store.query(_SQL.format(group=f"r.{GROUP_COLUMN}" if grouped else "null")))
    if df.empty:
        return df
    if suites:
        df = df[df["suite"].isin(suites)]
    return df


def column_name(suite: str, task: str, metric: str, version: str, all_versions: set[str]) -> str:
    """``suite/task`` for the suite's primary metric, ``suite/task/metric`` otherwise (+ ``@vN`` when versions mix)."""
    from evals import PRIMARY_METRIC

    v = f"@v{version}" if len(all_versions) > 1 else ""
    tail = "" if PRIMARY_METRIC.get(suite) == metric else f"/{metric}"
    return f"{suite}{v}/{task}{tail}"


def build(store: Store, suites: list[str] | None = None, all_metrics: bool = False,
          per_task: bool = False) -> tuple[pd.DataFrame, dict[str, bool]]:
    """Return (table, higher_is_better per column). Table columns: group, model, role, then metrics."""
    from evals import PRIMARY_METRIC, SUMMARY_TASKS

    df = scores_frame(store, suites)
    if df.empty:
        return pd.DataFrame(), {}
    if not all_metrics:
        primary = df["suite"].map(PRIMARY_METRIC)
        df = df[primary.isna() | (df["metric"] == primary)]
    if not per_task:
        keep = [SUMMARY_TASKS.get(s) is None or t in SUMMARY_TASKS[s] for s, t in zip(df["suite"], df["task"], strict=True)]
        df = df[keep]
    if df.empty:
        return pd.DataFrame(), {}
    versions = df.groupby("suite")["suite_version"].agg(lambda v: set(v)).to_dict()
    df = df.assign(column=[column_name(s, t, m, v, versions[s]) for s, t, m, v in
                           zip(df["suite"], df["task"], df["metric"], df["suite_version"], strict=True)])
    latest = df.sort_values(["started_at", "created_at"]).groupby(["model_id", "column"]).tail(1)
    values = latest.pivot(index="model_id", columns="column", values="value")
    hib = latest.groupby("column")["higher_is_better"].first().astype(bool).to_dict()
    # Rows: each seed group as one block (its fused and control models as the mean over seeds); each other
    # fusion run's fused model followed by its target and sources; then lone models. A row's key names what its
    # value estimates: a model (its newest value), or a role in a seed group (the mean over the group's runs).
    membership = pd.DataFrame(store.query(
        f"select rm.run_id, rm.model_id, rm.role, rm.position, r.name as run_name, r.fuser, r.started_at, "
        f"m.name as model, {'r.' + GROUP_COLUMN if GROUP_COLUMN in store.db['runs'].columns_dict else 'null'} "
        "as group_id from run_models rm join runs r on r.id = rm.run_id join models m on m.id = rm.model_id "
        "where r.status = 'ok' order by r.started_at, rm.position"))
    rows: list[dict[str, Any]] = []
    estimates = _estimates(df, latest)
    placed: set[str] = set()
    grouped = membership[membership["group_id"].notna()]
    for group_id, runs in grouped.groupby("group_id", sort=False):
        rows += _seed_group_rows(str(group_id), runs, df, estimates)
        placed.update(runs["model_id"])
    solo = membership[membership["group_id"].isna()]
    fused = solo[solo["role"] == "fused"]
    for _, f in fused.drop_duplicates("model_id", keep="last").iterrows():
        group = solo[solo["run_id"] == f["run_id"]].sort_values("position")
        for _, m in group.iterrows():
            if m["model_id"] in values.index:
                rows.append({"group": f["model"], "model": m["model"], "role": m["role"], "key": m["model_id"]})
                placed.add(m["model_id"])
    for model_id in values.index:
        if model_id not in placed:
            name = latest[latest["model_id"] == model_id]["model"].iloc[0]
            rows.append({"group": "-", "model": name, "role": "model", "key": model_id})
    members = pd.DataFrame(rows)
    cols = sorted(values.columns)
    shown_keys = set(members["key"])  # a seed group's models are shown (and ranked) as the group's means only
    marks = {c: mark({k: e for k, e in estimates.get(c, {}).items() if k in shown_keys}, hib[c]) for c in cols}
    table = members[["group", "model", "role"]].copy()
    for c in cols:  # each value, and the half-width of its interval beside it when it has one
        shown = [estimates.get(c, {}).get(k) for k in members["key"]]
        table[c] = [math.nan if e is None else e.value for e in shown]
        half = [_half_width(e) for e in shown]
        if any(h is not None for h in half):
            table[f"{c} ±"] = [math.nan if h is None else h for h in half]
    table.attrs["marks"] = {c: {i: marks[c][k] for i, k in enumerate(members["key"]) if k in marks[c]} for c in cols}
    table.attrs["notes"] = _caveats(store, df, latest, shown_keys)
    return table, {c: hib[c] for c in cols}


def _caveats(store: Store, df: pd.DataFrame, latest: pd.DataFrame, shown_keys: set[str]) -> list[str]:
    """The caveats (:func:`harness.registry.run_caveats`) of the runs whose values the table shows: the run of each
    shown model's newest value per column, and every run of a seed group (shown as the mean over them); each line
    once."""
    from harness.registry import run_caveats

    shown = latest[latest["model_id"].isin(shown_keys)]
    pairs = set(zip(shown["run_id"], shown["suite"], strict=True))
    grouped = df[df["group_id"].notna()]
    pairs |= set(zip(grouped["run_id"], grouped["suite"], strict=True))
    run_ids = sorted({run_id for run_id, _ in pairs})
    configs = {r["id"]: r["config"] for r in store.query(
        f"select id, config from runs where id in ({', '.join('?' * len(run_ids))})", run_ids)} if run_ids else {}
    notes: list[str] = []
    for run_id, suite in sorted(pairs):
        for line in run_caveats(configs.get(run_id), suite):
            if line not in notes:
                notes.append(line)
    return notes


def _seed_group_rows(group_id: str, runs: pd.DataFrame, df: pd.DataFrame,
                     estimates: dict[str, dict[str, stats.Estimate]]) -> list[dict[str, Any]]:
    """One block for the runs of a seed group: a row per role of its first run (the fused model, the control,
    each stage, the target, each source), valued at the mean over the group's runs with the seed-to-seed
    spread (:func:`harness.stats.mean_over_seeds`). Adds those estimates to ``estimates``."""
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
                estimates.setdefault(str(column), {})[key] = stats.mean_over_seeds(
                    per_run["value"].astype(float).tolist(),
                    [None if pd.isna(x) else float(x) for x in per_run["stderr"]])
        rows.append({"group": label, "model": name, "role": m["role"], "key": key})
    return rows


def _estimates(df: pd.DataFrame, latest: pd.DataFrame) -> dict[str, dict[str, stats.Estimate]]:
    """column -> model_id -> the newest value and its stderr (seed groups add their own rows' estimates)."""
    out: dict[str, dict[str, stats.Estimate]] = {}
    for row in latest.itertuples(index=False):
        if pd.isna(row.value):
            continue
        estimate = stats.Estimate(float(row.value), None if pd.isna(row.stderr) else float(row.stderr))
        out.setdefault(row.column, {})[row.model_id] = estimate
    return out


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
