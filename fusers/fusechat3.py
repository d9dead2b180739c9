"""FuseChat-3.0: implicit fusion. The target learns from the sources' sampled, rewarded answers: SFT, then DPO.

Yang et al., "FuseChat-3.0: Preference Optimization Meets Heterogeneous Model Fusion",
https://arxiv.org/abs/2503.04222 (spec ``fusion-algorithms.md`` §6.5; what is verified there is the README's
recipe, the rest is marked UNVERIFIED below). No distribution of a source is used, only its text, so sources of any
architecture and vocabulary fuse alike:

1. **Sampling.** Every source answers every prompt ``samples_per_prompt`` times (the README: 5 for instruction
   prompts, ``code_samples_per_prompt`` = 8 for code), at ``temperature`` 0.8, ``top_p`` 0.95,
   ``repetition_penalty`` 1.0, per source overridable (``source_sampling``: the README samples Qwen at 0.7 / 0.8 /
   1.05), seeded by the run's seed, top-k off, cached by content (:mod:`harness.sampling`). Prompts: the built-in
   conversations (``domains``, default math, whose answers are verifiable) or ``data=PATH``; a source answers
   through its chat template, or through a conversation's ``completion_prompt`` where it has one (``prompt_style``).
2. **Scoring** with ProFuser's reward plugins (:mod:`fusers._rewards`): ``math_steps`` (default; verifiable partial
   credit, so the tiny zoo's answers differ), ``math``, ``code``, ``reward_model:PATH`` (the paper: ArmoRM),
   ``judge``. Several rewards **add up, weighted** (``reward_weights``, default 1 each): one score per answer, on
   which "best", "worst" and the margin window are read, so weigh rewards of different scales accordingly.
3. **Split** of the prompts, seeded: ``sft_fraction`` (0.4, the README's 4:6) for SFT, the rest for DPO.
4. **SFT** on the best answer over all sources of each SFT prompt (the loss on response tokens only), for
   ``sft_steps``. A prompt whose answers all score alike carries no preference and is left out (counted).
5. **DPO** (``preference=dpo``) on one (best, worst) pair per DPO prompt, both from the **same source**, kept when
   its reward margin lies in ``[margin_min, margin_max]`` (and is above 0). The README's window is 0.01-0.1 on
   ArmoRM's scale; FuseBench's default 0.01-1.0 keeps any real difference on the [0, 1] scale of ``math_steps``
   (the zoo's answers are right or wrong: margins are mostly 0 or 1, and an upper bound below 1 would keep
   nothing). Where several sources' pairs qualify, the pair whose chosen answer scores highest is used (then the
   larger margin, then the earlier source): FuseBench's choice, the README does not say. The reference model is
   the SFT model, frozen; its log-probs are computed once before DPO (as TRL's ``precompute_ref_log_probs``) so that
   one model is kept. ``beta``, ``dpo_lr``, ``dpo_steps``, ``length_normalize`` (the log-ratios divided by the
   response's tokens, TRL's ``sigmoid_norm``). UNVERIFIED: FuseChat-3.0's β, learning rates, epochs and whether its
   DPO is length-normalised; FuseBench defaults to plain DPO with β = 0.1. Dropout is off during DPO (TRL's
   default), so the policy starts equal to the reference.
6. **WRPO** (``preference=wrpo``; Yang et al., https://arxiv.org/abs/2412.03187): the target samples too; per DPO
   prompt the rejected answer ``y_l`` is the target's worst, and the chosen reward mixes the best answer ``y_ws``
   of the sources other than the target and the target's own best ``y_wt``:
   ``-log σ(α·r(y_ws) + (1-α)·r(y_wt) - r(y_l))`` with ``r = β·log πθ/πref``, α rising linearly from 0 to
   ``wrpo_alpha`` over the DPO steps. UNVERIFIED (the spec says WRPO's details are): that the target samples
   before SFT (FuseBench: the initial target, so its samples are cached like the sources'), the α schedule's shape
   and end value, and the filter: FuseBench keeps a prompt when the target's own (best, worst) margin lies in the
   window, as DPO's same-source rule, and the sources' best answer scores above ``y_l`` (else it is counted in
   ``source_not_better``).

Losses (:mod:`fusers.distill.preference`) are tested against TRL's ``DPOTrainer`` and ``SFTTrainer``. Training runs
under ``accelerate`` (``bench run --processes N``); the main process alone samples and scores. Recorded with the
model: the counts (prompts, samples, SFT items, pairs kept and why the others were not, pairs per source, best-answer
wins per source), the curves (SFT loss, then DPO loss with the chosen / rejected rewards, reward accuracy, margin
and α per step; ``phase_dpo`` marks the DPO steps of ``total``) and the stages' seconds. ``--control`` trains the
SFT-only control: the same prompts and total steps, SFT on every prompt's best answer, no DPO.

What a seed changes: the samples, the SFT/DPO split and the order of the training batches.

The defaults (400 math prompts, 48 new tokens, 20 SFT + 20 DPO steps of 8) are sized for the tiny zoo: a default run
(sampling included, then cached) took about 2 minutes on 2 busy cores. Real checkpoints want far more prompts and
steps, and the paper's ``margin_max=0.1`` with ArmoRM.

Run::

    bench run --fuser fusechat3 --suite perplexity              # zoo: gpt2-code <- gpt2-code, neox-docs, mpt-math
    bench run --fuser fusechat3 --set preference=wrpo --control
    bench run --fuser fusechat3 --set 'rewards=["reward_model:/models/ArmoRM"]' --set margin_max=0.1 \\
        --set data=prompts.jsonl --sources A,B,C --target T
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.api import FuseContext, Fuser, FusionResult
from harness.atomic import atomic_file
from harness.errors import BenchError

if TYPE_CHECKING:
    import numpy as np

    from harness.chat_data import Conversation
    from harness.model import ModelRef

#: Where a completion-style answer ends (ProFuser's): a blank line, or the next ``Q:`` of a run-on few-shot format.
COMPLETION_STOP = ("\n\n", "\nQ:")


class SamplingOverride(BaseModel):
    """One source's own sampling settings (``source_sampling``); unset fields keep the run's."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, gt=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0)


