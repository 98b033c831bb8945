"""All configuration in one typed object, grouped by area, read from AVATAR_* env vars, `.env` and flags.

Each group is a small model (`settings.media.fps`, `settings.ditto.sampling_steps`); every field keeps
one flat name that is its environment variable (`AVATAR_FPS`, `AVATAR_DITTO_SAMPLING_STEPS`) and its
`avatar-server` flag (`--fps`, `--ditto-sampling-steps`). `docs/configuration.md` is generated from
this module (`make settings-doc`); a test keeps it current.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "AVATAR_"


class Group(BaseModel):
    """A settings group. `PREFIX` + the field name, upper case, is a field's flat name, unless the
    field names another with `flat=` (kept where a name predates the groups)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    PREFIX: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""


def setting(default: Any = ..., description: str = "", *, flat: str | None = None, **kwargs: Any) -> Any:
    """A field with its description and, where it differs from PREFIX + name, its flat name."""
    extra = {"flat": flat} if flat else None
    return Field(default, description=description, json_schema_extra=extra, **kwargs)


class ServiceSettings(Group):
    TITLE: ClassVar[str] = "Service"
    host: str = setting("0.0.0.0", "gRPC listen address")
    port: int = setting(50051, "gRPC port")
    instance_id: str = setting("", "Name of this instance (default: host name)")
    data_dir: Path = setting(Path("data"), "Where avatars and caches are kept")
    log_level: str = setting("INFO", "Logging level")
    log_format: Literal["text", "json"] = setting("text", "Log line format")
    shutdown_grace_s: float = setting(10.0, "Seconds running turns get on SIGTERM")
    metrics_port: int = setting(0, "Prometheus /metrics HTTP port; 0 = off")


class SecuritySettings(Group):
    TITLE: ClassVar[str] = "Security"
    auth_disabled: bool = setting(False, "Accept calls without an API key (local use only)")
    api_keys: SecretStr | None = setting(
        None, "Comma-separated API keys; append ':admin' to allow avatar upload/delete"
    )
    tls_cert_file: Path | None = setting(None, "PEM certificate chain: serve gRPC over TLS")
    tls_key_file: Path | None = setting(None, "PEM private key for tls_cert_file")


class LimitSettings(Group):
    TITLE: ClassVar[str] = "Limits"
    max_sessions: int = setting(32, "Most concurrent sessions")
    max_text_chars: int = setting(2000, "Most characters in one user message")
    max_message_bytes: int = setting(4 * 1024 * 1024, "Largest gRPC message (bytes)")
    max_upload_bytes: int = setting(50 * 1024 * 1024, "Largest avatar upload (bytes)")
    session_idle_timeout_s: float = setting(
        0.0, "End a session after this long with no activity of either side (s); 0 = never",
        flat="SESSION_IDLE_TIMEOUT_S",
    )
    turn_deadline_s: float = setting(120.0, "Longest a turn may run; 0 = none", flat="TURN_DEADLINE_S")
    send_queue_events: int = setting(256, "Events buffered per session for a slow client",
                                     flat="SEND_QUEUE_EVENTS")
    max_send_lag_s: float = setting(30.0, "End a session whose client is this far behind (s)")
    max_history_turns: int = setting(20, "Conversation turns kept per session")


class SessionSettings(Group):
    TITLE: ClassVar[str] = "Sessions"
    default_avatar: str = setting("", "Avatar id used when a session names none (default: the built-in one)",
                                  flat="DEFAULT_AVATAR")
    default_language: str = setting("en-US", "Language when a session names none", flat="DEFAULT_LANGUAGE")
    system_prompt: str = setting(
        "You are a friendly, concise assistant speaking through a video avatar. "
        "Answer in one to three short sentences, in the user's language.",
        "Persona / system prompt for the language model", flat="SYSTEM_PROMPT",
    )


class PipelineSettings(Group):
    TITLE: ClassVar[str] = "Pipeline parts"
    renderer: str = setting("lipsync", "Renderer: lipsync (CPU) or ditto")
    llm: str = setting("echo", "Language model: echo (offline) or openai")
    tts: str = setting("espeak", "Speech: espeak (offline) or google")


class MediaSettings(Group):
    TITLE: ClassVar[str] = "Media"
    fps: int = setting(25, "Video frames per second")
    clock_rate: int = setting(16000, "Media clock / PCM sample rate (Hz)")
    segment_seconds: float = setting(1.0, "Target video segment length (s)")
    video_crf: int = setting(23, "x264 constant rate factor")
    x264_preset: str = setting("veryfast", "x264 preset")
    encoder_threads: int = setting(1, "x264 threads per session")


class StoreSettings(Group):
    TITLE: ClassVar[str] = "Session store"
    kind: str = setting("memory", "Session store: memory, sqlite or redis", flat="SESSION_STORE")
    path: Path = setting(Path("data/sessions.sqlite3"), "SQLite session store file", flat="SESSION_STORE_PATH")
    redis_url: str = setting("redis://127.0.0.1:6379/0", "Redis URL for the redis session store",
                             flat="REDIS_URL")
    ttl_s: float = setting(86400.0, "Seconds a saved session is kept after its last use", flat="SESSION_TTL_S")


