"""`bench regress`: did a candidate run get worse than a baseline, beyond noise?

A *reference* (REF) is one of

* a run id (``20261124-093512-3fa9``),
* a run name (``--name`` of `bench run`): the newest run with that name whose status is ``ok``,
* a committed baseline file (``results/baselines/ci_micro.json``) written by ``--save-baseline``.

Scores are matched by (run, model, suite, task, metric). The model is identified by its role and
name (``source zoo:llama-code``), except the fused model, which is just ``fused``: its name is the
run's label and changes from run to run. Runs are paired directly when each side has one; with
several (a baseline file holding ``ci-merge`` and ``ci-ensemble``) they are paired by run name.

Only comparable scores are compared. Two scores are comparable when their suite version, their
evaluation config (the suite's arguments from the run config, ``limit`` and ``seed`` — what the eval
cache key hashes besides the model) and the examples they were computed on are the same. The examples
are fingerprinted from the stored samples: (task, doc_id, target) of every sample, which never depends
on the model. That catches what the arguments cannot show, e.g. held-out text that changed. Runs that
recorded different embedded corpora (``fusebench-corpus`` in their versions: other zoo models, other
held-out text behind the same names) are not comparable at all. Everything else is reported as "not
comparable" with the reason, never compared.

A comparable pair is classified in the metric's better direction (``delta`` > 0 is better):

    regression   drop  > tolerance  and  drop  > sigmas * noise
    improvement  delta > tolerance  and  delta > sigmas * noise
    unchanged    otherwise

with ``noise = sqrt(se_b² + se_c²)`` from the stored standard errors (a missing stderr counts as 0, so
then only the tolerance protects), plus, for MT-Bench scores, the judge's own spread
(``judge_std / sqrt(n)`` per side) when the suite recorded it: a re-judged answer can move that much
without the model changing. The test is unpaired and therefore conservative; it flags large drops
(a broken fuser), not 0.1-sigma drifts.

With ``--paired`` (:class:`PairedNoise`), a score whose both sides are runs in the results DB with
per-example samples of the suite's primary metric uses instead ``noise`` = the standard error of the
*paired* difference over the shared examples (the paired bootstrap of `bench compare`,
:mod:`harness.stats`). Both runs see the same examples, so what is hard for one is hard for the other
and cancels: the paired noise is usually far smaller, and the same rule then flags drops the unpaired
rule cannot tell from noise. The judge's spread of MT-Bench ratings is already inside the per-answer
differences. Scores it cannot pair (baseline files, which keep no samples; metrics other than the
primary; MT-Bench categories) keep the stored standard errors, and the report says how many.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import BenchError
from harness.provenance import CORPUS_KEY
from harness.store import Store

BASELINE_FORMAT = "fusebench-baseline/1"
DEFAULT_TOLERANCE = 1e-3
DEFAULT_SIGMAS = 2.0


# --- one score, from either side ----------------------------------------------------------------


@dataclass(frozen=True)
class ScoreRow:
    """A score with everything needed to decide whether it can be compared, and how."""

    run: str                 # the run's label (its name, else its id): how runs are paired
    role: str                # fused / target / source / model
    model: str               # the model's name
    suite: str
    suite_version: str
    task: str
    metric: str
    value: float | None
    stderr: float | None
    n: int | None
    higher_is_better: bool
    eval_config: dict[str, Any]   # {"suite_args": ..., "limit": ..., "seed": ...}
    data_fingerprint: str | None  # hash of the (task, doc_id, target) of the samples; None without samples
    dtype: str | None = None      # what the score was computed in (None: not recorded, e.g. an older baseline)
    backend: str | None = None

    @property
    def model_key(self) -> str:
        return "fused" if self.role == "fused" else f"{self.role} {self.model}"

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.model_key, self.suite, self.task, self.metric


@dataclass
class RunScores:
    """One run's scores plus the run-level facts printed in the header and stored in baselines."""

    label: str
    meta: dict[str, Any]
    rows: list[ScoreRow] = field(default_factory=list)
    model_ids: dict[str, str] = field(default_factory=dict)  # model_key -> models.id: runs read from the DB only


# --- resolving references -----------------------------------------------------------------------


