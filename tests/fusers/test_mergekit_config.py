"""A user's own mergekit config, run exactly as written (`--set mergekit_config=FILE`, or the file as `--config`), on
the micro zoo (one-layer Llamas with one tokenizer): per-layer weights, tokenizer_source, the models it names as the
run's sources, its bytes in the artifact's cache key, and one-line errors for bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlite_utils
import torch
from safetensors.torch import load_file

from tests.conftest import bench

ONE_DOC = ("--suite", "perplexity", "--limit", "1", "--set", "perplexity.max_chars_per_doc=400")

# Weight gradients are interpolated over each slice's layers (t = 0 ... 1; a one-layer slice has t = 1): four output
# layers, the first from a one-layer slice, then three layers at t = 0, 0.5, 1 (CODE3 / DOCS3: three-layer copies).
GRADIENT = """\
merge_method: linear
dtype: float32
slices:
  - sources:
      - {model: zoo:llama-code, layer_range: [0, 1], parameters: {weight: [0.0, 1.0]}}
      - {model: zoo:llama-docs, layer_range: [0, 1], parameters: {weight: [1.0, 0.0]}}
  - sources:
      - {model: CODE3, layer_range: [0, 3], parameters: {weight: [1.0, 0.0]}}
      - {model: DOCS3, layer_range: [0, 3], parameters: {weight: [0.0, 1.0]}}
"""


def three_layer_copy(model: Path, out: Path) -> Path:
    """``model`` (one layer) with its layer stacked three times, by mergekit's passthrough."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = {"merge_method": "passthrough", "dtype": "float32",
              "slices": [{"sources": [{"model": str(model), "layer_range": [0, 1]}]}] * 3}
    run_merge(MergeConfiguration.model_validate(config), out_path=str(out),
              options=MergeOptions(copy_tokenizer=True, write_model_card=False, quiet=True, lazy_unpickle=False))
    return out


def members(db: Path, run: str | None = None) -> list[dict]:
    database = sqlite_utils.Database(db)
    run_id = run or next(database.query("select id from runs order by started_at desc, rowid desc limit 1"))["id"]
    return list(database.query("select model, role, model_path from run_members where run_id = ? order by position",
                               [run_id]))


