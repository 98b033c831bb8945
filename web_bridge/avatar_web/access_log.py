"""The HTTP access log, with the access token taken out of every logged URL.

aiohttp's own access log writes the request line as sent, so a `?token=` visit would put the
bridge's access token into the log; this one writes `token=REDACTED` instead.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

log = logging.getLogger("avatar_web.access")


def redacted_path(request: web.BaseRequest) -> str:
    """The request's path and query, with any `token` query value replaced."""
    url = request.rel_url
    if "token" not in url.query:
        return str(url)
    return str(url.update_query({"token": "REDACTED"}))


class RedactingAccessLogger(AbstractAccessLogger):
    """One line per request: client, method, path (token redacted), status, bytes, time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %d %.1f ms "%s"', request.remote, request.method,
            redacted_path(request), response.status, response.body_length, time * 1000,
            request.headers.get("User-Agent", "-"),
        )
