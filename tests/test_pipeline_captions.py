"""Word captions stay on the media clock, checked against the audio's own word timings.

A reply streams through the real text, sentence and speech stages (espeak-ng speaking) onto
the clock of a session that is already a few seconds in. Every word caption must come in
order, never overlap the next, carry the word as written, and start within one video frame
(40 ms) of where espeak-ng itself says the word starts: its WORD events for the piece it
synthesized, moved by where that piece lies on the clock. Where a pause leads into a word,
the caption must also start within a frame of the speech's onset in the PCM (English words
that do not open with a stop consonant: those open with tens of ms of closure silence).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from avatar_server.core.sentences import split_to_fit
from avatar_server.pipeline.channels import Channel
from avatar_server.pipeline.context import SessionMedia
from avatar_server.pipeline.events import AudioOut, CaptionOut
from avatar_server.pipeline.items import AudioChunk
from avatar_server.pipeline.runner import run_stages
from avatar_server.pipeline.stages.audio_only import AudioOnlyStage
from avatar_server.pipeline.stages.sentences import SentenceStage
from avatar_server.pipeline.stages.speech import SpeechStage
from avatar_server.pipeline.stages.text import TextStage
from avatar_server.providers.tts.espeak import EspeakSynthesizer
from avatar_server.settings import EspeakSettings
from pipeline_helpers import EventLog, streamed, turn_context
from speech_truth import FRAME_S, onset_after_silence, voiced_windows, word_onsets_ms

RATE, FPS = 16000, 25
START = 3 * RATE  # the session's clock is already 3 s in
FRAME = round(FRAME_S * RATE)
LONG = ("Dr. Smith arrived here today, and then he walked along the river to the old station "
        "at 5 p.m. with 3.5 kilos of apples.")

CASES = {
    "title": ("Dr. Smith arrived here today.", "en-us", 250,
              "Dr Smith arrived here today"),
    "numbers": ("It costs 3.5 dollars at 5 p.m. in the U.S. today. Mr. Lee paid $4.50, i.e. half.",
                "en-us", 250,
                "It costs 3.5 dollars at 5 p.m. in the U.S. today Mr Lee paid $4.50 i.e. half"),
    "ellipsis-quotes": ('Well... we waited, e.g. an hour. She said "Stop." Then she left.', "en-us", 250,
                        "Well we waited e.g. an hour She said Stop Then she left"),
    "korean": ("안녕하세요. 오늘 날씨가 정말 좋네요!", "ko", 250, "안녕하세요 오늘 날씨가 정말 좋네요"),
    "korean-unspaced": ("안녕하세요.반갑습니다！오늘 어때요？", "ko", 250,
                        "안녕하세요 반갑습니다 오늘 어때요"),
    "provider-splits": (LONG, "en-us", 45,
                        ("Dr Smith arrived here today and then he walked along the river to the old "
                         "station at 5 p.m. with 3.5 kilos of apples")),
}


def starts_with_a_stop(word: str) -> bool:
    """A word that opens with a stop consonant ("p.m.", "Dr", "today") is silent for the first
    tens of ms (the closure), so its onset in the PCM comes later than the word: no onset check
    there (nor for Korean, whose plain stops open most words)."""
    return word[0].lower() in "pbtdkgcq" and not word.lower().startswith("th")


async def speak_reply(text: str, voice: str, max_piece_chars: int) -> EventLog:
    """The reply, streamed a few characters at a time, through text -> sentences -> speech."""
    turn, log = turn_context(start=START)
    media = SessionMedia(clock_rate=RATE, fps=FPS, segment_frames=25, first_segment_frames=8,
                         render=None, encoder=None, renderer_rate=RATE, pcm_out=True, position=START)
    tokens = [text[i : i + 3] for i in range(0, len(text), 3)]
    deltas, sentences, audio = Channel[str](64), Channel[str](16), Channel[AudioChunk](32)
    tts = EspeakSynthesizer(EspeakSettings(max_piece_chars=max_piece_chars))
    await run_stages([
        TextStage(turn, streamed(tokens), deltas, from_llm=True),
        SentenceStage(deltas, sentences),
        SpeechStage(turn, sentences, audio, tts=tts, voice=f"espeak-{voice}", language="",
                    clock_rate=RATE, fps=FPS, pcm_out=True),
        AudioOnlyStage(turn, audio, media),
    ])
    return log


async def truth_on_the_clock(sentence: CaptionOut, words: list[CaptionOut], voice: str,
                             max_piece_chars: int) -> tuple[list[int], list[CaptionOut]]:
    """Where espeak-ng says each of `words` (the captions of `sentence`) starts, on the clock:
    its events for each piece of the sentence, moved by the audio of the pieces before it.
    Also the captions that open a piece (speech resumes there after a pause)."""
    truth, openers, offset_s, remaining = [], [], 0.0, list(words)
    for piece in split_to_fit(sentence.text, max_piece_chars):
        in_piece, count = [], 0
        while remaining and count < len(piece.split()):
            in_piece.append(remaining.pop(0))
            count += len(in_piece[-1].text.split())
        onsets_ms, samples, rate = await word_onsets_ms(piece, [c.text.split()[0] for c in in_piece],
                                                        voice)
        truth += [sentence.span.start + round((offset_s + ms / 1000) * RATE) for ms in onsets_ms]
        openers.append(in_piece[0])
        offset_s += samples / rate
    assert not remaining
    return truth, openers


@pytest.mark.parametrize("case", CASES)
async def test_word_captions_follow_the_audio_on_the_media_clock(case: str) -> None:
    text, voice, max_piece_chars, expected = CASES[case]
    log = await speak_reply(text, voice, max_piece_chars)
    captions = log.of(CaptionOut)
    words = [c for c in captions if not c.sentence]
    sentences = [c for c in captions if c.sentence]
    assert " ".join(w.text for w in words).split() == expected.split()  # as written, each once

    for before, after in itertools.pairwise(words):  # in order, none overlapping
        assert before.span.start < before.span.end <= after.span.start, (before, after)

    checked, openers = 0, []
    for sentence in sentences:
        inside = [w for w in words if sentence.span.start <= w.span.start < sentence.span.end]
        assert all(w.span.end <= sentence.span.end for w in inside)
        truth, sentence_openers = await truth_on_the_clock(sentence, inside, voice, max_piece_chars)
        for word, onset in zip(inside, truth, strict=True):
            assert abs(word.span.start - onset) <= FRAME, (word, onset - word.span.start)
        checked += len(inside)
        openers += sentence_openers
    assert checked == len(words)
    if case == "provider-splits":
        assert len(openers) > len(sentences)  # the provider did split a sentence

    audio = log.of(AudioOut)
    assert audio[0].span.start == START
    voiced = voiced_windows(np.concatenate([a.pcm for a in audio]), RATE)
    for word in words:  # each caption's span holds speech
        first, last = ((word.span.start - START) * 100 // RATE, (word.span.end - START) * 100 // RATE)
        assert voiced[first : last + 1].any(), word
    if voice != "en-us":
        return
    onset_checked = 0
    for word in words:
        if starts_with_a_stop(word.text):
            continue
        onset = onset_after_silence(voiced, (word.span.start - START) / RATE)
        if word in openers:  # every piece opens after a pause: its onset must be found
            assert onset is not None, word
        if onset is not None:
            onset_checked += 1
            assert abs(onset - (word.span.start - START) / RATE) <= FRAME_S, word
    assert onset_checked or all(starts_with_a_stop(w.text) for w in openers)
