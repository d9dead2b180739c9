"""`bench compare A B`: two models on the same examples, paired per example.

A and B are REFs:

* ``MODEL@RUN``: the model (its name as the run knows it, its id, or ``fused``) in run RUN (id or name);
* a run id or name: the run's only model, or its fused model when it has one;
* a model name or id: the newest ``ok`` run with per-example samples of that model (in ``--suite``);
* ``MODEL@GROUP``: the model in every run of a seed group (``bench run --seeds``; GROUP is the group's id or
  its name, the runs being named ``NAME@seedN``); ``fused`` and ``control`` name those roles in each run.

Two seed groups (or a group and one run, whose model is then the same in every seed) are compared seed by
seed: the hierarchical bootstrap of :func:`harness.stats.paired_difference_over_seeds` (seeds, then examples)
turns the seed-to-seed spread of a training fuser into the interval. ``bench compare control@grp fused@grp``
is the fusion term's worth beyond the data.

Two sides are paired on a suite only when they measured the same thing on the same examples: the same
suite version, the same suite arguments, ``limit`` and ``seed`` (from each run's stored config: the
fields the eval key hashes besides the model), and identical sample sets: the same (task, doc_id) keys
with the same target (and prompt, except MT-Bench, whose prompt is the model's own chat template).
Anything else is refused in one line naming what differs.

What is paired, per suite (the suite's primary metric, :data:`harness.registry.PRIMARY_METRIC`):

* perplexity: documents. bits/byte is a ratio of sums, ``Σ −log₂ p(doc) / Σ bytes``, per domain or file;
  ``avg`` is their unweighted mean (documents resampled within each task);
* bbh, bbh-mini: items (exact match 0/1) per task; ``macro`` = mean over tasks, ``weighted`` = mean over
  all items;
* humaneval (and any suite whose primary metric is a ``pass@k``, such as humaneval-mini): problems; a
  problem's value is the fraction of its samples that passed (pass@1);
* mtbench: questions. ``turn1`` and ``turn2`` pair the rating of each answer graded on both sides (the
  mean over the judge's repeats); ``overall`` resamples questions with both their turns. Category tasks
  are not in the samples and are not compared.

Statistics (:mod:`harness.stats`): the difference B − A with a paired bootstrap interval and a paired
sign-flip permutation p-value.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from harness import stats
from harness.errors import BenchError
from harness.store import Store

_LN2 = math.log(2)


# --- the two sides ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a model as evaluated in one run."""

    ref: str
    run: dict[str, Any]
    model_id: str
    model: str
    role: str

    def describe(self) -> str:
        name = f" {self.run['name']!r}" if self.run.get("name") else ""
        return f"{self.model} ({self.role}) in run {self.run['id']}{name}"


def resolve(store: Store, ref: str, suites: list[str] | None = None) -> Side:
    """The (run, model) a REF stands for; a BenchError naming the fix when there is none or several."""
    if "@" in ref and not store.has_model(ref):
        # MODEL@RUN; run names may hold an "@" themselves (a seed group's NAME@seedN): the first split that names a run
        splits = [(ref[:i], ref[i + 1:]) for i, ch in enumerate(ref) if ch == "@"]
        model, run_ref = next(((m, r) for m, r in splits if m and store.has_run(r)), splits[-1])
        return _member(store, ref, store.find_run(run_ref), model)
    if store.has_run(ref):
        run = store.find_run(ref)
        members = store.members_with_samples(run["id"], suites)
        if len(members) == 1:
            return _side(ref, run, members[0])
        fused = [m for m in members if m["role"] == "fused"]
        if len(fused) == 1:
            return _side(ref, run, fused[0])
        if not members:
            raise BenchError(f"run {run['id']} has no per-example samples{_in(suites)}",
                             "compare runs that evaluated a suite (`bench samples RUN` lists them)")
        names = ", ".join(m["model"] for m in members)
        raise BenchError(f"run {run['id']} evaluated {len(members)} models ({names})",
                         f"name one as MODEL@{ref}, e.g. {members[0]['model']}@{ref}")
    if not store.has_model(ref):
        raise BenchError(f"unknown model or run {ref!r} in {store.path}",
                         "give a run id or name from `bench runs`, a model name from `bench leaderboard`, or MODEL@RUN")
    newest = store.newest_sampled_member(ref, suites)
    if newest is None:
        raise BenchError(f"model {ref!r} has no per-example samples{_in(suites)} in an ok run",
                         f"evaluate it first: bench eval --model {ref}" + (f" --suite {suites[0]}" if suites else ""))
    return _member(store, ref, store.find_run(newest["run_id"]), newest["model_id"])


