"""The ensemble LM: token-level mixture math against HFLM, generation, and the sequence-level path."""

from __future__ import annotations

import json
import math

import pytest

from fusers.ensemble import Ensemble, EnsembleLM
from harness.api import EvalContext, FuseContext
from harness.errors import BenchError

CODE = "def add(a, b):\n    return a + b\n"
PAIRS = [("", "import os"), ("def f(x):", " return x"), ("The quick brown", " fox"), ("x = 1", "\n"),
         ("Return the", " sum of the list of numbers.")]
LONG = ("Return a new list containing all items from the iterable in ascending order. " * 6
        + "\n\n" + CODE * 5)  # several rolling windows at context 128


@pytest.fixture(scope="module")
def members(micro):
    """HFLM per micro model (loaded once per module)."""
    from harness.model import as_lm, load_hf, resolve

    return {name: as_lm(*load_hf(resolve(str(micro[name]))), batch_size=4)
            for name in ("llama-code", "llama-docs", "gpt2", "mpt-uni")}


def _req(kind: str, *args):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=tuple(args), idx=0)


def _ll(lm, pairs=PAIRS):
    return lm.loglikelihood([_req("loglikelihood", c, x) for c, x in pairs])


def _rolling(lm, texts):
    return lm.loglikelihood_rolling([_req("loglikelihood_rolling", t) for t in texts])


def _lse(terms):
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


# --- token level ---


def test_one_member_matches_hflm(members):
    hf = members["llama-code"]
    ens = EnsembleLM([hf])
    assert ens.level == "token"
    for (got, got_greedy), (want, want_greedy) in zip(_ll(ens), _ll(hf), strict=True):
        assert got == pytest.approx(want, abs=1e-4)
        assert got_greedy == want_greedy
    texts = [LONG, CODE, "x"]
    assert len(hf.tok_encode(LONG)) > 2 * hf.max_length
    for got, want in zip(_rolling(ens, texts), _rolling(hf, texts), strict=True):
        assert got == pytest.approx(want, abs=1e-4)


