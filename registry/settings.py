"""All configuration, read once from ``REGISTRY_*`` environment variables.

Nothing else in the service reads the environment: components receive the
``Settings`` object (or a part of it) from the app factory.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from registry.lib.jobs import Role

DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./registry.db"

# REGISTRY_* variables that are not settings: the API commands' address and key, the run-with-vllm script's
# command, docker-compose.yml's interpolations; REGISTRY_TEST_* and REGISTRY_BENCH_* point tests and benchmarks.
NOT_SETTINGS = frozenset(
    {"REGISTRY_URL", "REGISTRY_API_KEY", "REGISTRY_COMMAND", "REGISTRY_IMAGE_TAG", "REGISTRY_PUBLIC_PORT"}
)
NOT_SETTINGS_PREFIXES = ("REGISTRY_TEST_", "REGISTRY_BENCH_")

# The longest duration a setting may name, by the unit its name ends with (else seconds): a century. Longer is a
# mistake, and overflows what it is added to (a datetime, a timedelta) long after the start.
_CENTURY = {"_days": 36_500.0, "_hours": 876_000.0, "_minutes": 52_560_000.0}
_DURATION_SUFFIXES = ("_seconds", "_days", "_hours", "_minutes", "_timeout", "_delay", "_cooldown")


def bounded_duration(value: object, info: ValidationInfo) -> object:
    """A duration setting's value, refused past a century (``inf`` and ``nan`` are refused by the model)."""
    name = info.field_name or ""
    if isinstance(value, int | float) and name.endswith(_DURATION_SUFFIXES):
        unit = next((suffix for suffix in _CENTURY if name.endswith(suffix)), "_seconds")
        longest = _CENTURY.get(unit, 3_153_600_000.0)
        if value > longest:
            raise ValueError(f"at most {longest:,.0f} {unit[1:]} (a century)")
    return value


