"""Settings precedence: flag, then environment, then config file, then default."""

from __future__ import annotations

from pathlib import Path

import pytest
from scoring.errors import ConfigError
from scoring.settings import load


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "scoring.toml"
    config.write_text('home = "/from/file"\nort_threads = 3\nspark_master = "local[1]"\n')
    monkeypatch.setenv("SCORING_CONFIG", str(config))
    monkeypatch.setenv("SCORING_HOME", "/from/env")
    monkeypatch.delenv("SCORING_SPARK_MASTER", raising=False)
    settings = load()
    assert settings.home == Path("/from/env")
    assert settings.ort_threads == 3 and settings.spark_master == "local[1]"
    assert load(home="/from/flag").home == Path("/from/flag")


def test_home_never_comes_from_dollar_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCORING_HOME", raising=False)
    monkeypatch.delenv("SCORING_CONFIG", raising=False)
    monkeypatch.setenv("HOME", "/somewhere/else")
    assert load().home == Path.cwd() / ".scoring"


def test_embedded_mlflow_store_lives_under_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = load(home="/data")
    assert settings.mlflow_tracking_uri == "sqlite:////data/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert load().mlflow_tracking_uri == "http://127.0.0.1:5000"


def test_invalid_values_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORING_ORT_THREADS", "0")
    with pytest.raises(ConfigError, match="ort_threads"):
        load()


def test_missing_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORING_CONFIG", "/no/such/file.toml")
    with pytest.raises(ConfigError, match="SCORING_CONFIG"):
        load()


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # A scheduler may template every variable, passing "" for the ones not configured.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv("SCORING_CONFIG", raising=False)
    settings = load(home="/data")
    assert settings.tracking_uri is None
    assert settings.mlflow_tracking_uri == "sqlite:////data/mlflow.db"


def test_jar_folders_follow_the_checkout_or_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scoring import settings

    for variable in ("SCORING_CONFIG", "SCORING_JARS_DIR", "SCORING_KAFKA_JARS_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("SCORING_HOME", str(tmp_path))
    assert settings.PROJECT_ROOT is not None, "the tests run from a checkout"
    assert load().jars_dir == settings.PROJECT_ROOT / "infra" / "jars"
    assert load().kafka_jars_dir == settings.PROJECT_ROOT / "infra" / "kafka" / "jars"

    monkeypatch.setattr(settings, "PROJECT_ROOT", None)  # as installed from a wheel
    assert load().jars_dir == tmp_path / "jars" / "spark"
    assert load().kafka_jars_dir == tmp_path / "jars" / "kafka"
    monkeypatch.setenv("SCORING_KAFKA_JARS_DIR", "/opt/kafka/libs")
    assert load().kafka_jars_dir == Path("/opt/kafka/libs")
