"""Distillation machinery shared by the training-based fusers (FuseLLM now; FuseChat and ProFuser reuse it).

A training-based fuser teaches one *target* model from the next-token distributions of several *teachers*
(the sources, plus the target's own initial distribution, the reference's "ref model"). This module holds
every piece of that except the method-specific orchestration (spec ``fusion-algorithms.md`` §1, §3, §4, §12):

1. **Fusion corpus as text chunks** (:func:`chunk_documents`). Every model must see exactly the same text,
   so documents are cut into chunks that fit ``max_tokens`` under *every* tokenizer, preferably at line
   breaks. A document's first chunk is read after the model's EOS token, which is how the zoo's packed
   training stream and ``bits_per_byte`` present a document, so every one of its tokens is predicted.

2. **Teacher distributions** (:func:`teacher_rows`, :class:`TeacherRows`). Per chunk and teacher, in the
   teacher's own tokenization: the top-k next-token log-probabilities with their ids (over the model's
   logit width, not the tokenizer's length: quirk Q11), the per-token cross-entropy of the actual next token,
   and per-chunk sums (nats, predicted tokens, predicted UTF-8 bytes). Top-k log-probs are the top-k logits
   shifted by one constant per row, so a softmax over the kept entries is the reference's
   ``softmax(top-k logits)``; they are stored instead because they also keep the absolute mass.

3. **Storage** (:class:`ShardedStore`). Rows live in memory-mapped ``.npy`` shards: int32 ids + float16
   log-probs = 6·k bytes per token, plus 8 bytes per token for the input id, the float16 token CE and the
   uint16 byte length of the predicted token (``benchmarks/bench_distill.py`` prints the measured total). A
   shard appears by an atomic rename once complete, so an interrupted run resumes at the first missing one.
   Small sources can skip storage: :class:`OnlineCandidates` computes the same rows per batch.

4. **Into the target's positions and vocabulary** (:func:`target_rows`). A teacher that tokenizes a chunk
   exactly like the target is used as is (the target itself, or a source sharing its vocabulary); any other
   goes through :mod:`fusers.align`: sequence alignment, MinED vocabulary map, distribution mapping. Each
   target position then holds, per candidate, k (id, log-prob) entries and a status (mapped / one-hot
   fallback / empty); empty rows take the target's own distribution, as the reference's collator does.

5. **Fusion functions** (:func:`candidate_scores`, :func:`fuse_topk`). A score per position and candidate
   (its cross-entropy at ``sequence``, ``token`` or packed-``block`` granularity, per UTF-8 byte by default
   so that tokenizers with different granularities compare fairly, quirk Q13), then MinCE (the lowest score
   wins), reference AvgCE (weights ``softmax(exp(-CE))``) or ``softmax(-CE/τ)``. The result stays sparse:
   at most C·k (id, probability) pairs per position.

6. **The objective** (:func:`fusion_loss`): ``λ·CLM + (1-λ)·Σ_v -q_v·log_softmax(z)_v`` with the sum over the
   sparse entries only (a gather on the student's log-softmax; never a dense [L, V] target), both terms from
   one log-softmax.

7. **Training under accelerate** (:func:`train_with_accelerate`): the model and the dataloader are prepared
   by ``accelerate.Accelerator`` (DDP over gloo on CPU, NCCL on GPUs) and trained by the shared loop of
   :mod:`harness.train` through its ``loss_fn`` hook. Training batches are fixed-length blocks of the packed
   target stream (the documents' chunks concatenated, as FuseLLM's ``packing.py`` does and as the zoo was
   trained), so every process holds the same number of positions and DDP's gradient average equals the
   single-process gradient of the same global batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from fusers.align import (
    EMPTY,
    FALLBACK,
    MAPPED,
    Alignment,
    Tokenization,
    TokenizerSpec,
    VocabMap,
    align_sequences,
    detect_spec,
    fusechat_distribution,
    map_distribution,
)

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch import Tensor, nn

    from harness.train import TrainConfig, TrainStats

Fusion = Literal["min_ce", "avg_ce", "avg_ce_softmax"]
Granularity = Literal["sequence", "token", "block"]
FUSIONS: tuple[str, ...] = ("min_ce", "avg_ce", "avg_ce_softmax")
GRANULARITIES: tuple[str, ...] = ("sequence", "token", "block")
STORE_VERSION = "1"  # bump when what a store holds changes


# --------------------------------------------------------------------------------------------------
# 1. The fusion corpus as text chunks every model can read whole
# --------------------------------------------------------------------------------------------------


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


def masked_sums(store: ShardedStore, row_masks: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Per chunk, a teacher store's ``nats``/``n_tokens``/``n_bytes`` over the rows in ``row_masks[i]`` only.

    ``row_masks[i]`` is in the store's own tokenization of chunk i (:func:`rows_predicting`). Sequence-level
    MinCE then judges each teacher on the responses alone, as FuseChat does per dialogue. Sums come from the
    stored float16 token CEs (the unmasked sums are exact float64; the difference is rounding).
    """
    offsets = store.item_offsets()
    if len(row_masks) != len(offsets) - 1:
        raise ValueError(f"{len(row_masks)} row masks for a store of {len(offsets) - 1} chunks")
    ce, nbytes = store.rows("token_ce"), store.rows("token_bytes")
    out = {name: np.zeros(len(row_masks), dtype=np.float64) for name in SUM_FIELDS}
    for i, mask in enumerate(row_masks):
        a, b = int(offsets[i]), int(offsets[i + 1])
        if len(mask) != b - a:
            raise ValueError(f"chunk {i}: a row mask of {len(mask)} rows for {b - a} stored rows")
        rows = np.asarray(mask, dtype=bool) & ~np.isnan(np.asarray(ce[a:b], dtype=np.float64))
        out["nats"][i] = float(np.asarray(ce[a:b], dtype=np.float64)[rows].sum())
        out["n_tokens"][i] = float(rows.sum())
        out["n_bytes"][i] = float(np.asarray(nbytes[a:b], dtype=np.float64)[rows].sum())
    return out


# --------------------------------------------------------------------------------------------------
# 2. Teacher distributions
# --------------------------------------------------------------------------------------------------


@dataclass
class TeacherRows:
    """One chunk through one teacher, in the teacher's tokenization (n tokens, k kept entries per row).

    Row t is the distribution of token t+1. ``token_ce[t]`` = -log p(token t+1) (NaN for the last row, which
    has no next token in the chunk); ``token_bytes[t]`` = UTF-8 bytes of token t+1. ``nats``/``n_tokens``/
    ``n_bytes`` sum over the predicted tokens in float64, before the float16 rounding of the stored rows.
    """

    tokens: np.ndarray  # int32 [n]
    topk_ids: np.ndarray  # int32 [n, k]
    topk_logp: np.ndarray  # float16 [n, k], highest first
    token_ce: np.ndarray  # float16 [n]
    token_bytes: np.ndarray  # uint16 [n]
    nats: float
    n_tokens: int
    n_bytes: int


