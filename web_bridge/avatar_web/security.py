"""Origin and access-token checks for WebSocket upgrades and media requests."""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from aiohttp import web

from avatar_web.settings import WebSettings


def origin_allowed(request: web.Request, settings: WebSettings) -> bool:
    """True for same-origin pages, configured origins, or clients that send no Origin."""
    origin = request.headers.get("Origin")
    if origin is None:  # not a browser; the token (if any) guards it
        return True
    origin = origin.rstrip("/")
    if "*" in settings.allowed_origins or origin in settings.allowed_origins:
        return True
    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc.lower() == request.host.lower()


def token_valid(request: web.Request, settings: WebSettings) -> bool:
    """True when no token is configured, or the request carries it (?token= or Bearer)."""
    if settings.access_token is None:
        return True
    expected = settings.access_token.get_secret_value().encode()
    given = request.query.get("token", "")
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        given = auth.removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), expected)


def require_access(request: web.Request, settings: WebSettings, *, check_origin: bool) -> None:
    """Raises 403 for a foreign origin and 401 for a missing or wrong token."""
    if check_origin and not origin_allowed(request, settings):
        raise web.HTTPForbidden(text="origin not allowed")
    if not token_valid(request, settings):
        raise web.HTTPUnauthorized(text="missing or wrong access token")
