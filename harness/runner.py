"""The runner: fuse -> evaluate the fused model and its sources on the same suites -> record.

It works inside a run's session (:func:`harness.session.run_session`: the row's lifecycle) on the run's resolved
spec (:class:`harness.config.RunSpec`). Every costly stage is cached by a content hash of everything that
determines it:
  * fused weights   ``$BENCH_HOME/artifacts/<fuse_hash>/``   (fuser, its args, the sources' bytes, seed)
  * eval results    ``$BENCH_HOME/cache/evals/<eval_key>.json`` (model bytes, suite, version, args, limit)
so repeating a run (or resuming a failed one with ``--resume``) only redoes what is missing. Cache
entries are written to a temp name and renamed (:mod:`harness.atomic`), so an interrupted stage never leaves a
partial one.

Processes share the caches: each artifact and each evaluation has one builder at a time, the holder of its lock
file (``cache/locks/artifact-<fuse_hash>.lock``, ``cache/locks/eval-<eval_key>.lock``); the others wait for it and
reuse what it wrote. A builder that died leaves at most a scratch folder, which the next process to take its lock removes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from harness import corpus, model_card, paths, provenance
from harness.api import EvalContext, FuseContext, Fuser, FusionResult, PreparedStore, Suite, Timings
from harness.atomic import atomic_dir, atomic_file
from harness.config import ResolvedSuite, RunSpec, stable_hash
from harness.errors import BenchError
from harness.jsonable import to_plain
from harness.logs import console, library_output
from harness.model import ModelRef, Placement
from harness.paths import file_lock
from harness.session import RunSession
from harness.store import Store


@dataclass
class Evaluand:
    """A model that a run evaluates, in one of the roles fused / target / source / model."""

    id: str
    name: str
    role: str
    kind: str  # "source" | "fused" | "runtime"
    content_hash: str
    ref: str | None = None
    path: Path | None = None
    model_ref: ModelRef | None = None
    runtime: Callable[[], Any] | None = None
    fuser: str | None = None
    fuse_hash: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    built: bool = False  # fused by this process now, not taken from the artifact cache

    def store_row(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "kind": self.kind, "ref": self.ref,
                "path": str(self.path) if self.path else None, "content_hash": self.content_hash,
                "fuser": self.fuser, "fuse_hash": self.fuse_hash, "details": self.details}


# --- bench run, eval, score ---------------------------------------------------------------------


def run_fusion(run: RunSession) -> None:
    """`bench run`: fuse, then evaluate fused model + target + sources (in the run's placement)."""
    from harness.model import placement

    spec = run.spec
    with placement(spec.dtype, spec.device, _per_model(spec), **_backend(spec)):
        _run_fusion(run)


def _run_fusion(run: RunSession) -> None:
    """Check, resolve, fuse, then evaluate (inside the run's placement)."""
    spec, timings = run.spec, run.timings
    fuser_cls = spec.fuser_plugin
    assert fuser_cls is not None and spec.fuser_config is not None, "a bench run spec names its fuser"
    with timings.stage("validate"):
        if spec.control and fuser_cls.control_config is None:
            raise BenchError(f"fuser {spec.fuser} has no fusion term to switch off, so no data-only control",
                             "drop --control (it applies to the training fusers fusellm, fusechat, profuser and fusechat3)")
        _check_processes(spec, fuser_cls)
        source_specs, target_spec = _source_specs(spec, fuser_cls)
        if spec.log:
            from harness.training_log import check_available

            check_available(spec.log)
    with timings.stage("resolve"):
        sources = [_resolve(s) for s in source_specs]
        target = _resolve(target_spec) if target_spec else None
    run.store.update_run(run.id, fuser=spec.fuser, sources=[s.spec for s in sources],
                         target=target.spec if target else None,
                         run_hash=stable_hash(spec.canonical_json(), [s.content_hash() for s in sources]))
    console.log(f"run {run.id}: fuser [bold]{spec.fuser}[/] on {', '.join(s.name for s in sources)}"
                + (f" (target {target.name})" if target else ""))
    with timings.stage("fuse"):
        fused, stages = _fuse(fuser_cls, spec.fuser_config, spec, sources, target, spec.name, timings, "fuse")
    evaluands = [fused, *stages]
    if spec.control:
        with timings.stage("control"):
            evaluands.append(_control(fuser_cls, spec.fuser_config, spec, sources, target, fused, timings))
    if target is not None:
        evaluands.append(_source_evaluand(target, "target"))
    evaluands += [_source_evaluand(s, "source") for s in sources]
    _evaluate_all(run, _dedupe(evaluands))
    if spec.log:
        from harness import training_log

        with timings.stage("log"):
            for line in training_log.write(run.store, run.id, spec):
                console.log(f"run {run.id}: {line}")


def _check_processes(spec: RunSpec, fuser_cls: type[Fuser]) -> None:
    """A fuser that runs in one process fuses there; ``--processes`` then applies to the evaluations only."""
    if spec.accelerate and not fuser_cls.distributed:
        raise BenchError(f"fuser {spec.fuser} does not train, so it has nothing to launch with an accelerate config",
                         "drop --accelerate-config (it applies to the training fusers fusellm, fusechat, profuser and fusechat3)")
    if (spec.processes or 1) > 1 and not fuser_cls.distributed:
        console.log(f"fuser {spec.fuser} fuses in one process; the evaluations run in {spec.processes}")


def _source_specs(spec: RunSpec, fuser_cls: type[Fuser]) -> tuple[list[str], str | None]:
    """The run's sources and target as given, else the fuser's defaults."""
    source_specs = spec.sources or list(fuser_cls.default_sources)
    target_spec = spec.target if spec.target is not None else fuser_cls.default_target
    if not source_specs:
        raise BenchError(f"fuser {spec.fuser} needs sources", "pass --sources A,B or --source A --source B")
    return source_specs, target_spec


def run_prepare(spec: RunSpec, job: int = 0, jobs: int = 1) -> tuple[list[PreparedStore], Timings]:
    """`bench teachers`: the fuser's ``prepare`` alone (its teacher and alignment stores), job ``job`` of ``jobs``,
    in ``spec.processes`` processes, in the run's placement; records nothing in the results DB (the stores are a
    cache: a later `bench run` with the same settings finds them by content and records its own run). Returns the
    stores and the seconds of the fuser's stages."""
    import tempfile

    from harness.api import PrepareContext
    from harness.fuse_worker import write_spec
    from harness.launch import launch
    from harness.model import placement

    fuser_cls = spec.fuser_plugin
    assert fuser_cls is not None and spec.fuser_config is not None, "a bench teachers spec names its fuser"
    prepare = fuser_cls().prepare
    if prepare is None:
        from harness.registry import fusers

        able = [name for name in fusers().names() if getattr(fusers().find(name), "prepare", None) is not None]
        raise BenchError(f"fuser {spec.fuser} has no teacher stage to compute ahead",
                         f"bench teachers applies to {', '.join(able)}; use bench run for {spec.fuser}")
    _check_processes(spec, fuser_cls)
    source_specs, target_spec = _source_specs(spec, fuser_cls)
    sources = [_resolve(s) for s in source_specs]
    target = _resolve(target_spec) if target_spec else None
    where: dict[str, Any] = {"dtype": spec.dtype, "device": spec.device, "per_model": _per_model(spec)}
    if (spec.processes or 1) == 1:
        ctx = PrepareContext(job=job, jobs=jobs)
        with placement(**where):
            return prepare(sources, target, spec.fuser_config, ctx), ctx.timings
    assert spec.fuser is not None
    with tempfile.TemporaryDirectory(prefix="bench-teachers-") as scratch:
        spec_file, result_file = Path(scratch) / "spec.json", Path(scratch) / "stores.json"
        write_spec(spec_file, fuser=spec.fuser, config=spec.fuser_config.model_dump(mode="json"), sources=sources,
                   target=target, out_dir=None, seed=spec.seed, batch_size=spec.int_batch_size, placement=where,
                   prepare={"job": job, "jobs": jobs, "result": str(result_file)})
        launch("harness.fuse_worker", spec_file, spec.processes, what="the teacher stage")
        result = json.loads(result_file.read_text())
    stores = [PreparedStore(**{**s, "path": Path(s["path"])}) for s in result["stores"]]
    return stores, Timings(result["timings"])


def run_eval(run: RunSession, refs: list[str]) -> None:
    """`bench eval`: evaluate models as they are (no fusion). A resumed run skips the (model, suite) pairs it has
    already recorded."""
    from harness.model import placement

    spec = run.spec
    with run.timings.stage("resolve"):
        evaluands = _dedupe([_source_evaluand(_resolve(r), "model") for r in refs])
    run.store.update_run(run.id, sources=[e.ref for e in evaluands])
    with placement(spec.dtype, spec.device, _per_model(spec), **_backend(spec)):
        _evaluate_all(run, evaluands)


def run_score(run: RunSession, predictions: str) -> None:
    """`bench score`: score a predictions file with the suite's own extraction; the 'model' is the file."""
    import hashlib

    (suite_name,), ((suite_cls, suite_cfg),) = run.spec.suites, run.spec.suite_plans
    score_predictions = suite_cls().score_predictions
    if score_predictions is None:
        raise BenchError(f"suite {suite_name} cannot score external predictions", "use bbh, humaneval or humaneval-mini")
    path = Path(predictions)
    if not path.is_file():
        raise BenchError(f"predictions file {predictions} not found", "give an existing JSONL file")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    ev = Evaluand(id=f"pred-{digest}", name=run.spec.name or path.name, role="model", kind="predictions",
                  content_hash=digest, ref=str(path.resolve()))
    run.store.add_model(ev.store_row(), run.id, ev.role, 0)
    workdir = paths.cache_dir() / "work" / f"score-{run.id}"
    with run.timings.stage(f"score:{suite_name}"):
        try:
            result = score_predictions(path, suite_cfg, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    key = stable_hash(digest, suite_cls.name, suite_cls.version, suite_cfg.model_dump(mode="json"))
    run.store.add_eval(run.id, ev.id, suite_cls.name, suite_cls.version, key,
                       [asdict(s) for s in result.scores], [asdict(s) for s in result.samples])


def _resolve(spec: str) -> ModelRef:
    from harness.model import resolve

    return resolve(spec)


def _source_evaluand(ref: ModelRef, role: str) -> Evaluand:
    h = ref.content_hash()
    return Evaluand(id=f"m-{h}", name=ref.name, role=role, kind="source", content_hash=h, ref=ref.spec, path=ref.path,
                    model_ref=ref)


def _dedupe(evaluands: list[Evaluand]) -> list[Evaluand]:
    """One evaluand per model (by content), with display names that tell different models apart."""
    seen: set[str] = set()
    out = []
    for e in evaluands:
        if e.id not in seen:
            seen.add(e.id)
            out.append(e)
    return _distinct_names(out)


def _distinct_names(evaluands: list[Evaluand]) -> list[Evaluand]:
    """Local folders are shown by their name, so two checkpoints saved as ``.../a/hf`` and ``.../b/hf`` would both
    read ``hf`` in the DB, leaderboard and report. Such names get as many parent folders as it takes to differ."""
    by_name: dict[str, list[Evaluand]] = {}
    for e in evaluands:
        by_name.setdefault(e.name, []).append(e)
    for clash in (group for group in by_name.values() if len(group) > 1):
        paths = [e.path.resolve() for e in clash if e.path is not None]
        if len(paths) < len(clash):
            continue
        depth = 2
        while depth <= max(len(p.parts) for p in paths):
            names = ["/".join(p.parts[-depth:]) for p in paths]
            if len(set(names)) == len(names):
                for e, name in zip(clash, names, strict=True):
                    e.name = name
                break
            depth += 1
    return evaluands


# --- fusion (cached) ----------------------------------------------------------------------------


def _fuse(fuser_cls: type[Fuser], fuser_cfg: BaseModel, cfg: RunSpec, sources: list[ModelRef],
          target: ModelRef | None, run_name: str | None, timings: Timings,
          stage: str) -> tuple[Evaluand, list[Evaluand]]:
    """The fused model (from the artifact cache when there) and the stage models it was built through. The seconds
    of the fuser's own stages, when it runs, go to ``timings`` as ``<stage>:<its stage>``."""
    fuser_stages = Timings()
    try:
        return _fused_models(fuser_cls, fuser_cfg, cfg, sources, target, run_name, fuser_stages)
    finally:
        timings.add(fuser_stages, prefix=f"{stage}:")


def _fused_models(fuser_cls: type[Fuser], fuser_cfg: BaseModel, cfg: RunSpec, sources: list[ModelRef],
                  target: ModelRef | None, run_name: str | None,
                  fuser_stages: Timings) -> tuple[Evaluand, list[Evaluand]]:
    """:func:`_fuse`, with the fuser's stage seconds (when it runs) in ``fuser_stages``."""
    from harness.model import current_placement

    # the placement: teachers (and a runtime fuser's members) run in its dtype on its device
    fuser_args = fuser_cfg.model_dump(mode="json")
    fuse_hash = stable_hash(cfg.fuser, fuser_cls.version, fuser_args,
                            [s.content_hash() for s in sources], target.content_hash() if target else None, cfg.seed,
                            current_placement().weights_key, data_fingerprints(fuser_args) or None)
    label = run_name or f"{cfg.fuser}#{fuse_hash[:6]}"
    fuser = fuser_cls()
    if fuser_cls.runtime_only:
        ctx = FuseContext(out_dir=paths.cache_dir() / "runtime" / fuse_hash, seed=cfg.seed, batch_size=cfg.int_batch_size,
                          timings=fuser_stages)
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        result = fuser.fuse(sources, target, fuser_cfg, ctx)
        return Evaluand(id=f"rt-{fuse_hash}", name=label, role="fused", kind="runtime", content_hash=fuse_hash,
                        runtime=result.runtime, fuser=cfg.fuser, fuse_hash=fuse_hash, details=result.details,
                        built=True), []

    out_dir = paths.artifacts_dir() / fuse_hash
    card = _cached_card(out_dir)
    built = False
    if card is None:
        _remove_abandoned_builds(out_dir.parent)
        waiting = functools.partial(console.log, f"fuse: another process is building {out_dir}; waiting for it")
        with file_lock(_build_lock(out_dir), on_wait=waiting):
            card = _cached_card(out_dir)  # built by the process we waited for
            if card is None:
                card = _build_artifact(fuser, fuser_cfg, cfg, sources, target, fuse_hash, out_dir, fuser_stages)
                built = True
    from harness.model import directory_hash

    h = directory_hash(out_dir)
    fused = Evaluand(id=f"m-{h}", name=label, role="fused", kind="fused", content_hash=h, ref=str(out_dir),
                     path=out_dir, fuser=cfg.fuser, fuse_hash=fuse_hash, details=card.get("details", {}), built=built)
    stages = []
    stage_details = card.get("details", {}).get("stages", {})
    for name, rel in card.get("stages", {}).items():
        stage_dir = out_dir / rel
        sh = directory_hash(stage_dir)
        stages.append(Evaluand(id=f"m-{sh}", name=f"{label}/{name}", role="stage", kind="fused", content_hash=sh,
                               ref=str(stage_dir), path=stage_dir, fuser=cfg.fuser, fuse_hash=fuse_hash,
                               details=stage_details.get(name, {})))
    return fused, stages


def _control(fuser_cls: type[Fuser], fuser_cfg: BaseModel, cfg: RunSpec, sources: list[ModelRef],
             target: ModelRef | None, fused: Evaluand, timings: Timings) -> Evaluand:
    """The data-only control of a training fuser: the same target, data, steps and seed with the fusion term
    switched off (the fuser's ``control_config``: λ = 1), evaluated beside the fused model with role ``control``."""
    assert fuser_cls.control_config is not None, "checked when the run started"
    control_cfg = fuser_cls.control_config(fuser_cfg)
    control, _ = _fuse(fuser_cls, control_cfg, cfg, sources, target, f"{fused.name} control", timings, "control")
    return dataclasses.replace(control, role="control")


def _cached_card(out_dir: Path) -> dict[str, Any] | None:
    """The card of the finished artifact ``out_dir``, or None when it is not built (its card is written last)."""
    card_path = out_dir / "fusebench.json"
    if not card_path.is_file():
        return None
    console.log(f"fuse: cached artifact {out_dir}")
    return json.loads(card_path.read_text())


def _build_lock(out_dir: Path) -> Path:
    """The lock file that its builder holds while it builds the artifact ``out_dir`` (named by its fuse hash)."""
    return paths.locks_dir() / f"artifact-{out_dir.name}.lock"


def _remove_abandoned(folder: Path, name: re.Pattern[str], lock_of: Callable[[str], Path]) -> None:
    """Remove the scratch space left by processes that were killed (or lost with their machine): each entry of
    ``folder`` whose ``name`` matches and whose owner's lock, ``lock_of(<the name's first group>)``, nobody holds.
    (A live owner holds its lock from before it creates its scratch until after it removes it.)"""
    if not folder.is_dir():
        return
    for scratch in folder.iterdir():
        match = name.match(scratch.name)
        if match is None:
            continue
        with file_lock(lock_of(match.group(1)), wait=False) as owner_gone:
            if owner_gone:
                console.log(f"removing {scratch}, left by a process that did not finish")
                if scratch.is_dir():
                    shutil.rmtree(scratch, ignore_errors=True)
                else:
                    scratch.unlink(missing_ok=True)


def _remove_abandoned_builds(artifacts: Path) -> None:
    """The ``.tmp-<fuse_hash>-<pid>`` folders (and ``_fuse_in_processes``' ``.spec-`` files) of unfinished builds."""
    _remove_abandoned(artifacts, re.compile(r"^(?:\.spec-)?\.tmp-([0-9a-f]+)-\d+(?:\.json)?$"),
                      lambda fuse_hash: _build_lock(artifacts / fuse_hash))


def _build_artifact(fuser: Fuser, fuser_cfg: BaseModel, cfg: RunSpec, sources: list[ModelRef],
                    target: ModelRef | None, fuse_hash: str, out_dir: Path, fuser_stages: Timings) -> dict[str, Any]:
    """Fuse into a scratch folder, write the card, then rename it to ``out_dir`` (the caller holds its build lock)."""
    with atomic_dir(out_dir) as tmp:
        start_t = time.perf_counter()
        ctx = FuseContext(out_dir=tmp, seed=cfg.seed, batch_size=cfg.int_batch_size, timings=fuser_stages)
        if cfg.launched:
            result = _fuse_in_processes(cfg, fuser_cfg, sources, target, ctx)
        else:
            result = fuser.fuse(sources, target, fuser_cfg, ctx)
        if result.path is None:
            raise RuntimeError(f"fuser {cfg.fuser} returned no model path")
        if Path(result.path).resolve() != tmp.resolve():
            shutil.copytree(result.path, tmp, dirs_exist_ok=True)
        card = {"fuser": cfg.fuser, "config": fuser_cfg.model_dump(mode="json"), "fuse_hash": fuse_hash,
                "sources": [s.spec for s in sources], "target": target.spec if target else None,
                "seed": cfg.seed, "seconds": round(time.perf_counter() - start_t, 3),
                "details": result.details, "provenance": provenance.collect(),
                "stages": {name: _inside(Path(result.path), Path(stage_dir))
                           for name, stage_dir in result.stages.items()}}
        (tmp / "fusebench.json").write_text(json.dumps(card, indent=1, sort_keys=True, default=str))
        model_card.write(tmp, json.loads((tmp / "fusebench.json").read_text()))  # README.md: HF metadata, method, config
    console.log(f"fuse: wrote {out_dir} in {card['seconds']:.1f}s")
    return card


def _inside(root: Path, stage_dir: Path) -> str:
    """``stage_dir`` relative to the fused model's directory (stage models must be saved inside it)."""
    try:
        return str(stage_dir.resolve().relative_to(root.resolve()))
    except ValueError:
        raise RuntimeError(f"stage model {stage_dir} is not inside the fused model's directory {root}") from None


def _fuse_in_processes(cfg: RunSpec, fuser_cfg: BaseModel, sources: list[ModelRef], target: ModelRef | None,
                       ctx: FuseContext) -> FusionResult:
    """Run ``fuse()`` in several processes under ``accelerate launch`` (:mod:`harness.launch`: ``cfg.processes``
    DDP processes, or as the run's accelerate config file says); the stage timings of the main process go to
    ``ctx.timings``."""
    from harness.fuse_worker import RESULT_FILE, write_spec
    from harness.launch import launch, other_machines_command, read_config

    assert cfg.fuser is not None, "a fusion run names its fuser"
    launch_cfg = read_config(cfg.accelerate) if cfg.accelerate else None
    out_dir = ctx.out_dir
    spec = out_dir.parent / f".spec-{out_dir.name}.json"
    write_spec(spec, fuser=cfg.fuser, config=fuser_cfg.model_dump(mode="json"), sources=sources, target=target,
               out_dir=out_dir, seed=cfg.seed, batch_size=cfg.int_batch_size,
               placement={"dtype": cfg.dtype, "device": cfg.device, "per_model": _per_model(cfg)})
    if launch_cfg is not None and launch_cfg.num_machines > 1:
        console.log(f"fuse: machine 0 of {launch_cfg.num_machines}; on each other machine (the same BENCH_HOME, on a "
                    "shared filesystem), with RANK its machine_rank, start:")
        console.print(other_machines_command(launch_cfg, cfg.processes, spec), soft_wrap=True, markup=False,
                      highlight=False)
    try:
        launch("harness.fuse_worker", spec, cfg.processes, what="fuse", config=launch_cfg)
    finally:
        spec.unlink(missing_ok=True)
    result = json.loads((out_dir / RESULT_FILE).read_text())
    (out_dir / RESULT_FILE).unlink()
    ctx.timings.add(result["timings"])
    _warn_unsharded(result["details"].get("distributed") or {})
    return FusionResult(path=Path(result["path"]), details=result["details"])


def _warn_unsharded(distributed: dict[str, Any]) -> None:
    """One line when the launch config asked for FSDP or DeepSpeed and the training ran otherwise: accelerate runs
    them only on accelerators, and trains with DDP (each process holding the whole model) on CPU."""
    from rich.text import Text

    requested, ran = distributed.get("requested"), distributed.get("type")
    if requested and ran != requested:
        console.print(Text(f"warning: the accelerate config asked for {requested}, but accelerate ran {ran} (it runs "
                           f"{requested} only on GPUs and other accelerators): every process held the whole model",
                           style="yellow"), soft_wrap=True)


# --- evaluation (cached) ------------------------------------------------------------------------


def eval_key(model_hash: str, suite_cls: type[Suite], suite_cfg: BaseModel, cfg: RunSpec, placement_key: str) -> str:
    """What determines an evaluation: model bytes, suite + version, its args, the bytes of any data files
    those args point to (editing a question file in place must not reuse an old result), limit, seed and
    the embedded corpus (the held-out text the perplexity suite reads by default), and the precision and
    device kind the model runs in (``float32@cpu``, ``bfloat16@cuda``: never one cache entry for both)."""
    args = suite_cfg.model_dump(mode="json")
    return stable_hash(model_hash, suite_cls.name, suite_cls.version, args, data_fingerprints(args),
                       cfg.limit, cfg.evaluation_seed, corpus.corpus_fingerprint(), placement_key)


def _per_model(cfg: RunSpec) -> dict[str, dict[str, str | None]]:
    return {spec: choice.model_dump() for spec, choice in cfg.models.items()}


def _backend(cfg: RunSpec) -> dict[str, Any]:
    """The run's backend choices, as :func:`harness.model.placement` takes them."""
    engine = dict(cfg.vllm)
    if cfg.backend == "vllm" and (cfg.processes or 1) > 1:  # vLLM runs its own replicas: --processes N is N of them
        engine.setdefault("data_parallel_size", cfg.processes)
    return {"backend": cfg.backend, "base_url": cfg.base_url, "tokenizer": cfg.tokenizer, "engine_args": engine}


def _placement_of(ev: Evaluand) -> Placement:
    """Where ``ev`` runs: its own entry in the run config, else the run's. A runtime fuser's members are loaded
    with transformers whatever the backend, each in its own entry's dtype and device."""
    from harness.model import current_placement

    where = current_placement()
    if ev.runtime is not None:
        return dataclasses.replace(where, backend="hf")
    return where.for_model(ev.model_ref or ModelRef(spec=str(ev.path), kind="local", path=ev.path))


def _placement_key(ev: Evaluand) -> str:
    where = _placement_of(ev)
    return where.weights_key if ev.runtime is not None else where.key


def data_fingerprints(args: dict[str, Any]) -> dict[str, str]:
    """sha256 of every file (or directory of files) named by a string argument."""
    import hashlib

    found = {}
    values = [v for v in args.values() if isinstance(v, str)]
    values += [x for v in args.values() if isinstance(v, list) for x in v if isinstance(x, str)]
    for value in values:
        path = Path(value).expanduser()
        if not value or not path.exists():
            continue
        h = hashlib.sha256()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
        found[value] = h.hexdigest()[:16]
    return found


def _eval_lock(cache_file: Path) -> Path:
    """The lock file that its builder holds while it computes the eval cache entry ``cache_file``."""
    return paths.locks_dir() / f"eval-{cache_file.stem}.lock"


def _cached_eval(cache_file: Path, ev: Evaluand, suite_cls: type[Suite]) -> dict[str, Any] | None:
    if not cache_file.is_file():
        return None
    console.log(f"eval {ev.name} on {suite_cls.name}: cached")
    return json.loads(cache_file.read_text())


def _evaluate_all(run: RunSession, evaluands: list[Evaluand]) -> None:
    """Record each evaluand and its scores on each suite of the run: from the eval cache, else computed now. A
    resumed run skips the (model, suite) pairs it recorded already."""
    store, run_id, cfg, timings = run.store, run.id, run.spec, run.timings
    evals = paths.cache_dir() / "evals"
    _remove_abandoned(paths.cache_dir() / "work", re.compile(r"^([0-9a-f]+)$"),
                      lambda key: _eval_lock(evals / f"{key}.json"))
    for position, ev in enumerate(evaluands):
        store.add_model(ev.store_row(), run_id, ev.role, position)
        curves = ev.details.get("loss_curves") if isinstance(ev.details, dict) else None
        if curves:
            store.add_train_log(run_id, ev.id, {k: v for k, v in curves.items() if isinstance(v, list)})
        fuse_usage = ev.details.get("judge_usage") if isinstance(ev.details, dict) else None
        if fuse_usage:  # a fuser's judge reward (ProFuser)
            store.add_judge_usage(run_id, ev.id, "control" if ev.role == "control" else "fuse", fuse_usage,
                                  cached=not ev.built)
        lm = None
        try:
            for suite_cls, suite_cfg in cfg.suite_plans:
                if run.resumed and store.has_scores(run_id, ev.id, suite_cls.name):
                    continue
                key = eval_key(ev.content_hash, suite_cls, suite_cfg, cfg, _placement_key(ev))
                cache_file = evals / f"{key}.json"
                with timings.stage(f"eval:{ev.name}:{suite_cls.name}"):
                    payload = _cached_eval(cache_file, ev, suite_cls)
                    cached = payload is not None
                    if payload is None:
                        waiting = functools.partial(console.log, f"eval {ev.name} on {suite_cls.name}: another "
                                                    "process is computing it; waiting for it")
                        with file_lock(_eval_lock(cache_file), on_wait=waiting):
                            payload = _cached_eval(cache_file, ev, suite_cls)  # by the process we waited for
                            cached = payload is not None
                            if payload is None and _data_parallel(cfg, ev, suite_cls):
                                payload = _evaluate_in_processes(ev, suite_cls, suite_cfg, cfg, key, cache_file)
                            elif payload is None:
                                if lm is None:
                                    with timings.stage(f"load:{ev.name}"):
                                        lm = _load(ev, cfg.batch_size)
                                payload = _evaluate(lm, ev, suite_cls, suite_cfg, cfg, key, cache_file)
                    store.add_eval(run_id, ev.id, suite_cls.name, suite_cls.version, key,
                                   payload["scores"], payload["samples"], precision=payload.get("precision"))
                    store.add_judge_usage(run_id, ev.id, f"eval:{suite_cls.name}", payload.get("judge_usage") or [],
                                          cached=cached)
        finally:
            del lm
    _warn_caveats(cfg.suite_plans)
    _say_judge_usage(store, run_id, cfg.judge_price)


def _say_judge_usage(store: Store, run_id: str, price: tuple[float, float] | None) -> None:
    """One line with the judge tokens the run spent (and their cost at ``price``), when it judged anything."""
    from harness.judge import usage_line

    line = usage_line(store.judge_usage([run_id]).get(run_id), price)
    if line:
        console.log(f"run {run_id}: {line}")


def _warn_caveats(suite_plans: tuple[ResolvedSuite, ...]) -> None:
    """Each suite's caveats about the scores just recorded (computed now or taken from the cache: the cache key holds
    the suite arguments, so both were made the same way), one line each."""
    from rich.text import Text

    for suite_cls, suite_cfg in suite_plans:
        for line in suite_cls.caveats(suite_cfg.model_dump(mode="json")):
            console.print(Text(f"warning: {line}", style="yellow"), soft_wrap=True)


def _evaluate(lm: Any, ev: Evaluand, suite_cls: type[Suite], suite_cfg: BaseModel, cfg: RunSpec, key: str,
              cache_file: Path) -> dict[str, Any]:
    """Evaluate ``lm`` on the suite in the scratch folder ``cache/work/<key>`` and write the cache entry (the caller
    holds the entry's lock, so the folder is this process's alone: whatever is in it was left by a killed process)."""
    console.log(f"eval {ev.name} ({ev.role}) on {suite_cls.name} ...")
    workdir = paths.cache_dir() / "work" / key
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    try:
        # a spinner on a terminal (nothing in a log), the libraries' output to the run's log file
        with console.status(f"eval {ev.name} on {suite_cls.name}"), library_output():
            result = suite_cls().evaluate(lm, suite_cfg, EvalContext(
                workdir=workdir, seed=cfg.evaluation_seed, limit=cfg.limit, batch_size=cfg.int_batch_size))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    payload = {"scores": [asdict(s) for s in result.scores], "samples": [asdict(s) for s in result.samples],
               "precision": _precision(lm, _placement_of(ev)), "judge_usage": result.judge_usage}
    with atomic_file(cache_file) as partial:
        partial.write_text(json.dumps(payload, default=to_plain))
    return payload


def _data_parallel(cfg: RunSpec, ev: Evaluand, suite_cls: type[Suite]) -> bool:
    """Whether this evaluation is split across ``cfg.processes`` processes: a model loaded with transformers (not a
    runtime fuser, a vLLM engine or a served model) on a suite whose model calls all go through lm-eval's evaluator.
    A one-line note says when ``--processes`` does not apply."""
    if (cfg.processes or 1) == 1:
        return False
    if ev.runtime is not None or _placement_of(ev).backend != "hf" or not suite_cls.data_parallel:
        why = ("a runtime fuser's members run together" if ev.runtime is not None else
               f"the {_placement_of(ev).backend} backend parallelises itself (--set vllm.data_parallel_size=N)"
               if _placement_of(ev).backend != "hf" else f"{suite_cls.name} is not data parallel")
        console.log(f"eval {ev.name} on {suite_cls.name}: one process ({why})")
        return False
    return True


def _evaluate_in_processes(ev: Evaluand, suite_cls: type[Suite], suite_cfg: BaseModel, cfg: RunSpec, key: str,
                           cache_file: Path) -> dict[str, Any]:
    """:func:`_evaluate` split across ``cfg.processes`` processes (:mod:`harness.eval_worker`): the same scores and
    samples, written to the same cache entry."""
    from harness.eval_worker import RESULT_FILE, write_spec
    from harness.launch import launch

    console.log(f"eval {ev.name} ({ev.role}) on {suite_cls.name} ...")
    ref = ev.model_ref or ModelRef(spec=str(ev.path), kind="local", path=ev.path)
    workdir = paths.cache_dir() / "work" / key
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    try:
        spec = workdir / "spec.json"
        write_spec(spec, model={"spec": ref.spec, "kind": ref.kind, "path": str(ref.path) if ref.path else None,
                                "revision": ref.revision},
                   suite=suite_cls.name, config=suite_cfg.model_dump(mode="json"), seed=cfg.evaluation_seed,
                   limit=cfg.limit, batch_size=cfg.batch_size, eval_batch_size=cfg.int_batch_size,
                   placement={"dtype": cfg.dtype, "device": cfg.device, "per_model": _per_model(cfg), **_backend(cfg)},
                   workdir=workdir)
        launch("harness.eval_worker", spec, cfg.processes, what=f"eval {ev.name} on {suite_cls.name}")
        payload = json.loads((workdir / RESULT_FILE).read_text())  # kept with its requests_per_process
        console.log(f"eval {ev.name} on {suite_cls.name}: requests per process "
                    f"{' + '.join(map(str, payload['requests_per_process']))}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    with atomic_file(cache_file) as partial:
        partial.write_text(json.dumps(payload, default=to_plain))
    return payload


def _precision(lm: Any, where: Placement) -> dict[str, str]:
    """What the scores were computed in: the model's parameter dtype (a runtime fuser or a vLLM engine: the
    placement's; a served model: ``served``) and the backend (``hf-cpu``, ``vllm-cuda``, ``openai``)."""
    from harness.model import model_dtype

    if where.backend == "openai":
        dtype = "served"
    else:
        model = getattr(lm, "model", None)  # HFLM's module; runtime fusers have none, VLLM's is its engine
        dtype = model_dtype(model) if model is not None and where.backend == "hf" else where.load_dtype()
    return {"dtype": dtype, "backend": where.backend_label}


def _load(ev: Evaluand, batch_size: int | str) -> Any:
    if ev.runtime is not None:
        return ev.runtime()
    from harness.backends import load_lm

    ref = ev.model_ref or ModelRef(spec=str(ev.path), kind="local", path=ev.path)
    return load_lm(ref, batch_size, _placement_of(ev))
