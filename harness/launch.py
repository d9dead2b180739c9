"""How FuseBench starts work in several processes: ``accelerate launch``, and an accelerate config file for training.

Multi-process work runs on accelerate rather than on anything of our own: the runner writes a JSON spec, then
:func:`launch` starts ``accelerate launch ... -m MODULE SPEC`` and waits: the fusion's training and `bench teachers`
(:mod:`harness.fuse_worker`), data-parallel evaluation (:mod:`harness.eval_worker`). The workers' stderr is passed
through as it comes (their progress displays), its last lines kept for the error message.

`bench run --processes N` starts N processes of :mod:`harness.fuse_worker` with ``accelerate launch`` (DDP: NCCL
on GPUs, gloo on CPU). `bench run --accelerate-config FILE` (``accelerate:`` in a run YAML) hands accelerate a
config file of the user's (``accelerate config`` writes one; ``configs/accelerate/`` has FSDP, DeepSpeed ZeRO-2/3
and multi-machine examples): its settings (distributed type, FSDP / DeepSpeed options, mixed precision, machines,
number of processes) are then the launch's own, and ``--processes N`` only sets ``--num_processes``.

:func:`read_config` checks the file before any model is loaded, with accelerate's own reader, plus what FuseBench's
training needs (FSDP2, DeepSpeed installed, one optimizer step per batch, FuseBench's own optimizer and schedule),
so that a config that cannot work fails in one line instead of inside N processes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import BenchError

#: Set (to the config file's path) in the environment of the processes launched with an accelerate config file, so
#: that their ``Accelerator`` honours the file's choices (mixed precision) instead of FuseBench's defaults.
LAUNCH_CONFIG_ENV = "FUSEBENCH_ACCELERATE_CONFIG"
#: Where the example configs live (named in error messages).
EXAMPLES = "configs/accelerate/"
#: accelerate's distributed types FuseBench's training supports (DDP on any device, FSDP2, DeepSpeed).
SUPPORTED_TYPES = ("NO", "MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU", "MULTI_MUSA", "MULTI_HPU",
                   "FSDP", "DEEPSPEED")


@dataclass(frozen=True)
class LaunchConfig:
    """An accelerate config file, checked: its path, the sha256 of its content, and what the launch reads of it."""

    path: Path
    sha256: str
    distributed_type: str
    num_processes: int | None  # None: not set in the file (accelerate then uses every GPU of the machine)
    num_machines: int
    machine_rank: int


def read_config(path: str | Path) -> LaunchConfig:
    """Read and check the accelerate config file ``path``; a BenchError names the first problem and its fix."""
    from accelerate.commands.config.config_args import SageMakerConfig, load_config_from_file

    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise BenchError(f"accelerate config {path} not found",
                         f"give an accelerate config file (`accelerate config` writes one; {EXAMPLES} has examples)")
    try:
        cfg = load_config_from_file(str(file))
    except Exception as e:  # yaml / json syntax, unknown keys, bad values: accelerate raises several kinds
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BenchError(f"accelerate config {path} is not valid: {reason}",
                         f"fix it, or start from an example in {EXAMPLES}") from None
    if isinstance(cfg, SageMakerConfig):
        raise BenchError(f"accelerate config {path} is a SageMaker config", "give a LOCAL_MACHINE config")
    kind = getattr(cfg.distributed_type, "value", str(cfg.distributed_type))
    if kind not in SUPPORTED_TYPES:
        raise BenchError(f"accelerate config {path} asks for distributed_type {kind}, which FuseBench's training "
                         "does not run", "use DDP (MULTI_GPU), FSDP or DEEPSPEED")
    if kind == "FSDP":
        _check_fsdp(path, cfg.fsdp_config or {})
    elif kind == "DEEPSPEED":
        _check_deepspeed(path, cfg.deepspeed_config or {})
        launcher = (cfg.deepspeed_config or {}).get("deepspeed_multinode_launcher") or "pdsh"
        if int(cfg.num_machines or 1) > 1 and launcher != "standard":
            raise BenchError(f"accelerate config {path} starts DeepSpeed on {cfg.num_machines} machines with the "
                             f"{launcher} launcher (from machine 0); `bench run` starts the machines' workers one by one",
                             "set deepspeed_config.deepspeed_multinode_launcher: standard")
    if cfg.machine_rank != 0:
        raise BenchError(f"accelerate config {path} has machine_rank {cfg.machine_rank}: `bench run` is the main "
                         "machine's command", "run it with the machine_rank 0 config; on the other machines start the "
                         "worker command that `bench run` prints")
    return LaunchConfig(path=file, sha256=hashlib.sha256(file.read_bytes()).hexdigest(), distributed_type=kind,
                        num_processes=cfg.num_processes if cfg.num_processes and cfg.num_processes > 0 else None,
                        num_machines=int(cfg.num_machines or 1), machine_rank=int(cfg.machine_rank or 0))


def _check_fsdp(path: str | Path, fsdp: dict[str, Any]) -> None:
    version = int(fsdp.get("fsdp_version", 1))
    if version != 2:
        raise BenchError(f"accelerate config {path} uses FSDP version {version}; FuseBench trains with FSDP2 (its "
                         "optimizer is made before the model is sharded)", "set fsdp_config.fsdp_version: 2")
    if _true(fsdp.get("fsdp_cpu_ram_efficient_loading")):
        raise BenchError(f"accelerate config {path} sets fsdp_cpu_ram_efficient_loading, which loads models empty "
                         "on all but one process; FuseBench's teacher passes need them whole",
                         "set fsdp_cpu_ram_efficient_loading: false")


def _check_deepspeed(path: str | Path, ds: dict[str, Any]) -> None:
    if importlib.util.find_spec("deepspeed") is None:
        raise BenchError(f"accelerate config {path} asks for DeepSpeed, which is not installed",
                         "pip install deepspeed (on every training machine), or use an FSDP config")
    settings: dict[str, Any] = {"gradient_accumulation_steps": ds.get("gradient_accumulation_steps"),
                                "stage": ds.get("zero_stage")}
    json_file = ds.get("deepspeed_config_file")
    if json_file:
        try:
            own = json.loads(Path(json_file).expanduser().read_text())
        except (OSError, ValueError) as e:
            raise BenchError(f"accelerate config {path}: its deepspeed_config_file {json_file} cannot be read ({e})",
                             "give an existing DeepSpeed JSON config") from None
        for key in ("optimizer", "scheduler"):
            if key in own:
                raise BenchError(f"DeepSpeed config {json_file} sets an {key}; FuseBench trains with its own AdamW and "
                                 "learning-rate schedule (the fuser's lr and warmup_steps)", f"remove '{key}' from it")
        settings = {"gradient_accumulation_steps": own.get("gradient_accumulation_steps"),
                    "stage": (own.get("zero_optimization") or {}).get("stage")}
    if settings["gradient_accumulation_steps"] not in (None, 1, "auto"):
        raise BenchError(f"the DeepSpeed settings of {path} accumulate gradients over "
                         f"{settings['gradient_accumulation_steps']} steps; a fuser's batch_size is its global batch, "
                         "one optimizer step each", "set gradient_accumulation_steps: 1 (raise the fuser's batch_size)")
    if settings["stage"] == 3 and str(ds.get("zero3_init_flag", True)).lower() != "false":
        raise BenchError(f"accelerate config {path} runs ZeRO-3 with zero3_init_flag on, which loads every model "
                         "partitioned; FuseBench's teachers are loaded whole for their passes",
                         "set deepspeed_config.zero3_init_flag: false")


def _true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def launch(module: str, spec: Path, processes: int | None, *, what: str, config: LaunchConfig | None = None) -> None:
    """Run ``python -m module spec`` in ``processes`` processes (or as ``config`` says) under ``accelerate launch`` and
    wait; raise with the command and the tail of the workers' stderr if any failed."""
    import os

    from harness.logs import console

    command = launch_command(processes=processes, config=config, spec=spec, module=module)
    env = dict(os.environ)
    if config is not None:
        env[LAUNCH_CONFIG_ENV] = str(config.path)
    console.log(f"{what}: " + (f"{processes} processes via accelerate launch" if config is None else
                               f"accelerate launch with {config.path} ({config.distributed_type}"
                               + (f", {processes} processes" if processes else "") + ")"))
    returncode, tail = run_workers(command, env)
    if returncode != 0:
        raise RuntimeError(f"{what} in several processes failed ({shlex.join(command)}):\n{tail[-3000:]}")