class BackendSettings(BaseModel):
    """One OpenAI-compatible completion backend (a vLLM server), named in ``REGISTRY_BACKENDS``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    _durations = field_validator("*")(bounded_duration)

    url: str = Field(description="Base URL of the server, without /v1, e.g. http://vllm:8000.")
    api_key: str | None = Field(None, description="Sent as a bearer token when set (vLLM --api-key).")
    connect_timeout: float = Field(2.0, gt=0, description="Seconds to open a connection.")
    first_token_timeout: float = Field(30.0, gt=0, description="Seconds from sending a request to its first token.")
    total_timeout: float = Field(120.0, gt=0, description="Seconds for a whole completion.")
    max_concurrency: int = Field(32, ge=1, description="Requests in flight to this backend at once.")
    max_queue: int = Field(64, ge=0, description="Requests waiting for a slot; beyond that, 503 at once.")
    max_retries: int = Field(2, ge=0, le=10, description="Retries after connection errors, 429 and 503.")
    retry_base_delay: float = Field(0.1, ge=0, description="Seconds before the first retry; doubles each time.")
    retry_max_delay: float = Field(2.0, ge=0, description="Longest wait between two retries.")
    breaker_failures: int = Field(5, ge=1, description="Consecutive failures that open the circuit breaker.")
    breaker_cooldown: float = Field(10.0, gt=0, description="Seconds the breaker stays open before a probe.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        # Without a scheme every completion would fail on the first call, long after the start.
        if re.fullmatch(r"https?://[^/\s]+(/\S*)?", url) is None:
            raise ValueError("url must be http:// or https:// and a host, e.g. http://vllm:8000")
        return url


class Settings(BaseSettings):
    """Service settings. Each field is the variable ``REGISTRY_<FIELD NAME IN CAPITALS>``."""

    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore", frozen=True, allow_inf_nan=False)
    _durations = field_validator("*")(bounded_duration)

    # -- storage
    database_url: str = Field(
        DEFAULT_SQLITE_URL,
        description="SQLAlchemy URL. PostgreSQL: postgresql+asyncpg://user@host/db. Default: a SQLite file.",
    )
    database_read_url: str | None = Field(
        None,
        description="A read replica for analytics reads (experiment results, exports, usage); unset: the primary.",
    )
    database_pool_size: int = Field(10, ge=1, description="Connections kept open per process (PostgreSQL).")
    database_max_overflow: int = Field(10, ge=0, description="Extra connections allowed under bursts (PostgreSQL).")
    database_pool_timeout: float = Field(
        3.0, gt=0, description="Seconds a request waits for a free connection before a 503."
    )
    database_connect_timeout: float = Field(
        3.0, gt=0, description="Seconds to open a connection; keeps writes failing fast while the database is down."
    )
    database_statement_timeout_ms: int = Field(
        15_000, ge=0, description="PostgreSQL statement_timeout for request queries (0 disables)."
    )
    database_echo: bool = Field(False, description="Log every SQL statement (debugging only).")
    redis_url: str | None = Field(
        None,
        description="Redis URL for the shared cache, cross-replica invalidation and rate limits. "
        "Unset: in-process only (one replica).",
    )
    redis_key_prefix: str = Field("registry:", description="Prefix of every Redis key and channel.")
    redis_max_connections: int = Field(64, ge=1, description="Size of the blocking Redis connection pool.")
    redis_timeout: float = Field(0.5, gt=0, description="Seconds for one Redis command before it counts as down.")
    change_log_poll_seconds: float = Field(
        1.0,
        gt=0,
        description="Without Redis: how often each process reads the changes other processes (CLI commands, "
        "other workers) committed to the database's change log, so their caches drop what changed.",
    )

    # -- server
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=1, le=65535, description="Port to bind.")
    workers: int = Field(1, ge=1, description="Server worker processes.")
    server: Literal["granian", "uvicorn"] = Field("granian", description="ASGI server used by `registry serve`.")
    role: Role = Field(
        "all",
        description="Background work of this process: all (one process does everything), api (serves requests, "
        "flushes its own buffers), worker (statistics, webhooks, retention; `registry worker`).",
    )
    header_read_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=60,
        description="Seconds a connection may sit without a whole request's headers, from when it opens or its "
        "last response ends (idle, keep-alive and slow-loris connections), before the server closes it.",
    )
    body_read_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=600,
        description="Seconds a client has to send a whole request body once its headers arrived; a slower "
        "body gets 408 and the connection is closed.",
    )
    stream_send_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=600,
        description="Seconds one part of a streamed response (a completion's tokens, the change feed, the "
        "playground) may wait for a client that stopped reading; past it the stream ends as if the client had "
        "left: the backend request is closed, its slot and budget hold freed, and the completion recorded as "
        "cancelled.",
    )
    max_connections_per_worker: int = Field(
        1000,
        ge=8,
        description="Open connections one worker keeps; past it new ones are refused at once (uvicorn) or wait "
        "in the listen backlog (granian). Lowered at start to about half the open-file limit if that is smaller.",
    )
    max_url_bytes: int = Field(8192, ge=256, le=60_000, description="Longest request target; longer ones get 414.")
    max_request_headers: int = Field(
        64, ge=16, le=96, description="Most request header lines; more get 431 (granian itself refuses over 100)."
    )
    max_header_bytes: int = Field(
        16_384, ge=1024, le=262_144, description="Largest total size of the request headers; larger get 431."
    )
    shutdown_drain_seconds: float = Field(
        0.0,
        ge=0,
        le=300,
        description="On SIGTERM, how long /ready answers 503 while the server keeps serving, before it stops "
        "accepting connections, so load balancers stop sending first (SIGINT stops at once).",
    )
    worker_port: int = Field(
        8001, ge=1, le=65535, description="Port of the worker's /health, /ready and /metrics (`registry worker`)."
    )
    bootstrap_admin_key: bool = Field(
        True, description="On a first start with no API keys at all, create an admin key and print it once."
    )
    backup_max_age_hours: float = Field(
        26.0,
        gt=0,
        description="`registry doctor` fails the backups check when the last `registry backup` of this database "
        "(recorded in its audit log) is older than this.",
    )
    console_session_minutes: int = Field(
        480, ge=1, le=43_200, description="How long a console sign-in lasts before the key must be entered again."
    )
    console_experiment_refresh_seconds: float = Field(
        10.0,
        ge=1,
        description="How often a running experiment's results page asks for newer results; never more often than "
        "`experiment_statistics_seconds`, as the figures move no faster.",
    )

    # -- limits
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body; larger ones get 413.")
    max_page_size: int = Field(200, ge=1, description="Largest `limit` accepted by list endpoints.")
    openai_models_page_size: int = Field(
        1000,
        ge=1,
        description="Most models one `GET /v1/models` answer lists, and its largest `limit`: OpenAI's SDK asks "
        "for no page, so it gets this many; past them the answer has `has_more` and `last_id` (`?after=` reads on).",
    )
    render_max_output_chars: int = Field(
        200_000, ge=1, description="Largest rendered prompt; larger renders fail with 422."
    )
    render_timeout_ms: int = Field(250, ge=1, description="Wall-time budget of one render.")
    render_max_iterations: int = Field(100_000, ge=1, description="Loop iterations and calls one render may perform.")
    max_template_chars: int = Field(100_000, ge=1, description="Largest template (or chat message) accepted.")

    # -- caches
    cache_ttl_seconds: float = Field(
        300.0, gt=0, description="Longest time a cached prompt is served without re-reading it."
    )
    cache_degraded_ttl_seconds: float = Field(
        5.0,
        gt=0,
        description="Cache lifetime while invalidations cannot be received (Redis configured but unreachable).",
    )
    cache_max_prompts: int = Field(10_000, ge=1, description="Prompts kept in the in-process cache.")
    fast_path: bool = Field(
        True,
        description="Serve well-formed resolve, render, complete and OpenAI-compatible completion requests in front "
        "of Litestar's routing and validation (same answers, less CPU); false sends every request through Litestar.",
    )
    api_key_cache_seconds: float = Field(60.0, ge=0, description="How long a verified API key is trusted in memory.")
    api_key_stale_seconds: float = Field(
        3600.0,
        ge=0,
        description="While the database is unreachable, a key this process verified within this long keeps "
        "working (revocations still apply through Redis); a key never seen before gets 503.",
    )
    api_key_unknown_lookups_per_second: float = Field(
        200.0,
        ge=0,
        description="Database reads per second and process for API keys whose id this process has not verified "
        "before (a well-formed key with a made-up id costs one); past it such keys get 503 with Retry-After. "
        "Keys verified before are not counted. 0 is unlimited.",
    )
    api_key_unknown_lookups_concurrency: int = Field(
        4,
        ge=0,
        description="Of those reads, how many may run at once per process (each holds a database connection); "
        "16 times as many wait their turn, past which they get 503 at once. 0 is unlimited.",
    )
    rate_limit_per_minute: int = Field(
        0,
        ge=0,
        description="Requests per minute per API key unless the key sets its own; 0 is unlimited. Over it: 429.",
    )
    rate_limit_sync_seconds: float = Field(
        1.0,
        gt=0,
        description="How often each process adds its admissions to the shared Redis counters; between two syncs "
        "replicas do not see each other's requests.",
    )

    # -- experiments
    experiment_exposure_flush_seconds: float = Field(
        1.0,
        gt=0,
        description="How often buffered first exposures are written. A hard kill loses at most this much "
        "(a graceful stop loses nothing).",
    )
    experiment_exposure_buffer_size: int = Field(
        50_000,
        ge=2,
        description="First exposures held in memory between writes (a write starts when half full); "
        "beyond it new ones are dropped and counted.",
    )
    experiment_event_buffer_size: int = Field(
        10_000,
        ge=1,
        description="Outcome events held in memory while the database is unreachable (answered 202, written when "
        "it returns); a batch beyond it gets 503 and is counted in registry_experiment_events_dropped_total.",
    )
    experiment_event_retry_seconds: float = Field(
        1.0, gt=0, description="How often outcome events held while the database was unreachable are written."
    )
    experiment_statistics_seconds: float = Field(
        2.0, gt=0, description="How often new exposures and events are folded into the experiments' statistics."
    )
    experiment_statistics_batch: int = Field(2000, ge=1, description="Units recomputed per statistics transaction.")
    experiment_refresh_seconds: float = Field(
        30.0, gt=0, description="Re-read the running experiments at least this often, in case a change was missed."
    )
    rollout_check_seconds: float = Field(
        5.0,
        gt=0,
        description="How often the worker checks each running rollout's guardrails and steps (one checker per "
        "rollout across replicas, by a lease).",
    )
    alert_evaluate_seconds: float = Field(
        30.0,
        gt=0,
        description="How often the worker evaluates each enabled alert rule (one evaluator per rule across "
        "replicas, by a lease); a rule's window is measured back from each evaluation.",
    )
    experiment_exposure_grace_seconds: float = Field(
        60.0,
        ge=0,
        description="Outcomes timestamped up to this long before a unit's first exposure still count as after it "
        "(apps' clocks run behind).",
    )
    event_max_age_days: int = Field(90, ge=1, description="Outcome events older than this are rejected.")
    event_max_future_seconds: int = Field(
        300, ge=0, description="Outcome events timestamped further than this in the future are rejected."
    )

    # -- webhooks and change feed
    webhook_timeout_seconds: float = Field(5.0, gt=0, description="Time a webhook receiver has to answer.")
    webhook_max_attempts: int = Field(10, ge=1, description="Attempts before a delivery is marked dead.")
    webhook_retry_base_seconds: float = Field(
        5.0, gt=0, description="First retry delay; it doubles per attempt (with jitter)."
    )
    webhook_retry_max_seconds: float = Field(3600.0, gt=0, description="Longest delay between two attempts.")
    webhook_dispatch_interval_seconds: float = Field(1.0, gt=0, description="How often pending deliveries are sent.")
    webhook_disable_after_failures: int = Field(
        20,
        ge=1,
        description="A webhook is disabled once this many attempts in a row have failed, over at least "
        "`webhook_disable_after_days`; its owner enables it again (PATCH `enabled`).",
    )
    webhook_disable_after_days: float = Field(
        5.0,
        ge=0,
        description="How long every attempt to a webhook must have been failing before it is disabled "
        "(with `webhook_disable_after_failures` failures in a row at least).",
    )
    webhook_allowed_networks: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description='Non-public networks webhooks may reach, as a JSON list of CIDRs, e.g. ["10.20.0.0/16"]. '
        "Every other loopback, link-local, private or reserved address is refused, when a webhook is "
        "created and again at each delivery.",
    )
    feed_heartbeat_seconds: float = Field(15.0, gt=0, description="Keep-alive comment interval on the change feed.")
    feed_max_listeners_per_key: int = Field(
        100,
        ge=1,
        description="Change feeds one API key may hold open on one process; more get 429. A feed never ends by "
        "itself, so without a bound one key could hold every connection a worker keeps.",
    )

    # -- completions
    backends: dict[str, BackendSettings] = Field(
        default_factory=dict,
        description='Completion backends by name, as JSON: {"local": {"url": "http://127.0.0.1:8000"}}. '
        "A model config names its backend.",
    )
    completion_usage_flush_seconds: float = Field(
        2.0, gt=0, description="How often buffered usage records are written to the database."
    )
    completion_cache_ttl_seconds: float = Field(
        0.0,
        ge=0,
        description="Lifetime of cached responses to deterministic requests (temperature 0 or a seed) of prompts "
        "with store_io; 0 disables.",
    )
    guard_stream_window: int = Field(
        128,
        ge=1,
        le=4096,
        description="Characters of a stream held back for its config's output guards, so a finding that long is "
        "caught whole even across chunks (a guard's own window may raise it); the delay before the first token.",
    )
    semantic_cache_backend: str | None = Field(
        None,
        description="The backend (a name in REGISTRY_BACKENDS) whose /v1/embeddings embeds requests for the "
        "semantic cache; its timeouts and breaker apply. Unset: no prompt's semantic cache runs.",
    )
    semantic_cache_model: str | None = Field(
        None, description="The embedding model that backend serves, e.g. all-MiniLM-L6-v2."
    )
    semantic_cache_ttl_seconds: float = Field(
        86_400.0, gt=0, description="How long an answer stays in the semantic cache."
    )
    semantic_cache_max_candidates: int = Field(
        200,
        ge=1,
        le=10_000,
        description="Newest cached answers compared with a request, per prompt version, config version and "
        "values of the exact variables (older ones are never served).",
    )
    semantic_cache_purge_seconds: float = Field(
        600.0, gt=0, description="How often expired semantic cache entries are deleted."
    )
    completion_io_retention_days: float = Field(
        30.0, gt=0, description="Days stored prompts and completion texts are kept (prompts with store_io)."
    )
    completion_io_purge_seconds: float = Field(3600.0, gt=0, description="How often expired texts are purged.")

    # -- evaluations
    eval_poll_seconds: float = Field(
        1.0,
        gt=0,
        description="How often a worker looks for evaluation runs to take, and a run's event stream for progress.",
    )
    eval_lease_seconds: float = Field(
        30.0, gt=0, description="How long a worker owns a run without renewing; then another worker takes it over."
    )
    eval_max_concurrency: int = Field(
        8,
        ge=1,
        description="Completions all evaluation runs of one worker make at a time (each run has its own "
        "lower limit too), so evaluations never take the backends from production traffic.",
    )

    # -- observability
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_json: bool = Field(True, description="JSON log lines (false: human-readable console lines).")
    access_log: bool = Field(True, description="Log one line per request.")
    metrics_dir: str | None = Field(
        None,
        description="Folder where each worker process of one server publishes its metrics, so /metrics reports "
        "the whole process group; `registry serve` sets a fresh one when REGISTRY_WORKERS is above 1.",
    )

    @field_validator("database_url", "database_read_url")
    @classmethod
    def _known_driver(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError("database_url must use postgresql+asyncpg:// or sqlite+aiosqlite://")
        return url

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        # Checked here, not when the pool is made at start, where it would be a traceback.
        if url and not url.startswith(("redis://", "rediss://", "unix://")):  # empty: unset, as None
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return url

    @model_validator(mode="after")
    def _semantic_cache_backend_known(self) -> Settings:
        if (self.semantic_cache_backend is None) != (self.semantic_cache_model is None):
            raise ValueError("semantic_cache_backend and semantic_cache_model are set together (or neither)")
        if self.semantic_cache_backend is not None and self.semantic_cache_backend not in self.backends:
            raise ValueError(f"semantic_cache_backend '{self.semantic_cache_backend}' is not one of the backends")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A line for each ``REGISTRY_*`` variable in ``environ`` that no setting reads, naming the likeliest intended.

    Such a variable is ignored, so a typo (``REGISTRY_DATABSE_URL``) would leave the default in force unseen.
    """
    known = sorted({f"REGISTRY_{name.upper()}" for name in Settings.model_fields} | NOT_SETTINGS)
    lines = []
    for name in sorted(environ):
        upper = name.upper()  # settings are read whatever the case of their names
        if not upper.startswith("REGISTRY_") or upper in known or upper.startswith(NOT_SETTINGS_PREFIXES):
            continue
        # Compared without the common prefix, which would make every name look close.
        close = difflib.get_close_matches(upper[9:], [k[9:] for k in known], n=1, cutoff=0.75)
        hint = f" (did you mean REGISTRY_{close[0]}?)" if close else ""
        lines.append(f"{name} is not a setting and is ignored{hint}")
    return lines


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
