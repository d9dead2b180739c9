"""Chat data for the training-based chat fusers (FuseChat, ProFuser): conversations, built or loaded, rendered.

**Built offline** (:func:`default_conversations`) from the zoo's own domains, training split only, so that
the held-out text the suites measure stays unseen:

* ``code``: a corpus (SymPy) function's docstring as the instruction ("Write a Python function
  ``name(args)`` that ...") and the function (docstring removed) as the answer;
* ``docs``: a function shown without its docstring, "what does it do?" -> its docstring's first paragraph;
  or "Explain ``module.name``" -> the docstring;
* ``math``: a generated word problem -> its worked solution ending in "The answer is N." (the zoo's math
  format), with the number as the conversation's verifiable ``reference``.

**Loaded** (:func:`load_conversations`) from JSONL (one conversation per line), parquet, a ``datasets``
folder, or a folder of those (:mod:`harness.text_data` reads the rows, streamed). A row is OpenAI style
``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}``, ShareGPT style
``{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}`` or a single turn
``{"prompt": ..., "response": ...}``; an optional first system turn, then user/assistant turns alternating,
ending with the assistant. Optional ``reference`` (a verifiable answer) and ``tests`` (test code that judges the
answer in the unit-test reward) fields are kept. ProFuser also takes plain-text rows (only a ``text`` field) as
documents (:func:`load_training_rows`).

**Rendered** (:func:`render`) with a tokenizer's chat template (or a plain ``User: ... / Assistant: ...``
transcript without one), with the character span of every assistant message's content in the text: the
fusers' loss covers those spans only. A span is the content plus the template's end-of-turn marker right
after it, if any, so that a model trained on it learns where an answer stops.
"""

from __future__ import annotations

import ast
import json
import random
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from harness.errors import BenchError

ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
_FORMAT_FIX = ("each row must have a 'messages' list of {role, content} (or ShareGPT 'conversations' of "
               "{from, value}, or 'prompt' + 'response') ending with an assistant turn; see README 'Chat data'")
MAX_CHARS = 800  # built-in conversations: content characters in all (fits 256-token zoo models)
_AST_LINES = re.compile(r"\r\n|\r|\n")  # the line breaks Python's tokenizer counts


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Conversation:
    """A conversation ending with an assistant turn; ``reference``/``tests`` make its answer verifiable."""

    id: str
    messages: tuple[Message, ...]
    domain: str = "custom"
    reference: str | None = None
    tests: str | None = None
    #: The same request in a base model's own format (the zoo's math: ``Q: ...\nA:``), for models that were
    #: never taught a chat format: ProFuser's sources answer through it when it is there.
    completion_prompt: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def prompt_messages(self) -> tuple[Message, ...]:
        """Everything before the last assistant turn (what a model answers)."""
        return self.messages[:-1]

    @property
    def response(self) -> str:
        return self.messages[-1].content


def with_response(conv: Conversation, response: str) -> Conversation:
    """``conv`` with its last (assistant) turn replaced by ``response``."""
    return replace(conv, messages=(*conv.prompt_messages, Message("assistant", response)))


# --- built-in corpus ----------------------------------------------------------------------------

_WRITE = ("Write a Python function `{sig}` that does the following:\n{doc}",
          "Implement `{sig}` in Python.\n{doc}",
          "I need a Python function `{sig}`. {doc}")
_SUMMARISE = ("What does this Python function do?\n{code}",
              "Summarise this function in a sentence or two:\n{code}",
              "Explain what the following code does.\n{code}")
_EXPLAIN = ("Explain `{qualname}` from the `{module}` module.",
            "What is `{qualname}` in Python's `{module}` module for?",
            "Describe `{module}.{qualname}`.")
_SOLVE = ("{question}", "Solve this problem: {question}", "{question} Show your work.")


@dataclass(frozen=True)
class _Function:
    module: str
    qualname: str
    signature: str
    docstring: str
    body: str  # the function's source without its docstring


