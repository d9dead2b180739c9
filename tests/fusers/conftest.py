"""Micro models for the fuser tests, built once per session (a few seconds on 2 cores).

* ``bpe``: a byte-level BPE tokenizer (vocab 300) trained on a few KB of stdlib source and docstrings;
* ``llama-base`` (trained 20 steps on both texts), ``llama-code`` and ``llama-docs`` (10 more steps
  each on one text): a homogeneous family, hidden 32, 2 layers, context 128, all with ``bpe``;
* ``gpt2``: random GPT-2 with ``bpe`` (same vocabulary, other architecture);
* ``neox-a``/``neox-b``: random GPT-NeoX with ``bpe`` (mergekit needs a workaround for it);
* ``mpt-uni``: random MPT with its own Unigram tokenizer (different vocabulary, ``max_seq_len``).
"""

from __future__ import annotations

import builtins
import inspect
import shlex
import textwrap
from pathlib import Path

import pytest

from tests.conftest import one_thread

CONTEXT = 128


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def corpus() -> tuple[str, str]:
    """Two small 'domains' that exist on every machine: stdlib source and builtin docstrings."""
    code = inspect.getsource(textwrap) + inspect.getsource(shlex)
    docs = "\n\n".join(f.__doc__ for f in vars(builtins).values() if callable(f) and f.__doc__)
    return code, docs


def bpe_tokenizer(texts: list[str], vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def unigram_tokenizer(texts: list[str], vocab_size: int = 200):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Metaspace("▁", prepend_scheme="first", split=True)
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, unk_token="<unk>", show_progress=False,
                                      special_tokens=["<unk>", "<s>", "</s>", "<pad>"])
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def special_ids(tok) -> dict[str, int]:
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


def llama(tok, seed: int = 0, **overrides):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    kw = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": CONTEXT,
          "tie_word_embeddings": False, **special_ids(tok), **overrides}
    return LlamaForCausalLM(LlamaConfig(**kw))


def train(model, tok, text: str, steps: int, seed: int, lr: float = 3e-3) -> None:
    """A few AdamW steps on random 64-token windows: enough to make experts differ."""
    import torch

    ids = torch.tensor(tok(text)["input_ids"])
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 65, (8,), generator=gen)
        batch = torch.stack([ids[s : s + 64] for s in starts])
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def save(model, tok, path: Path) -> Path:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def micro(tmp_path_factory) -> dict[str, Path]:
    """name -> saved model folder (see module docstring)."""
    with one_thread():
        return _build_micro(tmp_path_factory.mktemp("micro_fusers"))


def _build_micro(root: Path) -> dict[str, Path]:
    import copy

    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        MptConfig,
        MptForCausalLM,
    )

    code, docs = corpus()
    bpe = bpe_tokenizer([code, docs])
    out: dict[str, Path] = {}

    base = llama(bpe, seed=0)
    train(base, bpe, code + docs, steps=20, seed=0)
    out["llama-base"] = save(base, bpe, root / "llama-base")
    for name, text, seed in (("llama-code", code, 1), ("llama-docs", docs, 2)):
        expert = copy.deepcopy(base)
        train(expert, bpe, text, steps=10, seed=seed)
        out[name] = save(expert, bpe, root / name)

    torch.manual_seed(3)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(bpe), n_embd=32, n_layer=2, n_head=4, n_positions=CONTEXT,
                                      **special_ids(bpe)))
    out["gpt2"] = save(gpt2, bpe, root / "gpt2")
    for name, seed in (("neox-a", 4), ("neox-b", 5)):
        torch.manual_seed(seed)
        neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(bpe), hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=4, intermediate_size=64, rotary_pct=0.25,
                                                max_position_embeddings=CONTEXT, **special_ids(bpe)))
        out[name] = save(neox, bpe, root / name)

    uni = unigram_tokenizer([code, docs])
    torch.manual_seed(6)
    mpt = MptForCausalLM(MptConfig(vocab_size=len(uni), d_model=32, n_layers=2, n_heads=4, expansion_ratio=2,
                                   max_seq_len=64, **special_ids(uni)))
    out["mpt-uni"] = save(mpt, uni, root / "mpt-uni")
    return out


@pytest.fixture(scope="session")
def refs(micro):
    """name -> ModelRef of the micro models."""
    from harness.model import resolve

    return {name: resolve(str(path)) for name, path in micro.items()}


@pytest.fixture(scope="session")
def build():
    """The builder functions above, for tests that need one more model."""
    from types import SimpleNamespace

    return SimpleNamespace(llama=llama, save=save, train=train, bpe_tokenizer=bpe_tokenizer,
                           unigram_tokenizer=unigram_tokenizer)


