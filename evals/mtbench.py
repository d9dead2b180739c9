"""MT-Bench-style two-turn chat evaluation, graded 1-10 by an LLM judge.

Run:  bench eval --model zoo:llama-base --suite mtbench --set mtbench.max_gen_toks=64
      bench eval --model ./chat-model --suite mtbench \\
          --set mtbench.judge_url=http://localhost:8000/v1 --set mtbench.judge_model=judge-llm
      bench eval --model ./chat-model --suite mtbench --set mtbench.questions=PATH/question.jsonl \\
          --set mtbench.references=PATH/reference_answer/gpt-4.jsonl --set mtbench.judge_prompts=PATH/judge_prompts.jsonl

**Questions** are FastChat's ``question.jsonl`` format: one JSON object a line with ``question_id``
(int), ``category``, ``turns`` (two user messages) and optionally ``reference`` (reference answers,
one per turn). Reference answers may also come from a FastChat *answer* file (``references``:
``question_id`` + ``choices[0].turns``), which wins over an inline ``reference``. Without
``questions`` the embedded ``evals/data/mtbench_mini.jsonl`` is used: 24 short questions of FuseBench's
own, three for each of MT-Bench's eight categories, with references for math, reasoning and coding.

**Answers.** Turn 1 sends ``[user q1]``; turn 2 sends ``[user q1, assistant a1, user q2]`` with the
model's own first answer, so the second turn tests whether the model follows up on its own
conversation. A model whose tokenizer has a chat template is prompted through it (stopping at the
template's end-of-turn marker, plus EOS); anything else — a tokenizer without a template, or a runtime
``LM`` without a tokenizer such as an ensemble — gets a plain transcript::

    User: <q1>
    Assistant: <a1>
    User: <q2>
    Assistant:

and stops at the next ``"\\nUser:"``. Decoding is greedy; all turn-1 prompts go to the model in one
``generate_until`` call, then all turn-2 prompts.

**Judging** is single-answer grading on 1-10. Questions in math/reasoning/coding are graded against
their reference answer (when it has one); a turn-2 verdict sees the whole conversation but grades the
second reply. The four judge prompts (plain / with reference, turn 1 / turn 2;
:mod:`harness.judge_prompts`) are FuseBench's own wording unless ``judge_prompts`` points at FastChat's
``judge_prompts.jsonl`` (entries ``single-v1``, ``single-math-v1``, ``single-v1-multi-turn``,
``single-math-v1-multi-turn``). The judge is an OpenAI-compatible endpoint (``judge_url``) or a local
model (``judge_model`` alone); see :mod:`harness.judge`. Each answer is judged ``judge_repeats`` times.
How a rating is read depends on the prompts, side by side:

* FuseBench's own prompts: the *last* ``[[N]]`` (spaces allowed inside, 1 <= N <= 10) -- its prompts ask the
  judge to end with the rating, so an explanation that quotes the format earlier does not count;
* FastChat's ``judge_prompts.jsonl``: FastChat's own rule, so that scores sit beside its numbers -- the
  *first* ``[[N]]``, else the first ``[N]``, no range check (:func:`harness.judge.parse_rating_fastchat`).

A reply without a rating is a *judge failure* under either rule: counted, and left out of the mean, never
a number.

**Pairwise judging** (``judge_mode=pairwise``, FastChat's ``pairwise-baseline`` mode): each answer is judged against
the answer of a baseline to the same question and turn, ``pairwise_baseline``: a model (``zoo:NAME``, a folder, a hub
id: its answers are generated as the evaluated model's are, once per placement, and kept in
``$BENCH_HOME/cache/mtbench-baseline/``) or a FastChat answer file (``model_answer/<model>.jsonl``), e.g. the run's
target. The judge sees both answers twice, the evaluated one first as assistant A, then as assistant B; as in
FastChat, a win (loss) needs both orders to agree, a tie in either order or two orders that disagree is a tie, and a
reply without a verdict (``[[A]]``, ``[[B]]``, ``[[C]]``; FastChat's rule with FastChat's prompts, the last mark with
FuseBench's own) leaves the answer out of the rates as a judge failure. An answer identical to the baseline's is a tie
without asking the judge. The prompts are FuseBench's own pairwise wording, or with ``judge_prompts`` FastChat's
``pair-v2``, ``pair-math-v1``, ``pair-v2-multi-turn`` and ``pair-math-v1-multi-turn`` (reference-guided for
math/reasoning/coding, as for single grading). Scores per task: ``win_rate``, ``tie_rate``, ``loss_rate`` (stderr
sqrt(p(1-p)/n), n = answers with both verdicts), ``win_rate_adjusted`` (wins + ties / 2, over n; FastChat's adjusted
win rate, the headline the leaderboard shows for such runs), ``inconsistent_rate`` (the share whose two orders
disagreed: the judge's position bias), ``judge_failures`` and ``judged``.

**Judge tokens.** Every evaluation that judged returns the judge's token counts (:class:`harness.judge.JudgeUsage`)
with its scores; the runner records them per run (`bench runs`, ``--judge-price`` for a cost).

**Without a judge** answers are generated and stored, and scores carry only ``judged = 0``: an
ungraded answer never gets a made-up rating.

**A local judge is a weak judge.** Ratings by a local model (``judge_model`` without ``judge_url``; ``make demo``
uses ``zoo:smollm2-135m``, 135M parameters, when it is added) are far from those of the GPT-4 judge behind
published MT-Bench scores. :meth:`MTBench.caveats` says so in one line, naming the judge and its parameter count
(:func:`local_judge_note`); the runner prints it after the run, and ``bench leaderboard`` and ``bench report``
print it beside MT-Bench scores that came from such a run (a run's suite arguments are part of every evaluation's
cache key, so scores stored for a run were rated by the judge its config names).

Scores, for tasks ``turn1``, ``turn2``, ``overall`` (both turns) and ``category/<name>``:
``score`` (mean rating, stderr = sample std of the answers' ratings / sqrt(n), n = answers rated),
``judge_std`` (mean over answers of the population std across repeats; lower = a steadier judge),
``judge_failures`` (replies without a rating, over all repeats) and ``judged`` (1 graded, 0 not).
Samples: one per (question, turn), with the exact prompt the model saw and the judge's first reply.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import statistics
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.api import EvalContext, EvalResult, Sample, Score, Suite
from harness.chat_data import PLAIN_STOP, chat_prompt, end_of_turn, has_chat_template
from harness.errors import BenchError, did_you_mean, read_jsonl
from harness.judge_prompts import DEFAULT_PAIR_PROMPTS, DEFAULT_PROMPTS, JudgePrompt, load_judge_prompts

if TYPE_CHECKING:
    from lm_eval.api.model import LM

    from harness.judge import ChatJudge, Message, PairVerdict, Verdict

logger = logging.getLogger(__name__)

#: Categories whose answers are judged against a reference answer (as in MT-Bench).
REFERENCE_CATEGORIES = ("math", "reasoning", "coding")
NOT_JUDGED_HINT = ("not judged: pass --judge-url/--judge-model (--set mtbench.judge_url=... or "
                   "mtbench.judge_model=...) to grade answers")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    questions: str | None = Field(None, description="FastChat question.jsonl; None = the embedded 24 questions.")
    references: str | None = Field(None, description="FastChat answer file used as reference answers.")
    judge_prompts: str | None = Field(None, description="FastChat judge_prompts.jsonl; None = FuseBench's own.")
    judge_url: str | None = Field(None, description="OpenAI-compatible base URL, e.g. http://localhost:8000/v1.")
    judge_model: str | None = Field(None, description="Model name at judge_url, or (no url) a local model ref.")
    judge_api_key_env: str = Field("OPENAI_API_KEY", description="Env var holding the endpoint's API key.")
    judge_repeats: int = Field(1, ge=1, description="Times each answer is judged (mean and std are kept).")
    judge_temperature: float = Field(0.0, ge=0.0, description="Judge sampling temperature (0 = greedy).")
    judge_max_tokens: int = Field(1024, ge=1, description="Cap on each judge reply.")
    judge_timeout: float = Field(120.0, gt=0, description="Seconds per judge request.")
    max_gen_toks: int = Field(256, ge=1, description="Cap on each generated answer, in tokens.")
    categories: list[str] | None = Field(None, description="Only these categories (default: all).")
    judge_mode: Literal["single", "pairwise"] = Field(
        "single", description="single: rate each answer 1-10; pairwise: judge it against pairwise_baseline's answer "
                              "in both orders (win / tie / loss rates).")
    pairwise_baseline: str | None = Field(
        None, description="pairwise: the baseline, a model (zoo:NAME, folder, hub id) or a FastChat answer file.")

    @model_validator(mode="after")
    def _pairwise_needs_a_baseline(self) -> Config:
        if self.judge_mode == "pairwise" and not self.pairwise_baseline:
            raise ValueError("judge_mode=pairwise needs a baseline: --set mtbench.pairwise_baseline=MODEL (e.g. the "
                             "run's target) or a FastChat model_answer .jsonl file")
        if self.judge_mode == "pairwise" and self.judge_repeats > 1:
            raise ValueError("judge_repeats applies to single grading; pairwise judging asks each order once")
        if self.pairwise_baseline and self.judge_mode != "pairwise":
            raise ValueError("pairwise_baseline is used only with judge_mode=pairwise")
        return self


# --- questions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    qid: int
    category: str
    turns: tuple[str, str]
    reference: tuple[str, ...] = ()

    def reference_for(self, turn: int) -> str | None:
        """The reference answer of turn 1 or 2, if there is one."""
        return self.reference[turn - 1] if len(self.reference) >= turn and self.reference[turn - 1] else None

    def doc(self) -> dict[str, Any]:
        return {"question_id": self.qid, "category": self.category, "turns": list(self.turns),
                **({"reference": list(self.reference)} if self.reference else {})}


def embedded_questions() -> Path:
    return Path(str(resources.files("evals") / "data" / "mtbench_mini.jsonl"))


def load_questions(path: str | Path | None = None) -> list[Question]:
    """Questions from a FastChat ``question.jsonl`` (None: the embedded set), validated line by line."""
    file = Path(path).expanduser() if path else embedded_questions()
    fix = 'one JSON object a line: {"question_id": 1, "category": "...", "turns": ["...", "..."]}'
    questions = parse_questions([(f"{file}:{number}", row) for number, row in read_jsonl(file, "question", fix)])
    if not questions:
        raise BenchError(f"question file {file} holds no questions", fix)
    return questions


def parse_questions(rows: list[tuple[str, dict[str, Any]]]) -> list[Question]:
    """Questions from FastChat ``question.jsonl`` rows, each given with where it was read (``file:line``)."""
    fix = 'one JSON object a line: {"question_id": 1, "category": "...", "turns": ["...", "..."]}'
    questions: list[Question] = []
    seen: set[int] = set()
    for where, row in rows:
        qid, category, turns, ref = row.get("question_id"), row.get("category"), row.get("turns"), row.get("reference")
        if isinstance(qid, bool) or not isinstance(qid, int):
            raise BenchError(f"{where}: question_id must be an integer, got {qid!r}", fix)
        if qid in seen:
            raise BenchError(f"{where}: duplicate question_id {qid}", "give every question its own id")
        if not isinstance(category, str) or not category:
            raise BenchError(f"{where}: category must be a non-empty string", fix)
        if not (isinstance(turns, list) and len(turns) == 2 and all(isinstance(t, str) and t for t in turns)):
            raise BenchError(f"{where}: turns must be a list of two non-empty strings", fix)
        if ref is not None and not (isinstance(ref, list) and 1 <= len(ref) <= 2
                                    and all(isinstance(r, str) for r in ref)):
            raise BenchError(f"{where}: reference must be a list of one or two strings", fix)
        seen.add(qid)
        questions.append(Question(qid, category, (turns[0], turns[1]), tuple(ref or ())))
    return questions


def load_references(path: str | Path) -> dict[int, tuple[str, ...]]:
    """Reference answers per question id from a FastChat answer file (``choices[0].turns``)."""
    file = Path(path).expanduser()
    fix = 'one JSON object a line: {"question_id": 1, "choices": [{"turns": ["...", "..."]}]}'
    refs: dict[int, tuple[str, ...]] = {}
    for number, row in read_jsonl(file, "reference answer", fix):
        try:
            qid, turns = row["question_id"], row["choices"][0]["turns"]
        except (KeyError, IndexError, TypeError):
            raise BenchError(f"{file}:{number}: needs question_id and choices[0].turns", fix) from None
        if not (isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns)):
            raise BenchError(f"{file}:{number}: choices[0].turns must be a list of strings", fix)
        refs[qid] = tuple(turns[:2])
    return refs


def with_references(questions: list[Question], refs: dict[int, tuple[str, ...]]) -> list[Question]:
    """The file's references replace inline ones: the user picked that file on purpose."""
    return [Question(q.qid, q.category, q.turns, refs.get(q.qid, q.reference)) for q in questions]


