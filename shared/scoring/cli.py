"""The ``scoring`` command line: model packaging and registry operations, batch runs, demo."""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from scoring.errors import ModelNotFoundError, ScoringError

__all__ = ["app", "main"]

app = typer.Typer(
    help="Score one ONNX model artifact on Delta tables (in one process or on Spark) and on Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(
    help="Package, list, promote and roll back model versions.", no_args_is_help=True
)
batch_app = typer.Typer(help="Nightly batch scoring on Spark + Delta.", no_args_is_help=True)
dev_app = typer.Typer(
    help="Local services for development on loopback: Kafka, an S3 server, an MLflow server.",
    no_args_is_help=True,
)
s3_app = typer.Typer(help="An S3 API server (moto) on loopback.", no_args_is_help=True)
mlflow_app = typer.Typer(
    help="An MLflow tracking server on loopback, artifacts in the S3 server.", no_args_is_help=True
)
dev_app.add_typer(s3_app, name="s3")
dev_app.add_typer(mlflow_app, name="mlflow")
alias_app = typer.Typer(help="Registry aliases beyond promote and rollback.", no_args_is_help=True)
model_app.add_typer(alias_app, name="alias")
app.add_typer(model_app, name="model")
app.add_typer(batch_app, name="batch")
stream_app = typer.Typer(help="Real-time scoring of a Kafka topic.", no_args_is_help=True)
app.add_typer(stream_app, name="stream")
app.add_typer(dev_app, name="dev")

# Commands that hand every argument, --help included, to a job's own parser.
_FORWARD_ALL = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}

