"""Settings, read once from the environment and an optional `.env` file."""

from __future__ import annotations

from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from aisha.storage.public import PublicRoute, public_route

MIN_WEBHOOK_SECRET_LENGTH = 16
Network = IPv4Network | IPv6Network


class Locale(StrEnum):
    RU = "ru"
    EN = "en"


class TranscriptionBackend(StrEnum):
    OPENAI = "openai"
    LOCAL = "local"


class ConfigError(Exception):
    """Bad configuration; the message is one line naming the variable."""


def _check_http_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{name} must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Telegram
    bot_token: SecretStr | None = None
    telegram_api_url: str = "https://api.telegram.org"
    telegram_api_local: bool = False
    # Local Bot API server (TELEGRAM_API_LOCAL=true): getFile answers with a path under the
    # server's --dir; our processes read it where that folder is mounted for them (required), and
    # the server's own name for it is the prefix mapped (unset: the same path).
    telegram_api_local_dir: Path | None = None
    telegram_api_server_dir: str | None = None
    telegram_api_local_max_file_mb: int = Field(default=2000, ge=1)  # larger files are refused
    telegram_api_local_min_free_mb: int = Field(default=1024, ge=0)  # kept free on each disk
    # Outgoing sends and edits, shared by every process through Redis when REDIS_URL is set
    # (Telegram's limits); 0 turns a limit off.
    telegram_messages_per_second: float = Field(default=30.0, ge=0)
    telegram_private_chat_per_second: float = Field(default=1.0, ge=0)
    telegram_group_chat_per_minute: float = Field(default=20.0, ge=0)
    telegram_max_retries: int = Field(default=3, ge=0, le=10)  # after a 429, each after retry_after

    # Data
    database_url: str = "sqlite+aiosqlite:///./data/aisha.db"
    redis_url: str | None = None
    storage_url: str = "file://./data/files"
    s3_endpoint_url: str | None = None
    # The bucket's address as the outside world (FAL) reaches it; presigned links are built on it only.
    s3_public_endpoint_url: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str | None = None

    # HTTP
    public_base_url: str | None = None
    webhook_secret: SecretStr | None = None
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)  # 0: any free port (tests)
    metrics_token: SecretStr | None = None  # set: GET /metrics wants `Authorization: Bearer <token>`
    # Set: GET /metrics answers only clients (the socket peer) in these networks.
    metrics_allowed_networks: Annotated[tuple[Network, ...], NoDecode] = ()

    # Providers
    fal_key: SecretStr | None = None
    fal_queue_url: str = "https://queue.fal.run"
    fal_rest_url: str = "https://rest.fal.ai"
    fal_jwks_url: str = "https://rest.alpha.fal.ai/.well-known/jwks.json"
    # Our FAL account's user id: a signed webhook for any other account is refused.
    fal_user_id: str | None = None
    # Longest wait for one FAL call; a submission that outlasts it is "maybe submitted" (kept, not resent).
    fal_timeout_seconds: float = Field(default=30.0, gt=0)
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None

    # People
    admin_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    default_locale: Locale = Locale.RU

    # Credits
    welcome_bonus: int = Field(default=0, ge=0)
    hold_ttl_seconds: int = Field(default=6 * 3600, ge=60)
    prices_file: Path | None = None

    # Transcription: the OpenAI-compatible speech API or faster-whisper in the worker (None: openai
    # when OPENAI_API_KEY is set, else local when a model is available).
    transcription_backend: TranscriptionBackend | None = None
    transcription_model: str = "whisper-1"
    whisper_model: str | None = None  # a CTranslate2 model folder; unset: the bundled tiny.en
    whisper_workers: int = Field(default=1, ge=1, le=16)  # chunks recognized at once per process
    whisper_threads: int = Field(default=2, ge=1, le=64)  # CPU threads per chunk
    whisper_beam_size: int = Field(default=5, ge=1, le=10)
    transcription_max_duration_seconds: int = Field(default=4 * 3600, ge=1)
    transcription_chunk_seconds: int = Field(default=600, ge=10)
    transcription_concurrency: int = Field(default=4, ge=1, le=32)
    transcription_keep_audio: bool = False
    transcription_max_attempts: int = Field(default=5, ge=1, le=20)
    transcription_retry_base_seconds: float = Field(default=1.0, ge=0)
    transcription_request_timeout_seconds: float = Field(default=300.0, gt=0)
    transcription_max_in_flight: int = Field(default=2, ge=1)  # per user

    # Limits and admin
    throttle_rate: int = Field(default=40, ge=0)  # updates per user per period; 0: no throttling
    throttle_period_seconds: int = Field(default=10, ge=1)
    broadcast_rate: float = Field(default=25.0, gt=0, le=30)  # broadcast messages per second
    credit_value_micro_usd: int = Field(default=10_000, ge=0)  # one credit in micro-USD, for margins

    # Background work
    recovery_interval_seconds: int = Field(default=60, ge=1)
    # Messages owed (a payment's thank-you...): retried after 30 s, 60 s, 120 s... up to N sends.
    notice_retry_seconds: float = Field(default=30.0, ge=0)
    notice_max_attempts: int = Field(default=8, ge=1)
    # A refund Telegram never answers: asked at most this many times (once per sweep: about an hour
    # at the default interval), then left for the operator.
    refund_max_asks: int = Field(default=60, ge=1)

    # Avatars: FAL trainers, limits, timeouts, retention of the source photos
    fal_portrait_endpoint: str = "fal-ai/flux-lora-portrait-trainer"
    fal_style_endpoint: str = "fal-ai/flux-lora-fast-training"
    avatar_portrait_steps: int = Field(default=2500, ge=1, le=20000)
    avatar_style_steps: int = Field(default=1000, ge=1, le=20000)
    avatar_min_photos: int = Field(default=10, ge=1)
    avatar_max_photos: int = Field(default=20, ge=1)
    avatar_training_timeout_seconds: int = Field(default=3 * 3600, ge=60)
    avatar_poll_after_seconds: int = Field(default=15 * 60, ge=0)
    avatar_photo_retention_seconds: int = Field(default=0, ge=0)  # 0: delete at once after training
    avatar_draft_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    # Photo checks (the rest of ValidationThresholds keeps its tuned defaults).
    photo_min_short_side: int = Field(default=512, ge=64)
    photo_min_sharpness: float = Field(default=40.0, ge=0)
    photo_duplicate_max_distance: int = Field(default=10, ge=0, le=64)
    photo_nsfw_check: bool = True

    # Image generation: FAL endpoints and defaults, OpenAI models for prompts and vision, limits
    fal_image_lora_endpoint: str = "fal-ai/flux-lora"
    fal_image_endpoint: str = "fal-ai/flux/dev"
    generation_steps: int = Field(default=28, ge=1, le=50)
    generation_guidance_scale: float = Field(default=3.5, ge=0, le=20)
    generation_lora_scale: float = Field(default=1.0, ge=0, le=4)
    openai_chat_model: str = "gpt-4o-mini"
    openai_vision_model: str = "gpt-4o"
    openai_timeout_seconds: float = Field(default=20.0, gt=0)
    generation_max_in_flight: int = Field(default=2, ge=1)
    generation_timeout_seconds: int = Field(default=600, ge=30)
    generation_poll_after_seconds: int = Field(default=60, ge=0)
    generation_poll_interval_seconds: float = Field(default=2.0, gt=0)
    prompt_max_length: int = Field(default=1000, ge=10, le=4000)
    generation_quality_check: bool = True
    generation_free_regeneration: bool = True

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _parse_admin_ids(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p for p in value.replace(";", ",").replace(" ", ",").split(",") if p]
            try:
                return frozenset(int(p) for p in parts)
            except ValueError:
                raise ValueError("ADMIN_IDS must be Telegram user ids separated by commas") from None
        if isinstance(value, int):
            return frozenset({value})
        return value

    @field_validator("metrics_allowed_networks", mode="before")
    @classmethod
    def _parse_networks(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            try:
                return tuple(ip_network(p, strict=False) for p in parts)
            except ValueError:
                raise ValueError(
                    "METRICS_ALLOWED_NETWORKS must be IP addresses or CIDR networks separated by commas"
                    f" (like 127.0.0.1/32,10.0.0.0/8), got {value!r}"
                ) from None
        return value

    @field_validator("telegram_api_url", "fal_queue_url", "fal_rest_url", "fal_jwks_url")
    @classmethod
    def _http_url(cls, value: str, info: object) -> str:
        name = getattr(info, "field_name", "URL") or "URL"
        return _check_http_url(name.upper(), value)

    @field_validator("public_base_url", "openai_base_url", "s3_endpoint_url", "s3_public_endpoint_url")
    @classmethod
    def _optional_http_url(cls, value: str | None, info: object) -> str | None:
        if value is None or value == "":
            return None
        name = getattr(info, "field_name", "URL") or "URL"
        return _check_http_url(name.upper(), value)

    @field_validator("telegram_api_local_dir", "telegram_api_server_dir", mode="before")
    @classmethod
    def _blank_path_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("transcription_backend", "whisper_model", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"REDIS_URL must start with redis://, rediss:// or unix://, got {value!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme.startswith("postgres"):
            # Accept the usual spellings and always drive PostgreSQL through asyncpg.
            rest = value.split("://", 1)[1]
            return f"postgresql+asyncpg://{rest}"
        if scheme in ("sqlite", "sqlite+aiosqlite"):
            return "sqlite+aiosqlite://" + value.split("://", 1)[1]
        raise ValueError(f"DATABASE_URL must be a sqlite:// or postgresql:// URL, got scheme {scheme!r}")

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme == "file" or (parts.scheme == "s3" and parts.netloc):
            return value
        raise ValueError(f"STORAGE_URL must be file://PATH or s3://BUCKET, got {value!r}")

    @model_validator(mode="after")
    def _local_api_folder(self) -> Settings:
        if not self.telegram_api_local:
            return self
        if self.telegram_api_local_dir is None:
            raise ValueError(
                "TELEGRAM_API_LOCAL=true needs TELEGRAM_API_LOCAL_DIR: the local Bot API server's --dir"
                " as mounted in this process (it answers getFile with paths there)"
            )
        if not self.telegram_api_local_dir.is_absolute():
            raise ValueError("TELEGRAM_API_LOCAL_DIR must be an absolute path")
        if self.telegram_api_server_dir is not None and not self.telegram_api_server_dir.startswith("/"):
            raise ValueError("TELEGRAM_API_SERVER_DIR must be an absolute path (the server's --dir)")
        return self

    @model_validator(mode="after")
    def _avatar_photo_range(self) -> Settings:
        if self.avatar_min_photos > self.avatar_max_photos:
            raise ValueError("AVATAR_MIN_PHOTOS must not exceed AVATAR_MAX_PHOTOS")
        return self

    @model_validator(mode="after")
    def _holds_outlive_jobs(self) -> Settings:
        # A hold released by expiry before its job's own timeout could no longer be captured.
        longest = max(self.avatar_training_timeout_seconds, self.generation_timeout_seconds)
        if self.hold_ttl_seconds <= longest:
            raise ValueError(
                f"HOLD_TTL_SECONDS ({self.hold_ttl_seconds}) must be longer than the longest job timeout"
                f" ({longest} s: AVATAR_TRAINING_TIMEOUT_SECONDS / GENERATION_TIMEOUT_SECONDS)"
            )
        return self

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> Settings:
        if self.public_base_url:
            secret = self.webhook_secret.get_secret_value() if self.webhook_secret else ""
            if len(secret) < MIN_WEBHOOK_SECRET_LENGTH:
                raise ValueError(
                    f"WEBHOOK_SECRET must be at least {MIN_WEBHOOK_SECRET_LENGTH} characters "
                    "when PUBLIC_BASE_URL is set (webhook mode)"
                )
            allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
            if not set(secret) <= allowed:
                raise ValueError("WEBHOOK_SECRET may only contain A-Z, a-z, 0-9, _ and - (Telegram's rule)")
        return self

    @property
    def webhook_mode(self) -> bool:
        return self.public_base_url is not None

    @property
    def archive_route(self) -> PublicRoute:
        """How FAL fetches a training archive: presigned, our signed link, or FAL's storage."""
        return public_route(
            storage_url=self.storage_url,
            s3_public_endpoint_url=self.s3_public_endpoint_url,
            public_base_url=self.public_base_url,
        )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def require_bot_token(self) -> str:
        if self.bot_token is None or not self.bot_token.get_secret_value().strip():
            raise ConfigError(
                "BOT_TOKEN is not set: create a bot with @BotFather and export BOT_TOKEN=<token>"
            )
        return self.bot_token.get_secret_value()


def load_settings(**overrides: object) -> Settings:
    """Read settings; turn a validation failure into one line naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]).upper() if first["loc"] else "configuration"
        message = first["msg"].removeprefix("Value error, ")
        if field.lower() in message.lower() or "WEBHOOK_SECRET" in message:
            raise ConfigError(message) from None
        raise ConfigError(f"{field}: {message}") from None