def select(questions: list[Question], categories: list[str] | None, limit: int | None) -> list[Question]:
    """Keep the asked categories (in file order), then the first ``limit`` questions."""
    if categories:
        known = list(dict.fromkeys(q.category for q in questions))
        for name in categories:
            if name not in known:
                raise BenchError(f"mtbench has no category {name!r}{did_you_mean(name, known)}",
                                 f"choose from {', '.join(known)}")
        questions = [q for q in questions if q.category in categories]
    return questions[:limit] if limit is not None else questions


# --- answer generation --------------------------------------------------------------------------


@dataclass
class Transcript:
    """One question's two rendered prompts and the model's two answers."""

    question: Question
    prompts: list[str]
    answers: list[str]


class ChatFormat:
    """How conversations become prompt text for ``lm``: its chat template, or the plain transcript."""

    def __init__(self, lm: LM | None):
        tok = getattr(lm, "tokenizer", None)
        self.tokenizer = tok if has_chat_template(tok) else None
        self.stop = end_of_turn(tok) if self.tokenizer is not None else [PLAIN_STOP]

    @property
    def kind(self) -> str:
        return "chat template" if self.tokenizer is not None else "plain transcript"

    def render(self, messages: list[Message]) -> str:
        try:
            return chat_prompt(self.tokenizer, messages)
        except Exception as e:
            raise BenchError(f"the model's chat template failed on a user/assistant/user conversation: {e}",
                             "fix the tokenizer's chat_template, or remove it to use the plain transcript") from None


