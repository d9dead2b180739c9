"""Run configuration: one YAML file (optional) + CLI flags + ``--set key=value`` overrides.

Precedence: ``--set`` > CLI flags > YAML > the plugins' own defaults. A run file looks like::

    # bench run --config configs/merge_ties.yaml
    name: merge-ties
    fuser: {name: merge, args: {method: ties, density: 0.5}}
    sources: [zoo:llama-code, zoo:llama-docs, zoo:llama-math]
    target: zoo:llama-base
    suites: [perplexity]            # or [{name: perplexity, args: {max_docs: 16}}]
    seed: 0

A model may carry its own precision and device (the others use ``--dtype`` / ``--device``)::

    sources:
      - zoo:llama-code
      - {path: /ckpts/big-model, dtype: bfloat16, device: cuda:1}
    target: {path: zoo:llama-base, dtype: float32}

``--set`` keys: a top-level field (``seed=1``, ``limit=20``), ``fuser.FIELD=…`` or a bare fuser field
(``method=ties``), or ``SUITE.FIELD=…`` (``perplexity.max_docs=8``). Values are parsed as YAML, so
``weights=[0.5,0.5]`` is a list. Everything is validated before any model is touched.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.api import Fuser, Suite
from harness.errors import BenchError, did_you_mean, read_text

if TYPE_CHECKING:
    from typing_extensions import Self

DEFAULT_SUITES = ["perplexity"]
MAX_SEED = 2**32 - 1  # numpy.random.seed's upper bound


Dtype = Literal["auto", "bfloat16", "float16", "float32"]
_DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


Backend = Literal["hf", "vllm", "openai"]


class ModelPlacement(BaseModel):
    """One model's own precision, device and backend (a ``sources:`` / ``target:`` entry with ``path``); None =
    the run's."""

    model_config = ConfigDict(extra="forbid")

    dtype: Dtype | None = None
    device: str | None = Field(None, pattern=_DEVICE_PATTERN)
    backend: Backend | None = None
    base_url: str | None = None
    tokenizer: str | None = None