class FuseChat3(Fuser):
    """Implicit fusion: SFT on the sources' best sampled answers, then DPO (or WRPO) on same-source pairs."""

    name: ClassVar[str] = "fusechat3"
    #: Part of the runner's artifact key: bump when the same config would now train a different model.
    version: ClassVar[str] = "1"
    paper: ClassVar[str] = "https://arxiv.org/abs/2503.04222"
    runtime_only: ClassVar[bool] = False
    distributed: ClassVar[bool] = True
    default_sources: ClassVar[list[str]] = ["zoo:gpt2-code", "zoo:neox-docs", "zoo:mpt-math"]
    default_target: ClassVar[str] = "zoo:gpt2-code"
    default_suites: ClassVar[list[str]] = ["perplexity", "bbh-mini", "mtbench"]

    @classmethod
    def control_config(cls, cfg: BaseModel) -> BaseModel:
        """The SFT-only control (``--control``): the same target, prompts, samples, seed and total steps, SFT on the
        best answer of every prompt (the DPO prompts too), no preference step."""
        steps = cfg.sft_steps + cfg.dpo_steps  # type: ignore[attr-defined]
        # no preference step, so DPO's and WRPO's runs share one control (one cache key)
        return cfg.model_copy(update={"sft_fraction": 1.0, "sft_steps": steps, "dpo_steps": 0, "preference": "dpo"})

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        rewards: list[str] = Field(default_factory=lambda: ["math_steps"], description=(
            "Rewards, added up (weighted): math, math_steps, code, reward_model:PATH, judge[:URL|MODEL]."))
        reward_weights: list[float] | None = Field(None, description="One weight per reward (default: 1 each).")
        prompt_style: Literal["auto", "chat", "completion"] = Field(
            "auto", description="How models are prompted: chat template, or a conversation's completion_prompt "
                                "(auto: the latter where there is one).")
        allow_code_exec: bool = Field(False, description="Let the code reward run model-written code (sandboxed).")
        judge_url: str | None = Field(None, description="OpenAI-compatible endpoint for the judge reward.")
        judge_model: str | None = Field(None, description="Judge model name (at judge_url, or a local model).")
        data: str | None = Field(None, description="Your prompts: conversations (JSONL, parquet, datasets folder); "
                                                   "their last assistant turn is ignored (default: built-in).")
        prompts: int = Field(400, ge=2, description="Prompts: the first N of data's conversations, else built-in.")
        domains: list[str] = Field(default_factory=lambda: ["math"],
                                   description="Built-in prompts' domains (math has verifiable answers).")
        samples_per_prompt: int = Field(5, ge=2, description="Answers sampled per prompt and model.")
        code_samples_per_prompt: int = Field(8, ge=2, description="Answers per prompt of the code domain.")
        temperature: float = Field(0.8, gt=0.0, description="Sampling temperature.")
        top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling's probability mass.")
        repetition_penalty: float = Field(1.0, gt=0.0, description="transformers' repetition penalty (1: none).")
        source_sampling: dict[str, SamplingOverride] = Field(default_factory=dict, description=(
            "Per-model overrides by spec, e.g. {\"zoo:neox-docs\": {\"temperature\": 0.7, \"top_p\": 0.8}}."))
        max_new_tokens: int = Field(48, ge=1, description="Longest sampled answer, in the model's tokens.")
        sample_batch_size: int = Field(32, ge=1, description="Prompts per generate call.")
        sft_fraction: float = Field(0.4, ge=0.0, le=1.0, description="Share of the prompts used for SFT.")
        margin_min: float = Field(0.01, ge=0.0, description="Smallest reward margin of a DPO pair.")
        margin_max: float = Field(1.0, gt=0.0, description="Largest reward margin of a DPO pair.")
        preference: Literal["dpo", "wrpo"] = Field("dpo", description="The preference step: DPO or WRPO.")
        beta: float = Field(0.1, gt=0.0, description="β of DPO / WRPO.")
        length_normalize: bool = Field(False, description="Divide each log-ratio by its response's tokens.")
        wrpo_alpha: float = Field(0.5, ge=0.0, le=1.0, description="WRPO's final weight of the source's answer.")
        sft_steps: int = Field(20, ge=0, description="SFT steps.")
        dpo_steps: int = Field(20, ge=0, description="DPO / WRPO steps.")
        batch_size: int = Field(8, ge=1, description="Sequences (SFT) or pairs (DPO) per step.")
        seq_len: int = Field(256, ge=16, description="Longest training sequence (tokens); longer ones are skipped.")
        sft_lr: float | None = Field(None, gt=0.0, description=(
            "SFT peak learning rate; default 5e-6 for real checkpoints (UNVERIFIED), 5e-4 for the tiny zoo."))
        dpo_lr: float | None = Field(None, gt=0.0, description=(
            "DPO peak learning rate; default 5e-7 for real checkpoints (UNVERIFIED), 1e-4 for the tiny zoo."))
        warmup_steps: int = Field(4, ge=0, description="Linear warmup steps of each phase.")

        @field_validator("rewards")
        @classmethod
        def _known_rewards(cls, specs: list[str]) -> list[str]:
            from fusers._rewards import check_reward_specs

            return check_reward_specs(specs)

        @field_validator("data")
        @classmethod
        def _data_exists(cls, value: str | None) -> str | None:
            if value is not None and not Path(value).expanduser().exists():
                raise ValueError(f"data {value!r} does not exist (give conversations: JSONL, parquet, a datasets "
                                 "folder)")
            return value

        @model_validator(mode="after")
        def _consistent(self) -> FuseChat3.Config:
            from fusers._rewards import check_code_opt_in

            if self.margin_min > self.margin_max:
                raise ValueError(f"margin_min={self.margin_min} exceeds margin_max={self.margin_max}; "
                                 "set margin_min <= margin_max")
            if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
                raise ValueError(f"reward_weights has {len(self.reward_weights)} weights for {len(self.rewards)} "
                                 "rewards; give one weight per reward")
            if self.sft_steps + self.dpo_steps == 0:
                raise ValueError("sft_steps + dpo_steps must be at least 1")
            check_code_opt_in(self.rewards, self.allow_code_exec)
            return self

    def fuse(self, sources: list[ModelRef], target: ModelRef | None, cfg: BaseModel, ctx: FuseContext) -> FusionResult:
        if not sources:
            raise BenchError("fusechat3 needs sources", "pass --sources A,B (the target defaults to the first)")
        return _Run(cfg, sources, target, ctx).run()


