"""Limits of one forget request beyond the body size (413, api/guard.py): records per request, characters
per record or probe, probes per request. Each is a 422 with its own code and never echoes the text."""

from __future__ import annotations

from collections.abc import Sequence

from unlearnd.api import schemas
from unlearnd.api.errors import LimitExceeded
from unlearnd.api.settings import Settings


def _chars(record: schemas.RecordIn) -> int:
    return record.to_record().chars


def check_record_chars(settings: Settings, field: str, records: Sequence[schemas.RecordIn]) -> None:
    limit = settings.max_record_chars
    for i, record in enumerate(records):
        if (n := _chars(record)) > limit:
            raise LimitExceeded(
                "record_too_long",
                f"{field}[{i}] has {n} characters; the limit is {limit}",
                {"field": field, "index": i, "chars": n, "max_chars": limit},
            )


def check_forget_request(settings: Settings, body: schemas.ForgetRequestIn) -> None:
    if (n := len(body.records)) > settings.max_records_per_request:
        raise LimitExceeded(
            "too_many_records",
            f"{n} records in one request; the limit is {settings.max_records_per_request}",
            {"records": n, "max_records": settings.max_records_per_request},
        )
    if (n := len(body.probes)) > settings.max_probes_per_request:
        raise LimitExceeded(
            "too_many_probes",
            f"{n} probes in one request; the limit is {settings.max_probes_per_request}",
            {"probes": n, "max_probes": settings.max_probes_per_request},
        )
    check_record_chars(settings, "records", body.records)
    limit = settings.max_record_chars
    for i, probe in enumerate(body.probes):
        if (n := len(probe.question) + len(probe.answer)) > limit:
            raise LimitExceeded(
                "record_too_long",
                f"probes[{i}] has {n} characters; the limit is {limit}",
                {"field": "probes", "index": i, "chars": n, "max_chars": limit},
            )
