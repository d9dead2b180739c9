"""Building the zoo: training its tokenizers and members, and writing each member's folder and card.

:func:`build` decides, from the cards alone, which members are missing or stale, and trains just those (with their
parents) under a lock on the zoo directory. A :class:`_Builder` trains the members of one preset: it trains each
tokenizer once (cached under ``.tokenizers/``), packs the domain text and skill documents into token streams, runs
:func:`harness.train.train`, measures held-out bits/byte and swaps the finished folder in whole.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import corpus, paths, skills
from harness.atomic import atomic_dir
from harness.errors import BenchError
from harness.zoo.directory import CARD, PRESET_FILE, active_preset, member_state, read_card
from harness.zoo.presets import Preset, Recipe, check_member, get_preset, recipe_hash, tokenizer_hash

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_TOKENIZER_DIR = ".tokenizers"


def build(
    names: list[str] | None = None,
    force: bool = False,
    preset: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Build the members ``names`` (default: all) that are missing or stale, with their tokenizers and
    parents, and return one card per member involved with ``status`` ``"built"`` or ``"cached"``.

    ``force`` rebuilds the named members even when current. ``preset`` defaults to the zoo's
    (:func:`active_preset`); building with another preset switches the zoo to it. Builds of the same zoo
    directory are serialised with a lock file.
    """
    from harness import external

    spec = get_preset(preset or active_preset())
    wanted = list(names) if names else [r.name for r in spec.members]
    for name in wanted:
        if external.is_external(name):
            raise BenchError(f"{name!r} is a real checkpoint, not one the zoo trains",
                             f"add it with `bench zoo add {name}`")
        check_member(name)
    zoo = paths.zoo_dir()
    zoo.mkdir(parents=True, exist_ok=True)
    results = []
    with _locked(zoo):
        if active_preset() != spec.name or not (zoo / PRESET_FILE).is_file():
            (zoo / PRESET_FILE).write_text(spec.name + "\n")
        members = _with_parents(wanted, spec)

        def current(recipe: Recipe) -> bool:
            return member_state(spec, recipe.name) == "built" and not (force and recipe.name in wanted)

        if all(current(r) for r in members):  # the common case: answer from the cards alone
            return [
                read_card(zoo / r.name) | {"status": "cached", "path": str(zoo / r.name)} for r in members
            ]
        corpus.train_documents("code")  # fetch, extract and verify the corpus first: fail before any work
        builder = _Builder(spec, zoo, progress)
        with _quiet_transformers():
            for recipe in members:
                path = zoo / recipe.name
                if current(recipe):  # checked again: rebuilding a parent makes its continuations stale
                    results.append(read_card(path) | {"status": "cached", "path": str(path)})
                else:
                    card = builder.build_member(recipe, recipe_hash(recipe.name, spec.name))
                    results.append(card | {"status": "built", "path": str(path)})
    return results


def _with_parents(names: list[str], spec: Preset) -> list[Recipe]:
    """``names`` plus their ancestors, in recipe order (which lists parents first)."""
    needed: set[str] = set()
    for name in names:
        recipe: Recipe | None = spec.recipe(name)
        while recipe is not None and recipe.name not in needed:
            needed.add(recipe.name)
            recipe = spec.recipe(recipe.parent) if recipe.parent else None
    return [r for r in spec.members if r.name in needed]