def load_ref(ref: str, store: Store | None) -> list[RunScores]:
    """The runs a REF stands for: one run from the DB, or every run stored in a baseline file."""
    path = Path(ref)
    if path.suffix == ".json":
        return read_baseline(path)
    if store is None:
        raise BenchError(f"{ref!r} is not a baseline file and there is no results DB", "give --db PATH")
    return [run_scores(store, store.find_run(ref))]


def run_scores(store: Store, run: dict[str, Any]) -> RunScores:
    """Read one run's scores from the DB with their eval config and data fingerprints."""
    config = json.loads(run.get("config") or "{}")
    label = run.get("name") or run["id"]
    fingerprints = _data_fingerprints(store, run["id"])
    scores = store.score_rows(run["id"])
    rows = [
        ScoreRow(run=label, role=s["role"], model=s["model"], suite=s["suite"], suite_version=str(s["suite_version"]),
                 task=s["task"], metric=s["metric"], value=s["value"], stderr=s["stderr"], n=s["n"],
                 higher_is_better=bool(s["higher_is_better"]), eval_config=eval_config(config, s["suite"]),
                 data_fingerprint=fingerprints.get((s["model_id"], s["suite"])), dtype=s["dtype"],
                 backend=s["backend"])
        for s in scores
    ]
    meta = {k: run.get(k) for k in ("id", "name", "kind", "fuser", "git_sha", "started_at", "command")}
    meta.update(fuser_args=config.get("fuser_args", {}), sources=json.loads(run.get("sources") or "[]"),
                target=run.get("target"), versions=json.loads(run.get("versions") or "{}"))
    model_ids = {row.model_key: s["model_id"] for row, s in zip(rows, scores, strict=True)}
    return RunScores(label=label, meta=meta, rows=rows, model_ids=model_ids)


def eval_config(config: dict[str, Any], suite: str) -> dict[str, Any]:
    """The part of a run config that decides what a suite measured (besides the model): the suite's
    own arguments, ``limit`` and the evaluation seed (a seed group's runs evaluate with its first seed, see
    :attr:`harness.config.RunConfig.evaluation_seed`); the same fields the eval cache key hashes."""
    seed = config.get("eval_seed")
    return {"suite_args": (config.get("suite_args") or {}).get(suite, {}), "limit": config.get("limit"),
            "seed": config.get("seed", 0) if seed is None else seed}


def _data_fingerprints(store: Store, run_id: str) -> dict[tuple[str, str], str]:
    """(model_id, suite) -> sha256 of the sorted (task, doc_id, target) of its samples.

    Targets are gold answers / reference text, never model output, so two models scored on the same
    examples get the same fingerprint."""
    items: dict[tuple[str, str], list[str]] = defaultdict(list)
    for s in store.sample_targets(run_id):
        items[(s["model_id"], s["suite"])].append(f"{s['task']}\t{s['doc_id']}\t{s['target'] or ''}")
    return {k: hashlib.sha256("\n".join(sorted(v)).encode()).hexdigest()[:16] for k, v in items.items()}


# --- baseline files -----------------------------------------------------------------------------


def save_baseline(store: Store, refs: list[str], path: Path) -> list[RunScores]:
    """Write the scores of ``refs`` (run ids or names) to ``path``: one JSON object per score per line,
    so that a changed baseline reads well in a diff."""
    runs = [run_scores(store, store.find_run(ref)) for ref in refs]
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise BenchError(f"two of the runs share the name {sorted({x for x in labels if labels.count(x) > 1})}",
                         "give runs with distinct names (`bench run --name`)")
    if not any(r.rows for r in runs):
        raise BenchError("the runs have no scores", "give runs that evaluated at least one suite")
    parts = []
    for r in runs:
        head = json.dumps({"label": r.label, **r.meta}, sort_keys=True, default=str)
        scores = ",\n".join("    " + json.dumps(asdict(s), sort_keys=True) for s in r.rows)
        parts.append(f"  {{\"run\": {head},\n   \"scores\": [\n{scores}\n   ]}}")
    header = {"format": BASELINE_FORMAT, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "usage": "bench regress --baseline THIS_FILE --candidate RUN_NAME_OR_ID"}
    text = json.dumps(header, indent=1)[:-2] + ',\n "runs": [\n' + ",\n".join(parts) + "\n ]\n}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return runs


