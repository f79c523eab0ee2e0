"""``scoring batch``: the nightly job (in this process or spark-submitted) and its checks.

Thin over ``scoring.batch``: the job, its Spark settings and packed environments, Delta
reads without Spark, output checks and reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from scoring.cli.common import FORWARD_ALL, DateColumn, errors, iso_date, user_errors

__all__ = ["app"]

app = typer.Typer(
    help="Nightly batch scoring of Delta tables: in this process (no JVM) or on Spark.",
    no_args_is_help=True,
)

# Options of the commands a scheduler runs around the batch job (has-data, check, report).
Source = Annotated[str, typer.Option(help="source Delta table (path or URI)")]
Predictions = Annotated[str, typer.Option(help="predictions Delta table (path or URI)")]
Rejects = Annotated[
    str | None, typer.Option(help="rejects Delta table (default PREDICTIONS_rejects)")
]
Day = Annotated[str, typer.Option(callback=iso_date, help="the date (YYYY-MM-DD)")]
MaxRejectsRatio = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="highest share of refused rows")
]
MaxPsi = Annotated[float, typer.Option(min=0.0, help="highest score PSI against the reference")]
PsiBins = Annotated[int, typer.Option(min=2, max=100, help="quantile bins of the PSI")]
ReferenceDate = Annotated[
    str | None,
    typer.Option(
        callback=iso_date,
        help="date whose scores are the drift reference (default: the newest earlier date "
        "scored by the same model version)",
    ),
]
LookbackDays = Annotated[
    int, typer.Option(min=1, help="earlier dates searched for a default reference")
]


@app.command(
    "run",
    context_settings=FORWARD_ALL,
    add_help_option=False,
)
@user_errors  # the job prints its own errors; this one masks an unexpected traceback
def batch_run(ctx: typer.Context) -> None:
    """Score a Delta table from this process: arrow engine, or Spark (--master); see --help.

    Each phase on stderr as it runs; stdout gets one line, the JSON summary.
    """
    from scoring.batch.main import main as score_main

    raise typer.Exit(score_main(_job_args(ctx), prog="scoring batch run"))


def _job_args(ctx: typer.Context) -> list[str]:
    """The job's options, with --verbose when the command line was given -v."""
    verbose = ctx.find_root().params.get("verbose", False)
    return [*ctx.args, "--verbose"] if verbose else ctx.args


@app.command(
    "submit",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@user_errors
def batch_submit(
    ctx: typer.Context,
    master: Annotated[str | None, typer.Option(help="Spark master (default: settings)")] = None,
    python_env: Annotated[
        str | None,
        typer.Option(
            help="packed environment for the executors (`scoring batch pack-env`), shipped "
            "with --archives; for clusters whose nodes do not share this machine's paths"
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="print the command instead of running it")] = False,
) -> None:
    """spark-submit the batch job with the jars and Delta settings; job options follow `--`.

    Spark's own log is at WARN (`scoring -v batch submit`: INFO). The job's progress and
    Spark's lines go to stderr, the job's JSON summary alone to stdout. Exits with the
    job's exit code.
    """
    import shlex

    from scoring.batch.pyenv import archive_conf
    from scoring.batch.spark import submit_command
    from scoring.entrypoints import batch_score

    conf = archive_conf(_archive(python_env)) if python_env else None
    args = _job_args(ctx)
    verbose = bool({"-v", "--verbose"} & set(args))
    command = submit_command(
        Path(batch_score.__file__), args, master=master, conf=conf, verbose=verbose
    )
    if dry_run:
        print(shlex.join(command))
        return
    raise typer.Exit(_submit(command))


def _submit(command: list[str]) -> int:
    """Run spark-submit; its stdout (where it also puts the job's stderr) goes to stderr as
    it comes, except the job's JSON summary, which is printed last on stdout."""
    import json
    import subprocess
    import sys

    summary = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1) as spark:
        assert spark.stdout is not None
        for line in spark.stdout:
            if line.startswith('{"status": '):
                try:
                    json.loads(line)
                    summary = line.rstrip("\n")
                    continue
                except ValueError:
                    pass
            sys.stderr.write(line)
            sys.stderr.flush()
    if summary is not None:
        print(summary)
    return spark.returncode


def _archive(location: str) -> str:
    """A packed environment's location as spark-submit takes it (local files made absolute)."""
    if "://" in location:
        from scoring.batch.tables import for_spark

        return for_spark(location)  # s3:// is read by Spark's S3A as s3a://
    path = Path(location).expanduser().resolve()
    if not path.is_file():
        from scoring.errors import ConfigError

        raise ConfigError(
            f"No packed environment at {path}; build one with `scoring batch pack-env`."
        )
    return str(path)


@app.command("pack-env")
@user_errors
def batch_pack_env(
    output: Annotated[Path, typer.Option(help="the archive to write (.tar.gz)")] = Path(
        "scoring-env.tar.gz"
    ),
) -> None:
    """Pack the executors' Python environment (this project + what the job imports there).

    Pass it to `scoring batch submit --python-env` (or the nightly DAG's
    `scoring_python_env` Variable): executors then need only a plain Python of the same
    version at the same path, not this project. Prints the archive's path.
    """
    from scoring.batch.pyenv import pack

    print(pack(output))


