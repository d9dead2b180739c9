"""Training curves to TensorBoard and to Weights & Biases (offline), besides the results DB's ``train_log`` table.

``bench run --log tensorboard:DIR`` (and / or ``--log wandb[:DIR]``; repeatable) writes, for every member of the run
that a fuser trained (the fused model, FuseChat's pairwise targets, the data-only control), one TensorBoard run
(``DIR/<run id>/<member>/``) or one W&B run (offline, under ``DIR/wandb/``; ``wandb sync`` uploads it later) holding

* its per-step curves, as the run recorded them in ``train_log`` (``train/total``, ``train/clm``, ``train/fuse``,
  ``train/lr``, ``train/grad_norm``, ProFuser's ``train/inference_mode`` ...), and
* its final scores on the run's suites (``score/<suite>/<task>/<metric>``), with the fuser's arguments, as
  TensorBoard hparams (or the W&B run's config and summary).

The curves are written once the run's evaluations are recorded, from what the run recorded, not live from inside the
training loop: that is one place for every fuser (FuseLLM, FuseChat, ProFuser, a plugin's own), it works alike when
the training ran in several processes (only process 0 records its curves) and when the fused model came from the
artifact cache (its curves come from the artifact's card), and it needs nothing of the training loops, which are
the fusers' own. The cost: a curve shows up when the run's evaluations are done, not while it trains.

The option is recorded in the run config and is no part of any cache key or the run hash. TensorBoard needs the
``tensorboard`` package (``pip install 'fusebench[logging]'``), W&B the ``wandb`` package; a run that asks for a
missing one stops before it fuses, with a one-line error naming the install command.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import BenchError

if TYPE_CHECKING:
    from harness.store import Store

#: Where curves can go (``--log KIND[:DIR]``), with the folder used when no DIR is given: TensorBoard's ``runs`` (as
#: torch's SummaryWriter), W&B's current folder (W&B writes its own ``wandb/`` inside it).
DESTINATIONS = {"tensorboard": "runs", "wandb": "."}
#: The package each needs, and how to install it.
_PACKAGES = {"tensorboard": ("tensorboard", "pip install 'fusebench[logging]' (or pip install tensorboard)"),
             "wandb": ("wandb", "pip install wandb")}
_FORM = "write --log tensorboard:DIR or --log wandb[:DIR]"


@dataclass(frozen=True)
class Destination:
    """One ``--log`` entry: ``kind`` (tensorboard, wandb) and its folder (absolute)."""

    kind: str
    folder: Path

    def __str__(self) -> str:
        return f"{self.kind}:{self.folder}"


def parse_destination(text: str) -> Destination:
    """``tensorboard:DIR`` / ``tensorboard`` / ``wandb:DIR`` / ``wandb`` -> a :class:`Destination` with an absolute
    folder (so that a resumed run writes where the first attempt did). ValueError names what is wrong."""
    kind, sep, folder = str(text).strip().partition(":")
    kind = kind.strip().lower()
    if kind not in DESTINATIONS:
        raise ValueError(f"unknown --log destination {text!r}; {_FORM}")
    if sep and not folder.strip():
        raise ValueError(f"--log {text!r} names no folder; {_FORM}")
    return Destination(kind, Path(folder.strip() or DESTINATIONS[kind]).expanduser().resolve())


def normalise(entries: Sequence[str]) -> list[str]:
    """The ``--log`` entries as the run config records them (``kind:/absolute/folder``), each once."""
    return list(dict.fromkeys(str(parse_destination(e)) for e in entries))


def check_available(entries: Sequence[str]) -> None:
    """Stop now, before anything is fused, when a destination's package is not importable here."""
    for kind in dict.fromkeys(parse_destination(e).kind for e in entries):
        package, install = _PACKAGES[kind]
        if importlib.util.find_spec(package) is None:
            raise BenchError(f"--log {kind} needs the {package} package, which is not installed", install)


# --- what a run recorded --------------------------------------------------------------------------


@dataclass
class TrainedMember:
    """A member of a run that has training curves: its curves (name -> [(step, value)]) and its scores
    (``score/<suite>/<task>/<metric>`` -> value), as the run recorded them."""

    model_id: str
    name: str
    role: str
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def last_step(self) -> int:
        return max((points[-1][0] for points in self.curves.values() if points), default=0)


