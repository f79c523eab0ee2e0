"""``scoring model``: package, register, promote, roll back, gate and compare model versions.

Thin over ``scoring.lifecycle``: packaging, the registry, the rollout gates and the
champion vs challenger comparison.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.table import Table

from scoring.cli.common import (
    DateColumn,
    KafkaBootstrap,
    KafkaConfigFile,
    console,
    errors,
    iso_date,
    print_report,
    user_errors,
)
from scoring.errors import ModelNotFoundError

__all__ = ["app"]

app = typer.Typer(help="Package, list, promote and roll back model versions.", no_args_is_help=True)
alias_app = typer.Typer(help="Registry aliases beyond promote and rollback.", no_args_is_help=True)
app.add_typer(alias_app, name="alias")


@app.command("package")
@user_errors
def package(
    path: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help=".onnx, scikit-learn (.joblib/.pkl/.skops), LightGBM (.txt) or XGBoost "
            "(.json/.ubj)",
        ),
    ],
    name: Annotated[
        str | None, typer.Option(help="registered model name (needed unless --print-contract)")
    ] = None,
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
            help="JSON hints: nullability, ranges, categories, threshold, lineage",
        ),
    ] = None,
    tolerance: Annotated[float, typer.Option(help="max |score difference| native vs ONNX")] = 1e-4,
    print_contract: Annotated[
        bool,
        typer.Option(
            "--print-contract",
            help="convert and verify, print the contract as a --contract file, register nothing",
        ),
    ] = False,
) -> None:
    """Convert a trained model to ONNX, verify it, write its contract and register it."""
    import json

    from scoring.lifecycle import hints
    from scoring.lifecycle.packaging import package as do_package
    from scoring.lifecycle.packaging import prepare

    if name is None and not print_contract:
        raise typer.BadParameter("name the registered model", param_hint="--name")
    names = [f.strip() for f in features.split(",") if f.strip()] if features else None
    headed = False

    def report(line: str) -> None:
        nonlocal headed
        if not headed:  # above the first line only: a refusal comes before any
            errors.print("[bold]inputs[/] (nullability fails closed; override it with --contract):")
            headed = True
        errors.print(f"  {line}", markup=False, highlight=False)

    if print_contract:
        packaged = prepare(path, sample, names, key, contract, tolerance, report)
        print(json.dumps(hints.from_contract(packaged.contract), indent=2))
        errors.print("verified; nothing registered (--print-contract)")
        return
    assert name is not None
    info = do_package(path, name, sample, names, key, contract, tolerance, report)
    errors.print(
        f"registered [bold]{info.name}[/] version [bold]{info.version}[/] "
        f"(sha256 {info.sha256[:12]}…)"
    )
    print(info.version)


@app.command("promote")
@user_errors
def promote(
    name: str, version: str, alias: Annotated[str, typer.Option(help="alias to move")] = "champion"
) -> None:
    """Point ALIAS at VERSION (the previous holder is remembered for rollback)."""
    from scoring.lifecycle import registry

    previous = registry.promote(name, version, alias)
    console.print(f"{name}@{alias}: {previous or '-'} -> {version}")


@app.command("rollback")
@user_errors
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
@user_errors
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


GateEngine = Annotated[
    str | None,
    typer.Option(
        help="arrow (in this process, no JVM) or python (Spark); default: arrow, Spark for "
        "a catalog table"
    ),
]


def _gate_session(engine: str | None, source: str, name: str) -> Any:
    """The Spark session a gate reads ``source`` with (chosen as for the batch job); None
    on the arrow engine."""
    from scoring.batch.spec import ENGINES, Engine, engine_for

    if engine is not None and engine not in ENGINES:
        raise typer.BadParameter(
            f"{engine!r}: use one of {', '.join(ENGINES)}", param_hint="--engine"
        )
    chosen, _ = engine_for([source], cast("Engine | None", engine))
    if chosen == "arrow":
        return None
    from scoring.batch.spark import build_session

    return build_session(name)


@app.command("validate")
@user_errors
def validate(
    name: str,
    version: str,
    source: Annotated[str, typer.Option(help="labelled Delta table (path or catalog name)")],
    label: Annotated[str, typer.Option(help="the label column")],
    date: Annotated[str | None, typer.Option(help="holdout date (default: all rows)")] = None,
    date_column: Annotated[str, typer.Option(help="the source's date column")] = "ds",
    metric: Annotated[str, typer.Option(help="auc or average_precision")] = "auc",
    margin: Annotated[float, typer.Option(help="how far below the champion may pass")] = 0.0,
    engine: GateEngine = None,
) -> None:
    """Gate a candidate: checksums, contract vs the source schema, metric vs the champion."""
    from scoring.lifecycle.rollout import quality_gate

    spark = _gate_session(engine, source, "scoring-validate")
    print_report(
        quality_gate(spark, name, version, source, label, date, date_column, metric, margin)
    )


@app.command("parity")
@user_errors
def parity(
    name: str,
    version: str,
    source: Annotated[str, typer.Option(help="Delta table holding the golden rows")],
    bootstrap: KafkaBootstrap = None,
    kafka_config: KafkaConfigFile = None,
    date: Annotated[str | None, typer.Option(help="take the golden rows from this date")] = None,
    date_column: Annotated[str, typer.Option(help="the source's date column")] = "ds",
    rows: Annotated[int, typer.Option(help="golden rows (the first, by key)")] = 1000,
    engine: GateEngine = None,
) -> None:
    """Score golden rows through a batch engine and a stream processor; all must be equal."""
    from scoring.lifecycle.rollout import parity as run_parity
    from scoring.masking import mask_in_logs
    from scoring.stream.kafka_config import preflight, resolve

    client = resolve(bootstrap, kafka_config)
    mask_in_logs(client.secrets())
    preflight(client)  # a refused login fails now, not after the batch half of the gate
    spark = _gate_session(engine, source, "scoring-parity")
    print_report(
        run_parity(
            spark, name, version, source, client.bootstrap, date, date_column, rows,
            kafka=client.properties,
        )
    )  # fmt: skip


@app.command("list")
@user_errors
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


@app.command("compare")
@user_errors
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
        str | None, typer.Option(callback=iso_date, help="batch: the date (YYYY-MM-DD)")
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
        from scoring.masking import mask_in_logs
        from scoring.stream.kafka_config import resolve

        since_ms, until_ms = parse_time(since), None if until is None else parse_time(until)
        client = resolve(bootstrap, kafka_config)
        mask_in_logs(client.secrets())
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
    print_report(summary)
    raise_for_gate(report, thresholds)
