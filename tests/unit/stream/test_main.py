"""The stream worker's error paths, and the command line's, never show a secret.

Each test forces an error that carries the secrets (a Kafka password from the client
file's ``${VAR}``, a client key's password written in the file, the AWS secret key of the
environment) and greps everything the run printed or logged for them. The worker's
neighbours are faked (no broker, no model): ``preflight`` passes, ``Processor.run`` fails
or returns what the test needs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from scoring import masking
from scoring.errors import ConfigError, StreamError
from scoring.masking import MASK, SecretsFilter
from scoring.stream import kafka_config
from scoring.stream import main as stream_main
from scoring.stream.processor import Processor
from typer.testing import CliRunner

PASSWORD = "Kafka-Pa55word-from-env"
KEY_PASSWORD = "Key-Pa55word-in-the-file"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SECRETS = (PASSWORD, KEY_PASSWORD, AWS_SECRET)
QUOTING = f"{{'sasl.password': '{PASSWORD}', 'ssl.key.password': '{KEY_PASSWORD}'}} {AWS_SECRET}"


@pytest.fixture(autouse=True)
def _own_secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh process-wide filter per test, taken off the handlers afterwards."""
    fresh = SecretsFilter()
    monkeypatch.setattr(masking, "_SECRETS", fresh)
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "SCORING_KAFKA_CONFIG", "SCORING_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAFKA_PASSWORD", PASSWORD)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")  # the CLI would set it for good
    monkeypatch.setattr(stream_main, "preflight", lambda client: None)
    yield
    for handler in (*logging.getLogger().handlers, logging.lastResort):
        if handler is not None:
            handler.removeFilter(fresh)


def client_file(tmp_path: Path, text: str | None = None) -> Path:
    path = tmp_path / "client.properties"
    path.write_text(
        text
        or "bootstrap.servers=b-1.example.com:9096\n"
        "security.protocol=SASL_SSL\n"
        "sasl.mechanism=SCRAM-SHA-512\n"
        "sasl.username=scoring\n"
        "sasl.password=${KAFKA_PASSWORD}\n"
        f"ssl.key.password={KEY_PASSWORD}\n"
    )
    return path


def worker_args(path: Path) -> list[str]:
    topics = ["--input-topic", "in", "--output-topic", "out", "--dlq-topic", "dlq"]
    return ["--model", "models:/fraud@champion", *topics, "--kafka-config", str(path)]


def run_worker(
    argv: list[str], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> tuple[int, str, str, str]:
    """``main(argv)``: its exit code, stdout, stderr and log."""
    caplog.set_level(logging.DEBUG)
    code = stream_main.main(argv)
    out, err = capsys.readouterr()
    return code, out, err, caplog.text


def assert_no_secret(**texts: str) -> None:
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, f"a secret appears in the {where}:\n{text}"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RuntimeError(f"commit failed with {QUOTING}"), 1),
        (StreamError(f"fenced: {QUOTING}"), 4),
        (ConfigError(f"bad: {QUOTING}"), 2),
    ],
    ids=["unexpected", "stream-error", "config-error"],
)
def test_an_error_mid_batch_quoting_the_secrets_is_masked_everywhere(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    code: int,
) -> None:
    def fail(self: Processor) -> dict[str, int]:
        logging.getLogger("scoring.stream.processor").warning("batch aborted: %s", error)
        raise error

    monkeypatch.setattr(Processor, "run", fail)
    exit_code, out, err, log = run_worker(worker_args(client_file(tmp_path)), capsys, caplog)
    assert exit_code == code
    assert err.startswith("error: ") and MASK in err
    assert "batch aborted: " in log and MASK in log  # the processor's own warning, masked
    if code == 1:
        assert "unexpected RuntimeError" in err and "log above" in err
        assert "Traceback (most recent call last)" in log and "RuntimeError" in log
    assert_no_secret(stdout=out, stderr=err, log=log)


def test_the_summary_is_masked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(Processor, "run", lambda self: {"events_in": 3, "note": QUOTING})
    code, out, err, log = run_worker(worker_args(client_file(tmp_path)), capsys, caplog)
    assert code == 0
    assert '"status": "stopped", "events_in": 3' in out and MASK in out
    assert_no_secret(stdout=out, stderr=err, log=log)


def test_a_thread_dying_with_the_secrets_is_logged_masked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def run(self: Processor) -> dict[str, int]:
        def work() -> None:
            raise RuntimeError(f"commit thread: {QUOTING}")

        thread = threading.Thread(target=work, name="commit")
        thread.start()
        thread.join()
        return {"events_in": 0}

    monkeypatch.setattr(Processor, "run", run)
    before = threading.excepthook
    code, out, err, log = run_worker(worker_args(client_file(tmp_path)), capsys, caplog)
    assert code == 0
    assert "uncaught error in thread commit" in log and "RuntimeError: commit thread" in log
    assert threading.excepthook is before  # put back
    assert_no_secret(stdout=out, stderr=err, log=log)


