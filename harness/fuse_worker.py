"""One process of a multi-process fusion: `bench run --processes N` launches N of these with accelerate.

The runner writes a JSON spec (fuser, its config, the resolved sources and target, the output dir, the
seed, ``$BENCH_HOME``) and starts ``accelerate launch --multi_gpu --num_processes N -m harness.fuse_worker SPEC``
(or ``accelerate launch --config_file FILE ...`` with ``--accelerate-config``: :mod:`harness.launch`): on GPUs
each process gets one device (NCCL), on CPU accelerate falls back to gloo. Every process runs the fuser's
``fuse()``; the fuser itself makes process 0 the only writer of weights (``accelerator.is_main_process``),
and this worker makes it the only writer of the result file the runner reads back.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

RESULT_FILE = ".fuse_result.json"


def write_spec(path: Path, *, fuser: str, config: dict, sources: list, target, out_dir: Path, seed: int,
               batch_size: int, placement: dict | None = None) -> None:
    """The worker's spec, with this process's ``$BENCH_HOME`` (workers on other machines use the same folder, on a
    shared filesystem, for the caches the main process writes and the others read)."""
    from harness.paths import bench_home

    def ref(r):
        return None if r is None else {"spec": r.spec, "kind": r.kind, "path": str(r.path) if r.path else None,
                                       "revision": r.revision}

    path.write_text(json.dumps({"fuser": fuser, "config": config, "sources": [ref(s) for s in sources],
                                "target": ref(target), "out_dir": str(out_dir), "seed": seed,
                                "batch_size": batch_size, "placement": placement or {},
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
    out_dir = Path(spec["out_dir"])
    from harness.model import placement

    ctx = FuseContext(out_dir=out_dir, seed=spec["seed"], batch_size=spec["batch_size"])
    with placement(**spec.get("placement", {})):
        result = fuser_cls().fuse([ref(s) for s in spec["sources"]], ref(spec["target"]), cfg, ctx)
    from accelerate import PartialState

    if PartialState().is_main_process:
        (out_dir / RESULT_FILE).write_text(json.dumps({"path": str(result.path), "details": result.details,
                                                       "timings": ctx.timings}, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