def resolve_all(store: Store, ref: str, suites: list[str] | None = None) -> list[Side]:
    """The sides a REF stands for: one per run of a seed group for ``MODEL@GROUP``, else :func:`resolve`'s one."""
    for at in (i for i, ch in enumerate(ref) if ch == "@"):
        model, group_ref = ref[:at], ref[at + 1:]
        runs = store.seed_group_runs(group_ref)
        if model and len(runs) > 1:
            return [_member(store, ref, run, model) for run in runs]
    return [resolve(store, ref, suites)]


def _in(suites: list[str] | None) -> str:
    return f" of suite {', '.join(suites)}" if suites else ""


def _member(store: Store, ref: str, run: dict[str, Any], model: str) -> Side:
    """The member of ``run`` called ``model`` (its name in the run, its id, or ``fused``)."""
    members = store.members_with_samples(run["id"])
    found = [m for m in members if model in (m["model"], m["model_id"])
             or (model in ("fused", "control") and m["role"] == model)]
    if not found:
        known = ", ".join(m["model"] for m in members) or "none with samples"
        raise BenchError(f"run {run['id']} has no samples of model {model!r} (its models: {known})",
                         "give one of the run's models, as MODEL@RUN")
    return _side(ref, run, found[0])


def _side(ref: str, run: dict[str, Any], member: dict[str, Any]) -> Side:
    return Side(ref=ref, run=run, model_id=member["model_id"], model=member["model"], role=member["role"])


# --- per-example units --------------------------------------------------------------------------------


@dataclass
class Units:
    """One side's per-example values of one suite: (task, unit key) -> (numerator, denominator), and for
    MT-Bench the judge's repeats of each rating."""

    values: dict[tuple[str, Any], tuple[float, float]] = field(default_factory=dict)
    repeats: dict[tuple[str, Any], list[float]] = field(default_factory=dict)


def units(suite: str, samples: list[dict[str, Any]]) -> Units:
    """Per-example values of ``suite``'s primary metric from its stored samples (see the module docstring)."""
    out = Units()
    if suite == "humaneval" or (_primary(suite) or "").startswith("pass@"):
        passed: dict[tuple[str, Any], list[float]] = defaultdict(list)
        for s in samples:
            m = s["metrics"]
            passed[(s["task"], s["doc_id"] - int(m.get("sample", 0)))].append(float(m["passed"]))
        out.values = {key: (sum(v) / len(v), 1.0) for key, v in passed.items()}
        return out
    for s in samples:
        m, key = s["metrics"], (s["task"], s["doc_id"])
        if suite == "perplexity":
            out.values[key] = (-m["loglikelihood"] / _LN2, m["bytes"])
        elif suite == "mtbench":
            if m.get("rating") is not None:
                out.values[key] = (m["rating"], 1.0)
                out.repeats[key] = [v for k, v in sorted(m.items()) if k.startswith("rating_") and k != "rating_std"]
        else:  # bbh, bbh-mini, and any suite whose samples hold its primary metric
            metric = _primary(suite)
            if metric is not None and m.get(metric) is not None:
                out.values[key] = (float(m[metric]), 1.0)
    return out


def _primary(suite: str) -> str | None:
    from harness.registry import PRIMARY_METRIC

    return PRIMARY_METRIC.get(suite)


# --- pairing ------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One compared task (or aggregate) of one suite."""

    suite: str
    suite_version: str
    task: str
    metric: str
    higher_is_better: bool
    a_value: float
    b_value: float
    diff: stats.Difference
    dropped: int = 0           # units graded on one side only (MT-Bench judge failures): left out
    aggregate: bool = False    # a combination of the suite's tasks (avg, macro, weighted, overall), not a task


