"""A real single-node Apache Kafka broker for tests and local development.

The broker runs in KRaft mode as a combined broker and controller (``node.id=1``), from the
jars Maven resolved into ``infra/kafka/jars`` (``make kafka-jars``; see
``infra/kafka/pom.xml``), or wherever the setting ``kafka_jars_dir``
(``SCORING_KAFKA_JARS_DIR``) points. Every listener binds ``127.0.0.1`` only. This module
starts, waits for, stops and keeps track of the broker; what its JVM runs with (the
config, the command line, the storage format) is :mod:`scoring.dev.kafka_server`.

With ``secure=True`` (``scoring dev up --secure``) it also has a SASL_SSL listener
(SCRAM-SHA-512) and a mutual-TLS listener, and writes a client properties file for each
(:mod:`scoring.dev.kafka_security`). The plaintext listener stays, on loopback: the
broker talks to itself and answers the readiness probe there.

With ``proxied_port=P`` (tests of network faults) it also has a plaintext listener
``PROXIED`` on a port of its own, which advertises ``127.0.0.1:P``: a client bootstrapped
at P, where the test's proxy listens and forwards to that listener, keeps all its
traffic on the proxy (Kafka clients connect to the advertised addresses, so a proxy in
front of the plain listener would only see the first request).

Everything lives in one state directory::

    broker.json         cluster id, the ports, whether the last start was secure or proxied
    broker.pid          pid of the running JVM (absent when stopped)
    server.properties   the broker config, rewritten on every start
    log4j2.properties   logging config for the JVM
    kafka.log           the JVM's stdout, stderr and log4j output
    data/               log.dirs: topic partitions and the KRaft metadata log
    security/           secure mode: CA, keystore, client certificate, passwords
    client-*.properties secure mode: client files for the two secure listeners

The storage is formatted on the first start only, and the ports are picked on the first
start only, so :func:`stop` then :func:`start` on the same directory brings back the same
broker with its data at the same address. The JVM runs in its own session
(:mod:`scoring.dev.process`), so it outlives the Python process that started it until
:func:`stop` is called.

Example:
    >>> broker = start(Path(".scoring/kafka"))  # doctest: +SKIP
    >>> broker.bootstrap  # doctest: +SKIP
    '127.0.0.1:40123'
    >>> stop(broker)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from scoring.dev import kafka_security, kafka_server, process
from scoring.dev.kafka_server import HOST
from scoring.errors import BrokerError

__all__ = [
    "HOST",
    "Broker",
    "ProxiedListener",
    "SecureListeners",
    "free_port",
    "is_running",
    "kill",
    "restart",
    "running",
    "start",
    "stop",
]

log = logging.getLogger(__name__)

_STATE_FILE = "broker.json"
_PID_FILE = "broker.pid"
_PROPERTIES_FILE = "server.properties"
_LOG4J_FILE = "log4j2.properties"
_LOG_FILE = "kafka.log"
_DATA_DIR = "data"


@dataclass(frozen=True)
class SecureListeners:
    """The secure listeners of a broker started with ``secure=True``.

    Attributes:
        sasl_ssl_bootstrap: ``host:port`` of the SASL_SSL (SCRAM-SHA-512) listener.
        ssl_bootstrap: ``host:port`` of the mutual-TLS listener.
        sasl_ssl_config: Client properties file for SASL_SSL (``--kafka-config``).
        mtls_config: Client properties file for mutual TLS.
    """

    sasl_ssl_bootstrap: str
    ssl_bootstrap: str
    sasl_ssl_config: Path
    mtls_config: Path


@dataclass(frozen=True)
class ProxiedListener:
    """The PROXIED listener of a broker started with ``proxied_port``.

    Attributes:
        bootstrap: ``host:port`` it advertises: where the proxy listens, and what its
            clients are given as ``bootstrap_servers``.
        upstream: ``host:port`` it binds: where the proxy forwards to.
    """

    bootstrap: str
    upstream: str


@dataclass(frozen=True)
class Broker:
    """A running broker started by :func:`start`.

    Attributes:
        bootstrap: ``host:port`` of the PLAINTEXT listener, for ``bootstrap_servers``.
        pid: Process id of the broker JVM.
        port: PLAINTEXT (client) port on 127.0.0.1.
        controller_port: KRaft CONTROLLER port on 127.0.0.1.
        cluster_id: The cluster id the storage was formatted with.
        state_dir: The broker's state directory (config, data, log, pid).
        log_file: The JVM's log file inside ``state_dir``.
        secure: The secure listeners, when started with ``secure=True``.
        proxied: The PROXIED listener, when started with ``proxied_port``.
    """

    bootstrap: str
    pid: int
    port: int
    controller_port: int
    cluster_id: str
    state_dir: Path
    log_file: Path
    secure: SecureListeners | None = None
    proxied: ProxiedListener | None = None


def start(
    state_dir: Path,
    port: int | None = None,
    controller_port: int | None = None,
    jars_dir: Path | None = None,
    timeout: float = 60,
    secure: bool = False,
    proxied_port: int | None = None,
) -> Broker:
    """Start the broker of ``state_dir`` and wait until it answers metadata requests.

    On the first start of a directory, free ports are picked (unless given), a cluster id is
    generated and the storage is formatted. Later starts reuse all three, so the data and
    the address survive a :func:`stop`. If the broker of ``state_dir`` is already running,
    it is returned as is.

    With ``secure``, the broker also gets a SASL_SSL listener (SCRAM-SHA-512) and a
    mutual-TLS listener on ports picked on the first secure start; their keys, the SCRAM
    user and the client properties files are made as described in
    :mod:`scoring.dev.kafka_security`, and the start waits until a client logs in through
    each of them.

    Args:
        state_dir: The broker's state directory; created if missing.
        port: PLAINTEXT port; a free one when None (or the saved one on a restart).
        controller_port: CONTROLLER port; a free one when None (or the saved one).
        jars_dir: Folder with the Kafka jars (default: the setting ``kafka_jars_dir``).
        timeout: Seconds to wait for the broker to answer.
        secure: Add the SASL_SSL and mutual-TLS listeners.
        proxied_port: Add a PROXIED plaintext listener on a port of its own (picked on
            the first proxied start), advertised as ``127.0.0.1:proxied_port``.

    Returns:
        The running broker.

    Raises:
        BrokerError: The jars or Java are missing, a port differs from the saved one or is
            taken, formatting failed, the broker died or did not answer in time (the
            message ends with the tail of its log), or it is already running without the
            secure or proxied listeners that were asked for.
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    current = running(state_dir)
    if current is not None:
        _check_ports(state_dir, current.port, current.controller_port, port, controller_port)
        if secure and current.secure is None:
            raise BrokerError(
                f"The Kafka broker of {state_dir} is running without its secure listeners. "
                "Stop it with `scoring dev down`, then start it with `scoring dev up --secure`."
            )
        advertised = current.proxied.bootstrap if current.proxied is not None else None
        if proxied_port is not None and advertised != f"{HOST}:{proxied_port}":
            raise BrokerError(
                f"The Kafka broker of {state_dir} is running without a listener advertised "
                f"at {HOST}:{proxied_port}. Stop it, then start it with that proxied_port."
            )
        log.info("Kafka broker of %s is already running (pid %d)", state_dir, current.pid)
        return current

    java = kafka_server.find_java()
    classpath = kafka_server.jars_classpath(jars_dir)
    state = _load_state(state_dir)
    if state is None:
        state = {
            "cluster_id": kafka_server.new_cluster_id(),
            "port": port if port is not None else free_port(),
            "controller_port": controller_port if controller_port is not None else 0,
        }
        if not state["controller_port"]:
            state["controller_port"] = free_port(exclude={int(state["port"])})
        _save_state(state_dir, state)
    else:
        _check_ports(
            state_dir, int(state["port"]), int(state["controller_port"]), port, controller_port
        )
    port_, cport = int(state["port"]), int(state["controller_port"])
    cluster_id = str(state["cluster_id"])
    secure_props: dict[str, str] | None = None
    listeners: SecureListeners | None = None
    if secure:
        if "sasl_ssl_port" not in state:
            taken = {port_, cport}
            state["sasl_ssl_port"] = free_port(exclude=taken)
            state["ssl_port"] = free_port(exclude=taken | {int(state["sasl_ssl_port"])})
        material = kafka_security.ensure_material(state_dir)
        sasl_port, ssl_port = int(state["sasl_ssl_port"]), int(state["ssl_port"])
        secure_props = kafka_security.broker_properties(material, sasl_port, ssl_port)
        sasl_file, mtls_file = kafka_security.write_client_files(
            material, state_dir, f"{HOST}:{sasl_port}", f"{HOST}:{ssl_port}"
        )
        listeners = SecureListeners(
            f"{HOST}:{sasl_port}", f"{HOST}:{ssl_port}", sasl_file, mtls_file
        )
    state["secure"] = int(secure)
    proxied_ports: tuple[int, int] | None = None  # (bound, advertised)
    state.pop("proxied_port", None)
    if proxied_port is not None:
        if "proxied_listen_port" not in state:
            state["proxied_listen_port"] = free_port(exclude={port_, cport, proxied_port})
        state["proxied_port"] = proxied_port
        proxied_ports = (int(state["proxied_listen_port"]), proxied_port)
    _save_state(state_dir, state)
    ports = [port_, cport]
    if listeners is not None:
        ports += [int(state["sasl_ssl_port"]), int(state["ssl_port"])]
    if proxied_ports is not None:
        ports.append(proxied_ports[0])
    for p in ports:
        if not _port_is_free(p):
            raise BrokerError(
                f"Port {HOST}:{p} saved for the Kafka broker of {state_dir} is taken by another "
                "process. Free it, or delete that directory to start a new broker on new ports."
            )

    data_dir = state_dir / _DATA_DIR
    props_file = state_dir / _PROPERTIES_FILE
    log4j_file = state_dir / _LOG4J_FILE
    props = kafka_server.server_properties(data_dir, port_, cport, secure_props, proxied_ports)
    kafka_server.write_config(props_file, log4j_file, props)

    if not (data_dir / "meta.properties").exists():
        kafka_server.format_storage(java, classpath, log4j_file, cluster_id, props_file, timeout)

    log_file = state_dir / _LOG_FILE
    command = kafka_server.broker_command(java, classpath, log4j_file, props_file)
    began = time.monotonic()
    pid = process.spawn(command, state_dir, state_dir / _PID_FILE, log_file)
    broker = Broker(
        bootstrap=f"{HOST}:{port_}",
        pid=pid,
        port=port_,
        controller_port=cport,
        cluster_id=cluster_id,
        state_dir=state_dir,
        log_file=log_file,
        secure=listeners,
        proxied=_proxied_listener(state),
    )
    try:
        _wait_ready(broker, began + timeout)
        if secure:
            _prepare_secure(broker, material, began + timeout)
    except BaseException:
        stop(state_dir, timeout=10)
        raise
    log.info(
        "Kafka broker up at %s (pid %d) in %.1fs",
        broker.bootstrap,
        pid,
        time.monotonic() - began,
    )
    return broker


