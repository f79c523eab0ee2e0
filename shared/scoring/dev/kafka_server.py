"""What the local Kafka broker's JVM runs with: its config, its command line, its storage.

:mod:`scoring.dev.kafka_broker` starts, stops and keeps track of the broker; this module
says what it starts: the Java and the jars it finds, the ``server.properties`` of one
combined broker and controller on loopback (with the secure listeners' settings of
:mod:`scoring.dev.kafka_security` appended when asked), the log4j2 config, the JVM's
command line, and the one-time formatting of the storage with a new cluster id.

A test can put a proxy between a client and the broker (to cut or slow their network):
clients connect to the addresses the broker advertises, so the broker then gets one
more listener, ``PROXIED``, which advertises the proxy's address instead of its own.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from scoring.dev import kafka_security
from scoring.errors import BrokerError
from scoring.settings import ENV, load

__all__ = [
    "HOST",
    "PARTITIONS",
    "broker_command",
    "find_java",
    "format_storage",
    "jars_classpath",
    "new_cluster_id",
    "server_properties",
    "write_config",
]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# Partitions of a topic the broker makes by itself, and of `scoring dev topic create`'s:
# room for up to three workers of one group.
PARTITIONS = 3

_MAIN_CLASS = "kafka.Kafka"
_JVM_OPTS = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    # Plain IPv4 sockets: `ss` shows 127.0.0.1:<port>, not [::ffff:127.0.0.1]:<port>.
    "-Djava.net.preferIPv4Stack=true",
    # Keep logging through Kafka's own shutdown hook (log4j2's hook would stop it first).
    "-Dlog4j2.shutdownHookEnabled=false",
)
_TOOL_JVM_OPTS = ("-Xmx256m", "-Djava.awt.headless=true", "-Djava.net.preferIPv4Stack=true")

# INFO from the broker itself; the per-request and state-change chatter only when it matters.
_LOG4J2 = """\
status = error
name = scoring-kafka
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
"""

# Listener settings that list one entry per listener: secure mode appends to them.
_LISTS = ("listeners", "advertised.listeners", "listener.security.protocol.map")


def server_properties(
    data_dir: Path,
    port: int,
    controller_port: int,
    secure: dict[str, str] | None = None,
    proxied: tuple[int, int] | None = None,
) -> dict[str, str]:
    """The broker config: one combined broker+controller node on loopback.

    Args:
        data_dir: Directory for ``log.dirs`` (partitions and the KRaft metadata log).
        port: PLAINTEXT (client) port.
        controller_port: CONTROLLER (KRaft quorum) port.
        secure: The secure listeners' settings
            (:func:`scoring.dev.kafka_security.broker_properties`), if any.
        proxied: ``(port, advertised_port)`` of a PROXIED plaintext listener, if any: it
            binds ``port`` and tells clients to connect at ``advertised_port``, where a
            proxy forwards to ``port``.

    Returns:
        The ``server.properties`` entries, in file order.
    """
    props = _plain_properties(data_dir, port, controller_port)
    extra = _proxied_properties(*proxied) if proxied is not None else {}
    for settings in (secure or {}, extra):
        for key, value in settings.items():
            props[key] = f"{props[key]},{value}" if key in _LISTS else value
    return props


def write_config(props_file: Path, log4j_file: Path, props: dict[str, str]) -> None:
    """Write ``server.properties`` (``props``) and the log4j2 config for the JVM."""
    # Holds the keystore password in secure mode: readable by its owner only.
    kafka_security.write_private(
        props_file, "".join(f"{k}={v}\n" for k, v in props.items()).encode()
    )
    log4j_file.write_text(_LOG4J2)


def broker_command(java: str, classpath: str, log4j_file: Path, props_file: Path) -> list[str]:
    """The broker JVM's command line, for the files :func:`write_config` wrote."""
    log4j_opt = _log4j_opt(log4j_file)
    return [java, *_JVM_OPTS, log4j_opt, "-cp", classpath, _MAIN_CLASS, str(props_file)]


def format_storage(
    java: str,
    classpath: str,
    log4j_file: Path,
    cluster_id: str,
    props_file: Path,
    timeout: float,
) -> None:
    """Format the storage of ``props_file``'s ``log.dirs`` with ``cluster_id`` (first start).

    Raises:
        BrokerError: The storage tool failed (the message holds its output) or took over
            ``timeout`` seconds.
    """
    tool = [
        java,
        *_TOOL_JVM_OPTS,
        _log4j_opt(log4j_file),
        "-cp",
        classpath,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(props_file),
    ]
    try:
        done = subprocess.run(tool, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(f"Formatting Kafka storage took over {timeout:.0f}s.") from exc
    if done.returncode != 0:
        raise BrokerError(
            f"Formatting Kafka storage failed (exit {done.returncode}):\n"
            f"{(done.stdout + done.stderr).strip()}"
        )
    log.debug("StorageTool format output:\n%s", done.stdout)
    log.info("Formatted Kafka storage in %s (cluster id %s)", props_file.parent, cluster_id)


def find_java() -> str:
    """The ``java`` of ``JAVA_HOME``, else the one on ``PATH``.

    Raises:
        BrokerError: There is none.
    """
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise BrokerError("No `java` found (JAVA_HOME or PATH); Kafka 4 needs Java 17 or later.")
    return found


def jars_classpath(jars_dir: Path | None) -> str:
    """The JVM classpath of the Kafka jars in ``jars_dir`` (default: ``kafka_jars_dir``).

    Raises:
        BrokerError: The folder holds no Kafka jar; the message says how to get them.
    """
    jars_dir = Path(jars_dir if jars_dir is not None else load().kafka_jars_dir).resolve()
    if not any(jars_dir.glob("kafka_2.13-*.jar")):
        raise BrokerError(
            f"No Kafka jars in {jars_dir}. Resolve them once with `make kafka-jars` in a "
            "checkout of the project (Maven, infra/kafka/pom.xml, into infra/kafka/jars), then "
            f"point the setting kafka_jars_dir ({ENV['kafka_jars_dir']}) at that folder, or "
            "copy them into $SCORING_HOME/jars/kafka (the default when the project is "
            "installed from a wheel)."
        )
    return f"{jars_dir}/*"  # the JVM expands the wildcard itself


def new_cluster_id() -> str:
    """A new KRaft cluster id."""
    # What kafka.tools.StorageTool random-uuid prints (Kafka's Uuid.randomUuid): 16 random
    # bytes, URL-safe base64 without padding, never starting with "-" (read as an option).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


# --- internals -------------------------------------------------------------------------


def _log4j_opt(log4j_file: Path) -> str:
    return f"-Dlog4j2.configurationFile={log4j_file}"


def _proxied_properties(port: int, advertised_port: int) -> dict[str, str]:
    return {
        "listeners": f"PROXIED://{HOST}:{port}",
        "advertised.listeners": f"PROXIED://{HOST}:{advertised_port}",
        "listener.security.protocol.map": "PROXIED:PLAINTEXT",
    }


def _plain_properties(data_dir: Path, port: int, controller_port: int) -> dict[str, str]:
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": str(PARTITIONS),
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # Internal topics: one replica (one broker) and, unlike the default 50, one
        # partition each, so the first consumer group or transaction starts fast.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
        # A dev broker: keep the footprint small.
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.retention.hours": "168",
        "log.segment.bytes": str(64 * 1024 * 1024),
    }