def generate_answers(lm: LM, questions: list[Question], max_gen_toks: int) -> list[Transcript]:
    """Two greedy turns per question: every turn-1 prompt in one call, then every turn-2 prompt.

    A runtime fuser over several models (Cool-Fusion) that offers ``generate_chat(conversations,
    max_gen_toks=)`` gets the messages instead of one rendered prompt, so that each member reads them through
    its own chat template; the recorded prompt is then the plain transcript of the messages."""
    if callable(getattr(lm, "generate_chat", None)):
        return _generate_answers_per_member(lm, questions, max_gen_toks)
    fmt = ChatFormat(lm)
    logger.info("mtbench: %d questions, prompts via %s", len(questions), fmt.kind)
    first_prompts = [fmt.render([{"role": "user", "content": q.turns[0]}]) for q in questions]
    first = _generate(lm, questions, first_prompts, fmt.stop, max_gen_toks, turn=1)
    second_prompts = [
        fmt.render([{"role": "user", "content": q.turns[0]}, {"role": "assistant", "content": a1},
                    {"role": "user", "content": q.turns[1]}])
        for q, a1 in zip(questions, first, strict=True)
    ]
    second = _generate(lm, questions, second_prompts, fmt.stop, max_gen_toks, turn=2)
    return [Transcript(q, [p1, p2], [a1, a2])
            for q, p1, p2, a1, a2 in zip(questions, first_prompts, second_prompts, first, second, strict=True)]