console = Console()
errors = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(func: F) -> F:
    """Turn a ScoringError into its message and exit code instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ScoringError as exc:
            errors.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from exc

    return wrapper  # type: ignore[return-value]


@app.callback()
def _global_options(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # mlflow sets its own level when it is (lazily) imported and logs migrations at INFO.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", logging.getLevelName(level))


@model_app.command("package")
@_user_errors
def package(
    path: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help=".onnx, scikit-learn (.joblib/.skops), LightGBM (.txt) or XGBoost (.json/.ubj)",
        ),
    ],
    name: Annotated[str, typer.Option(help="registered model name")],
    sample: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="parquet rows to check the conversion"),
    ] = None,
    features: Annotated[str | None, typer.Option(help="comma-separated feature names")] = None,
    key: Annotated[str | None, typer.Option(help="the key column")] = None,
    contract: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="JSON partial contract: ranges, nullability, threshold, lineage",
        ),
    ] = None,
    tolerance: Annotated[float, typer.Option(help="max |score difference| native vs ONNX")] = 1e-4,
) -> None:
    """Convert a trained model to ONNX, verify it, write its contract and register it."""
    from scoring.lifecycle.packaging import package as do_package

    names = [f.strip() for f in features.split(",") if f.strip()] if features else None
    errors.print("[bold]inputs[/] (nullability fails closed; override it with --contract):")
    info = do_package(
        path,
        name,
        sample,
        names,
        key,
        contract,
        tolerance,
        report=lambda line: errors.print(f"  {line}", markup=False, highlight=False),
    )
    errors.print(
        f"registered [bold]{info.name}[/] version [bold]{info.version}[/] "
        f"(sha256 {info.sha256[:12]}…)"
    )
    print(info.version)


@model_app.command("promote")
@_user_errors
def promote(
    name: str, version: str, alias: Annotated[str, typer.Option(help="alias to move")] = "champion"
) -> None:
    """Point ALIAS at VERSION (the previous holder is remembered for rollback)."""
    from scoring.lifecycle import registry

    previous = registry.promote(name, version, alias)
    console.print(f"{name}@{alias}: {previous or '-'} -> {version}")


@model_app.command("rollback")
@_user_errors
def rollback(
    name: str,
    alias: Annotated[str, typer.Option(help="alias to move back")] = "champion",
    if_version: Annotated[
        str | None,
        typer.Option(help="only if ALIAS is on this version (a failed rollout's candidate)"),
    ] = None,
) -> None:
    """Point ALIAS back at the version that held it before the last promotion."""
    from scoring.lifecycle import registry

    if if_version is not None:
        try:
            current = registry.resolve(f"models:/{name}@{alias}").version
        except ModelNotFoundError:
            current = "no version"
        if current != if_version:
            console.print(f"{name}@{alias} is on {current}, not {if_version}: nothing rolled back")
            return
    version = registry.rollback(name, alias)
    console.print(f"{name}@{alias} -> {version}")


@alias_app.command("delete")
@_user_errors
def alias_delete(
    name: str,
    alias: Annotated[str, typer.Option(help="the alias to remove (e.g. challenger)")],
    if_version: Annotated[str | None, typer.Option(help="only if ALIAS is on this version")] = None,
) -> None:
    """Remove ALIAS from NAME (processors following it stop using it); no alias is fine."""
    from scoring.lifecycle import registry

    removed = registry.delete_alias(name, alias, if_version)
    if removed is None:
        where = f" on {if_version}" if if_version else ""
        console.print(f"{name}@{alias} is not set{where}: nothing deleted")
    else:
        console.print(f"{name}@{alias} ({removed}) deleted")


def _report(report: dict[str, Any]) -> None:
    """Gate reports: readable on stderr, JSON as the last stdout line for schedulers."""
    errors.print(report)
    print(json.dumps(report, default=str))


KafkaBootstrap = Annotated[
    str | None, typer.Option(help="Kafka host:port (default KAFKA_BOOTSTRAP_SERVERS)")
]
KafkaConfigFile = Annotated[
    Path | None,
    typer.Option(
        help="Kafka client properties file for a secured cluster (default "
        "SCORING_KAFKA_CONFIG; README: Secured Kafka)"
    ),
]


@model_app.command("validate")
@_user_errors
def validate(
    name: str,
    version: str,
    source: Annotated[str, typer.Option(help="labelled Delta table (path or catalog name)")],
    label: Annotated[str, typer.Option(help="the label column")],
    date: Annotated[str | None, typer.Option(help="holdout date (default: all rows)")] = None,
    date_column: Annotated[str, typer.Option(help="the source's date column")] = "ds",
    metric: Annotated[str, typer.Option(help="auc or average_precision")] = "auc",
    margin: Annotated[float, typer.Option(help="how far below the champion may pass")] = 0.0,
) -> None:
    """Gate a candidate: checksums, contract vs the source schema, metric vs the champion."""
    from scoring.batch.spark import build_session
    from scoring.lifecycle.rollout import quality_gate

    spark = build_session("scoring-validate")
    _report(quality_gate(spark, name, version, source, label, date, date_column, metric, margin))


@model_app.command("parity")
@_user_errors
def parity(
    name: str,
    version: str,
    source: Annotated[str, typer.Option(help="Delta table holding the golden rows")],
    bootstrap: KafkaBootstrap = None,
    kafka_config: KafkaConfigFile = None,
    date: Annotated[str | None, typer.Option(help="take the golden rows from this date")] = None,
    date_column: Annotated[str, typer.Option(help="the source's date column")] = "ds",
    rows: Annotated[int, typer.Option(help="golden rows (the first, by key)")] = 1000,
) -> None:
    """Score golden rows through Spark and through a stream processor; all must be equal."""
    from scoring.batch.spark import build_session
    from scoring.lifecycle.rollout import parity as run_parity
    from scoring.stream.kafka_config import mask_in_logs, preflight, resolve

    client = resolve(bootstrap, kafka_config)
    mask_in_logs(client)
    preflight(client)  # a refused login fails now, not after the Spark half of the gate
    spark = build_session("scoring-parity")
    _report(
        run_parity(
            spark, name, version, source, client.bootstrap, date, date_column, rows,
            kafka=client.properties,
        )
    )  # fmt: skip


@model_app.command("list")
@_user_errors
def list_models(name: str) -> None:
    """Versions of NAME with aliases, checksum, creation time and metrics."""
    from scoring.lifecycle import registry

    table = Table(title=f"model {name}")
    for column in ("version", "aliases", "sha256", "created (UTC)", "metrics"):
        table.add_column(column)
    for info in registry.list_versions(name):
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(info.metrics.items()))
        table.add_row(
            info.version,
            ", ".join(info.aliases),
            (info.sha256 or "?")[:12],
            info.created.strftime("%Y-%m-%d %H:%M:%S"),
            metrics,
        )
    console.print(table)


@batch_app.command(
    "run",
    context_settings=_FORWARD_ALL,
    add_help_option=False,
)
def batch_run(ctx: typer.Context) -> None:
    """Score a Delta table in this process; same options as spark-submit's job (see --help)."""
    from scoring.batch.main import main as score_main

    raise typer.Exit(score_main(ctx.args))


