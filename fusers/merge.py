"""Weight merging: one model whose parameters combine the sources', through mergekit.

The baseline is the uniform "model soup" (Wortsman et al., https://arxiv.org/abs/2203.05482):
``θ = Σ_k w_k θ_k`` with ``w_k = 1/K``, FuseLLM's "Weight Merging" row (arXiv 2401.10491, Table 7).
Every merge method registered in mergekit (Goddard et al., https://arxiv.org/abs/2403.13257) can be
chosen with ``method``: task_arithmetic, ties, dare_ties/dare_linear, breadcrumbs, della, sce
(FuseChat v2's merge), slerp (exactly two models), model_stock … Methods that work on task vectors
(``θ_k − θ_base``) get the target as their base model unless ``use_base=false``.

Weight merging needs the same architecture, parameter shapes and vocabulary everywhere. That is
checked from ``config.json``, the safetensors headers and ``tokenizer.json`` before mergekit runs, so
a mismatch is a one-line error rather than a stack trace. The result is an HF model folder
(weights, config, the base/first model's tokenizer) written to the run's output directory.

What a seed changes (``--seed``, ``--seeds``): only the random merge methods, DARE's drop masks
(``dare_ties``, ``dare_linear``: mergekit's ``random_seed``); every other method is deterministic.

**A mergekit config of your own** (``mergekit_config``: a mergekit YAML file, or its mapping in a run YAML) is run
exactly as written: slices, per-layer weight gradients, per-tensor filters, ``tokenizer_source`` / ``tokenizer``,
any method mergekit has. The models it names are the run's sources (its ``base_model`` the target), evaluated beside
the result; a reference may be ``zoo:NAME``, a folder or an HF id (``@revision`` allowed), resolved as everywhere in
FuseBench and handed to mergekit as an absolute folder. The file's bytes and the models' bytes are part of the fused
artifact's cache key. `bench run --config merge.yml` with a file whose top level is a mergekit config does the same.
The other merge settings (``method``, ``weights`` ...) do not combine with it: they belong in the config.

Run::

    bench run --fuser merge --sources zoo:llama-code,zoo:llama-docs --target zoo:llama-base --set method=ties --set density=0.5
    bench run --fuser merge --set mergekit_config=merge.yml
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.api import FuseContext, Fuser, FusionResult
from harness.errors import BenchError, did_you_mean, read_text

if TYPE_CHECKING:
    from harness.model import ModelRef

# Known to mergekit 0.1.5; other names are looked up in mergekit's registry (that imports torch).
_COMMON_METHODS = frozenset({"linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp", "sce",
                             "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "model_stock"})
_DTYPES = ("float32", "float16", "bfloat16", "float64")
_INCOMPATIBLE_FIX = "weight merging needs same-architecture models with one vocabulary; use --fuser ensemble or fusellm"
# Config field -> mergekit parameter name (``weight`` is handled separately: it has a default).
_PARAMETERS = {"density": "density", "select_topk": "select_topk", "t": "t", "normalize": "normalize",
               "lambda_": "lambda", "variant": "variant", "equal_weights": "equal_weights"}


class Merge(Fuser):
    """Weight merging of same-architecture models with any mergekit method (default: uniform average)."""

    name: ClassVar[str] = "merge"
    paper: ClassVar[str] = "https://arxiv.org/abs/2203.05482"
    runtime_only: ClassVar[bool] = False
    default_sources: ClassVar[list[str]] = ["zoo:llama-code", "zoo:llama-docs", "zoo:llama-math"]
    default_target: ClassVar[str] = "zoo:llama-base"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid", populate_by_name=True)

        method: str = Field("linear", description="A mergekit merge method: linear, ties, dare_ties, slerp, sce, ...")
        weights: list[float] | None = Field(None, description="Weight per source (default 1/K).")
        density: float | None = Field(None, description="Fraction of each task vector kept (ties, dare, della, ...).")
        select_topk: float | None = Field(None, description="sce: fraction of high-variance elements kept.")
        t: float | None = Field(None, description="slerp: interpolation factor (exactly two models).")
        normalize: bool | None = Field(None, description="Divide by the sum of weights (method default if unset).")
        lambda_: float | None = Field(None, alias="lambda", description="Scale of the merged task vector.")
        dtype: str = Field("float32", description="Dtype the merge is computed and saved in.")
        use_base: bool | None = Field(None, description="None: methods that need a base use the target.")
        variant: str | None = Field(None, description="fusechat_sce: paper | fuseai_fork | mergekit.")
        equal_weights: bool | None = Field(None, description="varm: the released code's equal weights (quirk Q7).")
        mergekit_config: str | dict[str, Any] | None = Field(
            None, description="A mergekit YAML file (or its mapping), run exactly as written; the models it names are "
                              "the run's sources, its base_model the target.")

        @model_validator(mode="after")
        def _mergekit_config_alone(self) -> Merge.Config:
            """A mergekit config says everything about the merge: a setting beside it would be ignored, so it is an
            error; and the config is checked now, before any model is touched."""
            if self.mergekit_config is None:
                return self
            beside = sorted(self.model_fields_set - {"mergekit_config"})
            if beside:
                raise BenchError(f"mergekit_config is given together with {', '.join(beside)}",
                                 "write those settings into the mergekit config (merge_method, parameters, dtype), "
                                 "or drop mergekit_config")
            read_mergekit_config(self.mergekit_config)
            return self

        @field_validator("method")
        @classmethod
        def _known_method(cls, method: str) -> str:
            if method not in _COMMON_METHODS:
                names = merge_method_names()
                if method not in names:
                    raise BenchError(f"unknown merge method {method!r}{did_you_mean(method, names)}",
                                     f"choose one of {', '.join(names)}")
            return method

        @field_validator("dtype")
        @classmethod
        def _known_dtype(cls, dtype: str) -> str:
            if dtype not in _DTYPES:
                raise BenchError(f"unsupported merge dtype {dtype!r}{did_you_mean(dtype, list(_DTYPES))}",
                                 f"choose one of {', '.join(_DTYPES)}")
            return dtype

    @classmethod
    def config_models(cls, cfg: BaseModel) -> tuple[list[str], str] | None:
        """With a ``mergekit_config``: the models it names, as the run's sources, and its ``base_model`` as the
        target (``""``: none). A config that names only its base model merges that one with itself: it is the
        source then."""
        if not isinstance(cfg, Merge.Config) or cfg.mergekit_config is None:
            return None
        config = read_mergekit_config(cfg.mergekit_config)
        sources = [ref for ref in config.references if ref != config.base]
        return (sources, config.base or "") if sources else ([config.base or ""], "")

    def fuse(self, sources: list[ModelRef], target: ModelRef | None, cfg: BaseModel, ctx: FuseContext) -> FusionResult:
        if cfg.mergekit_config is not None:
            return _fuse_mergekit_config(read_mergekit_config(cfg.mergekit_config), ctx)
        spec = _method_spec(cfg.method)
        models, base = choose_inputs(spec, sources, target, cfg.use_base)
        involved = list(dict.fromkeys([*models, *([base] if base else [])]))
        dirs = {ref.spec: _local_dir(ref) for ref in involved}
        check_compatible([(ref.name, dirs[ref.spec]) for ref in involved])  # before mergekit touches weights

        config = mergekit_config(spec, cfg, [dirs[m.spec] for m in models], dirs[base.spec] if base else None)
        out_dir = Path(ctx.out_dir).resolve()
        _run_mergekit(config, out_dir, seed=ctx.seed, neox=_read_config(dirs[involved[0].spec]).get("model_type") == "gpt_neox")
        return FusionResult(path=out_dir, details={
            "mergekit_config": config,
            "method": cfg.method,
            "weights": _weights_of(config),
            "models": [m.spec for m in models],
            "base": base.spec if base else None,
        })


# --- a mergekit config of the user's ---------------------------------------------------------------

#: Keys under which a mergekit config names a model (``tokenizer_source`` also takes ``union`` / ``base``; ``source``
#: is the tokenizer's source and a token embedding's source).
_MODEL_KEYS = frozenset({"model", "base_model", "tokenizer_source", "source"})
_CONFIG_FIX = "see mergekit's README for the config format (merge_method, models or slices, base_model, parameters)"


@dataclass(frozen=True)
class MergekitConfig:
    """A user's mergekit config: as written (``raw``, and ``text``: the file's YAML, or the mapping dumped as YAML),
    where it came from (``file``, None for a mapping), and the models it names (``references``, in the order they
    appear, ``base``: its ``base_model``), as mergekit reads them (``path`` or ``path@revision``)."""

    raw: dict[str, Any]
    text: str
    file: Path | None
    references: list[str]
    base: str | None

    @property
    def label(self) -> str:
        return f"mergekit config {self.file}" if self.file else "mergekit_config"


def read_mergekit_config(value: str | dict[str, Any]) -> MergekitConfig:
    """Read and check a mergekit config (a YAML file's path, or the mapping): a BenchError naming the first problem
    (not YAML, no merge_method, an unknown method, what mergekit's own validation rejects, a LoRA reference)."""
    from mergekit.config import MergeConfiguration

    file = None
    if isinstance(value, str):
        file = Path(value).expanduser()
        if not file.is_file():
            raise BenchError(f"mergekit config {value} not found", "give an existing YAML file, e.g. "
                             "--set mergekit_config=merge.yml")
        text = read_text(file, "mergekit config")
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark else ""
            raise BenchError(f"mergekit config {value} is not valid YAML{at}: {getattr(e, 'problem', e)}",
                             "fix the YAML syntax") from None
    else:
        raw = value
        text = yaml.safe_dump(raw, sort_keys=False)
    label = f"mergekit config {file}" if file else "mergekit_config"
    if not isinstance(raw, dict):
        raise BenchError(f"{label} must be a mapping, got {type(raw).__name__}", _CONFIG_FIX)
    if not isinstance(raw.get("merge_method"), str):
        raise BenchError(f"{label} has no merge_method", "add one, e.g. merge_method: linear")
    _method_spec(raw["merge_method"])
    try:
        parsed = MergeConfiguration.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ()))
        raise BenchError(f"{label}: {where + ': ' if where else ''}{err.get('msg')}", _CONFIG_FIX) from None
    except (RuntimeError, ValueError) as e:  # mergekit's own validators raise RuntimeError
        raise BenchError(f"{label}: {' '.join(str(e).split())}", _CONFIG_FIX) from None
    references = list(dict.fromkeys(_referenced(parsed)))
    if not references:
        raise BenchError(f"{label} names no model", _CONFIG_FIX)
    return MergekitConfig(raw, text, file, references,
                          str(parsed.base_model.model) if parsed.base_model is not None else None)


