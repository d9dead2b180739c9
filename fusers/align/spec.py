"""What a tokenizer's pieces mean: the per-tokenizer marker table (spec §2.4) and piece surfaces.

:class:`TokenizerSpec` is detected from the tokenizer's backend (pre-tokenizer, normalizer, decoder,
model) by :func:`detect_spec`, never from its Python class: the reference keys markers on the class and so
gets a Llama *fast* tokenizer wrong. It knows the word-start marker (``'Ġ'`` for byte-level BPE, ``'▁'``
for SentencePiece/Metaspace, none otherwise), how a newline is spelled (``'Ċ'`` / ``'<0x0A>'``), whether
``<0xNN>`` byte-fallback pieces exist and whether a dummy prefix space is added to the first word.
:meth:`TokenizerSpec.surface` turns a piece into the bytes it stands for, so ``'Ċ'`` and ``'<0x0A>'`` both
mean ``b"\\n"`` and ``'Ġthe'`` and ``'▁the'`` both mean ``b" the"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

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
