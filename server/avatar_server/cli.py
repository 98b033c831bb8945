"""`avatar-server`: every setting as a flag, also settable as an AVATAR_* environment variable."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from pydantic import ValidationError

from avatar_server import __version__
from avatar_server.core.errors import AvatarError
from avatar_server.logs import setup_logging
from avatar_server.settings import FLAT_NAMES, Settings, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avatar-server",
        description="Real-time talking-avatar gRPC service. Each flag --foo-bar is also AVATAR_FOO_BAR.",
    )
    parser.add_argument("--version", action="version", version=f"avatar-server {__version__}")
    for entry in FLAT_NAMES.values():
        help_text = f"{entry.info.description} (env {entry.env}; default {entry.info.default!r})"
        if entry.info.annotation is bool:
            parser.add_argument(entry.flag, dest=entry.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(entry.flag, dest=entry.name, default=None, metavar=entry.name.upper(),
                                help=help_text)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    overrides: dict[str, Any] = vars(args)
    try:
        settings = load_settings(**overrides)
    except ValidationError as error:
        sys.exit(f"avatar-server: invalid settings:\n{error}")
    setup_logging(settings.service.log_level, settings.service.log_format)
    try:
        asyncio.run(serve_main(settings))
    except AvatarError as error:
        sys.exit(f"avatar-server: {error.message}")
    except KeyboardInterrupt:
        pass


async def serve_main(settings: Settings) -> None:
    from avatar_server.server import serve

    await serve(settings)


if __name__ == "__main__":
    main()
