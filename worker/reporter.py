"""Progress, events, cancel checks and lease renewal of one running job.

core calls `progress` at every step; writing each call would hammer the database, so progress is written
at most every `progress_interval_seconds` and at every phase change. `should_cancel` answers from flags the
heartbeat and the progress writes refresh, plus the process's stop signal, so core polls it for free.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import select, update

from unlearnd.api.audit import json_safe
from unlearnd.api.db import transaction
from unlearnd.api.models import Job, utcnow
from unlearnd.worker import protocol
from unlearnd.worker.runtime import Runtime
from unlearnd.worker.transitions import add_event

log = logging.getLogger("unlearnd.worker")

METRICS_EVENT_SECONDS = 5.0


class JobReporter:
    def __init__(self, rt: Runtime, job_id: str) -> None:
        self.rt = rt
        self.job_id = job_id
        self.lost_lease = threading.Event()
        self.cancel_requested = threading.Event()
        self._lock = threading.Lock()
        self._phase: str | None = None
        self._pending: tuple[str, int, int, dict[str, Any]] | None = None
        self._last_write = 0.0
        self._last_metrics_event = 0.0
        self._last_metrics: dict[str, Any] | None = None

    def progress(self, phase: str, step: int, total: int, metrics: dict[str, Any]) -> None:
        with self._lock:
            changed = phase != self._phase
            self._phase = phase
            self._pending = (phase, int(step), int(total), dict(metrics or {}))
            if changed or time.monotonic() - self._last_write >= self.rt.settings.progress_interval_seconds:
                self._write(phase_changed=changed)

    def flush(self) -> None:
        with self._lock:
            if self._pending is not None:
                self._write(phase_changed=False)

    def should_cancel(self) -> bool:
        if time.monotonic() - self._last_write >= self.rt.settings.progress_interval_seconds:
            self.refresh_flags()
        return self.lost_lease.is_set() or self.cancel_requested.is_set() or self.rt.stopping.is_set()

    def refresh_flags(self) -> None:
        with transaction(self.rt.sessions) as session:
            self._read_flags(session)

    def _read_flags(self, session: Any) -> None:
        row = session.execute(select(Job.lease_owner, Job.cancel_requested).where(Job.id == self.job_id)).first()
        if row is None or row.lease_owner != self.rt.owner:
            self.lost_lease.set()
        elif row.cancel_requested:
            self.cancel_requested.set()

    def _write(self, *, phase_changed: bool) -> None:
        assert self._pending is not None
        phase, step, total, metrics = self._pending
        now = time.monotonic()
        self._last_write = now
        with transaction(self.rt.sessions) as session:
            result = session.execute(
                update(Job)
                .where(protocol.owned(self.job_id, self.rt.owner))
                .values(phase=phase, step=step, total=total, progress=json_safe(metrics), updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:
                self.lost_lease.set()
                return
            if phase_changed:
                add_event(session, self.job_id, f"phase {phase}", data={"phase": phase, "total": total})
            if (
                metrics
                and metrics != self._last_metrics
                and (phase_changed or now - self._last_metrics_event >= METRICS_EVENT_SECONDS)
            ):
                self._last_metrics, self._last_metrics_event = metrics, now
                add_event(
                    session,
                    self.job_id,
                    f"{phase} step {step}/{total}",
                    type="metrics",
                    data={"phase": phase, "step": step, "total": total, **metrics},
                )
            self._read_flags(session)


class Heartbeat:
    """Renews the lease in a background thread while the job runs; a failed renewal means another worker
    owns the job now, and this one must stop without publishing."""

    def __init__(self, rt: Runtime, reporter: JobReporter) -> None:
        self.rt = rt
        self.reporter = reporter
        self.period = min(rt.settings.lease_seconds / 3, 5.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{reporter.job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                with transaction(self.rt.sessions) as session:
                    ok = protocol.renew(
                        session, self.reporter.job_id, self.rt.owner, utcnow(), self.rt.settings.lease_seconds
                    )
                    if ok:
                        self.reporter._read_flags(session)
                if not ok:
                    self.reporter.lost_lease.set()
                    return
            except Exception:  # a transient database error: the next beat retries before the lease ends
                log.warning("lease renewal of %s failed", self.reporter.job_id, exc_info=True)