ROW_FIELDS = ("tokens", "topk_ids", "topk_logp", "token_ce", "token_bytes")
SUM_FIELDS = ("nats", "n_tokens", "n_bytes")


def logit_width(model: nn.Module) -> int:
    """The model's output width (``config.vocab_size``, possibly padded past the tokenizer: Q11)."""
    emb = model.get_output_embeddings()
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.vocab_size)


@torch.no_grad()
def teacher_rows(model: nn.Module, encoded: Sequence[Tokenization], k: int, batch_size: int = 16) -> list[TeacherRows]:
    """Run ``model`` over tokenized chunks and keep, per position, the top-``k`` log-probs and the token CE.

    Chunks are batched by length (right padding plus attention mask; causal attention keeps padding from
    touching real positions). The top-k is taken over the model's full logit width (Q11).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[TeacherRows | None] = [None] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    try:
        for b in range(0, len(order), batch_size):
            group = order[b : b + batch_size]
            width = max(len(encoded[i]) for i in group)
            ids = torch.zeros((len(group), width), dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, i in enumerate(group):
                ids[row, : len(encoded[i])] = torch.as_tensor(encoded[i].ids)
                mask[row, : len(encoded[i])] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits  # [B, L, V]
            logp = torch.log_softmax(logits.float(), dim=-1)  # [B, L, V]
            top_logp, top_ids = logp.topk(min(k, logp.shape[-1]), dim=-1)  # [B, L, k]
            ce = -logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)  # [B, L-1]: row t scores token t+1
            top_logp, top_ids, ce = top_logp.cpu().numpy(), top_ids.cpu().numpy(), ce.double().cpu().numpy()
            for row, i in enumerate(group):
                n = len(encoded[i])
                token_ce = np.full(n, np.nan)
                token_ce[: n - 1] = ce[row, : n - 1]
                token_bytes = predicted_bytes(encoded[i])
                out[i] = TeacherRows(
                    tokens=np.asarray(encoded[i].ids, dtype=np.int32),
                    topk_ids=top_ids[row, :n].astype(np.int32),
                    topk_logp=top_logp[row, :n].astype(np.float16),
                    token_ce=token_ce.astype(np.float16),
                    token_bytes=token_bytes,
                    nats=float(ce[row, : n - 1].sum()),
                    n_tokens=n - 1,
                    n_bytes=int(token_bytes.sum(dtype=np.int64)),
                )
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# 3. Compact storage: memory-mapped shards
# --------------------------------------------------------------------------------------------------


def store_key(*parts: Any) -> str:
    """A content key from JSON-able parts (model hashes, corpus fingerprint, options)."""
    blob = json.dumps([STORE_VERSION, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


class ShardedStore:
    """Per-item rows of several arrays, written shard by shard and read back memory-mapped.

    Layout: ``root/meta.json`` and ``root/shard-NNNNN/{field}.npy``. Shard s holds items
    ``[s·shard_size, (s+1)·shard_size)``: its *row* arrays are those items' rows concatenated along the first
    axis (``_counts.npy`` says how many rows each item has), its *sum* arrays one value per item. A shard is
    written to a temporary directory and renamed into place only when complete, so an interrupted run
    resumes at the first missing shard and readers never see half a shard.

    The directory name is the content key (:func:`store_key`); ``layout`` (what the arrays hold) is checked
    against ``meta.json`` and a mismatch starts the store over; ``about`` is description only (which model
    spec produced it), so another spelling of the same model reuses the store.
    """

    def __init__(self, root: Path, n_items: int, shard_size: int, layout: dict[str, Any],
                 about: dict[str, Any] | None = None):
        self.root = Path(root)
        self.n_items = int(n_items)
        self.shard_size = int(shard_size)
        self.layout = json.loads(json.dumps({**layout, "n_items": self.n_items, "shard_size": self.shard_size,
                                             "version": STORE_VERSION}))
        meta_file = self.root / "meta.json"
        if meta_file.is_file() and json.loads(meta_file.read_text()).get("layout") != self.layout:
            shutil.rmtree(self.root)  # same key, other layout: start over
        self.root.mkdir(parents=True, exist_ok=True)
        if not meta_file.is_file():
            tmp = meta_file.with_name(f".meta.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"layout": self.layout, "about": about or {}}, indent=1, sort_keys=True))
            tmp.replace(meta_file)
        self._cache: dict[str, Any] = {}

    @property
    def n_shards(self) -> int:
        return -(-self.n_items // self.shard_size)

    def shard_items(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.n_items))

    def _dir(self, shard: int) -> Path:
        return self.root / f"shard-{shard:05d}"

    def missing(self) -> list[int]:
        return [s for s in range(self.n_shards) if not self._dir(s).is_dir()]

    @property
    def complete(self) -> bool:
        return not self.missing()

    def write(self, shard: int, items: Sequence[Any], row_fields: Sequence[str], sum_fields: Sequence[str]) -> None:
        """Write shard ``shard`` from one dataclass instance per item (rows concatenated, sums collected)."""
        if len(items) != len(self.shard_items(shard)):
            raise ValueError(f"shard {shard} needs {len(self.shard_items(shard))} items, got {len(items)}")
        final = self._dir(shard)
        tmp = self.root / f".tmp-{shard:05d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        counts = np.array([len(getattr(it, row_fields[0])) for it in items], dtype=np.int64)
        np.save(tmp / "_counts.npy", counts)
        for name in row_fields:
            np.save(tmp / f"{name}.npy", np.concatenate([getattr(it, name) for it in items]))
        for name in sum_fields:
            np.save(tmp / f"{name}.npy", np.array([getattr(it, name) for it in items]))
        try:
            tmp.rename(final)
        except OSError:  # another process finished the same shard first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
        self._cache.clear()

    def _load(self, shard: int, name: str) -> np.ndarray:
        key = f"{shard}/{name}"
        if key not in self._cache:
            self._cache[key] = np.load(self._dir(shard) / f"{name}.npy", mmap_mode="r")
        return self._cache[key]

    def rows(self, name: str) -> RowView:
        """Field ``name`` over all items, one row axis across shards (memory-mapped, sliced lazily)."""
        if not self.complete:
            raise RuntimeError(f"store {self.root} is incomplete: shards {self.missing()[:5]} are missing")
        return RowView([self._load(s, name) for s in range(self.n_shards)])

    def sums(self, name: str) -> np.ndarray:
        return np.concatenate([np.asarray(self._load(s, name)) for s in range(self.n_shards)])

    def item_offsets(self) -> np.ndarray:
        """int64 [n_items+1]: item i's rows are ``[off[i], off[i+1])`` of :meth:`rows`."""
        counts = self.sums("_counts")
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def nbytes(self, names: Iterable[str] | None = None) -> int:
        """Bytes on disk of the given fields (default: all files)."""
        wanted = None if names is None else {f"{n}.npy" for n in names}
        return sum(p.stat().st_size for p in self.root.glob("shard-*/*.npy") if wanted is None or p.name in wanted)


