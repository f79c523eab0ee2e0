"""A scoring agent for an existing faust app, at least once.

For teams whose consumers are faust apps (``pip install 'scoring[faust]'``)::

    app = faust.App("fraud-scoring", broker="kafka://127.0.0.1:9092")
    add_scoring_agent(app, "models:/fraud@champion", "transactions",
                      output_topic="fraud_scores", dlq_topic="transactions_dlq")

The agent takes micro-batches (``stream.take_events(n, within=...)``), scores each with
the public API (:meth:`scoring.Model.score_messages`, the stream processor's decoder and
the jobs' scorer) and sends one record per event: a prediction with the event's Kafka key
and the processor's output shape and headers, or the event unchanged to the dead-letter
topic with the processor's ``reason``, ``reason_kind`` and origin headers. A batch is
scored by one model version; an alias is followed between batches.

Delivery is **at least once**: faust commits an event's offset only after the agent has
finished its batch, and the agent waits until every record of the batch is acknowledged
by the brokers before it takes the next one, so nothing is lost; a crash or a rebalance
between the sends and the commit repeats the batch's records. Readers that need exactly
once use ``scoring stream run``: see docs/adr/0003-stream-processor-core.md for why it
does not rely on faust's own ``processing_guarantee="exactly_once"``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import faust
from faust.types import AgentT, EventT, TopicT

from scoring.api import DEFAULT_MAX_MESSAGE_BYTES, Model, Prediction, load_model
from scoring.errors import ConfigError
from scoring.lifecycle.loading import follows_alias
from scoring.model.decode import Refused
from scoring.stream.events import (
    H_MODEL_NAME,
    H_MODEL_VERSION,
    dead_letter_headers,
    encode_prediction,
    iso_millis,
)

__all__ = ["add_scoring_agent"]

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


def add_scoring_agent(
    app: faust.App,
    model: str | Model,
    input_topic: str | TopicT,
    output_topic: str,
    dlq_topic: str,
    *,
    batch_size: int = 500,
    within: float = 0.1,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    model_poll_s: float = 10.0,
    name: str = "scoring",
) -> AgentT:
    """Add an agent to ``app`` that scores ``input_topic`` into the two topics it is given.

    Args:
        app: the faust app.
        model: a model URI (loaded when the worker starts; an alias is followed every
            ``model_poll_s`` seconds) or a :class:`scoring.Model` the caller manages.
        input_topic: topic name, or a faust topic whose keys and values are raw bytes
            (``key_serializer="raw", value_serializer="raw"``): the JSON feature events.
        output_topic: where predictions go, keyed like their events.
        dlq_topic: where refused events go, unchanged, with the reason in headers.
        batch_size: at most this many events per micro-batch.
        within: seconds to wait for a batch to fill before scoring what arrived.
        max_message_bytes: larger events are refused as ``oversized``.
        model_poll_s: seconds between two checks of a followed alias.
        name: the agent's name (also its consumer's name within the app).

    Returns:
        The agent, already registered with the app.
    """
    source = (
        app.topic(input_topic, key_serializer="raw", value_serializer="raw")
        if isinstance(input_topic, str)
        else input_topic
    )
    predictions = app.topic(output_topic, key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(dlq_topic, key_serializer="raw", value_serializer="raw")

    async def score(stream: faust.StreamT) -> None:
        scorer = model if isinstance(model, Model) else load_model(model)
        owned = scorer is not model
        if owned and follows_alias(scorer.uri):
            scorer.follow(model_poll_s)
        log.info("scoring %s with %s version %s", source, scorer.name, scorer.version)
        try:
            # take_events is take() with the events (key, headers, offsets), not the values;
            # faust's StreamT protocol does not declare it, its Stream does.
            batches = cast(faust.Stream, stream).take_events(batch_size, within=within)
            async for events in batches:
                scorer.refresh()
                sent = [
                    await _send(event, prediction, scorer, predictions, dead_letters)
                    for event, prediction in zip(
                        events, _score(scorer, events, max_message_bytes), strict=True
                    )
                ]
                # Acknowledged before faust may commit the batch's offsets (at least once).
                await asyncio.gather(*sent)
        finally:
            if owned:
                scorer.close()

    return app.agent(source, name=name)(score)


def _score(model: Model, events: Sequence[EventT], max_bytes: int) -> list[Prediction]:
    values = [event.message.value for event in events]
    if not all(value is None or isinstance(value, bytes) for value in values):
        raise ConfigError(
            "the scoring agent's input topic must deliver raw bytes: open it with "
            'key_serializer="raw", value_serializer="raw", or pass the topic name'
        )
    return model.score_messages(values, max_bytes)


async def _send(
    event: EventT,
    prediction: Prediction,
    model: Model,
    predictions: TopicT,
    dead_letters: TopicT,
) -> Any:
    """Send one record; returns the future that resolves when the brokers have it."""
    message = event.message
    identity: Headers = [
        (H_MODEL_NAME, prediction.model_name.encode()),
        (H_MODEL_VERSION, prediction.model_version.encode()),
    ]
    if prediction.refused:
        problem = Refused(-1, prediction.reason_kind or "", prediction.reason or "")
        headers = dead_letter_headers(
            _headers(message.headers),
            problem,
            message.topic,
            message.partition,
            message.offset,
            identity,
        )
        # Kafka needs a key or a value; a keyless empty event is forwarded as b"".
        value = message.value if message.value is not None or message.key is not None else b""
        return await dead_letters.send(key=message.key, value=value, headers=headers)
    assert prediction.key is not None and prediction.score is not None
    now_ms = time.time_ns() // 1_000_000
    event_ms = int(message.timestamp * 1000) if message.timestamp else now_ms
    value = encode_prediction(
        model.contract.key,
        prediction.key,
        prediction.score,
        prediction.label,
        (prediction.model_name, prediction.model_version),
        iso_millis(event_ms),
        iso_millis(now_ms),
    )
    return await predictions.send(key=message.key, value=value, headers=identity)


def _headers(headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None) -> Headers:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k), bytes(v)) for k, v in items]