def test_two_identical_members_equal_one(members):
    hf = members["llama-docs"]
    one, two = EnsembleLM([hf]), EnsembleLM([hf, hf], [0.3, 0.7])
    for (a, _), (b, _) in zip(_ll(one), _ll(two), strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    assert _rolling(two, [LONG])[0] == pytest.approx(_rolling(one, [LONG])[0], abs=1e-3)


def test_mixture_of_two_members_follows_the_math(members):
    a, b = members["llama-code"], members["llama-docs"]
    w = [0.3, 0.7]
    ens = EnsembleLM([a, b], w)
    # one-token continuations: exactly log Σ w_k p_k
    single = [("def", " "), ("The quick", " "), ("", "x")]
    for (mix, _), (la, _), (lb, _) in zip(_ll(ens, single), _ll(a, single), _ll(b, single), strict=True):
        assert mix == pytest.approx(_lse([math.log(w[0]) + la, math.log(w[1]) + lb]), abs=1e-4)
    # any length T: keeping only member k's term at every token gives ll ≥ T·log w_k + ll_k
    # (no sequence-level upper bound: a per-token mixture can beat every member on a whole sequence)
    for (c, x), (mix, _), (la, _), (lb, _) in zip(PAIRS, _ll(ens), _ll(a), _ll(b), strict=True):
        n_tokens = len(a.tok_encode(c + x)) - (len(a.tok_encode(c)) if c else 0)
        assert mix >= max(n_tokens * math.log(w[0]) + la, n_tokens * math.log(w[1]) + lb) - 1e-4
        assert mix <= 0


def test_mixture_ties_members_of_other_architectures_with_one_vocabulary(members):
    ens = EnsembleLM([members["llama-code"], members["gpt2"]])
    assert ens.level == "token"
    assert ens.tokenizer is members["llama-code"].tokenizer
    assert all(math.isfinite(v) for v in _rolling(ens, [LONG, CODE]))


def _gen(lm, context, **kwargs):
    return lm.generate_until([_req("generate_until", context, {"do_sample": False, **kwargs})])[0]


def test_one_member_generation_matches_hflm(members):
    hf = members["llama-code"]
    ens = EnsembleLM([hf])
    for context in ("def add(a, b):\n", "Return the"):
        assert _gen(ens, context, until=["\n\n"], max_gen_toks=24) == _gen(hf, context, until=["\n\n"], max_gen_toks=24)


def test_generation_stops_at_until_and_max_tokens(members):
    ens = EnsembleLM([members["llama-code"], members["llama-docs"]])
    free = _gen(ens, "Return the", until=[], max_gen_toks=30)
    assert len(ens.tok_encode(free)) <= 30
    assert free
    stop = free[len(free) // 2]  # a character the free run generates
    cut = _gen(ens, "Return the", until=[stop], max_gen_toks=30)
    assert stop not in cut
    assert cut == free[: free.index(stop)]
    assert len(ens.tok_encode(_gen(ens, "x", until=[], max_gen_toks=3))) <= 3


# --- sequence level ---


def test_members_with_different_tokenizers_mix_sequence_probabilities(members):
    a, m = members["llama-docs"], members["mpt-uni"]
    ens = EnsembleLM([a, m], [0.5, 0.5])
    assert ens.level == "sequence" and ens.tokenizer is None
    for (mix, _), (la, _), (lm_, _) in zip(_ll(ens), _ll(a), _ll(m), strict=True):
        assert mix == pytest.approx(_lse([math.log(0.5) + la, math.log(0.5) + lm_]), abs=1e-6)
        assert math.log(0.5) + max(la, lm_) - 1e-9 <= mix <= max(la, lm_) + 1e-9
    texts = [LONG, CODE]
    for mix, la, lm_ in zip(_rolling(ens, texts), _rolling(a, texts), _rolling(m, texts), strict=True):
        assert mix == pytest.approx(_lse([math.log(0.5) + la, math.log(0.5) + lm_]), abs=1e-6)


def test_sequence_level_generation_picks_the_best_member_candidate(members):
    a, m = members["llama-docs"], members["mpt-uni"]
    ens = EnsembleLM([a, m])
    kwargs = {"until": ["\n"], "max_gen_toks": 12}
    candidates = [c for c in (_gen(a, "Return the", **kwargs), _gen(m, "Return the", **kwargs)) if c]
    assert candidates, "the micro models should generate something"
    got = _gen(ens, "Return the", **kwargs)
    per_byte = [ll / len(c.encode()) for c, (ll, _) in zip(candidates, _ll(ens, [("Return the", c) for c in candidates]),
                                                            strict=True)]
    assert got == candidates[per_byte.index(max(per_byte))]


def test_generation_asking_for_more_than_the_context_holds(members):
    ens = EnsembleLM([members["llama-docs"], members["mpt-uni"]])  # the MPT holds 64 tokens
    assert isinstance(_gen(ens, "Return the", until=["\n"]), str)  # default max_gen_toks = 256
    token_level = EnsembleLM([members["llama-docs"]])
    assert len(token_level.tok_encode(_gen(token_level, "Return the", until=[], max_gen_toks=500))) <= 64


def test_forcing_token_level_on_different_vocabularies_fails(members):
    with pytest.raises(BenchError, match="vocabularies differ"):
        EnsembleLM([members["llama-docs"], members["mpt-uni"]], level="token")


# --- chat: every member through its own template ---

CHAT = [[{"role": "user", "content": "Write a function that adds two numbers."}]]


def _with_template(member):
    """A copy of ``member`` whose tokenizer carries the zoo's chat template (the micro models have none, so they
    read the plain transcript)."""
    import copy

    from harness.tokenizer_recipes import CHAT_TEMPLATE

    templated = copy.copy(member)
    templated.tokenizer = copy.deepcopy(member.tokenizer)
    templated.tokenizer.chat_template = CHAT_TEMPLATE
    return templated


def test_chat_at_token_level_conditions_each_member_on_its_own_rendering(members):
    from harness.chat_data import chat_prompt, turn_stops

    templated, plain = _with_template(members["llama-code"]), members["llama-docs"]
    assert chat_prompt(templated.tokenizer, CHAT[0]) != chat_prompt(plain.tokenizer, CHAT[0])
    one = EnsembleLM([templated], max_gen_toks=12)  # one member: exactly HFLM on its rendered prompt
    stops = turn_stops([templated.tokenizer])
    want = _gen(templated, chat_prompt(templated.tokenizer, CHAT[0]), until=stops, max_gen_toks=12).strip()
    assert one.generate_chat(CHAT) == [want]

    ens = EnsembleLM([templated, plain], max_gen_toks=12)
    assert ens.level == "token"
    seen: list[str] = []
    for m in ens.members:
        m.tok_encode = (lambda enc: lambda text, **kw: seen.append(text) or enc(text, **kw))(m.tok_encode)
    try:
        (answer,) = ens.generate_chat(CHAT)
    finally:
        for m in ens.members:
            del m.tok_encode
    assert seen[:2] == [chat_prompt(templated.tokenizer, CHAT[0]), chat_prompt(plain.tokenizer, CHAT[0])]
    assert isinstance(answer, str) and "User:" not in answer


def test_chat_stops_at_an_end_of_turn_special_token(members):
    """``<|im_end|>``-style markers are special tokens that decoding drops: generation stops on their id."""
    from fusers.ensemble import _special_token_ids
    from harness.chat_data import end_of_turn

    tok = _with_template(members["llama-code"]).tokenizer
    assert end_of_turn(tok) == [tok.eos_token]  # the zoo's template ends a turn with </s>
    assert _special_token_ids(tok, [*end_of_turn(tok), "\nUser:", ""]) == {tok.eos_token_id}


def test_chat_at_sequence_level_scores_each_answer_after_each_members_own_prompt(members):
    from harness.chat_data import chat_prompt, turn_stops

    a, m = _with_template(members["llama-docs"]), members["mpt-uni"]
    ens = EnsembleLM([a, m], max_gen_toks=10)
    assert ens.level == "sequence"
    stops = turn_stops([a.tokenizer, m.tokenizer])
    prompts = [chat_prompt(a.tokenizer, CHAT[0]), chat_prompt(m.tokenizer, CHAT[0])]
    candidates = [c for c in dict.fromkeys(_gen(x, p, until=stops, max_gen_toks=10)
                                           for x, p in zip((a, m), prompts, strict=True)) if c]
    assert candidates, "the micro models should answer something"
    mixed = [_lse([math.log(0.5) + _ll(a, [(prompts[0], c)])[0][0], math.log(0.5) + _ll(m, [(prompts[1], c)])[0][0]])
             / len(c.encode()) for c in candidates]
    assert ens.generate_chat(CHAT) == [candidates[mixed.index(max(mixed))].strip()]


# --- the fuser and the suites ---


def test_fuse_returns_a_runtime_factory(refs, tmp_path):
    res = Ensemble().fuse([refs["llama-code"], refs["mpt-uni"]], None, Ensemble.Config(weights=[1, 3]),
                          FuseContext(out_dir=tmp_path))
    assert res.path is None and res.details == {"members": ["llama-code", "mpt-uni"], "weights": [0.25, 0.75],
                                                "level": "sequence"}
    json.dumps(res.details)
    lm = res.runtime()
    assert isinstance(lm, EnsembleLM) and lm.weights == [0.25, 0.75]
    with pytest.raises(BenchError, match="2 ensemble weights for 3 sources"):
        Ensemble().fuse([refs["llama-code"]] * 3, None, Ensemble.Config(weights=[1, 1]), FuseContext(out_dir=tmp_path))
    with pytest.raises(BenchError, match="token level"):
        Ensemble().fuse([refs["llama-code"], refs["mpt-uni"]], None, Ensemble.Config(level="token"),
                        FuseContext(out_dir=tmp_path))


def test_perplexity_suite_on_the_ensemble(members, tmp_path):
    from evals.perplexity import Perplexity

    text = tmp_path / "held.txt"
    text.write_text("\n\n".join([LONG, CODE, "Return the sum of a list."]))
    cfg = Perplexity.Config(domains=[], files=[str(text)], max_chars_per_doc=300)

    def bpb(lm, name):
        res = Perplexity().evaluate(lm, cfg, EvalContext(workdir=tmp_path / name))
        return {(s.task, s.metric): s.value for s in res.scores}

    single = bpb(members["llama-code"], "hf")
    same = bpb(EnsembleLM([members["llama-code"]]), "one")
    assert same[("held", "bits_per_byte")] == pytest.approx(single[("held", "bits_per_byte")], abs=1e-5)
    assert same[("held", "token_perplexity")] == pytest.approx(single[("held", "token_perplexity")], rel=1e-5)
    mixed = bpb(EnsembleLM([members["llama-code"], members["mpt-uni"]]), "seq")
    assert ("held", "token_perplexity") not in mixed  # no single tokenizer at sequence level
    assert 0 < mixed[("held", "bits_per_byte")] < 20


def test_ensemble_runs_every_request_type_in_lm_eval(members, tmp_path):
    from harness.lmeval import metric, run_tasks

    mc = tmp_path / "mc.jsonl"
    mc.write_text("\n".join(json.dumps({"q": f"x = {i} + 1\n# x is", "choices": [str(i + 1), str(i)], "label": 0})
                            for i in range(4)))
    gen = tmp_path / "gen.jsonl"
    gen.write_text("\n".join(json.dumps({"prompt": f"def f{i}(x):", "answer": "return"}) for i in range(3)))
    data = {"dataset_path": "json", "test_split": "test"}
    tasks = [
        {**data, "task": "ens_mc", "dataset_kwargs": {"data_files": {"test": str(mc)}}, "output_type": "multiple_choice",
         "doc_to_text": "{{q}}", "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
         "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]},
        {**data, "task": "ens_gen", "dataset_kwargs": {"data_files": {"test": str(gen)}}, "output_type": "generate_until",
         "doc_to_text": "{{prompt}}", "doc_to_target": "{{answer}}",
         "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False},
         "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]},
    ]
    for lm in (EnsembleLM([members["llama-code"], members["llama-docs"]]),
               EnsembleLM([members["llama-code"], members["mpt-uni"]])):
        res = run_tasks(lm, tasks, log_samples=True)
        assert 0 <= metric(res, "ens_mc", "acc") <= 1
        assert 0 <= metric(res, "ens_gen", "exact_match") <= 1
        assert len(res["samples"]["ens_gen"]) == 3
        json.dumps(res)
