"""HuBERT features from the same ONNX file: their Wav2FeatHubert (the 6480-sample chunks every 5
frames, 2000 samples of silence in front) against our AudioChunker + the engine's HuBERT call +
chunk_features, on the authors' example speech (resampled to 16 kHz here, so their librosa
resampling is not needed)."""

from __future__ import annotations

import numpy as np
import torch
from avatar_server.renderers.ditto import checkpoints as layout
from avatar_server.renderers.ditto.audio_features import (
    SAMPLES_PER_FRAME,
    AudioChunker,
    chunk_features,
)
from fidelity.reference_harness import reference_fp32
from scipy.io import wavfile
from scipy.signal import resample_poly

FRAMES = 20  # 0.8 s: four chunks (each HuBERT-large call is ~0.3 s on a CPU core pair)


def _speech(ditto_reference) -> np.ndarray:
    rate, pcm = wavfile.read(ditto_reference.root / "example" / "audio.wav")
    audio = pcm.astype(np.float32) / 32768.0
    if rate != 16000:
        audio = resample_poly(audio, 16000, rate).astype(np.float32)
    start = 16000  # one second in: speech, not the leading silence
    return audio[start : start + FRAMES * SAMPLES_PER_FRAME]


def test_hubert_features_equal_theirs(ditto_reference, standin_full, our_networks, fidelity_table) -> None:
    audio = _speech(ditto_reference)
    wav2feat = ditto_reference.module("core.atomic_components.wav2feat")
    with reference_fp32():
        theirs = wav2feat.Wav2FeatHubert(ditto_reference.network_cfg(standin_full, layout.HUBERT_AUX)).wav2feat(
            audio, sr=16000)
    chunker = AudioChunker()
    chunks = chunker.push(audio[:7000]) + chunker.push(audio[7000:]) + chunker.finish()  # arrival in pieces
    with torch.inference_mode():
        ours = chunk_features(our_networks.hubert(torch.from_numpy(np.stack(chunks))))
    ours = ours.reshape(-1, ours.shape[-1])[: chunker.frames_total].numpy()
    assert theirs.shape == (FRAMES, 1024)
    fidelity_table.check("HuBERT: video-rate features (offline chunking)", ours, theirs,
                         note=f"{FRAMES} frames, {len(chunks)} chunks")
