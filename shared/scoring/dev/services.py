"""An S3 API server and an MLflow tracking server on loopback, for tests and trying things.

- :func:`start_s3`: moto's server mode (``moto[server]``, the ``dev`` extra), a real S3
  HTTP API with SigV4 signature checks. It starts with authentication off just long
  enough to create one IAM user allowed ``s3:*``, its access key and the buckets, then
  turns authentication on: from then on a wrong secret key is refused like S3 refuses it.
  Its data lives in memory and is gone when it stops.
- :func:`start_mlflow`: ``mlflow server`` with a SQLite backend store under the state
  directory and its artifacts in a bucket of that S3 server (``--artifacts-destination``,
  proxied: clients need no S3 credentials), optionally with MLflow's basic-auth app.

Each service keeps ``service.json`` (ports and, for these throwaway local services, the
credentials, readable by the owner only), ``service.pid`` and ``service.log`` in its own
state directory; :func:`stop` ends the process recorded there and the workers it forked
(SIGTERM, then SIGKILL; :mod:`scoring.dev.process`). Both bind 127.0.0.1 only and outlive
the Python process that started them.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scoring.dev import process
from scoring.dev.kafka_broker import HOST, free_port
from scoring.errors import ScoringError

__all__ = [
    "MlflowServer",
    "S3Server",
    "ServiceError",
    "is_running",
    "start_mlflow",
    "start_s3",
    "stop",
]

_STATE = "service.json"
_PID = "service.pid"
_LOG = "service.log"
REGION = "us-east-1"


class ServiceError(ScoringError):
    """A local development service could not be started."""


@dataclass(frozen=True)
class S3Server:
    """A running S3 API server and the credentials of its one user."""

    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str
    pid: int
    state_dir: str

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
        }


@dataclass(frozen=True)
class MlflowServer:
    """A running MLflow tracking server; ``username``/``password`` when basic auth is on."""

    uri: str
    pid: int
    state_dir: str
    username: str | None = None
    password: str | None = None

    def env(self) -> dict[str, str]:
        """The MLflow variables that point a client at this server."""
        # Artifacts through the server's proxy: moto refuses presigned URLs while its IAM
        # authentication is on, so direct (multipart) downloads from the bucket would fail.
        env = {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"}
        if self.username and self.password:
            env["MLFLOW_TRACKING_USERNAME"] = self.username
            env["MLFLOW_TRACKING_PASSWORD"] = self.password
        return env


def start_s3(state_dir: Path, buckets: tuple[str, ...] = (), port: int | None = None) -> S3Server:
    """Start moto's S3 server on 127.0.0.1 with one user and ``buckets`` (or reuse it)."""
    running = _running(state_dir)
    if running is not None:
        server = S3Server(**running)
        _create_buckets(server, buckets)
        return server
    try:
        # moto[server] brings boto3; both are checked before anything is started.
        import boto3
        import moto  # noqa: F401
    except ImportError as exc:
        raise ServiceError(
            "The S3 server needs moto's server mode: pip install 'moto[server]' "
            "(or `pip install -e '.[dev]'`)."
        ) from exc
    port = port or free_port()
    endpoint = f"http://{HOST}:{port}"
    state_dir.mkdir(parents=True, exist_ok=True)
    pid = process.spawn(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        state_dir,
        state_dir / _PID,
        state_dir / _LOG,
        # Authentication off until the user below exists; then turned on over the API.
        {**_clean_env(), "INITIAL_NO_AUTH_ACTION_COUNT": "inf"},
    )
    _wait_http(f"{endpoint}/moto-api/", state_dir, pid)
    import boto3

    bootstrap = {
        "endpoint_url": endpoint,
        "region_name": REGION,
        "aws_access_key_id": "bootstrap",
        "aws_secret_access_key": "bootstrap",
    }
    iam = boto3.client("iam", **bootstrap)
    iam.create_user(UserName="scoring")
    iam.put_user_policy(
        UserName="scoring",
        PolicyName="s3",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName="scoring")["AccessKey"]
    server = S3Server(
        endpoint=endpoint,
        access_key_id=key["AccessKeyId"],
        secret_access_key=key["SecretAccessKey"],
        region=REGION,
        pid=pid,
        state_dir=str(state_dir),
    )
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain"},  # a form body would not reach the handler
    )
    with urllib.request.urlopen(request, timeout=10):
        pass
    _save(state_dir, asdict(server))
    _create_buckets(server, buckets)
    return server


