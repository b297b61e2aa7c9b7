"""The sweeper: finds jobs that no live worker is running and dispatches them again (DESIGN §2).

Runs once when a dispatcher starts (so a restarted service resumes its unfinished jobs) and then every
`sweep_interval_seconds`. Jobs with no attempts left are failed here instead of being dispatched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from api.db import transaction
from api.models import utcnow
from worker import protocol, transitions
from worker.runtime import Runtime

log = logging.getLogger("unlearnd.sweeper")


def sweep_once(rt: Runtime, dispatch: Callable[[str], None], queued_before: datetime | None = None) -> list[str]:
    """Fail exhausted jobs, dispatch the rest; `queued_before` (default now − redispatch_after) bounds which
    queued jobs count as having lost their message."""
    settings = rt.settings
    now = utcnow()
    cutoff = queued_before or now - timedelta(seconds=settings.redispatch_after_seconds)
    with transaction(rt.sessions) as session:
        for job_id in protocol.exhausted(session, now, settings.max_attempts):
            transitions.fail_if_exhausted(session, job_id, settings.max_attempts)
        job_ids = protocol.dispatchable(session, now, cutoff, settings.max_attempts)
        protocol.mark_dispatched(session, job_ids, now)
    for job_id in job_ids:
        try:
            dispatch(job_id)
        except Exception:  # the broker may be down; the next sweep tries again
            log.warning("could not dispatch %s", job_id, exc_info=True)
    return job_ids


class Sweeper:
    def __init__(
        self,
        rt: Runtime,
        dispatch: Callable[[str], None],
        queued_before: Callable[[datetime], datetime] | None = None,
    ) -> None:
        self.rt = rt
        self.dispatch = dispatch
        self.queued_before = queued_before
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="unlearnd-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                now = utcnow()
                sweep_once(self.rt, self.dispatch, self.queued_before(now) if self.queued_before else None)
            except Exception:
                log.exception("sweep failed")
            self._wake.wait(self.rt.settings.sweep_interval_seconds)
            self._wake.clear()
