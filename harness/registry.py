"""Lazy plugin registries: name -> "module:attr", imported only when used.

Keeping the map as strings means `bench --help`, `bench runs` and `bench leaderboard` never import
torch. Outside packages add plugins through the entry-point groups ``fusebench.fusers`` and
``fusebench.suites``; ad-hoc code can be named as ``path/to/file.py:ClassName``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from harness.errors import BenchError, did_you_mean


class Registry:
    def __init__(self, kind: str, builtin: dict[str, str], entry_point_group: str):
        self.kind = kind
        self._specs = dict(builtin)
        self._group = entry_point_group
        self._loaded: dict[str, Any] = {}
        self._scanned = False

    def _scan_entry_points(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        for ep in entry_points(group=self._group):
            self._specs.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._scan_entry_points()
        return sorted(self._specs)

    def check(self, name: str) -> None:
        """Fail with a did-you-mean when ``name`` is not registered (no import)."""
        if ".py:" in name:
            return
        self._scan_entry_points()
        if name not in self._specs:
            raise BenchError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())}",
                f"choose one of: {', '.join(self.names())}",
            )

    def get(self, name: str) -> Any:
        if name in self._loaded:
            return self._loaded[name]
        if ".py:" in name:
            obj = _load_from_file(name)
        else:
            self.check(name)
            module, _, attr = self._specs[name].partition(":")
            obj = getattr(importlib.import_module(module), attr)
        self._loaded[name] = obj
        return obj


def _load_from_file(spec: str) -> Any:
    file, _, attr = spec.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise BenchError(f"plugin file {file} not found", "give path/to/file.py:ClassName")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, attr):
        raise BenchError(f"{file} has no {attr!r}", "name a class defined in that file")
    return getattr(module, attr)


def fusers() -> Registry:
    from fusers import BUILTIN

    return _registry("fuser", BUILTIN, "fusebench.fusers")


def suites() -> Registry:
    from evals import BUILTIN

    return _registry("suite", BUILTIN, "fusebench.suites")


def suite_caveats(suite: str, args: dict[str, Any] | None) -> list[str]:
    """The one-line caveats that suite ``suite`` attaches to every score made with the suite arguments ``args`` (its
    optional ``caveats(args)`` classmethod; MT-Bench: ratings by a local judge), for the runner, the leaderboard and
    the report to print beside those scores. None for a suite without the hook, or one not installed here."""
    try:
        cls = suites().get(suite)
    except (BenchError, ImportError):
        return []
    return caveats_of(cls, args)


def run_caveats(config: dict[str, Any] | str | None, suite: str) -> list[str]:
    """:func:`suite_caveats` of a recorded run's scores on ``suite``, from the run's stored config (a dict, or the
    ``runs.config`` JSON): its ``suite_args[suite]``. A run's suite arguments are part of every evaluation's cache
    key, so the scores stored for the run were made with exactly these arguments, computed then or reused."""
    if isinstance(config, str) or config is None:
        try:
            config = json.loads(config or "{}")
        except ValueError:
            return []
    suite_args = config.get("suite_args") if isinstance(config, dict) else None
    args = suite_args.get(suite) if isinstance(suite_args, dict) else None
    return suite_caveats(suite, args if isinstance(args, dict) else {})


def caveats_of(suite_cls: Any, args: dict[str, Any] | None) -> list[str]:
    """:func:`suite_caveats` for a suite class in hand."""
    hook = getattr(suite_cls, "caveats", None)
    return list(hook(dict(args or {}))) if callable(hook) else []


_REGISTRIES: dict[str, Registry] = {}


def _registry(kind: str, builtin: dict[str, str], group: str) -> Registry:
    if kind not in _REGISTRIES:
        _REGISTRIES[kind] = Registry(kind, builtin, group)
    return _REGISTRIES[kind]
