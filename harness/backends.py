"""Backends: how a model a run evaluates becomes an lm-eval ``LM``, always through lm-eval's own model classes.

* ``hf`` (default): transformers in this process (lm-eval's ``HFLM``; :func:`harness.model.load_lm`).
* ``vllm``: lm-eval's ``VLLM`` (generation and log-likelihoods) on a CUDA machine with the ``[vllm]`` extra,
  which lives in its own environment because vLLM pins its own torch (``make venv-vllm``). The run's
  dtype goes to the engine; ``--set vllm.tensor_parallel_size=2`` (also ``data_parallel_size``,
  ``gpu_memory_utilization``, ``max_model_len`` ...) passes engine arguments through.
* ``openai``: a model behind any OpenAI-compatible server (``vllm serve``, llama.cpp's server, SGLang, TGI),
  named ``openai:NAME`` (NAME is the server's model id) with ``--base-url``: lm-eval's
  ``local-completions`` for prompts and log-likelihoods and ``local-chat-completions`` for chat turns
  (MT-Bench: the server applies the model's own template), their requests sent through FuseBench's one
  OpenAI-compatible client (:mod:`harness.openai_client`, shared with the LLM judge). Log-likelihoods
  (perplexity) need the server to return prompt log-probabilities (``echo`` + ``logprobs``) and the served
  model's tokenizer on this machine (``--tokenizer REF``); a server without them is refused in one line
  before anything is scored.

``--backend`` picks the backend for every model the run evaluates, a model's own YAML entry (``{path: ...,
backend: vllm}``) for one; an ``openai:NAME`` model is always served. Runtime fusers (ensemble, Cool-Fusion)
and training fusers read logits and weights, so they always load their members with transformers.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lm_eval.api.model import LM  # light: no torch import

from harness.errors import BenchError
from harness.openai_client import OpenAIClient

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance

    from harness.model import ModelRef, Placement

#: Engine arguments ``--set vllm.KEY=VALUE`` may pass to lm-eval's VLLM (and so to ``vllm.LLM``).
VLLM_ARGS = ("tensor_parallel_size", "data_parallel_size", "gpu_memory_utilization", "max_model_len",
             "max_num_seqs", "enforce_eager", "quantization", "swap_space", "enable_prefix_caching")
SERVED_PREFIX = "openai:"


def load_lm(ref: ModelRef, batch_size: int | str, where: Placement) -> LM:
    """The ``LM`` that evaluates ``ref`` on ``where``'s backend."""
    if where.backend == "openai":
        return load_served(ref, where, batch_size)
    if where.backend == "vllm":
        return load_vllm(ref, where, batch_size)
    from harness.model import load_lm as load_hf_lm

    return load_hf_lm(ref, batch_size=batch_size)


# --- vLLM ---------------------------------------------------------------------------------------


def load_vllm(ref: ModelRef, where: Placement, batch_size: int | str) -> LM:
    """lm-eval's ``VLLM`` for a local folder, zoo member or hub id, in the placement's dtype."""
    try:
        from lm_eval.models.vllm_causallms import VLLM
    except ImportError as e:
        raise BenchError(f"the vllm backend needs vLLM, which is not importable here ({e})",
                         "on a CUDA machine run `make venv-vllm` and use .venv-vllm/bin/bench, or use --backend hf") from None
    engine = dict(where.engine_args)  # checked against VLLM_ARGS with the run config
    return VLLM(pretrained=ref.load_id, revision=ref.revision, dtype=where.load_dtype(), batch_size=batch_size,
                seed=1234, **engine)


# --- OpenAI-compatible servers --------------------------------------------------------------------


def served_name(ref: ModelRef) -> str:
    return ref.spec[len(SERVED_PREFIX):]


def load_served(ref: ModelRef, where: Placement, batch_size: int | str) -> LM:
    """A served model: completions for prompts and log-likelihoods, chat completions for chat turns."""
    if not where.base_url:
        raise BenchError(f"{ref.spec} is a served model but no server URL is given",
                         "pass --base-url http://HOST:PORT/v1 (or base_url: in its YAML entry)")
    client = OpenAIClient(where.base_url, api_key=os.environ.get("OPENAI_API_KEY") or None, what="model server",
                          flag="--base-url")
    client.check()
    tokenizer = None
    if where.tokenizer:
        from harness.model import resolve

        tok_ref = resolve(where.tokenizer, build_missing_zoo=True)
        tokenizer = str(tok_ref.path) if tok_ref.path is not None else tok_ref.spec
    return ServedLM(client, served_name(ref), tokenizer=tokenizer, batch_size=batch_size)


