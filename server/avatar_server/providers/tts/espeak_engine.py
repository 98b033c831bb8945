"""ctypes binding to the libespeak-ng shipped in the espeakng-loader wheel, owned by one thread."""

from __future__ import annotations

import asyncio
import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

# From espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_BUFFER_MS = 200
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_PARAMETER_RATE = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_END = 5


class _Event(ctypes.Structure):
    """espeak_EVENT; `id` is a union of int / char* / char[8], 8 bytes wide."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class EspeakWord:
    """A WORD event: the word's characters in the input text and where its audio starts."""

    text_offset: int  # 0-based character offset into the synthesized text
    length: int  # in characters
    start_ms: int


@dataclass(frozen=True)
class EspeakResult:
    """The audio of one espeak_Synth call and the word events it reported."""

    pcm: np.ndarray  # int16, mono, at `sample_rate`
    sample_rate: int
    words: tuple[EspeakWord, ...]
    clause_ends_ms: tuple[int, ...]


class EspeakEngine:
    """The process's one libespeak-ng: the library keeps global state and is not
    thread-safe, so every call runs on this object's single worker thread."""

    _shared: EspeakEngine | None = None
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls) -> EspeakEngine:
        """The engine of this process, started on first use."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def __init__(self) -> None:
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak-ng")
        self._pcm_chunks: list[np.ndarray] = []
        self._words: list[EspeakWord] = []
        self._clause_ends_ms: list[int] = []
        self._callback = _SynthCallback(self._on_synth)  # kept alive as long as the engine
        self._library, self.sample_rate = self._worker.submit(self._load).result()

    def _load(self) -> tuple[ctypes.CDLL, int]:
        import espeakng_loader

        library = ctypes.CDLL(espeakng_loader.get_library_path())
        library.espeak_Initialize.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        library.espeak_Initialize.restype = ctypes.c_int
        library.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        library.espeak_SetVoiceByName.restype = ctypes.c_int
        library.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        library.espeak_SetParameter.restype = ctypes.c_int
        library.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        library.espeak_Synth.restype = ctypes.c_int
        data_path = espeakng_loader.get_data_path().encode()
        sample_rate = library.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, data_path, 0)
        if sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({sample_rate})")
        library.espeak_SetSynthCallback(self._callback)
        return library, sample_rate

    async def synthesize(self, text: str, voice: str, rate_wpm: int) -> EspeakResult:
        """Synthesizes `text` with espeak voice `voice` on the worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._synthesize, text, voice, rate_wpm)

    def _synthesize(self, text: str, voice: str, rate_wpm: int) -> EspeakResult:
        status = self._library.espeak_SetVoiceByName(voice.encode())
        if status != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r} ({status})")
        self._library.espeak_SetParameter(_PARAMETER_RATE, rate_wpm, 0)
        self._pcm_chunks, self._words, self._clause_ends_ms = [], [], []
        encoded = text.encode("utf-8") + b"\0"
        flags = _CHARS_UTF8 | _ENDPAUSE
        status = self._library.espeak_Synth(
            encoded, len(encoded), 0, _POS_CHARACTER, 0, flags, None, None
        )
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed ({status})")
        pcm = np.concatenate(self._pcm_chunks) if self._pcm_chunks else np.zeros(0, np.int16)
        return EspeakResult(pcm, self.sample_rate, tuple(self._words), tuple(self._clause_ends_ms))

    def _on_synth(self, samples: ctypes._Pointer, count: int, events: ctypes._Pointer) -> int:
        """espeak's callback (on the worker thread): collects audio and events; 0 = go on."""
        if samples and count > 0:
            self._pcm_chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        index = 0
        while events[index].type != _EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == _EVENT_WORD:
                self._words.append(
                    EspeakWord(event.text_position - 1, event.length, event.audio_position)
                )
            elif event.type == _EVENT_END:
                self._clause_ends_ms.append(event.audio_position)
            index += 1
        return 0
