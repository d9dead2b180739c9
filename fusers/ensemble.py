"""Ensemble: inference-time mixture of the source models (a runtime model, no weights are written).

This is the "Ensemble" baseline of FuseLLM's comparison with weight merging
(https://arxiv.org/abs/2401.10491, Table 7): the fused model's next-token distribution is the
weighted mixture of the sources' distributions,

    p(y | x) = Σ_k w_k p_k(y | x),        w_k = 1/K by default,

at K times the inference cost. That needs one vocabulary, so two levels exist:

* **token level** (members share one vocabulary: identical token→id maps and output sizes, as in the
  zoo's Llama family or GPT-2 with the same tokenizer). Log-likelihoods sum
  ``log Σ_k w_k p_k(token)`` over the continuation tokens; ``loglikelihood_rolling`` uses the shared
  rolling windows; generation decodes greedily from the mixture, each member with its own KV cache.
* **sequence level** (different tokenizers). FuseLLM defines no ensemble for this case; FuseBench's
  definition is a mixture of *sequence* probabilities. Each member scores the text with its own
  tokenizer and ``log p(text | ctx) = log Σ_k w_k exp(ll_k)`` (a document-level mixture, so
  rolling log-likelihoods and bits/byte are tokenizer-agnostic). Generation is LLM-Blender-style
  selection (https://arxiv.org/abs/2306.02561; cf. "Top1-PPL" in FuseChat v2): every member decodes
  greedily and the candidate with the highest mixture log-likelihood *per UTF-8 byte* given the
  context wins: Top1-PPL made tokenizer-agnostic. (The total log-probability favoured short answers:
  a real chat model's fluent paragraph lost to a tiny model's two-byte "an".) An empty candidate is
  only returned when all are empty. ``is_greedy`` of a continuation is that of the member
  contributing most to its mixture probability.

Chat prompts (MT-Bench) go through :meth:`EnsembleLM.generate_chat`: each member reads the
conversation through its own chat template (the plain ``User: / Assistant:`` transcript without one)
and generation stops at any member's end-of-turn marker.

``level="auto"`` picks token level whenever the vocabularies are shared. Decoding is always greedy
(``do_sample`` is ignored with a warning); a request for more new tokens than a context holds
generates half a context instead of failing.

What a seed changes: nothing; the mixture is exact and decoding greedy.

Run::

    bench run --fuser ensemble --sources zoo:llama-code,zoo:llama-docs,zoo:llama-math
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from lm_eval.api.model import TemplateLM  # light: no torch import
from pydantic import BaseModel, ConfigDict, Field

from harness.api import FuseContext, Fuser, FusionResult
from harness.errors import BenchError

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from harness.model import ModelRef

log = logging.getLogger(__name__)

Level = Literal["auto", "token", "sequence"]


class Ensemble(Fuser):
    """Inference-time mixture of the sources' probabilities (token level, or sequence level across tokenizers)."""

    name: ClassVar[str] = "ensemble"
    paper: ClassVar[str] = "https://arxiv.org/abs/2401.10491"
    runtime_only: ClassVar[bool] = True
    default_sources: ClassVar[list[str]] = ["zoo:llama-code", "zoo:llama-docs", "zoo:llama-math"]

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        weights: list[float] | None = Field(None, description="Mixture weight per source (normalised; default 1/K).")
        level: Level = Field("auto", description="token (shared vocabulary), sequence, or auto.")

    def fuse(self, sources: list[ModelRef], target: ModelRef | None, cfg: BaseModel, ctx: FuseContext) -> FusionResult:
        if not sources:
            raise BenchError("the ensemble needs at least one source", "pass --sources A,B")
        weights = normalise_weights(cfg.weights, len(sources))
        level = _level_from_files(sources, cfg.level)
        names = [s.name for s in sources]
        batch_size = ctx.batch_size

        def factory() -> EnsembleLM:
            from harness.model import as_lm, check_members_fit, load_hf

            check_members_fit(sources, "the ensemble")  # all members are held at once: refuse before loading any
            members = [as_lm(*load_hf(ref), batch_size=batch_size) for ref in sources]
            return EnsembleLM(members, weights, level=level, names=names, batch_size=batch_size)

        details = {"members": names, "weights": weights, "level": level}
        if target is not None:
            details["ignored_target"] = target.spec  # an ensemble has no target; recorded, not used
        return FusionResult(runtime=factory, details=details)