class RunConfig(BaseModel):
    """What a run does, as it is recorded (``runs.config``). Everything here (plus the sources' content) goes into
    the run hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, description="A label for the run; `bench regress` can refer to runs by it.")
    fuser: str | None = Field(None, description="Registered fuser name; None for `bench eval` runs.")
    fuser_args: dict[str, Any] = Field(default_factory=dict, description="Arguments of the fuser's Config.")
    sources: list[str] = Field(default_factory=list, description="Model refs; empty = the fuser's defaults.")
    target: str | None = Field(None, description="Target / pivot / base model; None = the fuser's default, \"\" = none.")
    suites: list[str] = Field(default_factory=lambda: list(DEFAULT_SUITES))
    suite_args: dict[str, dict[str, Any]] = Field(default_factory=dict)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seeds torch, numpy and Python's random (numpy's range).")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N items per task.")
    batch_size: int | Literal["auto"] = Field(8, description="Evaluation batch size, or auto (lm-eval finds one).")
    dtype: Dtype = Field(
        "auto", description="Precision of evaluated models and teachers: auto = the checkpoint's on GPU, float32 on CPU.")
    device: str = Field("auto", pattern=_DEVICE_PATTERN, description="auto | cpu | cuda | cuda:N.")
    models: dict[str, ModelPlacement] = Field(
        default_factory=dict, description="Per-model dtype/device, by model reference (from the YAML's model entries).")
    backend: Backend = Field("hf", description="How evaluated models run: hf (transformers), vllm, openai (served).")
    base_url: str | None = Field(None, description="openai backend: the OpenAI-compatible server, e.g. http://h:8000/v1.")
    tokenizer: str | None = Field(None, description="openai backend: the served model's tokenizer (folder or zoo:NAME).")
    vllm: dict[str, Any] = Field(default_factory=dict, description="vllm backend: engine arguments "
                                                                  "(tensor_parallel_size, gpu_memory_utilization ...).")
    processes: int | None = Field(None, ge=1, description="Processes (accelerate launch) for a training fuser and for "
                                                         "data-parallel evaluation (vllm backend: its data_parallel_size); "
                                                         "None: one, or as many as the accelerate config says.")
    accelerate: str | None = Field(None, description="An accelerate config file (FSDP, DeepSpeed, several machines) "
                                                     "that the fusion's training is launched with (harness/launch.py).")
    accelerate_sha256: str | None = Field(None, description="sha256 of the accelerate config file's content when the "
                                                            "run was configured (set by FuseBench).")
    control: bool = Field(False, description="Also train the data-only control (λ = 1) of a training fuser.")
    seeds: list[int] = Field(default_factory=list, description="Run the fusion once per seed (a run group); the "
                                                               "evaluations use the first seed.")
    eval_seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Seed of the evaluations when it differs from "
                                                                       "the fusion's (a seed group's runs share one).")
    log: list[str] = Field(default_factory=list, description="Where the training curves go besides the train_log "
                                                             "table: tensorboard:DIR, wandb[:DIR] (harness/training_log.py).")
    judge_price: tuple[float, float] | None = Field(None, description="USD per 1k prompt and per 1k completion tokens "
                                                                      "of the run's LLM judges: a cost beside their "
                                                                      "token counts.")

    @field_validator("log")
    @classmethod
    def _known_destinations(cls, value: list[str]) -> list[str]:
        from harness.training_log import normalise

        return normalise(value)

    @field_validator("judge_price")
    @classmethod
    def _non_negative_price(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not all(math.isfinite(p) and p >= 0 for p in value):
            raise ValueError("judge_price must be two non-negative numbers (USD per 1k prompt / completion tokens)")
        return value

    @field_validator("vllm")
    @classmethod
    def _known_engine_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        from harness.backends import VLLM_ARGS

        unknown = sorted(set(value) - set(VLLM_ARGS))
        if unknown:
            raise ValueError(f"unknown vLLM argument(s) {', '.join(unknown)}; use {', '.join(VLLM_ARGS)}")
        return value

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("batch_size must be >= 1 or 'auto'")
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or any(not 0 <= s <= 2**32 - 1 for s in value):
            raise ValueError("seeds must be distinct numbers in 0..2**32-1, e.g. --seeds 0,1,2")
        return value

    @property
    def evaluation_seed(self) -> int:
        """The seed the evaluations run with: one for every run of a seed group, so that unchanged models are
        evaluated once and every seed's fused model is scored on the same samples."""
        return self.seed if self.eval_seed is None else self.eval_seed

    def for_seed(self, seed: int) -> Self:
        """The config of one run of this seed group."""
        return self.model_copy(update={"seed": seed, "seeds": [], "eval_seed": self.seeds[0] if self.seeds else None})

    @property
    def launched(self) -> bool:
        """Whether the fusion trains in processes started by ``accelerate launch`` (several, or an accelerate
        config file's), rather than inside this one."""
        return (self.processes or 1) > 1 or self.accelerate is not None

    @property
    def int_batch_size(self) -> int:
        """For the places that need a number (fusers, judges): the batch size, 8 when it is ``auto``."""
        return self.batch_size if isinstance(self.batch_size, int) else 8

    def canonical_json(self) -> str:
        # how a run executes (processes, the accelerate config) does not change what it computes; fields added later
        # are left out at their defaults, so that earlier runs keep their hashes
        later = {"models", "backend", "base_url", "tokenizer", "vllm", "control", "seeds", "eval_seed"}
        how = {"name", "processes", "accelerate", "accelerate_sha256", "log", "judge_price"}
        exclude = how | {f for f in later if getattr(self, f) == type(self).model_fields[f].get_default(
            call_default_factory=True)}
        return json.dumps(self.model_dump(exclude=exclude), sort_keys=True, default=str)


class ResolvedSuite(NamedTuple):
    """A suite of a run: its class and its arguments, validated."""

    plugin: type[Suite]
    config: BaseModel


class RunSpec(RunConfig):
    """A run config with its plugins resolved and their arguments validated: what the runner executes, and where
    each plugin gets its validated ``Config`` from. Made once per attempt at a run by :func:`resolve` (through
    :func:`build_run_config` and :func:`build_eval_config`, or from a resumed run's stored config); nothing
    downstream validates again. Frozen; recorded and hashed as the :class:`RunConfig` it extends (the resolved
    fields are left out of every dump)."""

    fuser_plugin: type[Fuser] | None = Field(None, exclude=True)
    fuser_config: BaseModel | None = Field(None, exclude=True)
    suite_plans: tuple[ResolvedSuite, ...] = Field((), exclude=True)


