"""Backends: --backend vllm through lm-eval's VLLM (a fake engine computing with transformers stands in for vLLM,
which needs a GPU), served models as openai:NAME, and the one-line refusals."""

from __future__ import annotations

import importlib.metadata
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlite_utils

from harness.errors import BenchError
from tests.conftest import bench

PPL = ["--suite", "perplexity", "--set", "perplexity.max_docs=2", "--set", "perplexity.max_chars_per_doc=300"]


class FakeEngine:
    """``vllm.LLM`` as lm-eval's VLLM drives it, computed by the transformers model at ``model``: greedy
    generation with stop strings, and prompt log-probs (the token's and the argmax's) when asked for."""

    created: list[FakeEngine] = []

    def __init__(self, **kwargs: object) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.kwargs = kwargs
        self.model = AutoModelForCausalLM.from_pretrained(str(kwargs["model"])).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(kwargs["model"]))
        from harness.model import max_length

        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=max_length(self.model)))
        FakeEngine.created.append(self)

    def generate(self, prompts, sampling_params, use_tqdm=False, lora_request=None):
        import torch

        outputs = []
        with torch.no_grad():
            for prompt, params in zip(prompts, sampling_params, strict=True):
                ids = list(prompt["prompt_token_ids"])
                if getattr(params, "prompt_logprobs", None):
                    logps = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), dim=-1)
                    per_token = [None] + [{ids[t + 1]: SimpleNamespace(logprob=float(logps[t, ids[t + 1]])),
                                           int(logps[t].argmax()): SimpleNamespace(logprob=float(logps[t].max()))}
                                          for t in range(len(ids) - 1)]
                    outputs.append(SimpleNamespace(prompt_logprobs=per_token, outputs=[SimpleNamespace(text="")]))
                    continue
                out = self.model.generate(torch.tensor([ids]), max_new_tokens=params.max_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.eos_token_id)
                text = self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
                cuts = [text.index(s) for s in params.stop or [] if s and s in text]
                outputs.append(SimpleNamespace(prompt_logprobs=None,
                                               outputs=[SimpleNamespace(text=text[: min(cuts)] if cuts else text)]))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch):
    """A ``vllm`` package whose ``LLM`` is :class:`FakeEngine`; lm-eval's VLLM module is imported fresh against
    it and dropped afterwards."""
    from importlib.machinery import ModuleSpec

    def module(name: str, **attrs: object) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__spec__ = ModuleSpec(name, None)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod

    def get_tokenizer(name: str, **kwargs: object):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name)

    module("vllm", LLM=FakeEngine, SamplingParams=lambda **kw: SimpleNamespace(**{"prompt_logprobs": None, **kw}),
           TokensPrompt=lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids})
    module("vllm.lora")
    module("vllm.lora.request", LoRARequest=object)
    module("vllm.tokenizers", get_tokenizer=get_tokenizer)
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.8.0" if name == "vllm" else real_version(name))
    from lm_eval.api.registry import model_registry

    # lm-eval registers its VLLM class on import: import it fresh against the fake, and forget it afterwards
    monkeypatch.setitem(model_registry._objs, "vllm", model_registry._objs.get("vllm"))
    monkeypatch.delitem(sys.modules, "lm_eval.models.vllm_causallms", raising=False)
    FakeEngine.created.clear()
    yield FakeEngine
    sys.modules.pop("lm_eval.models.vllm_causallms", None)


def _scores(db: Path) -> list[dict]:
    return list(sqlite_utils.Database(db).query(
        "select r.name as run, s.value, s.dtype, s.backend, s.eval_key from scores s join runs r on r.id = s.run_id "
        "where s.metric = 'bits_per_byte' and s.task = 'avg' order by r.started_at"))


def test_vllm_backend_maps_the_run_onto_lm_eval_vllm(zoo_home: Path, tmp_path: Path, fake_vllm, capsys) -> None:
    db = tmp_path / "b.db"
    assert bench("eval", "--model", "zoo:llama-base", *PPL, "--db", str(db), "--name", "hf") == 0
    code = bench("eval", "--model", "zoo:llama-base", *PPL, "--db", str(db), "--name", "vllm", "--backend", "vllm",
                 "--set", "vllm.gpu_memory_utilization=0.5", "--set", "vllm.tensor_parallel_size=1")
    assert code == 0, capsys.readouterr().err[-2000:]
    (engine,) = fake_vllm.created
    from harness import zoo

    assert engine.kwargs["model"] == str(zoo.resolve("llama-base"))
    assert engine.kwargs["dtype"] == "float32"  # auto on the CPU
    assert engine.kwargs["gpu_memory_utilization"] == 0.5 and engine.kwargs["tensor_parallel_size"] == 1
    hf, vllm = _scores(db)
    assert (hf["backend"], vllm["backend"]) == ("hf-cpu", "vllm-cpu")
    assert hf["eval_key"] != vllm["eval_key"]  # never one cache entry for two backends
    assert vllm["value"] == pytest.approx(hf["value"], abs=1e-4)  # the same numbers through lm-eval's VLLM


