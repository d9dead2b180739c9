"""Per-token cost of each FuseLLM stage on this machine: the measured inputs of docs/scale.md's projection.

Run: ``.venv/bin/python benchmarks/bench_scale.py`` (about a minute on 2 idle cores; needs the built default
zoo, and uses ``zoo:smollm2-135m`` too when it is added). Run it on an idle machine: it prints the load average
before and after. ``--quantisation-effect`` adds (f), a few minutes more.

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
(e) **Fused store** (``teacher_mode=fused``, :mod:`fusers.distill.fused_store`), per target token, with all three
    candidates (the target and both sources): its bytes for MinCE and AvgCE with uint8 and float16 log-probs, and
    the time to build it from the resident teachers (teacher passes, alignment and fusion; no other store
    written) against the stored mode's three teacher stores and two aligned stores, and from those stores.
(f) **Quantisation's effect on training** (``--quantisation-effect``): FuseLLM's default run (400 steps) with the
    stored mode, the fused store with uint8 and with float32 log-probs (same seed, same batches), and the stored
    mode with another seed for scale: the last 50 steps' mean losses and the trained target's cross-entropy per
    token on held-out text.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
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


# ---------------------------------------------------------------------------------------------- (e) fused store


def bench_fused_store(chunks, target, sources: dict) -> None:
    """(e): the fused store's bytes and build time per target token against the stored mode's stores."""
    target_model, target_tok, target_width = target
    target_enc = D.ChunkEncoder(target_tok)
    names = [TARGET, *sources]
    models = [target_model, *(m for m, _, _ in sources.values())]
    encoders = [target_enc, *(D.ChunkEncoder(tok) for _, tok, _ in sources.values())]
    vocabs = [None, *(source_vocab_map(tok, target_tok, width, target_width, frozenset())
                      for _, tok, width in sources.values())]
    shared = [True, *(D.shares_vocabulary(tok, target_tok) for _, tok, _ in sources.values())]
    options, split = D.AlignOptions(), D.ShardSplit()
    n_target = sum(len(target_enc.encode(c)) for c in chunks)
    id_bound = max(target_width, len(target_tok))

    def candidates(teacher_stores=None, aligned_stores=None) -> D.CandidateRows:
        teachers = [D.ResidentTeacher(name, (lambda m=model: m), enc, vocab, same,
                                      None if teacher_stores is None else teacher_stores[c],
                                      None if aligned_stores is None or c == 0 else aligned_stores[c - 1])
                    for c, (name, model, enc, vocab, same) in enumerate(zip(names, models, encoders, vocabs, shared,
                                                                           strict=True))]
        return D.CandidateRows(teachers, chunks, K, target_width, options)

    def per_token(seconds: float) -> str:
        return f"{seconds / n_target * 1e6:8.2f} µs/target token"

    min_ce = D.FusedSettings("min_ce", "sequence")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        resident, fused = timed(lambda: D.ensure_fused_store(tmp / "resident", chunks, candidates(), min_ce, id_bound,
                                                             split=split))
        start = time.perf_counter()
        teacher_stores = [D.ensure_teacher_store(tmp / f"teacher-{c}", chunks, enc, (lambda m=model: m), K, split=split)
                          for c, (model, enc) in enumerate(zip(models, encoders, strict=True))]
        aligned_stores = [D.ensure_aligned_store(tmp / f"aligned-{c}", chunks, target_enc, encoders[c],
                                                 teacher_stores[c], vocabs[c], target_width, options,
                                                 shared_vocab=shared[c], split=split) for c in range(1, len(names))]
        stored = time.perf_counter() - start
        stored_bytes = sum(s.nbytes() for s in (*teacher_stores, *aligned_stores))
        print(f"    {n_target:,} target tokens, {len(names)} candidates ({', '.join(names)}), {len(chunks)} chunks")
        print(f"    stored mode: 3 teacher + 2 aligned stores   {stored_bytes / n_target:7.2f} bytes/target token   "
              f"built in {per_token(stored)}")
        print(f"    fused, MinCE uint8, resident teachers        {fused.nbytes() / n_target:7.2f} bytes/target token   "
              f"built in {per_token(resident)}  ({resident / stored:.2f}× the stored mode's)")
        for label, settings in (("MinCE uint8", min_ce), ("MinCE float16", D.FusedSettings("min_ce", "sequence",
                                                                                         logp="float16")),
                                ("AvgCE uint8", D.FusedSettings("avg_ce", "sequence")),
                                ("AvgCE float16", D.FusedSettings("avg_ce", "sequence", logp="float16"))):
            seconds, store = timed(lambda settings=settings, label=label: D.ensure_fused_store(
                tmp / label.replace(" ", "-"), chunks, candidates(teacher_stores, aligned_stores), settings, id_bound,
                split=split))
            entries = settings.entries(K, len(names))
            per_entry = 2 + (1 if settings.logp == "uint8" else 2)
            print(f"    fused, {label:14s} from the stores     {store.nbytes() / n_target:7.2f} bytes/target token   "
                  f"built in {per_token(seconds)}  (2 + {entries}·{per_entry} = {2 + entries * per_entry})")
        exact = D.ensure_fused_store(tmp / "float32", chunks, candidates(teacher_stores, aligned_stores),
                                     D.FusedSettings("min_ce", "sequence", logp="float32"), id_bound, split=split)
        quantisation_error(fused, exact)


def quantisation_error(quantised: D.ShardedStore, exact: D.ShardedStore) -> None:
    """How far the uint8 store's fused rows, renormalised as a training batch does, are from the float32 store's."""
    def probs(store: D.ShardedStore) -> np.ndarray:
        logq = D.decode_logp(store.rows("logq")[:], store.layout["logp"])
        return torch.softmax(torch.from_numpy(logq).double(), dim=-1).nan_to_num(0.0).numpy()

    q, p = probs(quantised), probs(exact)
    kept = p > 1e-6
    relative = np.abs(q - p)[kept] / p[kept]
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0).sum(axis=-1)
    print(f"    uint8 against float32 log-probs (MinCE rows, renormalised): relative error of a probability "
          f"mean {relative.mean() * 100:.2f}%, max {relative.max() * 100:.2f}% (bound e^(1/16) - 1 = 6.45%); "
          f"total variation per row mean {0.5 * np.abs(q - p).sum(-1).mean():.4f}; KL(float32 || uint8) per row "
          f"mean {kl.mean():.2e} nats")


# ---------------------------------------------------------------------------------------------- (f) quantisation


def bench_quantisation_effect(steps: int = 400) -> None:
    """(f): FuseLLM's default run, stored against fused (uint8, float32), in a throwaway BENCH_HOME that sees the zoo."""
    from fusers.fusellm import FuseLLM
    from harness import paths
    from harness.api import FuseContext
    from harness.corpus import heldout_documents

    zoo = paths.zoo_dir()
    docs = [doc for d in ("code", "docs", "math") for doc in heldout_documents(d, 20)]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        (tmp / "home").mkdir()
        (tmp / "home" / "zoo").symlink_to(zoo)
        before = os.environ.get("BENCH_HOME")
        os.environ["BENCH_HOME"] = str(tmp / "home")
        try:
            sources = [resolve(s) for s in FuseLLM.default_sources]
            for label, seed, overrides in (("stored", 0, {}), ("fused uint8", 0, {"teacher_mode": "fused"}),
                                           ("fused float32", 0, {"teacher_mode": "fused", "fused_logp": "float32"}),
                                           ("stored, seed 1", 1, {})):
                out = tmp / f"out-{label.replace(' ', '-').replace(',', '')}"
                out.mkdir()
                start = time.perf_counter()
                result = FuseLLM().fuse(sources, sources[0], FuseLLM.Config(steps=steps, **overrides),
                                        FuseContext(out_dir=out, seed=seed))
                seconds = time.perf_counter() - start
                curves = result.details["loss_curves"]
                tail = {name: float(np.mean(curves[name][-50:])) for name in ("total", "clm", "fuse")}
                model, tok = load_hf(resolve(str(out)), dtype="float32")
                print(f"    {label:15s} last 50 steps: total {tail['total']:.5f}  clm {tail['clm']:.5f}  "
                      f"fuse {tail['fuse']:.5f}   held-out CE {heldout_ce(model, tok, docs):.5f} nats/token   "
                      f"({seconds:.0f} s)", flush=True)
        finally:
            if before is None:
                os.environ.pop("BENCH_HOME")
            else:
                os.environ["BENCH_HOME"] = before


@torch.no_grad()
def heldout_ce(model, tokenizer, docs: list[str], max_tokens: int = 256) -> float:
    """Mean next-token cross-entropy (nats) of ``model`` over the first ``max_tokens`` tokens of each document, read
    after EOS as in training."""
    nats, count = 0.0, 0
    model.eval()
    for doc in docs:
        ids = [tokenizer.eos_token_id, *tokenizer(doc, add_special_tokens=False)["input_ids"]][:max_tokens]
        if len(ids) < 2:
            continue
        x = torch.tensor([ids])
        logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), dim=-1)
        nats -= float(logp.gather(-1, x[0, 1:, None]).sum())
        count += len(ids) - 1
    return nats / count


# ---------------------------------------------------------------------------------------------- run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quantisation-effect", action="store_true",
                        help="also (f): train FuseLLM stored vs fused (a few minutes)")
    args = parser.parse_args()
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

    print(f"\n(e) fused store (teacher_mode=fused), k={K}, per target token (torch threads {threads})")
    bench_fused_store(chunks, (target_model, target_tok, target_width), sources)
    if args.quantisation_effect:
        print("\n(f) quantisation's effect on FuseLLM's default run (400 steps, MinCE; same seed unless said)")
        bench_quantisation_effect()
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