def normalise_weights(weights: Sequence[float] | None, k: int) -> list[float]:
    """Weights summing to 1 (equal by default); BenchError on a wrong count or sign."""
    if weights is None:
        return [1.0 / k] * k
    if len(weights) != k:
        raise BenchError(f"{len(weights)} ensemble weights for {k} sources", f"give exactly {k} weights or none")
    if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise BenchError(f"invalid ensemble weights {list(weights)}", "use non-negative weights with a positive sum")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def shared_vocabulary(tokenizers: Sequence[Any], output_sizes: Sequence[int | None]) -> bool:
    """True when every member maps the same strings to the same ids and predicts over as many ids."""
    first = tokenizers[0].get_vocab()
    same_ids = all(t.get_vocab() == first for t in tokenizers[1:])
    sizes = {s for s in output_sizes if s is not None}
    return same_ids and len(sizes) <= 1


def _level_from_files(sources: list[ModelRef], requested: Level) -> Literal["token", "sequence"]:
    """Decide the level from tokenizers and configs alone (no weights are loaded at fuse time)."""
    if requested == "sequence":
        return "sequence"
    from_files = _shared_vocabulary_from_files(sources)
    if from_files is not None:
        return _resolve_level(requested, from_files, [s.name for s in sources])
    from transformers import AutoConfig, AutoTokenizer

    tokenizers, sizes = [], []
    for ref in sources:
        kwargs: dict[str, Any] = {"local_files_only": True} if ref.path is not None else {"revision": ref.revision}
        tokenizers.append(AutoTokenizer.from_pretrained(ref.load_id, **kwargs))
        sizes.append(getattr(AutoConfig.from_pretrained(ref.load_id, **kwargs), "vocab_size", None))
    return _resolve_level(requested, shared_vocabulary(tokenizers, sizes), [s.name for s in sources])


def _shared_vocabulary_from_files(sources: list[ModelRef]) -> bool | None:
    """Compare ``tokenizer.json`` vocabularies and ``config.json`` widths without importing transformers
    (keeps a cached re-run fast); None when a source has no such files (hub ids, slow tokenizers)."""
    import json

    signatures = set()
    for ref in sources:
        if ref.path is None or not (ref.path / "tokenizer.json").is_file() or not (ref.path / "config.json").is_file():
            return None
        tok = json.loads((ref.path / "tokenizer.json").read_text())
        added = sorted((t["id"], t["content"]) for t in tok.get("added_tokens", []))
        width = json.loads((ref.path / "config.json").read_text()).get("vocab_size")
        signatures.add(json.dumps([tok.get("model", {}).get("vocab"), added, width], sort_keys=True))
    return len(signatures) == 1


def _resolve_level(requested: Level, shared: bool, names: list[str]) -> Literal["token", "sequence"]:
    if requested == "sequence":
        return "sequence"
    if shared:
        return "token"
    if requested == "token":
        raise BenchError(f"cannot ensemble {', '.join(names)} at token level: their vocabularies differ",
                         "use level=sequence (or auto) for members with different tokenizers")
    return "sequence"


# --- the runtime model --------------------------------------------------------------------------


