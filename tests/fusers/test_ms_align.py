"""Tests for fusers/align/ms_counts.py and ms_map.py: FuseChat v2's statistics-based token alignment (spec §2.3, quirk Q2).

Sparse counting is pinned against a dense numpy matrix filled the reference's way (fancy-index ``+=``); the
vocabulary map against hand-made corpora with known answers and against a literal transcription of the
reference loop on random vocabularies; ``count_corpus`` against aligning chunk by chunk with two tiny
trained tokenizers. No model weights are needed.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

from fusers.align import (
    Alignment,
    CoAlignmentCounts,
    Tokenization,
    TokenizerSpec,
    VocabMap,
    align_sequences,
    count_corpus,
    map_distribution,
    ms_statistical_map,
    ms_vocab_map,
)

BL = TokenizerSpec.of_kind("byte_level")
SP = TokenizerSpec.of_kind("metaspace")


class FakeTokenizer:
    """The tokenizer surface ms_vocab_map reads: get_vocab, convert_ids_to_tokens, special tokens and ids."""

    backend_tokenizer = None

    def __init__(self, pieces: list[str], *, bos: str | None = None, eos: str | None = None,
                 unk: str | None = None):
        self._vocab = {p: i for i, p in enumerate(pieces)}
        assert len(self._vocab) == len(pieces)
        self.bos_token, self.eos_token, self.unk_token = bos, eos, unk
        for role, piece in (("bos", bos), ("eos", eos), ("unk", unk)):
            setattr(self, f"{role}_token_id", None if piece is None else self._vocab[piece])
        self.all_special_tokens = [t for t in (bos, eos, unk) if t is not None]

    def __len__(self) -> int:
        return len(self._vocab)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def convert_ids_to_tokens(self, ids):
        inv = {i: p for p, i in self._vocab.items()}
        return inv.get(ids) if isinstance(ids, int) else [inv.get(i) for i in ids]


def dense_reference(n_pivot: int, n_source: int, texts) -> np.ndarray:
    """FuseChat stage 1: ``C[pivot id at i, source ids aligned to i] += 1`` with numpy fancy indexing."""
    c = np.zeros((n_pivot, n_source))
    for lists, pivot_ids, source_ids in texts:
        for i, js in enumerate(lists):
            c[pivot_ids[i], source_ids[js]] += 1
    return c


def random_texts(rng: np.random.Generator, n_pivot: int, n_source: int, n_texts: int):
    """Random monotone-ish alignments with small id ranges, so ids repeat within one position's list."""
    out = []
    for _ in range(n_texts):
        n_b, n_s = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        lists = [sorted(set(rng.integers(0, n_s, size=int(rng.integers(1, 5))).tolist())) for _ in range(n_b)]
        out.append((lists, rng.integers(0, n_pivot, size=n_b), rng.integers(0, n_source, size=n_s)))
    return out


# ------------------------------------------------------------------------------------------ counting


@pytest.mark.parametrize("fold_every", [1, 3, 1 << 20])
def test_sparse_counts_equal_dense_reference(fold_every: int) -> None:
    rng = np.random.default_rng(fold_every)
    n_pivot, n_source = 7, 5
    texts = random_texts(rng, n_pivot, n_source, 40)
    counts = CoAlignmentCounts(n_pivot, n_source, fold_every=fold_every)
    for lists, pivot_ids, source_ids in texts:
        counts.add_alignment(Alignment.from_lists(lists, len(source_ids)), pivot_ids, source_ids)
    dense = dense_reference(n_pivot, n_source, texts)
    np.testing.assert_array_equal(counts.to_dense(), dense)
    assert counts.nnz == np.count_nonzero(dense) and counts.total == dense.sum()
    np.testing.assert_array_equal(counts.to_scipy().toarray(), dense)
    p, s, c = counts.items()
    np.testing.assert_array_equal(dense[p, s], c)
    assert np.all(np.diff(p * n_source + s) > 0)
    view = counts.by_source()
    for sid in range(n_source):
        cand, cc = counts.candidates(sid)
        np.testing.assert_array_equal(cand, np.flatnonzero(dense[:, sid]))
        np.testing.assert_array_equal(cc, dense[cand, sid])
        np.testing.assert_array_equal(view.pivot_ids[view.indptr[sid]:view.indptr[sid + 1]], cand)
    assert counts[int(p[0]), int(s[0])] == c[0]


