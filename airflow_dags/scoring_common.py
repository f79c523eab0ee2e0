"""What the scoring DAGs share: where the project is, its settings, how a task calls it.

Standard library and ``airflow.sdk`` only, so every DAG file that imports this stays
cheap to parse. The scoring project is never imported into Airflow's environment: tasks
run its CLI (``<venv>/bin/scoring ...``) and its spark-submit job as subprocesses of the
project's own virtual environment, the way they run anywhere else.

Settings are Airflow Variables named ``scoring_<name>``; each one left unset takes the
default below, computed when a task runs. The shared ones:

==========================  ===========================================================
``scoring_project_root``    checkout of the project (default: the folder above this file)
``scoring_venv``            the project's virtual environment (``<project_root>/.venv``)
``scoring_home``            the project's data dir, ``SCORING_HOME`` (``<root>/.scoring``)
``scoring_tracking_uri``    MLflow tracking URI (default: SQLite under ``scoring_home``)
``scoring_model``           model URI the jobs score with (``models:/fraud@champion``)
``scoring_spark_local_ip``  address the Spark driver binds to and advertises
                            (``127.0.0.1``; on a cluster, one the executors can reach)
``scoring_python_env``      packed environment shipped to the executors with
                            ``--archives`` (``scoring batch pack-env``; default none:
                            executors run the project venv's Python at its path)
==========================  ===========================================================

Each DAG documents its own (``scoring_nightly_*`` for nightly_batch_scoring,
``scoring_rollout_*`` for model_rollout).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Variable
from airflow.sdk.exceptions import AirflowException, AirflowFailException

__all__ = [
    "DEFAULTS",
    "MACROS",
    "ScoringSparkSubmitOperator",
    "flags",
    "last_json",
    "poke_cli",
    "project_env",
    "run_cli",
    "setting",
]

log = logging.getLogger(__name__)

PREFIX = "scoring_"

# Exit codes of the project's CLI and jobs (see the README).
NOT_YET = 4  # `scoring batch has-data`: no rows for the date yet
# Retrying cannot change these answers: bad arguments or settings (2), a missing source or
# a schema that does not fit the contract (3), failed output checks (5).
FINAL = {2, 3, 5}


def _root() -> str:
    return str(Path(__file__).resolve().parent.parent)


DEFAULTS: dict[str, Callable[[], str]] = {
    "project_root": _root,
    "venv": lambda: f"{setting('project_root')}/.venv",
    "home": lambda: f"{setting('project_root')}/.scoring",
    "tracking_uri": lambda: "",
    "model": lambda: "models:/fraud@champion",
    "spark_local_ip": lambda: "127.0.0.1",
    "python_env": lambda: "",
    # nightly_batch_scoring
    "nightly_source": lambda: f"{setting('home')}/lake/transactions",
    "nightly_predictions": lambda: f"{setting('home')}/lake/fraud_scores",
    "nightly_rejects": lambda: f"{setting('home')}/lake/fraud_scores_rejects",
    "nightly_date_column": lambda: "ds",
    "nightly_engine": lambda: "arrow",
    "nightly_reports_dir": lambda: f"{setting('home')}/reports/nightly_batch_scoring",
    "nightly_max_rejects_ratio": lambda: "0.05",
    "nightly_max_psi": lambda: "0.2",
    "nightly_reference_date": lambda: "",
    "nightly_experiment": lambda: "nightly_batch_scoring",
    # model_rollout
    "rollout_source": lambda: setting("nightly_source"),
    "rollout_engine": lambda: setting("nightly_engine"),
    "rollout_label": lambda: "is_fraud",
    "rollout_holdout_date": lambda: "",
    "rollout_metric": lambda: "auc",
    "rollout_margin": lambda: "0.0",
    "rollout_golden_date": lambda: "",
    "rollout_golden_rows": lambda: "500",
    "rollout_kafka_bootstrap": lambda: "",
    "rollout_kafka_config": lambda: "",
    "rollout_health_urls": lambda: "",
    "rollout_serve_urls": lambda: "",
    "rollout_confirm_timeout": lambda: "120",
    "rollout_alias": lambda: "champion",
    "rollout_shadow_events": lambda: "1000",
    "rollout_shadow_timeout": lambda: "3600",
    "rollout_output_topic": lambda: "fraud_scores",
    "rollout_shadow_topic": lambda: "fraud_scores_shadow",
    "rollout_key": lambda: "transaction_id",
    "rollout_shadow_min_agreement": lambda: "0.95",
    "rollout_shadow_max_psi": lambda: "0.2",
    "rollout_shadow_experiment": lambda: "scoring-shadow",
    "rollout_reports_dir": lambda: f"{setting('home')}/reports/model_rollout",
}


def setting(name: str) -> str:
    """The Variable ``scoring_<name>``, or its default. Call it only while a task runs."""
    if name not in DEFAULTS:
        raise KeyError(f"unknown scoring setting {name!r}; known: {sorted(DEFAULTS)}")
    value = Variable.get(PREFIX + name, default=None)
    return DEFAULTS[name]() if value in (None, "") else str(value)


def project_env() -> dict[str, str]:
    """The environment of a project command: the worker's, plus the project's settings.

    Python path variables of Airflow's environment are dropped so that the project venv
    never sees Airflow's packages.
    """
    env = {
        k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    }
    env["SCORING_HOME"] = setting("home")
    env["SPARK_LOCAL_IP"] = setting("spark_local_ip")
    uri = setting("tracking_uri")
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def spark_submit_path() -> str:
    """PATH for spark-submit: the project venv's ``bin`` first, then the worker's."""
    return f"{setting('venv')}/bin{os.pathsep}{os.environ.get('PATH', os.defpath)}"


def _run(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    command = [f"{setting('venv')}/bin/scoring", *args]
    log.info("running %s", shlex.join(command))
    result = subprocess.run(command, capture_output=True, text=True, env=project_env(), check=False)
    for stream, text in (("stderr", result.stderr), ("stdout", result.stdout)):
        for line in text.splitlines():
            log.info("[%s] %s", stream, line)
    return result


def _failure(result: subprocess.CompletedProcess[str]) -> AirflowException:
    message = (
        f"`scoring {shlex.join(result.args[1:])}` exited with code {result.returncode}:\n"
        f"{result.stderr.strip()[-3000:]}"
    )
    # A final answer fails the task at once; anything else is retried.
    return (AirflowFailException if result.returncode in FINAL else AirflowException)(message)


def run_cli(args: Sequence[str]) -> str:
    """Run ``scoring ARGS`` in the project venv and return its stdout.

    Raises AirflowFailException (no retry) for exit codes 2, 3 and 5, whose answer a retry
    cannot change, and AirflowException (retried) for anything else non-zero; the
    message carries the command's own error.
    """
    result = _run(args)
    if result.returncode != 0:
        raise _failure(result)
    return result.stdout


def poke_cli(args: Sequence[str]) -> bool:
    """A sensor's poke: True on exit 0, False on exit 4 ("not yet"), raises otherwise."""
    result = _run(args)
    if result.returncode == NOT_YET:
        return False
    if result.returncode != 0:
        raise _failure(result)
    return True


