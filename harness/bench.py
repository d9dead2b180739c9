"""The `bench` commands as Python functions, for notebooks and other tools: ``bench.run``, ``bench.evaluate``,
``bench.teachers``, ``bench.leaderboard``, ``bench.compare`` and ``bench.regress`` do what the commands of those
names do, and return
typed results (pandas frames inside) instead of printing them. The CLI (:mod:`harness.cli`) parses the command line,
calls these same functions and prints what they return::

    from harness import bench

    result = bench.run(fuser="merge", sources=["zoo:llama-code", "zoo:llama-math"], target="zoo:llama-base",
                       suites=["perplexity"], limit=8)
    result.scores                       # a row per model, suite, task and metric of the run
    bench.leaderboard().table           # `bench leaderboard` as a DataFrame
    bench.compare("zoo:llama-math", result.run_id).table

Each function reads (and `run` and `evaluate` write) the results DB ``db``: ``results/bench.db`` unless given, as on
the command line. Bad input raises :class:`harness.errors.BenchError`, whose message names the fix. Ctrl-C during
`run` or `evaluate` closes the run as interrupted; ``resume=RUN_ID`` continues it. Importing this module imports
neither torch nor pandas: each function imports what it needs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import BenchError
from harness.paths import DEFAULT_DB

if TYPE_CHECKING:
    import pandas as pd

    from harness import compare as compare_mod
    from harness import regress as regress_mod
    from harness.api import PreparedStore, Timings
    from harness.config import RunSpec
    from harness.session import NewRun, Resume
    from harness.store import Store

#: A results DB: a path, as ``--db`` takes it.
Db = str | Path
#: Called with one line of progress (the CLI prints it).
Progress = Callable[[str], None]


# --- what every command shares ----------------------------------------------------------------------


def comma_separated(values: Iterable[str] | None) -> list[str]:
    """``values`` with each comma-separated item split, blanks dropped: ``["a,b", "c"]`` -> ``["a", "b", "c"]``."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def offline_defaults() -> None:
    """Models on disk never need the hub: offline mode unless the user chose otherwise (``BENCH_ALLOW_HUB=1``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("BENCH_ALLOW_HUB") != "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def store_for_reading(db: Db) -> Store:
    """The results DB for a command that only reads it; an existing DB that this user cannot write (a read-only
    mount, another user's results) is opened read-only instead of failing on the migration."""
    from harness.store import Store

    if os.path.isfile(db) and not _writable(db):
        return Store.read_only(db)
    return Store(db)


def store_for_writing(db: Db) -> Store:
    """The results DB for a command that records a run."""
    from harness.store import Store

    if os.path.isfile(db) and not _writable(db):
        raise BenchError(f"results DB {db} is read-only here (the file or its folder cannot be written)",
                         "give --db a writable path; bench runs, leaderboard and report can still read this one")
    return Store(db)


def _writable(db: Db) -> bool:
    """Whether this user can write the existing DB file ``db`` and its folder (SQLite writes its WAL beside it)."""
    return os.access(db, os.W_OK) and os.access(os.path.dirname(os.path.abspath(db)), os.W_OK)


def _silent(line: str) -> None:
    """A progress or ``on_open`` callback that does nothing."""


# --- results ------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RunResult:
    """A finished `bench run` or `bench eval` run.

    ``run_ids``: every run it made (a seed group's, one per seed; else just ``run_id``). ``scores``: their scores, a
    row per run, model, suite, task and metric (the DB view ``score_rows``: ``model``, ``role``, ``value``,
    ``stderr``, ``n``, ...). ``seconds``: the wall seconds of their stages, over every attempt."""

    run_id: str
    status: str
    spec: RunSpec
    scores: pd.DataFrame
    run_ids: tuple[str, ...]
    seconds: float
    #: Per run id that judged anything: the judge tokens it spent (:meth:`harness.store.Store.judge_usage`).
    judge_usage: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Leaderboard:
    """What `bench leaderboard` shows. ``table``: group, model and role, then a column per suite/task (and metric)
    with, beside each value that has an interval, its half-width (``"<column> ±"``). ``higher_is_better``: per value
    column."""

    table: pd.DataFrame
    higher_is_better: dict[str, bool]
    #: What an empty board says instead of the default hint (a run whose answers are stored, not scored).
    empty_note: str | None = None

    @property
    def marks(self) -> dict[str, dict[int, str]]:
        """Per value column: the row positions of the best value (``"best"``) or of those tied for best (``"tied"``)."""
        marks: dict[str, dict[int, str]] = self.table.attrs.get("marks", {})
        return marks

    @property
    def notes(self) -> list[str]:
        """The caveats of the runs whose values it shows (a local MT-Bench judge, say)."""
        notes: list[str] = self.table.attrs.get("notes", [])
        return notes

    def render(self, format: str = "table") -> str:
        """As `bench leaderboard --format FORMAT` prints it: table, markdown, csv or json."""
        from harness import leaderboard as boards

        if self.table.empty and self.empty_note and format == "table":
            return self.empty_note
        return boards.render(self.table, self.higher_is_better, format)


@dataclass(frozen=True, eq=False)
class PairedComparison:
    """What `bench compare A B` shows: ``table`` has a row per suite and task (and aggregate) with A's and B's values,
    the difference B − A, its 95% interval (``ci_low``, ``ci_high``), ``p_value`` and ``verdict``; ``result`` holds
    the two sides and the notes."""

    result: compare_mod.Result
    table: pd.DataFrame

    def render(self, format: str = "table") -> str:
        """As `bench compare --format FORMAT` prints it: table or json."""
        from harness import compare as compare_mod

        return compare_mod.render(self.result, format)


@dataclass(frozen=True, eq=False)
class RegressionCheck:
    """What `bench regress` shows: ``table`` has a row per score seen from both sides (run, model, suite, task,
    metric, status: regression / improvement / unchanged / not comparable, baseline, candidate, delta, threshold,
    reason, paired); ``baseline`` and ``candidate`` describe the two sides."""

    report: regress_mod.Report
    table: pd.DataFrame
    baseline: str
    candidate: str

    @property
    def regressions(self) -> list[regress_mod.Comparison]:
        """The scores that got worse beyond noise (`bench regress` exits 1 when there are any)."""
        return self.report.of("regression")

    def render(self) -> str:
        """As `bench regress` prints it."""
        from harness import regress as regress_mod

        return regress_mod.render(self.report, self.baseline, self.candidate)


@dataclass(frozen=True, eq=False)
class TeacherStores:
    """What `bench teachers` computed or found: one :class:`harness.api.PreparedStore` per store (teacher stores
    first, then aligned ones), for job ``job`` of ``jobs`` (``--shard JOB/JOBS``; 0 of 1 without it), and the
    seconds of the fuser's stages (``timings``)."""

    stores: list[PreparedStore]
    job: int
    jobs: int
    timings: Timings

    @property
    def complete(self) -> bool:
        """Whether every store has all its shards (then `bench run` with the same settings computes none)."""
        return all(s.complete for s in self.stores)

    @property
    def table(self) -> pd.DataFrame:
        """A row per store: kind, model, key, shards, shards_present, shards_written, bytes, seconds, path."""
        import pandas as pd

        return pd.DataFrame([{**dataclasses.asdict(s), "path": str(s.path)} for s in self.stores])

    def render(self) -> str:
        """As `bench teachers` prints it: a line per store, then what is left to do."""
        header = f"{'store':<8} {'model':<40} {'key':<20} {'shards':>11} {'computed':>8} {'MB':>9} {'seconds':>8}"
        lines = [header]
        for s in self.stores:
            lines.append(f"{s.kind:<8} {s.model[:40]:<40} {s.key:<20} {f'{s.shards_present}/{s.shards}':>11} "
                         f"{s.shards_written:>8} {s.bytes / 1e6:>9.2f} {s.seconds:>8.1f}")
        present, total = sum(s.shards_present for s in self.stores), sum(s.shards for s in self.stores)
        if self.complete:
            lines.append(f"all {len(self.stores)} stores complete ({total} shards): a bench run with the same "
                         "settings reuses them")
        else:
            lines.append(f"job {self.job}/{self.jobs} done: {present} of {total} shards present; the other jobs "
                         "compute the rest, and a bench teachers or bench run without --shard computes whatever is "
                         "still missing")
        return "\n".join(lines)


# --- bench run, bench eval --------------------------------------------------------------------------


def run(fuser: str | None = None, sources: str | Sequence[str] | None = None, target: str | None = None,
        suites: str | Sequence[str] | None = None, *, config: str | None = None, sets: str | Sequence[str] | None = None,
        limit: int | None = None, name: str | None = None, seed: int | None = None,
        seeds: str | Sequence[int] | None = None, control: bool = False, processes: int | None = None,
        accelerate_config: str | None = None, suite_options: Mapping[str, Any] | None = None,
        dtype: str | None = None, device: str | None = None, batch_size: int | str | None = None,
        backend: str | None = None, base_url: str | None = None, tokenizer: str | None = None,
        log: str | Sequence[str] | None = None, judge_price: str | Sequence[float] | None = None,
        resume: str | None = None, db: Db = DEFAULT_DB, on_open: Callable[[str], None] = _silent,
        progress: Progress = _silent) -> RunResult:
    """`bench run`: fuse ``sources`` with ``fuser``, then evaluate the fused model and its sources on ``suites``.

    The arguments are the command's options: ``sources`` model references (each may be a comma-separated list),
    ``config`` a run YAML file, ``sets`` ``key=value`` overrides (``["method=ties"]``), ``seeds`` a seed group
    (``[0, 1, 2]`` or ``"0,1,2"``), ``suite_options`` the suite fields the suite flags set (``data_dir``,
    ``judge_url``, ... on every suite of the run that has them), ``batch_size`` a number or ``"auto"``,
    ``processes`` / ``accelerate_config`` how the fusion's training is launched (docs/distributed.md), ``log`` where
    the training curves go besides the DB (``"tensorboard:DIR"``, ``"wandb"``: :mod:`harness.training_log`),
    ``judge_price`` USD per 1k prompt / completion tokens of the LLM judges (``"0.0025,0.01"`` or a pair). ``resume``
    continues a failed or interrupted run by id (the other arguments are then its own). ``on_open`` is called with
    the run id as soon as the run is recorded; ``progress`` with each line the command prints before its
    leaderboard."""
    from harness.config import build_run_config
    from harness.session import NewRun, Resume

    offline_defaults()
    source_list, suite_list, set_list = comma_separated(_list(sources)), _list(suites), _list(sets)
    raw = {} if resume else {"fuser": fuser, "sources": source_list, "target": target, "suites": suite_list,
                             "config_file": config, "set": set_list, "limit": limit, "name": name, "seed": seed}
    opening = Resume("run", resume) if resume else NewRun("run", name, raw, lambda: build_run_config(
        config_file=config, fuser=fuser, sources=source_list, target=target, suites=suite_list, sets=set_list,
        name=name, limit=limit, seed=seed, suite_flags=dict(suite_options or {}), processes=processes,
        control=control or None, seeds=_seed_list(seeds), accelerate_config=accelerate_config,
        placement=_placement(dtype, device, batch_size, backend, base_url, tokenizer), log=_list(log),
        judge_price=_price(judge_price)))
    with store_for_writing(db) as store:
        run_ids, spec = _run_fusions(store, opening, raw, on_open, progress)
        return _run_result(store, run_ids, spec)


def _run_fusions(store: Store, opening: NewRun | Resume, raw: dict[str, Any], on_open: Callable[[str], None],
                 progress: Progress) -> tuple[list[str], RunSpec]:
    """The run that ``opening`` opens or resumes: its ids and spec. A spec with seeds is a run group: one run per
    seed, sharing ``group_id`` (the first run's id); the first row, already open, takes the first seed. Each run is a
    normal run: its own row, artifact and ``--resume``."""
    from harness.runner import run_fusion
    from harness.session import NewRun, run_session

    with run_session(store, opening, on_open) as session:
        first_id, spec = session.id, session.spec
        if spec.seeds:
            session.record(_seed_spec(spec, spec.seeds[0]), group_id=first_id)
            progress(f"seed {spec.seeds[0]} (1/{len(spec.seeds)}): run {first_id}")
        run_fusion(session)
    progress(f"run {first_id} ok")
    run_ids = [first_id]
    for position, seed in enumerate(spec.seeds[1:], start=2):
        one = _seed_spec(spec, seed)
        seed_run = NewRun("run", one.name, {**raw, "seed": seed}, _given(one), {"group_id": first_id})
        with run_session(store, seed_run, on_open) as session:
            progress(f"seed {seed} ({position}/{len(spec.seeds)}): run {session.id}")
            run_fusion(session)
        progress(f"run {session.id} ok")
        run_ids.append(session.id)
    if spec.seeds:
        progress(f"run group {first_id}: {len(spec.seeds)} seeds ok")
    return run_ids, spec


def _seed_spec(group: RunSpec, seed: int) -> RunSpec:
    """The spec of the run of seed group ``group`` with seed ``seed``."""
    one = group.for_seed(seed)
    return one.model_copy(update={"name": f"{group.name}@seed{seed}"}) if group.name else one


def _given(spec: RunSpec) -> Callable[[], RunSpec]:
    """A spec builder that returns ``spec`` as it is (the later runs of a seed group: made with the group's spec)."""
    return lambda: spec


def _seed_list(seeds: str | Sequence[int] | None) -> list[int] | None:
    if not isinstance(seeds, str):
        return None if seeds is None else list(seeds)
    try:
        return [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        raise BenchError(f"--seeds {seeds!r} is not a comma-separated list of numbers", "e.g. --seeds 0,1,2") from None


def teachers(fuser: str | None = None, sources: str | Sequence[str] | None = None, target: str | None = None, *,
             config: str | None = None, sets: str | Sequence[str] | None = None, processes: int | None = None,
             shard: str | tuple[int, int] | None = None, dtype: str | None = None,
             device: str | None = None) -> TeacherStores:
    """`bench teachers`: only the teacher (and alignment) stage of a fusion, the stores that :func:`run` with the same
    ``fuser``, ``sources``, ``target``, ``config``, ``sets``, ``dtype`` and ``device`` computes first; that run then
    finds them by content and computes no shard of them. ``processes``: split the shards over N processes
    (accelerate launch); ``shard``: ``"I/N"`` (or ``(I, N)``), this job's share when N independent jobs (machines,
    a SLURM array) sharing ``$BENCH_HOME`` split them, each computing the shards ``s % N == I``. Records nothing in
    the results DB."""
    from harness.config import build_run_config
    from harness.runner import run_prepare

    offline_defaults()
    job, jobs = parse_shard(shard)
    spec = build_run_config(config_file=config, fuser=fuser, sources=comma_separated(_list(sources)), target=target,
                            sets=_list(sets), processes=processes,
                            placement=_placement(dtype, device, None, None, None, None))
    stores, timings = run_prepare(spec, job, jobs)
    return TeacherStores(stores, job, jobs, timings)


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"I/N"`` (or ``(I, N)``) as ``(I, N)`` with 0 <= I < N; None: ``(0, 1)``, the whole work."""
    if shard is None:
        return 0, 1
    text = shard if isinstance(shard, str) else f"{shard[0]}/{shard[1]}"
    index, sep, count = text.partition("/")
    if not (sep and index.strip().isdigit() and count.strip().isdigit()) or not 0 <= int(index) < int(count):
        raise BenchError(f"--shard {text!r} is not I/N with 0 <= I < N",
                         "e.g. --shard 0/4, 1/4, 2/4 and 3/4 for four jobs")
    return int(index), int(count)


def evaluate(models: str | Sequence[str] | None = None, suites: str | Sequence[str] | None = None, *,
             sets: str | Sequence[str] | None = None, limit: int | None = None, name: str | None = None,
             suite_options: Mapping[str, Any] | None = None, dtype: str | None = None, device: str | None = None,
             batch_size: int | str | None = None, backend: str | None = None, base_url: str | None = None,
             tokenizer: str | None = None, processes: int | None = None,
             judge_price: str | Sequence[float] | None = None, resume: str | None = None,
             db: Db = DEFAULT_DB, on_open: Callable[[str], None] = _silent, progress: Progress = _silent) -> RunResult:
    """`bench eval`: evaluate ``models`` as they are (no fusion) on ``suites``. The arguments are those of
    :func:`run` that the command has (``processes``: data-parallel evaluation); ``resume`` continues an
    interrupted `bench eval` run (its models and flags; the evaluations it recorded are kept)."""
    from harness.config import build_eval_config
    from harness.runner import run_eval
    from harness.session import NewRun, Resume, run_session

    offline_defaults()
    given, suite_list, set_list = _list(models), _list(suites), _list(sets)
    if not given and not resume:
        raise BenchError("no models to evaluate", "name them, e.g. bench.evaluate(['zoo:llama-base']), "
                         "or continue a run with resume=RUN_ID")
    # the models are recorded with the spec: what resume evaluates, should this attempt not finish
    opening = Resume("eval", resume) if resume else NewRun(
        "eval", name, {"models": given, "suites": suite_list, "set": set_list, "limit": limit},
        lambda: build_eval_config(suites=suite_list, sets=set_list, limit=limit, name=name,
                                  suite_flags=dict(suite_options or {}),
                                  placement={**_placement(dtype, device, batch_size, backend, base_url, tokenizer),
                                             **({"processes": processes} if processes is not None else {})},
                                  judge_price=_price(judge_price)),
        {"sources": comma_separated(given)})
    with store_for_writing(db) as store:
        with run_session(store, opening, on_open) as session:
            run_id, spec = session.id, session.spec
            run_eval(session, json.loads(store.get_run(session.id)["sources"]))
        progress(f"run {run_id} ok")
        return _run_result(store, [run_id], spec)


def _list(values: str | Sequence[str] | None) -> list[str] | None:
    """``values`` as a list (a string alone: a list of one); None stays None."""
    if values is None:
        return None
    return [values] if isinstance(values, str) else list(values)


def _price(price: str | Sequence[float] | None) -> tuple[float, float] | None:
    """``--judge-price`` as text (``"0.0025,0.01"``) or a pair of numbers -> the pair (checked)."""
    from harness.judge import parse_price

    if price is None:
        return None
    return parse_price(price if isinstance(price, str) else ",".join(map(str, price)))


def _placement(dtype: str | None, device: str | None, batch_size: int | str | None, backend: str | None,
               base_url: str | None, tokenizer: str | None) -> dict[str, Any]:
    """The placement options given (``--dtype``, ``--device``, ``--batch-size`` ...), as the config builders take
    them; ``batch_size`` as text is a number or ``auto``."""
    given = (("dtype", dtype), ("device", device), ("backend", backend), ("base_url", base_url),
             ("tokenizer", tokenizer))
    out: dict[str, Any] = {k: v for k, v in given if v is not None}
    if isinstance(batch_size, str):
        if batch_size != "auto" and not (batch_size.isdigit() and int(batch_size) >= 1):
            raise BenchError(f"--batch-size {batch_size!r} is neither a positive number nor auto", "e.g. --batch-size 16")
        out["batch_size"] = batch_size if batch_size == "auto" else int(batch_size)
    elif batch_size is not None:
        out["batch_size"] = batch_size
    return out


def _run_result(store: Store, run_ids: list[str], spec: RunSpec) -> RunResult:
    import pandas as pd

    from harness.store import total_seconds

    rows = [store.get_run(run_id) for run_id in run_ids]
    return RunResult(run_id=run_ids[0], status=rows[0]["status"], spec=spec,
                     scores=pd.DataFrame([score for run_id in run_ids for score in store.score_rows(run_id)]),
                     run_ids=tuple(run_ids),
                     seconds=sum(total_seconds(json.loads(r["timings"])) for r in rows if r.get("timings")),
                     judge_usage=store.judge_usage(run_ids))


# --- reading results --------------------------------------------------------------------------------


def leaderboard(suites: str | Sequence[str] | None = None, *, all_metrics: bool = False, per_task: bool = False,
                runs: str | Sequence[str] | None = None, db: Db = DEFAULT_DB) -> Leaderboard:
    """`bench leaderboard`: one row per model over every ``ok`` run (of ``suites``), fused models beside their
    sources; each suite's primary metric on its summary tasks unless ``all_metrics`` / ``per_task``. ``runs``: only
    the scores of these runs (what `bench run` and `bench eval` print of the runs they made)."""
    from harness import leaderboard as boards

    chosen = _list(runs)
    with store_for_reading(db) as store:
        table, higher_is_better = boards.build(store, _list(suites), all_metrics=all_metrics, per_task=per_task,
                                               runs=chosen)
        empty_note = _unscored_note(store, chosen) if chosen and table.empty else None
    return Leaderboard(table, higher_is_better, empty_note)


def _unscored_note(store: Store, run_ids: list[str]) -> str | None:
    """Why runs that finished have no score to show: the suites whose answers they stored unscored (MT-Bench without
    a judge), or None when they stored nothing."""
    unscored = sorted({suite for run_id in run_ids for member in store.members_with_samples(run_id)
                       for suite in store.suites_with_samples(run_id, member["model_id"])})
    if not unscored:
        return None
    run = run_ids[0] if len(run_ids) == 1 else f"{run_ids[0]} (and {len(run_ids) - 1} more)"
    return (f"run {run}: no scores to show; the answers on {', '.join(unscored)} are stored, not judged "
            f"(`bench samples {run_ids[0]}` shows them; a judge, --judge-model zoo:NAME or --judge-url URL, rates them)")


def compare(a: str, b: str, suites: str | Sequence[str] | None = None, *, resamples: int | None = None, seed: int = 0,
            db: Db = DEFAULT_DB) -> PairedComparison:
    """`bench compare A B`: B − A per suite and task on the same examples, with a paired bootstrap interval
    (``resamples``, default :data:`harness.stats.DEFAULT_RESAMPLES`) and a permutation p-value. ``a`` and ``b``
    are REFs: ``MODEL@RUN``, a run id or name, or a model name (see :mod:`harness.compare`)."""
    import pandas as pd

    from harness import compare as compare_mod
    from harness import stats

    with store_for_reading(db) as store:
        result = compare_mod.compare(store, a, b, _list(suites) or None,
                                     resamples=stats.DEFAULT_RESAMPLES if resamples is None else resamples, seed=seed)
    return PairedComparison(result, pd.DataFrame([compare_mod.row_fields(r) for r in result.rows]))


def regress(baseline: str | Sequence[str], candidate: str | Sequence[str], suites: str | Sequence[str] | None = None, *,
            tolerance: float | None = None, sigmas: float | None = None, paired: bool = False,
            db: Db = DEFAULT_DB) -> RegressionCheck:
    """`bench regress`: compare the ``candidate`` runs with the ``baseline`` (each a run id, a run name or a baseline
    .json file); a change is a regression beyond ``tolerance`` (metric units) and ``sigmas`` standard errors
    (defaults :data:`harness.regress.DEFAULT_TOLERANCE`, :data:`~harness.regress.DEFAULT_SIGMAS`). ``paired``:
    where both sides are DB runs with samples, the noise of the paired difference over their shared examples."""
    import pandas as pd

    from harness import regress as regress_mod

    baseline, candidate = _list(baseline) or [], _list(candidate) or []
    needs_db = [r for r in [*baseline, *candidate] if not r.endswith(".json")]
    store = store_for_reading(db) if needs_db else None
    base = [run for ref in baseline for run in regress_mod.load_ref(ref, store)]
    cand = [run for ref in candidate for run in regress_mod.load_ref(ref, store)]
    if paired and store is None:
        raise BenchError("--paired needs runs from the results DB (baseline files keep no per-example samples)",
                         "give run ids or names on both sides, or leave out --paired")
    report = regress_mod.compare(
        base, cand, suites=_list(suites) or None,
        tolerance=regress_mod.DEFAULT_TOLERANCE if tolerance is None else tolerance,
        sigmas=regress_mod.DEFAULT_SIGMAS if sigmas is None else sigmas,
        paired=regress_mod.PairedNoise(store) if paired and store is not None else None)
    table = pd.DataFrame([{"run": c.run, "model": c.key[0], "suite": c.key[1], "task": c.key[2], "metric": c.key[3],
                           "status": c.status, "baseline": c.baseline, "candidate": c.candidate, "delta": c.delta,
                           "threshold": c.threshold, "reason": c.reason, "paired": c.paired}
                          for c in report.comparisons])
    return RegressionCheck(report, table, regress_mod.describe(base, " ".join(baseline)),
                           regress_mod.describe(cand, " ".join(candidate)))
