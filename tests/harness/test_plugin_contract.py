"""Every built-in plugin keeps the contract of harness.api, and the registry holds plugins to it."""

from __future__ import annotations

from typing import ClassVar

import pytest
from pydantic import BaseModel

from harness import registry
from harness.api import Fuser, FusionResult, Suite, missing_attributes
from harness.errors import BenchError

FUSERS = registry.fusers().names()
SUITES = registry.suites().names()


@pytest.mark.parametrize("name", FUSERS)
def test_every_fuser_keeps_the_contract(name: str) -> None:
    cls = registry.fusers().get(name)
    assert issubclass(cls, Fuser) and missing_attributes(cls, Fuser) == [] and cls.name == name
    assert isinstance(cls.version, str) and isinstance(cls.paper, str) and cls.paper.startswith("https://")
    assert issubclass(cls.Config, BaseModel) and isinstance(cls.Config(), cls.Config)  # every argument has a default
    assert isinstance(cls.runtime_only, bool) and isinstance(cls.distributed, bool)
    assert all(isinstance(s, str) for s in cls.default_sources)
    assert cls.default_target is None or isinstance(cls.default_target, str)
    assert cls.default_suites is None or set(cls.default_suites) <= set(SUITES)
    if cls.control_config is not None:
        assert isinstance(cls.control_config(cls.Config()), cls.Config)


@pytest.mark.parametrize("name", SUITES)
def test_every_suite_keeps_the_contract(name: str) -> None:
    cls = registry.suites().get(name)
    assert issubclass(cls, Suite) and missing_attributes(cls, Suite) == [] and cls.name == name
    assert isinstance(cls.version, str) and issubclass(cls.Config, BaseModel)
    assert isinstance(cls.primary_metric, str)
    assert cls.summary_tasks is None or (isinstance(cls.summary_tasks, tuple)
                                         and all(isinstance(t, str) for t in cls.summary_tasks))
    assert cls.caveats({}) == []
    assert cls.score_predictions is None or callable(cls.score_predictions)


def test_the_registry_reads_primary_metrics_and_summary_tasks_from_the_suites() -> None:
    assert dict(registry.PRIMARY_METRIC) == {
        "bbh": "exact_match", "bbh-mini": "exact_match", "humaneval": "pass@1", "humaneval-mini": "pass@1",
        "mtbench": "score", "perplexity": "bits_per_byte"}
    assert dict(registry.SUMMARY_TASKS) == {"bbh": ("macro", "weighted"), "bbh-mini": ("macro",),
                                            "mtbench": ("overall", "turn1", "turn2")}
    assert registry.PRIMARY_METRIC.get("no-such-suite") is None and "no-such-suite" not in registry.SUMMARY_TASKS


def test_bench_score_is_offered_by_the_suites_that_can() -> None:
    assert {n for n in SUITES if registry.suites().get(n).score_predictions is not None} == {
        "bbh", "humaneval", "humaneval-mini"}


class _WrittenToTheContract:
    """A fuser of the days before harness.api.Fuser: it declares what it needs and derives from nothing."""

    name: ClassVar[str] = "duck"

    class Config(BaseModel):
        pass

    def fuse(self, sources, target, cfg, ctx):
        return FusionResult(path=ctx.out_dir)


class _WithoutFuse:
    name: ClassVar[str] = "broken"
    Config = BaseModel


def test_a_class_written_to_the_contract_gets_its_defaults_and_a_broken_one_is_refused() -> None:
    fusers = registry.fusers()
    fusers.register("duck", _WrittenToTheContract)
    fusers.register("broken", _WithoutFuse)
    try:
        duck = fusers.get("duck")
        assert issubclass(duck, _WrittenToTheContract) and issubclass(duck, Fuser)
        assert (duck.version, duck.runtime_only, duck.default_target, duck.control_config) == ("1", False, None, None)
        with pytest.raises(BenchError, match=r"fuser 'broken' \(.*_WithoutFuse\) has no fuse"):
            fusers.get("broken")
        with pytest.raises(ValueError, match="registered already"):
            fusers.register("merge", _WrittenToTheContract)
    finally:
        fusers.unregister("duck")
        fusers.unregister("broken")
    assert "duck" not in fusers.names() and fusers.find("duck") is None