def _referenced(node: Any) -> Iterator[str]:
    """Every model a parsed mergekit config names (merged, base, tokenizer and token-embedding sources), in field
    order, as ``path`` or ``path@revision``; a LoRA reference is refused (its adapter's bytes would not be part of the
    artifact's cache key)."""
    from mergekit.common import ModelReference

    if isinstance(node, ModelReference):
        if node.lora is not None:
            raise BenchError(f"mergekit config reference {node} applies a LoRA adapter, which FuseBench does not "
                             "resolve", "merge the adapter into its model first and name that folder")
        yield str(node.model)
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _referenced(getattr(node, name))
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from _referenced(item)
    elif isinstance(node, dict):
        for item in node.values():
            yield from _referenced(item)


def _with_folders(node: Any, folders: dict[str, str], key: str | None = None) -> Any:
    """``node`` (the config as written) with every model reference replaced by its absolute folder (``folders``:
    reference -> folder)."""
    from mergekit.common import ModelReference

    if isinstance(node, dict):
        return {k: _with_folders(v, folders, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_folders(v, folders, key) for v in node]
    if isinstance(node, str) and key in _MODEL_KEYS and node not in ("union", "base"):
        try:
            return folders.get(str(ModelReference.model_validate(node).model), node)
        except (ValidationError, RuntimeError, ValueError):
            return node
    return node


def _fuse_mergekit_config(config: MergekitConfig, ctx: FuseContext) -> FusionResult:
    """Run the user's mergekit config with its models as absolute folders; mergekit's own errors as one line."""
    from mergekit.config import MergeConfiguration

    from harness.model import resolve

    folders = {ref: str(_local_dir(resolve(ref))) for ref in config.references}
    runnable = _with_folders(config.raw, folders)
    left = [ref for ref in _referenced(MergeConfiguration.model_validate(runnable)) if ref not in folders.values()]
    if left:
        raise BenchError(f"{config.label} names {left[0]} in a form FuseBench cannot resolve",
                         "write each model reference as a string (model: NAME), as mergekit's examples do")
    out_dir = Path(ctx.out_dir).resolve()
    neox = any(_read_config(Path(folder)).get("model_type") == "gpt_neox" for folder in folders.values())
    try:
        _run_mergekit(runnable, out_dir, seed=ctx.seed, neox=neox)
    except (RuntimeError, ValueError, KeyError, AssertionError, OSError) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise BenchError(f"mergekit could not run {config.label}: {first.strip()}", _CONFIG_FIX) from e
    base = config.base
    return FusionResult(path=out_dir, details={
        "mergekit_config": runnable,
        "mergekit_config_text": config.text,
        "mergekit_config_file": str(config.file.resolve()) if config.file else None,
        "method": config.raw["merge_method"],
        "models": [ref for ref in config.references if ref != base],
        "base": base,
    })


# --- which models go in, and in which role ------------------------------------------------------


def choose_inputs(spec: Any, sources: list[ModelRef], target: ModelRef | None,
                  use_base: bool | None) -> tuple[list[ModelRef], ModelRef | None]:
    """(models to merge, base model or None) from the method's input contract.

    Pairwise methods (slerp, nearswap: two inputs, one of them the base) interpolate from the first
    source to the second, or from the target to a single source when ``use_base`` is set.
    """
    from mergekit.merge_methods.base import BasePolicy

    policy, method = spec.contract.base, spec.name
    if not sources:
        raise BenchError(f"merge method {method} needs source models", "pass --sources A,B")
    if policy == BasePolicy.REQUIRED and spec.contract.max_inputs == 2:
        if use_base or len(sources) == 1:
            if target is None or len(sources) != 1:
                raise BenchError(f"{method} merges exactly two models", "give two sources, or one source and --target")
            return [target, sources[0]], target
        if len(sources) != 2:
            raise BenchError(f"{method} merges exactly two models, got {len(sources)} sources", "give exactly two sources")
        return list(sources), sources[0]
    if policy == BasePolicy.REQUIRED:
        if use_base is False:
            raise BenchError(f"merge method {method} needs a base model", "drop use_base=false")
        if target is None:
            raise BenchError(f"merge method {method} needs a base model", "pass --target BASE")
        return list(sources), target
    if policy == BasePolicy.OPTIONAL:
        if use_base and target is None:
            raise BenchError("use_base is set but there is no target", "pass --target BASE")
        return list(sources), target if use_base else None
    if use_base:
        raise BenchError(f"merge method {method} does not use a base model", "drop use_base or pick e.g. task_arithmetic")
    return list(sources), None


def mergekit_config(spec: Any, cfg: Merge.Config, model_dirs: list[Path], base_dir: Path | None) -> dict[str, Any]:
    """The mergekit YAML as a dict: per-model parameters, shared parameters, absolute paths."""
    from mergekit.merge_methods.base import ParameterScope

    params = {p.name: p for p in spec.parameters}
    per_model: dict[str, Any] = {}
    shared: dict[str, Any] = {}
    for field, name in _PARAMETERS.items():
        value = getattr(cfg, field)
        if value is None:
            continue
        if name not in params:
            raise BenchError(f"merge method {spec.name} has no parameter {name!r}",
                             f"its parameters: {', '.join(params) or 'none'}")
        (shared if params[name].scope == ParameterScope.SHARED else per_model)[name] = value

    merged = [d for d in model_dirs if d != base_dir] if "weight" in params else model_dirs
    weights: list[float] | None = None
    if "weight" in params:
        weights = cfg.weights or [1.0 / len(merged)] * len(merged)
        if len(weights) != len(merged):
            raise BenchError(f"{len(weights)} merge weights for {len(merged)} models", f"give {len(merged)} weights")
    elif cfg.weights is not None:
        raise BenchError(f"merge method {spec.name} takes no weights", "drop weights (slerp uses t)")
    missing = [p.name for p in spec.parameters if p.required and p.name != "weight"
               and p.name not in shared and p.name not in per_model]
    if missing:
        raise BenchError(f"merge method {spec.name} needs {', '.join(missing)}", f"e.g. --set {missing[0]}=0.5")

    models = []
    for d in model_dirs:
        p = dict(per_model)
        if weights is not None and d in merged:
            p["weight"] = weights[merged.index(d)]
        models.append({"model": str(d), "parameters": p})
    config: dict[str, Any] = {"merge_method": spec.name, "dtype": cfg.dtype, "models": models}
    if base_dir is not None:
        config["base_model"] = str(base_dir)
    if shared:
        config["parameters"] = shared
    return config


def _weights_of(config: dict[str, Any]) -> list[float | None] | None:
    weights = [m["parameters"].get("weight") for m in config["models"]]
    return weights if any(w is not None for w in weights) else None


# --- compatibility, read from the files ---------------------------------------------------------


def check_compatible(models: list[tuple[str, Path]]) -> None:
    """BenchError unless all models share architecture, vocabulary, parameter names and shapes."""
    first_name, first_dir = models[0]
    first = _signature(first_dir)
    for name, path in models[1:]:
        other = _signature(path)
        reason = _difference(first, other)
        if reason:
            raise BenchError(f"cannot merge {first_name} and {name}: {reason}", _INCOMPATIBLE_FIX)


def _signature(path: Path) -> dict[str, Any]:
    config = _read_config(path)
    return {"model_type": config.get("model_type"), "architectures": config.get("architectures"),
            "vocab_size": config.get("vocab_size") or config.get("text_config", {}).get("vocab_size"),
            "tokens": _token_ids(path), "shapes": weight_shapes(path)}


def _difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    if (a["model_type"], a["architectures"]) != (b["model_type"], b["architectures"]):
        return f"different architectures ({a['model_type']} vs {b['model_type']})"
    if a["vocab_size"] != b["vocab_size"]:
        return f"different vocabulary sizes ({a['vocab_size']} vs {b['vocab_size']})"
    if a["tokens"] is not None and b["tokens"] is not None and a["tokens"] != b["tokens"]:
        return "different tokenizers (the same ids stand for different tokens)"
    only_a, only_b = sorted(set(a["shapes"]) - set(b["shapes"])), sorted(set(b["shapes"]) - set(a["shapes"]))
    if only_a or only_b:
        return f"different parameter names (only in one: {', '.join((only_a + only_b)[:3])})"
    for key, shape in a["shapes"].items():
        if b["shapes"][key] != shape:
            return f"different shapes for {key} ({list(shape)} vs {list(b['shapes'][key])})"
    return None


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape from safetensors headers (or a lazily mapped .bin); no weights loaded."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for f in files for k, v in _safetensors_shapes(path / f).items()}
    single = path / "model.safetensors"
    if single.is_file():
        return _safetensors_shapes(single)
    bins = sorted(path.glob("pytorch_model*.bin"))
    if bins:
        import torch

        shapes: dict[str, tuple[int, ...]] = {}
        for f in bins:
            state = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
            shapes.update({k: tuple(v.shape) for k, v in state.items()})
        return shapes
    raise BenchError(f"no weights found in {path}", "point at a folder with model.safetensors")


def _safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    # Format: 8-byte little-endian header length, then a JSON header {name: {dtype, shape, offsets}}.
    with file.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def _token_ids(path: Path) -> Any:
    """The tokenizer's token list (None without a tokenizer.json): same size is not same vocabulary."""
    file = path / "tokenizer.json"
    if not file.is_file():
        return None
    vocab = json.loads(file.read_text()).get("model", {}).get("vocab")
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        return [piece[0] for piece in vocab]
    return vocab


def _read_config(path: Path) -> dict[str, Any]:
    return json.loads((path / "config.json").read_text())


def _local_dir(ref: ModelRef) -> Path:
    """An absolute model folder (mergekit probes relative `a/b` paths on the hub)."""
    if ref.path is not None:
        return Path(ref.path).resolve()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref.spec, revision=ref.revision)).resolve()
    except Exception as e:  # offline, missing, gated ...
        raise BenchError(f"cannot fetch {ref.spec} for merging: {str(e).splitlines()[0]}",
                         "download it first or pass a local folder") from e


