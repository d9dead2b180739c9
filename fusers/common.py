"""Helpers the training fusers (FuseLLM, FuseChat, ProFuser) share to set a run up.

Which models take part (:func:`pivot_and_sources`), how a source's tokenizer, logit width and weights are
loaded (:func:`load_tokenizer`, :func:`config_width`, :func:`model_loader`), the width of a dense target over
a vocabulary (:func:`target_width`, quirk Q11), the learning rate a run defaults to (:func:`default_lr`) and a
source's vocabulary map into the target (:func:`source_vocab_map`) with the digest that keys its aligned store
(:func:`vocab_digest`). The alignment and distillation machinery itself lives in :mod:`fusers.align` and
:mod:`fusers.distill`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from fusers.align import compat_set, surface_vocab_map, vocab_map_for_tokenizers

if TYPE_CHECKING:
    from fusers.align import VocabMap
    from harness.model import ModelRef


def pivot_and_sources(sources: Sequence[Any], target: Any | None) -> tuple[Any, list[Any]]:
    """``(pivot, the other sources)`` of a training fuser: the target (else the first source), and every source
    whose weights differ from it and from each other (a copy of the pivot would only repeat its own
    distribution, which is candidate 0 already)."""
    pivot = target if target is not None else sources[0]
    seen = {pivot.content_hash()}
    others = []
    for ref in sources:
        if ref.content_hash() not in seen:
            seen.add(ref.content_hash())
            others.append(ref)
    return pivot, others


def default_lr(target: Any, *, paper: float, zoo: float) -> float:
    """The peak learning rate a training fuser uses when ``lr`` is not given: the paper's value for real
    checkpoints, ``zoo`` for the tiny zoo's own members (~1M parameters trained here from scratch, which learn
    nothing at a real model's rate; the paper's rate on them, or theirs on a real model, is wrong by 100x: the
    zoo's 5e-4 took SmolLM2-135M from 0.850 to 0.939 bits/byte in 4 steps)."""
    from harness import zoo as tiny_zoo

    spec = str(getattr(target, "spec", ""))
    return zoo if spec.startswith("zoo:") and spec[4:] in tiny_zoo.MEMBERS else paper


def load_tokenizer(ref: ModelRef) -> Any:
    """A model's tokenizer alone (no weights loaded): from its local folder, or the hub at its revision."""
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"local_files_only": True} if ref.path is not None else {}
    if ref.revision:
        kwargs["revision"] = ref.revision
    return AutoTokenizer.from_pretrained(ref.load_id, **kwargs)


def config_width(ref: ModelRef) -> int:
    """A source's logit width from its config (no weights loaded): ``vocab_size``."""
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {"local_files_only": True} if ref.path is not None else {}
    return int(AutoConfig.from_pretrained(ref.load_id, **kwargs).vocab_size)


def model_loader(ref: ModelRef):  # a model factory for ensure_teacher_store
    """A function that loads ``ref``'s weights when called: a teacher store calls it only when it has
    shards to compute."""

    def load() -> Any:
        from harness.model import load_hf

        model, _ = load_hf(ref)
        return model

    return load


def target_width(model_width: int, tokenizer_width: int, *,
                 reference_compat: str | Iterable[str] | None = None, n_rows: int = 1) -> int:
    """The width of a dense target over the base vocabulary (Q11).

    Default: the model's logit width (``logits.shape[-1]`` / ``config.vocab_size``), which may exceed the
    tokenizer's size (Qwen1.5: 151936 vs 151646). ``"q11"``: the reference's ``len(tokenizer.get_vocab())``,
    failing with the reshape error of FuseAI issue #13 when the two differ.
    """
    if "q11" not in compat_set(reference_compat):
        return int(model_width)
    if tokenizer_width != model_width:
        raise RuntimeError(f"shape '[-1, {model_width}]' is invalid for input of size {n_rows * tokenizer_width}")
    return int(tokenizer_width)


def source_vocab_map(source_tokenizer: Any, target_tokenizer: Any, source_width: int, target_width: int,
                     compat: frozenset[str], by_surface: bool = True) -> VocabMap:
    """Map a source's ids to the target's: the reference MinED map (Q12: also its string-keyed dictionary),
    then, unless ``by_surface`` is off (``reference_compat="all"``), exact byte twins first
    (:func:`fusers.align.surface_vocab_map`: newline to newline, EOS to EOS)."""
    vmap = vocab_map_for_tokenizers(source_tokenizer, target_tokenizer, source_width=source_width,
                                    base_width=target_width, reference_compat=compat & {"q12"})
    return surface_vocab_map(vmap, source_tokenizer, target_tokenizer, target_width) if by_surface else vmap


def vocab_digest(vocab: VocabMap | None) -> str | None:
    """A short content hash of a vocabulary map's ids, part of an aligned store's key (None: no map)."""
    return None if vocab is None else hashlib.sha256(vocab.ids.tobytes()).hexdigest()[:16]
