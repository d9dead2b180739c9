"""One process of a multi-process fusion: `bench run --processes N` launches N of these with accelerate.

The runner writes a JSON spec (fuser, its config, the resolved sources and target, the output dir, the
seed, ``$BENCH_HOME``) and starts ``accelerate launch --multi_gpu --num_processes N -m harness.fuse_worker SPEC``
(or ``accelerate launch --config_file FILE ...`` with ``--accelerate-config``: :mod:`harness.launch`): on GPUs
each process gets one device (NCCL), on CPU accelerate falls back to gloo. Every process runs the fuser's
``fuse()``; the fuser itself makes process 0 the only writer of weights (``accelerator.is_main_process``),
and this worker makes it the only writer of the result file the runner reads back.

`bench teachers --processes N` launches the same workers with a spec that has ``prepare`` (this job's share
of the work and the result file): they run the fuser's ``prepare()`` instead, and process 0 writes the stores
it reports.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

RESULT_FILE = ".fuse_result.json"


def write_spec(path: Path, *, fuser: str, config: dict, sources: list, target, out_dir: Path | None, seed: int,
               batch_size: int, placement: dict | None = None, prepare: dict | None = None) -> None:
    """The spec the workers read, with this process's ``$BENCH_HOME`` (workers on other machines use the same folder,
    on a shared filesystem, for the caches the main process writes and the others read). ``prepare``: ``{"job",
    "jobs", "result"}`` to run ``prepare()`` (job ``job`` of ``jobs``) and write its stores to the file ``result``,
    instead of fusing into ``out_dir``."""
    from harness.paths import bench_home

    def ref(r):
        return None if r is None else {"spec": r.spec, "kind": r.kind, "path": str(r.path) if r.path else None,
                                       "revision": r.revision}

    path.write_text(json.dumps({"fuser": fuser, "config": config, "sources": [ref(s) for s in sources],
                                "target": ref(target), "out_dir": str(out_dir) if out_dir else None, "seed": seed,
                                "batch_size": batch_size, "placement": placement or {}, "prepare": prepare,
                                "bench_home": str(bench_home())}))


def main(spec_path: str) -> None:
    from harness.api import FuseContext
    from harness.model import ModelRef
    from harness.registry import fusers

    spec = json.loads(Path(spec_path).read_text())
    if spec.get("bench_home"):
        os.environ["BENCH_HOME"] = spec["bench_home"]

    def ref(d):
        if d is None:
            return None
        return ModelRef(spec=d["spec"], kind=d["kind"], path=Path(d["path"]) if d["path"] else None,
                        revision=d["revision"])

    fuser_cls = fusers().get(spec["fuser"])
    cfg = fuser_cls.Config(**spec["config"])
    from accelerate import PartialState

    from harness.model import placement

    if spec.get("prepare"):
        from harness.api import PrepareContext

        share = spec["prepare"]
        prepare_ctx = PrepareContext(job=share["job"], jobs=share["jobs"])
        prepare = fuser_cls().prepare
        assert prepare is not None, "bench teachers checked that the fuser has a prepare stage"
        with placement(**spec.get("placement", {})):
            stores = prepare([ref(s) for s in spec["sources"]], ref(spec["target"]), cfg, prepare_ctx)
        if PartialState().is_main_process:
            Path(share["result"]).write_text(json.dumps({"stores": [asdict(s) for s in stores],
                                                         "timings": prepare_ctx.timings}, default=str))
        return
    out_dir = Path(spec["out_dir"])
    ctx = FuseContext(out_dir=out_dir, seed=spec["seed"], batch_size=spec["batch_size"])
    with placement(**spec.get("placement", {})):
        result = fuser_cls().fuse([ref(s) for s in spec["sources"]], ref(spec["target"]), cfg, ctx)
    if PartialState().is_main_process:
        (out_dir / RESULT_FILE).write_text(json.dumps({"path": str(result.path), "details": result.details,
                                                       "timings": ctx.timings}, default=str))


if __name__ == "__main__":
    from harness.logs import inherited_run_log

    with inherited_run_log():  # the libraries' output to the launching run's log file
        main(sys.argv[1])