class _Builder:
    """Builds members of one preset, sharing tokenizers and tokenised text between them."""

    def __init__(self, spec: Preset, zoo: Path, progress: bool):
        self.spec = spec
        self.zoo = zoo
        self.progress = progress
        self._tokenizers: dict[str, PreTrainedTokenizerBase] = {}
        self._encoded: dict[tuple[str, str], list[list[int]]] = {}  # (tokenizer, domain) -> docs, in order

    def build_member(self, recipe: Recipe, expected_hash: str) -> dict[str, Any]:
        import torch
        from transformers import AutoModelForCausalLM

        from harness import train as training

        started = time.perf_counter()
        self._say(
            f"building [bold]{recipe.name}[/] ({recipe.architecture}, {recipe.tokenizer}, {recipe.domain})"
        )
        tokenizer = self.tokenizer(recipe.tokenizer)
        torch.manual_seed(recipe.train.seed)
        if recipe.parent:
            model = AutoModelForCausalLM.from_pretrained(self.zoo / recipe.parent, dtype=torch.float32)
        else:
            model = AutoModelForCausalLM.from_config(_model_config(recipe, tokenizer), dtype=torch.float32)
        skill_tokens = round(recipe.train.tokens * recipe.skill_share) if recipe.skills else 0
        stream = self.token_stream(recipe.tokenizer, recipe.domain, recipe.train.tokens - skill_tokens)
        if skill_tokens:
            import numpy as np

            skill_stream = self.skill_stream(recipe.tokenizer, recipe.skills, skill_tokens, recipe.train.seed)
            stream = np.concatenate([stream, skill_stream])
        batches = training.token_batches(
            stream, recipe.train.batch_size, recipe.train.seq_len, recipe.train.seed
        )
        stats = training.train(model, batches, recipe.train, progress=recipe.name if self.progress else None)
        val = {
            domain: round(
                training.bits_per_byte(
                    model,
                    tokenizer,
                    corpus.heldout_documents(domain, self.spec.val_docs),
                    self.spec.val_max_length,
                ),
                4,
            )
            for domain in corpus.DOMAINS
        }
        card = self._card(recipe, expected_hash, model, tokenizer, stats, val)
        card["build_seconds"] = round(time.perf_counter() - started, 2)
        self._save(recipe.name, model, tokenizer, card)
        self._say(
            f"  {recipe.name}: loss {stats.first_loss:.2f} -> {stats.final_loss:.2f}, "
            f"{stats.tokens_per_second:,.0f} tok/s, val bits/byte "
            + " ".join(f"{d} {v:.3f}" for d, v in val.items())
            + f" ({card['build_seconds']:.1f} s)"
        )
        return card

    # tokenizers are trained once per recipe and kept under zoo/.tokenizers/NAME-HASH
    def tokenizer(self, name: str) -> PreTrainedTokenizerBase:
        if name not in self._tokenizers:
            from transformers import AutoTokenizer

            from harness.tokenizer_recipes import train_tokenizer

            recipe = self.spec.tokenizers[name]
            folder = self.zoo / _TOKENIZER_DIR / f"{name}-{tokenizer_hash(recipe)[:12]}"
            if not (folder / "tokenizer.json").is_file():
                self._say(
                    f"training tokenizer [bold]{name}[/] ({recipe.description}, vocab {recipe.vocab_size})"
                )
                hf = train_tokenizer(recipe, corpus.train_slice(corpus.MIX, recipe.train_chars))
                with atomic_dir(folder) as tmp:
                    hf.save_pretrained(tmp)
            self._tokenizers[name] = AutoTokenizer.from_pretrained(folder)
        return self._tokenizers[name]

    def token_stream(self, tokenizer: str, domain: str, n_tokens: int) -> np.ndarray:
        """At least ``n_tokens`` tokens (corpus permitting) of ``domain``: training documents, in corpus
        order, each preceded by EOS. ``"mix"`` is an equal share of each domain, concatenated; the random
        windows of :func:`harness.train.token_batches` then sample all three evenly.

        Only as much text is tokenised as is needed, and the result depends on nothing but
        (tokenizer, domain, n_tokens), whichever members were built before in this process.
        """
        import numpy as np

        if domain == corpus.MIX:
            share = -(-n_tokens // len(corpus.DOMAINS))
            return np.concatenate([self.token_stream(tokenizer, d, share) for d in corpus.DOMAINS])
        tok = self.tokenizer(tokenizer)
        encoded = self._encoded.setdefault((tokenizer, domain), [])
        documents = corpus.train_documents(domain)
        chosen, total = 0, 0
        while total < n_tokens and chosen < len(documents):
            if chosen == len(encoded):
                batch = documents[chosen : chosen + 64]
                encoded.extend(tok(batch, add_special_tokens=False)["input_ids"])
            total += len(encoded[chosen]) + 1
            chosen += 1
        stream = np.empty(total, dtype=np.int64)
        at = 0
        for ids in encoded[:chosen]:
            stream[at] = tok.eos_token_id
            stream[at + 1 : at + 1 + len(ids)] = ids
            at += 1 + len(ids)
        return stream

    def skill_stream(self, tokenizer: str, skill_set: tuple[str, ...], n_tokens: int, seed: int) -> np.ndarray:
        """At least ``n_tokens`` tokens of documents teaching ``skill_set`` (:func:`harness.skills.training_documents`,
        train side of the split only), each preceded by EOS; a document's pieces are tokenised one by one."""
        import numpy as np

        tok = self.tokenizer(tokenizer)
        documents = skills.training_documents(skill_set, seed)
        encoded: list[np.ndarray] = []
        total = 0
        while total < n_tokens:
            batch = [next(documents) for _ in range(64)]
            ids = iter(tok([piece for doc in batch for piece in doc], add_special_tokens=False)["input_ids"])
            for doc in batch:
                tokens = [tok.eos_token_id, *(t for _ in doc for t in next(ids))]
                encoded.append(np.asarray(tokens, dtype=np.int64))
                total += len(tokens)
        return np.concatenate(encoded)

    def _card(self, recipe, expected_hash, model, tokenizer, stats, val) -> dict[str, Any]:
        import tokenizers
        import torch
        import transformers

        tok_recipe = self.spec.tokenizers[recipe.tokenizer]
        return {
            "name": recipe.name,
            "description": recipe.description,
            "architecture": recipe.architecture,
            "model_type": model.config.model_type,
            "tokenizer": recipe.tokenizer,
            "tokenizer_type": tok_recipe.description,
            "vocab_size": len(tokenizer),
            "params": sum(p.numel() for p in model.parameters()),
            "domain": recipe.domain,
            "skills": list(recipe.skills),
            "family": recipe.family,
            "parent": recipe.parent,
            "preset": self.spec.name,
            "seed": recipe.train.seed,
            "recipe": recipe.to_dict(),
            "tokenizer_recipe": tok_recipe.to_dict(),
            "recipe_hash": expected_hash,
            "build_id": uuid.uuid4().hex,
            "parent_build_id": read_card(self.zoo / recipe.parent).get("build_id")
            if recipe.parent
            else None,
            "corpus_fingerprint": corpus.corpus_fingerprint(),
            "corpus": corpus.describe(),
            "train": stats.summary() | {"loss_curve": _curve(stats.losses)},
            "val_bits_per_byte": val,
            "val": {"docs_per_domain": self.spec.val_docs, "max_length": self.spec.val_max_length},
            "versions": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__,
            },
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _save(
        self, name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, card: dict
    ) -> None:
        """Write the member into a scratch folder, card last, then swap it in: a crash never leaves a
        half-written member that looks built."""
        with atomic_dir(self.zoo / name) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")

    def _say(self, message: str) -> None:
        if self.progress:
            from rich.console import Console

            Console(file=sys.stderr).print(f"[dim]zoo:[/] {message}")


def _model_config(recipe: Recipe, tokenizer: PreTrainedTokenizerBase):
    """The transformers config of a from-scratch member: recipe kwargs plus the tokenizer's ids."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, MptConfig

    config_class = {"llama": LlamaConfig, "gpt2": GPT2Config, "gpt_neox": GPTNeoXConfig, "mpt": MptConfig}
    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return config_class[recipe.architecture](**recipe.model, **ids)


def _curve(losses: list[float], points: int = 11) -> list[float]:
    """The loss at ~``points`` evenly spaced steps: enough to see the shape in a card."""
    if not losses:
        return []
    idx = sorted({round(i * (len(losses) - 1) / (points - 1)) for i in range(points)})
    return [round(losses[i], 3) for i in idx]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' per-load progress bars and info warnings while building; restore afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _locked(zoo: Path) -> Iterator[None]:
    """An exclusive lock on the zoo directory for the duration of a build (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(zoo / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