def read_baseline(path: Path) -> list[RunScores]:
    if not path.is_file():
        raise BenchError(f"baseline file {path} not found", "write one with `bench regress --save-baseline RUN FILE`")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != BASELINE_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {BASELINE_FORMAT!r}")
        runs = []
        for entry in data["runs"]:
            meta = dict(entry["run"])
            label = meta.pop("label")
            runs.append(RunScores(label=label, meta=meta, rows=[ScoreRow(**s) for s in entry["scores"]]))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BenchError(f"{path} is not a FuseBench baseline file: {e}",
                         "regenerate it with `bench regress --save-baseline RUN FILE`") from None
    return runs


# --- comparing ----------------------------------------------------------------------------------


@dataclass
class Comparison:
    """One (run, model, suite, task, metric) seen from both sides."""

    run: str
    key: tuple[str, str, str, str]
    status: str                      # regression / improvement / unchanged / not comparable
    baseline: float | None = None
    candidate: float | None = None
    delta: float | None = None       # candidate - baseline, in the better direction (> 0 is better)
    threshold: float | None = None   # what |delta| had to exceed to count
    reason: str = ""
    paired: bool = False             # noise from the paired difference over shared examples (--paired)

    def label(self) -> str:
        model, suite, task, metric = self.key
        return f"{self.run}: {model} {suite}/{task} {metric}"


@dataclass
class Report:
    comparisons: list[Comparison]
    notes: list[str]                 # run pairs that could not be formed

    def of(self, status: str) -> list[Comparison]:
        return [c for c in self.comparisons if c.status == status]

    @property
    def compared(self) -> int:
        return sum(c.status != "not comparable" for c in self.comparisons)


def pair_runs(baseline: list[RunScores], candidate: list[RunScores]) -> tuple[list[tuple[RunScores, RunScores]], list[str]]:
    """One run on each side: pair them whatever their names. Several: pair by run name."""
    if len(baseline) == 1 and len(candidate) == 1:
        return [(baseline[0], candidate[0])], []
    by_label = {c.label: c for c in candidate}
    pairs, notes = [], []
    for b in baseline:
        if b.label in by_label:
            pairs.append((b, by_label.pop(b.label)))
        else:
            notes.append(f"baseline run {b.label!r} has no candidate run of that name (not compared)")
    notes += [f"candidate run {label!r} has no baseline run of that name (not compared)" for label in by_label]
    return pairs, notes


def compare(baseline: list[RunScores], candidate: list[RunScores], *, suites: list[str] | None = None,
            tolerance: float = DEFAULT_TOLERANCE, sigmas: float = DEFAULT_SIGMAS,
            paired: PairedNoise | None = None) -> Report:
    """Classify every shared score of every run pair; BenchError when nothing at all is comparable.
    ``paired``: take the noise of the scores it can pair from their paired difference (``--paired``)."""
    if tolerance < 0 or sigmas < 0:
        raise BenchError("--tolerance and --sigmas must be >= 0", "give non-negative numbers")
    pairs, notes = pair_runs(baseline, candidate)
    comparisons: list[Comparison] = []
    for b, c in pairs:
        comparisons += _compare_runs(b, c, suites, tolerance, sigmas, paired)
    if paired is not None and not any(x.paired for x in comparisons):
        notes.append("--paired: no score could be paired (both sides need DB runs with per-example samples of the "
                     "suite's primary metric); all used the stored standard errors")
    report = Report(comparisons, notes)
    if not report.compared:
        reasons = sorted({x.reason for x in report.comparisons if x.reason}) or notes or ["no shared scores"]
        what = f" for suite(s) {', '.join(suites)}" if suites else ""
        raise BenchError(f"nothing comparable between baseline and candidate{what}: {'; '.join(reasons[:3])}",
                         "compare runs of the same suites, suite versions, suite arguments and limit "
                         "(or regenerate the baseline with --save-baseline)")
    return report


