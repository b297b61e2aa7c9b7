"""Forget/retain records and probes, and reading them from JSONL."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from unlearnd.core.errors import InvalidInput

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One turn of a conversation, as chat templates take it."""

    role: str
    content: str

    @classmethod
    def from_dict(cls, d: dict) -> Message:
        if not isinstance(d, dict) or set(d) != {"role", "content"}:
            raise InvalidInput("a message is an object with exactly 'role' and 'content'")
        if d["role"] not in ROLES:
            raise InvalidInput(f"a message's role must be one of {', '.join(ROLES)}")
        if not isinstance(d["content"], str):
            raise InvalidInput("a message's content must be a string")
        return cls(d["role"], d["content"])

    def to_dict(self) -> dict:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Record:
    """One training-style record: a plain text, a prompt whose completion is the part to forget, or a
    conversation whose assistant turns are.

    For a text the whole sequence is the target; for a prompt/completion pair only the completion is, and
    the prompt is the prefix from which extraction is attempted. A conversation (`messages`) is rendered with
    the model's chat template (core/chat.py), and only its assistant turns are unlearned and measured; so is a
    pair on a model that has a chat template (the prompt as the user's turn, the completion as the reply).
    """

    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    messages: tuple[Message, ...] | None = None

    def __post_init__(self) -> None:
        if self.messages is not None:
            if self.text is not None or self.prompt is not None or self.completion is not None:
                raise InvalidInput("a record has 'messages', or 'text', or 'prompt'+'completion': one of them")
            if not any(m.role == "assistant" and m.content.strip() for m in self.messages):
                raise InvalidInput("a conversation needs an assistant turn with content: it is what is unlearned")
        elif self.text is not None:
            if self.prompt is not None or self.completion is not None:
                raise InvalidInput("a record has either 'text' or 'prompt'+'completion', not both")
            if not self.text.strip():
                raise InvalidInput("a record's text is empty")
        elif self.prompt is None or self.completion is None or not self.completion.strip():
            raise InvalidInput("a record needs a non-empty 'text', or 'prompt' and a non-empty 'completion'")

    @classmethod
    def from_dict(cls, d: dict) -> Record:
        if not isinstance(d, dict):
            raise InvalidInput(f"a record must be an object, got {type(d).__name__}")
        unknown = set(d) - {"text", "prompt", "completion", "messages"}
        if unknown:
            raise InvalidInput(f"unknown record field(s): {', '.join(sorted(unknown))}")
        messages = d.get("messages")
        if messages is not None:
            if not isinstance(messages, list) or not messages:
                raise InvalidInput("a record's 'messages' must be a non-empty list")
            messages = tuple(Message.from_dict(m) for m in messages)
        return cls(text=d.get("text"), prompt=d.get("prompt"), completion=d.get("completion"), messages=messages)

    def to_dict(self) -> dict:
        if self.messages is not None:
            return {"messages": [m.to_dict() for m in self.messages]}
        if self.text is not None:
            return {"text": self.text}
        return {"prompt": self.prompt, "completion": self.completion}

    @property
    def full_text(self) -> str:
        if self.messages is not None:
            return "\n".join(m.content for m in self.messages)
        return self.text if self.text is not None else f"{self.prompt}{self.completion}"

    @property
    def chars(self) -> int:
        """Characters of text the record carries (what the per-record limits count)."""
        if self.messages is not None:
            return sum(len(m.content) for m in self.messages)
        return sum(len(v) for v in (self.text, self.prompt, self.completion) if v)


@dataclass(frozen=True)
class Probe:
    """A factual question and its correct answer, for RESTOR-style restoration checks."""

    question: str
    answer: str

    @classmethod
    def from_dict(cls, d: dict) -> Probe:
        if not isinstance(d, dict) or not d.get("question") or not d.get("answer"):
            raise InvalidInput("a probe needs a non-empty 'question' and 'answer'")
        return cls(question=d["question"], answer=d["answer"])

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer}


def read_jsonl(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"file not found: {p}")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise InvalidInput(f"{p}:{n}: not valid JSON ({e.msg})") from None
    return rows


def read_records(path: str | Path) -> list[Record]:
    return [Record.from_dict(d) for d in read_jsonl(path)]


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
