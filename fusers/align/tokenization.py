"""One tokenization of a text (:class:`Tokenization`) and the byte spans its tokens cover in that text.

Pieces, ids, the text and the tokenizer's character offsets when it gives them;
:meth:`Tokenization.byte_spans` places every token on a byte stream of the text, which is what the offsets
alignment (:mod:`fusers.align.sequence`) compares. :func:`map_spans` carries spans across two spellings of one text.
"""

from __future__ import annotations

import difflib
import itertools
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from fusers.align.spec import TokenizerSpec, detect_spec

_PIECE_TABLES: weakref.WeakKeyDictionary[Any, np.ndarray] = weakref.WeakKeyDictionary()


def pieces_of(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """``tokenizer.convert_ids_to_tokens(ids)``, read from a table of every id's piece built once per tokenizer
    (and again when its length changes, e.g. after ``add_tokens``): a transformers call per id costs more than
    aligning the token. Tokenizers that cannot be weakly referenced, and ids outside the table, are converted
    directly."""
    n = len(tokenizer)
    try:
        table = _PIECE_TABLES.get(tokenizer)
    except TypeError:  # not weakly referenceable
        return list(tokenizer.convert_ids_to_tokens(list(ids)))
    if table is None or len(table) != n:
        table = np.empty(n, dtype=object)
        table[:] = tokenizer.convert_ids_to_tokens(list(range(n)))
        _PIECE_TABLES[tokenizer] = table
    index = np.asarray(ids, dtype=np.int64)
    if index.size and (int(index.min()) < 0 or int(index.max()) >= n):
        return list(tokenizer.convert_ids_to_tokens([int(i) for i in index]))
    return table[index].tolist()


def _plain_backend(tokenizer: Any) -> Any:
    """The ``tokenizers`` backend of a fast tokenizer when encoding with it directly gives what
    ``tokenizer(text)`` gives: no truncation or padding set on it (transformers would switch them off for
    that call) and its special-token splitting as the tokenizer's. Otherwise None."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return None
    if bool(getattr(backend, "encode_special_tokens", False)) != bool(getattr(tokenizer, "split_special_tokens",
                                                                              False)):
        return None
    return backend


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
        backend = _plain_backend(tokenizer)
        if backend is not None:  # what tokenizer(text) would run, without building its Python lists
            encoding = backend.encode(text, add_special_tokens=add_special_tokens)
            ids = np.array(encoding.ids, dtype=np.int64)
            offsets = np.array(encoding.offsets, dtype=np.int64).reshape(-1, 2) if want else None
        else:
            enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=want)
            ids = np.asarray(list(enc["input_ids"]), dtype=np.int64)
            offsets = np.asarray(enc["offset_mapping"], dtype=np.int64) if want else None
        return cls(pieces_of(tokenizer, ids), spec, ids=ids, text=text, offsets=offsets)

    @classmethod
    def from_ids(cls, tokenizer: Any, ids: Sequence[int], *, spec: TokenizerSpec | None = None,
                 text: str | None = None, dummy_prefix: bool | None = None) -> Tokenization:
        """Wrap stored ids (no offsets): spans will come from the surfaces."""
        spec = spec or detect_spec(tokenizer)
        ids = [int(i) for i in ids]
        return cls(pieces_of(tokenizer, ids), spec, ids=np.asarray(ids, dtype=np.int64), text=text,
                   dummy_prefix=dummy_prefix)

    def __len__(self) -> int:
        return len(self.pieces)

    def distinct(self, normalise: Callable[[str], str] | None = None) -> tuple[list[str], np.ndarray]:
        """``(strings, codes)`` with ``normalise(pieces[t]) == strings[codes[t]]``, ``normalise`` called once per
        distinct piece (a 2,048-token text has a few hundred)."""
        index: dict[str, int] = {}
        codes = np.fromiter(map(index.setdefault, self.pieces, itertools.count()), dtype=np.int64,
                            count=len(self.pieces))
        return (list(index) if normalise is None else [normalise(p) for p in index]), _dense(codes)

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
        spans are carried over to the text with a byte diff (:func:`map_spans`).
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
                starts, ends = map_spans(concat, stream, starts, ends)
            return stream, starts, ends
        return concat, starts, ends


def _dense(codes: np.ndarray) -> np.ndarray:
    """Codes made by ``setdefault(key, running count)`` renumbered 0, 1, 2, ... in order of first appearance
    (the count also advanced on the keys already seen)."""
    if not len(codes):
        return codes
    first = np.flatnonzero(codes == np.arange(len(codes)))  # where a key got its own position as code
    renumber = np.zeros(len(codes), dtype=np.int64)
    renumber[first] = np.arange(len(first))
    return renumber[codes]


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


def map_spans(src: bytes, dst: bytes, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
