"""GPU check: the hf and vllm backends side by side on a real checkpoint, and a bf16 training step.

On a CUDA machine, in the environment that has vLLM (``make venv-vllm``)::

    .venv-vllm/bin/python benchmarks/gpu_check.py --model zoo:smollm2-135m --bbh-dir ../shared/data/bbh -n 24

runs, each through ``bench`` in a fresh process and a temporary results DB:

1. perplexity on ``n`` held-out documents with ``--backend hf`` and ``--backend vllm`` (bf16);
2. BBH chain-of-thought on ``n`` items (``--bbh-dir``: the BBH data; skipped without it) with both backends;
3. a bf16 FuseLLM fusion of a few steps with the model as teacher (accelerate's bf16 mixed precision);

and prints wall times, throughput ratios (vllm / hf) and the scores of both backends (they should agree to a
few 1e-3 bits/byte; generation may differ where bf16 kernels break greedy ties). Without a CUDA device it says
so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def bench(*args: str) -> tuple[float, int, str]:
    """Wall seconds, exit code and stderr tail of ``bench ARGS`` in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True)
    return time.perf_counter() - start, done.returncode, done.stderr[-1500:]


def scores(db: Path, metric: str) -> dict[str, float]:
    """backend -> the mean ``avg`` value of ``metric`` over the DB's runs."""
    from harness.store import Store

    frame = Store(db).score_frame()
    if frame.empty:
        return {}
    chosen = frame[(frame["metric"] == metric) & (frame["task"] == "avg")]
    return {backend: round(value, 4) for backend, value in chosen.groupby("backend")["value"].mean().items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="zoo:smollm2-135m")
    parser.add_argument("-n", type=int, default=24, help="documents / BBH items per backend")
    parser.add_argument("--bbh-dir", default=None, help="BBH data folder (the bbh suite's data_dir)")
    parser.add_argument("--bbh-tasks", default="boolean_expressions,navigate,date_understanding")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here, nothing measured (run it on a GPU machine)")
        return
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    common = ["--model", args.model, "--dtype", "bfloat16", "--device", "cuda", "--batch-size", "auto"]
    jobs = [("perplexity", ["--suite", "perplexity", "--set", f"perplexity.max_docs={args.n}"], "bits_per_byte")]
    if args.bbh_dir:
        tasks = json.dumps(args.bbh_tasks.split(","))
        per_task = max(1, args.n // len(args.bbh_tasks.split(",")))
        jobs.append(("bbh cot", ["--suite", "bbh", "--set", f"bbh.data_dir={args.bbh_dir}", "--set", f"bbh.tasks={tasks}",
                                 "--limit", str(per_task)], "exact_match"))
    else:
        print("bbh: skipped (no --bbh-dir)")
    for name, suite_args, metric in jobs:
        db = tmp / f"{name.replace(' ', '_')}.db"
        wall = {}
        for backend in ("hf", "vllm"):
            seconds, code, err = bench("eval", *common, *suite_args, "--backend", backend, "--db", str(db))
            if code != 0:
                print(f"{name} [{backend}]: failed (exit {code}): {err.strip().splitlines()[-1] if err.strip() else ''}")
                continue
            wall[backend] = seconds
        got = scores(db, metric)
        ratio = f"{wall['hf'] / wall['vllm']:.2f}x" if len(wall) == 2 else "n/a"
        print(f"{name}: hf {wall.get('hf', float('nan')):.1f} s, vllm {wall.get('vllm', float('nan')):.1f} s, "
              f"vllm speed-up {ratio} (process start and model load included); {metric}: {got}")

    seconds, code, err = bench("run", "--fuser", "fusellm", "--sources", f"{args.model},zoo:gpt2-code",
                               "--target", args.model, "--set", "steps=4", "--set", "corpus_chars=20000",
                               "--dtype", "bfloat16", "--device", "cuda", "--suite", "perplexity",
                               "--set", "perplexity.max_docs=4", "--db", str(tmp / "fusellm.db"))
    print(f"fusellm bf16 (4 steps, teachers bf16, student bf16 mixed precision): "
          f"{'ok' if code == 0 else f'failed (exit {code})'} in {seconds:.1f} s"
          + ("" if code == 0 else f": {err.strip().splitlines()[-1] if err.strip() else ''}"))


if __name__ == "__main__":
    main()
