"""Weight merging through mergekit on the micro Llama family (and the GPT-NeoX workaround)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from fusers.merge import Merge, check_compatible, weight_shapes
from harness.api import EvalContext, FuseContext
from harness.errors import BenchError


def _fuse(refs, tmp_path, sources, target=None, **args):
    out = tmp_path / "out"
    out.mkdir(parents=True)
    cfg = Merge.Config(**args)
    return Merge().fuse([refs[s] for s in sources], refs[target] if target else None, cfg, FuseContext(out_dir=out))


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_linear_merge_is_the_elementwise_weighted_average(refs, micro, tmp_path):
    res = _fuse(refs, tmp_path, ["llama-code", "llama-docs"], method="linear", weights=[0.25, 0.75])
    a, b, merged = _weights(micro["llama-code"]), _weights(micro["llama-docs"]), _weights(res.path)
    assert set(merged) == set(a)
    for name, tensor in merged.items():
        assert tensor.dtype == a[name].dtype
        # The exact average, rounded once to float32 (0.25·a and 0.75·b are exact in float64).
        expected = (0.25 * a[name].double() + 0.75 * b[name].double()).float()
        assert tensor.equal(expected), name
    assert res.runtime is None
    assert res.details["method"] == "linear"
    assert res.details["weights"] == [0.25, 0.75]
    assert res.details["mergekit_config"]["models"][0]["model"] == str(micro["llama-code"])
    json.dumps(res.details)  # recorded in the run card
    assert (res.path / "tokenizer.json").is_file()


def test_default_weights_are_uniform(refs, tmp_path):
    res = _fuse(refs, tmp_path, ["llama-code", "llama-docs", "llama-base"])
    assert res.details["weights"] == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("args", [
    {"method": "task_arithmetic", "lambda": 1.0},
    {"method": "ties", "density": 0.5, "normalize": True},
    {"method": "dare_ties", "density": 0.5},
    {"method": "sce", "select_topk": 0.5},
    {"method": "breadcrumbs", "density": 0.9},
], ids=lambda a: a["method"])
def test_task_vector_methods_use_the_target_as_base(refs, tmp_path, args):
    import torch
    from transformers import AutoModelForCausalLM

    res = _fuse(refs, tmp_path, ["llama-code", "llama-docs"], target="llama-base", **args)
    assert res.details["base"] == refs["llama-base"].spec
    model = AutoModelForCausalLM.from_pretrained(res.path)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_task_arithmetic_with_mean_weights_equals_linear(refs, tmp_path):
    ta = _fuse(refs, tmp_path / "ta", ["llama-code", "llama-docs"], target="llama-base", method="task_arithmetic")
    lin = _fuse(refs, tmp_path / "lin", ["llama-code", "llama-docs"], method="linear")
    a, b = _weights(ta.path), _weights(lin.path)
    for name in a:
        assert torch_close(a[name], b[name]), name


def torch_close(x, y) -> bool:
    import torch

    return torch.allclose(x, y, atol=1e-6, rtol=0)


def test_slerp_interpolates_between_two_sources(refs, micro, tmp_path):
    res = _fuse(refs, tmp_path / "s0", ["llama-code", "llama-docs"], method="slerp", t=0.0)
    a, merged = _weights(micro["llama-code"]), _weights(res.path)
    assert all(torch_close(merged[k], a[k]) for k in a)
    half = _fuse(refs, tmp_path / "s5", ["llama-code", "llama-docs"], method="slerp", t=0.5)
    assert not all(torch_close(_weights(half.path)[k], a[k]) for k in a)


def test_slerp_needs_exactly_two_models_and_t(refs, tmp_path):
    with pytest.raises(BenchError, match="exactly two"):
        _fuse(refs, tmp_path / "a", ["llama-code", "llama-docs", "llama-base"], method="slerp", t=0.5)
    with pytest.raises(BenchError, match="needs t"):
        _fuse(refs, tmp_path / "b", ["llama-code", "llama-docs"], method="slerp")


def test_parameters_the_method_does_not_take_are_errors(refs, tmp_path):
    with pytest.raises(BenchError, match="linear has no parameter 't'"):
        _fuse(refs, tmp_path, ["llama-code", "llama-docs"], method="linear", t=0.3)
    with pytest.raises(BenchError, match="2 models"):
        _fuse(refs, tmp_path / "w", ["llama-code", "llama-docs"], weights=[1.0])


def test_base_requiring_method_without_target(refs, tmp_path):
    with pytest.raises(BenchError, match="needs a base model"):
        _fuse(refs, tmp_path, ["llama-code", "llama-docs"], method="ties", density=0.5)


def test_unknown_method_suggests_a_close_one():
    with pytest.raises(BenchError, match="did you mean 'ties'"):
        Merge.Config(method="tise")
    assert Merge.Config(**{"lambda": 0.5}).lambda_ == 0.5  # the YAML spelling


def test_different_architectures_are_refused_before_mergekit(refs, tmp_path):
    with pytest.raises(BenchError) as err:
        _fuse(refs, tmp_path, ["llama-code", "gpt2"])
    assert "different architectures (llama vs gpt2)" in str(err.value)
    assert "--fuser ensemble" in str(err.value)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_incompatible_vocabulary_or_shapes(micro, build, tmp_path):
    from transformers import AutoTokenizer

    bpe = AutoTokenizer.from_pretrained(micro["llama-base"])
    wide = build.save(build.llama(bpe, intermediate_size=48), bpe, tmp_path / "wide")
    with pytest.raises(BenchError, match=r"different shapes for model.layers.0.mlp.down_proj.weight \(\[32, 64\] vs \[32, 48\]\)"):
        check_compatible([("base", micro["llama-base"]), ("wide", wide)])
    uni = build.unigram_tokenizer(["some text to learn a few pieces from, again and again"] * 20, vocab_size=60)
    other = build.save(build.llama(uni), uni, tmp_path / "uni")
    with pytest.raises(BenchError, match="different vocabulary sizes"):
        check_compatible([("base", micro["llama-base"]), ("uni", other)])


def test_weight_shapes_read_from_the_header_only(micro):
    shapes = weight_shapes(micro["llama-base"])
    assert shapes["model.embed_tokens.weight"] == (300, 32)


def test_gpt_neox_merges_with_the_buffer_workaround(refs, tmp_path):
    from mergekit.architecture.json_definitions import NAME_TO_ARCH
    from transformers import AutoModelForCausalLM

    res = _fuse(refs, tmp_path, ["neox-a", "neox-b"], method="linear")
    AutoModelForCausalLM.from_pretrained(res.path)
    assert "GPTNeoXForCausalLM" in NAME_TO_ARCH  # restored afterwards


def test_merge_then_evaluate_bits_per_byte(refs, micro, tmp_path):
    from evals.perplexity import Perplexity
    from harness.model import as_lm, load_hf, resolve

    res = _fuse(refs, tmp_path, ["llama-code", "llama-docs"])
    lm = as_lm(*load_hf(resolve(str(res.path))))
    text = tmp_path / "heldout.txt"
    text.write_text("\n\n".join(["def f(x):\n    return x + 1", "Return the sum of a and b.", "import os"]))
    cfg = Perplexity.Config(domains=[], files=[str(text)], max_chars_per_doc=40)
    out = Perplexity().evaluate(lm, cfg, EvalContext(workdir=tmp_path / "work"))
    bpb = {s.task: s.value for s in out.scores if s.metric == "bits_per_byte"}
    assert set(bpb) == {"heldout", "avg"}
    assert 0 < bpb["heldout"] < 10
