"""The bridge's settings in one typed object, read from AVATAR_WEB_* env vars and CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class WebSettings(BaseSettings):
    """Bridge settings. Every field is settable as AVATAR_WEB_<FIELD NAME> (upper case)."""

    model_config = SettingsConfigDict(
        env_prefix="AVATAR_WEB_", env_file=".env", env_file_encoding="utf-8", extra="ignore",
        hide_input_in_errors=True,  # errors must never echo a token or key
    )

    host: str = Field(
        "127.0.0.1",
        description="HTTP listen address; a non-loopback one needs access_token (or public)",
    )
    port: int = Field(7135, ge=0, le=65535, description="HTTP port (0 picks a free one)")
    public: bool = Field(
        False,
        description="Serve a non-loopback address without an access token: anyone who reaches "
        "it can use the service",
    )
    access_token: SecretStr | None = Field(
        None,
        min_length=16,
        description="If set, the page, /ws, /api/*, /avatar/* and /static/* need it: "
        "Authorization: Bearer, ?token= (sets a cookie on the page) or that cookie",
    )
    access_cookie_max_age_s: int = Field(
        30 * 86400, ge=60, description="How long the page's access cookie lasts (s)"
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed to open WebSockets (comma-separated; empty = same origin "
        "only; '*' = any)",
    )

    # --- the service (gRPC) ------------------------------------------------------
    grpc_target: str = Field("127.0.0.1:50051", description="avatar-server gRPC address host:port")
    grpc_api_key: SecretStr | None = Field(
        None, description="API key the bridge presents to the service on every call"
    )
    grpc_api_key_file: FilePath | None = Field(
        None, description="File holding grpc_api_key (a mounted secret; trailing newline ignored)"
    )
    grpc_tls: bool = Field(
        False, description="Connect to the service over TLS (system roots unless grpc_tls_ca_file)"
    )
    grpc_tls_ca_file: FilePath | None = Field(
        None, description="PEM certificates to trust for the service's TLS; implies grpc_tls"
    )
    grpc_max_message_bytes: int = Field(
        32 * 1024 * 1024, description="Largest gRPC message accepted from the service"
    )

    # --- WebSocket relay ---------------------------------------------------------
    max_message_bytes: int = Field(
        64 * 1024, ge=256, description="Largest accepted client message; bigger ones get an error"
    )
    max_frame_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Hard cap on one WebSocket frame; bigger ones close the connection (1009)",
    )
    send_buffer_bytes: int = Field(
        8 * 1024 * 1024, ge=64 * 1024,
        description="Bytes queued for one browser before backpressure",
    )
    send_stall_timeout_s: float = Field(
        20.0, gt=0, description="Seconds a full send buffer may block before the connection drops"
    )
    heartbeat_s: float = Field(30.0, gt=0, description="WebSocket ping interval (s)")
    hello_timeout_s: float = Field(15.0, gt=0, description="Seconds allowed before the hello")
    preview_cache_entries: int = Field(16, ge=0, description="Avatar previews kept in memory")
    log_level: str = Field("INFO", description="Logging level")

    # --- REST API (/api/*, see docs/rest.md) -----------------------------------
    videos_dir: Path = Field(Path("data/videos"), description="Where finished REST videos are kept")
    videos_max_bytes: int = Field(
        2 * 1024**3, ge=0, description="Most bytes of kept videos (0 = no limit)"
    )
    videos_max_age_s: float = Field(
        86400.0, ge=0, description="Oldest kept video (s; 0 = no limit)"
    )
    videos_max_count: int = Field(500, ge=0, description="Most kept videos (0 = no limit)")
    rest_turn_timeout_s: float = Field(180.0, gt=0, description="Longest a REST turn may take (s)")
    rest_max_body_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest accepted REST request body (bytes)"
    )

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """Accept 'a,b' from the environment as well as a list."""
        if isinstance(value, str):
            return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _read_key_file(self) -> WebSettings:
        """One source for the service key: the value, or the file (read once, at start)."""
        if self.grpc_api_key_file is None:
            return self
        if self.grpc_api_key is not None:
            raise ValueError("set grpc_api_key or grpc_api_key_file, not both")
        key = self.grpc_api_key_file.read_text(encoding="utf-8").rstrip("\r\n")
        if not key.strip():
            raise ValueError(f"grpc_api_key_file {self.grpc_api_key_file} is empty")
        self.grpc_api_key = SecretStr(key)
        return self

    @property
    def uses_tls(self) -> bool:
        """Whether the channel to the service is TLS."""
        return self.grpc_tls or self.grpc_tls_ca_file is not None
