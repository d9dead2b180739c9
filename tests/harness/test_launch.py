"""How `bench run` launches a fusion's training: the accelerate launch command, the checks on an accelerate config
file (`--accelerate-config`, YAML `accelerate:`), and what the run records of it.

The launches themselves (DDP and FSDP2 on 2 CPU processes) run in tests/fusers (test_fusellm, test_fusechat,
test_profuser). DeepSpeed is not installed here: its configs are checked with ``deepspeed`` reported installed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from harness import launch
from harness.errors import BenchError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "configs" / "accelerate"


@pytest.fixture
def deepspeed_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """``importlib.util.find_spec("deepspeed")`` finds it (what the checks ask), whether or not it is installed."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(launch.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "deepspeed" else real(name, *a))


def write(tmp_path: Path, text: str, name: str = "accelerate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_without_a_config_file_the_launch_is_ddp_on_this_machine(tmp_path: Path) -> None:
    command = launch.launch_command(processes=2, config=None, spec=tmp_path / "spec.json")
    assert command == [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "-m", "harness.fuse_worker", str(tmp_path / "spec.json")]


def test_a_config_file_is_passed_as_it_is_and_only_processes_overrides_it(tmp_path: Path) -> None:
    config = launch.read_config(EXAMPLES / "fsdp.yaml")
    assert (config.distributed_type, config.num_processes, config.num_machines) == ("FSDP", 8, 1)
    assert config.sha256 == hashlib.sha256((EXAMPLES / "fsdp.yaml").read_bytes()).hexdigest()
    spec = tmp_path / "spec.json"
    head = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(EXAMPLES / "fsdp.yaml")]
    tail = ["-m", "harness.fuse_worker", str(spec)]
    assert launch.launch_command(processes=None, config=config, spec=spec) == [*head, *tail]
    assert launch.launch_command(processes=3, config=config, spec=spec) == [*head, "--num_processes", "3", *tail]


def test_every_example_config_passes_the_checks(deepspeed_installed) -> None:
    found = {path.name: launch.read_config(path).distributed_type for path in sorted(EXAMPLES.glob("*.yaml"))}
    assert found == {"deepspeed_zero2.yaml": "DEEPSPEED", "deepspeed_zero3.yaml": "DEEPSPEED", "fsdp.yaml": "FSDP",
                     "multinode_fsdp.yaml": "FSDP"}


FSDP = "distributed_type: FSDP\nnum_processes: 2\nfsdp_config:\n"
DEEPSPEED = "distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n"
REFUSED = {
    "not YAML": ("distributed_type: [FSDP\n", "is not valid"),
    "unknown key": ("distributed_type: MULTI_GPU\nnum_procs: 2\n", "had unknown keys (['num_procs'])"),
    "unknown type": ("distributed_type: SHARDED\n", "is not valid: 'SHARDED' is not a valid DistributedType"),
    "megatron": ("distributed_type: MEGATRON_LM\n", "asks for distributed_type MEGATRON_LM"),
    "FSDP1": (FSDP + "  fsdp_version: 1\n", "uses FSDP version 1"),
    "FSDP without a version (accelerate's default is 1)": (FSDP + "  fsdp_reshard_after_forward: true\n",
                                                           "uses FSDP version 1"),
    "FSDP loading models empty": (FSDP + "  fsdp_version: 2\n  fsdp_cpu_ram_efficient_loading: true\n",
                                  "sets fsdp_cpu_ram_efficient_loading"),
    "DeepSpeed accumulating": (DEEPSPEED + "  zero_stage: 2\n  gradient_accumulation_steps: 4\n",
                               "accumulate gradients over 4 steps"),
    "ZeRO-3 loading models partitioned": (DEEPSPEED + "  zero_stage: 3\n", "runs ZeRO-3 with zero3_init_flag on"),
    "DeepSpeed on 2 machines through pdsh": (DEEPSPEED + "  zero_stage: 2\nnum_machines: 2\n",
                                             "with the pdsh launcher"),
    "not the main machine": ("distributed_type: MULTI_GPU\nnum_machines: 2\nmachine_rank: 1\n", "has machine_rank 1"),
}


@pytest.mark.parametrize("text, problem", list(REFUSED.values()), ids=list(REFUSED))
def test_configs_that_cannot_work_are_refused_in_one_line(tmp_path: Path, deepspeed_installed, text: str,
                                                          problem: str) -> None:
    with pytest.raises(BenchError) as refused:
        launch.read_config(write(tmp_path, text))
    assert problem in refused.value.problem and refused.value.fix and "\n" not in str(refused.value)


