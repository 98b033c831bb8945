"""Typed aiohttp application keys shared by the bridge's modules (and the REST routes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc.aio
from aiohttp import web

from avatar_web.settings import WebSettings

if TYPE_CHECKING:
    from avatar_web.hub import Hub
    from avatar_web.previews import PreviewCache

SETTINGS = web.AppKey("settings", WebSettings)
GRPC_CHANNEL = web.AppKey("grpc_channel", grpc.aio.Channel)
HUB: web.AppKey["Hub"] = web.AppKey("hub")
PREVIEWS: web.AppKey["PreviewCache"] = web.AppKey("previews")
