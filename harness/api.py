"""The plugin contract: what the harness reads of a suite (evals) and of a fuser, declared in :class:`Suite` and
:class:`Fuser`, and the values that pass between plugins and the harness.

Evaluation always goes through lm-eval's ``LM`` interface (``loglikelihood``,
``loglikelihood_rolling``, ``generate_until``): a transformers model is wrapped in lm-eval's
``HFLM``, and runtime fusers (ensemble, Cool-Fusion) are ``LM`` subclasses themselves. So every
suite can score every kind of model.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, ABCMeta, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from lm_eval.api.model import LM

    from harness.model import ModelRef


class Timings(dict):
    """Wall seconds per stage, in the order the stages ran (a stage that runs again adds to its seconds)."""

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - start

    def add(self, other: dict[str, float], prefix: str = "") -> None:
        """Add the seconds of ``other``'s stages, each as stage ``prefix + its name``."""
        for name, seconds in other.items():
            self[prefix + name] = self.get(prefix + name, 0.0) + seconds


# --- evaluation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    """One aggregate number. ``task`` is the subset ('' or the suite name for the suite aggregate)."""

    task: str
    metric: str
    value: float
    higher_is_better: bool = True
    stderr: float | None = None
    n: int | None = None


@dataclass(frozen=True)
class Sample:
    """One evaluated example, kept for inspection (`bench samples`)."""

    task: str
    doc_id: int
    prompt: str
    output: str
    target: str
    metrics: dict[str, float] = field(default_factory=dict)
    extracted: str | None = None


@dataclass
class EvalResult:
    """A suite's scores and samples, and ``judge_usage``: what LLM judges were sent and wrote for them, one dict per
    judge with ``judge`` (who), ``requests``, ``prompt_tokens``, ``completion_tokens`` and ``unmetered`` (replies
    that reported no token counts; :meth:`harness.judge.JudgeUsage.record`), which the runner records per run."""

    scores: list[Score]
    samples: list[Sample] = field(default_factory=list)
    judge_usage: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EvalContext:
    """What a suite may need besides the model: a scratch dir, the seed, a limit, a progress hook."""

    workdir: Path
    seed: int = 0
    limit: int | None = None
    batch_size: int = 8


class Suite(ABC):
    """An evaluation suite: every attribute the harness reads of one (:mod:`harness.registry` hands out suite classes
    checked against it). Bump ``version`` whenever prompts, data or metrics change."""

    name: ClassVar[str]
    version: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    #: The headline metric: what the leaderboard, report, `bench compare`, `skills` and `regress` show of the suite
    #: (:data:`harness.registry.PRIMARY_METRIC`); None: no metric stands out.
    primary_metric: ClassVar[str | None] = None
    #: The headline of evaluations that have no ``primary_metric`` (MT-Bench judged pairwise: ``win_rate_adjusted``,
    #: as it has no 1-10 score): the leaderboard shows it for them instead; None: no such evaluations.
    fallback_metric: ClassVar[str | None] = None
    #: The tasks the leaderboard and report show by default, in this order (:data:`harness.registry.SUMMARY_TASKS`;
    #: `--per-task` shows all); None: every task.
    summary_tasks: ClassVar[tuple[str, ...] | None] = None
    #: `bench score`: a method ``score_predictions(predictions_file, cfg, workdir) -> EvalResult`` that scores outputs
    #: made elsewhere with the suite's own answer extraction (``workdir``: an empty scratch folder); None when the
    #: suite cannot.
    score_predictions: ClassVar[Callable[..., EvalResult] | None] = None
    #: True when ``evaluate`` sends every model call through lm-eval's evaluator (:func:`harness.lmeval.run_tasks`),
    #: which splits the documents across the processes of a data-parallel evaluation (`--processes N`,
    #: :mod:`harness.eval_worker`); other suites run in one process.
    data_parallel: ClassVar[bool] = False
    #: FastChat's MT-Bench files (`bench export --format fastchat`, `bench import`), for a suite that has that form:
    #: ``to_fastchat(args, samples, tstamp) -> {relative path: rows}`` writes a run's samples (rows of the results DB's
    #: ``samples`` with the member's name as ``model``, made with suite arguments ``args``) as FastChat's
    #: ``question.jsonl``, ``model_answer/*.jsonl`` and ``model_judgment/*_single.jsonl``;
    #: ``from_fastchat(questions, answers, judgments) -> {model: EvalResult}`` reads such rows (each with where it
    #: was read) back into the suite's scores and samples. None: the suite has no FastChat form.
    to_fastchat: ClassVar[Callable[..., dict[str, list[dict[str, Any]]]] | None] = None
    from_fastchat: ClassVar[Callable[..., dict[str, EvalResult]] | None] = None

    @classmethod
    def caveats(cls, args: dict[str, Any]) -> list[str]:
        """One-line warnings that every score made with the suite arguments ``args`` must be read with (MT-Bench:
        ratings by a small local judge). The runner prints them after a run; ``bench leaderboard`` and ``bench report``
        show them beside such scores (:func:`harness.registry.suite_caveats`). No caveats by default."""
        return []

    @abstractmethod
    def evaluate(self, lm: LM, cfg: BaseModel, ctx: EvalContext) -> EvalResult: ...


# --- fusion -------------------------------------------------------------------------------------


