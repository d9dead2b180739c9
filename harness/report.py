"""`bench report`: a static report of runs, as one self-contained HTML page or as Markdown.

The HTML page needs nothing but a browser: CSS is inline, plots are SVG written here (no plotting
library, no JavaScript), and a Content-Security-Policy forbids every network load and script, so the
page renders the same offline, from a CI artifact or an e-mail attachment, and text from the DB
(run names, configs, errors) can never become active content.

What it shows, for the selected runs (``--run``, default: the newest ``ok`` run of each run name, or
of each config for unnamed runs):

* the leaderboard: one row per model of each run, fused models first in their run's group and
  followed by their target and sources; each suite's primary metric on its summary tasks; the best
  value per column marked; for fused models the gain over the best of the run's other models
  (target and sources), signed so that positive is better;
* skill inheritance: per fusion run, per task, whether the fused model kept its best source's skill (gained,
  inherited, partly, lost, or no skill), with the paired 95% interval of fused − best source
  (:mod:`harness.inheritance`, `bench skills`);
* per suite: a bar chart of the headline number, per-task numbers (BBH tasks, MT-Bench categories
  and turns, perplexity domains) as a table and a grouped bar chart, and every metric in a folded table; above
  them, one highlighted line per caveat of the runs' scores on that suite (MT-Bench rated by a local judge:
  :func:`harness.registry.run_caveats`);
* training curves: the ``train_log`` table (run_id, model_id, step, name, value) when the DB has one,
  and the loss curves recorded in zoo members' cards (``zoo.json``) when their folders exist here;
* provenance of each run: command, config, git sha, package versions, host and per-stage timings.

Reads only SQLite and JSON (no torch), so it is quick: well under a second for a few runs.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import markdown as md
from harness.errors import BenchError
from harness.store import Store

#: Tasks that summarise a suite (shown first, and used for the headline bar chart).
AGGREGATE_TASKS = ("avg", "macro", "weighted", "overall", "turn1", "turn2")
_SUITE_ORDER = ("perplexity", "bbh", "bbh-mini", "humaneval", "humaneval-mini", "mtbench")
_ROLE_ORDER = {"fused": 0, "control": 1, "target": 2, "source": 3, "model": 4}
#: Okabe-Ito (colour-blind safe), then a few extra distinguishable colours.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
           "#999999", "#882255", "#44AA99", "#117733")


# --- what the report is made of -----------------------------------------------------------------


@dataclass
class Member:
    """A model in a run, in its role."""

    model_id: str
    name: str
    role: str
    position: int
    path: str | None


@dataclass
class Cell:
    value: float | None
    stderr: float | None
    n: int | None
    higher_is_better: bool
    suite_version: str
    eval_key: str


@dataclass
class RunView:
    row: dict[str, Any]
    members: list[Member]
    scores: dict[tuple[str, str, str, str], Cell]  # (model_id, suite, task, metric) -> cell
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.row["id"]

    @property
    def label(self) -> str:
        """The run's name; unnamed: its fused model's name (``merge#22c8c0``), else kind and id."""
        fused = [m.name for m in self.members if m.role == "fused"]
        return self.row.get("name") or (fused[0] if fused else f"{self.row.get('kind')} {self.row['id']}")

    @property
    def is_fusion(self) -> bool:
        return any(m.role == "fused" for m in self.members)

    def suites(self) -> set[str]:
        return {s for _, s, _, _ in self.scores}


@dataclass(frozen=True)
class Column:
    suite: str
    version: str
    task: str
    metric: str
    higher_is_better: bool
    label: str


# --- selecting and loading runs -----------------------------------------------------------------


def select_runs(store: Store, refs: list[str] | None) -> list[dict[str, Any]]:
    """The runs given (ids or names), else the newest ok run of each run name; unnamed runs are told
    apart by their run hash (fusion runs) or kind + models + config (eval and score runs)."""
    if refs:
        chosen = {}
        for ref in refs:
            run = store.find_run(ref)
            chosen.setdefault(run["id"], run)
        return list(chosen.values())
    newest = store.latest_ok_runs()
    if not newest:
        raise BenchError(f"no finished (ok) runs in {store.path}",
                         "run `bench run --fuser merge` or `bench eval --model zoo:llama-base` first")
    return newest


def load_runs(store: Store, rows: list[dict[str, Any]], suites: list[str] | None) -> list[RunView]:
    views = []
    for row in rows:
        members = [Member(m["model_id"], m["model"], m["role"], m["position"], m["model_path"])
                   for m in store.run_members(row["id"])]
        scores = {}
        for s in store.score_rows(row["id"]):
            if suites and s["suite"] not in suites:
                continue
            scores[(s["model_id"], s["suite"], s["task"], s["metric"])] = Cell(
                s["value"], s["stderr"], s["n"], bool(s["higher_is_better"]), str(s["suite_version"]), s["eval_key"])
        views.append(RunView(row, members, scores, _loads(row.get("config"))))
    if suites:
        found = set().union(*(v.suites() for v in views))
        missing = [s for s in suites if s not in found]
        if missing:
            raise BenchError(f"no scores for suite(s) {', '.join(missing)} in the selected runs",
                             "drop --suite or pick runs that evaluated it (see `bench runs`)")
        views = [v for v in views if v.scores]
    # Fusion runs first (their groups are the point of the report), then evals and scored predictions.
    return sorted(views, key=lambda v: (not v.is_fusion, v.row.get("started_at") or "", v.id))


def _loads(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def ordered_suites(views: list[RunView]) -> list[str]:
    found = set().union(*(v.suites() for v in views)) if views else set()
    return [s for s in _SUITE_ORDER if s in found] + sorted(found - set(_SUITE_ORDER))


def task_order(tasks: Iterable[str]) -> list[str]:
    """Aggregates first (avg, macro, overall, turns), then the rest by name."""
    return sorted(set(tasks), key=_task_rank)


def _task_rank(task: str) -> tuple[int, str]:
    return (AGGREGATE_TASKS.index(task), "") if task in AGGREGATE_TASKS else (len(AGGREGATE_TASKS), task)


def primary_metric(suite: str, views: list[RunView]) -> str | None:
    """The suite's registered primary metric; for unregistered suites the first metric by name."""
    from evals import PRIMARY_METRIC

    if suite in PRIMARY_METRIC:
        return PRIMARY_METRIC[suite]
    metrics = sorted({m for v in views for _, s, _, m in v.scores if s == suite})
    return metrics[0] if metrics else None


# --- the leaderboard ----------------------------------------------------------------------------


@dataclass
class Row:
    group: str
    run_id: str
    model_id: str
    model: str
    role: str
    values: dict[Column, Cell | None]
    gains: dict[Column, tuple[float, str, float]] = field(default_factory=dict)  # gain, best source, its value


def leaderboard(views: list[RunView]) -> tuple[list[Column], list[Row]]:
    """Columns (each suite's primary metric on its summary tasks) and one row per (run, model)."""
    from evals import SUMMARY_TASKS
    from harness.leaderboard import column_name

    columns = []
    for suite in ordered_suites(views):
        metric = primary_metric(suite, views)
        cells = [(t, c) for v in views for (_, s, t, m), c in v.scores.items() if s == suite and m == metric]
        versions = {c.suite_version for _, c in cells}
        summary = SUMMARY_TASKS.get(suite)
        for version in sorted(versions):
            tasks = {t for t, c in cells if c.suite_version == version and (summary is None or t in summary)}
            for task in (task_order(tasks) if summary is None else [t for t in summary if t in tasks]):
                hib = next(c.higher_is_better for t, c in cells if t == task)
                columns.append(Column(suite, version, task, metric, hib,  # type: ignore[arg-type]
                                      column_name(suite, task, metric, version, versions)))  # type: ignore[arg-type]
    rows = []
    for v in views:
        for m in sorted(v.members, key=lambda m: (_ROLE_ORDER.get(m.role, 9), m.position)):
            values = {c: _cell(v, m.model_id, c) for c in columns}
            if any(x is not None for x in values.values()):
                rows.append(Row(v.label, v.id, m.model_id, m.name, m.role, values))
    for v in views:
        group = [r for r in rows if r.run_id == v.id]
        for fused in (r for r in group if r.role == "fused"):
            fused.gains = _gains(fused, [r for r in group if r.role in ("source", "target")], columns)
    return columns, rows


def _cell(view: RunView, model_id: str, col: Column) -> Cell | None:
    cell = view.scores.get((model_id, col.suite, col.task, col.metric))
    return cell if cell is not None and cell.suite_version == col.version and cell.value is not None else None


def _gains(fused: Row, others: list[Row], columns: list[Column]) -> dict[Column, tuple[float, str, float]]:
    """Per column: (fused - best other) in the better direction, the best other model and its value."""
    out = {}
    for col in columns:
        mine = fused.values.get(col)
        theirs = [(r.values[col].value, r.model) for r in others if r.values.get(col) is not None]  # type: ignore[union-attr]
        if mine is None or not theirs:
            continue
        value, name = (max if col.higher_is_better else min)(theirs)
        sign = 1.0 if col.higher_is_better else -1.0
        out[col] = (sign * (mine.value - value), name, value)  # type: ignore[operator]
    return out


# --- paired comparisons: the fused model against its best source and its control -----------------------


@dataclass
class Comparison:
    """A fused model against another model of its run (the best source, or the data-only control), paired per
    example on one suite's headline task (:mod:`harness.compare`)."""

    run_label: str
    against: str  # "best source" | "control"
    a_model: str
    b_model: str
    suite: str
    task: str
    metric: str
    higher_is_better: bool
    a_value: float
    b_value: float
    diff: Any  # harness.stats.Difference: B − A (B = the fused model)

    @property
    def gain(self) -> float:
        """The fused model's advantage, positive = better."""
        return self.diff.estimate if self.higher_is_better else -self.diff.estimate

    @property
    def gain_interval(self) -> tuple[float, float]:
        lo, hi = self.diff.low, self.diff.high
        return (lo, hi) if self.higher_is_better else (-hi, -lo)

    @property
    def significant(self) -> bool:
        return self.diff.p_value < 1 - self.diff.level


def comparisons(store: Store, views: list[RunView], rows: list[Row], columns: list[Column]) -> list[Comparison]:
    """For every fusion run with per-example samples: its fused model against the best of its target and sources
    on each suite's headline column, and against its control when it has one (over the seeds of its seed group,
    hierarchically, when it belongs to one). Pairs that cannot be made (no samples, other examples) are skipped."""
    from harness import compare as cmp
    from harness.leaderboard import GROUP_COLUMN

    out: list[Comparison] = []
    done: set[tuple[str, str, str, str]] = set()  # a seed group's control comparison is made once, not per seed
    for v in (v for v in views if v.is_fusion):
        group = v.row.get(GROUP_COLUMN)
        fused_row = next((r for r in rows if r.run_id == v.id and r.role == "fused"), None)
        if fused_row is None:
            continue
        for col in columns:
            headline = headline_task(col.suite, [c.task for c in columns if c.suite == col.suite]) == col.task
            if not headline or col not in fused_row.gains:
                continue
            _, best_name, _ = fused_row.gains[col]
            best = next((m for m in v.members if m.name == best_name and m.role in ("source", "target")), None)
            against = [("best source", best.model_id if best else None, best_name)]
            control = next((m for m in v.members if m.role == "control"), None)
            if control is not None:
                against.append(("control", "control", control.name))
            for what, a_ref, a_name in against:
                if a_ref is None:
                    continue
                where = group or v.id  # a seed group: over its seeds
                if (where, what, col.suite, col.task) in done:
                    continue
                done.add((where, what, col.suite, col.task))
                try:
                    result = cmp.compare(store, f"{a_ref}@{where}", f"fused@{where}", [col.suite], resamples=4000)
                except BenchError:
                    continue
                row = next((r for r in result.rows if r.task == col.task and r.metric == col.metric), None)
                if row is not None:
                    label = re.sub(r"@seed\d+$", f" ({row.diff.seeds} seeds)", v.label) if row.diff.seeds > 1 else v.label
                    out.append(Comparison(label, what, a_name, fused_row.model, col.suite, col.task, col.metric,
                                          col.higher_is_better, row.a_value, row.b_value, row.diff))
    return out


def comparison_sentence(c: Comparison) -> str:
    """``fusion term worth +0.0123 [+0.004, +0.021] beyond the data (p = 0.002, 3 seeds)`` and the like."""
    lo, hi = c.gain_interval
    seeds = f", {c.diff.seeds} seeds" if c.diff.seeds > 1 else ""
    what = ("fusion term worth {g} {ci} beyond the data" if c.against == "control"
            else "gain over the best source ({a}) {g} {ci}")
    verdict = "" if c.significant else ": not significant"
    return (what.format(g=_signed(c.gain), ci=f"[{_signed(lo)}, {_signed(hi)}]", a=c.a_model)
            + f" on {c.suite}/{c.task} {c.metric} (p = {c.diff.p_value:.3g}, n = {c.diff.n}{seeds}){verdict}")


def skill_tables(store: Store, views: list[RunView]) -> list[tuple[RunView, Any]]:
    """(run, :class:`harness.inheritance.Inheritance`) for every fusion run whose fused model and sources have
    per-example samples, limited to the suites the report shows; runs with nothing to pair are left out."""
    import dataclasses

    from harness import inheritance

    out = []
    for v in (v for v in views if v.is_fusion):
        try:
            result = inheritance.skill_inheritance(store, v.id, resamples=inheritance.REPORT_RESAMPLES)
        except BenchError:
            continue
        shown = [r for r in result.rows if r.suite in v.suites()]
        if shown:
            out.append((v, dataclasses.replace(result, rows=shown)))
    return out


def best_values(columns: list[Column], rows: list[Row]) -> dict[Column, float]:
    best = {}
    for col in columns:
        values = [r.values[col].value for r in rows if r.values.get(col) is not None]  # type: ignore[union-attr]
        if values:
            best[col] = max(values) if col.higher_is_better else min(values)  # type: ignore[type-var]
    return best


# --- per-suite breakdowns -----------------------------------------------------------------------


@dataclass
class Entry:
    """A model's evaluation on one suite, once: the same (model, eval_key) in several runs is shown once."""

    label: str
    model_id: str
    role: str
    cells: dict[tuple[str, str], Cell]  # (task, metric) -> cell


def breakdown(views: list[RunView], suite: str) -> list[Entry]:
    entries: list[Entry] = []
    seen: set[tuple[str, str]] = set()
    keys_per_model: dict[str, set[str]] = {}
    for v in views:
        for (model_id, s, _, _), cell in v.scores.items():
            if s == suite:
                keys_per_model.setdefault(model_id, set()).add(cell.eval_key)
    for v in views:
        for m in sorted(v.members, key=lambda m: (_ROLE_ORDER.get(m.role, 9), m.position)):
            cells = {(t, k): c for (mid, s, t, k), c in v.scores.items() if mid == m.model_id and s == suite}
            if not cells:
                continue
            key = (m.model_id, next(iter(cells.values())).eval_key)
            if key in seen:
                continue
            seen.add(key)
            label = m.name if len(keys_per_model[m.model_id]) == 1 else f"{m.name} [{v.label}]"
            entries.append(Entry(label, m.model_id, m.role, cells))
    return entries


def suite_caveats(views: list[RunView], suite: str) -> list[str]:
    """The caveats (:func:`harness.registry.run_caveats`) of the selected runs that have scores on ``suite``, each
    line once: MT-Bench rated by a local judge, say."""
    from harness.registry import run_caveats

    notes: list[str] = []
    for v in views:
        if suite in v.suites():
            notes += [line for line in run_caveats(v.config, suite) if line not in notes]
    return notes


def headline_task(suite: str, tasks: Iterable[str]) -> str | None:
    from evals import SUMMARY_TASKS

    tasks = list(tasks)
    for t in [*SUMMARY_TASKS.get(suite, []), *AGGREGATE_TASKS]:
        if t in tasks:
            return t
    return tasks[0] if len(tasks) == 1 else None


def detail_tasks(tasks: Iterable[str]) -> list[str]:
    """The per-task columns worth a grouped bar chart: everything but the aggregates."""
    return sorted(t for t in set(tasks) if t not in AGGREGATE_TASKS)


_SUITE_NOTES = {
    "perplexity": "Bits per byte on held-out text, per domain (lower is better; tokenizer-agnostic).",
    "bbh": "BIG-Bench Hard exact match per task; macro = mean over tasks, weighted = over all items.",
    "bbh-mini": "Offline BBH-format algorithmic tasks, exact match per task; macro = mean over tasks.",
    "mtbench": "MT-Bench-style judge score 1-10, per turn and per category.",
    "humaneval": "HumanEval functional correctness, pass@k (code run in the sandbox).",
    "humaneval-mini": "Offline HumanEval-format one-line function problems, pass@k (code run in the sandbox).",
}
_TASK_TITLES = {"perplexity": "domain", "mtbench": "category / turn"}
_SKILL_RULE = ("Per task, the fused model against the best of its run's sources (target included) on the suite's "
               "primary metric, paired per example (95% bootstrap interval of fused − best source, in the metric's "
               "units). Verdict: no skill = the best source is not better than the worst beyond noise (nothing to "
               "inherit); gained = fused better than the best source; lost = fused worse than the best source and "
               "not better than the worst; partly = worse than the best but better than the worst; inherited = no "
               "difference from the best source beyond noise")


# --- training curves ----------------------------------------------------------------------------


@dataclass
class Curve:
    name: str         # the logged quantity, e.g. "loss"
    label: str        # series label: model (run)
    steps: list[float]
    values: list[float]
    origin: str       # where it came from, shown under the plot


def training_curves(store: Store, views: list[RunView]) -> list[Curve]:
    """Curves from the ``train_log`` table when present, and from zoo members' cards on this machine."""
    curves: list[Curve] = []
    names = {m.model_id: m.name for v in views for m in v.members}
    labels = {v.id: v.label for v in views}
    series: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for r in store.train_log([v.id for v in views]):
        if r["value"] is not None and r["step"] is not None:
            series.setdefault((r["run_id"], r["model_id"], r["name"]), []).append((r["step"], r["value"]))
    for (run_id, model_id, name), points in series.items():
        curves.append(Curve(name, f"{names.get(model_id, model_id)} ({labels[run_id]})",
                            [p[0] for p in points], [p[1] for p in points], "train_log table"))
    seen: set[str] = set()
    for v in views:
        for m in v.members:
            if m.model_id in seen or not m.path:
                continue
            seen.add(m.model_id)
            curve = _zoo_card_curve(Path(m.path), m.name)
            if curve:
                curves.append(curve)
    return curves


def _zoo_card_curve(folder: Path, name: str) -> Curve | None:
    """The ~11-point loss curve a zoo member's card keeps, at the steps :func:`harness.zoo._curve` picked."""
    card = folder / "zoo.json"
    if not card.is_file():
        return None
    train = _loads(card.read_text()).get("train") or {}
    losses, steps = train.get("loss_curve") or [], train.get("steps")
    if len(losses) < 2 or not steps:
        return None
    idx = sorted({round(i * (steps - 1) / (len(losses) - 1)) for i in range(len(losses))})
    if len(idx) != len(losses):
        idx = [round(i * (steps - 1) / (len(losses) - 1)) for i in range(len(losses))]
    return Curve("loss", name, [i + 1 for i in idx], list(losses), "zoo member card (zoo.json)")


# --- writing ------------------------------------------------------------------------------------


def write(store: Store, out: Path, *, runs: list[str] | None = None, suites: list[str] | None = None,
          fmt: str = "html") -> Path:
    """Build the report for the selected runs and write ``out/report.html`` (or ``report.md``)."""
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file", "give a folder; the report is written into it")
    views = load_runs(store, select_runs(store, runs), suites)
    if not any(v.scores for v in views):
        raise BenchError("the selected runs have no scores", "pick runs that evaluated a suite (see `bench runs`)")
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "markdown":
        path = out / "report.md"
        path.write_text(render_markdown(store, views))
    else:
        path = out / "report.html"
        path.write_text(render_html(store, views))
    return path


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _signed(x: float) -> str:
    return f"{x:+.4f}"


def _duration(row: dict[str, Any]) -> str:
    try:
        start = dt.datetime.fromisoformat(row["started_at"])
        end = dt.datetime.fromisoformat(row["finished_at"])
    except (TypeError, ValueError):
        return "-"
    return f"{(end - start).total_seconds():.0f} s"


# --- Markdown -----------------------------------------------------------------------------------


def render_markdown(store: Store, views: list[RunView]) -> str:
    """Tables only (plots are in the HTML report): pastes into a PR, an issue or a paper draft. Every string from
    the DB goes through :mod:`harness.markdown` (text or code span), so none of it can become markup."""
    columns, rows = leaderboard(views)
    best = best_values(columns, rows)
    out = ["# FuseBench report", "",
           f"{len(views)} run(s) from {md.code(store.path)}, generated {_now()}. "
           "Best per column in **bold**; ↑ higher is better, ↓ lower is better; "
           "*gain* = fused model minus the best of its run's target and sources, positive = better.", "",
           "## Leaderboard", ""]
    header = ["group", "model", "role"] + [f"{md.escape(c.label)} {'↑' if c.higher_is_better else '↓'}" for c in columns]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = []
        for c in columns:
            cell = r.values.get(c)
            text = _fmt(cell.value if cell else None)
            cells.append(f"**{text}**" if cell is not None and cell.value == best.get(c) else text)
        out.append("| " + " | ".join([md.escape(r.group), md.escape(r.model), md.escape(r.role), *cells]) + " |")
        if r.gains:
            gains = [f"{_signed(r.gains[c][0])}" if c in r.gains else "" for c in columns]
            out.append("| " + " | ".join(["", "*gain over best source*", "", *gains]) + " |")
    found = comparisons(store, views, rows, columns)
    if found:
        out += ["", "## Fused models, paired per example", "",
                "Gain = the fused model's advantage (positive = better) with its 95% paired-bootstrap interval and "
                "sign-flip p-value (`bench compare`).", ""]
        out += [f"- {md.escape(c.run_label)}: {md.escape(comparison_sentence(c))}" for c in found]
    skills = skill_tables(store, views)
    if skills:
        out += ["", "## Skill inheritance", "", f"{_SKILL_RULE} (`bench skills RUN`).", ""]
        for v, result in skills:
            out += [f"### {md.escape(v.label)}: {md.escape(result.fused.model)}", "",
                    "| suite | task | metric | verdict | best source | best | fused | fused − best | 95% CI | n |",
                    "|---|---|---|---|---|---|---|---|---|---|"]
            for r in result.rows:
                out.append(f"| {md.escape(r.suite)} | {md.escape(r.task)} | {md.escape(r.metric)} "
                           f"{'↑' if r.higher_is_better else '↓'} | **{r.verdict}** | {md.escape(r.best_source)} | "
                           f"{_fmt(r.best_score)} | {_fmt(r.fused_score)} | {_signed(r.versus_best.estimate)} | "
                           f"[{_signed(r.versus_best.low)}, {_signed(r.versus_best.high)}] | {r.n} |")
            out += [f"- {md.escape(n)}" for n in result.notes]
    for suite in ordered_suites(views):
        metric = primary_metric(suite, views)
        entries = breakdown(views, suite)
        tasks = task_order({t for e in entries for (t, m) in e.cells if m == metric})
        out += ["", f"## {md.escape(suite)}: {md.escape(metric)} per {_TASK_TITLES.get(suite, 'task')}", "",
                _SUITE_NOTES.get(suite, ""), ""]
        out += [line for note in suite_caveats(views, suite) for line in (f"**Note:** {md.escape(note)}", "")]
        out += ["| model | role | " + " | ".join(md.escape(t) for t in tasks) + " |", "|" + "---|" * (len(tasks) + 2)]
        for e in entries:
            vals = [_fmt_se(e.cells.get((t, metric))) for t in tasks]  # type: ignore[arg-type]
            out.append(f"| {md.escape(e.label)} | {md.escape(e.role)} | " + " | ".join(vals) + " |")
    out += ["", "## Provenance", ""]
    for v in views:
        row, versions = v.row, _loads(v.row.get("versions"))
        dirty = " (dirty)" if row.get("git_dirty") else ""
        versions.setdefault("python", _loads(row.get("host")).get("python"))
        pkgs = ", ".join(f"{k} {versions[k]}" for k in ("python", "torch", "transformers", "lm-eval") if versions.get(k))
        out += [f"### {md.escape(v.label)}", "",
                f"- run {md.code(v.id)}, {md.escape(row.get('kind'))}"
                + (f", fuser {md.code(row['fuser'])}" if row.get("fuser") else ""),
                f"- command: {md.code(row.get('command') or '-')}",
                f"- git: {md.code(row.get('git_sha') or '-')}{dirty}; {md.escape(pkgs or 'versions not recorded')}",
                f"- started {md.escape(row.get('started_at'))}, took {_duration(row)}", "",
                # JSON cannot close the fence: every line of json.dumps(indent=1) starts with a space and a quote,
                # a bracket or a brace, and newlines inside strings are written as \n
                "```json", json.dumps(v.config, indent=1, sort_keys=True), "```", ""]
    return "\n".join(out).rstrip() + "\n"


def _fmt_se(cell: Cell | None) -> str:
    if cell is None or cell.value is None:
        return "-"
    return f"{cell.value:.4f} ± {cell.stderr:.4f}" if cell.stderr is not None else f"{cell.value:.4f}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --- HTML ---------------------------------------------------------------------------------------

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_CSS = """
:root { --fg: #1d2330; --muted: #5d6675; --line: #d9dee7; --bg: #ffffff; --soft: #f4f6fa; --best: #fff1c2;
        --pos: #11734b; --neg: #b3261e; --accent: #0072B2; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; }
main { max-width: 1320px; margin: 0 auto; padding: 20px 28px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.meta, p.note, .muted { color: var(--muted); }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0 14px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 4px 9px; text-align: right; vertical-align: top; white-space: nowrap; }
.scroll { overflow-x: auto; max-width: 100%; }
pre, td.wrap { white-space: pre-wrap; }
th { background: var(--soft); font-weight: 600; }
td.t, th.t { text-align: left; }
tr.group-start td { border-top: 2px solid #9aa3b2; }
tr.fused td { background: #f3f8fd; }
td.best { background: var(--best); font-weight: 700; }
.star { color: #b07d00; }
.gain { display: block; font-size: 12px; font-weight: 600; }
.gain.pos { color: var(--pos); } .gain.neg { color: var(--neg); } .gain.zero { color: var(--muted); }
.role { display: inline-block; font-size: 11px; padding: 0 6px; border-radius: 8px; background: #e8ebf1; }
.role.fused { background: var(--accent); color: #fff; }
.role.target { background: #d9ecd9; }
.se { color: var(--muted); font-size: 12px; }
.plots { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px; background: #fff; }
figcaption { font-size: 12px; color: var(--muted); padding: 2px 4px; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
details { margin: 6px 0 10px; } summary { cursor: pointer; color: var(--accent); }
pre { background: var(--soft); padding: 8px 10px; border-radius: 4px; overflow-x: auto; font-size: 12px; }
.bar { background: #9cc3e4; height: 10px; display: inline-block; vertical-align: middle; }
.error { color: var(--neg); }
p.caveat { background: var(--best); border-left: 4px solid #b07d00; padding: 6px 10px; color: #5c4200; }
.verdict { display: inline-block; font-weight: 600; padding: 0 7px; border-radius: 8px; }
.verdict.gained { background: #cdebd9; color: var(--pos); } .verdict.inherited { background: #e6f2e9; color: #2e6b3f; }
.verdict.partly { background: var(--best); color: #7a5600; } .verdict.lost { background: #f8dcd9; color: var(--neg); }
.verdict.no-skill { background: #eceff3; color: var(--muted); font-weight: 400; }
"""


def render_html(store: Store, views: list[RunView]) -> str:
    columns, rows = leaderboard(views)
    suites = ordered_suites(views)
    curves = training_curves(store, views)
    skills = skill_tables(store, views)
    nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in
                  [("leaderboard", "Leaderboard"), *([("skills", "Skill inheritance")] if skills else []),
                   *((f"suite-{_slug(s)}", s) for s in suites),
                   ("training", "Training curves"), ("provenance", "Provenance")])
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>FuseBench report: {html.escape(', '.join(v.label for v in views))}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<header><h1>FuseBench report</h1>",
        f'<p class="meta">{len(views)} run(s), {len({r.model_id for r in rows})} model(s) from '
        f"<code>{html.escape(str(store.path))}</code> · generated {_now()}</p>",
        f"<nav>{nav}</nav></header>",
        _html_leaderboard(columns, rows),
        _html_comparisons(comparisons(store, views, rows, columns)),
        _html_skills(skills),
        *(_html_suite(views, s) for s in suites),
        _html_training(curves),
        _html_provenance(views),
        '<footer><p class="muted">Written by <code>bench report</code>. Self-contained: no scripts, '
        "no network; plots are inline SVG.</p></footer>",
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _html_comparisons(found: list[Comparison]) -> str:
    """Each fused model's gain over its best source and over its control, with the paired 95% interval."""
    if not found:
        return ""
    e = html.escape
    items = "".join(f'<li class="{"sig" if c.significant else "nsig"}"><b>{e(c.run_label)}</b>: '
                    f"{e(comparison_sentence(c))}</li>" for c in found)
    return ('<section id="comparisons"><h2>Fused models, paired per example</h2><p class="note">Gain = the fused '
            "model's advantage (positive = better), with its 95% paired-bootstrap interval and sign-flip p-value "
            "(<code>bench compare</code>); for a seed group, over its seeds (hierarchical bootstrap). "
            f"A training fuser's headline is its gain over the data-only control.</p><ul>{items}</ul></section>")


def _html_skills(found: list[tuple[RunView, Any]]) -> str:
    """Per fusion run, a table of its tasks: the verdict (a word on a coloured badge), the best source, the scores
    and the paired interval of fused − best source."""
    if not found:
        return ""
    e = html.escape
    blocks = []
    for v, result in found:
        body = []
        for r in result.rows:
            spread = ("single source" if r.source_spread is None else
                      f"{_signed(r.source_spread.estimate)} [{_signed(r.source_spread.low)}, "
                      f"{_signed(r.source_spread.high)}] vs {r.worst_source} ({_fmt(r.worst_score)})")
            body.append(f'<tr><td class="t">{e(r.suite)}</td><td class="t">{e(r.task)}</td>'
                        f'<td class="t">{e(r.metric)} {"↑" if r.higher_is_better else "↓"}</td>'
                        f'<td class="t"><span class="verdict {_slug(r.verdict)}">{e(r.verdict)}</span></td>'
                        f'<td class="t">{e(r.best_source)}</td><td>{_fmt(r.best_score)}</td><td>{_fmt(r.fused_score)}</td>'
                        f"<td>{_signed(r.versus_best.estimate)}</td>"
                        f"<td>[{_signed(r.versus_best.low)}, {_signed(r.versus_best.high)}]</td><td>{r.n}</td>"
                        f'<td class="t">{e(spread)}</td></tr>')
        notes = "".join(f'<p class="note">{e(n)}</p>' for n in result.notes)
        blocks.append(f"<h3>{e(v.label)}: {e(result.fused.model)}</h3>"
                      f'<div class="scroll"><table class="skills" id="skills-{_slug(v.id)}"><thead><tr>'
                      '<th class="t">suite</th><th class="t">task</th><th class="t">metric</th><th class="t">verdict</th>'
                      '<th class="t">best source</th><th>best</th><th>fused</th><th>fused − best</th><th>95% CI</th>'
                      '<th>n</th><th class="t">best − worst source (95% CI)</th></tr></thead>'
                      f"<tbody>{''.join(body)}</tbody></table></div>{notes}")
    return (f'<section id="skills"><h2>Skill inheritance</h2><p class="note">{e(_SKILL_RULE)} '
            "(<code>bench skills RUN</code>).</p>"
            f"{''.join(blocks)}</section>")


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower())


