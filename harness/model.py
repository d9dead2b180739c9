"""Model references and loading.

A reference is one of
  * ``zoo:NAME``        a member of FuseBench's embedded tiny zoo (``bench zoo list``),
  * a local directory   an HF model folder (``config.json`` + weights + tokenizer),
  * an HF hub id        ``org/name`` (needs the hub, or a populated HF cache),
  * ``openai:NAME``     a model behind an OpenAI-compatible server (``--base-url``; evaluated only, see
                        :mod:`harness.backends`).

Loading is transformers on CPU (or CUDA when present); lm-eval's ``HFLM`` wraps the loaded model so
every suite sees the same ``LM`` interface.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import BenchError

if TYPE_CHECKING:
    from lm_eval.api.model import LM
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Files whose bytes determine a model's behaviour (weights, architecture, tokenizer, chat template).
_IDENTITY_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja")
_FULL_HASH_LIMIT = 64 << 20  # bigger files are fingerprinted by size + head + tail


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference. ``path`` is set for zoo members and local folders."""

    spec: str  # what the user wrote
    kind: str  # "zoo" | "local" | "hub" | "served"
    path: Path | None = None
    revision: str | None = None

    @property
    def name(self) -> str:
        """Short display name: ``zoo:llama-code``, the folder name, or the hub id."""
        if self.kind == "local" and self.path is not None:
            return self.path.name
        return self.spec

    @property
    def load_id(self) -> str:
        """What ``from_pretrained`` receives."""
        return str(self.path) if self.path is not None else self.spec

    def content_hash(self) -> str:
        """A hash of everything that determines the model's outputs (cached per path+mtime)."""
        if self.kind == "served":  # what answers behind the URL is named by the placement key (the server)
            return hashlib.sha256(f"served:{self.spec}".encode()).hexdigest()[:16]
        if self.path is None:
            return hashlib.sha256(f"hub:{self.spec}@{self.revision or 'main'}".encode()).hexdigest()[:16]
        return directory_hash(self.path)


def resolve(spec: str, *, build_missing_zoo: bool = False) -> ModelRef:
    """Turn what the user wrote into a :class:`ModelRef`, failing fast with a fix when it cannot load."""
    spec = spec.strip()
    if not spec:
        raise BenchError("empty model reference", "give zoo:NAME, a local model folder or an HF id")
    if spec.startswith("zoo:"):
        from harness import zoo

        folder = zoo.resolve(spec[4:], build_missing=build_missing_zoo)
        check_model_files(folder, spec)
        return ModelRef(spec=spec, kind="zoo", path=folder)
    if spec.startswith("openai:"):
        if not spec[len("openai:"):].strip():
            raise BenchError(f"{spec!r} names no served model", "write openai:NAME with the server's model id")
        return ModelRef(spec=spec, kind="served")
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BenchError(f"{spec} is not a model folder (no config.json)", "point at a save_pretrained directory")
        check_model_files(path, spec)
        return ModelRef(spec=spec, kind="local", path=path.resolve())
    name, _, revision = spec.partition("@")
    if _HUB_ID.match(name) and not spec.startswith((".", "/", "~")):
        _check_hub_available(name)
        return ModelRef(spec=name, kind="hub", revision=revision or None)
    raise BenchError(f"model {spec!r} not found", "give zoo:NAME (see `bench zoo list`), an existing folder or an HF id")


