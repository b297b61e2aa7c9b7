"""The sweeper: finds jobs that no live worker is running and dispatches them again (DESIGN §2).

Runs once when a dispatcher starts (so a restarted service resumes its unfinished jobs) and then every
`sweep_interval_seconds`. Jobs with no attempts left are failed here instead of being dispatched, and the
scratch directories that killed attempts left behind are removed (worker/scratch.py).

With a broker (Celery), every worker runs a sweeper and a message may wait in the queue for hours behind
other jobs, so the broker mode re-dispatches more carefully, to avoid message storms:
- a queued job only when its last dispatch is older than `redispatch_after_seconds` (or was consumed
  without a claim) AND its id is not in the broker's queue (when the queue can be read);
- a job whose lease expired only once per expiry (not at every sweep while it waits for a worker);
- never a job whose model is busy (another job of the model holds a live lease: its claim would lose);
- on PostgreSQL, one sweeper at a time (a transaction-scoped advisory try-lock; the others skip a round).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, text, update
from sqlalchemy.orm import Session

from unlearnd.api.db import transaction
from unlearnd.api.models import QUEUED, Job, utcnow
from unlearnd.worker import protocol, scratch, transitions
from unlearnd.worker.runtime import Runtime

log = logging.getLogger("unlearnd.sweeper")

_SWEEP_LOCK = 4242002  # pg advisory lock id (the audit chain uses 4242001)


class BrokerQueue:
    """Reads which job ids wait in a Celery queue on Redis (the "live messages"); None when it cannot tell."""

    def __init__(self, app: Any, queue: str) -> None:
        self.app = app
        self.queue = queue

    def live_ids(self) -> set[str] | None:
        try:
            with self.app.connection_for_read() as conn:
                channel = conn.default_channel
                if not hasattr(channel, "_q_for_pri"):  # not the Redis transport
                    return None
                prefix = getattr(channel, "global_keyprefix", "") or ""
                ids: set[str] = set()
                for pri in channel.priority_steps:
                    key = prefix + channel._q_for_pri(self.queue, pri)
                    for raw in channel.client.lrange(key, 0, -1):
                        task_id = _task_id(raw)
                        if task_id:
                            ids.add(task_id)
                return ids
        except Exception:
            log.warning("could not read the broker queue %r", self.queue, exc_info=True)
            return None


def _task_id(raw: bytes | str) -> str | None:
    try:
        message = json.loads(raw)
        return message.get("headers", {}).get("id") or message.get("properties", {}).get("correlation_id")
    except (ValueError, AttributeError):
        return None


def _try_lock(session: Session) -> bool:
    if session.get_bind().dialect.name != "postgresql":
        return True  # SQLite: BEGIN IMMEDIATE already serialises transactions
    return bool(session.scalar(text(f"SELECT pg_try_advisory_xact_lock({_SWEEP_LOCK})")))


def _broker_candidates(session: Session, now: datetime, cutoff: datetime, max_attempts: int) -> list[str]:
    stale_queue = and_(Job.status == QUEUED, or_(Job.dispatched_at.is_(None), Job.dispatched_at <= cutoff))
    lease_lost = and_(
        Job.status.in_(protocol.IN_FLIGHT),
        or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now),
        or_(Job.dispatched_at.is_(None), Job.dispatched_at <= cutoff, Job.dispatched_at < Job.lease_expires_at),
    )
    rows = session.scalars(
        select(Job.id)
        .where(Job.attempts < max_attempts, or_(stale_queue, lease_lost), ~protocol._model_busy(now))
        .order_by(Job.created_at)
    )
    return list(rows)


def sweep_once(
    rt: Runtime,
    dispatch: Callable[[str], None],
    queued_before: datetime | None = None,
    broker: BrokerQueue | None = None,
) -> list[str]:
    """Fail exhausted jobs, dispatch the rest; `queued_before` (default now − redispatch_after) bounds which
    queued jobs count as having lost their message. `broker` switches to the broker mode (module doc)."""
    settings = rt.settings
    now = utcnow()
    cutoff = queued_before or now - timedelta(seconds=settings.redispatch_after_seconds)
    with transaction(rt.sessions) as session:
        if not _try_lock(session):
            return []
        for job_id in protocol.exhausted(session, now, settings.max_attempts):
            transitions.fail_if_exhausted(session, job_id, settings.max_attempts)
        stale = scratch.stale_dirs(session, rt.work_dir)
        if broker is None:
            job_ids = protocol.dispatchable(session, now, cutoff, settings.max_attempts)
            protocol.mark_dispatched(session, job_ids, now)
        else:
            job_ids = _broker_candidates(session, now, cutoff, settings.max_attempts)
            if job_ids:
                live = broker.live_ids()
                job_ids = [j for j in job_ids if live is None or j not in live]
            if job_ids:
                session.execute(
                    update(Job)
                    .where(Job.id.in_(job_ids))
                    .values(dispatched_at=now)
                    .execution_options(synchronize_session=False)
                )
    for job_id in job_ids:
        try:
            dispatch(job_id)
        except Exception:  # the broker may be down; the next sweep tries again
            log.warning("could not dispatch %s", job_id, exc_info=True)
    if job_ids:
        log.info("re-dispatched %d job(s): %s", len(job_ids), ", ".join(job_ids))
    scratch.remove(stale)
    return job_ids


class Sweeper:
    def __init__(
        self,
        rt: Runtime,
        dispatch: Callable[[str], None],
        queued_before: Callable[[datetime], datetime] | None = None,
        broker: BrokerQueue | None = None,
    ) -> None:
        self.rt = rt
        self.dispatch = dispatch
        self.queued_before = queued_before
        self.broker = broker
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="unlearnd-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, wait: bool = True) -> None:
        """Stop after the current sweep; `wait=False` from a signal handler, which must not block."""
        self._stop.set()
        self._wake.set()
        if wait and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                now = utcnow()
                cutoff = self.queued_before(now) if self.queued_before else None
                sweep_once(self.rt, self.dispatch, cutoff, broker=self.broker)
            except Exception:
                log.exception("sweep failed")
            self._wake.wait(self.rt.settings.sweep_interval_seconds)
            self._wake.clear()
