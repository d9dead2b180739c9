"""The direction of imports that docs/architecture.md states: the harness reaches plugins only through its registry,
and fusers and suites do not import each other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_packages(package: str) -> dict[str, set[str]]:
    """Module file of ``package`` (relative to the repository) -> the top-level packages it imports, at any depth."""
    imports: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).glob("**/*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        imports[str(path.relative_to(ROOT))] = names
    return imports


def test_only_the_registry_imports_plugins() -> None:
    importers = {module for module, names in imported_packages("harness").items() if names & {"fusers", "evals"}}
    assert importers == {"harness/registry.py"}


def test_fusers_and_suites_do_not_import_each_other() -> None:
    assert not [module for module, names in imported_packages("fusers").items() if "evals" in names]
    assert not [module for module, names in imported_packages("evals").items() if "fusers" in names]