@app.command("spark-conf")
@user_errors
def batch_spark_conf(
    output: Annotated[
        Path | None, typer.Option(help="write to this file (printed) instead of stdout")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of properties")] = False,
    python_env: Annotated[
        str | None,
        typer.Option(help="packed environment for the executors (see `batch submit --help`)"),
    ] = None,
) -> None:
    """The Spark settings every scoring job needs (jars, Delta, Arrow, Python, log level).

    As a properties file for `spark-submit --properties-file` (what Airflow's
    SparkSubmitOperator takes), or as JSON.
    """
    import json

    from scoring.batch.pyenv import archive_conf
    from scoring.batch.spark import properties_text, session_conf
    from scoring.settings import load

    conf = session_conf(load())
    if python_env:
        conf.update(archive_conf(_archive(python_env)))
    text = json.dumps(conf, indent=2) + "\n" if as_json else properties_text(conf)
    if output is None:
        print(text, end="")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(output)


@app.command("has-data")
@user_errors
def batch_has_data(source: Source, date: Day, date_column: DateColumn = "ds") -> None:
    """Exit 0 if --source has rows for --date, 4 if not yet (a sensor's poke).

    With rows, prints them as one JSON line (source, date, rows); a table that cannot be
    read exits 3. Reads the Delta log and that date's files only: no Spark, no JVM.
    """
    import json

    from scoring.batch import lake
    from scoring.errors import NoDataError

    rows = lake.count_rows(source, date, date_column)
    if rows == 0:
        raise NoDataError(source, f"for {date_column} = {date}")
    print(json.dumps({"source": source, "date": date, "rows": rows}))


def _checked(
    source: str,
    predictions: str,
    rejects: str | None,
    date: str,
    date_column: str,
    thresholds: Any,
    reference_date: str | None,
    lookback_days: int,
) -> Any:
    from scoring.batch.checks import run_checks
    from scoring.batch.report import Tables, observe

    tables = Tables(source, predictions, rejects, date_column)
    observed = observe(tables, date, reference_date, lookback_days)
    report = run_checks(observed, thresholds)
    for check in report.checks:
        style = {"passed": "green", "failed": "bold red", "skipped": "yellow"}[check.status]
        errors.print(
            f"[{style}]{check.status:>7}[/] {check.message}", highlight=False, soft_wrap=True
        )
    return tables, report


@app.command("check")
@user_errors
def batch_check(
    source: Source,
    predictions: Predictions,
    date: Day,
    rejects: Rejects = None,
    date_column: DateColumn = "ds",
    max_rejects_ratio: MaxRejectsRatio = 0.05,
    max_psi: MaxPsi = 0.2,
    psi_bins: PsiBins = 10,
    reference_date: ReferenceDate = None,
    lookback_days: LookbackDays = 7,
) -> None:
    """Check one date of a batch run's output; exit 5 naming each failed check.

    Predictions + rejects must equal the source rows of the date (at the source version
    the run recorded), the rejects ratio must be at most --max-rejects-ratio, and the
    scores' PSI against the reference at most --max-psi. Shows each check's result on
    stderr and prints them all as one JSON line on stdout.
    """
    import json

    from scoring.batch.checks import Thresholds

    thresholds = Thresholds(max_rejects_ratio=max_rejects_ratio, max_psi=max_psi, psi_bins=psi_bins)
    _, report = _checked(
        source, predictions, rejects, date, date_column, thresholds, reference_date, lookback_days
    )
    print(json.dumps(report.as_dict(), default=str))
    report.raise_for_failures(f"{date_column} = {date} in {predictions}")


@app.command("report")
@user_errors
def batch_report(
    source: Source,
    predictions: Predictions,
    date: Day,
    out_dir: Annotated[Path, typer.Option(help="folder for report.json and the plot")],
    rejects: Rejects = None,
    date_column: DateColumn = "ds",
    max_rejects_ratio: MaxRejectsRatio = 0.05,
    max_psi: MaxPsi = 0.2,
    psi_bins: PsiBins = 10,
    reference_date: ReferenceDate = None,
    lookback_days: LookbackDays = 7,
    summary_file: Annotated[
        Path | None, typer.Option(help="the batch job's --summary-file, logged with the report")
    ] = None,
    experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment to log the report to ('' to skip)")
    ] = "nightly_batch_scoring",
) -> None:
    """Write one date's run report (counts, checks, drift, score plot) and log it to MLflow.

    Reports failed checks without failing itself (`scoring batch check` is the gate), so
    the numbers are recorded when they matter most. Shows each check's result on stderr;
    prints one JSON line on stdout: what `batch check` prints, plus `report` and `plot`
    (the files' paths) and `mlflow_run_id` (null when not logged).
    """
    import json

    from scoring.batch.checks import Thresholds
    from scoring.batch.report import log_report, write_report

    thresholds = Thresholds(max_rejects_ratio=max_rejects_ratio, max_psi=max_psi, psi_bins=psi_bins)
    tables, report = _checked(
        source, predictions, rejects, date, date_column, thresholds, reference_date, lookback_days
    )
    summary = None
    if summary_file is not None and summary_file.is_file():
        summary = json.loads(summary_file.read_text().strip().splitlines()[-1])
        runs = set(report.observed.prediction_run_ids)
        if summary.get("run_id") not in runs:
            errors.print(
                f"[yellow]ignoring {summary_file}: it is from run {summary.get('run_id')}, "
                f"the output from {sorted(runs)}[/]",
                soft_wrap=True,
            )
            summary = None
    elif summary_file is not None:
        errors.print(f"[yellow]no batch summary at {summary_file}[/]", soft_wrap=True)
    files = write_report(report, tables, thresholds, out_dir, summary)
    errors.print(f"report written to {out_dir}")
    result = {"report": str(files["report"]), "plot": str(files["plot"]), "mlflow_run_id": None}
    if experiment:
        result["mlflow_run_id"] = log_report(report, tables, thresholds, files, experiment, summary)
    print(json.dumps({**report.as_dict(), **result}, default=str))
