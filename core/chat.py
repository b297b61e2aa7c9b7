"""Conversations as token ids: rendered with the model's own chat template, with a mask of the assistant turns.

A chat model has seen its conversations in its template's format (`<|start_header_id|>assistant…`,
`<|im_start|>assistant…`), so a conversation is unlearned in that format and nothing else; and only what the
model said is unlearned and measured: the system prompt and the user's turns are context, shared with every
other conversation the model must keep serving. A prompt/completion pair on a model with a template is the
conversation `[user: prompt, assistant: completion]`.

The assistant turns are found in the rendered text, not by re-rendering prefixes: templates such as Qwen 3's
render a turn differently when it is the last one, so prefix renderings are not prefixes of the whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from unlearnd.core.errors import InvalidInput
from unlearnd.core.records import Message, Record

TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


@dataclass
class ChatTokens:
    ids: list[int]
    target_mask: list[bool]  # the assistant turns' tokens (their content and the template's end of turn)
    prefix_len: int  # up to the last assistant turn: the prompt from which extraction is attempted
    target_text: str  # the assistant turns' text (the zlib membership score's reference)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def directory_has_chat_template(model_dir: str | Path) -> bool:
    """Whether a model directory ships a chat template, read from its files without loading anything (the API
    checks chat records against it at submission): `chat_template.jinja`, `chat_template.json`, or the
    `chat_template` key of `tokenizer_config.json`."""
    root = Path(model_dir)
    if any((root / name).is_file() for name in TEMPLATE_FILES):
        return True
    try:
        return bool(json.loads((root / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


def uses_chat_template(tokenizer, record: Record) -> bool:
    """Conversations always go through the template; pairs do on a model that has one; texts never do."""
    return record.messages is not None or (record.prompt is not None and has_chat_template(tokenizer))


def conversation(record: Record) -> tuple[Message, ...]:
    if record.messages is not None:
        return record.messages
    if record.prompt is not None and record.completion is not None:
        return (Message("user", record.prompt), Message("assistant", record.completion))
    raise InvalidInput("a text record is not a conversation")


def encode_chat(tokenizer, record: Record, *, max_length: int) -> ChatTokens:
    """Token ids of the rendered conversation (the template's own BOS, no other special tokens added), the
    assistant-turn mask and the extraction prefix. Raises InvalidInput when the model has no template, the
    template refuses the conversation (Gemma's refuses a system turn) or hides a turn's text."""
    if not has_chat_template(tokenizer):
        raise InvalidInput(
            "chat records need the model's chat template, and this model's tokenizer has none "
            "(send text or prompt/completion records instead)"
        )
    messages = conversation(record)
    full = _render(tokenizer, messages)
    spans = _assistant_spans(tokenizer, messages, full)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"])[:max_length], list(enc["offset_mapping"])[:max_length]
    mask = [any(start <= a < end for start, end in spans) for a, _ in offsets]
    if not any(mask):
        raise InvalidInput(f"a conversation's assistant turns lie beyond max_length ({max_length} tokens)")
    last_start = max(start for start, end in spans if any(start <= a < end for a, _ in offsets))
    prefix = next(i for i, (a, _) in enumerate(offsets) if mask[i] and a >= last_start)
    return ChatTokens(ids, mask, max(1, prefix), "\n".join(full[s:e] for s, e in spans))


def _render(tokenizer, messages: tuple[Message, ...]) -> str:
    try:
        return tokenizer.apply_chat_template([m.to_dict() for m in messages], tokenize=False)
    except Exception as e:  # jinja2's TemplateError, raised by templates' own `raise_exception`
        raise InvalidInput(f"the model's chat template refused this conversation: {e}") from None


def _assistant_spans(tokenizer, messages: tuple[Message, ...], full: str) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in the rendered conversation: each turn's content (templates may
    trim it) followed by the template's end-of-turn text, found as the text after the content when the turn
    is rendered last (`<|eot_id|>`, `<|im_end|>`, `</s>`)."""
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        content = m.content.strip()
        if not content:
            continue
        pos = full.find(content, cursor)
        if pos < 0:
            raise InvalidInput(f"the model's chat template does not show turn {i + 1}'s text as it was sent")
        end = pos + len(content)
        if m.role == "assistant":
            alone = _render(tokenizer, messages[: i + 1])
            closing = alone[alone.rfind(content) + len(content) :].rstrip()
            if closing and full.startswith(closing, end):
                end += len(closing)
            spans.append((pos, end))
        cursor = end
    return spans
