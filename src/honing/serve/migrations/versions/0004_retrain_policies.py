"""retrain_policies (a production model's retraining loop: triggers, gate, where the loop stands)

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retrain_policies",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project", sa.String(length=100), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("production_job", sa.String(length=40), nullable=False),
        sa.Column("lineage", sa.JSON(), nullable=False),
        sa.Column("every_n_completions", sa.Integer(), nullable=True),
        sa.Column("interval_seconds", sa.Integer(), nullable=True),
        sa.Column("min_feedback", sa.Integer(), nullable=False),
        sa.Column("drift", sa.Boolean(), nullable=False),
        sa.Column("gate", sa.JSON(), nullable=False),
        sa.Column("honing_config", sa.JSON(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("cycles", sa.Integer(), nullable=False),
        sa.Column("cursor_ts", sa.Float(), nullable=False),
        sa.Column("feedback_cursor", sa.BigInteger(), nullable=False),
        sa.Column("checked_at", sa.Float(), nullable=True),
        sa.Column("current_job", sa.String(length=40), nullable=True),
        sa.Column("last_cycle", sa.JSON(), nullable=True),
        sa.Column("lease_worker", sa.String(length=100), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("retrain_policies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_retrain_policies_project"), ["project"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("retrain_policies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_retrain_policies_project"))
    op.drop_table("retrain_policies")
