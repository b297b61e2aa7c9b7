"""models: counts and sha256 of the reference sets, shown instead of loading the sets

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 11:00:00

Existing rows are filled from their sets here (the same canonical JSON as api.models.reference_set_sha256).
Plain ADD COLUMN with a default: on SQLite, rebuilding base_models (which other tables reference) fails with
foreign keys on.
"""

import hashlib
import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("retain_count", "holdout_count", "retain_sha256", "holdout_sha256")


def _sha256(records) -> str:
    canonical = json.dumps(records, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def upgrade() -> None:
    empty = _sha256([])
    op.add_column("base_models", sa.Column("retain_count", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("base_models", sa.Column("holdout_count", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("base_models", sa.Column("retain_sha256", sa.String(64), nullable=False, server_default=empty))
    op.add_column("base_models", sa.Column("holdout_sha256", sa.String(64), nullable=False, server_default=empty))
    models = sa.table(
        "base_models",
        sa.column("id", sa.String()),
        sa.column("retain", sa.JSON()),
        sa.column("holdout", sa.JSON()),
        *(sa.column(name) for name in COLUMNS),
    )
    conn = op.get_bind()
    for row in conn.execute(sa.select(models.c.id, models.c.retain, models.c.holdout)).all():
        retain, holdout = row.retain or [], row.holdout or []
        conn.execute(
            models.update()
            .where(models.c.id == row.id)
            .values(
                retain_count=len(retain),
                holdout_count=len(holdout),
                retain_sha256=_sha256(retain),
                holdout_sha256=_sha256(holdout),
            )
        )


def downgrade() -> None:
    for name in reversed(COLUMNS):
        op.drop_column("base_models", name)