def resolve(cfg: RunConfig) -> RunSpec:
    """``cfg`` with its fuser's and suites' classes and their ``Config`` objects (the single place plugin arguments
    are checked; a BenchError names the first problem)."""
    from harness.registry import fusers as fuser_registry
    from harness.registry import suites as suite_registry

    fuser_plugin = fuser_registry().get(cfg.fuser) if cfg.fuser else None
    fuser_config = plugin_config(fuser_plugin, cfg.fuser_args, f"fuser {cfg.fuser}") if fuser_plugin else None
    unknown = set(cfg.suite_args) - set(cfg.suites)
    if unknown:
        raise BenchError(f"arguments given for suite(s) not in the run: {sorted(unknown)}", "add them with --suite")
    plans = []
    for name in cfg.suites:
        plugin = suite_registry().get(name)
        plans.append(ResolvedSuite(plugin, plugin_config(plugin, cfg.suite_args.get(name, {}), f"suite {name}")))
    # the config's own fields were validated when it was made
    return RunSpec.model_construct(cfg.model_fields_set, **dict(cfg), fuser_plugin=fuser_plugin,
                                   fuser_config=fuser_config, suite_plans=tuple(plans))


def stable_hash(*parts: Any, length: int = 16) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise BenchError(f"config file {path} not found", "give an existing YAML file to --config")
    try:
        data = yaml.safe_load(read_text(p, "config file")) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise BenchError(f"config file {path} is not valid YAML{at}: {getattr(e, 'problem', e)}",
                         "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise BenchError(f"config file {path} must be a mapping, got {type(data).__name__}", "write key: value pairs")
    return data


def _normalise_file(data: dict[str, Any]) -> dict[str, Any]:
    """Accept the friendly YAML shapes (``fuser: {name, args}``, suites as dicts) and flatten them."""
    out = dict(data)
    fuser = out.get("fuser")
    if isinstance(fuser, dict):
        out["fuser"] = fuser.get("name")
        out["fuser_args"] = {**fuser.get("args", {}), **out.get("fuser_args", {})}
    suites = out.get("suites")
    if isinstance(suites, list):
        names, args = [], dict(out.get("suite_args", {}))
        for entry in suites:
            if isinstance(entry, dict):
                names.append(entry.get("name"))
                args[entry.get("name")] = {**entry.get("args", {}), **args.get(entry.get("name"), {})}
            else:
                names.append(entry)
        out["suites"], out["suite_args"] = names, args
    models = dict(out.get("models") or {})
    if isinstance(out.get("sources"), list):
        out["sources"] = [_model_entry(entry, models) for entry in out["sources"]]
    if isinstance(out.get("target"), dict):
        out["target"] = _model_entry(out["target"], models)
    if models:
        out["models"] = models
    return out


def _model_entry(entry: Any, models: dict[str, Any]) -> Any:
    """A model written as a mapping, ``{path: REF, dtype: bfloat16, device: cuda:1}``: its reference, with the rest
    collected into ``models`` (the per-model placement)."""
    if not isinstance(entry, dict):
        return entry
    if not isinstance(entry.get("path"), str):
        raise BenchError(f"model entry {entry} has no 'path'",
                         "write it as {path: REF, dtype: ..., device: ...} or as the plain reference")
    extra = {k: v for k, v in entry.items() if k != "path"}
    if extra:
        models[entry["path"]] = {**models.get(entry["path"], {}), **extra}
    return entry["path"]


#: CLI flags that set a field of every suite in the run whose Config has it (flag -> field).
SUITE_FLAG_FIELDS = ("data_dir", "questions", "references", "judge_url", "judge_model", "judge_prompts",
                     "judge_repeats", "allow_code_exec", "samples", "temperature", "mode", "apply_chat_template")


def apply_suite_flags(suite_names: list[str], suite_args: dict[str, dict[str, Any]], flags: dict[str, Any] | None) -> None:
    """Route suite flags (``--data-dir``, ``--judge-url`` ...) to the suites whose Config has the field."""
    from harness.registry import suites as suite_registry

    for field, value in (flags or {}).items():
        if value is None or value is False:
            continue
        takers = [s for s in suite_names if field in suite_registry().get(s).Config.model_fields]
        if not takers:
            flag = "--" + field.replace("_", "-")
            owners = [s for s in suite_registry().names()
                      if field in suite_registry().get(s).Config.model_fields]
            raise BenchError(f"{flag} applies to suite(s) {', '.join(owners) or 'none'}, not to {', '.join(suite_names)}",
                             f"add --suite {owners[0]}" if owners else f"drop {flag}")
        for s in takers:
            suite_args.setdefault(s, {}).setdefault(field, value)


def parse_set(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise BenchError(f"--set {item!r} is not key=value", "write it as --set key=value, e.g. --set method=ties")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def build_run_config(
    *, config_file: str | None = None, fuser: str | None = None, sources: list[str] | None = None,
    target: str | None = None, suites: list[str] | None = None, sets: list[str] | None = None,
    name: str | None = None, limit: int | None = None, seed: int | None = None,
    suite_flags: dict[str, Any] | None = None, processes: int | None = None,
    placement: dict[str, Any] | None = None, control: bool | None = None, seeds: list[int] | None = None,
    accelerate_config: str | None = None, log: list[str] | None = None, judge_price: tuple[float, float] | None = None,
) -> RunSpec:
    """Merge file, flags and overrides into a validated :class:`RunSpec` (BenchError on any problem).

    ``placement``: ``--dtype`` / ``--device`` / ``--batch-size`` values given on the command line; ``log``: ``--log``
    destinations of the training curves; ``judge_price``: ``--judge-price`` (USD per 1k prompt / completion tokens).
    ``accelerate_config``: ``--accelerate-config``; it, or the YAML's ``accelerate:`` (a path, relative to the current
    folder), is checked (:func:`harness.launch.read_config`) and recorded with the sha256 of its content."""
    from harness.registry import fusers as fuser_registry
    from harness.registry import suites as suite_registry

    data = _normalise_file(_run_file(config_file, fuser)) if config_file else {}
    flags = {"fuser": fuser, "sources": sources or None, "target": target, "suites": suites or None,
             "name": name, "limit": limit, "seed": seed, "processes": processes, "control": control, "seeds": seeds,
             "accelerate": accelerate_config, "log": log or None, "judge_price": judge_price, **(placement or {})}
    data.update({k: v for k, v in flags.items() if v is not None})
    if not data.get("fuser"):
        raise BenchError("no fuser given", "pass --fuser NAME or set `fuser:` in the config file")
    data.setdefault("fuser_args", {})
    data.setdefault("suite_args", {})

    fuser_registry().check(data["fuser"])
    fuser_cls = fuser_registry().get(data["fuser"])
    # a fuser may name the suites its paper reports (fusechat: perplexity, bbh-mini, mtbench)
    defaults = fuser_cls.default_suites
    data["suites"] = data.get("suites") or list(DEFAULT_SUITES if defaults is None else defaults)
    for suite in data["suites"]:
        suite_registry().check(suite)

    top_level = set(RunConfig.model_fields) - {"fuser_args", "suite_args", "fuser", "suites"}
    suite_names = set(data["suites"])
    for item in sets or []:
        key, value = parse_set(item)
        head, _, rest = key.partition(".")
        if key in top_level and key in fuser_cls.Config.model_fields:
            raise BenchError(f"--set {key} is ambiguous: the run's {key} and {data['fuser']}'s {key} are different things",
                             f"write --set fuser.{key}=... for {data['fuser']}'s, or --set run.{key}=... "
                             f"(for batch_size: --batch-size) for the run's")
        if head == "run" and rest in top_level:
            data[rest] = value
        elif head == "vllm" and rest:
            data.setdefault("vllm", {})[rest] = value
        elif key in top_level:
            data[key] = value
        elif head == "fuser" and rest:
            data["fuser_args"][rest] = value
        elif head in suite_names and rest:
            data["suite_args"].setdefault(head, {})[rest] = value
        elif not rest and key in fuser_cls.Config.model_fields:
            data["fuser_args"][key] = value
        else:
            choices = sorted(top_level | set(fuser_cls.Config.model_fields))
            raise BenchError(f"--set {key}: unknown key{did_you_mean(key, choices)}",
                             f"use a run field, a {data['fuser']} field ({', '.join(fuser_cls.Config.model_fields)}) "
                             "or SUITE.FIELD")
    apply_suite_flags(list(suite_names), data["suite_args"], suite_flags)
    try:
        cfg = RunConfig(**data)
    except ValidationError as e:
        raise BenchError(f"invalid run config: {_first_error(e)}", "check the config file and flags") from None
    if cfg.accelerate is not None:
        from harness.launch import read_config

        launch = read_config(cfg.accelerate)
        cfg = cfg.model_copy(update={"accelerate": str(launch.path), "accelerate_sha256": launch.sha256})
    spec = _with_config_models(resolve(cfg))
    _check_per_model_entries(spec)
    if spec.seeds and "seed" in data:
        raise BenchError("both a seed and seeds are given", "use --seeds A,B,C for a seed group, or --seed N for one run")
    return spec


#: The fuser that runs a mergekit config given as the run file (`bench run --config merge.yml`).
MERGEKIT_FUSER = "merge"


def is_mergekit_config(data: dict[str, Any]) -> bool:
    """Whether a YAML mapping is a mergekit config rather than a FuseBench run file: mergekit's ``merge_method`` with
    its ``models``, ``slices`` or ``modules``, and no FuseBench ``fuser``."""
    return "merge_method" in data and "fuser" not in data and any(k in data for k in ("models", "slices", "modules"))


def _run_file(config_file: str, fuser: str | None) -> dict[str, Any]:
    """The run file's mapping; a mergekit config becomes a run of the merge fuser on that file (its models are the
    run's sources: :func:`_with_config_models`)."""
    data = read_yaml(config_file)
    if not is_mergekit_config(data):
        return data
    if fuser not in (None, MERGEKIT_FUSER):
        raise BenchError(f"{config_file} is a mergekit config, which the {MERGEKIT_FUSER} fuser runs, not {fuser}",
                         f"drop --fuser, or give --fuser {MERGEKIT_FUSER}")
    return {"fuser": MERGEKIT_FUSER, "fuser_args": {"mergekit_config": str(Path(config_file).resolve())}}


def _with_config_models(spec: RunSpec) -> RunSpec:
    """``spec`` with the sources and target that its fuser's arguments name (:attr:`harness.api.Fuser.config_models`:
    a mergekit config's models), which must not be given besides."""
    hook = spec.fuser_plugin.config_models if spec.fuser_plugin is not None else None
    named = hook(spec.fuser_config) if hook is not None and spec.fuser_config is not None else None
    if named is None:
        return spec
    if spec.sources or spec.target is not None:
        raise BenchError(f"the {spec.fuser} arguments name the models to fuse (mergekit_config), so sources and target "
                         "are not given besides", "drop --sources / --target (and sources: / target: in the YAML)")
    sources, target = named
    return resolve(RunConfig(**{**spec.model_dump(), "sources": sources, "target": target}))


def _check_per_model_entries(cfg: RunConfig) -> None:
    """A per-model dtype/device for a model the run does not load is a typo, not a no-op."""
    named = [*(cfg.sources or []), *([cfg.target] if cfg.target else [])]
    for spec in cfg.models:
        if named and spec not in named:
            raise BenchError(f"models: {spec!r} is neither a source nor the target of this run",
                             f"use one of {', '.join(named)} (as written in sources/target)")


def plugin_config(cls: type[Fuser] | type[Suite], args: dict[str, Any], what: str) -> BaseModel:
    try:
        return cls.Config(**args)
    except ValidationError as e:
        raise BenchError(f"invalid arguments for {what}: {_first_error(e)}",
                         f"valid fields: {', '.join(cls.Config.model_fields)}") from None


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ()))
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{loc}: {err.get('msg')}{more}" if loc else f"{err.get('msg')}{more}"


