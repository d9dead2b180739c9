"""The embedded zoo: recipes, resolving, the built micro members, caching, and that experts specialise."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from harness import corpus, zoo
from harness.errors import BenchError

HOMOGENEOUS = ("llama-base", "llama-code", "llama-docs", "llama-math")
HETEROGENEOUS = {"code": "gpt2-code", "docs": "neox-docs", "math": "mpt-math"}
CARD_KEYS = {
    "name", "architecture", "tokenizer", "tokenizer_type", "vocab_size", "params", "domain", "family", "parent",
    "preset", "seed", "recipe", "recipe_hash", "train", "val_bits_per_byte", "corpus_fingerprint",
}  # fmt: skip
TRICKY_TEXT = [
    "def foo(x):\n    return x  # trailing  \n",
    "  two leading spaces\n\n\ttab and  double  spaces \n",
    " x",
    "Q: What is 3 + 4 * 5?\nA: 4 * 5 = 20. 3 + 20 = 23. The answer is 23.",
    "",
]


def assert_specialised(cards: list[dict]) -> None:
    """Each expert has the lowest held-out bits/byte on its own domain among its peers."""
    bpb = {c["name"]: c["val_bits_per_byte"] for c in cards}
    for domain in corpus.DOMAINS:
        homogeneous = {name: bpb[name][domain] for name in HOMOGENEOUS}
        assert min(homogeneous, key=homogeneous.get) == f"llama-{domain}", (domain, homogeneous)
        heterogeneous = {name: bpb[name][domain] for name in HETEROGENEOUS.values()}
        assert min(heterogeneous, key=heterogeneous.get) == HETEROGENEOUS[domain], (domain, heterogeneous)


# --- recipes (no models needed) -------------------------------------------------------------------


def test_recipes_cover_both_families_in_every_preset() -> None:
    assert (*HOMOGENEOUS, *HETEROGENEOUS.values()) == zoo.MEMBERS
    for preset in zoo.PRESETS:
        recipes = {r.name: r for r in zoo.recipes(preset)}
        assert tuple(recipes) == zoo.MEMBERS
        assert {r.architecture for r in recipes.values()} == {"llama", "gpt2", "gpt_neox", "mpt"}
        assert len({r.tokenizer for r in recipes.values()}) == 3
        for name in ("llama-code", "llama-docs", "llama-math"):
            child = recipes[name]
            assert child.parent == "llama-base" and child.family == "homogeneous" and child.model == {}
            assert child.tokenizer == recipes["llama-base"].tokenizer
        assert recipes["llama-base"].domain == "mix"
        assert (
            recipes["gpt2-code"].tokenizer == recipes["llama-base"].tokenizer
        )  # cross-architecture ensembles
        assert {recipes[n].family for n in HETEROGENEOUS.values()} == {"heterogeneous"}
        assert len({r.train.seed for r in recipes.values()}) == len(recipes)


def test_recipe_hash_depends_on_preset_and_parent() -> None:
    assert zoo.recipe_hash("llama-code", "default") != zoo.recipe_hash("llama-code", "micro")
    assert zoo.recipe_hash("llama-code") == zoo.recipe_hash("llama-code")
    assert zoo.recipe_hash("llama-code") != zoo.recipe_hash("llama-docs")


def test_recipe_hashes_are_pinned() -> None:
    """A change that moves a recipe hash rebuilds every user's cached zoo (and CI's): it must be deliberate.
    (Adding a TrainConfig field once did it by accident.) If intended, update these values."""
    assert {n: zoo.recipe_hash(n, "default") for n in ("llama-base", "gpt2-code", "mpt-math")} == {
        "llama-base": "e78c74a57621f4ae", "gpt2-code": "1c678392a8b9f383", "mpt-math": "851b97866582666e"}
    assert zoo.recipe_hash("llama-base", "micro") == "4fc1d961309bde22"


def test_resolve_unknown_name_suggests_members() -> None:
    with pytest.raises(BenchError) as err:
        zoo.resolve("llama-cod")
    assert "did you mean 'llama-code'" in str(err.value)
    assert "neox-docs" in str(err.value)  # the members are listed
    with pytest.raises(BenchError, match="unknown zoo member"):
        zoo.build(["nope"])
    with pytest.raises(BenchError, match="unknown zoo preset"):
        zoo.recipes("mega")


def test_resolve_unbuilt_member_says_how_to_build(isolated_env: Path) -> None:
    with pytest.raises(BenchError) as err:
        zoo.resolve("llama-code")
    assert "not built" in str(err.value) and "`bench zoo build`" in str(err.value)
    assert not (isolated_env / "zoo" / "llama-code").exists()
    rows = [r for r in zoo.list_all() if r.get("kind") != "external"]
    assert [r["name"] for r in rows] == list(zoo.MEMBERS) and not any(r["built"] for r in rows)
    assert [r["name"] for r in zoo.list_all() if r.get("kind") == "external"] == ["smollm2-135m"]
    assert zoo.list_built() == []


def test_zoo_has_answers_by_exit_code_without_adding_anything(isolated_env: Path, capsys) -> None:
    """`bench zoo has NAME`: 0 when zoo:NAME loads as it is, 1 when not (with the command that adds or trains it),
    2 for a name that is no member; it never downloads or trains."""
    from harness import external
    from tests.conftest import bench

    assert bench("zoo", "has", "smollm2-135m") == 1
    assert "`bench zoo add smollm2-135m` adds it" in capsys.readouterr().out
    assert not (isolated_env / "zoo" / "smollm2-135m").exists()
    assert bench("zoo", "has", "llama-code") == 1
    assert "`bench zoo build --only llama-code` trains it" in capsys.readouterr().out
    card = isolated_env / "zoo" / "smollm2-135m" / external.CARD
    card.parent.mkdir(parents=True)
    card.write_text(json.dumps({"kind": "external", "key": "from-another-converter"}))
    assert bench("zoo", "has", "smollm2-135m") == 1
    assert "added by another FuseBench version" in capsys.readouterr().out
    card.write_text(json.dumps({"kind": "external", "key": external.EXTERNAL["smollm2-135m"].key}))
    assert bench("zoo", "has", "zoo:smollm2-135m") == 0
    assert capsys.readouterr().out.startswith("zoo:smollm2-135m is added")
    assert bench("zoo", "has", "smollm2-13m") == 2
    assert "did you mean 'smollm2-135m'" in capsys.readouterr().err


def test_preset_choice(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert zoo.active_preset() == "default"
    monkeypatch.setenv("BENCH_ZOO_PRESET", "micro")
    assert zoo.active_preset() == "micro"
    assert {r["vocab_size"] for r in zoo.list_all() if r.get("kind") != "external"} == {320, 384, 352}


# --- the built micro zoo --------------------------------------------------------------------------


def test_micro_zoo_is_built_with_complete_cards(zoo_home: Path) -> None:
    assert zoo.active_preset() == "micro"
    cards = zoo.list_built()
    assert [c["name"] for c in cards] == list(zoo.MEMBERS)
    for card in cards:
        assert set(card) >= CARD_KEYS, CARD_KEYS - set(card)
        assert card["preset"] == "micro" and card["recipe_hash"] == zoo.recipe_hash(card["name"], "micro")
        assert set(card["val_bits_per_byte"]) == set(corpus.DOMAINS)
        assert all(0 < v < 10 for v in card["val_bits_per_byte"].values())
        train = card["train"]
        assert train["steps"] == card["recipe"]["train"]["steps"] and train["tokens"] > 0
        assert train["final_loss"] < train["first_loss"]
        assert train["tokens_per_second"] > 0 and train["seconds"] > 0
        assert 10_000 < card["params"] < 500_000
    assert {c["name"]: c["parent"] for c in cards}["llama-math"] == "llama-base"
    assert all(r["built"] and not r["stale"] for r in zoo.list_all() if r.get("kind") != "external")
    json.dumps(cards)


def test_micro_members_load_offline_with_consistent_tokens(zoo_home: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in zoo.MEMBERS:
        path = zoo.resolve(name)
        assert path == zoo_home / "zoo" / name
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        cfg = model.config
        assert cfg.vocab_size == len(tok) == model.get_input_embeddings().num_embeddings
        assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
            tok.bos_token_id,
            tok.eos_token_id,
            tok.pad_token_id,
        )
        assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<unk>", "<s>", "</s>", "<pad>"]
        assert tok.unk_token == "<unk>"

        prompt = tok.apply_chat_template(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        assert prompt.endswith("<|assistant|>\n") and "<|user|>\nWhat is 2 + 3?</s>" in prompt
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.parametrize("member", ["llama-base", "neox-docs", "mpt-math"])  # one per tokenizer
def test_zoo_tokenizers_round_trip_exactly(zoo_home: Path, member: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(zoo.resolve(member), local_files_only=True)
    samples = TRICKY_TEXT + [
        d[:1500] for domain in corpus.DOMAINS for d in corpus.heldout_documents(domain, 4)
    ]
    for text in samples:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids or not text.isascii()
        assert tok.decode(ids) == text


def test_tokenizers_have_different_vocabularies(zoo_home: Path) -> None:
    from transformers import AutoTokenizer

    vocabs = {
        m: AutoTokenizer.from_pretrained(zoo.resolve(m)).get_vocab()
        for m in ("llama-base", "neox-docs", "mpt-math")
    }
    assert len({len(v) for v in vocabs.values()}) == 3
    assert set(vocabs["llama-base"]) != set(vocabs["neox-docs"]) != set(vocabs["mpt-math"])
    gpt2 = AutoTokenizer.from_pretrained(zoo.resolve("gpt2-code")).get_vocab()
    assert gpt2 == vocabs["llama-base"]


def test_second_build_is_a_quick_no_op(zoo_home: Path) -> None:
    def stamps() -> dict[str, float]:
        return {p.name: p.stat().st_mtime for p in (zoo_home / "zoo").iterdir() if p.name in zoo.MEMBERS}

    before = stamps()
    start = time.perf_counter()
    results = zoo.build(progress=False)
    assert time.perf_counter() - start < 2.0
    assert [r["status"] for r in results] == ["cached"] * len(zoo.MEMBERS)
    assert zoo.build(["llama-math"], progress=False)[-1]["status"] == "cached"
    assert stamps() == before


def test_stale_member_is_refused_then_rebuilt(
    zoo_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member built from another recipe is not served; build_missing rebuilds just it (parent cached)."""
    home = tmp_path / "copy"
    shutil.copytree(zoo_home / "zoo", home / "zoo", ignore=shutil.ignore_patterns(".lock"))
    monkeypatch.setenv("BENCH_HOME", str(home))
    card_file = home / "zoo" / "llama-docs" / zoo.CARD
    card = json.loads(card_file.read_text())
    card_file.write_text(json.dumps(card | {"recipe_hash": "0" * 16}))
    with pytest.raises(BenchError, match="another recipe.*bench zoo build"):
        zoo.resolve("llama-docs")
    assert zoo.resolve("llama-docs", build_missing=True) == home / "zoo" / "llama-docs"
    rebuilt = json.loads(card_file.read_text())
    assert rebuilt["recipe_hash"] == card["recipe_hash"]
    assert rebuilt["val_bits_per_byte"] == pytest.approx(card["val_bits_per_byte"], abs=0.02)  # seeded
    statuses = {r["name"]: r["status"] for r in zoo.build(progress=False)}
    assert set(statuses.values()) == {"cached"}


def test_micro_experts_specialise(zoo_home: Path) -> None:
    assert_specialised(zoo.list_built())


@pytest.mark.slow
def test_default_zoo_builds_in_budget_and_specialises(isolated_env: Path) -> None:
    start = time.perf_counter()
    results = zoo.build(preset="default", progress=False)
    elapsed = time.perf_counter() - start
    assert [r["status"] for r in results] == ["built"] * len(zoo.MEMBERS)
    assert elapsed < 300, f"default zoo took {elapsed:.0f} s"
    cards = zoo.list_built()
    assert all(c["preset"] == "default" and 300_000 < c["params"] < 1_500_000 for c in cards)
    assert_specialised(cards)
    start = time.perf_counter()
    assert {r["status"] for r in zoo.build(progress=False)} == {"cached"}
    assert time.perf_counter() - start < 2.0
