"""Picks the session store named in the settings."""

from __future__ import annotations

from avatar_server.core.errors import InvalidInput
from avatar_server.session_store.base import SessionStore
from avatar_server.settings import Settings

SESSION_STORE_NAMES = ("memory", "sqlite", "redis")


def create_session_store(settings: Settings) -> SessionStore:
    """The store `settings.store.kind` names: memory, sqlite (one machine) or redis (many)."""
    name = settings.store.kind.strip().lower()
    if name == "memory":
        from avatar_server.session_store.memory import MemorySessionStore

        return MemorySessionStore(ttl_s=settings.store.ttl_s)
    if name == "sqlite":
        from avatar_server.session_store.sqlite import SqliteSessionStore

        return SqliteSessionStore(settings.store.path, ttl_s=settings.store.ttl_s)
    if name == "redis":
        from avatar_server.session_store.redis_store import RedisSessionStore

        return RedisSessionStore(settings.store.redis_url, ttl_s=settings.store.ttl_s)
    raise InvalidInput(
        f"unknown session store {settings.store.kind!r}; "
        f"choose one of {', '.join(SESSION_STORE_NAMES)}",
        stage="server",
    )
