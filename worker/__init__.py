"""unlearnd worker: turns a job row into a core call (DESIGN §2).

`worker.runner.run_job(job_id)` is the one job function; the thread dispatcher (embedded) and a Celery task
(production) both call it, and nothing about a job depends on how it was dispatched. Modules here import
torch and core's ML modules only inside functions, so the API process can hold a dispatcher without them.
"""
