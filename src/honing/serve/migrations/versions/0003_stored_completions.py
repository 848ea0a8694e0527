"""stored_completions (chat completions kept with store: true, and their feedback); project_settings

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_completions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project", sa.String(length=100), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("created_ts", sa.Float(), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("rating", sa.String(length=10), nullable=True),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("feedback_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("stored_completions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stored_completions_project"), ["project"], unique=False)
        batch_op.create_index(batch_op.f("ix_stored_completions_created_ts"), ["created_ts"], unique=False)
    op.create_table(
        "project_settings",
        sa.Column("project", sa.String(length=100), nullable=False),
        sa.Column("store_retention_days", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project"),
    )


def downgrade() -> None:
    op.drop_table("project_settings")
    with op.batch_alter_table("stored_completions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stored_completions_created_ts"))
        batch_op.drop_index(batch_op.f("ix_stored_completions_project"))
    op.drop_table("stored_completions")
