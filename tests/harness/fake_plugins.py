"""Torch-free fake plugins for testing the runner, store, CLI and leaderboard quickly.

A fake "model" is a folder with a config.json holding a number ``quality``; FakeSuite reads it back
through FakeLM. FakeAverage fuses by averaging the sources' qualities (so results are predictable).

For tests with real processes (``tests/harness/fake_bench.py``): ``$FAKE_FUSE_DELAY`` / ``$FAKE_EVAL_DELAY``
seconds make a fusion / an evaluation take that long (the delays are not part of any cache key), and each call
appends a line ``fuse PID`` / ``evaluate PID`` to the file ``$FAKE_CALLS_LOG``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from harness import registry
from harness.api import EvalResult, Fuser, FusionResult, Sample, Score, Suite

CALLS = {"fuse": 0, "evaluate": 0}


def _called(what: str) -> None:
    CALLS[what] += 1
    log = os.environ.get("FAKE_CALLS_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{what} {os.getpid()}\n")


def _work(what: str) -> None:
    time.sleep(float(os.environ.get(f"FAKE_{what.upper()}_DELAY", "0")))


def make_model(path: Path, quality: float) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "fake", "quality": quality}))
    return path


class FakeLM:
    def __init__(self, quality: float):
        self.quality = quality


def load(ev) -> FakeLM:  # replaces harness.runner._load in tests
    if ev.runtime is not None:
        return ev.runtime()
    return FakeLM(json.loads((ev.path / "config.json").read_text())["quality"])


class FakeAverage(Fuser):
    name: ClassVar[str] = "fake"
    paper: ClassVar[str] = "https://example.org/fake"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        bonus: float = 0.0
        fail: bool = False
        stages: bool = False  # also return one stage model per source (as FuseChat's pairwise targets)

    def fuse(self, sources, target, cfg, ctx):
        _called("fuse")
        if cfg.fail:
            raise RuntimeError("fuser exploded")
        qs = [json.loads((s.path / "config.json").read_text())["quality"] for s in sources]
        with ctx.timings.stage("average"):  # a stage of its own, for the run's timings
            _work("fuse")
        make_model(ctx.out_dir, sum(qs) / len(qs) + cfg.bonus)
        stages = {}
        if cfg.stages:
            stages = {f"half-{i}": make_model(ctx.out_dir / "stages" / f"half-{i}", q / 2) for i, q in enumerate(qs)}
        return FusionResult(path=ctx.out_dir, details={"qualities": qs, "stages": {"half-0": {"note": "first"}}},
                            stages=stages)


class FakeSuite(Suite):
    name: ClassVar[str] = "fakesuite"
    version: ClassVar[str] = "1"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: int = 3

    def evaluate(self, lm, cfg, ctx):
        _called("evaluate")
        # as real suites do (perplexity's data files, humaneval's sandbox): work in ctx.workdir, read it back
        scratch = Path(ctx.workdir) / "quality.json"
        scratch.write_text(json.dumps(lm.quality))
        _work("eval")
        quality = json.loads(scratch.read_text())
        n = min(cfg.items, ctx.limit or cfg.items)
        samples = [Sample(task="t", doc_id=i, prompt=f"p{i}", output=str(quality), target="1",
                          metrics={"acc": float(quality > 0.5)}) for i in range(n)]
        return EvalResult(scores=[Score(task="t", metric="acc", value=quality, stderr=0.01, n=n),
                                  Score(task="t", metric="loss", value=1 - quality, higher_is_better=False, n=n)],
                          samples=samples)


def register() -> None:
    """Make the fake plugins the fuser ``fake`` and the suite ``fakesuite``."""
    registry.fusers().register("fake", FakeAverage)
    registry.suites().register("fakesuite", FakeSuite)


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """The fake plugins registered while the body runs."""
    register()
    try:
        yield
    finally:
        registry.fusers().unregister("fake")
        registry.suites().unregister("fakesuite")