def _generate_answers_per_member(lm: Any, questions: list[Question], max_gen_toks: int) -> list[Transcript]:
    logger.info("mtbench: %d questions, prompts via each member's own chat template", len(questions))
    plain = ChatFormat(None)  # only for the record of what was asked
    first_messages = [[{"role": "user", "content": q.turns[0]}] for q in questions]
    first = lm.generate_chat(first_messages, max_gen_toks=max_gen_toks)
    second_messages = [[*m, {"role": "assistant", "content": a1}, {"role": "user", "content": q.turns[1]}]
                       for q, m, a1 in zip(questions, first_messages, first, strict=True)]
    second = lm.generate_chat(second_messages, max_gen_toks=max_gen_toks)
    return [Transcript(q, [plain.render(m1), plain.render(m2)], [a1, a2])
            for q, m1, m2, a1, a2 in zip(questions, first_messages, second_messages, first, second, strict=True)]


def _generate(lm: LM, questions: list[Question], prompts: list[str], stop: list[str], max_gen_toks: int,
              turn: int) -> list[str]:
    from harness.lmeval import generate_greedy

    return generate_greedy(lm, prompts, stop, max_gen_toks, docs=[{**q.doc(), "turn": turn} for q in questions],
                           doc_ids=[q.qid for q in questions], task="mtbench")


# --- judging ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One answer to grade: question + turn, within its transcript."""

    transcript: Transcript
    turn: int

    @property
    def question(self) -> Question:
        return self.transcript.question

    @property
    def reference_guided(self) -> bool:
        """Graded against references: a reference category with references for every turn shown."""
        q = self.question
        return q.category in REFERENCE_CATEGORIES and all(q.reference_for(t) for t in range(1, self.turn + 1))

    def judge_messages(self, prompts: dict[str, JudgePrompt]) -> list[Message]:
        q, (a1, a2) = self.question, self.transcript.answers
        fields = {"question": q.turns[self.turn - 1], "answer": self.transcript.answers[self.turn - 1],
                  "question_1": q.turns[0], "answer_1": a1, "question_2": q.turns[1], "answer_2": a2,
                  "ref_answer_1": q.reference_for(1) or "", "ref_answer_2": q.reference_for(2) or ""}
        role = ("single" if self.turn == 1 else "multi") + ("-ref" if self.reference_guided else "")
        return prompts[role].messages(fields)

    def pair_messages(self, prompts: dict[str, JudgePrompt], baseline: Transcript, answer_first: bool) -> list[Message]:
        """The pairwise prompt comparing this answer with ``baseline``'s: this one as assistant A (``answer_first``)
        or as assistant B."""
        q = self.question
        a, b = (self.transcript, baseline) if answer_first else (baseline, self.transcript)
        fields = {"question": q.turns[self.turn - 1], "question_1": q.turns[0], "question_2": q.turns[1],
                  "answer_a": a.answers[self.turn - 1], "answer_b": b.answers[self.turn - 1],
                  "answer_a_1": a.answers[0], "answer_a_2": a.answers[1],
                  "answer_b_1": b.answers[0], "answer_b_2": b.answers[1],
                  "ref_answer_1": q.reference_for(1) or "", "ref_answer_2": q.reference_for(2) or ""}
        role = ("pair" if self.turn == 1 else "pair-multi") + ("-ref" if self.reference_guided else "")
        return prompts[role].messages(fields)

    def same_as(self, baseline: Transcript) -> bool:
        """Whether the baseline gave this very answer (and, for turn 2, the same first answer it builds on)."""
        return self.transcript.answers[:self.turn] == baseline.answers[:self.turn]


def units_of(transcripts: list[Transcript]) -> list[Unit]:
    """All turn-1 answers, then all turn-2 answers (the order samples are stored in)."""
    return [Unit(t, turn) for turn in (1, 2) for t in transcripts]


# --- the pairwise baseline ----------------------------------------------------------------------


def baseline_transcripts(baseline: str, questions: list[Question], max_gen_toks: int,
                         batch_size: int) -> list[Transcript]:
    """The baseline's two answers to each question: from a FastChat answer file (``choices[0].turns``), or generated
    by the baseline model as :func:`generate_answers` generates the evaluated model's (kept in the cache by the
    model's content, the questions, the cap and the placement, so that every model of a run is judged against one
    generation)."""
    path = Path(baseline).expanduser()
    if path.suffix == ".jsonl" or path.is_file():
        if not path.is_file():
            raise BenchError(f"pairwise baseline answer file {baseline} not found",
                             "give FastChat's model_answer/<model>.jsonl, or a model reference")
        answers = load_references(path)
        missing = [q.qid for q in questions if q.qid not in answers]
        if missing:
            raise BenchError(f"pairwise baseline {baseline} has no answer to question {missing[0]}"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                             "give an answer file that answers every question asked (or narrow mtbench.categories)")
        return [Transcript(q, ["", ""], (list(answers[q.qid]) + ["", ""])[:2]) for q in questions]
    return _generated_baseline(baseline, questions, max_gen_toks, batch_size)


