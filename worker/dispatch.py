"""Dispatchers: how a job id reaches `run_job`. The API only knows the `Dispatcher` interface.

The embedded `ThreadDispatcher` runs jobs in a small pool inside the API process, with its own sweeper.
The production `CeleryDispatcher` sends a task by name (task_id = job id) to the `gpu` queue; the workers
run the jobs and the sweepers (worker/celery_app.py), so the API process needs neither torch nor a sweeper.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Protocol

from unlearnd.worker.runtime import Runtime
from unlearnd.worker.sweeper import Sweeper

log = logging.getLogger("unlearnd.dispatch")

JobFunction = Callable[[str, Runtime], str]


class Dispatcher(Protocol):
    name: str

    def start(self) -> None: ...

    def dispatch(self, job_id: str, delay: float = 0.0) -> None: ...

    def stop(self) -> None: ...

    def alive(self) -> bool: ...


def _run_job(job_id: str, rt: Runtime) -> str:
    from unlearnd.worker.runner import run_job

    return run_job(job_id, rt)


class ThreadDispatcher:
    """Runs jobs on `threads` worker threads; the set of ids in flight is its "live message" record, so
    its sweeper re-dispatches every queued job that is not in it."""

    name = "thread"

    def __init__(self, rt: Runtime, threads: int = 1, job_fn: JobFunction = _run_job) -> None:
        self.rt = rt
        self.job_fn = job_fn
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="unlearnd-job")
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._sweeper = Sweeper(rt, self.dispatch, queued_before=_all_queued)

    def start(self) -> None:
        self._sweeper.start()

    def dispatch(self, job_id: str, delay: float = 0.0) -> None:
        """Run the job in the pool (after `delay` seconds: the batching window, while requests join it)."""
        if delay > 0:
            timer = threading.Timer(delay, self.dispatch, args=(job_id,))
            timer.daemon = True
            timer.start()
            return
        with self._lock:
            if job_id in self._in_flight or self.rt.stopping.is_set():
                return
            self._in_flight.add(job_id)
        self._pool.submit(self._run, job_id)

    def _run(self, job_id: str) -> None:
        outcome = None
        try:
            outcome = self.job_fn(job_id, self.rt)
        except Exception:
            log.exception("job %s: job function raised", job_id)
        finally:
            with self._lock:
                self._in_flight.discard(job_id)
            if outcome != "not_claimed":  # a job ended: jobs waiting on its model may start now
                self._sweeper.wake()

    def stop(self) -> None:
        """Running jobs stop at their next step and go back to the queue; the next start resumes them."""
        self.rt.stopping.set()
        self._sweeper.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def alive(self) -> bool:
        return self._sweeper.alive()

    def in_flight(self) -> set[str]:
        with self._lock:
            return set(self._in_flight)


def _all_queued(now: datetime) -> datetime:
    return now


class CeleryDispatcher:
    """Publishes job ids to the broker. A failed publish is logged by the caller and healed by a worker's
    sweeper (the job is committed; the database, not the broker, is the source of truth)."""

    name = "celery"
    PING_TTL = 5.0

    def __init__(self, rt: Runtime) -> None:
        from unlearnd.worker.celery_app import make_celery

        self.rt = rt
        self.queue = rt.settings.celery_queue
        self.app = make_celery(rt.settings)
        self._ping: tuple[float, bool] = (0.0, False)
        self._ping_lock = threading.Lock()

    def start(self) -> None:
        pass

    def dispatch(self, job_id: str, delay: float = 0.0) -> None:
        from unlearnd.worker.celery_app import send_job

        send_job(self.app, job_id, self.queue, countdown=delay)

    def stop(self) -> None:
        self.app.close()

    def alive(self) -> bool:
        """The broker answers (cached for a few seconds, so /readyz stays cheap)."""
        with self._ping_lock:
            checked_at, ok = self._ping
            if time.monotonic() - checked_at < self.PING_TTL:
                return ok
            try:
                with self.app.connection_for_write() as conn:
                    conn.ensure_connection(max_retries=1, timeout=2)
                ok = True
            except Exception:
                log.warning("broker %s unreachable", self.rt.settings.broker_url, exc_info=True)
                ok = False
            self._ping = (time.monotonic(), ok)
            return ok


def build_dispatcher(rt: Runtime) -> Dispatcher:
    if rt.settings.dispatcher == "celery":
        return CeleryDispatcher(rt)
    return ThreadDispatcher(rt, threads=rt.settings.worker_threads)