class RowView:
    """Rows of one field across shards; ``view[a:b]`` reads only the shards it touches."""

    def __init__(self, parts: Sequence[np.ndarray]):
        self.parts = list(parts)
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, sl: slice) -> np.ndarray:
        start, stop, step = sl.indices(len(self))
        if step != 1:
            raise ValueError("RowView supports contiguous slices only")
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        s = first
        while s < len(self.parts) and self.starts[s] < stop:
            a = max(start, self.starts[s]) - self.starts[s]
            b = min(stop, self.starts[s + 1]) - self.starts[s]
            pieces.append(np.asarray(self.parts[s][a:b]))
            s += 1
        if not pieces:
            return np.asarray(self.parts[0][0:0]) if self.parts else np.zeros(0)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _progress(items: Sequence[int], label: str) -> Iterable[int]:
    """``items`` with a rich progress bar on stderr (shards of a store being computed)."""
    import sys

    from rich.console import Console
    from rich.progress import track

    return track(items, description=label, console=Console(file=sys.stderr), transient=False)


def ensure_teacher_store(root: Path, chunks: Sequence[TextChunk], encoder: ChunkEncoder,
                         model_fn: Callable[[], nn.Module], k: int, *, shard_size: int = 128,
                         batch_size: int = 16, about: dict[str, Any] | None = None) -> ShardedStore:
    """The teacher store of one model over ``chunks``, computing only the shards that are missing.

    ``model_fn`` loads the model; it is only called when there is something to compute.
    """
    store = ShardedStore(root, len(chunks), shard_size, {"kind": "teacher", "k": k}, about)
    missing = store.missing()
    if missing:
        model = model_fn()
        for shard in _progress(missing, f"teacher {(about or {}).get('model', '')}".strip()):
            items = store.shard_items(shard)
            rows = teacher_rows(model, [encoder.encode(chunks[i]) for i in items], k, batch_size)
            store.write(shard, rows, ROW_FIELDS, SUM_FIELDS)
    return store


# --------------------------------------------------------------------------------------------------
# 4. Teacher rows in the target's positions and vocabulary
# --------------------------------------------------------------------------------------------------


@dataclass
class TargetRows:
    """One chunk and one candidate teacher, in the TARGET's positions (n_T) and vocabulary.

    ``status`` per row: MAPPED (the teacher's distribution), FALLBACK (one-hot on a target token) or EMPTY
    (nothing usable: the target's own distribution is substituted when batches are built). ``token_ce`` /
    ``token_bytes``: the teacher's CE of the token its row predicts and that token's bytes (NaN / 0 where
    the row is not MAPPED or predicts nothing). The sums are the teacher's, over its own tokenization.
    """

    ids: np.ndarray  # int32 [n_T, k], -1 padding
    logp: np.ndarray  # float16 [n_T, k], -inf padding
    status: np.ndarray  # int8 [n_T]
    token_ce: np.ndarray  # float16 [n_T]
    token_bytes: np.ndarray  # uint16 [n_T]
    nats: float
    n_tokens: int
    n_bytes: int


TARGET_ROW_FIELDS = ("ids", "logp", "status", "token_ce", "token_bytes")


