"""Who may use the bridge: the access token on every route but health, origins, safe exposure.

With `access_token` set, a request is let in when it carries the token as `Authorization: Bearer`,
as `?token=`, or as the page's cookie. A browser visits `/?token=<token>` once: the bridge answers
with the cookie (HttpOnly, SameSite=Lax) and a redirect to the same page without the token, so the
token leaves the address bar and the history; the page's WebSocket, idle loop, REST calls and
video links then carry the cookie by themselves. The cookie holds an HMAC of the token, not the
token, and stops working when the token changes.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import html
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from avatar_web.keys import SETTINGS
from avatar_web.rest_errors import ApiError
from avatar_web.settings import WebSettings

ACCESS_COOKIE = "avatar_web_access"
OPEN_PATHS = frozenset({"/healthz", "/api/health"})  # for probes; they carry no user data
PAGE_PATH = "/"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_COOKIE_CONTEXT = b"avatar-web page access v1"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Credential(enum.Enum):
    """How a request proved it may use the bridge."""

    NOT_NEEDED = "no access token configured"
    BEARER = "Authorization header"
    QUERY = "?token="
    COOKIE = "page cookie"


class UnsafeExposure(Exception):
    """The bridge would serve anyone on the network without being told that is intended."""


def cookie_value(settings: WebSettings) -> str:
    """The page cookie for the configured token (an HMAC of it, so the cookie is not the token)."""
    assert settings.access_token is not None
    key = settings.access_token.get_secret_value().encode()
    return hmac.new(key, _COOKIE_CONTEXT, hashlib.sha256).hexdigest()


def presented_credential(request: web.Request, settings: WebSettings) -> Credential | None:
    """The first valid credential the request carries; None when it carries no valid one."""
    if settings.access_token is None:
        return Credential.NOT_NEEDED
    expected = settings.access_token.get_secret_value().encode()
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer ") and hmac.compare_digest(
        auth.removeprefix("Bearer ").strip().encode(), expected
    ):
        return Credential.BEARER
    if hmac.compare_digest(request.query.get("token", "").encode(), expected):
        return Credential.QUERY
    cookie = request.cookies.get(ACCESS_COOKIE, "")
    if cookie and hmac.compare_digest(cookie.encode(), cookie_value(settings).encode()):
        return Credential.COOKIE
    return None


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


@web.middleware
async def access_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Lets in requests with a valid credential (every route but OPEN_PATHS); 401 otherwise.

    A cookie is sent by the browser on its own, so a state-changing request that relies on it must
    also come from an allowed origin (403 otherwise), which keeps other sites from using it.
    """
    settings = request.app[SETTINGS]
    if request.path in OPEN_PATHS:
        return await handler(request)
    credential = presented_credential(request, settings)
    if credential is None:
        return _refusal(request)
    if (
        credential is Credential.COOKIE
        and request.method not in _SAFE_METHODS
        and not origin_allowed(request, settings)
    ):
        return _forbidden(request, "origin not allowed for a cookie-authenticated request")
    on_page = request.path == PAGE_PATH and request.method == "GET"
    if on_page and credential is Credential.QUERY:
        redirect = web.Response(status=303, headers={
            "Location": str(request.rel_url.without_query_params("token")),
            "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
        })
        _set_cookie(redirect, request, settings)
        return redirect
    response = await handler(request)
    if on_page and credential is Credential.COOKIE:
        _set_cookie(response, request, settings)  # an open page keeps its cookie fresh
    return response


def _set_cookie(response: web.StreamResponse, request: web.Request, settings: WebSettings) -> None:
    secure = request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"
    response.set_cookie(
        ACCESS_COOKIE, cookie_value(settings), max_age=settings.access_cookie_max_age_s,
        path="/", httponly=True, samesite="Lax", secure=secure,
    )


def _refusal(request: web.Request) -> web.Response:
    """401 in the form the route speaks: JSON for the API, a sign-in form for the page."""
    message = "missing or wrong access token"
    headers = {"WWW-Authenticate": 'Bearer realm="avatar-web"', "Cache-Control": "no-store"}
    if request.path.startswith("/api/"):
        response = ApiError(401, message, field="token").to_response()
        response.headers.update(headers)
        return response
    if request.path == PAGE_PATH:
        wrong = "token" in request.query
        return web.Response(
            status=401, text=_sign_in_page(wrong), content_type="text/html",
            headers={**headers, "Content-Security-Policy": _SIGN_IN_POLICY},
        )
    return web.Response(status=401, text=message, headers=headers)


def _forbidden(request: web.Request, message: str) -> web.Response:
    if request.path.startswith("/api/"):
        return ApiError(403, message, field="origin").to_response()
    return web.Response(status=403, text=message)


_SIGN_IN_POLICY = "default-src 'none'; form-action 'self'; frame-ancestors 'none'"


def _sign_in_page(wrong: bool) -> str:
    note = "That token is not the right one." if wrong else "This avatar needs an access token."
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Avatar: access token</title></head><body>"
        f"<h1>Avatar</h1><p id=\"note\">{html.escape(note)}</p>"
        '<form method="get" action="/"><label>Access token '
        '<input id="token" name="token" type="password" autocomplete="current-password" required>'
        '</label> <button id="open" type="submit">Open</button></form>'
        "<p>Ask whoever runs this service for the token; it is kept in a cookie afterwards.</p>"
        "</body></html>"
    )


# --------------------------------------------------------------------------- exposure


def is_loopback_host(host: str) -> bool:
    """True when `host` names only loopback addresses (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def refuse_unsafe_exposure(settings: WebSettings) -> None:
    """Raises UnsafeExposure for a non-loopback listen address with no token and no `public`.

    The bridge spends the service's language-model and speech budget for whoever reaches it, so
    serving the network openly must be asked for, as the server asks for AVATAR_AUTH_DISABLED.
    """
    if settings.access_token is not None or settings.public or is_loopback_host(settings.host):
        return
    raise UnsafeExposure(
        f"avatar-web will not listen on {settings.host!r} without an access token: anyone who "
        "reaches it could use the service (and spend its language-model and speech budget). "
        "Set AVATAR_WEB_ACCESS_TOKEN (16+ characters), listen on 127.0.0.1, or pass --public "
        "(AVATAR_WEB_PUBLIC=true) if it is meant to be open to everyone."
    )