class TrainedSequences:
    """Records what a chat fuser trains on: the run's chunks (conversations as the teachers read them) and
    every training sequence's real tokens, for checking that each sequence is one whole conversation."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        import torch

        from fusers import distill as D

        self.chunks: list = []
        self.rows: list[list[int]] = []
        self.masks: list[list[bool]] = []
        fingerprint, collate = D.chunks_fingerprint, D.FusionCorpus.collate

        def record_chunks(chunks, seq_len):
            self.chunks = list(chunks)
            return fingerprint(chunks, seq_len)

        def record_batch(corpus, indices):
            batch = collate(corpus, indices)
            real = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
            for r in range(len(indices)):
                self.rows.append(batch["input_ids"][r][real[r]].tolist())
                self.masks.append(batch["loss_mask"][r][real[r]].tolist())
            return batch

        monkeypatch.setattr(D, "chunks_fingerprint", record_chunks)
        monkeypatch.setattr(D.FusionCorpus, "collate", record_batch)

    def check_one_conversation_each(self, tokenizer) -> int:
        """Every trained sequence is exactly [EOS] + one conversation's tokens, i.e. what each teacher read
        of it, and its loss covers response tokens only. Returns how many sequences were checked."""
        from fusers import distill as D

        encoder = D.ChunkEncoder(tokenizer)
        whole = {tuple(encoder.ids(c)) for c in self.chunks}
        assert self.rows, "nothing was trained"
        for row, mask in zip(self.rows, self.masks, strict=True):
            assert tuple(row) in whole, "a training sequence is not one whole conversation"
            assert any(mask) and not mask[0] and not mask[-1]  # instruction start and the last row never count
        return len(self.rows)


@pytest.fixture(scope="session")
def reward_model(tmp_path_factory) -> Path:
    """A tiny random HF sequence-classification model: any such model is a ProFuser reward, and a random one
    tells the sources' answers apart even where the micro models cannot do arithmetic."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from tests.conftest import one_thread

    path = tmp_path_factory.mktemp("rm") / "rm"
    with one_thread():
        tok = bpe_tokenizer([corpus()[0][:6000]], vocab_size=280)
        torch.manual_seed(0)
        model = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=4,
                                                         n_positions=256, num_labels=1, **special_ids(tok)))
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return path


# --- training in several processes ------------------------------------------------------------------------------

SHARDED_ON_CPU = Path(__file__).parent / "sharded_on_cpu"


def sharded_on_cpu(monkeypatch: pytest.MonkeyPatch, engine: str = "fsdp") -> str:
    """Make the processes that `bench run --accelerate-config` launches from this test run FSDP2 or DeepSpeed on CPU
    (accelerate runs them only on accelerators; ``sharded_on_cpu/sitecustomize.py`` lifts that gate). Returns the
    accelerate config to pass, 2 CPU processes: ``fsdp`` (FSDP2, full shard), ``zero2`` or ``zero3`` (DeepSpeed)."""
    import os

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SHARDED_ON_CPU),
                                                      *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("FUSEBENCH_TEST_SHARDED_ON_CPU", "1")
    return str(SHARDED_ON_CPU / f"{engine}.yaml")


def fuse_and_forget(home: Path, db: Path, args: list[str], capsys: pytest.CaptureFixture[str]
                    ) -> tuple[dict[str, dict], dict]:
    """`bench run ARGS --db DB`: the weights of every model in its artifact (``"."`` the fused model, else a stage
    model's folder inside it, e.g. ``"pairwise/gpt2-code+neox-docs"``) and the fused model's details. Then the
    artifact and the training caches (teacher and aligned stores, pairwise targets, answers) are removed, so that the
    test's next run computes everything again: all its runs share one fuse hash, since how a run executes (processes,
    accelerate config) is no part of it."""
    import json
    import shutil

    from safetensors.torch import load_file

    from tests.conftest import bench

    assert bench(*args, "--db", str(db)) == 0, capsys.readouterr().err[-3000:]
    (artifact,) = sorted((home / "artifacts").iterdir())
    weights = {str(f.parent.relative_to(artifact)): load_file(f) for f in sorted(artifact.rglob("model.safetensors"))}
    details = json.loads((artifact / "fusebench.json").read_text())["details"]
    shutil.rmtree(artifact)
    for cache in ("distill", "fusechat", "profuser"):
        shutil.rmtree(home / "cache" / cache, ignore_errors=True)
    return weights, details


def assert_same_weights(one: dict[str, dict], other: dict[str, dict], label: str, tol: float = 1e-4,
                        selected: tuple[str, ...] = ()) -> None:
    """The same models (folders), with the same tensors by name, equal within ``tol`` (float sums in another order).

    ``selected``: folders made by a merge that *selects* elements (SCE keeps each matrix's top fraction by variance):
    a difference of 1e-6 in its inputs can move an element across the selection threshold, which changes that one
    element by a task vector's size. There at most one element in 2,000 per tensor may differ by more than ``tol``."""
    import torch

    assert one.keys() == other.keys(), label
    for folder, tensors in one.items():
        assert tensors.keys() == other[folder].keys(), (label, folder)  # tied weights saved once, no wrapper names
        for key, value in tensors.items():
            if folder in selected:
                off = ~torch.isclose(value, other[folder][key], atol=tol, rtol=tol)
                assert int(off.sum()) <= max(1, value.numel() // 2000), (label, folder, key, int(off.sum()))
                continue
            torch.testing.assert_close(value, other[folder][key], atol=tol, rtol=tol,
                                       msg=lambda m, where=f"{label} {folder} {key}": f"{where}: {m}")
