"""Settings: precedence (flag, environment, config file, default), the file's keys and
paths, and the data dir."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from scoring.errors import ConfigError
from scoring.settings import ENV, Settings, load


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


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A settings file named by SCORING_CONFIG, the only source of settings besides defaults."""
    for variable in ENV.values():
        monkeypatch.delenv(variable, raising=False)
    file = tmp_path / "conf" / "scoring.toml"
    file.parent.mkdir()
    monkeypatch.setenv("SCORING_CONFIG", str(file))
    return file


def test_an_unknown_key_names_the_file_the_keys_and_the_closest(config: Path) -> None:
    config.write_text('kafka_bootstrap_servrs = "broker:9092"\n')
    with pytest.raises(ConfigError) as error:
        load()
    message = str(error.value)
    assert str(config) in message and "'kafka_bootstrap_servrs'" in message
    assert "did you mean 'kafka_bootstrap'?" in message
    assert ", ".join(Settings.model_fields) in message


@pytest.mark.parametrize("key", ["KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"])
def test_a_variable_name_is_not_a_key_but_points_to_its_setting(config: Path, key: str) -> None:
    config.write_text(f'{key} = "broker:9092"\nSCORING_HOME = "/data"\n')
    with pytest.raises(ConfigError) as error:
        load()
    message = str(error.value)
    assert f"{key!r} (did you mean 'kafka_bootstrap'?)" in message
    assert "'SCORING_HOME' (did you mean 'home'?)" in message


def test_an_unknown_flag_is_a_config_error_with_the_keys() -> None:
    with pytest.raises(ConfigError, match=r"'spark_mastr' \(did you mean 'spark_master'\?\)"):
        load(spark_mastr="local[1]")


def test_invalid_toml_is_one_error_naming_the_file_and_line(config: Path) -> None:
    config.write_text('home = "/data"\nort_threads = \n')
    with pytest.raises(ConfigError) as error:
        load()
    message = str(error.value)
    assert message.startswith(f"Not valid TOML in the settings file {config} (SCORING_CONFIG)")
    assert "line 2" in message and "\n" not in message
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_the_cli_says_invalid_toml_in_one_line(config: Path) -> None:
    from scoring.cli import app
    from typer.testing import CliRunner

    config.write_text("home = \n")
    result = CliRunner().invoke(app, ["batch", "spark-conf"])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Not valid TOML in the settings file")
    assert str(config) in lines[0] and "line 1" in lines[0]


def test_relative_paths_in_the_file_are_relative_to_its_folder(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config.write_text(
        'home = "data"\njars_dir = "../jars"\nkafka_jars_dir = "/opt/kafka"\n'
        'kafka_config = "client.properties"\n'
    )
    monkeypatch.chdir(tmp_path)
    folder = config.parent
    settings = load()
    assert settings.home == folder / "data"
    assert settings.jars_dir == folder / ".." / "jars"
    assert settings.kafka_jars_dir == Path("/opt/kafka")
    assert settings.kafka_config == folder / "client.properties"
    # From a variable or a flag a relative path stays relative to the current folder.
    monkeypatch.setenv("SCORING_HOME", "here")
    assert load().home == Path("here")
    assert load(kafka_config="there.properties").kafka_config == Path("there.properties")


def test_the_default_data_dir_is_announced_once_when_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("SCORING_HOME", raising=False)
    monkeypatch.delenv("SCORING_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="scoring.settings"):
        assert load().make_home() == tmp_path / ".scoring"
        assert load().make_home() == tmp_path / ".scoring"
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"creating the data dir {tmp_path / '.scoring'} (SCORING_HOME is unset)"]


def test_a_configured_data_dir_is_created_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("SCORING_CONFIG", raising=False)
    monkeypatch.setenv("SCORING_HOME", str(tmp_path / "data"))
    with caplog.at_level(logging.WARNING, logger="scoring.settings"):
        assert load().make_home().is_dir()
    assert caplog.records == []


def test_messages_say_where_the_data_dir_came_from(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config.write_text('spark_master = "local[1]"\n')
    assert load().home_origin == (
        "SCORING_HOME is unset, so the data dir is .scoring in the current folder"
    )
    config.write_text('home = "data"\n')
    assert load().home_origin == f"the data dir `home` names in {config}"
    monkeypatch.setenv("SCORING_HOME", "/data")
    assert load().home_origin == "the data dir SCORING_HOME names"
