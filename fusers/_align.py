"""Token and vocabulary alignment shared by the cross-tokenizer fusers (FuseLLM, FuseChat, Cool-Fusion).

Two models that tokenize the same text differently have to agree on *which position predicts what*
before one model's next-token distribution can teach the other. This module does that in three steps,
all of them written against the spec notes (``fusion-algorithms.md`` §2, quirks §11, costs §12):

1. **What a piece means.** :class:`TokenizerSpec` is a per-tokenizer marker table detected from the
   tokenizer's backend (pre-tokenizer, normalizer, decoder, model), never from its Python class: the
   reference keys markers on the class and so gets a Llama *fast* tokenizer wrong. It knows the
   word-start marker (``'Ġ'`` for byte-level BPE, ``'▁'`` for SentencePiece/Metaspace, none otherwise),
   how a newline is spelled (``'Ċ'`` / ``'<0x0A>'``), whether ``<0xNN>`` byte-fallback pieces exist and
   whether a dummy prefix space is added to the first word. :meth:`TokenizerSpec.surface` turns a piece
   into the bytes it stands for, so ``'Ċ'`` and ``'<0x0A>'`` both mean ``b"\\n"`` and ``'Ġthe'`` and
   ``'▁the'`` both mean ``b" the"``.

2. **Which positions correspond.** :func:`align_sequences` gives, for every base (target/pivot) position
   ``i``, the sorted source positions aligned to it (:class:`Alignment`, CSR arrays):

   * ``"offsets"`` (default, O(N+M)): a base token is aligned to every source token whose byte span of
     the shared text overlaps its own; zero-width tokens (BOS/EOS, empty pieces) are anchored by a
     documented rule (:func:`_overlap_alignment`).
   * ``"dtw_ed"``: the reference MinED DTW (FuseLLM ``others.py::dtw``, called as ``dtw(blending,
     base)``) with its greedy backtrack and tie order, bit-for-bit, but with a C edit distance over the
     *unique* pieces and a numpy row recurrence instead of a Python double loop (≈1.5 µs/cell in the
     reference, §12; ≈0.008 µs/cell here, see ``benchmarks/bench_align.py``).
   * ``"dtw_ed_banded"``: the same DP restricted to a band around the offsets alignment.

3. **What the source predicted, in base ids.** :func:`vocab_map` is the reference MinED vocabulary
   map (exact match after marker replacement, else the first minimum-edit-distance base piece in
   vocabulary order) as an id→id array, computed by a compiled search over length buckets with
   edit-distance lower bounds (numba; rapidfuzz in length buckets without it); it equals the plain
   O(|Vs|·|Vb|) loop exactly. :func:`map_distribution` moves per-position source top-k logits onto the
   base positions (1-1 / many-to-one / one-to-many / unmatched), with the corrected defaults and the
   reference behaviour behind switches.

Quirks (§11) handled here; each default is the corrected behaviour and ``reference_compat`` (a quirk
id, a set of them, or ``"all"``) restores the reference:

* **Q1** unmatched positions fall back to a one-hot on the NEXT base token (row ``i`` predicts
  ``i+1``); ``"q1"`` uses the current token like FuseLLM.
* **Q5** top-k entries that collide on one base id have their probability mass summed (logsumexp of
  the logits); ``"q5"`` (or ``collision="first"``) keeps the first, highest one only.
* **Q11** widths are the model's logit widths; ``"q11"`` in :func:`fusers.common.target_width` uses the
  tokenizer's width and fails like FuseAI issue #13 when they differ.
* **Q12** the vocabulary map is an id→id array; ``"q12"`` additionally builds the reference's
  dictionary keyed by the marker-replaced source string (:attr:`VocabMap.by_string`).
"""

from __future__ import annotations

import difflib
import functools
import itertools
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np

__all__ = [
    "QUIRKS",
    "MARKER_TABLE",
    "TIE_ORDERS",
    "FUSELLM_REFERENCE",
    "MAPPED",
    "FALLBACK",
    "EMPTY",
    "TokenizerSpec",
    "detect_spec",
    "Tokenization",
    "Alignment",
    "align_sequences",
    "dtw_align",
    "dtw_from_cost",
    "edit_distance_matrix",
    "VocabMap",
    "vocab_map",
    "vocab_map_for_tokenizers",
    "MappedTopK",
    "map_distribution",
    "compat_set",
]

# --------------------------------------------------------------------------------------------------
# Reference-compat switches
# --------------------------------------------------------------------------------------------------

QUIRKS: frozenset[str] = frozenset(f"q{i}" for i in range(1, 14))


def compat_set(reference_compat: str | Iterable[str] | None) -> frozenset[str]:
    """Normalise a ``reference_compat`` value (``None``, ``"q1"``, ``{"q1", "q5"}``, ``"all"``) to a set.

    Unknown ids fail loudly: a typo such as ``"Q1 "`` silently running the corrected behaviour would
    make a reproduction run quietly wrong.
    """
    if reference_compat is None:
        return frozenset()
    items = {reference_compat} if isinstance(reference_compat, str) else set(reference_compat)
    if "all" in items:
        return QUIRKS
    unknown = items - QUIRKS
    if unknown:
        raise ValueError(f"unknown reference_compat quirk(s) {sorted(unknown)}; expected ids q1..q13 or 'all'")
    return frozenset(items)


# --------------------------------------------------------------------------------------------------
# 1. Per-tokenizer marker table and surface text
# --------------------------------------------------------------------------------------------------

Kind = Literal["byte_level", "metaspace", "plain"]

# kind -> (word-start marker, how a newline piece is spelled). The newline for "metaspace" assumes byte
# fallback; without it a newline is whatever piece the vocabulary has (often '<unk>').
MARKER_TABLE: dict[str, tuple[str, str]] = {
    "byte_level": ("Ġ", "Ċ"),
    "metaspace": ("▁", "<0x0A>"),
    "plain": ("", "\n"),
}

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte→printable-character table (the byte-level BPE alphabet).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to U+0100 onwards,
    which is why a space shows up as 'Ġ' (U+0120) and a newline as 'Ċ' (U+010A).
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


_BYTE_ENCODER = _bytes_to_unicode()
_BYTE_DECODER: dict[str, int] = {c: b for b, c in _BYTE_ENCODER.items()}


@dataclass(frozen=True)
class TokenizerSpec:
    """How one tokenizer spells text in its pieces (the per-tokenizer marker table of spec §2.4).

    ``kind``: ``"byte_level"`` (GPT-2/NeoX/Qwen/Llama-3 style: every piece is bytes in the GPT-2
    alphabet), ``"metaspace"`` (SentencePiece style: spaces are ``marker``), or ``"plain"`` (no marker;
    WordPiece and friends: surfaces lose their spaces, so alignment then relies on offsets).
    ``prefix_space``: the tokenizer adds a dummy space to the first word (SentencePiece does, byte-level
    BPE usually does not); the decoded text does not contain it, so surfaces drop it again.
    ``special_tokens`` have an empty surface (BOS/EOS/PAD are not text); other ``added_tokens`` are
    literal text even in a byte-level tokenizer.
    """

    kind: Kind = "plain"
    marker: str = ""
    newline: str = "\n"
    byte_fallback: bool = False
    prefix_space: bool = False
    continuation_prefix: str = ""
    special_tokens: frozenset[str] = frozenset()
    added_tokens: frozenset[str] = frozenset()
    bos_token: str | None = None
    eos_token: str | None = None
    unk_token: str | None = None

    @classmethod
    def of_kind(cls, kind: Kind, **kw: Any) -> TokenizerSpec:
        """A spec from the marker table, e.g. ``TokenizerSpec.of_kind("metaspace", byte_fallback=True)``."""
        marker, newline = MARKER_TABLE[kind]
        kw.setdefault("prefix_space", kind == "metaspace")
        return cls(kind=kind, marker=marker, newline=newline, **kw)

    def strip_marker(self, piece: str) -> str:
        """The piece without its word-start markers: the DTW cost strings of the reference."""
        return piece.replace(self.marker, "") if self.marker else piece

    def replace_marker(self, piece: str, target: TokenizerSpec | str) -> str:
        """The piece with this tokenizer's marker replaced by ``target``'s (reference vocab-map keys)."""
        new = target if isinstance(target, str) else target.marker
        return piece.replace(self.marker, new) if self.marker else piece

    def surface(self, piece: str) -> bytes:
        """The bytes this piece stands for (before any dummy-prefix handling, see :class:`Tokenization`)."""
        return _surface(self, piece)

    def role(self, piece: str) -> str | None:
        """``"bos"``/``"eos"``/``"unk"`` for those special pieces, so BOS can match BOS across vocabularies."""
        if piece is None:
            return None
        if piece == self.bos_token:
            return "bos"
        if piece == self.eos_token:
            return "eos"
        if piece == self.unk_token:
            return "unk"
        return None


def _surface(spec: TokenizerSpec, piece: str) -> bytes:
    # Cached per spec instance (not a dataclass field, so equality and hashing ignore it): a 2048-token
    # text has a few hundred distinct pieces and the byte-level decode is a Python loop over characters.
    cache: dict[str, bytes] = spec.__dict__.setdefault("_surface_cache", {})
    hit = cache.get(piece)
    if hit is None:
        hit = cache[piece] = _compute_surface(spec, piece)
    return hit


def _compute_surface(spec: TokenizerSpec, piece: str) -> bytes:
    if piece is None or piece in spec.special_tokens:
        return b""
    if piece in spec.added_tokens:
        return piece.encode("utf-8")
    if spec.kind == "byte_level":
        # Characters outside the GPT-2 alphabet can only come from text that bypassed the byte mapping;
        # they are taken literally.
        return b"".join(bytes((_BYTE_DECODER[c],)) if c in _BYTE_DECODER else c.encode("utf-8") for c in piece)
    if spec.byte_fallback:
        m = _BYTE_PIECE.fullmatch(piece)
        if m:
            return bytes((int(m.group(1), 16),))
    text = piece
    if spec.continuation_prefix and text.startswith(spec.continuation_prefix):
        text = text[len(spec.continuation_prefix) :]
    if spec.marker:
        text = text.replace(spec.marker, " ")
    return text.encode("utf-8")


