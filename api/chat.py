"""Chat records need the model's chat template: checked when they arrive, from the model directory's files
(the API never loads a tokenizer), so a caller gets a 422 at once instead of a job that fails later."""

from __future__ import annotations

from collections.abc import Iterable

from unlearnd.api import model_sources
from unlearnd.api.errors import ChatTemplateMissing
from unlearnd.api.settings import Settings
from unlearnd.core.chat import directory_has_chat_template
from unlearnd.core.records import Record


def check_chat_records(settings: Settings, source: str, records: Iterable[Record]) -> None:
    """Raise ChatTemplateMissing when `records` hold a conversation and the model at `source` (a stored
    name, relative to its root) ships no chat template. A source that no longer resolves is left to the job,
    which fails with the source's own error."""
    if not any(r.messages is not None for r in records):
        return
    try:
        path = model_sources.resolve(settings.resolved_model_roots, source).path
    except model_sources.SourceRefused:
        return
    if not directory_has_chat_template(path):
        raise ChatTemplateMissing(
            "conversation records (messages) are rendered with the model's chat template, and this model has "
            "none: send text or prompt/completion records, or give the model directory a chat template "
            "(chat_template.jinja, or chat_template in tokenizer_config.json)"
        )
