"""Where sessions' state lives between streams, so a client can reconnect anywhere."""

from avatar_server.session_store.base import SessionState, SessionStore, SessionStoreUnavailable
from avatar_server.session_store.registry import create_session_store

__all__ = ["SessionState", "SessionStore", "SessionStoreUnavailable", "create_session_store"]
