"""`bench run --log tensorboard:DIR` / `--log wandb[:DIR]`: every trained member's curves and final scores, written
from what the run recorded (the ``train_log`` table and the scores), besides the table; the option is recorded in the
run config and is no part of any cache key or the run hash.

The runs use a torch-free fake training fuser (curves in its details, a stage model, a data-only control) with the
fake suite of ``tests/harness/fake_plugins.py``. TensorBoard's event files are read back with TensorBoard's own
``EventAccumulator``; the tests that need the ``tensorboard`` (or ``wandb``) package skip when it is not installed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

from harness import registry
from harness.api import Fuser, FusionResult
from harness.store import Store
from harness.training_log import parse_destination
from tests.conftest import bench
from tests.harness import fake_plugins

STEPS = 5


def curve(lam: float, offset: float = 0.0) -> list[float]:
    return [round(lam + offset + 1.0 / (step + 1), 5) for step in range(STEPS)]


class FakeTrainer(Fuser):
    """"Trains" for STEPS steps: the fused model's quality is the sources' mean, its curves follow from ``lam``; one
    stage model (as FuseChat's pairwise targets) with curves of its own; the control has lam = 1."""

    name: ClassVar[str] = "faketrainer"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        lam: float = 0.5

    @classmethod
    def control_config(cls, cfg: BaseModel) -> BaseModel:
        return cfg.model_copy(update={"lam": 1.0})

    def fuse(self, sources: Any, target: Any, cfg: Any, ctx: Any) -> FusionResult:
        fake_plugins.CALLS["fuse"] += 1
        qualities = [json.loads((s.path / "config.json").read_text())["quality"] for s in sources]
        fake_plugins.make_model(ctx.out_dir, sum(qualities) / len(qualities) - cfg.lam / 10)
        stage = fake_plugins.make_model(ctx.out_dir / "stages" / "pair-0", 0.3)
        details = {"loss_curves": {"total": curve(cfg.lam), "lr": [0.001] * STEPS},
                   "stages": {"pair-0": {"loss_curves": {"total": curve(cfg.lam, offset=2.0)}}}}
        return FusionResult(path=ctx.out_dir, details=details, stages={"pair-0": stage})


@pytest.fixture
def trainer(fake_plugins_registered: dict[str, Any]) -> Any:
    registry.fusers().register("faketrainer", FakeTrainer)
    try:
        yield fake_plugins_registered
    finally:
        registry.fusers().unregister("faketrainer")


def run_args(env: dict[str, Any], *extra: str) -> list[str]:
    return ["run", "--fuser", "faketrainer", "--source", env["a"], "--source", env["b"], "--suite", "fakesuite",
            "--db", env["db"], *extra]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard run ``folder`` (its event files, read by TensorBoard itself)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_each_trained_members_curves_and_scores(trainer: dict[str, Any], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tensorboard")
    logs = tmp_path / "tb"
    assert bench(*run_args(trainer, "--control", "--log", f"tensorboard:{logs}")) == 0
    assert f"tensorboard --logdir {logs}" in capsys.readouterr().err
    store = Store(trainer["db"])
    run_id = store.runs()[0]["id"]
    members = {m["role"]: m["model"] for m in store.run_members(run_id)}
    folders = {p.parent.relative_to(logs / run_id) for p in (logs / run_id).rglob("events.out.tfevents.*")}
    assert {str(f) for f in folders} == {members["fused"], members["stage"], members["control"].replace(" ", "_")}

    fused = scalars(logs / run_id / members["fused"])
    assert fused["train/total"] == [(s, pytest.approx(v)) for s, v in enumerate(curve(0.5))]
    assert fused["train/lr"] == [(s, pytest.approx(0.001)) for s in range(STEPS)]
    score = next(r for r in store.score_rows(run_id) if r["role"] == "fused" and r["metric"] == "acc")
    assert fused["score/fakesuite/t/acc"] == [(STEPS - 1, pytest.approx(score["value"]))]
    stage = scalars(logs / run_id / members["stage"])
    assert [v for _, v in stage["train/total"]] == pytest.approx(curve(0.5, offset=2.0))
    control = scalars(logs / run_id / members["control"].replace(" ", "_"))
    assert [v for _, v in control["train/total"]] == pytest.approx(curve(1.0))
    # besides the table, not instead of it
    assert len(store.train_log([run_id])) == 2 * STEPS + STEPS + 2 * STEPS


def test_the_log_option_is_recorded_but_keys_nothing(trainer: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    assert bench(*run_args(trainer, "--log", f"tensorboard:{tmp_path / 'tb'}")) == 0
    assert bench(*run_args(trainer)) == 0
    assert fake_plugins.CALLS == {"fuse": 1, "evaluate": 4}  # the second run: every stage from the caches
    runs = {json.dumps(json.loads(r["config"])["log"]): r for r in Store(trainer["db"]).runs()}
    logged, plain = runs[json.dumps([f"tensorboard:{(tmp_path / 'tb').resolve()}"])], runs["[]"]
    assert logged["run_hash"] == plain["run_hash"]


def test_a_resumed_run_replaces_its_earlier_event_files(trainer: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from harness import training_log

    logs = tmp_path / "tb"
    assert bench(*run_args(trainer, "--log", f"tensorboard:{logs}")) == 0
    store = Store(trainer["db"])
    run_id = store.runs()[0]["id"]
    fused = next(m["model"] for m in store.run_members(run_id) if m["role"] == "fused")
    first = set((logs / run_id / fused).glob("events.out.tfevents.*"))
    spec = type("Spec", (), {"log": [f"tensorboard:{logs}"], "fuser": "faketrainer", "fuser_args": {}, "seed": 0,
                             "fuser_config": None})()
    training_log.write(store, run_id, spec)  # as a resumed attempt writes them again
    again = set((logs / run_id / fused).glob("events.out.tfevents.*"))
    assert first and again and not first & again
    assert len(scalars(logs / run_id / fused)["train/total"]) == STEPS


@pytest.mark.parametrize(("entry", "message"), [("tensorbored:x", "unknown --log destination"),
                                                ("tensorboard:", "names no folder")])
def test_a_bad_destination_is_a_one_line_error(trainer: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                               entry: str, message: str) -> None:
    assert bench(*run_args(trainer, "--log", entry)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("error: ") and fake_plugins.CALLS["fuse"] == 0


@pytest.mark.parametrize(("kind", "install"), [("wandb", "pip install wandb"),
                                               ("tensorboard", "pip install 'fusebench[logging]'")])
def test_a_missing_package_stops_the_run_before_it_fuses(trainer: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch, kind: str,
                                                         install: str) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == kind else find_spec(name, *a))
    assert bench(*run_args(trainer, "--log", kind)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--log {kind} needs the {kind} package" in err and install in err
    assert fake_plugins.CALLS["fuse"] == 0


def test_destinations_are_recorded_absolute() -> None:
    assert str(parse_destination("wandb")) == f"wandb:{Path.cwd()}"
    assert str(parse_destination("tensorboard")) == f"tensorboard:{Path.cwd() / 'runs'}"
    assert parse_destination("TensorBoard:~/tb").folder == Path("~/tb").expanduser()


def test_wandb_offline_run_per_trained_member(trainer: dict[str, Any], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """One offline W&B run per trained member; W&B keeps an offline run's records in its binary ``run-*.wandb`` file
    (read by ``wandb sync``), so the test looks for the member's name, curve and score keys in it."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert bench(*run_args(trainer, "--control", "--log", f"wandb:{tmp_path}")) == 0
    store = Store(trainer["db"])
    run_id = store.runs()[0]["id"]
    records = [f.read_bytes() for f in (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")]
    assert len(records) == 3  # the fused model, its stage, the control
    for member in (m for m in store.run_members(run_id) if m["role"] in ("fused", "stage", "control")):
        name = f"{run_id}/{member['model']}".encode()
        (data,) = [d for d in records if bytes([len(name)]) + name in d]  # the run's name, as protobuf stores it
        assert b"train/total" in data and b"score/fakesuite/t/acc" in data