class EchoSettings(Group):
    PREFIX: ClassVar[str] = "ECHO_"
    TITLE: ClassVar[str] = "Echo language model (offline)"
    token_delay_s: float = setting(0.02, "Delay between echo LLM tokens (s)")


class OpenAISettings(Group):
    PREFIX: ClassVar[str] = "OPENAI_"
    TITLE: ClassVar[str] = "OpenAI-compatible language model"
    model: str = setting("gpt-4o-mini", "Chat model name")
    base_url: str | None = setting(None, "API base URL (default: OPENAI_BASE_URL or OpenAI)")
    api_key: SecretStr | None = setting(None, "API key (default: OPENAI_API_KEY)")
    temperature: float = setting(0.7, "Sampling temperature")
    max_tokens: int = setting(300, "Most tokens per reply")
    timeout_s: float = setting(30.0, "Request timeout (s)")
    max_retries: int = setting(2, "Retries on retriable errors")


class GoogleTtsSettings(Group):
    PREFIX: ClassVar[str] = "GOOGLE_TTS_"
    TITLE: ClassVar[str] = "Google Cloud Text-to-Speech"
    endpoint: str | None = setting(
        None, "API endpoint override: host:port (TLS + ADC) or http://host:port (plaintext, tests)"
    )
    voice_en: str = setting("en-US-Chirp3-HD-Achernar", "Default English voice")
    voice_ko: str = setting("ko-KR-Chirp3-HD-Achernar", "Default Korean voice")
    speaking_rate: float = setting(1.0, "Speaking rate")
    sample_rate: int = setting(24000, "Requested LINEAR16 sample rate (Hz)")
    timeout_s: float = setting(20.0, "Request timeout (s)")
    max_retries: int = setting(2, "Retries on retriable errors")


class EspeakSettings(Group):
    PREFIX: ClassVar[str] = "ESPEAK_"
    TITLE: ClassVar[str] = "espeak-ng speech (offline)"
    rate_wpm: int = setting(165, "espeak-ng speaking rate (words per minute)")
    max_piece_chars: int = setting(
        250, "Longest text one espeak-ng call speaks; longer text is split at sentences, commas or "
        "spaces (the engine is shared: one call at a time)", ge=20,
    )


class DittoSettings(Group):
    PREFIX: ClassVar[str] = "DITTO_"
    TITLE: ClassVar[str] = "Ditto renderer"
    checkpoints: Path = setting(Path("checkpoints"), "Ditto checkpoints folder", flat="CHECKPOINTS")
    runtime: Literal["pytorch", "onnx", "tensorrt"] = setting("pytorch", "Ditto model runtime")
    device: str = setting(
        "auto",
        "Device(s): auto (every visible CUDA device, else cpu), cpu, cuda, cuda:N, or a comma "
        "list such as cuda:0,cuda:1 (one engine and one weight copy per entry)",
    )
    # The next four override the checkpoints' cfg .pkl only when set; unset, the cfg's value (or,
    # where the cfg has none, the default shown, the authors' code's) is used (docs/ditto.md).
    sampling_steps: int = setting(50, "LMDM DDIM sampling steps (cfg sampling_timesteps unless set)")
    max_size: int = setting(
        1920, "Largest side of the rendered avatar, from its full-resolution upload (cfg max_size unless set; 512 for speed)"
    )
    template_frames: int = setting(-1, "Template frames used from a video avatar, -1 all (cfg template_n_frames unless set)")
    overlap: int = setting(10, "LMDM window frames cross-faded with the previous window (cfg overlap_v2 unless set)")
    stride: int = setting(70, "Final frames per LMDM window (at most 80 - overlap)")
    first_frames: int = setting(10, "Frames of the short first window of a turn (latency)")
    render_batch: int = setting(16, "Largest warp+decode batch across sessions")
    capacity_fps: float = setting(0.0, "Engine frames/s for admission; 0 = measure at start")
    compile: bool = setting(False, "torch.compile warp+decode and CUDA-graph LMDM (GPU)")
    precision: Literal["auto", "fp16", "fp32"] = setting(
        "auto", "Ditto compute precision: auto (fp16 on CUDA, fp32 on CPU), fp16 or fp32"
    )
    frame_format: Literal["auto", "rgb24", "yuv420p"] = setting(
        "auto", "Frames handed to the encoder: auto (yuv420p converted on CUDA, rgb24 on CPU)"
    )
    engine_dir: Path | None = setting(
        None, "TensorRT engine folder (default: checkpoints/ditto_trt_sm<XY>_trt<M.m> from make engines)"
    )


