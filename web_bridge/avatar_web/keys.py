"""Typed aiohttp application keys shared by the bridge's modules (and the REST routes)."""

from __future__ import annotations

from aiohttp import web

from avatar_web.hub import Hub
from avatar_web.previews import PreviewCache
from avatar_web.settings import WebSettings
from avatar_web.upstream import Upstream

SETTINGS = web.AppKey("settings", WebSettings)
UPSTREAM = web.AppKey("upstream", Upstream)  # set on startup
HUB = web.AppKey("hub", Hub)
PREVIEWS = web.AppKey("previews", PreviewCache)  # set on startup
