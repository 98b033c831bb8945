"""`avatar-web`: runs the browser bridge next to an avatar-server."""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from avatar_web.app import create_app
from avatar_web.settings import WebSettings


def main(argv: list[str] | None = None) -> None:
    """Parses flags (they override AVATAR_WEB_* settings) and serves until interrupted."""
    parser = argparse.ArgumentParser(prog="avatar-web", description=__doc__)
    parser.add_argument("--host", help="listen address (AVATAR_WEB_HOST)")
    parser.add_argument("--port", type=int, help="HTTP port (AVATAR_WEB_PORT, default 7135)")
    parser.add_argument("--grpc", dest="grpc_target", metavar="HOST:PORT",
                        help="avatar-server address (AVATAR_WEB_GRPC_TARGET)")
    parser.add_argument("--log-level", help="logging level (AVATAR_WEB_LOG_LEVEL)")
    args = parser.parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    settings = WebSettings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    web.run_app(
        create_app(settings), host=settings.host, port=settings.port,
        print=lambda line: logging.getLogger("avatar_web").info("%s", line.strip()),
        shutdown_timeout=5.0,
    )


if __name__ == "__main__":
    main()
