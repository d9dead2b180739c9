"""Cool-Fusion on the micro zoo: cached == uncached, common boundaries, one-member sanity, log-likelihood
definition, and `bench run --fuser cool-fusion` end to end."""

from __future__ import annotations

import pytest
import torch

from fusers.cool_fusion import CoolFusion, CoolFusionLM

HETERO = ("gpt2-code", "neox-docs", "mpt-math")
PROMPTS = ["Q: Ana has 12 apples and eats 5. How many are left?\nA:", "def add(a, b):\n    return",
           "Return the sum of", ""]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def members(zoo_home):
    from harness.model import as_lm, load_hf, resolve

    return {n: as_lm(*load_hf(resolve(f"zoo:{n}")), batch_size=4) for n in HETERO}


def _req(kind: str, *args):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=tuple(args), idx=0)


def test_cached_and_uncached_generate_identical_text(members):
    gen = {"until": ["\n\n"], "max_gen_toks": 24}
    reqs = [_req("generate_until", p, gen) for p in PROMPTS]
    cached = CoolFusionLM(list(members.values()), use_cache=True)
    uncached = CoolFusionLM(list(members.values()), use_cache=False)
    a, b = cached.generate_until(reqs), uncached.generate_until(reqs)
    assert a == b
    assert any(a) and all("\n\n" not in t for t in a)
    assert cached.stats["forward_tokens"] < uncached.stats["forward_tokens"]
    for agg in ("mean_logppl", "mean_logprob_per_char"):
        outs = [CoolFusionLM(list(members.values()), agg=agg, use_cache=c).generate_until(reqs[:2]) for c in (1, 0)]
        assert outs[0] == outs[1]


def test_candidates_end_at_common_word_boundaries(members):
    lm = CoolFusionLM(list(members.values()), max_gen_toks=32)
    lm.generate(PROMPTS[0] + " 12 - 5 = 7. The answer is")
    lm.generate(PROMPTS[2])
    boundary = [(step.context, c) for step in lm.trace for c in step.candidates if c.kind == "boundary"]
    assert boundary, "no candidate ended at a word boundary"
    for context, cand in boundary:
        assert cand.text.strip() and cand.lookahead and not (cand.lookahead[0].isalnum() or cand.lookahead[0] == "_")
        pos = len(context + cand.text)
        for member in members.values():
            offsets = member.tokenizer(context + cand.text + cand.lookahead, add_special_tokens=False,
                                       return_offsets_mapping=True)["offset_mapping"]
            assert not any(s < pos < e for s, e in offsets), (member, context, cand)
    for step in lm.trace:  # the accepted candidate is the best-scored one
        assert step.candidates[step.accepted].score == min(c.score for c in step.candidates)
        assert all(c.kind == "cap" or len(c.text) or c.eos for c in step.candidates)


def test_one_member_reproduces_its_own_greedy_generation(members):
    hf = members["gpt2-code"]
    lm = CoolFusionLM([hf])
    for prompt in PROMPTS[:3]:
        ids = hf.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = hf.model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=hf.tokenizer.pad_token_id,
                                    eos_token_id=hf.eot_token_id)
        want = hf.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert lm.generate(prompt, max_gen_toks=20) == want
        assert lm.generate(prompt, max_gen_toks=20, until=[want[5:8]]) == want[: want.find(want[5:8])]


def test_loglikelihood_is_the_mean_of_the_members(members):
    lm = CoolFusionLM(list(members.values()))
    pairs = [("The quick brown", " fox jumps"), ("def f(x):", " return x"), ("", "The quick brown fox")]
    got = lm.loglikelihood([_req("loglikelihood", c, x) for c, x in pairs])
    per = [m.loglikelihood([_req("loglikelihood", c, x) for c, x in pairs]) for m in members.values()]
    for i, (ll, greedy) in enumerate(got):
        assert ll == pytest.approx(sum(p[i][0] for p in per) / len(per), abs=1e-4)
        assert greedy == all(p[i][1] for p in per)
    texts = ["import os\nprint(os.getcwd())\n", "Return the number of items."]
    rolling = lm.loglikelihood_rolling([_req("loglikelihood_rolling", t) for t in texts])
    per_r = [m.loglikelihood_rolling([_req("loglikelihood_rolling", t) for t in texts]) for m in members.values()]
    assert rolling == pytest.approx([sum(p[i] for p in per_r) / len(per_r) for i in range(len(texts))], abs=1e-4)


def test_config_and_registration():
    from harness.registry import fusers

    assert fusers().get("cool-fusion") is CoolFusion
    assert CoolFusion.Config().model_dump() == {"max_seg_tokens": 16, "agg": "mean_ppl", "max_gen_toks": 128,
                                                "use_cache": True}
    with pytest.raises(ValueError):
        CoolFusion.Config(agg="max")


def test_bench_run_cool_fusion_end_to_end(zoo_home, tmp_path, monkeypatch, capsys):
    from tests.test_e2e import bench, rows

    private = tmp_path / "home"
    private.mkdir()
    (private / "zoo").symlink_to(zoo_home / "zoo")
    monkeypatch.setenv("BENCH_HOME", str(private))
    db = tmp_path / "bench.db"
    assert bench("run", "--fuser", "cool-fusion", "--suite", "perplexity", "--set", "max_gen_toks=8",
                 "--set", "perplexity.max_docs=3", "--set", "perplexity.max_chars_per_doc=300", "--db", str(db)) == 0
    (run,) = rows(db, "select * from runs")
    assert run["status"] == "ok" and run["fuser"] == "cool-fusion"
    roles = rows(db, "select m.name, rm.role, m.id from run_models rm join models m on m.id = rm.model_id")
    assert {r["name"] for r in roles if r["role"] == "source"} == {f"zoo:{n}" for n in HETERO}
    assert len(roles) == 4
    scored = {r["model_id"] for r in rows(db, "select model_id from scores where metric = 'bits_per_byte'")}
    assert scored == {r["id"] for r in roles}
    assert "fused" in capsys.readouterr().out


def test_generate_chat_prompts_every_member_through_its_own_template(members) -> None:
    """Members with different chat templates each get the conversation in their own format (and a member
    without one the plain transcript); the stops are every member's end-of-turn markers."""
    from harness.chat_data import PLAIN_STOP, end_of_turn

    lm = CoolFusionLM(list(members.values())[:2], max_gen_toks=4)
    template = lm.members[1].tokenizer.chat_template
    lm.members[1].tokenizer.chat_template = None  # one member without a template
    seen: list[list[str]] = []
    real_generate = lm.generate

    def record(context, **kwargs):
        seen.append(list(context))
        seen.append(list(kwargs["until"]))
        return real_generate(context, **kwargs)

    lm.generate = record
    answers = lm.generate_chat([[{"role": "user", "content": "Say hi."}]], max_gen_toks=4)
    contexts, stops = seen
    assert contexts[0] == lm.members[0].tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hi."}], tokenize=False, add_generation_prompt=True)
    assert contexts[1] == "User: Say hi.\nAssistant:"
    assert set(stops) == {*end_of_turn(lm.members[0].tokenizer), PLAIN_STOP}
    assert len(answers) == 1 and isinstance(answers[0], str)
    lm.members[1].tokenizer.chat_template = template