@dataclass
class Result:
    a: Side
    b: Side
    rows: list[Row]
    notes: list[str]
    resamples: int
    seed: int


def compare(store: Store, ref_a: str, ref_b: str, suites: list[str] | None = None, *,
            resamples: int = stats.DEFAULT_RESAMPLES, seed: int = 0) -> Result:
    """Pair A and B on every suite both have samples of (or ``suites``), and compare them."""
    sides_a, sides_b = resolve_all(store, ref_a, suites), resolve_all(store, ref_b, suites)
    if len(sides_a) > 1 and len(sides_b) > 1 and len(sides_a) != len(sides_b):
        raise BenchError(f"A has {len(sides_a)} seeds and B {len(sides_b)}",
                         "compare seed groups of the same seeds (or a group with one run)")
    seeds = max(len(sides_a), len(sides_b))
    pairs = list(zip(sides_a * (seeds if len(sides_a) == 1 else 1), sides_b * (seeds if len(sides_b) == 1 else 1),
                     strict=True))
    a, b = pairs[0]
    have_a, have_b = suites_with_samples(store, a), suites_with_samples(store, b)
    notes = []
    if suites:
        for suite in suites:
            for side, label, have in ((a, "A", have_a), (b, "B", have_b)):
                if suite not in have:
                    raise BenchError(f"{label} = {side.describe()} has no samples of suite {suite}",
                                     f"evaluate it on {suite}, or compare another run")
        chosen = list(dict.fromkeys(suites))
    else:
        chosen = [s for s in have_a if s in have_b]
        notes += [f"suite {s}: only A has samples (not compared)" for s in have_a if s not in have_b]
        notes += [f"suite {s}: only B has samples (not compared)" for s in have_b if s not in have_a]
        if not chosen:
            raise BenchError(f"A and B share no suite with samples (A: {', '.join(have_a) or 'none'}; "
                             f"B: {', '.join(have_b) or 'none'})", "evaluate both on the same suite")
    rows: list[Row] = []
    for suite in chosen:
        suite_rows, suite_notes = compare_suite(store, pairs, suite, resamples=resamples, seed=seed)
        rows += suite_rows
        notes += suite_notes
    if seeds > 1:
        notes.append(f"{seeds} seeds: each row is the mean over seeds, its interval from the hierarchical bootstrap "
                     "(seeds, then examples)")
    return Result(a, b, rows, notes, resamples, seed)


def suites_with_samples(store: Store, side: Side) -> list[str]:
    """The suites of which ``side`` has per-example samples, by name."""
    return store.suites_with_samples(side.run["id"], side.model_id)


def _samples(store: Store, side: Side, suite: str) -> list[dict[str, Any]]:
    rows = store.samples(side.run["id"], side.model_id, suite)
    for r in rows:
        r["metrics"] = json.loads(r["metrics"] or "{}")
    return rows


def per_example(store: Store, side: Side, suite: str) -> Units:
    """``side``'s per-example values of ``suite``'s primary metric (empty when its samples hold none, such as
    MT-Bench answers that were never judged)."""
    return units(suite, _samples(store, side, suite))


def _suite_version(store: Store, side: Side, suite: str) -> str:
    first = store.first_score(side.run["id"], side.model_id, suite)
    if first is None:
        raise BenchError(f"{side.describe()} has samples but no scores of suite {suite}",
                         "re-run the evaluation (the run's record is incomplete)")
    return str(first["suite_version"])


def _higher_is_better(store: Store, side: Side, suite: str, metric: str) -> bool:
    first = store.first_score(side.run["id"], side.model_id, suite, metric)
    if first is None:
        raise BenchError(f"{side.describe()} has no {metric} score of suite {suite}",
                         "re-run the evaluation (the run's record is incomplete)")
    return bool(first["higher_is_better"])


