from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from unlearnd.api.db import alembic_config, make_engine, upgrade_to_head
from unlearnd.api.models import Base
from unlearnd.api.settings import Settings


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


def test_autogenerate_finds_no_difference_between_models_and_migrations(tmp_path: Path):
    s = _settings(tmp_path)
    upgrade_to_head(s)
    engine = make_engine(s.resolved_database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


def test_downgrade_to_base_and_upgrade_again(tmp_path: Path):
    s = _settings(tmp_path)
    upgrade_to_head(s)
    cfg = alembic_config(s.resolved_database_url)
    command.downgrade(cfg, "base")
    engine = make_engine(s.resolved_database_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    command.upgrade(cfg, "head")
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert set(Base.metadata.tables) <= tables


def test_upgrade_is_idempotent_at_start(tmp_path: Path):
    s = _settings(tmp_path)
    upgrade_to_head(s)
    upgrade_to_head(s)  # the app runs it at every start
    engine = make_engine(s.resolved_database_url)
    assert "jobs" in inspect(engine).get_table_names()
    engine.dispose()