def test_within_position_dedup_but_not_across_positions() -> None:
    # position 0 sees source ids [4, 4, 2] (two positions with the same id): 4 counts once there;
    # positions 1 and 2 share pivot id 3 and both see id 4: that counts twice.
    alignment = Alignment.from_lists([[0, 1, 2], [3], [3]], 4)
    counts = CoAlignmentCounts(5, 6)
    counts.add_alignment(alignment, [1, 3, 3], [4, 4, 2, 4])
    assert counts[1, 4] == 1 and counts[1, 2] == 1 and counts[3, 4] == 2 and counts.nnz == 3
    counts.add_pairs([1, 1], [4, 4])  # raw pairs: no dedup
    assert counts[1, 4] == 3
    counts.add_pairs([0], [0], counts=[5])
    assert counts[0, 0] == 5 and counts.total == 1 + 1 + 2 + 2 + 5


def test_counts_validate_and_update() -> None:
    counts = CoAlignmentCounts(3, 4)
    with pytest.raises(ValueError):
        counts.add_pairs([3], [0])
    with pytest.raises(ValueError):
        counts.add_pairs([0], [-1])
    with pytest.raises(ValueError):
        counts.add_pairs([0, 1], [0])
    with pytest.raises(ValueError):
        counts.add_alignment(Alignment.from_lists([[0]], 1), [0, 1], [0])
    with pytest.raises(ValueError):
        CoAlignmentCounts(0, 4)
    counts.add_pairs([0, 2, 2], [1, 3, 3])
    other = CoAlignmentCounts(3, 4)
    other.add_pairs([2, 1], [3, 0])
    counts.update(other)
    assert counts[2, 3] == 3 and counts[1, 0] == 1 and counts[0, 1] == 1 and counts.nnz == 3
    with pytest.raises(ValueError):
        counts.update(CoAlignmentCounts(4, 3))


def test_save_load_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(1)
    counts = CoAlignmentCounts(50, 70, fold_every=16)
    for _ in range(20):
        counts.add_pairs(rng.integers(0, 50, size=30), rng.integers(0, 70, size=30))
    path = counts.save(tmp_path / "sub" / "counts.npz")
    assert sorted(p.name for p in path.parent.iterdir()) == ["counts.npz"]  # no temporary file left
    loaded = CoAlignmentCounts.load(path)
    assert loaded.shape == counts.shape and loaded.nnz == counts.nnz
    for a, b in zip(loaded.items(), counts.items(), strict=True):
        np.testing.assert_array_equal(a, b)
    loaded.add_pairs([0], [0])  # a loaded store keeps counting
    assert loaded.total == counts.total + 1
    odd = counts.save(tmp_path / "counts.bin")  # the name is kept as given
    assert odd.name == "counts.bin" and CoAlignmentCounts.load(odd).nnz == counts.nnz


def test_memory_follows_pairs_not_vocabulary() -> None:
    rng = np.random.default_rng(2)
    p, s = rng.integers(0, 10, size=500), rng.integers(0, 10, size=500)
    small, huge = CoAlignmentCounts(10, 10), CoAlignmentCounts(32_000, 150_000)
    small.add_pairs(p, s)
    huge.add_pairs(p * 3_000, s * 14_000)
    assert small.nnz == huge.nnz and small.compact().nbytes == huge.compact().nbytes == 16 * small.nnz
    more = CoAlignmentCounts(32_000, 150_000)
    more.add_pairs(rng.integers(0, 32_000, size=4_000), rng.integers(0, 150_000, size=4_000))
    assert more.compact().nbytes == 16 * more.nnz and more.nnz > 10 * huge.nnz
    with pytest.raises(MemoryError):
        huge.to_dense()