def stop(broker_or_state_dir: Broker | Path, timeout: float = 30) -> bool:
    """Stop a broker: SIGTERM (controlled shutdown), then SIGKILL after ``timeout``.

    Idempotent: stopping a broker that is not running does nothing.

    Args:
        broker_or_state_dir: The broker, or its state directory.
        timeout: Seconds to wait after SIGTERM before SIGKILL.

    Returns:
        True if a running broker was stopped, False if none was running.

    Raises:
        BrokerError: The process survived SIGKILL.
    """
    state_dir = _state_dir_of(broker_or_state_dir)
    pid = _live_pid(state_dir)
    if pid is None:
        process.forget(state_dir / _PID_FILE)
        return False
    began = time.monotonic()
    if not process.stop(pid, timeout):
        raise BrokerError(f"The Kafka broker (pid {pid}) of {state_dir} survived SIGKILL.")
    process.forget(state_dir / _PID_FILE)
    log.info("Kafka broker pid %d stopped in %.1fs", pid, time.monotonic() - began)
    return True


def kill(broker_or_state_dir: Broker | Path) -> bool:
    """Kill the broker with SIGKILL, as a crash would: no controlled shutdown, no flush.

    A later :func:`start` on the same directory recovers its logs. Returns False if no
    broker was running.
    """
    state_dir = _state_dir_of(broker_or_state_dir)
    pid = _live_pid(state_dir)
    if pid is None:
        process.forget(state_dir / _PID_FILE)
        return False
    if not process.kill(pid):
        raise BrokerError(f"The Kafka broker (pid {pid}) of {state_dir} survived SIGKILL.")
    process.forget(state_dir / _PID_FILE)
    log.info("Kafka broker pid %d killed", pid)
    return True


