"""Table locations: one canonical spelling, and what Spark and delta-rs each get."""

from __future__ import annotations

from pathlib import Path

import pytest
from scoring.batch.tables import (
    access_problem,
    for_delta_rs,
    for_spark,
    is_catalog_name,
    normalize,
)
from scoring.errors import ConfigError
from scoring.settings import Settings


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalize(".scoring/lake/transactions") == str(tmp_path / ".scoring/lake/transactions")
    assert normalize("lake/t/") == str(tmp_path / "lake/t")
    assert normalize(f"file://{tmp_path}/t") == str(tmp_path / "t")


def test_s3_spellings_share_one_canonical_form() -> None:
    for spelling in ("s3://lake/t", "s3a://lake/t", "s3n://lake/t/", "S3A://lake/t"):
        assert normalize(spelling) == "s3://lake/t"
        assert for_spark(spelling) == "s3a://lake/t"


def test_catalog_names_are_left_alone() -> None:
    assert is_catalog_name("db.fraud_scores") and normalize("db.fraud_scores") == "db.fraud_scores"
    assert not is_catalog_name("./t") and not is_catalog_name("s3://b/t")


def test_credentials_in_a_location_are_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as error:
        normalize("s3://AKIAEXAMPLE:topsecret@lake/t")
    assert "topsecret" not in str(error.value) and "AKIAEXAMPLE" not in str(error.value)
    with pytest.raises(ConfigError, match="names no bucket"):
        normalize("s3:///t")


def test_delta_rs_gets_the_endpoint_region_and_plain_http_but_no_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Settings read the environment: an S3 server's variables must not leak in.
    for variable in ("AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(variable, raising=False)
    settings = Settings(s3_endpoint="http://127.0.0.1:9000")
    location, options = for_delta_rs("s3a://lake/t", settings)
    assert location == "s3://lake/t"
    assert options == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "us-east-1",
    }
    assert for_delta_rs("/lake/t", settings) == ("/lake/t", {})
    assert for_delta_rs("s3://lake/t", Settings(aws_region="eu-west-1"))[1] == {
        "AWS_REGION": "eu-west-1"
    }


def test_refused_credentials_are_recognised_through_the_cause_chain() -> None:
    try:
        try:
            raise OSError("Generic S3 error: SignatureDoesNotMatch: secret-looking detail")
        except OSError as inner:
            raise RuntimeError("could not open table") from inner
    except RuntimeError as outer:
        assert access_problem(outer) == "SignatureDoesNotMatch"
    assert access_problem(RuntimeError("no such table")) is None
