"""The MLflow Model Registry: where artifacts are stored, versioned and aliased.

MLflow is used for storage, registry and metadata only; scoring never goes through an
MLflow flavour. The embedded default is a SQLite store and a local artifact folder under
the data dir; ``MLFLOW_TRACKING_URI`` points anywhere else.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from scoring.errors import ModelNotFoundError, RollbackError, TrackingServerError
from scoring.model.contract import Contract
from scoring.settings import ENV, Settings, load

__all__ = [
    "EXPERIMENT",
    "ModelVersionInfo",
    "client",
    "delete_alias",
    "download",
    "list_versions",
    "promote",
    "register",
    "resolve",
    "rollback",
    "server_error",
    "tracking",
]

log = logging.getLogger(__name__)

EXPERIMENT = "scoring"
SHA_TAG = "scoring.onnx_sha256"
METRICS_TAG = "scoring.metrics"
HISTORY_TAG = "scoring.alias_history.{alias}"
_SHOWN_NAMES = 10  # registered names an error lists, at most
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: str
    sha256: str | None
    aliases: tuple[str, ...]
    created: datetime
    metrics: dict[str, float]
    source: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class _Store:
    client: MlflowClient
    tracking_uri: str
    registry_uri: str
    experiment_id: str
    settings: Settings

    @property
    def embedded(self) -> bool:
        """Whether the registry is the SQLite store under the data dir (nothing configured)."""
        return self.settings.tracking_uri is None and self.settings.registry_uri is None

    @property
    def created(self) -> bool:
        """Whether this process created the embedded store: it was empty then."""
        return self.embedded and self.tracking_uri in _created

    def where(self) -> str:
        """Which registry answered and how to ask another, for errors about what it lacks."""
        if self.embedded:
            home = self.settings.home.resolve()
            asked = (
                f"Asked the embedded registry {home / 'mlflow.db'} ({self.settings.home_origin})"
            )
        else:
            variable = ENV["registry_uri"] if self.settings.registry_uri else ENV["tracking_uri"]
            asked = f"Asked the registry at {_without_credentials(self.registry_uri)} ({variable})"
        if self.settings.registry_uri:
            return f"{asked}. To ask another, set {ENV['registry_uri']}=URI."
        return (
            f"{asked}. To ask another, set {ENV['home']}=DIR (the data dir whose mlflow.db "
            f"holds your models) or {ENV['tracking_uri']}=URI (a tracking server or database)."
        )


_experiments: dict[tuple[str, str], str] = {}
# Embedded stores this process created: a registry that is empty because it is new says so.
_created: set[str] = set()


def _store(settings: Settings | None = None, experiment: str = EXPERIMENT) -> _Store:
    """The configured store; the experiment is created on first use.

    MLflow's global ``set_tracking_uri`` is never called: it exports
    ``MLFLOW_TRACKING_URI`` into this process's environment, which would then override
    the settings of everything that runs after it.
    """
    settings = settings or load()
    uri = settings.mlflow_tracking_uri
    registry_uri = settings.registry_uri or uri
    key = (uri, experiment)
    if key not in _experiments and settings.tracking_uri is None:
        # Before the client: making one creates the SQLite file.
        if not (settings.home / "mlflow.db").exists():
            _created.add(uri)
        settings.make_home()
    mlc = MlflowClient(tracking_uri=uri, registry_uri=registry_uri)
    if key not in _experiments:
        try:
            found = mlc.get_experiment_by_name(experiment)
            if found is None:
                # Without an explicit location a SQLite store puts artifacts under ./mlruns
                # of whatever directory the process happens to run in. A server chooses
                # its own (its --artifacts-destination).
                location = None if settings.tracking_uri else settings.mlflow_artifacts.as_uri()
                _experiments[key] = mlc.create_experiment(experiment, artifact_location=location)
            else:
                _experiments[key] = found.experiment_id
        except MlflowException as exc:
            problem = server_error(uri, exc)
            if problem is None:
                raise
            raise problem from exc
    return _Store(mlc, uri, registry_uri, _experiments[key], settings)


def server_error(uri: str, exc: MlflowException) -> TrackingServerError | None:
    """What a user should do about ``exc`` from a tracking server, if it is about the server.

    The message names the variables to fix; it never repeats the request or the response,
    which could carry credentials.
    """
    text = str(exc)
    shown = _without_credentials(uri)
    if re.search(r"error code (401|403)\b", text):
        return TrackingServerError(
            shown,
            "refused the credentials (HTTP 401/403). Set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an account of that server "
            "that may use the registry.",
        )
    if any(s in text for s in ("Max retries exceeded", "Connection refused", "timed out")):
        return TrackingServerError(
            shown,
            "could not be reached. Check MLFLOW_TRACKING_URI and that the server is up; "
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES and MLFLOW_HTTP_REQUEST_TIMEOUT bound how long "
            "each call waits for it.",
        )
    return None


def _without_credentials(uri: str) -> str:
    return re.sub(r"//[^/@]*@", "//", uri)


def tracking(experiment: str, settings: Settings | None = None) -> tuple[MlflowClient, str]:
    """A client for the configured tracking store and the id of ``experiment``.

    The experiment is created on first use, with its artifacts beside the registry's.
    """
    store = _store(settings, experiment)
    return store.client, store.experiment_id


def client(settings: Settings | None = None) -> MlflowClient:
    """A client for the configured tracking store and registry."""
    return _store(settings).client


def _info(mv: Any) -> ModelVersionInfo:
    tags = mv.tags or {}
    return ModelVersionInfo(
        name=mv.name,
        version=str(mv.version),
        sha256=tags.get(SHA_TAG),
        aliases=tuple(getattr(mv, "aliases", ()) or ()),
        created=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC),
        metrics=json.loads(tags.get(METRICS_TAG, "{}")),
        source=mv.source,
    )


def resolve(uri: str) -> ModelVersionInfo:
    """``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` to one immutable version."""
    match = _URI.match(uri)
    if not match:
        raise ModelNotFoundError(uri, "expected models:/NAME/VERSION or models:/NAME@ALIAS")
    store = _store()
    name = match["name"]
    try:
        if match["alias"]:
            mv = store.client.get_model_version_by_alias(name, match["alias"])
        else:
            mv = store.client.get_model_version(name, match["version"])
    except MlflowException as exc:
        problem = server_error(store.tracking_uri, exc)
        if problem is not None:
            raise problem from exc
        raise _not_found(store, uri, name, exc) from exc
    return _info(mv)


def _not_found(store: _Store, uri: str, name: str, exc: MlflowException) -> ModelNotFoundError:
    """What the registry lacks: the name (and what it holds instead), or that version or alias."""
    try:
        store.client.get_registered_model(name)
    except MlflowException as missing:
        if missing.error_code == "RESOURCE_DOES_NOT_EXIST":
            return ModelNotFoundError(uri, _holdings(store, name), store.where())
    see = f"See its versions and aliases with `scoring model list {name}`"
    return ModelNotFoundError(uri, f"{exc.message.rstrip('.')}. {see}", store.where())


def _holdings(store: _Store, name: str) -> str:
    """That the registry has no model ``name``, and the names it does have (the first few)."""
    try:
        found = store.client.search_registered_models(max_results=_SHOWN_NAMES)
    except MlflowException:
        return f"the registry has no model named {name!r}"
    names = ", ".join(sorted(m.name for m in found))
    if not names:
        new = "; this command created it (there was no mlflow.db before)" if store.created else ""
        return f"the registry has no model named {name!r}; it holds no models{new}"
    more = ", among others" if found.token else ""
    return f"the registry has no model named {name!r}; it holds {names}{more}"


def download(info: ModelVersionInfo, destination: Path) -> Path:
    """Copy a version's artifact folder to ``destination`` and return its path."""
    # The version's source is the artifact location itself (file:, s3:, ...); a models:/
    # URI here would be resolved against MLflow's process-global registry instead.
    store = _store()
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=info.source, dst_path=str(destination), tracking_uri=store.tracking_uri
        )
    )


def register(
    model_dir: Path,
    name: str,
    contract: Contract,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
) -> ModelVersionInfo:
    """Log ``model_dir`` as a run's artifact and register it as a new version of ``name``."""
    store = _store()
    mlc = store.client
    run = mlc.create_run(
        store.experiment_id, run_name=f"package-{name}", tags={SHA_TAG: contract.onnx_sha256}
    )
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    mlc.log_batch(
        run_id,
        metrics=[
            Metric(k, float(v), now, 0) for k, v in {**contract.metrics, **(metrics or {})}.items()
        ],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
    )
    mlc.log_artifacts(run_id, str(model_dir), artifact_path="model")
    mlc.set_terminated(run_id)
    try:
        mlc.get_registered_model(name)
    except MlflowException:
        mlc.create_registered_model(name, description="Scored by the scoring pipelines.")
    mv = mlc.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/model",
        run_id=run_id,
        tags={SHA_TAG: contract.onnx_sha256, METRICS_TAG: json.dumps(contract.metrics)},
    )
    log.info("registered %s version %s", name, mv.version)
    return _info(mlc.get_model_version(name, mv.version))


def _history(mlc: MlflowClient, name: str, alias: str) -> list[str]:
    tags = mlc.get_registered_model(name).tags or {}
    return list(json.loads(tags.get(HISTORY_TAG.format(alias=alias), "[]")))


def promote(name: str, version: str, alias: str = "champion") -> str | None:
    """Point ``alias`` at ``version``; remember the previous holder for :func:`rollback`.

    Returns the version that held the alias before, if any.
    """
    mlc = client()
    target = resolve(f"models:/{name}/{version}")
    try:
        previous: str | None = resolve(f"models:/{name}@{alias}").version
    except ModelNotFoundError:
        previous = None
    if previous == target.version:
        return previous
    history = _history(mlc, name, alias)
    if previous is not None:
        history.append(previous)
        mlc.set_registered_model_tag(name, HISTORY_TAG.format(alias=alias), json.dumps(history))
    mlc.set_registered_model_alias(name, alias, target.version)
    log.info("%s@%s: %s -> %s", name, alias, previous, target.version)
    return previous


def rollback(name: str, alias: str = "champion") -> str:
    """Point ``alias`` back at the version that held it before the last promotion."""
    mlc = client()
    history = _history(mlc, name, alias)
    if not history:
        raise RollbackError(
            f"No earlier version of {name} held the alias {alias!r}; nothing to roll back "
            f"to. Promote a version explicitly with `scoring model promote {name} VERSION`."
        )
    version = history.pop()
    resolve(f"models:/{name}/{version}")
    mlc.set_registered_model_alias(name, alias, version)
    mlc.set_registered_model_tag(name, HISTORY_TAG.format(alias=alias), json.dumps(history))
    log.info("%s@%s rolled back to %s", name, alias, version)
    return version


def delete_alias(name: str, alias: str, if_version: str | None = None) -> str | None:
    """Remove ``alias`` from ``name``; returns the version it pointed at (None: no alias).

    With ``if_version``, only when the alias is on that version: a rollout clears the
    alias it set, never one that someone moved since. The alias's rollback history is kept.
    """
    try:
        current: str | None = resolve(f"models:/{name}@{alias}").version
    except ModelNotFoundError:
        current = None
    if current is None or (if_version is not None and current != if_version):
        return None
    client().delete_registered_model_alias(name, alias)
    log.info("%s@%s (version %s) deleted", name, alias, current)
    return current


def list_versions(name: str) -> list[ModelVersionInfo]:
    store = _store()
    mlc = store.client
    try:
        mlc.get_registered_model(name)
    except MlflowException as exc:
        problem = server_error(store.tracking_uri, exc)
        if problem is not None:
            raise problem from exc
        raise ModelNotFoundError(name, _holdings(store, name), store.where()) from exc
    found = mlc.search_model_versions(f"name = '{name}'")
    # Search results carry no aliases; the per-version record does.
    versions = sorted(int(mv.version) for mv in found)
    return [_info(mlc.get_model_version(name, str(v))) for v in versions]
