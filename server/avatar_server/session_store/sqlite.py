"""A session store in one SQLite file: sessions survive a restart of a single-machine server."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path

from avatar_server.session_store.base import (
    SessionState,
    SessionStoreUnavailable,
    state_from_dict,
    state_to_dict,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL
)
"""


class SqliteSessionStore:
    """Stores each session as a JSON row; stdlib sqlite3 runs in a worker thread, off the loop."""

    name = "sqlite"

    def __init__(self, path: Path, *, ttl_s: float = 0.0) -> None:
        self._path = Path(path)
        self._ttl_s = ttl_s
        self._lock = threading.Lock()  # one connection, used by one worker thread at a time
        self._connection: sqlite3.Connection | None = None

    async def load(self, session_id: str) -> SessionState | None:
        row = await self._run(self._select, session_id)
        return None if row is None else state_from_dict(json.loads(row))

    async def save(self, state: SessionState) -> None:
        state.updated_at = time.time()
        await self._run(
            self._upsert, state.session_id, json.dumps(state_to_dict(state)), state.updated_at
        )

    async def delete(self, session_id: str) -> None:
        await self._run(self._delete, session_id)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._close)

    async def _run(self, function, *args):  # type: ignore[no-untyped-def]
        try:
            return await asyncio.to_thread(self._locked, function, *args)
        except (sqlite3.Error, OSError) as error:
            raise SessionStoreUnavailable(f"session store {self._path}: {error}") from error

    def _locked(self, function, *args):  # type: ignore[no-untyped-def]
        with self._lock:
            return function(self._connect(), *args)

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self._path, check_same_thread=False, timeout=5.0)
            connection.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            connection.execute(_SCHEMA)
            connection.commit()
            self._connection = connection
        return self._connection

    def _oldest_kept(self) -> float:
        return time.time() - self._ttl_s if self._ttl_s > 0 else float("-inf")

    def _select(self, connection: sqlite3.Connection, session_id: str) -> str | None:
        row = connection.execute(
            "SELECT state FROM sessions WHERE session_id = ? AND updated_at >= ?",
            (session_id, self._oldest_kept()),
        ).fetchone()
        return None if row is None else row[0]

    def _upsert(
        self, connection: sqlite3.Connection, session_id: str, state: str, updated_at: float
    ) -> None:
        with connection:
            connection.execute(
                "INSERT INTO sessions (session_id, state, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(session_id) DO UPDATE SET state = excluded.state, "
                "updated_at = excluded.updated_at",
                (session_id, state, updated_at),
            )
            if self._ttl_s > 0:
                connection.execute(
                    "DELETE FROM sessions WHERE updated_at < ?", (self._oldest_kept(),)
                )

    def _delete(self, connection: sqlite3.Connection, session_id: str) -> None:
        with connection:
            connection.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))

    def _close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
