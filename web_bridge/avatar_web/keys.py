"""Typed aiohttp application keys shared by the bridge's modules (and the REST routes)."""

from __future__ import annotations

import grpc.aio
from aiohttp import web

from avatar_web.hub import Hub
from avatar_web.previews import PreviewCache
from avatar_web.settings import WebSettings

SETTINGS = web.AppKey("settings", WebSettings)
GRPC_CHANNEL = web.AppKey("grpc_channel", grpc.aio.Channel)  # set on startup
HUB = web.AppKey("hub", Hub)
PREVIEWS = web.AppKey("previews", PreviewCache)  # set on startup