@pytest.mark.parametrize(
    "line",
    [
        f"sasl.password: {PASSWORD}",  # no '='
        f"sasl password={PASSWORD}",  # a key no property has
        f"{KEY_PASSWORD}",  # the value on a line of its own
        f"sasl.password={PASSWORD}${{KAFKA_PASSWORD",  # an unclosed reference
        f"ssl.key.password={KEY_PASSWORD}",  # a repeated key
    ],
)
def test_a_malformed_line_holding_a_secret_is_refused_without_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    line: str,
) -> None:
    """The parser never quotes a line: the secret on a broken line is not known to the mask."""
    text = (
        "bootstrap.servers=b:9096\nsecurity.protocol=SSL\n"
        f"ssl.key.password={KEY_PASSWORD}\n{line}\n"
    )
    path = client_file(tmp_path, text)
    code, out, err, log = run_worker(worker_args(path), capsys, caplog)
    assert code == 2
    assert f"{path}, line 4" in err
    assert_no_secret(stdout=out, stderr=err, log=log)


def test_a_mistyped_property_on_the_command_line_is_not_quoted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    argv = [*worker_args(client_file(tmp_path)), "-X", f"sasl.password:{PASSWORD}"]
    code, out, err, log = run_worker(argv, capsys, caplog)
    assert code == 2 and "KEY=VALUE" in err
    assert_no_secret(stdout=out, stderr=err, log=log)


def test_the_scoring_stream_run_command_masks_them_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from scoring.cli import app

    def fail(self: Processor) -> dict[str, int]:
        raise RuntimeError(f"mid-batch: {QUOTING}")

    monkeypatch.setattr(Processor, "run", fail)
    caplog.set_level(logging.DEBUG)
    result = CliRunner().invoke(app, ["stream", "run", *worker_args(client_file(tmp_path))])
    assert result.exit_code == 1, result.output
    assert "error: unexpected RuntimeError: mid-batch" in result.stderr
    assert "Traceback" in caplog.text
    assert_no_secret(stdout=result.stdout, stderr=result.stderr, log=caplog.text)


def test_the_batch_run_command_masks_an_unexpected_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``scoring batch run``: the job reports its own errors, the command anything else."""
    from scoring.batch import main as batch_main
    from scoring.cli import app

    def fail(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise OSError(f"Generic S3 error: signing with {AWS_SECRET} was refused")

    monkeypatch.setattr(batch_main, "run_job", fail)
    caplog.set_level(logging.DEBUG)
    args = [
        "--model",
        "m",
        "--source",
        "s3://lake/t",
        "--target",
        "s3://lake/s",
        "--date",
        "2026-11-01",
    ]
    result = CliRunner().invoke(app, ["batch", "run", *args])
    assert result.exit_code == 1, result.output
    assert "error: unexpected OSError: Generic S3 error" in result.stderr
    assert "Traceback" in caplog.text and "OSError" in caplog.text
    assert_no_secret(stdout=result.stdout, stderr=result.stderr, log=caplog.text)


def test_the_batch_job_writes_a_failed_summary_without_the_secret(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``jobs/batch/score.py`` under spark-submit: no CLI around it catches anything."""
    from scoring.batch import main as batch_main

    def fail(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise OSError(f"Generic S3 error: signing with {AWS_SECRET} was refused")

    monkeypatch.setattr(batch_main, "run_job", fail)
    caplog.set_level(logging.DEBUG)
    summary = tmp_path / "summary.json"
    args = ["--model", "m", "--source", "s3://lake/t", "--target", "s3://lake/s"]
    assert batch_main.main([*args, "--summary-file", str(summary)]) == 1
    out, err = capsys.readouterr()
    written = json.loads(summary.read_text())
    assert written["status"] == "failed" and written["error"] == "OSError", written
    assert "Traceback" in caplog.text
    assert_no_secret(stdout=out, stderr=err, log=caplog.text, summary=summary.read_text())


def test_a_command_masks_the_secrets_of_the_kafka_clients_it_made(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``user_errors``, as around ``scoring model parity``: its Kafka client's secrets too."""
    from scoring.cli.common import user_errors

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "Mlflow-Pa55word")
    secrets = ("Parity-Pa55word", "Mlflow-Pa55word", AWS_SECRET)
    quoting = f"{{'sasl.password': 'Parity-Pa55word'}} {AWS_SECRET} Mlflow-Pa55word"

    @user_errors
    def command(error: Exception) -> None:
        client = kafka_config.KafkaClientConfig("b:9096", {"sasl.password": "Parity-Pa55word"})
        masking.mask_in_logs(client.secrets())
        raise error

    caplog.set_level(logging.DEBUG)
    for error, code in ((StreamError(f"refused: {quoting}"), 4), (KeyError(quoting), 1)):
        with pytest.raises(typer.Exit) as caught:
            command(error)
        assert caught.value.exit_code == code
        err = capsys.readouterr().err
        assert err.startswith("error:") and MASK in err
        for secret in secrets:
            assert secret not in err + caplog.text
    assert "Traceback" in caplog.text and "KeyError" in caplog.text
