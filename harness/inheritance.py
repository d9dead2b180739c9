"""Skill inheritance: per task, whether a fused model kept what its best source can do (`bench skills RUN`).

For one run and one of its models (the fused model unless told otherwise), every (suite, task) with
per-example samples is paired example by example (:func:`harness.compare.compare_suite`, the pairing and
bootstrap of `bench compare`) between the fused model and each of the run's *sources*: its members in the role
``source`` or ``target`` (the target is FuseChat's pivot and a merge's base: a model whose skills the fused model
may keep, as in the report's "gain over the best source"). Tasks are the suites' own tasks, never their
aggregates (``macro``, ``weighted``, ``avg``, ``overall``):

* bbh, bbh-mini: each task, exact match per item;
* humaneval, humaneval-mini (any suite whose primary metric is a ``pass@k``): pass@1 per problem;
* mtbench: ``turn1`` and ``turn2`` when the answers were judged (unjudged answers have no rating: skipped);
* perplexity: each domain, bits per byte per document. Lower is better, and the paired code carries the
  metric's direction (``higher_is_better`` of its stored score), so it is included: a source that models a
  domain's text better has a skill there.

The rule, per task, on the suite's primary metric, with "better" in the metric's direction and every interval
a 95% paired percentile bootstrap interval over the task's examples:

1. The **best source** has the best score on the task, the **worst source** the worst of the others (ties: the
   first in the run's order).
2. **no skill**: the interval of (best source − worst source) includes 0 -- no source is better than the
   others beyond noise, so there is nothing to inherit (always so with a single source). This is decided
   first: a fused model that beats every source on such a task is still "no skill" (its difference shows it).
3. **gained**: the interval of (fused − best source) lies entirely on the better side of 0.
4. **lost**: it lies entirely on the worse side of 0, and the fused model is not better than the worst source
   beyond noise (the interval of fused − worst source includes 0 or lies on the worse side).
5. **partly**: it lies on the worse side of 0, and the fused model is better than the worst source beyond noise.
6. **inherited**: otherwise -- the interval of (fused − best source) includes 0.

A task needs at least two units for an interval worth the name; with a handful the percentile interval is
too narrow (:mod:`harness.stats`), which each row's ``n`` lets a reader see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness import compare, stats
from harness.errors import BenchError
from harness.store import Store

#: The verdicts, from the best news for the fused model to "nothing to judge".
VERDICTS = ("gained", "inherited", "partly", "lost", "no skill")
#: The roles of a run's members that count as its sources.
SOURCE_ROLES = ("source", "target")
#: Resamples of the report's section (the CLI's default is :data:`harness.stats.DEFAULT_RESAMPLES`).
REPORT_RESAMPLES = 4000


@dataclass(frozen=True)
class SkillRow:
    """One task: the fused model against the run's best and worst source on it.

    Differences are in the metric's units, fused − source (or best − worst), as :class:`harness.stats.Difference`
    with their paired bootstrap interval: for a lower-is-better metric a negative difference is the better side."""

    suite: str
    task: str
    metric: str
    higher_is_better: bool
    n: int
    best_source: str
    best_score: float
    worst_source: str
    worst_score: float
    fused_score: float
    versus_best: stats.Difference        # fused − best source
    versus_worst: stats.Difference       # fused − worst source
    source_spread: stats.Difference | None  # best − worst source; None with a single source
    verdict: str


@dataclass(frozen=True)
class Inheritance:
    """The skill table of one model in one run."""

    run: dict[str, Any]
    fused: compare.Side
    sources: list[compare.Side]
    rows: list[SkillRow]
    notes: list[str]
    resamples: int
    seed: int

    @property
    def level(self) -> float:
        return self.rows[0].versus_best.level if self.rows else stats.DEFAULT_LEVEL


def classify(versus_best: tuple[float, float], versus_worst: tuple[float, float],
             source_spread: tuple[float, float] | None) -> str:
    """The verdict of the module docstring from three intervals, each (low, high) signed so that positive means
    better: fused − best source, fused − worst source, best − worst source (None: a single source)."""
    if source_spread is None or source_spread[0] <= 0 <= source_spread[1]:
        return "no skill"
    low, high = versus_best
    if low > 0:
        return "gained"
    if high < 0:
        return "partly" if versus_worst[0] > 0 else "lost"
    return "inherited"


def skill_inheritance(store: Store, run_ref: str, model: str | None = None, suites: list[str] | None = None, *,
                      resamples: int = stats.DEFAULT_RESAMPLES, seed: int = 0) -> Inheritance:
    """Per (suite, task) of run ``run_ref`` (id or name): ``model`` (default: the run's fused model; else a
    member's name or id, or ``control``) against the run's best source, classified by the module docstring's
    rule. ``suites``: only these. A BenchError with the fix for an unknown run, a run without a fused model, or
    nothing to pair."""
    run = _find_run(store, run_ref)
    members = _members(store, run)
    fused = _chosen(run, members, model)
    sources = [m for m in members if m.role in SOURCE_ROLES and m.model_id != fused.model_id]
    if not sources:
        raise BenchError(f"run {run['id']} has no source besides {fused.model}",
                         "give a fusion run (`bench run --fuser ...`) that evaluated its sources")
    fused_suites = compare.suites_with_samples(store, fused)
    if not fused_suites:
        raise BenchError(f"{fused.describe()} has no per-example samples",
                         "evaluate the run on a suite with samples, e.g. bench run --fuser ... --suite bbh-mini")
    if suites:
        missing = [s for s in suites if s not in fused_suites]
        if missing:
            raise BenchError(f"{fused.describe()} has no samples of suite {', '.join(missing)}",
                             f"give one of its suites: {', '.join(fused_suites)}")
    rows: list[SkillRow] = []
    notes: list[str] = []
    for suite in (s for s in fused_suites if not suites or s in suites):
        with_samples = [s for s in sources if suite in compare.suites_with_samples(store, s)]
        suite_rows, suite_notes = _suite_rows(store, fused, with_samples, suite, resamples, seed)
        rows += suite_rows
        notes += suite_notes
    if not rows:
        raise BenchError(f"no task of {fused.describe()} could be paired with a source: {'; '.join(notes)}",
                         "evaluate the run on a suite with per-example scores (bbh-mini, bbh, humaneval, or mtbench "
                         "with a judge)")
    return Inheritance(run, fused, sources, rows, notes, resamples, seed)


def _find_run(store: Store, ref: str) -> dict[str, Any]:
    if not store.has_run(ref):
        raise BenchError(f"unknown run {ref!r} in {store.path}", "give a fusion run's id or name from `bench runs`")
    return store.find_run(ref)


def _members(store: Store, run: dict[str, Any]) -> list[compare.Side]:
    return [compare.Side(ref=f"{m['model']}@{run['id']}", run=run, model_id=m["model_id"], model=m["model"],
                         role=m["role"]) for m in store.run_members(run["id"])]


def _chosen(run: dict[str, Any], members: list[compare.Side], model: str | None) -> compare.Side:
    if model is None:
        fused = [m for m in members if m.role == "fused"]
        if not fused:
            raise BenchError(f"run {run['id']} has no fused model (a `bench {run['kind']}` run)",
                             "give a run made by `bench run --fuser ...` (see `bench runs`)")
        return fused[0]
    found = [m for m in members if model in (m.model, m.model_id) or (model == "control" and m.role == "control")]
    if not found:
        raise BenchError(f"run {run['id']} has no model {model!r}",
                         f"give one of its models: {', '.join(m.model for m in members)}")
    return found[0]


def _suite_rows(store: Store, fused: compare.Side, sources: list[compare.Side], suite: str, resamples: int,
                seed: int) -> tuple[list[SkillRow], list[str]]:
    """The rows of one suite, and notes on what was left out."""
    from harness.registry import PRIMARY_METRIC

    metric = PRIMARY_METRIC.get(suite)
    if metric is None:
        return [], [f"{suite}: no per-example rule for its primary metric (left out)"]
    if not compare.per_example(store, fused, suite).values:
        why = "was never judged" if suite == "mtbench" else f"has no per-example {metric}"
        return [], [f"{suite}: {fused.model} {why} (left out)"]
    notes: list[str] = []
    against: dict[str, dict[str, compare.Row]] = {}  # source model_id -> task -> fused − source
    for source in sources:
        if not compare.per_example(store, source, suite).values:
            notes.append(f"{suite}: source {source.model} has no per-example {metric} (left out)")
            continue
        try:
            task_rows, _ = compare.compare_suite(store, [(source, fused)], suite, resamples=resamples, seed=seed)
        except BenchError as e:
            notes.append(f"{suite}: source {source.model} cannot be paired with {fused.model}: {e.problem} (left out)")
            continue
        against[source.model_id] = {r.task: r for r in task_rows if not r.aggregate}
    if not against:
        return [], [*notes, f"{suite}: no source to pair {fused.model} with (left out)"]
    paired_sources = [s for s in sources if s.model_id in against]
    spreads: dict[tuple[str, str], dict[str, compare.Row]] = {}  # (worst, best) -> task -> best − worst
    rows = []
    tasks = list(dict.fromkeys(t for s in paired_sources for t in against[s.model_id]))
    for task in tasks:
        scored = [s for s in paired_sources if task in against[s.model_id]]
        hib = against[scored[0].model_id][task].higher_is_better
        sign = 1.0 if hib else -1.0
        score = {s.model_id: against[s.model_id][task].a_value for s in scored}
        best = max(scored, key=lambda s: sign * score[s.model_id])  # max and min keep the first of ties
        worst = min([s for s in scored if s is not best] or [best], key=lambda s: sign * score[s.model_id])
        spread = None
        if best.model_id != worst.model_id:
            pair = (worst.model_id, best.model_id)
            if pair not in spreads:
                spread_rows, _ = compare.compare_suite(store, [(worst, best)], suite, resamples=resamples, seed=seed)
                spreads[pair] = {r.task: r for r in spread_rows if not r.aggregate}
            spread = spreads[pair][task].diff
        rows.append(_row(against[best.model_id][task], against[worst.model_id][task], best.model, worst.model, spread))
    return rows, notes


def _row(versus_best: compare.Row, versus_worst: compare.Row, best: str, worst: str,
         spread: stats.Difference | None) -> SkillRow:
    sign = 1.0 if versus_best.higher_is_better else -1.0

    def interval(diff: stats.Difference) -> tuple[float, float]:
        low, high = sign * diff.low, sign * diff.high
        return min(low, high), max(low, high)

    verdict = classify(interval(versus_best.diff), interval(versus_worst.diff),
                       None if spread is None else interval(spread))
    return SkillRow(suite=versus_best.suite, task=versus_best.task, metric=versus_best.metric,
                    higher_is_better=versus_best.higher_is_better, n=versus_best.diff.n, best_source=best,
                    best_score=versus_best.a_value, worst_source=worst, worst_score=versus_worst.a_value,
                    fused_score=versus_best.b_value, versus_best=versus_best.diff, versus_worst=versus_worst.diff,
                    source_spread=spread, verdict=verdict)


# --- printing -----------------------------------------------------------------------------------


def to_json(result: Inheritance) -> dict[str, Any]:
    """The table as plain data (``bench skills --format json``): differences in the metric's units, fused − best."""
    def diff(d: stats.Difference | None) -> dict[str, float] | None:
        return None if d is None else {"difference": d.estimate, "ci_low": d.low, "ci_high": d.high}

    return {
        "run": result.run["id"], "model": result.fused.model, "role": result.fused.role,
        "sources": [s.model for s in result.sources], "level": result.level, "resamples": result.resamples,
        "seed": result.seed,
        "rows": [{"suite": r.suite, "task": r.task, "metric": r.metric, "higher_is_better": r.higher_is_better,
                  "n": r.n, "best_source": r.best_source, "best_score": r.best_score, "worst_source": r.worst_source,
                  "worst_score": r.worst_score, "fused_score": r.fused_score, "difference": r.versus_best.estimate,
                  "ci_low": r.versus_best.low, "ci_high": r.versus_best.high,
                  "versus_worst": diff(r.versus_worst), "source_spread": diff(r.source_spread),
                  "verdict": r.verdict} for r in result.rows],
        "notes": result.notes,
    }


VERDICT_STYLES = {"gained": "bold green", "inherited": "green", "partly": "yellow", "lost": "bold red",
                  "no skill": "dim"}


def rich_table(result: Inheritance) -> Any:
    """The table for the console (a :class:`rich.table.Table`). Names from the DB are :class:`rich.text.Text`,
    so brackets in them stay text, never markup."""
    from rich.table import Table
    from rich.text import Text

    level = f"{100 * result.level:.0f}%"
    table = Table(title=Text(f"Skill inheritance: {result.fused.describe()}"), title_justify="left")
    spread_header = f"best − worst source ({level} CI)"
    for header, right in (("suite", False), ("task", False), ("metric", False), ("verdict", False),
                          ("best source", False), ("best", True), ("fused", True), ("fused − best", True),
                          (f"{level} CI", True), ("n", True), (spread_header, False)):
        # in a narrow terminal only the names wrap; numbers and verdicts stay whole
        table.add_column(header, justify="right" if right else "left",
                         no_wrap=header not in ("best source", spread_header))
    for r in result.rows:
        spread = ("single source" if r.source_spread is None else
                  f"{_signed(r.source_spread.estimate)} [{_signed(r.source_spread.low)}, "
                  f"{_signed(r.source_spread.high)}] vs {r.worst_source}")
        table.add_row(Text(r.suite), Text(r.task), Text(f"{r.metric} {'↑' if r.higher_is_better else '↓'}"),
                      Text(r.verdict, style=VERDICT_STYLES[r.verdict]), Text(r.best_source), f"{r.best_score:.4f}",
                      f"{r.fused_score:.4f}", _signed(r.versus_best.estimate),
                      f"[{_signed(r.versus_best.low)}, {_signed(r.versus_best.high)}]", str(r.n), Text(spread))
    return table


def legend(result: Inheritance) -> list[str]:
    """The lines under the console table: notes, then how to read it."""
    lines = [f"note: {n}" for n in result.notes]
    lines.append(f"Sources: {', '.join(s.model for s in result.sources)} (the run's target counts as one). Per task, in "
                 "the metric's units (↑ higher is better, ↓ lower is better); CI: paired bootstrap over the task's "
                 f"examples ({result.resamples:,} resamples, seed {result.seed}). Verdict: no skill = best − worst "
                 "source includes 0; gained = fused − best above 0 (in the better direction); lost = below 0 and not "
                 "better than the worst source; partly = below 0 but better than the worst source; inherited = "
                 "includes 0.")
    return lines


def _signed(x: float) -> str:
    return f"{x + 0.0:+.4f}"
