"""The session-store interface: what a session must remember to continue on any instance."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

from avatar_server.core.errors import AvatarError, StatusCode


@dataclass
class SessionState:
    """Everything needed to resume a session on another stream or instance.

    `media_position` is the media clock (samples at `clock_rate`) where the
    next turn starts; `next_frame` and `next_sequence` continue the video
    frame index and segment numbering, so a browser's MediaSource timeline
    continues without a jump after a reconnect.
    """

    session_id: str
    avatar_id: str
    voice: str
    language: str
    system_prompt: str
    clock_rate: int
    fps: int
    history: list[tuple[str, str]] = field(default_factory=list)  # (role, content)
    media_position: int = 0
    next_frame: int = 0
    next_sequence: int = 0
    completed_turns: int = 0
    updated_at: float = 0.0


class SessionStore(Protocol):
    """Loads and saves SessionState by id. Implementations are safe to share across tasks."""

    name: str

    async def load(self, session_id: str) -> SessionState | None:
        """The saved state, or None if unknown or expired."""
        ...

    async def save(self, state: SessionState) -> None:
        """Saves (replaces) the state; sets `updated_at`."""
        ...

    async def delete(self, session_id: str) -> None:
        """Forgets a session."""
        ...

    async def aclose(self) -> None:
        """Releases connections."""
        ...


class SessionStoreUnavailable(AvatarError):
    """The session store cannot be reached; retrying (or reconnecting) may help."""

    code = StatusCode.UNAVAILABLE
    stage = "session"
    retriable = True


STATE_FORMAT_VERSION = 1


def state_to_dict(state: SessionState) -> dict[str, Any]:
    """A JSON-ready dict of the state, tagged with the format version."""
    data = asdict(state)
    data["history"] = [list(pair) for pair in state.history]
    data["format"] = STATE_FORMAT_VERSION
    return data


def state_from_dict(data: dict[str, Any]) -> SessionState:
    """Rebuilds a state, ignoring unknown keys so mixed versions can share a store in a rollout."""
    known = {f.name for f in fields(SessionState)}
    values = {key: value for key, value in data.items() if key in known}
    values["history"] = [(str(role), str(content)) for role, content in values.get("history", [])]
    return SessionState(**values)


def copy_state(state: SessionState) -> SessionState:
    """An independent copy, so a caller's later edits never change what was stored."""
    return state_from_dict(state_to_dict(state))