def default_conversations(n: int, seed: int = 0, domains: Sequence[str] = ("code", "docs", "math"),
                          split: str = "train") -> list[Conversation]:
    """``n`` conversations, about equally many per domain, from the zoo's ``split`` (train by default).

    Deterministic for ``(n, seed, domains, split)``; the domains are interleaved.
    """
    from harness.corpus import DOMAINS

    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or not domains:
        raise ValueError(f"domains must be a non-empty subset of {DOMAINS}, got {list(domains)}")
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    rng = random.Random(f"fusebench-chat:{split}:{seed}")
    per_domain = [n // len(domains) + (i < n % len(domains)) for i in range(len(domains))]
    built = {d: _build(d, k, rng, split, seed) for d, k in zip(domains, per_domain, strict=True)}
    out: list[Conversation] = []
    for i in range(max(per_domain, default=0)):
        out.extend(built[d][i] for d in domains if i < len(built[d]))
    return out


def _build(domain: str, n: int, rng: random.Random, split: str, seed: int) -> list[Conversation]:
    if n == 0:
        return []
    if domain == "math":
        from harness.corpus import math_examples

        problems = math_examples(n, seed=10_000 + seed, split=split)
        return [Conversation(f"math-{split}-{seed}-{i}",
                             (Message("user", rng.choice(_SOLVE).format(question=p.question)),
                              Message("assistant", p.solution)), "math", reference=p.answer,
                             completion_prompt=f"Q: {p.question}\nA:")
                for i, p in enumerate(problems)]
    functions = list(_functions(split))
    rng.shuffle(functions)
    out: list[Conversation] = []
    for f in functions:
        if len(out) == n:
            break
        first = f.docstring.split("\n\n")[0].strip()
        if domain == "code":
            user, answer = rng.choice(_WRITE).format(sig=f.signature, doc=first), f.body
        elif rng.random() < 0.5:
            user = rng.choice(_SUMMARISE).format(code=f"```python\n{f.body}\n```")
            answer = first
        else:
            user = rng.choice(_EXPLAIN).format(qualname=f.qualname, module=f.module)
            answer = f.docstring
        if len(user) + len(answer) > MAX_CHARS:
            continue
        out.append(Conversation(f"{domain}-{split}-{f.module}.{f.qualname}-{len(out)}",
                                (Message("user", user), Message("assistant", answer)), domain,
                                reference=f.qualname.rsplit(".", 1)[-1] if domain == "code" else None))
    return out


@lru_cache(maxsize=2)
def _functions(split: str) -> tuple[_Function, ...]:
    """Documented functions (module level and methods) of the corpus files in ``split``."""
    from harness.corpus import docstring_of, is_heldout_file, parse_source, source_files

    found: list[_Function] = []
    for relative, source in source_files():
        if is_heldout_file(relative) != (split == "heldout"):
            continue
        tree = parse_source(source)
        if tree is None:
            continue
        module = relative.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        lines = _AST_LINES.split(source)  # ast's line numbers: str.splitlines would also split at \x0c
        for qualname, node in _walk_functions(tree):
            doc = docstring_of(node)
            if not doc or len(doc) < 40 or node.end_lineno is None:
                continue
            body = _without_docstring(lines, node)
            if body is None or len(body) > MAX_CHARS // 2:
                continue
            args = ast.unparse(node.args)
            found.append(_Function(module, qualname, f"{node.name}({args})", doc.strip(), body))
    return tuple(found)


def _walk_functions(tree: ast.Module) -> Iterable[tuple[str, ast.FunctionDef]]:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            yield node.name, node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                    yield f"{node.name}.{item.name}", item


def _without_docstring(lines: list[str], node: ast.FunctionDef) -> str | None:
    """The function's source (decorators excluded, dedented) with its docstring statement removed."""
    doc = node.body[0]
    if len(node.body) < 2 or doc.end_lineno is None:
        return None  # nothing but the docstring
    kept = lines[node.lineno - 1: doc.lineno - 1] + lines[doc.end_lineno: node.end_lineno]
    text = textwrap.dedent("\n".join(kept)).strip("\n")
    return text if text.strip() else None


# --- loading and saving -------------------------------------------------------------------------


def load_conversations(path: str | Path, limit: int | None = None) -> list[Conversation]:
    """Conversations from ``path`` (JSONL, parquet, a ``datasets`` folder or a folder of them; see the module
    docstring and :mod:`harness.text_data`), streamed: reading stops after ``limit``. A bad row is a one-line
    BenchError naming the file and line."""
    conversations, _ = load_training_rows(path, max_conversations=limit, max_chars=0)
    if not conversations:
        raise BenchError(f"{path} holds no conversations", _FORMAT_FIX)
    return conversations


def load_training_rows(path: str | Path, *, max_conversations: int | None, max_chars: int,
                       ) -> tuple[list[Conversation], list[str]]:
    """Conversations and plain-text documents from ``path``: a row with ``messages`` (or ShareGPT
    ``conversations``, or ``prompt`` + ``response``) is a conversation, a row with only a ``text`` field a document
    (kept only while ``max_chars`` allows: 0 = documents are an error). Streamed: reading stops once
    ``max_conversations`` conversations and ``max_chars`` characters of text are collected."""
    from harness.text_data import iter_records

    conversations: list[Conversation] = []
    documents: list[str] = []
    chars = 0
    def enough_conversations() -> bool:
        return max_conversations is not None and len(conversations) >= max_conversations

    for where, row in iter_records(path, fix=_FORMAT_FIX):
        if max_chars and _is_text_row(row):
            if chars < max_chars and row["text"].strip():
                documents.append(row["text"][: max_chars - chars])
                chars += len(documents[-1])
        elif not enough_conversations():
            try:
                conversations.append(_parse(row, f"{Path(path).stem}-{len(conversations) + 1}"))
            except ValueError as e:
                raise BenchError(f"{where}: {e}", _FORMAT_FIX) from None
        if enough_conversations() and chars >= max_chars:
            break  # the rest is never read
    return conversations, documents


def _is_text_row(row: dict[str, Any]) -> bool:
    return isinstance(row.get("text"), str) and not any(k in row for k in ("messages", "conversations", "prompt"))


def _parse(obj: Any, default_id: str) -> Conversation:
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    if isinstance(obj.get("messages"), list):
        raw = obj["messages"]
        turns = [(m.get("role"), m.get("content")) if isinstance(m, dict) else (None, None) for m in raw]
    elif isinstance(obj.get("conversations"), list):
        raw = obj["conversations"]
        turns = [(_SHAREGPT_ROLES.get(str(m.get("from", "")).lower()), m.get("value")) if isinstance(m, dict)
                 else (None, None) for m in raw]
    elif "prompt" in obj:
        turns = [("user", obj.get("prompt")), ("assistant", obj.get("response", obj.get("completion")))]
    else:
        raise ValueError("no 'messages' (or 'conversations', or 'prompt' + 'response')")
    messages = []
    for i, (role, content) in enumerate(turns):
        if role not in ROLES or not isinstance(content, str):
            raise ValueError(f"turn {i + 1} needs a role in {ROLES} and a string content")
        messages.append(Message(role, content))
    body = messages[1:] if messages and messages[0].role == "system" else messages
    if not body or body[-1].role != "assistant":
        raise ValueError("a conversation must end with an assistant turn")
    expected = ["user", "assistant"] * (len(body) // 2)
    if [m.role for m in body] != expected:
        raise ValueError("after an optional system turn, user and assistant turns must alternate, user first")
    reference = obj.get("reference")
    tests = obj.get("tests")
    completion = obj.get("completion_prompt")
    return Conversation(str(obj.get("id", default_id)), tuple(messages), str(obj.get("domain", "custom")),
                        reference=None if reference is None else str(reference),
                        tests=tests if isinstance(tests, str) else None,
                        completion_prompt=completion if isinstance(completion, str) else None)


def save_conversations(conversations: Iterable[Conversation], path: str | Path) -> Path:
    """Write OpenAI-style JSONL that :func:`load_conversations` reads back to the same conversations."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for c in conversations:
            record: dict[str, Any] = {"id": c.id, "domain": c.domain, "messages": [m.as_dict() for m in c.messages]}
            if c.reference is not None:
                record["reference"] = c.reference
            if c.tests is not None:
                record["tests"] = c.tests
            if c.completion_prompt is not None:
                record["completion_prompt"] = c.completion_prompt
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


# --- rendering ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedConversation:
    text: str
    response_spans: tuple[tuple[int, int], ...]  # character spans of the assistant contents in ``text``


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None)) and callable(getattr(tokenizer, "apply_chat_template", None))


def end_of_turn(tokenizer: Any) -> list[str]:
    """The text a chat template writes after an assistant message (``<|im_end|>``, ``</s>`` …), as a list.

    Found by rendering a probe conversation: generation stops there even when it is not the EOS token, and
    training includes it in the response so that a model learns to stop. Empty when the template writes
    nothing recognisable after a reply (or there is no template).
    """
    probe = "\x00FUSEBENCH-PROBE\x00"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": probe}], tokenize=False)
    except Exception:
        return []
    tail = text.split(probe, 1)[1] if probe in text else ""
    first = next((line.strip() for line in tail.splitlines() if line.strip()), "")
    return [first] if first else []


def render(conversation: Conversation, tokenizer: Any) -> RenderedConversation:
    """The whole conversation as the model reads it in training, with the assistant turns' spans.

    A span is the assistant's content plus the template's end-of-turn marker right after it (when there is
    one), so that training on the spans also teaches where an answer ends.
    """
    messages = conversation.messages
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template([m.as_dict() for m in messages], tokenize=False)
        marker = next(iter(end_of_turn(tokenizer)), "")
    else:
        text = "".join(f"{_plain_role(m.role)}: {m.content}\n" for m in messages)
        marker = ""
    spans, cursor = [], 0
    for m in messages:  # every content in order, so an answer quoted in a question is never mistaken for it
        start = text.find(m.content, cursor)
        if start < 0:
            raise ValueError(f"the chat template changed a {m.role} message's text; cannot find its content "
                             f"in the rendered conversation {conversation.id}")
        cursor = start + len(m.content)
        if m.role == "assistant":
            end = cursor + len(marker) if marker and text.startswith(marker, cursor) else cursor
            spans.append((start, end))
    return RenderedConversation(text, tuple(spans))


def render_prompt(conversation: Conversation, tokenizer: Any) -> str:
    """The conversation up to its last assistant turn, ready for the model to write that turn."""
    return chat_prompt(tokenizer, [m.as_dict() for m in conversation.prompt_messages])


#: Where a plain-transcript answer ends: the next turn's role label.
PLAIN_STOP = "\nUser:"


def chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """``messages`` (ending with a user turn) as ``tokenizer``'s model reads them before writing the next
    assistant turn: its chat template with the generation prompt, or, without a template, the plain
    ``User: … / Assistant:`` transcript."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{_plain_role(m['role'])}: {m['content']}\n" for m in messages) + "Assistant:"


def turn_stops(tokenizers: Iterable[Any]) -> list[str]:
    """Every end-of-turn marker of these models (their templates' ``<|im_end|>`` …, or :data:`PLAIN_STOP` for a
    model without a template), distinct, in order: a runtime fuser's answer ends at any member's marker."""
    stops: list[str] = []
    for tok in tokenizers:
        stops += end_of_turn(tok) if has_chat_template(tok) else [PLAIN_STOP]
    return [s for s in dict.fromkeys(stops) if s]


def _plain_role(role: str) -> str:
    return {"user": "User", "assistant": "Assistant", "system": "System"}[role]