def restart(
    broker_or_state_dir: Broker | Path,
    jars_dir: Path | None = None,
    timeout: float = 60,
) -> Broker:
    """Stop the broker (if running) and start it again on the same directory and ports.

    A broker last started with ``secure=True`` comes back with its secure listeners, one
    started with ``proxied_port`` with its PROXIED listener (same ports).

    Args:
        broker_or_state_dir: The broker, or its state directory.
        jars_dir: Folder with the Kafka jars (default: the setting ``kafka_jars_dir``).
        timeout: Seconds to wait for the stop and, separately, for the start.

    Returns:
        The restarted broker, with the same bootstrap address and data.
    """
    state_dir = _state_dir_of(broker_or_state_dir)
    state = _load_state(state_dir)
    secure = bool(state and state.get("secure"))
    proxied_port = int(state["proxied_port"]) if state and "proxied_port" in state else None
    stop(state_dir, timeout=timeout)
    return start(
        state_dir, jars_dir=jars_dir, timeout=timeout, secure=secure, proxied_port=proxied_port
    )


def is_running(state_dir: Path) -> bool:
    """Whether the broker JVM of ``state_dir`` is alive (it may still be starting)."""
    return _live_pid(Path(state_dir).resolve()) is not None


def running(state_dir: Path) -> Broker | None:
    """The broker of ``state_dir`` if it is running (it may still be starting), else None."""
    state_dir = Path(state_dir).resolve()
    pid = _live_pid(state_dir)
    state = _load_state(state_dir) if pid is not None else None
    if pid is None or state is None:
        return None
    port = int(state["port"])
    secure = None
    if state.get("secure"):
        secure = SecureListeners(
            f"{HOST}:{state['sasl_ssl_port']}",
            f"{HOST}:{state['ssl_port']}",
            *kafka_security.client_files(state_dir),
        )
    return Broker(
        bootstrap=f"{HOST}:{port}",
        pid=pid,
        port=port,
        controller_port=int(state["controller_port"]),
        cluster_id=str(state["cluster_id"]),
        state_dir=state_dir,
        log_file=state_dir / _LOG_FILE,
        secure=secure,
        proxied=_proxied_listener(state),
    )


