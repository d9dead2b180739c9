"""What a report shows, gathered from the results DB (through :class:`harness.store.Store` only) and the zoo cards.

For the selected runs: their leaderboard (:func:`harness.leaderboard.board` over those runs) with each fused model's
gain over its best source, the paired comparisons of fused models (:mod:`harness.compare`), skill inheritance
(:mod:`harness.inheritance`), the per-suite breakdowns and the training curves; and how numbers are written, the same
in both renderings (:mod:`harness.report.html_page`, :mod:`harness.report.markdown_page`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import leaderboard as lb
from harness.errors import BenchError
from harness.store import Store

SUITE_NOTES = {
    "perplexity": "Bits per byte on held-out text, per domain (lower is better; tokenizer-agnostic).",
    "bbh": "BIG-Bench Hard exact match per task; macro = mean over tasks, weighted = over all items.",
    "bbh-mini": "Offline BBH-format algorithmic tasks, exact match per task; macro = mean over tasks.",
    "mtbench": "MT-Bench-style judge score 1-10, per turn and per category.",
    "humaneval": "HumanEval functional correctness, pass@k (code run in the sandbox).",
    "humaneval-mini": "Offline HumanEval-format one-line function problems, pass@k (code run in the sandbox).",
}
TASK_TITLES = {"perplexity": "domain", "mtbench": "category / turn"}
SKILL_RULE = ("Per task, the fused model against the best of its run's sources (target included) on the suite's "
              "primary metric, paired per example (95% bootstrap interval of fused − best source, in the metric's "
              "units). Verdict: no skill = the best source is not better than the worst beyond noise (nothing to "
              "inherit); gained = fused better than the best source; lost = fused worse than the best source and "
              "not better than the worst; partly = worse than the best but better than the worst; inherited = no "
              "difference from the best source beyond noise")


# --- the selected runs --------------------------------------------------------------------------


@dataclass
class Member:
    """A model in a run, in its role, under the name the run shows it by."""

    model_id: str
    name: str
    role: str
    position: int
    path: str | None


@dataclass
class Score:
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
    scores: dict[tuple[str, str, str, str], Score]  # (model_id, suite, task, metric) -> score
    config: dict[str, Any] = field(default_factory=dict)
    #: The judge tokens the run spent (:meth:`harness.store.Store.judge_usage`), None when it judged nothing.
    judge_usage: dict[str, int] | None = None

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


def select_runs(store: Store, refs: list[str] | None) -> list[dict[str, Any]]:
    """The runs given (ids or names), else the newest ok run of each run name; unnamed runs are told
    apart by their run hash (fusion runs) or kind + models + config (eval and score runs)."""
    if refs:
        chosen: dict[str, dict[str, Any]] = {}
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
    usage = store.judge_usage([row["id"] for row in rows])
    for row in rows:
        members = [Member(m["model_id"], m["model"], m["role"], m["position"], m["model_path"])
                   for m in store.run_members(row["id"])]
        scores = {}
        for s in store.score_rows(row["id"]):
            if suites and s["suite"] not in suites:
                continue
            scores[(s["model_id"], s["suite"], s["task"], s["metric"])] = Score(
                s["value"], s["stderr"], s["n"], bool(s["higher_is_better"]), str(s["suite_version"]), s["eval_key"])
        views.append(RunView(row, members, scores, loads(row.get("config")), usage.get(row["id"])))
    if suites:
        found = set().union(*(v.suites() for v in views))
        missing = [s for s in suites if s not in found]
        if missing:
            raise BenchError(f"no scores for suite(s) {', '.join(missing)} in the selected runs",
                             "drop --suite or pick runs that evaluated it (see `bench runs`)")
        views = [v for v in views if v.scores]
    # Fusion runs first (their groups are the point of the report), then evals and scored predictions.
    return sorted(views, key=lambda v: (not v.is_fusion, v.row.get("started_at") or "", v.id))


def loads(text: str | None) -> dict[str, Any]:
    """A JSON object from the DB or a card; empty when it is not one."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def ordered_suites(views: list[RunView]) -> list[str]:
    return lb.ordered_suites(s for v in views for s in v.suites())


def task_order(tasks: Iterable[str]) -> list[str]:
    """Aggregates first (avg, macro, overall, turns), then the rest by name."""
    return sorted(set(tasks), key=lb.task_rank)


def primary_metric(suite: str, views: list[RunView]) -> str | None:
    """The suite's registered primary metric; for unregistered suites the first metric by name."""
    from harness.registry import PRIMARY_METRIC

    if suite in PRIMARY_METRIC:
        return PRIMARY_METRIC[suite]
    metrics = sorted({m for v in views for _, s, _, m in v.scores if s == suite})
    return metrics[0] if metrics else None


