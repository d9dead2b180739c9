"""FuseChat's stage-2 merges (VaRM, SCE variants) on hand-computed tensors and through mergekit's entry points.

Expected values are worked out by hand from the formulas in ``fusion-algorithms.md`` §6.3/§6.4 and written
into the tests; the only outputs compared with another implementation are the ``mergekit`` variant's
(with mergekit's own ``sce``) and the registered methods' (with the pure functions they wrap).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from mergekit.merge_methods import merge_state_dicts, merge_tensors, registered_methods

import fusers._merge_methods as fm

# --- VaRM ---------------------------------------------------------------------------------------


def test_varm_weights_are_the_normalised_mean_squared_deltas():
    base = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    # Δ_1 = 1, Δ_2 = 2, Δ_3 = −3 everywhere: mean(Δ²) = 1, 4, 9, so W = 1/14, 4/14, 9/14.
    targets = [base + 1.0, base + 2.0, base - 3.0]
    merged, weights = fm.varm_merge(base, targets)
    assert weights == pytest.approx([1 / 14, 4 / 14, 9 / 14])
    assert fm.varm_weights(base, targets) == pytest.approx(weights)
    # θ_pivot + Σ W Δ = base + (1·1 + 4·2 − 9·3) / 14 = base − 18/14
    torch.testing.assert_close(merged, base - 18 / 14)


def test_varm_weights_per_element_deltas():
    base = torch.zeros(2, 2)
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # mean(Δ²) = 2/4
    b = torch.tensor([[0.0, 3.0], [0.0, 0.0]])  # mean(Δ²) = 9/4
    merged, weights = fm.varm_merge(base, [a, b])
    assert weights == pytest.approx([2 / 11, 9 / 11])
    torch.testing.assert_close(merged, torch.tensor([[2 / 11, 27 / 11], [0.0, 2 / 11]]))


def test_varm_equal_weights_reproduce_the_released_code():
    base = torch.tensor([1.0, 2.0])
    targets = [base + 1.0, base + torch.tensor([4.0, -2.0])]
    merged, weights = fm.varm_merge(base, targets, equal_weights=True)
    assert weights == [0.5, 0.5]
    torch.testing.assert_close(merged, torch.tensor([3.5, 1.5]))  # the plain mean of the targets


def test_varm_edge_cases():
    base = torch.tensor([1.0, -2.0, 3.0])
    merged, weights = fm.varm_merge(base, [base.clone(), base.clone()])  # nothing moved: 0/0
    assert weights == [0.5, 0.5]
    assert merged.equal(base)
    target = base * 2
    merged, weights = fm.varm_merge(base, [target])
    assert weights == [1.0]
    assert merged.equal(target)
    merged, weights = fm.varm_merge(base, [])
    assert merged.equal(base) and weights == []


def test_varm_keeps_low_precision_dtypes_but_weighs_in_float32():
    base = torch.zeros(4, dtype=torch.bfloat16)
    targets = [torch.full((4,), 1e-3, dtype=torch.bfloat16), torch.full((4,), -2e-3, dtype=torch.bfloat16)]
    merged, weights = fm.varm_merge(base, targets)
    assert merged.dtype == torch.bfloat16
    d1, d2 = targets[0][0].item(), targets[1][0].item()  # the bf16-rounded deltas
    assert weights == pytest.approx([d1**2 / (d1**2 + d2**2), d2**2 / (d1**2 + d2**2)], rel=1e-5)


# --- SCE ----------------------------------------------------------------------------------------

# Two targets with a sign conflict at elements 0 and 3, and agreeing zero-variance updates at 1 and 2.
_BASE = torch.tensor([1.0, -1.0, 2.0, 0.5])
_D1 = torch.tensor([4.0, 1.0, 0.5, -1.0])
_D2 = torch.tensor([-2.0, 1.0, 0.5, 3.0])
# Population variance across the two targets, ((δ1 − δ2)/2)²: [9, 0, 0, 4]; two are non-zero.


def test_sce_paper_variant():
    merged, eta = fm.sce_merge(_BASE, [_BASE + _D1, _BASE + _D2], 0.5, "paper")
    # Select ⌊0.5·4⌋ = 2 highest-variance elements (0 and 3): δ̂1 = [4,0,0,−1], δ̂2 = [−2,0,0,3].
    # η ∝ Σδ̂²: 17 and 13, so 17/30 and 13/30.
    assert eta == pytest.approx([17 / 30, 13 / 30])
    # Σδ̂ = [2,0,0,2]: element 0 keeps δ̂1 = 4, element 3 keeps δ̂2 = 3. No renormalisation:
    # Φ = base + [17/30·4, 0, 0, 13/30·3].
    torch.testing.assert_close(merged, _BASE + torch.tensor([68 / 30, 0.0, 0.0, 39 / 30]))


def test_sce_fuseai_fork_variant():
    merged, eta = fm.sce_merge(_BASE, [_BASE + _D1, _BASE + _D2], 0.5, "fuseai_fork")
    # k = ⌊0.5·2 non-zero variances⌋ = 1: element 0 only, and only for η: mean(masked δ²) = 16/4, 4/4.
    assert eta == pytest.approx([0.8, 0.2])
    # Erase and merge on the full deltas: Σδ = [2,2,1,2] elects "+" everywhere; element 0 keeps δ1,
    # elements 1-2 keep both, element 3 keeps δ2; each divided by the surviving η.
    # [0.8·4/0.8, (0.8+0.2)·1/1, (0.8+0.2)·0.5/1, 0.2·3/0.2]
    torch.testing.assert_close(merged, _BASE + torch.tensor([4.0, 1.0, 0.5, 3.0]))


def test_sce_mergekit_variant():
    merged, eta = fm.sce_merge(_BASE, [_BASE + _D1, _BASE + _D2], 0.5, "mergekit")
    # The mask (element 0) zeroes the deltas first: τ1 = [4,0,0,0], τ2 = [−2,0,0,0]; η = 4, 1 normalised.
    assert eta == pytest.approx([0.8, 0.2])
    # Element 0: only τ1 agrees with "+" → 0.8·4/0.8 = 4; elsewhere every delta is 0 → the pivot's value.
    torch.testing.assert_close(merged, _BASE + torch.tensor([4.0, 0.0, 0.0, 0.0]))


def test_the_three_sce_variants_differ():
    results = [fm.sce_merge(_BASE, [_BASE + _D1, _BASE + _D2], 0.5, v)[0] for v in fm.SCE_VARIANTS]
    assert not any(a.allclose(b) for i, a in enumerate(results) for b in results[i + 1:])


def test_sce_exact_cancellation():
    base = torch.zeros(1)
    targets = [torch.ones(1), -torch.ones(1)]
    # The paper erases both where Σδ̂ is exactly 0 (its sign agrees with neither) ...
    assert fm.sce_merge(base, targets, 1.0, "paper")[0].equal(torch.zeros(1))
    # ... both code versions elect "+" on a zero sum, keep δ1 and renormalise by its η (1/2).
    assert fm.sce_merge(base, targets, 1.0, "fuseai_fork")[0].equal(torch.ones(1))
    assert fm.sce_merge(base, targets, 1.0, "mergekit")[0].equal(torch.ones(1))


def test_sce_without_selection_weighs_by_mean_squared_delta():
    base = torch.zeros(2)
    targets = [torch.tensor([1.0, 1.0]), torch.tensor([3.0, 3.0])]  # mean δ² = 1, 9
    for variant in fm.SCE_VARIANTS:
        merged, eta = fm.sce_merge(base, targets, 1.0, variant)
        assert eta == pytest.approx([0.1, 0.9]), variant
    # No conflict: the paper adds Σ η δ = 0.1 + 2.7; the code versions divide that by Σ η = 1: the same.
    torch.testing.assert_close(fm.sce_merge(base, targets, 1.0, "paper")[0], torch.tensor([2.8, 2.8]))


@pytest.mark.parametrize("select_topk", [0.0, 0.1, 0.3, 1.0])
def test_mergekit_variant_is_mergekits_sce_exactly(select_topk):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(8, 16, generator=gen)
    targets = [base + 0.1 * torch.randn(8, 16, generator=gen) for _ in range(3)]
    params = {"select_topk": select_topk}
    expected = merge_tensors([base, *targets], "sce", base_index=0, parameters=params)
    assert fm.sce_merge(base, targets, select_topk, "mergekit")[0].equal(expected)
    registered = merge_tensors([base, *targets], "fusechat_sce", base_index=0, parameters=params)
    assert registered.equal(expected)  # "mergekit" is the default variant
    with fm.record_weights() as rec:
        recorded = merge_tensors([base, *targets], "fusechat_sce", base_index=0, name="w",
                                 parameters={**params, "variant": "mergekit"})
    assert recorded.equal(expected)
    assert rec["w"] == pytest.approx(fm.sce_merge(base, targets, select_topk, "mergekit")[1])
    assert sum(rec["w"]) == pytest.approx(1.0)


def test_bad_arguments_are_value_errors():
    base = torch.zeros(3)
    with pytest.raises(ValueError, match="select_topk"):
        fm.sce_merge(base, [base], 1.5)
    with pytest.raises(ValueError, match="variant"):
        fm.sce_merge(base, [base], 0.5, "ties")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="align"):
        fm.varm_merge(base, [torch.zeros(4)])
    with pytest.raises(ValueError, match="align"):
        fm.sce_merge(base, [torch.zeros(3, dtype=torch.float64)])
    with pytest.raises(Exception, match="less than or equal to 1"):  # mergekit's parameter validation
        merge_tensors([base, base], "fusechat_sce", base_index=0, parameters={"select_topk": 2.0})


# --- registration -------------------------------------------------------------------------------


def test_registration_is_idempotent_and_visible_to_the_merge_fuser():
    importlib.reload(fm)
    # The same file under another module name registers nothing twice either.
    spec = importlib.util.spec_from_file_location("_fusebench_merge_methods_copy", fm.__file__)
    copy = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(copy)
    finally:
        sys.modules.pop("_fusebench_merge_methods_copy", None)
    names = [m.spec.name for m in registered_methods()]
    assert names.count("varm") == 1 and names.count("fusechat_sce") == 1

    from fusers.merge import Merge, merge_method_names

    assert {"varm", "fusechat_sce"} <= set(merge_method_names())
    assert Merge.Config(method="fusechat_sce", select_topk=0.1).method == "fusechat_sce"


def test_a_foreign_method_with_our_name_is_an_error(monkeypatch):
    from mergekit.merge_methods import registry

    monkeypatch.setitem(registry._METHODS, "varm", registry.get("linear"))
    with pytest.raises(RuntimeError, match="already has a merge method named 'varm'"):
        fm.register_methods()


def test_recorders_are_scoped_and_nest():
    base, target = torch.zeros(2), torch.ones(2)
    with fm.record_weights() as outer:
        with fm.record_weights() as inner:
            merge_tensors([base, target], "varm", base_index=0, name="a")
        merge_tensors([base, target], "varm", base_index=0, name="b")
    merge_tensors([base, target], "varm", base_index=0, name="c")
    assert inner == {"a": [1.0]}
    assert outer == {"a": [1.0], "b": [1.0]}


# --- through mergekit's state-dict and file APIs ------------------------------------------------


def _linear(seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(6, 4)


def test_merge_state_dicts_with_the_registered_methods():
    models = {"pivot": _linear(0), "t1": _linear(1), "t2": _linear(2)}
    sds = {k: {n: t.detach() for n, t in m.state_dict().items()} for k, m in models.items()}
    cases = [("varm", {}, lambda b, ts: fm.varm_merge(b, ts)),
             ("varm", {"equal_weights": True}, lambda b, ts: fm.varm_merge(b, ts, equal_weights=True)),
             ("fusechat_sce", {"select_topk": 0.25, "variant": "paper"}, lambda b, ts: fm.sce_merge(b, ts, 0.25, "paper")),
             ("fusechat_sce", {"select_topk": 0.25, "variant": "fuseai_fork"},
              lambda b, ts: fm.sce_merge(b, ts, 0.25, "fuseai_fork"))]
    for method, params, pure in cases:
        with torch.no_grad(), fm.record_weights() as rec:
            merged = merge_state_dicts(models, method, parameters=params, base="pivot")
        assert set(merged) == {"weight", "bias"}
        assert set(rec) == {"weight", "bias"}
        for name, tensor in merged.items():
            expected, weights = pure(sds["pivot"][name], [sds["t1"][name], sds["t2"][name]])
            assert tensor.equal(expected), (method, params, name)
            assert rec[name] == pytest.approx(weights)
            assert sum(rec[name]) == pytest.approx(1.0)
        if params.get("equal_weights"):
            assert rec["weight"] == [0.5, 0.5]
    torch.nn.Linear(6, 4).load_state_dict(merged)


def _tiny_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def llama_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama pivot and two fine-tuned-looking targets (pivot + small noise of different size)."""
    root = tmp_path_factory.mktemp("tiny_llama").resolve()  # absolute: mergekit probes `a/b` on the hub
    pivot = _tiny_llama(0)
    dirs = {"pivot": root / "pivot"}
    pivot.save_pretrained(dirs["pivot"])
    for i, scale in ((1, 0.01), (2, 0.03)):
        target = _tiny_llama(0)
        gen = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for p in target.parameters():
                p.add_(scale * torch.randn(p.shape, generator=gen))
        dirs[f"t{i}"] = root / f"t{i}"
        target.save_pretrained(dirs[f"t{i}"])
    return dirs


