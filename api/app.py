"""The FastAPI application: `create_app(settings)`; `uvicorn api.app:app` serves the environment's settings.

Startup migrates the database (never create_all), ensures the default tenant and the bootstrap key, signs the
head of an audit chain older than signed heads, and starts the dispatcher, whose sweeper immediately resumes
jobs a previous run left unfinished.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from unlearnd.api import certificates, chain_head, idempotency, security
from unlearnd.api.console import routes as console
from unlearnd.api.db import read_only_factory, transaction, upgrade_to_head
from unlearnd.api.errors import ERROR_RESPONSES, install_error_handlers
from unlearnd.api.guard import RequestGuard
from unlearnd.api.ratelimit import RateLimiter
from unlearnd.api.routers import adapters, audits, forget_requests, health, jobs, keys, models
from unlearnd.api.settings import Settings
from unlearnd.worker.dispatch import build_dispatcher
from unlearnd.worker.runtime import Runtime

log = logging.getLogger("unlearnd.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.signing_key = certificates.load_signing_key(settings)  # refuses to start without one
        upgrade_to_head(settings)
        rt = Runtime.build(settings, app.state.signing_key)
        with transaction(rt.sessions) as session:
            security.ensure_tenant(session)
            security.ensure_bootstrap_key(session, settings)
            if chain_head.adopt(session):
                log.warning("signed the head of an audit chain that predates signed heads (at its current end)")
        dispatcher = build_dispatcher(rt)
        app.state.settings = settings
        app.state.runtime = rt
        app.state.session_factory = rt.sessions
        app.state.read_session_factory = read_only_factory(rt.sessions)
        app.state.blobs = rt.blobs
        app.state.dispatcher = dispatcher
        dispatcher.start()
        log.info("unlearnd ready: %s, dispatcher %s", settings.resolved_database_url, dispatcher.name)
        try:
            yield
        finally:
            dispatcher.stop()
            rt.close()

    docs = settings.docs_enabled  # UNLEARND_API_DOCS: the schema and its pages answer without a key, or not at all
    app = FastAPI(
        title="unlearnd",
        version="0.1.0",
        summary="Machine unlearning as a service: forget requests in, verified LoRA adapters and audits out.",
        lifespan=lifespan,
        openapi_url="/openapi.json" if docs else None,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    install_error_handlers(app)

    @app.exception_handler(idempotency.IdempotentReplay)
    async def _replay(_: object, exc: idempotency.IdempotentReplay):  # noqa: ANN202
        return idempotency.replay_response(exc)

    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
    app.add_middleware(
        RequestGuard, max_body_bytes=settings.max_body_bytes, body_read_timeout=settings.body_read_timeout_seconds
    )
    for router in (
        models.router,
        forget_requests.router,
        jobs.router,
        adapters.router,
        audits.router,
        keys.router,
        health.router,
    ):
        app.include_router(router, responses=ERROR_RESPONSES)
    console.install(app)
    return app


app = create_app()