# --- pure pieces: split, best answer, pairs ------------------------------------------------------------------------


def split_prompts(n: int, sft_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(SFT prompt indices, DPO prompt indices)``: a seeded shuffle of ``range(n)``, the first
    ``round(n·sft_fraction)`` for SFT; both sorted."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(n)
    k = int(round(n * sft_fraction))
    return sorted(order[:k].tolist()), sorted(order[k:].tolist())


def top_answer(scores: Sequence[Sequence[float]]) -> tuple[int, int, float]:
    """``(source, sample, score)`` of the highest score of ``scores[source][sample]`` (ties: the earliest)."""
    flat = [(s, j, float(v)) for s, row in enumerate(scores) for j, v in enumerate(row)]
    return max(flat, key=lambda t: (t[2], -t[0], -t[1]))


def best_answer(scores: Sequence[Sequence[float]]) -> tuple[int, int] | None:
    """``(source, sample)`` of the highest score of ``scores[source][sample]`` (ties: the earliest), or None when
    every answer scores alike (no preference to learn)."""
    if len({v for row in scores for v in row}) <= 1:
        return None
    s, j, _ = top_answer(scores)
    return s, j


@dataclass(frozen=True)
class Pair:
    """One source's (best, worst) answers to a prompt: sample indices, the chosen one's score and the margin."""

    source: int
    chosen: int
    rejected: int
    chosen_score: float
    margin: float


def source_pair(scores: Sequence[float], source: int = 0) -> Pair:
    """The (best, worst) of one source's answers (ties: the earliest best, the latest worst)."""
    chosen = max(range(len(scores)), key=lambda j: (scores[j], -j))
    rejected = min(range(len(scores)), key=lambda j: (scores[j], -j))
    return Pair(source, chosen, rejected, float(scores[chosen]), float(scores[chosen] - scores[rejected]))


def margin_status(margin: float, margin_min: float, margin_max: float) -> str:
    """Where a pair's margin falls: ``tied`` (0), ``below`` margin_min, ``above`` margin_max, else ``kept``."""
    if margin <= 0:
        return "tied"
    if margin < margin_min:
        return "below"
    if margin > margin_max:
        return "above"
    return "kept"


def choose_pair(scores: Sequence[Sequence[float]], margin_min: float, margin_max: float
                ) -> tuple[Pair | None, list[str]]:
    """A DPO prompt's pair: among the sources whose own (best, worst) margin lies in the window, the one whose
    chosen answer scores highest (then the larger margin, then the earlier source); None when none does. Also
    returns every source's :func:`margin_status`."""
    pairs = [source_pair(row, s) for s, row in enumerate(scores)]
    status = [margin_status(p.margin, margin_min, margin_max) for p in pairs]
    kept = [p for p, st in zip(pairs, status, strict=True) if st == "kept"]
    if not kept:
        return None, status
    return max(kept, key=lambda p: (p.chosen_score, p.margin, -p.source)), status


def combined_scores(per_reward: Sequence[Sequence[float]], weights: Sequence[float]) -> list[float]:
    """One score per answer: the weighted sum over rewards of ``per_reward[reward][answer]``."""
    return [sum(w * row[i] for w, row in zip(weights, per_reward, strict=True)) for i in range(len(per_reward[0]))]


# --- the run -------------------------------------------------------------------------------------------------------


class _Run:
    """One FuseChat-3.0 run: samples -> scores -> split -> SFT -> (reference log-probs) -> DPO / WRPO."""

    def __init__(self, cfg: FuseChat3.Config, sources: list[ModelRef], target: ModelRef | None, ctx: FuseContext):
        from fusers.common import default_lr

        self.cfg, self.ctx = cfg, ctx
        self.pivot = target if target is not None else sources[0]
        seen: set[str] = set()
        self.sources = []  # distinct weights; the target too when it is listed among the sources
        for ref in sources:
            if ref.content_hash() not in seen:
                seen.add(ref.content_hash())
                self.sources.append(ref)
        self.sft_lr = cfg.sft_lr if cfg.sft_lr is not None else default_lr(self.pivot, paper=5e-6, zoo=5e-4)
        self.dpo_lr = cfg.dpo_lr if cfg.dpo_lr is not None else default_lr(self.pivot, paper=5e-7, zoo=1e-4)
        known = {r.spec for r in [*self.sources, self.pivot]}
        unknown = [k for k in cfg.source_sampling if k not in known]
        if unknown:
            raise BenchError(f"source_sampling names {unknown[0]!r}, which is neither a source nor the target",
                             f"key it by one of: {', '.join(sorted(known))}")

    def run(self) -> FusionResult:
        from fusers import distill as D
        from fusers._rewards import judge_usage

        cfg, timings = self.cfg, self.ctx.timings
        acc = D.make_accelerator()
        prompts = self._prompts()
        models = [*self.sources] + ([self.pivot] if cfg.preference == "wrpo" else [])
        with timings.stage("sample"), acc.main_process_first():  # the main process samples; the others read its cache
            samples = [self._samples(ref, prompts) for ref in models]
        with timings.stage("reward"):
            rewards = self._rewards() if acc.is_main_process else []
            scores = D.main_process_value(acc, self._scores(rewards, prompts, samples) if acc.is_main_process else None)
        k = len(self.sources)
        sft_idx, dpo_idx = split_prompts(len(prompts), cfg.sft_fraction, self.ctx.seed)

        from harness.model import load_hf

        model, tokenizer = load_hf(self.pivot, dtype="float32")
        self.tokenizer = tokenizer
        self.encoder = D.ChunkEncoder(tokenizer)
        names = [r.spec for r in self.sources]
        sft_items, sft_counts = self._sft_items(prompts, samples[:k], scores[:k], sft_idx, names)
        if cfg.preference == "dpo":
            pref_items, pair_counts = self._dpo_items(prompts, samples[:k], scores[:k], dpo_idx, names)
        else:
            pref_items, pair_counts = self._wrpo_items(prompts, samples, scores, dpo_idx, names)
        if cfg.sft_steps and not sft_items:
            raise BenchError(f"fusechat3 has no SFT item for its {cfg.sft_steps} SFT steps ({sft_counts['undecided']} "
                             f"of {len(sft_idx)} SFT prompts scored alike, {sft_counts['skipped_too_long']} too long)",
                             "give more prompts or a reward that tells the answers apart, or set sft_steps=0")
        if cfg.dpo_steps and not pref_items:
            raise BenchError(f"fusechat3 has no preference pair for its {cfg.dpo_steps} DPO steps: of "
                             f"{len(dpo_idx)} DPO prompts, {pair_counts['outside_window']} had no pair with a margin in "
                             f"[{cfg.margin_min}, {cfg.margin_max}] ({pair_counts['source_pairs']})"
                             + (f", {pair_counts['source_not_better']} had no source answer better than the target's "
                                "worst" if pair_counts.get("source_not_better") else "")
                             + f", {pair_counts['skipped_too_long']} were longer than seq_len={cfg.seq_len}",
                             "widen margin_min / margin_max, give more prompts or samples_per_prompt, raise seq_len, "
                             "or set dpo_steps=0")

        stats = {}
        pad = self.encoder.eos_id
        if cfg.sft_steps:
            with timings.stage("sft"):
                model, stats["sft"] = self._train(acc, model, D.ResponseCorpus(sft_items, pad), cfg.sft_steps,
                                                  self.sft_lr, D.response_ce_loss(D.mean_across_processes(acc)),
                                                  "fusechat3 sft")
        if cfg.dpo_steps:
            if cfg.sft_steps:  # the SFT model, reloaded whole: the frozen reference and the start of DPO
                model = self._reload(acc, model, tokenizer)
            _disable_dropout(model)
            corpus = D.PreferenceCorpus(pref_items, pad)
            with timings.stage("reference_logps"):
                corpus.ref_logps = D.reference_logps(model, corpus, batch_size=cfg.batch_size)
            schedule = D.PreferenceSchedule(cfg.wrpo_alpha, cfg.dpo_steps) if cfg.preference == "wrpo" else None
            loss = D.preference_loss(cfg.preference, cfg.beta, length_normalize=cfg.length_normalize,
                                     schedule=schedule, reduce=D.mean_across_processes(acc))
            with timings.stage("dpo"):
                model, stats["dpo"] = self._train(acc, model, corpus, cfg.dpo_steps, self.dpo_lr, loss,
                                                  f"fusechat3 {cfg.preference}",
                                                  on_step=schedule.advance if schedule else None)
        out_dir = Path(self.ctx.out_dir)
        model.eval()
        D.save_trained(acc, model, tokenizer, out_dir)

        details = self._details(stats, prompts, samples, scores, names, sft_idx, dpo_idx, sft_items, sft_counts,
                                pref_items, pair_counts)
        details.update({"judge_usage": judge_usage(rewards), "distributed": D.distributed_details(acc),
                        "timings": {key: round(v, 2) for key, v in timings.items()}})
        return FusionResult(path=out_dir, details=details)

    # --- data -----------------------------------------------------------------------------------------------------

    def _prompts(self) -> list[Conversation]:
        from harness.chat_data import default_conversations, load_conversations

        cfg = self.cfg
        if cfg.data is None:
            return default_conversations(cfg.prompts, seed=1, domains=tuple(cfg.domains))
        prompts = load_conversations(cfg.data, limit=cfg.prompts)
        if len(prompts) < 2:
            raise BenchError(f"{cfg.data} holds {len(prompts)} conversation; fusechat3 needs at least 2 prompts",
                             "give more conversations")
        return prompts

    def _as_completion(self, conv: Conversation) -> bool:
        return conv.completion_prompt is not None and self.cfg.prompt_style in ("auto", "completion")

    def _n_samples(self, conv: Conversation) -> int:
        return self.cfg.code_samples_per_prompt if conv.domain == "code" else self.cfg.samples_per_prompt

    def _sampling(self, ref: ModelRef) -> dict[str, float]:
        cfg = self.cfg
        out = {"temperature": cfg.temperature, "top_p": cfg.top_p, "repetition_penalty": cfg.repetition_penalty}
        override = cfg.source_sampling.get(ref.spec)
        if override is not None:
            out.update({k: v for k, v in override.model_dump().items() if v is not None})
        return out

    def _samples(self, ref: ModelRef, prompts: list[Conversation]) -> list[list[str]]:
        """``ref``'s sampled answers to every prompt, ``[prompt][sample]``, cached by content (model weights,
        prompts, sampling settings, seed): the same run samples the same answers."""
        from fusers import distill as D
        from harness import paths
        from harness.chat_data import render_prompt, turn_stops
        from harness.logs import quiet
        from harness.model import load_hf
        from harness.sampling import sample_responses

        cfg, sampling = self.cfg, self._sampling(ref)
        styles = [self._as_completion(p) for p in prompts]
        counts = [self._n_samples(p) for p in prompts]
        key = D.store_key("fusechat3-samples", ref.content_hash(), [p.id for p in prompts], [_prompt_text(p) for p in
                          prompts], styles, counts, sampling, cfg.max_new_tokens, cfg.sample_batch_size, self.ctx.seed)
        cached = paths.cache_dir() / "fusechat3" / "samples" / f"{key}.json"
        if cached.is_file():
            return json.loads(cached.read_text())
        model, tok = load_hf(ref)
        out: list[list[str]] = [[] for _ in prompts]
        with quiet():
            for completion, stop in ((False, turn_stops([tok])), (True, list(COMPLETION_STOP))):
                for n in sorted(set(counts)):
                    idx = [i for i in range(len(prompts)) if styles[i] == completion and counts[i] == n]
                    if not idx:
                        continue
                    texts = [prompts[i].completion_prompt if completion else render_prompt(prompts[i], tok)
                             for i in idx]
                    group_seed = int(hashlib.sha256(f"{self.ctx.seed}:{completion}:{n}".encode()).hexdigest()[:12], 16)
                    answers = sample_responses(model, tok, texts, stop, n=n, max_new_tokens=cfg.max_new_tokens,
                                               seed=group_seed, batch_size=cfg.sample_batch_size,
                                               progress=f"fusechat3 sampling {ref.name} (x{n})", **sampling)
                    for i, a in zip(idx, answers, strict=True):
                        out[i] = a
        with atomic_file(cached) as partial:
            partial.write_text(json.dumps(out))
        return out

    def _rewards(self) -> list[Any]:
        from fusers._rewards import make_reward

        rewards = []
        for spec in self.cfg.rewards:
            options: dict[str, Any] = {}
            if spec.split(":")[0].strip().lower() == "judge" and ":" not in spec:
                options = {k: v for k, v in (("url", self.cfg.judge_url), ("model", self.cfg.judge_model)) if v}
            rewards.append(make_reward(spec, **options))
        return rewards

    def _scores(self, rewards: list[Any], prompts: list[Conversation], samples: list[list[list[str]]]
                ) -> list[list[list[float]]]:
        """``scores[model][prompt][sample]``: every reward scores every answer in one batched call; the rewards'
        weighted sum is the answer's score."""
        flat = [(i, _prompt_text(p), p.reference) for i, p in enumerate(prompts)]
        prompt_texts = [t for m in samples for (i, t, _) in flat for _ in m[i]]
        refs = [r for m in samples for (i, _, r) in flat for _ in m[i]]
        responses = [a for m in samples for row in m for a in row]
        per_reward = []
        for reward in rewards:
            values = [float(v) for v in reward.score(prompt_texts, responses, refs)]
            if len(values) != len(responses):
                raise RuntimeError(f"reward {reward.name!r} returned {len(values)} scores for {len(responses)} answers")
            per_reward.append(values)
        weights = self.cfg.reward_weights or [1.0] * len(rewards)
        total = combined_scores(per_reward, weights)
        out, at = [], 0
        for m in samples:
            rows = []
            for row in m:
                rows.append(total[at:at + len(row)])
                at += len(row)
            out.append(rows)
        return out

    def _sequence(self, conv: Conversation, answer: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``conv`` answered by ``answer``, rendered with the target's template and tokenized after EOS, with its
        response mask; None when longer than ``seq_len``."""
        import numpy as np

        from fusers import distill as D
        from harness.chat_data import render, with_response

        rendered = render(with_response(conv, answer), self.tokenizer)
        tz = self.encoder.encode(D.TextChunk(0, rendered.text, True))
        if len(tz.ids) > self.cfg.seq_len:
            return None
        rows = D.rows_predicting(tz, D.text_byte_spans(rendered.text, rendered.response_spans))
        return np.asarray(tz.ids, dtype=np.int64), np.concatenate([[False], rows[:-1]])

    def _sft_items(self, prompts: list[Conversation], samples: list[list[list[str]]], scores: list[list[list[float]]],
                   idx: list[int], names: list[str]) -> tuple[list[Any], dict[str, Any]]:
        items, wins = [], dict.fromkeys(names, 0)
        undecided = too_long = 0
        for i in idx:
            best = best_answer([scores[s][i] for s in range(len(names))])
            if best is None:
                undecided += 1
                continue
            seq = self._sequence(prompts[i], samples[best[0]][i][best[1]])
            if seq is None:
                too_long += 1
                continue
            items.append(seq)
            wins[names[best[0]]] += 1
        return items, {"prompts": len(idx), "items": len(items), "undecided": undecided,
                       "skipped_too_long": too_long, "best_answer_wins": wins}

    def _dpo_items(self, prompts: list[Conversation], samples: list[list[list[str]]], scores: list[list[list[float]]],
                   idx: list[int], names: list[str]) -> tuple[list[Any], dict[str, Any]]:
        cfg = self.cfg
        items, per_source = [], dict.fromkeys(names, 0)
        statuses = {"kept": 0, "tied": 0, "below": 0, "above": 0}
        outside = too_long = 0
        for i in idx:
            pair, status = choose_pair([scores[s][i] for s in range(len(names))], cfg.margin_min, cfg.margin_max)
            for st in status:
                statuses[st] += 1
            if pair is None:
                outside += 1
                continue
            answers = samples[pair.source][i]
            chosen, rejected = self._sequence(prompts[i], answers[pair.chosen]), self._sequence(prompts[i],
                                                                                              answers[pair.rejected])
            if chosen is None or rejected is None:
                too_long += 1
                continue
            items.append([chosen, rejected])
            per_source[names[pair.source]] += 1
        return items, {"prompts": len(idx), "pairs": len(items), "outside_window": outside,
                       "skipped_too_long": too_long, "source_pairs": statuses, "pairs_per_source": per_source}

    def _wrpo_items(self, prompts: list[Conversation], samples: list[list[list[str]]], scores: list[list[list[float]]],
                    idx: list[int], names: list[str]) -> tuple[list[Any], dict[str, Any]]:
        """WRPO triples (best source answer, the target's best, the target's worst); ``samples[-1]`` and
        ``scores[-1]`` are the target's own."""
        cfg = self.cfg
        # y_ws comes from the other models: the target's own answers are y_wt and y_l already
        others = [m for m, ref in enumerate(self.sources) if ref.content_hash() != self.pivot.content_hash()]
        if not others:
            raise BenchError("WRPO needs a source other than the target", "add --sources, or set preference=dpo")
        items, per_source = [], dict.fromkeys(names, 0)
        statuses = {"kept": 0, "tied": 0, "below": 0, "above": 0}
        outside = too_long = source_not_better = 0
        for i in idx:
            own = source_pair(scores[-1][i])
            status = margin_status(own.margin, cfg.margin_min, cfg.margin_max)
            statuses[status] += 1
            if status != "kept":
                outside += 1
                continue
            top, j, source_score = top_answer([scores[m][i] for m in others])
            s = others[top]
            if source_score <= own.chosen_score - own.margin:  # the sources' best is no better than y_l
                source_not_better += 1
                continue
            seqs = [self._sequence(prompts[i], a) for a in (samples[s][i][j], samples[-1][i][own.chosen],
                                                           samples[-1][i][own.rejected])]
            if any(q is None for q in seqs):
                too_long += 1
                continue
            items.append(seqs)
            per_source[names[s]] += 1
        return items, {"prompts": len(idx), "pairs": len(items), "outside_window": outside,
                       "skipped_too_long": too_long, "source_pairs": statuses, "pairs_per_source": per_source,
                       "source_not_better": source_not_better}

    # --- training -------------------------------------------------------------------------------------------------

    def _train(self, acc: Any, model: Any, corpus: Any, steps: int, lr: float, loss: Any, label: str,
               on_step: Any = None) -> tuple[Any, Any]:
        from fusers import distill as D
        from harness.train import TrainConfig

        cfg = self.cfg
        model.train()
        train_cfg = TrainConfig(steps=steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=lr,
                                warmup_steps=min(cfg.warmup_steps, steps), seed=self.ctx.seed)
        return D.train_with_accelerate(model, corpus, train_cfg, loss, accelerator=acc, progress=label,
                                       on_step=on_step)

    def _reload(self, acc: Any, model: Any, tokenizer: Any) -> Any:
        """The SFT-trained model as a whole, unprepared model: written (gathered, if sharded) to a scratch folder and
        loaded back by every process, so that DPO prepares a fresh model and optimizer."""
        from transformers import AutoModelForCausalLM

        from fusers import distill as D

        scratch = Path(self.ctx.out_dir) / "_sft"
        D.save_trained(acc, model, tokenizer, scratch)
        acc.free_memory()  # the SFT model, its optimizer and dataloader are no longer prepared
        reloaded = AutoModelForCausalLM.from_pretrained(scratch, dtype="float32", local_files_only=True)
        acc.wait_for_everyone()  # every process has read it
        if acc.is_main_process:
            shutil.rmtree(scratch)
        return reloaded.to(acc.device)

    # --- details --------------------------------------------------------------------------------------------------

    def _details(self, stats: dict[str, Any], prompts: list[Conversation], samples: list[Any], scores: list[Any],
                 names: list[str], sft_idx: list[int], dpo_idx: list[int], sft_items: list[Any],
                 sft_counts: dict[str, Any], pref_items: list[Any], pair_counts: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        sft, dpo = stats.get("sft"), stats.get("dpo")
        curves: dict[str, list[float]] = {"total": [], "phase_dpo": [], "lr": [], "grad_norm": []}
        if sft is not None:
            curves["total"] += sft.extras["sft"]
            curves["sft"] = sft.extras["sft"]
        if dpo is not None:
            curves["total"] += dpo.extras["dpo"]
            for key in ("dpo", "chosen_reward", "rejected_reward", "reward_accuracy", "reward_margin", "alpha"):
                if key in dpo.extras:
                    curves[key] = dpo.extras[key]
        for phase, s in (("sft", sft), ("dpo", dpo)):
            if s is not None:
                curves["phase_dpo"] += [1.0 if phase == "dpo" else 0.0] * s.steps
                curves["lr"] += [float(f"{x:.4g}") for x in s.extras.get("lr", [])]
                curves["grad_norm"] += [round(x, 4) for x in s.extras.get("grad_norm", [])]
        curves = {k: [round(float(x), 6) for x in v] for k, v in curves.items()}
        n_models = len(samples)
        return {
            "target": self.pivot.spec,
            "sources": names,
            "preference": cfg.preference,
            "train": {phase: s.summary() for phase, s in stats.items()},
            "loss_curves": curves,
            "prompts": {"given": len(prompts), "sft": len(sft_idx), "dpo": len(dpo_idx),
                        "source": cfg.data or "built-in"},
            "samples": {"models": n_models, "answers": sum(len(row) for m in samples for row in m),
                        "per_prompt": sorted({len(row) for m in samples for row in m}),
                        "sampling": {r.spec: self._sampling(r) for r in [*self.sources, self.pivot]}},
            "sft": sft_counts,
            "pairs": {**pair_counts, "margin_window": [cfg.margin_min, cfg.margin_max]},
            "rewards": {"specs": cfg.rewards, "weights": cfg.reward_weights or [1.0] * len(cfg.rewards),
                        "mean_score": {r.spec: round(_mean(scores[m]), 4)
                                       for m, r in enumerate([*self.sources, self.pivot][:n_models])}},
            "examples": [{"prompt": _prompt_text(prompts[i]),
                          "answers": {names[s]: samples[s][i][:2] for s in range(len(names))},
                          "scores": {names[s]: scores[s][i] for s in range(len(names))}} for i in range(2)],
            "lr": {"sft": self.sft_lr, "dpo": self.dpo_lr},
        }


def _mean(rows: list[list[float]]) -> float:
    values = [v for row in rows for v in row]
    return sum(values) / len(values) if values else 0.0


def _prompt_text(conv: Conversation) -> str:
    return "\n".join(m.content for m in conv.prompt_messages)


def _disable_dropout(model: Any) -> None:
    """Dropout off (TRL's ``disable_dropout``): the policy's log-probs at the first DPO step equal the reference's."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