@dataclass(frozen=True)
class AlignOptions:
    """How a teacher's rows are moved onto the target (see :func:`fusers.align.map_distribution`).

    ``fallback="current"`` is quirk Q1, ``collision="first"`` quirk Q5; ``match``/``one_to_many`` default to
    FuseBench's corrected rules, ``"reference"``/``"fallback"`` reproduce FuseLLM's ``transform_step_logits``.
    ``same_end``: a teacher row is only used where its token ends at the same byte of the text as the target
    token, i.e. where both rows predict what follows the same point. The MinED match alone also accepts
    e.g. SentencePiece ``'has▁'`` for byte-level ``'Ġhas'``, whose row predicts the text after the space
    (``'27'`` where the target needs ``'Ġ27'``); such rows fall back instead (off: the reference).
    """

    mode: str = "offsets"
    fallback: Literal["next", "current"] = "next"
    collision: Literal["sum", "first"] = "sum"
    match: Literal["surface", "reference"] = "surface"
    one_to_many: Literal["last", "fallback"] = "last"
    same_end: bool = True
    #: "fusebench": :func:`fusers.align.map_distribution` with the options above; "fusechat": FuseChat's
    #: released stage 3 (:func:`fusers.align.fusechat_distribution`), which has rules of its own (the
    #: options above except ``mode`` do not apply).
    distribution: Literal["fusebench", "fusechat"] = "fusebench"

    def to_dict(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def identity_rows(rows: TeacherRows, width: int) -> TargetRows:
    """A teacher that tokenizes like the target: rows unchanged, ids the target cannot output dropped."""
    ids = rows.topk_ids.copy()
    logp = rows.topk_logp.copy()
    outside = ids >= width
    ids[outside] = -1
    logp[outside] = -np.inf
    status = np.where((ids >= 0).any(axis=1), MAPPED, EMPTY).astype(np.int8)
    return TargetRows(ids, logp, status, rows.token_ce.copy(), rows.token_bytes.copy(), rows.nats, rows.n_tokens,
                      rows.n_bytes)


def target_rows(target: Tokenization, source: Tokenization, rows: TeacherRows, vocab: VocabMap | None,
                width: int, options: AlignOptions, *, shared_vocab: bool = False,
                alignment: Alignment | None = None) -> TargetRows:
    """Move one chunk's teacher rows onto the target's positions (spec §2).

    With ``shared_vocab`` and identical ids the rows are used as they are; otherwise the tokenizations are
    aligned (``options.mode``) and each target position takes the teacher distribution of its aligned
    position through the vocabulary map (``options.same_end``: only where both tokens end at the same byte).
    Under the corrected fallback (next token), a fallback on the chunk's last row has no next token in the
    chunk and becomes EMPTY (the target's own distribution). ``alignment``: the chunk's alignment when the
    caller has it already (FuseChat aligns once for its co-alignment statistics and reuses it here).
    """
    if len(source) != len(rows.tokens) or not np.array_equal(source.ids, rows.tokens):
        raise ValueError("the stored teacher rows were computed from another tokenization of this chunk")
    if shared_vocab and np.array_equal(target.ids, source.ids):
        return identity_rows(rows, width)
    if vocab is None:
        raise ValueError("a teacher with another tokenization needs a vocabulary map")
    if alignment is None:
        alignment = align_sequences(target, source, mode=options.mode)  # type: ignore[arg-type]
    if options.distribution == "fusechat":
        mapped = fusechat_distribution(alignment, target, source, rows.topk_ids, rows.topk_logp.astype(np.float32),
                                       vocab, base_width=width, k_out=rows.topk_ids.shape[1])
    else:
        mapped = map_distribution(alignment, target, source, rows.topk_ids, rows.topk_logp.astype(np.float32),
                                  vocab, one_to_many=options.one_to_many, fallback=options.fallback,
                                  collision=options.collision, match=options.match, base_width=width,
                                  k_out=rows.topk_ids.shape[1])
    status = mapped.status.copy()
    ids, logp = mapped.ids.astype(np.int32), mapped.logits.astype(np.float16)
    if options.same_end and options.distribution == "fusebench":
        _, _, target_ends = target.byte_spans()
        _, _, source_ends = source.byte_spans()
        rows_used = np.flatnonzero(status != FALLBACK)
        moved = rows_used[target_ends[rows_used] != source_ends[mapped.source[rows_used]]]
        if len(moved):  # the one-hot fallback of map_distribution, on the next (or, Q1, current) token
            step = 1 if options.fallback == "next" else 0
            fallback_ids = target.ids[np.minimum(moved + step, len(target) - 1)]
            status[moved] = FALLBACK
            ids[moved] = -1
            logp[moved] = -np.inf
            ids[moved, 0] = fallback_ids
            logp[moved, 0] = 1.0
    if options.fallback == "next" and len(status) and status[-1] == FALLBACK:
        status[-1] = EMPTY
    used = np.where(status == MAPPED, mapped.source, -1)
    token_ce = np.where(used >= 0, rows.token_ce[np.maximum(used, 0)], np.nan).astype(np.float16)
    token_bytes = np.where(used >= 0, rows.token_bytes[np.maximum(used, 0)], 0).astype(np.uint16)
    return TargetRows(ids, logp, status.astype(np.int8), token_ce, token_bytes, rows.nats, rows.n_tokens,
                      rows.n_bytes)


def self_rows(rows: TeacherRows) -> TargetRows:
    """The target's own (initial) distribution as a candidate: every row MAPPED."""
    return TargetRows(rows.topk_ids, rows.topk_logp, np.full(len(rows.tokens), MAPPED, dtype=np.int8),
                      rows.token_ce, rows.token_bytes, rows.nats, rows.n_tokens, rows.n_bytes)


def shares_vocabulary(a: Any, b: Any) -> bool:
    """Same token → id map: a teacher's ids then need no vocabulary map (alignment is still checked per chunk)."""
    return a.get_vocab() == b.get_vocab()


def ensure_aligned_store(root: Path, chunks: Sequence[TextChunk], target: ChunkEncoder, source: ChunkEncoder,
                         teacher: ShardedStore, vocab: VocabMap | None, width: int, options: AlignOptions, *,
                         shared_vocab: bool, about: dict[str, Any] | None = None,
                         alignments: Sequence[Alignment] | None = None) -> ShardedStore:
    """The aligned rows (target positions) of one teacher store, computing only the missing shards.

    ``alignments``: one per chunk, when already computed (else each chunk is aligned with ``options.mode``).
    """
    store = ShardedStore(root, len(chunks), teacher.shard_size,
                         {"kind": "aligned", "width": width, **options.to_dict()}, about)
    missing = store.missing()
    if missing:
        offsets = teacher.item_offsets()
        cols = {name: teacher.rows(name) for name in ROW_FIELDS}
        sums = {name: teacher.sums(name) for name in SUM_FIELDS}
        for shard in _progress(missing, f"align {(about or {}).get('source', '')}".strip()):
            items = []
            for i in store.shard_items(shard):
                a, b = int(offsets[i]), int(offsets[i + 1])
                rows = TeacherRows(**{n: cols[n][a:b] for n in ROW_FIELDS}, **{n: sums[n][i].item() for n in SUM_FIELDS})
                items.append(target_rows(target.encode(chunks[i]), source.encode(chunks[i]), rows, vocab, width,
                                         options, shared_vocab=shared_vocab,
                                         alignment=None if alignments is None else alignments[i]))
            store.write(shard, items, TARGET_ROW_FIELDS, SUM_FIELDS)
    return store


# --------------------------------------------------------------------------------------------------
# 5. Candidates per block of the packed target stream, fusion functions
# --------------------------------------------------------------------------------------------------


@dataclass
class CandidateBlock:
    """All candidates' rows for positions ``[start, stop)`` of the packed target stream (L rows, C candidates).

    Candidate 0 is the target's own initial distribution. The ``seq_*`` fields repeat, per row, the sums of
    the chunk that row belongs to (each candidate's own), which is all the granularities need.
    """

    ids: np.ndarray  # int [L, C, k]
    logp: np.ndarray  # float [L, C, k]
    status: np.ndarray  # int8 [L, C]
    token_ce: np.ndarray  # float [L, C]
    token_bytes: np.ndarray  # float [L, C]
    seq_nats: np.ndarray  # float [L, C]
    seq_tokens: np.ndarray  # float [L, C]
    seq_bytes: np.ndarray  # float [L, C]

    def substitute_empty(self) -> CandidateBlock:
        """EMPTY rows take candidate 0's row (the reference collator's "bad case": the base model's own)."""
        empty = self.status == EMPTY  # [L, C]
        if empty.any():
            self.ids = np.where(empty[..., None], self.ids[:, :1], self.ids)
            self.logp = np.where(empty[..., None], self.logp[:, :1], self.logp)
        return self


class CandidateSource:
    """Where a :class:`FusionCorpus` gets candidate rows: ``block(start, stop)`` over the packed target stream.

    ``prepare`` announces the blocks of a batch first, so that an online source can run its teachers on all
    of them at once.
    """

    names: list[str]

    def prepare(self, spans: Sequence[tuple[int, int]]) -> None:  # noqa: B027 - optional hook
        pass

    def block(self, start: int, stop: int) -> CandidateBlock:
        raise NotImplementedError


class StreamCandidates(CandidateSource):
    """Candidates whose rows are whole-stream arrays (memory-mapped stores, or arrays in memory).

    ``columns[c]`` maps each of :data:`TARGET_ROW_FIELDS` to something sliceable by stream row (an array or a
    :class:`RowView`); ``sums[c]`` maps each of :data:`SUM_FIELDS` to one value per chunk; ``chunk_of_row``
    [N] says which chunk each stream row belongs to.
    """

    def __init__(self, names: list[str], columns: list[dict[str, Any]], sums: list[dict[str, np.ndarray]],
                 chunk_of_row: np.ndarray):
        self.names = names
        self.columns = columns
        self.sums = [{k: np.asarray(v, dtype=np.float64) for k, v in s.items()} for s in sums]
        self.chunk_of_row = chunk_of_row

    @classmethod
    def from_stores(cls, names: list[str], stores: list[ShardedStore]) -> StreamCandidates:
        """Candidate 0 is a teacher store of the target (its rows are the target's own), the rest aligned stores."""
        columns, sums = [], []
        for c, store in enumerate(stores):
            if c == 0:
                status = np.full(len(store.rows("tokens")), MAPPED, dtype=np.int8)
                columns.append({"ids": store.rows("topk_ids"), "logp": store.rows("topk_logp"), "status": status,
                                "token_ce": store.rows("token_ce"), "token_bytes": store.rows("token_bytes")})
            else:
                columns.append({name: store.rows(name) for name in TARGET_ROW_FIELDS})
            sums.append({name: store.sums(name) for name in SUM_FIELDS})
        offsets = stores[0].item_offsets()
        chunk_of_row = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        return cls(names, columns, sums, chunk_of_row)

    def block(self, start: int, stop: int) -> CandidateBlock:
        chunk = self.chunk_of_row[start:stop]
        per = [{name: np.asarray(col[name][start:stop]) for name in TARGET_ROW_FIELDS} for col in self.columns]
        return CandidateBlock(
            ids=np.stack([p["ids"] for p in per], axis=1).astype(np.int64),
            logp=np.stack([p["logp"] for p in per], axis=1).astype(np.float32),
            status=np.stack([p["status"] for p in per], axis=1).astype(np.int8),
            token_ce=np.stack([p["token_ce"] for p in per], axis=1).astype(np.float32),
            token_bytes=np.stack([p["token_bytes"] for p in per], axis=1).astype(np.float32),
            seq_nats=np.stack([s["nats"][chunk] for s in self.sums], axis=1),
            seq_tokens=np.stack([s["n_tokens"][chunk] for s in self.sums], axis=1),
            seq_bytes=np.stack([s["n_bytes"][chunk] for s in self.sums], axis=1),
        ).substitute_empty()


@dataclass
class OnlineTeacher:
    """A teacher run on the fly: its (frozen) model, how it tokenizes, and how its rows reach the target."""

    name: str
    model: nn.Module
    encoder: ChunkEncoder
    vocab: VocabMap | None = None  # None for the target itself
    shared_vocab: bool = True


class OnlineCandidates(CandidateSource):
    """Candidates computed per batch instead of stored: the same rows as the stored path, no disk.

    For small sources the teacher passes cost less than the student's step, and nothing has to be kept
    (spec §12). Chunk results are kept in a small LRU cache because a block usually shares a chunk with its
    neighbour. ``teachers[0]`` must be a frozen copy of the target's initial model.
    """

    def __init__(self, teachers: list[OnlineTeacher], chunks: Sequence[TextChunk], chunk_offsets: np.ndarray,
                 k: int, width: int, options: AlignOptions, *, batch_size: int = 16, cache_chunks: int = 256):
        self.teachers = teachers
        self.names = [t.name for t in teachers]
        self.chunks = chunks
        self.offsets = chunk_offsets
        self.k, self.width, self.options, self.batch_size = k, width, options, batch_size
        self._cache: OrderedDict[int, list[TargetRows]] = OrderedDict()
        self._cache_size = cache_chunks

    def _chunks_of(self, start: int, stop: int) -> range:
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.offsets, stop, side="left"))
        return range(first, last)

    def prepare(self, spans: Sequence[tuple[int, int]]) -> None:
        needed = sorted({i for a, b in spans for i in self._chunks_of(a, b)} - set(self._cache))
        if not needed:
            return
        target_enc = self.teachers[0].encoder
        bases = [target_enc.encode(self.chunks[i]) for i in needed]
        per_teacher: list[list[TargetRows]] = []
        for c, teacher in enumerate(self.teachers):
            encoded = bases if c == 0 else [teacher.encoder.encode(self.chunks[i]) for i in needed]
            rows = teacher_rows(teacher.model, encoded, self.k, self.batch_size)
            if c == 0:
                per_teacher.append([self_rows(r) for r in rows])
            else:
                per_teacher.append([target_rows(b, s, r, teacher.vocab, self.width, self.options,
                                                shared_vocab=teacher.shared_vocab)
                                    for b, s, r in zip(bases, encoded, rows, strict=True)])
        for n, i in enumerate(needed):
            self._cache[i] = [rows[n] for rows in per_teacher]
        while len(self._cache) > max(self._cache_size, len(needed)):
            self._cache.popitem(last=False)

    def block(self, start: int, stop: int) -> CandidateBlock:
        self.prepare([(start, stop)])
        ids = self._chunks_of(start, stop)
        cols: dict[str, list[np.ndarray]] = {name: [] for name in (*TARGET_ROW_FIELDS, *SUM_FIELDS)}
        for c in range(len(self.teachers)):
            per_chunk = [self._cache[i][c] for i in ids]
            lengths = [len(r.status) for r in per_chunk]
            for name in TARGET_ROW_FIELDS:
                cols[name].append(np.concatenate([getattr(r, name) for r in per_chunk]))
            for name in SUM_FIELDS:
                cols[name].append(np.repeat([float(getattr(r, name)) for r in per_chunk], lengths))
        a, b = start - int(self.offsets[ids.start]), stop - int(self.offsets[ids.start])

        def stacked(name: str, dtype: Any) -> np.ndarray:
            return np.stack([col[a:b] for col in cols[name]], axis=1).astype(dtype)

        return CandidateBlock(ids=stacked("ids", np.int64), logp=stacked("logp", np.float32),
                              status=stacked("status", np.int8), token_ce=stacked("token_ce", np.float32),
                              token_bytes=stacked("token_bytes", np.float32), seq_nats=stacked("nats", np.float64),
                              seq_tokens=stacked("n_tokens", np.float64),
                              seq_bytes=stacked("n_bytes", np.float64)).substitute_empty()