# ------------------------------------------------------------------------------------------ the vocabulary map

PIVOT = ["<unk>", "<s>", "</s>", "▁cat", "▁ats", "▁dog", "x", "▁do", "▁h", "y", "▁bb", "▁ab"]
SOURCE = ["<|endoftext|>", "Ġcats", "Ġdogs", "Ġdo", "Ġbird", "z", "Ġ", "Ġabb", "y", "Ċ"]
HAND_COUNTS = [  # (pivot piece, source piece, count)
    ("▁cat", "Ġcats", 10), ("▁ats", "Ġcats", 1),  # equal distance 0.1: reference takes the rarer
    ("▁dog", "Ġdogs", 2), ("x", "Ġdogs", 7),  # frequency takes the commoner despite the distance
    ("▁dog", "Ġdo", 50),  # 'Ġdo' is exactly '▁do': statistics are not consulted
    ("▁h", "Ġbird", 3),  # a single candidate
    ("▁h", "Ġ", 1), ("y", "Ġ", 1),  # marker-only piece: compared as '▁' vs the raw pivot pieces
    ("▁bb", "Ġabb", 4), ("▁ab", "Ġabb", 4),  # full tie: lowest pivot id
    ("x", "<|endoftext|>", 100),  # EOS maps to EOS whatever the counts
]


def hand_counts() -> CoAlignmentCounts:
    pv = {p: i for i, p in enumerate(PIVOT)}
    sv = {p: i for i, p in enumerate(SOURCE)}
    counts = CoAlignmentCounts(len(PIVOT), len(SOURCE))
    for p, s, c in HAND_COUNTS:
        counts.add_pairs([pv[p]] * c, [sv[s]] * c)
    return counts


def mapped(vm: VocabMap) -> dict[str, str | None]:
    return {s: (PIVOT[int(p)] if p >= 0 else None) for s, p in zip(SOURCE, vm.ids.tolist(), strict=False)}


@pytest.mark.parametrize("weighting", ["frequency", "reference"])
def test_hand_made_corpus_both_weightings(weighting: str) -> None:
    src = FakeTokenizer(SOURCE, eos="<|endoftext|>")
    piv = FakeTokenizer(PIVOT, bos="<s>", eos="</s>", unk="<unk>")
    vm = ms_vocab_map(hand_counts(), src, piv, weighting=weighting, source_spec=BL, pivot_spec=SP)
    assert isinstance(vm, VocabMap) and vm.ids.dtype == np.int64 and len(vm.ids) == len(SOURCE)
    expected = {
        "<|endoftext|>": "</s>",
        "Ġcats": "▁cat" if weighting == "frequency" else "▁ats",
        "Ġdogs": "x" if weighting == "frequency" else "▁dog",
        "Ġdo": "▁do",
        "Ġbird": "▁h",
        "z": "<unk>",
        "Ġ": "▁h",
        "Ġabb": "▁bb",
        "y": "y",
        "Ċ": "<unk>",
    }
    assert mapped(vm) == expected
    assert [SOURCE[i] for i in np.flatnonzero(vm.exact)] == ["Ġdo", "y"]
    assert vm.lookup("▁do") == PIVOT.index("▁do") and vm.keys["▁cats"] == SOURCE.index("Ġcats")
    # detected specs (the fakes have no backend: markers from the vocabulary) give the same map
    assert mapped(ms_vocab_map(hand_counts(), src, piv, weighting=weighting)) == expected