@batch_app.command(
    "submit",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@_user_errors
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
    """spark-submit the batch job with the jars and Delta settings; job options follow."""
    import shlex
    import subprocess

    from scoring.batch.pyenv import archive_conf
    from scoring.batch.spark import submit_command
    from scoring.entrypoints import batch_score

    conf = archive_conf(_archive(python_env)) if python_env else None
    command = submit_command(Path(batch_score.__file__), ctx.args, master=master, conf=conf)
    if dry_run:
        print(shlex.join(command))
        return
    raise typer.Exit(subprocess.run(command, check=False).returncode)


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


@batch_app.command("pack-env")
@_user_errors
def batch_pack_env(
    output: Annotated[Path, typer.Option(help="the archive to write (.tar.gz)")] = Path(
        "scoring-env.tar.gz"
    ),
) -> None:
    """Pack the executors' Python environment (this project + what the job imports there).

    Pass it to `scoring batch submit --python-env` (or the nightly DAG's
    `scoring_python_env` Variable): executors then need only a plain Python of the same
    version at the same path, not this project.
    """
    from scoring.batch.pyenv import pack

    print(pack(output))


def _iso_date(text: str | None) -> str | None:
    from datetime import date

    if text is None:
        return None
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not a date like 2026-11-20") from exc


# Options of the commands a scheduler runs around the batch job (has-data, check, report).
Source = Annotated[str, typer.Option(help="source Delta table (path or URI)")]
Predictions = Annotated[str, typer.Option(help="predictions Delta table (path or URI)")]
Rejects = Annotated[
    str | None, typer.Option(help="rejects Delta table (default PREDICTIONS_rejects)")
]
Day = Annotated[str, typer.Option(callback=_iso_date, help="the date (YYYY-MM-DD)")]
DateColumn = Annotated[str, typer.Option(help="the tables' date column")]
MaxRejectsRatio = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="highest share of refused rows")
]
MaxPsi = Annotated[float, typer.Option(min=0.0, help="highest score PSI against the reference")]
PsiBins = Annotated[int, typer.Option(min=2, max=100, help="quantile bins of the PSI")]
ReferenceDate = Annotated[
    str | None,
    typer.Option(
        callback=_iso_date,
        help="date whose scores are the drift reference (default: the newest earlier date "
        "scored by the same model version)",
    ),
]
LookbackDays = Annotated[
    int, typer.Option(min=1, help="earlier dates searched for a default reference")
]


