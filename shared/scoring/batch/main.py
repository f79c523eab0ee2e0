"""Score a Delta table with a registered model, in place: in this process or on Spark.

``scoring batch run ...`` runs it in this process on the embedded engine (delta-rs,
Arrow and onnxruntime, no JVM) unless ``--engine`` or ``--master`` says Spark. On a
cluster, spark-submit it (the jars and Delta settings come from scoring.batch.spark;
``scoring batch submit`` adds them)::

    spark-submit jobs/batch/score.py --model models:/fraud@champion \
        --source /lake/transactions --target /lake/fraud_scores --date 2026-11-20

While it runs it shows each phase on stderr with its seconds (scoring.batch.progress):
live on a terminal, else one log line per phase. The only line on stdout is the JSON
summary (rows read/scored/rejected, versions, engine and why, seconds, rows/s, seconds
per phase), also written to ``--summary-file`` when given (a scheduler reads it from
there: spark-submit's own output is a log, and spark-submit merges the job's stderr into
it). Exit codes: 0 ok, 2 bad arguments or settings, 3 source/schema problem, 1 other
failures (an unexpected error: its traceback is logged). Secrets from the environment
(AWS, MLflow) are masked in every line it writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scoring.batch import progress
from scoring.batch.progress import Display, Progress
from scoring.batch.spec import ENGINES, BatchJob, choose_engine
from scoring.errors import ScoringError
from scoring.masking import mask_in_logs, masked, unexpected

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


def _date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-20") from exc


_EPILOG = (
    "While it runs, each phase (load_model, pin_source, plan, score_and_write_predictions, "
    "write_rejects; shadow_... with --shadow) is shown on stderr with its seconds: live on a "
    "terminal, else one log line per phase. stdout gets one line, the JSON summary. Exit "
    "codes: 0 ok, 2 bad arguments or settings, 3 source or schema problem, 1 anything else."
)


def parse_args(argv: Sequence[str] | None = None, prog: str = "score") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], epilog=_EPILOG)
    parser.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a local folder"
    )
    parser.add_argument("--source", required=True, help="Delta table path or catalog name")
    parser.add_argument("--target", required=True, help="Delta table for predictions")
    parser.add_argument("--rejects", help="Delta table for refused rows (default TARGET_rejects)")
    parser.add_argument("--date", type=_date, help="score only this date (YYYY-MM-DD)")
    parser.add_argument("--date-column", default="ds", help="the source's date column")
    parser.add_argument(
        "--master", help="run on Spark with this master (when not launched by spark-submit)"
    )
    parser.add_argument("--run-id", help="lineage id recorded on every row (default: random)")
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        help="arrow: in this process, no JVM (the default, unless the job runs on Spark); "
        "python: on Spark, scored in Python workers through mapInArrow (the default when "
        "launched by spark-submit, given --master or a catalog table)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="arrow engine: scoring threads (default: the machine's cores)",
    )
    parser.add_argument(
        "--shadow",
        help="a challenger model that scores the same pinned rows into --shadow-target "
        "(its failures are reported in the summary and never fail the run)",
    )
    parser.add_argument(
        "--shadow-target", help="Delta table for the challenger's predictions (with --shadow)"
    )
    parser.add_argument(
        "--summary-file", type=Path, help="also write the JSON summary to this file"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also log at INFO: the libraries' lines and Spark's own (default: the progress "
        "lines, warnings and errors)",
    )
    return parser.parse_args(argv)


def run_job(
    job: BatchJob,
    master: str | None = None,
    threads: int | None = None,
    spark: SparkSession | None = None,
    display: Display | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run ``job`` on the engine it names, else the default of where it runs; the summary.

    The summary records the engine and why it was chosen (``engine_reason``). ``spark``:
    a session to run a Spark engine in (default: one built here, on ``master``, with
    Spark's own log at INFO when ``verbose``). ``display``: where the run's phases are
    shown (default: log lines).
    """
    engine, reason = choose_engine(job, master)
    display = display or progress.LogLines()
    display.note(f"engine {engine}: {reason}")
    job = replace(job, engine=engine)
    if engine == "arrow":
        from scoring.batch import embedded

        summary = embedded.run(job, threads=threads, display=display)
    else:
        from scoring.batch.job import run
        from scoring.batch.spark import build_session

        if spark is None:
            # Not a phase of the run's timings: a scheduler's Spark may already be up.
            starting = Progress(display)
            starting.start("start_spark")
            spark = build_session("scoring-batch", master=master, verbose=verbose)
            starting.done(f"master {spark.sparkContext.master}")
        summary = run(spark, job, display=display)
    return {**summary, "engine_reason": reason}


def _emit(summary: dict[str, Any], path: Path | None) -> None:
    line = masked(json.dumps(summary))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(line + "\n")
    print(line)


def _log_to_stderr(verbose: bool) -> None:
    """Warnings and errors on stderr (INFO too when ``verbose``); stdout is the summary's.

    Under the ``scoring`` CLI the root logger is set up already (its -v); ``--verbose``
    on the job still lowers it.
    """
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if verbose:
        logging.getLogger().setLevel(level)
    logging.getLogger("py4j").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None, prog: str = "score") -> int:
    args = parse_args(argv, prog)
    _log_to_stderr(args.verbose)
    mask_in_logs()
    try:
        job = BatchJob(
            model=args.model,
            source=args.source,
            target=args.target,
            rejects=args.rejects,
            date=args.date,
            date_column=args.date_column,
            engine=args.engine,
            shadow=args.shadow,
            shadow_target=args.shadow_target,
            **({"run_id": args.run_id} if args.run_id else {}),
        )
        with progress.on_stderr() as display:
            summary = run_job(
                job,
                master=args.master,
                threads=args.threads,
                display=display,
                verbose=args.verbose,
            )
    except ScoringError as exc:
        print(masked(f"error: {exc}"), file=sys.stderr)
        failed = {"status": "failed", "error": type(exc).__name__, "message": str(exc)}
        _emit(failed, args.summary_file)
        return exc.exit_code
    except Exception as exc:  # a bug, or a failure nobody foresaw: its traceback, masked
        print(f"error: {unexpected(exc, log)}", file=sys.stderr)
        failed = {"status": "failed", "error": type(exc).__name__, "message": str(exc)}
        _emit(failed, args.summary_file)
        return 1
    _emit({"status": "ok", **summary}, args.summary_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