def check_pairable(suite: str, a: Side, b: Side, version_a: str, version_b: str,
                   samples_a: list[dict[str, Any]], samples_b: list[dict[str, Any]]) -> None:
    """BenchError naming what differs unless A and B measured ``suite`` the same way on the same examples."""
    from harness.regress import eval_config

    def refuse(what: str) -> BenchError:
        return BenchError(f"cannot pair A and B on {suite}: {what}",
                          "evaluate both with the same suite version, suite arguments, --limit and --seed "
                          "(`bench runs` shows each run's command)")

    if version_a != version_b:
        raise refuse(f"suite version {version_a} vs {version_b}")
    config_a, config_b = (eval_config(json.loads(s.run.get("config") or "{}"), suite) for s in (a, b))
    for name in ("limit", "seed"):
        if config_a[name] != config_b[name]:
            raise refuse(f"{name} {config_a[name]} vs {config_b[name]}")
    args_a, args_b = config_a["suite_args"] or {}, config_b["suite_args"] or {}
    changed = sorted(k for k in set(args_a) | set(args_b) if args_a.get(k) != args_b.get(k))
    if changed:
        shown = lambda args, k: repr(args[k]) if k in args else "(default)"  # noqa: E731
        raise refuse("suite arguments differ: " + ", ".join(f"{k}={shown(args_a, k)} vs {shown(args_b, k)}"
                                                              for k in changed))
    index_a = {(s["task"], s["doc_id"]): s for s in samples_a}
    index_b = {(s["task"], s["doc_id"]): s for s in samples_b}
    only_a, only_b = sorted(set(index_a) - set(index_b)), sorted(set(index_b) - set(index_a))
    if only_a or only_b:
        first = only_a[0] if only_a else only_b[0]
        raise refuse(f"different examples: {len(only_a)} only in A, {len(only_b)} only in B "
                     f"(e.g. {first[0]} doc {first[1]} only in {'A' if only_a else 'B'})")
    fields = ("target",) if suite == "mtbench" else ("target", "prompt")  # MT-Bench prompts: the model's template
    for key in sorted(index_a):
        for name in fields:
            if (index_a[key][name] or "") != (index_b[key][name] or ""):
                raise refuse(f"{key[0]} doc {key[1]} has a different {name} in A and B")


def compare_suite(store: Store, pairs: list[tuple[Side, Side]], suite: str, *,
                  resamples: int = stats.DEFAULT_RESAMPLES, seed: int = 0) -> tuple[list[Row], list[str]]:
    """The rows of one suite: each task, then the suite's aggregates; plus notes. ``pairs``: (A, B) per seed."""
    metric = _primary(suite)
    if metric is None:
        return [], [f"suite {suite}: no per-example rule for its primary metric (not compared)"]
    per_seed = [_seed_units(store, a, b, suite, metric) for a, b in pairs]
    version_a = per_seed[0][0]
    hib = _higher_is_better(store, pairs[0][0], suite, metric)

    tasks: list[dict[str, stats.Paired]] = []
    dropped: dict[str, int] = defaultdict(int)
    keys_by_task: dict[str, list[Any]] = defaultdict(list)
    for position, (_, units_a, units_b) in enumerate(per_seed):
        seed_keys: dict[str, list[Any]] = defaultdict(list)
        for task, key in sorted(set(units_a.values) | set(units_b.values), key=lambda k: (k[0], str(k[1]))):
            if (task, key) in units_a.values and (task, key) in units_b.values:
                seed_keys[task].append(key)
            elif position == 0:
                dropped[task] += 1
        if position == 0:
            keys_by_task = seed_keys
        elif seed_keys != keys_by_task:
            raise BenchError(f"cannot pair the seeds on {suite}: seed {position} graded other examples than seed 0",
                             "compare seeds evaluated on the same examples")
        tasks.append({task: _paired(units_a, units_b, [(task, k) for k in keys]) for task, keys in seed_keys.items()})

    def of(names: list[str]) -> list[list[stats.Paired]]:
        return [[seed_tasks[n] for n in names] for seed_tasks in tasks]

    def row(task: str, strata: list[list[stats.Paired]], weights: list[float] | None, lost: int,
            aggregate: bool = True) -> Row:
        """``strata[k]``: seed k's strata, combined with ``weights`` (default equal)."""
        w = [1 / len(strata[0])] * len(strata[0]) if weights is None else weights
        value = lambda num, den: sum(wi * (getattr(p, num).sum() / getattr(p, den).sum())  # noqa: E731
                                     for seed_strata in strata for wi, p in zip(w, seed_strata, strict=True)) / len(strata)
        diff = stats.paired_difference_over_seeds(strata, w, resamples=resamples, seed=seed)
        return Row(suite, version_a, task, metric, hib, float(value("a_num", "a_den")),
                   float(value("b_num", "b_den")), diff, lost, aggregate)

    names = list(keys_by_task)
    rows = [row(task, of([task]), None, dropped[task], aggregate=False) for task in names]
    if suite == "perplexity" and len(names) > 1:
        rows.append(row("avg", of(names), None, 0))
    if suite in ("bbh", "bbh-mini") and names:
        sizes = [len(keys_by_task[t]) for t in names]
        rows.append(row("macro", of(names), None, 0))
        rows.append(row("weighted", of(names), [n / sum(sizes) for n in sizes], 0))
    notes = [f"{suite}/{r.task}: {r.diff.n} example(s) cannot show a difference at p < {1 - r.diff.level:.2f} "
             f"(the sign-flip test's smallest p is 2/2^{r.diff.n})"
             for r in rows if r.diff.n * math.log(2) <= math.log(2 / (1 - r.diff.level))]
    if suite == "mtbench":
        questions = [_questions(units_a, units_b, keys_by_task) for _, units_a, units_b in per_seed]
        overall = [[q] for q in questions if q is not None]
        if len(overall) == len(questions):
            rows.append(row("overall", overall, None, sum(dropped.values())))
        _, units_a, units_b = per_seed[0]
        notes += _judge_notes(units_a, units_b, keys_by_task)
    return rows, notes