# --- internals -------------------------------------------------------------------------


def _state_dir_of(broker_or_state_dir: Broker | Path) -> Path:
    if isinstance(broker_or_state_dir, Broker):
        return broker_or_state_dir.state_dir
    return Path(broker_or_state_dir).resolve()


def free_port(exclude: set[int] | None = None) -> int:
    """A port nobody listens on at 127.0.0.1 now (not one of ``exclude``)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in (exclude or set()):
            return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _proxied_listener(state: dict[str, str | int]) -> ProxiedListener | None:
    if "proxied_port" not in state:
        return None
    return ProxiedListener(
        f"{HOST}:{state['proxied_port']}", f"{HOST}:{state['proxied_listen_port']}"
    )


def _load_state(state_dir: Path) -> dict[str, str | int] | None:
    path = state_dir / _STATE_FILE
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        state: dict[str, str | int] = {
            "cluster_id": str(raw["cluster_id"]),
            "port": int(raw["port"]),
            "controller_port": int(raw["controller_port"]),
        }
        for optional in (
            "sasl_ssl_port",
            "ssl_port",
            "secure",
            "proxied_port",
            "proxied_listen_port",
        ):
            if optional in raw:
                state[optional] = int(raw[optional])
    except (ValueError, KeyError, TypeError) as exc:
        raise BrokerError(
            f"{path} is unreadable ({exc}). Delete {state_dir} to start a new broker."
        ) from exc
    return state


def _save_state(state_dir: Path, state: dict[str, str | int]) -> None:
    tmp = state_dir / f"{_STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(state_dir / _STATE_FILE)


def _check_ports(
    state_dir: Path, saved: int, saved_c: int, port: int | None, controller_port: int | None
) -> None:
    if (port is not None and port != saved) or (
        controller_port is not None and controller_port != saved_c
    ):
        raise BrokerError(
            f"The Kafka broker of {state_dir} uses ports {saved} (client) and {saved_c} "
            f"(controller), not {port} and {controller_port}. Omit the ports to reuse them, "
            "or use a new state directory."
        )


def _wait_ready(broker: Broker, deadline: float) -> None:
    """Poll until a metadata request lists the broker."""
    from scoring.stream import clients  # imported here: only needed while starting

    last_error = "no answer"
    while True:
        if _live_pid(broker.state_dir) is None:
            raise BrokerError(
                f"The Kafka broker (pid {broker.pid}) exited while starting.\n"
                + _log_tail(broker.log_file)
            )
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrokerError(
                f"The Kafka broker at {broker.bootstrap} did not answer a metadata request in "
                f"time (last error: {last_error}).\n" + _log_tail(broker.log_file)
            )
        if _accepts(broker.port):
            try:
                admin = clients.admin(
                    broker.bootstrap,
                    defaults={"client.id": "scoring-broker-probe", "log_level": 3},
                )
                if admin.list_topics(timeout=max(1.0, min(left, 5.0))).brokers:
                    return
                last_error = "metadata lists no broker yet"
            except Exception as exc:  # the client raises several types while booting
                last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)


def _prepare_secure(broker: Broker, material: kafka_security.Material, deadline: float) -> None:
    """Create the SCRAM user, then wait until a client logs in through each secure listener."""
    assert broker.secure is not None
    try:
        kafka_security.create_user(broker.bootstrap, material, deadline)
        kafka_security.wait_for_login(
            (broker.secure.sasl_ssl_config, broker.secure.mtls_config), deadline
        )
    except BrokerError as exc:
        raise BrokerError(f"{exc}\n" + _log_tail(broker.log_file)) from None
    log.info(
        "Secure listeners ready: %s as %s (%s), mutual TLS at %s (%s)",
        broker.secure.sasl_ssl_bootstrap,
        material.username,
        kafka_security.MECHANISM,
        broker.secure.ssl_bootstrap,
        broker.secure.mtls_config,
    )


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _log_tail(log_file: Path, lines: int = 40) -> str:
    try:
        text = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {log_file})"
    return f"Last lines of {log_file}:\n" + "\n".join(text[-lines:])


def _live_pid(state_dir: Path) -> int | None:
    """The broker pid of ``state_dir`` if that process is alive and is this broker."""
    pid = process.read_pid(state_dir / _PID_FILE)
    if pid is None or not process.alive(pid):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    # Our own child is this broker (its cmdline may even read empty while it execs); no
    # /proc: trust the pid file.
    if process.started_here(pid) or not cmdline.parent.is_dir():
        return pid
    # A recycled pid runs something else: the broker has its properties file as argument.
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return None
    return pid if str(state_dir / _PROPERTIES_FILE).encode() in args else None