def _compare_runs(b: RunScores, c: RunScores, suites: list[str] | None, tolerance: float,
                  sigmas: float, paired: PairedNoise | None = None) -> list[Comparison]:
    def index(run: RunScores) -> dict[tuple[str, str, str, str], ScoreRow]:
        return {r.key: r for r in run.rows if not suites or r.suite in suites}

    base, cand = index(b), index(c)
    corpus_b, corpus_c = (run.meta.get("versions", {}).get(CORPUS_KEY) for run in (b, c))
    if corpus_b != corpus_c and (corpus_b or corpus_c):
        # Different zoo models and held-out text behind the same names: nothing here measures the same thing.
        reason = f"embedded corpus {corpus_b or '(not recorded)'} vs {corpus_c or '(not recorded)'}"
        return [Comparison(b.label, key, "not comparable", base[key].value if key in base else None,
                           cand[key].value if key in cand else None, reason=reason)
                for key in list(base) + [k for k in cand if k not in base]]
    out = []
    for key in list(base) + [k for k in cand if k not in base]:
        rb, rc = base.get(key), cand.get(key)
        if rb is None or rc is None:
            side = "baseline" if rb is None else "candidate"
            out.append(Comparison(b.label, key, "not comparable", reason=f"not in the {side}",
                                  baseline=rb.value if rb else None, candidate=rc.value if rc else None))
            continue
        why = why_not_comparable(rb, rc)
        if why:
            out.append(Comparison(b.label, key, "not comparable", rb.value, rc.value, reason=why))
            continue
        paired_se = paired.se(b, c, rb) if paired is not None else None
        noise = paired_se if paired_se is not None else math.sqrt(_variance(rb, base) + _variance(rc, cand))
        sign = 1.0 if rb.higher_is_better else -1.0
        delta = sign * (rc.value - rb.value) + 0.0  # type: ignore[operator]  # (+ 0.0: no "-0.0000")
        threshold = max(tolerance, sigmas * noise)
        status = "regression" if -delta > threshold else "improvement" if delta > threshold else "unchanged"
        out.append(Comparison(b.label, key, status, rb.value, rc.value, delta=delta, threshold=threshold,
                              paired=paired_se is not None))
    return out


class PairedNoise:
    """``--paired``: the standard error of a score's paired difference, from the per-example samples of the
    two DB runs (:func:`harness.compare.compare_suite`, once per model pair and suite)."""

    def __init__(self, store: Store, resamples: int = 10_000, seed: int = 0):
        self.store = store
        self.resamples = resamples
        self.seed = seed
        self._cache: dict[tuple[str, str, str, str, str], dict[str, float]] = {}

    def se(self, b: RunScores, c: RunScores, row: ScoreRow) -> float | None:
        """The paired standard error of ``row``'s difference between the runs, or None when it cannot be paired."""
        from harness.registry import PRIMARY_METRIC

        model_b, model_c = b.model_ids.get(row.model_key), c.model_ids.get(row.model_key)
        if PRIMARY_METRIC.get(row.suite) != row.metric or model_b is None or model_c is None:
            return None
        key = (b.meta["id"], model_b, c.meta["id"], model_c, row.suite)
        if key not in self._cache:
            self._cache[key] = self._suite(key)
        return self._cache[key].get(row.task)

    def _suite(self, key: tuple[str, str, str, str, str]) -> dict[str, float]:
        from harness import compare

        run_b, model_b, run_c, model_c, suite = key
        sides = [compare.Side(ref=run, run=self.store.get_run(run), model_id=model, model=model, role="")
                 for run, model in ((run_b, model_b), (run_c, model_c))]
        try:
            rows, _ = compare.compare_suite(self.store, [(sides[0], sides[1])], suite, resamples=self.resamples, seed=self.seed)
        except BenchError:  # not pairable after all (e.g. prompts differ): the stored stderrs decide
            return {}
        return {r.task: r.diff.se for r in rows}


