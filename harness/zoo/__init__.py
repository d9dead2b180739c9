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

Every domain expert also learns one **skill** in the suites' own formats (:mod:`harness.skills`): ``llama-code``
humaneval-mini's function problems, ``gpt2-code`` bbh-mini's ``dyck_languages``, the math experts
``object_counting``, the docs experts ``hyperbaton``; the base learns none, and the other bbh-mini tasks are
taught to nobody. Skill documents, from the train side of a split the suites never score, take ``skill_share`` of
an expert's tokens (``llama-code`` 80%, ``gpt2-code`` 90%, the others 60%), in windows long enough for a 3-shot prompt (768 tokens;
MPT 512).

Presets scale the same members: ``default`` (~1M-parameter models, about 6 minutes on 2 cores) and ``micro``
(~50k parameters, tens of seconds, for tests; it learns no skill, but trains on them). A zoo directory
remembers the preset it was built with; before its first build that is ``$BENCH_ZOO_PRESET`` or ``default``.

Each member is a plain ``save_pretrained`` folder, ``zoo_dir()/NAME``, loadable with
``AutoModelForCausalLM`` / ``AutoTokenizer`` offline, plus a ``zoo.json`` card (recipe, recipe hash,
training stats, held-out bits/byte on every domain). The recipe hash covers the recipe, its tokenizer
recipe, its parent's hash, the preset and :func:`harness.corpus.corpus_fingerprint`; a member whose card
has another hash is rebuilt by :func:`build` and refused by :func:`resolve`. Checking all of that reads
only the cards, so a build with nothing to do returns at once.

The package: :mod:`~harness.zoo.presets` holds the members' recipes, the presets and the recipe hash,
:mod:`~harness.zoo.directory` reads the zoo directory (cards, its preset, each member's state),
:mod:`~harness.zoo.builder` trains and saves members, and :mod:`~harness.zoo.catalog` resolves and lists them.
"""

from __future__ import annotations

from harness.zoo.builder import build
from harness.zoo.catalog import list_all, list_built, readiness, resolve
from harness.zoo.directory import CARD, PRESET_ENV, active_preset
from harness.zoo.presets import (
    ARCHITECTURES,
    FAMILIES,
    MEMBERS,
    PRESETS,
    ZOO_VERSION,
    Preset,
    Recipe,
    recipe_hash,
    recipes,
)

__all__ = [
    "ARCHITECTURES",
    "CARD",
    "FAMILIES",
    "MEMBERS",
    "PRESETS",
    "PRESET_ENV",
    "ZOO_VERSION",
    "Preset",
    "Recipe",
    "active_preset",
    "build",
    "list_all",
    "list_built",
    "readiness",
    "recipe_hash",
    "recipes",
    "resolve",
]
