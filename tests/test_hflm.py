"""FuseBenchHFLM (harness/hflm.py): the rolling log-likelihoods of lm-eval's HFLM, batched across documents."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.hflm import LOG_SOFTMAX_CHUNK_BYTES, FuseBenchHFLM, target_log_probs
from harness.model import as_lm
from tests.conftest import one_thread

MEMBERS = ("llama-code", "gpt2-code", "neox-docs", "mpt-math")  # four architectures, three tokenizers
SENTENCE = "Return the sum of the numbers in the list, or zero when it is empty. "
# Lengths that differ a lot, so that batches mix them: one-token and empty texts, and one document longer than
# every micro model's context (several rolling windows, the last one partial).
DOCUMENTS = [SENTENCE, "x", "def add(a, b):\n    return a + b\n", "", SENTENCE * 120, "Q: 2 + 2?\nA: 4.", SENTENCE * 3]


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def _model(name: str):
    from harness.model import load_hf, resolve

    return load_hf(resolve(f"zoo:{name}"))


def _stock(model, tok, batch_size: int | str):
    """lm-eval's own HFLM over the model, given the context length as FuseBench gives it."""
    from lm_eval.models.huggingface import HFLM

    from harness.model import max_length

    return HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, max_length=max_length(model))


def _instance(text: str):
    from lm_eval.api.instance import Instance

    return Instance("loglikelihood_rolling", {}, (text,), 0)


def _rolling(lm, texts: list[str]) -> list[float]:
    return lm.loglikelihood_rolling([_instance(t) for t in texts], disable_tqdm=True)


@pytest.mark.parametrize("name", MEMBERS)
def test_rolling_loglikelihoods_equal_stock_hflm(zoo_home: Path, name: str) -> None:
    """Against stock HFLM one window per batch: batched, its one-token-continuation cache scores the first positions
    of a window whose tokens equal another's in the batch (the periodic long document's last two windows for
    mpt-math's tokenizer) instead of the last ones, so its numbers depend on the batch size there."""
    model, tok = _model(name)
    want = _rolling(_stock(model, tok, 1), DOCUMENTS)
    assert want[3] == 0.0 and all(w < 0 for i, w in enumerate(want) if i != 3)
    for batch_size in (1, 3, 16):
        lm = as_lm(model, tok, batch_size)
        assert isinstance(lm, FuseBenchHFLM)
        assert len(lm.tok_encode(DOCUMENTS[4])) > 2 * lm.max_length
        assert _rolling(lm, DOCUMENTS) == pytest.approx(want, rel=1e-5, abs=1e-4), batch_size


def test_windows_of_all_documents_are_sorted_into_batches(zoo_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lm = as_lm(*_model("llama-code"), 3)
    widths: list[tuple[int, ...]] = []
    model_call = lm._model_call
    monkeypatch.setattr(lm, "_model_call", lambda inputs: widths.append(tuple(inputs.shape)) or model_call(inputs))
    _rolling(lm, DOCUMENTS)
    windows = [w for i, request in enumerate(DOCUMENTS) for w in lm.rolling_windows(i, _instance(request))]
    inputs = sorted((len(w.tokens) - 1 for w in windows), reverse=True)
    assert widths == [(len(inputs[i : i + 3]), inputs[i]) for i in range(0, len(inputs), 3)]


def test_auto_batch_size_probes_at_the_longest_window(zoo_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = _model("llama-docs")
    lm = as_lm(model, tok, "auto")
    probes: list[int] = []
    detect = lm._detect_batch_size

    def spy(requests=None, pos=0):
        _, context, continuation = requests[pos]
        probes.append(len(context + continuation) - 1)
        return detect(requests, pos)

    monkeypatch.setattr(lm, "_detect_batch_size", spy)
    texts = [SENTENCE, SENTENCE * 2, "x"]
    got = _rolling(lm, texts)
    assert probes == [max(len(w.tokens) - 1 for i, t in enumerate(texts) for w in lm.rolling_windows(i, _instance(t)))]
    assert probes[0] < lm.max_length
    assert got == pytest.approx(_rolling(_stock(model, tok, "auto"), texts), rel=1e-5)


def test_each_document_total_goes_to_the_cache_hook(zoo_home: Path) -> None:
    lm = as_lm(*_model("neox-docs"), 2)
    recorded: list[tuple[str, tuple, float]] = []

    class Recorder:
        def add_partial(self, kind: str, args: tuple, value: float) -> None:
            recorded.append((kind, args, value))

    lm.set_cache_hook(Recorder())
    totals = _rolling(lm, DOCUMENTS)
    assert recorded == [("loglikelihood_rolling", (text,), total) for text, total in zip(DOCUMENTS, totals, strict=True)]


def test_perplexity_suite_scores_equal_stock_hflm(zoo_home: Path, tmp_path: Path) -> None:
    from evals.perplexity import Perplexity
    from harness.api import EvalContext

    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join(DOCUMENTS[i] for i in (0, 2, 4, 5, 6)))
    cfg = Perplexity.Config(domains=["code"], files=[str(text)], max_docs=6, max_chars_per_doc=400)
    model, tok = _model("mpt-math")  # an MPT: its context length is one lm-eval cannot read
    results = [Perplexity().evaluate(lm, cfg, EvalContext(workdir=tmp_path / type(lm).__name__))
               for lm in (_stock(model, tok, 4), as_lm(model, tok, 4))]
    want, got = ({(s.task, s.metric): s.value for s in r.scores} for r in results)
    assert set(got) == set(want) and ("notes", "bits_per_byte") in got
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key


def test_target_log_probs_in_chunks_equal_a_full_log_softmax() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(10, 7) * 5, torch.randint(0, 7, (10,))
    want = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    for chunk_bytes in (None, 3 * 7 * 4, 1, LOG_SOFTMAX_CHUNK_BYTES):  # all rows, 3 + 3 + 3 + 1, one row at a time
        assert torch.equal(target_log_probs(logits, targets, chunk_bytes=chunk_bytes), want), chunk_bytes
    half = logits.to(torch.bfloat16)
    widened = target_log_probs(half, targets, torch.float32, chunk_bytes=3 * 7 * 4)
    assert widened.dtype == torch.float32
    assert torch.equal(widened, torch.log_softmax(half, -1, dtype=torch.float32).gather(-1, targets[:, None]).squeeze(-1))
    assert target_log_probs(half, targets).dtype == torch.bfloat16