def layer(weights: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    prefix = f"model.layers.{index}."
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def test_per_layer_weight_gradients_in_slices(private_home, zoo_home, tmp_path, capsys):
    zoo = zoo_home / "zoo"
    code3 = three_layer_copy(zoo / "llama-code", tmp_path / "code3")
    docs3 = three_layer_copy(zoo / "llama-docs", tmp_path / "docs3")
    config = tmp_path / "merge.yml"
    config.write_text(GRADIENT.replace("CODE3", str(code3)).replace("DOCS3", str(docs3)))
    db = tmp_path / "bench.db"
    assert bench("run", "--fuser", "merge", "--set", f"mergekit_config={config}", *ONE_DOC, "--db", str(db),
                 "--name", "mk") == 0
    fused, *rest = members(db)
    # the models the config names are the run's sources (no base_model: no target), not the fuser's defaults
    assert fused["role"] == "fused" and [(m["model"], m["role"]) for m in rest] == [
        ("zoo:llama-code", "source"), ("zoo:llama-docs", "source"), ("code3", "source"), ("docs3", "source")]
    out = Path(fused["model_path"])
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4
    merged = load_file(str(out / "model.safetensors"))
    code = layer(load_file(str(zoo / "llama-code" / "model.safetensors")), 0)
    docs = layer(load_file(str(zoo / "llama-docs" / "model.safetensors")), 0)
    for name, tensor in code.items():
        assert torch.equal(layer(merged, 0)[name], tensor), name  # one-layer slice, t = 1: weights 1 / 0
        assert torch.equal(layer(merged, 1)[name], tensor), name  # t = 0: weights 1 / 0
        assert torch.allclose(layer(merged, 2)[name], (tensor + docs[name]) / 2, atol=1e-7, rtol=0), name
        assert torch.equal(layer(merged, 3)[name], docs[name]), name  # t = 1: weights 0 / 1
    details = json.loads((out / "fusebench.json").read_text())["details"]
    assert details["mergekit_config_text"] == config.read_text() and details["method"] == "linear"
    card = (out / "README.md").read_text()
    assert config.read_text() in card and "- mergekit" in card.split("---")[1]  # the config as given; the tags

    # the config's bytes are part of the artifact's key: another weight is another artifact
    config.write_text(config.read_text().replace("[0.0, 1.0]}}\n      - {model: zoo:llama-docs",
                                                 "[0.5, 1.0]}}\n      - {model: zoo:llama-docs"))
    assert bench("run", "--fuser", "merge", "--set", f"mergekit_config={config}", *ONE_DOC, "--db", str(db)) == 0
    assert members(db)[0]["model_path"] != fused["model_path"]


def test_a_mergekit_file_as_run_config_with_tokenizer_source(private_home, zoo_home, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # llama-docs with one token more: merging it with llama-code needs the tokenizer of the config's choice
    tok = AutoTokenizer.from_pretrained(zoo_home / "zoo" / "llama-docs")
    model = AutoModelForCausalLM.from_pretrained(zoo_home / "zoo" / "llama-docs")
    tok.add_tokens(["<|fused|>"])
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(tmp_path / "docs-plus")
    tok.save_pretrained(tmp_path / "docs-plus")
    monkeypatch.chdir(tmp_path)  # a folder reference relative to the working directory, as mergekit reads them
    Path("merge.yml").write_text("merge_method: linear\ndtype: float32\nmodels:\n"
                                 "  - {model: zoo:llama-code, parameters: {weight: 0.5}}\n"
                                 "  - {model: docs-plus, parameters: {weight: 0.5}}\n"
                                 "tokenizer_source: docs-plus\n")
    db = tmp_path / "bench.db"
    assert bench("run", "--config", "merge.yml", *ONE_DOC, "--db", str(db)) == 0
    fused, *rest = members(db)
    assert [m["model"] for m in rest] == ["zoo:llama-code", "docs-plus"]
    out = Path(fused["model_path"])
    merged_tok = AutoTokenizer.from_pretrained(out)
    assert len(merged_tok) == len(tok) and "<|fused|>" in merged_tok.get_vocab()
    embed = load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"]
    plus = load_file(str(tmp_path / "docs-plus" / "model.safetensors"))["model.embed_tokens.weight"]
    code = load_file(str(zoo_home / "zoo" / "llama-code" / "model.safetensors"))["model.embed_tokens.weight"]
    assert embed.shape[0] == len(tok)
    assert torch.equal(embed[len(tok) - 1], plus[len(tok) - 1])  # only docs-plus has the new token
    assert torch.allclose(embed[5], (code[5] + plus[5]) / 2, atol=1e-7, rtol=0)
    config = json.loads(next(sqlite_utils.Database(db).query("select config from runs"))["config"])
    assert config["fuser"] == "merge" and config["fuser_args"] == {"mergekit_config": str(tmp_path / "merge.yml")}
    assert config["sources"] == ["zoo:llama-code", "docs-plus"] and config["target"] == ""


MODELS = "models:\n  - {model: zoo:llama-code}\n  - {model: zoo:llama-docs}\n"


@pytest.mark.parametrize("content, flags, message", [
    (None, (), "mergekit config {missing} not found"),
    ("- a\n- b\n", (), "must be a mapping, got list"),
    ("merge_method: linear\nmodels: [\n", (), "is not valid YAML at line"),
    (MODELS, (), "has no merge_method"),
    ("merge_method: linaer\n" + MODELS, (), "unknown merge method 'linaer'; did you mean 'linear'?"),
    ("merge_method: linear\nslices: [{sources: [{model: zoo:llama-code, layer_range: [0, 1]}]}]\n" + MODELS, (),
     "Exactly one of 'models', 'slices', or 'modules' must be present"),
    ("merge_method: linear\nmodels:\n  - {model: zoo:llama-code+adapters/a}\n", (), "applies a LoRA adapter"),
    ("merge_method: linear\n" + MODELS, ("--set", "method=ties"), "mergekit_config is given together with method"),
    ("merge_method: linear\n" + MODELS, ("--sources", "zoo:llama-math"), "drop --sources"),
    ("merge_method: linear\nmodels:\n  - {model: zoo:nope}\n", (), "unknown zoo member 'nope'"),
    ("merge_method: linear\ndtype: float32\nmodels:\n  - {model: zoo:llama-code, parameters: {weight: 1.0}}\n"
     "  - {model: zoo:gpt2-code, parameters: {weight: 1.0}}\n", (), "mergekit could not run"),
], ids=["missing", "not-a-mapping", "bad-yaml", "no-method", "unknown-method", "models-and-slices", "lora",
        "setting-beside", "sources-beside", "unknown-model", "mergekit-refuses"])
def test_a_bad_mergekit_config_is_one_line(private_home, tmp_path, capsys, content, flags, message):
    config = tmp_path / "merge.yml"
    if content is not None:
        config.write_text(content)
    assert bench("run", "--fuser", "merge", "--set", f"mergekit_config={config}", *flags, *ONE_DOC,
                 "--db", str(tmp_path / "bench.db")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and message.format(missing=config) in err and "(fix: " in err


def test_a_mergekit_file_given_to_another_fuser_is_refused(private_home, tmp_path, capsys):
    config = tmp_path / "merge.yml"
    config.write_text("merge_method: linear\n" + MODELS)
    assert bench("run", "--config", str(config), "--fuser", "ensemble", "--db", str(tmp_path / "bench.db")) == 2
    assert "is a mergekit config, which the merge fuser runs, not ensemble" in capsys.readouterr().err


def test_an_inline_mergekit_config_in_a_run_yaml(tmp_path):
    """The mapping itself as the merge fuser's argument: its models and base_model are the run's sources and target."""
    from harness.config import build_run_config

    run_file = tmp_path / "run.yaml"
    run_file.write_text("fuser:\n  name: merge\n  args:\n    mergekit_config:\n      merge_method: ties\n"
                        "      base_model: zoo:llama-base\n      models:\n"
                        "        - {model: zoo:llama-base}\n"
                        "        - {model: zoo:llama-code, parameters: {weight: 0.5, density: 0.5}}\n"
                        "        - {model: org/expert@v2, parameters: {weight: 0.5, density: 0.5}}\n"
                        "suites: [perplexity]\n")
    spec = build_run_config(config_file=str(run_file))
    assert spec.sources == ["zoo:llama-code", "org/expert@v2"] and spec.target == "zoo:llama-base"
    assert spec.fuser_config.mergekit_config["merge_method"] == "ties"