def candidate_scores(block: CandidateBlock, granularity: Granularity, *, per_token: bool = False) -> np.ndarray:
    """float64 [..., L, C]: the cross-entropy each candidate is judged by at each row (lower is better).

    * ``sequence``: the candidate's CE over the whole chunk the row belongs to (on its own tokenization).
    * ``token``: the candidate's CE of the token this row predicts; rows where the candidate has no
      distribution of its own (fallback, empty) are +inf, rows with no next token use the chunk CE.
    * ``block`` (quirk Q6, FuseLLM's packing): every row of a packed block gets the row-weighted mean of the
      chunk CEs over the block, i.e. one choice per block.

    CEs are per UTF-8 byte by default, so tokenizers that cut text into different numbers of tokens compare
    fairly; ``per_token`` (quirk Q13) divides by tokens like the reference. A chunk with nothing predicted
    scores +inf. The leading axes may be batch axes (``[B, L, C]``).
    """
    denom = block.seq_tokens if per_token else block.seq_bytes
    with np.errstate(divide="ignore", invalid="ignore"):
        seq = np.where(denom > 0, block.seq_nats / np.maximum(denom, 1), np.inf)
        if granularity == "sequence":
            return seq
        if granularity == "block":
            return np.broadcast_to(seq.mean(axis=-2, keepdims=True), seq.shape).copy()
        if granularity == "token":
            tok_denom = 1.0 if per_token else np.maximum(block.token_bytes, 1.0)
            tok = block.token_ce.astype(np.float64) / tok_denom
            tok = np.where(np.isnan(tok), seq, tok)
            return np.where(block.status == MAPPED, tok, np.inf)
    raise ValueError(f"unknown granularity {granularity!r}; expected one of {GRANULARITIES}")


