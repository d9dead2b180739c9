"""Finding members: the folder of a built one (:func:`resolve`), whether one is ready (:func:`readiness`),
and the listings behind `bench zoo list` (:func:`list_built`, :func:`list_all`).

Real checkpoints (:mod:`harness.external`) share the ``zoo:`` names and the zoo directory; these functions
answer for them too, through that module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import paths
from harness.errors import BenchError
from harness.zoo.builder import build
from harness.zoo.directory import CARD, active_preset, member_state, read_card
from harness.zoo.presets import MEMBERS, check_member, get_preset


def resolve(name: str, build_missing: bool = False) -> Path:
    """The folder of member ``name``, ready for ``from_pretrained``.

    Unknown names fail with the list of members; an unbuilt or stale member fails with the command that
    builds it, unless ``build_missing``, which builds just that member (and its parent) first.
    """
    from harness import external

    if external.is_external(name):
        return external.resolve(name)
    spec = get_preset(active_preset())
    check_member(name)
    path = paths.zoo_dir() / name
    state = member_state(spec, name)
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
    check_member(name)
    spec = get_preset(active_preset())
    state = member_state(spec, name)
    if state == "built":
        return True, f"zoo:{name} is built ({paths.zoo_dir() / name})"
    problem = "is not built" if state == "missing" else "was built from another recipe, preset or corpus"
    return False, f"zoo:{name} {problem}: `bench zoo build --only {name}` trains it"


def list_built() -> list[dict[str, Any]]:
    """The cards of all members trained in the zoo directory (whatever their preset), in member order; real
    checkpoints added with `bench zoo add` are listed by :func:`list_all`, not here (they were not trained)."""
    zoo = paths.zoo_dir()
    cards = (
        [read_card(p) | {"path": str(p)} for p in sorted(zoo.iterdir()) if (p / CARD).is_file()]
        if zoo.is_dir()
        else []
    )
    cards = [c for c in cards if c.get("kind") != "external"]
    order = {name: i for i, name in enumerate(MEMBERS)}
    return sorted(cards, key=lambda c: (order.get(c.get("name", ""), len(order)), c.get("name", "")))


def list_all(preset: str | None = None) -> list[dict[str, Any]]:
    """Every member of ``preset`` (default: the zoo's), with ``built`` and ``stale`` flags.

    Built members give their card; unbuilt ones a summary of their recipe.
    """
    spec = get_preset(preset or active_preset())
    rows = []
    for recipe in spec.members:
        path = paths.zoo_dir() / recipe.name
        state = member_state(spec, recipe.name)
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
            row = read_card(path)
        rows.append(row | {"built": state != "missing", "stale": state == "stale", "path": str(path)})
    from harness import external

    return rows + [external.card_or_summary(name) for name in external.EXTERNAL]
