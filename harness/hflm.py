"""FuseBench's lm-eval ``HFLM``: lm-eval's own, with rolling log-likelihoods scored without its padding waste.

The perplexity suite scores every document with ``loglikelihood_rolling``. lm-eval 0.4's ``HFLM`` cuts each
document into rolling windows, then scores the windows in slices of ``batch_size`` **in document order**, one
``_loglikelihood_tokens`` call per slice: its longest-first sorting works inside each slice only. Documents of
different lengths then share a batch, and every batch is right-padded to its longest window. On the suite's
held-out documents (96 of 2,000 characters, tokenized by SmolLM2) the model reads 30% more tokens than the
documents hold (67.2k for 51.6k); sorted across documents, 6% (54.8k). That padding (1.23× the tokens of a sorted
pass), more than anything lm-eval does per request, is why scoring took 1.32× a plain batched forward pass
(``benchmarks/bench_inference.py``).

:class:`FuseBenchHFLM` overrides ``loglikelihood_rolling`` alone. It builds the same windows with lm-eval's own
helpers, sorts all of them longest first, and scores them in batches of ``batch_size`` through the same
``_model_call``; each window's log-likelihood is summed per document as lm-eval sums it. Per window it gathers
the log-probabilities of the predicted tokens with a log-softmax over a few rows at a time on a CPU (about
:data:`LOG_SOFTMAX_CHUNK_BYTES` of logits; on a GPU the window's rows at once), instead of lm-eval's
``log_softmax`` over the whole batch: that made a
second full copy of the ``batch × length × vocabulary`` logits (0.85 GB for 8 windows of 540 tokens and SmolLM2's
49,152-token vocabulary) and read it again for a greedy flag that rolling scores discard; cache-sized chunks cost
a fifth of that time on a CPU (measured: 0.13 s against 0.65 s per such batch, one thread). Log-probabilities are
computed in lm-eval's ``softmax_dtype`` as there, so the numbers agree with stock ``HFLM`` up to floating-point
differences between batch shapes (about 1e-6 relative; ``tests/test_hflm.py``).

Scoring each window by itself also sidesteps a slip in lm-eval's one-token-continuation cache: two windows of a
batch with the same tokens (the last two windows of a periodic document) are computed once, and the shorter
continuation's log-probabilities are then gathered from the *first* positions of the longer one's logits rather
than the last, so stock results there depend on the batch size (``tests/test_hflm.py``).

Everything else is lm-eval's: ``loglikelihood`` (context/continuation pairs, already sorted across requests, with
its one-token continuation cache), ``generate_until`` (its per-step stop-sequence check decodes a few tokens per
row, 0.08 ms against a 135 ms decoding step for 8 rows of SmolLM2: nothing to gain) and seq2seq models (which
fall back to lm-eval's ``loglikelihood_rolling``). In a data-parallel evaluation (:mod:`harness.eval_worker`)
each process scores its own share of the requests this way: nothing here talks to the other processes. ``batch_size="auto"`` uses lm-eval's
own probe, run at the longest window to be scored rather than at the model's full context length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from lm_eval import utils
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance

#: Logits per log-softmax chunk: a few rows of the vocabulary that stay in cache between the softmax and the gather.
LOG_SOFTMAX_CHUNK_BYTES = 4 << 20


@dataclass(frozen=True)
class RollingWindow:
    """One window of a document: ``tokens`` are read by the model (all but the last) and the last ``predicted``
    of them are scored, each from the tokens before it."""

    document: int
    tokens: list[int]
    predicted: int


class FuseBenchHFLM(HFLM):
    """lm-eval's ``HFLM`` with :meth:`loglikelihood_rolling` batched across documents (see the module doc)."""

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each request's whole text, every token predicted once, as lm-eval computes it:
        the same rolling windows (context length 1, the prefix token first), summed per document in window order.
        Windows of all documents are scored together, longest first."""
        if self.backend != "causal":
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        windows = [window for index, request in enumerate(requests) for window in self.rolling_windows(index, request)]
        scores = self._score_windows(windows, disable_tqdm or self.rank != 0)
        totals = [0.0] * len(requests)
        for window, score in zip(windows, scores, strict=True):
            totals[window.document] += score
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def rolling_windows(self, document: int, request: Instance) -> list[RollingWindow]:
        """The windows lm-eval's ``loglikelihood_rolling`` scores for one request, built with its own helpers."""
        (text,) = request.args
        pairs = utils.get_rolling_token_windows(token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                                                max_seq_len=self.max_length, context_len=1)
        return [RollingWindow(document, context + continuation, len(continuation))
                for context, continuation in map(utils.make_disjoint_window, pairs)]

    def _score_windows(self, windows: list[RollingWindow], quiet: bool) -> list[float]:
        """Each window's summed log-probability of its predicted tokens; windows sorted longest first, right-padded
        with token 0 in batches (causal attention never looks right, so padding changes no real position)."""
        scores = [0.0] * len(windows)
        if not windows:
            return scores
        order = sorted(range(len(windows)), key=lambda i: len(windows[i].tokens), reverse=True)
        batch_size = self._rolling_batch_size(windows[order[0]])
        with tqdm(total=len(windows), disable=quiet, desc="Scoring rolling windows") as bar:
            for start in range(0, len(order), batch_size):
                chosen = order[start : start + batch_size]
                inputs = torch.zeros((len(chosen), len(windows[chosen[0]].tokens) - 1), dtype=torch.long)
                for row, index in enumerate(chosen):
                    inputs[row, : len(windows[index].tokens) - 1] = torch.tensor(windows[index].tokens[:-1])
                logits = self._model_call(inputs.to(self.device))
                chunk_bytes = LOG_SOFTMAX_CHUNK_BYTES if logits.device.type == "cpu" else None
                for row, index in enumerate(chosen):
                    window = windows[index]
                    end = len(window.tokens) - 1  # the logits at position p predict token p + 1
                    targets = torch.tensor(window.tokens[-window.predicted :], device=logits.device)
                    log_probs = target_log_probs(logits[row, end - window.predicted : end], targets, self.softmax_dtype,
                                                 chunk_bytes)
                    scores[index] = float(log_probs.sum())
                bar.update(len(chosen))
        return scores

    def _rolling_batch_size(self, longest: RollingWindow) -> int:
        """``batch_size``, or for ``auto`` lm-eval's probe (largest batch that runs, halving from
        ``max_batch_size``) at the longest window's length; lm-eval probes rolling scores at the full context."""
        if self.batch_size != "auto":
            return int(self.batch_size)
        split = len(longest.tokens) - longest.predicted
        return int(self._detect_batch_size([(None, longest.tokens[:split], longest.tokens[split:])], pos=0))


def target_log_probs(logits: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype | None = None,
                     chunk_bytes: int | None = LOG_SOFTMAX_CHUNK_BYTES) -> torch.Tensor:
    """``log_softmax(logits)[i, targets[i]]`` for each row ``i`` of ``logits`` (rows × vocabulary), in ``dtype``
    (None: the logits'), about ``chunk_bytes`` of log-softmax at a time (at least a row), so that no full-size copy is
    made; ``None``: all rows in one call (on a GPU, where chunks would cost kernel launches rather than save memory
    traffic; not measured here)."""
    rows, vocab = logits.shape
    out = torch.empty(rows, dtype=dtype or logits.dtype, device=logits.device)
    step = max(1, rows if chunk_bytes is None else chunk_bytes // (vocab * out.element_size()))
    for start in range(0, rows, step):
        chunk = torch.log_softmax(logits[start : start + step], dim=-1, dtype=dtype)
        out[start : start + step] = chunk.gather(-1, targets[start : start + step, None]).squeeze(-1)
    return out
