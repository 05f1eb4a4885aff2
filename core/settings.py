"""Settings: one pydantic-settings class per process, all sharing the same common block.

This module is the one place every environment variable of every process is declared
(``rlhb config env`` prints them all, docs/configuration.md is generated from it and a
test keeps the two equal; ``rlhb config show`` prints the effective values).

Common fields (broker, Redis, topics, model, adapters, dev mode) are read from
``RLHB_*`` variables so that every process of one deployment agrees on them; a few also
accept the conventional names (``REDIS_URL``, ``KAFKA_BOOTSTRAP_SERVERS``). Process
fields use their own prefix: ``RLHB_API_``, ``RLHB_AGG_``, ``RLHB_TRAINER_``.

Grouped fields are one variable per field, joined with ``__`` (never JSON inside a
variable): ``RLHB_TRAINER_GATE__KL_BOUND=0.3`` sets ``GateSettings.kl_bound``,
``RLHB_TRAINER_ALGO__KL_COEF=0.02`` sets the training algorithm's ``kl_coef``
(trainer/config.py and the algorithms' ``Config`` classes document those fields),
``RLHB_TRAINER_ALGO__HEAD_WEIGHTS__VIEW=0.5`` one entry of a dict field.

Every validator says what to do, not only what is wrong.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.paths import default_cache_dir, default_model_dir

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PLACEHOLDER_TOKENS = {"", "changeme", "change-me", "secret", "admin", "token", "password", "dev"}


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class CommonSettings(BaseSettings):
    """Fields every process needs. Subclasses add their own with their own prefix."""

    # hide_input_in_errors: a settings error must not print the inputs it was given (a traceback
    # of a model validator would otherwise show every variable, passwords included).
    model_config = SettingsConfigDict(
        extra="ignore", env_file=None, populate_by_name=True, env_nested_delimiter="__", hide_input_in_errors=True
    )

    kafka_bootstrap_servers: str = Field(
        default="",
        validation_alias=_alias("RLHB_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
        description="host:port[,host:port]. Empty: start the embedded tansu broker on a free loopback port.",
    )
    # Kafka security: one set for every client (producers, consumers, admin) of a process, turned
    # into kafka-python keyword arguments in one place (core/infra/kafka_security.py).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        validation_alias=_alias("RLHB_KAFKA_SECURITY_PROTOCOL"),
        description="PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (SASL over TLS, the usual managed-Kafka "
        "choice). The embedded broker speaks PLAINTEXT only.",
    )
    kafka_ssl_cafile: str = Field(
        default="",
        validation_alias=_alias("RLHB_KAFKA_SSL_CAFILE"),
        description="PEM file of the CA that signed the brokers' certificates (SSL, SASL_SSL). Empty: the "
        "system's trusted CAs.",
    )
    kafka_ssl_certfile: str = Field(
        default="",
        validation_alias=_alias("RLHB_KAFKA_SSL_CERTFILE"),
        description="PEM client certificate for mutual TLS (with RLHB_KAFKA_SSL_KEYFILE). Empty: no client cert.",
    )
    kafka_ssl_keyfile: str = Field(
        default="",
        validation_alias=_alias("RLHB_KAFKA_SSL_KEYFILE"),
        description="PEM private key of RLHB_KAFKA_SSL_CERTFILE (unencrypted; mount it from a secret).",
    )
    kafka_ssl_check_hostname: bool = Field(
        default=True,
        validation_alias=_alias("RLHB_KAFKA_SSL_CHECK_HOSTNAME"),
        description="Check that the broker's certificate names the host connected to (keep true in production).",
    )
    kafka_sasl_mechanism: Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="",
        validation_alias=_alias("RLHB_KAFKA_SASL_MECHANISM"),
        description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; required with SASL_PLAINTEXT/SASL_SSL, empty otherwise.",
    )
    kafka_sasl_username: str = Field(
        default="",
        validation_alias=_alias("RLHB_KAFKA_SASL_USERNAME"),
        description="SASL user (kafka-python's sasl_plain_username; also used by SCRAM).",
    )
    # SecretStr: never shown by repr(), logs or `rlhb config show`; read with get_secret_value().
    kafka_sasl_password: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=_alias("RLHB_KAFKA_SASL_PASSWORD"),
        description="SASL password (kafka-python's sasl_plain_password). Set it from a secret, never a ConfigMap.",
    )
    kafka_idempotence: bool = Field(
        default=True,
        validation_alias=_alias("RLHB_KAFKA_IDEMPOTENCE"),
        description="Idempotent producers (acks=all, enable_idempotence): a retried send is written once. The "
        "embedded tansu broker supports it too; false only for a broker without InitProducerId (Kafka < 0.11).",
    )
    redis_url: str = Field(
        default="",
        validation_alias=_alias("RLHB_REDIS_URL", "REDIS_URL"),
        description=f"Redis URL. Empty: use {DEFAULT_REDIS_URL} if it answers, else start an embedded valkey.",
    )
    redis_prefix: str = Field(
        default="rlhb:",
        validation_alias=_alias("RLHB_REDIS_PREFIX"),
        description="Prefix of every Redis key this deployment writes (tests use a unique one).",
    )
    topic_impressions: str = Field(
        default="impressions",
        validation_alias=_alias("RLHB_TOPIC_IMPRESSIONS"),
        description="Topic the API writes served answers (impressions) to.",
    )
    topic_feedback: str = Field(
        default="feedback",
        validation_alias=_alias("RLHB_TOPIC_FEEDBACK"),
        description="Topic the API writes user feedback events to.",
    )
    topic_records: str = Field(
        default="behavior-records",
        validation_alias=_alias("RLHB_TOPIC_RECORDS"),
        description="Topic the aggregator writes behavior records to; the trainer reads it.",
    )
    topic_dead_letter: str = Field(
        default="dead-letter",
        validation_alias=_alias("RLHB_TOPIC_DEAD_LETTER"),
        description="Topic for messages the aggregator cannot read.",
    )
    topic_partitions: int = Field(
        default=4,
        ge=1,
        le=1024,
        validation_alias=_alias("RLHB_TOPIC_PARTITIONS"),
        description="Partitions for topics the embedded setup creates (aggregators scale up to this many).",
    )
    model_path: str = Field(
        default="",
        validation_alias=_alias("RLHB_MODEL_PATH"),
        description="HF causal LM folder. Empty: the SmolLM2 folder made by `rlhb model prepare`.",
    )
    adapter_dir: Path = Field(
        default_factory=lambda: default_cache_dir() / "adapters",
        validation_alias=_alias("RLHB_ADAPTER_DIR"),
        description="Where immutable adapter version folders and the registry manifest live.",
    )
    state_dir: Path = Field(
        default_factory=lambda: default_cache_dir() / "state",
        validation_alias=_alias("RLHB_STATE_DIR"),
        description="Local durable state (the data folder): impression outbox, embedded infra state file, "
        "the embedded Redis's append-only file (redis/), the trainer's records, the generated admin token and "
        "impression key of `rlhb up`.",
    )
    dev_mode: bool = Field(
        default=False,
        validation_alias=_alias("RLHB_DEV_MODE"),
        description="Allow an empty/placeholder admin token and secret (never in production).",
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        validation_alias=_alias("RLHB_DEVICE"),
        description="Where models run (core/device.py): auto (CUDA if available, else CPU), cpu, cuda or cuda:N. "
        "Under torchrun each rank uses cuda:LOCAL_RANK.",
    )
    dtype: str = Field(
        default="auto",
        pattern="^(auto|float32|bfloat16|float16)$",
        validation_alias=_alias("RLHB_DTYPE"),
        description="dtype of the frozen base weights: auto (bfloat16 on a GPU that supports it, else float32), "
        "float32, bfloat16 or float16 (GPU only). Trainable heads stay float32.",
    )

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _servers(cls, v: str) -> str:
        v = v.strip()
        for part in filter(None, v.split(",")):
            host, sep, port = part.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(
                    f"bootstrap server {part!r} is not host:port; set RLHB_KAFKA_BOOTSTRAP_SERVERS like "
                    "'localhost:9092' or leave it empty to use the embedded broker"
                )
        return v

    @model_validator(mode="after")
    def _kafka_security(self) -> CommonSettings:
        # Misconfigured security fails at start with what to set, never as a hang or a silently
        # plaintext connection: credentials or TLS files the protocol would ignore are an error too.
        protocol = self.kafka_security_protocol
        sasl, tls = protocol.startswith("SASL_"), protocol.endswith("SSL")
        if protocol != "PLAINTEXT" and not self.kafka_bootstrap_servers:
            raise ValueError(
                f"RLHB_KAFKA_SECURITY_PROTOCOL={protocol} needs RLHB_KAFKA_BOOTSTRAP_SERVERS: the embedded broker "
                "(used when it is empty) speaks PLAINTEXT only"
            )
        given_sasl = [
            name
            for name, value in (
                ("RLHB_KAFKA_SASL_MECHANISM", self.kafka_sasl_mechanism),
                ("RLHB_KAFKA_SASL_USERNAME", self.kafka_sasl_username),
                ("RLHB_KAFKA_SASL_PASSWORD", self.kafka_sasl_password.get_secret_value()),
            )
            if value
        ]
        if sasl:
            missing = {"RLHB_KAFKA_SASL_MECHANISM", "RLHB_KAFKA_SASL_USERNAME", "RLHB_KAFKA_SASL_PASSWORD"}
            missing -= set(given_sasl)
            if missing:
                raise ValueError(
                    f"RLHB_KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(sorted(missing))} "
                    "(mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; the password from a secret)"
                )
        elif given_sasl:
            raise ValueError(
                f"{', '.join(given_sasl)} set but RLHB_KAFKA_SECURITY_PROTOCOL={protocol} does not use SASL; "
                "set it to SASL_SSL (or SASL_PLAINTEXT), or unset the SASL variables"
            )
        files = {
            "RLHB_KAFKA_SSL_CAFILE": self.kafka_ssl_cafile,
            "RLHB_KAFKA_SSL_CERTFILE": self.kafka_ssl_certfile,
            "RLHB_KAFKA_SSL_KEYFILE": self.kafka_ssl_keyfile,
        }
        given_files = [name for name, path in files.items() if path]
        if given_files and not tls:
            raise ValueError(
                f"{', '.join(given_files)} set but RLHB_KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS; "
                "set it to SSL or SASL_SSL, or unset the TLS files"
            )
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise ValueError("mutual TLS needs both RLHB_KAFKA_SSL_CERTFILE and RLHB_KAFKA_SSL_KEYFILE (or neither)")
        for name in given_files:
            if not Path(files[name]).expanduser().is_file():
                raise ValueError(f"{name} {files[name]!r} is not a readable file; mount it (e.g. from a secret) there")
        return self

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, v: str) -> str:
        from core.infra.redis_url import is_cluster_url, parse_cluster_url, parse_sentinel_url, redact

        v = v.strip()
        if v.startswith("redis+sentinel://"):
            parse_sentinel_url(v)  # now, so a malformed Sentinel URL fails at start with the expected shape
        elif is_cluster_url(v):
            parse_cluster_url(v)  # the same for a Cluster URL
        elif v and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"RLHB_REDIS_URL {redact(v)!r} must start with redis://, rediss://, unix://, redis+sentinel:// "
                "or redis+cluster:// (e.g. redis://127.0.0.1:6379/0); leave it empty for the local/embedded default"
            )
        return v

    @model_validator(mode="after")
    def _cluster_prefix(self) -> CommonSettings:
        from core.infra.redis_url import cluster_prefix_problem, is_cluster_url

        if is_cluster_url(self.redis_url):
            problem = cluster_prefix_problem(self.redis_prefix)
            if problem:
                raise ValueError(problem)
        return self

    @field_validator("model_path")
    @classmethod
    def _model(cls, v: str) -> str:
        if v and not Path(v).expanduser().is_dir():
            raise ValueError(
                f"RLHB_MODEL_PATH {v!r} is not a folder; run `rlhb model prepare` for the bundled "
                "SmolLM2, or point it at a Hugging Face model folder (config.json + weights)"
            )
        return str(Path(v).expanduser()) if v else v

    def resolved_model_path(self) -> str:
        """The configured model folder, or the prepared SmolLM2 folder."""
        if self.model_path:
            return self.model_path
        path = default_model_dir()
        if not (path / "config.json").exists():
            raise ValueError(f"no model at {path}; run `rlhb model prepare` or set RLHB_MODEL_PATH")
        return str(path)


def _check_secret(value: str, name: str, dev_mode: bool) -> None:
    if dev_mode:
        return
    if value.strip().lower() in PLACEHOLDER_TOKENS or len(value) < 16:
        raise ValueError(
            f"{name} is empty, a placeholder or shorter than 16 characters; set it to a long random "
            "string (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`) or set "
            "RLHB_DEV_MODE=1 for local development"
        )


class ApiSettings(CommonSettings):
    """The HTTP API process (`rlhb api`)."""

    model_config = SettingsConfigDict(env_prefix="RLHB_API_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address to bind.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to bind (0: pick a free one).")
    # SecretStr: never shown by repr(), logs or tracebacks; readers call get_secret_value().
    admin_token: SecretStr = Field(
        default=SecretStr(""),
        description="Bearer token for /admin/* (also lets a request name any registered adapter version).",
    )
    impression_secret: SecretStr = Field(
        default=SecretStr(""), description="HMAC key that signs impression ids (the current key)."
    )
    # Rotation without invalidating ids in flight: ids name their key; new ids are signed with the
    # current key, older keys listed here still verify until their ids have expired.
    impression_key_id: str = Field(
        default="k1",
        pattern="^[A-Za-z0-9_-]{1,16}$",
        description="Key id of RLHB_API_IMPRESSION_SECRET, written into every id it signs (change it with the "
        "secret when rotating).",
    )
    impression_old_secrets: SecretStr = Field(
        default=SecretStr(""),
        description="Older impression keys still accepted for verification after a rotation, as "
        "'keyid=secret,keyid=secret'; remove one once RLHB_API_IMPRESSION_TTL_S has passed since it was retired.",
    )
    impression_ttl_s: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="Lifetime of an impression id: feedback after it is refused (410), and per-id state "
        "(dedupe keys) expires with it. 7 days by default.",
    )
    impression_accept_legacy: bool = Field(
        default=True,
        description="Still accept ids of the first format (no key id, expiry or client binding; each kind "
        "counts once per impression). Turn off once RLHB_API_IMPRESSION_TTL_S has passed since the upgrade.",
    )
    feedback_rate_per_s: float = Field(
        default=10.0,
        gt=0,
        description="Per-client rate limit of /v1/feedback: events per second refilled into the client's "
        "bucket (clients are told apart by X-Client-Id; the admin token is exempt). Over it: 429 + Retry-After.",
    )
    feedback_burst: int = Field(
        default=1000,
        ge=1,
        description="Per-client bucket size of /v1/feedback in events (one full batch by default).",
    )
    backend: str = Field(default="embedded", pattern="^(embedded|vllm)$", description="Generation backend.")
    vllm_base_url: str = Field(default="", description="Remote vLLM OpenAI server; empty: in-process vLLM.")
    # A plain comma-separated string, not a list field: pydantic-settings would want JSON for a list.
    vllm_urls: str = Field(
        default="",
        description="Remote vLLM replicas, comma-separated base URLs (http://vllm-0:8000,http://vllm-1:8000): every "
        "published adapter is loaded into each before traffic moves to it, requests are spread round-robin. "
        "Empty: RLHB_API_VLLM_BASE_URL (one replica), or in-process vLLM when that is empty too.",
    )
    max_new_tokens: int = Field(default=64, ge=1, le=4096, description="Default answer length in tokens.")
    max_tokens_cap: int = Field(default=512, ge=1, le=8192, description="Largest max_tokens a request may ask.")
    batch_window_ms: float = Field(default=15.0, ge=0, le=1000, description="Idle: wait for more requests.")
    max_batch_size: int = Field(default=8, ge=1, le=256, description="Most requests decoded together.")
    adapter_poll_s: float = Field(
        default=0.25, gt=0, le=1.0, description="How often to check the active pointer (hot-swap within a second)."
    )
    max_loaded_adapters: int = Field(default=4, ge=1, le=64, description="Adapters kept in memory at once.")
    temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, description="Sampling temperature when a request sets none (0 = greedy)."
    )
    behavior_encoding: str = Field(
        default="rates",
        pattern="^(paper|rates)$",
        description="Encoding of the default (most preferred) behavior sentence; match RLHB_AGG_ENCODING.",
    )
    serve_model: bool = Field(
        default=True, description="Load the generation backend (False: a feedback/admin-only instance)."
    )
    torch_threads: int = Field(
        default=1,
        ge=0,
        le=256,
        description="torch intra-op threads for generation (0: torch's default, all cores). 1 by default: on a "
        "machine shared with the trainer, 2+ threads contending for cores ran SmolLM2 ~10x slower than 1.",
    )
    prefix_cache: bool = Field(
        default=True, description="Reuse the keys/values of the shared system prompt per adapter version."
    )
    outbox_flush_s: float = Field(
        default=1.0, gt=0, le=60, description="How often impressions waiting in the local outbox are retried."
    )
    vllm_model_name: str = Field(default="", description="Model name served by the remote vLLM (empty: its first).")
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="Largest request body on any route, checked before the body is read (413 above it); "
        "the default fits a full feedback batch.",
    )
    # Human ratings (/rate, core/ratings_store.py). SecretStr: tokens and a database URL's password.
    rater_tokens: SecretStr = Field(
        default=SecretStr(""),
        description="Raters of the /rate page, as 'name=token,name=token' (a bare token gets a name derived "
        "from it); the page sends the token as the X-Rater-Token header. Empty: the rating page is off (403).",
    )
    ratings_store: SecretStr = Field(
        default=SecretStr(""),
        description="Where human ratings are stored: a postgresql:// URL, or a SQLite file path (sqlite:///path "
        "or a plain path). Empty: ratings.sqlite3 under RLHB_STATE_DIR.",
    )
    outbox_max_pending: int = Field(
        default=100_000,
        ge=1,
        description="Most impressions the local outbox holds while the broker is away; when full, new answers "
        "are refused with 503 (Retry-After) instead of letting the file grow without limit.",
    )
    redis_max_connections: int = Field(
        default=8,
        ge=2,  # the hot-swap watcher's pub/sub subscription holds one connection for good
        le=1024,
        description="Most Redis connections this API process opens. At the bound a request waits for one to "
        "come back (RLHB_API_REDIS_POOL_TIMEOUT_S) instead of opening another: an unbounded pool keeps as "
        "many sockets as its busiest moment ever needed. Redis runs one command at a time, so a few "
        "connections serve thousands of short commands per second.",
    )
    redis_pool_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="How long a request waits for a free Redis connection at RLHB_API_REDIS_MAX_CONNECTIONS; "
        "then that Redis call fails like an unreachable Redis (admin routes 503, feedback skips its "
        "once-per-client check).",
    )

    @model_validator(mode="after")
    def _secrets(self) -> ApiSettings:
        _check_secret(self.admin_token.get_secret_value(), "RLHB_API_ADMIN_TOKEN", self.dev_mode)
        _check_secret(self.impression_secret.get_secret_value(), "RLHB_API_IMPRESSION_SECRET", self.dev_mode)
        if self.max_new_tokens > self.max_tokens_cap:
            raise ValueError("RLHB_API_MAX_NEW_TOKENS must not exceed RLHB_API_MAX_TOKENS_CAP")
        if self.vllm_urls.strip() and self.vllm_base_url.strip():
            raise ValueError(
                "set RLHB_API_VLLM_URLS (a list of replicas) or RLHB_API_VLLM_BASE_URL (one), not both; "
                "put every replica in RLHB_API_VLLM_URLS"
            )
        for url in self.vllm_replica_urls():
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"RLHB_API_VLLM_URLS: {url!r} is not an http(s) base URL (http://vllm-0:8000)")
        from core.impression_ids import parse_old_secrets

        parse_old_secrets(self.impression_old_secrets.get_secret_value())  # malformed: fail at start, clearly
        from core.ratings_store import parse_rater_tokens

        for token in parse_rater_tokens(self.rater_tokens.get_secret_value()):
            _check_secret(token, "a token in RLHB_API_RATER_TOKENS", self.dev_mode)
        return self

    def vllm_replica_urls(self) -> list[str]:
        """The remote vLLM replicas' base URLs (no trailing slash); [] means in-process vLLM. The old
        single RLHB_API_VLLM_BASE_URL is a one-replica list."""
        raw = self.vllm_urls if self.vllm_urls.strip() else self.vllm_base_url
        return [u.strip().rstrip("/") for u in raw.split(",") if u.strip()]


class AggregatorSettings(CommonSettings):
    """The aggregator process (`rlhb aggregator`)."""

    model_config = SettingsConfigDict(env_prefix="RLHB_AGG_", extra="ignore")

    group_id: str = Field(default="rlhb-aggregator", description="Kafka consumer group.")
    encoding: str = Field(
        default="rates",
        pattern="^(paper|rates)$",
        description="'paper': log1p counts in N equal buckets up to fixed caps; 'rates': per-view rates, "
        "quantile-fitted levels (see core/behavior/encoding docs).",
    )
    num_buckets: int = Field(default=5, ge=2, le=20, description="N, buckets per indicator (paper encoding).")
    coalesce_ms: float = Field(default=200.0, ge=0, le=60_000, description="Merge bursts into one record.")
    catchup_coalesce_ms: float = Field(
        default=10_000.0,
        ge=0,
        le=600_000,
        description="Coalescing interval while the member is behind (messages left to read): records of a "
        "backlog are superseded within the catch-up, so publish each impression at most this often.",
    )
    pending_ttl_s: float = Field(default=600.0, gt=0, description="How long an early event waits for its impression.")
    pending_max: int = Field(default=100_000, ge=1, description="Bound on events waiting for impressions.")
    # The API's impression keys (the same variables): with a secret set, the aggregator checks every
    # impression and event it reads -- events may be written straight to Kafka -- and dead-letters ids
    # this service did not sign. Without one (dev mode, tests) ids are not checked.
    impression_secret: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=_alias("RLHB_API_IMPRESSION_SECRET"),
        description="RLHB_API_IMPRESSION_SECRET, read by the aggregator too: set, every id on the topics is checked.",
    )
    impression_key_id: str = Field(
        default="k1", validation_alias=_alias("RLHB_API_IMPRESSION_KEY_ID"), description="RLHB_API_IMPRESSION_KEY_ID."
    )
    impression_old_secrets: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=_alias("RLHB_API_IMPRESSION_OLD_SECRETS"),
        description="RLHB_API_IMPRESSION_OLD_SECRETS.",
    )
    impression_accept_legacy: bool = Field(
        default=True,
        validation_alias=_alias("RLHB_API_IMPRESSION_ACCEPT_LEGACY"),
        description="RLHB_API_IMPRESSION_ACCEPT_LEGACY.",
    )
    max_event_age_s: float = Field(
        default=7 * 86_400.0,
        gt=0,
        description="Events whose ts is older than this are dead letters, not counts (dedupe keys must outlive it).",
    )
    key_ttl_s: float = Field(
        default=0.0,
        ge=0,
        description="TTL of the per-impression keys imp:/cnt:/seen: (0: max_event_age_s + 1 day, for skew and lag; "
        "must exceed max_event_age_s).",
    )
    max_poll_interval_ms: int = Field(
        default=10_000,
        ge=1000,
        description="kafka-python takes the group rebalance timeout from this; keep it small (seconds).",
    )
    levels: int = Field(default=3, ge=2, le=10, description="L, levels per rate (rates encoding): 3 = low/medium/high.")
    rates: str = Field(
        default="like_rate,dislike_rate",
        description="Comma-separated rates the 'rates' encoding renders (table RATES in "
        "core/behavior/encoding.py: like_rate, dislike_rate, ctr, share_rate, requery_rate).",
    )
    caps: dict[str, float] = Field(
        default_factory=dict,
        description="Paper encoding: per-indicator top-bucket caps, one variable each: RLHB_AGG_CAPS__VIEW=50.",
    )
    session_timeout_ms: int = Field(
        default=6000, ge=1000, description="Group session timeout: how long a crashed member keeps its partitions."
    )
    poll_timeout_ms: int = Field(default=100, ge=1, le=10_000, description="Longest wait in one consumer poll.")
    max_poll_records: int = Field(default=2000, ge=1, description="Most messages applied in one Redis script call.")
    kafka_client: Literal["kafka-python", "confluent"] = Field(
        default="kafka-python",
        description="The group consumer's client: kafka-python (pure Python) or confluent (confluent-kafka, "
        "librdkafka in C: decodes and checksums fetches outside the GIL; see bench/README.md). Replay and the "
        "producers use kafka-python either way.",
    )
    lease_s: float = Field(
        default=30.0, gt=0, description="A record claimed for publishing is re-published by anyone after this."
    )
    edges_refit_s: float = Field(default=30.0, gt=0, description="How often rate edges are refitted.")
    edges_sample: int = Field(default=5000, ge=10, description="Most recent records the edges are fitted on.")
    edges_min_records: int = Field(default=50, ge=1, description="Below this many records the prior edges are used.")
    metrics_port: int = Field(
        default=9101,
        ge=0,
        le=65535,
        description="Port of this member's Prometheus /metrics (events, dead letters, lag, dedupe hits); 0: off. "
        "Taken (several members on one host): a warning, the member runs without it.",
    )
    status_period_s: float = Field(
        default=2.0,
        gt=0,
        le=300,
        description="How often the member writes its status to Redis (GET /admin/status); missing for 3 periods "
        "reads as down.",
    )

    @field_validator("rates")
    @classmethod
    def _rates(cls, v: str) -> str:
        from core.behavior.encoding import RATES

        names = [r.strip() for r in v.split(",") if r.strip()]
        unknown = [r for r in names if r not in RATES]
        if not names or unknown:
            raise ValueError(
                f"RLHB_AGG_RATES {v!r}: unknown or empty rates {unknown}; choose from {sorted(RATES)} "
                "(comma-separated), or add a row to RATES in core/behavior/encoding.py"
            )
        return ",".join(names)

    @model_validator(mode="after")
    def _retention(self) -> AggregatorSettings:
        # A retry of an accepted event must still find its dedupe entry: the keys outlive the event age.
        if self.key_ttl_s and self.key_ttl_s <= self.max_event_age_s:
            raise ValueError(
                f"RLHB_AGG_KEY_TTL_S ({self.key_ttl_s:g}) must exceed RLHB_AGG_MAX_EVENT_AGE_S "
                f"({self.max_event_age_s:g}): dedupe entries must outlive every event that can still be accepted; "
                "set 0 for the default (the age + 1 day)"
            )
        return self

    @property
    def rate_names(self) -> tuple[str, ...]:
        return tuple(self.rates.split(","))


def unknown_key_message(variable: str, key: str, known: list[str] | tuple[str, ...], where: str) -> str:
    """``VAR: no field 'x'`` with the closest names and where the fields are listed (TRL style)."""
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return (
        f"{variable}: {where} has no field {key!r}; {hint}known fields: {', '.join(sorted(known))}. "
        "Fix or unset the variable (`rlhb config env trainer` lists every trainer variable)."
    )


def nested_env(prefix: str, values: Mapping[str, Any]) -> dict[str, str]:
    """The variables that set ``values`` in the group ``prefix``: the inverse of the parsing.

    ``nested_env("RLHB_TRAINER_ALGO", {"batch_size": 8, "head_weights": {"view": 0.5}})`` ->
    ``{"RLHB_TRAINER_ALGO__BATCH_SIZE": "8", "RLHB_TRAINER_ALGO__HEAD_WEIGHTS__VIEW": "0.5"}``.
    Tuples become comma-separated lists, None ``none``, booleans ``true``/``false``.
    """
    env: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}__{key}".upper()
        if isinstance(value, Mapping):
            env.update(nested_env(name, value))
        elif isinstance(value, list | tuple):
            env[name] = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            env[name] = "true" if value else "false"
        else:
            env[name] = "none" if value is None else str(value)
    return env


class GateSettings(BaseModel):
    """Thresholds and sizes of the publication gate's checks (trainer/gate.py): ``RLHB_TRAINER_GATE__<FIELD>``.

    Also the gate's config object itself (``trainer.gate.GateConfig`` is this class).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kl_bound: float = Field(
        default=0.5,
        description="Largest allowed mean per-token KL(candidate || reference) on the candidate's own answers.",
    )
    kl_reference: Literal["parent", "base"] = Field(
        default="parent",
        description="The KL check's reference: 'parent' (the active version the candidate would replace; the base "
        "model while base is active) bounds each round's step, so continual rounds are not blocked by the distance "
        "earlier rounds already moved; 'base' bounds the total distance from the base model. Both are reported "
        "(kl_token, kl_token_base).",
    )
    reward_tolerance: float = Field(
        default=0.05, description="Largest allowed drop of implicit-reward ranking accuracy below the active version's."
    )
    max_prompts: int = Field(
        default=16,
        description="Held-out prompts (distinct questions under prompt_behavior) the candidate answers for the KL "
        "check and the behavior guard.",
    )
    answers_per_prompt: int = Field(
        default=1,
        description="Sampled answers per held-out prompt (KL check and behavior guard): more answers per question "
        "make the guard's shares less noisy where held-out questions are few.",
    )
    prompt_behavior: Literal["served", "record"] = Field(
        default="served",
        description="The behavior sentence the KL check's and the behavior guard's prompts carry: 'served' (the "
        "sentence the API serves, the most preferred one of the stored encoding: the answers users will see) or "
        "'record' (each held-out record's own logged sentence). The ranking check always scores a logged answer "
        "under its record's own sentence.",
    )
    max_new_tokens: int = Field(default=32, description="Length of the candidate's answers for the KL check.")
    max_records: int = Field(default=64, description="Held-out logged answers scored for the ranking check.")
    max_response_tokens: int = Field(
        default=96, description="Logged answers are cut to this many tokens before scoring."
    )
    min_reward_gap: float = Field(
        default=0.1, description="Two records form a pair only if their shaped rewards differ by at least this."
    )
    min_pairs: int = Field(
        default=10, description="Fewer pairs than this: the reward check is skipped (not enough evidence either way)."
    )
    batch_size: int = Field(default=8, description="Sequences per forward pass.")
    seed: int = Field(
        default=0, description="Sampling seed for the KL answers (trainer: unset means RLHB_TRAINER_SEED)."
    )
    threads: int = Field(
        default=0, description="torch intra-op threads while gating (0 = leave torch's setting; restored afterwards)."
    )
    # behavior guard: the candidate's and its parent's answers to the same held-out prompts
    behavior_guard: bool = Field(
        default=True,
        description="Compare the candidate's answers with its parent's (the active version, or the base model) "
        "on the KL check's held-out prompts, same sampling and seed, and block a move past the bounds below "
        "(reward hacking: terse, empty, repetitive, off-topic or refusing answers). false skips it.",
    )
    guard_temperature: float = Field(
        default=1.0,
        description="Sampling temperature of the behavior guard's answers, candidate's and parent's (full vocabulary, "
        "top_p 1). Set it to the serving temperature so the guard sees answers as users get them (rlhb demo does); "
        "the KL check always samples at 1, where its bound was measured. Behavior guard.",
    )
    near_empty_words: int = Field(
        default=4,
        description="An answer with fewer words than this counts as near-empty (behavior guard); 4, as the demo's "
        "quality report (rlhb/evaluation/quality.py) and PPO's short_answer_words count it.",
    )
    max_near_empty_increase: float = Field(
        default=0.10,
        description="Largest allowed rise of the near-empty share, candidate minus parent, in absolute share "
        "points (0.10: from 0.02 to 0.12). Behavior guard.",
    )
    max_length_drop: float = Field(
        default=0.6,
        description="Largest allowed relative drop of the mean answer length in words, 1 - candidate/parent "
        "(0.6: 25 words may become 10, not 9). Behavior guard.",
    )
    max_repetition_increase: float = Field(
        default=0.10,
        description="Largest allowed rise of the mean share of repeated 3-grams per answer, candidate minus "
        "parent. Behavior guard.",
    )
    max_relevance_drop: float = Field(
        default=0.25,
        description="Largest allowed relative drop of the mean question-answer relevance (MiniLM cosine), "
        "(parent - candidate) / parent, the parent's read as at least 0.2 (unrelated text scores 0-0.15: "
        "nothing to lose). Behavior guard.",
    )
    max_unfinished_increase: float = Field(
        default=0.20,
        description="Largest allowed rise of the share of answers that stop mid-sentence (cut off by the token "
        "budget; core/text_measures.py ends_cleanly), candidate minus parent, in absolute share points. Measured "
        "at max_new_tokens: set it to the serving budget, or answers cut there only in the gate count. Behavior "
        "guard.",
    )
    max_refusal_increase: float = Field(
        default=0.10,
        description='Largest allowed rise of the share of answers that open like a refusal ("I cannot", '
        '"I\'m sorry, but", "As an AI"; core/text_measures.py), in absolute share points. Behavior guard.',
    )

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            known = list(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    raise ValueError(
                        unknown_key_message(f"RLHB_TRAINER_GATE__{str(key).upper()}", str(key), known, "the gate")
                    )
        return data

    @model_validator(mode="after")
    def _check(self) -> GateSettings:
        if not 0 < self.guard_temperature <= 2:
            raise ValueError(f"guard_temperature must be in (0, 2]; got {self.guard_temperature}. Typical: 0.7-1.0.")
        if not self.kl_bound > 0:
            raise ValueError(f"kl_bound must be > 0 (nats per token); got {self.kl_bound}. Typical: 0.1-1.0.")
        if not 0 <= self.reward_tolerance < 1:
            raise ValueError(f"reward_tolerance must be in [0, 1) (accuracy points); got {self.reward_tolerance}.")
        for name in (
            "max_prompts", "answers_per_prompt", "max_new_tokens", "max_records", "max_response_tokens", "batch_size",
            "near_empty_words",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}.")
        for name in (
            "max_near_empty_increase", "max_length_drop", "max_repetition_increase", "max_relevance_drop",
            "max_refusal_increase", "max_unfinished_increase",
        ):  # fmt: skip
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(
                    f"{name} must be in [0, 1] (a share or a relative drop; 1 disables the bound); "
                    f"got {getattr(self, name)}."
                )
        return self


# Variables that held JSON or moved into a group: a deployment that still sets them stops with the new names.
MOVED_TRAINER_VARIABLES = {
    "RLHB_TRAINER_ALGORITHM_CONFIG": "one variable per field: RLHB_TRAINER_ALGO__<FIELD>=<value> "
    "(e.g. RLHB_TRAINER_ALGO__BATCH_SIZE=8)",
    "RLHB_TRAINER_GATE_CONFIG": "one variable per field: RLHB_TRAINER_GATE__<FIELD>=<value> "
    "(e.g. RLHB_TRAINER_GATE__MAX_PROMPTS=8)",
    "RLHB_TRAINER_ALGO": "one variable per field, not JSON: RLHB_TRAINER_ALGO__<FIELD>=<value>",
    "RLHB_TRAINER_GATE": "one variable per field, not JSON: RLHB_TRAINER_GATE__<FIELD>=<value>",
    "RLHB_TRAINER_KL_BOUND": "RLHB_TRAINER_GATE__KL_BOUND",
    "RLHB_TRAINER_REWARD_TOLERANCE": "RLHB_TRAINER_GATE__REWARD_TOLERANCE",
}


class TrainerSettings(CommonSettings):
    """The background trainer process (`rlhb trainer`, trainer/loop.py)."""

    model_config = SettingsConfigDict(env_prefix="RLHB_TRAINER_", extra="ignore")

    group_id: str = Field(default="rlhb-trainer", description="Kafka consumer group for behavior records.")
    algorithm: str = Field(
        default="rlhb", pattern="^(rlhb|rlhbc|rlhf|sft|pro)$", description="Algorithm of every round: rlhb, rlhbc, "
        "rlhf, sft or pro (POST /admin/train may ask for another one for one round)."
    )  # fmt: skip
    records_per_round: int = Field(default=200, ge=1, description="M: new records that trigger a round.")
    buffer_size: int = Field(default=20_000, ge=10, description="Replay buffer bound (latest per impression).")
    keep_versions: int = Field(default=10, ge=2, description="K: adapter versions kept on disk.")
    max_poll_interval_ms: int = Field(
        default=10_000, ge=1000, description="kafka-python takes the group rebalance timeout from this."
    )
    steps_per_round: int = Field(default=20, ge=1, description="Training iterations per round.")
    min_records: int = Field(default=16, ge=1, description="A round needs at least this many training records.")
    sample_size: int = Field(default=2000, ge=1, description="Records drawn from the buffer for one round.")
    heldout_fraction: float = Field(default=0.2, gt=0, lt=1, description="Share of queries held out for the gate.")
    recency_half_life: float = Field(default=5000, ge=0, description="Sampling half-life in records (0: uniform).")
    replay_share: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Continual rounds: a round draws the records updated since the active version's training data "
        "first and older ones as this share of its sample (0.25: one old record for three new). Unset: one "
        "recency-weighted draw from the whole buffer, which at demo scale takes nearly all of it (E50: two old-taste "
        "records for each new one after a drift).",
    )
    seed: int = Field(default=0, description="Base seed; round r uses seed + r.")
    poll_timeout_ms: int = Field(default=500, ge=10, le=10_000, description="Consumer poll wait.")
    session_timeout_ms: int = Field(default=10_000, ge=1000, description="Group session timeout.")
    guardrail: bool = Field(default=False, description="Roll back automatically on a significant live like-rate drop.")
    guardrail_alpha: float = Field(default=0.05, gt=0, lt=1, description="Guardrail false-rollback bound.")
    guardrail_tau: float = Field(default=0.05, gt=0, lt=1, description="Guardrail mSPRT mixture std (rate points).")
    guardrail_margin: float = Field(default=0.0, ge=0, lt=1, description="Drops below this never roll back.")
    guardrail_min_views: int = Field(default=100, ge=1, description="Views per version before the guardrail acts.")
    quarantine_rejected_data: bool = Field(
        default=True,
        description="Data rollback: when the live guardrail rolls a version back, or rejects an A/B candidate, "
        "because users liked it significantly less, the records it learned from beyond its parent (their "
        "updated_at window) leave the replay buffer and stay out, so the next round does not learn the same "
        "thing again (trainer/data_windows.py). A behavior-guard rejection keeps the data. false keeps "
        "everything.",
    )
    ab_share: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Share of live traffic a candidate that passed the gate serves next to the active version "
        "(an A/B trial) until the live guardrail promotes or rejects it; 0: promote at once.",
    )
    ab_min_views: int = Field(
        default=200,
        ge=1,
        description="Views each A/B arm needs without a significant drop before the candidate is promoted "
        "(a significant drop rejects it earlier; the RLHB_TRAINER_GUARDRAIL_* thresholds apply).",
    )
    ab_guard_min_answers: int = Field(
        default=30,
        ge=1,
        description="Answers each A/B arm needs before the live behavior guard compares them (the gate's bounds on "
        "near-empty, refusal, unfinished and repetition shares, length and relevance) at the promotion look; with "
        "fewer, the decision says the guard was skipped. RLHB_TRAINER_GATE__BEHAVIOR_GUARD=false turns it off.",
    )
    metrics_port: int = Field(
        default=9102,
        ge=0,
        le=65535,
        description="Port of the trainer's Prometheus /metrics (round phase, step, iteration seconds, D accuracy); "
        "0: off. Taken: a warning, the trainer runs without it.",
    )
    status_period_s: float = Field(
        default=2.0,
        gt=0,
        le=300,
        description="How often the trainer writes its status and training curve to Redis (GET /admin/status, the "
        "dashboard); missing for 3 periods reads as down.",
    )
    dist_strategy: str = Field(
        default="replicate",
        pattern="^(replicate|fsdp)$",
        description="Under torchrun: replicate (every rank holds the whole base model) or fsdp (the policy's "
        "frozen base weights are sharded over the ranks with FSDP2, for a model that does not fit one GPU; "
        "rollouts are then slow: use vLLM rollouts). One process: ignored. docs/production.md.",
    )
    gate: GateSettings = Field(
        default_factory=GateSettings,
        description="The publication gate, one variable per field: RLHB_TRAINER_GATE__KL_BOUND=0.3.",
    )
    algo: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the algorithm's Config (trainer/config.py), one variable per field: "
        "RLHB_TRAINER_ALGO__KL_COEF=0.02; dict fields per key: RLHB_TRAINER_ALGO__HEAD_WEIGHTS__VIEW=0.5. "
        "Checked against the configured algorithm when the trainer starts.",
    )

    @model_validator(mode="after")
    def _no_moved_variables(self) -> TrainerSettings:
        present = {k.upper() for k in os.environ}
        for old, new in MOVED_TRAINER_VARIABLES.items():
            if old in present:
                raise ValueError(f"{old} is no longer read; use {new}, then unset {old}")
        return self
