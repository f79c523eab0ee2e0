"""
# model_rollout

Takes a registered candidate version to production on both paths, proves it, and rolls
the alias back by itself when anything fails after the promotion. Trigger it with the
candidate: `{"model": "fraud", "version": "3"}`.

1. **validate** (`scoring model validate`): both checksums (contract and registry), the
   contract against the source table's schema, and the quality gate: the candidate's
   metric on the labelled holdout must be at least the champion's minus the margin.
2. **parity** (`scoring model parity`): golden rows scored through the batch code (Spark)
   and through a stream processor on temporary topics must agree bit for bit.
3. **promote** (`scoring model promote`): the alias moves to the candidate; the previous
   holder is remembered.
4. **confirm** (`scoring stream wait-version`): every running stream processor listed in
   `scoring_rollout_health_urls` must report the candidate on `/health` within
   `scoring_rollout_confirm_timeout` seconds (they follow the alias between batches).
5. **rollback** (runs only when a task above failed): if the alias is on the candidate it
   is moved back to the previous holder; either way the run fails, naming what failed.

Nothing runs twice by accident: gate failures (exit 5) and bad input fail at once
without retries; only infrastructure errors are retried.

Variables (all optional; shared ones in `scoring_common.py`):
`scoring_rollout_source` (labelled holdout and golden rows, default the nightly source),
`scoring_rollout_label` (`is_fraud`), `scoring_rollout_holdout_date` (all rows),
`scoring_rollout_metric` (`auc` or `average_precision`), `scoring_rollout_margin` (0),
`scoring_rollout_golden_date`, `scoring_rollout_golden_rows` (500),
`scoring_rollout_kafka_bootstrap` (for the parity processor),
`scoring_rollout_kafka_config` (path of a Kafka client properties file on the worker, for
a secured cluster: TLS, SASL or mutual TLS; see the README's "Secured Kafka"),
`scoring_rollout_health_urls` (comma-separated `/health` URLs of the processors),
`scoring_rollout_confirm_timeout` (120), `scoring_rollout_alias` (`champion`).

```
source infra/airflow/env.sh
.venv-airflow/bin/airflow dags test model_rollout -c '{"model": "fraud", "version": "3"}'
```
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import scoring_common as sc
from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException

FAILURE = "failure"  # XCom key: why a task failed, for the rollback task's message


def _candidate() -> tuple[str, str]:
    params = get_current_context()["params"]
    return str(params["model"]), str(params["version"])


def _step(args: list[str]) -> str:
    """Run a project command (its stdout); on failure leave the reason for rollback."""
    try:
        return sc.run_cli(args)
    except AirflowException as exc:
        get_current_context()["ti"].xcom_push(key=FAILURE, value=str(exc)[-2000:])
        raise


def _optional(flag: str, setting: str) -> list[str]:
    value = sc.setting(setting)
    return [flag, value] if value else []


with DAG(
    dag_id="model_rollout",
    description="Validate a candidate model version, promote it, confirm it, roll back",
    doc_md=__doc__,
    schedule=None,  # triggered with the candidate in the run's conf
    start_date=datetime(2026, 11, 1, tzinfo=UTC),
    catchup=False,
    # One rollout at a time: two would race for the alias and its rollback history.
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    params={
        "model": Param("fraud", type="string", description="registered model name"),
        "version": Param(type=["string", "integer"], description="candidate version"),
    },
    default_args={
        "owner": "scoring",
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "execution_timeout": timedelta(minutes=30),
    },
    tags=["scoring", "rollout", "mlflow", "kafka"],
) as dag:

    @task
    def validate() -> Any:
        model, version = _candidate()
        return sc.last_json(_step(
            [
                "model", "validate", model, version,
                "--source", sc.setting("rollout_source"),
                "--label", sc.setting("rollout_label"),
                "--metric", sc.setting("rollout_metric"),
                "--margin", sc.setting("rollout_margin"),
                "--date-column", sc.setting("nightly_date_column"),
                *_optional("--date", "rollout_holdout_date"),
            ]
        ))  # fmt: skip

    @task
    def parity() -> Any:
        model, version = _candidate()
        return sc.last_json(_step(
            [
                "model", "parity", model, version,
                "--source", sc.setting("rollout_source"),
                "--rows", sc.setting("rollout_golden_rows"),
                "--date-column", sc.setting("nightly_date_column"),
                *_optional("--date", "rollout_golden_date"),
                *_optional("--bootstrap", "rollout_kafka_bootstrap"),
                *_optional("--kafka-config", "rollout_kafka_config"),
            ]
        ))  # fmt: skip

    @task
    def promote() -> str:
        model, version = _candidate()
        alias = sc.setting("rollout_alias")
        _step(["model", "promote", model, version, "--alias", alias])
        return f"{model}@{alias} -> {version}"

    @task
    def confirm() -> Any:
        model, version = _candidate()
        urls = [u.strip() for u in sc.setting("rollout_health_urls").split(",") if u.strip()]
        if not urls:
            print("scoring_rollout_health_urls is empty: no stream processor to confirm")
            return None
        flags = [arg for url in urls for arg in ("--health-url", url)]
        timeout = sc.setting("rollout_confirm_timeout")
        args = ["stream", "wait-version", model, version, *flags, "--timeout", timeout]
        return sc.last_json(_step(args))

    @task(trigger_rule="one_failed", retries=2)
    def rollback() -> None:
        """Only after a failure: undo the promotion if it happened, then fail the run."""
        model, version = _candidate()
        alias = sc.setting("rollout_alias")
        ti = get_current_context()["ti"]
        reasons = [
            r
            for task_id in ("validate", "parity", "promote", "confirm")
            for r in [ti.xcom_pull(task_ids=task_id, key=FAILURE)]
            if r
        ]
        reason = reasons[-1] if reasons else "an upstream task failed (see its log)"
        outcome = sc.run_cli(
            ["model", "rollback", model, "--alias", alias, "--if-version", version]
        ).strip()
        raise AirflowFailException(
            f"Rollout of {model} v{version} failed: {reason}\nAlias: {outcome.splitlines()[-1]}"
        )

    gates = [validate(), parity()]
    promoted = promote()
    confirmed = confirm()
    gates[0] >> gates[1] >> promoted >> confirmed
    [promoted, confirmed] >> rollback()