@functools.cache
def _client_classes() -> tuple[type, type]:
    """lm-eval's ``local-completions`` and ``local-chat-completions`` with their HTTP sent through
    :class:`~harness.openai_client.OpenAIClient` (retries, one-line errors) instead of ``requests``."""
    from lm_eval.models.openai_completions import LocalChatCompletion, LocalCompletionsAPI

    class ClientTransport:
        client: Any
        endpoint: str

        def model_call(self, messages: Any, *, generate: bool = True, gen_kwargs: dict | None = None,
                       **kwargs: Any) -> dict | None:
            payload = self._create_payload(self.create_message(messages), generate=generate,  # type: ignore[attr-defined]
                                           gen_kwargs=copy.deepcopy(gen_kwargs), seed=self._seed,  # type: ignore[attr-defined]
                                           eos=self.eos_string, **kwargs)  # type: ignore[attr-defined]
            if not payload.get("stop", True):
                del payload["stop"]  # "no stop strings": some servers reject an empty list (transformers serve)
            return self.client.post(self.endpoint, payload)

    class Completions(ClientTransport, LocalCompletionsAPI):
        endpoint = "completions"

    class ChatCompletions(ClientTransport, LocalChatCompletion):
        endpoint = "chat/completions"

    return Completions, ChatCompletions


class ServedLM(LM):
    """An lm-eval ``LM`` over one served model: ``generate_until`` and the log-likelihoods go to ``/completions``
    (prompts rendered by the suites, as for any model), ``generate_chat`` to ``/chat/completions`` (the server
    renders its model's chat template)."""

    def __init__(self, client: OpenAIClient, model: str, *, tokenizer: str | None, batch_size: int | str) -> None:
        super().__init__()
        completions_cls, chat_cls = _client_classes()
        common = {"model": model, "base_url": client.url("completions"), "max_retries": 1, "num_concurrent": 1,
                  "max_length": 2048}
        self.client, self.model_name = client, model
        # prompts go one per request as text (every server takes that; some take no lists, no token ids)
        self.completions = completions_cls(tokenizer_backend=None, tokenized_requests=False, batch_size=1, **common)
        # log-likelihoods send token ids, so that the context ends exactly where our tokenizer says it does
        self.scoring = completions_cls(tokenizer_backend="huggingface", tokenizer=tokenizer, tokenized_requests=True,
                                       batch_size=batch_size if isinstance(batch_size, int) else 1,
                                       **common) if tokenizer else None
        self.chat = chat_cls(tokenizer_backend=None, **common)
        for api in (self.completions, self.scoring, self.chat):
            if api is not None:
                api.client = client
        self._prompt_logprobs: bool | None = None

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Completions cut at the first stop string (servers differ in whether they include it)."""
        from lm_eval.models.utils import handle_stop_sequences

        outputs = self.completions.generate_until(requests, disable_tqdm=disable_tqdm)
        return [_cut(text or "", handle_stop_sequences(dict(r.args[1]).get("until"), eos=None))
                for text, r in zip(outputs, requests, strict=True)]

    def generate_chat(self, conversations: Sequence[list[dict[str, str]]], *, max_gen_toks: int | None = None,
                      ) -> list[str]:
        """The next assistant turn of each conversation, rendered by the server with its model's template."""
        from lm_eval.api.instance import Instance
        from lm_eval.models.api_models import JsonChatStr

        requests = [Instance(request_type="generate_until", doc={}, idx=0, arguments=(
            JsonChatStr(json.dumps(messages)), {"max_gen_toks": max_gen_toks or 256, "do_sample": False, "until": []}))
            for messages in conversations]
        return [(text or "").strip() for text in self.chat.generate_until(requests, disable_tqdm=True)]

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self._scorer().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        return self._scorer().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def _scorer(self) -> Any:
        """Log-likelihoods need the server's log-probabilities of the prompt's own tokens, and a local copy of the
        served model's tokenizer to know where a context ends: probe once, refuse in one line."""
        if self.scoring is None:
            raise BenchError(f"scoring log-likelihoods of served model {self.model_name!r} needs its tokenizer here",
                             "pass --tokenizer with a folder or zoo:NAME holding the served model's tokenizer")
        if self._prompt_logprobs is None:
            reply = self.client.post("completions", {"model": self.model_name, "prompt": "The capital of France is",
                                                     "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": 1})
            self._prompt_logprobs = _has_prompt_logprobs(reply)
        if not self._prompt_logprobs:
            raise BenchError(f"the server at {self.client.base} returns no prompt log-probabilities (echo + logprobs) "
                             f"for {self.model_name!r}, so it cannot score log-likelihoods (perplexity)",
                             "serve it with a server that does (e.g. `vllm serve`), or evaluate its weights with "
                             "--backend hf or vllm; generation suites work as they are")
        return self.scoring


def _cut(text: str, stops: Sequence[str]) -> str:
    hits = [text.index(stop) for stop in stops if stop and stop in text]
    return text[: min(hits)] if hits else text


def _has_prompt_logprobs(reply: Any) -> bool:
    """True when a completions reply to an ``echo`` request carries a log-probability for prompt tokens."""
    try:
        token_logprobs = reply["choices"][0]["logprobs"]["token_logprobs"]
    except (KeyError, IndexError, TypeError):
        return False
    return isinstance(token_logprobs, list) and sum(x is not None for x in token_logprobs) >= 2
