"""The truth that word captions are checked against: espeak-ng's own word events, and the PCM.

`word_onsets_ms` asks the espeak-ng engine directly (no provider code) where each word of a
text starts; `voiced_windows` and `onset_after_silence` read the audio itself.
"""

from __future__ import annotations

import numpy as np
from avatar_server.providers.tts.espeak_engine import EspeakEngine

FRAME_S = 0.040  # one video frame at 25 fps: the tolerance of a caption
WINDOW_S = 0.010
VOICED_RMS = 300.0  # int16 RMS of a 10 ms window that counts as speech


async def word_onsets_ms(text: str, words: list[str], espeak_voice: str, rate_wpm: int = 165
                         ) -> tuple[list[float], int, int]:
    """For each of `words` (in order, as they are written in `text`), the time espeak-ng's
    first WORD event inside it starts, in ms from the start of `text`'s audio; also that
    audio's length in samples and its sample rate."""
    result = await EspeakEngine.shared().synthesize(text, espeak_voice, rate_wpm)
    onsets, cursor = [], 0
    for word in words:
        offset = text.index(word, cursor)
        cursor = offset + len(word)
        inside = [e.start_ms for e in result.words if offset <= e.text_offset < cursor]
        assert inside, f"espeak-ng reported no event inside {word!r}"
        onsets.append(float(min(inside)))
    return onsets, len(result.pcm), result.sample_rate


def voiced_windows(pcm: np.ndarray, rate: int) -> np.ndarray:
    """Whether each 10 ms window of `pcm` holds speech."""
    size = int(rate * WINDOW_S)
    count = len(pcm) // size
    windows = pcm[: count * size].astype(np.float64).reshape(count, size)
    return np.sqrt((windows**2).mean(axis=1)) > VOICED_RMS


def onset_after_silence(voiced: np.ndarray, time_s: float, *, silence_s: float = 0.06) -> float | None:
    """Where speech resumes near `time_s` after at least `silence_s` of silence before it (the
    PCM's own word onset), or None when no such pause leads into that moment."""
    index = round(time_s / WINDOW_S)
    before = round(silence_s / WINDOW_S)
    search = round(FRAME_S / WINDOW_S) + 2
    for start in range(max(before, index - search), min(len(voiced), index + search)):
        if voiced[start] and not voiced[start - before : start].any():
            return start * WINDOW_S
    return None
