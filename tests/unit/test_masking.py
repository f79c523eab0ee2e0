"""Secrets masked in log records and printed lines (:mod:`scoring.masking`)."""

from __future__ import annotations

import json
import logging

import pytest
from scoring import masking
from scoring.masking import MASK, SECRET_VARIABLES, SecretsFilter, mask_in_logs, masked
from scoring.stream.kafka_config import KafkaClientConfig

SECRET = "s3cr3t-Pa55word"


def test_secrets_filter_masks_messages_args_and_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.masking")
    caplog.handler.addFilter(SecretsFilter([SECRET, "ab"]))
    try:
        log.warning("connecting with %s", f"password={SECRET}")
        try:
            raise RuntimeError(f"bad config {{'sasl.password': '{SECRET}'}}")
        except RuntimeError:
            log.exception("failed")
        log.warning("ab stays")
    finally:
        caplog.handler.filters.clear()
    assert SECRET not in caplog.text
    assert f"password={MASK}" in caplog.text
    assert "ab stays" in caplog.text  # too short to be a secret, not masked


def test_secrets_filter_masks_a_secret_as_repr_and_json_quote_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quoted = 'it\'s "a" back\\slash'  # a quote of each kind and a backslash
    secrets = SecretsFilter([quoted])
    secrets.add(["ab", SECRET])  # later secrets too; "ab" is too short to mask
    properties = {"sasl.password": quoted}
    for shown in (quoted, repr(properties), json.dumps(properties), f"ab {SECRET}"):
        assert secrets.mask(shown).count(MASK) == 1, shown
    assert secrets.mask("ab") == "ab"
    caplog.handler.addFilter(secrets)
    try:
        logging.getLogger("test.masking").error("config %r", properties)
    finally:
        caplog.handler.filters.clear()
    assert quoted not in caplog.text and repr(quoted)[1:-1] not in caplog.text


def test_masked_knows_every_client_given_and_the_secret_environment_variables(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh = SecretsFilter()
    monkeypatch.setattr(masking, "_SECRETS", fresh)
    monkeypatch.setattr(logging, "lastResort", logging.StreamHandler())  # stderr, as Python's
    for name in SECRET_VARIABLES:
        monkeypatch.setenv(name, f"{name.lower()}-value")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-not-a-secret")
    mask_in_logs(KafkaClientConfig("b:1", {"sasl.password": SECRET}).secrets())
    mask_in_logs(KafkaClientConfig("b:1", {"ssl.key.password": "key-pass"}).secrets())
    text = " ".join([SECRET, "key-pass", *(f"{n.lower()}-value" for n in SECRET_VARIABLES)])
    assert masked(text) == " ".join([MASK] * (2 + len(SECRET_VARIABLES)))
    assert masked("AKIA-not-a-secret") == "AKIA-not-a-secret"
    # A process whose root logger has no handler: Python's last resort masks them too.
    handlers = logging.getLogger().handlers
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    mask_in_logs()
    logging.getLogger("test.masking").error("refused: %s", text)
    monkeypatch.setattr(logging.getLogger(), "handlers", handlers)
    assert "refused: ***" in capsys.readouterr().err
    assert fresh in logging.lastResort.filters