def test_merge_state_dicts_on_tiny_llamas(llama_dirs):
    from transformers import AutoModelForCausalLM

    models = {k: AutoModelForCausalLM.from_pretrained(d) for k, d in llama_dirs.items()}
    with torch.no_grad(), fm.record_weights() as rec:
        merged = merge_state_dicts(models, "varm", base="pivot")
    models["pivot"].load_state_dict(merged)  # every key, right shapes
    name = "model.layers.1.mlp.up_proj.weight"
    w1, w2 = rec[name]
    assert w2 > w1  # the target moved three times as far gets the larger weight (about 9:1)
    assert w2 / w1 == pytest.approx(9.0, rel=0.3)


@pytest.mark.parametrize(("method", "params", "pure"), [
    ("varm", {}, lambda b, ts: fm.varm_merge(b, ts)),
    ("fusechat_sce", {"select_topk": 0.5, "variant": "fuseai_fork"}, lambda b, ts: fm.sce_merge(b, ts, 0.5, "fuseai_fork")),
], ids=["varm", "fusechat_sce"])
def test_run_merge_on_saved_models(llama_dirs, tmp_path, method, params, pure):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from safetensors.torch import load_file

    config = MergeConfiguration.model_validate({
        "merge_method": method, "base_model": str(llama_dirs["pivot"]), "dtype": "float32",
        "models": [{"model": str(llama_dirs["t1"])}, {"model": str(llama_dirs["t2"])}],
        **({"parameters": params} if params else {})})
    out = tmp_path / "merged"
    with fm.record_weights() as rec:
        run_merge(config, out_path=str(out), options=MergeOptions(write_model_card=False, copy_tokenizer=False,
                                                                  quiet=True, lazy_unpickle=False))
    merged = load_file(str(out / "model.safetensors"))
    inputs = {k: load_file(str(d / "model.safetensors")) for k, d in llama_dirs.items()}
    assert set(merged) == set(inputs["pivot"])
    assert set(rec) == set(merged)
    for name, tensor in merged.items():
        expected, weights = pure(inputs["pivot"][name], [inputs["t1"][name], inputs["t2"][name]])
        assert tensor.equal(expected), name
        assert rec[name] == pytest.approx(weights)