def _generated_baseline(baseline: str, questions: list[Question], max_gen_toks: int,
                        batch_size: int) -> list[Transcript]:
    from harness import paths
    from harness.atomic import atomic_file
    from harness.backends import load_lm
    from harness.config import stable_hash
    from harness.model import current_placement, resolve

    ref = resolve(baseline)
    where = current_placement().for_model(ref)
    key = stable_hash(ref.content_hash(), [q.doc() for q in questions], max_gen_toks, where.key)
    cache_file = paths.cache_dir() / "mtbench-baseline" / f"{key}.json"
    if cache_file.is_file():
        logger.info("mtbench: the baseline %s's answers from %s", baseline, cache_file)
        answers = json.loads(cache_file.read_text())
    else:
        logger.info("mtbench: generating the baseline %s's answers", baseline)
        lm = load_lm(ref, batch_size, where)
        try:
            answers = [t.answers for t in generate_answers(lm, questions, max_gen_toks)]
        finally:
            del lm
        with atomic_file(cache_file) as partial:
            partial.write_text(json.dumps(answers))
    return [Transcript(q, ["", ""], list(a)) for q, a in zip(questions, answers, strict=True)]


def judge_against_baseline(judge: ChatJudge, units: list[Unit], baselines: dict[int, Transcript],
                           prompts: dict[str, JudgePrompt], fastchat_rule: bool) -> list[PairVerdict]:
    """Each unit's answer against the baseline's, both orders; an answer identical to the baseline's is a tie without
    a judge call (its verdict's replies are empty)."""
    from harness.judge import PairVerdict, judge_pairs, parse_pair_verdict, parse_pair_verdict_fastchat

    asked = [i for i, u in enumerate(units) if not u.same_as(baselines[u.question.qid])]
    pairs = [(units[i].pair_messages(prompts, baselines[units[i].question.qid], answer_first=True),
              units[i].pair_messages(prompts, baselines[units[i].question.qid], answer_first=False)) for i in asked]
    parse = parse_pair_verdict_fastchat if fastchat_rule else parse_pair_verdict
    judged = dict(zip(asked, judge_pairs(judge, pairs, parse), strict=True))
    return [judged.get(i, PairVerdict(raw=("", ""), first="tie", second="tie")) for i in range(len(units))]


def build_pair_scores(units: list[Unit], verdicts: list[PairVerdict]) -> list[Score]:
    """Win / tie / loss rates per task over the answers with both verdicts (FastChat's convention), each with its
    binomial stderr; the adjusted win rate (a tie counts half) with the stderr of its per-answer values."""
    scores = []
    for task, idx in task_groups(units).items():
        outcomes = [verdicts[i].outcome for i in idx]
        decided = [o for o in outcomes if o is not None]
        n = len(decided)
        if n:
            for name in ("win", "tie", "loss"):
                rate = decided.count(name) / n
                scores.append(Score(task, f"{name}_rate", rate, higher_is_better=name != "loss",
                                    stderr=math.sqrt(rate * (1 - rate) / n), n=n))
            values = [{"win": 1.0, "tie": 0.5, "loss": 0.0}[o] for o in decided]
            scores.append(Score(task, "win_rate_adjusted", statistics.fmean(values),
                                stderr=statistics.stdev(values) / math.sqrt(n) if n > 1 else None, n=n))
            inconsistent = sum(verdicts[i].inconsistent for i in idx)
            scores.append(Score(task, "inconsistent_rate", inconsistent / n, higher_is_better=False, n=n))
        scores.append(Score(task, "judge_failures", float(sum(verdicts[i].failures for i in idx)),
                            higher_is_better=False, n=2 * len(idx)))
        scores.append(Score(task, "judged", 1.0, n=n))
    return scores


def build_pair_samples(units: list[Unit], verdicts: list[PairVerdict], baselines: dict[int, Transcript]) -> list[Sample]:
    """One sample per answer: its outcome (``win`` / ``tie`` / ``loss`` 1 or 0, ``outcome`` 1 / 0.5 / 0), whether the
    orders disagreed or the answers were identical; ``target`` is the baseline's answer, ``extracted`` the judge's
    reply with the answer shown first."""
    samples = []
    for u, v in zip(units, verdicts, strict=True):
        outcome = v.outcome
        metrics = {"judge_failures": float(v.failures), "inconsistent": float(v.inconsistent),
                   "identical": float(u.same_as(baselines[u.question.qid])),
                   "reference_guided": float(u.reference_guided)}
        if outcome is not None:
            metrics.update({name: float(outcome == name) for name in ("win", "tie", "loss")})
            metrics["outcome"] = {"win": 1.0, "tie": 0.5, "loss": 0.0}[outcome]
        samples.append(Sample(task=f"turn{u.turn}", doc_id=u.question.qid, prompt=u.transcript.prompts[u.turn - 1],
                              output=u.transcript.answers[u.turn - 1],
                              target=baselines[u.question.qid].answers[u.turn - 1], metrics=metrics,
                              extracted=v.raw[0] or None))
    return samples


# --- scores and samples -------------------------------------------------------------------------


