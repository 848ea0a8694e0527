"""The service's schema: the versioned migrations build exactly the tables the code declares (on SQLite
here; the PostgreSQL tests run the same migrations), and upgrading twice changes nothing."""

from __future__ import annotations


def test_migrations_match_the_models(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from honing.serve.db import Base, make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'h.db'}"
    upgrade(url)
    upgrade(url)  # idempotent: already at head
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    engine.dispose()
    assert diff == []
    assert mode == "wal"
    # control: a table the code declares but no migration creates is reported
    from sqlalchemy import Column, Integer, MetaData, Table

    extra = MetaData()
    for t in Base.metadata.tables.values():
        t.to_metadata(extra)
    Table("not_migrated", extra, Column("id", Integer, primary_key=True))
    engine = make_engine(url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), extra) != []
    engine.dispose()
