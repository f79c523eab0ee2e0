"""One place builds every Kafka client's properties (scoring.stream.clients); no broker."""

from __future__ import annotations

import pytest
from scoring.errors import StreamError
from scoring.stream import clients
from scoring.stream.main import command, config_from, kafka_properties, parse_args

SECURE = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "linger.ms": "7"}


def test_extra_properties_reach_the_client_over_its_defaults() -> None:
    config = clients.client_config(
        "b:9092",
        SECURE,
        defaults={"linger.ms": 2, "client.id": "w"},
        required={"isolation.level": "read_committed"},
    )
    assert config["bootstrap.servers"] == "b:9092"
    assert config["security.protocol"] == "SASL_SSL" and config["sasl.mechanism"] == "PLAIN"
    assert config["linger.ms"] == "7"  # the user's tuning wins over a default
    assert config["client.id"] == "w" and config["isolation.level"] == "read_committed"


def test_a_property_a_guarantee_needs_cannot_be_changed() -> None:
    with pytest.raises(StreamError, match=r"isolation\.level"):
        clients.client_config(
            "b:9092",
            {"isolation.level": "read_uncommitted"},
            required={"isolation.level": "read_committed"},
        )
    same = clients.client_config(
        "b:9092", {"enable.auto.commit": "false"}, required={"enable.auto.commit": False}
    )
    assert same["enable.auto.commit"] is False


def test_the_processor_command_line_carries_the_properties_to_the_worker() -> None:
    argv = command("models:/m@champion", ("in", "out", "dlq"), "b:9092", kafka=SECURE)[3:]
    config = config_from(parse_args(argv))
    assert dict(config.kafka) == SECURE
    assert kafka_properties(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}


def test_every_client_kind_is_made_with_the_properties() -> None:
    # librdkafka checks property names when a client is made; nothing connects yet.
    tuning = {"socket.keepalive.enable": "true"}
    assert clients.consumer("127.0.0.1:1", tuning, required={"group.id": "g"}) is not None
    assert clients.producer("127.0.0.1:1", tuning) is not None
    assert clients.admin("127.0.0.1:1", tuning) is not None
    with pytest.raises(clients.KafkaException, match="No such configuration property"):
        clients.producer("127.0.0.1:1", {"no.such.property": "1"})