def check_model_files(folder: Path, spec: str) -> None:
    """Fail fast, in one line, on a damaged model folder: every JSON file (config, tokenizer) must parse and every
    safetensors file's header must be whole and cover the file (a truncated download or copy). Reads headers
    only, so it costs milliseconds even for large checkpoints."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(folder.glob("*.json")):
        try:
            json.loads(file.read_bytes().decode("utf-8-sig"))
        except UnicodeDecodeError as e:
            raise BenchError(f"model {spec}: {file.name} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})",
                             _damaged_fix(spec)) from None
        except json.JSONDecodeError as e:
            raise BenchError(f"model {spec}: {file.name} is not valid JSON (line {e.lineno}: {e.msg})",
                             _damaged_fix(spec)) from None
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), "np"):
                pass
        except (SafetensorError, OSError) as e:
            raise BenchError(f"model {spec}: {file.name} is damaged or truncated ({str(e).splitlines()[0]})",
                             _damaged_fix(spec)) from None


def _damaged_fix(spec: str) -> str:
    if spec.startswith("zoo:"):
        from harness import external

        name = spec[4:]
        return (f"add it again: bench zoo add {name} --force" if external.is_external(name)
                else f"rebuild it: bench zoo build --force --only {name}")
    return "save or download the model again"


def _check_hub_available(repo_id: str) -> None:
    """In offline mode a hub id only works when it is already in the local HF cache."""
    if os.environ.get("HF_HUB_OFFLINE") not in ("1", "true", "True"):
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        raise BenchError(
            f"model {repo_id!r} is not in the local HF cache and HF_HUB_OFFLINE is set",
            "download it first, unset HF_HUB_OFFLINE, or give a local folder / zoo:NAME",
        )


# --- hashing ------------------------------------------------------------------------------------

_hash_memo: dict[tuple[str, float, int], str] = {}


def directory_hash(path: Path) -> str:
    """Content hash of a model folder: names and bytes of its identity files."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(_IDENTITY_SUFFIXES))
    stamp = (str(path), max((p.stat().st_mtime for p in files), default=0.0), len(files))
    if stamp in _hash_memo:
        return _hash_memo[stamp]
    h = hashlib.sha256()
    for p in files:
        if p.name in ("fusebench.json", "zoo.json"):  # cards carry timings, not behaviour
            continue
        h.update(p.relative_to(path).as_posix().encode())
        size = p.stat().st_size
        h.update(str(size).encode())
        with p.open("rb") as f:
            if size <= _FULL_HASH_LIMIT:
                h.update(f.read())
            else:
                h.update(f.read(1 << 20))
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read())
    digest = h.hexdigest()[:16]
    _hash_memo[stamp] = digest
    return digest


# --- loading ------------------------------------------------------------------------------------