def flags(options: dict[str, str]) -> list[str]:
    """``{"--date": "2026-11-07"}`` as command-line arguments; empty values are left out."""
    return [part for flag, value in options.items() if value for part in (flag, value)]


def last_json(stdout: str) -> Any:
    """The JSON document a project command prints last."""
    lines = stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None


class ScoringSparkSubmitOperator(SparkSubmitOperator):
    """spark-submit of a project job; the job's final answers are not retried.

    The batch job exits 2 for bad arguments or settings and 3 for a missing source or a
    schema that does not fit the model's contract: running it again gives the same
    answer, so the task fails at once (with the job's message) instead of spending its
    retries. Other failures (a lost executor, a busy cluster) are retried as usual.
    """

    def execute(self, context: Any) -> Any:
        try:
            return super().execute(context)
        except AirflowFailException:
            raise
        except AirflowException as exc:
            # The provider reports spark-submit's exit code only in its message.
            code = re.search(r"Error code is: (\d+)", str(exc))
            if code and int(code.group(1)) in FINAL:
                raise AirflowFailException(str(exc)) from exc
            raise


# Available in every templated field of a DAG that passes them as user_defined_macros.
MACROS: dict[str, Callable[..., Any]] = {
    "scoring": setting,
    "spark_submit_path": spark_submit_path,
}
