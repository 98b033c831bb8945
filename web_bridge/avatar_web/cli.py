"""`avatar-web`: runs the browser bridge next to an avatar-server."""

from __future__ import annotations

import argparse
import logging
import sys

from aiohttp import web
from pydantic import ValidationError

from avatar_web.access_log import RedactingAccessLogger
from avatar_web.access_log import log as access_log
from avatar_web.app import create_app
from avatar_web.security import UnsafeExposure, refuse_unsafe_exposure
from avatar_web.settings import WebSettings

log = logging.getLogger("avatar_web")


def main(argv: list[str] | None = None) -> None:
    """Parses flags (they override AVATAR_WEB_* settings) and serves until interrupted."""
    parser = argparse.ArgumentParser(prog="avatar-web", description=__doc__)
    parser.add_argument("--host", help="listen address (AVATAR_WEB_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (AVATAR_WEB_PORT, default 7135)")
    parser.add_argument("--public", action="store_true", default=None,
                        help="serve a non-loopback address without an access token "
                             "(AVATAR_WEB_PUBLIC)")
    parser.add_argument("--grpc", dest="grpc_target", metavar="HOST:PORT",
                        help="avatar-server address (AVATAR_WEB_GRPC_TARGET)")
    parser.add_argument("--grpc-api-key-file", metavar="PATH",
                        help="file with the key to present to the service "
                             "(AVATAR_WEB_GRPC_API_KEY_FILE; or AVATAR_WEB_GRPC_API_KEY)")
    parser.add_argument("--grpc-tls-ca-file", metavar="PATH",
                        help="PEM roots for the service's TLS (AVATAR_WEB_GRPC_TLS_CA_FILE)")
    parser.add_argument("--log-level", help="logging level (AVATAR_WEB_LOG_LEVEL)")
    args = parser.parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        settings = WebSettings(**overrides)
        refuse_unsafe_exposure(settings)
    except (ValidationError, UnsafeExposure) as exc:
        sys.exit(f"avatar-web: {exc}")
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _log_exposure(settings)
    web.run_app(
        create_app(settings), host=settings.host, port=settings.port,
        print=lambda line: log.info("%s", line.strip()),
        access_log_class=RedactingAccessLogger, access_log=access_log,
        shutdown_timeout=5.0,
    )


def _log_exposure(settings: WebSettings) -> None:
    """Says at start who may use the bridge and how it reaches the service (never the secrets)."""
    if settings.access_token is not None:
        access = "access token required"
    elif settings.public:
        access = "PUBLIC: no access token (--public)"
    else:
        access = "no access token (loopback only)"
    log.info("listening on %s:%d; %s", settings.host, settings.port, access)
    log.info(
        "service %s over %s, %s", settings.grpc_target,
        "TLS" if settings.uses_tls else "plaintext",
        "presenting an API key" if settings.grpc_api_key is not None else "without an API key",
    )


if __name__ == "__main__":
    main()
