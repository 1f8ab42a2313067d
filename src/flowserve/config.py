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
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from flowserve.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLOWSERVE_", env_nested_delimiter="__", extra="forbid"
    )

    database_url: str = "sqlite+aiosqlite:///flowserve.db"
    # migrate a database made by an older flowserve at start (serve --upgrade); otherwise
    # serve refuses it and names `flowserve db upgrade` (flowserve.store.schema)
    upgrade_schema: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    log_json: bool = False

    # streaming
    keepalive_interval: float = Field(default=15.0, gt=0)
    # merge the events that piled up while a client was slow into one frame; off only to
    # measure what that saves (bench/relay.py)
    stream_coalesce: bool = True

    # request limits (each refusal is a 4xx naming the limit, before any provider is called)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_inputs: int = Field(default=64, ge=1)  # values in one run request body
    max_input_chars: int = Field(default=100_000, ge=1)  # length of each input value
    max_url_bytes: int = Field(default=4096, ge=256)  # path + query string (414)
    max_header_bytes: int = Field(default=32_768, ge=1024)  # all request headers (431)
    # seconds a connection may take to send a request's headers, from when it is opened or
    # its previous response ended; then 408 and closed (slow clients: flowserve.http.server).
    # Request bodies and responses are not timed.
    header_timeout: float = Field(default=10.0, gt=0)

    # abuse limits, per API key and for the whole process (flowserve.http.admission)
    rate_limit_per_minute: int = Field(default=600, ge=0)  # default per key; 0 = no limit
    max_concurrent_runs_per_key: int = Field(default=20, ge=1)  # beyond: 429
    max_concurrent_runs: int = Field(default=200, ge=1)  # beyond: 503
    # streams being set up at once; more wait their turn (flowserve.http.stream)
    max_concurrent_setups: int = Field(default=2, ge=1)

    # what one published flow may hold (a 422 naming the setting beyond)
    max_flow_nodes: int = Field(default=500, ge=1)
    max_flow_outputs: int = Field(default=100, ge=1)
    # text one run may produce: each node's output or rendered prompt, and all nodes together;
    # beyond, the run fails naming the node (a chain of doubling templates made 4.2 MB a run)
    max_node_chars: int = Field(default=1_000_000, ge=1)
    max_run_chars: int = Field(default=4_000_000, ge=1)

    # run time limits; a flow's ``limits: {timeout, idle_timeout}`` overrides them
    run_timeout: float = Field(default=600.0, gt=0)  # total seconds
    run_idle_timeout: float = Field(default=120.0, gt=0)  # seconds without a token

    # provider calls (generic: applies to every provider)
    max_retries: int = Field(default=2, ge=0, le=10)
    first_token_timeout: float = Field(default=60.0, gt=0)
    node_timeout: float = Field(default=600.0, gt=0)

    # shutdown and crash safety (flowserve.http.server, flowserve.store.instances)
    # a run is recorded RUNNING once it has lasted this long; shorter runs are written once
    record_delay: float = Field(default=0.25, ge=0)
    drain_seconds: float = Field(default=10.0, ge=0)  # runs in flight may finish this long
    heartbeat_interval: float = Field(default=10.0, gt=0)  # dead after 3 missed heartbeats
    # a streamed run whose client left is kept this long for it to resume (contract 2.5;
    # last-event-id), then cancelled; 0: cancelled at once
    resume_grace: float = Field(default=5.0, ge=0, le=600)
    # a RUNNING run's outputs are saved this often, so that the record of a run its process
    # died in keeps what was streamed; 0: never
    record_save_interval: float = Field(default=2.0, ge=0)

    # /metrics: distinct ``flow`` label values of flowserve_run_duration_seconds; the runs of
    # flows beyond the first this many seen are counted under flow="_other"
    metrics_max_flows: int = Field(default=50, ge=0, le=10_000)

    # caches
    flow_cache_ttl: float = Field(default=2.0, ge=0)
    key_cache_ttl: float = Field(default=5.0, ge=0)

    # several processes (flowserve.cluster): with a Redis URL they share the limits, stops,
    # cache invalidations and runs' events; without, each process is on its own
    redis_url: str | None = None  # e.g. redis://:password@10.0.0.5:6379/0 (never logged)
    # what this deployment's keys in Redis start with (several deployments, one Redis)
    redis_prefix: str = Field(default="flowserve", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    event_retention: float = Field(default=300.0, gt=0, le=86_400)  # seconds after a run ends
    max_events_per_run: int = Field(default=100_000, ge=100, le=10_000_000)  # kept in Redis

    # the provider of LLM nodes that do not name one: the embedded model
    default_provider: str = "local"
    # what flow files may point providers at (see providers.registry.EndpointPolicy)
    allowed_base_urls: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1", "http://localhost", "http://[::1]"]
    )
    allowed_key_envs: list[str] = Field(default_factory=lambda: ["*_API_KEY", "*_API_TOKEN"])
    # provider sections, e.g. {"local": {"instances": 1, "n_threads": 2}}
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # register the providers meant for tests and demos (the scripted one); off in production
    test_providers: bool = False
    warm_up: bool = True

    # knowledge bases and per-user documents (flowserve.knowledge; contract 3.8)
    # the embedding model of KBs created without one: None = keyword (full-text BM25) search
    # only, which needs no model, key or download
    default_embedding_model: str | None = None
    kb_max_file_bytes: int = Field(default=50 * 1024 * 1024, ge=1, le=2**40)  # 413 beyond
    documents_max_file_bytes: int = Field(default=10 * 1024 * 1024, ge=1, le=2**40)
    kb_index_concurrency: int = Field(default=2, ge=1, le=64)  # files indexed at once
    # SQLite keyword search leaves out query words in at least this share of all chunks (BM25
    # gives them no weight from 0.5); lower is faster and drops words that weigh a little;
    # 1 keeps every word (flowserve.knowledge.fts5)
    kb_keyword_max_df: float = Field(default=0.5, gt=0.0, le=1.0)
    # SQLite keyword search of KBs whose chunks span 20k ids or more: ranges of chunk ids
    # searched at once, each on its own connection and core; 1 searches them in one statement
    kb_keyword_parallel: int = Field(default=2, ge=1, le=16)
    # originals, stored by content hash; None: flowserve-data/kb beside the SQLite database
    # (the working directory for other databases)
    kb_storage_dir: Path | None = None
    # encrypts provider keys given at KB create (Fernet); without it such keys are refused
    secret_key: SecretStr | None = None

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
