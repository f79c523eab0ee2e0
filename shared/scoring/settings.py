"""Typed settings, read once.

Precedence for every setting: CLI flag (passed as keyword arguments to :func:`load`),
then the environment variable named in :data:`ENV`, then the TOML file named by
``SCORING_CONFIG``, then the default. Every environment variable the project reads is
declared here. The README's table of them is rendered from this module by
``python -m scoring.settings_table``.
"""

from __future__ import annotations

import logging
import os
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Any, get_args

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from scoring.errors import ConfigError, did_you_mean

__all__ = ["ENV", "PROJECT_ROOT", "Settings", "load"]

log = logging.getLogger(__name__)


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

    # Every description is a row of the README's table (scoring.settings_table), in
    # Markdown; the defaults that are computed are spelled out there.
    home: Path = Field(
        default_factory=lambda: Path.cwd() / ".scoring",
        validation_alias=ENV["home"],
        description="Data dir: the embedded MLflow registry (`mlflow.db`, `mlartifacts/`), "
        "the demo's tables, the local services' state. Set it to use one data dir from "
        "any folder.",
    )
    jars_dir: Path = Field(
        default_factory=lambda data: _jars_default(data["home"], "spark"),
        validation_alias=ENV["jars_dir"],
        description="Folder of the Delta Lake jars Spark loads (`make jars`: Maven, "
        "`infra/pom.xml`).",
    )
    kafka_jars_dir: Path = Field(
        default_factory=lambda data: _jars_default(data["home"], "kafka"),
        validation_alias=ENV["kafka_jars_dir"],
        description="Folder of the local Kafka broker's jars (`make kafka-jars`: Maven, "
        "`infra/kafka/pom.xml`), for `scoring dev up` and the tests.",
    )
    tracking_uri: str | None = Field(
        default=None,
        validation_alias=ENV["tracking_uri"],
        description="MLflow tracking server or database holding runs and, unless "
        "`registry_uri` says otherwise, the model registry.",
    )
    registry_uri: str | None = Field(
        default=None,
        validation_alias=ENV["registry_uri"],
        description="A separate MLflow model registry.",
    )
    ort_threads: int = Field(
        default=1,
        ge=1,
        validation_alias=ENV["ort_threads"],
        description="onnxruntime intra-op threads of the stream processor's model sessions "
        "(the arrow batch engine runs one per call, `--threads` calls at once; "
        "`scoring.load_model` takes `threads=`).",
    )
    spark_master: str = Field(
        default="local[*]",
        validation_alias=ENV["spark_master"],
        description="Spark master of `scoring batch submit` and of Spark jobs run in this "
        "process (`scoring batch run --engine python`, the rollout gates on Spark).",
    )
    local_driver_memory: str = Field(
        default="4g",
        validation_alias=ENV["local_driver_memory"],
        description="`spark.driver.memory` on a `local[...]` master, where the driver JVM is "
        "also the executor (Spark's own 1g slows the writes of a large date); other masters "
        "keep the deployment's.",
    )
    kafka_bootstrap: str | None = Field(
        default=None,
        validation_alias=ENV["kafka_bootstrap"],
        description="`host:port[,host:port]` of the Kafka cluster of the stream processor, "
        "the parity gate and `model compare`.",
    )
    kafka_config: Path | None = Field(
        default=None,
        validation_alias=ENV["kafka_config"],
        description="Kafka client properties file (kcat -F format: TLS, SASL, mTLS and "
        "other librdkafka settings) of every Kafka client; see "
        "[Secured Kafka](#secured-kafka).",
    )

    s3_endpoint: str | None = Field(
        default=None,
        validation_alias=ENV["s3_endpoint"],
        description="An S3-compatible endpoint (e.g. `http://127.0.0.1:9000`); path-style access.",
    )
    aws_region: str | None = Field(
        default=None,
        validation_alias=ENV["aws_region"],
        description="Region of the buckets.",
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
            sources.append(_ConfigFile(settings_cls, toml_file=config_file))
        return tuple(sources)

    @property
    def home_origin(self) -> str:
        """Where ``home`` came from, for messages that name the data dir."""
        if "home" not in self.model_fields_set:
            return f"{ENV['home']} is unset, so the data dir is .scoring in the current folder"
        if os.environ.get(ENV["home"]):
            return f"the data dir {ENV['home']} names"
        config_file = os.environ.get(ENV["config"])
        if config_file:  # no flag sets it
            return f"the data dir `home` names in {config_file}"
        return "the data dir given to scoring.settings.load()"

    def make_home(self) -> Path:
        """The data dir, resolved, created if missing.

        Creating the default one (SCORING_HOME unset: ``.scoring`` in the current folder)
        is logged as a warning, on stderr in every entry point: a command run from another
        folder would otherwise leave its state, an empty registry included, where nobody
        looks.
        """
        home = self.home.resolve()
        if not home.is_dir() and "home" not in self.model_fields_set:
            log.warning("creating the data dir %s (%s is unset)", home, ENV["home"])
        home.mkdir(parents=True, exist_ok=True)
        return home

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


class _ConfigFile(TomlConfigSettingsSource):
    """The TOML file named by SCORING_CONFIG: its keys are the field names, only.

    A relative path in it is relative to the file's folder, as in other tools' config
    files; from a variable or a flag it stays relative to the current folder.
    """

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        path = Path(file_path).absolute()
        where = f"the settings file {path} ({ENV['config']})"
        try:
            with path.open("rb") as file:
                data = tomllib.load(file)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"Not valid TOML in {where}: {exc}. Fix that line (one `key = value` a "
                "line; README: Configuration)."
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Could not read {where}: {exc}.") from None
        unknown = [key for key in data if key not in Settings.model_fields]
        if unknown:
            raise ConfigError(_unknown_keys(where, unknown))
        for key in _path_fields() & data.keys():
            if isinstance(data[key], str):
                data[key] = str(path.parent / Path(data[key]).expanduser())
        return data


def _path_fields() -> set[str]:
    """The settings that name a file or folder."""
    return {
        name
        for name, field in Settings.model_fields.items()
        if field.annotation is Path or Path in get_args(field.annotation)
    }


def _unknown_keys(where: str, keys: list[str]) -> str:
    """What to say about keys that name no setting: each one's closest setting, the valid ones."""
    described = ", ".join(_with_guess(key) for key in keys)
    plural = "s" if len(keys) > 1 else ""
    return (
        f"Unknown key{plural} in {where}: {described}. The keys are the settings' names: "
        f"{', '.join(Settings.model_fields)} (README: Configuration)."
    )


def _with_guess(key: str) -> str:
    fields = list(Settings.model_fields)
    # One spelling: a variable's name (KAFKA_BOOTSTRAP_SERVERS) is not a key, but it is
    # the likeliest thing to be written instead of one.
    field_of = {variable.lower(): field for field, variable in ENV.items() if field in fields}
    return repr(key) + did_you_mean(field_of.get(key.lower(), key.lower()), fields)


def load(**overrides: Any) -> Settings:
    """Read the settings; keyword arguments (CLI flags) win. ``None`` means "not given"."""
    config_file = os.environ.get(ENV["config"])
    if config_file and not Path(config_file).expanduser().is_file():
        raise ConfigError(f"{ENV['config']}={config_file} does not name a readable TOML file.")
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        extra = [str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden"]
        if extra:
            raise ConfigError(_unknown_keys("the flags given to load()", extra)) from exc
        field_of = {variable: field for field, variable in ENV.items()}
        problems = "; ".join(
            f"{_name(field_of.get(str(e['loc'][0]), str(e['loc'][0])))}: {e['msg']}"
            for e in exc.errors()
        )
        config = ENV["config"]
        file = f"the file {config_file} ({config})" if config_file else f"the file {config} names"
        raise ConfigError(
            f"Invalid settings ({problems}). Check the flags, the environment variables "
            f"{', '.join(sorted(ENV.values()))} and {file}."
        ) from exc


def _name(field: str) -> str:
    """How a user can set ``field``: its flag and its variable."""
    variable = ENV.get(field)
    return f"{field} ({variable})" if variable else field