def task_groups(units: list[Unit]) -> dict[str, list[int]]:
    """Indices of ``units`` per reported task: turn1, turn2, overall, category/<name>."""
    groups: dict[str, list[int]] = {"turn1": [], "turn2": [], "overall": []}
    for i, u in enumerate(units):
        groups[f"turn{u.turn}"].append(i)
        groups["overall"].append(i)
    for cat in dict.fromkeys(u.question.category for u in units):
        groups[f"category/{cat}"] = [i for i, u in enumerate(units) if u.question.category == cat]
    return groups


def build_scores(units: list[Unit], verdicts: list[Verdict] | None, repeats: int = 1) -> list[Score]:
    """Scores per task. ``verdicts`` None = not judged: only the ``judged = 0`` marker, never a rating."""
    scores = []
    for task, idx in task_groups(units).items():
        if verdicts is None:
            scores.append(Score(task, "judged", 0.0, n=len(idx)))
            continue
        rated = [verdicts[i] for i in idx if verdicts[i].rating is not None]
        ratings = [v.rating for v in rated if v.rating is not None]
        if ratings:
            n = len(ratings)
            stderr = statistics.stdev(ratings) / math.sqrt(n) if n > 1 else None
            scores.append(Score(task, "score", statistics.fmean(ratings), stderr=stderr, n=n))
            scores.append(Score(task, "judge_std", statistics.fmean(v.std or 0.0 for v in rated),
                                higher_is_better=False, n=n))
        scores.append(Score(task, "judge_failures", float(sum(verdicts[i].failures for i in idx)),
                            higher_is_better=False, n=len(idx) * repeats))
        scores.append(Score(task, "judged", 1.0, n=len(ratings)))
    return scores


def build_samples(units: list[Unit], verdicts: list[Verdict] | None) -> list[Sample]:
    samples = []
    for i, u in enumerate(units):
        metrics: dict[str, float] = {}
        extracted = None
        if verdicts is not None:
            v = verdicts[i]
            extracted = v.raw[0] if v.raw else None
            if v.rating is not None:
                metrics["rating"] = v.rating
                metrics["rating_std"] = v.std or 0.0
            if len(v.raw) > 1:  # each repeat's rating, in order of the ratings that parsed
                metrics.update({f"rating_{k}": r for k, r in enumerate(v.ratings, start=1)})
            metrics["judge_failures"] = float(v.failures)
            metrics["reference_guided"] = float(u.reference_guided)
        samples.append(Sample(task=f"turn{u.turn}", doc_id=u.question.qid, prompt=u.transcript.prompts[u.turn - 1],
                              output=u.transcript.answers[u.turn - 1], target=u.question.reference_for(u.turn) or "",
                              metrics=metrics, extracted=extracted))
    return samples


# --- FastChat's files ---------------------------------------------------------------------------

#: How FastChat marks a judgment without a rating (``score``).
FASTCHAT_NO_RATING = -1


def _file_name(name: str) -> str:
    """A model or judge name as a file name (FastChat uses the name itself; ``/`` and ``:`` cannot stay)."""
    return re.sub(r"[\\/:*?\"<>|\s]+", "_", name).strip("_") or "model"


def judge_name(args: dict[str, Any]) -> str:
    """Who judged, as FastChat's ``judge`` field and file name name it: the judge model, else the endpoint."""
    return str(args.get("judge_model") or args.get("judge_url") or "judge")


