"""The spark-submit command carries the jars and the Delta settings (no JVM started)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scoring.batch.spark import submit_command
from scoring.errors import JarsMissingError
from scoring.settings import load


def test_submit_command_carries_jars_and_delta_settings(tmp_path: Path) -> None:
    (tmp_path / "delta-spark_2.13-4.4.0.jar").write_bytes(b"")
    (tmp_path / "delta-storage-4.4.0.jar").write_bytes(b"")
    command = submit_command(
        Path("job.py"),
        ["--date", "2026-11-01"],
        master="spark://h:7077",
        settings=load(jars_dir=tmp_path),
        conf={"spark.executor.memory": "1g"},
    )
    assert command[1:3] == ["--master", "spark://h:7077"]
    confs = dict(c.split("=", 1) for c in command[4:-3:2])
    assert confs["spark.jars"].split(",") == sorted(str(p) for p in tmp_path.glob("*.jar"))
    assert confs["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert confs["spark.driver.bindAddress"] == "127.0.0.1"
    assert confs["spark.executor.memory"] == "1g"
    assert "spark.driver.memory" not in confs  # a cluster's driver is the deployment's choice
    assert command[-3:] == ["job.py", "--date", "2026-11-01"]


def test_a_local_driver_gets_a_heap_for_the_rows(tmp_path: Path) -> None:
    """On local[...] the driver JVM is the executor: Spark's 1g default is not enough."""
    (tmp_path / "delta-spark_2.13-4.4.0.jar").write_bytes(b"")
    settings = load(jars_dir=tmp_path, local_driver_memory="6g")

    def driver_memory(conf: dict[str, str] | None = None) -> str | None:
        command = submit_command(
            Path("job.py"), [], master="local[2]", settings=settings, conf=conf
        )
        return dict(c.split("=", 1) for c in command[4:-1:2]).get("spark.driver.memory")

    assert driver_memory() == "6g"
    assert driver_memory({"spark.driver.memory": "2g"}) == "2g"


def test_missing_jars_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(JarsMissingError, match="make jars"):
        submit_command(Path("job.py"), [], settings=load(jars_dir=tmp_path))


def test_properties_file_carries_the_same_settings(tmp_path: Path) -> None:
    from scoring.batch.spark import properties_text, session_conf

    (tmp_path / "delta-spark_2.13-4.4.0.jar").write_bytes(b"")
    conf = session_conf(load(jars_dir=tmp_path))
    lines = properties_text(conf).splitlines()
    assert dict(line.split("=", 1) for line in lines) == conf
    assert properties_text({"a b": "c:\\d\ne"}) == "a\\ b=c:\\\\d\\ne\n"


def test_s3a_settings_come_from_the_aws_environment_without_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scoring.batch.spark import S3A_CREDENTIALS, session_conf

    (tmp_path / "delta-spark_2.13-4.4.0.jar").write_bytes(b"")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")
    monkeypatch.delenv("AWS_REGION", raising=False)
    conf = session_conf(load(jars_dir=tmp_path))
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.endpoint.region"] == "us-east-1"
    assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"] == S3A_CREDENTIALS
    text = repr(conf)
    assert "example-secret" not in text and "AKIAEXAMPLEKEY" not in text
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    plain = session_conf(load(jars_dir=tmp_path))
    assert "spark.hadoop.fs.s3a.endpoint" not in plain  # real S3: the SDK picks the endpoint


def test_spark_logs_at_warn_from_the_first_line_and_at_info_when_verbose(tmp_path: Path) -> None:
    (tmp_path / "delta-spark_2.13-4.4.0.jar").write_bytes(b"")
    settings = load(jars_dir=tmp_path, home=tmp_path / "home")

    def confs(verbose: bool) -> dict[str, str]:
        command = submit_command(
            Path("job.py"), [], master="local[1]", settings=settings, verbose=verbose
        )
        return dict(c.split("=", 1) for c in command[4:-1:2])

    quiet = confs(verbose=False)
    assert quiet["spark.log.level"] == "WARN"
    option, config = quiet["spark.driver.extraJavaOptions"].split("=", 1)
    assert option == "-Dlog4j2.configurationFile"
    assert "rootLogger.level = warn" in Path(config).read_text().splitlines()
    loud = confs(verbose=True)
    assert loud["spark.log.level"] == "INFO"
    assert "spark.driver.extraJavaOptions" not in loud  # Spark's own profile, at INFO
