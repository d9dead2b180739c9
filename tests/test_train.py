"""The shared training loop, the batch sampler and bits-per-byte."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from harness import corpus
from harness.tokenizer_recipes import TokenizerRecipe, train_tokenizer
from harness.train import TrainConfig, TrainStats, bits_per_byte, pack_documents, token_batches, train


def _tiny_llama(vocab: int = 64, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(cfg)


def _pattern_stream(n: int = 5000, vocab: int = 64) -> np.ndarray:
    """A learnable stream: a repeated sequence of 17 tokens."""
    return np.asarray([(i % 17) * 3 % vocab for i in range(n)], dtype=np.int64)


@pytest.fixture(scope="module")
def small_tokenizer():
    return train_tokenizer(TokenizerRecipe("t", "bytebpe", 300, 50_000), [corpus.train_text("mix", 50_000)])


def test_lr_schedule() -> None:
    cfg = TrainConfig(steps=100, batch_size=1, seq_len=8, lr=1e-3, warmup_steps=10, lr_min_ratio=0.1)
    assert cfg.lr_at(0) == pytest.approx(1e-4)
    assert cfg.lr_at(9) == pytest.approx(1e-3)
    assert cfg.lr_at(10) == pytest.approx(1e-3)
    assert cfg.lr_at(55) == pytest.approx(0.55e-3)  # halfway through the cosine
    assert cfg.lr_at(100) == pytest.approx(1e-4)
    lrs = [cfg.lr_at(s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert cfg.tokens == 800


def test_token_batches_are_seeded_contiguous_windows() -> None:
    stream = np.arange(1000)
    batches = token_batches(stream, batch_size=4, seq_len=16, seed=3)
    first = [next(batches)["input_ids"] for _ in range(3)]
    again = token_batches(stream, batch_size=4, seq_len=16, seed=3)
    assert all(torch.equal(a, next(again)["input_ids"]) for a in first)
    other = next(token_batches(stream, batch_size=4, seq_len=16, seed=4))["input_ids"]
    assert not torch.equal(first[0], other)
    for window in first[0]:
        assert window.shape == (16,) and window.dtype == torch.long
        assert torch.equal(window, torch.arange(int(window[0]), int(window[0]) + 16))  # contiguous
    with pytest.raises(ValueError):
        next(token_batches([1, 2, 3], batch_size=1, seq_len=8, seed=0))


def test_pack_documents_puts_eos_before_each_document(small_tokenizer) -> None:
    stream = pack_documents(small_tokenizer, ["hello world", "x = 1"])
    eos = small_tokenizer.eos_token_id
    assert stream[0] == eos and list(stream).count(eos) == 2
    second = list(stream).index(eos, 1)
    assert small_tokenizer.decode(stream[1:second]) == "hello world"
    assert small_tokenizer.decode(stream[second + 1 :]) == "x = 1"


def test_training_reduces_loss_and_is_seeded() -> None:
    cfg = TrainConfig(steps=40, batch_size=8, seq_len=32, lr=1e-2, warmup_steps=5, seed=0)

    def run() -> TrainStats:
        model = _tiny_llama()
        return train(model, token_batches(_pattern_stream(), 8, 32, seed=0), cfg, progress=None)

    stats = run()
    assert stats.steps == 40 and len(stats.losses) == 40
    assert stats.tokens == 40 * 8 * 32
    assert stats.final_loss < 0.5 * stats.first_loss
    assert stats.seconds > 0 and stats.tokens_per_second > 0
    assert len(stats.extras["lr"]) == 40 and len(stats.extras["grad_norm"]) == 40
    assert run().losses == stats.losses  # same seed, same run
    record = json.loads(json.dumps(stats.to_dict()))
    assert record["steps"] == 40 and len(record["losses"]) == 40
    assert set(stats.summary()) == {
        "steps",
        "tokens",
        "seconds",
        "tokens_per_second",
        "first_loss",
        "final_loss",
    }


def test_custom_loss_fn_callable_batches_and_early_stop() -> None:
    """What FuseLLM relies on: its loss replaces the default, its extras are logged, batches can be built
    on the fly, and on_step can stop a run."""
    calls: list[int] = []
    seen_steps: list[int] = []

    def make_batch(step: int) -> dict[str, torch.Tensor]:
        seen_steps.append(step)
        ids = torch.from_numpy(_pattern_stream(64)).view(2, 32)
        return {"input_ids": ids, "teacher": torch.zeros(2, 32)}

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]):
        calls.append(1)
        assert "teacher" in batch  # extra keys reach the custom loss
        logits = model(input_ids=batch["input_ids"]).logits
        clm = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), batch["input_ids"][:, 1:].reshape(-1)
        )
        aux = logits.pow(2).mean()
        return 0.9 * clm + 0.1 * aux, {"clm": clm.item(), "aux": aux.item()}

    cfg = TrainConfig(steps=30, batch_size=2, seq_len=32, lr=5e-3, warmup_steps=2)
    logged: list[dict] = []

    def on_step(step: int, logs: dict) -> bool:
        logged.append(logs)
        return step == 9  # stop after the 10th step

    stats = train(_tiny_llama(), make_batch, cfg, loss_fn=loss_fn, progress=None, on_step=on_step)
    assert stats.steps == 10 and len(calls) == 10 and seen_steps == list(range(10))
    assert len(stats.extras["clm"]) == 10 and len(stats.extras["aux"]) == 10
    assert {"loss", "lr", "grad_norm", "clm", "aux"} <= set(logged[0])
    assert stats.losses[0] == pytest.approx(
        0.9 * stats.extras["clm"][0] + 0.1 * stats.extras["aux"][0], rel=1e-4
    )


def test_progress_bar_and_exhausted_iterator() -> None:
    cfg = TrainConfig(steps=3, batch_size=2, seq_len=16, lr=1e-3, warmup_steps=1)
    stats = train(_tiny_llama(), token_batches(_pattern_stream(), 2, 16, 0), cfg, progress="unit test")
    assert stats.steps == 3
    with pytest.raises(ValueError, match="ran out after 1 steps"):
        train(_tiny_llama(), iter([{"input_ids": torch.zeros(1, 8, dtype=torch.long)}]), cfg, progress=None)


class _ConstantModel(nn.Module):
    """Uniform next-token distribution over ``vocab``: every token costs exactly log2(vocab) bits."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.dummy)