def fusion_weights(scores: Tensor, fusion: Fusion, tau: float = 1.0) -> Tensor:
    """[..., C] weights of each candidate from its scores (CE; +inf = not a candidate at this row).

    * ``min_ce``: one-hot on the lowest CE (ties: the lowest index, i.e. the target's own distribution first).
    * ``avg_ce``: the reference's AvgCE, ``softmax(exp(-CE))`` over the candidates (FuseLLM/FuseChat
      ``trainer.py``). Rewards lie in (0, 1], so the weights stay close to uniform.
    * ``avg_ce_softmax``: ``softmax(-CE / τ)``, a temperature-controlled AvgCE.

    If no candidate is finite at a row, every candidate is treated as equal (the scores carry no signal).
    """
    scores = scores.double()
    none = torch.isinf(scores).all(dim=-1, keepdim=True)
    scores = torch.where(none, torch.zeros_like(scores), scores)
    if fusion == "min_ce":
        return torch.nn.functional.one_hot(scores.argmin(dim=-1), scores.shape[-1]).double()
    if fusion == "avg_ce":
        reward = torch.where(torch.isfinite(scores), torch.exp(-scores), torch.full_like(scores, -torch.inf))
        return torch.softmax(reward, dim=-1)
    if fusion == "avg_ce_softmax":
        return torch.softmax(-scores / tau, dim=-1)
    raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")