GROUPS: dict[str, type[Group]] = {
    "service": ServiceSettings,
    "security": SecuritySettings,
    "limits": LimitSettings,
    "session": SessionSettings,
    "pipeline": PipelineSettings,
    "media": MediaSettings,
    "store": StoreSettings,
    "echo": EchoSettings,
    "openai": OpenAISettings,
    "google_tts": GoogleTtsSettings,
    "espeak": EspeakSettings,
    "ditto": DittoSettings,
}


@dataclass(frozen=True)
class FlatName:
    """Where one flat name (env var without AVATAR_, lower case) lives in the groups."""

    name: str  # e.g. "ditto_sampling_steps"
    group: str  # e.g. "ditto"
    field: str  # e.g. "sampling_steps"
    info: FieldInfo

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def flat_names() -> Iterator[FlatName]:
    """Every setting by its flat name, group by group, in declaration order."""
    for group, model in GROUPS.items():
        for field, info in model.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            flat = str(extra.get("flat") or (model.PREFIX + field)).lower()
            yield FlatName(flat, group, field, info)


FLAT_NAMES: dict[str, FlatName] = {entry.name: entry for entry in flat_names()}


def _nest(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{"ditto_sampling_steps": 25} -> {"ditto": {"sampling_steps": 25}}; unknown names are errors."""
    nested: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        entry = FLAT_NAMES.get(name)
        if entry is None:
            raise ValueError(f"unknown setting {name!r}")
        nested.setdefault(entry.group, {})[entry.field] = value
    return nested


class _FlatEnvironment(PydanticBaseSettingsSource):
    """Reads AVATAR_<FLAT NAME> from the environment and `.env` (the environment wins)."""

    def __init__(self, settings_cls: type[BaseSettings], env_file: Path | None) -> None:
        super().__init__(settings_cls)
        self._env_file = env_file

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every group at once

    def __call__(self) -> dict[str, Any]:
        values: dict[str, str] = {}
        if self._env_file is not None and self._env_file.is_file():
            dotenv = DotEnvSettingsSource(self.settings_cls, env_file=self._env_file, env_prefix="")
            values.update({key.upper(): value for key, value in dotenv.env_vars.items() if value is not None})
        values.update({key.upper(): value for key, value in os.environ.items()})
        flat = {entry.name: values[entry.env] for entry in FLAT_NAMES.values() if entry.env in values}
        return _nest(flat)


class Settings(BaseSettings):
    """Service settings: one group per area (see the module docstring)."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    service: ServiceSettings = Field(default_factory=ServiceSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    session: SessionSettings = Field(default_factory=SessionSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    echo: EchoSettings = Field(default_factory=EchoSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    google_tts: GoogleTtsSettings = Field(default_factory=GoogleTtsSettings)
    espeak: EspeakSettings = Field(default_factory=EspeakSettings)
    ditto: DittoSettings = Field(default_factory=DittoSettings)

    ENV_FILE: ClassVar[Path | None] = Path(".env")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _FlatEnvironment(settings_cls, cls.ENV_FILE)

    def flat(self, name: str) -> Any:
        """A value by its flat name ("ditto_sampling_steps")."""
        entry = FLAT_NAMES[name]
        return getattr(getattr(self, entry.group), entry.field)


def load_settings(*, environment: bool = True, **flat: Any) -> Settings:
    """Settings from the environment and `.env` (unless `environment` is False), with values given
    by flat name (CLI flags, tests) on top; None values are ignored."""
    overrides = _nest({name: value for name, value in flat.items() if value is not None})
    return (Settings if environment else _SettingsWithoutEnvironment)(**overrides)


class _SettingsWithoutEnvironment(Settings):
    """Settings from defaults and explicit values only (tests, benchmarks)."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, **_: Any
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def settings_markdown() -> str:
    """The settings table of docs/configuration.md, generated from the groups above."""
    lines: list[str] = []
    for group, model in GROUPS.items():
        lines += [f"### {model.TITLE} (`settings.{group}`)", "",
                  "| env `AVATAR_…` / flag `--…` | default | meaning |", "|---|---|---|"]
        for entry in FLAT_NAMES.values():
            if entry.group != group:
                continue
            default = entry.info.get_default(call_default_factory=True)
            shown = "unset" if default is None else f"`{default}`" if default != "" else '""'
            lines.append(f"| `{entry.env}` / `{entry.flag}` | {shown} | {entry.info.description} |")
        lines.append("")
    return "\n".join(lines)


TABLE_BEGIN = "<!-- settings table: generated by `make settings-doc`, do not edit -->\n"
TABLE_END = "<!-- end of settings table -->"


def write_settings_doc(path: Path) -> None:
    """Replaces the generated table in `path` (docs/configuration.md) with the current one."""
    text = path.read_text(encoding="utf-8")
    begin, end = text.index(TABLE_BEGIN) + len(TABLE_BEGIN), text.index(TABLE_END)
    path.write_text(text[:begin] + settings_markdown() + "\n" + text[end:], encoding="utf-8")


if __name__ == "__main__":
    import sys

    write_settings_doc(Path(sys.argv[1]))