def _seed_units(store: Store, a: Side, b: Side, suite: str, metric: str) -> tuple[str, Units, Units]:
    """A and B's per-example units on ``suite`` (checked pairable): (suite version, A's, B's)."""
    version_a, version_b = _suite_version(store, a, suite), _suite_version(store, b, suite)
    samples_a, samples_b = _samples(store, a, suite), _samples(store, b, suite)
    check_pairable(suite, a, b, version_a, version_b, samples_a, samples_b)
    units_a, units_b = units(suite, samples_a), units(suite, samples_b)
    if not units_a.values or not units_b.values:
        side = "A" if not units_a.values else "B"
        why = "was never judged (no ratings)" if suite == "mtbench" else f"has no per-example {metric}"
        raise BenchError(f"{side} on {suite} {why}", "evaluate it with a judge (--judge-url / --judge-model)"
                         if suite == "mtbench" else "re-run the evaluation")
    return version_a, units_a, units_b


def _paired(units_a: Units, units_b: Units, keys: list[tuple[str, Any]]) -> stats.Paired:
    a = [units_a.values[k] for k in keys]
    b = [units_b.values[k] for k in keys]
    return stats.Paired.ratios([x for x, _ in a], [x for x, _ in b], [d for _, d in a], [d for _, d in b])


def _questions(units_a: Units, units_b: Units, keys_by_task: dict[str, list[Any]]) -> stats.Paired | None:
    """MT-Bench ``overall``: one unit per question, summing its answers graded on both sides."""
    sums: dict[Any, list[float]] = {}
    for task, keys in keys_by_task.items():
        for key in keys:
            acc = sums.setdefault(key, [0.0, 0.0, 0.0])
            acc[0] += units_a.values[(task, key)][0]
            acc[1] += units_b.values[(task, key)][0]
            acc[2] += 1
    if not sums:
        return None
    ordered = [sums[k] for k in sorted(sums, key=str)]
    return stats.Paired.ratios([s[0] for s in ordered], [s[1] for s in ordered], [s[2] for s in ordered])


