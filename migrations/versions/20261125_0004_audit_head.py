"""audit chain head: the signed seq and hash of the newest audit record (api/chain_head.py)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 10:00:00

A chain older than this table gets an unsigned head at its current end, which the service signs at its next
start (a migration has no access to the signing key).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import unlearnd.api.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("signed_at", unlearnd.api.models.UTCDateTime(), nullable=True),
        sa.Column("key_id", sa.String(length=16), nullable=True),
        sa.Column("signature", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    tip = op.get_bind().execute(sa.text("SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")).first()
    if tip is not None:
        op.get_bind().execute(
            sa.text("INSERT INTO audit_head (id, seq, hash) VALUES (1, :seq, :hash)"),
            {"seq": tip.seq, "hash": tip.hash},
        )


def downgrade() -> None:
    op.drop_table("audit_head")
