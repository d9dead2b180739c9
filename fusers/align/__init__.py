"""Token and vocabulary alignment shared by the cross-tokenizer fusers (FuseLLM, FuseChat, ProFuser).

Two models that tokenize the same text differently have to agree on *which position predicts what*
before one model's next-token distribution can teach the other. This package does that in three steps,
all of them written against the spec notes (``fusion-algorithms.md`` §2, quirks §11, costs §12):

1. **What a piece means** (:mod:`~fusers.align.spec`, :mod:`~fusers.align.tokenization`).
   :class:`TokenizerSpec` is a per-tokenizer marker table detected from the tokenizer's backend; its
   :meth:`~TokenizerSpec.surface` turns a piece into the bytes it stands for, so ``'Ċ'`` and ``'<0x0A>'``
   both mean ``b"\\n"``. :class:`Tokenization` is one tokenized text with the byte spans of its tokens.

2. **Which positions correspond** (:mod:`~fusers.align.sequence`, :mod:`~fusers.align.dtw`).
   :func:`align_sequences` gives, for every base (target/pivot) position ``i``, the sorted source positions
   aligned to it (:class:`Alignment`, CSR arrays):

   * ``"offsets"`` (default, O(N+M)): a base token is aligned to every source token whose byte span of
     the shared text overlaps its own; zero-width tokens (BOS/EOS, empty pieces) are anchored by a
     documented rule.
   * ``"dtw_ed"``: the reference MinED DTW (FuseLLM ``others.py::dtw``, called as ``dtw(blending,
     base)``) with its greedy backtrack and tie order, bit-for-bit, but fast.
   * ``"dtw_ed_banded"``: the same DP restricted to a band around the offsets alignment.
   * ``"dtw_fusechat"``: FuseChat's released DTW (:mod:`~fusers.align.fusechat_released`).

3. **What the source predicted, in base ids** (:mod:`~fusers.align.vocab`,
   :mod:`~fusers.align.mined_kernel`, :mod:`~fusers.align.distribution`). :func:`vocab_map` is the
   reference MinED vocabulary map (exact match after marker replacement, else the first
   minimum-edit-distance base piece in vocabulary order) as an id→id array, computed by a compiled search
   that equals the plain O(|Vs|·|Vb|) loop exactly. :func:`map_distribution` moves per-position source
   top-k logits onto the base positions (1-1 / many-to-one / one-to-many / unmatched), with the corrected
   defaults and the reference behaviour behind switches.

FuseChat's statistics-based alignment replaces step 3's vocabulary map by one learned from co-alignment
counts over the corpus (:mod:`~fusers.align.ms_counts`, :mod:`~fusers.align.ms_map`), and
:mod:`~fusers.align.fusechat_released` reproduces its released code rule for rule.

Quirks (§11) handled here; each default is the corrected behaviour and ``reference_compat`` (a quirk
id, a set of them, or ``"all"``; :func:`compat_set`) restores the reference:

* **Q1** unmatched positions fall back to a one-hot on the NEXT base token (row ``i`` predicts
  ``i+1``); ``"q1"`` uses the current token like FuseLLM.
* **Q5** top-k entries that collide on one base id have their probability mass summed (logsumexp of
  the logits); ``"q5"`` (or ``collision="first"``) keeps the first, highest one only.
* **Q11** widths are the model's logit widths (:func:`fusers.common.target_width`); ``"q11"`` uses the
  tokenizer's width and fails like FuseAI issue #13 when they differ.
* **Q12** the vocabulary map is an id→id array; ``"q12"`` additionally builds the reference's
  dictionary keyed by the marker-replaced source string (:attr:`VocabMap.by_string`).
"""

from fusers.align.alignment import Alignment
from fusers.align.compat import QUIRKS, compat_set
from fusers.align.distribution import EMPTY, FALLBACK, FUSELLM_REFERENCE, MAPPED, MappedTopK, map_distribution
from fusers.align.dtw import TIE_ORDERS, TieOrder, dtw_align, dtw_from_cost, edit_distance_matrix
from fusers.align.fusechat_released import (
    FUSECHAT_PIECE_SUBSTITUTIONS,
    fusechat_distribution,
    fusechat_dtw_align,
    fusechat_pieces,
)
from fusers.align.ms_counts import BySource, CoAlignmentCounts, count_corpus
from fusers.align.ms_map import WEIGHTINGS, ms_statistical_map, ms_vocab_map, pieces_by_id
from fusers.align.sequence import align_sequences
from fusers.align.spec import MARKER_TABLE, TokenizerSpec, detect_spec
from fusers.align.tokenization import Tokenization
from fusers.align.vocab import VocabMap, surface_vocab_map, vocab_map, vocab_map_for_tokenizers

__all__ = [
    "QUIRKS",
    "MARKER_TABLE",
    "TIE_ORDERS",
    "FUSELLM_REFERENCE",
    "MAPPED",
    "FALLBACK",
    "EMPTY",
    "TokenizerSpec",
    "detect_spec",
    "Tokenization",
    "Alignment",
    "TieOrder",
    "align_sequences",
    "dtw_align",
    "dtw_from_cost",
    "edit_distance_matrix",
    "VocabMap",
    "vocab_map",
    "vocab_map_for_tokenizers",
    "surface_vocab_map",
    "MappedTopK",
    "map_distribution",
    "compat_set",
    "FUSECHAT_PIECE_SUBSTITUTIONS",
    "WEIGHTINGS",
    "BySource",
    "CoAlignmentCounts",
    "count_corpus",
    "fusechat_distribution",
    "fusechat_dtw_align",
    "fusechat_pieces",
    "ms_statistical_map",
    "ms_vocab_map",
    "pieces_by_id",
]
