"""Tests for fusers/align/: marker table, sequence alignment, MinED vocab map, distribution mapping.

Real tiny tokenizers are trained in fixtures (a few KB of text, well under a second each):

* ``bl``  byte-level BPE, GPT-2 style ('Ġ' word marker, 'Ċ' newline, digits kept in runs);
* ``sp``  SentencePiece-style BPE: '▁' marker via a Prepend/Replace normalizer, digits split one by one,
  ``byte_fallback`` with '<0xNN>' pieces, trained without newlines or CJK so those become bytes;
* ``uni`` Unigram with a Metaspace pre-tokenizer (no byte fallback: unknown characters are '<unk>').

Exact-behaviour pins (DTW path, vocab map) compare against plain pure-Python loops written here from the
spec, independently of the vectorised implementation.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Levenshtein

from fusers.align import (
    EMPTY,
    FALLBACK,
    FUSELLM_REFERENCE,
    MAPPED,
    Alignment,
    Tokenization,
    TokenizerSpec,
    VocabMap,
    align_sequences,
    compat_set,
    detect_spec,
    dtw_align,
    dtw_from_cost,
    edit_distance_matrix,
    map_distribution,
    vocab_map,
    vocab_map_for_tokenizers,
)
from fusers.align.spec import _spec_from_vocab
from fusers.common import target_width

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
WORDS = ("the answer is forty two and the question is what hello world print return value function class "
         "import numbers tokens alignment fusion model source base vocabulary 2024 12 345").split()

BL = TokenizerSpec.of_kind("byte_level", special_tokens=frozenset(SPECIALS), bos_token="<s>", eos_token="</s>")
SP = TokenizerSpec.of_kind("metaspace", byte_fallback=True, special_tokens=frozenset(SPECIALS), bos_token="<s>",
                           eos_token="</s>")
PLAIN = TokenizerSpec.of_kind("plain", special_tokens=frozenset(SPECIALS), bos_token="<s>", eos_token="</s>")


# ------------------------------------------------------------------------------------------------ fixtures


def _corpus() -> str:
    rng = random.Random(0)
    lines = []
    for _ in range(300):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 10))]
        if rng.random() < 0.5:
            words.append(str(rng.randint(0, 99999)))
        lines.append(" ".join(words))
    return "\n".join(lines) + "\n"


def _wrap(tok, bos_eos: bool):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    if bos_eos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                           special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def _byte_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_corpus()], trainer)
    return tok


def _sp_bpe():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Digits(individual_digits=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator([_corpus().replace("\n", " ")], trainer)
    cfg = json.loads(tok.to_str())  # add the 256 byte pieces as ordinary vocabulary entries, like Llama
    for b in range(256):
        cfg["model"]["vocab"].setdefault(f"<0x{b:02X}>", len(cfg["model"]["vocab"]))
    return Tokenizer.from_str(json.dumps(cfg))


def _unigram():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace("▁", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(vocab_size=200, unk_token="<unk>", special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator([_corpus()], trainer)
    return tok


@pytest.fixture(scope="module")
def toks() -> dict:
    """name -> transformers tokenizer; the ``+`` variants add BOS/EOS when encoding."""
    raw = {"bl": _byte_bpe(), "sp": _sp_bpe(), "uni": _unigram()}
    out = {name: _wrap(tok, False) for name, tok in raw.items()}
    for name, tok in raw.items():
        from tokenizers import Tokenizer

        out[name + "+"] = _wrap(Tokenizer.from_str(tok.to_str()), True)
    return out


def tz(pieces: list[str], spec: TokenizerSpec, **kw) -> Tokenization:
    """A hand-made tokenization; ids are the positions unless given."""
    kw.setdefault("ids", np.arange(len(pieces)))
    return Tokenization(list(pieces), spec, **kw)


# ------------------------------------------------------------------------------------------------ plain oracles


def plain_dtw(src: list[str], base: list[str], order: tuple[str, str, str]) -> list[list[int]]:
    """FuseLLM others.py::dtw(blending, base) as a double loop, returning base_to_blending."""
    m, n = len(src), len(base)
    d = [[math.inf] * (n + 1) for _ in range(m + 1)]
    d[0][0] = 0.0
    for j in range(m):
        for i in range(n):
            d[j + 1][i + 1] = Levenshtein.distance(src[j], base[i]) + min(d[j][i + 1], d[j + 1][i], d[j][i])
    d = [row[1:] for row in d[1:]]
    j, i = m - 1, n - 1
    out: list[list[int]] = [[] for _ in range(n)]
    while j > 0 or i > 0:
        out[i].append(j)
        opts = {"diag": d[j - 1][i - 1] if j > 0 and i > 0 else math.inf,
                "up": d[j - 1][i] if j > 0 else math.inf,
                "left": d[j][i - 1] if i > 0 else math.inf}
        move = order[int(np.argmin([opts[o] for o in order]))]
        j, i = (j - 1, i - 1) if move == "diag" else (j - 1, i) if move == "up" else (j, i - 1)
    out[0].append(0)
    return [sorted(x) for x in out]


def plain_vocab_map(src: dict[str, int], base: dict[str, int], sm: str, bm: str) -> dict[str, str]:
    """FuseLLM vocab_mapping.py (default): keyed by the marker-replaced source string."""
    base_tokens = list(base)
    out = {}
    for x in src:
        x2 = x.replace(sm, bm) if sm else x
        out[x2] = x2 if x2 in base else min(((y, Levenshtein.distance(x2, y)) for y in base_tokens),
                                            key=lambda d: d[1])[0]
    return out


def plain_rows(alignment, base, source, topk_ids, topk_logits, vmap, *, collision, fallback, one_to_many):
    """A loop version of the mapping, only for the ``match="surface"`` decision taken from the module."""
    from fusers.align.distribution import _match_single

    rows = []
    n = len(base)
    for i in range(n):
        js = alignment[i].tolist()
        use = None
        if len(js) == 1 and _match_single(base, source, i, js[0], vmap, None, "surface"):
            use = js[0]
        elif len(js) > 1 and one_to_many == "last" and base.surfaces[i] and \
                b"".join(source.surfaces[j] for j in js) == base.surfaces[i]:
            use = js[-1]
        if use is None:
            fb = base.ids[i] if fallback == "current" else base.ids[min(i + 1, n - 1)]
            rows.append([(int(fb), 1.0)])
            continue
        acc: dict[int, float] = {}
        for c in sorted(range(len(topk_ids[use])), key=lambda c: -topk_logits[use][c]):
            v, z = topk_ids[use][c], topk_logits[use][c]
            if v < 0 or z == -np.inf or vmap[v] < 0:
                continue
            t = int(vmap[v])
            if t not in acc:
                acc[t] = z
            elif collision == "sum":
                acc[t] = float(np.logaddexp(acc[t], z))
        rows.append(sorted(acc.items(), key=lambda kv: -kv[1]))
    return rows


# ------------------------------------------------------------------------------------------------ 1. marker table


def test_detect_spec_from_backend(toks) -> None:
    bl, sp, uni = detect_spec(toks["bl"]), detect_spec(toks["sp"]), detect_spec(toks["uni"])
    assert (bl.kind, bl.marker, bl.newline, bl.byte_fallback, bl.prefix_space) == ("byte_level", "Ġ", "Ċ", False, False)
    assert (sp.kind, sp.marker, sp.newline, sp.byte_fallback, sp.prefix_space) == ("metaspace", "▁", "<0x0A>", True, True)
    assert (uni.kind, uni.marker, uni.byte_fallback, uni.prefix_space) == ("metaspace", "▁", False, True)
    assert {"<s>", "</s>", "<unk>", "<pad>"} <= bl.special_tokens
    assert bl.role("<s>") == "bos" and sp.role("</s>") == "eos" and sp.role("the") is None


def test_detect_spec_wordpiece_is_plain() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece({"[UNK]": 0, "hel": 1, "##lo": 2, "world": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    spec = detect_spec(PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]"))
    assert (spec.kind, spec.marker, spec.continuation_prefix) == ("plain", "", "##")
    assert spec.surface("##lo") == b"lo" and spec.surface("world") == b"world"


def test_spec_from_vocab_without_backend() -> None:
    assert _spec_from_vocab({"Ġthe": 0, "Ċ": 1, "a": 2}).kind == "byte_level"
    sp = _spec_from_vocab({"▁the": 0, "<0x0A>": 1, "a": 2})
    assert (sp.kind, sp.byte_fallback, sp.prefix_space) == ("metaspace", True, True)
    assert _spec_from_vocab({"the": 0}).kind == "plain"


def test_surfaces_mean_the_same_text() -> None:
    assert BL.surface("Ċ") == SP.surface("<0x0A>") == b"\n"
    assert BL.surface("Ġthe") == SP.surface("▁the") == b" the"
    assert BL.surface("æĹ¥") == "日".encode()  # three bytes of one CJK character
    assert BL.surface("<s>") == SP.surface("</s>") == b""  # special tokens carry no text
    assert PLAIN.surface("Ġthe") == "Ġthe".encode()  # no marker: taken literally
    assert BL.strip_marker("ĠtheĠ") == "the" and SP.replace_marker("▁x", BL) == "Ġx"


TEXTS = ["the answer is 12345\nhello world", "日本語 the answer\n\n  two", " leading space", "x", "a1b22c333"]


@pytest.mark.parametrize("name", ["bl", "sp", "bl+", "sp+"])
@pytest.mark.parametrize("text", TEXTS)
def test_surfaces_join_to_the_decoded_text(toks, name: str, text: str) -> None:
    tok = toks[name]
    t = Tokenization.from_text(tok, text, add_special_tokens=True)
    assert b"".join(t.surfaces).decode() == tok.decode(t.ids.tolist(), skip_special_tokens=True)


# ------------------------------------------------------------------------------------------------ 2. offsets alignment


def test_offsets_one_to_one_and_one_to_many_and_first_token_prefix() -> None:
    # SentencePiece adds a dummy prefix space to the first word, byte-level BPE does not: '▁the' ↔ 'the'.
    base = tz(["▁the", "▁answer"], SP)
    src = tz(["the", "Ġans", "wer"], BL)
    al = align_sequences(base, src)
    assert al.to_lists() == [[0], [1, 2]]
    assert al.cases().tolist() == [0, 2]  # 1-1, one-to-many
    assert al.is_monotone() and al.covers_source()


def test_offsets_many_to_one() -> None:
    al = align_sequences(tz(["▁hel", "lo", "▁x"], SP), tz(["hello", "Ġx"], BL))
    assert al.to_lists() == [[0], [0], [1]]
    assert al.cases().tolist() == [1, 1, 0]


def test_offsets_empty_pieces() -> None:
    # '▁' alone at the start is only the dummy prefix: an empty surface, anchored to the word it precedes;
    # an empty piece in the middle is anchored to the token containing its point.
    base = tz(["▁", "x", "▁y"], SP)
    assert base.surfaces == [b"", b"x", b" y"]
    assert align_sequences(base, tz(["x", "Ġy"], BL)).to_lists() == [[0], [0], [1]]
    src = tz(["x", "", "Ġy"], PLAIN)  # plain spec: 'Ġ' is a literal character, not a space
    base2 = tz(["x", "Ġy"], PLAIN)
    al = align_sequences(base2, src)
    assert al.to_lists() == [[0], [1, 2]] and al.covers_source()


def test_offsets_newline_bytes_vs_byte_level() -> None:
    al = align_sequences(tz(["▁a", "<0x0A>", "b"], SP), tz(["a", "Ċ", "b"], BL))
    assert al.to_lists() == [[0], [1], [2]]


def test_offsets_digits_split_vs_grouped() -> None:
    split = tz(["▁", "1", "2", "3", "4", "5"], SP)  # Llama: one digit per token
    grouped = tz(["123", "45"], BL)  # GPT-2 style runs
    assert align_sequences(split, grouped).to_lists() == [[0], [0], [0], [0], [1], [1]]
    assert align_sequences(grouped, split).to_lists() == [[0, 1, 2, 3], [4, 5]]


def test_offsets_cjk_split_across_byte_level_tokens() -> None:
    # '日' is 3 UTF-8 bytes: 2 + 1 in the byte-level tokenization, 3 byte-fallback pieces on the other side.
    bl = tz(["æĹ", "¥", "Ġthe"], BL)
    sp_bytes = tz(["▁", "<0xE6>", "<0x97>", "<0xA5>", "▁the"], SP)
    sp_char = tz(["▁日", "▁the"], SP)
    assert align_sequences(sp_bytes, bl).to_lists() == [[0], [0], [0], [1], [2]]
    assert align_sequences(bl, sp_bytes).to_lists() == [[0, 1, 2], [3], [4]]
    assert align_sequences(sp_char, bl).to_lists() == [[0, 1], [2]]


def test_offsets_bos_eos(toks) -> None:
    text = "hello world"
    b_se = Tokenization.from_text(toks["sp+"], text, add_special_tokens=True)
    s_se = Tokenization.from_text(toks["bl+"], text, add_special_tokens=True)
    s_plain = Tokenization.from_text(toks["bl"], text)
    al = align_sequences(b_se, s_se)
    assert al[0].tolist() == [0] and al[len(b_se) - 1].tolist() == [len(s_se) - 1]  # BOS↔BOS, EOS↔EOS
    al2 = align_sequences(b_se, s_plain)  # source has no BOS/EOS: they join the first / last word
    assert al2[0].tolist() == [0] and al2[len(b_se) - 1].tolist() == [len(s_plain) - 1]
    al3 = align_sequences(Tokenization.from_text(toks["sp"], text), s_se)  # only the source has them
    assert al3.covers_source() and al3[0].tolist()[0] == 0 and al3[len(al3) - 1].tolist()[-1] == len(s_se) - 1


@pytest.mark.parametrize("pair", [("sp", "bl"), ("bl", "sp"), ("uni", "bl"), ("sp+", "bl")])
def test_offsets_from_hf_offsets_agree_with_surfaces(toks, pair) -> None:
    for text in TEXTS[:3] + ["return value 2024\n\tclass"]:
        b = Tokenization.from_text(toks[pair[0]], text, add_special_tokens=True)
        s = Tokenization.from_text(toks[pair[1]], text, add_special_tokens=True)
        b2 = Tokenization.from_ids(toks[pair[0]], b.ids)  # no offsets, no text: spans from surfaces
        s2 = Tokenization.from_ids(toks[pair[1]], s.ids)
        if any(b"".join(t.surfaces) != text.encode() for t in (b, s)):
            continue  # '<unk>' or a lossy dummy prefix: only the offsets know where those bytes are
        assert align_sequences(b, s).to_lists() == align_sequences(b2, s2).to_lists(), text


def test_real_tokenizers_cjk_and_digits_pinned(toks) -> None:
    b = Tokenization.from_text(toks["sp"], "日本 12345")
    s = Tokenization.from_text(toks["bl"], "日本 12345")
    al = align_sequences(b, s)
    # every byte-fallback piece of 日本 lines up with the byte-level token holding the same byte
    for i, piece in enumerate(b.pieces):
        if piece.startswith("<0x"):
            (j,) = al[i].tolist()
            assert b.surfaces[i] in s.surfaces[j]
    assert al.is_monotone() and al.covers_source()


_ALPHABET = "ab \n1日é"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=_ALPHABET, min_size=1, max_size=30), names=st.sampled_from(
    [("sp", "bl"), ("bl", "sp"), ("uni", "bl"), ("sp+", "bl+"), ("bl+", "uni"), ("sp", "bl+")]))
def test_offsets_properties_on_real_tokenizers(toks, text: str, names) -> None:
    b = Tokenization.from_text(toks[names[0]], text, add_special_tokens=True)
    s = Tokenization.from_text(toks[names[1]], text, add_special_tokens=True)
    if len(b) == 0 or len(s) == 0:
        return
    al = align_sequences(b, s)
    assert len(al) == len(b) and (al.counts() >= 1).all()
    assert al.is_monotone() and al.covers_source()


@st.composite
def segmentations(draw):
    """Two random segmentations of one random string, with empty and special pieces sprinkled in."""
    text = draw(st.text(alphabet="abc ", min_size=0, max_size=20))

    def cut() -> list[str]:
        cuts = sorted(draw(st.sets(st.integers(1, max(len(text) - 1, 1)), max_size=len(text))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) if a < b or not text]
        for _ in range(draw(st.integers(0, 3))):
            pieces.insert(draw(st.integers(0, len(pieces))), draw(st.sampled_from(["", "<s>", "</s>"])))
        return pieces or ["<s>"]

    return cut(), cut()


@settings(max_examples=200, deadline=None)
@given(segs=segmentations())
def test_offsets_properties_on_random_segmentations(segs) -> None:
    base, src = tz(segs[0], PLAIN), tz(segs[1], PLAIN)
    al = align_sequences(base, src)
    assert (al.counts() >= 1).all() and al.is_monotone() and al.covers_source()
    # any two non-empty tokens that share a byte are aligned
    b_end = np.cumsum([len(x) for x in base.surfaces])
    s_end = np.cumsum([len(x) for x in src.surfaces])
    b_start, s_start = b_end - [len(x) for x in base.surfaces], s_end - [len(x) for x in src.surfaces]
    for i in range(len(base)):
        for j in range(len(src)):
            if max(b_start[i], s_start[j]) < min(b_end[i], s_end[j]):
                assert j in al[i].tolist()


SPU = TokenizerSpec.of_kind("metaspace", byte_fallback=True, special_tokens=frozenset([*SPECIALS]), unk_token="<unk>",
                            bos_token="<s>", eos_token="</s>")


def _byte_level_pieces(text: str, rnd: random.Random) -> list[str]:
    from fusers.align.spec import _BYTE_ENCODER

    data = text.encode()
    cuts = sorted(rnd.sample(range(1, len(data)), rnd.randint(0, len(data) - 1))) if len(data) > 1 else []
    return ["".join(_BYTE_ENCODER[b] for b in data[a:z]) for a, z in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def _sentencepiece_pieces(text: str, rnd: random.Random) -> list[str]:
    marked = "▁" + text.replace(" ", "▁")
    out: list[str] = []
    k = 0
    while k < len(marked):
        chunk = marked[k : k + rnd.randint(1, 4)]
        k += len(chunk)
        if rnd.random() < 0.5 and any(ord(c) > 127 and c != "▁" for c in chunk):  # byte fallback
            for c in chunk:
                out += [f"<0x{b:02X}>" for b in c.encode()] if ord(c) > 127 and c != "▁" else [c]
        else:
            out.append(chunk)
    return [("<unk>" if rnd.random() < 0.15 else p) for p in out]


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="ab 日é\n", min_size=1, max_size=12), rnd=st.randoms(use_true_random=False),
       swap=st.booleans(), texts=st.tuples(st.booleans(), st.booleans()))
def test_offsets_properties_on_random_byte_level_and_sentencepiece(text, rnd, swap, texts) -> None:
    """Real-looking pieces: CJK split across bytes, '<0xNN>' fallback, '<unk>', BOS/EOS/empty pieces
    anywhere, with or without the text (then spans come from a byte diff against it)."""
    def sprinkle(pieces: list[str]) -> list[str]:
        for _ in range(rnd.randint(0, 2)):
            pieces.insert(rnd.choice([0, len(pieces), rnd.randint(0, len(pieces))]), rnd.choice(["<s>", "</s>", ""]))
        return pieces

    b = Tokenization(sprinkle(_sentencepiece_pieces(text, rnd)), SPU, text=text if texts[0] else None)
    s = Tokenization(sprinkle(_byte_level_pieces(text, rnd)), BL, text=text if texts[1] else None)
    if swap:
        b, s = s, b
    al = align_sequences(b, s)
    assert (al.counts() >= 1).all() and al.is_monotone() and al.covers_source()
    banded = align_sequences(b, s, "dtw_ed_banded", band=rnd.randint(0, 3))
    assert (banded.counts() >= 1).all() and banded.is_monotone() and banded.covers_source()


# ------------------------------------------------------------------------------------------------ 2b. DTW


ORDERS = {"fusellm": ("diag", "up", "left"), "fusechat": ("diag", "left", "up")}
_piece = st.text(alphabet="abĠ", max_size=3)


@settings(max_examples=300, deadline=None)
@given(src=st.lists(_piece, min_size=1, max_size=9), base=st.lists(_piece, min_size=1, max_size=9),
       order=st.sampled_from(sorted(ORDERS)))
def test_dtw_equals_plain_dp(src, base, order) -> None:
    al = dtw_align(base, src, order)
    assert al.to_lists() == plain_dtw(src, base, ORDERS[order])
    assert al.is_monotone() and al.covers_source() and (al.counts() >= 1).all()


def test_dtw_tie_orders_differ() -> None:
    src, base = ["a", "b", "a"], ["b", "a", "b"]
    assert dtw_align(base, src, "fusellm").to_lists() == [[0], [0], [1, 2]] == plain_dtw(src, base, ORDERS["fusellm"])
    assert dtw_align(base, src, "fusechat").to_lists() == [[0, 1], [2], [2]] == plain_dtw(src, base, ORDERS["fusechat"])
    with pytest.raises(ValueError):
        dtw_align(base, src, ("diag", "up", "up"))


def test_dtw_from_cost_and_edit_distance_matrix() -> None:
    src, base = ["ab", "b", "", "abc"], ["a", "abc", "b"]
    cost = edit_distance_matrix(src, base)
    assert cost.tolist() == [[Levenshtein.distance(x, y) for y in base] for x in src]
    assert dtw_from_cost(cost).to_lists() == plain_dtw(src, base, ORDERS["fusellm"])
    assert dtw_from_cost(cost.astype(float), "fusechat").to_lists() == plain_dtw(src, base, ORDERS["fusechat"])
    with pytest.raises(ValueError, match="integers"):
        dtw_from_cost(cost + 0.5)  # the row recurrence is exact only for integer costs
    with pytest.raises(ValueError):
        dtw_from_cost(-cost)


def test_dtw_strips_markers_of_each_side(toks) -> None:
    text = "the answer is 12345\nhello world and the question"
    b = Tokenization.from_text(toks["sp"], text)
    s = Tokenization.from_text(toks["bl"], text)
    al = align_sequences(b, s, "dtw_ed")
    strip_b = [p.replace("▁", "") for p in b.pieces]
    strip_s = [p.replace("Ġ", "") for p in s.pieces]
    assert al.to_lists() == plain_dtw(strip_s, strip_b, ORDERS["fusellm"])
    assert align_sequences(b, s, "dtw_ed", tie_order="fusechat").to_lists() == \
        plain_dtw(strip_s, strip_b, ORDERS["fusechat"])


def test_dtw_banded(toks) -> None:
    text = "the answer is forty two\nand the question is what 2024 hello world " * 3
    b = Tokenization.from_text(toks["sp+"], text, add_special_tokens=True)
    s = Tokenization.from_text(toks["bl"], text)
    full = align_sequences(b, s, "dtw_ed")
    assert align_sequences(b, s, "dtw_ed_banded", band=len(b) + len(s)).to_lists() == full.to_lists()
    narrow = align_sequences(b, s, "dtw_ed_banded", band=1)
    assert narrow.is_monotone() and narrow.covers_source() and (narrow.counts() >= 1).all()


def test_align_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        align_sequences(tz([], BL), tz(["a"], BL))
    with pytest.raises(ValueError):
        align_sequences(tz(["a"], BL), tz(["a"], BL), "nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        align_sequences(tz(["a"], BL, text="a", offsets=[[0, 1]]), tz(["b"], BL, text="b", offsets=[[0, 1]]))


# ------------------------------------------------------------------------------------------------ 3. vocab map


@pytest.mark.parametrize("pair", [("bl", "sp"), ("uni", "bl")])
def test_vocab_map_equals_plain_loop_on_real_vocabs(toks, pair) -> None:
    src_tok, base_tok = toks[pair[0]], toks[pair[1]]
    sm, bm = detect_spec(src_tok).marker, detect_spec(base_tok).marker
    src_vocab, base_vocab = src_tok.get_vocab(), base_tok.get_vocab()  # the reference's dict order
    ref = plain_vocab_map(src_vocab, base_vocab, sm, bm)
    vm = vocab_map(src_vocab, base_vocab, source_marker=sm, base_marker=bm)
    expect = np.full(len(src_tok), -1)
    for piece, sid in src_vocab.items():
        expect[sid] = base_vocab[ref[piece.replace(sm, bm) if sm else piece]]
    assert np.array_equal(vm.ids, expect)
    assert vm.by_string is None
    by_id = vocab_map_for_tokenizers(src_tok, base_tok)  # id order: also the plain loop in that order
    ordered = dict(sorted(base_vocab.items(), key=lambda kv: kv[1]))
    ref_id = plain_vocab_map(src_vocab, ordered, sm, bm)
    assert all(by_id.ids[sid] == base_vocab[ref_id[p.replace(sm, bm) if sm else p]] for p, sid in src_vocab.items())


@settings(max_examples=150, deadline=None)
@given(src=st.lists(st.text(alphabet="abĠ▁", max_size=5), min_size=1, max_size=12, unique=True),
       base=st.lists(st.text(alphabet="ab▁c", max_size=5), min_size=1, max_size=12, unique=True))
def test_vocab_map_equals_plain_loop_random(src, base) -> None:
    ref = plain_vocab_map({p: i for i, p in enumerate(src)}, {p: i for i, p in enumerate(base)}, "Ġ", "▁")
    vm = vocab_map(src, base, source_marker="Ġ", base_marker="▁")
    assert [base[k] for k in vm.ids.tolist()] == [ref[p.replace("Ġ", "▁")] for p in src]


def test_vocab_map_marker_replacement_exact_and_first_minimum() -> None:
    base = ["▁thx", "▁the", "▁tha", "<0x0A>", "x"]
    vm = vocab_map(["Ġthe", "Ġthz", "Ċ", "<s>"], base, source_marker="Ġ", base_marker="▁")
    assert vm.ids.tolist() == [1, 0, 4, 4]  # exact; first of three at distance 1; arbitrary; 'x' at 3
    assert vm.exact.tolist() == [True, False, False, False]
    assert vm.hard_ids.tolist() == [1, -1, -1, -1]
    assert vm.lookup("▁the") == 1 and vm.lookup("nope") == -1


def test_vocab_map_widths() -> None:
    vm = vocab_map({"a": 0, "b": 1}, ["a", "b", "c"], source_marker="", base_marker="", source_width=4, base_width=1)
    assert vm.ids.tolist() == [0, 0, -1, -1]  # logit rows without a piece map nowhere; base id ≥ 1 is no candidate
    with pytest.raises(ValueError):
        vocab_map({"a": 5}, ["a"], source_marker="", base_marker="", source_width=3)


def test_q12_default_is_id_array_compat_keys_by_string(toks) -> None:
    src_vocab, base_vocab = toks["bl"].get_vocab(), toks["sp"].get_vocab()
    default = vocab_map(src_vocab, base_vocab, source_marker="Ġ", base_marker="▁")
    compat = vocab_map(src_vocab, base_vocab, source_marker="Ġ", base_marker="▁", reference_compat="q12")
    assert default.by_string is None and default.ids.dtype.kind == "i"
    assert compat.by_string == plain_vocab_map(src_vocab, base_vocab, "Ġ", "▁")  # the reference's structure
    assert len(compat.by_string) == len(src_vocab)  # no collisions on this small vocabulary
    assert np.array_equal(default.ids, compat.ids)


# ------------------------------------------------------------------------------------------------ 4. distributions


def _toy():
    """Base '▁the ▁answer ▁is' (ids 10, 11, 12) vs source 'the', 'Ġans', 'wer', 'Ġis' (ids 0..3)."""
    base = tz(["▁the", "▁answer", "▁is"], SP, ids=[10, 11, 12])
    src = tz(["the", "Ġans", "wer", "Ġis"], BL, ids=[0, 1, 2, 3])
    vmap = np.array([10, 20, 21, 12, -1, 11, 22])  # source id -> base id (4: not in base vocab)
    return base, src, vmap


def test_map_one_to_one_and_one_to_many_last_token() -> None:
    base, src, vmap = _toy()
    al = align_sequences(base, src)
    assert al.to_lists() == [[0], [1, 2], [3]]
    ids = np.array([[5, 4, 0], [1, 2, 3], [3, 6, 5], [0, 1, 2]])
    logits = np.array([[3.0, 2.0, 1.0], [1.0, 0.5, 0.0], [2.0, 1.0, 0.5], [0.0, -1.0, -2.0]])
    out = map_distribution(al, base, src, ids, logits, vmap)
    assert out.row(0) == [(11, 3.0), (10, 1.0)]  # id 4 has no base token: dropped
    assert out.row(1) == [(12, 2.0), (22, 1.0), (11, 0.5)]  # 'ans'+'wer' == 'answer': last source token
    assert out.row(2) == [(10, 0.0), (20, -1.0), (21, -2.0)]
    assert out.status.tolist() == [MAPPED] * 3 and out.source.tolist() == [0, 2, 3]
    assert out.ids.dtype == np.int32 and out.logits.dtype == np.float32 and out.ids.shape == (3, 3)
    ref = map_distribution(al, base, src, ids, logits, vmap, one_to_many="fallback")
    assert ref.row(1) == [(12, 1.0)] and ref.status[1] == FALLBACK  # reference: one-to-many → one-hot


def test_q5_collisions_sum_by_default_first_in_compat() -> None:
    base, src, vmap = _toy()
    al = Alignment.from_lists([[0], [1, 2], [3]], 4)
    ids = np.array([[0, 1, 3], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    vm = vmap.copy()
    vm[1] = 10  # source ids 0 and 1 both land on base id 10
    logits = np.array([[np.log(0.5), np.log(0.3), np.log(0.2)]] + [[0.0, 0.0, 0.0]] * 3)
    summed = map_distribution(al, base, src, ids, logits, vm)
    assert [t for t, _ in summed.row(0)] == [10, 12]
    assert summed.row(0)[0][1] == pytest.approx(np.log(0.8), rel=1e-6)  # mass summed: logsumexp
    first = map_distribution(al, base, src, ids, logits, vm, reference_compat="q5")
    assert first.row(0)[0] == (10, pytest.approx(np.log(0.5)))  # reference: keep the first, drop the mass
    assert first.row(0) == map_distribution(al, base, src, ids, logits, vm, collision="first").row(0)


def test_q1_fallback_next_by_default_current_in_compat() -> None:
    base = tz(["▁a", "▁b", "▁c"], SP, ids=[5, 6, 7])
    src = tz(["x", "Ġy", "Ġz"], BL, ids=[0, 1, 2])
    al = Alignment.from_lists([[0], [1], [2]], 3)
    vmap = np.array([0, 1, 2])  # nothing maps to the base ids at the aligned positions: all unmatched
    ids, logits = np.zeros((3, 2), dtype=np.int64), np.zeros((3, 2))
    nxt = map_distribution(al, base, src, ids, logits, vmap)
    assert nxt.ids[:, 0].tolist() == [6, 7, 7]  # row i predicts i+1; the last repeats itself
    assert (nxt.status == FALLBACK).all() and (nxt.source == -1).all() and nxt.logits[0, 0] == 1.0
    cur = map_distribution(al, base, src, ids, logits, vmap, reference_compat="q1")
    assert cur.ids[:, 0].tolist() == [5, 6, 7]  # FuseLLM: the token already in the input
    assert map_distribution(al, base, src, ids, logits, vmap, fallback="current").ids[:, 0].tolist() == [5, 6, 7]


def test_first_token_prefix_space_match_surface_and_reference() -> None:
    base = tz(["▁Hello", "▁world"], SP, ids=[3, 4])
    src = tz(["Hello", "Ġworld"], BL, ids=[0, 1])
    vmap = np.array([9, 4])  # MinED maps 'Hello' somewhere else (it is not a base piece)
    al = align_sequences(base, src)
    ids, logits = np.array([[1], [1]]), np.array([[0.0], [0.0]])
    assert map_distribution(al, base, src, ids, logits, vmap).status.tolist() == [MAPPED, MAPPED]
    # the reference prepends the base marker to the first source token: '▁' + 'Hello' == '▁Hello'
    assert map_distribution(al, base, src, ids, logits, vmap, match="reference").status.tolist() == [MAPPED, MAPPED]
    later = tz(["▁x", "▁Hello"], SP, ids=[5, 3])  # not the first token: no such rule in the reference
    src2 = tz(["x", "Hello"], BL, ids=[2, 0])
    vm2 = np.array([9, 4, 5])
    st_ = map_distribution(Alignment.from_lists([[0], [1]], 2), later, src2, ids, logits, vm2, match="reference")
    assert st_.status.tolist() == [MAPPED, FALLBACK]


def test_newline_bytes_vs_byte_level_match() -> None:
    base = tz(["▁a", "<0x0A>"], SP, ids=[1, 2])
    src = tz(["a", "Ċ"], BL, ids=[0, 1])
    vmap = np.array([7, 8])  # MinED cannot relate 'Ċ' to '<0x0A>' (markers are not stripped)
    al = align_sequences(base, src)
    ids, logits = np.array([[0], [0]]), np.array([[0.0], [0.0]])
    assert map_distribution(al, base, src, ids, logits, vmap).status.tolist() == [MAPPED, MAPPED]
    ref = map_distribution(al, base, src, ids, logits, vmap, match="reference")
    assert ref.status.tolist() == [MAPPED, FALLBACK]  # '▁'+'a' == '▁a' (first token), 'Ċ' != '<0x0A>'


def test_bos_matches_bos_by_role() -> None:
    base = tz(["<s>", "▁a"], SP, ids=[1, 9])
    src = tz(["<s>", "a"], BL, ids=[100, 0])
    vmap = np.full(101, 5)
    out = map_distribution(align_sequences(base, src), base, src, np.array([[0], [0]]), np.zeros((2, 1)), vmap)
    assert out.status.tolist() == [MAPPED, MAPPED]


def test_empty_row_and_sorting_and_truncation() -> None:
    base, src, vmap = _toy()
    al = Alignment.from_lists([[0], [1, 2], [3]], 4)
    ids = np.array([[4, 4, 4], [0, 0, 0], [0, 1, 2], [2, 0, 1]])
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5, 2.0, 1.0]])
    out = map_distribution(al, base, src, ids, logits, vmap, k_out=2)
    assert out.status[0] == EMPTY and out.row(0) == []  # aligned, but no entry has a base token
    assert out.row(2) == [(10, 2.0), (20, 1.0)]  # walked highest first, truncated to k_out
    padded = map_distribution(al, base, src, np.array([[0, -1]] * 4), np.array([[1.0, -np.inf]] * 4), vmap)
    assert padded.row(2) == [(10, 1.0)]  # -1 / -inf input padding is ignored


def test_map_distribution_validates() -> None:
    base, src, vmap = _toy()
    al = align_sequences(base, src)
    with pytest.raises(ValueError, match="source_width"):
        map_distribution(al, base, src, np.full((4, 1), 50), np.zeros((4, 1)), vmap)
    with pytest.raises(ValueError):
        map_distribution(al, base, src, np.zeros((3, 1), dtype=int), np.zeros((3, 1)), vmap)
    with pytest.raises(ValueError, match="base_width"):
        map_distribution(al, base, src, np.zeros((4, 1), dtype=int), np.zeros((4, 1)), vmap, base_width=10)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), collision=st.sampled_from(["sum", "first"]),
       fallback=st.sampled_from(["next", "current"]), one_to_many=st.sampled_from(["last", "fallback"]))
def test_map_distribution_equals_loop(seed: int, collision: str, fallback: str, one_to_many: str) -> None:
    rng = np.random.default_rng(seed)
    segs_b = [["▁a", "b"], ["▁ab"], ["▁a", "b", "c"]][seed % 3]
    pieces_s = ["a", "b", "Ġc", "Ġab", "c"]
    base = tz(segs_b, SP, ids=rng.integers(0, 6, len(segs_b)))
    src = tz([pieces_s[k] for k in rng.integers(0, 5, 4)], BL, ids=rng.integers(0, 8, 4))
    lists = sorted({int(x) for x in rng.integers(0, 4, len(segs_b) + 2)})
    lists = [[j] for j in lists][: len(segs_b)]
    while len(lists) < len(segs_b):
        lists.append([3])
    lists[0] = sorted({*lists[0], 0, 1}) if seed % 2 else lists[0]
    al = Alignment.from_lists(lists, 4)
    vmap = rng.integers(-1, 6, 8)
    ids = rng.integers(-1, 8, (4, 5))
    logits = np.round(rng.normal(size=(4, 5)), 1)
    out = map_distribution(al, base, src, ids, logits, vmap, collision=collision, fallback=fallback,
                           one_to_many=one_to_many)
    expect = plain_rows(al, base, src, ids, logits, vmap, collision=collision, fallback=fallback,
                        one_to_many=one_to_many)
    for i, row in enumerate(expect):
        got, row = sorted(out.row(i)), sorted(row)
        assert [t for t, _ in got] == [t for t, _ in row], i
        assert [v for _, v in got] == pytest.approx([v for _, v in row], rel=1e-6), i


def test_fusellm_reference_preset() -> None:
    base, src, vmap = _toy()
    al = align_sequences(base, src)
    ids = np.array([[5, 4, 0], [1, 2, 3], [3, 6, 5], [0, 1, 2]])
    out = map_distribution(al, base, src, ids, np.zeros((4, 3)), vmap, **FUSELLM_REFERENCE)
    assert out.status.tolist() == [MAPPED, FALLBACK, MAPPED] and out.row(1) == [(11, 1.0)]  # current token


def test_q11_target_width() -> None:
    assert target_width(151936, 151646) == 151936  # the model's logit width
    assert target_width(320, 320, reference_compat="q11") == 320
    with pytest.raises(RuntimeError, match=r"shape '\[-1, 151936\]' is invalid"):
        target_width(151936, 151646, reference_compat={"q11"})


def test_compat_set() -> None:
    assert compat_set(None) == frozenset() and compat_set("q1") == {"q1"}
    assert len(compat_set("all")) == 13
    with pytest.raises(ValueError):
        compat_set({"q99"})


def test_vocab_map_type() -> None:
    vm = vocab_map(["a"], ["a"], source_marker="", base_marker="")
    assert isinstance(vm, VocabMap) and vm.ids.tolist() == [0]


def test_compiled_and_numpy_dtw_agree(monkeypatch):
    """The numba kernels and the pure-numpy fallback (used where numba is absent) give identical paths."""
    import random

    import fusers.align.dtw as dtw

    rng = random.Random(7)
    words = ["a", "ab", "abc", "b", "bc", "c", "", "x", "xy"]
    for _ in range(20):
        base = [rng.choice(words) for _ in range(rng.randint(1, 40))]
        source = [rng.choice(words) for _ in range(rng.randint(1, 40))]
        for tie in ("fusellm", "fusechat"):
            compiled = dtw.dtw_align(base, source, tie).to_lists()
            with monkeypatch.context() as m:
                m.setattr(dtw, "_compiled_cumulative", lambda: None)
                m.setattr(dtw, "_compiled_backtrack", lambda: None)
                fallback = dtw.dtw_align(base, source, tie).to_lists()
            assert compiled == fallback


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("collision", ["first", "sum"])
def test_compiled_row_mapping_equals_the_numpy_one(seed: int, collision: str) -> None:
    """The numba row kernel behind map_distribution against the whole-array numpy one, on rows with -1 ids,
    -inf and NaN logits, tied logits, unmapped ids and many entries colliding on one base id."""
    from fusers.align.distribution import _compiled_rows, _rows_numpy

    kernel = _compiled_rows()
    if kernel is None:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(seed)
    n_src, k, k_out, n_rows = 40, 10, 6, 60
    tids = rng.integers(-1, 30, (n_src, k))
    tlog = np.round(rng.normal(size=(n_src, k)), 1)  # rounded: ties
    tlog[rng.random((n_src, k)) < 0.1] = -np.inf
    tlog[rng.random((n_src, k)) < 0.05] = np.nan
    vmap = rng.integers(-1, 8, 30)  # few base ids: collisions; -1: unmapped
    rows = np.sort(rng.choice(100, n_rows, replace=False))
    src_rows = rng.integers(0, n_src, n_rows)
    outs = []
    for run in (kernel, None):
        ids = np.full((100, k_out), -1, dtype=np.int32)
        log = np.full((100, k_out), -np.inf, dtype=np.float32)
        status = np.full(100, FALLBACK, dtype=np.int8)
        if run is None:
            _rows_numpy(rows, src_rows, tids, tlog, vmap, collision, ids, log, status)
        else:
            run(rows, src_rows, tids, tlog, vmap, collision == "first", ids, log, status)
        outs.append((ids, log, status))
    (ids_c, log_c, status_c), (ids_n, log_n, status_n) = outs
    assert np.array_equal(ids_c, ids_n) and np.array_equal(status_c, status_n)
    assert np.allclose(log_c, log_n, rtol=1e-6, atol=0, equal_nan=False) or np.array_equal(log_c, log_n)
    assert set(status_c[rows].tolist()) <= {MAPPED, EMPTY}


def test_tokenization_fast_paths_equal_transformers(toks) -> None:
    """Tokenization.distinct codes every position by its piece (ids play no part: a hand-made tokenization may
    give one id two pieces); pieces_of equals convert_ids_to_tokens, unknown characters included; from_text,
    which encodes with the tokenizers backend directly, gives the ids, offsets and pieces of tokenizer(text),
    and goes through transformers when the backend has truncation set (which that call would switch off)."""
    from fusers.align.tokenization import pieces_of

    tz_ = Tokenization(["b", "a", "b", "c", "a"], TokenizerSpec.of_kind("byte_level"), ids=[7, 7, 8, 9, 7])
    strings, codes = tz_.distinct(str.upper)
    assert strings == ["B", "A", "C"] and codes.tolist() == [0, 1, 0, 2, 1]
    text = "héllo wörld 日本語 😀\t\n  x <s> " + "def f(x):\n    return x\n" * 3
    for tok in toks.values():
        for special in (False, True):
            enc = tok(text, add_special_tokens=special, return_offsets_mapping=True)
            got = Tokenization.from_text(tok, text, add_special_tokens=special)
            assert got.ids.tolist() == list(enc["input_ids"])
            assert got.offsets.tolist() == [list(o) for o in enc["offset_mapping"]]
            assert got.pieces == pieces_of(tok, enc["input_ids"]) == tok.convert_ids_to_tokens(enc["input_ids"])
    tok = toks["bl"]
    tok.backend_tokenizer.enable_truncation(max_length=3)
    try:
        assert len(Tokenization.from_text(tok, text)) == len(tok(text)["input_ids"]) > 3
    finally:
        tok.backend_tokenizer.no_truncation()