def run_workers(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the launch ``command`` and wait: the workers' stdout goes to our stderr (our stdout is for the leaderboard),
    their stderr is passed through as it comes. Returns the exit code and the last lines of their stderr."""
    import collections
    import subprocess

    try:
        to_stderr: int | None = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream (tests)
        to_stderr = None
    tail: collections.deque[str] = collections.deque(maxlen=60)
    with subprocess.Popen(command, stdout=to_stderr, stderr=subprocess.PIPE, text=True, errors="replace",
                          env=env) as workers:
        assert workers.stderr is not None
        for line in workers.stderr:
            sys.stderr.write(line)
            tail.append(line)
    return workers.returncode, "".join(tail)


def launch_command(*, processes: int | None, config: LaunchConfig | None, spec: Path,
                   module: str = "harness.fuse_worker") -> list[str]:
    """The ``accelerate launch`` command of ``module`` (a worker: :mod:`harness.fuse_worker`) for ``spec``.

    Without a config file: DDP in ``processes`` processes on this machine, no mixed precision flag (the fuser picks
    bf16 on GPUs itself), no dynamo. With one: the file's settings as they are, and ``--num_processes`` only when
    ``processes`` was given."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if config is None:
        command += ["--multi_gpu", "--num_processes", str(processes or 1), "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        command += ["--config_file", str(config.path)]
        if processes is not None:
            command += ["--num_processes", str(processes)]
    return [*command, "-m", module, str(spec)]


def other_machines_command(config: LaunchConfig, processes: int | None, spec: Path) -> str:
    """What to start on each other machine of a multi-machine config (``machine_rank`` 1 .. num_machines-1): the
    same workers, joining the main machine's (``RANK`` stands for the machine's rank)."""
    command = ["accelerate", "launch", "--config_file", str(config.path), "--machine_rank", "RANK"]
    if processes is not None:
        command += ["--num_processes", str(processes)]
    return shlex.join([*command, "-m", "harness.fuse_worker", str(spec)])
