"""Validation rules of the avatar.v1 contract, in one place for the service, the bridge and the REST API.

The .proto documents these limits in prose; this module is their one executable form. It imports
nothing of the service, so the bridge and the clients may use it (they know only the contract).
"""

from __future__ import annotations

import re

LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$")
"""BCP-47 language tag such as en-US or ko-KR (SessionConfig.language)."""

TURN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""Client-chosen turn id (UserMessage.turn_id)."""

SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
"""Session id a client sends back to resume (SessionConfig.session_id); the service makes them."""

NAME = re.compile(r"^[A-Za-z0-9_.:@+-]{1,128}$")
"""Avatar id or voice name as a client may send it (SessionConfig.avatar, .voice); whether one
exists is the service's answer (NOT_FOUND), not a rule."""

DISPLAY_NAME_MAX_CHARS = 80
"""Longest AvatarUpload.display_name."""


def valid_language(tag: str) -> bool:
    """True for a BCP-47 tag the service accepts."""
    return bool(LANGUAGE_TAG.fullmatch(tag))


def valid_turn_id(turn_id: str) -> bool:
    """True for a turn id the service accepts."""
    return bool(TURN_ID.fullmatch(turn_id))


def valid_session_id(session_id: str) -> bool:
    """True for a session id of the shape the service makes."""
    return bool(SESSION_ID.fullmatch(session_id))


def valid_name(name: str) -> bool:
    """True for an avatar id or voice name of an acceptable shape."""
    return bool(NAME.fullmatch(name))