@batch_app.command("spark-conf")
@_user_errors
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
    """The Spark settings every scoring job needs (jars, Delta, Arrow, Python).

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


@batch_app.command("has-data")
@_user_errors
def batch_has_data(source: Source, date: Day, date_column: DateColumn = "ds") -> None:
    """Exit 0 if SOURCE has rows for DATE, 4 if not yet (a sensor's poke); prints the count.

    Reads the Delta log and that date's files only: no Spark, no JVM.
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


@batch_app.command("check")
@_user_errors
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
    scores' PSI against the reference at most --max-psi. Prints the results as JSON.
    """
    import json

    from scoring.batch.checks import Thresholds

    thresholds = Thresholds(max_rejects_ratio=max_rejects_ratio, max_psi=max_psi, psi_bins=psi_bins)
    _, report = _checked(
        source, predictions, rejects, date, date_column, thresholds, reference_date, lookback_days
    )
    print(json.dumps(report.as_dict(), default=str))
    report.raise_for_failures(f"{date_column} = {date} in {predictions}")


@batch_app.command("report")
@_user_errors
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
        str | None, typer.Option(help="MLflow experiment to log the report to (none: skip)")
    ] = "nightly_batch_scoring",
) -> None:
    """Write one date's run report (counts, checks, drift, score plot) and log it to MLflow.

    Reports failed checks without failing itself (`scoring batch check` is the gate), so
    the numbers are recorded when they matter most. Prints the MLflow run id last.
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


def _compare_form(batch: dict[str, Any], stream: dict[str, Any], extras: dict[str, Any]) -> str:
    """Which form of `model compare` the options make ("batch" or "stream"), or exit 2."""
    batch_given = [flag for flag, value in batch.items() if value is not None]
    stream_given = [flag for flag, value in {**stream, **extras}.items() if value is not None]
    both = "either " + ", ".join(batch) + " (batch tables) or " + ", ".join(stream) + " (topics)"
    if batch_given and stream_given:
        raise typer.BadParameter(
            f"give {both}, not both (got {', '.join(batch_given + stream_given)})"
        )
    if not batch_given and not stream_given:
        raise typer.BadParameter(f"give {both}")
    form, needed = ("batch", batch) if batch_given else ("stream", stream)
    missing = [flag for flag, value in needed.items() if value is None]
    if missing:
        raise typer.BadParameter(f"the {form} form also needs {', '.join(missing)}")
    return form


@model_app.command("compare")
@_user_errors
def model_compare(
    key: Annotated[str, typer.Option(help="the key column (field) both sides share")],
    out_dir: Annotated[Path, typer.Option(help="folder for comparison.json and the plot")],
    champion: Annotated[
        str | None, typer.Option(help="batch: the champion's predictions Delta table")
    ] = None,
    challenger: Annotated[
        str | None, typer.Option(help="batch: the challenger's predictions Delta table")
    ] = None,
    date: Annotated[
        str | None, typer.Option(callback=_iso_date, help="batch: the date (YYYY-MM-DD)")
    ] = None,
    date_column: DateColumn = "ds",
    source: Annotated[
        str | None, typer.Option(help="batch: the scored source table, for its label column")
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="batch: the source's true-outcome column (needs --source)")
    ] = None,
    output_topic: Annotated[
        str | None, typer.Option(help="stream: the champion's predictions topic")
    ] = None,
    shadow_topic: Annotated[
        str | None, typer.Option(help="stream: the challenger's predictions topic")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="stream: the window's start, ISO-8601 (UTC if no zone) or epoch ms"),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="stream: the window's end (default: now)")
    ] = None,
    challenger_version: Annotated[
        str | None,
        typer.Option(help="stream: keep only the shadow records of this model version"),
    ] = None,
    bootstrap: KafkaBootstrap = None,
    kafka_config: KafkaConfigFile = None,
    experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment to log the comparison to (none: skip)")
    ] = None,
    min_rows: Annotated[int, typer.Option(min=1, help="fewest rows scored by both")] = 100,
    min_label_agreement: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="lowest share of rows with equal labels")
    ] = 0.0,
    max_psi: Annotated[
        float | None, typer.Option(min=0.0, help="highest challenger-vs-champion score PSI")
    ] = None,
    metric: Annotated[str, typer.Option(help="auc or average_precision")] = "auc",
    resamples: Annotated[
        int, typer.Option(min=10, help="bootstrap resamples of each metric difference")
    ] = 1000,
    max_metric_drop: Annotated[
        float | None,
        typer.Option(min=0.0, help="fail if the challenger is surely worse than this on --metric"),
    ] = None,
) -> None:
    """Compare a challenger's shadow predictions with the champion's.

    Batch form: one --date of two predictions tables (--champion, --challenger). Stream
    form: a window (--since, --until) of the output and shadow topics, read committed,
    each key's last record. Writes a JSON report and a plot, logs them to MLflow with
    --experiment, and exits 5 naming the numbers when a threshold is not met (a
    rollout's shadow gate).
    """
    from scoring.lifecycle.compare import (
        GateThresholds,
        compare,
        log_report,
        parse_time,
        raise_for_gate,
        read_batch,
        read_stream,
        write_report,
    )

    form = _compare_form(
        {"--champion": champion, "--challenger": challenger, "--date": date},
        {"--output-topic": output_topic, "--shadow-topic": shadow_topic, "--since": since},
        {
            "--until": until,
            "--challenger-version": challenger_version,
            "--bootstrap": bootstrap,
            "--kafka-config": kafka_config,
        },
    )
    if (source is None) != (label is None):
        raise typer.BadParameter("--source and --label go together")
    if source is not None and form == "stream":
        raise typer.BadParameter("--source and --label go with the batch form only")
    if metric not in ("auc", "average_precision"):
        raise typer.BadParameter(f"--metric is auc or average_precision, not {metric!r}")
    thresholds = GateThresholds(
        min_rows=min_rows,
        min_label_agreement=min_label_agreement,
        max_psi=max_psi or None,
        metric=metric,
        max_metric_drop=max_metric_drop,
    )
    window: dict[str, Any] | None = None
    if form == "batch":
        assert champion and challenger and date  # _compare_form checked them
        pairs = read_batch(champion, challenger, date, key, date_column, source, label)
        title = f"{challenger} vs {champion}, {date}"
        tags = {
            "scoring.date": date,
            "scoring.champion_table": champion,
            "scoring.challenger_table": challenger,
        }
    else:
        assert output_topic and shadow_topic and since
        from scoring.stream.kafka_config import mask_in_logs, resolve

        since_ms, until_ms = parse_time(since), None if until is None else parse_time(until)
        client = resolve(bootstrap, kafka_config)
        mask_in_logs(client)
        pairs, window = read_stream(
            output_topic,
            shadow_topic,
            key,
            since_ms,
            until_ms,
            challenger_version,
            client.bootstrap,
            client.properties,
        )
        title = f"{shadow_topic} vs {output_topic}, {window['since']} to {window['until']}"
        tags = {
            "scoring.output_topic": output_topic,
            "scoring.shadow_topic": shadow_topic,
            "scoring.since": window["since"],
            "scoring.until": window["until"],
            **({"scoring.challenger_version": challenger_version} if challenger_version else {}),
        }
    report = compare(pairs, resamples=resamples)
    if window is not None:
        report["window"] = window
    files = write_report(pairs, report, out_dir, title)
    report["files"] = {k: str(v) for k, v in files.items()}
    if experiment:
        report["mlflow_run_id"] = log_report(report, files, experiment, tags)
    summary = {k: v for k, v in report.items() if k != "most_different"}
    _report(summary)
    raise_for_gate(report, thresholds)