def trained_members(store: Store, run_id: str) -> list[TrainedMember]:
    """The members of run ``run_id`` with rows in ``train_log``, in the run's order, with their curves and scores."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for row in store.train_log([run_id]):
        curves.setdefault(row["model_id"], {}).setdefault(row["name"], []).append((int(row["step"]), row["value"]))
    members = []
    for member in store.run_members(run_id):
        if member["model_id"] in curves:
            members.append(TrainedMember(member["model_id"], member["model"], member["role"],
                                         curves[member["model_id"]]))
    by_id = {m.model_id: m for m in members}
    for score in store.score_rows(run_id):
        if score["model_id"] in by_id and score["value"] is not None:
            by_id[score["model_id"]].scores[f"score/{score['suite']}/{score['task']}/{score['metric']}"] = score["value"]
    return members


def hparams(spec: Any, member: TrainedMember) -> dict[str, bool | int | float | str]:
    """The fuser's arguments and the run's seed, as TensorBoard's hparams take them (scalars and strings)."""
    args = spec.fuser_config.model_dump(mode="json") if spec.fuser_config is not None else dict(spec.fuser_args)
    values: dict[str, Any] = {"fuser": spec.fuser or "", "role": member.role, "seed": spec.seed,
                              **{f"fuser.{k}": v for k, v in args.items()}}
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in values.items()}


# --- writing --------------------------------------------------------------------------------------


def write(store: Store, run_id: str, spec: Any) -> list[str]:
    """Write the curves and scores of run ``run_id``'s trained members to each of ``spec.log``'s destinations;
    returns one line per destination saying where they went (none when no member was trained)."""
    members = trained_members(store, run_id)
    if not members or not spec.log:
        return []
    said = []
    for entry in spec.log:
        where = parse_destination(entry)
        if where.kind == "tensorboard":
            folder = write_tensorboard(where.folder, run_id, spec, members)
            said.append(f"training curves of {len(members)} model(s) to TensorBoard: tensorboard --logdir {folder}")
        else:
            folder = write_wandb(where.folder, run_id, spec, members)
            said.append(f"training curves of {len(members)} model(s) to W&B (offline): {folder}; upload with "
                        f"`wandb sync {folder}/offline-run-*`")
    return said


def _folder_name(name: str) -> str:
    """A member's name as a folder name (``fusechat#ab12/pair-0`` stays nested; odd characters become ``_``)."""
    return "/".join(re.sub(r"[^\w.#@+=-]+", "_", part).strip("_") or "_" for part in name.split("/") if part)


def write_tensorboard(root: Path, run_id: str, spec: Any, members: list[TrainedMember]) -> Path:
    """One TensorBoard run per member, ``root/<run id>/<member>``; event files written there before (a resumed run's
    earlier attempt) are replaced."""
    from torch.utils.tensorboard import SummaryWriter

    run_folder = root / run_id
    for member in members:
        folder = run_folder / _folder_name(member.name)
        for old in folder.glob("events.out.tfevents.*") if folder.is_dir() else []:
            old.unlink()
        with SummaryWriter(log_dir=str(folder)) as writer:
            for curve, points in member.curves.items():
                for step, value in points:
                    writer.add_scalar(f"train/{curve}", value, step)
            if member.scores:
                # written into the member's own folder (run_name "."), so its curves and scores are one run
                writer.add_hparams(hparams(spec, member), member.scores, run_name=".", global_step=member.last_step)
    return run_folder


def write_wandb(root: Path, run_id: str, spec: Any, members: list[TrainedMember]) -> Path:
    """One offline W&B run per member (named ``<run id>/<member>``, grouped by run id), under ``root/wandb``."""
    import wandb

    from harness.logs import library_output

    root.mkdir(parents=True, exist_ok=True)
    for member in members:
        with library_output(), _offline():
            run = wandb.init(mode="offline", dir=str(root), project=os.environ.get("WANDB_PROJECT", "fusebench"),
                             name=f"{run_id}/{member.name}", group=run_id, job_type=member.role,
                             config={**hparams(spec, member), "run_id": run_id, "model_id": member.model_id})
            try:
                steps = sorted({step for points in member.curves.values() for step, _ in points})
                by_step: dict[int, dict[str, float]] = {step: {} for step in steps}
                for curve, points in member.curves.items():
                    for step, value in points:
                        by_step[step][f"train/{curve}"] = value
                for step in steps:
                    run.log(by_step[step], step=step)
                run.summary.update(member.scores)
            finally:
                run.finish()
    return root / "wandb"


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """``WANDB_MODE=offline`` for the block (W&B reads it besides ``mode=``), the caller's value restored after."""
    before = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "offline"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = before
