"""The fusion corpus as text chunks every model can read whole, and how each model tokenizes them.

Every model must see exactly the same text, so documents are cut into chunks that fit ``max_tokens`` under
*every* tokenizer, preferably at line breaks (:func:`chunk_documents`). A document's first chunk is read after
the model's EOS token, which is how the zoo's packed training stream and ``bits_per_byte`` present a document,
so every one of its tokens is predicted (:class:`ChunkEncoder`). The byte helpers say which bytes each row
predicts and which rows predict a response (the response-only loss of the chat fusers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusers.align import Tokenization, TokenizerSpec, detect_spec


@dataclass(frozen=True)
class TextChunk:
    """A piece of document ``doc``. ``doc_start``: the document's first chunk, read after the EOS token."""

    doc: int
    text: str
    doc_start: bool


def chunk_documents(documents: Sequence[str], tokenizers: Sequence[Any], max_tokens: int,
                    margin: int = 8) -> list[TextChunk]:
    """Cut ``documents`` into chunks of at most ``max_tokens`` tokens under every tokenizer (EOS included).

    Why: teachers must score the same text the target is trained on, within the context they were trained
    with. The cut goes where the first tokenizer runs out of budget (less ``margin`` tokens, since a chunk
    tokenizes a little differently from the whole document around the cut), moved back to the last line
    break (else space) in the second half of the chunk, and is checked by re-tokenizing: FuseLLM's
    ``split_long_text.py`` does the same with a 48-token margin and no check.
    """
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
    chunks: list[TextChunk] = []
    for d, doc in enumerate(documents):
        rest, start = doc, True
        while rest:
            cut = _cut_point(rest, tokenizers, max_tokens - int(start), margin)
            chunks.append(TextChunk(d, rest[:cut], start))
            rest, start = rest[cut:], False
    return chunks


def _n_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _cut_point(text: str, tokenizers: Sequence[Any], budget: int, margin: int) -> int:
    """How many leading characters of ``text`` form the next chunk (see :func:`chunk_documents`)."""
    margin = min(margin, budget // 4)
    limit = len(text)
    for tok in tokenizers:
        fast = bool(getattr(tok, "is_fast", False))
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=fast)
        n = len(enc["input_ids"])
        if n > budget:
            if fast:
                limit = min(limit, int(enc["offset_mapping"][budget - margin][0]))
            else:  # no offsets: assume evenly sized tokens, the check below corrects it
                limit = min(limit, len(text) * (budget - margin) // n)
    if limit >= len(text):
        return len(text)
    cut = max(limit, 1)
    for sep in ("\n", " "):
        at = text.rfind(sep, limit // 2, limit)
        if at > 0:
            cut = at + 1 if sep == "\n" else at  # a space starts the next word's token
            break
    while cut > 1 and any(_n_tokens(tok, text[:cut]) > budget for tok in tokenizers):
        cut = max(1, int(cut * 0.9))
    return cut


def chunks_fingerprint(chunks: Sequence[TextChunk], max_tokens: int) -> str:
    """Content hash of a chunked corpus: part of every store key."""
    h = hashlib.sha256(f"chunks:{max_tokens}".encode())
    for c in chunks:
        h.update(b"\x01" if c.doc_start else b"\x00")
        h.update(len(c.text).to_bytes(8, "little"))
        h.update(c.text.encode("utf-8"))
    return h.hexdigest()[:16]


class ChunkEncoder:
    """Tokenizes chunks for one tokenizer the way every stage needs them: ids, offsets, EOS first at a doc start."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.spec: TokenizerSpec = detect_spec(tokenizer)
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
        if eos is None:
            raise ValueError("the tokenizer has neither an EOS nor a BOS token to start documents with")
        self.eos_id = int(eos)
        self.eos_piece = tokenizer.convert_ids_to_tokens(self.eos_id)

    def encode(self, chunk: TextChunk) -> Tokenization:
        tz = Tokenization.from_text(self.tokenizer, chunk.text, spec=self.spec)
        if not chunk.doc_start:
            return tz
        offsets = None if tz.offsets is None else np.concatenate([np.zeros((1, 2), np.int64), tz.offsets])
        return Tokenization([self.eos_piece, *tz.pieces], self.spec, ids=np.concatenate([[self.eos_id], tz.ids]),
                            text=tz.text, offsets=offsets)

    def ids(self, chunk: TextChunk) -> list[int]:
        ids = self.tokenizer(chunk.text, add_special_tokens=False)["input_ids"]
        return [self.eos_id, *ids] if chunk.doc_start else list(ids)


def predicted_bytes(tz: Tokenization) -> np.ndarray:
    """uint16 [n]: UTF-8 bytes of the token each row predicts (row t predicts token t+1; 0 for the last row).

    Byte spans come from the tokenizer's offsets into the text, so a SentencePiece dummy prefix space, which
    is not in the text, counts for nothing, and the bytes of all rows sum to the text's predicted bytes.
    """
    _, starts, ends = tz.byte_spans()
    out = np.zeros(len(tz), dtype=np.uint16)
    out[:-1] = np.clip(ends[1:] - starts[1:], 0, np.iinfo(np.uint16).max)
    return out


def text_byte_spans(text: str, char_spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """int64 [n, 2]: character spans of ``text`` as UTF-8 byte spans (what :meth:`Tokenization.byte_spans` uses)."""
    return np.asarray([(len(text[:a].encode("utf-8")), len(text[:b].encode("utf-8"))) for a, b in char_spans],
                      dtype=np.int64).reshape(-1, 2)


def rows_predicting(tz: Tokenization, byte_spans: np.ndarray) -> np.ndarray:
    """bool [n]: row t counts when token t+1 overlaps one of ``byte_spans`` (e.g. a chat response).

    The response-only loss of FuseChat/ProFuser: the rows that predict instruction or template tokens are
    masked. A token that straddles a span's edge counts (its bytes are partly response); tokens with no text
    (EOS, special tokens outside the text) never do. The last row predicts nothing inside the chunk.
    """
    _, starts, ends = tz.byte_spans()
    inside = np.zeros(len(tz), dtype=bool)
    for a, b in np.asarray(byte_spans, dtype=np.int64).reshape(-1, 2):
        inside |= (ends > a) & (starts < b) & (ends > starts)
    rows = np.zeros(len(tz), dtype=bool)
    rows[:-1] = inside[1:]
    return rows
