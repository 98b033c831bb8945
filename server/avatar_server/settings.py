"""All configuration in one typed object, read from AVATAR_* env vars, `.env` and CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings. Every field is settable as AVATAR_<FIELD NAME> (upper case)."""

    model_config = SettingsConfigDict(
        env_prefix="AVATAR_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- service -----------------------------------------------------------
    host: str = Field("0.0.0.0", description="gRPC listen address")
    port: int = Field(50051, description="gRPC port")
    instance_id: str = Field("", description="Name of this instance (default: host name)")
    data_dir: Path = Field(Path("data"), description="Where avatars and caches are kept")
    log_level: str = Field("INFO", description="Logging level")
    log_format: Literal["text", "json"] = Field("text", description="Log line format")
    shutdown_grace_s: float = Field(10.0, description="Seconds running turns get on SIGTERM")

    # --- security and operations ---------------------------------------------
    auth_disabled: bool = Field(False, description="Accept calls without an API key (local use only)")
    api_keys: SecretStr | None = Field(
        None, description="Comma-separated API keys; append ':admin' to allow avatar upload/delete"
    )
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain: serve gRPC over TLS")
    tls_key_file: Path | None = Field(None, description="PEM private key for tls_cert_file")
    metrics_port: int = Field(0, description="Prometheus /metrics HTTP port; 0 = off")

    # --- choices -----------------------------------------------------------
    renderer: str = Field("lipsync", description="Renderer: lipsync (CPU) or ditto")
    llm: str = Field("echo", description="Language model: echo (offline) or openai")
    tts: str = Field("espeak", description="Speech: espeak (offline) or google")
    default_avatar: str = Field("", description="Avatar id used when a session names none")
    default_language: str = Field("en-US", description="Language when a session names none")
    system_prompt: str = Field(
        "You are a friendly, concise assistant speaking through a video avatar. "
        "Answer in one to three short sentences, in the user's language.",
        description="Persona / system prompt for the language model",
    )

    # --- media -------------------------------------------------------------
    fps: int = Field(25, description="Video frames per second")
    clock_rate: int = Field(16000, description="Media clock / PCM sample rate (Hz)")
    segment_seconds: float = Field(1.0, description="Target video segment length (s)")
    video_crf: int = Field(23, description="x264 constant rate factor")
    x264_preset: str = Field("veryfast", description="x264 preset")
    encoder_threads: int = Field(1, description="x264 threads per session")

    # --- limits ------------------------------------------------------------
    max_sessions: int = Field(32, description="Most concurrent sessions")
    max_text_chars: int = Field(2000, description="Most characters in one user message")
    max_message_bytes: int = Field(4 * 1024 * 1024, description="Largest gRPC message (bytes)")
    max_upload_bytes: int = Field(50 * 1024 * 1024, description="Largest avatar upload (bytes)")
    session_idle_timeout_s: float = Field(0.0, description="Idle session timeout; 0 = none")
    turn_deadline_s: float = Field(120.0, description="Longest a turn may run; 0 = none")
    send_queue_events: int = Field(256, description="Events buffered per session for a slow client")
    max_send_lag_s: float = Field(30.0, description="End a session whose client is this far behind (s)")
    max_history_turns: int = Field(20, description="Conversation turns kept per session")

    # --- session store ------------------------------------------------------
    session_store: str = Field("memory", description="Session store: memory, sqlite or redis")
    session_store_path: Path = Field(Path("data/sessions.sqlite3"), description="SQLite session store file")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL for the redis session store")
    session_ttl_s: float = Field(86400.0, description="Seconds a saved session is kept after its last use")

    # --- echo LLM (offline) ---------------------------------------------------
    echo_token_delay_s: float = Field(0.02, description="Delay between echo LLM tokens (s)")

    # --- OpenAI-compatible LLM ------------------------------------------------
    openai_model: str = Field("gpt-4o-mini", description="Chat model name")
    openai_base_url: str | None = Field(None, description="API base URL (default: OPENAI_BASE_URL or OpenAI)")
    openai_api_key: SecretStr | None = Field(None, description="API key (default: OPENAI_API_KEY)")
    openai_temperature: float = Field(0.7, description="Sampling temperature")
    openai_max_tokens: int = Field(300, description="Most tokens per reply")
    openai_timeout_s: float = Field(30.0, description="Request timeout (s)")
    openai_max_retries: int = Field(2, description="Retries on retriable errors")

    # --- Google Cloud TTS -----------------------------------------------------
    google_tts_endpoint: str | None = Field(
        None, description="API endpoint override: host:port (TLS + ADC) or http://host:port (plaintext, tests)"
    )
    google_tts_voice_en: str = Field("en-US-Chirp3-HD-Achernar", description="Default English voice")
    google_tts_voice_ko: str = Field("ko-KR-Chirp3-HD-Achernar", description="Default Korean voice")
    google_tts_speaking_rate: float = Field(1.0, description="Speaking rate")
    google_tts_sample_rate: int = Field(24000, description="Requested LINEAR16 sample rate (Hz)")
    google_tts_timeout_s: float = Field(20.0, description="Request timeout (s)")
    google_tts_max_retries: int = Field(2, description="Retries on retriable errors")

    # --- espeak-ng TTS (offline) ---------------------------------------------
    espeak_rate_wpm: int = Field(165, description="espeak-ng speaking rate (words per minute)")

    # --- Ditto renderer -------------------------------------------------------
    checkpoints: Path = Field(Path("checkpoints"), description="Ditto checkpoints folder")
    ditto_runtime: Literal["pytorch", "onnx", "tensorrt"] = Field("pytorch", description="Ditto model runtime")
    ditto_device: str = Field(
        "auto",
        description="Device(s): auto (every visible CUDA device, else cpu), cpu, cuda, cuda:N, or a comma "
        "list such as cuda:0,cuda:1 (one engine and one weight copy per entry)",
    )
    ditto_sampling_steps: int = Field(10, description="LMDM DDIM sampling steps")
    ditto_max_size: int = Field(512, description="Largest side of the rendered avatar")
    ditto_template_frames: int = Field(3, description="Idle template frames used from a video avatar")
    ditto_overlap: int = Field(10, description="LMDM window frames cross-faded with the previous window")
    ditto_stride: int = Field(70, description="Final frames per LMDM window (at most 80 - overlap)")
    ditto_first_frames: int = Field(10, description="Frames of the short first window of a turn (latency)")
    ditto_render_batch: int = Field(16, description="Largest warp+decode batch across sessions")
    ditto_capacity_fps: float = Field(0.0, description="Engine frames/s for admission; 0 = measure at start")
    ditto_compile: bool = Field(False, description="torch.compile warp+decode and CUDA-graph LMDM (GPU)")
    ditto_precision: Literal["auto", "fp16", "fp32"] = Field(
        "auto", description="Ditto compute precision: auto (fp16 on CUDA, fp32 on CPU), fp16 or fp32"
    )
    ditto_frame_format: Literal["auto", "rgb24", "yuv420p"] = Field(
        "auto", description="Frames handed to the encoder: auto (yuv420p converted on CUDA, rgb24 on CPU)"
    )
    ditto_engine_dir: Path | None = Field(
        None, description="TensorRT engine folder (default: checkpoints/ditto_trt_sm<XY>_trt<M.m> from make engines)"
    )


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment and `.env`, with explicit overrides (CLI flags) on top."""
    clean = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**clean)