def test_no_candidate_falls_back_to_unk_then_eos_and_widths() -> None:
    src = FakeTokenizer(SOURCE, eos="<|endoftext|>")
    no_unk = FakeTokenizer(PIVOT, bos="<s>", eos="</s>")
    vm = ms_vocab_map(hand_counts(), src, no_unk, source_spec=BL, pivot_spec=SP)
    assert mapped(vm)["z"] == "</s>"
    piv = FakeTokenizer(PIVOT, bos="<s>", eos="</s>", unk="<unk>")
    # pivot ids >= 10 cannot be output: 'Ġabb' loses both candidates; extra source ids have no piece
    vm = ms_vocab_map(hand_counts(), src, piv, source_spec=BL, pivot_spec=SP, source_width=len(SOURCE) + 3, pivot_width=10)
    assert len(vm.ids) == len(SOURCE) + 3 and vm.ids[len(SOURCE):].tolist() == [-1, -1, -1] and not vm.exact[len(SOURCE):].any()
    assert mapped(vm)["Ġabb"] == "<unk>" and vm.ids.max() < 10
    # an exact string match beyond the pivot width is no match: 'Ġbb' then goes through the statistics
    src2 = FakeTokenizer([*SOURCE, "Ġbb"], eos="<|endoftext|>")
    counts = CoAlignmentCounts(len(PIVOT), len(SOURCE) + 1)
    counts.add_pairs([PIVOT.index("y")], [len(SOURCE)])
    vm = ms_vocab_map(counts, src2, piv, source_spec=BL, pivot_spec=SP, pivot_width=10)
    assert vm.ids[len(SOURCE)] == PIVOT.index("y") and not vm.exact[len(SOURCE)]
    vm = ms_vocab_map(counts, src2, piv, source_spec=BL, pivot_spec=SP)
    assert vm.ids[len(SOURCE)] == PIVOT.index("▁bb") and vm.exact[len(SOURCE)]


def test_exact_matches_win_over_statistics() -> None:
    src = FakeTokenizer(["Ġthe", "Ġa", "b"], eos="b")
    piv = FakeTokenizer(["<unk>", "▁the", "▁a", "▁an", "b"], unk="<unk>", eos="b")
    counts = CoAlignmentCounts(5, 3)
    counts.add_pairs([3] * 9 + [1], [1] * 9 + [0])  # 'Ġa' mostly aligned with '▁an', still maps to '▁a'
    for weighting in ("frequency", "reference"):
        vm = ms_vocab_map(counts, src, piv, weighting=weighting, source_spec=BL, pivot_spec=SP)
        assert vm.ids.tolist() == [1, 2, 4] and vm.exact.all()
    stats = ms_statistical_map(counts, ["Ġthe", "Ġa", "b"], ["<unk>", "▁the", "▁a", "▁an", "b"],
                               source_marker="Ġ", pivot_marker="▁", fallback_id=0)
    assert stats.tolist() == [1, 3, 0]  # the statistical map alone: '▁an', and no candidate for 'b'
    with pytest.raises(ValueError):
        ms_statistical_map(counts, ["a"], ["b"], source_marker="", pivot_marker="", weighting="sigmoid")


def test_frequency_ties_broken_by_distance_then_pivot_id() -> None:
    piv = ["<unk>", "▁zzzz", "▁abx", "▁ab", "▁qq"]
    counts = CoAlignmentCounts(len(piv), 2)
    # source 0 'Ġabc': 'zzzz' (ED 4), 'abx' (ED 1) and 'ab' (substring: 0.1) all seen 3 times; 'qq' once
    counts.add_pairs([1, 2, 3] * 3 + [4], [0] * 10)
    # source 1 'Ġzz': 'ab' and 'qq' tie on count and distance (2): the lowest pivot id
    counts.add_pairs([4, 3], [1, 1])
    out = ms_statistical_map(counts, ["Ġabc", "Ġzz"], piv, source_marker="Ġ", pivot_marker="▁", fallback_id=0)
    assert out.tolist() == [3, 3]
    ref = ms_statistical_map(counts, ["Ġabc", "Ġzz"], piv, source_marker="Ġ", pivot_marker="▁", fallback_id=0,
                             weighting="reference")
    assert ref.tolist() == [3, 3]
    only = ms_statistical_map(counts, ["Ġabc", "Ġzz"], piv, source_marker="Ġ", pivot_marker="▁", fallback_id=0,
                              sources=[1], overrides={0: 4})
    assert only.tolist() == [4, 3]


