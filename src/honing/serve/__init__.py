"""`hone serve`: an OpenAI-compatible fine-tuning and chat API (see docs/service.md).

    app.py        create_app(settings): FastAPI app, database migration, embedded worker, model pool
    api.py        files and fine-tuning job endpoints (+ Honing's validation/metrics/report extensions)
    chat.py       models and chat completions (SSE streaming)
    inference.py  ModelPool: base models in memory, LRU of PEFT adapters, generation
    worker.py     the queue (database rows), one `hone train` subprocess per job, event ingestion
    jobs.py       OpenAI job requests -> training configuration; job/event/checkpoint objects
    files.py      uploads on disk + validation reports
    db.py         SQLAlchemy tables, engine (SQLite WAL / PostgreSQL), Alembic migrations
    auth.py       hashed API keys scoped to projects
    errors.py     OpenAI-shaped errors
"""