def fuse_topk(ids: Tensor, logp: Tensor, scores: Tensor, fusion: Fusion, *, temperature: float = 1.0,
              tau: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Fuse per-candidate sparse distributions into one sparse target per row.

    ``ids``/``logp``: [..., C, k] (-1 / -inf padding); ``scores``: [..., C]. Each candidate's distribution is
    the softmax of its kept entries divided by ``temperature`` (the reference renormalises the top-k and drops
    the tail). Returns ``(ids [..., K], probs [..., K], weights [..., C])`` with K = k for MinCE (the winner's
    entries) and K = C·k for the averages (all entries, weighted; an id present in several candidates appears
    several times, which the loss handles since it is linear in the target).
    """
    q = torch.softmax(logp.float() / temperature, dim=-1)  # [..., C, k]
    q = torch.nan_to_num(q, nan=0.0)  # a row with no entries at all (never chosen) has no mass
    weights = fusion_weights(scores, fusion, tau)  # [..., C]
    if fusion == "min_ce":
        pick = weights.argmax(dim=-1)  # [...]
        index = pick[..., None, None].expand(*pick.shape, 1, ids.shape[-1])  # [..., 1, k]
        return ids.gather(-2, index).squeeze(-2), q.gather(-2, index).squeeze(-2), weights.float()
    probs = weights.float()[..., None] * q  # [..., C, k]
    return ids.flatten(-2), probs.flatten(-2), weights.float()


# --------------------------------------------------------------------------------------------------
# 6. Training data (packed blocks) and the objective
# --------------------------------------------------------------------------------------------------


class FusionCorpus(torch.utils.data.Dataset):
    """Training sequences of the target stream, with their fused sparse targets.

    The stream is every chunk's target tokens in corpus order (a document's first chunk after EOS). It is
    cut one of two ways:

    * **packed** (default; FuseLLM, as its ``packing.py`` and the zoo's pre-training do): fixed
      ``seq_len``-token blocks, the last partial block dropped; a block may span several chunks;
    * **one item per sequence** (``items`` = the chunks' stream offsets, ``[n + 1]``; chat fusion, as
      FuseChat's reference trains one dialogue per sequence): sequence ``i`` is chunk ``i`` alone, right-padded
      to the longest of its batch with ``pad_id``, with an ``attention_mask``; padded rows count in no loss
      and carry no fused target. The student then reads exactly the tokens each teacher read (EOS, then the
      whole conversation), and never a response without its instruction or attention across conversations.

    ``dataset[i]`` is just ``i``: the work happens in :meth:`collate`, once per batch, so an online source can
    batch its teacher passes. ``rows`` restricts the sequences to a part ``[first, stop)`` of the stream
    (ProFuser keeps its two modes' data in one stream and one corpus per mode). A batch is
    ``{"input_ids": [B, L], "fuse_ids": [B, L, K], "fuse_probs": [B, L, K]}``, plus ``loss_mask`` [B, L] with
    a loss mask or items and ``attention_mask`` [B, L] with items. :attr:`selected` accumulates each
    candidate's weight over all rows built so far (for the run's report).
    """

    def __init__(self, input_ids: np.ndarray, candidates: CandidateSource, *, seq_len: int, fusion: Fusion = "min_ce",
                 granularity: Granularity = "sequence", temperature: float = 1.0, tau: float = 1.0,
                 per_token: bool = False, loss_mask: np.ndarray | None = None,
                 rows: tuple[int, int] | None = None, items: np.ndarray | None = None, pad_id: int = 0):
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; expected one of {GRANULARITIES}")
        self.input_ids = np.asarray(input_ids, dtype=np.int64)
        if loss_mask is not None and len(loss_mask) != len(self.input_ids):
            raise ValueError(f"loss_mask has {len(loss_mask)} rows for {len(self.input_ids)} target tokens")
        self.loss_mask = None if loss_mask is None else np.asarray(loss_mask, dtype=bool)
        self.first_row, self.stop_row = rows if rows is not None else (0, len(self.input_ids))
        self.candidates = candidates
        self.seq_len = int(seq_len)
        self.fusion, self.granularity = fusion, granularity
        self.temperature, self.tau, self.per_token = temperature, tau, per_token
        self.pad_id = int(pad_id)
        self.items: np.ndarray | None = None
        if items is not None:
            offsets = np.asarray(items, dtype=np.int64)
            if len(offsets) == 0 or offsets[-1] != len(self.input_ids) or np.any(np.diff(offsets) < 0):
                raise ValueError("items must be the chunks' stream offsets: increasing, ending at the stream length")
            starts, stops = offsets[:-1], offsets[1:]
            inside = (starts >= self.first_row) & (stops <= self.stop_row) & (stops > starts)
            if np.any(stops[inside] - starts[inside] > self.seq_len):
                raise ValueError(f"an item is longer than seq_len={seq_len}; skip or cut it before training")
            self.items = np.stack([starts[inside], stops[inside]], axis=1)
        if len(self) == 0:
            raise ValueError(f"the fusion corpus has {len(self.input_ids)} target tokens, less than one block of "
                             f"seq_len={seq_len}; raise corpus_chars")
        self.selected = np.zeros(len(candidates.names))

    def __len__(self) -> int:
        if self.items is not None:
            return len(self.items)
        return (self.stop_row - self.first_row) // self.seq_len

    def __getitem__(self, index: int) -> int:
        return int(index)

    def span(self, index: int) -> tuple[int, int]:
        if self.items is not None:
            start, stop = self.items[index]
            return int(start), int(stop)
        start = self.first_row + index * self.seq_len
        return start, start + self.seq_len

    def collate(self, indices: Sequence[int]) -> dict[str, Tensor]:
        spans = [self.span(int(i)) for i in indices]
        self.candidates.prepare(spans)
        width = max(b - a for a, b in spans)
        blocks = [_padded(self.candidates.block(a, b), width) for a, b in spans]
        stacked = CandidateBlock(**{f.name: np.stack([getattr(b, f.name) for b in blocks])
                                    for f in fields(CandidateBlock)})  # every field gains a leading [B]
        real = np.zeros((len(spans), width), dtype=bool)  # [B, L]: rows that hold a token (not padding)
        for r, (a, b) in enumerate(spans):
            real[r, : b - a] = True
        scores = candidate_scores(stacked, self.granularity, per_token=self.per_token)  # [B, L, C]
        ids, probs, weights = fuse_topk(torch.from_numpy(stacked.ids), torch.from_numpy(stacked.logp),
                                        torch.from_numpy(scores), self.fusion, temperature=self.temperature,
                                        tau=self.tau)
        real_t = torch.from_numpy(real)
        probs = probs * real_t[..., None]  # padding carries no target
        self.selected += (weights * real_t[..., None]).sum(dim=(0, 1)).double().numpy()
        input_ids = np.full((len(spans), width), self.pad_id, dtype=np.int64)
        for r, (a, b) in enumerate(spans):
            input_ids[r, : b - a] = self.input_ids[a:b]
        batch = {"input_ids": torch.from_numpy(input_ids), "fuse_ids": ids.clamp_min(0), "fuse_probs": probs}
        if self.loss_mask is not None or self.items is not None:
            mask = real.copy()
            if self.loss_mask is not None:
                for r, (a, b) in enumerate(spans):
                    mask[r, : b - a] &= self.loss_mask[a:b]
            batch["loss_mask"] = torch.from_numpy(mask)
        if self.items is not None:
            batch["attention_mask"] = real_t.long()
        return batch


def _padded(block: CandidateBlock, length: int) -> CandidateBlock:
    """``block`` with rows appended up to ``length``: neutral values (score 0 for every candidate, id 0) that the loss
    never reads (their rows are masked and their fused probabilities zeroed)."""
    extra = length - len(block.status)
    if extra == 0:
        return block

    def pad(values: np.ndarray, fill: float) -> np.ndarray:
        return np.concatenate([values, np.full((extra, *values.shape[1:]), fill, dtype=values.dtype)])

    return CandidateBlock(ids=pad(block.ids, 0), logp=pad(block.logp, 0.0), status=pad(block.status, MAPPED),
                          token_ce=pad(block.token_ce, 0.0), token_bytes=pad(block.token_bytes, 1.0),
                          seq_nats=pad(block.seq_nats, 0.0), seq_tokens=pad(block.seq_tokens, 1.0),
                          seq_bytes=pad(block.seq_bytes, 1.0))


def sparse_soft_ce(logp: Tensor, ids: Tensor, probs: Tensor) -> Tensor:
    """[...] ``-Σ_j probs_j · logp[ids_j]``: soft-target CE over the sparse entries only (padding has prob 0).

    Equal to the dense ``-Σ_v q_v log p_v`` with q scattered from (ids, probs), without building q.
    """
    return -(probs * logp.gather(-1, ids)).sum(dim=-1)


def fusion_loss(lam: float, reduce: Callable[[Tensor], Tensor] | None = None):  # noqa: ANN201 - a LossFn
    """``loss_fn(model, batch)`` for :func:`harness.train.train`: ``λ·CLM + (1-λ)·fusion`` (spec §4).

    CLM is the usual next-token CE over rows 0..L-2 (row t predicts token t+1); the fusion term averages
    the sparse soft-target CE over all L rows (the teacher's last row predicts the token after the block,
    which it saw). Both come from one log-softmax of the logits, so the fusion term costs a gather, not a
    second pass over the vocabulary. ``reduce`` (e.g. an all-reduce mean across processes) is applied to the
    logged values only.

    A batch with a ``loss_mask`` [B, L] (row t counts when the token it predicts does, e.g. a chat response
    token: FuseChat/ProFuser mask the instructions) averages both terms over the counted rows only.
    """

    def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            return values.mean()
        mask = mask.to(values.dtype)
        return (values * mask).sum() / mask.sum().clamp_min(1.0)

    def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        input_ids = batch["input_ids"]  # [B, L]
        mask = batch.get("loss_mask")  # [B, L] or None
        logits = model(input_ids=input_ids, attention_mask=batch.get("attention_mask")).logits  # [B, L, V]
        logp = torch.log_softmax(logits.float(), dim=-1)  # [B, L, V]
        token_nll = -logp[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # [B, L-1]
        clm = masked_mean(token_nll, None if mask is None else mask[:, :-1])
        fuse = masked_mean(sparse_soft_ce(logp, batch["fuse_ids"], batch["fuse_probs"]), mask)
        loss = lam * clm + (1.0 - lam) * fuse
        logged = torch.stack([clm.detach(), fuse.detach()])
        if reduce is not None:
            logged = reduce(logged)
        return loss, {"clm": float(logged[0]), "fuse": float(logged[1])}

    return loss_fn


# --------------------------------------------------------------------------------------------------
# 7. Training under accelerate
# --------------------------------------------------------------------------------------------------


class StepBatches:
    """The global batches of a run: ``steps`` lists of ``batch_size`` block indices, epochs of a seeded shuffle.

    A batch sampler, so that ``accelerate`` (``split_batches=True``) hands every process its slice of each
    global batch: the same blocks are trained on whatever the number of processes.
    """

    def __init__(self, n_blocks: int, batch_size: int, steps: int, seed: int):
        self.batch_size = batch_size
        self.drop_last = False
        self._batches: list[list[int]] = []
        rng = np.random.default_rng(seed)
        order: list[int] = []
        while len(self._batches) < steps:
            while len(order) < batch_size:
                order.extend(rng.permutation(n_blocks).tolist())
            self._batches.append(order[:batch_size])
            order = order[batch_size:]

    @classmethod
    def fixed(cls, batches: list[list[int]]) -> StepBatches:
        """Given batches as they are (all of one size), e.g. a :class:`ScheduledCorpus` plan."""
        out = cls(1, len(batches[0]) if batches else 1, 0, 0)
        out._batches = batches
        return out

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches)


class ScheduledCorpus(torch.utils.data.Dataset):
    """Several :class:`FusionCorpus` parts trained under one schedule: each step draws its batch from one part.

    ``plan`` names the part of every optimizer step (ProFuser: ``inference`` then ``training``, or a decaying
    mix). :meth:`batches` gives, per step, ``batch_size`` indices of that part's blocks (each part cycles
    through seeded epochs of its own blocks), offset so that :meth:`collate` knows the part again.
    """

    def __init__(self, parts: dict[str, FusionCorpus], plan: Sequence[str]):
        unknown = sorted(set(plan) - set(parts))
        if unknown:
            raise ValueError(f"the schedule names parts {unknown} that do not exist; parts: {sorted(parts)}")
        self.parts = parts
        self.plan = list(plan)
        self.names = list(parts)
        sizes = [len(parts[name]) for name in self.names]
        self.offsets = dict(zip(self.names, np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist(), strict=True))
        self._total = int(sum(sizes))

    def __len__(self) -> int:
        return self._total

    def __getitem__(self, index: int) -> int:
        return int(index)

    def batches(self, batch_size: int, seed: int) -> StepBatches:
        need = {name: self.plan.count(name) for name in self.names}
        per_part = {name: iter(StepBatches(len(self.parts[name]), batch_size, need[name], seed + n))
                    for n, name in enumerate(self.names) if need[name]}
        return StepBatches.fixed([[self.offsets[name] + i for i in next(per_part[name])] for name in self.plan])

    def collate(self, indices: Sequence[int]) -> dict[str, Tensor]:
        first = int(indices[0])
        name = next(n for n in reversed(self.names) if first >= self.offsets[n])
        local = [int(i) - self.offsets[name] for i in indices]
        if any(not 0 <= i < len(self.parts[name]) for i in local):
            raise ValueError("a scheduled batch mixes blocks of several parts")
        return self.parts[name].collate(local)


def make_accelerator() -> Accelerator:
    """An ``Accelerator`` that splits each global batch across processes (DDP on gloo when on CPU), on the run's
    device, with bf16 mixed precision on GPUs that support it (float32 master weights) and float32 on CPU."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from harness.model import current_placement

    on_gpu = current_placement().kind == "cuda"
    mixed = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(cpu=not on_gpu, mixed_precision=mixed,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def train_with_accelerate(model: nn.Module, corpus: FusionCorpus | ScheduledCorpus, cfg: TrainConfig, loss_fn: Any,
                          *, accelerator: Accelerator | None = None, progress: str | None = "fusing",
                          on_step: Callable[[int, dict[str, float]], bool | None] | None = None,
                          ) -> tuple[nn.Module, TrainStats]:
    """Train ``model`` on ``corpus`` with :func:`harness.train.train`, scaled by ``accelerate``.

    ``accelerator.prepare`` wraps the model (DDP when launched with several processes: gradients are averaged
    in ``backward``) and the dataloader (each process builds only its slice of every global batch of
    ``cfg.batch_size`` blocks). The shared loop prepares its AdamW with the same accelerator and runs backward
    and clipping through it. Returns the unwrapped model and the loop's stats (logged on every process; the
    progress bar on the main one only).
    """
    from harness.train import train

    acc = accelerator or make_accelerator()
    if cfg.batch_size % acc.num_processes:
        raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the {acc.num_processes} processes")
    if isinstance(corpus, ScheduledCorpus):
        if len(corpus.plan) != cfg.steps:
            raise ValueError(f"the schedule has {len(corpus.plan)} steps, the training config {cfg.steps}")
        sampler: Any = corpus.batches(cfg.batch_size, cfg.seed)
    else:
        sampler = StepBatches(len(corpus), cfg.batch_size, cfg.steps, cfg.seed)
    loader = torch.utils.data.DataLoader(corpus, batch_sampler=sampler, collate_fn=corpus.collate)
    wrapped, loader = acc.prepare(model, loader)
    stats = train(wrapped, iter(loader), cfg, loss_fn=loss_fn, progress=progress if acc.is_main_process else None,
                  on_step=on_step, accelerator=acc)
    return acc.unwrap_model(wrapped), stats


def mean_across_processes(accelerator: Accelerator) -> Callable[[Tensor], Tensor] | None:
    """A ``reduce`` for :func:`fusion_loss` that logs the mean over processes (None with one process)."""
    if accelerator.num_processes == 1:
        return None
    return lambda t: accelerator.reduce(t.to(accelerator.device), reduction="mean").cpu()


def details_of(stats: TrainStats, lam: float, names: Sequence[str], selected: np.ndarray) -> dict[str, Any]:
    """JSON-able per-step curves and the share of rows each candidate won (MinCE) or its mean weight.

    ``total`` is recombined from the logged CLM and fusion terms, which :func:`fusion_loss` averages over
    processes, so the curves describe the global batch (the loop's own loss is the local one). The candidate
    shares count the rows this process built.
    """
    clm, fuse = stats.extras.get("clm", []), stats.extras.get("fuse", [])
    total = [lam * c + (1.0 - lam) * f for c, f in zip(clm, fuse, strict=True)] if clm else stats.losses
    rows = float(selected.sum()) or 1.0
    return {
        "train": stats.summary(),
        "loss_curves": {
            "total": [round(x, 5) for x in total],
            "clm": [round(x, 5) for x in clm],
            "fuse": [round(x, 5) for x in fuse],
            "lr": [float(f"{x:.4g}") for x in stats.extras.get("lr", [])],
            "grad_norm": [round(x, 4) for x in stats.extras.get("grad_norm", [])],
        },
        "candidate_share": {name: round(float(w) / rows, 4) for name, w in zip(names, selected, strict=True)},
    }


__all__ = [
    "FUSIONS", "GRANULARITIES", "TextChunk", "chunk_documents", "chunks_fingerprint", "ChunkEncoder",
    "predicted_bytes", "text_byte_spans", "rows_predicting", "masked_sums", "TeacherRows", "teacher_rows", "logit_width", "store_key", "ShardedStore", "RowView",
    "ensure_teacher_store", "TargetRows", "AlignOptions", "identity_rows", "target_rows", "self_rows",
    "shares_vocabulary", "ensure_aligned_store", "CandidateBlock", "CandidateSource", "StreamCandidates",
    "OnlineTeacher", "OnlineCandidates", "candidate_scores", "fusion_weights", "fuse_topk", "FusionCorpus",
    "sparse_soft_ce", "fusion_loss", "StepBatches", "ScheduledCorpus",
    "make_accelerator", "train_with_accelerate",
    "mean_across_processes", "details_of",
]
