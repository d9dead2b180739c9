"""Model cards of fused models: Hugging Face metadata (base_model, tags, library, license), method, configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from harness import model_card


def licensed_folder(path: Path, license_: str | None, zoo_json: dict | None = None) -> str:
    """A model folder whose own card declares ``license_`` (or has no card), optionally with a ``zoo.json``."""
    path.mkdir(parents=True)
    if license_ is not None:
        (path / "README.md").write_text(f"---\nlicense: {license_}\n---\n\n# A model\n")
    if zoo_json is not None:
        (path / "zoo.json").write_text(json.dumps(zoo_json))
    return str(path)


def artifact_card(sources: list[str], target: str | None = None, **details) -> dict:
    return {"fuser": "merge", "fuse_hash": "0123456789abcdef", "seed": 3, "sources": sources, "target": target,
            "config": {"method": "ties", "density": 0.5, "weights": None}, "details": details,
            "provenance": {"versions": {"fusebench": "0.1.0", "mergekit": "0.1.5"}}}


def metadata_of(text: str) -> dict:
    return ModelCard(text).data.to_dict()


def test_hub_ids_and_a_license_every_model_shares(tmp_path):
    a = licensed_folder(tmp_path / "a", "Apache-2.0")
    b = licensed_folder(tmp_path / "b", None, {"license": "apache-2.0",
                                              "homepage": "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"})
    card = artifact_card([a, b], target=licensed_folder(tmp_path / "base", "apache-2.0"))
    meta = metadata_of(model_card.render(card, title="t"))
    # a local folder is not on the Hub; a zoo member converted from a Hub checkpoint names it
    assert meta["base_model"] == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "transformers"
    assert meta["tags"] == ["fusebench", "fusion", "merge", "mergekit"]


def test_license_left_out_when_unknown_or_different(tmp_path):
    mit = licensed_folder(tmp_path / "mit", "mit")
    unknown = licensed_folder(tmp_path / "none", None)
    other = licensed_folder(tmp_path / "apache", "apache-2.0")
    for sources in ([mit, unknown], [mit, other]):
        card = artifact_card(sources)
        text = model_card.render(card, title="t")
        assert "license" not in metadata_of(text)
        assert "not every model above declares one, or they differ" in text
    text = model_card.render(artifact_card([mit, other, "org/hub-model@v2"]), title="t")
    assert "| source | org/hub-model@v2 | org/hub-model | unknown |" in text
    assert metadata_of(text)["base_model"] == ["org/hub-model"]


def test_method_paper_and_exact_configuration():
    mergekit_text = "merge_method: linear\n# ``` a comment with a fence\nmodels:\n  - model: zoo:llama-code\n"
    card = artifact_card(["zoo:llama-code"], mergekit_config_text=mergekit_text, mergekit_config_file="/x/merge.yml")
    card["config"] = {"method": "linear", "mergekit_config": "/x/merge.yml", "dtype": "float32"}
    text = model_card.render(card, title="my merge")
    assert "# my merge" in text and "Paper: <https://arxiv.org/abs/2203.05482>" in text
    assert "huggingface-cli upload" in text and "Not in this card" in text
    # the mergekit config byte for byte, in a fence that its own backticks cannot close
    assert "````yaml\n" + mergekit_text + "````" in text
    run_block = text.split("```yaml\n", 1)[1].split("\n```", 1)[0]
    assert yaml.safe_load(run_block) == {"fuser": "merge", "args": {"mergekit_config": "/x/merge.yml"},
                                         "sources": ["zoo:llama-code"], "target": None, "seed": 3}


@pytest.mark.parametrize("fuser, tags", [("fusellm", ["fusebench", "fusion", "fusellm"]),
                                         ("cool-fusion", ["fusebench", "fusion", "cool-fusion"])])
def test_tags_name_the_fuser(fuser, tags):
    card = artifact_card(["zoo:llama-code"])
    card["fuser"] = fuser
    assert metadata_of(model_card.render(card, title="t"))["tags"] == tags


def test_written_into_the_artifact(tmp_path):
    path = model_card.write(tmp_path, artifact_card(["zoo:llama-code"]))
    assert path == tmp_path / "README.md" and "# merge\\#012345\n" in path.read_text()  # the title, escaped