def _html_leaderboard(columns: list[Column], rows: list[Row]) -> str:
    best = best_values(columns, rows)
    e = html.escape
    suites_in_order = list(dict.fromkeys(c.suite for c in columns))
    head1 = '<tr><th class="t" rowspan="2">group</th><th class="t" rowspan="2">model</th><th class="t" rowspan="2">role</th>'
    head1 += "".join(f'<th colspan="{sum(c.suite == s for c in columns)}">{e(s)}</th>' for s in suites_in_order) + "</tr>"
    head2 = "<tr>" + "".join(f'<th title="{e(c.label)}">{e(c.label.split("/", 1)[1])} '
                             f"{'↑' if c.higher_is_better else '↓'}</th>" for c in columns) + "</tr>"
    body, prev = [], None
    for r in rows:
        classes = [c for c in ("group-start" if prev is not None and r.run_id != prev else "",
                               "fused" if r.role == "fused" else "") if c]
        prev = r.run_id
        cells = []
        for c in columns:
            cell = r.values.get(c)
            if cell is None:
                cells.append("<td>-</td>")
                continue
            is_best = cell.value == best.get(c)
            se = f" ± {cell.stderr:.4f}" if cell.stderr is not None else ""
            inner = f'<span title="n={cell.n}{se}">{_fmt(cell.value)}</span>' + (' <span class="star">★</span>' if is_best else "")
            if c in r.gains:
                gain, name, value = r.gains[c]
                kind = "pos" if gain > 0 else "neg" if gain < 0 else "zero"
                inner += (f'<span class="gain {kind}" title="vs best source {e(name)} ({_fmt(value)})">'
                          f"{'▲' if gain > 0 else '▼' if gain < 0 else '='} {_signed(gain)}</span>")
            cells.append(f'<td class="{"best" if is_best else ""}">{inner}</td>')
        body.append(f'<tr class="{" ".join(classes)}"><td class="t">{e(r.group)}</td><td class="t">{e(r.model)}</td>'
                    f'<td class="t"><span class="role {e(r.role)}">{e(r.role)}</span></td>{"".join(cells)}</tr>')
    return ('<section id="leaderboard"><h2>Leaderboard</h2>'
            '<p class="note">Each suite\'s primary metric on its summary tasks. ★ best per column '
            "(↑ higher is better, ↓ lower is better). Fused models head their run's group, followed by the "
            "target and sources; the coloured line under a fused model's value is its <b>gain over the best source</b> "
            "of that run (target included), positive = better. Hover a value for n and its standard error.</p>"
            f'<div class="scroll"><table id="leaderboard-table" class="leaderboard"><thead>{head1}{head2}</thead>'
            f"<tbody>{''.join(body)}</tbody></table></div></section>")


