"""Scratch directories of job attempts: `<data_dir>/work/<job_id>-<attempt>`.

An attempt removes its own directory when it ends, but an attempt that was killed (kill -9, OOM, a lost
host) cannot, and its directory holds adapter weights derived from the records to erase. So a new attempt
removes the directories of the job's earlier attempts before it starts, and the sweeper removes those of
attempts that can no longer run: of a finished (or deleted) job, or older than the job's current attempt.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from unlearnd.api.models import FINAL_STATUSES, Job

log = logging.getLogger("unlearnd.worker")

_NAME = re.compile(r"(?P<job>[A-Za-z0-9_]+)-(?P<attempt>[0-9]+)")


def attempt_dir(work_dir: Path, job_id: str, attempt: int) -> Path:
    return work_dir / f"{job_id}-{attempt}"


def remove_earlier(work_dir: Path, job_id: str, attempt: int) -> list[Path]:
    """Remove the directories of `job_id`'s attempts before `attempt` (killed ones left them behind)."""
    stale = []
    for path in _attempt_dirs(work_dir):
        parsed = _parse(path)
        if parsed is not None and parsed[0] == job_id and parsed[1] < attempt:
            stale.append(path)
    return remove(stale)


def stale_dirs(session: Session, work_dir: Path) -> list[Path]:
    """The attempt directories whose attempt cannot run any more (remove them with `remove`)."""
    dirs = {p: parsed for p in _attempt_dirs(work_dir) if (parsed := _parse(p)) is not None}
    if not dirs:
        return []
    job_ids = sorted({job_id for job_id, _ in dirs.values()})
    jobs = {row.id: row for row in session.execute(select(Job.id, Job.status, Job.attempts).where(Job.id.in_(job_ids)))}
    stale = []
    for path, (job_id, attempt) in dirs.items():
        job = jobs.get(job_id)
        if job is None or job.status in FINAL_STATUSES or attempt < job.attempts:
            stale.append(path)
    return stale


def _attempt_dirs(work_dir: Path) -> list[Path]:
    if not work_dir.is_dir():
        return []
    return [p for p in work_dir.iterdir() if p.is_dir() and not p.is_symlink()]


def _parse(path: Path) -> tuple[str, int] | None:
    match = _NAME.fullmatch(path.name)
    return (match["job"], int(match["attempt"])) if match else None


def remove(paths: list[Path]) -> list[Path]:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed the scratch directory %s of an attempt that no longer runs", path.name)
    return paths