def to_fastchat(args: dict[str, Any], samples: list[dict[str, Any]], tstamp: float) -> dict[str, list[dict[str, Any]]]:
    """A run's MT-Bench samples (rows of the results DB's ``samples`` with the member's name as ``model``, made with
    the suite arguments ``args``) as FastChat's files, by path: ``question.jsonl`` (the questions asked),
    ``model_answer/<model>.jsonl`` (``question_id, answer_id, model_id, choices[{index, turns}], tstamp``) and, when
    the run was judged, ``model_judgment/<judge>_single.jsonl`` (``question_id, model, judge: [judge, prompt name],
    user_prompt, judgment, score, turn, tstamp``; ``score`` -1 where the judge gave no rating). The judge's user
    prompt is rebuilt with the run's questions and judge prompts; each of ``--judge-repeats N`` repeats is a line of
    its own, with the rating of that repeat (FuseBench keeps only the first reply's text, on the first line). A run
    judged pairwise (``judge_mode=pairwise``) has no single-answer ratings: its answers are written, its judgments
    are not."""
    import hashlib

    cfg = Config(**args)
    questions = load_questions(cfg.questions)
    if cfg.references:
        questions = with_references(questions, load_references(cfg.references))
    by_id = {q.qid: q for q in questions}
    prompts = load_judge_prompts(cfg.judge_prompts) if cfg.judge_prompts else DEFAULT_PROMPTS
    turns: dict[str, dict[int, dict[int, dict[str, Any]]]] = {}
    for row in samples:
        turns.setdefault(row["model"], {}).setdefault(int(row["doc_id"]), {})[int(row["task"][-1])] = row
    missing = sorted({qid for by_q in turns.values() for qid in by_q} - set(by_id))
    if missing:
        raise BenchError(f"the run's samples answer question {missing[0]}, which its question file does not hold",
                         "export with the question file the run used (its mtbench.questions) in place")
    asked = sorted({qid for by_q in turns.values() for qid in by_q})
    files: dict[str, list[dict[str, Any]]] = {"question.jsonl": [by_id[qid].doc() for qid in asked]}
    judge = judge_name(args)
    judgments = []
    for model, by_q in turns.items():
        answers = []
        for qid, rows in sorted(by_q.items()):
            texts = [rows[t]["output"] if t in rows else "" for t in (1, 2)]
            answer_id = hashlib.sha256(f"{model}\t{qid}".encode()).hexdigest()[:22]
            answers.append({"question_id": qid, "answer_id": answer_id, "model_id": model,
                            "choices": [{"index": 0, "turns": texts}], "tstamp": tstamp})
            transcript = Transcript(by_id[qid], [rows[t]["prompt"] if t in rows else "" for t in (1, 2)], texts)
            for turn, row in sorted(rows.items()):
                metrics = json.loads(row["metrics"] or "{}") if isinstance(row["metrics"], str) else row["metrics"]
                if "judge_failures" not in metrics or cfg.judge_mode == "pairwise":  # not judged, or not rated
                    continue
                unit = Unit(transcript, turn)
                role = ("single" if turn == 1 else "multi") + ("-ref" if unit.reference_guided else "")
                user_prompt = next(m["content"] for m in unit.judge_messages(prompts) if m["role"] == "user")
                ratings = [metrics[k] for k in sorted((k for k in metrics if re.fullmatch(r"rating_\d+", k)),
                                                      key=lambda k: int(k.split("_")[1]))]
                if not ratings and "rating" in metrics:
                    ratings = [metrics["rating"]]
                scores = ratings + [FASTCHAT_NO_RATING] * int(metrics["judge_failures"])
                for k, score in enumerate(scores):
                    judgments.append({"question_id": qid, "model": model, "judge": [judge, prompts[role].name],
                                      "user_prompt": user_prompt, "judgment": (row["extracted"] or "") if k == 0 else "",
                                      "score": score, "turn": turn, "tstamp": tstamp})
        files[f"model_answer/{_file_name(model)}.jsonl"] = answers
    if judgments:
        files[f"model_judgment/{_file_name(judge)}_single.jsonl"] = judgments
    return files


def from_fastchat(questions: list[tuple[str, dict[str, Any]]] | None, answers: list[tuple[str, dict[str, Any]]],
                  judgments: list[tuple[str, dict[str, Any]]]) -> dict[str, EvalResult]:
    """FastChat's MT-Bench files read back, per model: the scores and samples this suite makes of the same answers
    and ratings (each row given with where it was read, ``file:line``). ``questions`` (FastChat's
    ``question.jsonl``) gives categories, question texts and references; without it the category scores are left
    out and a sample's prompt is empty. Several judgment lines of one answer and turn are the judge's repeats;
    ``score`` -1 is a reply without a rating. A model with answers and no judgments is not judged (``judged = 0``),
    as in a run without a judge. A sample's prompt is the question's text: FastChat's files do not keep the prompt
    the model saw."""
    from harness.judge import Verdict

    by_id = {q.qid: q for q in parse_questions(questions or [])}
    fix = "give FastChat's model_answer / model_judgment JSONL files as FastChat writes them"
    texts: dict[str, dict[int, list[str]]] = {}
    for where, row in answers:
        try:
            model, qid, turns = str(row["model_id"]), int(row["question_id"]), row["choices"][0]["turns"]
        except (KeyError, IndexError, TypeError, ValueError):
            raise BenchError(f"{where}: an answer needs model_id, question_id and choices[0].turns", fix) from None
        if not (isinstance(turns, list) and all(isinstance(t, str) for t in turns)):
            raise BenchError(f"{where}: choices[0].turns must be a list of strings", fix)
        texts.setdefault(model, {})[qid] = (list(turns) + ["", ""])[:2]
    rated: dict[str, dict[tuple[int, int], list[tuple[str, float | None]]]] = {}
    for where, row in judgments:
        try:
            model, qid, turn, score = str(row["model"]), int(row["question_id"]), int(row["turn"]), float(row["score"])
        except (KeyError, TypeError, ValueError):
            raise BenchError(f"{where}: a judgment needs model, question_id, turn and score", fix) from None
        if turn not in (1, 2):
            raise BenchError(f"{where}: turn must be 1 or 2, got {turn}", fix)
        reply = str(row.get("judgment") or "")
        rated.setdefault(model, {}).setdefault((qid, turn), []).append(
            (reply, None if score == FASTCHAT_NO_RATING else score))
    results = {}
    for model in dict.fromkeys([*texts, *rated]):
        answered, judged = texts.get(model, {}), rated.get(model)
        qids = sorted(set(answered) | {qid for qid, _ in judged or {}})
        transcripts = []
        for qid in qids:
            question = by_id.get(qid) or Question(qid, "", ("", ""))
            transcripts.append(Transcript(question, list(question.turns), answered.get(qid, ["", ""])))
        units = units_of(transcripts)
        verdicts = None
        if judged is not None:
            verdicts = [Verdict(raw=[r for r, _ in judged.get((u.question.qid, u.turn), [])],
                                ratings=[s for _, s in judged.get((u.question.qid, u.turn), []) if s is not None])
                        for u in units]
        repeats = max((len(v) for v in (judged or {}).values()), default=1)
        scores = [s for s in build_scores(units, verdicts, repeats) if s.task != "category/"]
        results[model] = EvalResult(scores=scores, samples=build_samples(units, verdicts))
    return results


