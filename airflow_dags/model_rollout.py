"""
# model_rollout

Takes a registered candidate version to production on both paths, proves it, and rolls
the alias back by itself when anything fails after the promotion. Trigger it with the
candidate: `{"model": "fraud", "version": "3"}`.

1. **validate** (`scoring model validate`): both checksums (contract and registry), the
   contract against the source table's schema, and the quality gate: the candidate's
   metric on the labelled holdout must be at least the champion's minus the margin.
2. **parity** (`scoring model parity`): golden rows scored through the batch code and
   through a stream processor on temporary topics must agree bit for bit.
3. **shadow** (`scoring model promote NAME V --alias challenger`): the stream processors
   that follow `NAME@challenger` (`scoring stream run --shadow`) start scoring every
   event with the candidate too, into the shadow topic; nobody reads its output. The
   time the alias was set starts the comparison's window.
4. **evidence** (`scoring stream wait-shadow`): every processor in
   `scoring_rollout_health_urls` reports the candidate as its shadow, and together they
   made `scoring_rollout_shadow_events` shadow predictions with it, within
   `scoring_rollout_shadow_timeout` seconds.
5. **compare** (`scoring model compare --output-topic ... --shadow-topic ...`): the
   champion's and the candidate's predictions in the window from the shadow task's start
   to now, paired by key (the candidate's version only), must agree on at least
   `scoring_rollout_shadow_min_agreement` of the labels, with a score PSI of at most
   `scoring_rollout_shadow_max_psi`, over at least `scoring_rollout_shadow_events` rows.
   The report and plot are logged to the MLflow experiment
   `scoring_rollout_shadow_experiment`.
6. **promote** (`scoring model promote`): the alias moves to the candidate; the previous
   holder is remembered.
7. **confirm** (`scoring stream wait-version`): every running stream processor listed in
   `scoring_rollout_health_urls` must report the candidate on `/health`, and every model
   server listed in `scoring_rollout_serve_urls` (`scoring serve`) on its metadata,
   `/v2/models/NAME`, within `scoring_rollout_confirm_timeout` seconds. Both follow the
   alias (processors between batches, servers between requests), so one task waits for
   both under one deadline and one rollback: a server still on the old version is as
   much a failed rollout as a processor. Servers take no part in the shadow phase. A
   server behind a token gets the worker's `SCORING_SERVE_TOKEN` as a bearer token, and
   no other URL is sent it.
8. **rollback** (runs only when a task above failed): if the alias is on the candidate it
   is moved back to the previous holder (a failed shadow phase never moved it); either
   way the run fails, naming what failed and its numbers.
9. **clear_challenger** (always, at the end): `scoring model alias delete NAME --alias
   challenger --if-version V`; the processors stop shadowing, promoted or not.

With `scoring_rollout_shadow_events` = `0` the shadow phase (3-5) is skipped and the
candidate is promoted straight after parity.

Nothing runs twice by accident: gate failures (exit 5) and bad input fail at once
without retries; only infrastructure errors are retried.

Variables (all optional; shared ones in `scoring_common.py`):
`scoring_rollout_source` (labelled holdout and golden rows, default the nightly source),
`scoring_rollout_engine` (the batch engine validate and parity read and score with:
`arrow`, in the task's process, or `python`, Spark; default `scoring_nightly_engine`),
`scoring_rollout_label` (`is_fraud`), `scoring_rollout_holdout_date` (all rows),
`scoring_rollout_metric` (`auc` or `average_precision`), `scoring_rollout_margin` (0),
`scoring_rollout_golden_date`, `scoring_rollout_golden_rows` (500),
`scoring_rollout_kafka_bootstrap` (for the parity processor and the comparison),
`scoring_rollout_kafka_config` (path of a Kafka client properties file on the worker, for
a secured cluster: TLS, SASL or mutual TLS; see the README's "Secured Kafka"),
`scoring_rollout_health_urls` (comma-separated `/health` URLs of the processors),
`scoring_rollout_serve_urls` (comma-separated `/v2/models/NAME` URLs of the model servers;
list each replica's own address, as a Service's URL reaches one replica per request),
`scoring_rollout_confirm_timeout` (120), `scoring_rollout_alias` (`champion`);
the shadow phase's: `scoring_rollout_shadow_events` (1000; 0 skips the phase),
`scoring_rollout_shadow_timeout` (3600 s, at most 12 h), `scoring_rollout_output_topic`
(`fraud_scores`), `scoring_rollout_shadow_topic` (`fraud_scores_shadow`),
`scoring_rollout_key` (`transaction_id`, the contract's key field),
`scoring_rollout_shadow_min_agreement` (0.95), `scoring_rollout_shadow_max_psi` (0.2),
`scoring_rollout_shadow_experiment` (`scoring-shadow`), `scoring_rollout_reports_dir`
(`<home>/reports/model_rollout`).

```
source infra/airflow/env.sh
.venv-airflow/bin/airflow dags test model_rollout -c '{"model": "fraud", "version": "3"}'
```
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import scoring_common as sc
from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

# In order; the rollback task reports the last one's failure.
TASKS = ("validate", "parity", "shadow", "evidence", "compare", "promote", "confirm")
FAILURE = "failure"  # XCom key: why a task failed, for the rollback task's message
CHALLENGER = "challenger"  # the alias the processors shadow
# The longest scoring_rollout_shadow_timeout the evidence task allows for.
SHADOW_LIMIT = timedelta(hours=12)


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


def _fail(reason: str) -> AirflowFailException:
    """A final failure whose reason the rollback task reports."""
    get_current_context()["ti"].xcom_push(key=FAILURE, value=reason)
    return AirflowFailException(reason)


def _optional(flag: str, setting: str) -> list[str]:
    value = sc.setting(setting)
    return [flag, value] if value else []


def _url_flags(setting: str) -> list[str]:
    """A comma-separated URL setting as ``--health-url`` flags of the stream waits."""
    urls = [u.strip() for u in sc.setting(setting).split(",") if u.strip()]
    return [arg for url in urls for arg in ("--health-url", url)]


def _health_flags() -> list[str]:
    return _url_flags("rollout_health_urls")


with DAG(
    dag_id="model_rollout",
    description="Validate a candidate model version, promote it, confirm it, roll back",
    doc_md=__doc__,
    schedule=None,  # triggered with the candidate in the run's conf
    start_date=datetime(2026, 11, 1, tzinfo=UTC),
    catchup=False,
    # One rollout at a time: two would race for the alias and its rollback history.
    max_active_runs=1,
    dagrun_timeout=SHADOW_LIMIT + timedelta(hours=2),
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
                "--engine", sc.setting("rollout_engine"),
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
                "--engine", sc.setting("rollout_engine"),
                "--rows", sc.setting("rollout_golden_rows"),
                "--date-column", sc.setting("nightly_date_column"),
                *_optional("--date", "rollout_golden_date"),
                *_optional("--bootstrap", "rollout_kafka_bootstrap"),
                *_optional("--kafka-config", "rollout_kafka_config"),
            ]
        ))  # fmt: skip

    @task
    def shadow() -> str:
        """Point the challenger alias at the candidate; returns when (the window's start)."""
        if int(sc.setting("rollout_shadow_events")) == 0:
            raise AirflowSkipException("scoring_rollout_shadow_events is 0: no shadow phase")
        if not _health_flags():
            raise _fail(
                "scoring_rollout_health_urls is empty: no stream processor to shadow the "
                "candidate; list their /health URLs, or set scoring_rollout_shadow_events "
                "to 0 to promote without a shadow phase"
            )
        model, version = _candidate()
        started = datetime.now(UTC).isoformat(timespec="milliseconds")
        _step(["model", "promote", model, version, "--alias", CHALLENGER])
        return started

    # Bounded by wait-shadow's own --timeout; the task's limit only has to be above it.
    @task(execution_timeout=SHADOW_LIMIT + timedelta(minutes=10))
    def evidence() -> Any:
        model, version = _candidate()
        timeout = sc.setting("rollout_shadow_timeout")
        if float(timeout) > SHADOW_LIMIT.total_seconds():
            raise _fail(
                f"scoring_rollout_shadow_timeout {timeout} s is above the evidence task's "
                f"limit of {SHADOW_LIMIT.total_seconds():.0f} s"
            )
        return sc.last_json(_step(
            [
                "stream", "wait-shadow", model, version, *_health_flags(),
                "--events", sc.setting("rollout_shadow_events"),
                "--timeout", timeout,
            ]
        ))  # fmt: skip

    @task
    def compare(since: str) -> Any:
        model, version = _candidate()
        run = re.sub(r"[^\w.-]+", "_", get_current_context()["run_id"])
        return sc.last_json(_step(
            [
                "model", "compare",
                "--output-topic", sc.setting("rollout_output_topic"),
                "--shadow-topic", sc.setting("rollout_shadow_topic"),
                "--key", sc.setting("rollout_key"),
                "--since", since,
                "--challenger-version", version,
                "--min-rows", sc.setting("rollout_shadow_events"),
                "--min-label-agreement", sc.setting("rollout_shadow_min_agreement"),
                "--max-psi", sc.setting("rollout_shadow_max_psi"),
                "--experiment", sc.setting("rollout_shadow_experiment"),
                "--out-dir", f"{sc.setting('rollout_reports_dir')}/{model}-v{version}/{run}",
                *_optional("--bootstrap", "rollout_kafka_bootstrap"),
                *_optional("--kafka-config", "rollout_kafka_config"),
            ]
        ))  # fmt: skip

    # none_failed: runs after a skipped shadow phase, never after a failed task.
    @task(trigger_rule="none_failed")
    def promote() -> str:
        model, version = _candidate()
        alias = sc.setting("rollout_alias")
        _step(["model", "promote", model, version, "--alias", alias])
        return f"{model}@{alias} -> {version}"

    @task
    def confirm() -> Any:
        """The stream processors and the model servers all score with the candidate."""
        model, version = _candidate()
        # wait-version tells a server's metadata from a processor's /health by its JSON.
        flags = [*_health_flags(), *_url_flags("rollout_serve_urls")]
        if not flags:
            print(
                "scoring_rollout_health_urls and scoring_rollout_serve_urls are empty: "
                "no stream processor or model server to confirm"
            )
            return None
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
            r for task_id in TASKS for r in [ti.xcom_pull(task_ids=task_id, key=FAILURE)] if r
        ]
        reason = reasons[-1] if reasons else "an upstream task failed (see its log)"
        outcome = sc.run_cli(
            ["model", "rollback", model, "--alias", alias, "--if-version", version]
        ).strip()
        raise AirflowFailException(
            f"Rollout of {model} v{version} failed: {reason}\nAlias: {outcome.splitlines()[-1]}"
        )

    @task(trigger_rule="all_done")
    def clear_challenger() -> str:
        """Always, at the end: the processors stop shadowing the candidate, promoted or not."""
        model, version = _candidate()
        args = ["model", "alias", "delete", model, "--alias", CHALLENGER, "--if-version", version]
        return sc.run_cli(args).strip()

    gates = [validate(), parity()]
    started = shadow()
    waited = evidence()
    compared = compare(started)
    promoted = promote()
    confirmed = confirm()
    gates[0] >> gates[1] >> started >> waited >> compared >> promoted >> confirmed
    [promoted, confirmed] >> rollback()
    [compared, confirmed] >> clear_challenger()
