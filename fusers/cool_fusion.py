"""Cool-Fusion: training-free, segment-level text fusion of LLMs with different tokenizers.

Paper: https://arxiv.org/abs/2407.19807 (only the abstract was available; the details below are
FuseBench's spec, ``docs/fusion-algorithms.md`` §8 and §12). Per generation request:

1. **Propose.** Every member greedily extends the shared text ``c`` (prompt + accepted segments)
   with its own tokenizer until its segment ``s`` ends at a *common word boundary*:

   * in every member's tokenization of ``c + s + next piece`` no token straddles ``len(c + s)``
     (checked with offset mappings), so all tokenizers can stop exactly there; and
   * the next token the proposer generated starts a new word (whitespace or punctuation; ``_``
     counts as a word character) — we generate one token past the boundary to know that.

   A member stops early at EOS (an *EOS candidate*, which may be empty) and at ``max_seg_tokens``
   (a *capped* candidate, taken as is). Identical candidates are merged (first proposer wins).
2. **Rerank.** Every member scores every candidate by the log-probability of the *segment's*
   tokens only: ``tok_k(c + s)`` beyond the longest common prefix with ``tok_k(c)`` (plus the
   member's EOS for an EOS candidate). Per member that is normalised by its own token count
   ``n_k``; ``agg`` combines the members (lower is better):

   * ``mean_ppl``:  mean_k exp(-lp_k / n_k)        (the paper's token-normalised perplexity)
   * ``mean_logppl``: mean_k (-lp_k / n_k)         (geometric mean, less dominated by one model)
   * ``mean_logprob_per_char``: -mean_k lp_k / len(s)  (tokenizer-agnostic, less length bias)

   A member that sees no new token for a candidate is left out of that candidate's mean.
3. **Accept** the best candidate, append it to ``c``, and stop at an EOS candidate, at an ``until``
   string (the text is cut before it), or when the budget is spent.

**Budget.** ``max_gen_toks`` counts tokens: generation stops once the generated text, re-tokenised
by *any* member, reaches that many tokens, and is cut at the end of that member's
``max_gen_toks``-th token (so a single member reproduces its own greedy generation of that length).
Requests asking for more than the config's ``max_gen_toks`` are capped at it (a runtime fuser is
K×K times slower than one model). A context is left-truncated (at a character position) so that every
member keeps room for the generation; generation also stops when a member's context would overflow.

**KV caches** (``use_cache=True``). Each member keeps a ``DynamicCache`` of the accepted prefix's
tokens; proposing and scoring feed only the new tokens and then crop the cache back. After an
acceptance the member re-tokenises ``c``; when the old tokens are a prefix of the new ones (what
the common-boundary rule is designed to guarantee) only the new tokens are fed, otherwise the cache
is rebuilt from scratch and ``stats["fallbacks"]`` counts it (this happens e.g. when the *prompt*
ends mid-token for some tokenizer, like ``"A:"`` when a tokenizer has a ``":▁"`` token). With
``use_cache=False`` every forward pass re-encodes the whole sequence; both paths see exactly the
same token sequences, so they produce the same text (tested).

**Log-likelihoods.** ``loglikelihood(context, continuation)`` and ``loglikelihood_rolling(text)`` are
defined as the *mean of the members' log-probabilities*, each member scoring the text with its own
tokenizer through lm-eval's ``HFLM`` (``is_greedy`` is true only when it is for every member). That
is the log of the geometric mean of the sequence probabilities — not a normalised distribution, but
tokenizer-agnostic, so bits/byte, multiple-choice and every other suite can score the fused model.

What a seed changes: nothing; every member decodes greedily and the reranking is deterministic.

Run::

    bench run --fuser cool-fusion
    bench run --fuser cool-fusion --sources zoo:gpt2-code,zoo:neox-docs --set agg=mean_logppl
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from lm_eval.api.model import LM
from pydantic import BaseModel, ConfigDict, Field

from harness.api import FuseContext, Fuser, FusionResult
from harness.errors import BenchError

if TYPE_CHECKING:
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from harness.model import ModelRef

log = logging.getLogger(__name__)

Agg = Literal["mean_ppl", "mean_logppl", "mean_logprob_per_char"]


class CoolFusion(Fuser):
    """Segment-level generate-and-rerank across heterogeneous sources (a runtime model)."""

    name: ClassVar[str] = "cool-fusion"
    paper: ClassVar[str] = "https://arxiv.org/abs/2407.19807"
    runtime_only: ClassVar[bool] = True
    default_sources: ClassVar[list[str]] = ["zoo:gpt2-code", "zoo:neox-docs", "zoo:mpt-math"]

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        max_seg_tokens: int = Field(16, ge=1, description="Longest segment a member proposes (its own tokens).")
        agg: Agg = Field("mean_ppl", description="How the members' segment scores are combined.")
        max_gen_toks: int = Field(128, ge=1, description="Default and cap of new tokens per request.")
        use_cache: bool = Field(True, description="Per-member KV caches of the accepted prefix.")

    def fuse(self, sources: list[ModelRef], target: ModelRef | None, cfg: BaseModel, ctx: FuseContext) -> FusionResult:
        if not sources:
            raise BenchError("cool-fusion needs at least one source", "pass --sources A,B")
        names = [s.name for s in sources]
        batch_size = ctx.batch_size

        def factory() -> CoolFusionLM:
            from harness.model import as_lm, check_members_fit, load_hf

            check_members_fit(sources, "cool-fusion")  # all members are held at once: refuse before loading any
            members = [as_lm(*load_hf(ref), batch_size=batch_size) for ref in sources]
            return CoolFusionLM(members, names=names, max_seg_tokens=cfg.max_seg_tokens, agg=cfg.agg,
                                max_gen_toks=cfg.max_gen_toks, use_cache=cfg.use_cache)

        details: dict[str, Any] = {"members": names, **cfg.model_dump(mode="json")}
        if target is not None:
            details["ignored_target"] = target.spec  # no target in Cool-Fusion; recorded, not used
        return FusionResult(runtime=factory, details=details)


# --- the runtime model --------------------------------------------------------------------------


@dataclass
class Candidate:
    """One proposed segment: its text, who proposed it, and why it ended ('boundary'|'eos'|'cap')."""

    text: str
    member: int
    kind: str
    score: float = math.nan
    lookahead: str = ""  # for 'boundary': the proposer's next piece, which starts a new word

    @property
    def eos(self) -> bool:
        return self.kind == "eos"


@dataclass
class Step:
    """One accepted segment, kept in ``CoolFusionLM.trace`` for tests and inspection."""

    context: str
    candidates: list[Candidate]
    accepted: int


class CoolFusionLM(LM):
    """An lm-eval ``LM`` over member ``HFLM``s that generates by Cool-Fusion (see the module doc)."""

    def __init__(self, members: Sequence[HFLM], *, names: Sequence[str] | None = None, max_seg_tokens: int = 16,
                 agg: Agg = "mean_ppl", max_gen_toks: int = 128, use_cache: bool = True) -> None:
        super().__init__()
        if not members:
            raise BenchError("cool-fusion needs at least one member", "pass --sources A,B")
        from harness.lmeval import ensure_context_length

        for member in members:
            ensure_context_length(member)  # e.g. MPT's max_seq_len, which HFLM does not read
        self.members = list(members)
        self.names = list(names) if names else [f"member{i}" for i in range(len(members))]
        self.max_seg_tokens = max_seg_tokens
        self.agg: Agg = agg
        self.max_gen_toks = max_gen_toks
        self.use_cache = use_cache
        self.tokenizer = None  # no single tokenizer: suites report tokenizer-agnostic metrics only
        self.trace: list[Step] = []  # steps of the latest generate_until call
        self.stats = {"steps": 0, "fallbacks": 0, "rescored": 0, "forward_tokens": 0}

    # --- log-likelihoods: mean of the members' (see module doc) ---

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        per_member = [m.loglikelihood(requests, disable_tqdm=True) for m in self.members]
        return [(sum(float(res[i][0]) for res in per_member) / len(per_member),
                 all(bool(res[i][1]) for res in per_member)) for i in range(len(requests))]

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        per_member = [m.loglikelihood_rolling(requests, disable_tqdm=True) for m in self.members]
        return [sum(float(res[i]) for res in per_member) / len(per_member) for i in range(len(requests))]

    # --- generation ---

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        self.trace = []
        out = []
        for context, gen_kwargs in (r.args for r in requests):
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            if kwargs.get("do_sample") or kwargs.get("temperature", 0.0) > 0:
                log.warning("cool-fusion decodes greedily; do_sample/temperature are ignored")
            until = [s for s in handle_stop_sequences(kwargs.pop("until", None), eos=None) if s]
            budget = min(int(kwargs["max_gen_toks"]), self.max_gen_toks)
            out.append(self.generate(context, until=until, max_gen_toks=budget))
        return out

    def generate(self, context: str | Sequence[str], *, until: Sequence[str] = (),
                 max_gen_toks: int | None = None) -> str:
        """Cool-Fusion decoding of one prompt; returns the generated text only.

        ``context`` is one prompt for every member, or one per member (each member's own chat template:
        :meth:`generate_chat`); candidates are always the same text appended after each member's context.
        """
        import torch

        budget = max_gen_toks or self.max_gen_toks
        given = [context] * len(self.members) if isinstance(context, str) else list(context)
        if len(given) != len(self.members):
            raise ValueError(f"{len(given)} contexts for {len(self.members)} members")
        contexts = [self._fit_context(m, c, budget) for m, c in zip(self.members, given, strict=True)]
        sessions = [_Session(m, c, self.use_cache, self.stats) for m, c in zip(self.members, contexts, strict=True)]
        start_lens = [len(s.ids) for s in sessions]
        generated = ""
        with torch.no_grad():
            while True:
                if any(len(s.ids) + self.max_seg_tokens + 2 > s.member.max_length for s in sessions):
                    break  # a member's context is full
                candidates = self._propose(sessions, contexts, generated)
                self._score(sessions, contexts, generated, candidates)
                best = min(range(len(candidates)), key=lambda i: candidates[i].score)
                self.trace.append(Step(contexts[0] + generated, candidates, best))
                self.stats["steps"] += 1
                winner = candidates[best]
                generated += winner.text
                hit = [generated.find(stop) for stop in until if stop in generated]
                if hit:
                    return generated[: min(hit)]
                if winner.eos or not winner.text:
                    return generated  # EOS, or a segment of only skipped special tokens
                for session, ctx in zip(sessions, contexts, strict=True):
                    session.accept(ctx + generated)
                spent = [len(s.ids) - n0 for s, n0 in zip(sessions, start_lens, strict=True)]
                if max(spent) >= budget:
                    return self._cut_to_budget(contexts, generated, budget, start_lens)
        return generated

    def generate_chat(self, conversations: Sequence[list[dict[str, str]]], *, max_gen_toks: int | None = None,
                      ) -> list[str]:
        """The next assistant turn of each conversation, every member prompted through its OWN chat template
        (a plain ``User: / Assistant:`` transcript for a member without one) and generation stopped at any
        member's end-of-turn marker. Prompting all members with one plain transcript made real chat models
        echo the transcript ("Assistant: Assistant: ...")."""
        from harness.chat_data import chat_prompt, turn_stops

        stops = turn_stops(member.tokenizer for member in self.members)
        out = []
        for messages in conversations:
            contexts = [chat_prompt(member.tokenizer, messages) for member in self.members]
            out.append(self.generate(contexts, until=stops, max_gen_toks=max_gen_toks).strip())
        return out

    def _propose(self, sessions: list[_Session], contexts: list[str], generated: str) -> list[Candidate]:
        """Each member's greedy segment up to a common word boundary (or EOS / the length cap)."""
        candidates: list[Candidate] = []
        for k, session in enumerate(sessions):
            cand = self._propose_one(k, session, contexts, generated)
            if all(c.text != cand.text or c.eos != cand.eos for c in candidates):
                candidates.append(cand)
        return candidates

    def _propose_one(self, k: int, session: _Session, contexts: list[str], generated: str) -> Candidate:
        tokens: list[int] = []
        segments = [""]  # segments[j]: decoded text of tokens[:j]
        logprobs = session.last
        try:
            while True:
                token = int(logprobs.argmax())
                if token == session.member.eot_token_id:
                    return Candidate(segments[-1], k, "eos")
                tokens.append(token)
                segments.append(session.segment_text(tokens))
                prev, new = segments[-2], segments[-1]
                if len(tokens) > 1 and prev.strip() and new.startswith(prev) and _starts_word(new[len(prev):]) \
                        and not prev.endswith("\ufffd") and self._common_boundary(contexts, generated + new,
                                                                                 len(generated + prev)):
                    return Candidate(prev, k, "boundary", lookahead=new[len(prev):])
                if len(tokens) > self.max_seg_tokens:
                    return Candidate(segments[self.max_seg_tokens], k, "cap")
                logprobs = session.feed([token])[-1]
        finally:
            session.rewind()

    def _common_boundary(self, contexts: list[str], generated: str, pos: int) -> bool:
        """True when no member's tokenization of its context + ``generated`` has a token straddling
        character ``pos`` of ``generated``."""
        for member, context in zip(self.members, contexts, strict=True):
            enc = member.tokenizer(context + generated, add_special_tokens=False, return_offsets_mapping=True)
            at = len(context) + pos
            if any(start < at < end for start, end in enc["offset_mapping"]):
                return False
        return True

    def _score(self, sessions: list[_Session], contexts: list[str], generated: str,
               candidates: list[Candidate]) -> None:
        """Set each candidate's aggregated score (lower is better)."""
        for cand in candidates:
            per_member: list[tuple[float, int]] = []  # (log-prob of the segment tokens, their count)
            for session, context in zip(sessions, contexts, strict=True):
                lp, n = session.segment_logprob(context + generated + cand.text, eos=cand.eos)
                if n:
                    per_member.append((lp, n))
            cand.score = _aggregate(self.agg, per_member, len(cand.text))

    def _fit_context(self, member: HFLM, context: str, budget: int) -> str:
        """Left-truncate ``context`` (at a character) so that ``member`` has room for the generation."""
        room = min(budget + self.max_seg_tokens + 2, member.max_length // 2)
        keep = member.max_length - room - 1
        offsets = member.tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return context[offsets[len(offsets) - keep][0]:] if len(offsets) > keep else context

    def _cut_to_budget(self, contexts: list[str], generated: str, budget: int, start_lens: list[int]) -> str:
        """Cut ``generated`` at the end of the ``budget``-th token of the member that spent it first."""
        end = len(generated)
        for member, context, n0 in zip(self.members, contexts, start_lens, strict=True):
            offsets = member.tokenizer(context + generated, add_special_tokens=False,
                                       return_offsets_mapping=True)["offset_mapping"]
            lead = 0 if context else 1  # the prefix token an empty prompt starts with
            last = n0 - lead + budget - 1
            if last < len(offsets):
                end = min(end, max(0, offsets[last][1] - len(context)))
        return generated[:end]


# --- one member's view of one request -----------------------------------------------------------


class _Session:
    """A member's accepted tokens, their KV cache (or none), and the next-token log-probs after them.

    ``feed`` appends tentative tokens (proposing, scoring) and ``rewind`` drops them again; ``accept``
    moves to the re-tokenised new text. Without a cache every forward pass re-encodes the whole
    sequence, so both modes compute the same quantities from the same token ids.
    """

    def __init__(self, member: HFLM, text: str, use_cache: bool, stats: dict[str, int]) -> None:
        self.member = member
        self.use_cache = use_cache
        self.stats = stats
        # An empty prompt starts from the member's prefix token (BOS/EOS), as HFLM does.
        self.lead = [] if text else [member.prefix_token_id]
        self.ids: list[int] = []
        self.pending: list[int] = []
        self.cache: Any = None
        self.last: torch.Tensor
        self._reset(self.encode(text))

    def encode(self, text: str) -> list[int]:
        return self.lead + self.member.tokenizer(text, add_special_tokens=False)["input_ids"]

    def segment_text(self, tokens: list[int]) -> str:
        """The text ``tokens`` add after the accepted ids (decoded together, so leading spaces survive)."""
        decode = self.member.tokenizer.decode
        if not hasattr(self, "_base") or self._base[0] != len(self.ids):
            self._base = (len(self.ids), decode(self.ids, skip_special_tokens=True))
        return decode(self.ids + tokens, skip_special_tokens=True)[len(self._base[1]):]

    def feed(self, tokens: list[int]) -> torch.Tensor:
        """Log-probs (len(tokens), V) of the next token after each of ``tokens``, appended tentatively."""
        if self.use_cache:
            rows = self._forward(tokens, self.cache)
        else:
            rows = self._forward(self.ids + self.pending + tokens, None)[-len(tokens):]
        self.pending += tokens
        return rows

    def rewind(self) -> None:
        if self.use_cache and self.pending:
            self.cache.crop(-len(self.pending))  # this transformers API takes how many tokens to drop
        self.pending = []

    def accept(self, text: str) -> None:
        """Move to ``text``'s tokens, feeding only the new ones when the old ids are their prefix."""
        self.rewind()
        new = self.encode(text)
        if not self.use_cache or new[: len(self.ids)] != self.ids:
            if self.use_cache:
                self.stats["fallbacks"] += 1
            self._reset(new)
        elif len(new) > len(self.ids):
            self.last = self.feed(new[len(self.ids):])[-1]
            self.ids, self.pending = new, []

    def segment_logprob(self, text: str, *, eos: bool) -> tuple[float, int]:
        """(log-prob, count) of the tokens of ``text`` beyond the common prefix with the accepted ids."""
        import torch

        full = self.encode(text) + ([self.member.eot_token_id] if eos else [])
        p = _common_prefix(full, self.ids)
        if p == len(full):
            return 0.0, 0
        targets = torch.tensor(full[p:])
        if p == len(self.ids):
            rows = torch.cat([self.last[None], self.feed(full[p:-1])]) if len(full) - p > 1 else self.last[None]
            self.rewind()
        else:  # the text re-tokenised differently inside the accepted ids: score from scratch
            self.stats["rescored"] += 1
            rows = self._forward(full[: len(full) - 1], None, keep_cache=False)[p - 1:] if p else None
            if rows is None:  # nothing precedes the first token: it cannot be scored
                rows = self._forward(full, None, keep_cache=False)[:-1]
                targets = targets[1:]
        return float(rows.gather(-1, targets[:, None]).sum()), len(targets)

    def _reset(self, ids: list[int]) -> None:
        self.cache, self.pending = None, []
        self.ids = ids
        self.last = self._forward(ids, None)[-1]

    def _forward(self, ids: list[int], cache: Any, keep_cache: bool = True) -> torch.Tensor:
        import torch

        self.stats["forward_tokens"] += len(ids)
        model = self.member.model
        use = self.use_cache and keep_cache
        out = model(torch.tensor([ids], device=model.device), past_key_values=cache if use else None, use_cache=use)
        if use:
            self.cache = out.past_key_values
        return torch.log_softmax(out.logits[0].float(), dim=-1).cpu()


# --- small helpers ------------------------------------------------------------------------------


def _starts_word(piece: str) -> bool:
    """Does a generated piece begin a new word (whitespace or punctuation; '_' is a word character)?"""
    return bool(piece) and piece[0] != "\ufffd" and not (piece[0].isalnum() or piece[0] == "_")


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _aggregate(agg: Agg, per_member: list[tuple[float, int]], n_chars: int) -> float:
    """Combine (segment log-prob, token count) per member into one score; lower is better."""
    if not per_member:
        return math.inf
    if agg == "mean_ppl":
        return sum(math.exp(min(-lp / n, 700.0)) for lp, n in per_member) / len(per_member)
    if agg == "mean_logppl":
        return sum(-lp / n for lp, n in per_member) / len(per_member)
    return -sum(lp for lp, _ in per_member) / len(per_member) / max(1, n_chars)
