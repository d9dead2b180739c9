"""FuseChat: pairwise knowledge fusion of chat models into pivot-shaped targets, then a parameter merge.

Wan et al., "FuseChat: Knowledge Fusion of Chat Models", https://arxiv.org/abs/2408.07990 (v2, SCE and
statistics-based alignment) and https://arxiv.org/abs/2402.16107 (v1, VaRM); spec ``fusion-algorithms.md``
§2.3, §6 and quirks Q2, Q5, Q7, Q8. Two stages:

1. **Pairwise fusion.** For every source other than the pivot, a target initialised from the pivot is trained
   on chat data (instructions masked: the loss covers response tokens only) with

       L = λ·SFT + (1-λ)·CE_soft(target, MinCE{pivot's own distribution, source's aligned distribution}),

   where MinCE picks, per dialogue, the candidate with the lower cross-entropy on the responses. A source with
   the pivot's vocabulary is used as it is; any other is aligned with FuseChat v2's statistics-based alignment
   (:mod:`fusers.align.ms_counts`, :mod:`fusers.align.ms_map`): token alignments over the corpus are counted
   sparsely, each source token is mapped to the pivot token it co-aligns with (``ms_weighting``: ``frequency``,
   or the released code's ``reference``, quirk Q2), and its top-k distribution is moved through that map. The
   per-chunk alignments are computed once and serve both the counts and the distributions.
2. **Merge.** The targets, all of the pivot's shape, are merged in parameter space with the pivot as base,
   through mergekit: ``sce`` (v2, ``sce_variant`` = mergekit | fuseai_fork | paper), ``varm`` (v1; quirk Q7's
   equal weights with ``reference_compat=["q7"]``) or any mergekit method (linear, task_arithmetic, ties,
   dare_ties, slerp ...). The weights VaRM/SCE choose per matrix are recorded.

The training data is a chat corpus built offline from the zoo's domains (:mod:`harness.chat_data`), or your
conversations (``data=PATH``: JSONL, parquet, a ``datasets`` folder), rendered with the pivot's chat
template; every model reads that same text. Teacher distributions, co-alignment counts and each pairwise target are cached by content under
``$BENCH_HOME/cache``, so an interrupted run resumes at the first missing stage and a new merge method reuses
the trained targets. The pairwise targets are saved inside the fused model's folder (``pairwise/NAME``) and
evaluated beside it.

Training reads one conversation per sequence (right-padded, attention-masked), as FuseChat's reference trains
one dialogue per sequence; conversations longer than ``seq_len`` under any tokenizer are skipped and counted.
``reference_compat="all"`` reproduces FuseChat's released code: its DTW over pieces, its stage-3 distribution
alignment, MS weighting, SCE fork, per-token CE (docs/reference-compat.md lists every quirk and deviation).

What a seed changes (``--seed``, ``--seeds``): the order of each pairwise target's training batches;
the teachers, the alignment and the VaRM / SCE merge are deterministic.

Run::

    bench run --fuser fusechat                      # pivot gpt2-code, sources neox-docs and mpt-math, SCE
    bench run --fuser fusechat --set merge=varm --set data=my_chats.jsonl
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.api import FuseContext, Fuser, FusionResult
from harness.errors import BenchError

if TYPE_CHECKING:
    import numpy as np

    from harness.model import ModelRef

QUIRKS = ("q1", "q2", "q5", "q7", "q8", "q11", "q13")
#: What FuseChat's released code does (``reference_compat="all"``): MS weighting by dist·sigmoid(count) (Q2),
#: the first of colliding entries (Q5), VaRM's equal weights (Q7, with merge=varm), the FuseAI fork's SCE (Q8),
#: the tokenizer's width (Q11), CE per token (Q13), plus its DTW and stage-3 distribution alignment. Not Q1:
#: the current-token fallback is FuseLLM's; FuseChat's own code falls back on the next token.
RELEASED = frozenset({"q2", "q5", "q7", "q8", "q11", "q13"})
#: Fields that quirks (or "all") set, with the value they need.
_IMPLIED = {"q2": ("ms_weighting", "reference"), "q8": ("sce_variant", "fuseai_fork"),
            "all": (("align", "dtw_fusechat"), ("distribution", "fusechat"))}
#: ``merge`` names that mean FuseChat's own methods; anything else is a mergekit method name.
_FUSECHAT_MERGES = {"sce": "fusechat_sce", "varm": "varm"}


class FuseChat(Fuser):
    """Pairwise fusion of each source into a copy of the pivot, then VaRM/SCE (or any mergekit) merging."""

    name: ClassVar[str] = "fusechat"
    #: Part of the runner's artifact key: bump when the same config would now train a different model.
    version: ClassVar[str] = "2"  # 2: one conversation per training sequence (1: packed blocks)
    paper: ClassVar[str] = "https://arxiv.org/abs/2408.07990"
    runtime_only: ClassVar[bool] = False
    #: fuse() is accelerate-aware: `bench run --processes N` trains each pairwise target in N processes (DDP, or
    #: FSDP / DeepSpeed with --accelerate-config); the main process alone writes the caches and merges.
    distributed: ClassVar[bool] = True
    default_sources: ClassVar[list[str]] = ["zoo:gpt2-code", "zoo:neox-docs", "zoo:mpt-math"]
    default_target: ClassVar[str] = "zoo:gpt2-code"
    #: What `bench run --fuser fusechat` evaluates unless --suite says otherwise (mtbench is judged when a
    #: judge is configured; without one its answers are stored unrated).
    default_suites: ClassVar[list[str]] = ["perplexity", "bbh-mini", "mtbench"]

    @classmethod
    def control_config(cls, cfg: BaseModel) -> BaseModel:
        """The data-only control (``--control``): the pivot trained on the same conversations, steps and seed with
        λ = 1 (plain SFT). Every pairwise target is then the same model, so one is trained and it is the result."""
        return cfg.model_copy(update={"lam": 1.0})

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        data: str | None = Field(None, description="Conversations: JSONL, parquet, a datasets folder or a folder of "
                                                   "them (default: built from the zoo's domains).")
        conversations: int = Field(1500, ge=8, description="Built-in corpus size (ignored with data=).")
        lam: float = Field(0.9, ge=0.0, le=1.0, description="Weight of the SFT loss; 1-lam goes to the fusion loss.")
        top_k: int = Field(10, ge=1, description="Entries kept per position and teacher (reference: 10).")
        fusion: Literal["min_ce", "avg_ce", "avg_ce_softmax"] = Field("min_ce", description="How the two candidates combine.")
        temperature: float = Field(1.0, gt=0.0, description="The reference's fuse_temperature on the kept top-k logits.")
        align: Literal["offsets", "dtw_ed", "dtw_fusechat"] = Field(
            "offsets", description="Sequence alignment: byte offsets, MinED DTW, or FuseChat's released DTW.")
        distribution: Literal["fusebench", "fusechat"] = Field(
            "fusebench", description="How source rows move onto the pivot: FuseBench's rules or FuseChat's stage 3.")
        ms_weighting: Literal["frequency", "reference"] = Field(
            "frequency", description="MS map: the most frequent co-alignment wins, or the reference's dist·sigmoid(count) (Q2).")
        steps: int = Field(150, ge=1, description="Optimizer steps per pairwise target.")
        batch_size: int = Field(8, ge=1, description="Conversations per step (one per sequence, right-padded).")
        seq_len: int = Field(256, ge=16, description="Longest conversation trained (tokens, EOS included); longer ones are skipped and counted.")
        lr: float | None = Field(
            None, gt=0.0, description="Peak learning rate (AdamW, warmup then cosine); default: the paper's 5e-6 "
                                      "for real checkpoints, 5e-4 when the target is one of the tiny zoo's models.")
        warmup_steps: int = Field(10, ge=0, description="Linear warmup steps.")
        merge: str = Field("sce", description="sce | varm | any mergekit method (linear, task_arithmetic, ties, ...).")
        sce_variant: Literal["mergekit", "fuseai_fork", "paper"] = Field("mergekit", description="SCE reading (Q8).")
        select_topk: float = Field(0.1, gt=0.0, le=1.0, description="SCE: fraction of high-variance elements kept.")
        density: float | None = Field(None, description="ties / dare: fraction of each task vector kept.")
        reference_compat: list[str] | Literal["all"] = Field(
            default_factory=list, description=f"Reference quirks to reproduce: any of {', '.join(QUIRKS)}, or 'all'.")

        @field_validator("reference_compat", mode="before")
        @classmethod
        def _known_quirks(cls, value: Any) -> Any:
            if isinstance(value, str) and value != "all":
                value = [value]
            if isinstance(value, list):
                bad = [q for q in value if q not in QUIRKS]
                if bad:
                    raise ValueError(f"fusechat reproduces quirks {', '.join(QUIRKS)} (or 'all'); got {bad}")
            return value

        @field_validator("data")
        @classmethod
        def _data_exists(cls, value: str | None) -> str | None:
            if value is not None and not Path(value).expanduser().exists():
                raise ValueError(f"data {value!r} does not exist (give conversations: JSONL, parquet or a datasets "
                                 "folder)")
            return value

        @model_validator(mode="after")
        def _steps_and_warmup(self) -> FuseChat.Config:
            if self.warmup_steps > self.steps:
                raise ValueError(f"warmup_steps={self.warmup_steps} exceeds steps={self.steps}")
            return self

        @model_validator(mode="after")
        def _quirks_set_their_fields(self) -> FuseChat.Config:
            """``q2``, ``q8`` and ``all`` imply field values; one given explicitly that contradicts them is an
            error rather than a silently half-reproduced reference."""
            implied = [_IMPLIED[q] for q in sorted(self.compat) if q in _IMPLIED]
            if self.reference_compat == "all":
                implied += list(_IMPLIED["all"])
            for name, value in implied:
                if name in self.model_fields_set and getattr(self, name) != value:
                    raise ValueError(f"reference_compat={self.reference_compat} needs {name}={value}, "
                                     f"but {name}={getattr(self, name)} was given; drop one of the two")
                setattr(self, name, value)
            return self

        @property
        def compat(self) -> frozenset[str]:
            return RELEASED if self.reference_compat == "all" else frozenset(self.reference_compat)

    def fuse(self, sources: list[ModelRef], target: ModelRef | None, cfg: BaseModel, ctx: FuseContext) -> FusionResult:
        if not sources and target is None:
            raise BenchError("fusechat needs sources", "pass --sources A,B (the pivot defaults to the first)")
        return _Run(cfg, sources, target, ctx).run()


def merge_config(cfg: FuseChat.Config) -> Any:
    """The :class:`fusers.merge.Merge` config of stage 2 (the pivot is the base of every method that takes one)."""
    from fusers.merge import Merge

    method = _FUSECHAT_MERGES.get(cfg.merge, cfg.merge)
    options: dict[str, Any] = {"method": method}
    if method == "fusechat_sce":
        options.update(select_topk=cfg.select_topk, variant=cfg.sce_variant)
    elif method == "varm":
        options["equal_weights"] = "q7" in cfg.compat
    elif cfg.density is not None:
        options["density"] = cfg.density
    return Merge.Config(**options)


class _Run:
    """One FuseChat run: corpus -> teachers -> per source (alignment, pairwise target) -> merge."""

    def __init__(self, cfg: FuseChat.Config, sources: list[ModelRef], target: ModelRef | None, ctx: FuseContext):
        self.cfg, self.ctx = cfg, ctx
        from fusers.common import default_lr, pivot_and_sources

        self.pivot, self.others = pivot_and_sources(sources, target)  # the pivot starts every pair
        self.lr = cfg.lr if cfg.lr is not None else default_lr(self.pivot, paper=5e-6, zoo=5e-4)
        if not self.others:
            raise BenchError("fusechat needs at least one source besides the pivot",
                             "pass --sources PIVOT,SOURCE[,SOURCE...] or --target PIVOT --sources SOURCE,...")
        from harness import paths

        self.cache = paths.cache_dir()

    def run(self) -> FusionResult:
        from fusers import distill as D
        from fusers.common import load_tokenizer, target_width
        from harness.model import load_hf

        cfg = self.cfg
        self.accelerator = acc = D.make_accelerator()
        pivot_model, tokenizer = load_hf(self.pivot)
        self.pivot_tokenizer = tokenizer
        self.width = target_width(D.logit_width(pivot_model), len(tokenizer.get_vocab()),
                                  reference_compat=cfg.compat & {"q11"})
        self.pivot_encoder = D.ChunkEncoder(tokenizer)
        self.source_encoders = [D.ChunkEncoder(load_tokenizer(ref)) for ref in self.others]

        start = time.perf_counter()
        self.chunks, self.spans, corpus_report = self._corpus()
        self.fingerprint = D.chunks_fingerprint(self.chunks, cfg.seq_len)
        self.ctx.timings["corpus"] = time.perf_counter() - start

        start = time.perf_counter()
        pivot_key = D.teacher_store_key(self.pivot, self.fingerprint, cfg.top_k)
        # every process of a launch computes its share of the shards, then they wait for each other
        self.pivot_store = D.ensure_teacher_store(self.cache / "distill" / "teachers" / pivot_key, self.chunks,
                                                  self.pivot_encoder, lambda: pivot_model, cfg.top_k,
                                                  about={"model": self.pivot.spec})
        self.pivot_masks = [D.rows_predicting(self.pivot_encoder.encode(c), s)
                            for c, s in zip(self.chunks, self.spans, strict=True)]
        self.pivot_sums = D.masked_sums(self.pivot_store, self.pivot_masks)
        self.ctx.timings["pivot_teacher"] = time.perf_counter() - start

        trained: dict[str, Path] = {}
        stage_details: dict[str, Any] = {}
        # λ = 1 switches the fusion term off: the source no longer enters training, so the pairwise targets would
        # all be one model (the data-only control); train it once
        for ref in self.others[:1] if cfg.lam == 1.0 else self.others:
            name = f"{_short(self.pivot)}+{_short(ref)}"
            trained[name], stage_details[name] = self._pairwise_target(ref)

        out_dir = Path(self.ctx.out_dir)
        stages = {name: out_dir / "pairwise" / name for name in trained} if len(trained) > 1 else {}
        # stage 2 runs on the main process alone (a merge is not distributed); the others wait for its details
        merge_details = self._assemble(trained, out_dir) if acc.is_main_process else None
        merge_details = D.main_process_value(acc, merge_details)

        details = {
            "pivot": self.pivot.spec,
            "sources": [ref.spec for ref in self.others],
            "corpus": corpus_report,
            "merge": merge_details,
            "stages": stage_details,
            "lr": self.lr,
            "distributed": D.distributed_details(acc),
            "timings": {k: round(v, 2) for k, v in self.ctx.timings.items()},
        }
        if len(trained) == 1:  # the result is the one model trained (the data-only control): its curves are its own
            details["loss_curves"] = next(iter(stage_details.values())).get("loss_curves", {})
        return FusionResult(path=out_dir, details=details, stages=stages)

    def _assemble(self, trained: dict[str, Path], out_dir: Path) -> dict[str, Any]:
        """The fused model in ``out_dir`` from the pairwise targets (main process only): their merge, with each
        target copied into ``pairwise/NAME`` (the run's artifact holds everything it evaluates), or the one target
        itself. Returns the merge's details."""
        if len(trained) == 1:
            # One pairwise target: there is nothing to merge. SCE's variance-based selection over a single task
            # vector keeps nothing (it would return the pivot and call it a fusion); the target IS the result.
            (name, cached), = trained.items()
            shutil.copytree(cached, out_dir, ignore=shutil.ignore_patterns("pairwise.json"), dirs_exist_ok=True)
            return {"method": "none", "reason": "λ = 1, the data-only control: every pairwise target is one model"
                    if self.cfg.lam == 1.0 else f"one pairwise target ({name}): the fused model is that target; "
                                                "merging needs two or more"}
        start = time.perf_counter()
        merge_details = self._merge(list(trained.values()), out_dir)
        self.ctx.timings["merge"] = time.perf_counter() - start
        for name, cached in trained.items():
            shutil.copytree(cached, out_dir / "pairwise" / name, ignore=shutil.ignore_patterns("pairwise.json"))
        return merge_details

    # --- the chat corpus ------------------------------------------------------------------------

    def _corpus(self) -> tuple[list[Any], list[np.ndarray], dict[str, Any]]:
        """Conversations rendered with the pivot's template, as chunks every tokenizer reads whole.

        Returns the chunks, each one's response byte spans, and a report. A conversation that any model
        would read as more than ``seq_len`` tokens is skipped (and counted).
        """
        from fusers import distill as D
        from harness.chat_data import default_conversations, load_conversations, render

        cfg = self.cfg
        if cfg.data is not None:
            conversations = load_conversations(Path(cfg.data).expanduser())
        else:
            conversations = default_conversations(cfg.conversations, seed=0)
        tokenizers = [self.pivot_tokenizer, *(e.tokenizer for e in self.source_encoders)]
        chunks, spans, skipped = [], [], 0
        for conv in conversations:
            rendered = render(conv, self.pivot_tokenizer)
            # +1: a conversation is read after the EOS token, like a document
            if any(len(t(rendered.text, add_special_tokens=False)["input_ids"]) + 1 > cfg.seq_len for t in tokenizers):
                skipped += 1
                continue
            chunks.append(D.TextChunk(len(chunks), rendered.text, True))
            spans.append(D.text_byte_spans(rendered.text, rendered.response_spans))
        if not chunks:
            raise BenchError(f"no conversation fits seq_len={cfg.seq_len} tokens under every tokenizer",
                             "raise --set seq_len or give shorter conversations")
        domains: dict[str, int] = {}
        for conv in conversations:
            domains[conv.domain] = domains.get(conv.domain, 0) + 1
        report = {"source": cfg.data or "built-in", "conversations": len(conversations), "used": len(chunks),
                  "skipped_too_long": skipped, "domains": domains,
                  "response_bytes": int(sum(int((s[:, 1] - s[:, 0]).sum()) for s in spans)),
                  "text_bytes": int(sum(len(c.text.encode("utf-8")) for c in chunks))}
        return chunks, spans, report

    # --- stage 1: one pairwise target -----------------------------------------------------------

    def _pairwise_target(self, ref: ModelRef) -> tuple[Path, dict[str, Any]]:
        """Train (or find in the cache) the target of the pivot fused with ``ref``.

        In several processes, each trains its slice of every batch; the main process alone computes the source's
        teacher store and alignment (the others then read them) and writes the target to the cache."""
        from fusers import distill as D
        from fusers.common import model_loader, vocab_digest

        cfg, acc = self.cfg, self.accelerator
        encoder = self.source_encoders[self.others.index(ref)]
        shared = D.shares_vocabulary(encoder.tokenizer, self.pivot_tokenizer)
        options = D.AlignOptions(mode=cfg.align, fallback="current" if "q1" in cfg.compat else "next",
                                 collision="first" if "q5" in cfg.compat else "sum", distribution=cfg.distribution)
        train_fields = cfg.model_dump(mode="json", exclude={"merge", "sce_variant", "select_topk", "density", "data"})
        key = D.store_key("fusechat-target", FuseChat.version, self.pivot.content_hash(), ref.content_hash(), self.fingerprint,
                          train_fields, sorted(cfg.compat), self.ctx.seed)
        final = self.cache / "fusechat" / "targets" / key
        # the main process decides: another run may be writing this target right now, and every process must
        # take the same branch (training is collective)
        if D.main_process_value(acc, (final / "pairwise.json").is_file()):
            return final, json.loads((final / "pairwise.json").read_text())

        start = time.perf_counter()
        teacher_key = D.teacher_store_key(ref, self.fingerprint, cfg.top_k)
        teacher = D.ensure_teacher_store(self.cache / "distill" / "teachers" / teacher_key, self.chunks, encoder,
                                         model_loader(ref), cfg.top_k, about={"model": ref.spec})
        teacher_seconds = time.perf_counter() - start

        start = time.perf_counter()
        # the main process counts the co-alignments and builds the aligned store; the others take its vocabulary
        # map (part of the store's key) and then find the store built
        vocab, alignments, ms_report = self._alignment(ref, encoder, shared) if acc.is_main_process else (None,) * 3
        vocab, ms_report = D.main_process_value(acc, (vocab, ms_report))
        akey = D.store_key("aligned", teacher_key, self.pivot.content_hash(), self.width, options.to_dict(),
                           vocab_digest(vocab))
        with acc.main_process_first():  # built from the main process's alignments, by it alone (no collective inside)
            aligned = D.ensure_aligned_store(self.cache / "distill" / "aligned" / akey, self.chunks,
                                             self.pivot_encoder, encoder, teacher, vocab, self.width, options,
                                             shared_vocab=shared, about={"source": ref.spec, "target": self.pivot.spec},
                                             alignments=alignments, split=D.ShardSplit())
        align_seconds = time.perf_counter() - start

        source_masks = [D.rows_predicting(encoder.encode(c), s) for c, s in zip(self.chunks, self.spans, strict=True)]
        candidates = D.StreamCandidates.from_stores([self.pivot.name, ref.name], [self.pivot_store, aligned])
        candidates.sums = [self.pivot_sums, D.masked_sums(teacher, source_masks)]
        input_ids = self.pivot_store.rows("tokens")[:]
        corpus = D.FusionCorpus(input_ids, candidates, seq_len=cfg.seq_len, fusion=cfg.fusion, granularity="sequence",
                                temperature=cfg.temperature, per_token="q13" in cfg.compat,
                                loss_mask=_stream(self.pivot_masks),
                                items=self.pivot_store.item_offsets(), pad_id=self.pivot_encoder.eos_id)
        model, stats, train_seconds = self._train(corpus)

        details = {
            "source": ref.spec,
            "shared_vocab": shared,
            "alignment": {"options": options.to_dict(), **ms_report},
            "corpus": {"target_tokens": int(len(input_ids)), "loss_tokens": int(corpus.loss_mask.sum()),
                       "sequences": len(corpus), "epochs": round(cfg.steps * cfg.batch_size / len(corpus), 3)},
            "timings": {"teacher": round(teacher_seconds, 2), "align": round(align_seconds, 2),
                        "train": round(train_seconds, 2)},
            **D.details_of(stats, cfg.lam, [self.pivot.name, ref.name], corpus.selected),
        }
        D.save_trained(acc, model, self.pivot_tokenizer, final, atomic=True,
                       files={"pairwise.json": json.dumps(details, indent=1, default=str)})
        acc.free_memory()  # accelerate's hold on this target's model and optimizer: the next source trains another
        return final, json.loads((final / "pairwise.json").read_text())  # the main process's details

    def _alignment(self, ref: ModelRef, encoder: Any, shared: bool) -> tuple[Any, list[Any] | None, dict[str, Any]]:
        """(vocabulary map, per-chunk alignments, report): MS statistics for another vocabulary, nothing to
        compute for the pivot's own (the source's rows are then used as they are wherever it tokenizes alike)."""
        from fusers.align import count_corpus, ms_vocab_map, surface_vocab_map
        from fusers.common import config_width, target_width

        if shared:
            return None, None, {"method": "shared vocabulary"}
        cfg = self.cfg
        start = time.perf_counter()
        counts, alignments = count_corpus(self.pivot_encoder, encoder, self.chunks, mode=cfg.align,
                                          keep_alignments=True)
        count_seconds = time.perf_counter() - start
        source_width = target_width(config_width(ref), len(encoder.tokenizer.get_vocab()))
        vocab = ms_vocab_map(counts, encoder.tokenizer, self.pivot_tokenizer, weighting=cfg.ms_weighting,
                             source_width=source_width, pivot_width=self.width)
        if cfg.reference_compat != "all":  # exact byte twins (newlines, EOS) first, as in fusellm
            vocab = surface_vocab_map(vocab, encoder.tokenizer, self.pivot_tokenizer, self.width)
        report = {"method": "ms", "ms_weighting": cfg.ms_weighting, "observed_pairs": int(counts.nnz),
                  "count_bytes": int(counts.nbytes), "count_seconds": round(count_seconds, 2),
                  "exact_share": round(float(vocab.exact[:source_width].mean()), 4)}
        return vocab, alignments, report

    def _train(self, corpus: Any) -> tuple[Any, Any, float]:
        from fusers import distill as D
        from harness.model import load_hf
        from harness.train import TrainConfig

        cfg, acc = self.cfg, self.accelerator
        model, _ = load_hf(self.pivot, dtype="float32")  # trained in float32 (mixed precision on GPUs)
        model.train()
        train_cfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=self.lr,
                                warmup_steps=cfg.warmup_steps, seed=self.ctx.seed)
        start = time.perf_counter()
        model, stats = D.train_with_accelerate(model, corpus, train_cfg,
                                               D.fusion_loss(cfg.lam, D.mean_across_processes(acc)), accelerator=acc,
                                               progress=f"fusechat {corpus.candidates.names[1]}")
        model.eval()
        return model, stats, time.perf_counter() - start

    # --- stage 2: merge -------------------------------------------------------------------------

    def _merge(self, targets: list[Path], out_dir: Path) -> dict[str, Any]:
        """Merge the pairwise targets with the pivot as base; the weights chosen per matrix are recorded."""
        import fusers._merge_methods as fm
        from fusers.merge import Merge
        from harness.model import resolve

        merge_cfg = merge_config(self.cfg)
        refs = [resolve(str(p)) for p in targets]
        with fm.record_weights() as weights:
            result = Merge().fuse(refs, self.pivot, merge_cfg, FuseContext(out_dir=out_dir, seed=self.ctx.seed))
        return {"method": merge_cfg.method, "options": merge_cfg.model_dump(mode="json", exclude_none=True),
                "mergekit_config": result.details.get("mergekit_config"),
                "weights_per_matrix": {name or "": [round(w, 6) for w in ws] for name, ws in weights.items()}}


def _short(ref: ModelRef) -> str:
    """A model's name without its scheme or folders: ``zoo:gpt2-code`` -> ``gpt2-code``."""
    return ref.name.rsplit(":", 1)[-1].rstrip("/").rsplit("/", 1)[-1]


def _stream(masks: list[np.ndarray]) -> np.ndarray:
    import numpy as np

    return np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
