"""Settings, built once (environment, then an optional config file) and handed down.

Environment variables use the ``FLOWSERVE_`` prefix; nested sections use ``__``, e.g.
``FLOWSERVE_PROVIDERS__LOCAL__INSTANCES=2``. ``FLOWSERVE_CONFIG`` may name a YAML file with
the same keys. Provider credentials are read from the environment by the providers themselves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from flowserve.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLOWSERVE_", env_nested_delimiter="__", extra="forbid"
    )

    database_url: str = "sqlite+aiosqlite:///flowserve.db"
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    log_json: bool = False

    # streaming
    keepalive_interval: float = Field(default=15.0, gt=0)
    resume_grace: float = Field(default=0.0, ge=0)

    # request limits
    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    # provider calls (generic: applies to every provider)
    max_retries: int = Field(default=2, ge=0, le=10)
    first_token_timeout: float = Field(default=60.0, gt=0)
    node_timeout: float = Field(default=600.0, gt=0)

    # caches
    flow_cache_ttl: float = Field(default=2.0, ge=0)
    key_cache_ttl: float = Field(default=5.0, ge=0)

    # provider sections, e.g. {"local": {"instances": 1, "n_threads": 2}}
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    warm_up: bool = True

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        path = config_file or os.environ.get("FLOWSERVE_CONFIG")
        data: dict[str, Any] = {}
        if path:
            try:
                data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"cannot read config file {path}: {exc}") from None
            if not isinstance(data, dict):
                raise ConfigError(f"config file {path} must be a mapping")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)