def _create_buckets(server: S3Server, buckets: tuple[str, ...]) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=server.region,
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
    )
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in buckets:
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)


def start_mlflow(
    state_dir: Path,
    s3: S3Server,
    bucket: str = "mlflow",
    port: int | None = None,
    basic_auth: bool = False,
) -> MlflowServer:
    """Start ``mlflow server`` on 127.0.0.1: SQLite store, artifacts in ``s3://bucket``."""
    running = _running(state_dir)
    if running is not None:
        return MlflowServer(**running)
    _create_buckets(s3, (bucket,))
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{(state_dir / 'mlflow.db').resolve()}",
        "--artifacts-destination",
        f"s3://{bucket}/artifacts",
    ]
    env = {**_clean_env(), **s3.env(), "MLFLOW_S3_ENDPOINT_URL": s3.endpoint}
    username = password = None
    if basic_auth:
        config = state_dir / "basic_auth.ini"
        # The admin account is created in auth.db on the first start only; a restart keeps
        # its password.
        username, password = "admin", _ini_value(config, "admin_password")
        password = password or secrets.token_urlsafe(18)
        flask_key = _ini_value(config, "# flask_secret_key") or secrets.token_urlsafe(32)
        config.write_text(
            f"# flask_secret_key = {flask_key}\n"
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{(state_dir / 'auth.db').resolve()}\n"
            f"admin_username = {username}\n"
            f"admin_password = {password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        config.chmod(0o600)
        command += ["--app-name", "basic-auth"]
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
        # The auth app's CSRF protection needs a key that stays the same across restarts.
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = _ini_value(config, "# flask_secret_key") or ""
    pid = process.spawn(command, state_dir, state_dir / _PID, state_dir / _LOG, env)
    uri = f"http://{HOST}:{port}"
    _wait_http(f"{uri}/health", state_dir, pid, timeout=120)
    server = MlflowServer(uri, pid, str(state_dir), username, password)
    _save(state_dir, asdict(server))
    return server


def _ini_value(path: Path, key: str) -> str | None:
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip() == key:
            return value.strip()
    return None


def stop(state_dir: Path, timeout: float = 30) -> bool:
    """Stop the service recorded in ``state_dir``; ``False`` if none was running."""
    pid_file = state_dir / _PID
    pid = process.read_pid(pid_file)
    if pid is None or not process.alive(pid):
        process.forget(pid_file)
        return False
    process.stop(pid, timeout, group=True)  # the server and the workers it forked
    process.forget(pid_file)
    return True


def is_running(state_dir: Path) -> bool:
    return _running(state_dir) is not None


def _clean_env() -> dict[str, str]:
    # The servers get their settings from their command line and the variables set here,
    # not from whatever AWS or MLflow client settings the caller has.
    drop = ("AWS_", "MLFLOW_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def _wait_http(url: str, state_dir: Path, pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive(pid):
            break
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers: up (an auth app may refuse the anonymous probe)
        except OSError:
            time.sleep(0.3)
    stop(state_dir)
    tail = (state_dir / _LOG).read_text(errors="replace").splitlines()[-30:]
    raise ServiceError(
        f"The service in {state_dir} did not answer at {url} within {timeout:.0f}s. Last lines "
        f"of {state_dir / _LOG}:\n" + "\n".join(tail)
    )


def _save(state_dir: Path, state: dict[str, Any]) -> None:
    path = state_dir / _STATE
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(json.dumps(state, indent=2) + "\n")


def _running(state_dir: Path) -> dict[str, Any] | None:
    pid = process.read_pid(state_dir / _PID)
    if pid is None or not process.alive(pid):
        return None
    try:
        state = dict(json.loads((state_dir / _STATE).read_text()))
    except (OSError, ValueError):
        return None
    return state if state.get("pid") == pid else None