# --- literal reference loop on random vocabularies


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + np.exp(-x))


def reference_loop(c: np.ndarray, src: list[str], piv: list[str], sm: str, pm: str, weighting: str,
                   unk: int, overrides: dict[int, int]) -> list[int]:
    """Spec §2.3 stages 2 and 3 as plain loops (the reference's dist_fn and argmin; 'frequency' as a min key)."""

    def dist_fn(a: str, b: str) -> float:
        aa, bb = a.replace(sm, ""), b.replace(pm, "")
        if len(aa) == 0 or len(bb) == 0:
            aa, bb = a.replace(sm, pm), b
        w = 0.1 if (aa in bb or bb in aa) else 1
        return Levenshtein.distance(aa, bb) * w

    blending_to_base = []
    for s, piece in enumerate(src):
        nz = np.nonzero(c[:, s])[0]
        if len(nz) == 0:
            best = unk
        elif weighting == "reference":
            best = int(nz[np.argmin([dist_fn(piece, piv[p]) * sigmoid(c[p, s]) for p in nz])])
        else:
            best = int(min(nz, key=lambda p: (-c[p, s], dist_fn(piece, piv[p]), p)))
        blending_to_base.append(best)
    for s, p in overrides.items():
        blending_to_base[s] = p
    piv_vocab = {p: i for i, p in enumerate(piv)}
    return [piv_vocab.get(piece.replace(sm, pm), blending_to_base[s]) for s, piece in enumerate(src)]


def random_vocab(rnd: random.Random, marker: str, n: int, specials: list[str]) -> list[str]:
    out = dict.fromkeys(specials)
    while len(out) < n:
        body = "".join(rnd.choice("abcd") for _ in range(rnd.randint(0, 4)))
        piece = (marker + body) if rnd.random() < 0.5 else body
        if piece:
            out.setdefault(piece)
    return list(out)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("weighting", ["frequency", "reference"])
def test_ms_vocab_map_equals_reference_loop(seed: int, weighting: str) -> None:
    rnd = random.Random(seed)
    rng = np.random.default_rng(seed)
    src = random_vocab(rnd, "Ġ", 60, ["<|end|>"])
    piv = random_vocab(rnd, "▁", 80, ["<unk>", "<s>", "</s>"])
    c = np.zeros((len(piv), len(src)))
    n = 400
    p, s = rng.integers(0, len(piv), size=n), rng.integers(0, len(src), size=n)
    w = rng.choice([1, 1, 1, 2, 3, 5], size=n)  # small counts: many equal counts and equal distances
    np.add.at(c, (p, s), w)
    counts = CoAlignmentCounts(len(piv), len(src))
    counts.add_pairs(p, s, counts=w)
    vm = ms_vocab_map(counts, FakeTokenizer(src, eos="<|end|>"), FakeTokenizer(piv, bos="<s>", eos="</s>", unk="<unk>"),
                      weighting=weighting, source_spec=BL, pivot_spec=SP)
    assert vm.ids.tolist() == reference_loop(c, src, piv, "Ġ", "▁", weighting, 0, {0: 2})


# ------------------------------------------------------------------------------------------ count_corpus


@pytest.fixture(scope="module")
def tokenizers():
    from tests.fusers.conftest import bpe_tokenizer, corpus, unigram_tokenizer

    code, docs = corpus()
    texts = [code[:20_000], docs[:20_000]]
    return bpe_tokenizer(texts, 300), unigram_tokenizer(texts, 200), texts