def _walk(node: Any) -> Iterable[dict[str, Any]]:
    """Every component dict (``{"type": ...}``) in a tokenizers JSON sub-tree, Sequences included."""
    if isinstance(node, dict):
        if "type" in node:
            yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def detect_spec(tokenizer: Any) -> TokenizerSpec:
    """Detect a :class:`TokenizerSpec` from a transformers tokenizer by inspecting its backend.

    Fast tokenizers are read from their ``tokenizers`` JSON: a ``ByteLevel`` pre-tokenizer or decoder
    means byte-level BPE; a ``Metaspace`` component, a ``Prepend``/``Replace`` normalizer writing the
    marker, or a decoder replacing it by a space means SentencePiece style; the model's
    ``byte_fallback`` flag or a ``ByteFallback`` decoder means ``<0xNN>`` pieces exist. Tokenizers with
    no backend (slow SentencePiece ones) are classified from their vocabulary (:func:`_spec_from_vocab`).
    """
    specials = {str(t) for t in getattr(tokenizer, "all_special_tokens", []) or []}
    added: set[str] = set()
    for tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
        content = getattr(tok, "content", str(tok))
        added.add(content)
        if getattr(tok, "special", False):
            specials.add(content)
    common = {
        "special_tokens": frozenset(specials),
        "added_tokens": frozenset(added),
        "bos_token": getattr(tokenizer, "bos_token", None),
        "eos_token": getattr(tokenizer, "eos_token", None),
        "unk_token": getattr(tokenizer, "unk_token", None),
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return _spec_from_vocab(tokenizer.get_vocab(), **common)
    cfg = json.loads(backend.to_str())
    model = cfg.get("model") or {}
    pre = list(_walk(cfg.get("pre_tokenizer")))
    dec = list(_walk(cfg.get("decoder")))
    norm = list(_walk(cfg.get("normalizer")))
    byte_fallback = bool(model.get("byte_fallback")) or any(c["type"] == "ByteFallback" for c in dec)
    cont = (model.get("continuing_subword_prefix") or "##") if model.get("type") == "WordPiece" else ""

    byte_level = [c for c in pre + dec if c["type"] == "ByteLevel"]
    if byte_level:
        prefix = any(c.get("add_prefix_space") for c in pre if c["type"] == "ByteLevel")
        return TokenizerSpec.of_kind("byte_level", byte_fallback=byte_fallback, prefix_space=prefix, **common)

    meta = [c for c in pre + dec if c["type"] == "Metaspace"]
    marker = meta[0].get("replacement", "▁") if meta else None
    prefix = any(c.get("prepend_scheme", "always" if c.get("add_prefix_space") else "never") != "never"
                 for c in meta if c in pre)
    for c in norm:
        if c["type"] == "Prepend":
            marker = marker or c.get("prepend")
            prefix = True
        elif c["type"] == "Replace" and c.get("pattern", {}).get("String") == " ":
            marker = marker or c.get("content")
    for c in dec:
        if c["type"] == "Replace" and c.get("content") == " " and marker is None:
            marker = c.get("pattern", {}).get("String")
    if marker:
        return TokenizerSpec(kind="metaspace", marker=marker, newline="<0x0A>" if byte_fallback else "\n",
                             byte_fallback=byte_fallback, prefix_space=prefix, **common)
    return TokenizerSpec.of_kind("plain", byte_fallback=byte_fallback, continuation_prefix=cont, **common)


def _spec_from_vocab(vocab: Mapping[str, int], **common: Any) -> TokenizerSpec:
    """Classify a tokenizer without a ``tokenizers`` backend from how its pieces look.

    Byte-level vocabularies contain 'Ġ'-initial pieces and 'Ċ'; SentencePiece ones '▁'-initial pieces
    (legacy SentencePiece always adds the dummy prefix). A majority vote keeps one stray piece from
    deciding it.
    """
    pieces = list(vocab)
    g = sum(p.startswith("Ġ") for p in pieces)
    s = sum(p.startswith("▁") for p in pieces)
    byte_fallback = "<0x0A>" in vocab
    if g > s and "Ċ" in vocab:
        return TokenizerSpec.of_kind("byte_level", byte_fallback=byte_fallback, **common)
    if s > 0:
        return TokenizerSpec.of_kind("metaspace", byte_fallback=byte_fallback, prefix_space=True, **common)
    return TokenizerSpec.of_kind("plain", byte_fallback=byte_fallback, **common)


# --------------------------------------------------------------------------------------------------
# A tokenized text
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Tokenization:
    """One tokenization of a text: pieces (``convert_ids_to_tokens``), ids, and what is known of the text.

    ``offsets`` are ``return_offsets_mapping`` character spans into ``text``; without them spans are
    derived from the pieces' surfaces. ``dummy_prefix`` (default: the spec's ``prefix_space``) says
    whether the first non-empty surface starts with a space the tokenizer invented; it is dropped from
    :attr:`surfaces` so that both tokenizations spell the same text (the "first-token" case of §2.2).
    Set it to ``False`` for a chunk taken from the middle of a document.
    """

    pieces: list[str]
    spec: TokenizerSpec
    ids: np.ndarray | None = None
    text: str | None = None
    offsets: np.ndarray | None = None
    dummy_prefix: bool | None = None

    def __post_init__(self) -> None:
        if self.ids is not None:
            object.__setattr__(self, "ids", np.asarray(self.ids, dtype=np.int64))
            if len(self.ids) != len(self.pieces):
                raise ValueError(f"{len(self.ids)} ids for {len(self.pieces)} pieces")
        if self.offsets is not None:
            off = np.asarray(self.offsets, dtype=np.int64).reshape(-1, 2)
            if len(off) != len(self.pieces):
                raise ValueError(f"{len(off)} offsets for {len(self.pieces)} pieces")
            object.__setattr__(self, "offsets", off)

    @classmethod
    def from_text(cls, tokenizer: Any, text: str, *, spec: TokenizerSpec | None = None,
                  add_special_tokens: bool = False, use_offsets: bool = True) -> Tokenization:
        """Tokenize ``text``; with a fast tokenizer the character offsets come along."""
        spec = spec or detect_spec(tokenizer)
        want = use_offsets and bool(getattr(tokenizer, "is_fast", False))
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=want)
        ids = list(enc["input_ids"])
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64) if want else None
        return cls(list(tokenizer.convert_ids_to_tokens(ids)), spec, ids=np.asarray(ids), text=text, offsets=offsets)

    @classmethod
    def from_ids(cls, tokenizer: Any, ids: Sequence[int], *, spec: TokenizerSpec | None = None,
                 text: str | None = None, dummy_prefix: bool | None = None) -> Tokenization:
        """Wrap stored ids (no offsets): spans will come from the surfaces."""
        spec = spec or detect_spec(tokenizer)
        ids = [int(i) for i in ids]
        return cls(list(tokenizer.convert_ids_to_tokens(ids)), spec, ids=np.asarray(ids, dtype=np.int64),
                   text=text, dummy_prefix=dummy_prefix)

    def __len__(self) -> int:
        return len(self.pieces)

    @cached_property
    def surfaces(self) -> list[bytes]:
        """Per-token bytes of the text, dummy prefix space removed (their join is the decoded text)."""
        out = [self.spec.surface(p) for p in self.pieces]
        dummy = self.spec.prefix_space if self.dummy_prefix is None else self.dummy_prefix
        if dummy:
            for k, s in enumerate(out):
                if s:
                    if s.startswith(b" "):
                        out[k] = s[1:]
                    break
        return out

    @cached_property
    def special_mask(self) -> np.ndarray:
        """True for special tokens (BOS/EOS/PAD/...): they carry no text."""
        return np.array([p in self.spec.special_tokens for p in self.pieces], dtype=bool)

    def byte_spans(self) -> tuple[bytes, np.ndarray, np.ndarray]:
        """``(stream, starts, ends)``: each token's half-open byte span in a byte stream of the text.

        With offsets and text the stream is the UTF-8 text and the character offsets are converted to
        byte offsets, then refined (:func:`_refine_spans`) so that pieces of one multi-byte character
        (byte-level CJK, ``<0xE6>``-style fallback) get disjoint sub-spans. Without offsets the stream is
        the joined surfaces; if ``text`` is known but spelled differently (normalizers, ``<unk>``), the
        spans are carried over to the text with a byte diff (:func:`_map_spans`).
        """
        lengths = np.fromiter((len(s) for s in self.surfaces), dtype=np.int64, count=len(self.pieces))
        if self.offsets is not None and self.text is not None:
            stream = self.text.encode("utf-8")
            c2b = _char_to_byte(self.text)
            off = np.clip(self.offsets, 0, len(self.text))
            known = np.where(self.special_mask | np.array([p == self.spec.unk_token for p in self.pieces]),
                             -1, lengths)
            starts, ends = _refine_spans(c2b[off[:, 0]], c2b[off[:, 1]], known)
            return stream, starts, ends
        ends = np.cumsum(lengths)
        starts = ends - lengths
        concat = b"".join(self.surfaces)
        if self.text is not None:
            stream = self.text.encode("utf-8")
            if stream != concat:
                starts, ends = _map_spans(concat, stream, starts, ends)
            return stream, starts, ends
        return concat, starts, ends


def _char_to_byte(text: str) -> np.ndarray:
    """``out[c]`` = UTF-8 byte offset of character ``c`` (length ``len(text)+1``), vectorised."""
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    lens = 1 + (cps >= 0x80).astype(np.int64) + (cps >= 0x800) + (cps >= 0x10000)
    out = np.zeros(len(cps) + 1, dtype=np.int64)
    np.cumsum(lens, out=out[1:])
    return out


def _refine_spans(starts: np.ndarray, ends: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make byte spans disjoint and monotone, using each token's surface length where known.

    Offsets are per *character*, so the three byte-level pieces of '日' all report the whole character.
    Walking left to right, a token starts no earlier than the previous one ended, and is at most as long
    as its surface (``known``; -1 for special/unknown tokens, whose surface says nothing). Tokens that end
    up empty become zero-width and are anchored like BOS/EOS. A special token added by the
    post-processor reports (0, 0); it lands where the previous token ended, i.e. EOS at the end.
    """
    n = len(starts)
    out_s = np.empty(n, dtype=np.int64)
    out_e = np.empty(n, dtype=np.int64)
    pos = 0
    for t, (s, e, k) in enumerate(zip(starts.tolist(), ends.tolist(), known.tolist(), strict=True)):
        s = max(s, pos)
        if k >= 0:
            e = min(e, s + k)
        e = max(e, s)
        out_s[t], out_e[t] = s, e
        pos = e
    return out_s, out_e


def _map_spans(src: bytes, dst: bytes, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Carry spans over ``src`` onto ``dst`` (two spellings of one text) through a byte diff.

    Equal blocks shift, replaced blocks scale linearly, deleted bytes collapse to a point. A span start
    takes the position from the block that starts there and a span end from the block that ends there,
    so a token next to an insertion does not swallow it. Both maps are monotone, so mapped spans stay
    disjoint and ordered.
    """
    n = len(src)
    if n == 0:
        return np.zeros_like(starts), np.zeros_like(ends)
    start_map = np.zeros(n + 1, dtype=np.int64)
    end_map = np.zeros(n + 1, dtype=np.int64)
    start_map[n] = len(dst)
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, src, dst, autojunk=False).get_opcodes():
        if i1 == i2:  # pure insertion in dst: the neighbouring blocks already set both sides
            continue
        p = np.arange(i1, i2 + 1)
        if tag == "equal":
            q = j1 + (p - i1)
        elif tag == "replace":
            q = j1 + (p - i1) * (j2 - j1) // (i2 - i1)
        else:  # delete
            q = np.full_like(p, j1)
        start_map[i1:i2] = q[:-1]
        end_map[i1 + 1 : i2 + 1] = q[1:]
    return start_map[starts], np.maximum(end_map[ends], start_map[starts])