class EnsembleLM(TemplateLM):
    """An lm-eval ``LM`` over member ``HFLM``s: token-level or sequence-level mixture (see module doc)."""

    def __init__(self, members: Sequence[HFLM], weights: Sequence[float] | None = None, *, level: Level = "auto",
                 names: Sequence[str] | None = None, batch_size: int = 8, max_gen_toks: int = 256) -> None:
        import torch

        super().__init__()
        if not members:
            raise BenchError("the ensemble needs at least one member", "pass --sources A,B")
        from harness.lmeval import ensure_context_length

        self.members = list(members)
        for member in self.members:
            ensure_context_length(member)  # e.g. MPT's max_seq_len, which HFLM does not read
        self.names = list(names) if names else [f"member{i}" for i in range(len(members))]
        self.weights = normalise_weights(weights, len(members))
        self.log_weights = torch.tensor([math.log(w) if w > 0 else -math.inf for w in self.weights])
        self.batch_size_per_call = batch_size
        self._max_gen_toks = max_gen_toks
        shared = shared_vocabulary([m.tokenizer for m in self.members], [_output_size(m) for m in self.members])
        self.level: Literal["token", "sequence"] = _resolve_level(level, shared, self.names)
        # Token level exposes the shared tokenizer (the perplexity suite then reports token perplexity);
        # at sequence level there is no single tokenizer.
        self.tokenizer = self.members[0].tokenizer if self.level == "token" else None

    # --- what TemplateLM needs (token level reuses member 0's tokenization exactly) ---

    @property
    def eot_token_id(self) -> int:
        return self.members[0].eot_token_id

    @property
    def prefix_token_id(self) -> int:
        return self.members[0].prefix_token_id

    @property
    def max_length(self) -> int:
        return min(m.max_length for m in self.members)

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.members[0].tok_encode(string, add_special_tokens=add_special_tokens, **kwargs)

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return self.members[0].tok_decode(tokens, skip_special_tokens=skip_special_tokens)

    # --- the three request types ---

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if self.level == "sequence":
            return self._sequence_loglikelihood([r.args for r in requests])
        return super().loglikelihood(requests, disable_tqdm=True)

    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]], **kwargs: Any
                              ) -> list[tuple[float, bool]]:
        return self._score_tokens([(ctx, cont) for _, ctx, cont in requests])

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        if self.level == "sequence":
            per_member = [m.loglikelihood_rolling(requests, disable_tqdm=True) for m in self.members]
            return [_mix(self.weights, [lls[i] for lls in per_member]) for i in range(len(requests))]

        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []
        for i, (text,) in enumerate(r.args for r in requests):
            tokens = self.tok_encode(text)
            for window in get_rolling_token_windows(token_list=tokens, prefix_token=self.prefix_token_id,
                                                    max_seq_len=self.max_length, context_len=1):
                windows.append(make_disjoint_window(window))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, self._score_tokens(windows), strict=True):
            totals[i] += ll
        return totals

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        if self.level == "sequence":
            contexts = [r.args[0] for r in requests]
            return self._select_candidates([contexts] * len(self.members), [r.args[1] for r in requests])
        return [self._generate_one(context, gen_kwargs) for context, gen_kwargs in (r.args for r in requests)]

    def generate_chat(self, conversations: Sequence[list[dict[str, str]]], *, max_gen_toks: int | None = None,
                      ) -> list[str]:
        """The next assistant turn of each conversation, every member reading it through its OWN chat template
        (the plain ``User: / Assistant:`` transcript for a member without one), stopped at any member's
        end-of-turn marker. Token level decodes the mixture with each member conditioned on its own rendering
        (the vocabulary is shared, the prompts need not be); sequence level lets each member answer its own
        rendering and keeps the answer with the highest ``log Σ_k w_k p_k(answer | member k's prompt)`` per byte."""
        from harness.chat_data import chat_prompt, turn_stops

        stops = turn_stops(member.tokenizer for member in self.members)
        gen_kwargs = {"until": stops, "max_gen_toks": max_gen_toks or self.max_gen_toks, "do_sample": False}
        contexts = [[chat_prompt(member.tokenizer, messages) for messages in conversations] for member in self.members]
        if self.level == "sequence":
            answers = self._select_candidates(contexts, [gen_kwargs] * len(conversations))
        else:
            answers = [self._generate_one([ctx[i] for ctx in contexts], gen_kwargs) for i in range(len(conversations))]
        return [answer.strip() for answer in answers]

    # --- token level ---

    def _score_tokens(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(log Σ_k w_k p_k(continuation | context), greedy?) per (context ids, continuation ids) pair.

        Inputs are right-padded (causal attention never looks right, as in HFLM) and longest-first
        batched; only the continuation positions' logits are kept per member.
        """
        import torch
        import torch.nn.functional as F

        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        inputs = [(ctx + cont)[-(self.max_length + 1):][:-1] for ctx, cont in pairs]
        order = sorted((i for i in range(len(pairs)) if pairs[i][1]), key=lambda i: -len(inputs[i]))
        bs = max(1, self.batch_size_per_call)
        with torch.no_grad():
            for start in range(0, len(order), bs):
                batch = order[start : start + bs]
                width = max(len(inputs[i]) for i in batch)
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, : len(inputs[i])] = torch.tensor(inputs[i])
                # per member: list over rows of (C_i, V) log-probs at the continuation positions
                member_logps: list[list[torch.Tensor]] = []
                for m in self.members:
                    logits = m.model(ids.to(m.device)).logits  # (B, T, V)
                    rows = []
                    for row, i in enumerate(batch):
                        n_in, n_cont = len(inputs[i]), len(pairs[i][1])
                        rows.append(F.log_softmax(logits[row, n_in - n_cont : n_in].float(), dim=-1).cpu())
                    member_logps.append(rows)
                for row, i in enumerate(batch):
                    mixed = self._mix_logprobs([lp[row] for lp in member_logps])  # (C, V)
                    cont = torch.tensor(pairs[i][1])
                    ll = mixed.gather(-1, cont[:, None]).sum().item()
                    results[i] = (float(ll), bool((mixed.argmax(-1) == cont).all()))
        return results

    def _mix_logprobs(self, logps: list[Any]) -> Any:
        """log Σ_k w_k p_k over K tensors of log-probs with equal shapes (..., V)."""
        import torch

        stacked = torch.stack(logps)  # (K, ..., V)
        shape = (-1,) + (1,) * (stacked.dim() - 1)
        return torch.logsumexp(stacked + self.log_weights.view(shape), dim=0)

    def _generate_one(self, context: str | Sequence[str], gen_kwargs: dict[str, Any]) -> str:
        """Greedy decoding from the token mixture; each member keeps its own KV cache. ``context`` is one prompt
        for all members or one per member (their own chat templates' renderings)."""
        import torch
        from lm_eval.models.utils import (
            handle_stop_sequences,
            normalize_gen_kwargs,
            postprocess_generated_text,
        )

        kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
        eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
        if kwargs.get("do_sample") or kwargs.get("temperature", 0.0) > 0:
            log.warning("the ensemble decodes greedily; do_sample/temperature are ignored")
        max_gen = _generation_budget(int(kwargs["max_gen_toks"]), self.max_length)
        contexts = [context] * len(self.members) if isinstance(context, str) else list(context)
        prompts = [(m.tok_encode(c, left_truncate_len=self.max_length - max_gen) if c else []) or [self.prefix_token_id]
                   for m, c in zip(self.members, contexts, strict=True)]
        # a stop that is one special token (``<|im_end|>``) is invisible in the decoded text: stop on its id
        stop_ids = {self.eot_token_id} | _special_token_ids(self.members[0].tokenizer, until)

        generated: list[int] = []
        caches: list[Any] = [None] * len(self.members)
        step_ids = [torch.tensor([ids]) for ids in prompts]
        longest = max(len(ids) for ids in prompts)
        with torch.no_grad():
            while len(generated) < max_gen and longest + len(generated) < self.max_length:
                logps = []
                for k, m in enumerate(self.members):
                    out = m.model(step_ids[k].to(m.device), past_key_values=caches[k], use_cache=True)
                    caches[k] = out.past_key_values
                    logps.append(torch.log_softmax(out.logits[0, -1].float(), dim=-1).cpu())
                token = int(self._mix_logprobs(logps).argmax())
                if token in stop_ids:
                    break
                generated.append(token)
                text = self.tok_decode(generated)
                if any(stop and stop in text for stop in until):
                    break
                step_ids = [torch.tensor([[token]])] * len(self.members)
        return postprocess_generated_text(generation=self.tok_decode(generated), stop=until, think_end_token=None)

    # --- sequence level ---

    def _sequence_loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """Mixture of the members' sequence probabilities, each scored with its own tokenizer."""
        return self._mixture_scores([pairs] * len(self.members))

    def _mixture_scores(self, pairs_per_member: list[list[tuple[str, str]]]) -> list[tuple[float, bool]]:
        """``(log Σ_k w_k p_k(cont_i | ctx_ki), greedy?)`` where member k scores its own pairs ``(ctx_ki, cont_i)``."""
        per_member = [m.loglikelihood([_instance("loglikelihood", pair) for pair in pairs], disable_tqdm=True)
                      for m, pairs in zip(self.members, pairs_per_member, strict=True)]
        out = []
        for i in range(len(pairs_per_member[0])):
            lls = [float(res[i][0]) for res in per_member]
            dominant = max(range(len(lls)), key=lambda k: _log(self.weights[k]) + lls[k])
            out.append((_mix(self.weights, lls), bool(per_member[dominant][i][1])))
        return out

    def _select_candidates(self, contexts: list[list[str]], gen_kwargs: list[dict[str, Any]]) -> list[str]:
        """Member k answers its prompts ``contexts[k]``; per request keep the candidate with the highest mixture
        log-likelihood per byte, each member scoring it after its own prompt."""
        n = len(gen_kwargs)
        candidates = [m.generate_until([_fit_generation(_instance("generate_until", (ctx[i], gen_kwargs[i])), m)
                                        for i in range(n)], disable_tqdm=True)
                      for m, ctx in zip(self.members, contexts, strict=True)]  # (K, N)
        where = [(i, text) for i in range(n) for text in dict.fromkeys(c[i] for c in candidates) if text]
        scores = self._mixture_scores([[(ctx[i], text) for i, text in where] for ctx in contexts]) if where else []
        best: dict[int, tuple[float, str]] = {}
        for (i, text), (ll, _) in zip(where, scores, strict=True):
            per_byte = ll / len(text.encode())
            if i not in best or per_byte > best[i][0]:
                best[i] = (per_byte, text)
        return [best[i][1] if i in best else "" for i in range(n)]


# --- small helpers ------------------------------------------------------------------------------


def _generation_budget(requested: int, max_length: int) -> int:
    """New tokens to generate: as asked, or half the context when more is asked than it holds."""
    return requested if requested < max_length else max(1, max_length // 2)


def _fit_generation(request: Instance, member: HFLM) -> Instance:
    """The request with ``max_gen_toks`` cut to what the member's context holds (HFLM asserts otherwise)."""
    from lm_eval.models.utils import normalize_gen_kwargs

    context, gen_kwargs = request.args
    requested = int(normalize_gen_kwargs(dict(gen_kwargs), member.max_gen_toks)["max_gen_toks"])
    budget = _generation_budget(requested, member.max_length)
    if budget == requested:
        return request
    return _instance("generate_until", (context, {**gen_kwargs, "max_gen_toks": budget}))


def _special_token_ids(tokenizer: Any, stops: Sequence[str]) -> set[int]:
    """Ids of the stops that are a single special token (dropped when decoding, so never seen as text)."""
    ids: set[int] = set()
    for stop in stops:
        encoded = tokenizer(stop, add_special_tokens=False)["input_ids"] if stop else []
        if len(encoded) == 1 and not tokenizer.decode(encoded, skip_special_tokens=True):
            ids.add(int(encoded[0]))
    return ids


def _output_size(member: HFLM) -> int | None:
    head = member.model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else getattr(member.model.config, "vocab_size", None)


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _mix(weights: Sequence[float], lls: Sequence[float]) -> float:
    """log Σ_k w_k exp(ll_k), computed stably."""
    terms = [_log(w) + ll for w, ll in zip(weights, lls, strict=True)]
    top = max(terms)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(t - top) for t in terms))


def _instance(request_type: str, arguments: tuple[Any, ...]) -> Instance:
    from lm_eval.api.instance import Instance

    return Instance(request_type=request_type, doc={}, arguments=arguments, idx=0)  # type: ignore[arg-type]
