"""Small text helpers the providers share: script and language detection."""

from __future__ import annotations

import re

_HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff]")


def contains_hangul(text: str) -> bool:
    """True when `text` has any Korean (Hangul) letter."""
    return _HANGUL.search(text) is not None


def is_korean(language: str) -> bool:
    """True for BCP-47 tags of Korean ("ko", "ko-KR", ...)."""
    return language.lower().split("-")[0] == "ko"


def is_english(language: str) -> bool:
    """True for English tags ("en", "en-US", ...) and for no language at all."""
    return language.lower().split("-")[0] in ("en", "")

