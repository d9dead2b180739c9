"""The perplexity suite: exact metric math on a scripted LM, document handling, and real micro models."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest

from evals.perplexity import Perplexity, ratio_stderr, split_documents
from harness.api import EvalContext
from harness.errors import BenchError

pytestmark = pytest.mark.usefixtures("single_thread")

PARAGRAPHS = ["def f(x):\n    return x + 1", "The sum of two numbers.", "import os\nprint(os.sep)", "Q: 2 + 2?\nA: 4."]


def _evaluate(lm, tmp_path, limit=None, **cfg):
    cfg.setdefault("domains", [])
    return Perplexity().evaluate(lm, Perplexity.Config(**cfg), EvalContext(workdir=tmp_path / "work", limit=limit))


def _by_key(result):
    return {(s.task, s.metric): s for s in result.scores}


def _write(path, paragraphs=PARAGRAPHS):
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


def test_scripted_lm_gives_exact_bits_per_byte(scripted_lm, tmp_path):
    lm = scripted_lm(rate=0.5)
    res = _evaluate(lm, tmp_path, files=[str(_write(tmp_path / "notes.txt"))], max_chars_per_doc=30)
    s = _by_key(res)
    assert s[("notes", "bits_per_byte")].value == pytest.approx(0.5)
    assert s[("notes", "bits_per_byte")].higher_is_better is False
    assert s[("notes", "bits_per_byte")].stderr == pytest.approx(0.0, abs=1e-12)
    assert s[("notes", "byte_perplexity")].value == pytest.approx(2**0.5)
    n_bytes = sum(len(p.encode()) for p in lm.seen)
    n_words = sum(len(p.split()) for p in lm.seen)  # lm-eval splits on whitespace runs
    assert s[("notes", "word_perplexity")].value == pytest.approx(math.exp(0.5 * math.log(2) * n_bytes / n_words))
    assert ("notes", "token_perplexity") not in s  # no tokenizer on this LM
    assert s[("avg", "bits_per_byte")].value == pytest.approx(0.5)
    assert s[("notes", "bits_per_byte")].n == len(lm.seen) == len(res.samples) == 4
    sample = res.samples[0]
    assert (sample.task, sample.doc_id, sample.prompt, sample.output) == ("notes", 0, "", "")
    assert sample.target == lm.seen[0]
    assert set(sample.metrics) == {"loglikelihood", "bytes", "words", "bits_per_byte"}
    assert sample.metrics["bits_per_byte"] == pytest.approx(0.5)
    json.dumps([asdict(x) for x in res.scores + res.samples])


def test_stderr_is_the_delta_method_over_documents(scripted_lm, tmp_path):
    docs = ["aaaa", "bbbb", "cccc"]  # equal byte counts: the ratio's stderr is the mean's
    lm = scripted_lm(per_doc={"aaaa": 1.0, "bbbb": 2.0, "cccc": 6.0})
    res = _evaluate(lm, tmp_path, files=[str(_write(tmp_path / "t.txt", docs))], max_chars_per_doc=4)
    bpb = _by_key(res)[("t", "bits_per_byte")]
    assert bpb.value == pytest.approx(3.0)
    assert bpb.stderr == pytest.approx(math.sqrt(7 / 3))  # sd [1, 2, 6] = √7, over √3
    assert ratio_stderr([1.0, 3.0], [1.0, 1.0]) == pytest.approx(1.0)
    assert ratio_stderr([1.0], [1.0]) is None


def test_split_documents_packs_paragraphs():
    text = "aaaa\n\nbbbb\n  \ncc\n\n" + "d" * 25
    assert split_documents(text, 10) == ["aaaa\n\nbbbb", "cc", "dddddddddd", "dddddddddd", "ddddd"]
    assert split_documents(text, None) == [text.strip()]
    assert split_documents(text, 1000) == ["aaaa\n\nbbbb\n\ncc\n\n" + "d" * 25]
    assert split_documents("\n\n  \n", 10) == []


def test_files_and_directories_become_tasks(scripted_lm, tmp_path):
    folder = tmp_path / "corpus_dir"
    folder.mkdir()
    _write(folder / "a.txt", PARAGRAPHS[:2])
    _write(folder / "b.txt", PARAGRAPHS[2:])
    (folder / "skip.md").write_text("not text")
    res = _evaluate(scripted_lm(), tmp_path, files=[str(folder), str(_write(tmp_path / "one.txt"))],
                    max_chars_per_doc=None)
    s = _by_key(res)
    assert s[("corpus_dir", "bits_per_byte")].n == 2  # one document per file without a size cap
    assert s[("one", "bits_per_byte")].n == 1
    assert s[("avg", "bits_per_byte")].n == 3


@pytest.mark.parametrize(("cfg", "message"), [
    ({"files": ["missing.txt"]}, "not found"),
    ({"files": []}, "nothing to score"),
    ({"domains": ["maths"], "files": []}, "did you mean 'math'"),
])
def test_bad_inputs_are_one_line_errors(scripted_lm, tmp_path, cfg, message):
    with pytest.raises(BenchError, match=message):
        _evaluate(scripted_lm(), tmp_path, **cfg)


def test_duplicate_task_names_are_refused(scripted_lm, tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(BenchError, match="two perplexity tasks"):
        _evaluate(scripted_lm(), tmp_path, files=[str(_write(tmp_path / "code.txt")),
                                                   str(_write(tmp_path / "x" / "code.txt"))])


def test_limit_and_max_docs(scripted_lm, tmp_path):
    f = str(_write(tmp_path / "t.txt"))
    assert _by_key(_evaluate(scripted_lm(), tmp_path, files=[f], max_chars_per_doc=30, limit=2))[("t", "bits_per_byte")].n == 2
    assert _by_key(_evaluate(scripted_lm(), tmp_path, files=[f], max_chars_per_doc=30, max_docs=3))[("t", "bits_per_byte")].n == 3


def test_embedded_domains(scripted_lm, tmp_path):
    lm = scripted_lm(rate=2.0)
    res = _evaluate(lm, tmp_path, domains=["code", "docs", "math"], max_docs=2, max_chars_per_doc=500)
    s = _by_key(res)
    assert {t for t, _ in s} == {"code", "docs", "math", "avg"}
    assert all(s[(t, "bits_per_byte")].n == 2 for t in ("code", "docs", "math"))
    assert all(len(text) <= 500 for text in lm.seen)
    assert s[("avg", "bits_per_byte")].value == pytest.approx(2.0)


def test_hf_model_reports_token_perplexity_consistently(micro_llama, tmp_path):
    from harness.model import as_lm, load_hf, resolve

    lm = as_lm(*load_hf(resolve(str(micro_llama))))
    long_doc = "Return the sum of the numbers in the list, or zero when it is empty. " * 12  # > 128 tokens
    res = _evaluate(lm, tmp_path, files=[str(_write(tmp_path / "t.txt", [long_doc, *PARAGRAPHS]))],
                    max_chars_per_doc=len(long_doc))
    assert len(res.samples) == 2
    s = _by_key(res)
    ll = sum(x.metrics["loglikelihood"] for x in res.samples)
    n_bytes = sum(x.metrics["bytes"] for x in res.samples)
    n_tokens = sum(x.metrics["tokens"] for x in res.samples)
    assert n_tokens > 128
    assert s[("t", "bits_per_byte")].value == pytest.approx(-ll / (n_bytes * math.log(2)))
    assert s[("t", "token_perplexity")].value == pytest.approx(math.exp(-ll / n_tokens))
    assert s[("t", "bits_per_byte")].stderr > 0
    # a random model over a 300-token vocabulary: about log2(300) bits per token
    assert 4 < math.log2(s[("t", "token_perplexity")].value) < 12


def test_mpt_context_length_is_honoured(micro_mpt, tmp_path):
    from lm_eval.models.huggingface import HFLM

    from harness.model import load_hf, resolve

    model, tok = load_hf(resolve(str(micro_mpt)))
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4)  # no max_length: lm-eval would assume 2048
    text = "Return the sum of the numbers in the list. " * 10
    assert len(tok(text)["input_ids"]) > 64
    res = _evaluate(lm, tmp_path, files=[str(_write(tmp_path / "t.txt", [text]))])
    assert lm.max_length == 64
    assert math.isfinite(_by_key(res)[("t", "bits_per_byte")].value)


def test_bits_per_byte_is_per_byte_whatever_the_tokenizer(micro_llama, micro_mpt, tmp_path):
    from harness.model import as_lm, load_hf, resolve

    f = str(_write(tmp_path / "t.txt"))
    results = [_evaluate(as_lm(*load_hf(resolve(str(p)))), tmp_path / p.name, files=[f], max_chars_per_doc=30)
               for p in (micro_llama, micro_mpt)]
    llama_res, mpt_res = results
    assert [x.metrics["bytes"] for x in llama_res.samples] == [x.metrics["bytes"] for x in mpt_res.samples]
    assert [x.metrics["tokens"] for x in llama_res.samples] != [x.metrics["tokens"] for x in mpt_res.samples]
    for r in results:
        assert 0 < _by_key(r)[("t", "bits_per_byte")].value < 20


def test_lmeval_results_are_plain_python():
    import numpy as np
    import torch

    from harness.jsonable import to_plain

    raw = {"a": np.float32(0.5), "b": (np.int64(3), torch.float32), "c": [np.bool_(True), torch.tensor(2.0)],
           "d": np.float64(1.5), "e": "N/A", "f": np.arange(2)}
    plain = to_plain(raw)
    assert plain == {"a": 0.5, "b": [3, "torch.float32"], "c": [True, 2.0], "d": 1.5, "e": "N/A", "f": [0, 1]}
    assert [type(plain[k]) for k in "ad"] == [float, float] and type(plain["b"][0]) is int
    json.dumps(plain)