DTYPES = ("auto", "bfloat16", "float16", "float32")
BACKENDS = ("hf", "vllm", "openai")  # how evaluated models run (harness/backends.py)
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class Placement:
    """Where models are loaded and in what precision (``--dtype``, ``--device``), for evaluations and teacher
    passes. ``auto`` dtype: the checkpoint's own dtype on a GPU, float32 on the CPU (bf16 matmuls on CPU are
    slow and not what published CPU numbers use). Models a fuser *trains* are always loaded in float32 (mixed
    precision on GPUs comes from accelerate). ``per_model`` holds the run config's per-model choices (a model
    named by its reference or its folder), which :meth:`for_model` applies."""

    dtype: str = "auto"
    device: str = "auto"
    backend: str = "hf"  # hf | vllm | openai (harness/backends.py): how evaluated models run
    base_url: str | None = None  # openai: the server
    tokenizer: str | None = None  # openai: the served model's tokenizer, for log-likelihoods
    engine_args: tuple[tuple[str, Any], ...] = ()  # vllm: engine arguments
    per_model: tuple[tuple[str, Placement], ...] = ()

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise BenchError(f"unknown dtype {self.dtype!r}", f"use one of {', '.join(DTYPES)}")
        if not _DEVICE.fullmatch(self.device):
            raise BenchError(f"unknown device {self.device!r}", "use auto, cpu, cuda or cuda:N")
        if self.backend not in BACKENDS:
            raise BenchError(f"unknown backend {self.backend!r}", f"use one of {', '.join(BACKENDS)}")

    def for_model(self, ref: ModelRef) -> Placement:
        """The placement of ``ref``: its own entry in the run config, else the run's (a served model always
        runs on the ``openai`` backend)."""
        names = {ref.spec, str(ref.path)} if ref.path is not None else {ref.spec}
        chosen = next((p for name, p in self.per_model if name in names), None)
        if chosen is None:
            chosen = dataclasses.replace(self, per_model=()) if self.per_model else self
        if ref.kind == "served" and chosen.backend != "openai":
            chosen = dataclasses.replace(chosen, backend="openai")
        return chosen

    @property
    def device_name(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BenchError(f"--device {self.device} but no CUDA device is visible", "use --device cpu (or auto)")
        return self.device

    @property
    def kind(self) -> str:
        """``cpu`` or ``cuda``: what, besides the dtype, can change a number."""
        return "cuda" if self.device_name.startswith("cuda") else "cpu"

    def load_dtype(self) -> str:
        """What ``from_pretrained`` gets: a dtype name, or ``"auto"`` (the checkpoint's) on a GPU."""
        if self.dtype != "auto":
            return self.dtype
        return "auto" if self.kind == "cuda" else "float32"

    @property
    def key(self) -> str:
        """Part of evaluation and fusion keys: the dtype models are loaded in and where they run
        (``float32@cpu``; ``auto@cuda`` = the checkpoint's own dtype, which the model's hash covers), plus the
        per-model choices that differ from it."""
        if self.backend == "openai":
            own = f"openai@{self.base_url}"
        else:
            own = f"{self.load_dtype()}@{self.kind}" + ("" if self.backend == "hf" else f"/{self.backend}")
        others = sorted(f"{name}={chosen.key}" for name, chosen in self.per_model if chosen.key != own)
        return ";".join([own, *others])

    @property
    def weights_key(self) -> str:
        """:attr:`key` for what FuseBench loads itself with transformers whatever the backend (fusers' teachers and
        students, runtime fusers' members): dtype and device kind only."""
        own = f"{self.load_dtype()}@{self.kind}"
        others = sorted(f"{name}={chosen.weights_key}" for name, chosen in self.per_model if chosen.weights_key != own)
        return ";".join([own, *others])

    @property
    def backend_label(self) -> str:
        """What ``scores.backend`` records: ``hf-cpu``, ``vllm-cuda``, ``openai``."""
        return "openai" if self.backend == "openai" else f"{self.backend}-{self.kind}"


_DEFAULT_PLACEMENT = Placement()  # frozen: safe to share
_PLACEMENT: ContextVar[Placement] = ContextVar("fusebench_placement", default=_DEFAULT_PLACEMENT)


@contextlib.contextmanager
def placement(dtype: str = "auto", device: str = "auto", per_model: dict[str, dict[str, Any]] | None = None,
              **backend: Any) -> Iterator[Placement]:
    """Load models with ``dtype`` on ``device`` inside this block (the runner sets it from the run config);
    ``backend`` holds ``backend`` / ``base_url`` / ``tokenizer`` / ``engine_args``; ``per_model`` maps a model
    reference to its own values of any of these (None: the run's)."""
    if isinstance(backend.get("engine_args"), dict):
        backend["engine_args"] = tuple(sorted(backend["engine_args"].items()))
    run = Placement(dtype, device, **{k: v for k, v in backend.items() if v is not None})
    entries: list[tuple[str, Placement]] = []
    for spec, choice in (per_model or {}).items():
        chosen = dataclasses.replace(run, **{k: v for k, v in choice.items() if v is not None})
        entries += [(name, chosen) for name in _names_of(spec)]
    token = _PLACEMENT.set(chosen_run := dataclasses.replace(run, per_model=tuple(entries)))
    try:
        yield chosen_run
    finally:
        _PLACEMENT.reset(token)


def _names_of(spec: str) -> list[str]:
    """How a loaded model may refer to ``spec``: as written, and as the absolute folder it names."""
    spec = spec.strip()
    path = Path(spec).expanduser()
    return [spec, str(path.resolve())] if path.is_dir() else [spec]


def current_placement() -> Placement:
    return _PLACEMENT.get()


def load_hf(ref: ModelRef, dtype: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer with transformers, offline when the model is on disk, on the current
    placement's device and in ``dtype`` (default: the placement's; ``"float32"`` for a model to train)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per tiny model is noise, not progress
    if ref.kind == "served":
        raise BenchError(f"{ref.spec} is served behind an API: FuseBench cannot read its weights or logits",
                         "fuse a local folder, zoo:NAME or hub id; served models can only be evaluated")
    where = current_placement().for_model(ref)
    chosen = dtype or where.load_dtype()
    kwargs: dict[str, Any] = {}
    if ref.path is not None:
        kwargs["local_files_only"] = True
    if ref.revision:
        kwargs["revision"] = ref.revision
    from safetensors import SafetensorError

    try:
        tok = AutoTokenizer.from_pretrained(ref.load_id, **kwargs)
    except OSError as e:
        raise BenchError(f"cannot load model {ref.spec!r}: {_first_line(e)}", "check the reference and that it is downloaded") from e
    except Exception as e:  # a tokenizer file that parses but is not a tokenizer: KeyError, ValueError, tokenizers' own
        raise BenchError(f"cannot load the tokenizer of model {ref.spec!r}: {type(e).__name__}: {_first_line(e)}",
                         f"its tokenizer files are damaged; {_damaged_fix(ref.spec)}") from e
    try:
        model = AutoModelForCausalLM.from_pretrained(
            ref.load_id, dtype=chosen if chosen == "auto" else getattr(torch, chosen), **kwargs)
    except OSError as e:
        raise BenchError(f"cannot load model {ref.spec!r}: {_first_line(e)}", "check the reference and that it is downloaded") from e
    except (SafetensorError, ValueError, EOFError) as e:  # weights or config that cannot be read
        raise BenchError(f"cannot load the weights of model {ref.spec!r}: {_first_line(e)}",
                         f"its files are damaged; {_damaged_fix(ref.spec)}") from e
    model.eval()
    # transformers wraps Module.to in functools.wraps, whose typing mypy cannot bind to the instance
    return model.to(where.device_name), tok  # type: ignore[arg-type]


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


_BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}  # auto (GPU): checkpoints are mostly 16-bit
_OVERHEAD = 1.2  # activations, KV caches and the framework's own allocations, beyond the weights