def test_a_deepspeed_json_config_that_brings_its_own_optimizer_is_refused(tmp_path: Path,
                                                                          deepspeed_installed) -> None:
    own = write(tmp_path, json.dumps({"optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 2}}), "ds.json")
    with pytest.raises(BenchError, match="sets an optimizer"):
        launch.read_config(write(tmp_path, DEEPSPEED + f"  deepspeed_config_file: {own}\n"))
    own.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": "auto"}))
    assert launch.read_config(write(tmp_path, DEEPSPEED + f"  deepspeed_config_file: {own}\n")).distributed_type \
        == "DEEPSPEED"


def test_deepspeed_not_installed_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(BenchError) as refused:
        launch.read_config(EXAMPLES / "deepspeed_zero2.yaml")
    assert refused.value.problem.endswith("asks for DeepSpeed, which is not installed")
    assert "pip install deepspeed" in (refused.value.fix or "")


def test_the_run_records_the_config_and_its_hash_outside_the_run_hash(tmp_path: Path) -> None:
    """`--accelerate-config` and YAML `accelerate:` (relative to the current folder) are recorded as an absolute path
    with the sha256 of the content; how a run executes is no part of the run hash."""
    from harness.config import build_run_config

    plain = build_run_config(fuser="fusellm")
    flag = build_run_config(fuser="fusellm", accelerate_config=str(EXAMPLES / "fsdp.yaml"), processes=4)
    run_yaml = write(tmp_path, "fuser: fusellm\naccelerate: configs/accelerate/fsdp.yaml\n", "run.yaml")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        from_yaml = build_run_config(config_file=str(run_yaml))
    for spec in (flag, from_yaml):
        assert spec.accelerate == str(EXAMPLES / "fsdp.yaml") and spec.launched
        assert spec.accelerate_sha256 == hashlib.sha256((EXAMPLES / "fsdp.yaml").read_bytes()).hexdigest()
        assert spec.canonical_json() == plain.canonical_json()
    assert (plain.processes, plain.launched, flag.processes, from_yaml.processes) == (None, False, 4, None)


def test_the_runner_launches_with_the_config_and_names_it_to_the_workers(tmp_path: Path, monkeypatch,
                                                                         capsys) -> None:
    """The exact command and environment `bench run` starts (the worker is stopped there: this checks the
    plumbing), and the command to start on the other machines of a multi-machine config."""
    from harness.api import FuseContext
    from harness.config import build_run_config
    from harness.runner import _fuse_in_processes

    started = []

    def fake_run(command, env):
        started.append((command, env))
        return 1, "stopped by the test"

    monkeypatch.setattr(launch, "run_workers", fake_run)
    monkeypatch.setenv("BENCH_HOME", str(tmp_path / "home"))
    config = EXAMPLES / "multinode_fsdp.yaml"
    spec = build_run_config(fuser="fusellm", accelerate_config=str(config))
    out_dir = tmp_path / "home" / "artifacts" / ".tmp-abc-1"
    out_dir.mkdir(parents=True)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        _fuse_in_processes(spec, spec.fuser_config, [], None, FuseContext(out_dir=out_dir, seed=0))
    ((command, env),) = started
    worker_spec = str(out_dir.parent / ".spec-.tmp-abc-1.json")
    assert command[-5:] == ["--config_file", str(config), "-m", "harness.fuse_worker", worker_spec]
    assert env[launch.LAUNCH_CONFIG_ENV] == str(config)
    lines = capsys.readouterr().err.splitlines()  # the command on a line of its own, to copy as it is
    assert f"accelerate launch --config_file {config} --machine_rank RANK -m harness.fuse_worker {worker_spec}" in lines
    assert not Path(worker_spec).exists()  # the spec is removed once the launch is over


def test_a_config_that_was_not_honoured_is_said(capsys) -> None:
    from harness.runner import _warn_unsharded

    _warn_unsharded({"type": "FSDP", "requested": "FSDP"})
    _warn_unsharded({"type": "MULTI_GPU", "requested": None})
    assert capsys.readouterr().err == ""
    _warn_unsharded({"type": "MULTI_CPU", "requested": "DEEPSPEED"})
    assert "asked for DEEPSPEED, but accelerate ran MULTI_CPU" in " ".join(capsys.readouterr().err.split())
