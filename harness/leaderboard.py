"""The leaderboard: one row per model, one column per (suite, task, metric), fused models beside their sources.

Reads only SQLite (pandas), never torch. Scores come from runs with status ``ok``; for each model and
column the newest value wins. Columns are keyed by suite *version* too, so scores of a changed
suite are never ranked together with old ones.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from harness import markdown as md
from harness.store import Store

_SQL = """
select s.run_id, s.model_id, s.suite, s.suite_version, s.task, s.metric, s.value, s.stderr, s.n,
       s.higher_is_better, s.created_at, m.name as model, m.kind as model_kind, rm.role,
       r.name as run_name, r.kind as run_kind, r.fuser, r.started_at
from scores s
join runs r on r.id = s.run_id
join models m on m.id = s.model_id
join run_models rm on rm.run_id = s.run_id and rm.model_id = s.model_id
where r.status = 'ok'
"""


def scores_frame(store: Store, suites: list[str] | None = None) -> pd.DataFrame:
    df = pd.DataFrame(store.query(_SQL))
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

    # Groups: each fusion run's fused model followed by its target and sources; then lone models.
    membership = pd.DataFrame(store.query(
        "select rm.run_id, rm.model_id, rm.role, rm.position, r.name as run_name, r.fuser, r.started_at, m.name as model "
        "from run_models rm join runs r on r.id = rm.run_id join models m on m.id = rm.model_id "
        "where r.status = 'ok' order by r.started_at, rm.position"))
    rows: list[dict[str, Any]] = []
    placed: set[str] = set()
    fused = membership[membership["role"] == "fused"]
    for _, f in fused.drop_duplicates("model_id", keep="last").iterrows():
        group = membership[membership["run_id"] == f["run_id"]].sort_values("position")
        for _, m in group.iterrows():
            if m["model_id"] in values.index:
                rows.append({"group": f["model"], "model": m["model"], "role": m["role"], "model_id": m["model_id"]})
                placed.add(m["model_id"])
    for model_id in values.index:
        if model_id not in placed:
            name = latest[latest["model_id"] == model_id]["model"].iloc[0]
            rows.append({"group": "-", "model": name, "role": "model", "model_id": model_id})
    table = pd.DataFrame(rows)
    cols = sorted(values.columns)
    table = table.join(values[cols], on="model_id").drop(columns=["model_id"])
    return table.reset_index(drop=True), {c: hib[c] for c in cols}


def best_rows(table: pd.DataFrame, hib: dict[str, bool]) -> dict[str, set[int]]:
    best: dict[str, set[int]] = {}
    for col, higher in hib.items():
        series = table[col].dropna()
        if series.empty:
            continue
        target = series.max() if higher else series.min()
        best[col] = set(series[series == target].index)
    return best


def render(table: pd.DataFrame, hib: dict[str, bool], fmt: str = "table") -> str:
    if table.empty:
        return "no scores yet: run `bench run --fuser merge` or `bench eval --model zoo:llama-base`"
    best = best_rows(table, hib)
    if fmt == "json":
        records = json.loads(table.to_json(orient="records"))
        return json.dumps({"columns": {c: {"higher_is_better": h} for c, h in hib.items()}, "rows": records}, indent=1)
    if fmt == "csv":
        return table.to_csv(index=False)

    def cell(i: int, col: str) -> str:
        v = table.at[i, col]
        if pd.isna(v):
            return "-"
        text = f"{v:.4f}"
        return (f"**{text}**" if fmt == "markdown" else f"{text}*") if i in best.get(col, ()) else text

    headers = ["group", "model", "role"] + [f"{c} {'↑' if hib[c] else '↓'}" for c in hib]
    body = [[str(table.at[i, "group"]), str(table.at[i, "model"]), str(table.at[i, "role"])]
            + [cell(i, c) for c in hib] for i in table.index]
    if fmt == "markdown":  # names and column labels come from the DB: escaped, so they stay text in one cell
        lines = ["| " + " | ".join(md.escape(h) for h in headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join([*(md.escape(x) for x in r[:3]), *r[3:]]) + " |" for r in body]
        return "\n".join(lines) + "\n\n(best per column in bold; ↑ higher is better, ↓ lower is better)"
    widths = [max(len(h), *(len(r[j]) for r in body)) for j, h in enumerate(headers)]
    fmt_row = lambda r: "  ".join(x.ljust(w) if j < 3 else x.rjust(w) for j, (x, w) in enumerate(zip(r, widths, strict=True)))  # noqa: E731
    out = [fmt_row(headers), "  ".join("-" * w for w in widths)]
    prev_group = None
    for r in body:
        if prev_group is not None and r[0] != prev_group:
            out.append("")
        prev_group = r[0]
        out.append(fmt_row(r))
    return "\n".join(out) + "\n\n* best per column; ↑ higher is better, ↓ lower is better"
