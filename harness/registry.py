"""Lazy plugin registries: name -> "module:attr", imported only when used, checked against the plugin contract.

Keeping the map as strings means `bench --help`, `bench runs` and `bench leaderboard` never import
torch. Outside packages add plugins through the entry-point groups ``fusebench.fusers`` and
``fusebench.suites``; ad-hoc code can be named as ``path/to/file.py:ClassName``; code that embeds FuseBench
(tests, say) calls :meth:`Registry.register`. A plugin class derives from :class:`harness.api.Fuser` or
:class:`harness.api.Suite`, which declare what the harness reads of it.

What the leaderboard and the report need of each suite, its primary metric and summary tasks, is read from the
suite classes here (:data:`PRIMARY_METRIC`, :data:`SUMMARY_TASKS`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

from harness.api import Fuser, Suite, missing_attributes
from harness.errors import BenchError, did_you_mean

Plugin = TypeVar("Plugin", Fuser, Suite)


class Registry(Generic[Plugin]):
    """The plugins of one kind (fusers or suites) by name: the built-in ones, those of the entry-point group, and
    those registered at run time."""

    def __init__(self, kind: str, contract: type[Plugin], builtin: dict[str, str], entry_point_group: str):
        self.kind = kind
        self.contract: type[Plugin] = contract
        self._specs: dict[str, str | type[Plugin]] = dict(builtin)
        self._group = entry_point_group
        self._loaded: dict[str, type[Plugin]] = {}
        self._scanned = False

    def _scan_entry_points(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        for ep in entry_points(group=self._group):
            self._specs.setdefault(ep.name, ep.value)

    def register(self, name: str, plugin: str | type[Plugin]) -> None:
        """Make ``plugin`` (a class, or ``"module:Class"`` imported when first used) available as ``name``. A name
        taken by another plugin is refused."""
        self._scan_entry_points()
        if self._specs.get(name, plugin) != plugin:
            raise ValueError(f"{self.kind} {name!r} is registered already, as {self._specs[name]}")
        self._specs[name] = plugin

    def unregister(self, name: str) -> None:
        """Forget plugin ``name`` (registered with :meth:`register`)."""
        self._specs.pop(name, None)
        self._loaded.pop(name, None)

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

    def get(self, name: str) -> type[Plugin]:
        """The class of plugin ``name``, imported now if need be (a BenchError when it is unknown or breaks the
        contract)."""
        if name in self._loaded:
            return self._loaded[name]
        if ".py:" in name:
            obj = _load_from_file(name)
        else:
            self.check(name)
            spec = self._specs[name]
            if isinstance(spec, str):
                module, _, attr = spec.partition(":")
                obj = getattr(importlib.import_module(module), attr)
            else:
                obj = spec
        self._loaded[name] = self._conforming(name, obj)
        return self._loaded[name]

    def find(self, name: str) -> type[Plugin] | None:
        """The class of plugin ``name`` when it is installed here and loads, else None: for reading what the results
        DB holds of plugins that may have gone since."""
        self._scan_entry_points()
        if ".py:" not in name and name not in self._specs:
            return None
        try:
            return self.get(name)
        except (BenchError, ImportError):
            return None

    def _conforming(self, name: str, obj: Any) -> type[Plugin]:
        """``obj`` as a class of this registry's contract: a subclass of it as it is; a class written to the contract
        without deriving from it (a plugin older than :mod:`harness.api`'s classes) derived from it, so that the
        contract's defaults fill in what the class leaves out."""
        contract = self.contract.__name__
        fix = f"derive it from harness.api.{contract}, which declares what the harness reads of a {self.kind}"
        if not isinstance(obj, type):
            raise BenchError(f"{self.kind} {name!r} is {obj!r}, not a class", fix)
        missing = missing_attributes(obj, self.contract)
        if missing:
            raise BenchError(f"{self.kind} {name!r} ({obj.__module__}.{obj.__qualname__}) has no "
                             f"{', '.join(missing)}", fix)
        if issubclass(obj, self.contract):
            return obj
        return type(obj.__name__, (obj, self.contract), {"__module__": obj.__module__, "__doc__": obj.__doc__})


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


@functools.cache
def fusers() -> Registry[Fuser]:
    from fusers import BUILTIN

    # mypy refuses an abstract class for type[Fuser] (it could be instantiated); the registry only checks against it
    return Registry("fuser", Fuser, BUILTIN, "fusebench.fusers")  # type: ignore[type-abstract]


@functools.cache
def suites() -> Registry[Suite]:
    from evals import BUILTIN

    return Registry("suite", Suite, BUILTIN, "fusebench.suites")  # type: ignore[type-abstract]


class _SuiteAttribute(Mapping[str, Any]):
    """Suite name -> one class attribute of the suite (:class:`harness.api.Suite`), read-only, over the suites
    installed here that set it (not None)."""

    def __init__(self, attribute: str):
        self.attribute = attribute

    def __getitem__(self, suite: str) -> Any:
        value = getattr(suites().find(suite), self.attribute, None)
        if value is None:
            raise KeyError(suite)
        return value

    def __iter__(self) -> Iterator[str]:
        return (name for name in suites().names() if name in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)


#: Each suite's headline metric (:attr:`harness.api.Suite.primary_metric`): what the leaderboard shows unless asked
#: for all metrics.
PRIMARY_METRIC: Mapping[str, str] = _SuiteAttribute("primary_metric")
#: Each suite's headline for evaluations without its primary metric (:attr:`harness.api.Suite.fallback_metric`:
#: MT-Bench judged pairwise).
FALLBACK_METRIC: Mapping[str, str] = _SuiteAttribute("fallback_metric")
#: The tasks the leaderboard shows of each suite by default (:attr:`harness.api.Suite.summary_tasks`, every task of a
#: suite not in here); `--per-task` shows all.
SUMMARY_TASKS: Mapping[str, tuple[str, ...]] = _SuiteAttribute("summary_tasks")


def suite_caveats(suite: str, args: dict[str, Any] | None) -> list[str]:
    """The one-line caveats that suite ``suite`` attaches to every score made with the suite arguments ``args`` (its
    :meth:`harness.api.Suite.caveats`; MT-Bench: ratings by a local judge), for the runner, the leaderboard and the
    report to print beside those scores. None for a suite not installed here."""
    cls = suites().find(suite)
    return cls.caveats(dict(args or {})) if cls is not None else []


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
