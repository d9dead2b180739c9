"""ProFuser: fusion that judges the sources in inference mode first, then in training mode, progressively.

Shi et al., "ProFuser: Progressive Fusion of Large Language Models", https://arxiv.org/abs/2408.04998 (spec
``fusion-algorithms.md`` §7; the reference code could not be retrieved, so the defaults are FuseBench's own).
Existing fusion methods measure a source's *advantage* only in training mode: its cross-entropy on a
ground-truth response (MinCE). ProFuser also measures it in inference mode: what the sources actually
generate, judged by a reward. The target (initialised from the pivot) is trained on

* **inference-mode data**: every source answers every prompt (greedy); the rewards vote for the best answer
  (``rewards``: ``math`` = exact final number, ``code`` = unit tests in the sandbox, ``reward_model:PATH`` = an
  HF sequence-classification model, ``judge`` = an LLM judge, ``math_steps`` (default) = the share of verified
  arithmetic steps; several rewards vote by plurality); the winner's
  answer becomes the response, and the winner's own distribution over it (teacher-forced, aligned into the
  target's vocabulary) the soft target. Prompts where the rewards see no difference are left out. A source
  answers through its chat template, or, where a conversation carries a ``completion_prompt`` in a base
  model's own format (the built-in math problems: ``Q: ...\nA:``), through that (``prompt_style``).
* **training-mode data**: conversations with ground-truth responses; per dialogue the candidate (the pivot's
  own distribution or an aligned source) with the lowest response CE per byte wins (MinCE, as FuseLLM).

Your own data (``data=PATH``: JSONL, parquet, a ``datasets`` folder, text files, or a folder of them) replaces
the built-in conversations: its conversations serve both modes, and its plain-text rows (only a ``text``
field; ``corpus_chars`` of them) are training-mode documents with the loss on every token. Text has no
prompts to answer, so a text-only ``data`` keeps the built-in prompts for inference mode.

Both with ``λ·SFT + (1-λ)·soft CE`` on response tokens only. The **schedule** is ``two_stage`` (all
inference-mode steps, then all training-mode steps: easy to hard, the paper's default) or ``linear_mix``
(each step is an inference-mode batch with probability ``1 - t/T``); the mode of every step is logged
(``loss_curves.inference_mode``), and how often each source won in each mode is recorded with the model
(``wins``, the paper's key statistic).

What a seed changes (``--seed``, ``--seeds``): the order of the training batches and, with
``schedule=linear_mix``, which steps are inference-mode steps; the sources answer greedily and the rewards
are deterministic (an LLM judge sampling at ``temperature`` > 0 aside).

Run::

    bench run --fuser profuser                                  # zoo: gpt2-code <- neox-docs, mpt-math
    bench run --fuser profuser --set schedule=linear_mix --set 'rewards=["math","judge:http://localhost:8000/v1"]'
    bench run --fuser profuser --set data=my_chats.parquet --target ./my-model
"""

from __future__ import annotations

import json
import time
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

INFERENCE, TRAINING = "inference", "training"
#: Where a completion-style answer ends: a blank line, or the next ``Q:`` of a run-on few-shot format.
COMPLETION_STOP = ("\n\n", "\nQ:")


