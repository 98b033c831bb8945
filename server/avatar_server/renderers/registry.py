"""Renderers by name; each is imported only when chosen (Ditto needs torch, lipsync does not)."""

from __future__ import annotations

from avatar_server.core.errors import AvatarError, StatusCode
from avatar_server.renderers.base import Renderer
from avatar_server.settings import Settings

RENDERERS = ("lipsync", "ditto")


def create_renderer(settings: Settings) -> Renderer:
    """The renderer named by `settings.pipeline.renderer`."""
    if settings.pipeline.renderer == "lipsync":
        from avatar_server.renderers.lipsync import LipSyncRenderer

        return LipSyncRenderer(settings)
    if settings.pipeline.renderer == "ditto":
        from avatar_server.renderers.ditto.renderer import DittoRenderer

        return DittoRenderer(settings)
    raise AvatarError(
        f"unknown renderer {settings.pipeline.renderer!r}; choose one of {', '.join(RENDERERS)}",
        code=StatusCode.INVALID_ARGUMENT, stage="server",
    )
