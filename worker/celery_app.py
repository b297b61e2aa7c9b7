"""The production dispatcher's Celery side: one task, `unlearnd.run_job(job_id)`, on the `gpu` queue (DESIGN §2).

The task body is the embedded dispatcher's job function, `worker.runner.run_job`; the message carries only
the job id (task_id = job_id) and the database decides everything else, so a duplicate message is a no-op
(its claim loses). Nothing here imports torch: the API process builds this app to send tasks by name, and a
worker imports torch only inside the task (no CUDA is touched before the first job).

Settings and why:
- `task_acks_late` + `worker_prefetch_multiplier=1`: a message is acknowledged when its job ended, and a busy
  worker holds no second message, so queued jobs wait where any idle worker can take them.
- `visibility_timeout` (UNLEARND_BROKER_VISIBILITY_TIMEOUT_SECONDS, default 24 h) above the longest job:
  otherwise Redis hands a running job's message to another worker. The sweeper, not redelivery, resumes the
  jobs of dead workers (their lease expires in UNLEARND_LEASE_SECONDS, far sooner).
- `task_reject_on_worker_lost=False`: a job whose process died is acknowledged, not requeued — its lease
  expires and the sweeper dispatches it again within the attempt cap (no poison-pill loop through Redis).
- `task_ignore_result`, no result backend: results live in the database.
- Messages go through the anonymous exchange (routing key = queue name), so they do not depend on Redis's
  binding tables: after a Redis restart without persistence a publisher still reaches the queue.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, signals

from unlearnd.api.settings import Settings

log = logging.getLogger("unlearnd.celery")

TASK_NAME = "unlearnd.run_job"


def make_celery(settings: Settings) -> Celery:
    """A Celery app for `settings` (the API's dispatcher and the worker build the same one)."""
    app = Celery("unlearnd", broker=settings.broker_url, set_as_current=False)
    transport: dict[str, Any] = {"visibility_timeout": settings.broker_visibility_timeout_seconds}
    if settings.broker_key_prefix:
        transport["global_keyprefix"] = settings.broker_key_prefix
    app.conf.update(
        task_default_queue=settings.celery_queue,
        task_default_exchange="",
        task_default_routing_key=settings.celery_queue,
        task_create_missing_queues=True,
        task_acks_late=True,
        task_reject_on_worker_lost=False,
        task_ignore_result=True,
        result_backend=None,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=None,  # a long-lived process keeps its model cache
        worker_cancel_long_running_tasks_on_connection_loss=False,  # the lease, not the broker, owns the job
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
        task_serializer="json",
        accept_content=["json"],
        enable_utc=True,
    )
    return app


def send_job(app: Celery, job_id: str, queue: str, countdown: float = 0.0) -> None:
    """Publish one job message: task_id = job_id, anonymous exchange, routing key = the queue; `countdown`
    (the batching window) delays its execution."""
    app.send_task(
        TASK_NAME,
        args=[job_id],
        task_id=job_id,
        queue=queue,
        exchange="",
        routing_key=queue,
        countdown=countdown or None,
    )


# --- the worker process ------------------------------------------------------------------------------------

_app: Celery | None = None
_app_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    """`celery -A worker.celery_app worker` (what `unlearnd worker` runs) finds `app` here. It is built on
    first use from the environment, so the API importing `make_celery` builds nothing it does not need."""
    if name in ("app", "celery"):
        return worker_app()
    raise AttributeError(name)


def worker_app() -> Celery:
    global _app
    with _app_lock:
        if _app is None:
            _app = make_celery(Settings())
            _app.task(name=TASK_NAME, ignore_result=True, acks_late=True)(run_job_task)
        return _app


def run_job_task(job_id: str) -> str:
    """The task: the same `run_job` as the embedded dispatcher, in the worker's process-wide runtime."""
    from unlearnd.worker.runner import NOT_CLAIMED, run_job
    from unlearnd.worker.runtime import default_runtime

    rt = default_runtime()
    outcome = run_job(job_id, rt)
    if outcome == NOT_CLAIMED:
        _message_consumed(rt, job_id)
    # No sweep is forced when a job ends: the next message is being delivered at that moment and a sweep
    # would see its job queued with no message in the list (a harmless but systematic duplicate). Jobs that
    # waited for this job's model are dispatched by the next periodic sweep.
    return outcome


def _message_consumed(rt: Any, job_id: str) -> None:
    """A queued job we could not claim (its model is busy) has no live message any more: say so, so the
    sweeper dispatches it again as soon as the model is free, not only after the redispatch delay."""
    from sqlalchemy import update

    from unlearnd.api.db import transaction
    from unlearnd.api.models import QUEUED, Job

    with transaction(rt.sessions) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == QUEUED)
            .values(dispatched_at=None)
            .execution_options(synchronize_session=False)
        )


_sweeper: Any = None
_sweeper_lock = threading.Lock()


@signals.worker_init.connect
def _preload(**_: Any) -> None:
    """Import the ML stack before the first job (≈ 6 s), so job timings are model loads, not imports.
    Importing torch does not initialise CUDA."""
    import peft  # noqa: F401
    import transformers  # noqa: F401

    import unlearnd.core.modeling  # noqa: F401
    import unlearnd.core.pipeline  # noqa: F401


@signals.worker_process_init.connect
def _fresh_runtime_after_fork(**_: Any) -> None:
    """Prefork pool: a child must not share the parent's database connections (the sweeper's runtime)."""
    from unlearnd.worker import runtime

    if runtime._default is not None:
        runtime._default.engine.dispose(close=False)
        runtime._default = None


@signals.worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    """The worker's sweeper: a daemon thread of the worker process (solo pool: the process that runs jobs)."""
    global _sweeper
    from unlearnd.worker.runtime import default_runtime
    from unlearnd.worker.sweeper import BrokerQueue, Sweeper

    with _sweeper_lock:
        if _sweeper is not None:
            return
        rt = default_runtime()
        app = worker_app()
        queue = BrokerQueue(app, rt.settings.celery_queue)
        _sweeper = Sweeper(rt, lambda job_id: send_job(app, job_id, rt.settings.celery_queue), broker=queue)
        _sweeper.start()
        log.info("sweeper started (every %.1f s)", rt.settings.sweep_interval_seconds)


@signals.worker_shutting_down.connect
def _stop_jobs(**_: Any) -> None:
    """Warm shutdown: the running job returns to the queue at its next step (attempt refunded), so the task
    ends quickly and another worker resumes it."""
    from unlearnd.worker.runtime import default_runtime

    default_runtime().stopping.set()
    if _sweeper is not None:
        _sweeper.stop(wait=False)
