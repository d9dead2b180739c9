"""Per-token cost of each FuseLLM stage on this machine: the measured inputs of docs/scale.md's projection.

Run: ``.venv/bin/python benchmarks/bench_scale.py`` (about 40 s on 2 idle cores; needs the built default
zoo, and uses ``zoo:smollm2-135m`` too when it is added). Run it on an idle machine: it prints the load average
before and after.

FuseLLM's default setting here is used throughout: target ``zoo:gpt2-code``, sources ``zoo:neox-docs`` and
``zoo:mpt-math``, k = 10, 256-token chunks cut under every tokenizer (:func:`fusers.distill.chunk_documents`).

(a) **Teacher pass** (:func:`fusers.distill.teacher_rows`: forward, log-softmax, top-k, token CE) per model, in
    tokens/s and in achieved FLOP/s with the usual 2 × parameters FLOPs per token.
(b) **Alignment of one source to the target**, per target token and per core (torch on one thread): both sides
    tokenized (:class:`fusers.distill.ChunkEncoder`), aligned and the top-k mapped
    (:func:`fusers.distill.target_rows`, vocabulary map precomputed; its one-off cost is printed apart), with
    the default ``offsets`` alignment and the reference ``dtw_ed``. On the zoo's 256-token chunks with the
    source's real teacher rows, and on 2048-token chunks (the reference's length, where DTW's O(N·M) per
    chunk costs more per token; the corpus joined into one text so that chunks are full) with random top-k rows of the source's width, for ``neox-docs`` and, when
    present, the 49k-piece ``smollm2-135m`` tokenizer as the source.
(c) **Store bytes**, per target token: one source's teacher store (its own tokenization) and its aligned store
    (target positions), written by :func:`ensure_teacher_store` / :func:`ensure_aligned_store` as FuseLLM does.
(d) **Fusion step** per token: one optimizer step of the fusion loss (MinCE) against a plain CLM step on the
    zoo-sized model, timed by ``bench_distill.time_steps``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_align import timed
from bench_distill import B, L, stored_like_corpus, time_steps

from fusers import distill as D
from fusers.align import Tokenization
from fusers.common import source_vocab_map
from harness.corpus import train_slice
from harness.errors import BenchError
from harness.model import load_hf, resolve
from harness.train import causal_lm_loss

K = 10
TARGET, SOURCES, LARGER = "gpt2-code", ("neox-docs", "mpt-math"), "smollm2-135m"


def documents(n_chars: int) -> list[str]:
    return [doc for d in ("code", "docs", "math") for doc in train_slice(d, n_chars // 3)]


def load(name: str):
    """``zoo:NAME`` as (model, tokenizer, width), or None when the member is not built/added."""
    try:
        ref = resolve(f"zoo:{name}")
    except BenchError:
        return None
    model, tokenizer = load_hf(ref, dtype="float32")
    return model, tokenizer, D.logit_width(model)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------------------------------------- (a) teacher pass


def bench_teacher(name: str, model, encoded: list[Tokenization], batch_size: int = 16) -> list[D.TeacherRows]:
    D.teacher_rows(model, encoded[:2], K, batch_size)  # warm-up
    seconds, rows = timed(lambda: D.teacher_rows(model, encoded, K, batch_size))
    tokens = sum(len(e) for e in encoded)
    params = n_params(model)
    flops = 2 * params * tokens / seconds
    print(f"    {name:13s} {params / 1e6:8.2f}M params  {tokens:7,d} tokens  {tokens / seconds:9,.0f} tokens/s  "
          f"{seconds / tokens * 1e6:9.1f} µs/token  {flops / 1e9:6.2f} GFLOP/s at 2·params/token")
    return rows


# ---------------------------------------------------------------------------------------------- (b) alignment


def random_rows(tz: Tokenization, width: int, rng: np.random.Generator) -> D.TeacherRows:
    """Teacher rows shaped like a real store's (k ids of the source's width, sorted log-probs) for ``tz``."""
    logits = rng.normal(size=(len(tz), K)).astype(np.float32) * 3
    logp = np.sort(logits - np.log(np.exp(logits).sum(1, keepdims=True)), 1)[:, ::-1]
    return D.TeacherRows(np.asarray(tz.ids, np.int32), rng.integers(0, width, (len(tz), K)).astype(np.int32),
                         logp.astype(np.float16), np.zeros(len(tz), np.float16), np.ones(len(tz), np.uint16),
                         0.0, len(tz) - 1, len(tz))


def bench_alignment(label: str, chunks, target: D.ChunkEncoder, source: D.ChunkEncoder, rows, vocab, width: int,
                    modes=("offsets", "dtw_ed")) -> dict[str, float]:
    """µs per target token (one thread) of tokenizing both sides, aligning and mapping the top-k, per mode."""
    n_target = sum(len(target.encode(c)) for c in chunks)
    out = {}
    for mode in modes:
        seconds, _ = timed(partial(align_all, chunks, target, source, rows, vocab, width, D.AlignOptions(mode=mode)),
                           repeat=3)
        out[mode] = seconds / n_target * 1e6
        print(f"    {label:34s} {mode:8s} {n_target:7,d} target tokens  {out[mode]:8.2f} µs/target token/core")
    return out


def align_all(chunks, target: D.ChunkEncoder, source: D.ChunkEncoder, rows, vocab, width: int,
              options: D.AlignOptions) -> None:
    for chunk, chunk_rows in zip(chunks, rows, strict=True):
        D.target_rows(target.encode(chunk), source.encode(chunk), chunk_rows, vocab, width, options)


def encoders_and_vocab(target_tokenizer, source_tokenizer, source_width: int, target_width: int):
    target, source = D.ChunkEncoder(target_tokenizer), D.ChunkEncoder(source_tokenizer)
    seconds, vocab = timed(lambda: source_vocab_map(source_tokenizer, target_tokenizer, source_width, target_width,
                                                    frozenset()))
    return target, source, vocab, seconds


# ---------------------------------------------------------------------------------------------- run


def main() -> None:
    print(f"load average before: {load_average()}   torch threads {torch.get_num_threads()}")
    target_model, target_tok, target_width = load(TARGET)
    sources = {name: load(name) for name in SOURCES}
    larger = load(LARGER)
    docs = documents(90_000)
    chunks = D.chunk_documents(docs, [target_tok, *(s[1] for s in sources.values())], L)

    print(f"\n(a) teacher pass, k={K}, {L}-token chunks, batch 16 (CPU, {torch.get_num_threads()} threads)")
    teacher = {TARGET: bench_teacher(TARGET, target_model, [D.ChunkEncoder(target_tok).encode(c) for c in chunks])}
    for name, (model, tok, _) in sources.items():
        teacher[name] = bench_teacher(name, model, [D.ChunkEncoder(tok).encode(c) for c in chunks])
    if larger is None:
        print(f"    {LARGER}: not added (`bench zoo add {LARGER}`), skipped")
    else:
        model, tok, _ = larger
        small = D.chunk_documents(documents(9_000), [tok], L)
        bench_teacher(LARGER, model, [D.ChunkEncoder(tok).encode(c) for c in small], batch_size=4)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print("\n(b) alignment of one source to the target, per core (tokenize both sides + align + map top-k)")
    for name, (_, tok, width) in sources.items():
        target, source, vocab, map_seconds = encoders_and_vocab(target_tok, tok, width, target_width)
        print(f"    vocabulary map {name} → {TARGET}: {map_seconds:.2f} s once per pair")
        bench_alignment(f"{name}, {L}-token chunks, real rows", chunks, target, source, teacher[name], vocab,
                        target_width)
    rng = np.random.default_rng(0)
    long_pairs = [(SOURCES[0], sources[SOURCES[0]])] + ([] if larger is None else [(LARGER, larger)])
    long_text = "\n\n".join(documents(120_000))  # one text, so that chunks reach 2048 tokens, not a document's end
    for name, (_, tok, width) in long_pairs:
        long_chunks = D.chunk_documents([long_text], [target_tok, tok], 2048)[:8]
        target, source, vocab, map_seconds = encoders_and_vocab(target_tok, tok, width, target_width)
        print(f"    vocabulary map {name} ({len(tok.get_vocab()):,} pieces) → {TARGET}: {map_seconds:.2f} s once")
        rows = [random_rows(source.encode(c), width, rng) for c in long_chunks]
        bench_alignment(f"{name}, 2048-token chunks, random rows", long_chunks, target, source, rows, vocab,
                        target_width)
    torch.set_num_threads(threads)

    print(f"\n(c) store bytes per target token, k={K} (one source: {SOURCES[0]})")
    model, tok, width = sources[SOURCES[0]]
    target_enc, source_enc = D.ChunkEncoder(target_tok), D.ChunkEncoder(tok)
    vocab = source_vocab_map(tok, target_tok, width, target_width, frozenset())
    n_target = sum(len(target_enc.encode(c)) for c in chunks)
    with tempfile.TemporaryDirectory() as tmp:
        teacher_store = D.ensure_teacher_store(Path(tmp) / "teacher", chunks, source_enc, lambda: model, K)
        aligned_store = D.ensure_aligned_store(Path(tmp) / "aligned", chunks, target_enc, source_enc, teacher_store,
                                               vocab, target_width, D.AlignOptions(), shared_vocab=False)
        n_source = len(teacher_store.rows("tokens"))
        teacher_bytes, aligned_bytes = teacher_store.nbytes(), aligned_store.nbytes()
    print(f"    {n_target:,} target tokens, {n_source:,} source tokens ({n_source / n_target:.3f} per target token)")
    print(f"    teacher store (source tokenization): {teacher_bytes / n_target:6.2f} bytes/target token "
          f"({teacher_bytes / n_source:.2f} per source token; 6·k + 8 = {6 * K + 8})")
    print(f"    aligned store (target positions):    {aligned_bytes / n_target:6.2f} bytes/target token "
          f"(4k + 2k + 1 + 2 + 2 = {6 * K + 5})")
    print(f"    one source, both stores:             {(teacher_bytes + aligned_bytes) / n_target:6.2f} bytes/target token")

    print(f"\n(d) training step per token, batch {B} × {L}, zoo-sized GPT-2 (torch threads {threads})")
    corpus = stored_like_corpus(np.random.default_rng(0), 40 * L)
    fused = corpus.collate(list(range(B)))
    clm = min(time_steps(causal_lm_loss, {"input_ids": fused["input_ids"]}, 4) for _ in range(2))
    fusion = min(time_steps(D.fusion_loss(0.9), fused, 4) for _ in range(2))
    collate, _ = timed(lambda: corpus.collate(list(range(B, 2 * B))), repeat=3)
    print(f"    plain CLM step:          {clm / (B * L) * 1e6:7.2f} µs/token")
    print(f"    fusion step (MinCE):     {fusion / (B * L) * 1e6:7.2f} µs/token   ratio {fusion / clm:.3f}× the CLM step")
    print(f"    fused batch from stores: {collate / (B * L) * 1e6:7.2f} µs/token (dataloader side)")
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
