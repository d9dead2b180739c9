"""Start N processes of a FuseBench worker module under ``accelerate launch`` and wait for them.

Multi-process work (training a fusion, data-parallel evaluation) runs on accelerate rather than on anything of our
own: the runner writes a JSON spec, then ``accelerate launch --multi_gpu --num_processes N -m MODULE SPEC`` starts
the workers (one per GPU with NCCL on a GPU machine; torch.distributed's gloo backend on CPU). The workers' progress
goes to our stderr; what they print to stdout too, so stdout stays for the leaderboard.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness.logs import console


def accelerate_command(module: str, spec: Path, processes: int) -> list[str]:
    """The ``accelerate launch`` command line that runs ``python -m module spec`` in ``processes`` processes."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", module, str(spec)]


def launch(module: str, spec: Path, processes: int, *, what: str) -> None:
    """Run ``module`` on ``spec`` in ``processes`` processes; raise with the tail of their stderr if any failed. Their
    stderr is passed through as it comes (progress bars, logs) and its last lines kept for the error."""
    import collections

    console.log(f"{what}: {processes} processes via accelerate launch")
    try:
        to_stderr = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream (tests)
        to_stderr = None
    tail: collections.deque[str] = collections.deque(maxlen=60)
    with subprocess.Popen(accelerate_command(module, spec, processes), stdout=to_stderr, stderr=subprocess.PIPE,
                          text=True, errors="replace") as workers:
        assert workers.stderr is not None
        for line in workers.stderr:
            sys.stderr.write(line)
            tail.append(line)
    if workers.returncode != 0:
        raise RuntimeError(f"{what} in {processes} processes failed:\n{''.join(tail)[-3000:]}")
