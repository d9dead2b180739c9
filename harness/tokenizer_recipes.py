"""Tokenizer training recipes for the embedded zoo (``tokenizers`` library, trained offline in seconds).

Three kinds with genuinely different vocabularies, so cross-tokenizer fusion (FuseLLM/FuseChat token
alignment, Cool-Fusion) has real work to do:

* ``bytebpe`` -- GPT-2 style byte-level BPE. Every byte is in the alphabet, so any text round-trips.
* ``unigram`` -- Unigram LM over Metaspace pre-tokens (``split=True``): T5/ALBERT style.
* ``spbpe``   -- SentencePiece-style BPE: Metaspace with ``split=False``, so merges may cross spaces
  (``▁The▁answer▁is`` can become one token). The default Metaspace decoder loses spaces for such
  tokens, so it gets the Llama-style decoder (``Replace`` + ``Fuse`` + ``Strip``; stack-notes §1).

Exact round trips (``decode(encode(text)) == text``, leading spaces included) matter more here than
normalisation, so there is no NFKC. The Metaspace kinds prepend the ``▁`` word marker with a ``Prepend``
*normalizer*, i.e. always, as legacy Llama/SentencePiece does, and their decoders strip exactly that one
character again. (``Metaspace(prepend_scheme="first")`` does not prepend when the text already starts with
a space, so ``" x"`` would decode to ``"x"``.) The Metaspace kinds have no byte fallback, so a character that never occurred in their training text encodes as
``<unk>``; they are trained on a blend of all domains, plus printable ASCII, so that is rare in practice.

Every tokenizer gets the same special tokens at the same ids (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2,
``<pad>`` 3), adds none of them when encoding (documents are separated by ``</s>`` in training instead),
and carries :data:`CHAT_TEMPLATE` so ``apply_chat_template`` works.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

KINDS: dict[str, str] = {
    "bytebpe": "byte-level BPE",
    "unigram": "Unigram + Metaspace",
    "spbpe": "SentencePiece-style BPE (Metaspace, split=False)",
}

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD]  # ids 0..3 in every zoo tokenizer

# A plain-text role format: the markers are ordinary text (not added tokens), so every zoo model, whatever
# its tokenizer, can read and produce them. Each message ends with EOS; the generation prompt opens the
# assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_METASPACE = "▁"
_ASCII_ALPHABET = sorted(set(string.printable))  # letters, digits, punctuation, space, \t \n \r \x0b \x0c


@dataclass(frozen=True)
class TokenizerRecipe:
    """How to train one tokenizer: its ``kind`` (a key of :data:`KINDS`), target size and training text size.

    ``train_chars`` is the number of characters of a blend of all corpus domains it is trained on. Unigram
    training is slow (about 100 s on 13 MB), so its recipes keep this to a megabyte or so.
    """

    name: str
    kind: str
    vocab_size: int
    train_chars: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown tokenizer kind {self.kind!r}; expected one of {', '.join(KINDS)}")

    @property
    def description(self) -> str:
        return KINDS[self.kind]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_tokenizer(recipe: TokenizerRecipe, texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Train ``recipe`` on ``texts`` and wrap it as a transformers tokenizer ready for ``save_pretrained``."""
    raw = _train_raw(recipe, list(texts))
    return wrap(raw)


def wrap(raw: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer around ``raw`` with the zoo's special tokens and chat template."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token=UNK, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def _train_raw(recipe: TokenizerRecipe, texts: list[str]) -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    trainer: trainers.Trainer
    if recipe.kind == "bytebpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=recipe.vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif recipe.kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Prepend(_METASPACE)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement=_METASPACE, prepend_scheme="never", split=True
        )
        tok.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True)
        trainer = trainers.UnigramTrainer(
            vocab_size=recipe.vocab_size,
            special_tokens=SPECIAL_TOKENS,
            unk_token=UNK,
            initial_alphabet=_ASCII_ALPHABET + [_METASPACE],
            max_piece_length=12,
            show_progress=False,
        )
    else:  # spbpe
        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.normalizer = normalizers.Prepend(_METASPACE)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement=_METASPACE, prepend_scheme="never", split=False
        )
        # Llama's decoder: without Fuse, Strip would run per token and eat every space.
        tok.decoder = decoders.Sequence(
            [decoders.Replace(_METASPACE, " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        trainer = trainers.BpeTrainer(
            vocab_size=recipe.vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=_ASCII_ALPHABET + [_METASPACE],
            show_progress=False,
        )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok
