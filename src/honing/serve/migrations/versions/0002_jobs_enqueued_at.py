"""jobs.enqueued_at: FIFO order of the queue within one second (created_at has whole seconds)

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        # existing jobs keep their created_at order
        batch_op.add_column(sa.Column("enqueued_at", sa.Float(), nullable=False, server_default="0"))
    op.execute("UPDATE jobs SET enqueued_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("enqueued_at")
