"""Sampled answers: ``n`` continuations per prompt with temperature / top-p / repetition penalty, seeded.

:func:`harness.lmeval.generate_greedy` answers greedily through lm-eval; preference data (FuseChat-3.0's ``best``
and ``worst`` of several samples per source) needs several *sampled* answers per prompt, which lm-eval's
``generate_until`` does not return. This is transformers' ``generate(do_sample=True, num_return_sequences=n)``,
batched over prompts, with the stop strings handled as ``generate_greedy`` handles them: generation stops at any
of them (transformers' ``stop_strings``; EOS too) and the answer is cut before the first one, then stripped.

Seeded: each batch of prompts draws from its own seed (``seed`` and the batch's index), inside
``torch.random.fork_rng``, so the answers depend on ``(seed, batch_size)`` and the prompts, not on what ran before,
and the caller's random state is left as it was. Top-k is off (``top_k=0``: pure nucleus sampling, as vLLM's
default), whatever the model's ``generation_config`` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def cut_at_stops(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any string of ``stop``, stripped."""
    end = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:end].strip()


def sample_responses(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                     stop: Sequence[str], *, n: int, temperature: float, top_p: float, repetition_penalty: float,
                     max_new_tokens: int, seed: int, batch_size: int = 8, progress: str | None = None
                     ) -> list[list[str]]:
    """``n`` sampled answers to each prompt: ``out[i][j]`` is the j-th answer to ``prompts[i]``.

    Prompts are left-padded into batches of ``batch_size``, and a prompt longer than the context less
    ``max_new_tokens`` keeps its last tokens (as lm-eval's HFLM does). ``progress``: the label of a progress bar
    over the batches, on stderr (None: no bar).
    """
    import torch

    from harness.model import max_length

    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"need n >= 1 and max_new_tokens >= 1, got n={n}, max_new_tokens={max_new_tokens}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    budget = max(1, max_length(model) - max_new_tokens)
    stops = [s for s in stop if s]
    device = next(model.parameters()).device
    encoded = [ids[-budget:] for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    out: list[list[str]] = []
    was_training = model.training
    model.eval()
    try:
        starts: Any = range(0, len(encoded), batch_size)
        if progress is not None:
            import sys

            from rich.console import Console
            from rich.progress import track

            starts = track(starts, description=progress, console=Console(file=sys.stderr), transient=False)
        for b, first in enumerate(starts):
            group = encoded[first:first + batch_size]
            width = max(len(ids) for ids in group)
            input_ids = torch.full((len(group), width), pad, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, ids in enumerate(group):
                if ids:
                    input_ids[row, width - len(ids):] = torch.tensor(ids)
                    mask[row, width - len(ids):] = 1
            options: dict[str, Any] = {"stop_strings": stops, "tokenizer": tokenizer} if stops else {}
            generate: Any = model.generate
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
                torch.manual_seed(_batch_seed(seed, b))
                generated = generate(
                    input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=True,
                    num_return_sequences=n, temperature=temperature, top_p=top_p, top_k=0,
                    repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens, pad_token_id=pad,
                    **options)
            texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
            for row in range(len(group)):
                out.append([cut_at_stops(t, stops) for t in texts[row * n:(row + 1) * n]])
    finally:
        model.train(was_training)
    return out


def _batch_seed(seed: int, batch: int) -> int:
    """A seed per (run seed, batch index): distinct batches draw independently, the same ones identically."""
    return (int(seed) * 1_000_003 + batch) % (2**63 - 1)