# --- the leaderboard ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Gain:
    """A fused model's value minus the best of its run's target and sources, in the better direction."""

    value: float
    source: str  # the best other model
    source_value: float


@dataclass
class Leaderboard:
    """The board of the selected runs, with each fused model's gains and the best value per column."""

    board: lb.Board
    gains: dict[str, dict[str, Gain]]  # row key -> column label -> gain
    best: dict[str, float]  # column label -> the best value

    @property
    def columns(self) -> list[lb.Column]:
        return self.board.columns

    @property
    def rows(self) -> list[lb.Row]:
        return self.board.rows


def leaderboard(store: Store, views: list[RunView], suites: list[str] | None) -> Leaderboard:
    """Each run a block of its members (each suite's primary metric on its summary tasks), fused models with their
    gain over the best of the run's other models."""
    board = lb.board(store, suites, runs={v.id: v.label for v in views})
    gains = {}
    for v in views:
        block = [r for r in board.rows if r.run_id == v.id]
        others = [r for r in block if r.role in ("source", "target")]
        for fused in (r for r in block if r.role == "fused"):
            gains[fused.key] = _gains(board, fused, others)
    best = {}
    for col in board.columns:
        values = [c.value for c in (board.cell(r, col) for r in board.rows) if c is not None]
        if values:
            best[col.label] = max(values) if col.higher_is_better else min(values)
    return Leaderboard(board, gains, best)


def _gains(board: lb.Board, fused: lb.Row, others: list[lb.Row]) -> dict[str, Gain]:
    out = {}
    for col in board.columns:
        mine = board.cell(fused, col)
        theirs = [(c.value, r.model) for r, c in ((r, board.cell(r, col)) for r in others) if c is not None]
        if mine is None or not theirs:
            continue
        value, name = (max if col.higher_is_better else min)(theirs)
        sign = 1.0 if col.higher_is_better else -1.0
        out[col.label] = Gain(sign * (mine.value - value), name, value)
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


def comparisons(store: Store, views: list[RunView], board: Leaderboard) -> list[Comparison]:
    """For every fusion run with per-example samples: its fused model against the best of its target and sources
    on each suite's headline column, and against its control when it has one (over the seeds of its seed group,
    hierarchically, when it belongs to one). Pairs that cannot be made (no samples, other examples) are skipped."""
    from harness import compare as cmp

    out: list[Comparison] = []
    done: set[tuple[str, str, str, str]] = set()  # a seed group's control comparison is made once, not per seed
    for v in (v for v in views if v.is_fusion):
        group = v.row.get(lb.GROUP_COLUMN)
        fused_row = next((r for r in board.rows if r.run_id == v.id and r.role == "fused"), None)
        if fused_row is None:
            continue
        gains = board.gains.get(fused_row.key, {})
        for col in board.columns:
            headline = headline_task(col.suite, [c.task for c in board.columns if c.suite == col.suite]) == col.task
            if not headline or col.label not in gains:
                continue
            best_name = gains[col.label].source
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
    return (what.format(g=signed(c.gain), ci=f"[{signed(lo)}, {signed(hi)}]", a=c.a_model)
            + f" on {c.suite}/{c.task} {c.metric} (p = {c.diff.p_value:.3g}, n = {c.diff.n}{seeds}){verdict}")


def skill_tables(store: Store, views: list[RunView]) -> list[tuple[RunView, Any]]:
    """(run, :class:`harness.inheritance.Inheritance`) for every fusion run whose fused model and sources have
    per-example samples, limited to the suites the report shows; runs with nothing to pair are left out."""
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


# --- per-suite breakdowns -----------------------------------------------------------------------


@dataclass
class Entry:
    """A model's evaluation on one suite, once: the same (model, eval_key) in several runs is shown once."""

    label: str
    model_id: str
    role: str
    cells: dict[tuple[str, str], Score]  # (task, metric) -> score

    def every_metric(self) -> list[tuple[str, str, Score]]:
        """(task, metric, score), aggregates first."""
        return [(t, m, self.cells[(t, m)]) for t, m in sorted(self.cells, key=lambda k: (lb.task_rank(k[0]), k))]


