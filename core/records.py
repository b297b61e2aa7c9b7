"""Forget/retain records and probes, and reading them from JSONL."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.errors import InvalidInput


@dataclass(frozen=True)
class Record:
    """One training-style record: a plain text, or a prompt whose completion is the part to forget.

    For a text the whole sequence is the target; for a prompt/completion pair only the completion is, and
    the prompt is the prefix from which extraction is attempted.
    """

    text: str | None = None
    prompt: str | None = None
    completion: str | None = None

    def __post_init__(self) -> None:
        if self.text is not None:
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
        unknown = set(d) - {"text", "prompt", "completion"}
        if unknown:
            raise InvalidInput(f"unknown record field(s): {', '.join(sorted(unknown))}")
        return cls(text=d.get("text"), prompt=d.get("prompt"), completion=d.get("completion"))

    def to_dict(self) -> dict:
        if self.text is not None:
            return {"text": self.text}
        return {"prompt": self.prompt, "completion": self.completion}

    @property
    def full_text(self) -> str:
        return self.text if self.text is not None else f"{self.prompt}{self.completion}"


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