@stream_app.command(
    "run",
    context_settings=_FORWARD_ALL,
    add_help_option=False,
)
def stream_run(ctx: typer.Context) -> None:
    """Score a Kafka topic until SIGTERM (see --help for the options)."""
    from scoring.stream.main import main as process_main

    raise typer.Exit(process_main(ctx.args))


@stream_app.command("wait-version")
@_user_errors
def wait_version(
    name: str,
    version: str,
    health_url: Annotated[
        list[str], typer.Option(help="a processor's /health URL (repeat for each)")
    ],
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 120,
) -> None:
    """Wait until every listed stream processor reports NAME at VERSION."""
    from scoring.lifecycle.rollout import wait_for_version

    _report(wait_for_version(health_url, name, version, timeout))


@stream_app.command("wait-shadow")
@_user_errors
def wait_shadow(
    name: str,
    version: str,
    health_url: Annotated[
        list[str], typer.Option(help="a processor's /health URL (repeat for each)")
    ],
    events: Annotated[
        int, typer.Option(min=1, help="shadow predictions by VERSION, summed over processors")
    ] = 1000,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 3600,
) -> None:
    """Wait until every listed processor shadows NAME at VERSION and EVENTS were scored.

    Prints the counts and when the wait started and ended as JSON; exits 5 with the
    numbers when the timeout comes first.
    """
    from scoring.lifecycle.rollout import wait_for_shadow

    _report(wait_for_shadow(health_url, name, version, events, timeout))


def _broker_dir() -> Path:
    from scoring.settings import load

    return load().home.resolve() / "kafka"


@dev_app.command("up")
@_user_errors
def dev_up(
    port: Annotated[
        int | None, typer.Option(help="client port (default: a free one, kept across restarts)")
    ] = None,
    secure: Annotated[
        bool,
        typer.Option(
            help="add a SASL_SSL (SCRAM-SHA-512) and a mutual-TLS listener, with client files"
        ),
    ] = False,
) -> None:
    """Start a single-node Kafka broker (KRaft) on 127.0.0.1; prints its bootstrap address.

    With --secure it prints two lines for `export $(scoring dev up --secure)`: the SASL_SSL
    listener as KAFKA_BOOTSTRAP_SERVERS and its client properties file as
    SCORING_KAFKA_CONFIG (a kcat -F file; the mutual-TLS one is named on stderr).
    """
    from scoring.dev import kafka_broker
    from scoring.settings import ENV

    broker = kafka_broker.start(_broker_dir(), port=port, secure=secure)
    errors.print(
        f"Kafka broker running (pid {broker.pid}), data in {broker.state_dir}; "
        "stop it with `scoring dev down`"
    )
    if broker.secure is None:
        print(broker.bootstrap)
        return
    listeners = broker.secure
    errors.print(
        f"plaintext {broker.bootstrap}\n"
        f"SASL_SSL  {listeners.sasl_ssl_bootstrap}  --kafka-config {listeners.sasl_ssl_config}\n"
        f"mTLS      {listeners.ssl_bootstrap}  --kafka-config {listeners.mtls_config}",
        highlight=False,
        soft_wrap=True,
    )
    print(f"{ENV['kafka_bootstrap']}={listeners.sasl_ssl_bootstrap}")
    print(f"{ENV['kafka_config']}={listeners.sasl_ssl_config}")


