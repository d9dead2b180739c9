"""FuseLLM: knowledge fusion of LLMs by continual training on their fused next-token distributions.

Wan et al., ICLR 2024, https://arxiv.org/abs/2401.10491 (spec ``fusion-algorithms.md`` §5). The target (the
"pivot") starts from one model and is trained on a corpus with

    L = λ·CLM + (1-λ)·CE_soft(student, fused teacher distribution),        λ = 0.9,

where, per position, the teacher distribution is fused from the candidates: the target's own initial
distribution (the reference's "ref model") and every other source's top-k distribution moved into the target's
positions and vocabulary by token alignment. The fusion function is MinCE (the candidate with the lowest
cross-entropy on the text wins) or AvgCE (candidates weighted by their CE), judged per chunk of a document
(``sequence``), per token, or per packed block (``block``, the reference's accidental behaviour).

Stages (all in :mod:`fusers.distill`): chunk the corpus so that every model reads the same text ->
teacher top-k per source (stored in memory-mapped shards under ``$BENCH_HOME/cache/distill``, keyed by
content and resumable, or computed per batch with ``teacher_mode=online``) -> alignment into the target
(stored the same way; under ``--processes N`` each process computes 1/N of every store's shards, and
`bench teachers` runs these two stages alone, on N machines with ``--shard I/N``) -> training with ``harness.train`` under ``accelerate`` (``accelerate launch`` scales it
to several processes) -> the trained target saved with its tokenizer.

``teacher_mode=fused`` stores only what training reads, the fused row per target token
(:mod:`fusers.distill.fused_store`: 32 bytes per token at k = 10 under MinCE with ``fused_logp=uint8``, against
69 + 65 per source in stored mode), computed ahead with the teachers resident together (or from teacher and
aligned stores already there) and split over processes and jobs the same way; the fusion is then fixed in the
store (another one builds another store), and ``granularity=block`` (Q6) is refused.

Defaults fit the embedded zoo: the target is ``gpt2-code`` (it also shares its byte-level BPE with the Llama
family), fused with the docs and math experts, whose tokenizers differ (Unigram, SentencePiece-style BPE),
on the union of the three domains' training text. ``reference_compat`` takes quirk ids (q1, q5, q6, q9, q11,
q12, q13) or ``"all"``, which also aligns with FuseLLM's MinED DTW (``align=dtw_ed``; an explicit other
``align`` is refused) and applies its matching rules (spec §11; docs/reference-compat.md lists every quirk).

``distill_loss=uld`` replaces the soft CE by ULD (Boizard et al. 2024, :mod:`fusers.distill.uld`): the L1 distance
between the student's and the MinCE-winning teacher's sorted probabilities, the teacher's own top-k at the aligned
row (no vocabulary map; those aligned rows are stored under their own key), for a cross-tokenizer distillation
baseline on the same data, stores and loop. It requires ``fusion=min_ce`` and ``teacher_mode`` stored or online.

``distill_loss=dskd`` replaces the fused soft CE by dual-space knowledge distillation (Zhang et al., EMNLP 2024,
https://arxiv.org/abs/2406.17328; :mod:`fusers.distill.dskd`): every other source is a teacher, run per batch on
the blocks' text for its hidden states, aligned by cross-model attention, with trainable projectors that are
dropped when the target is saved; the loss is ``λ·CLM + (1-λ)·mean over teachers of the DSKD terms``, and the
fusion settings (top_k, fusion, granularity, temperature, tau, align, teacher_mode) do not apply.

What a seed changes (``--seed``, ``--seeds``): the order of the training batches (and, with DSKD, the projectors'
initial weights); the target starts from the pivot's weights and the teachers are deterministic, so nothing else.

Run::

    bench run --fuser fusellm
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from harness.api import FuseContext, Fuser, FusionResult, PrepareContext, PreparedStore
from harness.errors import BenchError

if TYPE_CHECKING:
    from harness.model import ModelRef

# The reference quirks this fuser can reproduce (spec §11); "all" means these.
QUIRKS = ("q1", "q5", "q6", "q9", "q11", "q12", "q13")


class FuseLLM(Fuser):
    """Continual training of the target on MinCE/AvgCE-fused source distributions (cross-tokenizer)."""

    name: ClassVar[str] = "fusellm"
    #: Part of the runner's artifact key: bump when the same config would now train a different model.
    version: ClassVar[str] = "1"
    paper: ClassVar[str] = "https://arxiv.org/abs/2401.10491"
    runtime_only: ClassVar[bool] = False
    #: fuse() is accelerate-aware: `bench run --processes N` runs it in N processes (DDP).
    distributed: ClassVar[bool] = True
    default_sources: ClassVar[list[str]] = ["zoo:gpt2-code", "zoo:neox-docs", "zoo:mpt-math"]
    default_target: ClassVar[str] = "zoo:gpt2-code"

    @classmethod
    def control_config(cls, cfg: BaseModel) -> BaseModel:
        """The data-only control (``--control``): the same target, corpus, steps and seed with λ = 1, i.e. plain
        continued training (the teachers' rows get weight 0). Whatever the distillation loss, that is the same
        training, so the control is the soft-CE one (stored teachers): FuseLLM, ULD and DSKD runs of one budget and
        seed share one control model (one cache key) instead of training it again."""
        update: dict[str, Any] = {"lam": 1.0, "distill_loss": "soft_ce"}
        if cfg.distill_loss == "dskd":  # type: ignore[attr-defined]
            update["teacher_mode"] = "stored"  # DSKD forces online teachers; with λ = 1 no teacher row is read
        return cfg.model_copy(update=update)

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        top_k: int = Field(10, ge=1, description="Entries kept per position and teacher (reference: 10).")
        lam: float = Field(0.9, ge=0.0, le=1.0, description="Weight of the CLM loss; 1-lam goes to the fusion loss.")
        fusion: Literal["min_ce", "avg_ce", "avg_ce_softmax"] = Field(
            "min_ce", description="min_ce; avg_ce = softmax(exp(-CE)) (reference); avg_ce_softmax = softmax(-CE/tau).")
        granularity: Literal["sequence", "token", "block"] = Field(
            "sequence", description="What a CE is measured over: a document chunk, a token, or a packed block (Q6).")
        temperature: float = Field(1.0, gt=0.0, description="Teacher temperature on the kept top-k logits.")
        tau: float = Field(1.0, gt=0.0, description="Temperature of avg_ce_softmax.")
        align: Literal["offsets", "dtw_ed"] = Field("offsets", description="Token alignment: byte offsets or the reference MinED DTW.")
        steps: int = Field(400, ge=1, description="Optimizer steps.")
        batch_size: int = Field(8, ge=1, description="Global batch in blocks of seq_len tokens.")
        seq_len: int = Field(256, ge=8, description="Tokens per training block, and the most any model reads per chunk.")
        lr: float | None = Field(
            None, gt=0.0, description="Peak learning rate (AdamW, warmup then cosine); default: the paper's 1e-5 "
                                      "for real checkpoints, 1e-3 when the target is one of the tiny zoo's models.")
        warmup_steps: int = Field(20, ge=0, description="Linear warmup steps.")
        corpus_domains: list[str] = Field(default_factory=lambda: ["code", "docs", "math"],
                                          description="Training text: the union of these domains' training splits.")
        corpus_chars: int = Field(900_000, ge=1_000, description="Characters of training text, split evenly across domains.")
        data: str | None = Field(None, description="Your own training text instead of the built-in domains: a text, "
                                                   "JSONL ('text') or parquet file, a folder of them, or a datasets "
                                                   "folder (harness/text_data.py); corpus_chars of it are read.")
        teacher_mode: Literal["stored", "online", "fused"] = Field(
            "stored", description="stored: teacher top-k cached on disk (resumable); online: computed per batch; "
                                  "fused: only the fused row per target token stored (smallest; fusion fixed ahead).")
        fused_logp: Literal["uint8", "float16", "float32"] = Field(
            "uint8", description="teacher_mode=fused: how the fused log-probs are kept (uint8: quantised to 1/16 "
                                 "nat; float16/float32: as computed).")
        distill_loss: Literal["soft_ce", "uld", "dskd"] = Field(
            "soft_ce", description="The (1-lam) term: soft_ce = CE against the fused top-k in the target's "
                                   "vocabulary (FuseLLM); uld = Universal Logit Distillation against the MinCE "
                                   "winner's own sorted top-k, no vocabulary map (fusers/distill/uld.py); dskd = "
                                   "dual-space KD (Zhang et al. 2024) from each other source, teachers run per "
                                   "batch (fusers/distill/dskd.py).")
        reference_compat: list[str] | Literal["all"] = Field(
            default_factory=list, description=f"Reference quirks to reproduce: any of {', '.join(QUIRKS)}, or 'all'.")
        dskd_temperature: float = Field(2.0, gt=0.0, description="distill_loss=dskd: the KD temperature of its KLs.")
        dskd_projector_lr: float = Field(1e-3, gt=0.0, description="distill_loss=dskd: peak learning rate of the "
                                                                    "projectors (dropped at save).")

        @field_validator("data")
        @classmethod
        def _data_exists(cls, value: str | None) -> str | None:
            if value is not None and not Path(value).expanduser().exists():
                raise ValueError(f"data {value!r} does not exist (give a text/JSONL/parquet file or a folder)")
            return value

        @field_validator("corpus_domains")
        @classmethod
        def _known_domains(cls, domains: list[str]) -> list[str]:
            from harness.corpus import DOMAINS

            unknown = [d for d in domains if d not in DOMAINS]
            if unknown or not domains:
                raise ValueError(f"corpus_domains must be a non-empty subset of {list(DOMAINS)}, got {domains}")
            return domains

        @field_validator("reference_compat", mode="before")
        @classmethod
        def _known_quirks(cls, value: Any) -> Any:
            if isinstance(value, str) and value != "all":
                value = [value]
            if isinstance(value, list):
                bad = [q for q in value if q not in QUIRKS]
                if bad:
                    raise ValueError(f"fusellm reproduces quirks {', '.join(QUIRKS)} (or 'all'); got {bad}")
            return value

        @model_validator(mode="after")
        def _steps_and_warmup(self) -> FuseLLM.Config:
            if self.warmup_steps > self.steps:
                raise ValueError(f"warmup_steps={self.warmup_steps} exceeds steps={self.steps}")
            return self

        @model_validator(mode="after")
        def _all_means_the_reference_alignment(self) -> FuseLLM.Config:
            """``reference_compat="all"`` aligns with FuseLLM's MinED DTW; an explicit other ``align`` is refused."""
            if self.reference_compat == "all":
                if "align" in self.model_fields_set and self.align != "dtw_ed":
                    raise ValueError(f"reference_compat=all reproduces FuseLLM's MinED DTW alignment, but "
                                     f"align={self.align} was given; drop align or set align=dtw_ed")
                self.align = "dtw_ed"
            return self

        @model_validator(mode="after")
        def _fused_store_needs_chunk_local_fusion(self) -> FuseLLM.Config:
            if self.teacher_mode == "fused" and (self.granularity == "block" or "q6" in self.compat):
                raise ValueError("teacher_mode=fused stores the fusion per chunk, but granularity block (quirk Q6) "
                                 "chooses per packed block across chunks; use granularity=sequence or token "
                                 "(without q6), or teacher_mode=stored")
            return self

        @model_validator(mode="after")
        def _uld_needs_one_teacher_per_row(self) -> FuseLLM.Config:
            if self.distill_loss == "uld" and self.fusion != "min_ce":
                raise ValueError(f"distill_loss=uld compares one teacher's sorted distribution, but fusion="
                                 f"{self.fusion} mixes candidates of different vocabularies in a row; set "
                                 f"fusion=min_ce")
            if self.distill_loss == "uld" and self.teacher_mode == "fused":
                raise ValueError("teacher_mode=fused stores rows mapped into the target's vocabulary, but "
                                 "distill_loss=uld reads the teachers' own rows; use teacher_mode=stored or online")
            return self

        @model_validator(mode="after")
        def _dskd_runs_its_own_teachers(self) -> FuseLLM.Config:
            if self.distill_loss == "dskd":
                if "teacher_mode" in self.model_fields_set and self.teacher_mode != "online":
                    raise ValueError(f"distill_loss=dskd runs its teachers per batch (it needs their hidden states, "
                                     f"which no store keeps); drop teacher_mode={self.teacher_mode}")
                if self.reference_compat:
                    raise ValueError("reference_compat reproduces FuseLLM's own loss and alignment; drop it with "
                                     "distill_loss=dskd")
                self.teacher_mode = "online"  # what it does (and what a re-read of the dumped config accepts)
            return self

        @model_serializer(mode="wrap")
        def _fused_logp_only_when_fused(self, handler: Any) -> dict[str, Any]:
            """``fused_logp`` only where it changes the result (teacher_mode=fused), and ``distill_loss`` and the
            ``dskd_*`` settings only with DSKD, so the fuse hashes of the other modes stay what they were before
            these existed."""
            data = handler(self)
            if self.teacher_mode != "fused":
                data.pop("fused_logp", None)
            if self.distill_loss == "soft_ce":
                data.pop("distill_loss", None)
            if self.distill_loss != "dskd":
                for name in ("dskd_temperature", "dskd_projector_lr"):
                    data.pop(name, None)
            return data

        @property
        def compat(self) -> frozenset[str]:
            return frozenset(QUIRKS) if self.reference_compat == "all" else frozenset(self.reference_compat)

    def fuse(self, sources: list[ModelRef], target: ModelRef | None, cfg: BaseModel, ctx: FuseContext) -> FusionResult:
        if not sources and target is None:
            raise BenchError("fusellm needs sources", "pass --sources A,B (the target defaults to the first)")
        return _Run(cfg, sources, target, ctx).run()

    def prepare(self, sources: list[ModelRef], target: ModelRef | None, cfg: BaseModel,
                ctx: PrepareContext) -> list[PreparedStore]:
        """`bench teachers --fuser fusellm`: the teacher stores (target first) and the aligned stores that ``fuse``
        with the same arguments reads, this job's share of their shards computed and nothing else."""
        assert isinstance(cfg, FuseLLM.Config)
        if not sources and target is None:
            raise BenchError("fusellm needs sources", "pass --sources A,B (the target defaults to the first)")
        if cfg.distill_loss == "dskd":
            raise BenchError("distill_loss=dskd runs its teachers per batch and keeps no teacher stores to compute "
                             "ahead", "run `bench run` directly, or drop --set distill_loss=dskd")
        if cfg.teacher_mode == "online":
            raise BenchError("teacher_mode=online keeps no teacher stores to compute ahead",
                             "drop --set teacher_mode=online (stored is the default, fused the smallest)")
        return _Run(cfg, sources, target, ctx).prepare()


def fusion_documents(domains: list[str], max_chars: int) -> list[str]:
    """The union of the domains' training text, ``max_chars`` in all, in one fixed shuffled order.

    The order does not depend on the run's seed, so the teacher caches are shared across seeds; the
    training order of blocks does.
    """
    from harness.corpus import train_slice

    docs = [doc for domain in domains for doc in train_slice(domain, max_chars // len(domains))]
    random.Random(0).shuffle(docs)
    return docs


def effective_settings(cfg: FuseLLM.Config) -> tuple[str, bool, Any]:
    """``(granularity, per_token_ce, AlignOptions)`` after ``reference_compat``.

    Q1: fallback one-hot on the current token; Q5: the first of colliding top-k entries; Q6: MinCE/AvgCE per
    packed block (whatever ``granularity`` says, as the reference averages even token-level CEs per block);
    Q13: CE per token instead of per UTF-8 byte. ``"all"`` also applies FuseLLM's matching rules (soft MinED
    match without the same-end check, one-to-many positions fall back). ``distill_loss=uld`` keeps the teachers'
    own entries at the aligned rows (``vocabulary="teacher"``, :mod:`fusers.distill.uld`).
    """
    from fusers.distill import AlignOptions

    compat = cfg.compat
    everything = cfg.reference_compat == "all"
    options = AlignOptions(mode=cfg.align, fallback="current" if "q1" in compat else "next",
                           collision="first" if "q5" in compat else "sum",
                           match="reference" if everything else "surface",
                           one_to_many="fallback" if everything else "last", same_end=not everything,
                           vocabulary="teacher" if cfg.distill_loss == "uld" else "target")
    return ("block" if "q6" in compat else cfg.granularity), "q13" in compat, options


@dataclass
class _Store:
    """One store of the run, as the teacher stage left it: what it holds (``kind``, ``model``) and the seconds
    this process spent on it."""

    kind: str
    model: str
    store: Any
    seconds: float


class _Run:
    """One fusion run: the stages of the module docstring, in order, with what they measured."""

    def __init__(self, cfg: FuseLLM.Config, sources: list[ModelRef], target: ModelRef | None,
                 ctx: FuseContext | PrepareContext):
        self.cfg, self.ctx = cfg, ctx
        from fusers.common import default_lr, pivot_and_sources

        self.pivot, self.others = pivot_and_sources(sources, target)
        self.lr = cfg.lr if cfg.lr is not None else default_lr(self.pivot, paper=1e-5, zoo=1e-3)
        self.granularity, self.per_token, self.options = effective_settings(cfg)

    def run(self) -> FusionResult:
        from fusers import distill as D
        from fusers.distill.uld import uld_term
        from harness.model import load_hf
        from harness.train import TrainConfig

        cfg = self.cfg
        assert isinstance(self.ctx, FuseContext)
        accelerator = D.make_accelerator()
        model, tokenizer = load_hf(self.pivot, dtype="float32")  # the model trained (its own teacher rows too)
        docs = self._corpus(model, tokenizer)
        if cfg.distill_loss == "dskd":
            return self._run_dskd(accelerator, model, tokenizer, docs)

        names = [self.pivot.name, *(ref.name for ref in self.others)]
        stores_report: list[dict[str, Any]] = []
        shares = None  # fused mode: the candidates' weights, summed when the store was built
        if cfg.teacher_mode in ("stored", "fused"):
            split = D.ShardSplit.of_processes()  # every process computes its share of each store's shards
            if cfg.teacher_mode == "stored":
                stores = self._stores(model, split)
                candidates, input_ids, report = self._read(stores)
            else:
                stores = [self._fused(model, split)]
                corpus, shares, report = self._read_fused(stores[0])
            stores_report = [{"kind": s.kind, "model": s.model, "key": s.store.root.name, "shards": s.store.n_shards,
                              "computed": split.total(len(s.store.written))} for s in stores]
        else:
            candidates, input_ids, report = self._online(model)
        if shares is None:
            corpus = D.FusionCorpus(input_ids, candidates, seq_len=cfg.seq_len, fusion=cfg.fusion,
                                    granularity=self.granularity, temperature=cfg.temperature, tau=cfg.tau,
                                    per_token=self.per_token)
        train_cfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=self.lr,
                                warmup_steps=cfg.warmup_steps, seed=self.ctx.seed,
                                decay="linear" if "q9" in cfg.compat else "cosine")
        start = time.perf_counter()
        model.train()
        model, stats = D.train_with_accelerate(
            model, corpus, train_cfg, D.fusion_loss(cfg.lam, D.mean_across_processes(accelerator),
                                                    distill=uld_term if cfg.distill_loss == "uld" else None),
            accelerator=accelerator)
        self.ctx.timings["train"] = time.perf_counter() - start

        out_dir = Path(self.ctx.out_dir)
        model.eval()
        D.save_trained(accelerator, model, tokenizer, out_dir)
        details = {
            "target": self.pivot.spec,
            "distill_loss": cfg.distill_loss,
            "candidates": [{"name": n, **r} for n, r in zip(names, report, strict=True)],
            "corpus": {"documents": len(docs), "chunks": len(self.chunks), "target_tokens": int(len(corpus.input_ids)),
                       "blocks": len(corpus), "epochs": round(cfg.steps * cfg.batch_size / len(corpus), 3),
                       "fingerprint": self.fingerprint},
            "effective": {"granularity": self.granularity, "ce_per": "token" if self.per_token else "byte",
                          "align": self.options.to_dict(), "width": self.width, "processes": accelerator.num_processes},
            "distributed": D.distributed_details(accelerator),
            "lr": self.lr,
            "timings": {k: round(v, 2) for k, v in self.ctx.timings.items()},
            **D.details_of(stats, cfg.lam, names, corpus.selected if shares is None else shares),
        }
        if stores_report:  # shards computed in this run (0 everywhere: all found, e.g. made by `bench teachers`)
            details["stores"] = stores_report
        return FusionResult(path=out_dir, details=details)

    def _run_dskd(self, accelerator: Any, model: Any, tokenizer: Any, docs: list[str]) -> FusionResult:
        """Training with the DSKD loss (:mod:`fusers.distill.dskd`): every other source a teacher run per batch,
        the student trained together with the projectors, saved alone."""
        import numpy as np

        from fusers import distill as D
        from fusers.distill import dskd
        from harness.model import load_hf
        from harness.train import TrainConfig

        cfg = self.cfg
        assert isinstance(self.ctx, FuseContext)
        if not self.others:
            raise BenchError("distill_loss=dskd distills the other sources into the target, and there is none",
                             "pass --sources with at least one model besides the target")
        teachers = []
        for ref, enc in zip(self.others, self.encoders, strict=True):
            m, _ = load_hf(ref)
            _check_context(ref, m, cfg.seq_len)
            teachers.append(dskd.DSKDTeacher(ref.name, m.eval().requires_grad_(False), enc))
        ids = [self.target.ids(c) for c in self.chunks]
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64)
        corpus = dskd.DSKDCorpus(np.concatenate([np.asarray(x, dtype=np.int64) for x in ids]), self.chunks, offsets,
                                 self.target, [t.encoder for t in teachers], cfg.seq_len, shared=self.shared)
        try:
            student = dskd.DualSpaceStudent(model, [t.model for t in teachers], seed=self.ctx.seed)
        except ValueError as e:
            raise BenchError(f"distill_loss=dskd cannot project between these models: {e}",
                             "use sources whose token embeddings have their hidden width") from e
        train_cfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=self.lr,
                                warmup_steps=cfg.warmup_steps, seed=self.ctx.seed)
        start = time.perf_counter()
        student.train()
        trained, stats = D.train_with_accelerate(
            student, corpus, train_cfg,
            dskd.dskd_loss(cfg.lam, teachers, temperature=cfg.dskd_temperature,
                           reduce=D.mean_across_processes(accelerator)),
            accelerator=accelerator, lr_scales={"projectors.": cfg.dskd_projector_lr / self.lr})
        self.ctx.timings["train"] = time.perf_counter() - start

        out_dir = Path(self.ctx.out_dir)
        trained.eval()
        D.save_trained(accelerator, trained, tokenizer, out_dir, part="student")
        details = D.details_of(stats, cfg.lam, [t.name for t in teachers], np.zeros(len(teachers)))
        del details["candidate_share"]  # no fusion of candidates: every teacher weighs the same
        details["loss_curves"].update({k: [round(x, 5) for x in stats.extras.get(k, [])] for k in dskd.TERMS})
        return FusionResult(path=out_dir, details={
            "target": self.pivot.spec,
            "distill_loss": "dskd",
            "dskd": {"teachers": [t.name for t in teachers], "alignment": "cross-model attention",
                     "temperature": cfg.dskd_temperature, "projector_lr": cfg.dskd_projector_lr,
                     "projector_parameters": sum(p.numel() for p in student.projectors.parameters())},
            "corpus": {"documents": len(docs), "chunks": len(self.chunks), "target_tokens": int(len(corpus.input_ids)),
                       "blocks": len(corpus), "epochs": round(cfg.steps * cfg.batch_size / len(corpus), 3),
                       "fingerprint": self.fingerprint},
            "distributed": D.distributed_details(accelerator),
            "lr": self.lr,
            "timings": {k: round(v, 2) for k, v in self.ctx.timings.items()},
            **details,
        })

    def prepare(self) -> list[PreparedStore]:
        """The teacher stage alone (`bench teachers`): this job's share of every store's shards."""
        from fusers import distill as D
        from harness.model import load_hf

        assert isinstance(self.ctx, PrepareContext)
        split = D.ShardSplit.of_processes(self.ctx.job, self.ctx.jobs)
        # loaded as `fuse` loads it: the target's teacher rows come from the model it trains, in float32
        model, tokenizer = load_hf(self.pivot, dtype="float32")
        self._corpus(model, tokenizer)
        stores = [self._fused(model, split)] if self.cfg.teacher_mode == "fused" else self._stores(model, split)
        return [D.prepared_store(s.kind, s.model, s.store, s.seconds, split) for s in stores]

    # --- stages -----------------------------------------------------------------------------------

    def _corpus(self, model: Any, tokenizer: Any) -> list[str]:
        """Everything before the teacher stage: the target's width, the encoders, the corpus in chunks that every
        tokenizer reads whole, its fingerprint and the vocabulary maps. Returns the documents."""
        from fusers import distill as D
        from fusers.common import load_tokenizer, target_width

        cfg, compat = self.cfg, self.cfg.compat
        _check_context(self.pivot, model, cfg.seq_len)
        self.width = target_width(D.logit_width(model), len(tokenizer.get_vocab()), reference_compat=compat)
        self.target = D.ChunkEncoder(tokenizer)
        self.encoders = [D.ChunkEncoder(load_tokenizer(ref)) for ref in self.others]

        start = time.perf_counter()
        if cfg.data is not None:
            from harness.text_data import load_documents

            docs = load_documents(cfg.data, cfg.corpus_chars)
        else:
            docs = fusion_documents(cfg.corpus_domains, cfg.corpus_chars)
        self.chunks = D.chunk_documents(docs, [self.target.tokenizer, *(e.tokenizer for e in self.encoders)],
                                        cfg.seq_len)
        self.fingerprint = D.chunks_fingerprint(self.chunks, cfg.seq_len)
        self.shared = [D.shares_vocabulary(e.tokenizer, tokenizer) for e in self.encoders]
        # also for a shared vocabulary (then the identity): a chunk it tokenizes differently is aligned
        self.vocabs = [self._vocab_map(ref, e.tokenizer, tokenizer) for ref, e in zip(self.others, self.encoders,
                                                                                     strict=True)]
        self.ctx.timings["corpus"] = time.perf_counter() - start
        return docs

    def _vocab_map(self, ref: ModelRef, source_tokenizer: Any, target_tokenizer: Any):
        from fusers.common import config_width, source_vocab_map, target_width

        width = target_width(config_width(ref), len(source_tokenizer.get_vocab()), reference_compat=self.cfg.compat)
        return source_vocab_map(source_tokenizer, target_tokenizer, width, self.width, self.cfg.compat,
                                by_surface=self.cfg.reference_compat != "all")

    def _store_keys(self) -> tuple[list[str], list[str]]:
        """The content keys of the teacher stores (target first) and of the aligned stores (one per other source)."""
        from fusers import distill as D
        from fusers.common import vocab_digest

        k = self.cfg.top_k
        # the target's own rows come from the model being trained, loaded in float32
        teacher_keys = [D.teacher_store_key(self.pivot, self.fingerprint, k, dtype="float32"),
                        *(D.teacher_store_key(ref, self.fingerprint, k) for ref in self.others)]
        aligned_keys = [D.store_key("aligned", key, self.pivot.content_hash(), self.width, self.options.to_dict(),
                                    vocab_digest(vocab)) for key, vocab in zip(teacher_keys[1:], self.vocabs, strict=True)]
        return teacher_keys, aligned_keys

    def _loader(self, ref: ModelRef):
        """A function that loads source ``ref`` as a teacher (the placement's precision and device)."""
        from harness.model import load_hf

        def load() -> Any:
            m, _ = load_hf(ref)
            _check_context(ref, m, self.cfg.seq_len)
            return m
        return load

    def _stores(self, model: Any, split: Any) -> list[_Store]:
        """Teacher stores (target first), then aligned stores (one per other source), both content-keyed under the
        cache dir, with ``split``'s share of their missing shards computed here. Every process of a launch calls
        this: each computes its share of a store, then they wait for each other before the next one."""
        from fusers import distill as D
        from harness import paths

        cfg = self.cfg
        root = paths.cache_dir() / "distill"
        teacher_keys, aligned_keys = self._store_keys()

        stores = []
        start = time.perf_counter()
        for ref, enc, key, load in zip((self.pivot, *self.others), (self.target, *self.encoders), teacher_keys,
                                       (lambda: model, *(self._loader(ref) for ref in self.others)), strict=True):
            began = time.perf_counter()
            store = D.ensure_teacher_store(root / "teachers" / key, self.chunks, enc, load, cfg.top_k,
                                           about={"model": ref.spec}, split=split)
            stores.append(_Store("teacher", ref.spec, store, time.perf_counter() - began))
        self.ctx.timings["teachers"] = time.perf_counter() - start

        start = time.perf_counter()
        for ref, enc, teacher, akey, vocab, shared in zip(self.others, self.encoders, stores[1:], aligned_keys,
                                                          self.vocabs, self.shared, strict=True):
            began = time.perf_counter()
            store = D.ensure_aligned_store(root / "aligned" / akey, self.chunks, self.target, enc, teacher.store,
                                           vocab, self.width, self.options, shared_vocab=shared,
                                           about={"source": ref.spec, "target": self.pivot.spec}, split=split)
            stores.append(_Store("aligned", f"{ref.spec} -> {self.pivot.spec}", store, time.perf_counter() - began))
        self.ctx.timings["align"] = time.perf_counter() - start
        return stores

    def _fused(self, model: Any, split: Any) -> _Store:
        """The fused store (:mod:`fusers.distill.fused_store`), content-keyed under the cache dir, with ``split``'s
        share of its missing shards computed here: each shard from the teacher or aligned stores that hold it
        already, else from the teachers, loaded when first needed and resident together. Writes no other store."""
        from fusers import distill as D
        from harness import paths

        cfg = self.cfg
        root = paths.cache_dir() / "distill"
        shard_size = 128  # the teacher stores' (ensure_teacher_store's default), so their shards are read one for one
        teacher_keys, aligned_keys = self._store_keys()
        settings = D.FusedSettings(cfg.fusion, self.granularity, temperature=cfg.temperature,  # type: ignore[arg-type]
                                   tau=cfg.tau, per_token=self.per_token, logp=cfg.fused_logp)
        n = len(self.chunks)
        teacher_stores = [D.ShardedStore.existing(root / "teachers" / key, n, shard_size, D.teacher_layout(cfg.top_k))
                          for key in teacher_keys]
        aligned_stores = [None, *(D.ShardedStore.existing(root / "aligned" / key, n, shard_size,
                                                          D.aligned_layout(self.width, self.options))
                                  for key in aligned_keys)]
        teachers = [D.ResidentTeacher(self.pivot.name, lambda: model, self.target, None, True, teacher_stores[0])]
        for c, (ref, enc, vocab, shared) in enumerate(zip(self.others, self.encoders, self.vocabs, self.shared,
                                                          strict=True), start=1):
            teachers.append(D.ResidentTeacher(ref.name, self._loader(ref), enc, vocab, shared, teacher_stores[c],
                                              aligned_stores[c]))
        rows = D.CandidateRows(teachers, self.chunks, cfg.top_k, self.width, self.options)
        # ids below the target's logit width and its tokenizer's length (input ids)
        id_bound = max(self.width, len(self.target.tokenizer))
        start = time.perf_counter()
        store = D.ensure_fused_store(root / "fused" / D.fused_store_key([teacher_keys[0], *aligned_keys], settings),
                                     self.chunks, rows, settings, id_bound, shard_size=shard_size,
                                     about={"target": self.pivot.spec, "sources": [r.spec for r in self.others]},
                                     split=split)
        seconds = time.perf_counter() - start
        self.ctx.timings["fused"] = seconds
        self.origins = [dict(o) for o in rows.origins]
        return _Store("fused", f"{len(teachers)} candidates -> {self.pivot.spec}", store, seconds)

    def _read_fused(self, fused: _Store) -> tuple[Any, Any, list[dict[str, Any]]]:
        """The training corpus of the fused store, each candidate's weight summed over the corpus (who won, recorded
        when the store was built) and a report per candidate."""
        from fusers import distill as D

        corpus = D.fused_corpus(fused.store, self.cfg.seq_len)
        weights, status = D.fused_shares(fused.store)
        n_rows = len(corpus.input_ids)
        report = []
        for c in range(1 + len(self.others)):
            entry: dict[str, Any] = {"role": "target" if c == 0 else "source", "fused": True,
                                     "rows_from": self.origins[c]}
            if c > 0:
                entry["shared_vocab"] = self.shared[c - 1]
                entry.update(_count_shares(status[c]))
            report.append(entry)
        report[0]["fused_bytes_per_token"] = round(fused.store.nbytes() / max(n_rows, 1), 2)
        return corpus, weights, report

    def _read(self, stores: list[_Store]) -> tuple[Any, Any, list[dict[str, Any]]]:
        """The candidates (the target's own rows, then each source's aligned rows), the target's token stream and
        a report per candidate, from the complete stores of :meth:`_stores`."""
        from fusers import distill as D

        n_teachers = 1 + len(self.others)
        teacher_stores = [s.store for s in stores[:n_teachers]]
        target_store, aligned = teacher_stores[0], [s.store for s in stores[n_teachers:]]
        candidates = D.StreamCandidates.from_stores([self.pivot.name, *(r.name for r in self.others)],
                                                    [target_store, *aligned])
        input_ids = target_store.rows("tokens")[:]
        report = []
        for c, teacher in enumerate(teacher_stores):
            n_tokens = len(teacher.rows("tokens"))
            entry = {"role": "target" if c == 0 else "source",
                     "teacher_bytes_per_token": round(teacher.nbytes() / max(n_tokens, 1), 2),
                     "teacher_tokens": n_tokens}
            if c > 0:
                entry["shared_vocab"] = self.shared[c - 1]
                entry.update(_status_shares(aligned[c - 1].rows("status")[:]))
            report.append(entry)
        return candidates, input_ids, report

    def _online(self, model: Any) -> tuple[Any, Any, list[dict[str, Any]]]:
        """Teachers kept in memory and run per batch; the target's initial distribution from a frozen copy."""
        import numpy as np

        from fusers import distill as D
        from harness.model import load_hf

        frozen = copy.deepcopy(model).eval()
        teachers = [D.OnlineTeacher(self.pivot.name, frozen, self.target)]
        for ref, enc, vocab, shared in zip(self.others, self.encoders, self.vocabs, self.shared, strict=True):
            m, _ = load_hf(ref)
            _check_context(ref, m, self.cfg.seq_len)
            teachers.append(D.OnlineTeacher(ref.name, m, enc, vocab, shared))
        ids = [self.target.ids(c) for c in self.chunks]
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64)
        candidates = D.OnlineCandidates(teachers, self.chunks, offsets, self.cfg.top_k, self.width, self.options)
        report = [{"role": "target" if c == 0 else "source", "online": True} for c in range(len(teachers))]
        return candidates, np.concatenate([np.asarray(x, dtype=np.int64) for x in ids]), report


def _status_shares(status: Any) -> dict[str, float]:
    import numpy as np

    return _count_shares(np.bincount(np.asarray(status, dtype=np.int64), minlength=3))


def _count_shares(counts: Any) -> dict[str, float]:
    """Shares of mapped, fallback and empty rows from their counts (indexed by status)."""
    from fusers.align import EMPTY, FALLBACK, MAPPED

    n = max(int(sum(counts)), 1)
    return {"mapped": round(int(counts[MAPPED]) / n, 4), "fallback": round(int(counts[FALLBACK]) / n, 4),
            "empty": round(int(counts[EMPTY]) / n, 4)}


def _check_context(ref: ModelRef, model: Any, seq_len: int) -> None:
    from harness.model import max_length

    if seq_len > max_length(model):
        raise BenchError(f"seq_len={seq_len} exceeds the context of {ref.name} ({max_length(model)} tokens)",
                         f"set --set seq_len={max_length(model)} or less")
