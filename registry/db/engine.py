"""Engine and session factory for PostgreSQL (tuned) and SQLite (embedded default)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from registry.settings import Settings

# Execution options for a session that only reads (``await session.connection(execution_options=READ_ONLY)``):
# on SQLite its transaction begins deferred, so it takes no write lock (in WAL mode a reader neither waits for
# nor holds up a writer). It must never write: a deferred transaction that writes can deadlock another process.
# PostgreSQL ignores it.
READ_ONLY = {"registry_read_only": True}


def create_engine(settings: Settings, *, url: str | None = None) -> AsyncEngine:
    """The engine for ``settings.database_url``, or for ``url`` (a read replica) with the same tuning.

    Its errors name a statement but not its values (``hide_parameters``): those are units, prompts and answers,
    and an error is logged (a refused usage record, a failed flush), where an erasure cannot reach it. Only
    ``database_echo``, which logs every statement for debugging, shows them.
    """
    if url is not None and url != settings.database_url:
        settings = settings.model_copy(update={"database_url": url})
    if settings.is_sqlite:
        return _create_sqlite_engine(settings)
    server_settings = {"application_name": "prompt-registry"}
    if settings.database_statement_timeout_ms:
        server_settings["statement_timeout"] = str(settings.database_statement_timeout_ms)
    return create_async_engine(
        settings.database_url,
        echo=settings.database_echo,
        hide_parameters=not settings.database_echo,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"timeout": settings.database_connect_timeout, "server_settings": server_settings},
    )


def _create_sqlite_engine(settings: Settings) -> AsyncEngine:
    # One connection per process: SQLite has a single writer anyway, and queueing
    # in the pool beats polling on "database is locked". BEGIN IMMEDIATE takes the
    # write lock up front so two processes (server and CLI) never deadlock on upgrade.
    engine = create_async_engine(
        settings.database_url,
        echo=settings.database_echo,
        hide_parameters=not settings.database_echo,
        pool_size=1,
        max_overflow=0,
        pool_timeout=settings.database_pool_timeout * 10,
        connect_args={"timeout": settings.database_connect_timeout * 5},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=15000", "synchronous=NORMAL"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get("registry_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