@dev_app.command("down")
@_user_errors
def dev_down() -> None:
    """Stop the broker started by `scoring dev up` (its data is kept)."""
    from scoring.dev import kafka_broker

    stopped = kafka_broker.stop(_broker_dir())
    console.print("Kafka broker stopped" if stopped else "no Kafka broker was running")


def _service_dir(name: str) -> Path:
    from scoring.settings import load

    return load().home.resolve() / name


def _stop_service(name: str, title: str) -> None:
    from scoring.dev import services

    stopped = services.stop(_service_dir(name))
    console.print(f"{title} stopped" if stopped else f"no {title} was running")


def _exports(env: dict[str, str]) -> None:
    import shlex

    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")


@s3_app.command("up")
@_user_errors
def dev_s3_up(
    bucket: Annotated[list[str], typer.Option(help="bucket to create (repeat)")] = ["lake"],  # noqa: B006
    port: Annotated[int | None, typer.Option(help="port (default: a free one)")] = None,
) -> None:
    """Start an S3 API server (moto, in memory) on 127.0.0.1 with one user and BUCKETs.

    Prints the AWS variables that point clients at it: `eval "$(scoring dev s3 up)"`.
    """
    from scoring.dev import services

    server = services.start_s3(_service_dir("s3"), tuple(bucket), port)
    errors.print(
        f"S3 server at {server.endpoint} (pid {server.pid}), buckets {', '.join(bucket)}; "
        "its data lives in memory. Stop it with `scoring dev s3 down`."
    )
    _exports(server.env())


@s3_app.command("down")
@_user_errors
def dev_s3_down() -> None:
    """Stop the S3 server started by `scoring dev s3 up` (its data is gone)."""
    _stop_service("s3", "S3 server")


@mlflow_app.command("up")
@_user_errors
def dev_mlflow_up(
    basic_auth: Annotated[
        bool, typer.Option(help="MLflow's basic-auth app, a new password")
    ] = False,
    port: Annotated[int | None, typer.Option(help="port (default: a free one)")] = None,
) -> None:
    """Start `mlflow server` on 127.0.0.1: SQLite store, artifacts in s3://mlflow (the S3 server).

    Starts the S3 server too if it is not running. Prints the MLflow (and AWS) variables
    that point clients at them: `eval "$(scoring dev mlflow up)"`.
    """
    from scoring.dev import services

    s3 = services.start_s3(_service_dir("s3"), ("lake",))
    server = services.start_mlflow(_service_dir("mlflow"), s3, port=port, basic_auth=basic_auth)
    errors.print(
        f"MLflow tracking server at {server.uri} (pid {server.pid}), artifacts in "
        f"s3://mlflow on {s3.endpoint}. Stop it with `scoring dev mlflow down`."
    )
    _exports({**s3.env(), **server.env()})


@mlflow_app.command("down")
@_user_errors
def dev_mlflow_down() -> None:
    """Stop the MLflow server started by `scoring dev mlflow up` (its store is kept)."""
    _stop_service("mlflow", "MLflow server")


@app.command("demo")
@_user_errors
def demo(
    rows_per_day: Annotated[int, typer.Option(help="demo rows per day")] = 20_000,
    days: Annotated[int, typer.Option(help="days of demo data")] = 7,
    stream_events: Annotated[
        int, typer.Option(help="events streamed through Kafka afterwards (0: batch only)")
    ] = 3_000,
    secure: Annotated[
        bool,
        typer.Option(
            help="stream over the local broker's SASL_SSL listener with its client file "
            "(as `scoring dev up --secure`)"
        ),
    ] = False,
) -> None:
    """Train, package, promote, batch-score one date, then score it live on Kafka."""
    from scoring.dev.demo.run import run_demo

    run_demo(
        console, rows_per_day=rows_per_day, days=days, stream_events=stream_events, secure=secure
    )


def main() -> None:
    """The console script: the app, then an exit that cannot abort after the work is done.

    In a process that read Delta tables with delta-rs, pyarrow's scanner threads over
    delta-rs's file system can outlive the interpreter and abort it while it tears down
    (``terminate called without an active exception``, exit -6; delta-rs #2184, polars
    #24169), turning a finished job into a failed task. Such a process runs its exit
    handlers (logging, MLflow), flushes, and ends without the native teardown.
    """
    try:
        app()
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    if "deltalake" not in sys.modules:
        sys.exit(code)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
