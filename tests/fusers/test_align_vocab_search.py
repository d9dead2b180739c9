"""The MinED search behind ``vocab_map`` (``fusers.align.vocab._nearest_pieces`` / ``_first_min_ed``) against a
plain reference: for every query, ``min(range(len(cands)), key=lambda c: ED(q, cands[c]))`` (the first
candidate at the minimal Levenshtein distance, ties to the lowest index; an equal candidate is at distance
0, so it is the first equal one).

Both paths are checked: the numba-compiled search and the rapidfuzz fallback used without numba. The
inputs are built to reach the awkward parts: ties everywhere (two- and three-letter alphabets),
duplicates and empty strings, code points from all planes (lone surrogates included), queries longer
than a machine word, alphabets wider than the 64-bit masks and the 128 count slots, and queries made of
repeated characters far from every candidate (the per-length count bounds); one-edit neighbourhoods (the
deletion table), word-like pieces at every distance, strings beyond the count signatures, and threads.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

import fusers.align.vocab as vocab

UNICODE = ["a", "b", "é", "▁", "Ġ", "Ċ", "中", "文", "😀", "\ud800", "\U0010ffff", "\x00", " "]


def edit_distance(a: str, b: str) -> int:
    """Textbook Levenshtein DP over code points (unit costs)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def reference(queries: list[str], cands: list[str], dist=edit_distance) -> tuple[list[int], list[bool]]:
    index = [min(range(len(cands)), key=lambda c: dist(q, cands[c])) for q in queries]
    return index, [q in cands for q in queries]


@pytest.fixture(params=["compiled", "compiled+deletions", "rapidfuzz"])
def path(request, monkeypatch):
    """The compiled search without and with its one-deletion table (used from DELETION_TABLE_QUERIES queries
    on: here from the first), and the rapidfuzz path used without numba."""
    if request.param.startswith("compiled"):
        pytest.importorskip("numba")
        assert vocab.compiled_first_min_ed() is not None
        from fusers.align import mined_kernel

        monkeypatch.setattr(mined_kernel, "DELETION_TABLE_QUERIES", 0 if "deletions" in request.param else 10**9)
    else:
        monkeypatch.setattr(vocab, "compiled_first_min_ed", lambda: None)
    return request.param


def check(queries: list[str], cands: list[str], dist=edit_distance, workers: int = 1) -> None:
    index, exact = vocab._nearest_pieces(queries, cands, workers)
    ref_index, ref_exact = reference(queries, cands, dist)
    assert index.tolist() == ref_index
    assert exact.tolist() == ref_exact
    assert vocab._first_min_ed(queries, cands).tolist() == ref_index


def one_edit(rng: random.Random, word: str, alphabet: list[str] | str) -> str:
    """``word`` with one random insertion, deletion, substitution or adjacent transposition (two edits)."""
    k = rng.randint(0, len(word))
    kind = rng.choice(["insert", "delete", "substitute", "transpose"] if len(word) > 1 else ["insert", "substitute"])
    if kind == "insert":
        return word[:k] + rng.choice(alphabet) + word[k:]
    k = min(k, len(word) - 1)
    if kind == "delete":
        return word[:k] + word[k + 1:]
    if kind == "substitute":
        return word[:k] + rng.choice(alphabet) + word[k + 1:]
    k = min(k, len(word) - 2)
    return word[:k] + word[k + 1] + word[k] + word[k + 2:]


def words(rng: random.Random, alphabet: list[str] | str, count: int, longest: int, shortest: int = 0) -> list[str]:
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(shortest, longest))) for _ in range(count)]


