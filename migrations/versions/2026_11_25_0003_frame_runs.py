"""frame runs: which host frames back each backing's pages (sim)

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-25 11:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('frame_runs',
    sa.Column('vm_id', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('start', sa.BigInteger(), nullable=False),
    sa.Column('end', sa.BigInteger(), nullable=False),
    sa.Column('pfn', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('vm_id', 'owner', 'start', name=op.f('pk_frame_runs'))
    )


def downgrade() -> None:
    op.drop_table('frame_runs')
