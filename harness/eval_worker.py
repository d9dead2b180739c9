"""One process of a data-parallel evaluation: `bench eval/run --processes N` on the ``hf`` backend.

The runner writes a JSON spec (the model, the suite and its validated arguments, the evaluation context, the
placement) and starts ``accelerate launch --num_processes N -m harness.eval_worker SPEC``
(:func:`harness.launch.launch`). Every process loads the model on its own device (GPU ``LOCAL_RANK``; the CPU
with gloo) and runs the suite. The suite's lm-eval call is data parallel through lm-eval's own accelerate support:
each process builds the requests of its 1/N of the documents, and lm-eval gathers every process's samples and
metrics on process 0 (:func:`make_data_parallel` gives the in-memory ``HFLM`` what lm-eval reads of a launched
one; :func:`harness.lmeval.run_tasks` hands process 0's result to the others). Process 0 writes the scores and
samples where the runner reads them, exactly what a one-process evaluation would have cached.

Only suites that declare ``data_parallel`` run here (their every model call goes through lm-eval's evaluator);
the others (generation for a judge, sandboxed code tests) run in the runner's own process.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"


def write_spec(path: Path, *, model: dict[str, Any], suite: str, config: dict[str, Any], seed: int,
               limit: int | None, batch_size: int | str, eval_batch_size: int, placement: dict[str, Any],
               workdir: Path) -> None:
    """The spec :func:`main` reads: everything one process needs to run the suite on the model."""
    path.write_text(json.dumps({"model": model, "suite": suite, "config": config, "seed": seed, "limit": limit,
                                "batch_size": batch_size, "eval_batch_size": eval_batch_size,
                                "placement": placement, "workdir": str(workdir)}))


def make_data_parallel(lm: Any) -> Any:
    """Make an in-memory lm-eval ``HFLM`` one rank of the launched processes, as ``HFLM`` does itself when it loads
    a model by name under ``accelerate launch`` (it cannot for a model handed to it): rank, world size and the
    ``Accelerator`` its ``all_gather`` / ``gather_object`` / ``barrier`` go through."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=lm.device.type == "cpu")
    if accelerator.num_processes > 1:
        lm.accelerator = accelerator
        lm._rank, lm._world_size = accelerator.process_index, accelerator.num_processes
    return lm


def count_requests(lm: Any) -> list[int]:
    """Count the requests this process's ``lm`` is asked to answer (a one-item list, updated in place): what shows
    that each process did its share and not the whole evaluation."""
    counted = [0]
    for name in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        answer = getattr(lm, name)

        def counting(requests: list[Any], *args: Any, _answer: Any = answer, **kwargs: Any) -> Any:
            counted[0] += len(requests)
            return _answer(requests, *args, **kwargs)

        setattr(lm, name, counting)
    return counted


def main(spec_path: str) -> None:
    import torch
    from accelerate import PartialState

    from harness.api import EvalContext
    from harness.backends import load_lm
    from harness.model import ModelRef, current_placement, placement
    from harness.registry import suites

    spec = json.loads(Path(spec_path).read_text())
    model = spec["model"]
    ref = ModelRef(spec=model["spec"], kind=model["kind"], path=Path(model["path"]) if model["path"] else None,
                   revision=model["revision"])
    suite_cls = suites().get(spec["suite"])
    cfg = suite_cls.Config(**spec["config"])
    with placement(**spec["placement"]):
        where = current_placement().for_model(ref)
        state = PartialState(cpu=where.kind == "cpu")  # joins the process group accelerate launch set up (gloo on CPU)
        if where.kind == "cuda" and where.device in ("auto", "cuda"):
            torch.cuda.set_device(state.local_process_index)  # "cuda" is this process's GPU
        workdir = Path(spec["workdir"]) / f"rank-{state.process_index}"  # suites write their task files here
        workdir.mkdir(parents=True, exist_ok=True)
        lm = make_data_parallel(load_lm(ref, spec["batch_size"], where))
        requests = count_requests(lm)
        result = suite_cls().evaluate(lm, cfg, EvalContext(workdir=workdir, seed=spec["seed"], limit=spec["limit"],
                                                           batch_size=spec["eval_batch_size"]))
    per_process = [0] * state.num_processes
    torch.distributed.all_gather_object(per_process, requests[0])
    if state.is_main_process:
        from harness.jsonable import to_plain
        from harness.model import model_dtype

        payload = {"scores": [asdict(s) for s in result.scores], "samples": [asdict(s) for s in result.samples],
                   "precision": {"dtype": model_dtype(lm.model), "backend": where.backend_label},
                   "requests_per_process": per_process}
        (Path(spec["workdir"]) / RESULT_FILE).write_text(json.dumps(payload, default=to_plain))
    state.wait_for_everyone()


if __name__ == "__main__":
    from harness.logs import inherited_run_log

    with inherited_run_log():  # the libraries' output to the launching run's log file
        main(sys.argv[1])