def why_not_comparable(b: ScoreRow, c: ScoreRow) -> str:
    """Empty when the two scores measure the same thing on the same examples, else the reason."""
    if b.suite_version != c.suite_version:
        return f"suite version {b.suite_version} vs {c.suite_version}"
    if b.higher_is_better != c.higher_is_better:
        return "the metric's direction differs"
    for field_name in ("limit", "seed"):
        vb, vc = b.eval_config.get(field_name), c.eval_config.get(field_name)
        if vb != vc:
            return f"{field_name} {vb} vs {vc}"
    args_b, args_c = b.eval_config.get("suite_args") or {}, c.eval_config.get("suite_args") or {}
    changed = sorted(k for k in set(args_b) | set(args_c) if args_b.get(k) != args_c.get(k))
    if changed:
        shown = lambda args, k: repr(args[k]) if k in args else "(default)"  # noqa: E731
        return "suite arguments differ: " + ", ".join(f"{k}={shown(args_b, k)} vs {shown(args_c, k)}" for k in changed)
    precision_b, precision_c = (f"{r.dtype}/{r.backend}" for r in (b, c))
    if b.dtype and c.dtype and precision_b != precision_c:
        return f"computed in {precision_b} vs {precision_c}"
    if b.data_fingerprint and c.data_fingerprint and b.data_fingerprint != c.data_fingerprint:
        return f"evaluated on different examples (data fingerprint {b.data_fingerprint} vs {c.data_fingerprint})"
    if b.value is None or c.value is None:
        return "no value (NaN or not computed) on one side"
    return ""


def _variance(row: ScoreRow, same_side: dict[tuple[str, str, str, str], ScoreRow]) -> float:
    """stderr², plus the judge's own spread of this score when the suite stored one (MT-Bench)."""
    var = (row.stderr or 0.0) ** 2
    judge = same_side.get((row.model_key, row.suite, row.task, "judge_std"))
    if row.metric == "score" and judge is not None and judge.value and row.n:
        var += judge.value**2 / row.n
    return var


# --- printing -----------------------------------------------------------------------------------

_ORDER = ("regression", "improvement", "not comparable", "unchanged")


def render(report: Report, baseline_desc: str, candidate_desc: str) -> str:
    """A fixed-width table, regressions first, then a summary that names every regressed metric."""
    lines = [f"baseline:  {baseline_desc}", f"candidate: {candidate_desc}", ""]
    header = ("status", "run", "model", "suite/task", "metric", "baseline", "candidate", "Δ (+ better)", "threshold")
    rows = []
    incomparable: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for status in _ORDER:
        for c in report.of(status):
            model, suite, task, metric = c.key
            if status == "not comparable":
                incomparable[(c.run, model, suite, c.reason)] += 1
                continue
            rows.append((status, c.run, model, f"{suite}/{task}", metric, _num(c.baseline), _num(c.candidate),
                         _num(c.delta, signed=True), _num(c.threshold) + (" (paired)" if c.paired else "")))
    if rows:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        fmt = lambda r: "  ".join(x.rjust(w) if i >= 5 else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths, strict=True)))  # noqa: E731
        lines += [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
    if incomparable:
        lines += ["", "not comparable (never compared):"]
        lines += [f"  {run}: {model} {suite}: {n} score(s): {reason}"
                  for (run, model, suite, reason), n in sorted(incomparable.items())]
    lines += [f"note: {n}" for n in report.notes]
    n_paired = sum(c.paired for c in report.comparisons)
    if n_paired:
        lines.append(f"paired: {n_paired} of {report.compared} compared score(s) took their noise from the paired "
                     "difference over shared examples (threshold marked \"(paired)\"), the others from stored stderrs")
    counts = {s: len(report.of(s)) for s in _ORDER}
    lines += ["", f"{counts['regression']} regression(s), {counts['improvement']} improvement(s), "
                  f"{counts['unchanged']} unchanged, {counts['not comparable']} not comparable"]
    regressions = report.of("regression")
    if regressions:
        lines.append("REGRESSION in: " + "; ".join(f"{c.label()} ({_num(c.delta, signed=True)})" for c in regressions))
    return "\n".join(lines)


def describe(runs: list[RunScores], ref: str) -> str:
    parts = [f"{r.label} ({r.meta.get('id')}, git {str(r.meta.get('git_sha') or '-')[:10]})" for r in runs]
    return f"{ref} -> " + ", ".join(parts)


def _num(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    spec = ".4f" if abs(x) < 1e5 else ".4e"  # word perplexities of tiny models reach 1e13
    return format(x, ("+" if signed else "") + spec)
