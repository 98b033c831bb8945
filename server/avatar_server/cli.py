"""`avatar-server`: every setting as a flag, also settable as an AVATAR_* environment variable."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from pydantic import ValidationError

from avatar_server import __version__
from avatar_server.errors import AvatarError
from avatar_server.logs import setup_logging
from avatar_server.settings import Settings, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avatar-server",
        description="Real-time talking-avatar gRPC service. Each flag FOO_BAR is also AVATAR_FOO_BAR.",
    )
    parser.add_argument("--version", action="version", version=f"avatar-server {__version__}")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"AVATAR_{name.upper()}"
        help_text = f"{field.description} (env {env}; default {field.default!r})"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=help_text)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    overrides: dict[str, Any] = vars(args)
    try:
        settings = load_settings(**overrides)
    except ValidationError as error:
        sys.exit(f"avatar-server: invalid settings:\n{error}")
    setup_logging(settings.log_level, settings.log_format)
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
