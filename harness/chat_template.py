"""Chat models on suites written as plain text (BBH, HumanEval): prompts rendered through the model's own chat template.

A chat or instruct model is trained to read a conversation in its template (``<|im_start|>user ... <|im_end|>``)
and to answer in an assistant turn; prompted with bare text it tends to answer as if chatting anyway, which the
suites' answer rules then misread. ``apply_chat_template`` (``--apply-chat-template``, or
``--set SUITE.apply_chat_template=true``) renders each prompt as a user turn with lm-eval's own
``LM.apply_chat_template`` (the tokenizer's template, generation prompt added): BBH through lm-eval's task
machinery, HumanEval through the same method for its direct ``generate_until`` requests.

Only an ``LM`` that implements ``apply_chat_template`` over a tokenizer that has a template can do that (lm-eval's
``HFLM`` and ``VLLM`` for a chat model); anything else is refused in one line before a prompt is generated, so that
a base model is never scored on a template it does not have.
"""

from __future__ import annotations

from typing import Any

from harness.chat_data import end_of_turn, has_chat_template
from harness.errors import BenchError


def can_render_chat(lm: Any) -> bool:
    """Whether ``lm`` renders chat turns itself: its tokenizer has a chat template and its class implements lm-eval's
    ``apply_chat_template`` (the base ``LM``'s raises)."""
    from lm_eval.api.model import LM

    method = getattr(type(lm), "apply_chat_template", None)
    return has_chat_template(getattr(lm, "tokenizer", None)) and method is not None and method is not LM.apply_chat_template


def model_label(lm: Any) -> str:
    """How an error names the model: its tokenizer's path (the model folder for an ``HFLM``), else the LM's class."""
    name = getattr(getattr(lm, "tokenizer", None), "name_or_path", None)
    return f"the model {name}" if name else f"the model ({type(lm).__name__})"


def require_chat_template(lm: Any, setting: str, fix: str) -> None:
    """Refuse ``lm`` in one line unless it can render chat turns (``setting``: what asked for the template, e.g.
    ``"bbh: apply_chat_template"``; ``fix``: what to do instead)."""
    if not can_render_chat(lm):
        raise BenchError(f"{setting} prompts through the model's chat template, and {model_label(lm)} has none", fix)


def user_turn(lm: Any, text: str) -> str:
    """``text`` as the model reads one user turn before writing its reply (the template's generation prompt added)."""
    return str(lm.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True))


def turn_end_stops(lm: Any) -> list[str]:
    """Where the model's reply ends: the text its template writes after an assistant turn (``<|im_end|>``), which is
    not always the end-of-sequence token that lm-eval stops at anyway; empty when there is none to find."""
    return end_of_turn(getattr(lm, "tokenizer", None))



def drop_template_fix(suite: str) -> str:
    """The fix the error for a model without a template names, on a suite whose chat template is a setting."""
    return (f"drop --apply-chat-template (or {suite}.apply_chat_template=true) for a base model, which reads the plain "
            "prompt, or evaluate a chat/instruct model whose tokenizer has a chat template")