def parameter_count(ref: ModelRef) -> int | None:
    """Parameters of a local checkpoint from its safetensors headers (no tensor is read); None when unknown."""
    if ref.path is None:
        return None
    files = sorted(ref.path.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(str(file), "np") as tensors:
            for name in tensors.keys():  # noqa: SIM118 - safe_open is not a mapping
                count = 1
                for dim in tensors.get_slice(name).get_shape():
                    count *= dim
                total += count
    return total


def parameter_count_on_disk(spec: str) -> int | None:
    """Parameters of the model ``spec`` names, from its folder on this machine (``zoo:NAME`` in the zoo directory, or
    a local folder) by :func:`parameter_count`, without resolving, building, downloading or loading anything: for
    reports that name a model a run used. None when unknown (a hub id, a folder not here, no safetensors)."""
    from safetensors import SafetensorError

    from harness import paths

    folder = paths.zoo_dir() / spec[4:] if spec.startswith("zoo:") else Path(spec).expanduser()
    if not folder.is_dir():
        return None
    try:
        return parameter_count(ModelRef(spec=spec, kind="local", path=folder))
    except (SafetensorError, OSError):  # a damaged checkpoint costs only the size in a note
        return None


def available_memory(where: Placement) -> int:
    """Bytes free on the placement's device: the GPU's free memory, or the host's MemAvailable."""
    if where.kind == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(torch.device(where.device_name))[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def check_members_fit(refs: list[ModelRef], what: str) -> None:
    """Refuse, in one line, to load a runtime fuser's members that cannot fit together on their devices (they
    are all held at once); members whose size is unknown (hub ids, .bin checkpoints) are not estimated."""
    counts = [parameter_count(r) for r in refs]
    if any(c is None for c in counts):
        return
    need: dict[str, int] = {}  # device -> bytes
    where_of: dict[str, Placement] = {}
    for ref, count in zip(refs, counts, strict=True):
        where = current_placement().for_model(ref)
        need[where.device_name] = need.get(where.device_name, 0) + int(
            count * _BYTES_PER_PARAM.get(where.load_dtype(), 4) * _OVERHEAD)  # type: ignore[operator]
        where_of[where.device_name] = where
    for name, needed in need.items():
        have = available_memory(where_of[name])
        if needed > have:
            held = sum(current_placement().for_model(r).device_name == name for r in refs)
            raise BenchError(f"{what}'s {held} members on {name} need about {needed / 2**30:.2f} GiB "
                             f"({where_of[name].load_dtype()}), {have / 2**30:.2f} GiB is free",
                             "use --dtype bfloat16, fewer or smaller members, or a device with more memory")


def model_dtype(model: Any) -> str:
    """``float32`` / ``bfloat16`` ...: the dtype of a loaded model's parameters."""
    try:
        return str(next(model.parameters()).dtype).removeprefix("torch.")
    except (AttributeError, StopIteration, TypeError):
        return "unknown"


def max_length(model: PreTrainedModel) -> int:
    """The context length, also for configs lm-eval does not read (MPT's ``max_seq_len``)."""
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "n_ctx", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def as_lm(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int | str = 8) -> LM:
    """Wrap an in-memory transformers model as an lm-eval ``LM``: lm-eval's ``HFLM`` with rolling log-likelihoods
    batched across documents (:class:`harness.hflm.FuseBenchHFLM`; same numbers, less padding)."""
    import logging

    from harness.hflm import FuseBenchHFLM
    from harness.logs import quiet

    with quiet(logging.ERROR):  # HFLM warns that an in-memory model "is not of type str"
        return FuseBenchHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                             max_length=max_length(model), device=str(model.device))


def load_lm(ref: ModelRef, batch_size: int | str = 8) -> LM:
    model, tok = load_hf(ref)
    return as_lm(model, tok, batch_size)


def read_card(path: Path, name: str) -> dict[str, Any]:
    f = path / name
    return json.loads(f.read_text()) if f.is_file() else {}
