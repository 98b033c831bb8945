"""The renderer interface: speech audio in, avatar frames out, one session at a time.

A `Renderer` owns what all sessions share (weights, caches, a GPU engine); a
`RenderSession` holds one conversation's state (motion history, idle position)
and turns each turn's audio into frames. Renderers know nothing of sessions'
transport, providers or gRPC.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from avatar_server.avatars.model import AvatarAssets
from avatar_server.core.frames import Frame


@dataclass(frozen=True)
class ModelDescription:
    """A model a renderer runs, for ServerInfo."""

    name: str
    runtime: str
    device: str
    precision: str


@dataclass(frozen=True)
class RendererSetup:
    """How a renderer is set up, for ServerInfo: its avatar registration path and run options."""

    face_registration: str = ""
    options: Mapping[str, str] = field(default_factory=dict)  # name -> "value (origin)"


class RenderSession(Protocol):
    """One conversation's renderer state.

    `render` is called once per turn with that turn's speech: mono float32 PCM
    in [-1, 1] at `Renderer.sample_rate`, in chunks of any length. The caller
    guarantees the turn's total length is a whole number of frames
    (sample_rate / fps samples each) and yields exactly one frame per frame of
    audio, in order, as soon as its audio (plus the renderer's small fixed
    look-ahead) has arrived. Heavy work runs off the event loop. When the
    caller stops iterating (interrupt) and closes the generator, all work for
    the turn stops promptly; the session stays usable for the next turn.
    Frames between turns (idle) come from `idle_frames`.
    """

    width: int
    height: int

    def render(self, audio: AsyncIterator[np.ndarray]) -> AsyncIterator[Frame]:
        """Turns one turn's speech into frames."""
        ...

    async def idle_frames(self, count: int) -> list[Frame]:
        """The next `count` frames of the resting, idle avatar (blinks, sway)."""
        ...

    async def aclose(self) -> None:
        """Frees the session's state (and any engine slot)."""
        ...


class Renderer(Protocol):
    """Shared renderer resources; makes sessions."""

    name: str
    sample_rate: int  # the audio rate `RenderSession.render` consumes

    async def open_session(self, avatar: AvatarAssets, *, fps: int) -> RenderSession:
        """Starts a session for `avatar` (preparing and caching the avatar once).

        Raises `avatar_server.core.errors.CapacityExhausted` when full.
        """
        ...

    def models(self) -> list[ModelDescription]:
        """What the renderer runs, for ServerInfo."""
        ...

    def capacity_fps(self) -> float:
        """Frames per second it can sustain in total; 0 if unknown."""
        ...

    def setup(self) -> RendererSetup:
        """Its registration path and run options in use, for ServerInfo."""
        ...

    async def aclose(self) -> None:
        """Frees shared resources."""
        ...