@dataclass
class SuiteSection:
    """One suite's numbers per task: each model's primary metric, and its every metric."""

    suite: str
    metric: str | None
    entries: list[Entry]
    tasks: list[str]  # the primary metric's tasks, aggregates first
    caveats: list[str]

    @property
    def higher_is_better(self) -> bool:
        return next((c.higher_is_better for en in self.entries for (_, m), c in en.cells.items() if m == self.metric),
                    True)

    @property
    def best(self) -> dict[str, float]:
        """task -> the best value of the primary metric."""
        out: dict[str, float] = {}
        if self.metric is None:
            return out
        for t in self.tasks:
            key = (t, self.metric)
            scores = [en.cells[key].value for en in self.entries if key in en.cells]
            values = [v for v in scores if v is not None]
            if values:
                out[t] = max(values) if self.higher_is_better else min(values)
        return out

    @property
    def headline(self) -> str | None:
        return headline_task(self.suite, self.tasks)

    @property
    def details(self) -> list[str]:
        """The tasks of the per-task chart: all but the aggregates (of MT-Bench, its categories)."""
        found = detail_tasks(self.tasks)
        return [t for t in found if t.startswith("category/")] if self.suite == "mtbench" else found

    def score(self, entry: Entry, task: str) -> Score | None:
        return entry.cells.get((task, self.metric)) if self.metric is not None else None


def suite_section(views: list[RunView], suite: str) -> SuiteSection:
    metric = primary_metric(suite, views)
    entries = breakdown(views, suite)
    tasks = task_order({t for en in entries for (t, m) in en.cells if m == metric})
    return SuiteSection(suite, metric, entries, tasks, suite_caveats(views, suite))


def breakdown(views: list[RunView], suite: str) -> list[Entry]:
    entries: list[Entry] = []
    seen: set[tuple[str, str]] = set()
    keys_per_model: dict[str, set[str]] = {}
    for v in views:
        for (model_id, s, _, _), cell in v.scores.items():
            if s == suite:
                keys_per_model.setdefault(model_id, set()).add(cell.eval_key)
    for v in views:
        for m in sorted(v.members, key=lambda m: (lb.ROLE_ORDER.get(m.role, 9), m.position)):
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
    from harness.registry import SUMMARY_TASKS

    tasks = list(tasks)
    for t in [*SUMMARY_TASKS.get(suite, []), *lb.AGGREGATE_TASKS]:
        if t in tasks:
            return t
    return tasks[0] if len(tasks) == 1 else None


def detail_tasks(tasks: Iterable[str]) -> list[str]:
    """The per-task columns worth a grouped bar chart: everything but the aggregates."""
    return sorted(t for t in set(tasks) if t not in lb.AGGREGATE_TASKS)


# --- training curves ----------------------------------------------------------------------------


@dataclass
class Curve:
    name: str         # the logged quantity, e.g. "loss"
    label: str        # series label: model (run)
    steps: list[float]
    values: list[float]
    origin: str       # where it came from, shown under the plot


def training_curves(store: Store, views: list[RunView]) -> list[Curve]:
    """Curves from the ``train_log`` table, and from zoo members' cards on this machine."""
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
    """The ~11-point loss curve a zoo member's card keeps, at the steps :func:`harness.zoo.builder._curve` picked."""
    card = folder / "zoo.json"
    if not card.is_file():
        return None
    train = loads(card.read_text()).get("train") or {}
    losses, steps = train.get("loss_curve") or [], train.get("steps")
    if len(losses) < 2 or not steps:
        return None
    idx = sorted({round(i * (steps - 1) / (len(losses) - 1)) for i in range(len(losses))})
    if len(idx) != len(losses):
        idx = [round(i * (steps - 1) / (len(losses) - 1)) for i in range(len(losses))]
    return Curve("loss", name, [i + 1 for i in idx], list(losses), "zoo member card (zoo.json)")


# --- the report ---------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything both renderings show (the HTML page adds the training curves)."""

    db: Path
    views: list[RunView]
    leaderboard: Leaderboard
    comparisons: list[Comparison]
    skills: list[tuple[RunView, Any]]
    suites: list[SuiteSection]
    generated: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))


def gather(store: Store, views: list[RunView], suites: list[str] | None) -> Report:
    board = leaderboard(store, views, suites)
    return Report(store.path, views, board, comparisons(store, views, board), skill_tables(store, views),
                  [suite_section(views, s) for s in ordered_suites(views)])


# --- how numbers and times are written ----------------------------------------------------------


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def signed(x: float) -> str:
    return f"{x:+.4f}"


def duration(row: dict[str, Any]) -> str:
    """A run's wall time, ``123 s``."""
    try:
        start = dt.datetime.fromisoformat(row["started_at"])
        end = dt.datetime.fromisoformat(row["finished_at"])
    except (TypeError, ValueError):
        return "-"
    return f"{(end - start).total_seconds():.0f} s"
