"""Engines, sessions and programmatic migrations.

SQLite (the embedded default) is made safe for a thread dispatcher writing beside request handlers: WAL
journal, a busy timeout, and `BEGIN IMMEDIATE` for every transaction that may write, so a transaction that
reads then writes (claim, publish, the audit chain's next seq) takes the write lock up front instead of failing
on upgrade. Read-only sessions (GET requests) begin deferred: under WAL they take no lock at all, so status
polling does not queue behind one write lock (it collapsed at 50 concurrent pollers when it did).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from unlearnd.api.chain_head import SIGNING_KEY
from unlearnd.api.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # A GET holds its connection across a few event-loop turns, so concurrent pollers can hold more than
    # the default 5 (+10 overflow, opened and closed per use, PRAGMAs included): keep enough pooled.
    in_memory = make_url(url).database in (None, "", ":memory:")  # SingletonThreadPool: no sizes
    pool = {} if in_memory else {"pool_size": 20, "max_overflow": 20}
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA secure_delete=ON")  # purged payloads are overwritten, not left in free pages
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(READ_ONLY):
            # Every GET runs this: straight to the driver, as exec_driver_sql's execution context costs more
            # than the statement. A deferred BEGIN takes no lock, so it cannot fail on a busy database.
            conn.connection.driver_connection.execute("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


READ_ONLY = "unlearnd_read_only"


def read_only_factory(factory: sessionmaker[Session]) -> sessionmaker[Session]:
    """`factory`'s twin for sessions that never write (on SQLite they begin deferred; elsewhere nothing
    changes), built once per app rather than once per GET (an option engine per call)."""
    engine: Engine = factory.kw["bind"]
    return sessionmaker(**{**factory.kw, "bind": engine.execution_options(**{READ_ONLY: True})})


def make_session_factory(engine: Engine, signing_key: Any = None) -> sessionmaker[Session]:
    """Sessions of `engine`; `signing_key` (the audit Ed25519 key) lets them append to the audit chain, whose
    every append signs the chain's new head (api/chain_head.py)."""
    info = {} if signing_key is None else {SIGNING_KEY: signing_key}
    return sessionmaker(engine, expire_on_commit=False, info=info)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any exception."""
    with factory() as session, session.begin():
        yield session


class DatabaseMissing(Exception):
    """The configured database does not exist, or the service did not create it."""


def require_initialised(url: str) -> str:
    """Check that `url` holds a database the service created (Alembic's version table in it), without
    creating anything; return the URL as it may be shown (no password). Raise DatabaseMissing otherwise."""
    parsed = make_url(url)
    shown = parsed.render_as_string(hide_password=True)
    hint = (
        "run this on the server host with the server's UNLEARND_DATA_DIR (or UNLEARND_DATABASE_URL); "
        "the server creates its database when it first starts"
    )
    if parsed.get_backend_name() == "sqlite" and (
        parsed.database in (None, "", ":memory:") or not Path(parsed.database).is_file()
    ):
        raise DatabaseMissing(f"no unlearnd database at {shown}: {hint}")
    engine = create_engine(url)  # not make_engine: it would create SQLite's directory
    try:
        with engine.connect() as conn:
            initialised = inspect(conn).has_table("alembic_version")
    except SQLAlchemyError as e:
        raise DatabaseMissing(f"cannot open the database {shown} ({type(e).__name__}): {hint}") from None
    finally:
        engine.dispose()
    if not initialised:
        raise DatabaseMissing(f"{shown} is not an unlearnd database (no schema version in it): {hint}")
    return shown


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_to_head(settings: Settings) -> None:
    """Bring the database to the newest schema; the only way the app creates or changes tables."""
    from alembic import command

    make_engine(settings.resolved_database_url).dispose()  # creates the SQLite directory if needed
    command.upgrade(alembic_config(settings.resolved_database_url), "head")
