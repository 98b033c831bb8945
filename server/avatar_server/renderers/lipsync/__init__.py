"""The CPU lip-sync renderer, the embedded default: no GPU and no weights needed."""

from avatar_server.renderers.lipsync.renderer import LipSyncRenderer, LipSyncSession

__all__ = ["LipSyncRenderer", "LipSyncSession"]