def _html_suite(views: list[RunView], suite: str) -> str:
    e = html.escape
    metric = primary_metric(suite, views)
    entries = breakdown(views, suite)
    tasks = task_order({t for en in entries for (t, m) in en.cells if m == metric})
    colors = _colors([en.model_id for en in entries])
    hib = next((c.higher_is_better for en in entries for (t, m), c in en.cells.items() if m == metric), True)
    direction = "higher is better" if hib else "lower is better"
    plots = []
    head = headline_task(suite, tasks)
    if head is not None:
        bars = [(en.label, en.cells[(head, metric)].value, _err(en.cells[(head, metric)]), colors[en.model_id],
                 en.role == "fused") for en in entries if (head, metric) in en.cells]  # type: ignore[index]
        plots.append(hbar_chart(f"{suite} · {head} · {metric}", bars, f"{metric} ({direction})"))
    details = detail_tasks(tasks)
    if suite == "mtbench":
        details = [t for t in details if t.startswith("category/")]
    if len(details) >= 2:
        series = [(en.label, [_val(en.cells.get((t, metric))) for t in details],  # type: ignore[arg-type]
                   [_err(en.cells.get((t, metric))) for t in details], colors[en.model_id]) for en in entries]  # type: ignore[arg-type]
        what = "per domain" if suite == "perplexity" else "per task"
        plots.append(grouped_bar_chart(f"{suite} · {metric} {what}", [t.removeprefix("category/") for t in details],
                                       series, f"{metric} ({direction})"))
    best = {}
    for t in tasks:
        vals = [en.cells[(t, metric)].value for en in entries if (t, metric) in en.cells]  # type: ignore[index]
        vals = [v for v in vals if v is not None]
        if vals:
            best[t] = max(vals) if hib else min(vals)
    head_row = "".join(f"<th>{e(t)}</th>" for t in tasks)
    body = []
    for en in entries:
        cells = []
        for t in tasks:
            cell = en.cells.get((t, metric))  # type: ignore[arg-type]
            if cell is None or cell.value is None:
                cells.append("<td>-</td>")
                continue
            se = f' <span class="se">± {cell.stderr:.4f}</span>' if cell.stderr is not None else ""
            cls = ' class="best"' if cell.value == best.get(t) else ""
            cells.append(f"<td{cls}>{_fmt(cell.value)}{se}</td>")
        body.append(f'<tr><td class="t"><span style="color:{colors[en.model_id]}">■</span> {e(en.label)}</td>'
                    f'<td class="t"><span class="role {e(en.role)}">{e(en.role)}</span></td>{"".join(cells)}</tr>')
    everything = _html_all_metrics(entries)
    caveats = "".join(f'<p class="caveat">⚠ {e(line)}</p>' for line in suite_caveats(views, suite))
    return (f'<section id="suite-{_slug(suite)}"><h2>{e(suite)}</h2><p class="note">{e(_SUITE_NOTES.get(suite, ""))} '
            f"Primary metric <code>{e(str(metric))}</code> ({direction}) ± standard error in the tables; error bars "
            f'are 95% intervals; the best per column is highlighted.</p>{caveats}<div class="plots">{"".join(plots)}</div>'
            f'<div class="scroll"><table class="breakdown"><thead><tr><th class="t">model</th><th class="t">role</th>'
            f"{head_row}</tr></thead><tbody>{''.join(body)}</tbody></table></div>{everything}</section>")


