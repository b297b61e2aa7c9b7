"""Read-only sessions (GET requests) must not queue behind SQLite's single write lock."""

import threading

from sqlalchemy import text

from unlearnd.api.db import make_engine, make_session_factory, read_only_factory


def test_reader_is_not_blocked_by_a_writer_holding_the_lock(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    factory = make_session_factory(engine)
    with factory() as s, s.begin():
        s.execute(text("CREATE TABLE t (x INTEGER)"))
        s.execute(text("INSERT INTO t VALUES (1)"))

    writer = factory()
    writer.begin()
    writer.execute(text("INSERT INTO t VALUES (2)"))  # BEGIN IMMEDIATE: the write lock is held from here
    result: dict = {}

    def read() -> None:
        with read_only_factory(factory)() as r:
            result["rows"] = r.execute(text("SELECT count(*) FROM t")).scalar()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=5)  # a reader that took BEGIN IMMEDIATE would wait for the 30 s busy timeout
    try:
        assert not reader.is_alive(), "the read-only session waited for the write lock"
        assert result["rows"] == 1  # WAL: the reader sees the last committed state
    finally:
        writer.rollback()
        writer.close()
        engine.dispose()


def test_write_sessions_still_take_the_lock_up_front(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    factory = make_session_factory(engine)
    with factory() as s, s.begin():
        s.execute(text("CREATE TABLE t (x INTEGER)"))
    first = factory()
    first.begin()
    first.execute(text("SELECT count(*) FROM t"))  # a read, yet the write lock is taken (BEGIN IMMEDIATE)
    done = threading.Event()

    def write() -> None:
        with factory() as w, w.begin():
            w.execute(text("INSERT INTO t VALUES (1)"))
        done.set()

    t = threading.Thread(target=write, daemon=True)
    t.start()
    try:
        assert not done.wait(timeout=1.0), "a second writer got in while the first held the lock"
    finally:
        first.rollback()
        first.close()
    assert done.wait(timeout=10)
    engine.dispose()