class ProFuser(Fuser):
    """Progressive fusion: inference-mode advantage (rewarded generations), then training-mode (MinCE)."""

    name: ClassVar[str] = "profuser"
    #: Part of the runner's artifact key: bump when the same config would now train a different model.
    version: ClassVar[str] = "2"  # 2: one conversation per training sequence
    paper: ClassVar[str] = "https://arxiv.org/abs/2408.04998"
    runtime_only: ClassVar[bool] = False
    #: fuse() is accelerate-aware: `bench run --processes N` trains in N processes (DDP, or FSDP / DeepSpeed with
    #: --accelerate-config); the main process alone generates, rewards, computes the stores and writes the model.
    distributed: ClassVar[bool] = True
    default_sources: ClassVar[list[str]] = ["zoo:gpt2-code", "zoo:neox-docs", "zoo:mpt-math"]
    default_target: ClassVar[str] = "zoo:gpt2-code"
    default_suites: ClassVar[list[str]] = ["perplexity", "bbh-mini", "mtbench"]

    @classmethod
    def control_config(cls, cfg: BaseModel) -> BaseModel:
        """The data-only control (``--control``): the same target, ground-truth conversations, number of steps and
        seed, trained on ground truth only (no inference-mode data, no fusion term: λ = 1)."""
        steps = cfg.inference_steps + cfg.training_steps  # type: ignore[attr-defined]
        return cfg.model_copy(update={"lam": 1.0, "inference_steps": 0, "training_steps": steps})

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        rewards: list[str] = Field(default_factory=lambda: ["math_steps"], description=(
            "Rewards that vote: math, math_steps, code, reward_model:PATH, judge[:URL|MODEL]."))
        prompt_style: Literal["auto", "chat", "completion"] = Field(
            "auto", description="How sources are prompted: chat template, or a conversation's completion_prompt "
                                "(auto: the latter where there is one).")
        allow_code_exec: bool = Field(False, description="Let the code reward run model-written code (sandboxed).")
        judge_url: str | None = Field(None, description="OpenAI-compatible endpoint for the judge reward.")
        judge_model: str | None = Field(None, description="Judge model name (at judge_url, or a local model).")
        data: str | None = Field(None, description=(
            "Your own data (JSONL, parquet, datasets folder, text files, or a folder of them): conversations serve "
            "both modes, plain-text rows (a 'text' field) train in training mode (default: built-in)."))
        corpus_chars: int = Field(400_000, ge=1_000, description="Most characters of data's plain-text rows read.")
        inference_prompts: int = Field(240, ge=1, description=(
            "Prompts answered by the sources: the first N of data's conversations, else built-in ones."))
        inference_domains: list[str] = Field(default_factory=lambda: ["math"],
                                             description="Built-in prompts' domains (math has verifiable answers).")
        training_conversations: int = Field(900, ge=1, description=(
            "Ground-truth conversations: the first N of data's, else built-in ones."))
        max_new_tokens: int = Field(96, ge=1, description="Longest generated answer, in the source's tokens.")
        schedule: Literal["two_stage", "linear_mix"] = Field("two_stage", description="How the modes alternate.")
        inference_steps: int = Field(60, ge=0, description="Steps on inference-mode data (linear_mix: expected).")
        training_steps: int = Field(120, ge=0, description="Steps on training-mode data (linear_mix: expected).")
        lam: float = Field(0.9, ge=0.0, le=1.0, description="Weight of the SFT loss; 1-lam goes to the fusion loss.")
        top_k: int = Field(10, ge=1, description="Entries kept per position and teacher.")
        temperature: float = Field(1.0, gt=0.0, description="Teacher temperature on the kept top-k logits.")
        align: Literal["offsets", "dtw_ed"] = Field("offsets", description="Sequence alignment: byte offsets or MinED DTW.")
        batch_size: int = Field(8, ge=1, description="Conversations per step (one per sequence, right-padded).")
        seq_len: int = Field(256, ge=16, description="Longest conversation trained (tokens, EOS included); longer ones are skipped and counted.")
        lr: float | None = Field(
            None, gt=0.0, description="Peak learning rate (AdamW, warmup then cosine); default: the paper's 5e-6 "
                                      "for real checkpoints, 5e-4 when the target is one of the tiny zoo's models.")
        warmup_steps: int = Field(10, ge=0, description="Linear warmup steps.")

        @field_validator("rewards")
        @classmethod
        def _known_rewards(cls, specs: list[str]) -> list[str]:
            from fusers._rewards import check_reward_specs

            return check_reward_specs(specs)

        @field_validator("data")
        @classmethod
        def _data_exists(cls, value: str | None) -> str | None:
            if value is not None and not Path(value).expanduser().exists():
                raise ValueError(f"data {value!r} does not exist (give conversations or text: JSONL, parquet, a "
                                 "datasets folder, text files)")
            return value

        @model_validator(mode="after")
        def _code_needs_opt_in(self) -> ProFuser.Config:
            from fusers._rewards import check_code_opt_in

            check_code_opt_in(self.rewards, self.allow_code_exec)
            return self

        @model_validator(mode="after")
        def _some_steps(self) -> ProFuser.Config:
            if self.inference_steps + self.training_steps == 0:
                raise ValueError("inference_steps + training_steps must be at least 1")
            if self.warmup_steps > self.inference_steps + self.training_steps:
                raise ValueError("warmup_steps exceeds the total number of steps")
            return self

        @property
        def steps(self) -> int:
            return self.inference_steps + self.training_steps

    def fuse(self, sources: list[ModelRef], target: ModelRef | None, cfg: BaseModel, ctx: FuseContext) -> FusionResult:
        if not sources and target is None:
            raise BenchError("profuser needs sources", "pass --sources A,B (the target defaults to the first)")
        return _Run(cfg, sources, target, ctx).run()


