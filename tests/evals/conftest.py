"""Fixtures for the suite tests: a scripted LM with known log-likelihoods and two micro HF models.

* ``ScriptedLM``: ``loglikelihood_rolling(text) = −rate · ln 2 · bytes(text)``, so bits/byte is ``rate``;
* ``micro_llama``: random Llama (hidden 32, 2 layers, context 128) with a byte-level BPE (vocab 300);
* ``micro_mpt``: random MPT (``max_seq_len=64``, which lm-eval cannot read) with a Unigram tokenizer;
* ``tiny_chat_model``: random Llama (hidden 32, 2 layers) with a chat template, for the MT-Bench tests.
"""

from __future__ import annotations

import inspect
import math
import random
import textwrap
from pathlib import Path

import pytest
from lm_eval.api.model import LM

from tests.conftest import one_thread


class ScriptedLM(LM):
    """An LM whose rolling log-likelihood is a known function of the text's UTF-8 bytes."""

    def __init__(self, rate: float = 1.0, per_doc: dict[str, float] | None = None) -> None:
        super().__init__()
        self.rate = rate
        self.per_doc = per_doc or {}  # text -> bits/byte override
        self.seen: list[str] = []

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (text,) in (r.args for r in requests):
            self.seen.append(text)
            out.append(-self.per_doc.get(text, self.rate) * math.log(2) * len(text.encode("utf-8")))
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return [(-float(len(c)), False) for _, c in (r.args for r in requests)]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        return ["" for _ in requests]


@pytest.fixture
def single_thread():
    """Use with ``pytestmark = pytest.mark.usefixtures("single_thread")`` in micro-model test modules."""
    with one_thread():
        yield


@pytest.fixture
def scripted_lm():
    return ScriptedLM


def _text() -> str:
    return inspect.getsource(textwrap)


def _wrap(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def _ids(tok) -> dict[str, int]:
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


@pytest.fixture(scope="session")
def micro_llama(tmp_path_factory) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([_text()], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    hf = _wrap(tok)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(hf), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                                         **_ids(hf)))
    path = tmp_path_factory.mktemp("micro_evals") / "llama"
    model.save_pretrained(path)
    hf.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def micro_mpt(tmp_path_factory) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import MptConfig, MptForCausalLM

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Metaspace("▁", prepend_scheme="first", split=True)
    tok.train_from_iterator([_text()], trainers.UnigramTrainer(
        vocab_size=200, unk_token="<unk>", special_tokens=["<unk>", "<s>", "</s>", "<pad>"], show_progress=False))
    hf = _wrap(tok)
    torch.manual_seed(1)
    model = MptForCausalLM(MptConfig(vocab_size=len(hf), d_model=32, n_layers=2, n_heads=4, expansion_ratio=2,
                                     max_seq_len=64, **_ids(hf)))
    path = tmp_path_factory.mktemp("micro_evals") / "mpt"
    model.save_pretrained(path)
    hf.save_pretrained(path)
    return path


_TINY_VOCAB = ("the model answers each question in two turns while a judge grades every reply "
               "from one to ten with reasons numbers 0 1 2 3 4 5 6 7 8 9 rating [[ ]] code def return")


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """(The MT-Bench tests' answering and judging model.) A random 2-layer Llama (hidden 32) with a byte-level BPE tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = _TINY_VOCAB.split()
    rng = random.Random(0)
    text = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(100)]  # ~10 KB
    special = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(text, trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="</s>")
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny_chat_llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