def _html_all_metrics(entries: list[Entry]) -> str:
    e = html.escape
    rows = []
    for en in entries:
        for (task, metric) in sorted(en.cells, key=lambda k: (_task_rank(k[0]), k)):
            c = en.cells[(task, metric)]
            rows.append(f'<tr><td class="t">{e(en.label)}</td><td class="t">{e(task)}</td><td class="t">{e(metric)}</td>'
                        f"<td>{_fmt(c.value)}</td><td>{_fmt(c.stderr)}</td><td>{c.n if c.n is not None else '-'}</td>"
                        f"<td>{'↑' if c.higher_is_better else '↓'}</td></tr>")
    return ("<details><summary>every metric</summary><table><thead><tr><th class=\"t\">model</th><th class=\"t\">task</th>"
            '<th class="t">metric</th><th>value</th><th>stderr</th><th>n</th><th>better</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></details>")


def _html_training(curves: list[Curve]) -> str:
    if not curves:
        return ('<section id="training"><h2>Training curves</h2><p class="note">None recorded: the DB has no '
                "<code>train_log</code> table (or no rows for these runs) and no model folder here has a zoo card "
                "with a loss curve.</p></section>")
    plots = []
    by_kind: dict[tuple[str, str], list[Curve]] = {}
    for c in curves:
        by_kind.setdefault((c.origin, c.name), []).append(c)
    for (origin, name), group in by_kind.items():
        colors = _colors([c.label for c in group])
        plots.append(line_chart(f"{name} · {origin}", [(c.label, c.steps, c.values, colors[c.label]) for c in group],
                                "step", name))
    return ('<section id="training"><h2>Training curves</h2><p class="note">From the <code>train_log</code> table '
            "(run_id, model_id, step, name, value) when the DB has one, and from the loss curves the zoo keeps in "
            f'each member\'s card.</p><div class="plots">{"".join(plots)}</div></section>')


def _html_provenance(views: list[RunView]) -> str:
    e = html.escape
    overview = []
    for v in views:
        r = v.row
        sha = (r.get("git_sha") or "-")[:10] + (" (dirty)" if r.get("git_dirty") else "")
        overview.append(f'<tr><td class="t"><a href="#run-{_slug(v.id)}">{e(v.id)}</a></td><td class="t">{e(v.label)}</td>'
                        f'<td class="t">{e(r.get("kind") or "")}</td><td class="t">{e(r.get("fuser") or "-")}</td>'
                        f'<td class="t">{e(r.get("status") or "")}</td><td class="t">{e(r.get("started_at") or "")}</td>'
                        f'<td>{_duration(r)}</td><td class="t"><code>{e(sha)}</code></td></tr>')
    blocks = [_html_run(v) for v in views]
    return ('<section id="provenance"><h2>Provenance</h2><table><thead><tr><th class="t">run</th><th class="t">name</th>'
            '<th class="t">kind</th><th class="t">fuser</th><th class="t">status</th><th class="t">started</th>'
            f'<th>wall</th><th class="t">git</th></tr></thead><tbody>{"".join(overview)}</tbody></table>'
            f"{''.join(blocks)}</section>")


def _html_run(v: RunView) -> str:
    e = html.escape
    r = v.row
    facts = [("command", r.get("command")), ("kind", r.get("kind")), ("fuser", r.get("fuser")),
             ("sources", ", ".join(json.loads(r.get("sources") or "[]") or [])), ("target", r.get("target")),
             ("models", ", ".join(f"{m.name} ({m.role})" for m in v.members)),
             ("git", f"{r.get('git_sha') or '-'}{' (dirty: uncommitted changes)' if r.get('git_dirty') else ''}"),
             ("run hash", r.get("run_hash")), ("started", r.get("started_at")), ("finished", r.get("finished_at")),
             ("status", r.get("status"))]
    fact_rows = "".join(f'<tr><th class="t">{e(k)}</th><td class="t wrap">{e(str(val))}</td></tr>'
                        for k, val in facts if val not in (None, ""))
    timings = _loads(r.get("timings"))
    total = max(timings.values(), default=0.0) or 1.0
    timing_rows = "".join(
        f'<tr><td class="t">{e(stage)}</td><td>{secs:.3f}</td>'
        f'<td class="t"><span class="bar" style="width:{max(1, round(220 * secs / total))}px"></span></td></tr>'
        for stage, secs in timings.items() if isinstance(secs, (int, float)))
    versions, host = _loads(r.get("versions")), _loads(r.get("host"))
    kv = lambda d: "".join(f'<tr><td class="t">{e(str(k))}</td><td class="t">{e(str(x))}</td></tr>'  # noqa: E731
                           for k, x in sorted(d.items()))
    error = f'<p class="error">{e(r["error"])}</p>' if r.get("error") else ""
    return (f'<details id="run-{_slug(v.id)}"><summary>{e(v.label)} · {e(v.id)}</summary>{error}'
            f'<table>{fact_rows}</table><div class="plots">'
            f'<div><h3>timings (s)</h3><table>{timing_rows or "<tr><td>none recorded</td></tr>"}</table></div>'
            f"<div><h3>versions</h3><table>{kv(versions)}</table></div><div><h3>host</h3><table>{kv(host)}</table></div>"
            f"</div><h3>config</h3><pre>{e(json.dumps(v.config, indent=1, sort_keys=True))}</pre></details>")


def _val(cell: Cell | None) -> float | None:
    return None if cell is None else cell.value


def _err(cell: Cell | None) -> float | None:
    """The error bar: the half-width of the value's 95% interval (as the leaderboard's ±), None without a stderr."""
    if cell is None or cell.stderr is None or cell.value is None:
        return None
    from harness import stats

    return stats.Estimate(cell.value, cell.stderr).half_width(stats.DEFAULT_LEVEL)


def _colors(keys: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k in keys:
        out.setdefault(k, PALETTE[len(out) % len(PALETTE)])
    return out


# --- SVG plots (hand-written: no plotting library, no scripts) ----------------------------------


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi - lo < 1e-12:  # one value (all scores 0, say): an axis from 0 that shows it
        lo, hi = (0.0, 1.0) if lo == 0 else (min(0.0, lo * 1.1), max(0.0, hi * 1.1))
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw - 1e-15)
    start = math.floor(lo / step + 1e-9) * step
    ticks = []
    t = start
    while t < hi + step * 0.999:
        ticks.append(round(t, 10))
        t += step
    return ticks if len(ticks) >= 2 else [start, start + step]


def _tick_label(t: float) -> str:
    return f"{t:.4g}"


def _svg(width: float, height: float, title: str, body: list[str], caption: str | None = None) -> str:
    e = html.escape
    svg = (f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{e(title)}">'
           f'<text x="10" y="20" font-size="14" font-weight="600" fill="#1d2330">{e(title)}</text>{"".join(body)}</svg>')
    return f"<figure>{svg}" + (f"<figcaption>{e(caption)}</figcaption>" if caption else "") + "</figure>"


def _trunc(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def hbar_chart(title: str, bars: list[tuple[str, float | None, float | None, str, bool]], axis_label: str) -> str:
    """Horizontal bars (label, value, stderr, colour, emphasised) with ±1 stderr whiskers."""
    e = html.escape
    bars = [b for b in bars if b[1] is not None and math.isfinite(b[1])]
    left, top, row_h, width = 190, 34, 26, 640
    plot_w = width - left - 80  # 80 px on the right for the value labels
    height = top + row_h * max(1, len(bars)) + 44
    ends = [b[1] + (b[2] or 0) for b in bars] + [b[1] for b in bars]  # type: ignore[operator]
    ticks = nice_ticks(min([0.0, *ends]), max([0.0, *ends]))
    lo, hi = ticks[0], ticks[-1]
    x = lambda v: left + (v - lo) / (hi - lo) * plot_w  # noqa: E731
    body = []
    bottom = top + row_h * max(1, len(bars))
    for t in ticks:
        body.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{bottom}" stroke="#e3e7ee"/>'
                    f'<text x="{x(t):.1f}" y="{bottom + 15}" font-size="11" text-anchor="middle" fill="#5d6675">'
                    f"{_tick_label(t)}</text>")
    for i, (label, value, err, color, strong) in enumerate(bars):
        y = top + i * row_h
        x0, x1 = x(max(lo, 0.0)), x(value)  # type: ignore[arg-type]
        weight = ' font-weight="700"' if strong else ""
        body.append(f'<text x="{left - 8}" y="{y + 17}" font-size="12" text-anchor="end" fill="#1d2330"{weight}>'
                    f"{e(_trunc(label, 28))}</text>"
                    f'<rect x="{min(x0, x1):.1f}" y="{y + 5}" width="{abs(x1 - x0):.1f}" height="{row_h - 10}" '
                    f'fill="{color}" opacity="{0.95 if strong else 0.75}"><title>{e(label)}: {_fmt(value)}'
                    f'{f" ± {err:.4f}" if err else ""}</title></rect>')
        if err:
            a, b = x(value - err), x(value + err)  # type: ignore[operator]
            ym = y + row_h / 2
            body.append(f'<path d="M{a:.1f},{ym:.1f}H{b:.1f}M{a:.1f},{ym - 4:.1f}V{ym + 4:.1f}M{b:.1f},{ym - 4:.1f}'
                        f'V{ym + 4:.1f}" stroke="#1d2330" stroke-width="1.2" fill="none"/>')
        tx = max(x1, x((value + err) if err else value)) + 6  # type: ignore[operator]
        body.append(f'<text x="{tx:.1f}" y="{y + 17}" font-size="11" fill="#1d2330">{_fmt(value)}</text>')
    body.append(f'<line x1="{x(max(lo, 0.0)):.1f}" y1="{top}" x2="{x(max(lo, 0.0)):.1f}" y2="{bottom}" stroke="#5d6675"/>'
                f'<text x="{left + plot_w / 2:.1f}" y="{bottom + 33}" font-size="12" text-anchor="middle" '
                f'fill="#5d6675">{e(axis_label)}</text>')
    return _svg(width, height, title, body, "bars: value; whiskers: ±1 standard error")


def grouped_bar_chart(title: str, categories: list[str],
                      series: list[tuple[str, list[float | None], list[float | None], str]], axis_label: str) -> str:
    """Vertical bars, one group per category, one bar per series, ±1 stderr whiskers, legend below."""
    e = html.escape
    k = max(1, len(series))
    bar_w = max(6.0, min(22.0, 150.0 / k))
    group_w = bar_w * k + 18
    left, top, plot_h = 62, 36, 210
    plot_w = max(420.0, group_w * len(categories))
    width = left + plot_w + 20
    legend_cols = max(1, min(3, int((max(420.0, group_w * len(categories)) - 10) // 170)))
    legend_rows = math.ceil(len(series) / legend_cols)
    height = top + plot_h + 48 + 18 * legend_rows + 8
    values = [v + (err or 0) for _, vals, errs, _ in series for v, err in zip(vals, errs, strict=True) if v is not None]
    ticks = nice_ticks(min([0.0, *values]), max([0.0, *values]) if values else 1.0)
    lo, hi = ticks[0], ticks[-1]
    y = lambda v: top + plot_h - (v - lo) / (hi - lo) * plot_h  # noqa: E731
    body = []
    for t in ticks:
        body.append(f'<line x1="{left}" y1="{y(t):.1f}" x2="{left + plot_w:.1f}" y2="{y(t):.1f}" stroke="#e3e7ee"/>'
                    f'<text x="{left - 6}" y="{y(t) + 4:.1f}" font-size="11" text-anchor="end" fill="#5d6675">'
                    f"{_tick_label(t)}</text>")
    slot = plot_w / max(1, len(categories))
    for ci, cat in enumerate(categories):
        gx = left + ci * slot + (slot - bar_w * k) / 2
        for si, (name, vals, errs, color) in enumerate(series):
            v, err = vals[ci], errs[ci]
            if v is None or not math.isfinite(v):
                continue
            bx = gx + si * bar_w
            y0, y1 = y(max(lo, 0.0)), y(v)
            body.append(f'<rect x="{bx:.1f}" y="{min(y0, y1):.1f}" width="{bar_w - 2:.1f}" height="{abs(y0 - y1):.1f}" '
                        f'fill="{color}" opacity="0.85"><title>{e(name)} · {e(cat)}: {_fmt(v)}'
                        f'{f" ± {err:.4f}" if err else ""}</title></rect>')
            if err:
                cx = bx + (bar_w - 2) / 2
                body.append(f'<path d="M{cx:.1f},{y(v - err):.1f}V{y(v + err):.1f}M{cx - 3:.1f},{y(v + err):.1f}'
                            f'H{cx + 3:.1f}M{cx - 3:.1f},{y(v - err):.1f}H{cx + 3:.1f}" stroke="#1d2330" '
                            f'stroke-width="1" fill="none"/>')
        body.append(f'<text x="{left + ci * slot + slot / 2:.1f}" y="{top + plot_h + 16}" font-size="12" '
                    f'text-anchor="middle" fill="#1d2330">{e(_trunc(cat, max(6, int(slot / 7))))}</text>')
    body.append(f'<line x1="{left}" y1="{y(max(lo, 0.0)):.1f}" x2="{left + plot_w:.1f}" y2="{y(max(lo, 0.0)):.1f}" '
                f'stroke="#5d6675"/><text x="14" y="{top + plot_h / 2:.1f}" font-size="12" fill="#5d6675" '
                f'text-anchor="middle" transform="rotate(-90 14 {top + plot_h / 2:.1f})">{e(_trunc(axis_label, 40))}</text>')
    body += _legend([(name, color) for name, _, _, color in series], left, top + plot_h + 34, legend_cols)
    return _svg(width, height, title, body, "bars: value; whiskers: ±1 standard error")


def line_chart(title: str, series: list[tuple[str, list[float], list[float], str]], x_label: str, y_label: str) -> str:
    """Lines with point markers; legend below."""
    e = html.escape
    left, top, plot_w, plot_h = 62, 36, 520, 220
    width = left + plot_w + 24
    height = top + plot_h + 50 + 18 * math.ceil(len(series) / 3) + 8
    xs = [v for _, s, _, _ in series for v in s]
    ys = [v for _, _, s, _ in series for v in s if v is not None and math.isfinite(v)]
    xt = nice_ticks(min(xs, default=0.0), max(xs, default=1.0))
    yt = nice_ticks(min(ys, default=0.0), max(ys, default=1.0))
    x = lambda v: left + (v - xt[0]) / (xt[-1] - xt[0]) * plot_w  # noqa: E731
    y = lambda v: top + plot_h - (v - yt[0]) / (yt[-1] - yt[0]) * plot_h  # noqa: E731
    body = []
    for t in yt:
        body.append(f'<line x1="{left}" y1="{y(t):.1f}" x2="{left + plot_w}" y2="{y(t):.1f}" stroke="#e3e7ee"/>'
                    f'<text x="{left - 6}" y="{y(t) + 4:.1f}" font-size="11" text-anchor="end" fill="#5d6675">'
                    f"{_tick_label(t)}</text>")
    for t in xt:
        body.append(f'<text x="{x(t):.1f}" y="{top + plot_h + 15}" font-size="11" text-anchor="middle" '
                    f'fill="#5d6675">{_tick_label(t)}</text>')
    for name, sx, sy, color in series:
        pts = [(x(a), y(b)) for a, b in zip(sx, sy, strict=True) if b is not None and math.isfinite(b)]
        if not pts:
            continue
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
        body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"><title>{e(name)}</title></polyline>')
        if len(pts) <= 60:
            body += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.6" fill="{color}"/>' for px, py in pts]
    body.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#5d6675"/>'
                f'<text x="{left + plot_w / 2}" y="{top + plot_h + 32}" font-size="12" text-anchor="middle" '
                f'fill="#5d6675">{e(x_label)}</text><text x="14" y="{top + plot_h / 2}" font-size="12" fill="#5d6675" '
                f'text-anchor="middle" transform="rotate(-90 14 {top + plot_h / 2})">{e(y_label)}</text>')
    body += _legend([(name, color) for name, _, _, color in series], left, top + plot_h + 48)
    return _svg(width, height, title, body)


def _legend(items: list[tuple[str, str]], x0: float, y0: float, cols: int = 3) -> list[str]:
    """Colour keys in ``cols`` columns of 170 px (the charts reserve one 18 px row per ``cols`` items)."""
    out = []
    for i, (name, color) in enumerate(items):
        x, y = x0 + (i % cols) * 170, y0 + (i // cols) * 18
        out.append(f'<rect x="{x}" y="{y - 9}" width="11" height="11" fill="{color}"/>'
                   f'<text x="{x + 16}" y="{y}" font-size="12" fill="#1d2330">{html.escape(_trunc(name, 22))}</text>')
    return out