def schedule_plan(schedule: str, inference_steps: int, training_steps: int, seed: int) -> list[str]:
    """The mode of every optimizer step.

    ``two_stage``: ``inference_steps`` inference-mode steps, then ``training_steps`` training-mode steps.
    ``linear_mix``: ``T = inference_steps + training_steps`` steps; step t is an inference-mode step with
    probability ``1 - t/T`` (seeded), so inference mode dominates early and fades out.
    """
    import numpy as np

    if schedule == "two_stage":
        return [INFERENCE] * inference_steps + [TRAINING] * training_steps
    if schedule == "linear_mix":
        total = inference_steps + training_steps
        draws = np.random.default_rng(seed).random(total)
        return [INFERENCE if draws[t] < 1.0 - t / total else TRAINING for t in range(total)]
    raise ValueError(f"unknown schedule {schedule!r}; expected two_stage or linear_mix")


def winning_conversations(prompts: list[Conversation], answers: list[list[str]], rewards: list[Any]
                          ) -> tuple[list[Conversation], list[int], list[Any]]:
    """Inference mode's data: each prompt answered by the source the rewards vote for.

    ``answers[k][i]`` is source k's answer to prompt i. Returns the conversations whose last turn is the
    winning answer, the winner of each, and every prompt's vote. A prompt on which every reward scores all
    sources alike carries no signal and is left out (its vote is still returned).
    """
    from fusers._rewards import vote
    from harness.chat_data import with_response

    per_prompt = [[answers[k][i] for k in range(len(answers))] for i in range(len(prompts))]
    votes = vote(rewards, [_prompt_text(c) for c in prompts], per_prompt, [c.reference for c in prompts])
    chosen, winners = [], []
    for conv, result, candidates in zip(prompts, votes, per_prompt, strict=True):
        if all(len(set(row)) == 1 for row in result.scores):
            continue
        chosen.append(with_response(conv, candidates[result.winner]))
        winners.append(result.winner)
    return chosen, winners, votes


def _prompt_text(conv: Conversation) -> str:
    return "\n".join(m.content for m in conv.prompt_messages)


