"""Score every event of a Kafka topic with a registered model, exactly once.

    python jobs/stream/process.py --model models:/fraud@champion \
        --input-topic transactions --output-topic fraud_scores --dlq-topic transactions_dlq

or through the CLI with the same options: ``scoring stream run ...``. Runs until SIGTERM
or Ctrl-C, which finish and commit the current micro-batch; the last line printed is a
JSON summary of what was processed. Exit codes: 0 stopped cleanly, 2 bad arguments or
settings, 4 Kafka problem (no broker, login or TLS handshake refused, missing input topic,
fenced worker), 1 other (an unexpected error: its traceback is logged). Every error path,
the summary and the log mask the Kafka client's secrets and the secret environment
variables (``scoring.masking.SECRET_VARIABLES``) as ``***``.
A secured cluster: ``--kafka-config FILE`` (README, "Secured Kafka").
A challenger in the model's shadow: ``--shadow models:/fraud@challenger --shadow-topic T``
(README, "Shadow scoring").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from scoring.errors import ConfigError, ScoringError
from scoring.masking import mask_in_logs, masked, unexpected
from scoring.settings import ENV, load
from scoring.stream.kafka_config import KafkaClientConfig, preflight, resolve
from scoring.stream.processor import Processor, StreamConfig

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = StreamConfig("", "", "", "", "")
    parser = argparse.ArgumentParser(prog="process", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--model", required=True, help="models:/NAME@ALIAS (followed), models:/NAME/N or a folder")
    add("--input-topic", required=True, help="topic of JSON feature events")
    add("--output-topic", required=True, help="topic for predictions (created if missing)")
    add("--dlq-topic", required=True, help="dead-letter topic for refused events")
    add(
        "--shadow",
        metavar="MODEL",
        help="a challenger scored beside the model on every event, e.g. "
        "models:/NAME@challenger (followed; while the alias names no version, nothing is "
        "scored in the shadow); needs --shadow-topic",
    )
    add(
        "--shadow-topic",
        help="topic for the challenger's predictions, sent in the same transaction as the "
        "model's (created if missing)",
    )
    add(
        "--bootstrap",
        help=f"Kafka host:port (default ${ENV['kafka_bootstrap']}, then the --kafka-config "
        "file's bootstrap.servers)",
    )
    add(
        "--kafka-config",
        type=Path,
        metavar="FILE",
        help="Kafka client properties (kcat -F format: security.protocol, sasl.*, ssl.*; "
        f"values may be ${{VAR}}) for every client (default ${ENV['kafka_config']})",
    )
    add("--group", default=defaults.group, help="consumer group (default %(default)s)")
    add(
        "--worker",
        default=os.environ.get("SCORING_STREAM_WORKER", defaults.worker),
        help="this worker's id, unique in the group and stable across restarts "
        "(default $SCORING_STREAM_WORKER or %(default)s)",
    )
    add(
        "--guarantee",
        choices=("exactly-once", "at-least-once"),
        default="exactly-once",
        help="delivery guarantee (default %(default)s)",
    )
    add("--batch-size", type=int, default=defaults.batch_size, help="max events per micro-batch")
    add(
        "--batch-wait-ms",
        type=int,
        default=defaults.batch_wait_ms,
        help="max wait after a batch's first event (default %(default)s)",
    )
    add(
        "--model-poll-seconds",
        type=float,
        default=defaults.model_poll_s,
        help="how often the registry alias is checked (default %(default)s)",
    )
    add(
        "--max-message-bytes",
        type=int,
        default=defaults.max_message_bytes,
        help="larger events go to the dead-letter topic (default %(default)s)",
    )
    add("--metrics-port", type=int, help="serve /metrics and /health here (0: any free port)")
    add("--metrics-host", default=defaults.metrics_host, help="(default %(default)s)")
    add(
        "--start-from",
        choices=("earliest", "latest"),
        default=defaults.start_from,
        help="where a new group starts reading (default %(default)s)",
    )
    add(
        "--transaction-timeout-ms",
        type=int,
        default=defaults.transaction_timeout_ms,
        help="how long the broker keeps a dead worker's transaction open (default %(default)s)",
    )
    add(
        "--max-stall-seconds",
        type=float,
        default=defaults.max_stall_s,
        help="exit (code 4) once micro-batches have failed to commit for this long; until "
        "then /health says degraded (default %(default)s)",
    )
    add(
        "--shadow-retry-seconds",
        type=float,
        default=defaults.shadow_retry_s,
        help="while the shadow topic refuses writes, how often it is checked again "
        "(default %(default)s)",
    )
    add(
        "-X",
        "--kafka-property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra librdkafka client property for every client, over --kafka-config's "
        "(tuning; keep secrets in the file, not on the command line); repeatable",
    )
    add("--ort-threads", type=int, help=f"onnxruntime threads (default ${ENV['ort_threads']} or 1)")
    add("--verbose", "-v", action="store_true", help="log every dead letter")
    return parser.parse_args(argv)


def client_from(args: argparse.Namespace) -> KafkaClientConfig:
    """The cluster and its client properties: ``--kafka-config``'s file, then ``-X`` pairs."""
    client = resolve(args.bootstrap, args.kafka_config)
    extra = kafka_properties(args.kafka_property)
    return KafkaClientConfig(client.bootstrap, {**client.properties, **extra}, client.source)


