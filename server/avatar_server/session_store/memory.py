"""The in-process session store: today's behaviour, sessions live as long as this process."""

from __future__ import annotations

import time

from avatar_server.session_store.base import SessionState, copy_state


class MemorySessionStore:
    """Keeps copies of session states in a dict; `ttl_s` (0 = forever) forgets idle ones."""

    name = "memory"

    def __init__(self, *, ttl_s: float = 0.0) -> None:
        self._ttl_s = ttl_s
        self._states: dict[str, SessionState] = {}

    async def load(self, session_id: str) -> SessionState | None:
        state = self._states.get(session_id)
        if state is None:
            return None
        if self._expired(state):
            del self._states[session_id]
            return None
        return copy_state(state)

    async def save(self, state: SessionState) -> None:
        state.updated_at = time.time()
        self._states[state.session_id] = copy_state(state)
        self._forget_expired()

    async def delete(self, session_id: str) -> None:
        self._states.pop(session_id, None)

    async def aclose(self) -> None:
        self._states.clear()

    def _expired(self, state: SessionState) -> bool:
        return self._ttl_s > 0 and time.time() - state.updated_at > self._ttl_s

    def _forget_expired(self) -> None:
        """Drops idle sessions so a long-running process does not grow without bound."""
        if self._ttl_s <= 0:
            return
        for session_id in [sid for sid, state in self._states.items() if self._expired(state)]:
            del self._states[session_id]