class _Run:
    """One ProFuser run: answers -> votes -> corpus of both modes -> teachers -> scheduled training."""

    def __init__(self, cfg: ProFuser.Config, sources: list[ModelRef], target: ModelRef | None, ctx: FuseContext):
        self.cfg, self.ctx = cfg, ctx
        from fusers.common import default_lr, pivot_and_sources

        self.pivot, self.others = pivot_and_sources(sources, target)
        self.lr = cfg.lr if cfg.lr is not None else default_lr(self.pivot, paper=5e-6, zoo=5e-4)
        self.candidates = [self.pivot, *self.others]  # candidate 0: the target's own distribution

    def run(self) -> FusionResult:
        import numpy as np

        from fusers import distill as D
        from fusers._rewards import judge_usage
        from fusers.common import load_tokenizer, target_width
        from harness.model import load_hf
        from harness.train import TrainConfig

        cfg = self.cfg
        acc = D.make_accelerator()
        model, tokenizer = load_hf(self.pivot, dtype="float32")  # the model trained (its own teacher rows too)
        self.tokenizer = tokenizer
        self.width = target_width(D.logit_width(model), len(tokenizer.get_vocab()))
        self.encoders = [D.ChunkEncoder(tokenizer), *(D.ChunkEncoder(load_tokenizer(r)) for r in self.others)]

        prompts, truth, documents = self._data()
        start = time.perf_counter()
        with acc.main_process_first():  # the main process generates; the others read its cached answers
            answers = self._answers(prompts)
        self.ctx.timings["generate"] = time.perf_counter() - start
        start = time.perf_counter()
        # the main process alone scores the answers (a reward model or an LLM judge is costly, and a sampling judge
        # could vote differently in each process); every process trains on its winners
        rewards = self._rewards() if acc.is_main_process else []
        vote = winning_conversations(prompts, answers, rewards) if acc.is_main_process else None
        chosen, winners, votes = D.main_process_value(acc, vote)
        self.ctx.timings["reward"] = time.perf_counter() - start

        start = time.perf_counter()
        chunks_a, spans_a, winners = self._chunks(chosen, winners)
        chunks_b, spans_b, _ = self._chunks(truth, [None] * len(truth))
        chunks_c, spans_c = self._document_chunks(documents)
        self.chunks, spans = chunks_a + chunks_b + chunks_c, spans_a + spans_b + spans_c
        fingerprint = D.chunks_fingerprint(self.chunks, cfg.seq_len)
        stores, teachers = self._stores(model, fingerprint)  # each process of a launch computes its share of the shards
        self.ctx.timings["teachers_and_alignment"] = time.perf_counter() - start

        masks = [[D.rows_predicting(enc.encode(c), s) for c, s in zip(self.chunks, spans, strict=True)]
                 for enc in self.encoders]
        sums = [D.masked_sums(teacher, m) for teacher, m in zip(teachers, masks, strict=True)]
        n_a = len(chunks_a)
        training_wins = _min_ce_winners({k: v[n_a:] for k, v in s.items()} for s in sums)
        for c, s in enumerate(sums):  # inference mode: only the rewarded winner is a candidate of its dialogue
            for i, w in enumerate(winners):
                if w != c:
                    s["n_bytes"][i] = s["n_tokens"][i] = 0.0
        names = [r.name for r in self.candidates]
        candidates = D.StreamCandidates.from_stores(names, stores)
        candidates.sums = sums
        input_ids = stores[0].rows("tokens")[:]
        split = int(stores[0].item_offsets()[n_a])
        loss_mask = np.concatenate(masks[0])
        parts, plan = self._parts(input_ids, candidates, loss_mask, split, stores[0].item_offsets())

        model.train()
        train_cfg = TrainConfig(steps=len(plan), batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=self.lr,
                                warmup_steps=min(cfg.warmup_steps, len(plan)), seed=self.ctx.seed)
        start = time.perf_counter()
        model, stats = D.train_with_accelerate(model, D.ScheduledCorpus(parts, plan), train_cfg,
                                               D.fusion_loss(cfg.lam, D.mean_across_processes(acc)), accelerator=acc,
                                               progress="profuser")
        self.ctx.timings["train"] = time.perf_counter() - start
        out_dir = Path(self.ctx.out_dir)
        model.eval()
        D.save_trained(acc, model, tokenizer, out_dir)

        selected = sum((p.selected for p in parts.values()), np.zeros(len(names)))
        details = D.details_of(stats, cfg.lam, names, selected)
        details["loss_curves"]["inference_mode"] = [1.0 if mode == INFERENCE else 0.0 for mode in plan]
        details.update({
            "target": self.pivot.spec,
            "wins": {INFERENCE: _counts(winners, names), TRAINING: _counts(training_wins, names)},
            "prompts": {"answered": len(prompts), "decided": len(chosen), "undecided": len(prompts) - len(chosen),
                        "used": n_a, "skipped_too_long": len(chosen) - n_a, "rewards": cfg.rewards},
            "training_conversations": {"given": len(truth), "used": len(chunks_b),
                                       "skipped_too_long": len(truth) - len(chunks_b)},
            "training_documents": {"given": len(documents), "chunks": len(chunks_c)},
            "data": {"source": self.cfg.data or "built-in", "prompts": self.prompt_source},
            "sequences": {"one_conversation_each": True, "seq_len": cfg.seq_len},
            "schedule": {"kind": cfg.schedule, "steps": {INFERENCE: plan.count(INFERENCE),
                                                         TRAINING: plan.count(TRAINING)}},
            "examples": [{"prompt": _prompt_text(p), "answers": {n: answers[k][i] for k, n in enumerate(names)},
                          "votes": votes[i].scores_by_reward(), "winner": names[votes[i].winner]}
                         for i, p in enumerate(prompts[:3])],
            "lr": self.lr,
            "judge_usage": judge_usage(rewards),  # the main process's rewards: the only ones that judged
            "distributed": D.distributed_details(acc),
            "timings": {k: round(v, 2) for k, v in self.ctx.timings.items()},
        })
        return FusionResult(path=out_dir, details=details)

    # --- data -----------------------------------------------------------------------------------

    def _data(self) -> tuple[list[Conversation], list[Conversation], list[str]]:
        """(inference-mode prompts, training-mode conversations with ground truth, training-mode text documents).

        With ``data``: its first ``inference_prompts`` conversations are the prompts (the built-in ones when it
        holds only text, which has no prompts to answer), its first ``training_conversations`` the ground truth,
        and up to ``corpus_chars`` characters of its plain-text rows the documents (loss on every token)."""
        from harness.chat_data import default_conversations, load_training_rows

        cfg = self.cfg
        self.prompt_source = "built-in"
        if cfg.data is None:
            prompts = default_conversations(cfg.inference_prompts, seed=1, domains=tuple(cfg.inference_domains))
            return prompts, default_conversations(cfg.training_conversations, seed=0), []
        conversations, documents = load_training_rows(
            cfg.data, max_conversations=max(cfg.inference_prompts, cfg.training_conversations), max_chars=cfg.corpus_chars)
        if not conversations and not documents:
            raise BenchError(f"{cfg.data} holds no conversations and no text",
                             "give rows with 'messages' (or 'prompt' + 'response') or with 'text'")
        if conversations:
            self.prompt_source = "data"
            prompts = conversations[: cfg.inference_prompts]
        else:
            prompts = default_conversations(cfg.inference_prompts, seed=1, domains=tuple(cfg.inference_domains))
        return prompts, conversations[: cfg.training_conversations], documents

    def _answers(self, prompts: list[Conversation]) -> list[list[str]]:
        """Every candidate model's greedy answer to every prompt (cached by content: generation is seeded)."""
        from fusers import distill as D
        from harness import paths
        from harness.chat_data import end_of_turn, render_prompt
        from harness.lmeval import generate_greedy
        from harness.logs import quiet
        from harness.model import as_lm, load_hf

        answers = []
        for ref in self.candidates:
            key = D.store_key("profuser-answers", ref.content_hash(), [p.id for p in prompts],
                              [_prompt_text(p) for p in prompts], [self._as_completion(p) for p in prompts],
                              self.cfg.max_new_tokens)
            cached = paths.cache_dir() / "profuser" / "answers" / f"{key}.json"
            if cached.is_file():
                answers.append(json.loads(cached.read_text()))
                continue
            model, tok = load_hf(ref)
            completion = [self._as_completion(p) for p in prompts]
            texts = [p.completion_prompt if c else render_prompt(p, tok) for p, c in zip(prompts, completion,
                                                                                         strict=True)]
            out = [""] * len(prompts)
            with quiet():
                for style, stop in ((False, end_of_turn(tok)), (True, list(COMPLETION_STOP))):
                    idx = [i for i, c in enumerate(completion) if c == style]
                    answers_ = generate_greedy(as_lm(model, tok, batch_size=32), [texts[i] for i in idx], stop,
                                               self.cfg.max_new_tokens, task="profuser")
                    for i, a in zip(idx, answers_, strict=True):
                        out[i] = a
            with atomic_file(cached) as partial:
                partial.write_text(json.dumps(out))
            answers.append(out)
        return answers

    def _as_completion(self, conv: Conversation) -> bool:
        style = self.cfg.prompt_style
        return conv.completion_prompt is not None and style in ("auto", "completion")

    def _rewards(self) -> list[Any]:
        from fusers._rewards import make_reward

        rewards = []
        for spec in self.cfg.rewards:
            options: dict[str, Any] = {}
            if spec.split(":")[0].strip().lower() == "judge" and ":" not in spec:
                options = {k: v for k, v in (("url", self.cfg.judge_url), ("model", self.cfg.judge_model)) if v}
            rewards.append(make_reward(spec, **options))
        return rewards

    def _chunks(self, conversations: list[Conversation], winners: list[int | None]
                ) -> tuple[list[Any], list[np.ndarray], list[int | None]]:
        """Conversations rendered with the target's template; those longer than seq_len anywhere are skipped."""
        from fusers import distill as D
        from harness.chat_data import render

        chunks, spans, kept = [], [], []
        for conv, winner in zip(conversations, winners, strict=True):
            rendered = render(conv, self.tokenizer)
            if any(len(e.tokenizer(rendered.text, add_special_tokens=False)["input_ids"]) + 1 > self.cfg.seq_len
                   for e in self.encoders):
                continue
            chunks.append(D.TextChunk(len(chunks), rendered.text, True))
            spans.append(D.text_byte_spans(rendered.text, rendered.response_spans))
            kept.append(winner)
        return chunks, spans, kept

    def _document_chunks(self, documents: list[str]) -> tuple[list[Any], list[np.ndarray]]:
        """Plain-text documents cut to ``seq_len`` under every model's tokenizer, one piece per sequence, the loss
        on all of it (continual training on the user's text, as FuseLLM)."""
        from fusers import distill as D

        if not documents:
            return [], []
        pieces = D.chunk_documents(documents, [e.tokenizer for e in self.encoders], self.cfg.seq_len)
        return pieces, [D.text_byte_spans(p.text, [(0, len(p.text))]) for p in pieces]

    def _stores(self, model: Any, fingerprint: str) -> tuple[list[Any], list[Any]]:
        """(candidate stores in the target's positions, teacher stores in each model's own tokenization)."""
        from fusers import distill as D
        from fusers.common import config_width, model_loader, source_vocab_map, target_width, vocab_digest
        from harness import paths

        cfg = self.cfg
        root = paths.cache_dir() / "distill"
        options = D.AlignOptions(mode=cfg.align)
        teachers, stores = [], []
        for c, (ref, enc) in enumerate(zip(self.candidates, self.encoders, strict=True)):
            # candidate 0's rows come from the model being trained, loaded in float32
            key = D.teacher_store_key(ref, fingerprint, cfg.top_k, dtype="float32" if c == 0 else None)
            teacher = D.ensure_teacher_store(root / "teachers" / key, self.chunks, enc,
                                             (lambda: model) if c == 0 else model_loader(ref), cfg.top_k,
                                             about={"model": ref.spec})
            teachers.append(teacher)
            if c == 0:
                stores.append(teacher)
                continue
            shared = D.shares_vocabulary(enc.tokenizer, self.tokenizer)
            width = target_width(config_width(ref), len(enc.tokenizer.get_vocab()))
            vocab = source_vocab_map(enc.tokenizer, self.tokenizer, width, self.width, frozenset())
            akey = D.store_key("aligned", key, self.pivot.content_hash(), self.width, options.to_dict(),
                               vocab_digest(vocab))
            stores.append(D.ensure_aligned_store(root / "aligned" / akey, self.chunks, self.encoders[0], enc, teacher,
                                                 vocab, self.width, options, shared_vocab=shared,
                                                 about={"source": ref.spec, "target": self.pivot.spec}))
        return stores, teachers

    def _parts(self, input_ids: np.ndarray, candidates: Any, loss_mask: np.ndarray, split: int, items: np.ndarray
               ) -> tuple[dict[str, Any], list[str]]:
        """One corpus per mode over its part of the stream (one conversation per sequence, as FuseChat's
        reference trains dialogues), and the plan of modes per step."""
        import numpy as np

        from fusers import distill as D

        cfg = self.cfg
        common = {"seq_len": cfg.seq_len, "fusion": "min_ce", "granularity": "sequence",
                  "temperature": cfg.temperature, "loss_mask": loss_mask, "items": items,
                  "pad_id": self.encoders[0].eos_id}
        bounds = {INFERENCE: (0, split), TRAINING: (split, len(input_ids))}
        parts = {}
        for mode, (a, b) in bounds.items():
            if np.any((items[:-1] >= a) & (items[1:] <= b) & (items[1:] > items[:-1])):  # one conversation at least
                parts[mode] = D.FusionCorpus(input_ids, candidates, rows=(a, b), **common)
        if not parts:
            raise BenchError("profuser has no training conversation in either mode",
                             "give more conversations or prompts, or lower --set seq_len")
        plan = schedule_plan(cfg.schedule, cfg.inference_steps, cfg.training_steps, self.ctx.seed)
        missing = [mode for mode in (INFERENCE, TRAINING) if mode not in parts and mode in plan]
        if missing:
            raise BenchError(f"profuser has no {missing[0]}-mode data for its {plan.count(missing[0])} steps "
                             "(every prompt undecided, or every conversation too long)",
                             f"set {missing[0]}_steps=0, or give prompts the rewards can tell apart")
        return parts, plan


def _min_ce_winners(sums: Any) -> list[int]:
    """Per dialogue, the candidate with the lowest response CE per byte (ties: the lowest index)."""
    import numpy as np

    per = [s["nats"] / np.where(s["n_bytes"] > 0, s["n_bytes"], np.nan) for s in sums]
    table = np.nan_to_num(np.stack(per, axis=1), nan=np.inf)
    return table.argmin(axis=1).tolist() if len(table) else []


def _counts(winners: list[int | None], names: list[str]) -> dict[str, int]:
    return {name: sum(1 for w in winners if w == k) for k, name in enumerate(names)}
