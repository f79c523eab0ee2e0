"""Typed settings, read once.

Precedence for every setting: CLI flag (passed as keyword arguments to :func:`load`),
then the environment variable named in :data:`ENV`, then the TOML file named by
``SCORING_CONFIG``, then the default. Every environment variable the project reads is
declared here.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from scoring.errors import ConfigError

__all__ = ["ENV", "PROJECT_ROOT", "Settings", "load"]


def _checkout() -> Path | None:
    """The repository root when this package runs from a checkout (shared/scoring/)."""
    root = Path(__file__).resolve().parents[2]
    is_checkout = (root / "pyproject.toml").is_file() and (root / "infra").is_dir()
    return root if is_checkout else None


# The checkout this package runs from, or None when it is installed from a wheel: then
# there is no infra/ folder, and every default that would live there moves under
# SCORING_HOME instead (see the jar folders below).
PROJECT_ROOT = _checkout()

# Every environment variable the project reads, in one place.
ENV = {
    "home": "SCORING_HOME",
    "config": "SCORING_CONFIG",
    "jars_dir": "SCORING_JARS_DIR",
    "kafka_jars_dir": "SCORING_KAFKA_JARS_DIR",
    "tracking_uri": "MLFLOW_TRACKING_URI",
    "registry_uri": "MLFLOW_REGISTRY_URI",
    "ort_threads": "SCORING_ORT_THREADS",
    "spark_master": "SCORING_SPARK_MASTER",
    "local_driver_memory": "SCORING_LOCAL_DRIVER_MEMORY",
    "kafka_bootstrap": "KAFKA_BOOTSTRAP_SERVERS",
    "kafka_config": "SCORING_KAFKA_CONFIG",
    # Object storage: the standard AWS variables. Credentials (AWS_ACCESS_KEY_ID,
    # AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE) are read by the AWS SDKs in
    # Spark (S3A) and delta-rs themselves, never by this package, so no secret is held here.
    "s3_endpoint": "AWS_ENDPOINT_URL",
    "aws_region": "AWS_REGION",
}


class Settings(BaseSettings):
    """Settings shared by the CLI, the batch job and the stream processor."""

    # Field names are accepted as keyword arguments (CLI flags); the environment is read
    # only under the declared names, so e.g. $HOME never leaks into `home`.
    # An empty variable counts as unset: a scheduler that templates every variable (say
    # MLFLOW_TRACKING_URI="" when none is configured) gets the default, not "".
    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        populate_by_name=True,
        case_sensitive=True,
        env_ignore_empty=True,
    )

    home: Path = Field(
        default_factory=lambda: Path.cwd() / ".scoring",
        validation_alias=ENV["home"],
        description="Data dir: embedded MLflow store, demo tables, local services' state.",
    )
    jars_dir: Path = Field(
        default_factory=lambda data: _jars_default(data["home"], "spark"),
        validation_alias=ENV["jars_dir"],
        description="Folder of the Delta Lake jars Spark loads (Maven, infra/pom.xml). "
        "Default: infra/jars of the checkout, else SCORING_HOME/jars/spark.",
    )
    kafka_jars_dir: Path = Field(
        default_factory=lambda data: _jars_default(data["home"], "kafka"),
        validation_alias=ENV["kafka_jars_dir"],
        description="Folder of the local Kafka broker's jars (Maven, infra/kafka/pom.xml). "
        "Default: infra/kafka/jars of the checkout, else SCORING_HOME/jars/kafka.",
    )
    tracking_uri: str | None = Field(default=None, validation_alias=ENV["tracking_uri"])
    registry_uri: str | None = Field(default=None, validation_alias=ENV["registry_uri"])
    ort_threads: int = Field(default=1, ge=1, validation_alias=ENV["ort_threads"])
    spark_master: str = Field(default="local[*]", validation_alias=ENV["spark_master"])
    local_driver_memory: str = Field(
        default="4g",
        validation_alias=ENV["local_driver_memory"],
        description="spark.driver.memory on a local[...] master, where the driver JVM is "
        "also the executor; Spark's own 1g default slows the writes of a large date.",
    )
    kafka_bootstrap: str | None = Field(
        default=None,
        validation_alias=ENV["kafka_bootstrap"],
        description="host:port[,host:port] of the Kafka cluster the stream processor uses.",
    )
    kafka_config: Path | None = Field(
        default=None,
        validation_alias=ENV["kafka_config"],
        description="Kafka client properties file (kcat -F format): security and other "
        "librdkafka settings of every Kafka client (scoring.stream.kafka_config).",
    )

    s3_endpoint: str | None = Field(
        default=None,
        validation_alias=ENV["s3_endpoint"],
        description="S3-compatible endpoint (e.g. http://127.0.0.1:9000); path-style access.",
    )
    aws_region: str | None = Field(
        default=None,
        validation_alias=ENV["aws_region"],
        description="Region of the buckets (us-east-1 when a custom endpoint has none).",
    )

    @property
    def s3_region(self) -> str | None:
        """The region S3 clients use: the configured one, else us-east-1 for a custom endpoint."""
        return self.aws_region or ("us-east-1" if self.s3_endpoint else None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(ENV["config"])
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @cached_property
    def mlflow_tracking_uri(self) -> str:
        """The configured tracking URI, or the embedded SQLite store under ``home``."""
        return self.tracking_uri or f"sqlite:///{self.home.resolve() / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home.resolve() / "mlartifacts"


def _jars_default(home: Path, kind: str) -> Path:
    """Where ``make jars`` / ``make kafka-jars`` put the jars; under the data dir without one."""
    if PROJECT_ROOT is not None:
        folder = {"spark": "jars", "kafka": "kafka/jars"}[kind]
        return PROJECT_ROOT / "infra" / folder
    return home / "jars" / kind


def load(**overrides: Any) -> Settings:
    """Read the settings; keyword arguments (CLI flags) win. ``None`` means "not given"."""
    config_file = os.environ.get(ENV["config"])
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"{ENV['config']}={config_file} does not name a readable TOML file.")
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        field_of = {variable: field for field, variable in ENV.items()}
        problems = "; ".join(
            f"{_name(field_of.get(str(e['loc'][0]), str(e['loc'][0])))}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(
            f"Invalid settings ({problems}). Check the flags, the environment variables "
            f"{', '.join(sorted(ENV.values()))} and the file named by {ENV['config']}."
        ) from exc


def _name(field: str) -> str:
    """How a user can set ``field``: its flag and its variable."""
    variable = ENV.get(field)
    return f"{field} ({variable})" if variable else field