def build_eval_config(*, suites: list[str] | None, sets: list[str] | None, limit: int | None,
                      name: str | None, seed: int | None = None,
                      suite_flags: dict[str, Any] | None = None, placement: dict[str, Any] | None = None,
                      judge_price: tuple[float, float] | None = None) -> RunSpec:
    """Spec of a `bench eval` run: suites and their args (``--set SUITE.FIELD=value``), no fuser; ``judge_price``:
    ``--judge-price``."""
    from harness.registry import suites as suite_registry

    names = suites or list(DEFAULT_SUITES)
    for suite in names:
        suite_registry().check(suite)
    suite_args: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for item in sets or []:
        key, value = parse_set(item)
        head, _, rest = key.partition(".")
        if head in names and rest:
            suite_args.setdefault(head, {})[rest] = value
        elif key in ("seed", "limit", "batch_size", "dtype", "device", "backend", "base_url", "tokenizer", "processes",
                     "judge_price"):
            top[key] = value
        elif head == "vllm" and rest:
            top.setdefault("vllm", {})[rest] = value
        else:
            raise BenchError(f"--set {key}: unknown key for bench eval",
                             "use SUITE.FIELD=value, seed=, limit=, batch_size=, dtype=, device=, backend=, processes= "
                             "or vllm.KEY=")
    apply_suite_flags(names, suite_args, suite_flags)
    fields = {"suites": names, "suite_args": suite_args, "name": name, **top, **(placement or {}),
              **({"judge_price": judge_price} if judge_price is not None else {})}
    if limit is not None:
        fields["limit"] = limit
    if seed is not None:
        fields["seed"] = seed
    try:
        cfg = RunConfig(**fields)
    except ValidationError as e:
        raise BenchError(f"invalid eval config: {_first_error(e)}", "check the flags") from None
    return resolve(cfg)
