"""Dispatchers: how a job id reaches `run_job`. The API only knows the `Dispatcher` interface.

The embedded `ThreadDispatcher` runs jobs in a small pool inside the API process, with its own sweeper;
production adds a Celery dispatcher (`dispatch` = send a task whose task_id is the job id) and only swaps
the factory entry below.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Protocol

from worker.runtime import Runtime
from worker.sweeper import Sweeper

log = logging.getLogger("unlearnd.dispatch")

JobFunction = Callable[[str, Runtime], str]


class Dispatcher(Protocol):
    name: str

    def start(self) -> None: ...

    def dispatch(self, job_id: str) -> None: ...

    def stop(self) -> None: ...

    def alive(self) -> bool: ...


def _run_job(job_id: str, rt: Runtime) -> str:
    from worker.runner import run_job

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

    def dispatch(self, job_id: str) -> None:
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


def build_dispatcher(rt: Runtime) -> Dispatcher:
    if rt.settings.dispatcher == "thread":
        return ThreadDispatcher(rt, threads=rt.settings.worker_threads)
    raise RuntimeError(
        f"dispatcher {rt.settings.dispatcher!r} is not available in this build; use UNLEARND_DISPATCHER=thread"
    )
