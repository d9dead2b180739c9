"""The small interfaces every plugin implements: suites (evals) and fusers.

Evaluation always goes through lm-eval's ``LM`` interface (``loglikelihood``,
``loglikelihood_rolling``, ``generate_until``): a transformers model is wrapped in lm-eval's
``HFLM``, and runtime fusers (ensemble, Cool-Fusion) are ``LM`` subclasses themselves. So every
suite can score every kind of model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel

if TYPE_CHECKING:
    from lm_eval.api.model import LM

    from harness.model import ModelRef


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
    scores: list[Score]
    samples: list[Sample] = field(default_factory=list)


@dataclass
class EvalContext:
    """What a suite may need besides the model: a scratch dir, the seed, a limit, a progress hook."""

    workdir: Path
    seed: int = 0
    limit: int | None = None
    batch_size: int = 8


class Suite(Protocol):
    """An evaluation suite. Bump ``version`` whenever prompts, data or metrics change.

    Optionally a classmethod ``caveats(args: dict) -> list[str]``: one-line warnings that every score made with
    the suite arguments ``args`` must be read with (MT-Bench: ratings by a small local judge). The runner prints
    them after a run; ``bench leaderboard`` and ``bench report`` show them beside such scores
    (:func:`harness.registry.suite_caveats`)."""

    name: ClassVar[str]
    version: ClassVar[str]
    Config: ClassVar[type[BaseModel]]

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
    """Where a fuser writes (``out_dir``, already created and empty) and with which seed."""

    out_dir: Path
    seed: int = 0
    batch_size: int = 8


class Fuser(Protocol):
    """A fusion method. ``paper`` is the arXiv link; ``Config`` a pydantic model with defaults."""

    name: ClassVar[str]
    paper: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    #: True when the result is a runtime model (nothing to cache on disk).
    runtime_only: ClassVar[bool]

    def fuse(
        self, sources: list[ModelRef], target: ModelRef | None, cfg: BaseModel, ctx: FuseContext
    ) -> FusionResult: ...