def _judge_notes(units_a: Units, units_b: Units, keys_by_task: dict[str, list[Any]]) -> list[str]:
    keys = [(task, k) for task, ks in keys_by_task.items() for k in ks]
    reps_a = [units_a.repeats.get(k, []) for k in keys]
    reps_b = [units_b.repeats.get(k, []) for k in keys]
    most = max((len(r) for r in reps_a + reps_b), default=0)
    if most < 2:
        return ["mtbench: one judge rating per answer: the judge's own noise is part of the per-answer "
                "differences, and so of the interval, but cannot be told apart"]
    share = stats.judge_variance_share(reps_a, reps_b)
    shown = "not measurable" if share is None else f"{100 * share:.0f}%"
    return [f"mtbench: up to {most} judge ratings per answer (their mean is paired); the judge's noise is "
            f"{shown} of the variance of the per-answer differences, included in the interval"]


# --- printing -----------------------------------------------------------------------------------------


def render(result: Result, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps({
            "a": {"ref": result.a.ref, "run": result.a.run["id"], "model": result.a.model, "role": result.a.role},
            "b": {"ref": result.b.ref, "run": result.b.run["id"], "model": result.b.model, "role": result.b.role},
            "resamples": result.resamples, "seed": result.seed,
            "rows": [row_fields(r) for r in result.rows],
            "notes": result.notes}, indent=1)
    level = f"{100 * result.rows[0].diff.level:.0f}%" if result.rows else "95%"
    header = ("suite", "task", "metric", "n", "A", "B", "B − A", f"{level} CI", "p", "verdict")
    body = []
    for r in result.rows:
        arrow = "↑" if r.higher_is_better else "↓"
        body.append((r.suite, r.task, f"{r.metric} {arrow}", str(r.diff.n), _num(r.a_value), _num(r.b_value),
                     _num(r.diff.estimate, signed=True), f"[{_num(r.diff.low, signed=True)}, {_num(r.diff.high, signed=True)}]",
                     _p(r.diff), _verdict(r)))
    widths = [max(len(h), *(len(x[i]) for x in body)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if 3 <= i <= 8 else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
    out = [f"A: {result.a.describe()}", f"B: {result.b.describe()}", "",
           line(header), "  ".join("-" * w for w in widths)]
    out += [line(x) for x in body]
    dropped = [r for r in result.rows if r.dropped]
    out += [f"note: {r.suite}/{r.task}: {r.dropped} answer(s) graded on one side only, left out" for r in dropped]
    out += [f"note: {n}" for n in result.notes]
    out += ["", f"B − A in the metric's units (↑ higher is better, ↓ lower is better); CI: paired bootstrap over "
                f"examples ({result.resamples:,} resamples, seed {result.seed}); p: two-sided paired sign-flip "
                f"permutation test ({result.resamples:,} permutations); verdict at p < {1 - _level(result):.2f}"]
    return "\n".join(out)


def row_fields(r: Row) -> dict[str, Any]:
    """One compared row as the JSON output shows it (and the rows of :func:`harness.bench.compare`'s table)."""
    return {"suite": r.suite, "suite_version": r.suite_version, "task": r.task, "metric": r.metric,
            "higher_is_better": r.higher_is_better, "n": r.diff.n, "a": r.a_value, "b": r.b_value,
            "difference": r.diff.estimate, "ci_low": r.diff.low, "ci_high": r.diff.high, "level": r.diff.level,
            "se": r.diff.se, "p_value": r.diff.p_value, "verdict": _verdict(r), "dropped": r.dropped,
            "seeds": r.diff.seeds}


def _level(result: Result) -> float:
    return result.rows[0].diff.level if result.rows else stats.DEFAULT_LEVEL


def _verdict(r: Row) -> str:
    if not r.diff.significant:
        return "no significant difference"
    b_better = (r.diff.estimate > 0) == r.higher_is_better
    return "B better" if b_better else "A better"


def _p(d: stats.Difference) -> str:
    return f"<{d.p_floor:.1g}" if d.p_value <= d.p_floor else f"{d.p_value:.4f}"


def _num(x: float, signed: bool = False) -> str:
    spec = ".4f" if abs(x) < 1e5 else ".4e"
    return format(x + 0.0, ("+" if signed else "") + spec)
