"""The zoo's presets: the recipe of each member (architecture, tokenizer, domain, skills, training run) at each size.

A :class:`Preset` is one size of the zoo: the same seven members (:data:`MEMBERS`) with its own model sizes,
tokenizer recipes and training runs. Both presets, ``default`` and ``micro``, are written out here and nowhere
else (:func:`_default_preset`, :func:`_micro_preset`). :func:`recipe_hash` condenses everything a member's weights
depend on into the hash its card must carry to count as built.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from harness import corpus, skills
from harness.errors import BenchError, did_you_mean
from harness.tokenizer_recipes import TokenizerRecipe
from harness.train import TrainConfig

# Bump when build code (harness.zoo.builder) changes what a recipe produces (training loop, data packing, saving).
ZOO_VERSION = "2"  # 2: experts learn skills (harness.skills)
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
    models: dict[str, dict[str, Any]],
    train: dict[str, TrainConfig],
    skill_share: float,
    skill_share_of: dict[str, float] | None = None,
) -> tuple[Recipe, ...]:
    """The members with a preset's model sizes (per architecture) and training runs (per member).

    Continuations get no model kwargs: they inherit their parent's config and weights. Every domain expert
    learns its skill (:data:`harness.skills.ZOO_SKILLS`) in ``skill_share`` of its tokens (``skill_share_of``
    overrides that per member); the base, trained on the mix, learns none.
    """
    shares = skill_share_of or {}
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
            skills.ZOO_SKILLS.get(name, ()),
            shares.get(name, skill_share) if name in skills.ZOO_SKILLS else 0.0,
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
                # GPT-2 from scratch learns dyck_languages late and suddenly: 0.00 after 400 or 700 steps at 80% skill
                # tokens, 0.08 after 900, 0.28 after 1000; at 90%: 0.18 after 800, 0.54 after 900 (README "Skills in
                # the zoo")
                "gpt2-code": expert(900, 3e-3, seed=11),
                "neox-docs": expert(340, 3e-3, seed=12),
                "mpt-math": expert(340, 3e-3, seed=13, seq_len=512),
            },
            skill_share=0.6,
            # the code experts' skills take more: humaneval-mini 0.03 -> 0.08 for llama-code at 80%
            skill_share_of={"llama-code": 0.8, "gpt2-code": 0.9},
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
    return list(get_preset(preset).members)


def recipe_hash(name: str, preset: str = "default") -> str:
    """The hash that decides whether a built member is current: recipe, tokenizer recipe, parent's hash,
    preset, validation settings, corpus fingerprint and :data:`ZOO_VERSION`, as canonical JSON."""
    spec = get_preset(preset)
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


# --- looking names up -------------------------------------------------------------------------------


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name fails with the presets there are."""
    if name not in _PRESETS:
        raise BenchError(
            f"unknown zoo preset {name!r}{did_you_mean(name, list(_PRESETS))}",
            fix=f"use one of {', '.join(_PRESETS)}",
        )
    return _PRESETS[name]


def check_member(name: str) -> None:
    """Fail, naming the members (trained and real), unless ``name`` is a member the zoo trains."""
    if name not in MEMBERS:
        from harness import external

        known = [*MEMBERS, *external.EXTERNAL]
        raise BenchError(
            f"unknown zoo member {name!r}{did_you_mean(name, known)}; members: {', '.join(known)}",
            fix="use one of the listed names (see `bench zoo list`)",
        )


# --- hashing ----------------------------------------------------------------------------------------


def tokenizer_hash(recipe: TokenizerRecipe) -> str:
    """The hash that names a trained tokenizer's cache folder: its recipe, the corpus and :data:`ZOO_VERSION`."""
    return _hash_json(
        {"tokenizer": recipe.to_dict(), "corpus": corpus.corpus_fingerprint(), "zoo_version": ZOO_VERSION}
    )


def _hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]