class _BigramModel(nn.Module):
    """Predictions depend on the previous token only, so context length cannot change the score."""

    def __init__(self, vocab: int):
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table(input_ids))


def test_bits_per_byte_counts_every_token_once(small_tokenizer) -> None:
    docs = corpus.heldout_documents("code", 3) + ["short", "é → ünïcode"]
    vocab = len(small_tokenizer)
    n_tokens = sum(len(small_tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    expected = n_tokens * math.log2(vocab) / n_bytes
    for max_length in (8, 64, 4096):  # rolling windows for long documents and none at all
        got = bits_per_byte(_ConstantModel(vocab), small_tokenizer, docs, max_length=max_length)
        assert got == pytest.approx(expected, rel=1e-6)


def test_bits_per_byte_windows_keep_the_right_context(small_tokenizer) -> None:
    docs = corpus.heldout_documents("docs", 2)
    model = _BigramModel(len(small_tokenizer))
    full = bits_per_byte(model, small_tokenizer, docs, max_length=8192)
    for max_length, stride in ((4, 2), (16, 8), (33, 7), (9, None)):
        windowed = bits_per_byte(
            model, small_tokenizer, docs, max_length=max_length, stride=stride, batch_size=5
        )
        assert windowed == pytest.approx(full, rel=1e-5)


def test_bits_per_byte_of_a_trained_model_beats_uniform(small_tokenizer) -> None:
    stream = pack_documents(small_tokenizer, corpus.train_slice("math", 60_000))
    model = _tiny_llama(vocab=len(small_tokenizer))
    docs = corpus.heldout_documents("math", 4)
    before = bits_per_byte(model, small_tokenizer, docs, max_length=64)
    train(model, token_batches(stream, 8, 64, 0), TrainConfig(60, 8, 64, 1e-2, 5), progress=None)
    after = bits_per_byte(model, small_tokenizer, docs, max_length=64)
    assert after < 0.6 * before
    assert model.training  # restored