def test_vllm_generation_goes_through_the_engine(zoo_home: Path, fake_vllm) -> None:
    from lm_eval.api.instance import Instance

    from harness.backends import load_lm
    from harness.model import current_placement, resolve
    from harness.model import load_lm as load_hf_lm

    ref = resolve("zoo:llama-code")
    request = Instance(request_type="generate_until", doc={}, idx=0,
                       arguments=("def add(a, b):\n", {"until": ["\n\n"], "max_gen_toks": 16, "do_sample": False}))
    import dataclasses

    vllm = load_lm(ref, 4, dataclasses.replace(current_placement(), backend="vllm"))
    assert vllm.generate_until([request]) == load_hf_lm(ref, 4).generate_until([request])


def test_unknown_vllm_argument_and_missing_vllm_are_one_line_errors(zoo_home: Path, tmp_path: Path, fake_vllm,
                                                                      capsys, monkeypatch) -> None:
    code = bench("eval", "--model", "zoo:llama-base", *PPL, "--db", str(tmp_path / "b.db"), "--backend", "vllm",
                 "--set", "vllm.tensor_paralel_size=2")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "unknown vLLM argument(s) tensor_paralel_size" in err
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    sys.modules.pop("lm_eval.models.vllm_causallms", None)
    code = bench("eval", "--model", "zoo:llama-math", *PPL, "--db", str(tmp_path / "b.db"), "--backend", "vllm")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "make venv-vllm" in err


def test_served_models_are_refused_where_weights_are_needed(zoo_home: Path, tmp_path: Path, capsys) -> None:
    from harness.model import load_hf, resolve

    with pytest.raises(BenchError, match="served behind an API"):
        load_hf(resolve("openai:some-model"))
    code = bench("eval", "--model", "openai:some-model", *PPL, "--db", str(tmp_path / "b.db"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "no server URL" in err and "--base-url" in err
    with pytest.raises(BenchError, match="names no served model"):
        resolve("openai:")


# --- a server that returns prompt log-probabilities -------------------------------------------------


class LogprobServer:
    """A loopback ``/v1/completions`` endpoint that answers ``echo`` + ``logprobs`` requests the way ``vllm serve``
    does (token-id prompts, one log-probability per prompt token, the argmax among the top log-probabilities),
    computed by a transformers model. ``transformers serve`` returns no log-probabilities and llama.cpp's server
    neither takes token ids nor lines its echoed log-probabilities up with the tokens, so this one stands in."""

    def __init__(self, folder: Path):
        import http.server
        import json
        import threading

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.requests: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                prompt = body["prompt"]
                if isinstance(prompt, str):
                    prompt = tokenizer(prompt)["input_ids"]
                prompts = prompt if prompt and isinstance(prompt[0], list) else [prompt]
                choices = []
                with torch.no_grad():
                    for index, ids in enumerate(prompts):
                        logps = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
                        token_lps: list[float | None] = [None] + [float(logps[t, ids[t + 1]]) for t in range(len(ids) - 1)]
                        tops: list[dict | None] = [None] + [{str(int(logps[t].argmax())): float(logps[t].max())}
                                                            for t in range(len(ids) - 1)]
                        nxt = int(logps[-1].argmax())  # the one generated token (max_tokens=1)
                        token_lps.append(float(logps[-1, nxt]))
                        tops.append({str(nxt): float(logps[-1, nxt])})
                        choices.append({"index": index, "text": "", "logprobs": {"token_logprobs": token_lps,
                                                                                  "top_logprobs": tops}})
                payload = json.dumps({"choices": choices}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def test_served_perplexity_equals_the_weights_when_the_server_returns_prompt_logprobs(zoo_home: Path, tmp_path: Path,
                                                                                     capsys) -> None:
    from harness import zoo

    server = LogprobServer(zoo.resolve("llama-base"))
    try:
        db = tmp_path / "b.db"
        code = bench("eval", "--model", "openai:llama-base", "--base-url", server.url, "--tokenizer", "zoo:llama-base",
                     *PPL, "--db", str(db), "--name", "served")
        assert code == 0, capsys.readouterr().err[-2000:]
        assert bench("eval", "--model", "zoo:llama-base", *PPL, "--db", str(db), "--name", "hf") == 0
    finally:
        server.close()
    served, hf = sorted(_scores(db), key=lambda r: r["run"] != "served")
    assert (served["backend"], hf["backend"]) == ("openai", "hf-cpu")
    assert served["value"] == pytest.approx(hf["value"], abs=1e-4)
    scored = [r for r in server.requests if r.get("echo") and isinstance(r["prompt"], list)]
    assert scored and all(isinstance(t, int) for p in scored for t in (p["prompt"][0] if isinstance(p["prompt"][0], list)
                                                                       else p["prompt"]))  # token ids went out
