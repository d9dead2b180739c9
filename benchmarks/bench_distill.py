"""Benchmark fusers/distill/: the fusion training step against a plain CLM step, and teacher storage size.

Run: ``.venv/bin/python benchmarks/bench_distill.py`` (about a minute on 2 idle cores; self-contained: it trains
its own byte-level BPE tokenizer and uses a randomly initialised model of the default zoo's size).

(a) **Training step**: one optimizer step of :func:`harness.train.train` (forward, loss, backward, clipping,
    AdamW) on the same batch of 8 × 256 tokens of a GPT-2 with the default zoo's shape (d=128, 2 layers,
    vocabulary 1024), with ``harness.train.causal_lm_loss`` (transformers' own loss) and with
    :func:`fusers.distill.fusion_loss` (λ·CLM + (1-λ)·sparse soft CE over the fused top-k; MinCE gives k = 10
    entries per row, AvgCE C·k = 30). Target: ≤ 1.15×. The two losses alternate, best of several rounds each,
    so that a busy machine hurts both alike. A second line times building a fused batch from stored
    candidates (``FusionCorpus.collate``), which the dataloader does per step next to the model.
(b) **Stored teacher size**: a teacher store of that model over ~100k tokens of the embedded corpus, bytes
    per token on disk against the 6·k bound for k = 10 (int32 ids + float16 log-probs), and the overhead:
    the input id, the token CE and the predicted token's byte length (8 bytes per token), per-chunk sums and
    ``.npy`` headers.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusers import distill as D
from fusers.align import MAPPED
from harness.corpus import train_slice
from harness.tokenizer_recipes import TokenizerRecipe, train_tokenizer
from harness.train import TrainConfig, causal_lm_loss, train

B, L, V, K, C = 8, 256, 1024, 10, 3


def model_of_zoo_size(seed: int = 0) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=128, n_layer=2, n_head=4, n_positions=1024, bos_token_id=1, eos_token_id=2,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False))


def stored_like_corpus(rng: np.random.Generator, n_rows: int) -> D.FusionCorpus:
    """C candidates with random top-k rows, as :class:`StreamCandidates` reads them from stores."""
    chunk_of_row = np.repeat(np.arange(n_rows // 200 + 1), 200)[:n_rows]
    columns, sums = [], []
    for _ in range(C):
        logits = rng.normal(size=(n_rows, K)).astype(np.float32)
        columns.append({"ids": rng.integers(0, V, (n_rows, K)).astype(np.int32),
                        "logp": np.sort(logits - np.log(np.exp(logits).sum(1, keepdims=True)), 1)[:, ::-1].astype(
                            np.float16),
                        "status": np.full(n_rows, MAPPED, np.int8),
                        "token_ce": rng.uniform(0, 6, n_rows).astype(np.float16),
                        "token_bytes": rng.integers(1, 6, n_rows).astype(np.uint16)})
        n_chunks = int(chunk_of_row.max()) + 1
        sums.append({"nats": rng.uniform(100, 900, n_chunks), "n_tokens": np.full(n_chunks, 200),
                     "n_bytes": rng.integers(400, 700, n_chunks)})
    return D.FusionCorpus(rng.integers(0, V, n_rows), D.StreamCandidates(["t", "a", "b"], columns, sums, chunk_of_row),
                          seq_len=L, fusion="min_ce")


def time_steps(loss_fn, batch: dict, steps: int) -> float:
    """Seconds per step of harness.train.train on ``batch`` repeated (after one warm-up step)."""
    model = model_of_zoo_size()
    cfg = TrainConfig(steps=steps + 1, batch_size=B, seq_len=L, lr=1e-4, warmup_steps=1)
    marks: list[float] = []
    train(model, lambda step: batch, cfg, loss_fn=loss_fn, progress=None,
          on_step=lambda step, logs: marks.append(time.perf_counter()))
    return (marks[-1] - marks[0]) / steps


def bench_step(rounds: int = 4, steps: int = 6) -> None:
    rng = np.random.default_rng(0)
    corpus = stored_like_corpus(rng, 40 * L)
    fused_min = corpus.collate(list(range(B)))
    corpus.fusion = "avg_ce"
    fused_avg = corpus.collate(list(range(B)))
    clm_batch = {"input_ids": fused_min["input_ids"]}
    fusion = D.fusion_loss(0.9)
    runs: dict[str, list[float]] = {"clm": [], "min": [], "avg": []}
    for _ in range(rounds):  # interleaved, so that load changes hit all three alike
        runs["clm"].append(time_steps(causal_lm_loss, clm_batch, steps))
        runs["min"].append(time_steps(fusion, fused_min, steps))
        runs["avg"].append(time_steps(fusion, fused_avg, steps))
    best = {k: min(v) for k, v in runs.items()}
    print(f"(a) training step, batch {B} × {L} tokens, GPT-2 d=128 × 2 layers, vocabulary {V} "
          f"(torch threads {torch.get_num_threads()})")
    print(f"    plain CLM (transformers loss):          {best['clm'] * 1e3:7.1f} ms/step")
    print(f"    fusion loss, MinCE (K={K} per row):      {best['min'] * 1e3:7.1f} ms/step   "
          f"ratio {best['min'] / best['clm']:.3f}× (target ≤ 1.15×)")
    print(f"    fusion loss, AvgCE (K={C * K} per row):      {best['avg'] * 1e3:7.1f} ms/step   "
          f"ratio {best['avg'] / best['clm']:.3f}×")
    for name, fusion_name in (("MinCE", "min_ce"), ("AvgCE", "avg_ce")):
        corpus.fusion = fusion_name
        t = []
        for r in range(5):
            start = time.perf_counter()
            corpus.collate(list(range(r * B, (r + 1) * B)))
            t.append(time.perf_counter() - start)
        print(f"    building one fused batch from {C} stored candidates ({name}): {statistics.median(t) * 1e3:6.1f} ms")


def bench_storage(k: int = K) -> None:
    text = [doc for d in ("code", "docs", "math") for doc in train_slice(d, 100_000)]
    tok = train_tokenizer(TokenizerRecipe("bytebpe", "bytebpe", vocab_size=V, train_chars=300_000), text)
    model = model_of_zoo_size()
    chunks = D.chunk_documents(text, [tok], L)
    enc = D.ChunkEncoder(tok)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        store = D.ensure_teacher_store(Path(tmp) / "t", chunks, enc, lambda: model, k)
        seconds = time.perf_counter() - start
        n_tokens = len(store.rows("tokens"))
        total = store.nbytes()
        payload = store.nbytes(["topk_ids", "topk_logp"])
        per_token = store.nbytes(D.ROW_FIELDS)
    print(f"\n(b) stored teacher, k={k}: {len(chunks)} chunks, {n_tokens:,} tokens, {store.n_shards} shards, "
          f"written in {seconds:.1f} s ({n_tokens / seconds:,.0f} tokens/s)")
    print(f"    top-k ids + log-probs: {payload / n_tokens:6.2f} bytes/token   (bound 6·k = {6 * k})")
    print(f"    all per-token arrays:  {per_token / n_tokens:6.2f} bytes/token   (+ id, token CE, byte length = 8)")
    print(f"    everything on disk:    {total / n_tokens:6.2f} bytes/token   = {total / n_tokens / (6 * k):.3f}× the "
          f"6·k bound (per-chunk sums and .npy headers included)")


if __name__ == "__main__":
    bench_step()
    bench_storage()