def test_count_corpus_equals_chunk_by_chunk_and_feeds_map_distribution(tokenizers) -> None:
    from fusers.align import surface_vocab_map
    from fusers.distill import ChunkEncoder, TextChunk

    bpe, uni, texts = tokenizers
    chunks = [TextChunk(0, texts[0][:600], True), TextChunk(0, texts[0][600:1300], False),
              TextChunk(1, texts[1][:800], True)]
    pivot, source = ChunkEncoder(bpe), ChunkEncoder(uni)
    counts, alignments = count_corpus(pivot, source, chunks, keep_alignments=True)
    assert isinstance(counts, CoAlignmentCounts) and len(alignments) == len(chunks)
    assert counts.shape == (len(bpe), len(uni))
    manual = CoAlignmentCounts(len(bpe), len(uni))
    for chunk, kept in zip(chunks, alignments, strict=True):
        p_tz, s_tz = pivot.encode(chunk), source.encode(chunk)
        a = align_sequences(p_tz, s_tz, mode="offsets")
        np.testing.assert_array_equal(kept.indptr, a.indptr)
        np.testing.assert_array_equal(kept.indices, a.indices)
        manual.add_alignment(a, p_tz.ids, s_tz.ids)
    for x, y in zip(counts.items(), manual.items(), strict=True):
        np.testing.assert_array_equal(x, y)
    assert counts[bpe.eos_token_id, uni.eos_token_id] == 2  # two document starts: EOS ↔ EOS
    only = count_corpus(pivot, source, chunks[:1], mode="dtw_ed")
    assert isinstance(only, CoAlignmentCounts) and only.nnz > 0

    for weighting in ("frequency", "reference"):
        vm = ms_vocab_map(counts, uni, bpe, weighting=weighting, source_width=len(uni) + 4, pivot_width=len(bpe))
        assert len(vm.ids) == len(uni) + 4 and vm.ids[: len(uni)].min() >= 0 and vm.ids.max() < len(bpe)
        assert vm.ids[uni.eos_token_id] == bpe.eos_token_id
        for piece, sid in uni.get_vocab().items():  # exact: the marker-swapped piece is a pivot piece
            key = piece.replace("▁", "Ġ")
            assert vm.exact[sid] == (key in bpe.get_vocab())
            if vm.exact[sid]:
                assert vm.ids[sid] == bpe.get_vocab()[key]
        # the counted alignment moves a distribution through the map like any VocabMap
        p_tz, s_tz = pivot.encode(chunks[0]), source.encode(chunks[0])
        rng = np.random.default_rng(0)
        topk_ids = rng.integers(0, len(uni), size=(len(s_tz), 4))
        topk_logits = np.sort(rng.normal(size=(len(s_tz), 4)), axis=1)[:, ::-1]
        out = map_distribution(alignments[0], p_tz, s_tz, topk_ids, topk_logits, vm, base_width=len(bpe))
        assert out.ids.shape == (len(p_tz), 4) and out.ids.max() < len(bpe)
        surf = surface_vocab_map(vm, uni, bpe, len(bpe))
        assert surf.exact.sum() >= vm.exact.sum()


def test_count_corpus_tokenization_pairs_with_hand_tokenizations() -> None:
    # the add_alignment contract on a hand-made pair: '▁the▁cat' vs 'Ġthe', 'Ġc', 'at'
    base = Tokenization(["▁the", "▁cat"], SP, ids=np.array([3, 4]), dummy_prefix=False)
    source = Tokenization(["Ġthe", "Ġc", "at"], BL, ids=np.array([7, 8, 9]))
    a = align_sequences(base, source)
    counts = CoAlignmentCounts(5, 10)
    counts.add_alignment(a, base.ids, source.ids)
    assert counts.to_dense()[3].tolist() == [0] * 7 + [1, 0, 0]
    assert counts.to_dense()[4].tolist() == [0] * 8 + [1, 1]