@pytest.mark.parametrize("seed", range(12))
def test_ties_duplicates_and_empty_strings(path, seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "ab" if seed % 2 else "abc"
    cands = words(rng, alphabet, rng.randint(1, 40), 6)  # duplicates and "" come up by themselves
    queries = words(rng, alphabet, 30, 8) + [""] + rng.sample(cands, min(5, len(cands)))
    check(queries, cands)


@pytest.mark.parametrize("seed", range(8))
def test_unicode_pieces(path, seed: int) -> None:
    rng = random.Random(100 + seed)
    cands = words(rng, UNICODE, 60, 7)
    queries = words(rng, UNICODE + ["q", "\U0001f680"], 40, 9) + rng.sample(cands, 5)  # some code points no candidate has
    check(queries, cands)


@pytest.mark.parametrize("seed", range(4))
def test_queries_and_candidates_longer_than_a_machine_word(path, seed: int) -> None:
    rng = random.Random(200 + seed)
    cands = words(rng, "abcd▁", 120, 90) + words(rng, "abcd▁", 40, 4)
    queries = words(rng, "abcde▁", 25, 130, shortest=60) + words(rng, "abcd", 10, 70)
    check(queries, cands, Levenshtein.distance)


@pytest.mark.parametrize("seed", range(4))
def test_wide_alphabets(path, seed: int) -> None:
    """More distinct characters than mask bits and count slots: both alias, the bounds must stay bounds."""
    rng = random.Random(300 + seed)
    alphabet = [chr(0x4E00 + k) for k in range(300)] + list("abcdefghij")
    cands = words(rng, alphabet, 400, 8, shortest=1)
    queries = [q[: rng.randint(1, len(q))] + rng.choice(alphabet) for q in rng.sample(cands, 40)]
    queries += words(rng, alphabet, 30, 10) + words(rng, alphabet[:12], 10, 12)
    check(queries, cands, Levenshtein.distance)


@pytest.mark.parametrize("seed", range(6))
def test_repeated_characters_far_from_everything(path, seed: int) -> None:
    """Indentation-like pieces ('Ċ▁▁▁▁') and runs of letters: large minimal distances with many ties."""
    rng = random.Random(400 + seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    cands = ["▁" + w for w in words(rng, letters, 300, 9, shortest=1)] + words(rng, letters, 300, 12, shortest=1)
    rng.shuffle(cands)
    queries = ["Ċ" * rng.randint(0, 2) + "▁" * rng.randint(1, 40) for _ in range(15)]
    queries += ["".join(c * rng.randint(2, 5) for c in rng.sample(letters, rng.randint(2, 8))) for _ in range(25)]
    queries += [q[::-1] + q for q in rng.sample(cands, 10)]
    check(queries, cands, Levenshtein.distance)


@pytest.mark.parametrize("seed", range(8))
def test_one_edit_neighbourhoods(path, seed: int) -> None:
    """Queries one edit (or a transposition, two) from candidates, over small alphabets with runs of one
    character ('aab' loses either 'a' to the same string): every way to be at distance 1, with ties."""
    rng = random.Random(600 + seed)
    alphabet = "ab" if seed % 2 else "abcĠ"
    cands = words(rng, alphabet + "a" * 3, 80, 7, shortest=1)
    queries = [one_edit(rng, rng.choice(cands), alphabet) for _ in range(60)]
    queries += [one_edit(rng, one_edit(rng, rng.choice(cands), alphabet), alphabet) for _ in range(20)]
    check(queries, cands)


@pytest.mark.parametrize("seed", range(4))
def test_word_like_pieces_at_every_distance(path, seed: int) -> None:
    """Pieces shaped like a byte-level vocabulary's (markers, words, multi-word pieces, whitespace runs) and
    queries from another vocabulary: exact, one edit away, and far (multi-word pieces whose nearest piece is
    many edits away, where the search scans with its bounds)."""
    rng = random.Random(700 + seed)
    stems = words(rng, "etaoinshrdlucmfwyp", 150, 9, shortest=2)
    cands = list(dict.fromkeys(["Ġ" + w for w in stems] + stems[:60] + [w[: rng.randint(1, len(w))] for w in stems]
                               + ["Ġ" * k for k in range(1, 12)] + ["Ċ" + "Ġ" * k for k in range(0, 9, 2)]))
    rng.shuffle(cands)
    queries = rng.sample(cands, 20) + [one_edit(rng, rng.choice(cands), "etaoinĠ") for _ in range(40)]
    queries += ["Ġ".join(rng.sample(stems, rng.randint(2, 4))) + rng.choice(["", "Ġ", ".", "?Ċ"]) for _ in range(25)]
    queries += ["Ġ" * rng.randint(12, 30), "Ċ" * 3 + "Ġ" * 5, "x", ""]
    check(queries, cands, Levenshtein.distance)


@pytest.mark.parametrize("seed", range(3))
def test_strings_longer_than_the_count_signatures(path, seed: int) -> None:
    """Candidates and queries over 127 code points have no count signature: they must still be found."""
    rng = random.Random(800 + seed)
    cands = words(rng, "abc", 30, 200, shortest=120) + words(rng, "abcd", 60, 12, shortest=1)
    queries = [one_edit(rng, c, "abcd") for c in rng.sample(cands[:30], 8)]
    queries += words(rng, "abcd", 8, 190, shortest=128) + words(rng, "abcd", 8, 10)
    check(queries, cands, Levenshtein.distance)


@pytest.mark.parametrize("workers", [2, 3])
def test_threads_give_the_single_thread_answer(path, workers: int) -> None:
    """Several threads answer blocks of queries against one shared index: the same map as one thread and as
    the plain loop, with more queries than one block."""
    rng = random.Random(900 + workers)
    alphabet = "abcdeĠ▁"
    cands = words(rng, alphabet, 700, 8, shortest=1)
    queries = words(rng, alphabet, 400, 10) + [one_edit(rng, c, alphabet) for c in rng.sample(cands, 100)]
    check(queries, cands, Levenshtein.distance, workers=workers)
    assert np.array_equal(vocab._nearest_pieces(queries, cands, workers)[0],
                          vocab._nearest_pieces(queries, cands, 1)[0])


def test_degenerate_inputs(path) -> None:
    assert vocab._first_min_ed([], ["a"]).tolist() == []
    index, exact = vocab._nearest_pieces([], [])
    assert index.tolist() == [] and exact.tolist() == []
    with pytest.raises(ValueError, match="empty"):
        vocab._nearest_pieces(["a"], [])
    check(["", "a", "ab"], [""])
    check(["", "x"], ["abc", "ab", "b", "a", "ab"])  # ties on length for "", first of the length-1 ones for "x"
    check(["ab", "ba", "abc"], ["ba", "ab", "ab", "abc"])


@pytest.mark.parametrize("seed", range(3))
def test_vocab_map_same_with_and_without_numba(monkeypatch, seed: int) -> None:
    pytest.importorskip("numba")
    rng = random.Random(500 + seed)
    alphabet = "abcdeĠ▁Ċ中"
    src = list(dict.fromkeys(words(rng, alphabet, 300, 7, shortest=1)))
    base = list(dict.fromkeys(words(rng, alphabet.replace("Ġ", ""), 500, 7, shortest=1)))
    compiled = vocab.vocab_map(src, base, source_marker="Ġ", base_marker="▁")
    with monkeypatch.context() as m:
        m.setattr(vocab, "compiled_first_min_ed", lambda: None)
        fallback = vocab.vocab_map(src, base, source_marker="Ġ", base_marker="▁")
    assert np.array_equal(compiled.ids, fallback.ids)
    assert np.array_equal(compiled.exact, fallback.exact)
    keys = [p.replace("Ġ", "▁") for p in src]
    assert compiled.ids.tolist() == reference(keys, base, Levenshtein.distance)[0]
