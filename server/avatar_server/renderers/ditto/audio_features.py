"""Streaming HuBERT features: 16 kHz speech in, one 1024-d feature per 25 fps video frame out.

Each HuBERT call takes 6480 samples (3 frames of look-back, 5 new frames, 2 frames of look-ahead,
plus 80 samples of receptive field) and yields 20 frames at 50 Hz; frames [-14:-4] averaged in pairs
are the 5 new video-rate features. The stream is primed with 2000 samples of silence so that
feature 0 lines up with audio sample 0, so each call needs 80 ms of audio past its last frame.
"""

from __future__ import annotations

import numpy as np
import torch

SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
CHUNK_SAMPLES = 6480
FRAMES_PER_CHUNK = 5
STEP_SAMPLES = FRAMES_PER_CHUNK * SAMPLES_PER_FRAME  # 3200
PRIMING_SAMPLES = CHUNK_SAMPLES - 7 * SAMPLES_PER_FRAME  # 2000 samples of silence in front
LOOKAHEAD_SAMPLES = 2 * SAMPLES_PER_FRAME  # 80 ms past the last new frame


def chunk_features(hubert_frames: torch.Tensor) -> torch.Tensor:
    """(B, 20, 1024) HuBERT output of whole chunks -> (B, 5, 1024) video-rate features."""
    valid = hubert_frames[:, -14:-4]
    return valid.reshape(valid.shape[0], FRAMES_PER_CHUNK, 2, valid.shape[-1]).mean(dim=2)


class AudioChunker:
    """One turn's audio -> the HuBERT chunks it can already fill, in order.

    `push` takes PCM of any length; `finish` pads the tail with silence so the last frames get
    their features. `frames_total` counts the video frames the pushed audio covers.
    """

    def __init__(self) -> None:
        self._buffer = np.zeros(PRIMING_SAMPLES, dtype=np.float32)
        self._samples_in = 0
        self._chunks_out = 0
        self._finished = False

    @property
    def frames_total(self) -> int:
        """Whole video frames of audio pushed so far."""
        return self._samples_in // SAMPLES_PER_FRAME

    @property
    def frames_chunked(self) -> int:
        """Video frames whose features the returned chunks will give."""
        return self._chunks_out * FRAMES_PER_CHUNK

    def push(self, pcm: np.ndarray) -> list[np.ndarray]:
        """Appends mono float32 PCM; returns the chunks (6480 samples each) now complete."""
        if self._finished:
            raise RuntimeError("audio pushed after finish()")
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        self._samples_in += pcm.size
        self._buffer = np.concatenate([self._buffer, pcm])
        return self._take_chunks()

    def finish(self) -> list[np.ndarray]:
        """Pads with silence and returns the chunks that cover every pushed frame."""
        self._finished = True
        needed = -(-self.frames_total // FRAMES_PER_CHUNK)  # chunks to cover all frames
        chunks: list[np.ndarray] = []
        while self._chunks_out < needed:
            shortfall = CHUNK_SAMPLES - self._buffer.size
            if shortfall > 0:
                self._buffer = np.concatenate([self._buffer, np.zeros(shortfall, dtype=np.float32)])
            chunks.extend(self._take_chunks(limit=needed))
        return chunks

    def _take_chunks(self, limit: int | None = None) -> list[np.ndarray]:
        chunks = []
        while self._buffer.size >= CHUNK_SAMPLES and (limit is None or self._chunks_out < limit):
            chunks.append(self._buffer[:CHUNK_SAMPLES].copy())
            self._buffer = self._buffer[STEP_SAMPLES:]
            self._chunks_out += 1
        return chunks


def silence_chunk() -> np.ndarray:
    """A chunk of silence; its features stand in for audio not yet (or never) arrived."""
    return np.zeros(CHUNK_SAMPLES, dtype=np.float32)
