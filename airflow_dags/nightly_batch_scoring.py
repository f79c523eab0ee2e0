"""
# nightly_batch_scoring

Scores one day of the source Delta table with the champion model, then checks and
reports the output. The day is `{{ ds }}`: the run for 2026-11-07 starts after that day
ends (00:00 UTC on the 8th) and scores the rows whose date column is 2026-11-07.

1. **wait_for_source**: sensor (reschedule mode, so it holds no worker slot between
   pokes) until the source has rows for the date (`scoring batch has-data`, a Delta
   log read, no Spark).
2. **choose_engine**: `scoring_nightly_engine` picks the path. `arrow` (the default): the
   job runs in the worker as a plain task, **score_arrow** (`scoring batch run --engine
   arrow`: delta-rs and onnxruntime in one process, no JVM), for dates that fit a machine.
   `python`: the Spark engine, through the two tasks below (see ADR 0010 for which to
   choose).
3. **spark_conf**: the project writes the Spark settings every scoring job needs (jars,
   Delta, Arrow, Python) as a properties file (`scoring batch spark-conf`).
4. **score**: `spark-submit jobs/batch/score.py` through the `spark_default` connection
   (master, deploy mode), the project venv's spark-submit and Python.

Either way predictions replace exactly the date's rows, so a retry, a re-run or a
backfill of a date never duplicates. A source whose schema does not fit the model's
contract (job exit code 3) fails the scoring task at once, with the job's message,
without retries.
5. **check_output** (fails the run): predictions + rejects reconcile with the source rows
   of the date, rejects ratio under `scoring_nightly_max_rejects_ratio`, score PSI against
   the newest earlier date scored by the same model version (or
   `scoring_nightly_reference_date`) under `scoring_nightly_max_psi`.
6. **report** (beside the check, so failed numbers are recorded too): report JSON and a
   score-distribution plot under `scoring_nightly_reports_dir/<ds>/`, logged as an MLflow
   run in the `scoring_nightly_experiment` experiment with the job's JSON summary.

Variables (all optional, see `scoring_common.py` for the shared ones):
`scoring_nightly_source`, `scoring_nightly_predictions`, `scoring_nightly_rejects`,
`scoring_nightly_date_column`, `scoring_nightly_engine` (`arrow` or `python`),
`scoring_nightly_reports_dir`,
`scoring_nightly_max_rejects_ratio`, `scoring_nightly_max_psi`,
`scoring_nightly_reference_date`, `scoring_nightly_experiment`.

Run one date by hand, or backfill a range (each date is replaced, never appended):

```
source infra/airflow/env.sh
.venv-airflow/bin/airflow dags test nightly_batch_scoring 2026-11-07
.venv-airflow/bin/airflow backfill create --dag-id nightly_batch_scoring \\
    --from-date 2026-11-01 --to-date 2026-11-07
```
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import scoring_common as sc
from airflow.sdk import DAG, CronDataIntervalTimetable, task
from airflow.sdk.exceptions import AirflowFailException

REPORTS = "{{ scoring('nightly_reports_dir') }}/{{ ds }}"
SPARK_ENGINES = ("python",)
# The output tasks run after whichever engine ran; the other's tasks are skipped.
AFTER_SCORING = "none_failed_min_one_success"


def _job_args(setting: Callable[[str], str], ds: str, run_id: str, reports: str) -> list[str]:
    """Options of the batch job, whichever engine runs it: from ``setting(name)``."""
    return sc.flags(
        {
            "--model": setting("model"),
            "--source": setting("nightly_source"),
            "--target": setting("nightly_predictions"),
            "--rejects": setting("nightly_rejects"),
            "--date": ds,
            "--date-column": setting("nightly_date_column"),
            "--engine": setting("nightly_engine"),
            "--run-id": run_id,
            "--summary-file": f"{reports}/batch_summary.json",
        }
    )


def _output_args(ds: str) -> list[str]:
    """Options of `scoring batch check` and `scoring batch report` for one date."""
    return sc.flags(
        {
            "--source": sc.setting("nightly_source"),
            "--predictions": sc.setting("nightly_predictions"),
            "--rejects": sc.setting("nightly_rejects"),
            "--date": ds,
            "--date-column": sc.setting("nightly_date_column"),
            "--max-rejects-ratio": sc.setting("nightly_max_rejects_ratio"),
            "--max-psi": sc.setting("nightly_max_psi"),
            "--reference-date": sc.setting("nightly_reference_date"),
        }
    )


def _reports(ds: str) -> str:
    return f"{sc.setting('nightly_reports_dir')}/{ds}"


with DAG(
    dag_id="nightly_batch_scoring",
    description="Score a day of the source Delta table, check and report the output",
    doc_md=__doc__,
    # A data interval per day: `ds` is the day whose rows are scored, and its run starts
    # once that day is over (explicit, whatever [scheduler] create_cron_data_intervals says).
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 11, 1, tzinfo=UTC),
    # No catch-up: unpausing after a week must not silently queue a week of Spark jobs.
    # Missed or corrected days are backfilled on purpose (`airflow backfill create`), which
    # is safe because each run replaces exactly its own date.
    catchup=False,
    # One date at a time: one writer per table (ADR 0007, ADR 0010), one Spark job on the
    # cluster, and the drift reference (the newest earlier date scored) is then always a
    # finished date.
    max_active_runs=1,
    # A run stuck longer than this (e.g. a sensor on a day that never lands) must not
    # block the next night's run.
    dagrun_timeout=timedelta(hours=20),
    default_args={
        "owner": "scoring",
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
    },
    tags=["scoring", "batch", "arrow", "spark", "delta"],
    user_defined_macros=sc.MACROS,
) as dag:

    @task.sensor(
        task_id="wait_for_source",
        mode="reschedule",
        poke_interval=timedelta(minutes=10).total_seconds(),
        timeout=timedelta(hours=12).total_seconds(),
    )
    def wait_for_source(ds: str | None = None) -> bool:
        """Poke: does the source have rows for ``ds`` yet?

        The check runs the project CLI in the project venv (Delta and pyarrow live there,
        not in Airflow's): one short subprocess per poke that reads the Delta log, no
        JVM. Exit 4 means "not yet"; 3 (no such table) fails at once; anything else is
        retried.
        """
        assert ds is not None
        return sc.poke_cli(
            [
                "batch",
                "has-data",
                *sc.flags(
                    {
                        "--source": sc.setting("nightly_source"),
                        "--date": ds,
                        "--date-column": sc.setting("nightly_date_column"),
                    }
                ),
            ]
        )

    @task.branch(task_id="choose_engine")
    def choose_engine() -> str:
        """The arrow engine as a plain task, or the Spark engine through spark-submit."""
        engine = sc.setting("nightly_engine")
        if engine == "arrow":
            return "score_arrow"
        if engine in SPARK_ENGINES:
            return "spark_conf"
        raise AirflowFailException(f"scoring_nightly_engine is {engine!r}; set arrow or python.")

    @task(task_id="score_arrow", execution_timeout=timedelta(hours=4))
    def score_arrow(ds: str | None = None, run_id: str | None = None) -> dict:
        """`scoring batch run --engine arrow`: the job in this worker, no JVM."""
        assert ds is not None and run_id is not None
        args = _job_args(sc.setting, ds, run_id, _reports(ds))
        return sc.last_json(sc.run_cli(["batch", "run", *args]))

    @task(task_id="spark_conf", execution_timeout=timedelta(minutes=10))
    def spark_conf(ds: str | None = None) -> str:
        """The project's Spark settings as a properties file for spark-submit (its path).

        Written for each run by the installed project itself, so the jar list and Delta
        settings are never copied into Airflow by hand and cannot drift from the code.
        """
        assert ds is not None
        packed = sc.setting("python_env")
        return sc.run_cli(
            [
                "batch",
                "spark-conf",
                "--output",
                f"{_reports(ds)}/spark.properties",
                *(["--python-env", packed] if packed else []),
            ]
        ).strip()

    score = sc.ScoringSparkSubmitOperator(
        task_id="score",
        conn_id="spark_default",
        application="{{ scoring('project_root') }}/jobs/batch/score.py",
        properties_file="{{ ti.xcom_pull(task_ids='spark_conf') }}",
        # Executors run the packed environment when one is set, else the project venv.
        conf={
            "spark.pyspark.python": "{{ './environment/bin/python' if scoring('python_env') "
            "else scoring('venv') ~ '/bin/python' }}"
        },
        env_vars={
            # spark-submit (the connection's `spark-binary`) resolves to the project venv's.
            "PATH": "{{ spark_submit_path() }}",
            "PYSPARK_PYTHON": "{{ scoring('venv') }}/bin/python",
            "SCORING_HOME": "{{ scoring('home') }}",
            "SPARK_LOCAL_IP": "{{ scoring('spark_local_ip') }}",
            "MLFLOW_TRACKING_URI": "{{ scoring('tracking_uri') }}",
        },
        application_args=_job_args(
            lambda name: "{{ scoring('" + name + "') }}", "{{ ds }}", "{{ run_id }}", REPORTS
        ),
        name="nightly_batch_scoring-{{ ds }}",
        execution_timeout=timedelta(hours=4),
    )

    @task(
        task_id="check_output",
        execution_timeout=timedelta(minutes=30),
        trigger_rule=AFTER_SCORING,
    )
    def check_output(ds: str | None = None) -> dict:
        """Fail the run, naming each failed check and its numbers (`scoring batch check`)."""
        assert ds is not None
        return sc.last_json(sc.run_cli(["batch", "check", *_output_args(ds)]))

    @task(task_id="report", execution_timeout=timedelta(minutes=30), trigger_rule=AFTER_SCORING)
    def report(ds: str | None = None) -> dict:
        """Report JSON + score plot, logged to MLflow (`scoring batch report`)."""
        assert ds is not None
        report_options = {
            "--out-dir": _reports(ds),
            "--summary-file": f"{_reports(ds)}/batch_summary.json",
            "--experiment": sc.setting("nightly_experiment"),
        }
        return sc.last_json(
            sc.run_cli(["batch", "report", *_output_args(ds), *sc.flags(report_options)])
        )

    engine = choose_engine()
    on_arrow, on_spark = score_arrow(), spark_conf()
    checked, reported = check_output(), report()
    wait_for_source() >> engine >> [on_arrow, on_spark]
    on_spark >> score
    [on_arrow, score] >> checked
    [on_arrow, score] >> reported
