"""The zoo directory, ``paths.zoo_dir()``: the members' cards, the preset it was built with, and each member's state.

A trained member is the folder ``NAME`` holding its weights, its tokenizer and its card (:data:`CARD`); the file
``preset.txt`` remembers the preset of the last build. Everything here reads only those small files, never weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from harness import paths
from harness.zoo.presets import PRESETS, Preset, recipe_hash

CARD = "zoo.json"
PRESET_ENV = "BENCH_ZOO_PRESET"
PRESET_FILE = "preset.txt"


def active_preset() -> str:
    """The zoo directory's preset; before its first build, ``$BENCH_ZOO_PRESET`` or ``default``."""
    marker = paths.zoo_dir() / PRESET_FILE
    if marker.is_file():
        name = marker.read_text().strip()
        if name in PRESETS:
            return name
    return os.environ.get(PRESET_ENV) or "default"


def member_state(spec: Preset, name: str) -> str:
    """``missing`` (no card), ``stale`` or ``built``.

    Built means: weights present, the card's recipe hash is the current one, and for a continuation, it
    was trained from the parent weights now on disk (the parent's ``build_id``), so rebuilding a parent
    also rebuilds its continuations.
    """
    path = paths.zoo_dir() / name
    card = read_card(path)
    if not card:
        return "missing"
    if card.get("recipe_hash") != recipe_hash(name, spec.name) or not (path / "config.json").is_file():
        return "stale"
    parent = spec.recipe(name).parent
    if parent and card.get("parent_build_id") != read_card(paths.zoo_dir() / parent).get("build_id"):
        return "stale"
    return "built"


def read_card(path: Path) -> dict[str, Any]:
    """The card in member folder ``path``; empty where there is none or it does not parse."""
    try:
        return json.loads((path / CARD).read_text())
    except (OSError, ValueError):
        return {}