# --- mergekit -----------------------------------------------------------------------------------


def merge_method_names() -> list[str]:
    from mergekit.merge_methods import registered_methods

    import fusers._merge_methods  # noqa: F401  (registers FuseChat's varm and fusechat_sce with mergekit)

    return sorted(m.spec.name for m in registered_methods())


def _method_spec(method: str) -> Any:
    from mergekit.merge_methods import get

    import fusers._merge_methods  # noqa: F401  (registers FuseChat's varm and fusechat_sce with mergekit)

    try:
        return get(method).spec
    except RuntimeError:
        names = merge_method_names()
        raise BenchError(f"unknown merge method {method!r}{did_you_mean(method, names)}",
                         f"choose one of {', '.join(names)}") from None


def _run_mergekit(config: dict[str, Any], out_dir: Path, *, seed: int, neox: bool) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    merge_config = MergeConfiguration.model_validate(config)
    options = MergeOptions(copy_tokenizer=True, write_model_card=False, random_seed=seed, quiet=True,
                           lazy_unpickle=False)
    with _without_json_architecture("GPTNeoXForCausalLM" if neox else None):
        run_merge(merge_config, out_path=str(out_dir), options=options)


@contextlib.contextmanager
def _without_json_architecture(name: str | None) -> Iterator[None]:
    """Let mergekit infer a layout from the weight names instead of its JSON definition.

    mergekit's gpt-neox definition requires ``attention.bias``/``masked_bias``/``rotary_emb.inv_freq``
    buffers that transformers 5 no longer saves ("Tensor ... required but not present").
    """
    if name is None:
        yield
        return
    from mergekit.architecture.json_definitions import NAME_TO_ARCH

    removed = NAME_TO_ARCH.pop(name, None)
    try:
        yield
    finally:
        if removed is not None:
            NAME_TO_ARCH[name] = removed