# --------------------------------------------------------------------------------------------------
# 2. Sequence alignment
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alignment:
    """For every base position ``i``, the sorted source positions aligned to it (CSR layout).

    ``indices[indptr[i]:indptr[i+1]]`` are the source positions of base position ``i``; every base
    position has at least one. ``len(self)`` is the number of base positions.
    """

    indptr: np.ndarray
    indices: np.ndarray
    n_source: int
    mode: str = "manual"

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.indices[self.indptr[i] : self.indptr[i + 1]]

    @property
    def base_to_src(self) -> list[np.ndarray]:
        return [self[i] for i in range(len(self))]

    def to_lists(self) -> list[list[int]]:
        """The reference's ``base_to_blending`` structure (list of sorted lists)."""
        return [self[i].tolist() for i in range(len(self))]

    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(base_positions, source_positions)`` of all aligned pairs, base-major."""
        return np.repeat(np.arange(len(self)), self.counts()), self.indices

    @classmethod
    def from_pairs(cls, base: np.ndarray, source: np.ndarray, n_base: int, n_source: int,
                   mode: str = "manual") -> Alignment:
        """Build from aligned pairs (duplicates are merged); every base position must appear."""
        base = np.asarray(base, dtype=np.int64)
        source = np.asarray(source, dtype=np.int64)
        keys = np.unique(base * max(n_source, 1) + source)
        b, s = np.divmod(keys, max(n_source, 1))
        counts = np.bincount(b, minlength=n_base)
        if n_base and counts.min() == 0:
            raise ValueError(f"base position {int(np.argmin(counts))} has no aligned source position")
        indptr = np.zeros(n_base + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr, s.astype(np.int64), n_source, mode)

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]], n_source: int, mode: str = "manual") -> Alignment:
        base = np.repeat(np.arange(len(lists)), [len(x) for x in lists])
        source = np.fromiter((j for x in lists for j in x), dtype=np.int64, count=int(sum(len(x) for x in lists)))
        return cls.from_pairs(base, source, len(lists), n_source, mode)

    def is_monotone(self) -> bool:
        """No crossing: every source position of base ``i`` is ≤ every source position of base ``i+1``."""
        if len(self) < 2:
            return True
        first = self.indices[self.indptr[:-1]]
        last = self.indices[self.indptr[1:] - 1]
        return bool(np.all(last[:-1] <= first[1:]))

    def covers_source(self) -> bool:
        return bool(np.all(np.bincount(self.indices, minlength=self.n_source) > 0))

    def cases(self) -> np.ndarray:
        """Per base position: 0 = one-to-one, 1 = many-to-one (shares its single source token with another
        base position), 2 = one-to-many (several source tokens)."""
        counts = self.counts()
        first = self.indices[self.indptr[:-1]]
        single = counts == 1
        shared = np.bincount(first[single], minlength=self.n_source)[first] > 1
        return np.where(counts > 1, 2, np.where(single & shared, 1, 0)).astype(np.int8)


TieOrder = Literal["fusellm", "fusechat"] | tuple[str, str, str]
_MOVES = {"diag": 0, "up": 1, "left": 2}
TIE_ORDERS: dict[str, tuple[str, str, str]] = {
    "fusellm": ("diag", "up", "left"),
    "fusechat": ("diag", "left", "up"),
}


def _tie_codes(tie_order: TieOrder) -> tuple[int, int, int]:
    order = TIE_ORDERS[tie_order] if isinstance(tie_order, str) else tuple(tie_order)
    if sorted(order) != sorted(_MOVES):
        raise ValueError(f"tie_order must be 'fusellm', 'fusechat' or a permutation of diag/up/left, got {tie_order!r}")
    return tuple(_MOVES[m] for m in order)  # type: ignore[return-value]


def _factorize(strings: Sequence[str]) -> tuple[list[str], np.ndarray]:
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(s, len(index)) for s in strings), dtype=np.intp, count=len(strings))
    return list(index), codes


def _unique_distances(rows: Sequence[str], cols: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(table, row_codes, col_codes)`` with ``ED(rows[a], cols[b]) = table[row_codes[a], col_codes[b]]``.

    The Levenshtein distance (unit costs over code points, like the reference's ``editdistance.eval``)
    is computed once per pair of *distinct* strings, with rapidfuzz's bit-parallel C implementation: a
    2048-token text has a few hundred distinct pieces. Threads only for large tables: for small ones
    they cost more than they save.
    """
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    ur, row_codes = _factorize(rows)
    uc, col_codes = _factorize(cols)
    if not ur or not uc:
        return np.zeros((len(ur), len(uc)), dtype=np.int32), row_codes, col_codes
    workers = -1 if len(ur) * len(uc) > 250_000 else 1
    table = process.cdist(ur, uc, scorer=Levenshtein.distance, workers=workers, dtype=np.int32)
    return table, row_codes, col_codes


def edit_distance_matrix(rows: Sequence[str], cols: Sequence[str]) -> np.ndarray:
    """Levenshtein distance of every (row, column) pair of strings, int32 ``[len(rows), len(cols)]``."""
    table, rc, cc = _unique_distances(rows, cols)
    return table[np.ix_(rc, cc)]