# --- the caveat of a local judge ----------------------------------------------------------------


def local_judge(args: dict[str, Any]) -> str | None:
    """The local judge that the suite arguments ``args`` name (``judge_model`` without ``judge_url``), or None: no
    judge, or a judge behind an endpoint."""
    model = args.get("judge_model")
    return model if isinstance(model, str) and model and not args.get("judge_url") else None


def local_judge_note(ref: str) -> str:
    """One line that goes with every rating by the local judge ``ref``: who rated, its size, and how to read it."""
    from harness.model import parameter_count_on_disk

    params = parameter_count_on_disk(ref)
    size = f"a {_short_count(params)}-parameter local model" if params else "a local model of unknown size"
    return (f"mtbench rated by {ref}, {size}: far weaker than the GPT-4 judge behind published MT-Bench scores; "
            "read these ratings as a check that answers are generated and graded, not as their quality")


def _short_count(n: int) -> str:
    """134_515_008 -> ``135M``, 1_710_000_000 -> ``1.71B``, 999_999_999 -> ``1B`` (three significant digits)."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        text = f"{n / scale:.3g}"
        if float(text) >= 1:
            return f"{text}{suffix}"
    return str(n)


# --- the suite ----------------------------------------------------------------------------------


class MTBench(Suite):
    name: ClassVar[str] = "mtbench"
    version: ClassVar[str] = "2"  # 2: FastChat's rating rule with FastChat's prompts
    Config: ClassVar[type[BaseModel]] = Config
    primary_metric: ClassVar[str | None] = "score"
    fallback_metric: ClassVar[str | None] = "win_rate_adjusted"
    summary_tasks: ClassVar[tuple[str, ...] | None] = ("overall", "turn1", "turn2")

    to_fastchat = staticmethod(to_fastchat)
    from_fastchat = staticmethod(from_fastchat)

    @classmethod
    def caveats(cls, args: dict[str, Any]) -> list[str]:
        """What every score made with the suite arguments ``args`` must be read with: the local judge's note."""
        judge = local_judge(args)
        return [local_judge_note(judge)] if judge else []

    def evaluate(self, lm: LM, cfg: Config, ctx: EvalContext) -> EvalResult:
        from harness.judge import build_judge, judge_many, parse_rating, parse_rating_fastchat, usage_record

        # Everything that can be wrong with the input fails here, before minutes of generation.
        questions = load_questions(cfg.questions)
        if cfg.references:
            questions = with_references(questions, load_references(cfg.references))
        questions = select(questions, cfg.categories, ctx.limit)
        pairwise = cfg.judge_mode == "pairwise"
        default_prompts = DEFAULT_PAIR_PROMPTS if pairwise else DEFAULT_PROMPTS
        prompts = load_judge_prompts(cfg.judge_prompts, pairwise) if cfg.judge_prompts else default_prompts
        judge: ChatJudge | None = build_judge(
            url=cfg.judge_url, model=cfg.judge_model, api_key_env=cfg.judge_api_key_env,
            temperature=cfg.judge_temperature, max_tokens=cfg.judge_max_tokens, timeout=cfg.judge_timeout,
            batch_size=ctx.batch_size, seed=ctx.seed)
        if pairwise and judge is None:
            raise BenchError("judge_mode=pairwise needs a judge",
                             "pass --judge-url URL or --judge-model zoo:NAME (or drop mtbench.judge_mode)")
        baselines = ({t.question.qid: t for t in baseline_transcripts(cfg.pairwise_baseline or "", questions,
                                                                      cfg.max_gen_toks, ctx.batch_size)}
                     if pairwise else {})

        units = units_of(generate_answers(lm, questions, cfg.max_gen_toks))
        if pairwise:
            assert judge is not None
            logger.info("mtbench: judging %d answers against %s's, both orders, with %s", len(units),
                        cfg.pairwise_baseline, judge.describe())
            pairs = judge_against_baseline(judge, units, baselines, prompts, fastchat_rule=bool(cfg.judge_prompts))
            usage = usage_record(judge)
            return EvalResult(scores=build_pair_scores(units, pairs), samples=build_pair_samples(units, pairs, baselines),
                              judge_usage=[usage] if usage else [])
        verdicts = None
        if judge is None:
            _say_not_judged()
        else:
            logger.info("mtbench: judging %d answers x %d with %s", len(units), cfg.judge_repeats, judge.describe())
            parse = parse_rating_fastchat if cfg.judge_prompts else parse_rating
            verdicts = judge_many(judge, [u.judge_messages(prompts) for u in units], cfg.judge_repeats, parse)
            failed = sum(v.rating is None for v in verdicts)
            if failed:
                logger.warning("mtbench: %d of %d answers got no parseable [[rating]] from the judge", failed,
                               len(units))
        usage = usage_record(judge) if judge is not None else None
        return EvalResult(scores=build_scores(units, verdicts, cfg.judge_repeats),
                          samples=build_samples(units, verdicts), judge_usage=[usage] if usage else [])


@functools.cache
def _say_not_judged() -> None:
    """The hint that answers are stored unjudged, once per process (not once per model evaluated)."""
    logger.warning(NOT_JUDGED_HINT)