def config_from(args: argparse.Namespace, client: KafkaClientConfig | None = None) -> StreamConfig:
    settings = load(ort_threads=args.ort_threads)
    client = client or client_from(args)
    return StreamConfig(
        model=args.model,
        input_topic=args.input_topic,
        output_topic=args.output_topic,
        dlq_topic=args.dlq_topic,
        bootstrap=client.bootstrap,
        group=args.group,
        worker=args.worker,
        exactly_once=args.guarantee == "exactly-once",
        batch_size=args.batch_size,
        batch_wait_ms=args.batch_wait_ms,
        model_poll_s=args.model_poll_seconds,
        max_message_bytes=args.max_message_bytes,
        ort_threads=settings.ort_threads,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        start_from=args.start_from,
        transaction_timeout_ms=args.transaction_timeout_ms,
        max_stall_s=args.max_stall_seconds,
        kafka=client.properties,
        shadow=args.shadow,
        shadow_topic=args.shadow_topic,
        shadow_retry_s=args.shadow_retry_seconds,
    )


def kafka_properties(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as a mapping of client properties."""
    properties: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            # Not quoted: a mistyped secret (-X sasl.password:...) would be printed whole.
            raise ConfigError(
                "a -X/--kafka-property has no '=' or no key (not shown: it may hold a "
                "secret); each takes KEY=VALUE, e.g. -X linger.ms=5"
            )
        properties[name.strip()] = value
    return properties


def command(
    model: str,
    topics: Sequence[str],
    bootstrap: str,
    *options: str,
    kafka: Mapping[str, str] | None = None,
    kafka_config: Path | None = None,
) -> list[str]:
    """How to start a worker as a child process of this Python: (input, output, dlq) topics.

    ``kafka_config`` is passed on as ``--kafka-config`` (secrets stay in the file, off the
    command line); ``kafka`` are extra client properties, passed on as ``-X KEY=VALUE``.
    """
    input_topic, output_topic, dlq_topic = topics
    properties = [arg for k, v in (kafka or {}).items() for arg in ("-X", f"{k}={v}")]
    if kafka_config is not None:
        properties = ["--kafka-config", str(kafka_config), *properties]
    return [
        sys.executable, "-m", "scoring.stream.main",
        "--model", model,
        "--input-topic", input_topic,
        "--output-topic", output_topic,
        "--dlq-topic", dlq_topic,
        *(("--bootstrap", bootstrap) if bootstrap else ()),
        *properties,
        *options,
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    for noisy in ("mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    mask_in_logs()  # the environment's secrets, before anything can fail
    try:
        with _thread_errors_logged():
            client = client_from(args)
            mask_in_logs(client.secrets())
            log.info("Kafka: %s", client.describe())
            config = config_from(args, client)  # bad settings fail before any connection
            preflight(client)  # the processor checks again; this one can name the file
            summary = Processor(config).run()
    except ScoringError as exc:
        print(masked(f"error: {exc}"), file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a bug, or a failure nobody foresaw: its traceback, masked
        print(f"error: {unexpected(exc, log)}", file=sys.stderr)
        return 1
    print(masked(json.dumps({"status": "stopped", **summary})))
    return 0


@contextmanager
def _thread_errors_logged() -> Iterator[None]:
    """A thread's uncaught error goes to the log, where secrets are masked, not to stderr."""

    def log_it(failed: threading.ExceptHookArgs) -> None:
        if failed.exc_type is SystemExit:  # as Python's own hook: a thread's quiet exit
            return
        name = failed.thread.name if failed.thread is not None else "?"
        log.error("uncaught error in thread %s", name, exc_info=failed.exc_value)

    before, threading.excepthook = threading.excepthook, log_it
    try:
        yield
    finally:
        threading.excepthook = before


if __name__ == "__main__":
    sys.exit(main())