def _prefix_min(values: np.ndarray, out: np.ndarray) -> Any:
    """A function computing ``out[:] = running minimum of values[:]`` into preallocated buffers.

    ``torch.cummin`` is about twice as fast on CPU as numpy's non-vectorised ``np.minimum.accumulate``
    and writes through tensors sharing the numpy buffers. It is used only when torch is already loaded
    (always, inside a fuser), so aligning never pays torch's import time; both give identical values.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return lambda: np.minimum.accumulate(values, out=out)
    tv, to = torch.from_numpy(values), torch.from_numpy(out)
    ti = torch.empty(len(values), dtype=torch.int64)
    return lambda: torch.cummin(tv, 0, out=(to, ti))


def _cumulative(table: np.ndarray, row_codes: np.ndarray, col_codes: np.ndarray | None) -> np.ndarray:
    """The reference's DTW cumulative matrix ``D[r, c]`` for ``cost[r, c] = table[row_codes[r], col_codes[c]]``.

    Recurrence: ``D(r, c) = cost(r, c) + min(D(r-1, c), D(r, c-1), D(r-1, c-1))``, D(0, 0) = cost(0, 0),
    +inf outside (the reference's padded border). Row by row: with ``m(c) = min(D(r-1, c), D(r-1, c-1))``
    and the row's prefix sums ``S``, unrolling the left dependency gives
    ``D(r, c) = S(c) + min_{k≤c} (cost(r, k) - S(k) + m(k))`` — elementwise operations and one running
    minimum per row, all in C. ``cost - S`` and ``S`` depend only on the row's piece, so they are built once
    per distinct piece. Integer costs keep every value exact (int32 when the largest possible path cost
    fits, else int64), so equal values compare equal and the backtrack breaks ties exactly like the
    float64 reference.
    """
    rows = len(row_codes)
    cols = table.shape[1] if col_codes is None else len(col_codes)
    bound = int(table.max(initial=0)) * (rows + cols)
    dtype = np.int32 if bound < 2**31 - 1 else np.int64
    kernel = _compiled_cumulative()
    if kernel is not None:  # the same integer recurrence, one compiled double loop reading the table directly
        columns = np.arange(cols) if col_codes is None else col_codes
        return kernel(np.ascontiguousarray(table, dtype=dtype), np.ascontiguousarray(row_codes, dtype=np.int64),
                      np.ascontiguousarray(columns, dtype=np.int64))
    per_piece = table if col_codes is None else np.take(table, col_codes, axis=1)  # C-contiguous rows
    per_piece = per_piece.astype(dtype, copy=False)
    prefix = np.empty_like(per_piece)
    for u in range(len(per_piece)):  # 1-D cumsums: numpy's axis=1 cumsum is several times slower
        np.cumsum(per_piece[u], out=prefix[u])
    minus_prefix = per_piece - prefix
    d = np.empty((rows, cols), dtype=dtype)
    d[0] = prefix[row_codes[0]]
    m = np.empty(cols, dtype=dtype)
    scan = np.empty(cols, dtype=dtype)
    prefix_min = _prefix_min(m, scan)
    # Row views made once: building slice objects per row costs as much as a small ufunc call.
    d_rows, d_tail, d_head = list(d), list(d[:, 1:]), list(d[:, :-1])
    a_rows, s_rows = list(minus_prefix), list(prefix)
    m_tail = m[1:]
    minimum, add = np.minimum, np.add
    codes = row_codes.tolist()
    for r in range(1, rows):
        u = codes[r]
        m[0] = d_head[r - 1][0]
        minimum(d_tail[r - 1], d_head[r - 1], out=m_tail)
        add(m, a_rows[u], out=m)
        prefix_min()
        add(scan, s_rows[u], out=d_rows[r])
    return d


@functools.cache
def _compiled_cumulative() -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None:
    """numba-compiled cell loop for :func:`_cumulative` (None when numba is not installed).

    The row-wise numpy recurrence above is exact but pays one ufunc call per row; the compiled loop does
    the same integer arithmetic cell by cell, a few nanoseconds each. ``cache=True`` keeps the compiled
    code on disk, so only the first process ever compiles it.
    """
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True)
    def cumulative(table: np.ndarray, row_codes: np.ndarray, col_codes: np.ndarray) -> np.ndarray:  # pragma: no cover
        rows, cols = row_codes.shape[0], col_codes.shape[0]
        d = np.empty((rows, cols), dtype=table.dtype)
        first = table[row_codes[0]]
        acc = first[0] - first[0]
        for c in range(cols):
            acc += first[col_codes[c]]
            d[0, c] = acc
        for r in range(1, rows):
            cost = table[row_codes[r]]
            d[r, 0] = cost[col_codes[0]] + d[r - 1, 0]
            for c in range(1, cols):
                best = d[r - 1, c - 1]
                if d[r - 1, c] < best:
                    best = d[r - 1, c]
                if d[r, c - 1] < best:
                    best = d[r, c - 1]
                d[r, c] = cost[col_codes[c]] + best
        return d

    return cumulative


@functools.cache
def _compiled_backtrack() -> Callable[..., tuple[np.ndarray, np.ndarray]] | None:
    """:func:`_backtrack` compiled by numba (None without numba: the plain function then runs as Python)."""
    try:
        import numba
    except ImportError:
        return None
    return numba.njit(cache=True, nogil=True)(_backtrack)


def _backtrack(flat: np.ndarray, sj: int, si: int, n_src: int, n_base: int, c0: int, c1: int,
               c2: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's greedy backtrack from (M-1, N-1): move to the smallest of diag/up/left, ties in
    ``(c0, c1, c2)`` order (``np.argmin`` semantics: the first minimum wins), then add (0, 0).

    ``flat[j*sj + i*si]`` is D(j, i); "up" decrements the source index j, "left" the base index i. Written in
    the subset of Python numba compiles, so the compiled and the fallback path are one function.
    """
    out_j = np.empty(n_src + n_base, dtype=np.int64)
    out_i = np.empty(n_src + n_base, dtype=np.int64)
    vals = np.empty(3, dtype=np.float64)
    j, i, n = n_src - 1, n_base - 1, 0
    while j > 0 or i > 0:
        out_j[n], out_i[n] = j, i
        n += 1
        k = j * sj + i * si
        vals[0] = flat[k - sj - si] if (j > 0 and i > 0) else np.inf
        vals[1] = flat[k - sj] if j > 0 else np.inf
        vals[2] = flat[k - si] if i > 0 else np.inf
        best = c0
        if vals[c1] < vals[best]:
            best = c1
        if vals[c2] < vals[best]:
            best = c2
        if best == 0:
            j -= 1
            i -= 1
        elif best == 1:
            j -= 1
        else:
            i -= 1
    out_j[n], out_i[n] = 0, 0
    return out_j[: n + 1], out_i[: n + 1]


def _dtw(table: np.ndarray, src_codes: np.ndarray, base_codes: np.ndarray | None, n_base: int,
         tie_order: TieOrder, mode: str, *, transposed: bool = False) -> Alignment:
    """DTW over ``cost[j, i] = table[src_codes[j], base_codes[i]]`` (source rows, base columns), or
    ``table[base_codes[i], src_codes[j]]`` when ``transposed``.

    The recurrence is symmetric in (up, left), so the row loop runs over the shorter side: fewer, longer
    numpy calls. The backtrack then reads D through strides that undo the swap.
    """
    codes = _tie_codes(tie_order)
    n_src = len(src_codes)
    if n_src == 0 or n_base == 0:
        raise ValueError("DTW needs at least one token on each side")
    if transposed and n_src <= n_base:
        table, transposed = np.ascontiguousarray(table.T), False
    if n_src <= n_base:
        d = _cumulative(table, src_codes, base_codes)  # d[j, i]
        sj, si = n_base, 1
    else:
        t = table if transposed else np.ascontiguousarray(table.T)
        base_rows = np.arange(n_base) if base_codes is None else base_codes
        d = _cumulative(t, base_rows, src_codes)  # d[i, j]
        sj, si = 1, n_src
    backtrack = _compiled_backtrack() or _backtrack
    js, is_ = backtrack(d.reshape(-1), sj, si, n_src, n_base, *codes)
    return Alignment.from_pairs(np.asarray(is_), np.asarray(js), n_base, n_src, mode)


def dtw_from_cost(cost: np.ndarray, tie_order: TieOrder = "fusellm", *, mode: str = "dtw_ed") -> Alignment:
    """The reference DTW on a precomputed integer cost matrix ``cost[j, i]`` (source j × base i).

    The orientation is the reference's ``dtw(blending, base)``: rows are the blending (source) tokens,
    "up" moves to the previous source token and "left" to the previous base token. FuseChat builds its
    own cost (decoded strings, empty-piece fallback) and calls this. Costs must be integers (edit
    distances are): the vectorised recurrence is exact only then.
    """
    cost = np.asarray(cost)
    if cost.ndim != 2:
        raise ValueError("cost must be a 2-D [source, base] matrix")
    if cost.dtype.kind == "f":
        if not np.all(np.isfinite(cost)) or not np.array_equal(cost, np.round(cost)):
            raise ValueError("DTW costs must be finite integers (edit distances) for an exact result")
        cost = cost.astype(np.int64)
    elif cost.dtype.kind not in "iu":
        raise ValueError(f"unsupported cost dtype {cost.dtype}")
    if (cost < 0).any():
        raise ValueError("DTW costs must be non-negative")
    return _dtw(np.ascontiguousarray(cost), np.arange(cost.shape[0]), None, cost.shape[1], tie_order, mode)


def dtw_align(base_strings: Sequence[str], source_strings: Sequence[str], tie_order: TieOrder = "fusellm") -> Alignment:
    """Reference DTW with edit-distance costs between already-normalised strings (e.g. marker-stripped)."""
    if len(source_strings) <= len(base_strings):
        table, src_codes, base_codes = _unique_distances(source_strings, base_strings)
        return _dtw(table, src_codes, base_codes, len(base_strings), tie_order, "dtw_ed")
    # the row loop will run over the base side: build the table in that orientation (no transposed copy)
    table_t, base_codes, src_codes = _unique_distances(base_strings, source_strings)
    return _dtw(table_t, src_codes, base_codes, len(base_strings), tie_order, "dtw_ed", transposed=True)


def _banded_dtw(src: Sequence[str], base: Sequence[str], lo: np.ndarray, hi: np.ndarray,
                codes: tuple[int, int, int]) -> Alignment:
    """The reference DP restricted to base columns ``lo[j]..hi[j]`` of each source row (inf outside).

    Same recurrence and backtrack; the result equals :func:`dtw_from_cost` whenever the full greedy path
    and every value it compares lie inside the band (e.g. a band as wide as the matrix).
    """
    table, cs, cb = _unique_distances(src, base)
    dist = table.astype(np.float64)
    n_src = len(src)
    width = int((hi - lo).max()) + 1
    band = np.full((n_src, width), np.inf)
    for j in range(n_src):
        lj, h = int(lo[j]), int(hi[j])
        c = dist[cs[j], cb[lj : h + 1]]
        s = np.cumsum(c)
        if j == 0:
            band[0, : h + 1] = s  # lo[0] == 0
            continue
        pl = int(lo[j - 1])
        ext = np.full(h - lj + 2, np.inf)  # D(j-1, lj-1 .. h)
        a, b = max(lj - 1, pl), min(h, int(hi[j - 1]))
        if a <= b:
            ext[a - (lj - 1) : b - (lj - 1) + 1] = band[j - 1, a - pl : b - pl + 1]
        m = np.minimum(ext[1:], ext[:-1])
        band[j, : h - lj + 1] = s + np.minimum.accumulate(c + m - s)

    inf = math.inf

    def value(j: int, i: int) -> float:
        k = i - lo[j]
        return band[j, k] if 0 <= k < width else inf

    j, i = n_src - 1, len(base) - 1
    pairs_j, pairs_i = [], []
    while j > 0 or i > 0:
        pairs_j.append(j)
        pairs_i.append(i)
        vals = (value(j - 1, i - 1) if (j > 0 and i > 0) else inf,
                value(j - 1, i) if j > 0 else inf,
                value(j, i - 1) if i > 0 else inf)
        best = min(codes, key=lambda c: (vals[c], codes.index(c)))
        j, i = (j - 1, i - 1) if best == 0 else (j - 1, i) if best == 1 else (j, i - 1)
    pairs_j.append(0)
    pairs_i.append(0)
    return Alignment.from_pairs(np.asarray(pairs_i), np.asarray(pairs_j), len(base), n_src, "dtw_ed_banded")


def _overlap_alignment(bs: np.ndarray, be: np.ndarray, ss: np.ndarray, se: np.ndarray) -> Alignment:
    """Align two tokenizations of one byte stream by span overlap: O(N+M) plus O(#zero-width).

    Picture the stream as byte cells with a *gap* before each byte (and one at the end). A non-empty
    token covers its bytes and the gaps strictly inside it; a zero-width token (special token, empty
    piece, bytes the other side lacks) sits in the gap at its point ``p`` — the end of the preceding
    token. Two tokens are aligned when they share a cell:

    1. non-empty ↔ non-empty tokens that share a byte (binary search in the sorted, disjoint spans);
    2. zero-width ↔ zero-width tokens in the same gap, paired in order, proportionally when the counts
       differ (BOS ↔ BOS, EOS ↔ EOS);
    3. zero-width ↔ a non-empty token of the other side that strictly contains its point.

    Every token's cells come after the previous token's on the same side, so these pairs never cross.
    A token that shares no cell (a lone BOS before the first word, bytes only one side spells out) is
    anchored to the first token of the other side that does not end before it (:func:`_anchor`), the
    last one past the end: a lone BOS joins the first word and a lone EOS the last one. Base tokens are
    anchored first; source tokens still uncovered after that are anchored the same way, so every base
    and every source position is aligned and the result stays monotone, like a DTW path.
    """
    n_base, n_src = len(bs), len(ss)
    pairs_b: list[np.ndarray] = []
    pairs_s: list[np.ndarray] = []

    def add(b: np.ndarray | list[int], s: np.ndarray | list[int]) -> None:
        pairs_b.append(np.asarray(b, dtype=np.int64))
        pairs_s.append(np.asarray(s, dtype=np.int64))

    b_nz, s_nz = np.flatnonzero(be > bs), np.flatnonzero(se > ss)
    b_zw, s_zw = np.flatnonzero(be <= bs), np.flatnonzero(se <= ss)

    # 1. shared bytes
    if len(b_nz) and len(s_nz):
        lo = np.searchsorted(se[s_nz], bs[b_nz], side="right")
        hi = np.searchsorted(ss[s_nz], be[b_nz], side="left")
        cnt = np.maximum(hi - lo, 0)
        within = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        add(np.repeat(b_nz, cnt), s_nz[np.repeat(lo, cnt) + within])

    # 2. shared gaps
    by_point: dict[int, list[int]] = {}
    for j in s_zw.tolist():
        by_point.setdefault(int(ss[j]), []).append(j)
    b_groups: dict[int, list[int]] = {}
    for i in b_zw.tolist():
        b_groups.setdefault(int(bs[i]), []).append(i)
    gb: list[int] = []
    gs: list[int] = []
    for point, group in b_groups.items():
        other = by_point.get(point)
        if not other:
            continue
        a, b = len(group), len(other)
        for k, i in enumerate(group):
            first = k * b // a
            for j in other[first : max(first + 1, -(-(k + 1) * b // a))]:
                gb.append(i)
                gs.append(j)
    add(gb, gs)

    # 3. a gap strictly inside a non-empty token of the other side
    for zw, points, o_nz, o_s, o_e, base_side in ((b_zw, bs, s_nz, ss, se, True), (s_zw, ss, b_nz, bs, be, False)):
        if not len(zw) or not len(o_nz):
            continue
        p = points[zw]
        k = np.minimum(np.searchsorted(o_e[o_nz], p, side="right"), len(o_nz) - 1)
        inside = (o_s[o_nz[k]] < p) & (p < o_e[o_nz[k]])
        if base_side:
            add(zw[inside], o_nz[k[inside]])
        else:
            add(o_nz[k[inside]], zw[inside])

    b_done = np.zeros(n_base, dtype=bool)
    s_done = np.zeros(n_src, dtype=bool)
    for pb, ps in zip(pairs_b, pairs_s, strict=True):
        b_done[pb] = True
        s_done[ps] = True
    left_b = np.flatnonzero(~b_done)
    if len(left_b):
        targets = _anchor(bs[left_b], ss, se)
        add(left_b, targets)
        s_done[targets] = True
    left_s = np.flatnonzero(~s_done)
    if len(left_s):
        add(_anchor(ss[left_s], bs, be), left_s)
    return Alignment.from_pairs(np.concatenate(pairs_b), np.concatenate(pairs_s), n_base, n_src, "offsets")


def _anchor(points: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For each start point p of an unaligned token, the first other-side token that does not end before
    it: a non-empty token with end > p, or a zero-width token at a point > p; the last token if none.

    (A zero-width token exactly at p would have shared p's gap.) ``key`` — end-1, or point-1 for
    zero-width tokens — is non-decreasing along a tokenization, so one binary search answers all.
    """
    key = np.where(ends > starts, ends, starts) - 1
    return np.minimum(np.searchsorted(key, points, side="left"), len(starts) - 1)


def _offset_spans(base: Tokenization, source: Tokenization) -> tuple[np.ndarray, ...]:
    """Byte spans of both tokenizations in the base's byte stream."""
    bstream, bs, be = base.byte_spans()
    sstream, ss, se = source.byte_spans()
    if base.text is not None and source.text is not None and base.text != source.text:
        raise ValueError("the two tokenizations were made from different texts")
    if sstream != bstream:
        ss, se = _map_spans(sstream, bstream, ss, se)
    return bs, be, ss, se


Mode = Literal["offsets", "dtw_ed", "dtw_ed_banded"]


def align_sequences(base: Tokenization, source: Tokenization, mode: Mode = "offsets", *,
                    tie_order: TieOrder = "fusellm", band: int = 16) -> Alignment:
    """For every base position, the sorted source positions aligned to it.

    ``mode="offsets"`` (default): byte-span overlap of the two tokenizations of the same text
    (:func:`_overlap_alignment`). ``"dtw_ed"``: the reference DTW with cost = Levenshtein distance of the
    marker-stripped pieces, backtrack ties in ``tie_order`` (``"fusellm"`` = diag, up, left;
    ``"fusechat"`` = diag, left, up; "up" = previous source token). ``"dtw_ed_banded"``: that DP within
    ``band`` base positions of the offsets alignment (an approximation of ``"dtw_ed"``, exact when the
    band is wide enough). ``"dtw_fusechat"``: FuseChat's released DTW (:func:`fusers._ms_align.fusechat_dtw_align`).
    """
    if len(base) == 0 or len(source) == 0:
        raise ValueError("cannot align an empty tokenization")
    if mode == "offsets":
        return _overlap_alignment(*_offset_spans(base, source))
    if mode == "dtw_fusechat":  # FuseChat's released DTW (its own piece spellings and cost), for reference_compat
        from fusers._ms_align import fusechat_dtw_align

        return fusechat_dtw_align(base, source)
    base_strings = [base.spec.strip_marker(p) for p in base.pieces]
    source_strings = [source.spec.strip_marker(p) for p in source.pieces]
    if mode == "dtw_ed":
        return dtw_align(base_strings, source_strings, tie_order)
    if mode == "dtw_ed_banded":
        guide = _overlap_alignment(*_offset_spans(base, source))
        b, s = guide.pairs()
        n_src, n_base = len(source), len(base)
        lo = np.full(n_src, n_base, dtype=np.int64)
        hi = np.full(n_src, -1, dtype=np.int64)
        np.minimum.at(lo, s, b)
        np.maximum.at(hi, s, b)
        lo = np.maximum(lo - band, 0)
        hi = np.minimum(hi + band, n_base - 1)
        lo[0], hi[-1] = 0, n_base - 1
        hi = np.maximum.accumulate(hi)
        lo = np.minimum.accumulate(lo[::-1])[::-1]
        lo[1:] = np.minimum(lo[1:], hi[:-1] + 1)  # keep consecutive rows connected
        return _banded_dtw(source_strings, base_strings, lo, hi, _tie_codes(tie_order))
    raise ValueError(f"unknown alignment mode {mode!r}; expected 'offsets', 'dtw_ed', 'dtw_ed_banded' or 'dtw_fusechat'")


# --------------------------------------------------------------------------------------------------
# 3. Vocabulary map by minimum edit distance
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VocabMap:
    """Source id → base id (``-1``: no base token), from :func:`vocab_map`.

    ``exact`` marks source ids whose marker-replaced piece is itself a base piece (the reference's
    "EM"/hard alignment keeps only those: :attr:`hard_ids`). ``keys`` maps each marker-replaced source
    piece to its first source id, for string look-ups. ``by_string`` is only built under
    ``reference_compat`` ``"q12"``: the reference's own structure, marker-replaced source piece → base
    piece.
    """

    ids: np.ndarray
    exact: np.ndarray
    keys: dict[str, int] = field(repr=False)
    by_string: dict[str, str] | None = field(default=None, repr=False)

    @property
    def hard_ids(self) -> np.ndarray:
        return np.where(self.exact, self.ids, -1)

    def lookup(self, key: str) -> int:
        """Base id for a marker-replaced source string, -1 if it is no source piece."""
        j = self.keys.get(key)
        return -1 if j is None else int(self.ids[j])


def _as_vocab(vocab: Mapping[str, int] | Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(pieces in iteration order, their ids). A sequence's ids are its indices."""
    if isinstance(vocab, Mapping):
        return list(vocab.keys()), np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))
    pieces = list(vocab)
    return pieces, np.arange(len(pieces), dtype=np.int64)


def _nearest_pieces(queries: list[str], cands: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(index, exact)`` per query: the first candidate equal to it if there is one (``exact``), else the
    first candidate at the minimal Levenshtein distance.

    Both are the first minimum of ``ED(q, cands[c])`` over ``c`` (an equal string is at distance 0), so
    ``index`` equals ``min(range(len(cands)), key=lambda c: ED(q, cands[c]))`` for every query. With numba,
    one compiled search over code points does it (:func:`_compiled_first_min_ed`); without it, a dict for
    the exact matches and rapidfuzz in length buckets for the rest (:func:`_first_min_ed_buckets`).
    """
    if not queries:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    if not cands:
        raise ValueError("the base vocabulary is empty")
    kernel = _compiled_first_min_ed()
    if kernel is not None:
        q_chars, q_starts = _code_points(queries)
        c_chars, c_starts = _code_points(cands)
        return kernel(q_chars, q_starts, c_chars, c_starts)
    # first occurrence wins, like the plain loop's list order: build from the back
    first = dict(zip(reversed(cands), range(len(cands) - 1, -1, -1), strict=True))
    index = np.fromiter(map(first.get, queries, itertools.repeat(-1)), dtype=np.int64, count=len(queries))
    exact = index >= 0
    inexact = np.flatnonzero(~exact)
    if len(inexact):
        missing = list(dict.fromkeys(queries[k] for k in inexact.tolist()))
        nearest = dict(zip(missing, _first_min_ed_buckets(missing, cands).tolist(), strict=True))
        index[inexact] = [nearest[queries[k]] for k in inexact.tolist()]
    return index, exact


def _first_min_ed(queries: list[str], cands: list[str]) -> np.ndarray:
    """For each query, the index of the FIRST candidate with minimal Levenshtein distance (ties: lowest
    index), i.e. ``min(range(len(cands)), key=lambda c: ED(q, cands[c]))`` without scoring every pair."""
    return _nearest_pieces(queries, cands)[0]


def _code_points(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """CSR code points: ``strings[k]`` is ``chars[starts[k]:starts[k + 1]]`` (int32; lone surrogates kept)."""
    chars = np.frombuffer("".join(strings).encode("utf-32-le", "surrogatepass"), dtype="<i4")
    starts = np.zeros(len(strings) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, strings), dtype=np.int64, count=len(strings)), out=starts[1:])
    return chars, starts


@functools.cache
def _compiled_first_min_ed() -> Callable[..., tuple[np.ndarray, np.ndarray]] | None:
    """numba-compiled search for :func:`_nearest_pieces` (None when numba is not installed).

    ``kernel(q_chars, q_starts, c_chars, c_starts)`` takes queries and candidates as CSR code points
    (:func:`_code_points`) and returns ``(index, exact)``.

    1. Exact matches come from a hash table of the candidates (open addressing, first index kept). Every
       other query is at distance ≥ 1 from every candidate.
    2. Candidates are ordered by (length, index) into length buckets, their code points renumbered
       densely (1, 2, ... in order of first appearance; 0 for characters only queries have).
       **Phase 1** finds the minimal distance d* of a query of length m: it visits the lengths m, m-1,
       m+1, m-2, m+2, ..., each bucket in index order, a candidate counting only if it beats the best
       distance so far, and stops once the length difference reaches it (``ED(q, c) ≥ |len(q) - len(c)|``)
       or it is 1. Every candidate phase 1 passed over before its last improvement is farther than d*
       (its limit was at least d* there). **Phase 2** finds the first index at d* among the rest: the
       buckets visited after the last improvement or not at all (within d* of m), merged in index order,
       below the index phase 1 found; the first candidate at d* ends it. So ties go to the lowest index,
       exactly as in the plain loop, whatever order the buckets were visited in.

    Lower bounds prune before any scoring, all from ``ED(q, c) ≥ max(len(q), len(c)) - matches``:

    * per bucket, recomputed after each improvement (once the best distance is at most the longer
      length): the matches a candidate of that length can have, from the query's count of each of its
      characters, capped by the largest count any candidate of that length has where that could rule out
      the whole bucket (128 character slots: one per frequent character, the rest share one; 64-bit
      presence per bucket; counts filled in lazily, one slot or, once a bucket has needed four, the whole
      bucket);
    * per candidate: the distinct characters one string has and the other lacks (each edit removes at
      most one), counted on 64-bit presence masks; then the candidate's characters found in the query.

    Scoring is Hyyrö's bit-parallel Levenshtein (one 64-bit word: queries up to 64 code points) or, for
    longer queries, the row DP; both stop as soon as the distance can no longer come under the limit.
    ``cache=True`` keeps the compiled code on disk (compiling takes a few seconds, once).
    """
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=True, nogil=True)
    def first_min_ed(q_chars: np.ndarray, q_starts: np.ndarray, c_chars: np.ndarray,
                     c_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        one = np.uint64(1)
        zero = np.uint64(0)
        low63 = np.uint64(63)
        m1 = np.uint64(0x5555555555555555)
        m2 = np.uint64(0x3333333333333333)
        m4 = np.uint64(0x0F0F0F0F0F0F0F0F)
        h01 = np.uint64(0x0101010101010101)
        fnv = np.uint64(0x100000001B3)
        basis = np.uint64(0xCBF29CE484222325)
        mix = np.uint64(0xFF51AFD7ED558CCD)
        n_slots = 128
        n_q = q_starts.shape[0] - 1
        n_c = c_starts.shape[0] - 1

        max_cp = 0
        for p in range(c_chars.shape[0]):
            max_cp = max(max_cp, c_chars[p])
        max_len = 0
        for i in range(n_c):
            max_len = max(max_len, c_starts[i + 1] - c_starts[i])
        # candidates by (length, index): bucket[n]:bucket[n + 1] holds the length-n ones, their code
        # points (dense ids) from chars_at[n] on
        bucket = np.zeros(max_len + 2, dtype=np.int64)
        for i in range(n_c):
            bucket[c_starts[i + 1] - c_starts[i] + 1] += 1
        chars_at = np.zeros(max_len + 1, dtype=np.int64)
        for n in range(1, max_len + 1):
            chars_at[n] = chars_at[n - 1] + (n - 1) * bucket[n]
        for n in range(1, max_len + 2):
            bucket[n] += bucket[n - 1]
        fill = bucket.copy()
        s_idx = np.empty(n_c, dtype=np.int64)
        s_start = np.empty(n_c, dtype=np.int64)
        s_mask = np.empty(n_c, dtype=np.uint64)
        n_mask = np.zeros(max_len + 1, dtype=np.uint64)  # per length: the union of the masks
        s_chars = np.empty(c_chars.shape[0], dtype=np.int32)
        dense = np.zeros(max_cp + 1, dtype=np.int32)
        n_alpha = 0
        size = 1
        while size < 2 * n_c:
            size *= 2
        table = np.full(size, -1, dtype=np.int64)  # hash slot -> first candidate index
        c_hash = np.empty(n_c, dtype=np.uint64)
        for i in range(n_c):
            a = c_starts[i]
            n = c_starts[i + 1] - a
            p = fill[n]
            fill[n] += 1
            at = chars_at[n] + (p - bucket[n]) * n
            s_idx[p] = i
            s_start[p] = at
            mask = zero
            h = basis
            for k in range(n):
                cp = c_chars[a + k]
                t = dense[cp]
                if t == 0:
                    n_alpha += 1
                    t = n_alpha
                    dense[cp] = t
                s_chars[at + k] = t
                mask |= one << (np.uint64(t) & low63)
                h = (h ^ np.uint64(cp)) * fnv
            s_mask[p] = mask
            n_mask[n] |= mask
            h = (h ^ (h >> np.uint64(33))) * mix
            h ^= h >> np.uint64(33)
            c_hash[i] = h
            slot = np.int64(h & np.uint64(size - 1))
            while table[slot] >= 0:
                j = table[slot]
                if c_hash[j] == h and c_starts[j + 1] - c_starts[j] == n:
                    same = True
                    for k in range(n):
                        if c_chars[c_starts[j] + k] != c_chars[a + k]:
                            same = False
                            break
                    if same:
                        break
                slot = (slot + 1) & (size - 1)
            if table[slot] < 0:
                table[slot] = i

        most = np.full((max_len + 1, n_slots), -1, dtype=np.int64)  # per length and slot: largest count
        lazy = np.zeros(max_len + 1, dtype=np.int64)  # single slots filled in per bucket
        scratch = np.zeros(n_slots, dtype=np.int64)
        bound_of = np.zeros(max_len + 1, dtype=np.int64)  # per query: bound_of[n] if bound_for[n] == q
        bound_for = np.full(max_len + 1, -1, dtype=np.int64)
        head = np.empty(max_len + 1, dtype=np.int64)  # phase 2: next position per length merged
        head_n = np.empty(max_len + 1, dtype=np.int64)
        lb = 0
        max_q = 0
        for q in range(n_q):
            max_q = max(max_q, q_starts[q + 1] - q_starts[q])
        q_ids = np.empty(max_q, dtype=np.int32)
        q_slots = np.empty(n_slots, dtype=np.int64)
        count = np.zeros(n_slots, dtype=np.int64)  # per query: characters per slot
        peq = np.zeros(n_alpha + 1, dtype=np.uint64)  # per query: id -> its positions in the query
        seen = np.zeros(n_alpha + 1, dtype=np.int64)  # per query: 1 for its ids
        row = np.empty(max_len + 1, dtype=np.int64)
        out = np.empty(n_q, dtype=np.int64)
        exact = np.zeros(n_q, dtype=np.bool_)
        for q in range(n_q):
            qa = q_starts[q]
            m = q_starts[q + 1] - qa
            h = basis
            for j in range(m):
                h = (h ^ np.uint64(q_chars[qa + j])) * fnv
            h = (h ^ (h >> np.uint64(33))) * mix
            h ^= h >> np.uint64(33)
            slot = np.int64(h & np.uint64(size - 1))
            found = -1
            while table[slot] >= 0:
                j = table[slot]
                if c_hash[j] == h and c_starts[j + 1] - c_starts[j] == m:
                    same = True
                    for k in range(m):
                        if c_chars[c_starts[j] + k] != q_chars[qa + k]:
                            same = False
                            break
                    if same:
                        found = j
                        break
                slot = (slot + 1) & (size - 1)
            if found >= 0:
                out[q] = found
                exact[q] = True
                continue

            q_mask = zero
            n_q_slots = 0
            for j in range(m):
                cp = q_chars[qa + j]
                t = dense[cp] if cp <= max_cp else 0
                q_ids[j] = t
                q_mask |= one << (np.uint64(t) & low63)
                s = min(t, n_slots - 1)
                if count[s] == 0:
                    q_slots[n_q_slots] = s
                    n_q_slots += 1
                count[s] += 1
                seen[t] = 1
            bits = 0 < m <= 64
            if bits:
                for j in range(m):
                    peq[q_ids[j]] |= one << np.uint64(j)
            last = one << np.uint64(max(m - 1, 0))
            best_d = max(m, max_len) + 1  # above any distance
            best_i = n_c
            # Phase 1 finds the minimal distance d*: lengths in the order m, m-1, m+1, m-2, ..., each
            # bucket in index order, a candidate counting only if it beats the best so far. Everything it
            # passed over before its last improvement is farther than d*: there the limit was at least
            # d*. Phase 2 finds the first index at d* among the rest: the lengths phase 1 reached later or
            # not at all, merged in index order, below the index phase 1 found.
            phase = 1
            visit = -1  # the how-many-th length phase 1 is at
            visit_best = 0  # ... and was at when it last improved
            p = 0
            p_end = 0
            bound = 1  # no candidate of the current length is closer
            resume = -1  # where to go on in the current length once its bound is (re)computed
            d_star = 0
            n_heads = 0
            while True:
                if phase == 1:
                    if resume < 0 and (p >= p_end or best_d - 1 < bound):  # on to the next length
                        visit += 1
                        delta = (visit + 1) // 2
                        if delta >= best_d or best_d == 1 or (delta > m and m + delta > max_len):
                            phase = 2
                            d_star = best_d
                            for n in range(max(m - d_star, 0), min(m + d_star, max_len) + 1):
                                delta = abs(n - m)
                                if (bucket[n] == bucket[n + 1] or 2 * delta - (n < m) <= visit_best
                                        or (bound_for[n] == q and bound_of[n] > d_star)):
                                    continue
                                head[n_heads] = bucket[n]
                                head_n[n_heads] = n
                                n_heads += 1
                            continue
                        n = m - delta if visit % 2 else m + delta
                        p = p_end = 0
                        if n < 0 or n > max_len or bucket[n] == bucket[n + 1]:
                            continue
                        resume = bucket[n]
                    if resume >= 0:  # the bound of this length, again after each improvement
                        delta = abs(n - m)
                        bound = max(delta, 1)
                        if 1 < best_d <= max(m, n):
                            # the matches a length-n candidate can have: per slot of the query, none if
                            # no length-n candidate has it, else the query's count or, once known, the
                            # largest count a length-n candidate has
                            have = n_mask[n]
                            for attempt in range(2):
                                common = 0
                                spare = 0  # what the unknown largest counts could take off at most
                                for k in range(n_q_slots):
                                    s = q_slots[k]
                                    if s == 0 or (s < n_slots - 1 and (have >> np.uint64(s & 63)) & one == zero):
                                        continue
                                    if attempt and count[s] > 1 and most[n, s] < 0:
                                        if lazy[n] < 4:  # this slot only
                                            lazy[n] += 1
                                            v = 0
                                            for r in range(bucket[n], bucket[n + 1]):
                                                c = 0
                                                for j in range(s_start[r], s_start[r] + n):
                                                    if min(s_chars[j], n_slots - 1) == s:
                                                        c += 1
                                                v = max(v, c)
                                            most[n, s] = v
                                        else:  # every slot of this bucket
                                            for t in range(n_slots):
                                                most[n, t] = 0
                                            for r in range(bucket[n], bucket[n + 1]):
                                                for j in range(s_start[r], s_start[r] + n):
                                                    scratch[min(s_chars[j], n_slots - 1)] += 1
                                                for j in range(s_start[r], s_start[r] + n):
                                                    t = min(s_chars[j], n_slots - 1)
                                                    if scratch[t]:
                                                        most[n, t] = max(most[n, t], scratch[t])
                                                        scratch[t] = 0
                                    c = count[s] if most[n, s] < 0 else min(count[s], most[n, s])
                                    common += c
                                    if most[n, s] < 0:
                                        spare += c - 1
                                lb = max(m, n) - min(common, n)
                                # compute largest counts only where they could rule out the bucket
                                if attempt or lb >= best_d or max(m, n) - min(common - spare, n) < best_d:
                                    break
                            bound = max(bound, lb)
                        bound_of[n] = bound
                        bound_for[n] = q
                        p, p_end = resume, bucket[n + 1]
                        resume = -1
                        continue
                    cand = p
                    p += 1
                    limit = best_d - 1
                else:
                    pick = -1
                    lowest = best_i
                    for k in range(n_heads):
                        r = head[k]
                        if r < bucket[head_n[k] + 1] and s_idx[r] < lowest:
                            lowest = s_idx[r]
                            pick = k
                    if pick < 0:
                        break
                    cand = head[pick]
                    head[pick] += 1
                    n = head_n[pick]
                    limit = d_star
                c_mask = s_mask[cand]
                x = q_mask & ~c_mask
                x = x - ((x >> one) & m1)
                x = (x & m2) + ((x >> np.uint64(2)) & m2)
                x = (((x + (x >> np.uint64(4))) & m4) * h01) >> np.uint64(56)
                if x > limit:
                    continue
                x = c_mask & ~q_mask
                x = x - ((x >> one) & m1)
                x = (x & m2) + ((x >> np.uint64(2)) & m2)
                x = (((x + (x >> np.uint64(4))) & m4) * h01) >> np.uint64(56)
                if x > limit:
                    continue
                ca = s_start[cand]
                hits = 0
                for j in range(ca, ca + n):
                    hits += seen[s_chars[j]]
                if max(m, n) - hits > limit:
                    continue
                if m == 0 or n == 0:
                    d = m + n
                elif bits:  # Hyyrö 2003
                    vp = ~zero
                    vn = zero
                    d = m
                    for j in range(n):
                        pm = peq[s_chars[ca + j]]
                        d0 = (((pm & vp) + vp) ^ vp) | pm | vn
                        hp = vn | ~(d0 | vp)
                        hn = d0 & vp
                        if hp & last:
                            d += 1
                        elif hn & last:
                            d -= 1
                        if d - (n - 1 - j) > limit:
                            break
                        hp = (hp << one) | one
                        hn = hn << one
                        vp = hn | ~(d0 | hp)
                        vn = hp & d0
                else:  # query longer than a machine word: row DP over the candidate
                    for k in range(n + 1):
                        row[k] = k
                    d = -1
                    for a in range(m):
                        ch = q_ids[a]
                        diag = row[0]
                        row[0] = a + 1
                        lowest = row[0]
                        for k in range(1, n + 1):
                            up = row[k]
                            v = diag if s_chars[ca + k - 1] == ch else diag + 1
                            if up + 1 < v:
                                v = up + 1
                            if row[k - 1] + 1 < v:
                                v = row[k - 1] + 1
                            row[k] = v
                            diag = up
                            if v < lowest:
                                lowest = v
                        if lowest > limit:
                            d = limit + 1
                            break
                    if d < 0:
                        d = row[n]
                if d <= limit:
                    best_d = d
                    best_i = s_idx[cand]
                    visit_best = visit
                    if phase == 2:
                        break
                    if p < p_end:
                        resume = p
            for j in range(m):
                t = q_ids[j]
                peq[t] = zero
                seen[t] = 0
                count[min(t, n_slots - 1)] = 0
            out[q] = best_i
        return out, exact

    return first_min_ed


def _first_min_ed_buckets(queries: list[str], cands: list[str]) -> np.ndarray:
    """:func:`_first_min_ed` with rapidfuzz only (the path without numba).

    Callers pass queries that are not candidates, so every distance is ≥ 1, and in a real vocabulary
    most queries have a candidate at distance 1. Since ``ED(q, c) ≥ |len(q) - len(c)|``, those candidates
    have a length within one of the query's:

    1. For each candidate length n, one rapidfuzz ``cdist`` call scores the bucket of length-n candidates
       against the queries of length n-1, n, n+1 with ``score_cutoff=1`` (larger distances come back as
       2). A query that meets distance ≤ 1 is settled: its answer is the lowest-index candidate at its
       minimum over its three buckets, which hold every candidate that can be that close.
    2. The queries left (minimum ≥ 2) are scored against all candidates in one call.

    rapidfuzz converts its Python string arguments on every call, which costs more than the distances
    here, so the calls are arranged to convert each candidate once or twice in total.
    """
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    n_cands = len(cands)
    result = np.full(len(queries), n_cands, dtype=np.int64)
    if not queries:
        return result
    if not cands:
        raise ValueError("the base vocabulary is empty")
    qlen = np.fromiter((len(q) for q in queries), dtype=np.int64, count=len(queries))
    clen = np.fromiter((len(c) for c in cands), dtype=np.int64, count=n_cands)
    best = np.full(len(queries), 2, dtype=np.int64)  # distance of result[q]; 2 = "none ≤ 1 yet"
    order = np.argsort(clen, kind="stable")  # candidates grouped by length, index order inside a group
    lengths, starts = np.unique(clen[order], return_index=True)
    ends = np.append(starts[1:], n_cands)
    by_length = [cands[c] for c in order.tolist()]
    for n, a, b in zip(lengths.tolist(), starts.tolist(), ends.tolist(), strict=True):
        near = np.flatnonzero(np.abs(qlen - n) <= 1)
        if not len(near):
            continue
        idx = order[a:b]
        d = process.cdist([queries[q] for q in near.tolist()], by_length[a:b],
                          scorer=Levenshtein.distance, score_cutoff=1, workers=1, dtype=np.int32)
        dist = d.min(axis=1)
        first = np.where(d == dist[:, None], idx[None, :], n_cands).min(axis=1)
        better = (dist <= 1) & ((dist < best[near]) | ((dist == best[near]) & (first < result[near])))
        best[near[better]] = dist[better]
        result[near[better]] = first[better]
    left = np.flatnonzero(result == n_cands)
    if len(left):
        d = process.cdist([queries[q] for q in left.tolist()], cands, scorer=Levenshtein.distance, workers=-1,
                          dtype=np.int64)
        result[left] = d.argmin(axis=1)  # np.argmin: the first minimum
    return result


def vocab_map(source_vocab: Mapping[str, int] | Sequence[str], base_vocab: Mapping[str, int] | Sequence[str], *,
              source_marker: str, base_marker: str, source_width: int | None = None,
              base_width: int | None = None, reference_compat: str | Iterable[str] | None = None) -> VocabMap:
    """The reference MinED vocabulary map (FuseLLM ``vocab_mapping.py``, type ``default``), id → id.

    For every source piece ``x``: ``x' = x.replace(source_marker, base_marker)`` (all occurrences; no
    replacement when the source has no marker); if ``x'`` is a base piece it maps there, otherwise to the
    base piece with the smallest edit distance to ``x'``, the first in ``base_vocab``'s iteration order
    winning ties. Markers are replaced, not stripped, so 'Ċ' vs '<0x0A>' gets an arbitrary nearest piece,
    exactly like the reference.

    ``base_vocab`` order matters for ties: pass ``tokenizer.get_vocab()`` for the reference's dict order
    (a hash order for fast tokenizers) or a list in id order for a deterministic one. ``source_width`` /
    ``base_width`` are the models' logit widths (Q11): the result has ``source_width`` entries (ids without
    a piece map to -1) and base ids ≥ ``base_width`` are not candidates, since the model cannot predict
    them. With ``"q12"`` in ``reference_compat`` the reference's string-keyed dictionary is built too;
    ``ids`` is then read from it, which gives the same array (the value depends only on ``x'``).
    """
    compat = compat_set(reference_compat)
    src_pieces, src_ids = _as_vocab(source_vocab)
    base_pieces, base_ids = _as_vocab(base_vocab)
    if base_width is not None:
        keep = base_ids < base_width
        base_pieces = [p for p, k in zip(base_pieces, keep.tolist(), strict=True) if k]
        base_ids = base_ids[keep]
    width = int(src_ids.max(initial=-1)) + 1 if source_width is None else int(source_width)
    if len(src_ids) and src_ids.max() >= width:
        raise ValueError(f"source id {int(src_ids.max())} ≥ source_width {width}")

    key_of = [p.replace(source_marker, base_marker) for p in src_pieces] if source_marker else list(src_pieces)
    keys = dict(zip(reversed(key_of), reversed(src_ids.tolist()), strict=True))
    pos, exact_src = _nearest_pieces(key_of, base_pieces)

    ids = np.full(width, -1, dtype=np.int64)
    exact = np.zeros(width, dtype=bool)
    by_string = None
    if "q12" in compat:  # the reference's structure, then read back through it
        by_string = {k: base_pieces[p] for k, p in zip(key_of, pos.tolist(), strict=True)}
        base_id_of = dict(zip(reversed(base_pieces), reversed(base_ids.tolist()), strict=True))
        ids[src_ids] = [base_id_of[by_string[k]] for k in key_of]
    else:
        ids[src_ids] = base_ids[pos]
    exact[src_ids] = exact_src
    return VocabMap(ids=ids, exact=exact, keys=keys, by_string=by_string)


def vocab_map_for_tokenizers(source_tokenizer: Any, base_tokenizer: Any, *, source_width: int | None = None,
                             base_width: int | None = None, order: Literal["id", "dict"] = "id",
                             reference_compat: str | Iterable[str] | None = None) -> VocabMap:
    """:func:`vocab_map` between two transformers tokenizers, markers from their detected specs.

    ``order="id"`` scans base candidates in id order (deterministic, and what a slow SentencePiece
    tokenizer's ``get_vocab()`` gives); ``"dict"`` uses ``get_vocab()``'s own order like the reference.
    """
    src_spec, base_spec = detect_spec(source_tokenizer), detect_spec(base_tokenizer)
    src_vocab = source_tokenizer.get_vocab()
    base_vocab = base_tokenizer.get_vocab()
    if order == "id":
        base_vocab = dict(sorted(base_vocab.items(), key=lambda kv: kv[1]))
    return vocab_map(src_vocab, base_vocab, source_marker=src_spec.marker, base_marker=base_spec.marker,
                     source_width=source_width, base_width=base_width, reference_compat=reference_compat)


# --------------------------------------------------------------------------------------------------
# 4. Moving a source top-k distribution onto the base positions
# --------------------------------------------------------------------------------------------------

MAPPED, FALLBACK, EMPTY = 0, 1, 2

# Keyword arguments of map_distribution that reproduce FuseLLM's transform_step_logits (soft MinED).
FUSELLM_REFERENCE: dict[str, Any] = {
    "one_to_many": "fallback",
    "match": "reference",
    "reference_compat": frozenset({"q1", "q5"}),
}


@dataclass(frozen=True)
class MappedTopK:
    """Per base position, a sparse distribution over base ids (fixed width, padded).

    ``ids`` (int32, -1 padding) and ``logits`` (float32, -inf padding) hold the entries, highest first;
    a softmax over a row's entries is the target distribution. ``status`` is :data:`MAPPED` (from the
    source distribution at ``source[i]``), :data:`FALLBACK` (one-hot, logit 1.0 as in the reference) or
    :data:`EMPTY` (aligned, but no top-k entry maps into the base vocabulary: the reference's "bad case",
    where the collator substitutes the base model's own distribution).
    """

    ids: np.ndarray
    logits: np.ndarray
    status: np.ndarray
    source: np.ndarray

    def row(self, i: int) -> list[tuple[int, float]]:
        keep = self.ids[i] >= 0
        return list(zip(self.ids[i][keep].tolist(), self.logits[i][keep].tolist(), strict=True))


def _fallback_ids(base_ids: np.ndarray, current: bool) -> np.ndarray:
    """One-hot target per position: the next base token (row i predicts i+1; the last repeats itself,
    as FuseChat's shifted labels do) or, under Q1, the current one."""
    if current or len(base_ids) == 0:
        return base_ids.copy()
    return np.concatenate([base_ids[1:], base_ids[-1:]])


def _match_single(base: Tokenization, source: Tokenization, i: int, j: int, vmap_ids: np.ndarray,
                  vm: VocabMap | None, match: str) -> bool:
    """Whether base position i and its single aligned source position j stand for the same token.

    ``"reference"``: FuseLLM soft check, ``vocab_map(st) == bt`` (st = source piece with the base
    marker), including its first-token case: at i = 0, a source without a dummy prefix space and a
    base piece starting with the marker, the marker is prepended to st before comparing.
    ``"surface"`` (default) also accepts equal surfaces (dummy prefix removed, so the first-token case
    needs no special rule, and 'Ċ' matches '<0x0A>') and equal roles for special tokens (BOS ↔ BOS).
    """
    sid = int(source.ids[j])
    bid = int(base.ids[i])
    bt = base.pieces[i]
    st = source.spec.replace_marker(source.pieces[j], base.spec)
    mapped = 0 <= sid < len(vmap_ids) and vmap_ids[sid] == bid  # vocab_map(st) == bt
    if match == "reference":
        marker = base.spec.marker
        if (i == 0 and marker and not source.spec.prefix_space and bt.startswith(marker)
                and not st.startswith(marker)):
            st = marker + st  # the rewritten string is what the reference compares and looks up
            return st == bt or (vm is not None and vm.lookup(st) == bid)
        return st == bt or mapped
    if st == bt or mapped:
        return True
    b_surf = base.surfaces[i]
    if b_surf:
        return b_surf == source.surfaces[j]
    role = base.spec.role(bt)
    return role is not None and role == source.spec.role(source.pieces[j])


def map_distribution(alignment: Alignment, base: Tokenization, source: Tokenization, topk_ids: Any,
                     topk_logits: Any, vocab: VocabMap | np.ndarray, *,
                     one_to_many: Literal["last", "fallback"] = "last",
                     fallback: Literal["next", "current"] | None = None,
                     collision: Literal["sum", "first"] | None = None,
                     match: Literal["surface", "reference"] = "surface",
                     base_width: int | None = None, k_out: int | None = None,
                     reference_compat: str | Iterable[str] | None = None) -> MappedTopK:
    """Move the source's per-position top-k (ids ``[M, k]``, logits or log-probs ``[M, k]``) onto the
    base positions of ``alignment`` (spec §2.2).

    Per base position i with aligned source positions js:

    * one source position (1-1 or many-to-one): if i and j match (:func:`_match_single`), the source
      distribution at j is used; otherwise one-hot fallback.
    * several (one-to-many): ``one_to_many="last"`` (default) uses the distribution of the LAST source
      token when the source surfaces concatenate to the base token's surface — it predicts what follows
      the whole word, as row i does; otherwise fallback. ``"fallback"`` always falls back (FuseLLM).
    * fallback: one-hot on the next base token (``fallback="next"``, default) or on the current one
      (``"current"``, Q1 / FuseLLM).

    A used distribution is walked in descending logit order; each source id goes through ``vocab``
    (entries without a base id are dropped); entries landing on the same base id are merged by
    ``collision``: ``"sum"`` (default; logsumexp of their logits, i.e. their probability mass is summed)
    or ``"first"`` (Q5; keep the first, highest). If nothing survives the row is :data:`EMPTY`. Rows keep
    at most ``k_out`` entries (default: k). ``base_width`` is the base model's logit width (Q11): mapped
    or fallback ids at or beyond it raise. ``fallback``/``collision`` left as None follow
    ``reference_compat`` (``"q1"``, ``"q5"``); explicit values win. :data:`FUSELLM_REFERENCE` holds the
    keyword arguments that reproduce FuseLLM.
    """
    compat = compat_set(reference_compat)
    fallback = fallback or ("current" if "q1" in compat else "next")
    collision = collision or ("first" if "q5" in compat else "sum")
    if one_to_many not in ("last", "fallback") or fallback not in ("next", "current") \
            or collision not in ("sum", "first") or match not in ("surface", "reference"):
        raise ValueError("bad option: one_to_many in {last, fallback}, fallback in {next, current}, "
                         "collision in {sum, first}, match in {surface, reference}")
    if base.ids is None or source.ids is None:
        raise ValueError("map_distribution needs token ids on both tokenizations")
    n_base, n_src = len(base), len(source)
    if len(alignment) != n_base or alignment.n_source != n_src:
        raise ValueError(f"alignment is {len(alignment)}×{alignment.n_source}, tokenizations {n_base}×{n_src}")
    tids = np.asarray(topk_ids).astype(np.int64, copy=False)
    tlog = np.asarray(topk_logits, dtype=np.float64)
    if tids.shape != tlog.shape or tids.ndim != 2 or tids.shape[0] != n_src:
        raise ValueError(f"top-k arrays must both be [{n_src}, k]; got {tids.shape} and {tlog.shape}")
    vm = vocab if isinstance(vocab, VocabMap) else None
    vmap_ids = np.asarray(vocab.ids if vm is not None else vocab, dtype=np.int64)
    if (tids >= len(vmap_ids)).any():
        raise ValueError(f"source top-k id {int(tids.max())} is outside the vocab map (width {len(vmap_ids)}); "
                         "build the map with source_width = the source model's logit width")
    k = tids.shape[1]
    k_out = max(k, 1) if k_out is None else int(k_out)
    if k_out < 1:
        raise ValueError("k_out must be at least 1")

    # Decide, per base position, whose distribution it gets.
    use = np.full(n_base, -1, dtype=np.int64)
    counts = alignment.counts()
    for i in range(n_base):
        js = alignment[i]
        if counts[i] == 1:
            j = int(js[0])
            if _match_single(base, source, i, j, vmap_ids, vm, match):
                use[i] = j
        elif one_to_many == "last":
            b_surf = base.surfaces[i]
            if b_surf and b"".join(source.surfaces[j] for j in js.tolist()) == b_surf:
                use[i] = int(js[-1])

    out_ids = np.full((n_base, k_out), -1, dtype=np.int32)
    out_log = np.full((n_base, k_out), -np.inf, dtype=np.float32)
    status = np.full(n_base, FALLBACK, dtype=np.int8)

    rows = np.flatnonzero(use >= 0)
    if len(rows):
        src_rows = use[rows]
        ids = tids[src_rows]
        lg = tlog[src_rows]
        order = np.argsort(-lg, axis=1, kind="stable")  # the reference walks highest logit first
        ids = np.take_along_axis(ids, order, axis=1)
        lg = np.take_along_axis(lg, order, axis=1)
        valid = (ids >= 0) & (lg > -np.inf)  # -1 ids / -inf logits are padding; NaN is dropped too
        mapped = np.where(valid, vmap_ids[np.where(ids >= 0, ids, 0)], -1)
        r_idx = np.repeat(np.arange(len(rows)), k)
        c_idx = np.tile(np.arange(k), len(rows))
        m_flat = mapped.reshape(-1)
        l_flat = lg.reshape(-1)
        keep = m_flat >= 0
        r_idx, c_idx, m_flat, l_flat = r_idx[keep], c_idx[keep], m_flat[keep], l_flat[keep]
        # group entries by (row, base id), each group in walk order
        srt = np.lexsort((c_idx, m_flat, r_idx))
        r_idx, c_idx, m_flat, l_flat = r_idx[srt], c_idx[srt], m_flat[srt], l_flat[srt]
        new_group = np.ones(len(r_idx), dtype=bool)
        new_group[1:] = (r_idx[1:] != r_idx[:-1]) | (m_flat[1:] != m_flat[:-1])
        starts = np.flatnonzero(new_group)
        g_row, g_id, g_col = r_idx[starts], m_flat[starts], c_idx[starts]
        if len(starts) == 0:
            g_val = l_flat[:0]
        elif collision == "first":
            g_val = l_flat[starts]
        else:
            g_val = np.logaddexp.reduceat(l_flat, starts)
        # order within each row: highest value first, ties in walk order; then truncate to k_out
        srt = np.lexsort((g_col, -g_val, g_row))
        g_row, g_id, g_val = g_row[srt], g_id[srt], g_val[srt]
        row_start = np.searchsorted(g_row, g_row, side="left")
        rank = np.arange(len(g_row)) - row_start
        fit = rank < k_out
        out_ids[rows[g_row[fit]], rank[fit]] = g_id[fit]
        out_log[rows[g_row[fit]], rank[fit]] = g_val[fit]
        status[rows] = EMPTY
        status[rows[np.unique(g_row)]] = MAPPED

    fb_rows = np.flatnonzero(use < 0)
    fb = _fallback_ids(base.ids, current=fallback == "current")
    out_ids[fb_rows, 0] = fb[fb_rows]
    out_log[fb_rows, 0] = 1.0
    if base_width is not None and (out_ids >= base_width).any():
        raise ValueError(f"base id {int(out_ids.max())} ≥ base_width {base_width}")
    source_used = np.where(status == FALLBACK, -1, use)
    return MappedTopK(ids=out_ids, logits=out_log, status=status, source=source_used)