@dataclass
class FusionResult:
    """What a fuser produced. Exactly one of ``path`` / ``runtime`` is set.

    ``path``: an HF model directory (weights + tokenizer) that ``AutoModelForCausalLM`` loads.
    ``runtime``: a zero-argument factory returning an lm-eval ``LM`` (ensemble, Cool-Fusion).
    ``details``: anything worth recording (merge weights per matrix, loss curves, ...); must be JSON-able.
    ``stages``: models the fuser built on the way and that deserve a row of their own (FuseChat's pairwise
    targets), by name, as HF directories inside ``path``; the runner evaluates them beside the fused model.
    ``details["stages"][name]`` may hold each one's own details (e.g. its ``loss_curves``).
    """

    path: Path | None = None
    runtime: Callable[[], LM] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, Path] = field(default_factory=dict)


@dataclass
class FuseContext:
    """Where a fuser writes (``out_dir``, already created and empty) and with which seed.

    ``timings`` is where a fuser reports the seconds of its stages, ``with ctx.timings.stage("train"): ...`` (or
    ``ctx.timings["train"] = seconds``): they end in the run's recorded timings as ``fuse:train`` (``control:train``
    for the data-only control's fusion), beside the runner's own stages."""

    out_dir: Path
    seed: int = 0
    batch_size: int = 8
    timings: Timings = field(default_factory=Timings)


@dataclass
class PrepareContext:
    """What a fuser's ``prepare`` is told besides its config: this job's share of the work when several
    independent jobs split it (`bench teachers --shard JOB/JOBS`: job ``job`` of ``jobs``, 0-based; the processes
    of one launch split the job's share further among themselves), and where it reports its stages' seconds."""

    job: int = 0
    jobs: int = 1
    timings: Timings = field(default_factory=Timings)


@dataclass
class PreparedStore:
    """One store a fuser's ``prepare`` computed or found (`bench teachers` prints one row per store).

    ``kind``: what it holds (``teacher``: a model's top-k rows; ``aligned``: a teacher's rows moved onto the
    target); ``model``: whose; ``key``: its content key (the folder name, which a later `bench run` with the
    same settings finds); ``shards_present`` of ``shards``: on disk now (fewer than all when other jobs compute
    the rest); ``shards_written``: computed by this call, in all its processes; ``bytes``: on disk now."""

    kind: str
    model: str
    key: str
    path: Path
    shards: int
    shards_present: int
    shards_written: int
    bytes: int
    seconds: float

    @property
    def complete(self) -> bool:
        return self.shards_present == self.shards


class Fuser(ABC):
    """A fusion method: every attribute the harness reads of one (:mod:`harness.registry` hands out fuser classes
    checked against it). ``Config`` is a pydantic model with defaults; ``fuse`` gets an instance of it, validated
    once, when the run was configured (:class:`harness.config.RunSpec`)."""

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    #: The method's paper (arXiv link).
    paper: ClassVar[str] = ""
    #: Part of the fused artifact's cache key: bump it whenever the same arguments would fuse differently.
    version: ClassVar[str] = "1"
    #: True when the result is a runtime model (nothing to cache on disk).
    runtime_only: ClassVar[bool] = False
    #: True when ``fuse`` runs in several processes (`--processes N`: accelerate launch, one ``fuse`` per process).
    distributed: ClassVar[bool] = False
    #: The sources of a run that names none.
    default_sources: ClassVar[Sequence[str]] = ()
    #: The target of a run that names none.
    default_target: ClassVar[str | None] = None
    #: The suites of a run that names none (the suites its paper reports); None: the harness's default.
    default_suites: ClassVar[Sequence[str] | None] = None
    #: `--control`: a classmethod ``control_config(cfg) -> cfg``, the same training with the fusion term switched
    #: off (λ = 1), evaluated beside the fused model; None for a fuser without such a term.
    control_config: ClassVar[Callable[[BaseModel], BaseModel] | None] = None
    #: `bench teachers`: a method ``prepare(sources, target, cfg, ctx: PrepareContext) -> list[PreparedStore]`` that
    #: computes only the costly stores that ``fuse`` with the same arguments would compute first (teacher top-k and
    #: aligned stores), keyed by content so that ``fuse`` then finds them; run in every process of a launch, each
    #: doing its share. None for a fuser without such a stage.
    prepare: ClassVar[Callable[..., list[PreparedStore]] | None] = None
    #: A classmethod ``config_models(cfg) -> (sources, target) | None``: the models that the fuser's own arguments name
    #: (merge's ``mergekit_config``), which then are the run's sources and target (``""``: no target), so that the run
    #: evaluates the result beside them; None (or a hook that returns None): the run's ``--sources`` / ``--target``.
    config_models: ClassVar[Callable[[BaseModel], tuple[list[str], str] | None] | None] = None

    @abstractmethod
    def fuse(
        self, sources: list[ModelRef], target: ModelRef | None, cfg: BaseModel, ctx: FuseContext
    ) -> FusionResult: ...


def missing_attributes(plugin: type, contract: ABCMeta) -> list[str]:
    """What the class ``plugin`` lacks of ``contract`` (:class:`Fuser`, :class:`Suite`): the attributes declared there
    without a default, and the abstract methods."""
    declared = [a for a in contract.__annotations__ if not hasattr(contract, a)]
    missing = [a for a in declared if not hasattr(plugin, a)]
    if issubclass(plugin, contract):
        return missing + sorted(plugin.__abstractmethods__)
    return missing + [m for m in sorted(contract.__abstractmethods__) if not callable(getattr(plugin, m, None))]
